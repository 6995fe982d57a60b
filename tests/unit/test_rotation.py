"""Key material versions and rotation, in-process with an injected clock."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from kmscli import errors
from kmscli.service import Kms
from tests.unit.conftest import Clock, audit_events


def encrypt(svc: Kms, key: str, data: bytes) -> bytes:
    out = io.BytesIO()
    svc.Encrypt(KeyId=key, reader=io.BytesIO(data), writer=out)
    return out.getvalue()


def decrypt(svc: Kms, blob: bytes) -> bytes:
    out = io.BytesIO()
    svc.Decrypt(reader=io.BytesIO(blob), writer=out)
    return out.getvalue()


def materials(svc: Kms, key: str) -> list[dict]:
    """Every material version, the original included (as ``keys rotations`` asks)."""
    return svc.ListKeyRotations(KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]


def test_ciphertexts_carry_their_version(svc: Kms) -> None:
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    blobs = []
    for _ in range(3):
        blobs.append(encrypt(svc, key, b"v%d" % len(blobs)))
        svc.RotateKeyOnDemand(KeyId=key)
    assert [decrypt(svc, b) for b in blobs] == [b"v0", b"v1", b"v2"]
    rot = materials(svc, key)
    assert [r["KeyMaterialState"] for r in rot] == ["NON_CURRENT"] * 3 + ["CURRENT"]
    assert "RotationType" not in rot[0] and {r["RotationType"] for r in rot[1:]} == {"ON_DEMAND"}
    assert len({r["KeyMaterialId"] for r in rot}) == 4
    # AWS's default (ROTATIONS_ONLY) leaves the original material out.
    assert svc.ListKeyRotations(KeyId=key)["Rotations"] == rot[1:]
    assert svc.ListKeyRotations(KeyId=key, IncludeKeyMaterial="ROTATIONS_ONLY")["Rotations"] == rot[1:]
    with pytest.raises(errors.ValidationException):
        svc.ListKeyRotations(KeyId=key, IncludeKeyMaterial="EVERYTHING")


def test_automatic_rotation_once_however_overdue(svc: Kms, clock: Clock) -> None:
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=90)
    status = svc.GetKeyRotationStatus(KeyId=key)
    assert status["KeyRotationEnabled"] and status["RotationPeriodInDays"] == 90
    clock.advance(days=89)
    assert len(materials(svc, key)) == 1
    clock.advance(days=400)  # several periods overdue
    assert [r.get("RotationType") for r in materials(svc, key)] == [None, "AUTOMATIC"]
    assert len(materials(svc, key)) == 2
    nxt = svc.GetKeyRotationStatus(KeyId=key)["NextRotationDate"]
    assert isinstance(nxt, datetime) and nxt.utcoffset() == timedelta(0)
    assert nxt == clock.now + timedelta(days=90)  # a full period after the rotation, not the old due date
    rotated = [e for e in audit_events(svc) if e["eventName"] == "RotateKey"]
    assert len(rotated) == 1 and rotated[0]["eventType"] == "AwsServiceEvent"


def test_disabled_key_rotates_when_enabled_again(svc: Kms, clock: Clock) -> None:
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=90)
    svc.DisableKey(KeyId=key)
    clock.advance(days=100)
    assert len(materials(svc, key)) == 1  # disabled: no rotation
    svc.EnableKey(KeyId=key)
    rot = materials(svc, key)
    assert len(rot) == 2 and rot[1]["RotationType"] == "AUTOMATIC"


def test_pending_deletion_key_does_not_rotate(svc: Kms, clock: Clock) -> None:
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=90)
    clock.advance(days=80)
    svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=30)
    clock.advance(days=15)  # rotation is now overdue, the key still pending deletion
    assert len(materials(svc, key)) == 1
    svc.CancelKeyDeletion(KeyId=key)  # back to Disabled: still no rotation
    assert len(materials(svc, key)) == 1
    svc.EnableKey(KeyId=key)
    assert len(materials(svc, key)) == 2


def test_on_demand_limit(svc: Kms) -> None:
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    for _ in range(25):
        svc.RotateKeyOnDemand(KeyId=key)
    with pytest.raises(errors.LimitExceededException):
        svc.RotateKeyOnDemand(KeyId=key)
    assert len(materials(svc, key)) == 26


@pytest.mark.parametrize("days", [89, 2561, 0])
def test_rotation_period_bounds(svc: Kms, days: int) -> None:
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    with pytest.raises(errors.ValidationException, match="90 and 2560"):
        svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=days)
    refused = audit_events(svc)[-1]
    assert refused["eventName"] == "EnableKeyRotation" and refused["errorCode"] == "ValidationException"
    # Refused before anything happened, and still keyed: only failed unlocks are unkeyed.
    assert refused["keyed"] is True


def test_min_decrypt_version(svc: Kms) -> None:
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    old = encrypt(svc, key, b"old")
    svc.RotateKeyOnDemand(KeyId=key)
    new = encrypt(svc, key, b"new")
    svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=2)
    with pytest.raises(errors.KmsError) as refused:
        decrypt(svc, old)
    assert refused.value.exit_code == 4 and "reencrypt" in refused.value.message
    assert decrypt(svc, new) == b"new"
    # reencrypt cannot rescue it either: reading it is what is refused
    with pytest.raises(errors.KmsError):
        svc.ReEncrypt(reader=io.BytesIO(old), writer=io.BytesIO(), DestinationKeyId=key)
    with pytest.raises(errors.ValidationException):
        svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=3)
    svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=1)
    assert decrypt(svc, old) == b"old"
    moved = io.BytesIO()
    svc.ReEncrypt(reader=io.BytesIO(old), writer=moved, DestinationKeyId=key)
    svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=2)
    assert decrypt(svc, moved.getvalue()) == b"old"


ROTATION_MEMBERS = {"KeyRotationEnabled", "RotationPeriodInDays", "NextRotationDate", "MinDecryptVersion"}


def test_describe_shows_rotation(svc: Kms, clock: Clock) -> None:
    """Rotation is GetKeyRotationStatus's (as AWS), never KeyMetadata's; the detail view shows it too."""
    key = svc.CreateKey()["KeyMetadata"]["KeyId"]
    arn = svc.DescribeKey(KeyId=key)["KeyMetadata"]["Arn"]
    assert not ROTATION_MEMBERS & set(svc.DescribeKey(KeyId=key)["KeyMetadata"])
    assert svc.GetKeyRotationStatus(KeyId=key) == {"KeyId": arn, "KeyRotationEnabled": False}
    assert svc.DescribeKeyDetails(KeyId=key)["Rotation"]["Enabled"] is False
    svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=180)
    assert not ROTATION_MEMBERS & set(svc.DescribeKey(KeyId=key)["KeyMetadata"])
    due = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
    assert svc.GetKeyRotationStatus(KeyId=key) == {
        "KeyId": arn, "KeyRotationEnabled": True, "RotationPeriodInDays": 180, "NextRotationDate": due,
    }
    details = svc.DescribeKeyDetails(KeyId=key)["Rotation"]
    assert (details["Enabled"], details["PeriodInDays"], details["NextRotationDate"]) == (True, 180, due)
    svc.DisableKeyRotation(KeyId=key)
    assert svc.GetKeyRotationStatus(KeyId=key) == {"KeyId": arn, "KeyRotationEnabled": False}
    details = svc.DescribeKeyDetails(KeyId=key)["Rotation"]
    assert details["Enabled"] is False and details["NextRotationDate"] is None
