"""Key ids, alias names and ARNs: parsing and AWS KMS's naming rules.

Every rule raises the AWS exception AWS raises, with a message naming the rule
and the offending value, before anything has been changed.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from . import errors

PARTITION = "aws"
#: The CLI's region unless --region / KMSCLI_REGION names another; served requests use their signature's.
DEFAULT_REGION = "local"
#: Region names as botocore accepts them (it refuses "local_1"): lowercase letters, digits, inner hyphens.
_REGION_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ALIAS_PREFIX = "alias/"
RESERVED_ALIAS_PREFIX = "alias/aws/"
ALIAS_MAX = 256
# Every pattern here is used with fullmatch, never match with "$": "$" also
# matches before a trailing newline, so "alias/app\n" would pass as "alias/app"
# and be stored with the newline.
_ALIAS_RE = re.compile(r"alias/[A-Za-z0-9/_-]+")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ARN_RE = re.compile(r"arn:aws:kms:(?P<region>[^:]*):(?P<account>[0-9]{12}):(?P<kind>key|alias)/(?P<rest>.+)")
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
DESCRIPTION_MAX = 8192
#: A key identifier argument (KeyIdType) is at most 2048 characters in AWS.
KEY_ID_ARG_MAX = 2048


def new_key_id() -> str:
    """Return a fresh key id: a lowercase UUID v4, as AWS KMS makes them."""
    return str(uuid.uuid4())


def is_key_id(text: str) -> bool:
    return bool(_UUID_RE.fullmatch(text))


def validate_region(name: str) -> str:
    """A region name kmscli keys can live in; any AWS-shaped name, ``local`` included."""
    if not _REGION_RE.fullmatch(name):
        raise errors.ValidationException(
            f"region names are lowercase letters, digits and inner hyphens, such as local or us-east-1 "
            f"(got '{_clip(name)}')"
        )
    return name


def validate_account(account: str) -> str:
    """An AWS account id: exactly 12 digits."""
    if not re.fullmatch(r"[0-9]{12}", account):
        raise errors.ValidationException(f"an account id is 12 digits, such as 123456789012 (got '{_clip(account)}')")
    return account


def key_arn(account: str, key_id: str, *, region: str) -> str:
    return f"arn:{PARTITION}:kms:{region}:{account}:key/{key_id}"


def alias_arn(account: str, alias_name: str, *, region: str) -> str:
    return f"arn:{PARTITION}:kms:{region}:{account}:{alias_name}"


@dataclass(frozen=True)
class KeyRef:
    """A parsed KEY argument: either a key id or an alias name (and how it was given)."""

    given: str
    key_id: str | None = None
    alias: str | None = None
    #: The account and region an ARN named, to be checked against the vault's and the call's.
    account: str | None = None
    region: str | None = None


def parse_key_ref(text: str) -> KeyRef:
    """Parse a KEY argument: key id, ``alias/NAME``, key ARN or alias ARN.

    Malformed input is ``NotFoundException`` as AWS answers it ("Invalid keyId"); a malformed
    ARN is ``InvalidArnException``.
    """
    check_text(text, "KEY")
    if not text or len(text) > KEY_ID_ARG_MAX:
        raise errors.NotFoundException(f"Invalid keyId '{_clip(text)}': give a key id, alias/NAME, or an ARN")
    if text.startswith(ALIAS_PREFIX):
        return KeyRef(given=text, alias=text)
    m = _ARN_RE.fullmatch(text)
    if m:
        rest = m.group("rest")
        if m.group("kind") == "key":
            if not is_key_id(rest):
                raise errors.NotFoundException(f"Invalid keyId '{_clip(text)}': the ARN does not end in a key id")
            return KeyRef(given=text, key_id=rest, account=m.group("account"), region=m.group("region"))
        return KeyRef(given=text, alias=ALIAS_PREFIX + rest, account=m.group("account"), region=m.group("region"))
    if is_key_id(text.lower()) and text == text.lower():
        return KeyRef(given=text, key_id=text)
    if text.startswith("arn:"):
        raise errors.InvalidArnException(
            f"Invalid arn '{_clip(text)}': KMS ARNs look like arn:aws:kms:<region>:<account>:key/<key id> "
            "or arn:aws:kms:<region>:<account>:alias/<name>"
        )
    raise errors.NotFoundException(f"Invalid keyId '{_clip(text)}': give a key id (a UUID), alias/NAME, or an ARN",
                                   hint="see 'kmscli keys list'")


def validate_alias_name(name: str) -> str:
    """Check an alias name against AWS's rules; return it unchanged."""
    if not name.startswith(ALIAS_PREFIX):
        raise errors.ValidationException(f"alias name must start with the prefix \"alias/\" (got '{_clip(name)}')")
    if len(name) > ALIAS_MAX:
        raise errors.ValidationException(f"alias name must be at most {ALIAS_MAX} characters (got {len(name)})")
    if name == ALIAS_PREFIX or not _ALIAS_RE.fullmatch(name):
        raise errors.ValidationException(
            f"alias name '{_clip(name)}' may contain only letters, digits, '/', '_' and '-' after \"alias/\""
        )
    if name.startswith(RESERVED_ALIAS_PREFIX):
        raise errors.NotAuthorizedException(
            f"alias names beginning with \"alias/aws/\" are reserved for AWS managed keys (got '{_clip(name)}')"
        )
    return name


def check_text(text: str, what: str, exc: type[errors.KmsError] = errors.ValidationException) -> str:
    """Refuse text that is not valid Unicode: bytes of another encoding in argv arrive as
    lone surrogates, which would be stored, then break every later command that prints them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise exc(
            f"{what} is not valid UTF-8 text; set a UTF-8 locale or convert it (got '{_clip(text)}')"
        ) from None
    return text


def validate_description(text: str) -> str:
    check_text(text, "description")
    if len(text) > DESCRIPTION_MAX:
        raise errors.ValidationException(
            f"description must be at most {DESCRIPTION_MAX} characters (got {len(text)})"
        )
    return text


def validate_tag(key: str, value: str) -> None:
    check_text(key, "tag key", errors.TagException)
    check_text(value, "tag value", errors.TagException)
    # Lengths are the model's constraints (ValidationException, in `keys tag` and
    # `keys untag` alike); the reserved prefix and the count are TagException, as in AWS.
    if not 1 <= len(key) <= TAG_KEY_MAX:
        raise errors.ValidationException(f"tag keys must be 1 to {TAG_KEY_MAX} characters (got {len(key)})")
    if len(value) > TAG_VALUE_MAX:
        raise errors.ValidationException(f"tag values must be at most {TAG_VALUE_MAX} characters (got {len(value)})")
    if key.lower().startswith("aws:"):
        raise errors.TagException(f"tag keys beginning with 'aws:' are reserved (got '{_clip(key)}')")


def parse_pair(text: str, what: str = "tag") -> tuple[str, str]:
    """Split ``K=V`` at the first ``=``; the key must not be empty."""
    check_text(text, what)
    key, sep, value = text.partition("=")
    if not sep:
        raise errors.ValidationException(f"{what} must be written KEY=VALUE (got '{_clip(text)}')")
    if not key:
        raise errors.ValidationException(f"{what} key must not be empty (got '{_clip(text)}')")
    return key, value


def _clip(text: str, n: int = 80) -> str:
    """Shorten user input quoted in a message so one error stays one line."""
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates shown, never raised
    return text if len(text) <= n else text[: n - 1] + "…"


_SIZE_RE = re.compile(r"([0-9]{1,15})[ \t]*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
AUDIT_MAX_SIZE_MIN = 1 << 10


def parse_size(text: str, what: str) -> int:
    """A byte count such as ``1048576``, ``512K``, ``64M``, ``1GiB`` (binary units)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise errors.ValidationException(f"{what} takes a size such as 65536, 512K, 64M or 1G (got '{_clip(text)}')")
    n = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    if n < AUDIT_MAX_SIZE_MIN:
        raise errors.ValidationException(f"{what} must be at least 1K (got '{_clip(text)}')")
    return n
