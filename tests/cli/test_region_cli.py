"""Regions: keys and aliases belong to the region they were made in (SPEC "Semantics").

The CLI's region is `local` unless --region or KMSCLI_REGION names another;
AWS_REGION is the AWS tools' and is not read. A key or alias of another region
is not found (exit 3), its ciphertexts do not decrypt (exit 6), and ARNs carry
the region.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Runner, fails, ok


def test_keys_and_aliases_are_per_region(kms: Runner, vault: Path) -> None:
    local = ok(kms("keys", "create", "--alias", "alias/app")).stdout.decode().strip()
    east = ok(kms("--region", "us-east-1", "keys", "create", "--alias", "alias/app")).stdout.decode().strip()
    assert local != east
    # The same alias name in two regions names two keys.
    assert ok(kms("alias", "list")).stdout.decode().split("\t")[1] == local
    r = ok(kms("alias", "list", "--json", env_update={"KMSCLI_REGION": "us-east-1"}))
    assert [a["TargetKeyId"] for a in json.loads(r.stdout)["Aliases"]] == [east]
    # Each region lists its own keys only.
    listed = json.loads(ok(kms("keys", "list", "--json")).stdout)["Keys"]
    assert [k["KeyId"] for k in listed] == [local]
    listed = json.loads(ok(kms("keys", "list", "--json", "--region", "us-east-1")).stdout)["Keys"]
    assert [k["KeyId"] for k in listed] == [east]
    # AWS_REGION is the AWS tools' variable, not kmscli's.
    listed = json.loads(ok(kms("keys", "list", "--json", env_update={"AWS_REGION": "us-east-1"})).stdout)["Keys"]
    assert [k["KeyId"] for k in listed] == [local]


def test_arns_carry_the_region_and_another_regions_key_is_not_found(kms: Runner, vault: Path) -> None:
    east = ok(kms("--region", "eu-west-2", "keys", "create")).stdout.decode().strip()
    meta = json.loads(ok(kms("keys", "describe", east, "--json", "--region", "eu-west-2")).stdout)["KeyMetadata"]
    assert meta["Arn"].startswith("arn:aws:kms:eu-west-2:") and meta["Arn"].endswith(":key/" + east)
    fails(kms("keys", "describe", east), 3, "NotFoundException")
    line = fails(kms("keys", "describe", meta["Arn"]), 3, "NotFoundException")
    assert "eu-west-2" in line
    fails(kms("alias", "create", "alias/x", east), 3, "NotFoundException")


def test_a_ciphertext_decrypts_only_in_its_region(kms: Runner, vault: Path, tmp_path: Path) -> None:
    ok(kms("--region", "ap-south-1", "keys", "create", "--alias", "alias/r"))
    ct = ok(kms("encrypt", "--key", "alias/r", "--region", "ap-south-1", input=b"secret\n")).stdout
    fails(kms("decrypt", input=ct), 6, "InvalidCiphertextException")
    assert ok(kms("decrypt", "--region", "ap-south-1", input=ct)).stdout == b"secret\n"


def test_a_malformed_region_is_refused(kms: Runner, vault: Path) -> None:
    for bad in ("US-EAST-1", "local_1", "-x", "a" * 64):
        fails(kms("keys", "list", env_update={"KMSCLI_REGION": bad}), 2, "ValidationException")
    line = fails(kms("--region", "local_1", "keys", "list"), 2, "ValidationException")
    assert "local_1" in line
