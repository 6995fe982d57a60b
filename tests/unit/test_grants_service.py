"""Grants through the service (issue 17, SPEC "Grants"): who a grant lets do what, and nothing more.

Every key here has a policy that allows its owner, alice, and nobody else, so
whatever bob, carol or dave may do comes from a grant alone. Each user is a
``Kms`` object of its own over the same vault (as two processes, or a
session's worker, would be); the clock is the test's.

Most scenarios run on both vault formats: format 1 (one sealed body) and
format 2 (records with indexes by key, by grantee on a key and by retiring
principal), since ``kmscli/vault/state.py`` keeps grants in each its own way.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from kmscli import errors, shapes
from kmscli.service import Caller, Kms
from kmscli.service import grants as grants_mod
from kmscli.vault import format as F
from kmscli.vault.store import PassphraseKeySource, VaultStore
from tests.aws.botocore_model import wire_errors
from tests.unit.conftest import CHEAP, Clock

SQLITE = b"SQLite format 3\0"
UIDS = {"alice": 1000, "bob": 1001, "carol": 1002, "dave": 1003}


class World:
    """One vault, its account, and a ``Kms`` per user over it."""

    def __init__(self, folder: Path, clock: Clock, fmt: int = F.RECORDS_FORMAT_VERSION) -> None:
        self.path = folder / "v" / "vault.kms"
        self.keys = PassphraseKeySource(lambda: b"pw")
        self.clock = clock
        self.fmt = fmt
        self.alice = self.user("alice")
        self.alice.CreateVault(CHEAP)
        with self.alice.store.open(self.keys) as ov:
            self.account = ov.account
        if fmt == F.FORMAT_VERSION:
            assert self.path.read_bytes()[:8] == F.MAGIC
        else:
            assert self.path.read_bytes()[:16] == SQLITE
        self.bob, self.carol, self.dave = self.user("bob"), self.user("carol"), self.user("dave")

    def store(self) -> VaultStore:
        if self.fmt == F.FORMAT_VERSION:
            return VaultStore(self.path, create_format=F.FORMAT_VERSION, migrate=False)
        return VaultStore(self.path)

    def user(self, name: str, region: str = "local", store: VaultStore | None = None) -> Kms:
        return Kms(self.path, self.keys, clock=self.clock, region=region, store=store or self.store(),
                   caller=Caller(user=name, uid=UIDS.get(name, 2000), pid=1, host="test"))

    def arn(self, user: str) -> str:
        return f"arn:aws:iam::{self.account}:user/{user}"

    def owner_policy(self, *extra: dict[str, Any]) -> str:
        owner = {"Sid": "Owner", "Effect": "Allow", "Principal": {"AWS": self.arn("alice")}, "Action": "kms:*",
                 "Resource": "*"}
        return json.dumps({"Version": "2012-10-17", "Statement": [owner, *extra]})

    def key(self, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None, *extra: dict[str, Any],
            svc: Kms | None = None) -> str:
        """A new key that only alice's policy allows (plus ``extra`` statements); its id."""
        md = (svc or self.alice).CreateKey(KeySpec=spec, KeyUsage=usage, Policy=self.owner_policy(*extra))
        return str(md["KeyMetadata"]["KeyId"])

    def grant(self, key: str, grantee: str, *ops: str, svc: Kms | None = None, **kw: Any) -> dict[str, Any]:
        return (svc or self.alice).CreateGrant(KeyId=key, GranteePrincipal=grantee, Operations=list(ops), **kw)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.alice.audit_path.read_text().splitlines()]

    def log_text(self) -> str:
        return "".join(p.read_text() for p in sorted(self.path.parent.glob("audit*.jsonl")))


@pytest.fixture(params=[F.RECORDS_FORMAT_VERSION, F.FORMAT_VERSION], ids=["format2", "format1"])
def w(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> World:
    return World(tmp_path, clock, request.param)


@pytest.fixture
def w2(tmp_path: Path, clock: Clock) -> World:
    """Format 2 only: for what does not depend on how grants are stored."""
    return World(tmp_path, clock)


# -- calls -----------------------------------------------------------------------------------
def encrypt(svc: Kms, key: str, context: dict[str, str] | None = None, data: bytes = b"secret",
            tokens: tuple[str, ...] = ()) -> bytes:
    svc.grant_tokens = tokens
    out = io.BytesIO()
    try:
        svc.Encrypt(KeyId=key, reader=io.BytesIO(data), writer=out, EncryptionContext=context)
    finally:
        svc.grant_tokens = ()
    return out.getvalue()


def decrypt(svc: Kms, blob: bytes, context: dict[str, str] | None = None, tokens: tuple[str, ...] = ()) -> bytes:
    svc.grant_tokens = tokens
    out = io.BytesIO()
    try:
        svc.Decrypt(reader=io.BytesIO(blob), writer=out, EncryptionContext=context)
    finally:
        svc.grant_tokens = ()
    return out.getvalue()


def reencrypt(svc: Kms, blob: bytes, dst: str, src_ctx: dict[str, str] | None = None,
              dst_ctx: dict[str, str] | None = None, tokens: tuple[str, ...] = ()) -> bytes:
    svc.grant_tokens = tokens
    out = io.BytesIO()
    try:
        svc.ReEncrypt(reader=io.BytesIO(blob), writer=out, DestinationKeyId=dst, SourceEncryptionContext=src_ctx,
                      DestinationEncryptionContext=dst_ctx)
    finally:
        svc.grant_tokens = ()
    return out.getvalue()


def datakey(svc: Kms, key: str, context: dict[str, str] | None = None) -> dict[str, Any]:
    return svc.GenerateDataKey(KeyId=key, KeySpec="AES_256", EncryptionContext=context)


def denied(fn: Any, *args: Any, **kw: Any) -> str:
    """``fn(...)`` raises AccessDeniedException (exit 7); its message."""
    with pytest.raises(errors.AccessDeniedException) as e:
        fn(*args, **kw)
    assert e.value.exit_code == 7
    return e.value.message


def grant_ids(svc: Kms, key: str, **kw: Any) -> list[str]:
    return [g["GrantId"] for g in svc.ListGrants(KeyId=key, **kw)["Grants"]]


def new_records(w: World, before: int) -> list[dict[str, Any]]:
    return w.records()[before:]


# -- what a grant allows -----------------------------------------------------------------------
def test_without_a_grant_the_policy_alone_decides(w: World) -> None:
    key = w.key()
    assert decrypt(w.alice, encrypt(w.alice, key)) == b"secret"
    msg = denied(encrypt, w.bob, key)
    assert msg == (f"User: {w.arn('bob')} is not authorized to perform: kms:Encrypt on resource: "
                   f"arn:aws:kms:local:{w.account}:key/{key} because of the key policy (and no grant allows it)")
    denied(w.bob.DescribeKey, KeyId=key)


def test_a_grant_allows_exactly_its_operations_to_its_grantee_on_its_key(w: World) -> None:
    key, other = w.key(), w.key()
    w.grant(key, w.arn("bob"), "Encrypt", "DescribeKey")
    blob = encrypt(w.bob, key)
    assert decrypt(w.alice, blob) == b"secret"
    assert w.bob.DescribeKey(KeyId=key)["KeyMetadata"]["KeyId"] == key
    # Nothing else: other operations, other keys, other users.
    denied(decrypt, w.bob, blob)
    denied(datakey, w.bob, key)
    denied(w.bob.GenerateDataKeyWithoutPlaintext, KeyId=key, KeySpec="AES_256")
    denied(reencrypt, w.bob, blob, key)
    denied(w.bob.DisableKey, KeyId=key)
    denied(w.bob.ScheduleKeyDeletion, KeyId=key, PendingWindowInDays=7)
    denied(w.bob.GetKeyPolicy, KeyId=key)
    denied(w.bob.PutKeyPolicy, KeyId=key, Policy=w.owner_policy(), BypassPolicyLockoutSafetyCheck=True)
    denied(w.bob.ListGrants, KeyId=key)
    denied(w.bob.CreateGrant, KeyId=key, GranteePrincipal="bob", Operations=["Decrypt"])
    denied(w.bob.RevokeGrant, KeyId=key, GrantId=grant_ids(w.alice, key)[0])
    denied(encrypt, w.bob, other)
    denied(w.bob.DescribeKey, KeyId=other)
    denied(encrypt, w.carol, key)
    denied(w.carol.DescribeKey, KeyId=key)
    assert w.alice.DescribeKey(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_grants_of_each_operation_a_symmetric_key_takes(w2: World) -> None:
    key = w2.key()
    w2.grant(key, "bob", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "Decrypt",
             "GenerateDataKeyPairWithoutPlaintext")
    dk = datakey(w2.bob, key, {"a": "1"})
    assert decrypt(w2.bob, dk["CiphertextBlob"], {"a": "1"}) == dk["Plaintext"]
    assert "Plaintext" not in w2.bob.GenerateDataKeyWithoutPlaintext(KeyId=key, NumberOfBytes=16)
    pair = w2.bob.GenerateDataKeyPairWithoutPlaintext(KeyId=key, KeyPairSpec="ECC_NIST_P256")
    assert "PrivateKeyPlaintext" not in pair and pair["PrivateKeyCiphertextBlob"]
    denied(w2.bob.GenerateDataKeyPair, KeyId=key, KeyPairSpec="ECC_NIST_P256")
    denied(encrypt, w2.bob, key)


def test_a_grant_to_the_account_is_a_grant_to_every_user_of_the_vault(w2: World) -> None:
    key = w2.key()
    w2.grant(key, f"arn:aws:iam::{w2.account}:root", "Encrypt")
    for user in (w2.bob, w2.carol):
        assert decrypt(w2.alice, encrypt(user, key)) == b"secret"
        denied(decrypt, user, encrypt(user, key))


# -- constraints ---------------------------------------------------------------------------------
EXACT, SUPERSET, MISSING, DIFFERENT, EMPTY = ({"app": "x"}, {"app": "x", "env": "prod"}, {"env": "prod"},
                                              {"app": "y"}, {})
CASES = {
    "EncryptionContextEquals": {"exact": True, "superset": False, "missing": False, "different": False,
                                "empty": False},
    "EncryptionContextSubset": {"exact": True, "superset": True, "missing": False, "different": False,
                                "empty": False},
}
CONTEXTS = {"exact": EXACT, "superset": SUPERSET, "missing": MISSING, "different": DIFFERENT, "empty": EMPTY}


@pytest.mark.parametrize("constraint", sorted(CASES))
def test_constraints_on_encrypt_decrypt_and_generate_data_key(w: World, constraint: str) -> None:
    key = w.key()
    w.grant(key, "bob", "Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey",
            Constraints={constraint: {"app": "x"}})
    for name, context in CONTEXTS.items():
        blob = encrypt(w.alice, key, context)  # made under the owner's policy
        if CASES[constraint][name]:
            assert decrypt(w.alice, encrypt(w.bob, key, context), context) == b"secret", name
            assert decrypt(w.bob, blob, context) == b"secret", name
            dk = datakey(w.bob, key, context)
            assert decrypt(w.alice, dk["CiphertextBlob"], context) == dk["Plaintext"], name
        else:
            denied(encrypt, w.bob, key, context)
            denied(decrypt, w.bob, blob, context)
            denied(datakey, w.bob, key, context)
    # Constraints apply only to operations that take an encryption context.
    assert w.bob.DescribeKey(KeyId=key)["KeyMetadata"]["KeyId"] == key


@pytest.mark.parametrize("constraint", sorted(CASES))
def test_reencrypt_checks_each_side_against_its_own_context(w2: World, constraint: str) -> None:
    src, dst = w2.key(), w2.key()
    w2.grant(src, "bob", "ReEncryptFrom", Constraints={constraint: {"side": "src"}})
    w2.grant(dst, "bob", "ReEncryptTo", Constraints={constraint: {"side": "dst"}})
    blob = encrypt(w2.alice, src, {"side": "src"})
    moved = reencrypt(w2.bob, blob, dst, {"side": "src"}, {"side": "dst"})
    assert decrypt(w2.alice, moved, {"side": "dst"}) == b"secret"
    # The destination's context is checked against the destination's grant, the source's against the source's.
    denied(reencrypt, w2.bob, blob, dst, {"side": "src"}, {"side": "src"})
    denied(reencrypt, w2.bob, blob, dst, {"side": "src"}, {})
    other = encrypt(w2.alice, src, {"side": "dst"})
    denied(reencrypt, w2.bob, other, dst, {"side": "dst"}, {"side": "dst"})
    superset_src = encrypt(w2.alice, src, {"side": "src", "extra": "1"})
    if constraint == "EncryptionContextSubset":
        moved = reencrypt(w2.bob, superset_src, dst, {"side": "src", "extra": "1"}, {"side": "dst", "more": "2"})
        assert decrypt(w2.alice, moved, {"side": "dst", "more": "2"}) == b"secret"
    else:
        denied(reencrypt, w2.bob, superset_src, dst, {"side": "src", "extra": "1"}, {"side": "dst"})
        denied(reencrypt, w2.bob, blob, dst, {"side": "src"}, {"side": "dst", "more": "2"})
    # Both operations on one key, one constraint: re-encrypting in place needs both contexts to meet it.
    both = w2.key()
    w2.grant(both, "bob", "ReEncryptFrom", "ReEncryptTo", Constraints={constraint: {"side": "src"}})
    own = encrypt(w2.alice, both, {"side": "src"})
    assert decrypt(w2.alice, reencrypt(w2.bob, own, both, {"side": "src"}, {"side": "src"}),
                   {"side": "src"}) == b"secret"
    denied(reencrypt, w2.bob, own, both, {"side": "src"}, {"side": "dst"})


def test_an_explicit_deny_in_the_policy_beats_a_grant(w: World) -> None:
    deny = {"Sid": "NoBobEncrypt", "Effect": "Deny", "Principal": {"AWS": w.arn("bob")}, "Action": "kms:Encrypt",
            "Resource": "*"}
    key = w.key("SYMMETRIC_DEFAULT", None, deny)
    w.grant(key, "bob", "Encrypt", "DescribeKey")
    msg = denied(encrypt, w.bob, key)
    assert msg.endswith("because of an explicit deny in the key policy"), msg
    assert w.bob.DescribeKey(KeyId=key)["KeyMetadata"]["KeyId"] == key  # the deny names only Encrypt


def test_grant_operations_the_key_cannot_do_are_refused(w2: World) -> None:
    sym, hmac_key = w2.key(), w2.key("HMAC_256", "GENERATE_VERIFY_MAC")
    ecc = w2.key("ECC_NIST_P256", "SIGN_VERIFY")
    rsa = w2.key("RSA_2048", "ENCRYPT_DECRYPT")
    agree = w2.key("ECC_NIST_P256", "KEY_AGREEMENT")
    refused = [(sym, ["Sign"]), (sym, ["GenerateMac"]), (sym, ["GetPublicKey"]), (sym, ["Encrypt", "Verify"]),
               (hmac_key, ["Encrypt"]), (hmac_key, ["Decrypt"]), (hmac_key, ["Sign"]),
               (ecc, ["Encrypt"]), (ecc, ["GenerateMac"]), (ecc, ["GenerateDataKey"]),
               (rsa, ["Sign"]), (rsa, ["GenerateDataKey"]), (rsa, ["GenerateDataKeyPair"]),
               (agree, ["Sign"]), (agree, ["Encrypt"])]
    for key, ops in refused:
        with pytest.raises(errors.ValidationException) as e:
            w2.grant(key, "bob", *ops)
        assert e.value.exit_code == 2
        assert "not a valid grant operation" in e.value.message, e.value.message
    # Operations that are no GrantOperation at all, or none.
    for ops in (["Frobnicate"], ["ListGrants"], ["RevokeGrant"], ["encrypt"], []):
        with pytest.raises(errors.ValidationException):
            w2.grant(sym, "bob", *ops)
    for key in (sym, hmac_key, ecc, rsa, agree):
        assert w2.alice.ListGrants(KeyId=key)["Grants"] == []
    # What each kind does allow, and the grantee can then do it.
    w2.grant(hmac_key, "bob", "GenerateMac", "VerifyMac", "DescribeKey", "CreateGrant", "RetireGrant")
    mac = w2.bob.GenerateMac(KeyId=hmac_key, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert w2.bob.VerifyMac(KeyId=hmac_key, Message=b"m", MacAlgorithm="HMAC_SHA_256", Mac=mac)["MacValid"]
    w2.grant(ecc, "bob", "Sign", "GetPublicKey")
    sig = w2.bob.Sign(KeyId=ecc, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    denied(w2.bob.Verify, KeyId=ecc, Message=b"m", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")
    assert w2.alice.Verify(KeyId=ecc, Message=b"m", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
    assert w2.bob.GetPublicKey(KeyId=ecc)["KeySpec"] == "ECC_NIST_P256"
    w2.grant(rsa, "bob", "Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey")
    w2.grant(agree, "bob", "DeriveSharedSecret", "GetPublicKey")


def test_constraints_on_a_key_that_takes_no_encryption_context_are_refused(w2: World) -> None:
    ecc, hmac_key = w2.key("ECC_NIST_P256", "SIGN_VERIFY"), w2.key("HMAC_256", "GENERATE_VERIFY_MAC")
    for key, op in ((ecc, "Sign"), (hmac_key, "GenerateMac")):
        for member in ("EncryptionContextEquals", "EncryptionContextSubset"):
            with pytest.raises(errors.ValidationException) as e:
                w2.grant(key, "bob", op, Constraints={member: {"a": "b"}})
            assert "only symmetric encryption keys" in e.value.message
        assert w2.alice.ListGrants(KeyId=key)["Grants"] == []
    sym = w2.key()
    bad: list[dict[str, Any]] = [
        {"EncryptionContextEquals": {"a": "1"}, "EncryptionContextSubset": {"a": "1"}},
        {"EncryptionContextEquals": {f"k{i}": "v" for i in range(9)}},  # 9 pairs: AWS's limit is 8
        {"EncryptionContextSubset": {"k": "v" * 400}},  # over 384 characters
        {"EncryptionContextEquals": {"a": 1}},
    ]
    for constraints in bad:
        with pytest.raises(errors.ValidationException):
            w2.grant(sym, "bob", "Encrypt", Constraints=constraints)
    with pytest.raises(errors.UnsupportedOperationException):
        w2.grant(sym, "bob", "Encrypt", Constraints={"SourceArn": "arn:aws:s3:::bucket"})
    assert w2.alice.ListGrants(KeyId=sym)["Grants"] == []


# -- names -------------------------------------------------------------------------------------------
def test_the_same_name_and_arguments_return_the_same_grant_with_a_new_token(w: World) -> None:
    key = w.key()
    args: dict[str, Any] = {"Name": "deploy", "RetiringPrincipal": "carol",
                            "Constraints": {"EncryptionContextSubset": {"app": "x"}}}
    first = w.grant(key, "bob", "Encrypt", "Decrypt", **args)
    again = w.grant(key, w.arn("bob"), "Decrypt", "Encrypt", **args)  # the ARN, the operations reordered
    assert again["GrantId"] == first["GrantId"] and again["GrantToken"] != first["GrantToken"]
    assert grant_ids(w.alice, key) == [first["GrantId"]]
    for token in (first["GrantToken"], again["GrantToken"]):
        encrypt(w.bob, key, {"app": "x"}, tokens=(token,))
    # Any argument different: a new grant.
    variants = [
        (("bob", "Encrypt"), args),
        (("carol", "Encrypt", "Decrypt"), args),
        (("bob", "Encrypt", "Decrypt"), {**args, "RetiringPrincipal": "dave"}),
        (("bob", "Encrypt", "Decrypt"), {**args, "Constraints": {"EncryptionContextEquals": {"app": "x"}}}),
        (("bob", "Encrypt", "Decrypt"), {k: v for k, v in args.items() if k != "Constraints"}),
        (("bob", "Encrypt", "Decrypt"), {**args, "Name": "deploy-2"}),
    ]
    made = {first["GrantId"]}
    for (grantee, *ops), kw in variants:
        made.add(w.grant(key, grantee, *ops, **kw)["GrantId"])
    assert len(made) == 1 + len(variants)
    assert sorted(grant_ids(w.alice, key)) == sorted(made)
    # Without a name, the same arguments make a new grant every time (as in AWS).
    a, b = w.grant(key, "dave", "Encrypt"), w.grant(key, "dave", "Encrypt")
    assert a["GrantId"] != b["GrantId"]
    for bad in ("", "has space", "x" * 257, "é"):
        with pytest.raises(errors.ValidationException):
            w.grant(key, "bob", "Encrypt", Name=bad)


# -- delegation -----------------------------------------------------------------------------------------
def test_a_grant_with_create_grant_delegates_no_more_than_it_has(w: World) -> None:
    key = w.key()
    parent = w.grant(key, "bob", "Encrypt", "Decrypt", "CreateGrant")
    before = len(w.records())
    child = w.grant(key, "carol", "Encrypt", svc=w.bob)
    record = new_records(w, before)[-1]
    assert record["eventName"] == "CreateGrant" and record["userIdentity"]["userName"] == "bob"
    assert record["additionalEventData"]["grantId"] == parent["GrantId"]
    assert record["responseElements"]["grantId"] == child["GrantId"]
    assert decrypt(w.alice, encrypt(w.carol, key)) == b"secret"
    denied(decrypt, w.carol, encrypt(w.alice, key))
    msg = denied(w.grant, key, "carol", "Encrypt", "DescribeKey", svc=w.bob)
    assert "does not allow DescribeKey" in msg, msg
    denied(w.grant, key, "carol", "RetireGrant", svc=w.bob)
    w.grant(key, "carol", "CreateGrant", "Decrypt", svc=w.bob)  # a subset, CreateGrant included
    assert len(grant_ids(w.alice, key)) == 3
    # Carol's grant that has CreateGrant delegates what it has (Decrypt), not what her other grant has.
    denied(w.grant, key, "dave", "Encrypt", svc=w.carol)
    w.grant(key, "dave", "Decrypt", svc=w.carol)
    # A grant without CreateGrant delegates nothing.
    denied(w.grant, key, "carol", "Decrypt", svc=w.dave)
    other = w.key()
    w.grant(other, "bob", "Encrypt")
    denied(w.grant, other, "carol", "Encrypt", svc=w.bob)


def test_a_delegated_grant_keeps_its_parent_constraints(w2: World) -> None:
    key = w2.key()
    w2.grant(key, "bob", "Encrypt", "CreateGrant", Constraints={"EncryptionContextSubset": {"app": "x"}})
    denied(w2.grant, key, "carol", "Encrypt", svc=w2.bob)
    denied(w2.grant, key, "carol", "Encrypt", svc=w2.bob, Constraints={"EncryptionContextSubset": {"app": "y"}})
    w2.grant(key, "carol", "Encrypt", svc=w2.bob, Constraints={"EncryptionContextSubset": {"app": "x"}})
    encrypt(w2.carol, key, {"app": "x", "more": "1"})
    denied(encrypt, w2.carol, key, {"app": "y"})


# -- retiring and revoking --------------------------------------------------------------------------------
def test_retire_by_token_and_by_key_and_id_as_the_retiring_principal(w: World) -> None:
    key = w.key()
    by_token = w.grant(key, "bob", "Encrypt", RetiringPrincipal="carol")
    by_id = w.grant(key, "bob", "Decrypt", RetiringPrincipal=w.arn("carol"))
    encrypt(w.bob, key)
    before = len(w.records())
    assert w.carol.RetireGrant(GrantToken=by_token["GrantToken"]) == {}
    record = new_records(w, before)[-1]
    assert (record["eventName"], record.get("errorCode")) == ("RetireGrant", None)
    assert record["requestParameters"] == {"grantId": by_token["GrantId"]}
    assert record["responseElements"] == {"keyId": key, "grantId": by_token["GrantId"]}
    denied(encrypt, w.bob, key)
    assert w.carol.RetireGrant(KeyId=key, GrantId=by_id["GrantId"]) == {}
    assert w.alice.ListGrants(KeyId=key)["Grants"] == []
    with pytest.raises(errors.NotFoundException) as e:
        w.carol.RetireGrant(KeyId=key, GrantId=by_id["GrantId"])
    assert e.value.exit_code == 3


def test_the_grantee_retires_only_a_grant_that_allows_retire_grant(w: World) -> None:
    key = w.key()
    may = w.grant(key, "bob", "Encrypt", "RetireGrant")
    may_not = w.grant(key, "bob", "Encrypt")
    others = w.grant(key, "carol", "Encrypt", "RetireGrant")
    for how in ({"GrantToken": may_not["GrantToken"]}, {"KeyId": key, "GrantId": may_not["GrantId"]}):
        msg = denied(w.bob.RetireGrant, **how)
        assert "kms:RetireGrant" in msg and "(and no grant" not in msg, msg
    # Retiring is not an operation that carol's grant gives her over grants that are not hers.
    denied(w.carol.RetireGrant, KeyId=key, GrantId=may["GrantId"])
    denied(w.dave.RetireGrant, GrantToken=may["GrantToken"])
    assert sorted(grant_ids(w.alice, key)) == sorted(g["GrantId"] for g in (may, may_not, others))
    w.bob.RetireGrant(GrantToken=may["GrantToken"])
    assert sorted(grant_ids(w.alice, key)) == sorted(g["GrantId"] for g in (may_not, others))
    # The key's administrator (the policy's kms:RetireGrant) retires any grant.
    w.alice.RetireGrant(KeyId=key, GrantId=may_not["GrantId"])
    w.alice.RetireGrant(GrantToken=others["GrantToken"])
    assert w.alice.ListGrants(KeyId=key)["Grants"] == []


def test_the_policy_can_allow_retire_grant_to_another_user(w2: World) -> None:
    allow = {"Sid": "DaveRetires", "Effect": "Allow", "Principal": {"AWS": w2.arn("dave")},
             "Action": "kms:RetireGrant", "Resource": "*"}
    key = w2.key("SYMMETRIC_DEFAULT", None, allow)
    g = w2.grant(key, "bob", "Encrypt")
    denied(w2.dave.RevokeGrant, KeyId=key, GrantId=g["GrantId"])  # RetireGrant only
    w2.dave.RetireGrant(KeyId=key, GrantId=g["GrantId"])
    assert w2.alice.ListGrants(KeyId=key)["Grants"] == []
    # A deny of kms:RetireGrant does not stop the retiring principal: retiring is the grant's own right.
    deny = {"Sid": "NoRetire", "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:RetireGrant",
            "Resource": "*"}
    key2 = w2.key("SYMMETRIC_DEFAULT", None, deny)
    g2 = w2.grant(key2, "bob", "Encrypt", RetiringPrincipal="carol")
    denied(w2.alice.RetireGrant, KeyId=key2, GrantId=g2["GrantId"])
    w2.carol.RetireGrant(KeyId=key2, GrantId=g2["GrantId"])


def test_a_retiring_principal_of_the_account_lets_any_user_retire(w2: World) -> None:
    key = w2.key()
    g = w2.grant(key, "bob", "Encrypt", RetiringPrincipal=f"arn:aws:iam::{w2.account}:root")
    w2.dave.RetireGrant(GrantToken=g["GrantToken"])
    assert w2.alice.ListGrants(KeyId=key)["Grants"] == []


def test_revoke_is_for_the_policy_alone(w: World) -> None:
    key = w.key()
    g = w.grant(key, "bob", "Encrypt", "RetireGrant", "CreateGrant", RetiringPrincipal="carol")
    for user in (w.bob, w.carol, w.dave):
        msg = denied(user.RevokeGrant, KeyId=key, GrantId=g["GrantId"])
        assert "kms:RevokeGrant" in msg
    before = len(w.records())
    assert w.alice.RevokeGrant(KeyId=key, GrantId=g["GrantId"]) == {}
    record = new_records(w, before)[-1]
    assert record["eventName"] == "RevokeGrant" and "errorCode" not in record
    assert record["requestParameters"] == {"keyId": key, "grantId": g["GrantId"]}
    assert w.alice.ListGrants(KeyId=key)["Grants"] == []
    denied(encrypt, w.bob, key)
    with pytest.raises(errors.NotFoundException) as e:
        w.alice.RevokeGrant(KeyId=key, GrantId=g["GrantId"])
    assert e.value.exit_code == 3


def test_unknown_grant_ids_are_not_found(w: World) -> None:
    key, other = w.key(), w.key()
    g = w.grant(other, "bob", "Encrypt", RetiringPrincipal="alice")
    for grant_id in ("0" * 64, "nope", g["GrantId"]):  # the last: a grant of another key
        with pytest.raises(errors.NotFoundException) as e:
            w.alice.RevokeGrant(KeyId=key, GrantId=grant_id)
        assert e.value.exit_code == 3
        with pytest.raises(errors.NotFoundException):
            w.alice.RetireGrant(KeyId=key, GrantId=grant_id)
    with pytest.raises(errors.NotFoundException):
        w.alice.RevokeGrant(KeyId="alias/none", GrantId=g["GrantId"])
    assert grant_ids(w.alice, other) == [g["GrantId"]]
    # Neither a token nor key and id; a token and an id that disagree.
    for bad in ({}, {"KeyId": key}, {"GrantId": g["GrantId"]}):
        with pytest.raises(errors.ValidationException):
            w.alice.RetireGrant(**bad)
    with pytest.raises(errors.ValidationException):
        w.alice.RetireGrant(GrantToken=g["GrantToken"], GrantId="0" * 64)
    with pytest.raises(errors.InvalidGrantTokenException):
        w.alice.RetireGrant(GrantToken=g["GrantToken"], KeyId=key)  # the token is the other key's


def test_retired_and_revoked_grants_stop_working_at_once_for_other_processes(w: World) -> None:
    key = w.key()
    retire = w.grant(key, "bob", "Encrypt", RetiringPrincipal="carol")
    # A second object for bob (another process, a session's worker) and a long-lived store (serve's).
    long_lived = VaultStore(w.path, keep_opened=True, create_format=w.fmt, migrate=False)
    workers = [w.user("bob"), w.user("bob", store=long_lived)]
    for bob in workers:
        encrypt(bob, key)
    w.carol.RetireGrant(GrantToken=retire["GrantToken"])
    for bob in workers:
        denied(encrypt, bob, key)
    revoke = w.grant(key, "bob", "Encrypt")
    for bob in workers:
        encrypt(bob, key)
    w.alice.RevokeGrant(KeyId=key, GrantId=revoke["GrantId"])
    for bob in workers:
        denied(encrypt, bob, key)


# -- grant tokens ------------------------------------------------------------------------------------------
def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def _flipped(token: str, index: int) -> str:
    raw = _raw(token)
    raw[index] ^= 0x01
    return _token(raw)


def test_bad_grant_tokens_are_refused_even_where_the_policy_allows(w: World, tmp_path: Path, clock: Clock) -> None:
    key, other = w.key(), w.key()
    token = w.grant(key, "bob", "Encrypt", "DescribeKey")["GrantToken"]
    other_token = w.grant(other, "bob", "Encrypt")["GrantToken"]
    elsewhere = World(tmp_path / "elsewhere", clock)
    far_key = elsewhere.key()
    far_token = elsewhere.grant(far_key, "bob", "Encrypt")["GrantToken"]
    # Same key id in the token as ours, MACed by the other vault: still not ours.
    forged = _raw(far_token)
    import uuid

    forged[1:17] = uuid.UUID(key).bytes
    bad = {
        "garbage": "not a token",
        "empty": "",
        "base64 of nothing": "AAAA",
        "truncated": token[:-4],
        "one character short": token[:-1],
        "extended": token + "AA",
        "version flipped": _flipped(token, 0),
        "key id flipped": _flipped(token, 5),
        "grant id flipped": _flipped(token, 30),
        "nonce flipped": _flipped(token, 60),
        "mac flipped": _flipped(token, len(_raw(token)) - 1),
        "another vault's": far_token,
        "another vault's, naming this key": _token(forged),
        "another key's": other_token,
    }
    for who in (w.alice, w.bob):
        for name, t in bad.items():
            with pytest.raises(errors.InvalidGrantTokenException) as e:
                encrypt(who, key, tokens=(t,))
            assert e.value.exit_code == 2, name
            who.grant_tokens = (t,)
            try:
                with pytest.raises(errors.InvalidGrantTokenException):
                    who.DescribeKey(KeyId=key)
            finally:
                who.grant_tokens = ()
        # One bad token among good ones spoils the call.
        with pytest.raises(errors.InvalidGrantTokenException):
            encrypt(who, key, tokens=(token, "garbage"))
        # A valid token of this key works, for the grantee and for the owner alike.
        assert decrypt(w.alice, encrypt(who, key, tokens=(token,))) == b"secret"
    # A vault that never issued a token refuses every one (it has no token key yet).
    fresh = World(tmp_path / "fresh", clock)
    fresh_key = fresh.key()
    with pytest.raises(errors.InvalidGrantTokenException):
        encrypt(fresh.alice, fresh_key, tokens=(token,))
    # The refusal is recorded, and names no token.
    rec = [r for r in w.records() if r.get("errorCode") == "InvalidGrantTokenException"]
    assert len(rec) == 2 * (2 * len(bad) + 1)
    assert token not in w.log_text() and other_token not in w.log_text()


def test_a_grant_token_of_the_source_key_is_good_for_a_reencrypt(w2: World) -> None:
    """ReEncrypt uses two keys: a token of either one's grant is a token of this call."""
    src, dst = w2.key(), w2.key()
    from_token = w2.grant(src, "bob", "ReEncryptFrom")["GrantToken"]
    to_token = w2.grant(dst, "bob", "ReEncryptTo")["GrantToken"]
    blob = encrypt(w2.alice, src)
    for tokens in ((from_token,), (to_token,), (from_token, to_token)):
        assert decrypt(w2.alice, reencrypt(w2.bob, blob, dst, tokens=tokens)) == b"secret"
    third = w2.key()
    third_token = w2.grant(third, "bob", "Encrypt")["GrantToken"]
    with pytest.raises(errors.InvalidGrantTokenException):
        reencrypt(w2.bob, blob, dst, tokens=(third_token,))


# -- the audit record ------------------------------------------------------------------------------------------
def test_the_record_of_a_call_a_grant_allowed_names_the_grant(w: World) -> None:
    key = w.key()
    g = w.grant(key, "bob", "Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey", Name="named")
    again = w.grant(key, "bob", "Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey", Name="named")
    before = len(w.records())
    blob = encrypt(w.bob, key)
    decrypt(w.bob, blob)
    datakey(w.bob, key)
    w.bob.DescribeKey(KeyId=key)
    by_grant = new_records(w, before)
    assert [r["eventName"] for r in by_grant] == ["Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey"]
    for r in by_grant:
        assert r["additionalEventData"]["grantId"] == g["GrantId"], r
        assert "errorCode" not in r
    before = len(w.records())
    decrypt(w.alice, encrypt(w.alice, key))
    denied(w.bob.DisableKey, KeyId=key)
    for r in new_records(w, before):
        assert "grantId" not in r.get("additionalEventData", {}), r
    # CreateGrant: the grant's id is in the record, its token never is (nor any token anywhere in the log).
    creates = [r for r in w.records() if r["eventName"] == "CreateGrant"]
    assert [c["responseElements"]["grantId"] for c in creates] == [g["GrantId"]] * 2
    assert creates[0]["requestParameters"] == {
        "keyId": key, "granteePrincipal": w.arn("bob"), "name": "named",
        "operations": ["Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey"]}
    text = w.log_text()
    for token in (g["GrantToken"], again["GrantToken"]):
        assert token not in text
        assert token[:40] not in text  # nor a recognisable piece of one
        assert base64.b64encode(_raw(token)).decode()[:40] not in text


# -- keys that go away -----------------------------------------------------------------------------------------
def test_a_destroyed_keys_grants_go_with_it(w: World, clock: Clock) -> None:
    key, kept = w.key(), w.key()
    gone = w.grant(key, "bob", "Encrypt", RetiringPrincipal="carol")
    stays = w.grant(kept, "bob", "Encrypt", RetiringPrincipal="carol")
    w.alice.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    clock.advance(days=6)
    # Pending deletion: the grants are still there (and listed), though the key cannot be used.
    assert grant_ids(w.alice, key) == [gone["GrantId"]]
    assert len(w.carol.ListRetirableGrants(RetiringPrincipal="carol")["Grants"]) == 2
    clock.advance(days=2)
    w.dave.ListKeys()  # any call: the key is destroyed first
    with w.store().open(w.keys) as ov:
        assert ov.get_grant(gone["GrantId"]) is None
        assert ov.key_grants(key) == [] and ov.grantee_grants(key, w.arn("bob")) == []
        assert [g["GrantId"] for g in ov.retiring_grants(w.arn("carol"))] == [stays["GrantId"]]
        assert ov.get_grant(stays["GrantId"]) is not None
    listed = w.carol.ListRetirableGrants(RetiringPrincipal="carol")["Grants"]
    assert [g["GrantId"] for g in listed] == [stays["GrantId"]]
    with pytest.raises(errors.NotFoundException):
        w.alice.ListGrants(KeyId=key)
    destroyed = [r for r in w.records() if r["eventName"] == "DeleteKey"]
    assert len(destroyed) == 1 and destroyed[0]["eventType"] == "AwsServiceEvent"
    encrypt(w.bob, kept)


# -- listing ------------------------------------------------------------------------------------------------------
def test_list_grants_pages_and_filters(w: World, clock: Clock) -> None:
    key = w.key()
    made = []
    for grantee in ("bob", "carol", "bob"):
        made.append(w.grant(key, grantee, "Encrypt", RetiringPrincipal="dave")["GrantId"])
        clock.advance(seconds=1)
    first = w.alice.ListGrants(KeyId=key)
    assert [g["GrantId"] for g in first["Grants"]] == made and first["Truncated"] is False
    assert "NextMarker" not in first
    entry = first["Grants"][0]
    assert entry == {"KeyId": f"arn:aws:kms:local:{w.account}:key/{key}", "GrantId": made[0],
                     "CreationDate": entry["CreationDate"], "GranteePrincipal": w.arn("bob"),
                     "RetiringPrincipal": w.arn("dave"), "IssuingAccount": f"arn:aws:iam::{w.account}:root",
                     "Operations": ["Encrypt"]}
    assert entry["CreationDate"].isoformat() == "2026-01-01T12:00:00+00:00"
    assert wire_errors("ListGrants", shapes.to_wire("ListGrants", first)) == []
    seen, marker, pages = [], None, 0
    while True:
        page = w.alice.ListGrants(KeyId=key, Limit=1, **({"Marker": marker} if marker else {}))
        pages += 1
        assert len(page["Grants"]) == 1
        assert wire_errors("ListGrants", shapes.to_wire("ListGrants", page)) == []
        seen += [g["GrantId"] for g in page["Grants"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert seen == made and pages == 3
    # A page stays right when a grant before the marker goes.
    page1 = w.alice.ListGrants(KeyId=key, Limit=1)
    w.alice.RevokeGrant(KeyId=key, GrantId=made[0])
    assert grant_ids(w.alice, key, Limit=1, Marker=page1["NextMarker"]) == [made[1]]
    assert grant_ids(w.alice, key, GrantId=made[2]) == [made[2]]
    assert grant_ids(w.alice, key, GrantId="0" * 64) == []
    assert grant_ids(w.alice, key, GranteePrincipal="bob") == [made[2]]
    assert grant_ids(w.alice, key, GranteePrincipal=w.arn("carol")) == [made[1]]
    assert grant_ids(w.alice, key, GranteePrincipal="dave") == []
    assert grant_ids(w.alice, key, GrantId=made[1], GranteePrincipal="bob") == []
    for limit in (0, 101):
        with pytest.raises(errors.ValidationException):
            w.alice.ListGrants(KeyId=key, Limit=limit)
    with pytest.raises(errors.InvalidMarkerException):
        w.alice.ListGrants(KeyId=key, Marker="not-a-marker")
    with pytest.raises(errors.ValidationException):
        w.alice.ListGrants(KeyId=key, GranteePrincipal="arn:aws:iam::000000000000:user/bob")
    assert w.alice.ListGrants(KeyId=w.key())["Grants"] == []


def test_list_retirable_grants_spans_keys_but_not_regions(w: World, clock: Clock) -> None:
    k1, k2 = w.key(), w.key()
    west_alice = w.user("alice", region="us-west-2")
    west_key = w.key(svc=west_alice)
    a = w.grant(k1, "bob", "Encrypt", RetiringPrincipal="carol")["GrantId"]
    clock.advance(seconds=1)
    b = w.grant(k2, "bob", "Decrypt", RetiringPrincipal=w.arn("carol"))["GrantId"]
    clock.advance(seconds=1)
    w.grant(k2, "bob", "Decrypt", RetiringPrincipal="dave")
    c = w.grant(west_key, "bob", "Encrypt", RetiringPrincipal="carol", svc=west_alice)["GrantId"]
    listed = w.dave.ListRetirableGrants(RetiringPrincipal="carol")  # no policy is consulted
    assert [g["GrantId"] for g in listed["Grants"]] == [a, b] and listed["Truncated"] is False
    assert {g["KeyId"] for g in listed["Grants"]} == {f"arn:aws:kms:local:{w.account}:key/{k}" for k in (k1, k2)}
    assert wire_errors("ListRetirableGrants", shapes.to_wire("ListRetirableGrants", listed)) == []
    page = w.carol.ListRetirableGrants(RetiringPrincipal=w.arn("carol"), Limit=1)
    assert [g["GrantId"] for g in page["Grants"]] == [a] and page["Truncated"] is True
    rest = w.carol.ListRetirableGrants(RetiringPrincipal="carol", Limit=1, Marker=page["NextMarker"])
    assert [g["GrantId"] for g in rest["Grants"]] == [b] and rest["Truncated"] is False
    west = w.user("carol", region="us-west-2").ListRetirableGrants(RetiringPrincipal="carol")
    assert [g["GrantId"] for g in west["Grants"]] == [c]
    assert west["Grants"][0]["KeyId"] == f"arn:aws:kms:us-west-2:{w.account}:key/{west_key}"
    assert w.alice.ListRetirableGrants(RetiringPrincipal="bob")["Grants"] == []
    # Another region's grant is not this region's to retire by token either.
    west_token = w.grant(west_key, "carol", "Encrypt", svc=west_alice)["GrantToken"]
    with pytest.raises(errors.InvalidGrantTokenException):
        w.carol.RetireGrant(GrantToken=west_token)
    with pytest.raises(errors.NotFoundException):
        w.alice.RevokeGrant(KeyId=west_key, GrantId=c)
    for bad in ("arn:aws:iam::000000000000:user/carol", f"arn:aws:iam::{w.account}:role/carol", ""):
        with pytest.raises(errors.ValidationException):
            w.alice.ListRetirableGrants(RetiringPrincipal=bad)


# -- limits and principals -----------------------------------------------------------------------------------------
def test_grants_per_key_are_limited(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    assert grants_mod.GRANTS_PER_KEY_MAX == 5000  # AWS's 50,000, reduced locally (docs)
    monkeypatch.setattr(grants_mod, "GRANTS_PER_KEY_MAX", 3)
    key, other = w.key(), w.key()
    made = [w.grant(key, "bob", "Encrypt", Name="n0")["GrantId"]]
    made += [w.grant(key, "bob", "Encrypt")["GrantId"] for _ in range(2)]
    with pytest.raises(errors.LimitExceededException) as e:
        w.grant(key, "carol", "Encrypt")
    assert e.value.exit_code == 2 and "3 grants" in e.value.message
    assert w.grant(key, "bob", "Encrypt", Name="n0")["GrantId"] == made[0]  # the same grant: no new one
    w.grant(other, "bob", "Encrypt")  # per key
    w.alice.RevokeGrant(KeyId=key, GrantId=made[1])
    w.grant(key, "carol", "Encrypt")
    assert len(grant_ids(w.alice, key)) == 3


def test_principals_must_be_users_or_the_account_of_this_vault(w2: World) -> None:
    key = w2.key()
    acct = w2.account
    other = "111122223333" if acct != "111122223333" else "444455556666"
    bad = [f"arn:aws:iam::{other}:user/bob", f"arn:aws:iam::{other}:root", f"arn:aws:iam::{acct}:role/bob",
           f"arn:aws:sts::{acct}:assumed-role/r/s", f"arn:aws:iam::{acct}:user/path/bob",
           f"arn:aws-cn:iam::{acct}:user/bob", "arn:aws:iam::12:user/bob", "user/bob", "*", "", "b" * 65,
           "bob smith", f"arn:aws:iam::{acct}:user/", "kms.amazonaws.com", "logs.us-east-1.amazonaws.com",
           "s3.cn-north-1.amazonaws.com.cn"]
    for principal in bad:
        with pytest.raises(errors.ValidationException) as e:
            w2.grant(key, principal, "Encrypt")
        assert e.value.exit_code == 2, principal
        with pytest.raises(errors.ValidationException):
            w2.grant(key, "bob", "Encrypt", RetiringPrincipal=principal)
    with pytest.raises(errors.ValidationException):
        w2.alice.CreateGrant(KeyId=key, Operations=["Encrypt"])  # no grantee
    assert w2.alice.ListGrants(KeyId=key)["Grants"] == []
    g = w2.grant(key, "bob", "Encrypt", RetiringPrincipal=f"arn:aws:iam::{acct}:user/carol")
    (entry,) = w2.alice.ListGrants(KeyId=key)["Grants"]
    assert entry["GranteePrincipal"] == f"arn:aws:iam::{acct}:user/bob"
    assert entry["RetiringPrincipal"] == f"arn:aws:iam::{acct}:user/carol"
    assert entry["GrantId"] == g["GrantId"]


# -- key states -------------------------------------------------------------------------------------------------------
def test_key_states(w: World) -> None:
    key = w.key()
    g = w.grant(key, "bob", "Encrypt", "DescribeKey", RetiringPrincipal="carol")
    g2 = w.grant(key, "bob", "Decrypt")
    g3 = w.grant(key, "bob", "GenerateDataKey")
    w.alice.DisableKey(KeyId=key)
    with pytest.raises(errors.DisabledException) as e:
        w.grant(key, "bob", "Encrypt")
    assert e.value.exit_code == 4
    with pytest.raises(errors.DisabledException):
        encrypt(w.bob, key)  # allowed by the grant, refused by the key's state
    assert w.bob.DescribeKey(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    assert len(grant_ids(w.alice, key)) == 3
    w.carol.RetireGrant(GrantToken=g["GrantToken"])
    w.alice.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    with pytest.raises(errors.KMSInvalidStateException) as e2:
        w.grant(key, "bob", "Encrypt")
    assert e2.value.exit_code == 4
    assert sorted(grant_ids(w.alice, key)) == sorted([g2["GrantId"], g3["GrantId"]])
    w.alice.RevokeGrant(KeyId=key, GrantId=g2["GrantId"])
    w.alice.RetireGrant(KeyId=key, GrantId=g3["GrantId"])
    assert w.alice.ListGrants(KeyId=key)["Grants"] == []
    w.alice.CancelKeyDeletion(KeyId=key)
    w.alice.EnableKey(KeyId=key)
    w.grant(key, "bob", "Encrypt")
    encrypt(w.bob, key)


# -- vault formats --------------------------------------------------------------------------------
def test_a_format_1_vault_with_grants_migrates_with_them_intact(tmp_path: Path, clock: Clock) -> None:
    w = World(tmp_path, clock, F.FORMAT_VERSION)
    key, other = w.key(), w.key()
    g1 = w.grant(key, "bob", "Encrypt", "Decrypt", RetiringPrincipal="carol", Name="n",
                 Constraints={"EncryptionContextSubset": {"app": "x"}})
    clock.advance(seconds=1)
    g2 = w.grant(other, "bob", "Encrypt", "RetireGrant")
    clock.advance(seconds=1)
    g3 = w.grant(key, "dave", "DescribeKey", RetiringPrincipal="carol")
    before = {k: w.alice.ListGrants(KeyId=k)["Grants"] for k in (key, other)}
    retirable = w.alice.ListRetirableGrants(RetiringPrincipal="carol")["Grants"]
    assert [g["GrantId"] for g in retirable] == [g1["GrantId"], g3["GrantId"]]
    blob = encrypt(w.alice, key, {"app": "x"})
    # Opened as any kmscli opens it: the vault becomes format 2.
    w.fmt = F.RECORDS_FORMAT_VERSION
    alice = w.user("alice")
    assert {k: alice.ListGrants(KeyId=k)["Grants"] for k in (key, other)} == before
    assert w.path.read_bytes()[:16] == SQLITE
    assert w.path.with_name("vault.kms.v1").exists()
    assert alice.ListRetirableGrants(RetiringPrincipal="carol")["Grants"] == retirable
    bob, carol, dave = w.user("bob"), w.user("carol"), w.user("dave")
    with w.store().open(w.keys) as ov:  # the indexes were built
        assert [g["GrantId"] for g in ov.grantee_grants(key, w.arn("bob"))] == [g1["GrantId"]]
        assert [g["GrantId"] for g in ov.retiring_grants(w.arn("carol"))] == [g1["GrantId"], g3["GrantId"]]
        assert "grant_token_key" in ov.meta
    # Usable: the grants allow, their constraints hold, tokens issued before the migration are still good.
    assert decrypt(bob, blob, {"app": "x"}, tokens=(g1["GrantToken"],)) == b"secret"
    denied(encrypt, bob, key, {"app": "y"})
    assert dave.DescribeKey(KeyId=key)["KeyMetadata"]["KeyId"] == key
    # The same name and arguments still find the migrated grant.
    again = alice.CreateGrant(KeyId=key, GranteePrincipal="bob", Operations=["Encrypt", "Decrypt"],
                              RetiringPrincipal="carol", Name="n",
                              Constraints={"EncryptionContextSubset": {"app": "x"}})
    assert again["GrantId"] == g1["GrantId"]
    carol.RetireGrant(GrantToken=g1["GrantToken"])
    bob.RetireGrant(KeyId=other, GrantId=g2["GrantId"])
    denied(encrypt, bob, key, {"app": "x"})
    denied(encrypt, bob, other)
    assert [g["GrantId"] for g in alice.ListGrants(KeyId=key)["Grants"]] == [g3["GrantId"]]
    alice.VerifyAuditLog(Strict=True)


def test_delegation_uses_whichever_of_the_grantees_grants_covers_the_new_one(w2: World) -> None:
    key = w2.key()
    w2.grant(key, "bob", "CreateGrant", "Decrypt")
    w2.clock.advance(seconds=1)
    wide = w2.grant(key, "bob", "CreateGrant", "Encrypt", "Decrypt")
    before = len(w2.records())
    w2.grant(key, "carol", "Encrypt", svc=w2.bob)  # the first grant cannot give Encrypt; the second can
    assert w2.records()[before]["additionalEventData"]["grantId"] == wide["GrantId"]
    encrypt(w2.carol, key)
    denied(w2.grant, key, "carol", "DescribeKey", svc=w2.bob)  # neither can


def test_grants_and_their_tokens_survive_a_passphrase_change(w: World) -> None:
    key = w.key()
    g = w.grant(key, "bob", "Encrypt", "RetireGrant", RetiringPrincipal="carol")
    w.alice.ChangePassphrase(b"new", CHEAP)
    w.keys = PassphraseKeySource(lambda: b"new")
    alice, bob = w.user("alice"), w.user("bob")
    assert grant_ids(alice, key) == [g["GrantId"]]
    assert decrypt(alice, encrypt(bob, key, tokens=(g["GrantToken"],))) == b"secret"
    bob.RetireGrant(GrantToken=g["GrantToken"])
    denied(encrypt, bob, key)
