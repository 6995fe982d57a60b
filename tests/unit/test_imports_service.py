"""Imported key material (issue 17) through `kmscli.service.Kms`: EXTERNAL keys, import parameters, tokens, expiry.

The material is wrapped here with ``cryptography`` alone (tests/import_wrap.py),
the way AWS's guide describes each wrapping algorithm, and its use is checked
against tools nobody here wrote: an HMAC against ``hmac``, a signature against
``cryptography``'s verifier, a ciphertext against a second import of the same
material. Every refusal is checked for its exception, its audit record, and
that the key did not change. Wrapping keys are RSA_2048 wherever the size does
not matter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kmscli import errors
from kmscli.service import Caller, Kms
from kmscli.vault.store import PassphraseKeySource
from tests.import_wrap import pkcs8, wrap
from tests.unit.conftest import Clock, audit_events
from tests.unit.test_asymmetric_service import decrypt, encrypt
from tests.vault_contents import contents

ROOT_ALL = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}
OAEP_256 = "RSAES_OAEP_SHA_256"
NO_EXPIRY = {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}


# -- helpers ---------------------------------------------------------------------
def external(svc: Kms, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None, **kw: Any) -> dict[str, Any]:
    """A new EXTERNAL key's KeyMetadata."""
    return svc.CreateKey(KeySpec=spec, KeyUsage=usage, Origin="EXTERNAL", **kw)["KeyMetadata"]


def params(svc: Kms, key: str, algorithm: str = OAEP_256, spec: str = "RSA_2048") -> dict[str, Any]:
    return svc.GetParametersForImport(KeyId=key, WrappingAlgorithm=algorithm, WrappingKeySpec=spec)


def import_(svc: Kms, key: str, material: bytes, algorithm: str = OAEP_256, p: dict[str, Any] | None = None,
            **kw: Any) -> dict[str, Any]:
    """Get parameters (unless given), wrap ``material`` for them, import it; ImportKeyMaterial's answer."""
    p = p or params(svc, key, algorithm)
    return svc.ImportKeyMaterial(KeyId=key, ImportToken=p["ImportToken"],
                                 EncryptedKeyMaterial=wrap(p["PublicKey"], algorithm, material), **(kw or NO_EXPIRY))


def state(svc: Kms, key: str) -> str:
    return str(svc.DescribeKey(KeyId=key)["KeyMetadata"]["KeyState"])


def last(svc: Kms, event: str) -> dict[str, Any]:
    return [r for r in audit_events(svc) if r["eventName"] == event][-1]


def refused(svc: Kms, key: str, error: type[errors.KmsError], call: Any, event: str = "ImportKeyMaterial") -> str:
    """Run ``call``, which must raise ``error``; its record names the error, and the key is as it was."""
    before = svc.DescribeKey(KeyId=key)["KeyMetadata"]
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error
    record = last(svc, event)
    assert record["errorCode"] == error.name and record["responseElements"] is None
    assert svc.DescribeKey(KeyId=key)["KeyMetadata"] == before
    return info.value.message


# -- CreateKey(Origin=EXTERNAL) and PendingImport ---------------------------------------
def test_an_external_key_starts_pending_import_without_material(svc: Kms) -> None:
    meta = external(svc, Description="byok")
    assert meta["KeyState"] == "PendingImport" and meta["Enabled"] is False
    assert meta["Origin"] == "EXTERNAL" and meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    # No material yet: no CurrentKeyMaterialId, and no expiration members until something is imported.
    assert not {"CurrentKeyMaterialId", "ExpirationModel", "ValidTo"} & set(meta)
    assert svc.DescribeKey(KeyId=meta["KeyId"])["KeyMetadata"] == meta
    created = last(svc, "CreateKey")
    assert created["requestParameters"]["origin"] == "EXTERNAL"
    assert created["responseElements"]["keyState"] == "PendingImport"


def test_origin_is_stored_only_for_external_keys(svc: Kms) -> None:
    generated = svc.CreateKey()["KeyMetadata"]["KeyId"]
    imported = external(svc)["KeyId"]
    keys = contents(svc.store.path, "pw")[0]["keys"]
    assert "Origin" not in keys[generated]  # a generated key's record is what it always was
    assert keys[imported]["Origin"] == "EXTERNAL" and keys[imported]["Materials"] == []
    assert "origin" not in [r for r in audit_events(svc) if r["eventName"] == "CreateKey"][0]["requestParameters"]


@pytest.mark.parametrize(("origin", "error"), [("AWS_CLOUDHSM", errors.UnsupportedOperationException),
                                               ("EXTERNAL_KEY_STORE", errors.UnsupportedOperationException),
                                               ("NOWHERE", errors.ValidationException)])
def test_other_origins_are_refused(svc: Kms, origin: str, error: type[errors.KmsError]) -> None:
    with pytest.raises(error):
        svc.CreateKey(Origin=origin)
    assert svc.ListKeys()["Keys"] == []


@pytest.mark.parametrize("spec", ["ML_DSA_44", "ML_DSA_65", "ML_DSA_87"])
def test_ml_dsa_keys_take_no_imported_material(svc: Kms, spec: str) -> None:
    with pytest.raises(errors.UnsupportedOperationException, match=f"KeySpec {spec} cannot have Origin EXTERNAL"):
        external(svc, spec, "SIGN_VERIFY")
    assert svc.ListKeys()["Keys"] == []


def test_what_needs_material_is_refused_while_pending_import(svc: Kms) -> None:
    sym = external(svc)
    arn = sym["Arn"]
    pending = f"{arn} is pending import."
    for call in (lambda: encrypt(svc, arn, b"x"),
                 lambda: svc.GenerateDataKey(KeyId=arn, KeySpec="AES_256"),
                 lambda: svc.GenerateDataKeyPair(KeyId=arn, KeyPairSpec="ECC_NIST_P256"),
                 lambda: svc.EnableKey(KeyId=arn),
                 lambda: svc.DisableKey(KeyId=arn)):
        with pytest.raises(errors.KMSInvalidStateException) as info:
            call()
        assert info.value.message == pending
    mac = external(svc, "HMAC_256", "GENERATE_VERIFY_MAC")["KeyId"]
    with pytest.raises(errors.KMSInvalidStateException, match="is pending import"):
        svc.GenerateMac(KeyId=mac, Message=b"m", MacAlgorithm="HMAC_SHA_256")
    signer = external(svc, "ECC_NIST_P256", "SIGN_VERIFY")["KeyId"]
    with pytest.raises(errors.KMSInvalidStateException, match="is pending import"):
        svc.Sign(KeyId=signer, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    with pytest.raises(errors.KMSInvalidStateException, match="is pending import"):
        svc.GetPublicKey(KeyId=signer)
    with pytest.raises(errors.UnsupportedOperationException):  # a symmetric key has no public key, pending or not
        svc.GetPublicKey(KeyId=arn)
    assert last(svc, "GetPublicKey")["errorCode"] == "UnsupportedOperationException"
    assert state(svc, arn) == "PendingImport"


def test_pending_import_keys_take_metadata_and_deletion(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    svc.UpdateKeyDescription(KeyId=key, Description="d")
    svc.TagResource(KeyId=key, Tags=[{"TagKey": "t", "TagValue": "v"}])
    svc.CreateAlias(AliasName="alias/byok", TargetKeyId=key)
    scheduled = svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    assert scheduled["KeyState"] == "PendingDeletion"
    # Cancelled, a key without its material goes back to PendingImport (with material it would be Disabled).
    svc.CancelKeyDeletion(KeyId=key)
    assert state(svc, key) == "PendingImport"


def test_the_policy_sees_the_keys_origin(svc: Kms) -> None:
    deny_external = {"Effect": "Deny", "Principal": "*", "Action": "kms:DescribeKey", "Resource": "*",
                     "Condition": {"StringEquals": {"kms:KeyOrigin": "EXTERNAL"}}}
    doc = json.dumps({"Version": "2012-10-17", "Statement": [ROOT_ALL, deny_external]})
    imported = external(svc, Policy=doc)["KeyId"]
    generated = svc.CreateKey(Policy=doc)["KeyMetadata"]["KeyId"]
    with pytest.raises(errors.AccessDeniedException):
        svc.DescribeKey(KeyId=imported)
    assert svc.DescribeKey(KeyId=generated)["KeyMetadata"]["Origin"] == "AWS_KMS"


def test_the_import_condition_keys(svc: Kms, clock: Clock) -> None:
    doc = json.dumps({"Version": "2012-10-17", "Statement": [ROOT_ALL, *[
        {"Effect": "Deny", "Principal": "*", "Action": action, "Resource": "*", "Condition": condition}
        for action, condition in (
            ("kms:GetParametersForImport", {"StringEquals": {"kms:WrappingAlgorithm": "RSAES_OAEP_SHA_1"}}),
            ("kms:GetParametersForImport", {"StringEquals": {"kms:WrappingKeySpec": "RSA_3072"}}),
            ("kms:ImportKeyMaterial", {"StringEquals": {"kms:ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}}),
            ("kms:ImportKeyMaterial", {"DateGreaterThan": {"kms:ValidTo": "2026-03-01T00:00:00Z"}}))]]})
    key = external(svc, Policy=doc)["KeyId"]
    for denied in (lambda: params(svc, key, "RSAES_OAEP_SHA_1"), lambda: params(svc, key, spec="RSA_3072")):
        refused(svc, key, errors.AccessDeniedException, denied, "GetParametersForImport")
    refused(svc, key, errors.AccessDeniedException, lambda: import_(svc, key, os.urandom(32)))
    refused(svc, key, errors.AccessDeniedException,
            lambda: import_(svc, key, os.urandom(32), ValidTo=clock.now + timedelta(days=90)))
    import_(svc, key, os.urandom(32), ValidTo=clock.now + timedelta(days=30))
    assert state(svc, key) == "Enabled"


# -- GetParametersForImport ----------------------------------------------------------
@pytest.mark.parametrize(("spec", "bits"), [("RSA_2048", 2048), ("RSA_3072", 3072)])
def test_parameters_are_a_fresh_rsa_public_key_and_a_token_valid_24_hours(svc: Kms, clock: Clock, spec: str,
                                                                        bits: int) -> None:
    meta = external(svc)
    first = params(svc, meta["KeyId"], spec=spec)
    assert set(first) == {"KeyId", "ImportToken", "PublicKey", "ParametersValidTo"}
    assert first["KeyId"] == meta["Arn"]
    public = ser.load_der_public_key(first["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == bits
    assert first["ParametersValidTo"] == clock.now + timedelta(hours=24)
    second = params(svc, meta["KeyId"], spec=spec)
    assert second["PublicKey"] != first["PublicKey"] and second["ImportToken"] != first["ImportToken"]
    record = last(svc, "GetParametersForImport")
    assert record["requestParameters"] == {"keyId": meta["KeyId"], "wrappingAlgorithm": OAEP_256,
                                           "wrappingKeySpec": spec}
    assert record["readOnly"] is True  # as CloudTrail marks it
    # The wrapping private key stays in the key's record, in the (encrypted) vault.
    kept = contents(svc.store.path, "pw")[0]["keys"][meta["KeyId"]]["ImportParameters"]
    private = ser.load_der_private_key(base64.b64decode(kept["PrivateKey"]), None)
    assert private.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo) \
        == second["PublicKey"]


def test_parameters_only_for_external_keys(svc: Kms) -> None:
    meta = svc.CreateKey()["KeyMetadata"]
    message = refused(svc, meta["KeyId"], errors.UnsupportedOperationException,
                      lambda: params(svc, meta["KeyId"]), "GetParametersForImport")
    assert message.startswith(f"{meta['Arn']} origin is AWS_KMS which is not valid for this operation.")
    assert refused(svc, meta["KeyId"], errors.UnsupportedOperationException,
                   lambda: svc.DeleteImportedKeyMaterial(KeyId=meta["KeyId"]), "DeleteImportedKeyMaterial"
                   ).startswith(f"{meta['Arn']} origin is AWS_KMS which is not valid for this operation.")


@pytest.mark.parametrize(("algorithm", "spec", "error", "words"), [
    ("RSAES_PKCS1_V1_5", "RSA_2048", errors.ValidationException, "October 10, 2023"),
    ("SM2PKE", "RSA_2048", errors.UnsupportedOperationException, "China Regions"),
    (OAEP_256, "SM2", errors.UnsupportedOperationException, "China Regions"),
    ("RSAES_OAEP_SHA_512", "RSA_2048", errors.ValidationException, "Member must satisfy enum value set"),
    (OAEP_256, "RSA_1024", errors.ValidationException, "Member must satisfy enum value set"),
])
def test_wrapping_choices_aws_does_not_offer_are_refused_with_a_reason(
        svc: Kms, algorithm: str, spec: str, error: type[errors.KmsError], words: str) -> None:
    key = external(svc)["KeyId"]
    assert words in refused(svc, key, error, lambda: params(svc, key, algorithm, spec), "GetParametersForImport")


def test_wrapping_that_cannot_carry_the_keys_material_is_refused(svc: Kms) -> None:
    rsa_key = external(svc, "RSA_2048", "SIGN_VERIFY")["KeyId"]
    for algorithm in ("RSAES_OAEP_SHA_1", OAEP_256):
        assert "RSA_AES_KEY_WRAP" in refused(svc, rsa_key, errors.ValidationException,
                                             lambda a=algorithm: params(svc, rsa_key, a), "GetParametersForImport")
    p521 = external(svc, "ECC_NIST_P521", "SIGN_VERIFY")["KeyId"]
    refused(svc, p521, errors.ValidationException, lambda: params(svc, p521, OAEP_256, "RSA_2048"),
            "GetParametersForImport")
    params(svc, p521, OAEP_256, "RSA_3072")  # a longer wrapping key holds it
    params(svc, rsa_key, "RSA_AES_KEY_WRAP_SHA_256")


def test_no_parameters_for_a_key_pending_deletion(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    assert refused(svc, key, errors.KMSInvalidStateException, lambda: params(svc, key),
                   "GetParametersForImport").endswith("is pending deletion.")


# -- ImportKeyMaterial ---------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1",
                                       "RSA_AES_KEY_WRAP_SHA_256"])
def test_symmetric_material_imports_with_every_wrapping_algorithm(svc: Kms, clock: Clock, algorithm: str) -> None:
    meta = external(svc)
    material = os.urandom(32)
    valid_to = clock.now + timedelta(days=30)
    answer = import_(svc, meta["KeyId"], material, algorithm, ValidTo=valid_to)
    assert set(answer) == {"KeyId", "KeyMaterialId"} and answer["KeyId"] == meta["Arn"]
    after = svc.DescribeKey(KeyId=meta["KeyId"])["KeyMetadata"]
    assert after["KeyState"] == "Enabled" and after["Enabled"] is True
    assert after["ExpirationModel"] == "KEY_MATERIAL_EXPIRES" and after["ValidTo"] == valid_to
    assert after["CurrentKeyMaterialId"] == answer["KeyMaterialId"]
    assert decrypt(svc, encrypt(svc, meta["KeyId"], b"known plaintext")) == b"known plaintext"
    record = last(svc, "ImportKeyMaterial")
    assert record["requestParameters"] == {"keyId": meta["KeyId"], "expirationModel": "KEY_MATERIAL_EXPIRES",
                                           "validTo": "2026-01-31T12:00:00Z"}
    assert record["responseElements"]["keyState"] == "Enabled"


def test_the_vault_uses_exactly_the_imported_bytes(svc: Kms) -> None:
    """A ciphertext of the key opens outside the vault with the 32 bytes imported as its master key, and two
    keys given the same material (by two wrapping algorithms) both work."""
    from kmscli.crypto import stream

    material = os.urandom(32)
    one, two = external(svc)["KeyId"], external(svc)["KeyId"]
    import_(svc, one, material)
    import_(svc, two, material, "RSA_AES_KEY_WRAP_SHA_256")
    reader = io.BytesIO(encrypt(svc, one, b"secret"))
    header = stream.read_header(reader)
    out = io.BytesIO()
    stream.decrypt_stream(header, reader, out, master_key=material, context={})
    assert out.getvalue() == b"secret"
    assert decrypt(svc, encrypt(svc, two, b"other")) == b"other"


def test_no_expiry(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    import_(svc, key, os.urandom(32))
    meta = svc.DescribeKey(KeyId=key)["KeyMetadata"]
    assert meta["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE" and "ValidTo" not in meta
    assert last(svc, "ImportKeyMaterial")["requestParameters"] == {
        "keyId": key, "expirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}


@pytest.mark.parametrize(("kw", "words"), [
    ({}, "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES"),
    ({"ExpirationModel": "KEY_MATERIAL_EXPIRES"}, "ValidTo is required"),
    ({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ValidTo": timedelta(days=1)}, "ValidTo is not valid"),
    ({"ValidTo": timedelta(0)}, "must be in the future"),
    ({"ValidTo": -timedelta(seconds=1)}, "must be in the future"),
    ({"ValidTo": timedelta(days=365, seconds=1)}, "at most 365 days"),
    ({"ExpirationModel": "SOMETIMES", "ValidTo": timedelta(days=1)}, "Member must satisfy enum value set"),
])
def test_expiration_rules_are_awss(svc: Kms, clock: Clock, kw: dict[str, Any], words: str) -> None:
    key = external(svc)["KeyId"]
    p = params(svc, key)
    if "ValidTo" in kw:
        kw = {**kw, "ValidTo": clock.now + kw["ValidTo"]}
    wrapped = wrap(p["PublicKey"], OAEP_256, os.urandom(32))
    message = refused(svc, key, errors.ValidationException, lambda: svc.ImportKeyMaterial(
        KeyId=key, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped, **kw))
    assert words in message
    # Refused before anything was done: the token still imports.
    svc.ImportKeyMaterial(KeyId=key, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped, **NO_EXPIRY)


def test_valid_to_may_be_365_days_ahead(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    import_(svc, key, os.urandom(32), ValidTo=clock.now + timedelta(days=365))
    assert svc.DescribeKey(KeyId=key)["KeyMetadata"]["ValidTo"] == clock.now + timedelta(days=365)


# -- bad tokens and bad material -------------------------------------------------------
def test_a_token_imports_once(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    p = params(svc, key)
    material = os.urandom(32)
    import_(svc, key, material, p=p)
    # Used up: the wrapping private key is gone from the vault with it.
    assert "ImportParameters" not in contents(svc.store.path, "pw")[0]["keys"][key]
    message = refused(svc, key, errors.InvalidImportTokenException, lambda: import_(svc, key, material, p=p))
    assert "used already" in message
    assert errors.InvalidImportTokenException.exit_code == 6


def test_a_later_call_replaces_the_earlier_token(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    first, second = params(svc, key), params(svc, key)
    material = os.urandom(32)
    refused(svc, key, errors.InvalidImportTokenException, lambda: import_(svc, key, material, p=first))
    # Material wrapped for the first public key, with the second token: it does not unwrap.
    refused(svc, key, errors.InvalidCiphertextException, lambda: svc.ImportKeyMaterial(
        KeyId=key, ImportToken=second["ImportToken"],
        EncryptedKeyMaterial=wrap(first["PublicKey"], OAEP_256, material), **NO_EXPIRY))
    import_(svc, key, material, p=second)
    assert state(svc, key) == "Enabled"


def test_a_token_of_another_key_is_invalid(svc: Kms) -> None:
    mine, other = external(svc)["KeyId"], external(svc)["KeyId"]
    params(svc, mine)
    theirs = params(svc, other)
    message = refused(svc, mine, errors.InvalidImportTokenException,
                      lambda: import_(svc, mine, os.urandom(32), p=theirs))
    assert f"issued for another key ({other})" in message
    import_(svc, other, os.urandom(32), p=theirs)  # still good for its own key


# The random bytes are drawn in the test, not in the parameters: the ids must be the same in every
# process that collects the suite (pytest-xdist refuses to run when its workers collect different ids).
@pytest.mark.parametrize(("head", "random_bytes"), [(b"x", 0), (b"", 37), (b"KMIT\x01", 31), (b"KMIT\x01", 33)],
                         ids=["x", "random-37", "magic-and-random-31", "magic-and-random-33"])
def test_garbage_tokens_are_invalid(svc: Kms, head: bytes, random_bytes: int) -> None:
    token = head + os.urandom(random_bytes)
    key = external(svc)["KeyId"]
    p = params(svc, key)
    refused(svc, key, errors.InvalidImportTokenException, lambda: svc.ImportKeyMaterial(
        KeyId=key, ImportToken=token, EncryptedKeyMaterial=wrap(p["PublicKey"], OAEP_256, os.urandom(32)),
        **NO_EXPIRY))


def test_a_forged_token_id_for_the_right_key_is_invalid(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    p = params(svc, key)
    forged = p["ImportToken"][:-16] + bytes(b ^ 1 for b in p["ImportToken"][-16:])
    refused(svc, key, errors.InvalidImportTokenException, lambda: svc.ImportKeyMaterial(
        KeyId=key, ImportToken=forged, EncryptedKeyMaterial=wrap(p["PublicKey"], OAEP_256, os.urandom(32)),
        **NO_EXPIRY))


def test_an_expired_token_is_expired(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    p = params(svc, key)
    clock.advance(hours=24)
    message = refused(svc, key, errors.ExpiredImportTokenException, lambda: import_(svc, key, os.urandom(32), p=p))
    assert "expired at 2026-01-02T12:00:00Z" in message
    assert errors.ExpiredImportTokenException.exit_code == 4
    import_(svc, key, os.urandom(32))  # new parameters import


def test_a_token_is_good_until_its_last_second(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    p = params(svc, key)
    clock.advance(hours=24, seconds=-1)
    import_(svc, key, os.urandom(32), p=p)


@pytest.mark.parametrize(("params_algorithm", "wrapped_with"), [
    ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"),
    ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"),
    ("RSA_AES_KEY_WRAP_SHA_256", "RSAES_OAEP_SHA_256"),
    ("RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256"),
    ("RSA_AES_KEY_WRAP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1"),
])
def test_material_wrapped_with_another_algorithm_does_not_unwrap(svc: Kms, params_algorithm: str,
                                                                 wrapped_with: str) -> None:
    key = external(svc)["KeyId"]
    p = params(svc, key, params_algorithm)
    wrapped = wrap(p["PublicKey"], wrapped_with, os.urandom(32))
    message = refused(svc, key, errors.InvalidCiphertextException, lambda: svc.ImportKeyMaterial(
        KeyId=key, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped, **NO_EXPIRY))
    assert message.startswith("the encrypted key material cannot be unwrapped")
    assert errors.InvalidCiphertextException.exit_code == 6


@pytest.mark.parametrize("algorithm", [OAEP_256, "RSA_AES_KEY_WRAP_SHA_256"])
def test_changed_or_cut_wrapped_material_does_not_unwrap(svc: Kms, algorithm: str) -> None:
    key = external(svc)["KeyId"]
    p = params(svc, key, algorithm)
    wrapped = wrap(p["PublicKey"], algorithm, os.urandom(32))
    for bad in (wrapped[:-1], wrapped + b"\0", bytes([wrapped[0] ^ 1]) + wrapped[1:],
                wrapped[:-1] + bytes([wrapped[-1] ^ 1]), wrapped[:256]):
        if bad == wrapped:
            continue
        refused(svc, key, errors.InvalidCiphertextException, lambda b=bad: svc.ImportKeyMaterial(
            KeyId=key, ImportToken=p["ImportToken"], EncryptedKeyMaterial=b, **NO_EXPIRY))


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_symmetric_material_of_the_wrong_length_is_refused(svc: Kms, size: int) -> None:
    key = external(svc)["KeyId"]
    message = refused(svc, key, errors.ValidationException, lambda: import_(svc, key, os.urandom(size)))
    assert message.startswith(f"the key material is {size} bytes; a SYMMETRIC_DEFAULT key takes exactly 32 bytes")


# -- deleting, expiring and importing again ---------------------------------------------
def test_deleted_material_comes_back_and_old_ciphertexts_decrypt(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    material = os.urandom(32)
    first = import_(svc, key, material)
    blob = encrypt(svc, key, b"made before the deletion")
    deleted = svc.DeleteImportedKeyMaterial(KeyId=key)
    assert deleted == {"KeyId": first["KeyId"], "KeyMaterialId": first["KeyMaterialId"]}
    meta = svc.DescribeKey(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "PendingImport" and not {"ExpirationModel", "ValidTo"} & set(meta)
    assert meta["CurrentKeyMaterialId"] == first["KeyMaterialId"]  # the material's identity stays
    with pytest.raises(errors.KMSInvalidStateException, match="is pending import"):
        decrypt(svc, blob)
    record = last(svc, "DeleteImportedKeyMaterial")
    assert record["responseElements"] == {"keyId": key, "keyMaterialId": first["KeyMaterialId"],
                                          "keyState": "PendingImport"}
    # The secret bytes are gone from the vault; the version and its id stay.
    kept = contents(svc.store.path, "pw")[0]["keys"][key]["Materials"]
    assert len(kept) == 1 and "Material" not in kept[0] and kept[0]["KeyMaterialId"] == first["KeyMaterialId"]
    again = import_(svc, key, material, "RSA_AES_KEY_WRAP_SHA_1")
    assert again == first
    assert decrypt(svc, blob) == b"made before the deletion"


def test_other_material_is_incorrect_after_deletion_and_before(svc: Kms) -> None:
    key = external(svc)["KeyId"]
    import_(svc, key, os.urandom(32))
    message = refused(svc, key, errors.IncorrectKeyMaterialException, lambda: import_(svc, key, os.urandom(32)))
    assert "a key takes only the material first imported into it" in message
    svc.DeleteImportedKeyMaterial(KeyId=key)
    refused(svc, key, errors.IncorrectKeyMaterialException, lambda: import_(svc, key, os.urandom(32)))
    assert errors.IncorrectKeyMaterialException.exit_code == 6


def test_importing_again_changes_the_expiry_and_keeps_the_state(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    material = os.urandom(32)
    import_(svc, key, material, ValidTo=clock.now + timedelta(days=1))
    import_(svc, key, material)  # no expiry now
    meta = svc.DescribeKey(KeyId=key)["KeyMetadata"]
    assert (meta["KeyState"], meta["ExpirationModel"]) == ("Enabled", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    svc.DisableKey(KeyId=key)
    import_(svc, key, material, ValidTo=clock.now + timedelta(days=2))
    meta = svc.DescribeKey(KeyId=key)["KeyMetadata"]
    assert (meta["KeyState"], meta["ValidTo"]) == ("Disabled", clock.now + timedelta(days=2))
    clock.advance(days=1, hours=1)  # the first ValidTo has passed: nothing happens
    assert state(svc, key) == "Disabled"


def test_deleting_twice_or_before_any_import_changes_nothing(svc: Kms) -> None:
    key = external(svc)["Arn"]
    assert svc.DeleteImportedKeyMaterial(KeyId=key) == {"KeyId": key}
    assert state(svc, key) == "PendingImport"
    import_(svc, key, os.urandom(32))
    svc.DeleteImportedKeyMaterial(KeyId=key)
    svc.DeleteImportedKeyMaterial(KeyId=key)
    assert state(svc, key) == "PendingImport"


@pytest.mark.parametrize(("delete", "cancelled"), [(True, "PendingImport"), (False, "Disabled")])
def test_deletion_cancelled_is_disabled_or_pending_import_without_the_material(svc: Kms, delete: bool,
                                                                               cancelled: str) -> None:
    key = external(svc)["KeyId"]
    import_(svc, key, os.urandom(32))
    svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    if delete:  # the material goes, the state stays
        svc.DeleteImportedKeyMaterial(KeyId=key)
        assert state(svc, key) == "PendingDeletion"
        refused(svc, key, errors.KMSInvalidStateException, lambda: import_(svc, key, os.urandom(32)),
                "GetParametersForImport")
    svc.CancelKeyDeletion(KeyId=key)
    assert state(svc, key) == cancelled


def test_material_expires_at_the_first_call_after_valid_to(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    other = svc.CreateKey()["KeyMetadata"]["KeyId"]
    material = os.urandom(32)
    first = import_(svc, key, material, ValidTo=clock.now + timedelta(hours=1))
    blob = encrypt(svc, key, b"before expiry")
    clock.advance(minutes=59, seconds=59)
    assert state(svc, key) == "Enabled"
    clock.advance(seconds=1)
    svc.ListKeys()  # any call that opens the vault: a read, even about another key
    expired = [r for r in audit_events(svc) if r["eventName"] == "DeleteExpiredKeyMaterial"]
    assert len(expired) == 1
    assert expired[0]["eventType"] == "AwsServiceEvent"
    assert expired[0]["requestParameters"] == {"keyId": key}
    assert expired[0]["responseElements"] == {"keyId": key, "keyMaterialId": first["KeyMaterialId"],
                                              "validTo": "2026-01-01T13:00:00Z", "keyState": "PendingImport"}
    assert expired[0]["resources"] == [{"type": "AWS::KMS::Key", "ARN": first["KeyId"]}]
    meta = svc.DescribeKey(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "PendingImport" and "ValidTo" not in meta
    with pytest.raises(errors.KMSInvalidStateException, match="is pending import"):
        decrypt(svc, blob)
    assert decrypt(svc, encrypt(svc, other, b"unaffected")) == b"unaffected"
    import_(svc, key, material)
    assert decrypt(svc, blob) == b"before expiry"
    assert len([r for r in audit_events(svc) if r["eventName"] == "DeleteExpiredKeyMaterial"]) == 1
    svc.VerifyAuditLog()


def test_expiry_while_pending_deletion_keeps_the_state_and_deletion_still_comes(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    import_(svc, key, os.urandom(32), ValidTo=clock.now + timedelta(days=1))
    svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    clock.advance(days=2)
    assert state(svc, key) == "PendingDeletion"
    assert last(svc, "DeleteExpiredKeyMaterial")["responseElements"]["keyState"] == "PendingDeletion"
    clock.advance(days=6)
    svc.ListKeys()
    with pytest.raises(errors.NotFoundException):
        svc.DescribeKey(KeyId=key)


def test_expiry_and_deletion_due_together_destroy_the_key_once(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    import_(svc, key, os.urandom(32), ValidTo=clock.now + timedelta(days=3))
    svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    clock.advance(days=30)
    svc.ListKeys()
    events = [r["eventName"] for r in audit_events(svc) if r.get("eventType") == "AwsServiceEvent"]
    assert events == ["DeleteKey"]


def test_what_survives_reopening_the_vault(svc: Kms, tmp_path: Path, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    material = os.urandom(32)
    first = import_(svc, key, material, ValidTo=clock.now + timedelta(days=3))
    blob = encrypt(svc, key, b"kept")
    svc.DeleteImportedKeyMaterial(KeyId=key)
    again = Kms(svc.store.path, PassphraseKeySource(lambda: b"pw"), clock=clock,
                caller=Caller(user="alice", uid=1000, pid=1, host="test"))
    assert again.DescribeKey(KeyId=key)["KeyMetadata"]["CurrentKeyMaterialId"] == first["KeyMaterialId"]
    assert import_(again, key, material) == first
    assert decrypt(again, blob) == b"kept"


# -- other key specs -------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "size"), [("HMAC_224", 28), ("HMAC_256", 32), ("HMAC_384", 48), ("HMAC_512", 64)])
def test_hmac_material_is_the_key_of_its_macs(svc: Kms, spec: str, size: int) -> None:
    key = external(svc, spec, "GENERATE_VERIFY_MAC")["KeyId"]
    refused(svc, key, errors.ValidationException, lambda: import_(svc, key, os.urandom(size - 1)))
    material = os.urandom(size)
    import_(svc, key, material, "RSAES_OAEP_SHA_1")
    algorithm = "HMAC_SHA_" + spec[5:]
    mac = svc.GenerateMac(KeyId=key, Message=b"message", MacAlgorithm=algorithm)["Mac"]
    assert mac == hmac.new(material, b"message", getattr(hashlib, "sha" + spec[5:])).digest()
    assert "CurrentKeyMaterialId" not in svc.DescribeKey(KeyId=key)["KeyMetadata"]  # as for HMAC keys made here


def test_an_ecc_private_key_signs_for_its_public_key(svc: Kms) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key = external(svc, "ECC_NIST_P256", "SIGN_VERIFY")["KeyId"]
    import_(svc, key, pkcs8(private))
    public = svc.GetPublicKey(KeyId=key)["PublicKey"]
    assert public == private.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    signature = svc.Sign(KeyId=key, Message=b"release", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    private.public_key().verify(signature, b"release", ec.ECDSA(hashes.SHA256()))
    # The same key in another encoding (SEC 1 "traditional" DER) is the same material; another key is not.
    sec1 = private.private_bytes(ser.Encoding.DER, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption())
    svc.DeleteImportedKeyMaterial(KeyId=key)
    import_(svc, key, sec1, "RSA_AES_KEY_WRAP_SHA_256")
    refused(svc, key, errors.IncorrectKeyMaterialException,
            lambda: import_(svc, key, pkcs8(ec.generate_private_key(ec.SECP256R1()))))


def test_an_rsa_private_key_imports_with_rsa_aes_key_wrap_only(svc: Kms) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = external(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    import_(svc, key, pkcs8(private), "RSA_AES_KEY_WRAP_SHA_256")
    ciphertext = private.public_key().encrypt(b"for the vault", padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    out = io.BytesIO()
    svc.Decrypt(reader=io.BytesIO(ciphertext), writer=out, KeyId=key, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert out.getvalue() == b"for the vault"


@pytest.mark.parametrize(("spec", "material"), [
    ("ECC_NIST_P256", lambda: pkcs8(ec.generate_private_key(ec.SECP384R1()))),  # another curve
    ("ECC_NIST_P256", lambda: os.urandom(32)),  # not a private key at all
    ("ECC_SECG_P256K1", lambda: pkcs8(ec.generate_private_key(ec.SECP256R1()))),
])
def test_asymmetric_material_of_another_kind_is_refused(svc: Kms, spec: str, material: Any) -> None:
    key = external(svc, spec, "SIGN_VERIFY")["KeyId"]
    message = refused(svc, key, errors.ValidationException, lambda: import_(svc, key, material()))
    assert message == f"the key material is not a valid PKCS#8 DER private key of key spec {spec}"


# -- rotation ----------------------------------------------------------------------------
def test_imported_material_does_not_rotate(svc: Kms) -> None:
    meta = external(svc)
    key = meta["KeyId"]
    for call, event in ((lambda: svc.EnableKeyRotation(KeyId=key), "EnableKeyRotation"),
                        (lambda: svc.RotateKeyOnDemand(KeyId=key), "RotateKeyOnDemand")):
        message = refused(svc, key, errors.UnsupportedOperationException, call, event)
        assert message.startswith(f"{meta['Arn']} origin is EXTERNAL which is not valid for this operation.")
    import_(svc, key, os.urandom(32))
    for call, event in ((lambda: svc.EnableKeyRotation(KeyId=key), "EnableKeyRotation"),
                        (lambda: svc.DisableKeyRotation(KeyId=key), "DisableKeyRotation"),
                        (lambda: svc.RotateKeyOnDemand(KeyId=key), "RotateKeyOnDemand"),
                        (lambda: svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=1), "SetMinDecryptVersion")):
        refused(svc, key, errors.UnsupportedOperationException, call, event)
    p = params(svc, key)
    refused(svc, key, errors.UnsupportedOperationException, lambda: svc.ImportKeyMaterial(
        KeyId=key, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrap(p["PublicKey"], OAEP_256, os.urandom(32)),
        ImportType="NEW_KEY_MATERIAL", **NO_EXPIRY))
    assert svc.GetKeyRotationStatus(KeyId=key)["KeyRotationEnabled"] is False


def test_rotations_list_the_import_state(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    assert svc.ListKeyRotations(KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"] == []
    first = import_(svc, key, os.urandom(32), ValidTo=clock.now + timedelta(days=1))
    entry = {"KeyId": key, "KeyMaterialId": first["KeyMaterialId"], "KeyMaterialState": "CURRENT",
             "ImportState": "IMPORTED", "ExpirationModel": "KEY_MATERIAL_EXPIRES",
             "ValidTo": clock.now + timedelta(days=1)}
    assert svc.ListKeyRotations(KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"] == [entry]
    svc.DeleteImportedKeyMaterial(KeyId=key)
    assert svc.ListKeyRotations(KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"] == [
        {"KeyId": key, "KeyMaterialId": first["KeyMaterialId"], "KeyMaterialState": "CURRENT",
         "ImportState": "PENDING_IMPORT"}]


# -- secrets stay out of the log ----------------------------------------------------------
def test_an_imported_material_id_is_no_test_of_a_guess(svc: Kms) -> None:
    """The id of material the user chose is salted per key: no hash of a guess matches it."""
    material = b"\x00" * 31 + b"\x01"  # the kind of material a guess finds
    one, two = external(svc)["KeyId"], external(svc)["KeyId"]
    first, second = import_(svc, one, material)["KeyMaterialId"], import_(svc, two, material)["KeyMaterialId"]
    assert first != second
    for guess in (hashlib.sha256(material).hexdigest(),
                  hashlib.sha256(b"kmscli key material id\x00" + material).hexdigest(),
                  hashlib.sha256(b"kmscli imported key material id\x00" + material).hexdigest()):
        assert guess not in (first, second)
    assert material.hex() not in json.dumps(audit_events(svc))


def test_no_record_holds_the_material_the_token_or_a_wrapping_key(svc: Kms, clock: Clock) -> None:
    key = external(svc)["KeyId"]
    material = os.urandom(32)
    p = params(svc, key, "RSA_AES_KEY_WRAP_SHA_256")
    wrapped = wrap(p["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", material)
    with pytest.raises(errors.InvalidCiphertextException):
        svc.ImportKeyMaterial(KeyId=key, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped[:-8],
                              **NO_EXPIRY)
    svc.ImportKeyMaterial(KeyId=key, ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped,
                          ValidTo=clock.now + timedelta(hours=1))
    clock.advance(hours=2)
    svc.ListKeys()  # the expiry's record too
    params(svc, key)  # a second set of parameters, unused: its wrapping private key is in the vault
    kept = contents(svc.store.path, "pw")[0]["keys"][key]["ImportParameters"]
    private = base64.b64decode(kept["PrivateKey"])
    log = svc.audit_path.read_bytes()
    for secret in (material, p["ImportToken"], wrapped, private, bytes.fromhex(kept["TokenId"])):
        for form in (secret, base64.b64encode(secret), secret.hex().encode(), secret.hex().upper().encode()):
            assert form not in log
    for name in ("DeleteExpiredKeyMaterial", "ImportKeyMaterial", "GetParametersForImport"):
        assert last(svc, name)
