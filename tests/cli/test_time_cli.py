"""Time-based events through the real binary under faketime (Debian package faketime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, ok

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")


def later(offset: str) -> tuple[str, ...]:
    return ("faketime", "-f", offset)


def test_deleted_key_destroyed_after_window(kms: Runner, vault: Path) -> None:
    doomed = ok(kms("keys", "create", "--alias", "alias/doomed")).stdout.decode().strip()
    kept = ok(kms("keys", "create")).stdout.decode().strip()
    ciphertext = ok(kms("encrypt", "--key", doomed, input=b"secret")).stdout
    ok(kms("keys", "schedule-delete", doomed, "--days", "7"))

    # Six days on, the key still exists (pending deletion).
    six = json.loads(ok(kms("keys", "list", "--all", "--json", prefix=later("+6d"))).stdout)["Keys"]
    assert {k["KeyId"] for k in six} == {doomed, kept}

    # Eight days on, the first command that opens the vault destroys it.
    eight = json.loads(ok(kms("keys", "list", "--all", "--json", prefix=later("+8d"))).stdout)["Keys"]
    assert [k["KeyId"] for k in eight] == [kept]
    fails(kms("keys", "describe", doomed, prefix=later("+8d")), 3, "NotFoundException")
    fails(kms("keys", "describe", "alias/doomed", prefix=later("+8d")), 3)
    fails(kms("decrypt", input=ciphertext, prefix=later("+8d")), 6, "InvalidCiphertextException")

    records = [json.loads(line) for line in ok(kms("audit", "show", "--operation", "DeleteKey")).stdout.splitlines()]
    assert len(records) == 1
    assert records[0]["responseElements"]["keyId"] == doomed
    assert records[0]["eventType"] == "AwsServiceEvent"
    ok(kms("audit", "verify", prefix=later("+8d")))


def test_rotation_falls_due(kms: Runner, vault: Path) -> None:
    key = ok(kms("keys", "create")).stdout.decode().strip()
    old = ok(kms("encrypt", "--key", key, input=b"before rotation")).stdout
    ok(kms("keys", "rotation", key, "--enable", "--days", "90"))
    ninety = json.loads(ok(kms("keys", "rotations", key, "--json", prefix=later("+89d"))).stdout)["Rotations"]
    assert len(ninety) == 1
    after = json.loads(ok(kms("keys", "rotations", key, "--json", prefix=later("+91d"))).stdout)["Rotations"]
    assert [r["KeyMaterialState"] for r in after] == ["NON_CURRENT", "CURRENT"]
    assert after[1]["RotationType"] == "AUTOMATIC"
    assert ok(kms("decrypt", input=old, prefix=later("+91d"))).stdout == b"before rotation"
    rotated = [json.loads(line) for line in ok(kms("audit", "show", "--operation", "RotateKey")).stdout.splitlines()]
    assert len(rotated) == 1
