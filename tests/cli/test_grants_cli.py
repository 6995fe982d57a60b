"""``kmscli grants ...`` and ``--grant-token`` through the real entry point (issue 17, SPEC "Grants").

The CLI's caller is the OS user, so "another user's" access is staged the
other way round: each key's policy allows everything to an administrator who
is not the OS user and, to the OS user, only the grant-managing actions
(CreateGrant, ListGrants, RevokeGrant); the policy is put with
``--bypass-policy-lockout-safety-check``, since the OS user may no longer
change it. Whatever else the OS user can then do with the key comes from a
grant to itself.
"""

from __future__ import annotations

import json
import os
import pwd
import re
from pathlib import Path
from typing import Any

import pytest

from kmscli.vault.store import PassphraseKeySource, VaultStore
from tests.aws.test_cli_json import check
from tests.conftest import PASSPHRASE, Runner, fails, ok
from tests.session.conftest import runtime_dir, unlock  # noqa: F401  (fixtures)

ID_AND_TOKEN = re.compile(r"([0-9a-f]{64})\t([A-Za-z0-9_-]{40,})\n")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
NO_PASS = ("KMSCLI_PASSPHRASE",)


@pytest.fixture
def env(env: dict[str, str], runtime_dir: Path) -> dict[str, str]:  # noqa: F811
    """Sessions of this module keep their sockets in the test's own folder."""
    return {**env, "KMSCLI_RUNTIME_DIR": str(runtime_dir)}


def me() -> str:
    """The OS user, as kmscli names the caller (kmscli/service/_core.py Caller.current)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # pragma: no cover - no passwd entry
        return str(os.getuid())


class Vault:
    def __init__(self, kms: Runner, vault: Path) -> None:
        self.kms = kms
        self.path = vault
        # The account, read in process (a cheap vault): two commands fewer per test.
        with VaultStore(vault).open(PassphraseKeySource(PASSPHRASE.encode)) as ov:
            self.account = ov.account
        self.me = f"arn:aws:iam::{self.account}:user/{me()}"
        self.policy = vault.parent / "restricted.json"
        self.policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
            {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{self.account}:user/kmsadmin"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "GrantsOnly", "Effect": "Allow", "Principal": {"AWS": self.me},
             "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"], "Resource": "*"}]}))

    def restricted_key(self, *create_args: str) -> str:
        """A new key whose policy leaves the OS user only CreateGrant, ListGrants and RevokeGrant."""
        return ok(self.kms("keys", "create", *create_args, "--policy", str(self.policy),
                           "--bypass-policy-lockout-safety-check")).stdout.decode().strip()

    def grant(self, key: str, *args: str, grantee: str | None = None) -> tuple[str, str]:
        """(grant id, token) of a new grant to the OS user (unless ``grantee``)."""
        out = ok(self.kms("grants", "create", key, "--grantee", grantee or me(), *args)).stdout.decode()
        m = ID_AND_TOKEN.fullmatch(out)
        assert m, out
        return m.group(1), m.group(2)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.path.parent / "audit.jsonl").read_text().splitlines()]


@pytest.fixture
def v(kms: Runner, vault: Path) -> Vault:
    return Vault(kms, vault)


def encrypt(kms: Runner, key: str, *args: str, data: bytes = b"hello", **kw: Any) -> Any:
    return kms("encrypt", "--key", key, *args, input=data, **kw)


def test_create_prints_the_id_and_token_and_json_is_the_aws_shape(v: Vault, kms: Runner) -> None:
    key = ok(kms("keys", "create")).stdout.decode().strip()
    # The policy that leaves the OS user only the grant actions locks it out of PutKeyPolicy: refused unless bypassed.
    fails(kms("policy", "put", key, str(v.policy)), 2, "MalformedPolicyDocumentException")
    ok(kms("policy", "put", key, str(v.policy), "--bypass-policy-lockout-safety-check"))
    fails(encrypt(kms, key), 7, "AccessDeniedException")
    r = ok(kms("grants", "create", key, "--grantee", me(), "--operation", "Encrypt"))
    assert ID_AND_TOKEN.fullmatch(r.stdout.decode()), r.stdout
    assert r.stderr == b""
    r = ok(kms("grants", "create", key, "--grantee", v.me, "--op", "Encrypt,Decrypt", "--op", "DescribeKey",
               "--retiring", "kmsadmin", "--name", "deploy", "--context-subset", "app=x", "--json"))
    check("CreateGrant", r.stdout)
    doc = json.loads(r.stdout)
    assert set(doc) == {"GrantToken", "GrantId"} and re.fullmatch(r"[0-9a-f]{64}", doc["GrantId"])
    # The same name and arguments: the same grant, a new token.
    again = json.loads(ok(kms("grants", "create", key, "--grantee", me(), "--op", "DescribeKey,Encrypt,Decrypt",
                              "--retiring", "kmsadmin", "--name", "deploy", "--context-subset", "app=x",
                              "--json")).stdout)
    assert again["GrantId"] == doc["GrantId"] and again["GrantToken"] != doc["GrantToken"]
    listed = json.loads(ok(kms("grants", "list", key, "--json")).stdout)
    assert len(listed["Grants"]) == 2
    named = next(g for g in listed["Grants"] if g["GrantId"] == doc["GrantId"])
    assert named["Operations"] == ["Encrypt", "Decrypt", "DescribeKey"]
    assert named["Constraints"] == {"EncryptionContextSubset": {"app": "x"}}
    assert named["RetiringPrincipal"] == f"arn:aws:iam::{v.account}:user/kmsadmin"


def test_a_grant_allows_what_the_policy_does_not(v: Vault, kms: Runner) -> None:
    key = v.restricted_key()
    line = fails(encrypt(kms, key), 7, "AccessDeniedException")
    assert f"User: {v.me} is not authorized to perform: kms:Encrypt" in line
    grant_id, _token = v.grant(key, "--operation", "Encrypt")
    ct = ok(encrypt(kms, key, "--context", "app=y")).stdout
    fails(kms("decrypt", "--context", "app=y", input=ct), 7, "AccessDeniedException")
    fails(kms("keys", "disable", key), 7, "AccessDeniedException")
    records = [r for r in v.records() if r["eventName"] == "Encrypt" and "errorCode" not in r]
    assert len(records) == 1 and records[0]["additionalEventData"]["grantId"] == grant_id
    # A constrained grant: the context must be exactly app=x (the Subset kind: tests/unit/test_grants_service.py).
    v.grant(key, "--operation", "Decrypt", "--operation", "DescribeKey", "--context-equals", "app=x")
    line = fails(kms("decrypt", "--context", "app=y", input=ct), 7, "AccessDeniedException")  # mismatch
    assert "kms:Decrypt" in line
    ct_x = ok(encrypt(kms, key, "--context", "app=x")).stdout
    assert ok(kms("decrypt", "--context", "app=x", input=ct_x)).stdout == b"hello"
    ct_more = ok(encrypt(kms, key, "--context", "app=x", "--context", "env=prod")).stdout
    fails(kms("decrypt", "--context", "app=x", "--context", "env=prod", input=ct_more), 7, "AccessDeniedException")
    # Constraints do not apply to DescribeKey.
    described = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)
    assert described["KeyMetadata"]["KeyId"] == key


def test_grant_tokens_on_every_command_that_uses_a_key(v: Vault, kms: Runner, tmp_path: Path) -> None:
    key, ecc = v.restricted_key(), v.restricted_key("--spec", "ECC_NIST_P256", "--usage", "SIGN_VERIFY")
    _gid, token = v.grant(key, "--op", "Encrypt,Decrypt,DescribeKey")
    _eid, ecc_token = v.grant(ecc, "--op", "Sign")
    ct = ok(encrypt(kms, key, "--grant-token", token)).stdout
    assert ok(kms("decrypt", "--grant-token", token, "--grant-token", token, input=ct)).stdout == b"hello"
    doc = json.loads(ok(kms("keys", "describe", key, "--json", "--grant-token", token)).stdout)
    assert doc["KeyMetadata"]["KeyId"] == key
    sig = ok(kms("sign", "--key", ecc, "--algorithm", "ECDSA_SHA_256", "--grant-token", ecc_token,
                 input=b"release")).stdout
    assert sig[:1] == b"\x30"  # a DER ECDSA signature
    truncated = token[:-3]
    refused = [("garbage", ("encrypt", "--key", key), b"hello"), ("garbage", ("decrypt",), ct),
               ("garbage", ("keys", "describe", key), b""),
               ("garbage", ("sign", "--key", ecc, "--algorithm", "ECDSA_SHA_256"), b"m"),
               (truncated, ("encrypt", "--key", key), b"hello"), (ecc_token, ("decrypt",), ct),
               (token, ("sign", "--key", ecc, "--algorithm", "ECDSA_SHA_256"), b"m")]
    for t, args, data in refused:
        r = kms(*args, "--grant-token", t, input=data)
        fails(r, 2, "InvalidGrantTokenException")
        assert r.stdout == b"", args
    # Refused even where the policy would allow the call: a key with the default policy.
    mine = ok(kms("keys", "create")).stdout.decode().strip()
    fails(encrypt(kms, mine, "--grant-token", "garbage"), 2, "InvalidGrantTokenException")
    fails(encrypt(kms, mine, "--grant-token", token), 2, "InvalidGrantTokenException")
    # No token ever reaches the audit log.
    text = (v.path.parent / "audit.jsonl").read_text()
    assert token not in text and ecc_token not in text and truncated not in text


def test_list_and_list_retirable(v: Vault, kms: Runner) -> None:
    key, other = v.restricted_key(), v.restricted_key()
    plain_id, _ = v.grant(key, "--op", "Encrypt")
    named_id, _ = v.grant(key, "--op", "Encrypt,Decrypt", "--name", "ci", "--retiring", "kmsadmin",
                          "--context-equals", "app=x", grantee="bob")
    other_id, _ = v.grant(other, "--op", "DescribeKey", "--retiring", f"arn:aws:iam::{v.account}:user/kmsadmin")
    rows = [line.split("\t") for line in ok(kms("grants", "list", key)).stdout.decode().splitlines()]
    assert sorted(r[0] for r in rows) == sorted([plain_id, named_id])
    by_id = {r[0]: r for r in rows}
    assert by_id[plain_id][1:7] == [key, "", f"user/{me()}", "Encrypt", "", ""]
    assert by_id[named_id][1:7] == [key, "ci", "user/bob", "Encrypt,Decrypt", "user/kmsadmin", "context = app=x"]
    assert all(ISO.fullmatch(r[7]) for r in rows) and all(len(r) == 8 for r in rows)
    r = ok(kms("grants", "list", key, "--json"))
    check("ListGrants", r.stdout)
    doc = json.loads(r.stdout)
    assert doc["Truncated"] is False and {g["GrantId"] for g in doc["Grants"]} == {plain_id, named_id}
    assert all(g["KeyId"] == f"arn:aws:kms:local:{v.account}:key/{key}" for g in doc["Grants"])
    r = ok(kms("grants", "list-retirable", f"arn:aws:iam::{v.account}:user/kmsadmin", "--json"))
    check("ListRetirableGrants", r.stdout)
    assert {g["GrantId"] for g in json.loads(r.stdout)["Grants"]} == {named_id, other_id}
    rows = [line.split("\t") for line in ok(kms("grants", "list-retirable", "kmsadmin")).stdout.decode().splitlines()]
    assert sorted(r[0] for r in rows) == sorted([named_id, other_id])
    assert json.loads(ok(kms("grants", "list-retirable", "nobody", "--json")).stdout) == {"Grants": [],
                                                                                         "Truncated": False}
    fails(kms("grants", "list-retirable", "arn:aws:iam::000000000000:user/kmsadmin"), 2, "ValidationException")


def test_retire_and_revoke(v: Vault, kms: Runner) -> None:
    key = v.restricted_key()
    retirable_id, retirable_token = v.grant(key, "--op", "Encrypt,RetireGrant")
    by_id, _ = v.grant(key, "--op", "Encrypt", "--retiring", me())
    may_not_id, may_not_token = v.grant(key, "--op", "Decrypt")
    revoked_id, _ = v.grant(key, "--op", "DescribeKey")
    # Neither the retiring principal nor a grantee whose grant has RetireGrant, and no policy allowing it: 7.
    fails(kms("grants", "retire", "--token", may_not_token), 7, "AccessDeniedException")
    fails(kms("grants", "retire", "--key", key, "--grant-id", may_not_id), 7, "AccessDeniedException")
    # The grantee whose grant has RetireGrant, by token; the retiring principal, by key and id.
    assert ok(kms("grants", "retire", "--token", retirable_token)).stdout == b""
    ok(kms("grants", "retire", "--key", key, "--grant-id", by_id))
    fails(encrypt(kms, key), 7, "AccessDeniedException")  # both Encrypt grants are gone
    assert ok(kms("grants", "revoke", key, revoked_id)).stdout == b""
    fails(kms("keys", "describe", key), 7, "AccessDeniedException")
    remaining = json.loads(ok(kms("grants", "list", key, "--json")).stdout)["Grants"]
    assert [g["GrantId"] for g in remaining] == [may_not_id]
    # Unknown grant ids: 3.
    fails(kms("grants", "revoke", key, revoked_id), 3, "NotFoundException")
    fails(kms("grants", "revoke", key, "0" * 64), 3, "NotFoundException")
    fails(kms("grants", "retire", "--key", key, "--grant-id", by_id), 3, "NotFoundException")
    fails(kms("grants", "retire", "--token", retirable_token), 3, "NotFoundException")  # a token of a retired one
    # Usage: neither a token nor key and id; a bad token.
    fails(kms("grants", "retire"), 2)
    fails(kms("grants", "retire", "--token", "garbage"), 2, "InvalidGrantTokenException")
    # Revoke is the policy's alone: a key whose policy does not allow it to the OS user.
    mine = ok(kms("keys", "create")).stdout.decode().strip()
    gid, _ = v.grant(mine, "--op", "Encrypt,RetireGrant,CreateGrant")
    document = v.path.parent / "owner.json"
    document.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{v.account}:user/kmsadmin"}, "Action": "kms:*",
         "Resource": "*"}]}))
    ok(kms("policy", "put", mine, str(document), "--bypass-policy-lockout-safety-check"))
    fails(kms("grants", "revoke", mine, gid), 7, "AccessDeniedException")
    ok(encrypt(kms, mine))  # the grant still works
    ok(kms("grants", "retire", "--key", mine, "--grant-id", gid))  # and its grantee may retire it
    fails(encrypt(kms, mine), 7, "AccessDeniedException")


def test_bad_input_exit_codes(v: Vault, kms: Runner) -> None:
    key = v.restricted_key()
    hmac_key = v.restricted_key("--spec", "HMAC_256", "--usage", "GENERATE_VERIFY_MAC")
    for k, op in ((key, "Sign"), (hmac_key, "Encrypt")):
        line = fails(kms("grants", "create", k, "--grantee", me(), "--op", op), 2, "ValidationException")
        assert "not a valid grant operation" in line
    fails(kms("grants", "create", hmac_key, "--grantee", me(), "--op", "GenerateMac", "--context-subset", "a=b"),
          2, "ValidationException")
    fails(kms("grants", "create", key, "--grantee", me(), "--op", "Encrypt", "--context-equals", "a=b",
              "--context-subset", "a=b"), 2, "ValidationException")
    fails(kms("grants", "create", key, "--grantee", me(), "--op", "Encrypt", "--context-equals", "novalue"), 2)
    fails(kms("grants", "create", key, "--grantee", me(), "--op", "Frobnicate"), 2, "ValidationException")
    fails(kms("grants", "create", key, "--grantee", me(), "--op", "Encrypt", "--name", "not a name"), 2,
          "ValidationException")
    for principal in ("arn:aws:iam::000000000000:user/bob", f"arn:aws:iam::{v.account}:role/bob"):
        fails(kms("grants", "create", key, "--grantee", principal, "--op", "Encrypt"), 2, "ValidationException")
    fails(kms("grants", "create", key, "--grantee", me(), "--op", "Encrypt", "--retiring", "a b"), 2,
          "ValidationException")
    fails(kms("grants", "create", key, "--grantee", me()), 2)  # no operation: a usage error
    fails(kms("grants", "create", "alias/none", "--grantee", me(), "--op", "Encrypt"), 3, "NotFoundException")
    # Key states: a grant is not made on a disabled key or one pending deletion.
    mine = ok(kms("keys", "create")).stdout.decode().strip()
    ok(kms("keys", "disable", mine))
    fails(kms("grants", "create", mine, "--grantee", me(), "--op", "Encrypt"), 4, "DisabledException")
    ok(kms("keys", "schedule-delete", mine, "--days", "7"))
    fails(kms("grants", "create", mine, "--grantee", me(), "--op", "Encrypt"), 4, "KMSInvalidStateException")
    assert ok(kms("grants", "list", mine)).stdout == b""  # listing works in any state


def test_a_session_sees_a_revoked_or_retired_grant_stop_working_at_once(v: Vault, kms: Runner,
                                                                        unlock: Any) -> None:  # noqa: F811
    key = v.restricted_key()
    s = unlock()
    grant_id, token = v.grant(key, "--op", "Encrypt,Decrypt,RetireGrant")
    ct = ok(encrypt(kms, key, env_update=s, env_remove=NO_PASS)).stdout
    assert ok(kms("decrypt", input=ct, env_update=s, env_remove=NO_PASS)).stdout == b"hello"
    ok(kms("grants", "revoke", key, grant_id))  # by a process without the session
    fails(encrypt(kms, key, env_update=s, env_remove=NO_PASS), 7, "AccessDeniedException")
    fails(kms("decrypt", input=ct, env_update=s, env_remove=NO_PASS), 7, "AccessDeniedException")
    # A grant made and retired through the session itself.
    out = ok(kms("grants", "create", key, "--grantee", me(), "--op", "Encrypt,RetireGrant", env_update=s,
                 env_remove=NO_PASS)).stdout.decode()
    m = ID_AND_TOKEN.fullmatch(out)
    assert m, out
    ok(encrypt(kms, key, "--grant-token", m.group(2), env_update=s, env_remove=NO_PASS))
    ok(encrypt(kms, key))  # and without the session
    ok(kms("grants", "retire", "--token", m.group(2), env_update=s, env_remove=NO_PASS))
    fails(encrypt(kms, key, env_update=s, env_remove=NO_PASS), 7, "AccessDeniedException")
    fails(encrypt(kms, key, "--grant-token", token, env_update=s, env_remove=NO_PASS), 7, "AccessDeniedException")
    fails(encrypt(kms, key, "--grant-token", "garbage", env_update=s, env_remove=NO_PASS), 2,
          "InvalidGrantTokenException")
