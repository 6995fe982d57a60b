"""Key policies through the real entry point: put/get, enforcement, validation, lockout safety."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, ok


def new_key(kms: Runner, *args: str) -> str:
    return ok(kms("keys", "create", *args)).stdout.decode().strip()


def account(kms: Runner, key: str) -> str:
    return json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]["AWSAccountId"]


def admin(acct: str) -> dict:
    """Keeps the caller able to manage the key, so the lockout check stays out of the way."""
    return {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{acct}:root"},
            "Action": ["kms:Describe*", "kms:List*", "kms:Get*", "kms:Put*", "kms:*Alias*", "kms:Enable*",
                       "kms:Disable*", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:*Resource"],
            "Resource": "*"}


def put(kms: Runner, key: str, *statements: dict, extra: tuple[str, ...] = ()) -> None:
    doc = {"Version": "2012-10-17", "Statement": list(statements)}
    ok(kms("policy", "put", key, *extra, input=json.dumps(doc).encode()))


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return new_key(kms, "--alias", "alias/app")


def test_default_policy_grants_the_account(kms: Runner, key: str) -> None:
    doc = json.loads(ok(kms("policy", "get", key)).stdout)
    assert doc["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{account(kms, key)}:root"}
    assert doc["Statement"][0]["Action"] == "kms:*"


def test_put_get_round_trip_is_byte_exact(kms: Runner, key: str, tmp_path: Path) -> None:
    acct = account(kms, key)
    text = json.dumps({"Version": "2012-10-17", "Id": "mine", "Statement": [admin(acct)]}, indent=3) + "\n"
    f = tmp_path / "p.json"
    f.write_text(text)
    ok(kms("policy", "put", key, str(f)))
    assert ok(kms("policy", "get", "alias/app")).stdout.decode() == text


def test_explicit_deny_wins_and_names_action_and_key(kms: Runner, key: str) -> None:
    acct = account(kms, key)
    put(kms, key, admin(acct),
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
        {"Sid": "NoDecrypt", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"})
    ct = ok(kms("encrypt", "--key", key, input=b"x")).stdout
    line = fails(kms("decrypt", input=ct), 7, "AccessDeniedException")
    assert "kms:Decrypt" in line and key in line
    assert "NoDecrypt" not in line and "Deny" not in line  # the policy itself stays private
    assert ok(kms("audit", "show", "--operation", "Decrypt")).stdout.count(b"AccessDeniedException") == 1


def test_implicit_deny(kms: Runner, key: str) -> None:
    put(kms, key, admin(account(kms, key)))  # no statement mentions Encrypt
    fails(kms("encrypt", "--key", key, input=b"x"), 7, "AccessDeniedException")
    fails(kms("datakey", key), 7, "AccessDeniedException")
    ok(kms("keys", "describe", key))


def test_wildcard_actions(kms: Runner, key: str) -> None:
    acct = account(kms, key)
    put(kms, key, admin(acct),
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{acct}:user/{getpass.getuser()}"},
         "Action": ["kms:Encrypt", "kms:GenerateDataKey*"], "Resource": "*"},
        {"Effect": "Allow", "Principal": "*", "Action": "kms:De?rypt", "Resource": "*"})
    ct = ok(kms("encrypt", "--key", key, input=b"x")).stdout
    ok(kms("decrypt", input=ct))
    ok(kms("datakey", key))
    ok(kms("datakey", key, "--no-plaintext"))
    fails(kms("reencrypt", "--key", key, input=ct), 7, "AccessDeniedException")


def test_not_action_denies_everything_else(kms: Runner, key: str) -> None:
    acct = account(kms, key)
    put(kms, key, {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "NotAction": ["kms:Decrypt", "kms:*Polic*", "kms:Describe*"],
         "Resource": "*"}, extra=("--bypass-policy-lockout-safety-check",))
    fails(kms("encrypt", "--key", key, input=b"x"), 7)
    put(kms, key, admin(acct), {"Effect": "Allow", "Principal": "*", "Action": "kms:*crypt", "Resource": "*"})
    ok(kms("encrypt", "--key", key, input=b"x"))


def test_context_conditions(kms: Runner, key: str) -> None:
    put(kms, key, admin(account(kms, key)),
        {"Effect": "Allow", "Principal": "*", "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
         "Condition": {"StringEquals": {"kms:EncryptionContext:app": ["web", "api"]}}},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
         "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "secret*"}}})
    ct = ok(kms("encrypt", "--key", key, "-c", "app=api", input=b"x")).stdout
    ok(kms("decrypt", "-c", "app=api", input=ct))
    fails(kms("encrypt", "--key", key, "-c", "app=batch", input=b"x"), 7)
    fails(kms("encrypt", "--key", key, input=b"x"), 7)  # StringEquals on a missing key is false
    fails(kms("encrypt", "--key", key, "-c", "app=web", "-c", "secretish=1", input=b"x"), 7)


def test_request_alias_and_deletion_window_conditions(kms: Runner, key: str) -> None:
    put(kms, key, admin(account(kms, key)),
        {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"StringEquals": {"kms:RequestAlias": "alias/app"}}},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:ScheduleKeyDeletion", "Resource": "*",
         "Condition": {"NumericLessThan": {"kms:ScheduleKeyDeletionPendingWindowInDays": "30"}}})
    ok(kms("encrypt", "--key", "alias/app", input=b"x"))
    fails(kms("encrypt", "--key", key, input=b"x"), 7)  # by id: no alias in the request
    fails(kms("keys", "schedule-delete", key, "--days", "7"), 7)
    ok(kms("keys", "schedule-delete", key, "--days", "30"))


def test_reencrypt_checks_from_and_to(kms: Runner, key: str) -> None:
    dst = new_key(kms)
    ct = ok(kms("encrypt", "--key", key, input=b"x")).stdout
    put(kms, dst, admin(account(kms, dst)),
        {"Effect": "Allow", "Principal": "*", "Action": "kms:ReEncryptFrom", "Resource": "*"})
    line = fails(kms("reencrypt", "--key", dst, input=ct), 7)
    assert "kms:ReEncryptTo" in line and dst in line
    put(kms, dst, admin(account(kms, dst)),
        {"Effect": "Allow", "Principal": "*", "Action": "kms:ReEncrypt*", "Resource": "*"})
    put(kms, key, admin(account(kms, key)),
        {"Effect": "Allow", "Principal": "*", "Action": "kms:ReEncryptTo", "Resource": "*"})
    line = fails(kms("reencrypt", "--key", dst, input=ct), 7)
    assert "kms:ReEncryptFrom" in line and key in line


@pytest.mark.parametrize("doc, words", [
    ("{not json", "JSON"),
    ('{"Version": "2012-10-17"}', "Statement"),
    ('{"Statement": [{"Effect": "Maybe", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}', "Effect"),
    ('{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*", "Colour": 1}]}',
     "Colour"),
    ('{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",'
     ' "Condition": {"StringSortOf": {"kms:KeySpec": "x"}}}]}', "StringSortOf"),
])
def test_malformed_policies_are_refused(kms: Runner, key: str, doc: str, words: str) -> None:
    before = ok(kms("policy", "get", key)).stdout
    line = fails(kms("policy", "put", key, input=doc.encode()), 2, "MalformedPolicyDocumentException")
    assert words in line
    assert ok(kms("policy", "get", key)).stdout == before


def test_oversized_policy(kms: Runner, key: str) -> None:
    doc = {"Statement": [{"Sid": "x" * 33000, "Effect": "Allow", "Principal": "*", "Action": "kms:*",
                          "Resource": "*"}]}
    fails(kms("policy", "put", key, input=json.dumps(doc).encode()), 2, "LimitExceededException")


def test_lockout_safety_check(kms: Runner, key: str) -> None:
    lockout = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}]}
    line = fails(kms("policy", "put", key, input=json.dumps(lockout).encode()), 2,
                 "MalformedPolicyDocumentException")
    assert "--bypass-policy-lockout-safety-check" in line
    ok(kms("encrypt", "--key", key, input=b"x"))
    # Scoped to this key's own ARN counts as access, as in AWS.
    arn = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]["Arn"]
    put(kms, key, {"Effect": "Allow", "Principal": "*", "Action": "kms:PutKeyPolicy", "Resource": arn})
    ok(kms("policy", "put", key, "--bypass-policy-lockout-safety-check", input=json.dumps(lockout).encode()))
    fails(kms("policy", "put", key, input=json.dumps(lockout).encode()), 7, "AccessDeniedException")
    ok(kms("encrypt", "--key", key, input=b"x"))


def test_create_with_policy_file(kms: Runner, vault: Path, tmp_path: Path) -> None:
    f = tmp_path / "policy.json"
    f.write_text(json.dumps({"Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}]}))
    key = new_key(kms, "--policy", str(f))
    fails(kms("encrypt", "--key", key, input=b"x"), 7)
    f.write_text("[]")
    fails(kms("keys", "create", "--policy", str(f)), 2, "MalformedPolicyDocumentException")
    fails(kms("keys", "create", "--policy", str(tmp_path / "missing.json")), 2)
    assert len(json.loads(ok(kms("keys", "list", "--json")).stdout)["Keys"]) == 1


def test_principal_comes_from_the_uid_not_the_environment(kms: Runner, key: str) -> None:
    import pwd

    me = pwd.getpwuid(__import__("os").getuid()).pw_name
    acct = account(kms, key)
    put(kms, key, admin(acct), {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{acct}:user/mallory"},
                                "Action": "kms:Encrypt", "Resource": "*"})
    spoof = {"USER": "mallory", "LOGNAME": "mallory", "LNAME": "mallory", "USERNAME": "mallory"}
    line = fails(kms("encrypt", "--key", key, input=b"x", env_update=spoof), 7, "AccessDeniedException")
    assert f"user/{me} " in line


def test_list_aliases_consults_no_key_policy(kms: Runner, key: str) -> None:
    """ListAliases is authorized by IAM alone in AWS: a key policy denying it does not hide the key's aliases."""
    put(kms, key, admin(account(kms, key)),
        {"Effect": "Deny", "Principal": "*", "Action": "kms:ListAliases", "Resource": "*"})
    listed = json.loads(ok(kms("alias", "list", "--key", key, "--json")).stdout)
    assert [a["AliasName"] for a in listed["Aliases"]] == ["alias/app"] and listed["Truncated"] is False
    assert [a["TargetKeyId"] for a in listed["Aliases"]] == [key]


def test_tags_and_rotation_need_their_own_permissions(kms: Runner, key: str) -> None:
    """Tags are ListResourceTags', rotation GetKeyRotationStatus': DescribeKey alone shows neither."""
    ok(kms("keys", "tag", key, "team=secret-team"))
    ok(kms("keys", "rotation", key, "--enable"))
    put(kms, key, admin(account(kms, key)),
        {"Effect": "Deny", "Principal": "*", "Action": ["kms:ListResourceTags", "kms:GetKeyRotationStatus"],
         "Resource": "*"})
    for args in (["keys", "tags", key], ["keys", "tags", key, "--json"], ["keys", "rotation", key],
                 ["keys", "rotation", key, "--json"]):
        r = kms(*args)
        line = fails(r, 7, "AccessDeniedException")
        assert "secret-team" not in line and r.stdout == b""
    meta = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]
    assert not {"Tags", "KeyRotationEnabled", "RotationPeriodInDays", "NextRotationDate"} & set(meta)
    table = ok(kms("keys", "describe", key)).stdout.decode()
    assert "secret-team" not in table
    rows = dict(line.split("\t", 1) for line in table.splitlines())
    assert rows["Tags"] == "(not allowed to see)" and rows["Rotation"] == "(not allowed to see)"
