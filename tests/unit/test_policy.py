"""Key policies (docs/policy.md): a table of policies x requests, every malformed case, lockout."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kmscli import policy as P
from kmscli.errors import LimitExceededException, MalformedPolicyDocumentException

ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY = f"arn:aws:kms:local:{ACCOUNT}:key/{KEY_ID}"
OTHER_KEY = f"arn:aws:kms:local:{ACCOUNT}:key/0987dcba-09ba-87dc-65fe-0987654321ba"
ALICE = P.principal_arn(ACCOUNT, "alice")
BOB = P.principal_arn(ACCOUNT, "bob")
ADMIN = P.principal_arn(ACCOUNT, "admin")
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
NOW = datetime(2026, 11, 28, 17, 0, 0, tzinfo=UTC)
EC = "kms:EncryptionContext:app"
ECK = "kms:EncryptionContextKeys"
WINDOW = "kms:ScheduleKeyDeletionPendingWindowInDays"
SAME = "kms:ReEncryptOnSameKey"
REPO = Path(__file__).resolve().parents[2]


# -- Builders ------------------------------------------------------------------------
def stmt(
    effect: str = "Allow",
    principal: Any = "*",
    action: Any = "kms:*",
    resource: Any = "*",
    condition: dict[str, Any] | None = None,
    sid: str | None = None,
    **elements: Any,
) -> dict[str, Any]:
    """One statement; pass ``principal=None`` etc. to leave an element out (for Not* forms)."""
    s: dict[str, Any] = {}
    if sid is not None:
        s["Sid"] = sid
    s["Effect"] = effect
    for name, value in (("Principal", principal), ("Action", action), ("Resource", resource)):
        if value is not None:
            s[name] = value
    if condition is not None:
        s["Condition"] = condition
    s.update(elements)
    return s


def doc(*statements: dict[str, Any], version: str = "2012-10-17") -> str:
    return json.dumps({"Version": version, "Statement": list(statements)}, ensure_ascii=False)


def allow_if(condition: dict[str, Any]) -> str:
    return doc(stmt(condition=condition, sid="A"))


ALLOW_ALL = stmt(sid="AllowAll")


def deny_if(condition: dict[str, Any], action: Any = "kms:*") -> str:
    """Allow everything, except what a conditional Deny named 'D' takes away."""
    return doc(ALLOW_ALL, stmt("Deny", action=action, condition=condition, sid="D"))


def ctx(**extra: object) -> dict[str, object]:
    """The keys the service supplies to every key operation, plus ``extra``."""
    base: dict[str, object] = {
        "aws:CurrentTime": NOW,
        "aws:PrincipalArn": ALICE,
        "aws:username": "alice",
        "kms:CallerAccount": ACCOUNT,
        "kms:KeySpec": "SYMMETRIC_DEFAULT",
        "kms:KeyUsage": "ENCRYPT_DECRYPT",
    }
    base.update(extra)
    return base


def ec(**pairs: str) -> dict[str, object]:
    """Condition keys for an encryption context, as the service builds them."""
    keys: dict[str, object] = {f"kms:EncryptionContext:{k}": v for k, v in pairs.items()}
    keys[ECK] = sorted(pairs)
    return keys


def req(
    action: str = "kms:Decrypt",
    principal: str = ALICE,
    resource: str = KEY,
    context: dict[str, object] | None = None,
) -> P.Request:
    return P.Request(principal=principal, account=ACCOUNT, action=action, resource=resource, context=context or ctx())


def malformed(document: str | bytes) -> str:
    with pytest.raises(MalformedPolicyDocumentException) as e:
        P.parse(document)
    return str(e.value)


# -- The table ---------------------------------------------------------------------
# (id, policy document, request, allowed, a fragment of the reason)
ALLOWED, DENIED = True, False
CASES: list[tuple[str, str, P.Request, bool, str]] = [
    # Principals
    ("default-policy", P.default_policy(ACCOUNT), req(), ALLOWED, "allowed by statement 'Enable IAM User Permissions'"),
    ("principal-star", doc(stmt()), req(), ALLOWED, "allowed by statement 1"),
    ("principal-aws-star", doc(stmt(principal={"AWS": "*"})), req(), ALLOWED, "statement 1"),
    ("principal-account-id", doc(stmt(principal={"AWS": ACCOUNT})), req(), ALLOWED, "statement 1"),
    ("principal-root-any-user", doc(stmt(principal={"AWS": ROOT})), req(principal=BOB), ALLOWED, "statement 1"),
    (
        "principal-other-account-root",
        doc(stmt(principal={"AWS": f"arn:aws:iam::{OTHER_ACCOUNT}:root"})),
        req(),
        DENIED,
        "no statement allows kms:Decrypt",
    ),
    ("principal-exact-user", doc(stmt(principal={"AWS": ALICE})), req(), ALLOWED, "statement 1"),
    ("principal-other-user", doc(stmt(principal={"AWS": BOB})), req(), DENIED, "no statement allows"),
    ("principal-list", doc(stmt(principal={"AWS": [BOB, ALICE]})), req(), ALLOWED, "statement 1"),
    (
        "principal-user-case-sensitive",
        doc(stmt(principal={"AWS": P.principal_arn(ACCOUNT, "Alice")})),
        req(),
        DENIED,
        "no statement allows",
    ),
    ("principal-role-never", doc(stmt(principal={"AWS": f"arn:aws:iam::{ACCOUNT}:role/r"})), req(), DENIED, "no"),
    ("principal-service-never", doc(stmt(principal={"Service": "logs.amazonaws.com"})), req(), DENIED, "no statement"),
    ("notprincipal-other", doc(stmt(principal=None, NotPrincipal={"AWS": BOB})), req(), ALLOWED, "statement 1"),
    ("notprincipal-self", doc(stmt(principal=None, NotPrincipal={"AWS": ALICE})), req(), DENIED, "no statement"),
    (
        "notprincipal-root-excludes-all",
        doc(stmt(principal=None, NotPrincipal={"AWS": ROOT})),
        req(),
        DENIED,
        "no statement",
    ),
    (
        "deny-notprincipal-admin",
        doc(ALLOW_ALL, stmt("Deny", principal=None, NotPrincipal={"AWS": ADMIN}, sid="OnlyAdmin")),
        req(),
        DENIED,
        "explicit deny by statement 'OnlyAdmin'",
    ),
    (
        "deny-notprincipal-admin-spares-admin",
        doc(ALLOW_ALL, stmt("Deny", principal=None, NotPrincipal={"AWS": ADMIN}, sid="OnlyAdmin")),
        req(principal=ADMIN),
        ALLOWED,
        "'AllowAll'",
    ),
    # Actions
    ("action-other", doc(stmt(action="kms:Encrypt")), req(), DENIED, "no statement allows kms:Decrypt"),
    ("action-list", doc(stmt(action=["kms:Encrypt", "kms:Decrypt"])), req(), ALLOWED, "statement 1"),
    ("action-wildcard", doc(stmt(action="kms:Describe*")), req("kms:DescribeKey"), ALLOWED, "statement 1"),
    ("action-wildcard-miss", doc(stmt(action="kms:Describe*")), req("kms:Decrypt"), DENIED, "no statement"),
    ("action-case-insensitive", doc(stmt(action="KMS:decrypt")), req(), ALLOWED, "statement 1"),
    ("action-question-mark", doc(stmt(action="kms:?ecrypt")), req(), ALLOWED, "statement 1"),
    ("action-reencrypt-star", doc(stmt(action="kms:ReEncrypt*")), req("kms:ReEncryptFrom"), ALLOWED, "statement 1"),
    ("action-star", doc(stmt(action="*")), req("kms:ScheduleKeyDeletion"), ALLOWED, "statement 1"),
    ("notaction-other", doc(stmt(action=None, NotAction="kms:Decrypt")), req("kms:Encrypt"), ALLOWED, "statement 1"),
    ("notaction-self", doc(stmt(action=None, NotAction="kms:Decrypt")), req(), DENIED, "no statement allows"),
    (
        "deny-notaction",
        doc(ALLOW_ALL, stmt("Deny", action=None, NotAction=["kms:Encrypt", "kms:Decrypt"], sid="OnlyCrypto")),
        req("kms:ScheduleKeyDeletion"),
        DENIED,
        "explicit deny by statement 'OnlyCrypto'",
    ),
    (
        "deny-notaction-spares",
        doc(ALLOW_ALL, stmt("Deny", action=None, NotAction=["kms:Encrypt", "kms:Decrypt"], sid="OnlyCrypto")),
        req("kms:Encrypt"),
        ALLOWED,
        "'AllowAll'",
    ),
    # Resources
    ("resource-exact", doc(stmt(resource=KEY)), req(), ALLOWED, "statement 1"),
    ("resource-other-key", doc(stmt(resource=OTHER_KEY)), req(), DENIED, "no statement"),
    ("resource-wildcard", doc(stmt(resource="arn:aws:kms:local:*:key/*")), req(), ALLOWED, "statement 1"),
    ("resource-question", doc(stmt(resource=KEY[:-1] + "?")), req(), ALLOWED, "statement 1"),
    ("resource-alias-pattern", doc(stmt(resource="arn:aws:kms:*:*:alias/*")), req(), DENIED, "no statement"),
    ("resource-case-sensitive", doc(stmt(resource=KEY.replace(KEY_ID, KEY_ID.upper()))), req(), DENIED, "no statement"),
    ("notresource-other", doc(stmt(resource=None, NotResource=OTHER_KEY)), req(), ALLOWED, "statement 1"),
    ("notresource-self", doc(stmt(resource=None, NotResource=KEY)), req(), DENIED, "no statement"),
    # Deny wins; reasons
    (
        "deny-wins",
        doc(ALLOW_ALL, stmt("Deny", action="kms:Decrypt", sid="DenyDecrypt")),
        req(),
        DENIED,
        "explicit deny by statement 'DenyDecrypt'",
    ),
    (
        "deny-wins-first",
        doc(stmt("Deny", action="kms:Decrypt", sid="DenyDecrypt"), ALLOW_ALL),
        req(),
        DENIED,
        "explicit deny by statement 'DenyDecrypt'",
    ),
    ("deny-by-number", doc(stmt(), stmt("Deny")), req(), DENIED, "explicit deny by statement 2"),
    ("deny-other-action", doc(ALLOW_ALL, stmt("Deny", action="kms:Decrypt")), req("kms:Encrypt"), ALLOWED, "AllowAll"),
    ("deny-other-user", doc(ALLOW_ALL, stmt("Deny", principal={"AWS": BOB})), req(), ALLOWED, "'AllowAll'"),
    ("only-deny", doc(stmt("Deny", action="kms:Encrypt")), req(), DENIED, "no statement allows kms:Decrypt"),
    ("first-allow-named", doc(stmt(sid="One"), stmt(sid="Two")), req(), ALLOWED, "'One'"),
    ("statement-object", json.dumps({"Statement": stmt()}), req(), ALLOWED, "statement 1"),
    # String operators
    (
        "stringequals-match",
        allow_if({"StringEquals": {EC: "billing"}}),
        req(context=ctx(**ec(app="billing"))),
        ALLOWED,
        "'A'",
    ),
    (
        "stringequals-miss",
        allow_if({"StringEquals": {EC: "billing"}}),
        req(context=ctx(**ec(app="other"))),
        DENIED,
        "no",
    ),
    (
        "stringequals-ec-key-case-insensitive",
        allow_if({"StringEquals": {"kms:EncryptionContext:APP": "billing"}}),
        req(context=ctx(**ec(app="billing"))),
        ALLOWED,
        "'A'",
    ),
    (
        "stringequals-condition-key-case-insensitive",
        allow_if({"StringEquals": {"AWS:USERNAME": "alice"}}),
        req(),
        ALLOWED,
        "'A'",
    ),
    (
        "stringequals-value-case-sensitive",
        allow_if({"StringEquals": {EC: "Billing"}}),
        req(context=ctx(**ec(app="billing"))),
        DENIED,
        "no statement",
    ),
    (
        "stringequals-values-ored",
        allow_if({"StringEquals": {EC: ["payroll", "billing"]}}),
        req(context=ctx(**ec(app="billing"))),
        ALLOWED,
        "'A'",
    ),
    ("stringequals-missing", allow_if({"StringEquals": {EC: "billing"}}), req(), DENIED, "no statement"),
    (
        "stringnotequals-missing-denies",
        deny_if({"StringNotEquals": {EC: "billing"}}),
        req(),
        DENIED,
        "explicit deny by statement 'D'",
    ),
    (
        "stringnotequals-match-spares",
        deny_if({"StringNotEquals": {EC: "billing"}}),
        req(context=ctx(**ec(app="billing"))),
        ALLOWED,
        "'AllowAll'",
    ),
    (
        "stringnotequals-other-denies",
        deny_if({"StringNotEquals": {EC: "billing"}}),
        req(context=ctx(**ec(app="other"))),
        DENIED,
        "'D'",
    ),
    (
        "stringnotequals-list-none-match",
        deny_if({"StringNotEquals": {EC: ["billing", "payroll"]}}),
        req(context=ctx(**ec(app="payroll"))),
        ALLOWED,
        "'AllowAll'",
    ),
    (
        "stringequalsignorecase",
        allow_if({"StringEqualsIgnoreCase": {EC: "BILLING"}}),
        req(context=ctx(**ec(app="billing"))),
        ALLOWED,
        "'A'",
    ),
    (
        "stringnotequalsignorecase",
        deny_if({"StringNotEqualsIgnoreCase": {EC: "BILLING"}}),
        req(context=ctx(**ec(app="Billing"))),
        ALLOWED,
        "'AllowAll'",
    ),
    (
        "stringnotequalsignorecase-other",
        deny_if({"StringNotEqualsIgnoreCase": {EC: "BILLING"}}),
        req(context=ctx(**ec(app="payroll"))),
        DENIED,
        "'D'",
    ),
    ("stringlike-star", allow_if({"StringLike": {EC: "bill*"}}), req(context=ctx(**ec(app="billing"))), ALLOWED, "'A'"),
    ("stringlike-question", allow_if({"StringLike": {EC: "b?ll"}}), req(context=ctx(**ec(app="bill"))), ALLOWED, "'A'"),
    (
        "stringlike-question-one",
        allow_if({"StringLike": {EC: "b?ll"}}),
        req(context=ctx(**ec(app="bll"))),
        DENIED,
        "no",
    ),
    (
        "stringlike-whole-value",
        allow_if({"StringLike": {EC: "bill"}}),
        req(context=ctx(**ec(app="billing"))),
        DENIED,
        "no",
    ),
    ("stringlike-case", allow_if({"StringLike": {EC: "Bill*"}}), req(context=ctx(**ec(app="billing"))), DENIED, "no"),
    (
        "stringnotlike-denies",
        deny_if({"StringNotLike": {EC: "prod-*"}}),
        req(context=ctx(**ec(app="dev"))),
        DENIED,
        "D",
    ),
    (
        "stringnotlike-spares",
        deny_if({"StringNotLike": {EC: "prod-*"}}),
        req(context=ctx(**ec(app="prod-1"))),
        ALLOWED,
        "All",
    ),
    ("ifexists-missing", allow_if({"StringEqualsIfExists": {EC: "billing"}}), req(), ALLOWED, "'A'"),
    (
        "ifexists-present-mismatch",
        allow_if({"StringEqualsIfExists": {EC: "billing"}}),
        req(context=ctx(**ec(app="other"))),
        DENIED,
        "no statement",
    ),
    ("notequals-ifexists-missing", deny_if({"StringNotEqualsIfExists": {EC: "billing"}}), req(), DENIED, "'D'"),
    (
        "stringequals-request-alias",
        allow_if({"StringEquals": {"kms:RequestAlias": "alias/app"}}),
        req(context=ctx(**{"kms:RequestAlias": "alias/app"})),
        ALLOWED,
        "'A'",
    ),
    # Numeric operators
    (
        "numeric-le",
        allow_if({"NumericLessThanEquals": {WINDOW: 10}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 7})),
        ALLOWED,
        "A",
    ),
    (
        "numeric-le-miss",
        allow_if({"NumericLessThanEquals": {WINDOW: 10}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 30})),
        DENIED,
        "no",
    ),
    (
        "numeric-string-value",
        allow_if({"NumericGreaterThan": {WINDOW: "7"}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 30})),
        ALLOWED,
        "A",
    ),
    (
        "numeric-equals",
        allow_if({"NumericEquals": {WINDOW: [7, 30]}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 30})),
        ALLOWED,
        "A",
    ),
    (
        "numeric-lt-boundary",
        allow_if({"NumericLessThan": {WINDOW: 7}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 7})),
        DENIED,
        "no",
    ),
    (
        "numeric-ge-boundary",
        allow_if({"NumericGreaterThanEquals": {WINDOW: 7}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 7})),
        ALLOWED,
        "A",
    ),
    (
        "numeric-gt-decimal",
        allow_if({"NumericGreaterThan": {WINDOW: 7.5}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 7})),
        DENIED,
        "no",
    ),
    (
        "numeric-notequals-denies",
        deny_if({"NumericNotEquals": {WINDOW: 30}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 7})),
        DENIED,
        "'D'",
    ),
    (
        "numeric-notequals-spares",
        deny_if({"NumericNotEquals": {WINDOW: 30}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: 30})),
        ALLOWED,
        "All",
    ),
    ("numeric-missing", allow_if({"NumericLessThan": {WINDOW: 30}}), req(), DENIED, "no statement"),
    ("numeric-lt-ifexists-missing", allow_if({"NumericLessThanIfExists": {WINDOW: 30}}), req(), ALLOWED, "'A'"),
    # Date operators
    ("date-lt", allow_if({"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}}), req(), ALLOWED, "'A'"),
    ("date-gt", allow_if({"DateGreaterThan": {"aws:CurrentTime": "2030-01-01"}}), req(), DENIED, "no statement"),
    ("date-ge-epoch-number", allow_if({"DateGreaterThanEquals": {"aws:CurrentTime": 0}}), req(), ALLOWED, "'A'"),
    ("date-lt-epoch-string", allow_if({"DateLessThan": {"aws:CurrentTime": "1800000000"}}), req(), ALLOWED, "'A'"),
    (
        "date-equals-offset",
        allow_if({"DateEquals": {"aws:CurrentTime": "2026-11-28T18:00:00+01:00"}}),
        req(),
        ALLOWED,
        "A",
    ),
    (
        "date-le-boundary",
        allow_if({"DateLessThanEquals": {"aws:CurrentTime": "2026-11-28T17:00:00Z"}}),
        req(),
        ALLOWED,
        "A",
    ),
    ("date-lt-boundary", allow_if({"DateLessThan": {"aws:CurrentTime": "2026-11-28T17:00:00Z"}}), req(), DENIED, "no"),
    ("date-notequals-denies", deny_if({"DateNotEquals": {"aws:CurrentTime": "2020-01-01"}}), req(), DENIED, "'D'"),
    (
        "date-iso-request-value",
        allow_if({"DateGreaterThan": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}}),
        req(context=ctx(**{"aws:CurrentTime": "2026-11-28T17:00:00Z"})),
        ALLOWED,
        "'A'",
    ),
    (
        "date-naive-request-is-utc",
        allow_if({"DateEquals": {"aws:CurrentTime": "2026-11-28T17:00:00Z"}}),
        req(context=ctx(**{"aws:CurrentTime": datetime(2026, 11, 28, 17, 0, 0)})),
        ALLOWED,
        "'A'",
    ),
    # Bool
    (
        "bool-true",
        allow_if({"Bool": {SAME: "true"}}),
        req("kms:ReEncryptFrom", context=ctx(**{SAME: True})),
        ALLOWED,
        "A",
    ),
    (
        "bool-json-true",
        allow_if({"Bool": {SAME: True}}),
        req("kms:ReEncryptFrom", context=ctx(**{SAME: True})),
        ALLOWED,
        "A",
    ),
    (
        "bool-false-miss",
        allow_if({"Bool": {SAME: "false"}}),
        req("kms:ReEncryptFrom", context=ctx(**{SAME: True})),
        DENIED,
        "no",
    ),
    (
        "bool-deny-same-key",
        deny_if({"Bool": {SAME: "TRUE"}}),
        req("kms:ReEncryptTo", context=ctx(**{SAME: True})),
        DENIED,
        "'D'",
    ),
    ("bool-missing", allow_if({"Bool": {SAME: "false"}}), req(), DENIED, "no statement"),
    (
        "bool-string-request",
        allow_if({"Bool": {SAME: "true"}}),
        req("kms:ReEncryptTo", context=ctx(**{SAME: "true"})),
        ALLOWED,
        "A",
    ),
    # Null
    ("null-false-present", allow_if({"Null": {ECK: "false"}}), req(context=ctx(**ec(app="x"))), ALLOWED, "'A'"),
    ("null-false-absent", allow_if({"Null": {ECK: "false"}}), req(), DENIED, "no statement"),
    ("null-true-absent", allow_if({"Null": {ECK: True}}), req(), ALLOWED, "'A'"),
    ("null-empty-list-is-absent", allow_if({"Null": {ECK: "true"}}), req(context=ctx(**{ECK: []})), ALLOWED, "'A'"),
    ("null-deny-without-context", deny_if({"Null": {ECK: "true"}}), req(), DENIED, "'D'"),
    ("null-deny-with-context", deny_if({"Null": {ECK: "true"}}), req(context=ctx(**ec(app="x"))), ALLOWED, "All"),
    # Arn operators
    (
        "arnlike-user-star",
        allow_if({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/*"}}),
        req(),
        ALLOWED,
        "A",
    ),
    ("arnequals-exact", allow_if({"ArnEquals": {"aws:PrincipalArn": ALICE}}), req(), ALLOWED, "'A'"),
    (
        "arnequals-wildcard",
        allow_if({"ArnEquals": {"aws:PrincipalArn": "arn:*:iam::*:user/alice"}}),
        req(),
        ALLOWED,
        "A",
    ),
    ("arnlike-other", allow_if({"ArnLike": {"aws:PrincipalArn": BOB}}), req(), DENIED, "no statement"),
    (
        "arnlike-parts-separate",  # the last part is "user/alice", not "*:alice"
        allow_if({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:alice"}}),
        req(),
        DENIED,
        "no statement",
    ),
    ("arnlike-star", allow_if({"ArnLike": {"aws:PrincipalArn": "*"}}), req(), ALLOWED, "'A'"),
    (
        "arnnotlike-denies",
        deny_if({"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:user/admin"}}),
        req(),
        DENIED,
        "D",
    ),
    ("arnnotequals-spares", deny_if({"ArnNotEquals": {"aws:PrincipalArn": ALICE}}), req(), ALLOWED, "'AllowAll'"),
    ("arnlike-missing", allow_if({"ArnLike": {"aws:SourceArn": "*"}}), req(), DENIED, "no statement"),
    ("arnnotlike-missing", deny_if({"ArnNotLike": {"aws:SourceArn": "*"}}), req(), DENIED, "'D'"),
    # Set qualifiers
    (
        "forall-subset",
        allow_if({"ForAllValues:StringEquals": {ECK: ["app", "env"]}}),
        req(context=ctx(**ec(app="x"))),
        ALLOWED,
        "'A'",
    ),
    (
        "forall-extra-key",
        allow_if({"ForAllValues:StringEquals": {ECK: ["app", "env"]}}),
        req(context=ctx(**ec(app="x", other="y"))),
        DENIED,
        "no statement",
    ),
    ("forall-missing", allow_if({"ForAllValues:StringEquals": {ECK: ["app"]}}), req(), ALLOWED, "'A'"),
    (
        "forall-missing-null-false",
        allow_if({"ForAllValues:StringEquals": {ECK: ["app"]}, "Null": {ECK: "false"}}),
        req(),
        DENIED,
        "no statement",
    ),
    (
        "foranyvalue-hit",
        allow_if({"ForAnyValue:StringEquals": {ECK: "app"}}),
        req(context=ctx(**ec(app="x", env="y"))),
        ALLOWED,
        "'A'",
    ),
    ("foranyvalue-missing", allow_if({"ForAnyValue:StringEquals": {ECK: "app"}}), req(), DENIED, "no statement"),
    (
        "foranyvalue-none",
        allow_if({"ForAnyValue:StringEquals": {ECK: "app"}}),
        req(context=ctx(**ec(env="y"))),
        DENIED,
        "no statement",
    ),
    (
        "forall-notlike",
        allow_if({"ForAllValues:StringNotLike": {ECK: "tmp*"}}),
        req(context=ctx(**ec(app="x", tmpdir="y"))),
        DENIED,
        "no statement",
    ),
    (
        "forall-notlike-clean",
        allow_if({"ForAllValues:StringNotLike": {ECK: "tmp*"}}),
        req(context=ctx(**ec(app="x"))),
        ALLOWED,
        "'A'",
    ),
    (
        "foranyvalue-notequals",
        allow_if({"ForAnyValue:StringNotEquals": {ECK: "app"}}),
        req(context=ctx(**ec(app="x", env="y"))),
        ALLOWED,
        "'A'",
    ),
    (
        "foranyvalue-notequals-only-listed",
        allow_if({"ForAnyValue:StringNotEquals": {ECK: "app"}}),
        req(context=ctx(**ec(app="x"))),
        DENIED,
        "no statement",
    ),
    ("foranyvalue-ifexists-missing", allow_if({"ForAnyValue:StringEqualsIfExists": {ECK: "app"}}), req(), ALLOWED, "A"),
    (
        "foranyvalue-like-single-valued",
        allow_if({"ForAnyValue:StringLike": {EC: "bill*"}}),
        req(context=ctx(**ec(app="billing"))),
        ALLOWED,
        "'A'",
    ),
    (
        "unqualified-list-any",
        allow_if({"StringEquals": {ECK: "app"}}),
        req(context=ctx(**ec(app="x", env="y"))),
        ALLOWED,
        "'A'",
    ),
    (
        "unqualified-negated-list-none",
        deny_if({"StringNotEquals": {ECK: "app"}}),
        req(context=ctx(**ec(app="x", env="y"))),
        ALLOWED,
        "'AllowAll'",
    ),
    # AND across operators and keys
    (
        "and-both-true",
        allow_if({"StringEquals": {EC: "billing"}, "Bool": {SAME: "false"}}),
        req(context=ctx(**ec(app="billing"), **{SAME: False})),
        ALLOWED,
        "'A'",
    ),
    (
        "and-one-false",
        allow_if({"StringEquals": {EC: "billing"}, "Bool": {SAME: "false"}}),
        req(context=ctx(**ec(app="billing"), **{SAME: True})),
        DENIED,
        "no statement",
    ),
    (
        "and-two-keys-one-missing",
        allow_if({"StringEquals": {EC: "billing", "kms:EncryptionContext:env": "prod"}}),
        req(context=ctx(**ec(app="billing"))),
        DENIED,
        "no statement",
    ),
    (
        "and-two-keys",
        allow_if({"StringEquals": {EC: "billing", "kms:EncryptionContext:env": "prod"}}),
        req(context=ctx(**ec(app="billing", env="prod"))),
        ALLOWED,
        "'A'",
    ),
    # Undecidable request data fails closed
    (
        "ambiguous-key-allow",
        allow_if({"StringEquals": {EC: "billing"}}),
        req(context=ctx(**{"kms:EncryptionContext:app": "billing", "kms:EncryptionContext:App": "other"})),
        DENIED,
        "for certain",
    ),
    (
        "ambiguous-key-deny",
        deny_if({"StringEquals": {EC: "other"}}),
        req(context=ctx(**{"kms:EncryptionContext:app": "billing", "kms:EncryptionContext:App": "other"})),
        DENIED,
        "explicit deny by statement 'D' (it may apply",
    ),
    (
        "ambiguous-key-agreeing",
        allow_if({"StringEquals": {EC: "billing"}}),
        req(context=ctx(**{"kms:EncryptionContext:app": "billing", "kms:EncryptionContext:App": "billing"})),
        ALLOWED,
        "'A'",
    ),
    (
        "wrong-type-allow",
        allow_if({"NumericLessThan": {WINDOW: 30}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: "seven"})),
        DENIED,
        "for certain",
    ),
    (
        "wrong-type-deny",
        deny_if({"NumericGreaterThan": {WINDOW: 7}}),
        req("kms:ScheduleKeyDeletion", context=ctx(**{WINDOW: "seven"})),
        DENIED,
        "'D'",
    ),
]


@pytest.mark.parametrize(
    ("document", "request_", "allowed", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decision_table(document: str, request_: P.Request, allowed: bool, reason: str) -> None:
    decision = P.evaluate(P.parse(document), request_)
    assert decision.allowed is allowed, decision.reason
    assert reason in decision.reason


def test_table_is_large_and_named_uniquely() -> None:
    names = [c[0] for c in CASES]
    assert len(names) >= 60
    assert len(set(names)) == len(names)


def test_table_covers_every_operator_ifexists_and_qualifier() -> None:
    used = set()
    for _, document, *_ in CASES:
        statements = json.loads(document)["Statement"]
        for s in statements if isinstance(statements, list) else [statements]:
            used.update(s.get("Condition", {}))
    bases = {op.split(":")[-1].removesuffix("IfExists") for op in used}
    assert set(P._OPERATORS) - bases == set()
    assert any(op.endswith("IfExists") for op in used)
    assert any(op.startswith("ForAllValues:") for op in used)
    assert any(op.startswith("ForAnyValue:") for op in used)


def test_reason_names_implicit_action() -> None:
    d = P.evaluate(P.parse(doc(stmt(action="kms:Encrypt"))), req("kms:GenerateDataKey"))
    assert d == P.Decision(False, "no statement allows kms:GenerateDataKey")


# -- API details ------------------------------------------------------------------
def test_default_policy_is_aws_text() -> None:
    assert P.default_policy(ACCOUNT) == (
        "{\n"
        '  "Version" : "2012-10-17",\n'
        '  "Id" : "key-default-1",\n'
        '  "Statement" : [ {\n'
        '    "Sid" : "Enable IAM User Permissions",\n'
        '    "Effect" : "Allow",\n'
        '    "Principal" : {\n'
        f'      "AWS" : "arn:aws:iam::{ACCOUNT}:root"\n'
        "    },\n"
        '    "Action" : "kms:*",\n'
        '    "Resource" : "*"\n'
        "  } ]\n"
        "}"
    )
    p = P.parse(P.default_policy(ACCOUNT))
    assert p.policy_id == "key-default-1"
    assert p.version == "2012-10-17"
    assert p.statements[0].actions == P.ACTIONS


@pytest.mark.parametrize("account", ["", "12345678901", "1234567890123", "12345678901a", "１２３４５６７８９０１２"])
def test_account_must_be_12_digits(account: str) -> None:
    with pytest.raises(ValueError):
        P.default_policy(account)
    with pytest.raises(ValueError):
        P.principal_arn(account, "alice")


def test_principal_arn() -> None:
    assert P.principal_arn(ACCOUNT, "alice") == "arn:aws:iam::111122223333:user/alice"
    with pytest.raises(ValueError):
        P.principal_arn(ACCOUNT, "")


def test_document_is_kept_verbatim() -> None:
    text = '{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}}  \n'
    assert P.parse(text).document == text
    assert P.parse(text.encode()).document == text


def test_evaluate_refuses_an_action_outside_actions() -> None:
    p = P.parse(P.default_policy(ACCOUNT))
    for action in ("kms:ReEncrypt", "kms:encrypt", "s3:GetObject", "Encrypt"):
        with pytest.raises(ValueError, match="unknown action"):
            P.evaluate(p, req(action))


def test_request_context_defaults_to_empty() -> None:
    r = P.Request(principal=ALICE, account=ACCOUNT, action="kms:Encrypt", resource=KEY)
    assert r.context == {}
    assert P.evaluate(P.parse(doc(stmt())), r).allowed


def test_wildcards_expand_to_actions() -> None:
    p = P.parse(doc(stmt(action=["kms:Describe*", "kms:ReEncrypt*", "kms:Generate*WithoutPlaintext"])))
    assert p.statements[0].actions == {
        "kms:DescribeKey",
        "kms:DescribeCustomKeyStores",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPairWithoutPlaintext",
    }


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("", "", True),
        ("*", "", True),
        ("*", "anything:at/all", True),
        ("a*", "a", True),
        ("a*b", "ab", True),
        ("a*b", "axxb", True),
        ("a*b", "axxbc", False),
        ("*a*a*a*a*a*a*a*a*a*b", "a" * 200, False),  # linear, where a regex would crawl
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[a]", "a", False),  # no character classes, unlike fnmatch
        ("[a]", "[a]", True),
        ("*.txt", "x.txt", True),
    ],
)
def test_glob(pattern: str, text: str, matches: bool) -> None:
    assert P._glob(pattern, text) is matches


def test_inclusive_boundaries() -> None:
    def allowed(condition: dict[str, Any], context: dict[str, object]) -> bool:
        return P.evaluate(P.parse(allow_if(condition)), req("kms:ScheduleKeyDeletion", context=ctx(**context))).allowed

    assert allowed({"NumericLessThanEquals": {WINDOW: 7}}, {WINDOW: 7})
    assert not allowed({"NumericLessThanEquals": {WINDOW: 7}}, {WINDOW: 8})
    assert allowed({"DateGreaterThanEquals": {"aws:CurrentTime": "2026-11-28T17:00:00Z"}}, {})
    assert not allowed({"DateGreaterThanEquals": {"aws:CurrentTime": "2026-11-28T17:00:01Z"}}, {})
    assert allowed({"DateLessThanEquals": {"aws:CurrentTime": "2026-11-28T17:00:00Z"}}, {})


# -- ACTIONS and the AWS model ------------------------------------------------------
def _botocore_operations() -> set[str]:
    botocore = pytest.importorskip("botocore")
    model = Path(os.path.dirname(botocore.__file__)) / "data" / "kms" / "2014-11-01" / "service-2.json"
    if model.exists():
        data = json.loads(model.read_text())
    elif model.with_suffix(".json.gz").exists():
        data = json.loads(gzip.decompress(model.with_suffix(".json.gz").read_bytes()))
    else:
        pytest.skip("botocore has no KMS model")
    return set(data["operations"])


def test_actions_match_the_botocore_model() -> None:
    operations = _botocore_operations()
    expected = {f"kms:{op}" for op in operations - {"ReEncrypt"}} | {"kms:ReEncryptFrom", "kms:ReEncryptTo"}
    assert expected == P.ACTIONS


def test_actions_shape() -> None:
    assert len(P.ACTIONS) == 57
    assert all(a.startswith("kms:") and a[4:].isalnum() for a in P.ACTIONS)
    assert "kms:ReEncrypt" not in P.ACTIONS
    assert {"kms:Encrypt", "kms:Decrypt", "kms:PutKeyPolicy", "kms:ReEncryptFrom", "kms:ReEncryptTo"} <= P.ACTIONS


def test_docs_list_every_action() -> None:
    text = (REPO / "docs" / "policy.md").read_text()
    missing = [a for a in sorted(P.ACTIONS) if f"{a} " not in text and f"{a}\n" not in text]
    assert not missing


# -- Validation ------------------------------------------------------------------------
GOOD = stmt()


def with_statement(**changes: Any) -> str:
    """A one-statement policy with elements replaced (None removes one)."""
    s = dict(GOOD)
    for name, value in changes.items():
        if value is None:
            s.pop(name, None)
        else:
            s[name] = value
    return json.dumps({"Version": "2012-10-17", "Statement": [s]}, ensure_ascii=False)


def with_condition(condition: Any) -> str:
    return with_statement(Condition=condition)


MALFORMED: list[tuple[str, str | bytes, list[str]]] = [
    # (id, document, fragments the message must contain)
    ("json-syntax", '{"Version": }', ["not valid JSON", "line 1 column 13"]),
    ("json-trailing", doc(GOOD) + " x", ["not valid JSON", "Extra data"]),
    ("json-whitespace-only", "   ", ["not valid JSON", "line 1 column 4"]),
    ("json-duplicate-name", '{"Statement": [], "Statement": []}', ["duplicate", "'Statement'"]),
    ("json-nan", '{"Version": NaN}', ["NaN"]),
    ("json-infinity", '{"Id": -Infinity}', ["-Infinity"]),
    ("json-deep", "[" * 5000 + "]" * 5000, ["nested too deeply"]),
    ("empty", "", ["empty"]),
    ("not-object", "[]", ["JSON object", "a list"]),
    ("not-object-string", '"policy"', ["JSON object", "a string"]),
    ("unknown-top", json.dumps({"Statement": [GOOD], "Statements": []}), ["top-level", "'Statements'"]),
    ("top-case", json.dumps({"statement": [GOOD]}), ["'statement'", "did you mean 'Statement'"]),
    ("no-statement", json.dumps({"Version": "2012-10-17"}), ["no Statement"]),
    ("empty-statement", json.dumps({"Statement": []}), ["Statement", "empty list"]),
    ("statement-string", json.dumps({"Statement": "x"}), ["Statement", "a string"]),
    ("statement-item-number", json.dumps({"Statement": [GOOD, 5]}), ["statement 2", "a number"]),
    ("version-bad", json.dumps({"Version": "2012-10-18", "Statement": [GOOD]}), ["'2012-10-18'"]),
    ("version-number", json.dumps({"Version": 2012, "Statement": [GOOD]}), ["Version", "a number"]),
    ("version-null", json.dumps({"Version": None, "Statement": [GOOD]}), ["Version", "null"]),
    ("id-number", json.dumps({"Id": 1, "Statement": [GOOD]}), ["Id", "a number"]),
    ("sid-number", with_statement(Sid=5), ["Sid", "a number"]),
    ("sid-duplicate", doc(stmt(sid="S"), stmt(sid="S")), ["statement 2", "Sid 'S'", "twice"]),
    ("unknown-element", with_statement(Actions="kms:*"), ["statement 1", "'Actions'"]),
    ("element-case", with_statement(effect="Allow"), ["'effect'", "did you mean 'Effect'"]),
    ("effect-missing", with_statement(Effect=None), ["Effect", "missing"]),
    ("effect-lowercase", with_statement(Effect="allow"), ["Effect 'allow'", "did you mean 'Allow'"]),
    ("effect-other", with_statement(Effect="Permit"), ["Effect 'Permit'", "Allow", "Deny"]),
    ("effect-bool", with_statement(Effect=True), ["Effect", "true/false"]),
    ("effect-names-sid", doc(stmt(effect="Maybe", sid="MySid")), ["statement 1 ('MySid')", "'Maybe'"]),
    # Principals
    ("principal-missing", with_statement(Principal=None), ["Principal", "missing"]),
    ("principal-both", with_statement(NotPrincipal={"AWS": BOB}), ["Principal and NotPrincipal"]),
    ("principal-string", with_statement(Principal="alice"), ["Principal 'alice'"]),
    ("principal-list", with_statement(Principal=[ALICE]), ["Principal", "a list"]),
    ("principal-empty-object", with_statement(Principal={}), ["Principal", "empty object"]),
    ("principal-empty-list", with_statement(Principal={"AWS": []}), ["Principal.AWS", "empty list"]),
    ("principal-number", with_statement(Principal={"AWS": 5}), ["Principal.AWS", "a number"]),
    (
        "principal-bad-account",
        with_statement(Principal={"AWS": "arn:aws:iam::123:user/x"}),
        ["'arn:aws:iam::123:user/x'"],
    ),
    (
        "principal-wildcard-arn",
        with_statement(Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:user/*"}),
        ["user/*", "no wildcards"],
    ),
    ("principal-kms-arn", with_statement(Principal={"AWS": KEY}), [KEY]),
    ("principal-type", with_statement(Principal={"Federated": "x"}), ["'Federated'"]),
    ("principal-type-case", with_statement(Principal={"aws": "*"}), ["'aws'", "did you mean 'AWS'"]),
    ("principal-service-space", with_statement(Principal={"Service": "a b"}), ["Service", "'a b'"]),
    (
        "principal-variable",
        with_statement(Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:user/${{aws:username}}"}),
        ["policy variable"],
    ),
    ("notprincipal-bad", with_statement(Principal=None, NotPrincipal="bob"), ["NotPrincipal 'bob'"]),
    # Actions
    ("action-missing", with_statement(Action=None), ["Action (or NotAction) is missing"]),
    ("action-both", with_statement(NotAction="kms:Decrypt"), ["Action and NotAction"]),
    ("action-other-service", with_statement(Action="s3:GetObject"), ["'s3:GetObject'", "not a KMS action"]),
    ("action-no-prefix", with_statement(Action="Encrypt"), ["'Encrypt'"]),
    ("action-empty-name", with_statement(Action="kms:"), ["'kms:'"]),
    ("action-unknown", with_statement(Action="kms:Encrpyt"), ["'kms:Encrpyt'", "not a known KMS action"]),
    ("action-dead-pattern", with_statement(Action="kms:Foo*"), ["'kms:Foo*'", "matches no KMS action"]),
    ("action-reencrypt", with_statement(Action="kms:ReEncrypt"), ["'kms:ReEncrypt'", "kms:ReEncryptFrom"]),
    ("action-number", with_statement(Action=5), ["Action", "a number"]),
    ("action-list-number", with_statement(Action=["kms:Encrypt", 5]), ["Action", "a number"]),
    ("action-empty-list", with_statement(Action=[]), ["Action", "empty list"]),
    ("notaction-bad", with_statement(Action=None, NotAction="kms:Nope"), ["NotAction", "'kms:Nope'"]),
    # Resources
    ("resource-missing", with_statement(Resource=None), ["Resource (or NotResource) is missing"]),
    ("resource-both", with_statement(NotResource=KEY), ["Resource and NotResource"]),
    ("resource-not-arn", with_statement(Resource="key/123"), ["'key/123'"]),
    ("resource-short-arn", with_statement(Resource="arn:aws:kms"), ["'arn:aws:kms'"]),
    ("resource-object", with_statement(Resource={"a": 1}), ["Resource", "an object"]),
    ("resource-variable", with_statement(Resource="arn:aws:kms:local:1:key/${aws:username}"), ["policy variable"]),
    ("notresource-bad", with_statement(Resource=None, NotResource="x"), ["NotResource 'x'"]),
    # Conditions
    ("condition-list", with_condition([]), ["Condition", "a list"]),
    ("condition-null", json.dumps({"Statement": [{**GOOD, "Condition": None}]}), ["Condition", "null"]),
    ("operator-unknown", with_condition({"StringEqual": {EC: "x"}}), ["'StringEqual'"]),
    ("operator-case", with_condition({"stringequals": {EC: "x"}}), ["'stringequals'", "did you mean 'StringEquals'"]),
    ("operator-ipaddress", with_condition({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}), ["'IpAddress'"]),
    ("operator-ifexists-case", with_condition({"StringEqualsifexists": {EC: "x"}}), ["'StringEqualsifexists'"]),
    ("qualifier-unknown", with_condition({"ForSomeValues:StringEquals": {ECK: "x"}}), ["'ForSomeValues'"]),
    ("qualifier-case", with_condition({"forallvalues:StringEquals": {ECK: "x"}}), ["did you mean 'ForAllValues'"]),
    ("qualifier-operator-unknown", with_condition({"ForAnyValue:Bogus": {ECK: "x"}}), ["'Bogus'"]),
    ("null-ifexists", with_condition({"NullIfExists": {ECK: "true"}}), ["'NullIfExists'"]),
    ("null-qualified", with_condition({"ForAnyValue:Null": {ECK: "true"}}), ["'ForAnyValue:Null'"]),
    ("forall-ec-key", with_condition({"ForAllValues:StringEquals": {EC: "x"}}), ["ForAllValues", f"'{EC}'"]),
    ("block-not-object", with_condition({"StringEquals": "x"}), ["StringEquals", "a string"]),
    ("block-empty", with_condition({"StringEquals": {}}), ["StringEquals", "no condition key"]),
    ("key-no-prefix", with_condition({"StringEquals": {"app": "x"}}), ["'app'", "not a condition key"]),
    ("key-empty-ec", with_condition({"StringEquals": {"kms:EncryptionContext:": "x"}}), ["'kms:EncryptionContext:'"]),
    ("values-empty", with_condition({"StringEquals": {EC: []}}), [f"'{EC}'", "empty list"]),
    ("value-null", with_condition({"StringEquals": {EC: None}}), [f"'{EC}'", "null"]),
    ("value-object", with_condition({"StringEquals": {EC: {"a": "b"}}}), [f"'{EC}'", "an object"]),
    ("value-nested-list", with_condition({"StringEquals": {EC: [["a"]]}}), [f"'{EC}'", "a list"]),
    ("numeric-bad", with_condition({"NumericLessThan": {WINDOW: "ten"}}), ["'ten'", "not a number"]),
    ("numeric-nan-string", with_condition({"NumericLessThan": {WINDOW: "nan"}}), ["'nan'", "not a number"]),
    ("numeric-bool", with_condition({"NumericEquals": {WINDOW: True}}), ["'true'", "not a number"]),
    ("date-bad", with_condition({"DateLessThan": {"aws:CurrentTime": "tomorrow"}}), ["'tomorrow'", "ISO 8601"]),
    ("date-overflow", with_condition({"DateLessThan": {"aws:CurrentTime": "1" + "0" * 30}}), ["ISO 8601"]),
    ("bool-bad", with_condition({"Bool": {SAME: "yes"}}), ["'yes'", "true or false"]),
    ("bool-number", with_condition({"Bool": {SAME: 1}}), ["'1'", "true or false"]),
    ("null-bad", with_condition({"Null": {ECK: "maybe"}}), ["'maybe'"]),
    ("arn-bad", with_condition({"ArnLike": {"aws:PrincipalArn": "alice"}}), ["'alice'", "not an ARN"]),
    ("condition-variable", with_condition({"StringEquals": {"aws:username": "${aws:username}"}}), ["policy variable"]),
    # Characters and encoding
    ("char-line-separator", doc(stmt(sid="a\u2028b")), ["U+2028", "line 1"]),
    ("char-bom", "\ufeff" + doc(GOOD), ["U+FEFF", "byte-order mark", "line 1 column 1"]),
    ("char-control", '{\n  "Id": "\x01",\n  "Statement": []}', ["U+0001", "line 2 column 10"]),
    ("char-del-allowed-but-emoji-not", doc(stmt(sid="\x7f \U0001f600")), ["U+1F600"]),
    ("bytes-not-utf8", b'{"Id": "\xff"}', ["UTF-8", "byte 8"]),
]


@pytest.mark.parametrize(("document", "fragments"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed(document: str | bytes, fragments: list[str]) -> None:
    message = malformed(document)
    for fragment in fragments:
        assert fragment in message, message


def test_malformed_is_exit_2() -> None:
    assert MalformedPolicyDocumentException.exit_code == 2
    assert LimitExceededException.exit_code == 2


def test_accepted_forms() -> None:
    """Things that look odd but are valid."""
    for document in (
        json.dumps({"Statement": GOOD}),  # no Version, one statement object
        json.dumps({"Version": "2008-10-17", "Statement": [GOOD]}),
        with_statement(Sid="Spaces are fine in KMS"),
        with_statement(Sid="caf\u00e9 \t tab"),  # Latin-1 and tab
        doc(GOOD).replace(" ", "\r\n "),  # CR LF
        with_statement(Principal={"AWS": [ACCOUNT, ROOT, ALICE, "*"], "Service": ["logs.amazonaws.com"]}),
        with_statement(Principal={"AWS": f"arn:aws:sts::{ACCOUNT}:assumed-role/r/s"}),
        with_statement(Condition={}),
        with_condition({"StringEquals": {EC: [5, True, "x"]}}),  # numbers and booleans as strings
        with_condition({"NumericLessThan": {WINDOW: "1e3"}}),
        with_condition({"DateLessThan": {"aws:CurrentTime": ["2027-01-01", 1800000000, "1800000000.5"]}}),
        with_condition({"Bool": {SAME: ["TRUE", False]}}),
        with_condition({"ArnLike": {"aws:PrincipalArn": ["*", "arn:aws:iam::*:user/*"]}}),
        with_condition({"ForAnyValue:StringLike": {EC: "x*"}}),
        with_condition({"StringEquals": {"aws:SourceVpc": "v"}}),  # a key the service never supplies
        with_statement(Action=["kms:*", "kms:Encrypt"]),
    ):
        assert isinstance(P.parse(document), P.Policy), document


def test_statement_list_and_number_kept() -> None:
    p = P.parse(doc(stmt(sid="A"), stmt("Deny", action="kms:Decrypt")))
    assert [(s.index, s.sid, s.effect, s.label) for s in p.statements] == [
        (1, "A", "Allow", "'A'"),
        (2, None, "Deny", "2"),
    ]


# -- Limits ------------------------------------------------------------------------------
def padded(size: int, filler: str = " ") -> str:
    """A valid policy of exactly ``size`` UTF-8 bytes, padded inside the Sid."""
    base = doc(stmt(sid=""))
    room = size - len(base.encode())
    per = len(filler.encode())
    assert room >= 0 and room % per == 0
    return base.replace('"Sid": ""', '"Sid": "' + filler * (room // per) + '"')


def test_size_limit_boundary() -> None:
    at_limit = padded(P.MAX_POLICY_BYTES)
    assert len(at_limit.encode()) == P.MAX_POLICY_BYTES
    P.parse(at_limit)
    P.parse(at_limit.encode())
    over = padded(P.MAX_POLICY_BYTES + 1)
    with pytest.raises(LimitExceededException, match="32768"):
        P.parse(over)
    with pytest.raises(LimitExceededException):
        P.parse(over.encode())


def test_size_counts_utf8_bytes() -> None:
    base = len(doc(stmt(sid="")).encode())
    room = P.MAX_POLICY_BYTES - base
    fits = padded(base + (room // 2) * 2, "\u00e9")  # Latin-1 letters are 2 bytes each
    P.parse(fits)
    assert len(fits) < P.MAX_POLICY_BYTES
    too_big = fits.replace('"Sid": "', '"Sid": "\u00e9')
    with pytest.raises(LimitExceededException):
        P.parse(too_big)


def test_size_is_checked_before_content() -> None:
    with pytest.raises(LimitExceededException):
        P.parse("\x00" * (P.MAX_POLICY_BYTES + 1))


# -- Lockout ------------------------------------------------------------------------------
def lockout(document: str, principal: str = ALICE, **kw: Any) -> bool:
    return P.would_lock_out(P.parse(document), principal, ACCOUNT, **kw)


ADMIN_ONLY = doc(
    stmt(principal={"AWS": ADMIN}, sid="KeyAdministration"),
    stmt(principal={"AWS": ALICE}, action="kms:Encrypt", sid="AliceEncryptOnly"),
)


@pytest.mark.parametrize(
    ("document", "principal", "locked", "kw"),
    [
        pytest.param(P.default_policy(ACCOUNT), ALICE, False, {}, id="default"),
        pytest.param(ADMIN_ONLY, ALICE, True, {}, id="encrypt-only-user"),
        pytest.param(ADMIN_ONLY, ADMIN, False, {}, id="admin"),
        pytest.param(doc(stmt(action="kms:PutKeyPolicy")), ALICE, False, {}, id="exactly-putkeypolicy"),
        pytest.param(doc(stmt(action="kms:Put*")), ALICE, False, {}, id="wildcard"),
        pytest.param(doc(stmt(action=None, NotAction="kms:PutKeyPolicy")), ALICE, True, {}, id="notaction"),
        pytest.param(doc(ALLOW_ALL, stmt("Deny", action="kms:PutKeyPolicy")), ALICE, True, {}, id="explicit-deny"),
        pytest.param(
            doc(ALLOW_ALL, stmt("Deny", principal=None, NotPrincipal={"AWS": ADMIN})),
            ALICE,
            True,
            {},
            id="deny-not-admin",
        ),
        pytest.param(
            doc(ALLOW_ALL, stmt("Deny", principal=None, NotPrincipal={"AWS": ADMIN})),
            ADMIN,
            False,
            {},
            id="admin-spared",
        ),
        pytest.param(deny_if({"StringNotEquals": {EC: "x"}}), ALICE, True, {}, id="deny-ec-notequals-absent"),
        pytest.param(deny_if({"StringEquals": {EC: "x"}}), ALICE, False, {}, id="deny-ec-equals-absent"),
        pytest.param(deny_if({"StringNotEquals": {EC: "x"}}, action="kms:Decrypt"), ALICE, False, {}, id="deny-other"),
        pytest.param(deny_if({"DateGreaterThan": {"aws:CurrentTime": "2030-01-01"}}), ALICE, True, {}, id="deny-later"),
        pytest.param(allow_if({"DateLessThan": {"aws:CurrentTime": "2030-01-01"}}), ALICE, True, {}, id="allow-until"),
        pytest.param(deny_if({"StringEquals": {"kms:RequestAlias": "alias/x"}}), ALICE, True, {}, id="deny-alias"),
        pytest.param(deny_if({"StringEquals": {"kms:KeyOrigin": "AWS_KMS"}}), ALICE, True, {}, id="deny-origin"),
        pytest.param(deny_if({"StringEquals": {"kms:KeySpec": "SYMMETRIC_DEFAULT"}}), ALICE, True, {}, id="deny-spec"),
        pytest.param(deny_if({"StringLike": {"kms:KeyUsage": "*"}}), ALICE, True, {}, id="deny-usage"),
        pytest.param(deny_if({"Null": {"aws:CurrentTime": "false"}}), ALICE, True, {}, id="deny-time-present"),
        pytest.param(
            allow_if({"StringEquals": {"kms:KeySpec": "SYMMETRIC_DEFAULT"}}), ALICE, True, {}, id="allow-spec"
        ),
        pytest.param(allow_if({"StringEquals": {"aws:PrincipalArn": ALICE}}), ALICE, False, {}, id="allow-arn-known"),
        pytest.param(allow_if({"StringEquals": {"aws:username": "alice"}}), ALICE, False, {}, id="allow-username"),
        pytest.param(allow_if({"StringEquals": {"aws:username": "alice"}}), BOB, True, {}, id="allow-username-other"),
        pytest.param(allow_if({"StringEquals": {"kms:CallerAccount": ACCOUNT}}), ALICE, False, {}, id="caller-account"),
        pytest.param(
            deny_if({"Bool": {"aws:SecureTransport": "false"}}), ALICE, False, {}, id="deny-never-supplied-key"
        ),
        pytest.param(deny_if({"Null": {ECK: "true"}}), ALICE, True, {}, id="deny-without-context"),
        pytest.param(doc(stmt(resource=KEY)), ALICE, True, {}, id="resource-arn-unknown"),
        pytest.param(doc(stmt(resource=KEY)), ALICE, False, {"resource": KEY}, id="resource-arn-given"),
        pytest.param(doc(stmt(resource=KEY)), ALICE, True, {"resource": OTHER_KEY}, id="resource-arn-other"),
        pytest.param(doc(stmt(resource=None, NotResource="*")), ALICE, True, {}, id="notresource-star"),
        pytest.param(doc(ALLOW_ALL, stmt("Deny", resource=KEY)), ALICE, True, {}, id="deny-resource-unknown"),
        pytest.param(
            doc(ALLOW_ALL, stmt("Deny", resource=OTHER_KEY)), ALICE, False, {"resource": KEY}, id="deny-other-key"
        ),
    ],
)
def test_would_lock_out(document: str, principal: str, locked: bool, kw: dict[str, Any]) -> None:
    assert lockout(document, principal, **kw) is locked


def test_lockout_reasons() -> None:
    d = P.lockout_decision(P.parse(ADMIN_ONLY), ALICE, ACCOUNT)
    assert d == P.Decision(False, "no statement allows kms:PutKeyPolicy")
    d = P.lockout_decision(P.parse(allow_if({"DateLessThan": {"aws:CurrentTime": "2030-01-01"}})), ALICE, ACCOUNT)
    assert not d.allowed and "for certain" in d.reason and "'A'" in d.reason
    d = P.lockout_decision(P.parse(deny_if({"DateGreaterThan": {"aws:CurrentTime": "2030-01-01"}})), ALICE, ACCOUNT)
    assert not d.allowed and "explicit deny by statement 'D' (it may apply" in d.reason
    d = P.lockout_decision(P.parse(P.default_policy(ACCOUNT)), ALICE, ACCOUNT)
    assert d.allowed


def test_lockout_agrees_with_evaluate_when_everything_is_known() -> None:
    """With nothing unknown in play, the lockout check is evaluate() of kms:PutKeyPolicy."""
    for document in (P.default_policy(ACCOUNT), ADMIN_ONLY, deny_if({"StringNotEquals": {EC: "x"}})):
        p = P.parse(document)
        for who in (ALICE, ADMIN, BOB):
            r = req("kms:PutKeyPolicy", principal=who, context={"aws:PrincipalArn": who})
            assert P.would_lock_out(p, who, ACCOUNT, resource=KEY) is not P.evaluate(p, r).allowed


# -- The examples in docs/policy.md --------------------------------------------------------
def _doc_examples() -> list[P.Policy]:
    text = (REPO / "docs" / "policy.md").read_text()
    blocks = text.split("## 9. Examples", 1)[1].split("```json\n")[1:]
    return [P.parse(block.split("```", 1)[0]) for block in blocks]


def test_docs_examples_behave_as_described() -> None:
    deny_decrypt, encrypt_only = _doc_examples()
    billing = ctx(**ec(app="billing"))
    assert P.evaluate(deny_decrypt, req(context=billing)).allowed
    for context in (ctx(), ctx(**ec(app="other"))):
        d = P.evaluate(deny_decrypt, req(context=context))
        assert d == P.Decision(False, "explicit deny by statement 'DenyDecryptWithoutBillingContext'", denied=True)
    assert P.evaluate(deny_decrypt, req("kms:Encrypt")).allowed

    assert P.evaluate(encrypt_only, req("kms:Encrypt")).allowed
    assert P.evaluate(encrypt_only, req()) == P.Decision(False, "no statement allows kms:Decrypt")
    assert P.would_lock_out(encrypt_only, ALICE, ACCOUNT)
    assert not P.would_lock_out(encrypt_only, ADMIN, ACCOUNT)
