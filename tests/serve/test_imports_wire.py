"""Imported key material through `kmscli serve` with boto3, unmodified: EXTERNAL keys on the wire.

boto3's ``create_key(Origin="EXTERNAL")``, ``get_parameters_for_import``,
``import_key_material`` and ``delete_imported_key_material``; the material is
wrapped with ``cryptography`` alone (tests/import_wrap.py), as a client would.
Each refusal arrives as AWS's error name on HTTP 400, and every request is one
audit record that holds no material, wrapped material or token.
"""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from tests.import_wrap import wrap
from tests.serve.conftest import KEY_ARN, Served, error_of

NO_EXPIRY = {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}


def external(served: Served, **kw: object) -> dict:
    return served.client().create_key(Origin="EXTERNAL", **kw)["KeyMetadata"]  # type: ignore[no-any-return]


def parameters(served: Served, key: str, algorithm: str = "RSAES_OAEP_SHA_256") -> dict:
    return served.client().get_parameters_for_import(  # type: ignore[no-any-return]
        KeyId=key, WrappingAlgorithm=algorithm, WrappingKeySpec="RSA_2048")


def test_byok_round_trip_with_boto3(served: Served) -> None:
    kms = served.client()
    md = external(served, Description="byok")
    key = md["KeyId"]
    assert (md["KeyState"], md["Enabled"], md["Origin"]) == ("PendingImport", False, "EXTERNAL")
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x")
    assert error_of(e, "KMSInvalidStateException")["Error"]["Message"] == f"{md['Arn']} is pending import."

    before = datetime.now(UTC)
    got = parameters(served, key)
    assert KEY_ARN.fullmatch(got["KeyId"]) and got["KeyId"] == md["Arn"]
    assert isinstance(got["ImportToken"], bytes) and isinstance(got["PublicKey"], bytes)
    valid = got["ParametersValidTo"]
    assert before + timedelta(hours=24) - timedelta(seconds=2) <= valid <= datetime.now(UTC) + timedelta(hours=24)

    material = os.urandom(32)
    valid_to = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0)
    imported = kms.import_key_material(KeyId=key, ImportToken=got["ImportToken"],
                                       EncryptedKeyMaterial=wrap(got["PublicKey"], "RSAES_OAEP_SHA_256", material),
                                       ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
    assert imported["KeyId"] == md["Arn"] and len(imported["KeyMaterialId"]) == 64
    described = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert (described["KeyState"], described["Enabled"]) == ("Enabled", True)
    assert described["ExpirationModel"] == "KEY_MATERIAL_EXPIRES" and described["ValidTo"] == valid_to
    assert described["CurrentKeyMaterialId"] == imported["KeyMaterialId"]

    blob = kms.encrypt(KeyId=key, Plaintext=b"known plaintext")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"known plaintext"

    deleted = kms.delete_imported_key_material(KeyId=key)
    assert (deleted["KeyId"], deleted["KeyMaterialId"]) == (md["Arn"], imported["KeyMaterialId"])
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob)
    error_of(e, "KMSInvalidStateException")

    again = parameters(served, key, "RSA_AES_KEY_WRAP_SHA_256")
    kms.import_key_material(KeyId=key, ImportToken=again["ImportToken"],
                            EncryptedKeyMaterial=wrap(again["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", material),
                            **NO_EXPIRY)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"known plaintext"
    assert "ValidTo" not in kms.describe_key(KeyId=key)["KeyMetadata"]


def test_bad_imports_get_awss_errors(served: Served) -> None:
    kms = served.client()
    key = external(served)["KeyId"]
    other = external(served)["KeyId"]
    mine, theirs = parameters(served, key), parameters(served, other)
    material = os.urandom(32)

    def attempt(token: bytes, wrapped: bytes, **kw: object) -> None:
        kms.import_key_material(KeyId=key, ImportToken=token, EncryptedKeyMaterial=wrapped, **(kw or NO_EXPIRY))

    cases = [
        ("InvalidImportTokenException", theirs["ImportToken"], wrap(mine["PublicKey"], "RSAES_OAEP_SHA_256", material),
         {}),
        ("InvalidImportTokenException", b"garbage", wrap(mine["PublicKey"], "RSAES_OAEP_SHA_256", material), {}),
        ("InvalidCiphertextException", mine["ImportToken"], wrap(mine["PublicKey"], "RSAES_OAEP_SHA_1", material),
         {}),
        ("ValidationException", mine["ImportToken"], wrap(mine["PublicKey"], "RSAES_OAEP_SHA_256", material[:16]),
         {}),
        ("ValidationException", mine["ImportToken"], wrap(mine["PublicKey"], "RSAES_OAEP_SHA_256", material),
         {"ExpirationModel": "KEY_MATERIAL_EXPIRES"}),
    ]
    for name, token, wrapped, kw in cases:
        with pytest.raises(ClientError) as e:
            attempt(token, wrapped, **kw)
        rec = served.record(error_of(e, name)["ResponseMetadata"]["RequestId"])
        assert rec["eventName"] == "ImportKeyMaterial" and rec["errorCode"] == name
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"
    attempt(mine["ImportToken"], wrap(mine["PublicKey"], "RSAES_OAEP_SHA_256", material))
    with pytest.raises(ClientError) as e:  # used up
        attempt(mine["ImportToken"], wrap(mine["PublicKey"], "RSAES_OAEP_SHA_256", material))
    error_of(e, "InvalidImportTokenException")
    kms.delete_imported_key_material(KeyId=key)
    fresh = parameters(served, key)
    with pytest.raises(ClientError) as e:
        attempt(fresh["ImportToken"], wrap(fresh["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)))
    error_of(e, "IncorrectKeyMaterialException")


def test_what_the_wire_refuses_around_imports(served: Served) -> None:
    kms = served.client()
    generated = kms.create_key()["KeyMetadata"]
    with pytest.raises(ClientError) as e:
        parameters(served, generated["KeyId"])
    message = error_of(e, "UnsupportedOperationException")["Error"]["Message"]
    assert message == f"{generated['Arn']} origin is AWS_KMS which is not valid for this operation."
    with pytest.raises(ClientError) as e:
        kms.create_key(Origin="AWS_CLOUDHSM")
    error_of(e, "UnsupportedOperationException")
    key = external(served)["KeyId"]
    with pytest.raises(ClientError) as e:
        kms.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSAES_PKCS1_V1_5", WrappingKeySpec="RSA_2048")
    error_of(e, "ValidationException")
    with pytest.raises(ClientError) as e:
        kms.enable_key_rotation(KeyId=key)
    error_of(e, "UnsupportedOperationException")
    got = parameters(served, key)
    with pytest.raises(ClientError) as e:  # a member kmscli cannot honour is refused, never ignored
        kms.import_key_material(KeyId=key, ImportToken=got["ImportToken"], KeyMaterialDescription="x",
                                EncryptedKeyMaterial=wrap(got["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)),
                                **NO_EXPIRY)
    error_of(e, "UnsupportedOperationException")


def test_records_name_the_calls_and_hold_no_secret(served: Served) -> None:
    kms = served.client()
    key = external(served)["KeyId"]
    got = parameters(served, key, "RSA_AES_KEY_WRAP_SHA_1")
    material = os.urandom(32)
    wrapped = wrap(got["PublicKey"], "RSA_AES_KEY_WRAP_SHA_1", material)
    done = kms.import_key_material(KeyId=key, ImportToken=got["ImportToken"], EncryptedKeyMaterial=wrapped,
                                   **NO_EXPIRY)
    deleted = kms.delete_imported_key_material(KeyId=key)
    rec = served.record(got["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "GetParametersForImport" and rec["readOnly"] is True
    assert rec["requestParameters"] == {"keyId": key, "wrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_1",
                                        "wrappingKeySpec": "RSA_2048"}
    rec = served.record(done["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "ImportKeyMaterial" and "errorCode" not in rec
    assert rec["requestParameters"] == {"keyId": key, "expirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}
    rec = served.record(deleted["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "DeleteImportedKeyMaterial"
    assert rec["responseElements"]["keyState"] == "PendingImport"
    log = served.audit_path.read_bytes()
    for secret in (material, got["ImportToken"], wrapped, got["PublicKey"]):
        for form in (secret, base64.b64encode(secret), secret.hex().encode()):
            assert form not in log
