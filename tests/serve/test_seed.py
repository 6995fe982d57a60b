"""`kmscli serve --ephemeral --seed FILE`: keys with fixed ids and material, so a suite starts from known keys.

Known material makes known answers: a symmetric key seeded in local-kms's form
decrypts what an identical seed encrypted; an HMAC key seeded with bytes B gives
Python's ``hmac`` of B; an RSA key seeded from a PEM made here has that PEM's
public key and signs what ``cryptography`` verifies with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.conftest import Runner, fails
from tests.serve.conftest import ServerProcess, error_of, make_client
from tests.serve.test_ephemeral import ephemeral_env

SYM_ID = "6c8a9c4e-1111-4b2a-9c3e-000000000001"
ROTATED_ID = "6c8a9c4e-1111-4b2a-9c3e-000000000002"
HMAC_ID = "6c8a9c4e-1111-4b2a-9c3e-000000000003"
RSA_ID = "6c8a9c4e-1111-4b2a-9c3e-000000000004"
EC_ID = "6c8a9c4e-1111-4b2a-9c3e-000000000005"
HMAC_MATERIAL = bytes(range(32))
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: object) -> str:
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                             ser.NoEncryption()).decode()


def _spki(key: object) -> bytes:
    return key.public_key().public_bytes(ser.Encoding.DER,
                                         ser.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("seed-home")
    seed = tmp_path_factory.mktemp("seed") / "seed.json"
    seed.write_text(json.dumps({
        "Keys": [
            {"KeyId": SYM_ID, "Material": (b"\x01" * 32).hex(), "Description": "fixed"},
            {"KeyId": ROTATED_ID, "Materials": [(b"\x02" * 32).hex(), (b"\x03" * 32).hex()]},
            {"KeyId": HMAC_ID, "KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC",
             "Material": HMAC_MATERIAL.hex()},
            {"KeyId": RSA_ID, "KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY", "Material": _pem(RSA_KEY)},
            {"KeyId": EC_ID, "KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"},  # new material
        ],
        "Aliases": [{"AliasName": "alias/mac", "TargetKeyId": HMAC_ID}],
    }))
    s = ServerProcess(["--ephemeral", "--port", "0", "--seed", str(seed)], ephemeral_env(home), cwd=home)
    try:
        yield s
    finally:
        s.assert_clean_stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return make_client(server.url, "testing", "testing", "us-east-1")


def test_a_seeded_hmac_key_gives_pythons_hmac_of_its_material(client: Any) -> None:
    for message in (b"x", b"webhook body" * 100, bytes(4096)):
        mac = client.generate_mac(KeyId="alias/mac", Message=message,
                               MacAlgorithm="HMAC_SHA_256")["Mac"]
        assert mac == hmac.new(HMAC_MATERIAL, message, hashlib.sha256).digest()
        assert client.verify_mac(KeyId=HMAC_ID, Message=message, MacAlgorithm="HMAC_SHA_256",
                              Mac=mac)["MacValid"] is True


def test_a_seeded_rsa_key_is_the_pem_it_was_given(client: Any) -> None:
    answer = client.get_public_key(KeyId=RSA_ID)
    assert answer["PublicKey"] == _spki(RSA_KEY)
    assert answer["KeyUsage"] == "SIGN_VERIFY" and answer["KeySpec"] == "RSA_2048"
    signature = client.sign(KeyId=RSA_ID, Message=b"release", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
    RSA_KEY.public_key().verify(signature["Signature"], b"release", padding.PKCS1v15(), hashes.SHA256())


def test_a_seed_key_without_material_gets_new_material_of_its_spec(client: Any) -> None:
    meta = client.describe_key(KeyId=EC_ID)["KeyMetadata"]
    assert (meta["KeySpec"], meta["KeyUsage"], meta["KeyAgreementAlgorithms"]) == (
        "ECC_NIST_P256", "KEY_AGREEMENT", ["ECDH"])
    peer = ec.generate_private_key(ec.SECP256R1())
    public = ser.load_der_public_key(client.get_public_key(KeyId=EC_ID)["PublicKey"])
    secret = client.derive_shared_secret(KeyId=EC_ID, KeyAgreementAlgorithm="ECDH",
                                      PublicKey=_spki(peer))["SharedSecret"]
    assert secret == peer.exchange(ec.ECDH(), public)  # type: ignore[arg-type]


def test_symmetric_seed_keys_keep_their_ids_and_rotations(client: Any) -> None:
    meta = client.describe_key(KeyId=SYM_ID)["KeyMetadata"]
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["Description"] == "fixed"
    rotations = client.list_key_rotations(KeyId=ROTATED_ID)["Rotations"]
    assert len(rotations) == 1  # two materials: the original and one rotation
    blob = client.encrypt(KeyId=ROTATED_ID, Plaintext=b"p")["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"p"


def test_the_seeded_keys_are_what_the_rules_allow(client: Any) -> None:
    with pytest.raises(ClientError) as e:
        client.encrypt(KeyId=HMAC_ID, Plaintext=b"p")
    error_of(e, "InvalidKeyUsageException")


@pytest.mark.parametrize(("key", "reason"), [
    ({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC", "Material": bytes(28).hex()}, "HMAC length"),
    ({"KeySpec": "RSA_2048", "Material": _pem(RSA_KEY)}, "no KeyUsage"),
    ({"KeySpec": "RSA_3072", "KeyUsage": "SIGN_VERIFY", "Material": _pem(RSA_KEY)}, "PEM of another size"),
    ({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY", "Material": _pem(RSA_KEY)}, "PEM of another kind"),
    ({"KeySpec": "HMAC_256", "KeyUsage": "SIGN_VERIFY"}, "usage the spec does not allow"),
    ({"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY", "Materials": [_pem(RSA_KEY), _pem(RSA_KEY)]},
     "two materials for a key that never rotates"),
    ({"Material": "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----"}, "broken PEM"),
])
def test_a_seed_key_that_breaks_a_rule_is_refused_before_serving(kms: Runner, tmp_path: Path,
                                                                  key: dict[str, object], reason: str) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"Keys": [{"KeyId": SYM_ID, **key}]}))
    line = fails(kms("serve", "--ephemeral", "--port", "0", "--seed", str(seed)), 2)
    assert "Exception" in line, reason

