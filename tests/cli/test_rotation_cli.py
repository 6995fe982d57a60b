"""keys rotate / rotation / rotations through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, ok


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return ok(kms("keys", "create", "--alias", "alias/app")).stdout.decode().strip()


def rotations(kms: Runner, key: str) -> list[dict]:
    doc = json.loads(ok(kms("keys", "rotations", key, "--json")).stdout)
    assert set(doc) >= {"Rotations"}
    return doc["Rotations"]


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
    assert second["RotationDate"].endswith("Z")
    meta = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]
    assert meta["CurrentKeyMaterialId"] == second["KeyMaterialId"]


def test_rotation_schedule(kms: Runner, key: str) -> None:
    ok(kms("keys", "rotation", key, "--enable"))
    meta = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]
    assert meta["KeyRotationEnabled"] is True and meta["RotationPeriodInDays"] == 365
    assert meta["NextRotationDate"].endswith("Z")
    table = ok(kms("keys", "describe", key)).stdout.decode()
    assert "every 365 days, next " in table
    ok(kms("keys", "rotation", key, "--enable", "--days", "2560"))
    ok(kms("keys", "rotation", key, "--disable"))
    meta = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]
    assert meta["KeyRotationEnabled"] is False


@pytest.mark.parametrize("args", [("--enable", "--days", "89"), ("--enable", "--days", "2561"),
                                  ("--enable", "--days", "ninety"), ("--enable", "--disable"), (),
                                  ("--disable", "--days", "90")])
def test_rotation_bad_input(kms: Runner, key: str, args: tuple[str, ...]) -> None:
    fails(kms("keys", "rotation", key, *args), 2)


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
