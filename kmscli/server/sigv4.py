"""Verify AWS Signature Version 4 on a request, as AWS KMS does, for ``kmscli serve``.

Pure: no I/O, no clock (the caller passes ``now``), no HTTP framework, no
botocore. The caller hands over the request as the wire carried it and a way to
look up an access key's secret; it gets back who signed it, or one of three
typed errors with AWS's names and, where AWS's wording is known, its message:

* ``MissingAuthenticationTokenException``: no SigV4 ``Authorization`` header,
  or no ``X-Amz-Date``/``Date`` header.
* ``UnrecognizedClientException``: the access key id is unknown.
* ``InvalidSignatureException``: anything else: a malformed header, a scope of
  another service or date, ``host`` not signed, more than five minutes of clock
  skew, a body that is not the one signed, a wrong signature.

Malformed input of any kind ends in one of these three, never in another
exception (tested with hypothesis). No message, repr or error ever holds a
secret, a derived signing key or the request's signature.

Only header-based signing (``Authorization: AWS4-HMAC-SHA256 ...``) is
accepted: no query-string ("presigned") form, which no KMS client uses.

How the canonical request is built follows botocore byte for byte (it is what
the AWS CLI, boto3 and aws-encryption-cli sign with) and the Go SDK v2 (sops,
Terraform) where the two differ. See ``_canonical_uris`` and
``_canonical_queries`` for the few places where a client signs something other
than what the wire carries, and what is accepted because of it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Generic, TypeVar, cast
from urllib.parse import quote, unquote_to_bytes

from ..errors import InvalidSignatureException, MissingAuthenticationTokenException, UnrecognizedClientException

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
#: AWS accepts a request signed up to five minutes before or after its own clock.
MAX_SKEW = timedelta(minutes=5)
#: Derived signing keys kept (one per secret, day, region and service in use).
SIGNING_KEY_CACHE = 256
#: Every error ``verify`` raises.
AUTH_ERRORS = (MissingAuthenticationTokenException, UnrecognizedClientException, InvalidSignatureException)

# AWS's own wording, as its services answer (coral's messages).
MSG_MISSING = "Request is missing Authentication Token"
MSG_NO_DATE = "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
MSG_UNKNOWN_KEY = "The security token included in the request is invalid."
MSG_HOST_UNSIGNED = "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
MSG_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
MSG_BODY_HASH = "The provided 'x-amz-content-sha256' header does not match what was computed."

# Every pattern is used with fullmatch (never "$", which matches before a final
# newline) and re.ASCII, so that \d is 0-9 and not every Unicode digit.
_AMZ_DATE_RE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z", re.ASCII)
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
# botocore's own check of a region name (it refuses "local_1" before sending).
_REGION_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", re.ASCII)
# IAM's user-name characters: an access key id outside them is unknown to any
# lookup, and the ephemeral server can put any id that passes into an ARN.
_ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9_+=,.@-]{1,128}", re.ASCII)
_AUTH_PART_SEP = re.compile(r"[\s,]+")
_AUTH_PARTS = ("Credential", "SignedHeaders", "Signature")
_SHOWN_MAX = 128
#: Longest path or query whose canonical forms are cached.
_CACHED_MAX = 256

P = TypeVar("P")

#: ``secret_for(access_key_id)`` -> (secret access key, principal) or None when unknown.
SecretLookup = Callable[[str], tuple[str, P] | None]
Headers = Iterable[tuple[str | bytes, str | bytes]]


@dataclass(frozen=True)
class Identity(Generic[P]):
    """Who signed a request, and for which region and service."""

    access_key_id: str
    region: str
    service: str
    #: The credential scope's date, ``YYYYMMDD``.
    date: str
    #: When the client signed (``X-Amz-Date``, else ``Date``), UTC.
    signed_at: datetime
    #: ``X-Amz-Security-Token`` as sent, or None. Not validated: kmscli issues
    #: only long-term access keys, so a token names nothing here. When the
    #: client lists it in SignedHeaders (botocore and the Go SDK always do) it
    #: is covered by the signature like any header.
    session_token: str | None
    #: What ``secret_for`` returned beside the secret; None from ``accept_any``.
    principal: P
    #: The headers the signature covers, lowercase, as SignedHeaders lists them.
    signed_headers: tuple[str, ...] = field(default=(), compare=False)


class SigV4Verifier(Generic[P]):
    """Verify SigV4-signed requests against the secrets ``secret_for`` knows.

    One instance serves every request: it keeps the derived signing keys of
    recent (secret, day, region, service) in a bounded LRU, so a verification
    costs two SHA-256 and one HMAC instead of five HMACs.
    """

    def __init__(
        self,
        secret_for: SecretLookup[P] | None,
        *,
        service: str = "kms",
        max_skew: timedelta | None = MAX_SKEW,
        cache_size: int = SIGNING_KEY_CACHE,
    ) -> None:
        self._secret_for = secret_for
        self.service = service
        self.max_skew = max_skew
        self._signing_key = lru_cache(maxsize=cache_size)(signing_key)

    @classmethod
    def accept_any(cls, *, service: str = "kms", max_skew: timedelta | None = MAX_SKEW) -> SigV4Verifier[None]:
        """A verifier for ``serve --ephemeral``: every check but the signature itself.

        Any well-formed SigV4 request passes whatever secret signed it; the
        identity's principal is None.
        """
        return SigV4Verifier[None](None, service=service, max_skew=max_skew)

    def __repr__(self) -> str:
        mode = "accept_any" if self._secret_for is None else "verifying"
        return f"SigV4Verifier({mode}, service={self.service!r}, max_skew={self.max_skew!r})"

    def verify(self, method: str, target: str | bytes, headers: Headers, body: bytes, *, now: datetime) -> Identity[P]:
        """Return who signed this request, or raise one of ``AUTH_ERRORS``.

        ``target`` is the request target as received (path and any ``?query``,
        not decoded). ``headers`` are (name, value) pairs as received, repeats
        included, names in any case. A str value stands for the wire bytes
        decoded as ISO-8859-1, as http.server, WSGI and ASGI servers hand them
        over (one that cannot be, holding a character above U+00FF, is taken as
        text and read as UTF-8); bytes are the wire bytes. ``now`` is the
        server's clock (aware; a naive one is taken as UTC).
        """
        request = _parse(method, target, headers, body, now, self.service, self.max_skew)
        principal: P
        if self._secret_for is None:
            principal = cast(P, None)
        else:
            found = self._secret_for(request.access_key_id)
            if found is None:
                raise UnrecognizedClientException(MSG_UNKNOWN_KEY)
            secret, principal = found
            key = self._signing_key(secret, request.date, request.region, request.service)
            if not _signature_matches(request, key):
                raise InvalidSignatureException(MSG_MISMATCH)
        return Identity(
            access_key_id=request.access_key_id,
            region=request.region,
            service=request.service,
            date=request.date,
            signed_at=request.signed_at,
            session_token=request.session_token,
            principal=principal,
            signed_headers=tuple(h.lower() for h in request.signed_headers),
        )


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """SigV4's kSigning: the HMAC chain from the secret over the credential scope."""
    # surrogatepass: a lookup can never make this raise, whatever str it returns.
    key = hmac.digest(("AWS4" + secret).encode("utf-8", "surrogatepass"), date.encode(), "sha256")
    for part in (region, service, TERMINATOR):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def canonical_request(
    method: str, target: str | bytes, headers: Headers, body: bytes, signed_headers: Sequence[str]
) -> bytes:
    """The canonical request AWS (and botocore) build for this request, for tests and debugging.

    Raises KeyError when a header ``signed_headers`` names is not in ``headers``.
    """
    header_map = _header_map(headers)
    path, query = _split_target(_wire(target))
    return _canonical(
        _wire(method),
        _canonical_uris(path)[0],
        _canonical_queries(query)[0],
        _canonical_headers(header_map, signed_headers),
        ";".join(signed_headers).encode("latin-1", "replace"),
        hashlib.sha256(body).hexdigest().encode(),
    )


# -- parsing -------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    """A request whose Authorization header has passed every check but the signature."""

    method: bytes
    target: bytes
    headers: dict[str, list[bytes]]
    body: bytes
    signed_headers: tuple[str, ...]
    signed_headers_text: str
    #: The timestamp exactly as it goes into the string to sign.
    stamp: str
    signed_at: datetime
    access_key_id: str
    date: str
    region: str
    service: str
    signature: str = ""
    session_token: str | None = None

    def __repr__(self) -> str:
        # The signature lets anyone replay this request for five minutes.
        return f"_Request({self.access_key_id!r}, {self.date}/{self.region}/{self.service})"


def _parse(
    method: str,
    target: str | bytes,
    headers: Headers,
    body: bytes,
    now: datetime,
    service: str,
    max_skew: timedelta | None,
) -> _Request:
    """Check everything that needs no secret, in the order AWS checks it."""
    header_map = _header_map(headers)
    auth_values = header_map.get("authorization")
    if not auth_values:
        raise MissingAuthenticationTokenException(MSG_MISSING)
    authorization = _text(b",".join(auth_values)).strip()
    # AWS answers "missing" to any scheme but SigV4's, and "incomplete" to a
    # SigV4 one it cannot read.
    if not authorization.startswith("AWS4-"):
        raise MissingAuthenticationTokenException(MSG_MISSING)
    if len(auth_values) > 1:
        raise InvalidSignatureException("A request carries one Authorization header; this one has several.")
    algorithm, params = _parse_authorization(authorization)
    if "x-amz-date" not in header_map and "date" not in header_map:
        raise MissingAuthenticationTokenException(MSG_NO_DATE)

    stamp, signed_at = _request_time(header_map)
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    if max_skew is not None:
        _check_skew(stamp, signed_at, now, max_skew)

    signed_headers_text = params["SignedHeaders"]
    signed_headers = tuple(signed_headers_text.split(";"))
    if "host" not in (name.lower() for name in signed_headers):
        raise InvalidSignatureException(MSG_HOST_UNSIGNED)
    if algorithm != ALGORITHM:
        raise InvalidSignatureException(
            f"Unsupported AWS 'algorithm': '{_shown(algorithm)}' (only {ALGORITHM} for now)."
        )

    credential = params["Credential"]
    parts = credential.split("/")
    if len(parts) != 5:
        raise InvalidSignatureException(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{_shown(credential)}'"
        )
    access_key_id, date, region, scope_service, terminator = parts
    wrong = []
    if not _REGION_RE.fullmatch(region):
        wrong.append(f"Credential should be scoped to a valid region, not '{_shown(region)}'.")
    if scope_service != service:
        wrong.append(f"Credential should be scoped to correct service: '{service}'.")
    if terminator != TERMINATOR:
        wrong.append(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{_shown(terminator)}'."
        )
    if date != stamp[:8]:
        wrong.append(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{_shown(date)}' != '{stamp[:8]}', from '{stamp}'."
        )
    if wrong:
        raise InvalidSignatureException(" ".join(wrong))
    if not _ACCESS_KEY_RE.fullmatch(access_key_id):
        raise UnrecognizedClientException(MSG_UNKNOWN_KEY)

    signature = params["Signature"]
    if not _SIGNATURE_RE.fullmatch(signature):
        # Not 64 lowercase hex digits: no key could have made it.
        raise InvalidSignatureException(MSG_MISMATCH)
    token = header_map.get("x-amz-security-token")
    return _Request(
        method=_wire(method),
        target=_wire(target),
        headers=header_map,
        body=body,
        signed_headers=signed_headers,
        signed_headers_text=signed_headers_text,
        stamp=stamp,
        signed_at=signed_at,
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=scope_service,
        signature=signature,
        session_token=None if token is None else _text(b",".join(token)),
    )


def _parse_authorization(value: str) -> tuple[str, dict[str, str]]:
    """Split ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``.

    Parameters may be separated by commas, blanks or both, as AWS accepts.
    """
    algorithm, *rest_list = value.split(None, 1)
    rest = rest_list[0] if rest_list else ""
    params: dict[str, str] = {}
    for part in _AUTH_PART_SEP.split(rest):
        if not part:
            continue
        key, eq, val = part.partition("=")
        if not eq:
            raise InvalidSignatureException(
                f"'{_shown(key)}' not a valid key=value pair (missing equal-sign) in Authorization header."
            )
        if key not in _AUTH_PARTS:
            raise InvalidSignatureException(f"Authorization header has an unknown parameter '{_shown(key)}'.")
        if key in params:
            raise InvalidSignatureException(f"Authorization header has '{key}' more than once.")
        params[key] = val
    missing = [f"Authorization header requires '{key}' parameter." for key in _AUTH_PARTS if not params.get(key)]
    if missing:
        raise InvalidSignatureException(" ".join(missing))
    return algorithm, params


def _request_time(header_map: dict[str, list[bytes]]) -> tuple[str, datetime]:
    """The signing time, from X-Amz-Date or else Date, as text for the string to sign and as a datetime."""
    amz_date = header_map.get("x-amz-date")
    if amz_date is not None:
        text = _text(b",".join(amz_date))
        match = _AMZ_DATE_RE.fullmatch(text)
        try:
            if match is None:
                raise ValueError(text)
            year, month, day, hour, minute, second = (int(g) for g in match.groups())
            return text, datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except ValueError:
            raise InvalidSignatureException(
                f"Date must be in ISO-8601 'basic format'. Got '{_shown(text)}'. See http://en.wikipedia.org/wiki/ISO_8601"
            ) from None
    # botocore sends Date instead of X-Amz-Date when the request already has a
    # Date header; the string to sign then holds that instant in basic format.
    text = _text(b",".join(header_map["date"]))
    try:
        when = parsedate_to_datetime(text)
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise InvalidSignatureException(f"The Date header is not an HTTP date: '{_shown(text)}'.") from None
    return _basic(when), when


def _check_skew(stamp: str, signed_at: datetime, now: datetime, max_skew: timedelta) -> None:
    seconds = int(max_skew.total_seconds())
    span = f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} sec"
    if signed_at < now - max_skew:
        raise InvalidSignatureException(
            f"Signature expired: {stamp} is now earlier than {_basic(now - max_skew)} ({_basic(now)} - {span}.)"
        )
    if signed_at > now + max_skew:
        raise InvalidSignatureException(
            f"Signature not yet current: {stamp} is still later than {_basic(now + max_skew)} ({_basic(now)} + {span}.)"
        )


# -- the canonical request -----------------------------------------------------


def _signature_matches(request: _Request, key: bytes) -> bool:
    """Whether the signature is the one ``key`` makes over one reading of the request."""
    body_hash = hashlib.sha256(request.body).hexdigest()
    declared = request.headers.get("x-amz-content-sha256")
    # The body is the KMS operation's input: it is always signed, so
    # UNSIGNED-PAYLOAD (and any other stand-in) fails here.
    if declared is not None and _text(b",".join(declared)) != body_hash:
        raise InvalidSignatureException(MSG_BODY_HASH)
    try:
        headers = _canonical_headers(request.headers, request.signed_headers)
    except KeyError:
        return False  # a signed header is gone
    signed_headers = request.signed_headers_text.encode("latin-1", "replace")
    scope = f"{request.date}/{request.region}/{request.service}/{TERMINATOR}"
    head = f"{ALGORITHM}\n{request.stamp}\n{scope}\n".encode()
    given = request.signature.encode()
    path, query = _split_target(request.target)
    # A server sees the same few paths again and again ("/", "/kms"); only short ones are kept.
    uris = _cached_uris(path) if len(path) <= _CACHED_MAX else _canonical_uris(path)
    queries = _cached_queries(query) if len(query) <= _CACHED_MAX else _canonical_queries(query)
    for uri in uris:
        for canonical_query in queries:
            canonical = _canonical(request.method, uri, canonical_query, headers, signed_headers, body_hash.encode())
            string_to_sign = head + hashlib.sha256(canonical).hexdigest().encode()
            expected = hmac.digest(key, string_to_sign, "sha256").hex().encode()
            if hmac.compare_digest(expected, given):
                return True
    return False


def _canonical(
    method: bytes, uri: bytes, query: bytes, headers: bytes, signed_headers: bytes, payload_hash: bytes
) -> bytes:
    # The header block ends in a newline of its own, hence the blank line.
    return b"\n".join((method, uri, query, headers, signed_headers, payload_hash))


def _canonical_headers(header_map: dict[str, list[bytes]], signed_headers: Sequence[str]) -> bytes:
    """``name:value`` lines for the signed headers, in the order SignedHeaders lists them.

    Each value is trimmed and its runs of whitespace made one space, repeats
    joined by commas. The whitespace is what Python's ``str.split()`` finds in
    the value read as UTF-8 (botocore's rule: it splits the text it then sends
    as UTF-8), which includes tabs and a few more characters than AWS's
    documented "sequential spaces". Raises KeyError when a signed header is absent.
    """
    lines = []
    for name in signed_headers:
        values = header_map[name.lower()]
        lines.append(name.encode("latin-1", "replace") + b":" + b",".join(_trimmed(v) for v in values) + b"\n")
    return b"".join(lines)


def _trimmed(value: bytes) -> bytes:
    # surrogateescape keeps bytes that are not UTF-8 as they came, both ways.
    return " ".join(value.decode("utf-8", "surrogateescape").split()).encode("utf-8", "surrogateescape")


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """Path and query of a request target; an absolute-form target (from a proxy) loses its scheme and host."""
    if not target.startswith(b"/") and b"://" in target:
        after = target.split(b"://", 1)[1]
        slash = after.find(b"/")
        question = after.find(b"?")
        cut = min(i for i in (slash, question, len(after)) if i >= 0)
        target = after[cut:]
    target = target.split(b"#", 1)[0]
    path, _, query = target.partition(b"?")
    return path, query


def _canonical_uris(path: bytes) -> tuple[bytes, ...]:
    """The canonical URIs a client may have signed for this wire path, the AWS one first.

    AWS (for every service but S3) and botocore take the path as sent, drop
    empty, ``.`` and ``..`` segments, and percent-encode it once more, so
    ``/a%20b`` is signed as ``/a%2520b``. Two clients sign something else:

    * the Go SDK v2 does not drop segments, so ``//kms`` is signed as is;
    * botocore signs the endpoint URL's path before urllib3 escapes it, so an
      endpoint with a space (``http://h/a b``) is signed as ``/a%20b`` while the
      wire carries ``/a%20b``, encoded once, not twice.

    The server routes on X-Amz-Target on any path, so accepting these readings
    of the same path grants nothing a correct signature would not.
    """
    if not path:
        path = b"/"
    readings = [_remove_dot_segments(path), path]
    if b"%" in path:
        readings.append(_remove_dot_segments(unquote_to_bytes(path)))
    return _unique(quote(p, safe="/~").encode() for p in readings)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 section 5.2.4, and empty segments dropped as AWS wants: botocore's ``remove_dot_segments``."""
    out: list[bytes] = []
    for segment in path.split(b"/"):
        if segment == b"..":
            if out:
                out.pop()
        elif segment and segment != b".":
            out.append(segment)
    first = b"/" if path.startswith(b"/") else b""
    last = b"/" if path.endswith(b"/") and out else b""
    return first + b"/".join(out) + last


def _canonical_queries(query: bytes) -> tuple[bytes, ...]:
    """The canonical query strings a client may have signed for this wire query, the AWS one first.

    AWS decodes each name and value (``+`` as a space) and encodes them again,
    everything but ``A-Za-z0-9-_.~`` as ``%XY``, sorted by name, then value.
    botocore does exactly that for parameters it is given, but signs a query
    that is part of the endpoint URL as written, only sorted; that reading is
    accepted too. KMS requests carry no query at all.
    """
    if not query:
        return (b"",)
    encoded = []
    for part in query.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            encoded.append((_encode_component(name), _encode_component(value)))
    as_sent = [(name, value) for name, _, value in (part.partition(b"=") for part in query.split(b"&"))]
    return _unique(b"&".join(name + b"=" + value for name, value in sorted(pairs)) for pairs in (encoded, as_sent))


def _encode_component(component: bytes) -> bytes:
    return quote(unquote_to_bytes(component.replace(b"+", b" ")), safe="-_.~").encode()


_cached_uris = lru_cache(maxsize=64)(_canonical_uris)
_cached_queries = lru_cache(maxsize=64)(_canonical_queries)


# -- small helpers -------------------------------------------------------------


def _header_map(headers: Headers) -> dict[str, list[bytes]]:
    header_map: dict[str, list[bytes]] = {}
    for name, value in headers:
        key = name if isinstance(name, str) else _text(name)
        header_map.setdefault(key.strip().lower(), []).append(_wire(value))
    return header_map


def _wire(value: str | bytes) -> bytes:
    """The bytes a str stands for (see ``verify``)."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _basic(when: datetime) -> str:
    """ISO 8601 basic format, as X-Amz-Date is written (strftime's %Y does not pad years before 1000)."""
    return f"{when.year:04d}{when.month:02d}{when.day:02d}T{when.hour:02d}{when.minute:02d}{when.second:02d}Z"


def _shown(text: str) -> str:
    """Client-supplied text fit to quote in a message: printable, and not too long."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:_SHOWN_MAX])
    return shown + "..." if len(text) > _SHOWN_MAX else shown


def _unique(items: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(items))
