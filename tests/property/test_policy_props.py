"""Key policies under hypothesis: parse is total up to its documented errors, and decisions are sound."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kmscli import policy as P
from kmscli.errors import LimitExceededException, MalformedPolicyDocumentException

ACCOUNT = "111122223333"
ALICE = P.principal_arn(ACCOUNT, "alice")
BOB = P.principal_arn(ACCOUNT, "bob")
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
KEY = f"arn:aws:kms:local:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY = f"arn:aws:kms:local:{ACCOUNT}:key/0987dcba-09ba-87dc-65fe-0987654321ba"
DOCUMENTED = (MalformedPolicyDocumentException, LimitExceededException)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_documented_error(document: str | bytes) -> P.Policy | None:
    """Parse; the only exceptions allowed are the documented ones, each with a message."""
    try:
        return P.parse(document)
    except DOCUMENTED as e:
        assert str(e), "every refusal names its problem"
        return None


# -- Arbitrary input ------------------------------------------------------------------------
@SETTINGS
@given(st.text())
def test_any_text(text: str) -> None:
    parse_or_documented_error(text)


@SETTINGS
@given(st.binary())
def test_any_bytes(data: bytes) -> None:
    parse_or_documented_error(data)


@SETTINGS
@given(
    st.integers(P.MAX_POLICY_BYTES - 8, P.MAX_POLICY_BYTES + 8), st.sampled_from(["a", " ", "[", "\u00e9", "\u20ac"])
)
def test_text_near_the_size_limit(n: int, char: str) -> None:
    text = char * n
    try:
        P.parse(text)
    except LimitExceededException:
        assert len(text.encode()) > P.MAX_POLICY_BYTES
    except MalformedPolicyDocumentException:
        assert len(text.encode()) <= P.MAX_POLICY_BYTES


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)


@SETTINGS
@given(JSON, st.booleans())
def test_any_json(value: Any, ascii_only: bool) -> None:
    parse_or_documented_error(json.dumps(value, ensure_ascii=ascii_only))


# -- Policy-shaped input: valid statements, then broken in random places --------------------
STATEMENT_NAMES = [
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
]
NAMES = st.sampled_from([*STATEMENT_NAMES, "Version", "Id", "Statement", "effect", "Actions", "AWS", "Service", "x"])

EC_APP = "kms:EncryptionContext:app"
CONDITION_KEYS = [
    "aws:CurrentTime",
    "kms:KeySpec",
    "kms:KeyUsage",
    "kms:KeyOrigin",
    "kms:RequestAlias",
    "aws:username",
    "aws:PrincipalArn",
    "kms:CallerAccount",
    EC_APP,
    "kms:EncryptionContextKeys",
    "kms:ScheduleKeyDeletionPendingWindowInDays",
    "kms:ReEncryptOnSameKey",
    "aws:SourceIp",
]
VALUES_BY_KIND: dict[str, list[Any]] = {
    "string": ["alice", "bob", "alias/x", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "AWS_KMS", ACCOUNT, ALICE, "app"],
    "string_ci": ["ALICE", "symmetric_default", "Alias/X", "App"],
    "string_like": ["*", "a*", "alias/*", "?lice", "SYMMETRIC*", "*:user/*"],
    "numeric": [0, 7, 30, "7", 7.5],
    "date": ["2000-01-01", "2026-11-28T17:00:00Z", "2030-01-01T00:00:00+02:00", 0, 1800000000],
    "bool": ["true", "false", True, False],
    "null": ["true", "false"],
    "arn": ["*", ALICE, BOB, ROOT, f"arn:aws:iam::{ACCOUNT}:user/*", "arn:*:iam::*:*"],
}


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    block: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 3))):
        base = draw(st.sampled_from(sorted(P._OPERATORS)))
        kind = P._OPERATORS[base][0]
        op = base
        if kind != "null":
            op += draw(st.sampled_from(["", "IfExists"]))
            op = draw(st.sampled_from(["", "ForAnyValue:", "ForAllValues:"])) + op
        key = draw(st.sampled_from(CONDITION_KEYS))
        values = draw(st.lists(st.sampled_from(VALUES_BY_KIND[kind]), min_size=1, max_size=3))
        block.setdefault(op, {})[key] = values if len(values) > 1 or draw(st.booleans()) else values[0]
    return block


@st.composite
def statements(draw: st.DrawFn) -> dict[str, Any]:
    s: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"]))}
    if draw(st.booleans()):
        s["Sid"] = draw(st.text(alphabet="abc XYZ", max_size=6))
    principal = draw(
        st.sampled_from(["*", {"AWS": "*"}, {"AWS": ALICE}, {"AWS": BOB}, {"AWS": ACCOUNT}, {"AWS": [ROOT, BOB]}])
    )
    s[draw(st.sampled_from(["Principal", "Principal", "NotPrincipal"]))] = principal
    action = draw(
        st.sampled_from(
            ["*", "kms:*", "kms:PutKeyPolicy", "kms:Put*", "kms:Encrypt", ["kms:Decrypt", "kms:PutKeyPolicy"]]
        )
    )
    s[draw(st.sampled_from(["Action", "Action", "NotAction"]))] = action
    resource = draw(st.sampled_from(["*", "*", KEY, OTHER_KEY, "arn:aws:kms:*:*:key/*", [KEY, OTHER_KEY]]))
    s[draw(st.sampled_from(["Resource", "Resource", "NotResource"]))] = resource
    if draw(st.booleans()):
        s["Condition"] = draw(conditions())
    return s


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"Statement": draw(st.lists(statements(), min_size=1, max_size=4))}
    if draw(st.booleans()):
        body["Version"] = "2012-10-17"
    return body


@st.composite
def broken_policies(draw: st.DrawFn) -> dict[str, Any]:
    """A generated policy with a few elements replaced, removed or added at random."""
    body = draw(policies())
    for _ in range(draw(st.integers(1, 3))):
        items = body.get("Statement")
        inner = [s for s in items if isinstance(s, dict)] if isinstance(items, list) else []
        target: dict[str, Any] = draw(st.sampled_from([body, *inner, *inner]))
        action = draw(st.sampled_from(["replace", "remove", "add", "condition"]))
        name = draw(st.sampled_from(sorted(target))) if target and action in ("replace", "remove") else draw(NAMES)
        if action == "remove":
            target.pop(name, None)
        elif action == "condition":
            target["Condition"] = {draw(st.text(max_size=30)): {draw(st.text(max_size=30)): draw(JSON)}}
        else:
            target[name] = draw(JSON)
    return body


@st.composite
def requests(draw: st.DrawFn, action: str | None = None) -> P.Request:
    who = draw(st.sampled_from([ALICE, BOB, ROOT, "arn:aws:iam::444455556666:user/alice"]))
    context: dict[str, object] = {}
    for key in draw(st.lists(st.sampled_from(CONDITION_KEYS), max_size=5)):
        context[draw(st.sampled_from([key, key.upper(), key.lower()]))] = draw(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-5, 40),
                st.floats(allow_nan=True),
                st.text(max_size=8),
                st.sampled_from(["alice", "alias/x", "SYMMETRIC_DEFAULT", "2026-11-28T17:00:00Z", ALICE]),
                st.lists(st.text(max_size=4), max_size=3),
                st.datetimes(timezones=st.none() | st.just(UTC)),
            )
        )
    return P.Request(
        principal=who,
        account=ACCOUNT,
        action=action or draw(st.sampled_from(sorted(P.ACTIONS))),
        resource=draw(st.sampled_from([KEY, OTHER_KEY])),
        context=context,
    )


@SETTINGS
@given(broken_policies(), requests())
def test_broken_policies_parse_or_refuse_and_evaluate_totally(body: dict[str, Any], request: P.Request) -> None:
    policy = parse_or_documented_error(json.dumps(body))
    if policy is not None:
        decision = P.evaluate(policy, request)
        assert isinstance(decision.allowed, bool) and decision.reason
        assert isinstance(P.would_lock_out(policy, request.principal, ACCOUNT), bool)


@SETTINGS
@given(policies())
def test_generated_policies_mostly_parse(body: dict[str, Any]) -> None:
    """The grammar above is valid except for combinations the docs refuse."""
    try:
        P.parse(json.dumps(body))
    except MalformedPolicyDocumentException as e:
        assert re.search(r"ForAllValues cannot|Sid '.*' is used twice", str(e)), str(e)


def parsed(body: dict[str, Any]) -> P.Policy:
    try:
        return P.parse(json.dumps(body))
    except MalformedPolicyDocumentException:
        assume(False)
        raise


# -- Decisions ------------------------------------------------------------------------------
@SETTINGS
@given(policies(), requests())
def test_explicit_deny_always_wins(body: dict[str, Any], request: P.Request) -> None:
    body["Statement"].append({"Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*"})
    decision = P.evaluate(parsed(body), request)
    assert not decision.allowed
    assert decision.reason.startswith("explicit deny by statement")


@SETTINGS
@given(policies(), requests())
def test_without_allow_statements_nothing_is_allowed(body: dict[str, Any], request: P.Request) -> None:
    for s in body["Statement"]:
        s["Effect"] = "Deny"
    assert not P.evaluate(parsed(body), request).allowed


@SETTINGS
@given(policies(), requests())
def test_evaluate_is_deterministic_and_order_free_for_the_outcome(body: dict[str, Any], request: P.Request) -> None:
    first = P.evaluate(parsed(body), request)
    assert P.evaluate(parsed(body), request) == first
    body["Statement"].reverse()
    assert P.evaluate(parsed(body), request).allowed is first.allowed


@st.composite
def future_put_key_policy(draw: st.DrawFn, principal: str) -> P.Request:
    """A concrete later PutKeyPolicy by ``principal``: identity fixed, everything unknown drawn."""
    context: dict[str, object] = {
        "aws:PrincipalArn": principal,
        "kms:CallerAccount": ACCOUNT,
        "aws:CurrentTime": draw(
            st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2050, 1, 1), timezones=st.just(UTC))
        ),
        "kms:KeySpec": draw(st.sampled_from(["SYMMETRIC_DEFAULT", "RSA_2048", "symmetric_default"])),
        "kms:KeyUsage": draw(st.sampled_from(["ENCRYPT_DECRYPT", "SIGN_VERIFY"])),
        "kms:KeyOrigin": draw(st.sampled_from(["AWS_KMS", "EXTERNAL"])),
    }
    if principal.split(":")[-1].startswith("user/"):
        context["aws:username"] = principal.rsplit("/", 1)[1]
    alias = draw(st.sampled_from([None, "alias/x", "alias/y", "ALIAS/X"]))
    if alias is not None:
        context["kms:RequestAlias"] = alias
    resource = draw(st.sampled_from([KEY, OTHER_KEY]))
    return P.Request(
        principal=principal, account=ACCOUNT, action="kms:PutKeyPolicy", resource=resource, context=context
    )


@settings(SETTINGS, max_examples=400)
@given(policies(), st.sampled_from([ALICE, BOB, ROOT]), st.data())
def test_lockout_check_has_no_false_negatives(body: dict[str, Any], who: str, data: st.DataObject) -> None:
    """If the check lets a policy through, every later PutKeyPolicy by the caller is allowed."""
    policy = parsed(body)
    later = data.draw(future_put_key_policy(who))
    if not P.would_lock_out(policy, who, ACCOUNT):
        assert P.evaluate(policy, later).allowed, later
    if not P.would_lock_out(policy, who, ACCOUNT, resource=later.resource):
        assert P.evaluate(policy, later).allowed, later


# -- The wildcard matcher against a regular-expression reference ----------------------------
def reference_glob(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


@SETTINGS
@given(st.text(alphabet="ab*?:/", max_size=10), st.text(alphabet="ab:/*?", max_size=14))
def test_glob_matches_reference(pattern: str, text: str) -> None:
    assert P._glob(pattern, text) is reference_glob(pattern, text)


@SETTINGS
@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_dates_compare_as_instants(a: int, b: int) -> None:
    """An epoch value and the same instant in ISO 8601 are interchangeable, in policy and request."""
    when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=a)
    iso = when.isoformat()
    body = {
        "Statement": {
            "Effect": "Allow",
            "Principal": "*",
            "Action": "kms:Encrypt",
            "Resource": "*",
            "Condition": {"DateLessThanEquals": {"aws:CurrentTime": str(int(when.timestamp()))}},
        }
    }
    request_time = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=b)
    for value in (request_time, request_time.isoformat(), int(request_time.timestamp())):
        r = P.Request(ALICE, ACCOUNT, "kms:Encrypt", KEY, {"aws:CurrentTime": value})
        assert P.evaluate(P.parse(json.dumps(body)), r).allowed is (b <= a), (iso, value)
