"""Every `--json` document the CLI prints is its operation's AWS response, judged by botocore's model.

The CLI prints timestamps as the AWS CLI v2 does (ISO 8601, ``+00:00``); each
is checked for that form and turned back into epoch seconds, then the whole
document goes through the same botocore check as a wire answer
(tests/aws/botocore_model.py). One vault, one walk through the commands.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.aws.botocore_model import service_model, wire_errors
from tests.conftest import Runner, ok

#: How the AWS CLI v2 prints a UTC timestamp (botocore's isoformat of an aware datetime).
CLI_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")


def _to_wire(value: Any, shape: Any, path: str, problems: list[str]) -> Any:
    """The CLI document with its timestamps as epoch seconds, checking each one's printed form."""
    kind = shape.type_name
    if kind == "timestamp":
        if not isinstance(value, str) or not CLI_TIME.fullmatch(value):
            problems.append(f"{path}: {value!r} is not a timestamp as the AWS CLI v2 prints it")
            return value
        return datetime.fromisoformat(value).timestamp()
    if kind == "structure" and isinstance(value, dict):
        return {k: _to_wire(v, shape.members[k], f"{path}.{k}", problems) if k in shape.members else v
                for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_to_wire(v, shape.member, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def check(operation: str, stdout: bytes) -> None:
    doc = json.loads(stdout)
    problems: list[str] = []
    shape = service_model().operation_model(operation).output_shape
    wire = _to_wire(doc, shape, operation, problems)
    problems += wire_errors(operation, wire)
    assert problems == [], problems


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return ok(kms("keys", "create", "--alias", "alias/app", "--tag", "team=core")).stdout.decode().strip()


def test_every_json_document_is_its_aws_response(kms: Runner, key: str) -> None:
    def run(operation: str, *args: str) -> dict[str, Any]:
        out = ok(kms(*args, "--json")).stdout
        check(operation, out)
        return json.loads(out)  # type: ignore[no-any-return]

    created = run("CreateKey", "keys", "create", "--description", "second", "--tag", "a=b")
    second = created["KeyMetadata"]["KeyId"]
    assert set(created["KeyMetadata"]) >= {"KeyId", "Arn", "CreationDate", "KeyState", "KeySpec"}
    listed = run("ListKeys", "keys", "list")
    assert {k["KeyId"] for k in listed["Keys"]} == {key, second} and listed["Truncated"] is False
    run("DescribeKey", "keys", "describe", "alias/app")
    assert run("ListResourceTags", "keys", "tags", key)["Tags"] == [{"TagKey": "team", "TagValue": "core"}]
    assert run("GetKeyRotationStatus", "keys", "rotation", key)["KeyRotationEnabled"] is False
    ok(kms("keys", "rotation", key, "--enable", "--days", "90"))
    status = run("GetKeyRotationStatus", "keys", "rotation", key)
    assert status["RotationPeriodInDays"] == 90 and "NextRotationDate" in status
    assert run("RotateKeyOnDemand", "keys", "rotate", key) == {"KeyId": key}
    assert len(run("ListKeyRotations", "keys", "rotations", key)["Rotations"]) == 2
    policy = run("GetKeyPolicy", "policy", "get", key)
    assert policy["PolicyName"] == "default" and json.loads(policy["Policy"])["Statement"]
    assert len(run("GenerateRandom", "random", "32")["Plaintext"]) == 44  # 32 bytes, base64
    run("ListAliases", "alias", "list")
    run("ListAliases", "alias", "list", "--key", key)
    dk = run("GenerateDataKey", "datakey", "alias/app", "--context", "k=v")
    assert dk["KeyId"].endswith(key) and dk["KeyId"].startswith("arn:aws:kms:local:")
    run("GenerateDataKey", "datakey", "alias/app", "--bytes", "64")
    run("GenerateDataKeyWithoutPlaintext", "datakey", "alias/app", "--no-plaintext")
    run("DescribeKey", "keys", "describe", second)
    scheduled = run("ScheduleKeyDeletion", "keys", "schedule-delete", second, "--days", "7")
    assert scheduled["KeyState"] == "PendingDeletion" and scheduled["KeyId"].endswith(second)
    run("DescribeKey", "keys", "describe", second)
    run("ListKeys", "keys", "list", "--all")
    assert run("CancelKeyDeletion", "keys", "cancel-delete", second)["KeyId"].endswith(second)


def test_a_data_key_blob_fits_the_model_with_the_largest_context(kms: Runner, key: str) -> None:
    """64 pairs filling kmscli's 8 KiB context limit: the CiphertextBlob still fits AWS's 6144 bytes."""
    args = []
    for i in range(64):
        args += ["--context", f"k{i:02d}=" + "v" * 120]
    out = ok(kms("datakey", "alias/app", "--bytes", "1024", *args, "--json")).stdout
    check("GenerateDataKey", out)


def test_the_json_of_asymmetric_and_hmac_commands_is_their_aws_response(kms: Runner, key: str, tmp_path: Path
                                                                         ) -> None:
    def run(operation: str, *args: str, input: bytes = b"") -> dict[str, Any]:
        out = ok(kms(*args, "--json", input=input)).stdout
        check(operation, out)
        return json.loads(out)  # type: ignore[no-any-return]

    signer = run("CreateKey", "keys", "create", "--spec", "ECC_NIST_P256", "--usage", "SIGN_VERIFY")
    assert signer["KeyMetadata"]["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    assert "CurrentKeyMaterialId" not in signer["KeyMetadata"]
    sid = signer["KeyMetadata"]["KeyId"]
    mldsa = run("CreateKey", "keys", "create", "--spec", "ML_DSA_44", "--usage", "SIGN_VERIFY")["KeyMetadata"]
    assert "CustomerMasterKeySpec" not in mldsa  # the deprecated member's enum has no ML-DSA spec
    run("DescribeKey", "keys", "describe", sid)
    public = run("GetPublicKey", "pubkey", sid)
    assert public["KeyUsage"] == "SIGN_VERIFY" and public["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    signed = run("Sign", "sign", "--key", sid, "--algorithm", "ECDSA_SHA_256", input=b"release")
    assert signed["KeyId"].endswith(sid)
    (tmp_path / "sig.b64").write_text(signed["Signature"])
    verified = run("Verify", "verify", "--key", sid, "--algorithm", "ECDSA_SHA_256", "--signature",
                   str(tmp_path / "sig.b64"), input=b"release")
    assert verified["SignatureValid"] is True
    mac_key = run("CreateKey", "keys", "create", "--spec", "HMAC_384")["KeyMetadata"]
    assert (mac_key["KeyUsage"], mac_key["MacAlgorithms"]) == ("GENERATE_VERIFY_MAC", ["HMAC_SHA_384"])
    mac = run("GenerateMac", "mac", "--key", mac_key["KeyId"], "--algorithm", "HMAC_SHA_384", input=b"m")
    (tmp_path / "mac.b64").write_text(mac["Mac"])
    assert run("VerifyMac", "verify-mac", "--key", mac_key["KeyId"], "--algorithm", "HMAC_SHA_384", "--mac",
               str(tmp_path / "mac.b64"), input=b"m")["MacValid"] is True
    pair = run("GenerateDataKeyPair", "datakey-pair", key, "--spec", "ECC_NIST_P384", "--context", "k=v")
    assert pair["KeyPairSpec"] == "ECC_NIST_P384" and "PrivateKeyPlaintext" in pair
    bare = run("GenerateDataKeyPairWithoutPlaintext", "datakey-pair", key, "--spec", "RSA_2048", "--no-plaintext")
    assert "PrivateKeyPlaintext" not in bare
    agreement = run("CreateKey", "keys", "create", "--spec", "ECC_NIST_P256", "--usage", "KEY_AGREEMENT")
    assert agreement["KeyMetadata"]["KeyAgreementAlgorithms"] == ["ECDH"]
    (tmp_path / "peer.der").write_bytes(_p256_public_der())
    shared = run("DeriveSharedSecret", "derive-secret", "--key", agreement["KeyMetadata"]["KeyId"],
                 "--public-key", str(tmp_path / "peer.der"))
    assert shared["KeyOrigin"] == "AWS_KMS" and shared["KeyAgreementAlgorithm"] == "ECDH"


def _p256_public_der() -> bytes:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
