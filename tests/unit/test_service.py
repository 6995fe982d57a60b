"""The service layer in-process, with an injectable clock: time-based events and rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmscli import errors
from kmscli.service import Caller, Kms
from kmscli.vault.store import PassphraseKeySource
from tests.unit.conftest import Clock, audit_events
from tests.vault_contents import contents


def test_key_destroyed_at_end_of_window(svc: Kms, clock: Clock) -> None:
    key_id = svc.CreateKey(AliasName="alias/doomed")["KeyMetadata"]["KeyId"]
    keep = svc.CreateKey(AliasName="alias/keep")["KeyMetadata"]["KeyId"]
    svc.ScheduleKeyDeletion(KeyId=key_id, PendingWindowInDays=7)
    clock.advance(days=7, seconds=-1)
    assert svc.DescribeKey(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    clock.advance(seconds=1)
    # The first command that opens the vault afterwards destroys it: even a read.
    ids_now = [k["KeyId"] for k in svc.ListKeys()["Keys"]]
    assert ids_now == [keep]
    with pytest.raises(errors.NotFoundException):
        svc.DescribeKey(KeyId=key_id)
    assert [a["AliasName"] for a in svc.ListAliases()["Aliases"]] == ["alias/keep"]
    vault, _ = contents(svc.store.path, keys=svc.keys)
    # Material, policy and aliases all gone (the audit lines the vault carries still name it).
    assert key_id not in json.dumps({k: v for k, v in vault.items() if k != "audit_head"})
    deleted = [e for e in audit_events(svc) if e["eventName"] == "DeleteKey"]
    assert len(deleted) == 1
    assert deleted[0]["eventType"] == "AwsServiceEvent"
    assert deleted[0]["responseElements"]["aliasesDeleted"] == ["alias/doomed"]
    svc.VerifyAuditLog()


def test_cancelled_key_survives_its_window(svc: Kms, clock: Clock) -> None:
    key_id = svc.CreateKey()["KeyMetadata"]["KeyId"]
    svc.ScheduleKeyDeletion(KeyId=key_id, PendingWindowInDays=7)
    svc.CancelKeyDeletion(KeyId=key_id)
    clock.advance(days=60)
    assert svc.DescribeKey(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"


def test_deletion_date_is_window_from_now(svc: Kms, clock: Clock) -> None:
    key_id = svc.CreateKey()["KeyMetadata"]["KeyId"]
    resp = svc.ScheduleKeyDeletion(KeyId=key_id, PendingWindowInDays=10)
    assert resp["DeletionDate"] == datetime(2026, 1, 11, 12, 0, tzinfo=UTC)
    assert resp["DeletionDate"].utcoffset() == timedelta(0)
    assert resp["KeyId"].endswith(key_id)


def test_every_call_is_audited_with_its_outcome(svc: Kms) -> None:
    key_id = svc.CreateKey(Description="x")["KeyMetadata"]["KeyId"]
    with pytest.raises(errors.NotFoundException):
        svc.DescribeKey(KeyId="alias/nope")
    with pytest.raises(errors.ValidationException):
        svc.ScheduleKeyDeletion(KeyId=key_id, PendingWindowInDays=3)
    svc.DisableKey(KeyId=key_id)
    events = audit_events(svc)
    names = [(e["eventName"], e.get("errorCode")) for e in events]
    assert ("CreateKey", None) in names
    assert ("DescribeKey", "NotFoundException") in names
    assert ("DisableKey", None) in names
    create = next(e for e in events if e["eventName"] == "CreateKey")
    assert create["userIdentity"]["userName"] == "alice"
    assert create["userIdentity"]["arn"].endswith(":user/alice")
    assert create["responseElements"]["keyId"] == key_id


def test_failed_unlock_is_recorded_without_key(svc: Kms, tmp_path: Path) -> None:
    wrong = Kms(svc.store.path, PassphraseKeySource(lambda: b"wrong"),
                caller=Caller(user="mallory", uid=1001, pid=2, host="test"))
    with pytest.raises(errors.IncorrectPassphraseException):
        wrong.ListKeys()
    last = audit_events(svc)[-1]
    assert last["eventName"] == "ListKeys"
    assert last["errorCode"] == "IncorrectPassphraseException"
    assert last["userIdentity"]["userName"] == "mallory"


def test_one_kdf_run_per_process(svc: Kms, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers derive the key once and reuse it under the lock (header unchanged)."""
    from kmscli.crypto import primitives as P

    calls = []
    real = P.argon2id
    monkeypatch.setattr(P, "argon2id", lambda *a: calls.append(1) or real(*a))
    fresh = Kms(svc.store.path, PassphraseKeySource(lambda: b"pw"))
    for _ in range(3):
        fresh.CreateKey()
    fresh.ListKeys()
    assert len(calls) == 1


def test_change_passphrase_keeps_keys(svc: Kms) -> None:
    key_id = svc.CreateKey()["KeyMetadata"]["KeyId"]
    svc.ChangePassphrase(b"new")
    with pytest.raises(errors.IncorrectPassphraseException):
        Kms(svc.store.path, PassphraseKeySource(lambda: b"pw")).ListKeys()
    again = Kms(svc.store.path, PassphraseKeySource(lambda: b"new"))
    assert again.DescribeKey(KeyId=key_id)["KeyMetadata"]["KeyId"] == key_id


def test_alias_quota(svc: Kms) -> None:
    key_id = svc.CreateKey()["KeyMetadata"]["KeyId"]
    for i in range(50):
        svc.CreateAlias(AliasName=f"alias/a{i}", TargetKeyId=key_id)
    with pytest.raises(errors.LimitExceededException):
        svc.CreateAlias(AliasName="alias/one-too-many", TargetKeyId=key_id)


def test_tag_quota(svc: Kms) -> None:
    key_id = svc.CreateKey(Tags=[{"TagKey": f"k{i}", "TagValue": ""} for i in range(50)])["KeyMetadata"]["KeyId"]
    with pytest.raises(errors.TagException):
        svc.TagResource(KeyId=key_id, Tags=[{"TagKey": "k50", "TagValue": ""}])
    svc.TagResource(KeyId=key_id, Tags=[{"TagKey": "k0", "TagValue": "overwrite is fine"}])


def test_generate_random_bounds() -> None:
    assert len(Kms.GenerateRandom(NumberOfBytes=1)) == 1
    assert len(Kms.GenerateRandom(NumberOfBytes=1024)) == 1024
    for n in (0, 1025, -1):
        with pytest.raises(errors.ValidationException):
            Kms.GenerateRandom(NumberOfBytes=n)
