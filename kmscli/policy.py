"""Key policies: parse a policy document and decide whether it allows a request.

Pure: no I/O, no vault, no clock; standard library only. ``docs/policy.md`` is
the contract this module implements, and the section numbers below refer to it.

Undecidable facts are carried as ``None`` in a three-valued logic (True, False,
None = "cannot tell"), so that every decision can fail closed: a ``Deny`` that
might apply applies, an ``Allow`` that might not apply does not. ``evaluate``
meets such facts only with odd request data; the lockout check (section 7)
relies on them for whatever a future request may carry.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kmscli.errors import LimitExceededException, MalformedPolicyDocumentException

TYPE_CHECKING = False  # importing typing costs ~2 ms; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _T = TypeVar("_T")

__all__ = [
    "ACTIONS",
    "MAX_POLICY_BYTES",
    "Condition",
    "Decision",
    "Policy",
    "Request",
    "Statement",
    "default_policy",
    "evaluate",
    "lockout_decision",
    "parse",
    "principal_arn",
    "would_lock_out",
]

# -- Section 4: actions -------------------------------------------------------
# The operations of botocore's kms/2014-11-01 model, with ReEncrypt replaced by
# the two actions AWS authorizes it as. tests/unit/test_policy.py checks this
# against the model when botocore is installed.
_OPERATIONS = (
    "CancelKeyDeletion",
    "ConnectCustomKeyStore",
    "CreateAlias",
    "CreateCustomKeyStore",
    "CreateGrant",
    "CreateKey",
    "Decapsulate",
    "Decrypt",
    "DeleteAlias",
    "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial",
    "DeriveSharedSecret",
    "DescribeCustomKeyStores",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "DisconnectCustomKeyStore",
    "EnableKey",
    "EnableKeyRotation",
    "Encapsulate",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GenerateRandom",
    "GetKeyLastUsage",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetParametersForImport",
    "GetPublicKey",
    "ImportKeyMaterial",
    "ListAliases",
    "ListGrants",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "ListRetirableGrants",
    "PutKeyPolicy",
    "ReEncryptFrom",
    "ReEncryptTo",
    "ReplicateKey",
    "RetireGrant",
    "RevokeGrant",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "Sign",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
)
ACTIONS: frozenset[str] = frozenset("kms:" + op for op in _OPERATIONS)
_ACTIONS_BY_LOWER = {a.lower(): a for a in ACTIONS}

# -- Section 1: the document ---------------------------------------------------
MAX_POLICY_BYTES = 32768
VERSIONS = ("2012-10-17", "2008-10-17")
# The AWS model's PolicyType pattern is [\u0009\u000A\u000D\u0020-\u00FF]+.
_BAD_CHAR = re.compile(r"[^\t\n\r\x20-\xff]")

_TOP_ELEMENTS = ("Version", "Id", "Statement")
_STATEMENT_ELEMENTS = (
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
)
_EFFECTS = ("Allow", "Deny")
_QUALIFIERS = ("ForAnyValue", "ForAllValues")

# The exact text AWS's GetKeyPolicy returns for a key created without a policy.
_DEFAULT_POLICY = """{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::%s:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}"""

_ACCOUNT = re.compile(r"[0-9]{12}\Z")
# The partition of every ARN this vault makes: kmscli.ids.PARTITION, not imported
# (ids pulls in uuid, 5 ms); tests/unit/test_policy_review.py keeps them equal.
_PARTITION = "aws"
# Principal ARNs: IAM or STS, a 12-digit account, no wildcard (IAM has none in
# principals) and no white space.
_PRINCIPAL_ARN = re.compile(r"arn:[a-z0-9-]+:(?:iam|sts)::([0-9]{12}):([^\s*?]+)\Z")
# The resources an IAM or STS ARN may name as a principal, as IAM accepts them
# (a group, a policy or "user" alone is refused by AWS too). Segments cannot
# hold "/", so these match in linear time.
_PRINCIPAL_RESOURCE = {
    "iam": re.compile(r"root|(?:user|role)(?:/[^/]+)+"),
    "sts": re.compile(r"assumed-role/[^/]+/[^/]+|federated-user/[^/]+"),
}
_ACTION = re.compile(r"(?i)kms:([A-Za-z0-9*?]+)\Z")
_CONDITION_KEY = re.compile(r"[A-Za-z0-9_.-]+:\S")
_EC_PREFIX = "kms:encryptioncontext:"
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_ALL_PRINCIPALS = ("*", "")


# -- Data ------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """One test of a Condition block: ``operator`` applied to ``key``."""

    operator: str  # as written, e.g. "ForAnyValue:StringLikeIfExists"
    qualifier: str | None  # "ForAnyValue", "ForAllValues" or None
    base: str  # the operator without qualifier and IfExists, e.g. "StringLike"
    if_exists: bool
    key: str  # as written
    values: tuple[object, ...]  # parsed: str, int/float, datetime or bool by operator

    @property
    def negated(self) -> bool:
        return _OPERATORS[self.base][1]


@dataclass(frozen=True)
class Statement:
    """One parsed statement; ``None`` marks the element of a pair that is absent."""

    index: int  # 1-based position in the document
    sid: str | None
    effect: str  # "Allow" or "Deny"
    principals: tuple[tuple[str, str], ...] | None
    not_principals: tuple[tuple[str, str], ...] | None
    actions: frozenset[str] | None  # wildcards expanded against ACTIONS
    not_actions: frozenset[str] | None
    resources: tuple[str, ...] | None
    not_resources: tuple[str, ...] | None
    conditions: tuple[Condition, ...]

    @property
    def label(self) -> str:
        """How reasons and messages name this statement: its Sid, else its number."""
        return f"'{self.sid}'" if self.sid is not None else str(self.index)


@dataclass(frozen=True)
class Policy:
    """A validated key policy; ``document`` is the text exactly as given."""

    document: str
    version: str | None
    policy_id: str | None
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Request:
    """What is asked: who, which action, on which key, with which condition keys."""

    principal: str
    account: str
    action: str
    resource: str
    context: Mapping[str, object] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    #: A Deny statement applies (or may apply): nothing else, a grant included, can allow the request.
    denied: bool = False


# -- Public functions ----------------------------------------------------------
def default_policy(account: str) -> str:
    """Return AWS's default key policy for ``account``, as GetKeyPolicy prints it."""
    if not _ACCOUNT.match(account):
        raise ValueError(f"account must be 12 digits, got {account!r}")
    return _DEFAULT_POLICY % account


def principal_arn(account: str, username: str) -> str:
    """Return the principal ARN of local user ``username`` in ``account``."""
    if not _ACCOUNT.match(account):
        raise ValueError(f"account must be 12 digits, got {account!r}")
    if not username:
        raise ValueError("username must not be empty")
    return f"arn:aws:iam::{account}:user/{username}"


def parse(document: str | bytes, *, account: str | None = None) -> Policy:
    """Validate a key policy document completely and return it parsed.

    Raises LimitExceededException when it is larger than MAX_POLICY_BYTES and
    MalformedPolicyDocumentException, naming the problem, for anything else.

    With ``account`` (the vault's, when a policy is being stored: CreateKey,
    PutKeyPolicy), a principal that can never match a caller of that vault is
    refused too (section 3): another partition or account, a malformed IAM or
    STS ARN, a user with a path. Without it, such a principal parses and
    matches nobody, so that a policy stored by an earlier version still reads.
    """
    if account is not None and not _ACCOUNT.match(account):
        raise ValueError(f"account must be 12 digits, got {account!r}")
    text = _check_text(document)
    try:
        raw = json.loads(
            text,
            object_pairs_hook=_json_object,
            parse_int=_Number,
            parse_float=_Number,
            parse_constant=_json_constant,
        )
    except json.JSONDecodeError as e:
        raise _Malformed(f"the policy is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise _Malformed("the policy is not valid JSON: it is nested too deeply") from None
    return _parse_policy(raw, text, account)


def evaluate(policy: Policy, request: Request) -> Decision:
    """Decide whether ``policy`` allows ``request`` (section 6): Deny wins, then Allow."""
    if request.action not in ACTIONS:
        raise ValueError(f"unknown action {request.action!r}: not one of policy.ACTIONS")
    return _decide(
        policy,
        request.principal,
        _caller_account(request.principal, request.account),
        request.action,
        request.resource,
        request.context,
        frozenset(),
    )


# Keys a PutKeyPolicy request may carry with values that differ from call to
# call or key to key (lower-cased); section 7. Every key the service supplies
# to PutKeyPolicy must be here or be derived from the principal, or the check
# would take it as absent and could miss a Deny that tests it.
_LOCKOUT_UNKNOWN_KEYS = frozenset(
    {"aws:currenttime", "kms:keyspec", "kms:keyusage", "kms:keyorigin", "kms:requestalias"}
)


def lockout_decision(policy: Policy, principal: str, account: str, *, resource: str | None = None) -> Decision:
    """Decide whether ``principal`` could certainly call kms:PutKeyPolicy later.

    ``resource`` is the key ARN when known; without it a Resource other than
    "*" is undecidable. Undecidable facts count against the principal.
    """
    caller_account = _caller_account(principal, account)
    context: dict[str, object] = {
        "aws:PrincipalArn": principal,
        "kms:CallerAccount": caller_account,
    }
    username = _username_of(principal)
    if username is not None:
        context["aws:username"] = username
    return _decide(
        policy,
        principal,
        caller_account,
        "kms:PutKeyPolicy",
        resource,
        context,
        _LOCKOUT_UNKNOWN_KEYS,
    )


def would_lock_out(policy: Policy, principal: str, account: str, *, resource: str | None = None) -> bool:
    """True if ``principal`` might no longer be able to call kms:PutKeyPolicy."""
    return not lockout_decision(policy, principal, account, resource=resource).allowed


# -- Parsing ---------------------------------------------------------------------
_Malformed = MalformedPolicyDocumentException


class _Number(str):
    """A JSON number kept as its source text: no float rounding, no digit limit."""

    __slots__ = ()


def _json_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Duplicate names are read differently by different parsers (first or last
    # wins); refusing them leaves one meaning.
    result: dict[str, object] = {}
    for name, value in pairs:
        if name in result:
            raise _Malformed(f"the policy is not valid JSON: duplicate member name {name!r}")
        result[name] = value
    return result


def _json_constant(name: str) -> object:
    raise _Malformed(f"the policy is not valid JSON: {name} is not a JSON value")


def _check_text(document: str | bytes) -> str:
    if isinstance(document, bytes):
        if len(document) > MAX_POLICY_BYTES:
            raise _too_large(len(document))
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Malformed(f"the policy is not valid UTF-8 (byte {e.start})") from None
    elif not isinstance(document, str):
        raise _Malformed(f"the policy must be text, not {type(document).__name__}")
    size = len(document.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise _too_large(size)
    if not document:
        raise _Malformed("the policy document is empty")
    bad = _BAD_CHAR.search(document)
    if bad is not None:
        pos = bad.start()
        line = document.count("\n", 0, pos) + 1
        column = pos - (document.rfind("\n", 0, pos) + 1) + 1
        char = bad.group()
        what = " (a byte-order mark)" if char == "\ufeff" else ""
        raise _Malformed(
            f"character U+{ord(char):04X}{what} at line {line} column {column} is not "
            "allowed in a key policy: only tab, line feed, carriage return and "
            "U+0020-U+00FF (printable ASCII and Latin-1)"
        )
    return document


def _too_large(size: int) -> LimitExceededException:
    return LimitExceededException(f"the key policy is {size} bytes; the limit is {MAX_POLICY_BYTES} bytes (32 KB)")


def _kind(value: object) -> str:
    """Name a JSON value's type for messages."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, _Number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is_text(value: object) -> bool:
    """A JSON string (numbers are kept as _Number, a str subclass)."""
    return isinstance(value, str) and not isinstance(value, _Number)


def _hint(name: str, known: Iterable[str]) -> str:
    """Suggest the known name that ``name`` differs from only in case, if any."""
    return next((f" (did you mean '{k}'?)" for k in known if k.lower() == name.lower()), "")


def _parse_policy(raw: object, text: str, account: str | None) -> Policy:
    if not isinstance(raw, dict):
        raise _Malformed(f"the policy must be a JSON object, not {_kind(raw)}")
    for name in raw:
        if name not in _TOP_ELEMENTS:
            raise _Malformed(
                f"unknown top-level element '{name}'{_hint(name, _TOP_ELEMENTS)}: "
                "a policy has Version, Id and Statement"
            )
    version = raw.get("Version")
    if "Version" in raw:
        if not isinstance(version, str) or isinstance(version, _Number):
            raise _Malformed(f"Version must be a string, not {_kind(version)}")
        if version not in VERSIONS:
            raise _Malformed(f'Version \'{version}\' is not supported: use "2012-10-17" (or "2008-10-17")')
    policy_id = raw.get("Id")
    if "Id" in raw and not _is_text(policy_id):
        raise _Malformed(f"Id must be a string, not {_kind(policy_id)}")
    if "Statement" not in raw:
        raise _Malformed("the policy has no Statement")
    items = raw["Statement"]
    if isinstance(items, dict):
        items = [items]
    elif not isinstance(items, list):
        raise _Malformed(f"Statement must be an object or a list of objects, not {_kind(items)}")
    if not items:
        raise _Malformed("Statement is an empty list: a policy needs at least one statement")
    statements = tuple(_parse_statement(item, n, account) for n, item in enumerate(items, 1))
    seen: set[str] = set()
    for st in statements:
        if st.sid is not None:
            if st.sid in seen:
                raise _Malformed(f"statement {st.index}: Sid '{st.sid}' is used twice")
            seen.add(st.sid)
    return Policy(document=text, version=version, policy_id=policy_id, statements=statements)


def _parse_statement(raw: object, n: int, account: str | None) -> Statement:
    where = f"statement {n}"
    if not isinstance(raw, dict):
        raise _Malformed(f"{where} must be an object, not {_kind(raw)}")
    sid = raw.get("Sid")
    if "Sid" in raw:
        if not isinstance(sid, str) or isinstance(sid, _Number):
            raise _Malformed(f"{where}: Sid must be a string, not {_kind(sid)}")
        where = f"statement {n} ('{sid}')"
    for name in raw:
        if name not in _STATEMENT_ELEMENTS:
            raise _Malformed(f"{where}: unknown element '{name}'{_hint(name, _STATEMENT_ELEMENTS)}")

    if "Effect" not in raw:
        raise _Malformed(f'{where}: Effect is missing ("Allow" or "Deny")')
    effect = raw["Effect"]
    if not isinstance(effect, str) or isinstance(effect, _Number):
        raise _Malformed(f"{where}: Effect must be a string, not {_kind(effect)}")
    if effect not in _EFFECTS:
        raise _Malformed(f'{where}: Effect \'{effect}\' must be "Allow" or "Deny"{_hint(effect, _EFFECTS)}')

    _one_of(raw, "Principal", "NotPrincipal", where)
    _one_of(raw, "Action", "NotAction", where)
    _one_of(raw, "Resource", "NotResource", where)

    def element(name: str, parse_one: Callable[[object, str], _T]) -> _T | None:
        return parse_one(raw[name], f"{where}: {name}") if name in raw else None

    def principal(value: object, here: str) -> tuple[tuple[str, str], ...]:
        return _parse_principal(value, here, account)

    return Statement(
        index=n,
        sid=sid,
        effect=effect,
        principals=element("Principal", principal),
        not_principals=element("NotPrincipal", principal),
        actions=element("Action", _parse_actions),
        not_actions=element("NotAction", _parse_actions),
        resources=element("Resource", _parse_resources),
        not_resources=element("NotResource", _parse_resources),
        conditions=_parse_conditions(raw.get("Condition", {}), f"{where}: Condition"),
    )


def _one_of(raw: dict[str, object], name: str, negated: str, where: str) -> None:
    if name in raw and negated in raw:
        raise _Malformed(f"{where}: {name} and {negated} cannot be used together")
    if name not in raw and negated not in raw:
        raise _Malformed(f"{where}: {name} (or {negated}) is missing")


def _strings(value: object, where: str) -> list[str]:
    """A string or a non-empty list of strings, as a list."""
    if isinstance(value, str) and not isinstance(value, _Number):
        return [value]
    if isinstance(value, list):
        if not value:
            raise _Malformed(f"{where} is an empty list")
        for item in value:
            if not _is_text(item):
                raise _Malformed(f"{where} must hold only strings, not {_kind(item)}")
        return [str(item) for item in value]
    raise _Malformed(f"{where} must be a string or a list of strings, not {_kind(value)}")


def _no_variable(value: str, where: str) -> None:
    if "${" in value:
        raise _Malformed(f"{where} '{value}' uses a policy variable (${{...}}); policy variables are not supported")


def _parse_principal(value: object, where: str, account: str | None) -> tuple[tuple[str, str], ...]:
    if _is_text(value):
        if value != "*":
            raise _Malformed(
                f"{where} '{value}' is malformed: use \"*\" or an object such as "
                '{"AWS": "arn:aws:iam::<account>:user/<name>"}'
            )
        return (_ALL_PRINCIPALS,)
    if not isinstance(value, dict):
        raise _Malformed(f'{where} must be "*" or an object, not {_kind(value)}')
    if not value:
        raise _Malformed(f'{where} is an empty object: name at least one {{"AWS": ...}}')
    result: list[tuple[str, str]] = []
    for kind, names in value.items():
        if kind == "AWS":
            for name in _strings(names, f"{where}.AWS"):
                result.append(_aws_principal(name, f"{where}.AWS", account))
        elif kind == "Service":
            for name in _strings(names, f"{where}.Service"):
                if not name or any(c.isspace() for c in name):
                    raise _Malformed(f"{where}.Service '{name}' is not a service principal")
                result.append(("service", name))
        else:
            raise _Malformed(
                f"{where}: unknown principal type '{kind}'{_hint(kind, ('AWS', 'Service'))}: "
                "kmscli knows AWS and Service"
            )
    return tuple(result)


def _aws_principal(name: str, where: str, account: str | None) -> tuple[str, str]:
    if name == "*":
        return _ALL_PRINCIPALS
    _no_variable(name, where)
    if _ACCOUNT.match(name):
        if account is not None and name != account:
            raise _Malformed(f"{where} '{name}' can never match: it is another account (this vault's is {account})")
        return ("account", name)
    m = _PRINCIPAL_ARN.match(name)
    if m is None:
        raise _Malformed(
            f"{where} '{name}' is not a valid principal: use \"*\", a 12-digit account id "
            "or an ARN such as arn:aws:iam::<account>:user/<name> (no wildcards)"
        )
    if account is not None:
        _check_reachable(name, m.group(1), m.group(2), where, account)
    if m.group(2) == "root" and name.split(":")[2] == "iam":
        return ("account", m.group(1))
    return ("arn", name)


def _check_reachable(name: str, arn_account: str, resource: str, where: str, account: str) -> None:
    """Refuse a principal no caller of ``account``'s vault can ever be (section 3).

    Such a principal matches nobody. In a Deny (or the NotPrincipal of an
    Allow) that is an open door: the author meant someone, and that someone
    is not denied. Callers are arn:aws:iam::<account>:user/<name>.
    """
    partition, service = name.split(":")[1:3]
    if partition != _PARTITION:
        raise _Malformed(
            f"{where} '{name}' can never match: it is in the partition '{partition}', and every caller "
            f"of this vault is in '{_PARTITION}' (arn:{_PARTITION}:iam::{account}:user/<name>)"
        )
    if arn_account != account:
        raise _Malformed(
            f"{where} '{name}' can never match: it names the account {arn_account}, and this vault's is {account}"
        )
    if not _PRINCIPAL_RESOURCE[service].fullmatch(resource):
        raise _Malformed(
            f"{where} '{name}' is not a valid {service.upper()} principal: use "
            f"arn:{_PARTITION}:iam::{account}:root, arn:{_PARTITION}:iam::{account}:user/<name> or a role, "
            "or an STS assumed-role/<role>/<session> or federated-user/<name>"
        )
    if service == "iam" and resource.startswith("user/") and resource.count("/") > 1:
        raise _Malformed(
            f"{where} '{name}' can never match: callers of this vault are users without an IAM path "
            f"(arn:{_PARTITION}:iam::{account}:user/<OS user name>)"
        )


def _parse_actions(value: object, where: str) -> frozenset[str]:
    result: set[str] = set()
    for pattern in _strings(value, where):
        if pattern == "*":
            result |= ACTIONS
            continue
        m = _ACTION.match(pattern)
        if m is None:
            raise _Malformed(
                f"{where} '{pattern}' is not a KMS action: write kms:<Operation> "
                "(kms:Encrypt) or a pattern such as kms:Describe*"
            )
        name = "kms:" + m.group(1).lower()
        if "*" in name or "?" in name:
            matched = {a for low, a in _ACTIONS_BY_LOWER.items() if _glob(name, low)}
            if not matched:
                raise _Malformed(f"{where} '{pattern}' matches no KMS action")
            result |= matched
        elif name in _ACTIONS_BY_LOWER:
            result.add(_ACTIONS_BY_LOWER[name])
        elif name == "kms:reencrypt":
            raise _Malformed(
                f"{where} '{pattern}' is not an action: ReEncrypt is authorized as "
                "kms:ReEncryptFrom and kms:ReEncryptTo (kms:ReEncrypt* names both)"
            )
        else:
            raise _Malformed(f"{where} '{pattern}' is not a known KMS action")
    return frozenset(result)


def _parse_resources(value: object, where: str) -> tuple[str, ...]:
    result = []
    for pattern in _strings(value, where):
        _no_variable(pattern, where)
        if pattern != "*" and not (pattern.startswith("arn:") and pattern.count(":") >= 5):
            raise _Malformed(
                f"{where} '{pattern}' must be \"*\" or an ARN such as arn:aws:kms:local:<account>:key/<key id>"
            )
        result.append(pattern)
    return tuple(result)


def _parse_conditions(value: object, where: str) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} must be an object, not {_kind(value)}")
    result = []
    for op, block in value.items():
        qualifier, base, if_exists = _split_operator(op, where)
        here = f"{where}.{op}"
        if not isinstance(block, dict):
            raise _Malformed(f"{here} must be an object of condition keys, not {_kind(block)}")
        if not block:
            raise _Malformed(f"{here} names no condition key")
        for key, raw_values in block.items():
            _check_condition_key(key, qualifier, here)
            values = raw_values if isinstance(raw_values, list) else [raw_values]
            if not values:
                raise _Malformed(f"{here}: '{key}' has an empty list of values")
            parsed = tuple(_parse_value(base, v, f"{here}: '{key}'") for v in values)
            result.append(Condition(op, qualifier, base, if_exists, key, parsed))
    return tuple(result)


def _split_operator(op: str, where: str) -> tuple[str | None, str, bool]:
    qualifier: str | None = None
    base = op
    if ":" in op:
        qualifier, base = op.split(":", 1)
        if qualifier not in _QUALIFIERS:
            raise _Malformed(
                f"{where}: unknown condition qualifier '{qualifier}' in '{op}'"
                f"{_hint(qualifier, _QUALIFIERS)}: use ForAnyValue: or ForAllValues:"
            )
    if_exists = base.endswith("IfExists") and base != "IfExists"
    if if_exists:
        base = base[: -len("IfExists")]
    if base not in _OPERATORS:
        written = base + ("IfExists" if if_exists else "")
        known = (*_OPERATOR_NAMES, *(name + "IfExists" for name in _OPERATOR_NAMES))
        raise _Malformed(f"{where}: unknown condition operator '{written}'{_hint(written, known)}")
    if base == "Null" and (if_exists or qualifier):
        raise _Malformed(f"{where}: '{op}' is not a condition operator (Null takes no suffix or qualifier)")
    return qualifier, base, if_exists


def _check_condition_key(key: str, qualifier: str | None, where: str) -> None:
    if not _CONDITION_KEY.match(key):
        raise _Malformed(
            f"{where}: '{key}' is not a condition key (expected <prefix>:<name>, such as kms:EncryptionContext:app)"
        )
    if key.lower().startswith(_EC_PREFIX):
        if len(key) == len(_EC_PREFIX):
            raise _Malformed(f"{where}: '{key}' names no encryption context key")
        if qualifier == "ForAllValues":
            raise _Malformed(
                f"{where}: ForAllValues cannot be used with the single-valued key '{key}' "
                "(it would hold for every request without that pair); use it with "
                "kms:EncryptionContextKeys"
            )


def _parse_value(base: str, value: object, where: str) -> object:
    kind = _OPERATORS[base][0]
    if kind in ("bool", "null"):
        flag = _to_bool(value)
        if flag is None:
            raise _Malformed(f"{where}: value {_show(value)} must be true or false")
        return flag
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = str(value)  # a _Number becomes its plain source text
    else:
        raise _Malformed(f"{where}: value must be a string or a number, not {_kind(value)}")
    _no_variable(text, where)
    if kind == "numeric":
        number = _to_number(text)
        if number is None:
            raise _Malformed(f"{where}: value '{text}' is not a number")
        return number
    if kind == "date":
        when = _to_datetime(text)
        if when is None:
            raise _Malformed(f"{where}: value '{text}' is not an ISO 8601 date or epoch seconds")
        return when
    if kind == "arn" and text != "*" and not (text.startswith("arn:") and text.count(":") >= 5):
        raise _Malformed(f"{where}: value '{text}' is not an ARN")
    if kind == "string_ci":
        return text.casefold()
    return text


def _show(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else _kind(value)


# -- Value conversion (policy values and request values) -------------------------
def _to_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and not isinstance(value, _Number):
        text = value.lower()
        if text in ("true", "false"):
            return text == "true"
    return None


def _to_number(value: object) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    try:
        if _INTEGER.match(value):
            return int(value)
        if _DECIMAL.match(value):
            number = float(value)
            return number if math.isfinite(number) else None
    except ValueError:  # more digits than int() accepts
        return None
    return None


def _to_datetime(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    seconds = _to_number(value)
    try:
        if seconds is not None:
            return _EPOCH + timedelta(seconds=seconds)
        if not isinstance(value, str):
            return None
        when = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _to_string(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return None


# -- Matching ----------------------------------------------------------------------
_WILDCARDS = frozenset("*?")


def _glob(pattern: str, text: str) -> bool:
    """Match ``text`` against ``pattern`` with ``*`` (any run) and ``?`` (one character).

    AWS's wildcards: case-sensitive, no character classes and no escapes, so a
    ``*`` or ``?`` in a pattern is always a wildcard.
    """
    return _glob_steps(pattern, text)[0]


def _glob_steps(pattern: str, text: str) -> tuple[bool, int]:
    """``_glob``, and the number of interpreted steps it took: at most ``len(pattern)``.

    Both strings come from callers (a 32 KB policy, a request value), so the
    cost must not be the product of their lengths in Python: the two-pointer
    algorithm backtracks to the last ``*`` and took 45 s of CPU on
    ``*aaaa...ab`` against ``aaaa...a``, and a regular expression can take
    exponential time on ``a*a*a*...b``. Here the literal head and tail are
    compared by ``str`` in C, and the rest runs the whole NFA at once: one
    integer holds, for every position i of the text, whether the pattern read so
    far can match ``text[:i]``; each pattern character is one step of a few
    operations on integers of ``len(text) + 1`` bits (done in C, 64 bits per
    machine word). Nothing backtracks.
    """
    first = next((i for i, c in enumerate(pattern) if c in _WILDCARDS), -1)
    if first < 0:
        return pattern == text, 0
    last = max(pattern.rfind("*"), pattern.rfind("?"))
    head, tail = pattern[:first], pattern[last + 1 :]
    if len(text) < len(head) + len(tail) or not text.startswith(head) or not text.endswith(tail):
        return False, 0
    end = len(text) - len(tail)  # the wildcard part must match text[first:end]
    every = (1 << (end + 1)) - 1  # positions 0..end
    masks = _masks(text)
    reach = 1 << first  # bit i: the pattern so far matches text[:i]
    steps = 0
    for c in pattern[first : last + 1]:
        steps += 1
        if c == "*":
            reach = every & -(reach & -reach)  # every position from the first reachable one on
        elif c == "?":
            reach = (reach << 1) & every
        else:
            mask = masks.get(c)
            if mask is None:
                mask = masks[c] = _positions(c, text)
            reach = ((reach & mask) << 1) & every
        if not reach:
            return False, steps
    return bool(reach >> end & 1), steps


@functools.lru_cache(maxsize=4)
def _masks(text: str) -> dict[str, int]:
    """The position masks of ``text``, by character, filled as patterns need them.

    One evaluation matches one request value against many patterns: each
    mask costs a pass over the value, so it is made once, not per pattern.
    ``_decide`` empties the cache when it is done, so values do not linger.
    """
    return {}


def _positions(char: str, text: str) -> int:
    """An integer with bit i set where ``text[i] == char``."""
    code = ord(char)
    if code <= 0xFF:
        # One byte per character for bytes.translate: a character outside
        # Latin-1 (never a policy's literal, section 1) becomes "?", which no
        # pattern holds as a literal, so it only ever meets the wildcards.
        table = bytearray(b"0" * 256)
        table[code] = ord("1")
        return int(text.encode("latin-1", "replace").translate(table)[::-1] or b"0", 2)
    mask = 0  # not a policy's character: the slow way, for completeness
    i = text.find(char)
    while i >= 0:
        mask |= 1 << i
        i = text.find(char, i + 1)
    return mask


def _arn_match(value: str, pattern: str) -> bool:
    """IAM's ArnLike: each of the six ``:``-separated parts matches on its own."""
    pattern_parts = pattern.split(":", 5)
    if len(pattern_parts) < 6:
        return _glob(pattern, value)
    value_parts = value.split(":", 5)
    if len(value_parts) < 6:
        return False
    return all(_glob(p, v) for p, v in zip(pattern_parts, value_parts, strict=True))


def _string_match(value: str, pattern: str) -> bool:
    return _glob(pattern, value)


# base operator -> (kind, negated, test(request value, policy value))
_OPERATORS: dict[str, tuple[str, bool, Callable[[Any, Any], bool] | None]] = {
    "StringEquals": ("string", False, operator.eq),
    "StringNotEquals": ("string", True, operator.eq),
    "StringEqualsIgnoreCase": ("string_ci", False, operator.eq),
    "StringNotEqualsIgnoreCase": ("string_ci", True, operator.eq),
    "StringLike": ("string_like", False, _string_match),
    "StringNotLike": ("string_like", True, _string_match),
    "NumericEquals": ("numeric", False, operator.eq),
    "NumericNotEquals": ("numeric", True, operator.eq),
    "NumericLessThan": ("numeric", False, operator.lt),
    "NumericLessThanEquals": ("numeric", False, operator.le),
    "NumericGreaterThan": ("numeric", False, operator.gt),
    "NumericGreaterThanEquals": ("numeric", False, operator.ge),
    "DateEquals": ("date", False, operator.eq),
    "DateNotEquals": ("date", True, operator.eq),
    "DateLessThan": ("date", False, operator.lt),
    "DateLessThanEquals": ("date", False, operator.le),
    "DateGreaterThan": ("date", False, operator.gt),
    "DateGreaterThanEquals": ("date", False, operator.ge),
    "Bool": ("bool", False, operator.eq),
    "ArnEquals": ("arn", False, _arn_match),
    "ArnLike": ("arn", False, _arn_match),
    "ArnNotEquals": ("arn", True, _arn_match),
    "ArnNotLike": ("arn", True, _arn_match),
    "Null": ("null", False, None),
}
_OPERATOR_NAMES = tuple(_OPERATORS)


def _convert(kind: str, value: object) -> object | None:
    """Turn a request value into what operators of ``kind`` compare; None if it cannot be."""
    if kind == "numeric":
        return _to_number(value)
    if kind == "date":
        return _to_datetime(value)
    if kind == "bool":
        return _to_bool(value)
    text = _to_string(value)
    if text is not None and kind == "string_ci":
        return text.casefold()
    return text


# Three-valued logic: True, False, None (cannot tell).
def _all(results: Iterable[bool | None]) -> bool | None:
    outcome: bool | None = True
    for r in results:
        if r is False:
            return False
        if r is None:
            outcome = None
    return outcome


def _any(results: Iterable[bool | None]) -> bool | None:
    outcome: bool | None = False
    for r in results:
        if r is True:
            return True
        if r is None:
            outcome = None
    return outcome


_MISSING = object()


def _is_absent(value: object) -> bool:
    return value is None or (isinstance(value, (list, tuple, set, frozenset)) and not value)


def _test(cond: Condition, value: object) -> bool | None:
    """One condition against one request value (or _MISSING). Section 5."""
    kind, negated, compare = _OPERATORS[cond.base]
    if kind == "null":
        absent = value is _MISSING
        return any(absent == want for want in cond.values)
    if value is _MISSING:
        if cond.if_exists or cond.qualifier == "ForAllValues":
            return True
        if cond.qualifier == "ForAnyValue":
            return False
        return negated
    items = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    assert compare is not None

    def passes(item: object) -> bool | None:
        converted = _convert(kind, item)
        if converted is None:
            return None
        hit = any(compare(converted, want) for want in cond.values)
        return not hit if negated else hit

    results = [passes(item) for item in items]
    if cond.qualifier == "ForAllValues" or (cond.qualifier is None and negated):
        return _all(results)
    return _any(results)


def _condition_holds(cond: Condition, context: Mapping[str, list[object]], unknown: frozenset[str]) -> bool | None:
    key = cond.key.lower()
    if key in unknown:
        return None
    candidates = context.get(key)
    if not candidates:
        return _test(cond, _MISSING)
    # A key given twice with different case (EC keys are case-sensitive, policy
    # keys are not) is decided only if every reading agrees.
    outcomes = {_test(cond, _MISSING if _is_absent(v) else v) for v in candidates}
    return outcomes.pop() if len(outcomes) == 1 else None


def _principal_matches(principals: tuple[tuple[str, str], ...], caller: str, caller_account: str) -> bool:
    for kind, name in principals:
        if kind == "*":
            return True
        if kind == "account" and name == caller_account:
            return True
        if kind == "arn" and name == caller:
            return True
    return False


def _resource_matches(patterns: tuple[str, ...], resource: str | None) -> bool | None:
    if resource is None:  # lockout check without the key ARN
        return True if any(set(p) == {"*"} for p in patterns) else None
    return any(_glob(p, resource) for p in patterns)


def _applies(
    st: Statement,
    caller: str,
    caller_account: str,
    action: str,
    resource: str | None,
    context: Mapping[str, list[object]],
    unknown: frozenset[str],
) -> bool | None:
    if st.principals is not None:
        if not _principal_matches(st.principals, caller, caller_account):
            return False
    elif _principal_matches(st.not_principals or (), caller, caller_account):
        return False
    if st.actions is not None:
        if action not in st.actions:
            return False
    elif action in (st.not_actions or ()):
        return False
    if st.resources is not None:
        on_resource = _resource_matches(st.resources, resource)
    else:
        on_resource = _not(_resource_matches(st.not_resources or (), resource))
    if on_resource is False:
        return False
    return _all([on_resource, *(_condition_holds(c, context, unknown) for c in st.conditions)])


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value


def _decide(
    policy: Policy,
    caller: str,
    caller_account: str,
    action: str,
    resource: str | None,
    context: Mapping[str, object],
    unknown: frozenset[str],
) -> Decision:
    try:
        return _decide_statements(policy, caller, caller_account, action, resource, context, unknown)
    finally:
        _masks.cache_clear()  # the request's values are done with (serve: other threads just rebuild)


def _decide_statements(
    policy: Policy,
    caller: str,
    caller_account: str,
    action: str,
    resource: str | None,
    context: Mapping[str, object],
    unknown: frozenset[str],
) -> Decision:
    index: dict[str, list[object]] = {}
    for key, value in context.items():
        index.setdefault(str(key).lower(), []).append(value)
    allowed_by: Statement | None = None
    maybe_allowed_by: Statement | None = None
    for st in policy.statements:
        applies = _applies(st, caller, caller_account, action, resource, index, unknown)
        if st.effect == "Deny":
            if applies is True:
                return Decision(False, f"explicit deny by statement {st.label}", denied=True)
            if applies is None:
                return Decision(
                    False,
                    f"explicit deny by statement {st.label} (it may apply: a condition or resource cannot be decided)",
                    denied=True,
                )
        elif applies is True:
            allowed_by = allowed_by or st
        elif applies is None:
            maybe_allowed_by = maybe_allowed_by or st
    if allowed_by is not None:
        return Decision(True, f"allowed by statement {allowed_by.label}")
    if maybe_allowed_by is not None:
        return Decision(
            False,
            f"no statement allows {action} for certain (statement "
            f"{maybe_allowed_by.label} depends on a condition or resource that cannot be decided)",
        )
    return Decision(False, f"no statement allows {action}")


# -- Principals ----------------------------------------------------------------------
def _caller_account(principal: str, account: str) -> str:
    """The account a caller belongs to: the one its ARN names, else ``account``."""
    parts = principal.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and _ACCOUNT.match(parts[4]):
        return parts[4]
    return account


def _username_of(principal: str) -> str | None:
    parts = principal.split(":", 5)
    if len(parts) == 6 and parts[2] == "iam" and parts[5].startswith("user/"):
        return parts[5].rsplit("/", 1)[1]
    return None
