"""Security review of key policies: wildcard matching costs, principals that can never match.

Work is counted, never timed: the matcher's steps through its seam
(``_glob_steps``), and the characters it reads from the text through a str
that counts its reads.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli import ids
from kmscli import policy as P
from kmscli.errors import MalformedPolicyDocumentException

ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
KEY = f"arn:aws:kms:local:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALICE = P.principal_arn(ACCOUNT, "alice")
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
EC = "kms:EncryptionContext:app"


# -- 1. Wildcard matching: bounded work ---------------------------------------------------
class CountedText(str):
    """A str that counts how often the matcher indexes or slices it, and stops a runaway."""

    budget = 0
    reads = 0

    def __getitem__(self, item: Any) -> str:
        type(self).reads += 1
        if type(self).reads > type(self).budget:
            raise AssertionError(f"the matcher read the text more than {type(self).budget} times")
        return str.__getitem__(self, item)


def reads_of(pattern: str, text: str) -> tuple[bool, int]:
    CountedText.reads = 0
    CountedText.budget = len(pattern) + len(text)
    return P._glob(pattern, CountedText(text)), CountedText.reads


# Patterns that made the two-pointer matcher backtrack to its last "*" once per
# text position, re-reading the part after it: len(pattern) * len(text) steps.
PATHOLOGICAL = [
    pytest.param("*" + "a" * 4000 + "b*", "a" * 8192, False, id="star-long-literal-star"),
    pytest.param("*" + "a?" * 2000 + "b*", "a" * 8192, False, id="star-literal-and-any-star"),
    pytest.param("a*" * 3000 + "b", "a" * 8192, False, id="a-star-a-star-b"),
    pytest.param("*a" * 3000 + "*b*", "a" * 8192, False, id="star-a-star-a-star-b-star"),
    pytest.param("*" + "?" * 8000 + "*", "a" * 8192, True, id="many-any"),
    pytest.param("*" + "ab?*" * 2000, "ab" * 4096, True, id="mixed"),
    pytest.param("*" + "ab?*" * 2100, "ab" * 4096, False, id="mixed-one-too-many"),
    pytest.param("*" + "a" * 4000 + "*", "a" * 8192, True, id="long-literal-found"),
]


@pytest.mark.parametrize(("pattern", "text", "matches"), PATHOLOGICAL)
def test_glob_steps_are_bounded_by_the_pattern_alone(pattern: str, text: str, matches: bool) -> None:
    result, steps = P._glob_steps(pattern, text)
    assert result is matches
    assert steps <= len(pattern)  # not len(pattern) * len(text): nothing is retried


@pytest.mark.parametrize(("pattern", "text", "matches"), PATHOLOGICAL)
def test_glob_reads_the_text_a_bounded_number_of_times(pattern: str, text: str, matches: bool) -> None:
    """Without the seam: the old matcher read ``text[t]`` once per step and blows the budget."""
    result, reads = reads_of(pattern, text)
    assert result is matches
    assert reads <= len(pattern) + len(text)


def test_a_policy_at_the_size_limit_against_an_8_kb_value_does_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's case: a 28 KB policy of StringLike patterns and an 8 KB context value."""
    patterns = ["*" + "a" * 4000 + "b*"] * 6 + ["*" + "a?" * 150 + "b*"] * 10
    doc = json.dumps({"Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Billing", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringLike": {EC: patterns}}},
    ]})
    assert 24_000 < len(doc) <= P.MAX_POLICY_BYTES
    policy = P.parse(doc, account=ACCOUNT)
    total = [0, 0]
    real = P._glob_steps

    def counting(pattern: str, text: str) -> tuple[bool, int]:
        result, steps = real(pattern, text)
        if pattern in patterns:  # not the statements' Resource "*"
            total[0] += steps
            total[1] += 1
        return result, steps

    monkeypatch.setattr(P, "_glob_steps", counting)
    request = P.Request(ALICE, ACCOUNT, "kms:Decrypt", KEY, {EC: "a" * 8192})
    assert P.evaluate(policy, request).allowed
    assert total[1] == len(patterns)  # every pattern was tried: none short-circuited
    assert total[0] <= sum(map(len, patterns))
    denied = P.Request(ALICE, ACCOUNT, "kms:Decrypt", KEY, {EC: "a" * 8000 + "b"})
    assert P.evaluate(policy, denied).reason == "explicit deny by statement 'Billing'"


def test_each_character_of_a_value_is_indexed_once_per_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many patterns against one value share its position masks (one pass over the value each)."""
    alphabet = "".join(chr(c) for c in range(0x41, 0x5B))  # A-Z
    patterns = [f"*{alphabet}{i:03d}*" for i in range(300)]  # each fails only at its end
    doc = json.dumps({"Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Deny", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringLike": {EC: patterns}}},
    ]})
    policy = P.parse(doc)
    built: list[str] = []
    real = P._positions

    def counting(char: str, text: str) -> int:
        built.append(char)
        return real(char, text)

    monkeypatch.setattr(P, "_positions", counting)
    value = alphabet * 300 + "9"
    assert P.evaluate(policy, P.Request(ALICE, ACCOUNT, "kms:Decrypt", KEY, {EC: value})).allowed
    assert len(built) == len(set(built)) <= len(alphabet) + 10
    assert P._masks.cache_info().currsize == 0  # nothing of the request is kept after the decision


def test_resource_and_arn_patterns_go_through_the_bounded_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    resource = "arn:aws:kms:local:" + "*1" * 2000 + ":key/*"
    doc = json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": resource,
         "Condition": {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::" + "*1" * 2000 + ":user/*"}}},
    ]})
    policy = P.parse(doc)
    calls: list[int] = []
    real = P._glob_steps

    def counting(pattern: str, text: str) -> tuple[bool, int]:
        result, steps = real(pattern, text)
        calls.append(steps)
        assert steps <= len(pattern)
        return result, steps

    monkeypatch.setattr(P, "_glob_steps", counting)
    request = P.Request(ALICE, ACCOUNT, "kms:Decrypt", KEY, {"aws:PrincipalArn": ALICE})
    assert not P.evaluate(policy, request).allowed  # 2000 "1"s are not in a 12-digit account
    assert calls


def reference_glob(pattern: str, text: str) -> bool:
    """AWS's wildcards as a regular expression: ``*`` any run, ``?`` one character, the rest literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


# Case, Latin-1, characters beyond Latin-1 (a text's "?" stand-in must not match a
# literal), brackets (no character classes), newline, and the wildcards themselves.
ALPHABET = "aAbé€\n[]-.*?"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=ALPHABET, max_size=10), st.text(alphabet=ALPHABET, max_size=14))
def test_glob_is_equivalent_to_the_reference(pattern: str, text: str) -> None:
    assert P._glob(pattern, text) is reference_glob(pattern, text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab*?", max_size=12), st.text(alphabet="ab", max_size=30))
def test_glob_steps_never_exceed_the_pattern(pattern: str, text: str) -> None:
    result, steps = P._glob_steps(pattern, text)
    assert result is reference_glob(pattern, text)
    assert steps <= len(pattern)


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("a?c", "aéc", True),
        ("a?c", "a€c", True),  # one character, whatever its encoding
        ("a€*", "a€x", True),
        ("a€*", "a?x", False),
        ("*?*", "€", True),
        ("?", "", False),
        ("A*", "a", False),  # case-sensitive
        ("[ab]", "a", False),
        ("*]", "[ab]", True),
    ],
)
def test_glob_semantics(pattern: str, text: str, matches: bool) -> None:
    assert P._glob(pattern, text) is matches


# -- 2. Principals that can never match this vault -------------------------------------------
def policy_naming(principal: str, effect: str = "Deny", element: str = "Principal") -> str:
    return json.dumps({"Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Them", "Effect": effect, element: {"AWS": principal}, "Action": "kms:Decrypt", "Resource": "*"},
    ]})


UNREACHABLE = [
    pytest.param(f"arn:aws-cn:iam::{ACCOUNT}:user/alice", "partition 'aws-cn'", id="aws-cn-user"),
    pytest.param(f"arn:aws-us-gov:iam::{ACCOUNT}:root", "partition 'aws-us-gov'", id="aws-us-gov-root"),
    pytest.param(f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/r/s", "partition 'aws-cn'", id="aws-cn-sts"),
    pytest.param(f"arn:aws:iam::{OTHER_ACCOUNT}:user/alice", f"account {OTHER_ACCOUNT}", id="other-account-user"),
    pytest.param(f"arn:aws:iam::{OTHER_ACCOUNT}:root", f"account {OTHER_ACCOUNT}", id="other-account-root"),
    pytest.param(OTHER_ACCOUNT, "another account", id="other-account-id"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:alice", "not a valid IAM principal", id="no-user-prefix"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:User/alice", "not a valid IAM principal", id="wrong-case-type"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:user/", "not a valid IAM principal", id="empty-user"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:user//alice", "not a valid IAM principal", id="empty-path-segment"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:group/admins", "not a valid IAM principal", id="group"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:root/x", "not a valid IAM principal", id="root-with-suffix"),
    pytest.param(f"arn:aws:sts::{ACCOUNT}:assumed-role/admin", "not a valid STS principal", id="sts-no-session"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:user/staff/alice", "without an IAM path", id="user-with-path"),
]


@pytest.mark.parametrize(("principal", "why"), UNREACHABLE)
@pytest.mark.parametrize(("effect", "element"), [("Deny", "Principal"), ("Allow", "Principal"),
                                                 ("Allow", "NotPrincipal"), ("Deny", "NotPrincipal")])
def test_a_principal_that_can_never_match_is_refused(principal: str, why: str, effect: str, element: str) -> None:
    with pytest.raises(MalformedPolicyDocumentException) as e:
        P.parse(policy_naming(principal, effect, element), account=ACCOUNT)
    assert f"'{principal}'" in e.value.message
    assert why in e.value.message
    assert e.value.message.startswith(f"statement 2 ('Them'): {element}.AWS ")


@pytest.mark.parametrize(
    "principal",
    ["*", ACCOUNT, ROOT, ALICE, f"arn:aws:iam::{ACCOUNT}:user/first.last@example",
     f"arn:aws:iam::{ACCOUNT}:role/admin", f"arn:aws:iam::{ACCOUNT}:role/path/admin",
     f"arn:aws:sts::{ACCOUNT}:assumed-role/admin/session", f"arn:aws:sts::{ACCOUNT}:federated-user/bob"],
)
def test_principals_of_this_vault_and_well_formed_aws_ones_are_accepted(principal: str) -> None:
    P.parse(policy_naming(principal), account=ACCOUNT)


def test_the_denied_user_of_another_partition_is_the_open_door_this_closes() -> None:
    """A Deny meant for alice, written with the partition of a China region, denied nobody."""
    doc = policy_naming(f"arn:aws-cn:iam::{ACCOUNT}:user/alice")
    request = P.Request(ALICE, ACCOUNT, "kms:Decrypt", KEY)
    assert P.evaluate(P.parse(doc), request).allowed  # what a stored policy means: unchanged
    with pytest.raises(MalformedPolicyDocumentException, match="arn:aws-cn:iam::111122223333:user/alice"):
        P.parse(doc, account=ACCOUNT)


def test_without_the_account_a_stored_policy_still_reads() -> None:
    """Policies stored by 0.1.0 are parsed on every call: they must keep parsing (CHANGELOG promise)."""
    for param in UNREACHABLE:
        P.parse(policy_naming(param.values[0]))


def test_service_principals_and_the_default_policy_pass_the_account_check() -> None:
    P.parse(P.default_policy(ACCOUNT), account=ACCOUNT)
    doc = json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT, "Service": "logs.amazonaws.com"},
         "Action": "kms:*", "Resource": "*"}]})
    P.parse(doc, account=ACCOUNT)


def test_the_account_argument_must_be_an_account() -> None:
    with pytest.raises(ValueError, match="12 digits"):
        P.parse(P.default_policy(ACCOUNT), account="12345")


def test_partition_is_the_one_ids_makes_arns_in() -> None:
    assert P._PARTITION == ids.PARTITION
