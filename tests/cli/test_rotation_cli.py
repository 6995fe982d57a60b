"""keys rotate / rotation / rotations through the real entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, ok

#: A --json timestamp, as the AWS CLI v2 prints it (kmscli keeps times to the second).
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
ROTATION_MEMBERS = {"KeyRotationEnabled", "RotationPeriodInDays", "NextRotationDate", "MinDecryptVersion"}


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return ok(kms("keys", "create", "--alias", "alias/app")).stdout.decode().strip()


def rotations(kms: Runner, key: str) -> list[dict]:
    doc = json.loads(ok(kms("keys", "rotations", key, "--json")).stdout)
    assert set(doc) == {"Rotations", "Truncated"} and doc["Truncated"] is False
    return doc["Rotations"]


def status(kms: Runner, key: str) -> dict:
    """GetKeyRotationStatus, as ``keys rotation KEY --json`` prints it."""
    return json.loads(ok(kms("keys", "rotation", key, "--json")).stdout)


def metadata(kms: Runner, key: str) -> dict:
    return json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]


def test_rotations_json_contract(kms: Runner, key: str) -> None:
    (original,) = rotations(kms, key)
    assert set(original) == {"KeyId", "KeyMaterialId", "KeyMaterialState"}
    assert original["KeyId"] == key and original["KeyMaterialState"] == "CURRENT"
    r = ok(kms("keys", "rotate", "alias/app"))
    assert r.stdout == b""
    first, second = rotations(kms, key)
    assert first == {**original, "KeyMaterialState": "NON_CURRENT"}
    assert set(second) == {"KeyId", "KeyMaterialId", "KeyMaterialState", "RotationDate", "RotationType"}
    assert second["RotationType"] == "ON_DEMAND" and second["KeyMaterialState"] == "CURRENT"
    assert ISO.match(second["RotationDate"])
    meta = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]
    assert meta["CurrentKeyMaterialId"] == second["KeyMaterialId"]


def test_rotation_schedule(kms: Runner, key: str) -> None:
    arn = metadata(kms, key)["Arn"]
    assert status(kms, key) == {"KeyId": arn, "KeyRotationEnabled": False}
    assert ok(kms("keys", "rotation", key)).stdout == b"KeyRotationEnabled\tfalse\n"
    r = ok(kms("keys", "rotation", key, "--enable"))
    assert r.stdout == b""
    # Rotation is GetKeyRotationStatus' (as AWS), never KeyMetadata's.
    assert not ROTATION_MEMBERS & set(metadata(kms, key))
    st = status(kms, key)
    assert set(st) == {"KeyId", "KeyRotationEnabled", "RotationPeriodInDays", "NextRotationDate"}
    assert st["KeyId"] == arn and st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 365
    assert ISO.match(st["NextRotationDate"])
    # Table cells keep the Z form; the same instant as --json's.
    cell = st["NextRotationDate"].replace("+00:00", "Z")
    assert ok(kms("keys", "rotation", key)).stdout.decode() == (
        f"KeyRotationEnabled\ttrue\nRotationPeriodInDays\t365\nNextRotationDate\t{cell}\n")
    table = ok(kms("keys", "describe", key)).stdout.decode()
    assert f"every 365 days, next {cell}" in table
    ok(kms("keys", "rotation", key, "--enable", "--days", "2560"))
    assert status(kms, key)["RotationPeriodInDays"] == 2560
    ok(kms("keys", "rotation", key, "--disable"))
    assert status(kms, key) == {"KeyId": arn, "KeyRotationEnabled": False}
    assert not ROTATION_MEMBERS & set(metadata(kms, key))


@pytest.mark.parametrize("args", [("--enable", "--days", "89"), ("--enable", "--days", "2561"),
                                  ("--enable", "--days", "ninety"), ("--enable", "--disable"),
                                  ("--disable", "--days", "90"), ("--days", "90"),
                                  # --json is the status form's only (GetKeyRotationStatus)
                                  ("--json", "--enable"), ("--json", "--disable"),
                                  ("--json", "--min-decrypt-version", "1")])
def test_rotation_bad_input(kms: Runner, key: str, args: tuple[str, ...]) -> None:
    before = status(kms, key)
    r = kms("keys", "rotation", key, *args)
    fails(r, 2)
    assert r.stdout == b""
    assert status(kms, key) == before


def test_rotation_status_has_no_min_decrypt_version(kms: Runner, key: str) -> None:
    """MinDecryptVersion is kmscli's, not GetKeyRotationStatus': it shows in the describe table only."""
    ok(kms("keys", "rotate", key))
    ok(kms("keys", "rotation", key, "--min-decrypt-version", "2"))
    assert status(kms, key) == {"KeyId": metadata(kms, key)["Arn"], "KeyRotationEnabled": False}
    rows = dict(line.split("\t", 1) for line in ok(kms("keys", "describe", key)).stdout.decode().splitlines())
    assert rows["MinDecryptVersion"] == "2" and rows["Rotation"] == "off"


def test_rotation_of_disabled_key(kms: Runner, key: str) -> None:
    ok(kms("keys", "disable", key))
    fails(kms("keys", "rotate", key), 4, "DisabledException")
    fails(kms("keys", "rotate", "alias/none"), 3, "NotFoundException")


def test_on_demand_limit(kms: Runner, key: str) -> None:
    for _ in range(25):
        ok(kms("keys", "rotate", key))
    line = fails(kms("keys", "rotate", key), 2, "LimitExceededException")
    assert "25" in line
    assert len(rotations(kms, key)) == 26


def test_rotations_in_a_pipe_give_every_material_id_whole(kms: Runner, key: str) -> None:
    """A script reading `keys rotations` got ids cut with an ellipsis (issue 15): in a pipe nothing is cut."""
    ok(kms("keys", "rotate", key))
    ids = [r["KeyMaterialId"] for r in rotations(kms, key)]
    lines = ok(kms("keys", "rotations", key)).stdout.decode().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["1", ids[0]], ["2", ids[1]]]
    assert "…" not in "".join(lines) and all(len(i) == 64 for i in ids)


def test_rotations_show_which_versions_still_decrypt(kms: Runner, key: str) -> None:
    """--min-decrypt-version could not be seen (issue 15): the table says which versions still decrypt;
    --json stays ListKeyRotations' shape."""
    for _ in range(2):
        ok(kms("keys", "rotate", key))
    ok(kms("keys", "rotation", key, "--min-decrypt-version", "2"))
    lines = ok(kms("keys", "rotations", key)).stdout.decode().splitlines()
    assert [(line.split("\t")[0], line.split("\t")[-1]) for line in lines] == [
        ("1", "no (below --min-decrypt-version)"), ("2", "yes"), ("3", "yes")]
    assert all(set(r) <= {"KeyId", "KeyMaterialId", "KeyMaterialState", "RotationDate", "RotationType"}
               for r in rotations(kms, key))
    assert "MinDecryptVersion\t2" in ok(kms("keys", "describe", key)).stdout.decode()
