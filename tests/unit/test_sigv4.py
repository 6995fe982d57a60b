"""SigV4 verification (kmscli.server.sigv4) against botocore's own signer and AWS's published examples.

Requests are signed by botocore's ``SigV4Auth`` (what the AWS CLI, boto3 and
aws-encryption-cli use) and handed to the verifier as a server receives them:
the request target as urllib3 sends it, header values as UTF-8 on the wire
read back as ISO-8859-1 (what http.server does), Host and Content-Length added
as the HTTP client adds them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.server
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util.url import _encode_target  # private: how urllib3 escapes a target as it sends it

from kmscli.errors import InvalidSignatureException, MissingAuthenticationTokenException, UnrecognizedClientException
from kmscli.server import sigv4
from kmscli.server.sigv4 import AUTH_ERRORS, Identity, SigV4Verifier, canonical_request, signing_key

T = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
AKID = "AKIAKMSCLITEST000001"
SECRET = "kmscli/Test+Secret/0123456789abcdefghijklm"
OTHER_AKID = "AKIAKMSCLITEST000002"
OTHER_SECRET = "another/Secret+0123456789abcdefghijklmnop"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDKmscliSessionToken+/="
HOST = "127.0.0.1:8080"
KMS_HEADERS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.Encrypt"}
BODY = b'{"KeyId": "alias/app", "Plaintext": "aGVsbG8="}'
PRINCIPALS = {AKID: (SECRET, "arn:aws:iam::123456789012:user/alice"), OTHER_AKID: (OTHER_SECRET, "bob")}


def lookup(access_key_id: str) -> tuple[str, str] | None:
    return PRINCIPALS.get(access_key_id)


VERIFIER = SigV4Verifier(lookup)


@dataclasses.dataclass(frozen=True)
class Wire:
    """A request as a server receives it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def verify(self, now: datetime = T, verifier: SigV4Verifier[str] = VERIFIER) -> Identity[str]:
        return verifier.verify(self.method, self.target, self.headers, self.body, now=now)

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name.lower())

    def replace_header(self, name: str, value: str | None) -> Wire:
        """Every ``name`` header set to ``value`` (None: removed)."""
        headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            headers.append((name, value))
        return dataclasses.replace(self, headers=headers)

    def add_header(self, name: str, value: str) -> Wire:
        return dataclasses.replace(self, headers=[*self.headers, (name, value)])

    def edit_authorization(self, old: str, new: str) -> Wire:
        value = self.header("Authorization")
        assert old in value
        return self.replace_header("Authorization", value.replace(old, new))


def as_received(value: str) -> str:
    """A header value as http.server hands it over: the wire's UTF-8 read as ISO-8859-1."""
    return value.encode("utf-8").decode("latin-1")


def sign(
    url: str = f"http://{HOST}/",
    *,
    body: bytes = BODY,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    region: str = "us-east-1",
    token: str | None = None,
    at: datetime = T,
    akid: str = AKID,
    secret: str = SECRET,
    service: str = "kms",
    method: str = "POST",
    edit: Callable[[AWSRequest], None] | None = None,
) -> Wire:
    """Sign with botocore at ``at``; return what a server receives."""
    request = AWSRequest(
        method=method, url=url, data=body, params=params or {}, headers={**KMS_HEADERS, **(headers or {})}
    )
    if edit is not None:
        edit(request)
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.astimezone(UTC).replace(tzinfo=None)):
        SigV4Auth(Credentials(akid, secret, token), service, region).add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    # items() of the request's own headers keeps repeats; prepare() adds Content-Length.
    pairs = list(request.headers.items())
    if "Content-Length" not in request.headers and "Content-Length" in prepared.headers:
        pairs.append(("Content-Length", prepared.headers["Content-Length"]))
    received = [("Host", parts.netloc), *((k, as_received(v)) for k, v in pairs)]
    # urllib3 escapes what may not appear in a request target (a space, non-ASCII) as it sends.
    target = _encode_target(parts.path + ("?" + parts.query if parts.query else ""))
    return Wire(method, target, received, prepared.body or b"")


def basic(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


# -- botocore signs, we verify ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/kms",
        "/kms/",
        "/a b/c",  # botocore signs before urllib3 escapes the space
        "/a%20b/c",  # an escaped endpoint path is signed escaped once more
        "/caf%C3%A9/x",
        "/café/x",
        "/kms/./x/../y",
        "/kms?b=2&a=1",
        "/kms?Action=List&Marker=a%2Fb",
        "/kms?flag",
    ],
)
@pytest.mark.parametrize("region", ["us-east-1", "local"])
def test_botocore_signed_requests_verify(path: str, region: str) -> None:
    identity = sign(f"http://{HOST}{path}", region=region).verify()
    assert identity == Identity(
        access_key_id=AKID,
        region=region,
        service="kms",
        date="20260314",
        signed_at=T,
        session_token=None,
        principal="arn:aws:iam::123456789012:user/alice",
    )


def test_a_session_token_is_signed_and_returned() -> None:
    wire = sign(token=TOKEN, region="local")
    assert "x-amz-security-token" in wire.header("Authorization")
    assert wire.verify().session_token == TOKEN
    with pytest.raises(InvalidSignatureException):
        wire.replace_header("X-Amz-Security-Token", TOKEN + "x").verify()


def test_query_parameters_are_canonicalised_as_aws_does() -> None:
    # botocore signs quote(value) (%20 for a space) but sends urlencode (+).
    wire = sign(f"http://{HOST}/kms", params={"z": "a b", "a": "+/~é", "m": ""})
    assert "+" in wire.target
    assert wire.verify().access_key_id == AKID


def test_the_headers_the_go_sdk_v2_signs_verify() -> None:
    extra = {"amz-sdk-invocation-id": "4ffb4c3d-4b4a-4bd3-9a07-3e1e6b0cde2a", "amz-sdk-request": "attempt=1; max=3"}
    wire = sign(headers={**extra, "Content-Length": str(len(BODY))}, region="local")
    signed = wire.header("Authorization").split("SignedHeaders=")[1].split(",")[0]
    assert signed == "amz-sdk-invocation-id;amz-sdk-request;content-length;content-type;host;x-amz-date;x-amz-target"
    assert wire.verify().region == "local"
    with pytest.raises(InvalidSignatureException):
        wire.replace_header("amz-sdk-request", "attempt=2; max=3").verify()


def test_a_date_header_stands_in_for_x_amz_date() -> None:
    # botocore sends Date (and no X-Amz-Date) when the request already has one.
    wire = sign(headers={"Date": "whatever"})
    assert not any(k.lower() == "x-amz-date" for k, _ in wire.headers)
    assert wire.header("Date") == formatdate(T.timestamp())
    assert wire.verify().signed_at == T
    with pytest.raises(InvalidSignatureException, match="Signature expired"):
        wire.verify(now=T + timedelta(minutes=6))


def test_repeated_and_untidy_header_values_are_joined_and_trimmed_as_botocore_does() -> None:
    def repeat(request: AWSRequest) -> None:
        request.headers["X-Kmscli-Note"] = "  one   two\tthree  "
        request.headers["X-Kmscli-Note"] = "four"  # HTTPMessage appends: a second header

    wire = sign(edit=repeat)
    assert [v for k, v in wire.headers if k == "X-Kmscli-Note"] == ["  one   two\tthree  ", "four"]
    assert wire.verify().access_key_id == AKID
    # The canonical value is "one two three,four": dropping or reordering one is another request.
    with pytest.raises(InvalidSignatureException):
        wire.replace_header("X-Kmscli-Note", "four").verify()


def test_non_ascii_header_values_verify_as_str_or_bytes() -> None:
    wire = sign(headers={"X-Kmscli-Note": "café ☕  naïve"})
    assert wire.header("X-Kmscli-Note") == "cafÃ© â\x98\x95  naÃ¯ve"
    assert wire.verify().access_key_id == AKID
    as_bytes = [(k.encode(), v.encode("latin-1")) for k, v in wire.headers]
    assert VERIFIER.verify("POST", wire.target.encode(), as_bytes, wire.body, now=T).access_key_id == AKID


def test_x_amz_content_sha256_is_accepted_when_it_is_the_body_hash() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    assert sign(headers={"X-Amz-Content-SHA256": digest}).verify().access_key_id == AKID
    for wrong in (hashlib.sha256(b"other").hexdigest(), "UNSIGNED-PAYLOAD"):
        with pytest.raises(InvalidSignatureException, match="x-amz-content-sha256"):
            sign(headers={"X-Amz-Content-SHA256": wrong}).verify()


def test_an_unsigned_header_added_after_signing_is_fine() -> None:
    wire = sign().add_header("User-Agent", "aws-cli/2").add_header("X-Forwarded-For", "10.0.0.1")
    wire = wire.add_header("X-Forwarded-For", "10.0.0.2")
    assert wire.verify().access_key_id == AKID


def test_the_signing_key_follows_the_secret_the_lookup_returns_now() -> None:
    secrets = {AKID: (SECRET, "alice")}
    verifier = SigV4Verifier(secrets.get)
    wire = sign()
    assert wire.verify(verifier=verifier).principal == "alice"
    assert wire.verify(verifier=verifier).principal == "alice"  # from the cached key
    secrets[AKID] = (OTHER_SECRET, "alice")  # the key was rotated
    with pytest.raises(InvalidSignatureException):
        wire.verify(verifier=verifier)
    assert sign(secret=OTHER_SECRET).verify(verifier=verifier).principal == "alice"


# -- one change, the right refusal -------------------------------------------------

MISMATCH = sigv4.MSG_MISMATCH
Mutation = Callable[[Wire], Wire]


def flip_body_byte(wire: Wire) -> Wire:
    body = bytearray(wire.body)
    body[len(body) // 2] ^= 0x01
    return dataclasses.replace(wire, body=bytes(body))


def flip_signature_digit(wire: Wire) -> Wire:
    signature = wire.header("Authorization").rsplit("Signature=", 1)[1]
    digit = "0" if signature[-1] != "0" else "1"
    return wire.edit_authorization(signature, signature[:-1] + digit)


def later_x_amz_date(wire: Wire) -> Wire:
    return wire.replace_header("X-Amz-Date", basic(T + timedelta(seconds=1)))


BAD = InvalidSignatureException
UNKNOWN = UnrecognizedClientException
MISSING = MissingAuthenticationTokenException


def edit_auth(old: str, new: str) -> Mutation:
    return lambda wire: wire.edit_authorization(old, new)


def set_header(name: str, value: str | None) -> Mutation:
    return lambda wire: wire.replace_header(name, value)


MUTATIONS: list[tuple[str, Mutation, type[Exception], str]] = [
    ("body byte", flip_body_byte, BAD, MISMATCH),
    ("body extended", lambda w: dataclasses.replace(w, body=w.body + b" "), BAD, MISMATCH),
    ("signed header value", set_header("Content-Type", "application/json"), BAD, MISMATCH),
    ("target header", set_header("X-Amz-Target", "TrentService.Decrypt"), BAD, MISMATCH),
    ("host", set_header("Host", "127.0.0.1:8081"), BAD, MISMATCH),
    ("signed header removed", set_header("X-Amz-Target", None), BAD, MISMATCH),
    ("method", lambda w: dataclasses.replace(w, method="PUT"), BAD, MISMATCH),
    ("path", lambda w: dataclasses.replace(w, target="/kms"), BAD, MISMATCH),
    ("query added", lambda w: dataclasses.replace(w, target="/?a=1"), BAD, MISMATCH),
    ("x-amz-date by a second", later_x_amz_date, BAD, MISMATCH),
    ("region in scope", edit_auth("/us-east-1/", "/us-west-2/"), BAD, MISMATCH),
    ("access key of another user", edit_auth(AKID, OTHER_AKID), BAD, MISMATCH),
    ("unknown access key", edit_auth(AKID, "AKIAUNKNOWN000000000"), UNKNOWN, sigv4.MSG_UNKNOWN_KEY),
    ("signature hex", flip_signature_digit, BAD, MISMATCH),
    ("signature not 64 hex digits", edit_auth("Signature=", "Signature=A"), BAD, MISMATCH),
    ("signed headers list", edit_auth(";x-amz-target", ""), BAD, MISMATCH),
    ("no host signed", edit_auth("host;", ""), BAD, sigv4.MSG_HOST_UNSIGNED),
    ("no authorization", set_header("Authorization", None), MISSING, sigv4.MSG_MISSING),
    ("another scheme", set_header("Authorization", "Bearer abc"), MISSING, sigv4.MSG_MISSING),
    ("no date", set_header("X-Amz-Date", None), MISSING, sigv4.MSG_NO_DATE),
    (
        "another algorithm",
        edit_auth("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
        BAD,
        "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512' (only AWS4-HMAC-SHA256 for now).",
    ),
    ("no signature", edit_auth(", Signature=", ", Sig="), BAD, "'Sig'"),
    ("two authorizations", lambda w: w.add_header("Authorization", w.header("Authorization")), BAD, "several"),
    ("service in scope", edit_auth("/kms/", "/s3/"), BAD, "Credential should be scoped to correct service: 'kms'."),
    (
        "terminator",
        edit_auth("/aws4_request", "/aws5_request"),
        BAD,
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'.",
    ),
    (
        "bad region",
        edit_auth("/us-east-1/", "/us_east_1/"),
        BAD,
        "Credential should be scoped to a valid region, not 'us_east_1'.",
    ),
    (
        "scope date",
        edit_auth("/20260314/", "/20260313/"),
        BAD,
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
        "'20260313' != '20260314', from '20260314T150926Z'.",
    ),
    (
        "four scope parts",
        edit_auth("/aws4_request", ""),
        BAD,
        "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
        "got 'AKIAKMSCLITEST000001/20260314/us-east-1/kms'",
    ),
    (
        "x-amz-date format",
        set_header("X-Amz-Date", "2026-03-14T15:09:26Z"),
        BAD,
        "Date must be in ISO-8601 'basic format'. Got '2026-03-14T15:09:26Z'.",
    ),
]


@pytest.mark.parametrize(("what", "mutate", "error", "message"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_single_change_is_refused_with_the_right_error(
    what: str, mutate: Mutation, error: type[Exception], message: str
) -> None:
    wire = sign(f"http://{HOST}/", token=TOKEN)
    assert wire.verify().access_key_id == AKID
    with pytest.raises(error) as raised:
        mutate(wire).verify()
    assert type(raised.value) is error
    assert message in str(raised.value)
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)
    assert wire.header("Authorization").rsplit("=", 1)[1] not in str(raised.value)


# -- clock skew ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sign_off", [timedelta(0), timedelta(minutes=4, seconds=59), -timedelta(minutes=4, seconds=59)]
)
def test_up_to_five_minutes_of_skew_either_way_is_accepted(sign_off: timedelta) -> None:
    assert sign(at=T + sign_off).verify(now=T).access_key_id == AKID
    assert sign(at=T).verify(now=T + timedelta(minutes=5)).access_key_id == AKID


def test_a_request_signed_over_five_minutes_ago_has_expired() -> None:
    with pytest.raises(InvalidSignatureException) as raised:
        sign(at=T - timedelta(minutes=5, seconds=1)).verify(now=T)
    assert str(raised.value) == (
        "Signature expired: 20260314T150425Z is now earlier than 20260314T150426Z (20260314T150926Z - 5 min.)"
    )


def test_a_request_signed_over_five_minutes_ahead_is_not_yet_current() -> None:
    with pytest.raises(InvalidSignatureException) as raised:
        sign(at=T + timedelta(minutes=5, seconds=1)).verify(now=T)
    assert str(raised.value) == (
        "Signature not yet current: 20260314T151427Z is still later than 20260314T151426Z (20260314T150926Z + 5 min.)"
    )


def test_skew_is_measured_against_an_aware_or_naive_utc_now() -> None:
    wire = sign()
    assert wire.verify(now=T.replace(tzinfo=None)).signed_at == T
    assert wire.verify(now=T.astimezone(UTC)).signed_at == T


def test_a_verifier_without_a_skew_limit_takes_any_date() -> None:
    verifier = SigV4Verifier(lookup, max_skew=None)
    assert sign(at=T - timedelta(days=400)).verify(now=T, verifier=verifier).access_key_id == AKID


# -- AWS's published examples -------------------------------------------------------

SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SUITE_AT = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
S3_AT = datetime(2013, 5, 24, tzinfo=UTC)
# (name, service, method, target, host, extra headers, signed headers, signature):
# AWS's SigV4 test suite (service "service") and the S3 API reference's examples.
KNOWN_ANSWERS = [
    ("get-vanilla", "service", "GET", "/", "example.amazonaws.com", [], "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-query-order-key-case", "service", "GET", "/?Param2=value2&Param1=value1", "example.amazonaws.com", [],
     "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("post-vanilla", "service", "POST", "/", "example.amazonaws.com", [], "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("s3 GET object", "s3", "GET", "/test.txt", "examplebucket.s3.amazonaws.com",
     [("Range", "bytes=0-9"), ("x-amz-content-sha256", EMPTY_SHA256)], "host;range;x-amz-content-sha256;x-amz-date",
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    ("s3 GET lifecycle", "s3", "GET", "/?lifecycle", "examplebucket.s3.amazonaws.com",
     [("x-amz-content-sha256", EMPTY_SHA256)], "host;x-amz-content-sha256;x-amz-date",
     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ("s3 list objects", "s3", "GET", "/?max-keys=2&prefix=J", "examplebucket.s3.amazonaws.com",
     [("x-amz-content-sha256", EMPTY_SHA256)], "host;x-amz-content-sha256;x-amz-date",
     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "service", "method", "target", "host", "extra", "signed", "signature"),
    KNOWN_ANSWERS,
    ids=[k[0] for k in KNOWN_ANSWERS],
)
def test_aws_published_examples_verify(
    name: str, service: str, method: str, target: str, host: str, extra: list, signed: str, signature: str
) -> None:
    suite = service == "service"
    akid, secret, at = ("AKIDEXAMPLE", SUITE_SECRET, SUITE_AT) if suite else ("AKIAIOSFODNN7EXAMPLE", S3_SECRET, S3_AT)
    credential = f"{akid}/{at:%Y%m%d}/us-east-1/{service}/aws4_request"
    authorization = f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={signature}"
    headers = [("Host", host), ("X-Amz-Date", basic(at)), *extra, ("Authorization", authorization)]
    verifier = SigV4Verifier({akid: (secret, name)}.get, service=service)
    identity = verifier.verify(method, target, headers, b"", now=at)
    assert (identity.principal, identity.service, identity.date) == (name, service, f"{at:%Y%m%d}")
    wrong = authorization[:-1] + ("0" if signature[-1] != "0" else "1")
    with pytest.raises(InvalidSignatureException):
        verifier.verify(method, target, [*headers[:-1], ("Authorization", wrong)], b"", now=at)


def test_get_vanilla_canonical_request_and_signing_key() -> None:
    headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]
    canonical = canonical_request("GET", "/", headers, b"", ["host", "x-amz-date"])
    assert canonical == (
        b"GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
        + EMPTY_SHA256.encode()
    )
    assert hashlib.sha256(canonical).hexdigest() == "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    key = signing_key(SUITE_SECRET, "20150830", "us-east-1", "service")
    string_to_sign = (
        b"AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        + hashlib.sha256(canonical).hexdigest().encode()
    )
    assert hmac.new(key, string_to_sign, "sha256").hexdigest() == KNOWN_ANSWERS[0][-1]


# -- ephemeral mode, secrets ---------------------------------------------------------


def test_accept_any_takes_any_secret_but_still_checks_the_form() -> None:
    verifier = SigV4Verifier.accept_any()
    identity = verifier.verify("POST", "/", sign(akid="test", secret="test").headers, BODY, now=T)
    assert (identity.access_key_id, identity.principal) == ("test", None)
    with pytest.raises(InvalidSignatureException, match="Signature expired"):
        verifier.verify("POST", "/", sign(at=T - timedelta(hours=1)).headers, BODY, now=T)
    with pytest.raises(InvalidSignatureException, match="correct service"):
        verifier.verify("POST", "/", sign(service="s3").headers, BODY, now=T)
    with pytest.raises(UnrecognizedClientException):
        verifier.verify("POST", "/", sign(akid="no:colon").headers, BODY, now=T)
    assert "accept_any" in repr(verifier)


def test_no_repr_holds_a_secret() -> None:
    wire = sign(token=TOKEN)
    identity = wire.verify()
    request = sigv4._parse(wire.method, wire.target, wire.headers, wire.body, T, "kms", sigv4.MAX_SKEW)
    signature = wire.header("Authorization").rsplit("=", 1)[1]
    for shown in (repr(identity), repr(VERIFIER), repr(request), str(identity)):
        assert SECRET not in shown and signature not in shown


# -- anything at all: one of the three errors, never another -------------------------

RELEVANT_NAMES = [
    "Authorization",
    "X-Amz-Date",
    "Date",
    "Host",
    "x-amz-content-sha256",
    "X-Amz-Security-Token",
    "X-Amz-Target",
]
pieces = st.one_of(
    st.text(max_size=24), st.sampled_from(["", "/", ";", ",", "=", " ", "\n", "é", "\udcff", "%", "%zz"])
)
stamp_text = st.one_of(
    st.just(basic(T)), st.just("00010101T000000Z"), st.just("99991231T235959Z"), st.just("20261399T250000Z"), pieces
)
# A real signed request, whose Authorization is rebuilt with up to three fields
# replaced, so that examples reach every check and not only the first.
BASE = sign(f"http://{HOST}/", token=TOKEN)
_auth = re.fullmatch(
    r"(?P<algorithm>\S+) Credential=(?P<akid>[^/]+)/(?P<date>[^/]+)/(?P<region>[^/]+)/(?P<service>[^/]+)/"
    r"(?P<terminator>[^,]+)(?P<sep1>, )SignedHeaders=(?P<signed>[^,]+)(?P<sep2>, )Signature=(?P<signature>.+)",
    BASE.header("Authorization"),
)
assert _auth is not None
AUTH_FIELDS = _auth.groupdict()
AUTH_FORMAT = (
    "{algorithm} Credential={akid}/{date}/{region}/{service}/{terminator}{sep1}SignedHeaders={signed}{sep2}"
    "Signature={signature}"
)
field_values = st.one_of(
    st.sampled_from(["AWS4-X", "AWS4-", OTHER_AKID, "test", "20260313", "local", "s3", "aws4_request", ",", " "]),
    st.sampled_from(["host", "host;x-amz-date", "0" * 64, AUTH_FIELDS["signature"][::-1]]),
    pieces,
)
# Mostly the kind that reaches furthest: a real header with a few fields replaced.
authorizations = st.sampled_from(["fields"] * 8 + ["text", "bytes"]).flatmap(
    lambda kind: {
        "fields": st.dictionaries(st.sampled_from(sorted(AUTH_FIELDS)), field_values, max_size=3).map(
            lambda replaced: AUTH_FORMAT.format(**{**AUTH_FIELDS, **replaced})
        ),
        "text": pieces,
        "bytes": st.binary(max_size=80),
    }[kind]
)
header_values = st.one_of(st.text(max_size=40), st.binary(max_size=40), stamp_text)
random_headers = st.lists(
    st.tuples(st.sampled_from(RELEVANT_NAMES) | st.text(max_size=12) | st.binary(max_size=12), header_values),
    max_size=6,
)
# The base request's own headers less some (the Authorization is drawn apart), or none of them.
base_headers = st.lists(st.booleans(), min_size=len(BASE.headers), max_size=len(BASE.headers)).map(
    lambda keep: [h for h, k in zip(BASE.headers, keep, strict=True) if k and h[0] != "Authorization"]
)


def check_refusal_or_identity(verify: Callable[[], Identity]) -> None:
    try:
        verify()
    except AUTH_ERRORS as error:
        message = str(error)
        assert message and "\n" not in message and SECRET not in message
        message.encode("utf-8")  # fit for a JSON answer: no lone surrogates


@settings(max_examples=500, deadline=None)
@given(
    authorization=authorizations,
    base=st.just([h for h in BASE.headers if h[0] != "Authorization"]) | base_headers | st.just([]),
    headers=st.just([]) | random_headers,
    target=st.one_of(st.sampled_from(["/", "/kms?a=b", "http://h/x?y", "*"]), pieces, st.binary(max_size=20)),
    method=st.sampled_from(["POST", "GET"]) | st.text(max_size=6),
    body=st.just(BASE.body) | st.binary(max_size=64),
    now=st.just(T) | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_any_request_is_an_identity_or_one_of_three_errors(
    authorization: str | bytes,
    base: list,
    headers: list,
    target: str | bytes,
    method: str,
    body: bytes,
    now: datetime,
) -> None:
    all_headers = [("Authorization", authorization), *base, *headers]
    check_refusal_or_identity(lambda: VERIFIER.verify(method, target, all_headers, body, now=now))
    check_refusal_or_identity(lambda: SigV4Verifier.accept_any().verify(method, target, all_headers, body, now=now))


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["Authorization", "X-Amz-Date", "Host", "Content-Type", "X-Amz-Target"]),
    data=st.data(),
)
def test_any_edit_of_a_signed_request_is_refused_with_one_of_three_errors(field: str, data: st.DataObject) -> None:
    wire = sign()
    original = wire.header(field)
    edited = data.draw(
        st.one_of(st.text(max_size=80), pieces.map(lambda p: original + p), pieces.map(lambda p: p + original))
    )
    if field == "Authorization":
        # Separators may be blanks, commas or both, as AWS accepts.
        if re.sub(r"[\s,]+", " ", edited).strip() == re.sub(r"[\s,]+", " ", original).strip():
            return
    elif " ".join(edited.split()) == " ".join(original.split()):
        return  # the same value once trimmed, as canonical headers are
    with pytest.raises(AUTH_ERRORS):
        wire.replace_header(field, edited).verify()


# Header values botocore can send: no surrogates (not UTF-8), no line breaks (http.client refuses them).
sendable = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30)
# Path segments of two kinds that botocore and the wire agree on (see _canonical_uris): only
# characters urllib3 leaves alone (escapes included, upper case as urllib3 writes them), or no "%".
plain_segments = st.lists(
    st.one_of(st.text("abcXYZ09-._~!$&'()*+,;=:@", max_size=6), st.sampled_from(["%20", "%2F", "%C3%A9", ".", ".."])),
    max_size=4,
)
unescaped_segments = st.lists(
    st.text(st.characters(blacklist_characters="%?#/\r\n\x00", blacklist_categories=("Cs",)), max_size=6), max_size=4
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=plain_segments | unescaped_segments,
    params=st.dictionaries(sendable.filter(bool), sendable, max_size=3),
    values=st.lists(sendable, max_size=3),
    body=st.binary(max_size=100),
    token=st.none() | st.text("ABCdef0123+/=", min_size=1, max_size=40),
    region=st.sampled_from(["us-east-1", "local", "eu-west-3", "a"]),
)
def test_anything_botocore_signs_verifies(
    segments: list[str], params: dict, values: list[str], body: bytes, token: str | None, region: str
) -> None:
    def add(request: AWSRequest) -> None:
        for value in values:
            request.headers["X-Kmscli-Extra"] = value

    url = f"http://{HOST}/" + "/".join(segments)
    wire = sign(url, params=params, body=body, token=token, region=region, edit=add)
    assert wire.verify().region == region


# -- a real client over a real socket -------------------------------------------------


@pytest.fixture
def kms_endpoint() -> Iterator[tuple[str, list]]:
    """A local HTTP server whose every answer depends only on the verifier."""
    seen: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                identity = VERIFIER.verify("POST", self.path, self.headers.items(), body, now=datetime.now(UTC))
                seen.append((self.path, identity))
                status, answer = 200, {"Keys": [], "Truncated": False}
            except AUTH_ERRORS as error:
                seen.append((self.path, error))
                status, answer = 400, {"__type": error.name, "message": str(error)}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_boto3_against_a_local_server(
    kms_endpoint: tuple[str, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    # Only what the test passes: no profile, config file, endpoint variable or proxy of this machine.
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    endpoint, seen = kms_endpoint
    session = boto3.session.Session()
    config = Config(retries={"max_attempts": 1})

    def client(path: str, akid: str = AKID, secret: str = SECRET, **kw: str) -> object:
        return session.client("kms", endpoint_url=endpoint + path, region_name=kw.pop("region", "local"),
                              aws_access_key_id=akid, aws_secret_access_key=secret, config=config, **kw)  # fmt: skip

    for path in ["", "/", "/kms", "/a b/c", "/a%20b/c", "/kms?x=1&y=a%2Bb"]:
        assert client(path).list_keys()["Keys"] == []  # type: ignore[attr-defined]
        assert seen[-1][1].principal == PRINCIPALS[AKID][1], path
    client("/kms", aws_session_token=TOKEN, region="us-east-1").list_keys()  # type: ignore[attr-defined]
    assert (seen[-1][1].session_token, seen[-1][1].region) == (TOKEN, "us-east-1")
    for akid, secret, code in [
        (AKID, OTHER_SECRET, "InvalidSignatureException"),
        ("AKIANOBODY", SECRET, "UnrecognizedClientException"),
    ]:
        with pytest.raises(ClientError) as raised:
            client("/", akid, secret).list_keys()  # type: ignore[attr-defined]
        assert raised.value.response["Error"]["Code"] == code
