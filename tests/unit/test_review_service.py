"""Holes an outside review found in the service layer, each pinned by a test that failed before its fix."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kmscli import audit, errors
from kmscli.service import Caller, Kms
from kmscli.vault import format as F
from kmscli.vault.store import FixedKeySource, PassphraseKeySource, VaultStore
from tests.unit.conftest import audit_events

ROOT_ALL = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}


def policy(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [ROOT_ALL, *statements]})


def encrypt(svc: Kms, key: str, data: bytes, context: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    svc.Encrypt(KeyId=key, reader=io.BytesIO(data), writer=out, EncryptionContext=context)
    return out.getvalue()


def test_reencrypt_does_not_apply_the_destination_alias_to_the_source_key(svc: Kms) -> None:
    """kms:RequestAlias belongs to the key it named: the source, named by id here, has none."""
    deny_aliased = {"Effect": "Deny", "Principal": "*", "Action": "kms:ReEncryptFrom", "Resource": "*",
                    "Condition": {"Null": {"kms:RequestAlias": "false"}}}
    src = svc.CreateKey(Policy=policy(deny_aliased))["KeyMetadata"]["KeyId"]
    svc.CreateKey(AliasName="alias/dst")
    blob = encrypt(svc, src, b"secret")
    out = io.BytesIO()
    svc.ReEncrypt(reader=io.BytesIO(blob), writer=out, DestinationKeyId="alias/dst")
    assert out.getvalue()[:4] == blob[:4]  # a kmscli ciphertext, now under the destination key
    # Naming the source by an alias does set it for the source's own check.
    svc.CreateAlias(AliasName="alias/src", TargetKeyId=src)
    with pytest.raises(errors.AccessDeniedException, match="kms:ReEncryptFrom"):
        svc.ReEncrypt(reader=io.BytesIO(blob), writer=io.BytesIO(), DestinationKeyId="alias/dst",
                      SourceKeyId="alias/src")


def test_reencrypt_applies_the_destination_alias_to_the_destination(svc: Kms) -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:ReEncryptTo", "Resource": "*",
            "Condition": {"StringEquals": {"kms:RequestAlias": "alias/dst"}}}
    src = svc.CreateKey()["KeyMetadata"]["KeyId"]
    svc.CreateKey(AliasName="alias/dst", Policy=policy(deny))
    blob = encrypt(svc, src, b"secret")
    with pytest.raises(errors.AccessDeniedException, match="kms:ReEncryptTo"):
        svc.ReEncrypt(reader=io.BytesIO(blob), writer=io.BytesIO(), DestinationKeyId="alias/dst")


def test_create_key_with_alias_obeys_the_new_keys_create_alias_deny(svc: Kms) -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:CreateAlias", "Resource": "*"}
    with pytest.raises(errors.AccessDeniedException, match="kms:CreateAlias"):
        svc.CreateKey(Policy=policy(deny), AliasName="alias/forbidden")
    assert svc.ListKeys()["Keys"] == []
    assert svc.ListAliases()["Aliases"] == []
    refused = [e for e in audit_events(svc) if e["eventName"] == "CreateKey"][-1]
    assert refused["errorCode"] == "AccessDeniedException" and refused["keyed"] is True


def test_validation_refusals_are_keyed(svc: Kms) -> None:
    """Only a failed unlock may be written without the key: a refused request is keyed too."""
    with pytest.raises(errors.ValidationException):
        svc.ScheduleKeyDeletion(KeyId="alias/x", PendingWindowInDays=3)
    last = audit_events(svc)[-1]
    assert (last["eventName"], last["errorCode"], last["keyed"]) == (
        "ScheduleKeyDeletion", "ValidationException", True)
    svc.VerifyAuditLog(Strict=True)


def test_a_validation_refusal_without_the_passphrase_records_the_failed_unlock(svc: Kms, tmp_path: Path) -> None:
    wrong = Kms(svc.store.path, PassphraseKeySource(lambda: b"wrong"), caller=svc.caller, clock=svc.clock)
    with pytest.raises(errors.ValidationException):
        wrong.ScheduleKeyDeletion(KeyId="alias/x", PendingWindowInDays=3)
    last = audit_events(svc)[-1]
    assert (last["errorCode"], last["keyed"]) == ("IncorrectPassphraseException", False)
    report = svc.VerifyAuditLog()
    assert report["Unkeyed"] == 1 and len(report["Unauthenticated"]) == 1
    with pytest.raises(errors.AuditVerificationException, match="--strict"):
        svc.VerifyAuditLog(Strict=True)


def test_passwd_and_unlock_and_restart_refuse_a_session(svc: Kms) -> None:
    ov = svc.store.open(svc.keys)
    session = Kms(svc.store.path, FixedKeySource(ov.vault_key), caller=svc.caller, clock=svc.clock)
    before = svc.store.path.read_bytes()
    for call in (lambda: session.ChangePassphrase(b"new"), session.RestartAuditLog,
                 lambda: session.Unlock(60, None, lambda k, h: "sid")):
        with pytest.raises(errors.InvalidSessionException, match="never runs through a session"):
            call()
    assert svc.store.path.read_bytes() == before
    refused = [(e["eventName"], e["errorCode"], e["keyed"]) for e in audit_events(svc)[-3:]]
    assert refused == [("ChangePassphrase", "InvalidSessionException", True),
                       ("RestartAuditLog", "InvalidSessionException", True),
                       ("Unlock", "InvalidSessionException", True)]


def test_passwd_rotates_the_vault_key_and_the_chain_key(svc: Kms, tmp_path: Path) -> None:
    from kmscli.vault.records import RecordStore

    old_copy = tmp_path / "old" / "vault.kms"
    old_copy.parent.mkdir(mode=0o700)
    old_copy.write_bytes(svc.store.path.read_bytes())  # no write is in flight: the file is the whole vault
    old_copy.chmod(0o600)
    with svc.store.open(svc.keys) as old_ov:
        old_key, vault_id = old_ov.vault_key, old_ov.vault_id
    svc.ChangePassphrase(b"new passphrase", F.KdfParams(16 * 1024, 2, 1))
    new = Kms(svc.store.path, PassphraseKeySource(lambda: b"new passphrase"), caller=svc.caller, clock=svc.clock)
    later = new.CreateKey(Description="made after passwd")["KeyMetadata"]["KeyId"]
    assert VaultStore(svc.store.path).read_header().kdf == F.KdfParams(16 * 1024, 2, 1)
    # The old vault key (from the old copy and the old passphrase) opens nothing written now.
    with RecordStore.open(svc.store.path) as now, pytest.raises(errors.VaultCorruptException):
        now.reader(old_key)
    with RecordStore.open(old_copy) as old, old.reader(old_key) as view:
        assert later not in json.dumps(view.scan("key", limit=1000))
    # The chain continues under the new vault's chain key from passwd's own record on.
    records = audit_events(svc)
    rotated = next(i for i, r in enumerate(records) if r["eventName"] == "ChangePassphrase")
    log = audit.AuditLog(svc.audit_path, vault_id=vault_id)
    with pytest.raises(errors.AuditVerificationException, match=f"^line {rotated + 1}: "):
        log.verify(audit.chain_key(old_key))
    new.VerifyAuditLog(Strict=True)
    with pytest.raises(errors.IncorrectPassphraseException):
        svc.DescribeKey(KeyId=later)  # the old passphrase no longer opens it


def test_a_call_that_opened_the_vault_before_passwd_cannot_record_under_the_old_key(svc: Kms) -> None:
    """A reader racing passwd would have chained a record under the retired key: refused, nothing appended."""
    stale = svc.store.open(svc.keys)
    svc.ChangePassphrase(b"new passphrase")
    before = svc.audit_path.read_bytes()
    from kmscli.service._core import Call

    with pytest.raises(errors.AuditLogException, match="another key"):
        svc._record(stale, Call("Encrypt", {"keyId": "x"}))
    assert svc.audit_path.read_bytes() == before


def test_passwd_kdf_settings_are_bounded(svc: Kms) -> None:
    before = svc.store.path.read_bytes()
    with pytest.raises(errors.ValidationException, match="MiB-passes"):
        svc.ChangePassphrase(b"x", F.KdfParams(1024 * 1024, 3, 1))
    assert svc.store.path.read_bytes() == before


def test_the_new_passphrase_is_asked_only_after_the_current_one_opened_the_vault(svc: Kms) -> None:
    asked: list[str] = []
    wrong = Kms(svc.store.path, PassphraseKeySource(lambda: asked.append("current") or b"wrong"),
                caller=svc.caller, clock=svc.clock)
    with pytest.raises(errors.IncorrectPassphraseException):
        wrong.ChangePassphrase(lambda: asked.append("new") or b"new")
    assert asked == ["current"]


def test_the_log_location_is_fixed_at_init(tmp_path: Path, svc: Kms) -> None:
    other = tmp_path / "elsewhere.jsonl"
    moved = Kms(svc.store.path, svc.keys, caller=svc.caller, clock=svc.clock, audit_path=other)
    with pytest.raises(errors.ValidationException, match="fixed when the vault was created"):
        moved.ListKeys()
    assert not other.exists()
    last = audit_events(svc)[-1]  # the attempt is recorded in the vault's own log
    assert last["eventName"] == "ListKeys" and last["errorCode"] == "ValidationException"


def test_a_custom_log_location_chosen_at_init_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "kms.jsonl"
    keys = PassphraseKeySource(lambda: b"pw")
    caller = Caller(user="alice", uid=1000, pid=1, host="test")
    Kms(tmp_path / "v" / "vault.kms", keys, caller=caller, audit_path=log).CreateVault(
        F.KdfParams(8 * 1024, 1, 1))
    plain = Kms(tmp_path / "v" / "vault.kms", keys, caller=caller)  # no option: the stored location
    plain.CreateKey()
    assert [json.loads(x)["eventName"] for x in log.read_text().splitlines()] == ["CreateVault", "CreateKey"]
    assert not (tmp_path / "v" / "audit.jsonl").exists()


def test_store_resolves_the_real_path_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    store = VaultStore(tmp_path / "link" / "vault.kms")
    assert store.path == real / "vault.kms"
    assert store.lock_path == real / "vault.kms.lock"


def test_a_deny_naming_a_principal_of_another_partition_is_refused(svc: Kms) -> None:
    """The review: such a Deny never matches, so it was accepted and protected nothing."""
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    before = svc.GetKeyPolicy(KeyId=key)["Policy"]
    deny = {"Effect": "Deny", "Principal": {"AWS": "arn:aws-cn:iam::111122223333:user/alice"},
            "Action": "kms:Decrypt", "Resource": "*"}
    with pytest.raises(errors.MalformedPolicyDocumentException, match="arn:aws-cn"):
        svc.PutKeyPolicy(KeyId=key, Policy=policy(deny))
    with pytest.raises(errors.MalformedPolicyDocumentException, match="arn:aws-cn"):
        svc.CreateKey(Policy=policy(deny))
    assert svc.GetKeyPolicy(KeyId=key)["Policy"] == before
