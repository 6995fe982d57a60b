"""The service layer of issue 16: asymmetric, post-quantum and HMAC keys through `kmscli.service.Kms`.

``tests/unit/test_asymmetric.py`` checks the cryptography and AWS's wordings
(``kmscli/crypto/asymmetric.py``) against tools nobody here wrote; this file
checks what the service adds around them: key states, key usage, rotation and
alias rules, the key policy's condition keys, the audit record of every new
operation (and that no secret ever reaches it), data key pairs, RSA encryption
and re-encryption, envelopes that name a non-symmetric key, and what survives
reopening the vault.

Keys are RSA_2048 wherever the size does not matter; the one RSA_4096 key pair
made here (GenerateDataKeyPair, module-scoped) also lends its private key to
the RSA_4096 KMS key of the plaintext-limit test, and the RSA_3072 pair to the
RSA_3072 one, so no slow key is made twice.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, padding

from kmscli import errors
from kmscli.crypto import asymmetric as A
from kmscli.crypto import stream
from kmscli.service import Caller, Kms
from kmscli.vault.store import PassphraseKeySource
from tests.unit.conftest import CHEAP, Clock, audit_events
from tests.vault_contents import contents

ROOT_ALL = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}
#: An encryption context of exactly the largest encoded size kmscli accepts (8192 bytes): stricter than the
#: 6 KiB one of tests/aws/test_service_shapes.py. 7 pairs of 6 + 1017 bytes, one of 6 + 1023, and the count.
CONTEXT_8K = {**{f"k{i}": "v" * 1017 for i in range(7)}, "k7": "w" * 1023}
#: The fields a symmetric key's vault record has always had (docs/vault.md): issue 16 adds none to it.
SYMMETRIC_RECORD_FIELDS = {"KeyId", "Region", "CreationDate", "Description", "KeyState", "DeletionDate",
                           "PendingDeletionWindowInDays", "Tags", "Policy", "Rotation", "Materials"}


# -- helpers ---------------------------------------------------------------------
def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [ROOT_ALL, *statements]})


def deny(actions: str | list[str], operator: str, key: str, value: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Principal": "*", "Action": actions, "Resource": "*",
            "Condition": {operator: {key: value}}}


def make(svc: Kms, spec: str = "SYMMETRIC_DEFAULT", usage: str | None = None, **kw: Any) -> dict[str, Any]:
    """A new key's KeyMetadata."""
    return svc.CreateKey(KeySpec=spec, KeyUsage=usage, **kw)["KeyMetadata"]


def encrypt(svc: Kms, key: str, data: bytes, context: dict[str, str] | None = None,
            algorithm: str | None = None) -> bytes:
    out = io.BytesIO()
    svc.Encrypt(KeyId=key, reader=io.BytesIO(data), writer=out, EncryptionContext=context,
                EncryptionAlgorithm=algorithm)
    return out.getvalue()


def decrypt(svc: Kms, blob: bytes, context: dict[str, str] | None = None, key: str | None = None,
            algorithm: str | None = None) -> bytes:
    out = io.BytesIO()
    svc.Decrypt(reader=io.BytesIO(blob), writer=out, EncryptionContext=context, KeyId=key,
                EncryptionAlgorithm=algorithm)
    return out.getvalue()


def reencrypt(svc: Kms, blob: bytes, dst: str, **kw: Any) -> tuple[bytes, dict[str, Any]]:
    out = io.BytesIO()
    resp = svc.ReEncrypt(reader=io.BytesIO(blob), writer=out, DestinationKeyId=dst, **kw)
    return out.getvalue(), resp


def spki(private: Any) -> bytes:
    return bytes(private.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo))


def peer_p256() -> bytes:
    """A peer's P-256 public key (DER SubjectPublicKeyInfo), made outside kmscli."""
    return spki(ec.generate_private_key(ec.SECP256R1()))


def log_lines(svc: Kms) -> int:
    return len(svc.audit_path.read_text().splitlines())


def one_record(svc: Kms, call: Callable[[], Any], error: type[errors.KmsError] | None = None
               ) -> tuple[Any, dict[str, Any]]:
    """Run ``call`` (which must raise ``error`` when given); its result and the one record it appended."""
    before = log_lines(svc)
    result: Any = None
    if error is None:
        result = call()
    else:
        with pytest.raises(error):
            call()
    new = audit_events(svc)[before:]
    assert len(new) == 1, [e["eventName"] for e in new]
    return result, new[0]


def stored(svc: Kms) -> dict[str, dict[str, Any]]:
    """The vault's keys as stored, read through the service's own accessors."""
    vault, _ = contents(svc.store.path, keys=svc.keys)
    return vault["keys"]


def secret_forms(secret: bytes) -> list[bytes]:
    """The ways a secret could be spelled in a JSON log: base64 (both alphabets, unpadded too) and hex."""
    b64 = base64.b64encode(secret)
    return [b64, b64.rstrip(b"="), base64.urlsafe_b64encode(secret).rstrip(b"="), secret.hex().encode(),
            secret.hex().upper().encode()]


def raw_log(svc: Kms) -> bytes:
    """Every byte of every file of the audit log (a rolled-over log has several)."""
    return b"".join(p.read_bytes() for p in sorted(svc.audit_path.parent.glob("audit*")) if p.is_file())


# ================================================================================
# 1. Key states
# ================================================================================
def _state_table(svc: Kms) -> tuple[list[str], dict[str, Callable[[], Any]]]:
    """Keys of each kind, and each new operation on them as a call that succeeds while they are Enabled."""
    rsa_sign = make(svc, "RSA_2048", "SIGN_VERIFY")["KeyId"]
    rsa_enc = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    hmac_key = make(svc, "HMAC_256", "GENERATE_VERIFY_MAC")["KeyId"]
    ecdh = make(svc, "ECC_NIST_P256", "KEY_AGREEMENT")["KeyId"]
    message = os.urandom(40)
    signature = svc.Sign(KeyId=rsa_sign, Message=message, SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    mac = svc.GenerateMac(KeyId=hmac_key, Message=message, MacAlgorithm="HMAC_SHA_256")["Mac"]
    ciphertext = encrypt(svc, rsa_enc, message, algorithm="RSAES_OAEP_SHA_256")
    peer = peer_p256()
    ops: dict[str, Callable[[], Any]] = {
        "Sign": lambda: svc.Sign(KeyId=rsa_sign, Message=message, SigningAlgorithm="RSASSA_PSS_SHA_256"),
        "Verify": lambda: svc.Verify(KeyId=rsa_sign, Message=message, Signature=signature,
                                     SigningAlgorithm="RSASSA_PSS_SHA_256"),
        "GetPublicKey": lambda: svc.GetPublicKey(KeyId=rsa_sign),
        "GenerateMac": lambda: svc.GenerateMac(KeyId=hmac_key, Message=message, MacAlgorithm="HMAC_SHA_256"),
        "VerifyMac": lambda: svc.VerifyMac(KeyId=hmac_key, Message=message, MacAlgorithm="HMAC_SHA_256", Mac=mac),
        "DeriveSharedSecret": lambda: svc.DeriveSharedSecret(KeyId=ecdh, KeyAgreementAlgorithm="ECDH",
                                                             PublicKey=peer),
        "Encrypt": lambda: encrypt(svc, rsa_enc, message, algorithm="RSAES_OAEP_SHA_256"),
        "Decrypt": lambda: decrypt(svc, ciphertext, key=rsa_enc, algorithm="RSAES_OAEP_SHA_256"),
    }
    return [rsa_sign, rsa_enc, hmac_key, ecdh], ops


def _assert_all_refused(svc: Kms, ops: dict[str, Callable[[], Any]], error: type[errors.KmsError],
                        state_words: str) -> None:
    for name, op in ops.items():
        _, record = one_record(svc, op, error)
        assert (record["eventName"], record["errorCode"]) == (name, error.name), name
        assert state_words in record["errorMessage"] and ":key/" in record["errorMessage"], (name, record)
        assert record["responseElements"] is None


def _assert_all_work(ops: dict[str, Callable[[], Any]]) -> None:
    for name, op in ops.items():
        out = op()
        assert out, name  # a response (or the plaintext / ciphertext bytes): each call went through


def test_disabled_keys_refuse_every_new_operation_and_work_again_once_enabled(svc: Kms) -> None:
    keys, ops = _state_table(svc)
    _assert_all_work(ops)
    for key in keys:
        svc.DisableKey(KeyId=key)
    _assert_all_refused(svc, ops, errors.DisabledException, "is disabled")
    for key in keys:
        svc.EnableKey(KeyId=key)
    _assert_all_work(ops)
    svc.VerifyAuditLog()


def test_keys_pending_deletion_refuse_every_new_operation(svc: Kms) -> None:
    keys, ops = _state_table(svc)
    for key in keys:
        svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)
    _assert_all_refused(svc, ops, errors.KMSInvalidStateException, "is pending deletion")
    for key in keys:
        svc.CancelKeyDeletion(KeyId=key)  # back Disabled, as in AWS
    _assert_all_refused(svc, ops, errors.DisabledException, "is disabled")
    for key in keys:
        svc.EnableKey(KeyId=key)
    _assert_all_work(ops)


def test_a_refused_rsa_encrypt_or_decrypt_writes_nothing(svc: Kms) -> None:
    key = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    blob = encrypt(svc, key, b"m", algorithm="RSAES_OAEP_SHA_1")
    svc.DisableKey(KeyId=key)
    for call in (lambda out: svc.Encrypt(KeyId=key, reader=io.BytesIO(b"m"), writer=out,
                                         EncryptionAlgorithm="RSAES_OAEP_SHA_1"),
                 lambda out: svc.Decrypt(reader=io.BytesIO(blob), writer=out, KeyId=key,
                                         EncryptionAlgorithm="RSAES_OAEP_SHA_1")):
        out = io.BytesIO()
        with pytest.raises(errors.DisabledException):
            call(out)
        assert out.getvalue() == b""


# ================================================================================
# 2. Key usage
# ================================================================================
@pytest.fixture
def kinds(svc: Kms) -> dict[str, dict[str, Any]]:
    """One key of each kind the usage rules tell apart, by name: its KeyMetadata."""
    return {
        "sym": make(svc),
        "rsa_enc": make(svc, "RSA_2048", "ENCRYPT_DECRYPT"),
        "rsa_sign": make(svc, "RSA_2048", "SIGN_VERIFY"),
        "hmac": make(svc, "HMAC_256", "GENERATE_VERIFY_MAC"),
        "p256_sign": make(svc, "ECC_NIST_P256", "SIGN_VERIFY"),
        "ecdh": make(svc, "ECC_NIST_P256", "KEY_AGREEMENT"),
        "mldsa": make(svc, "ML_DSA_44", "SIGN_VERIFY"),
    }


def _usage_cases(svc: Kms, k: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, Callable[[io.BytesIO], Any]]]:
    """(case, the key that cannot do it, the event recorded, the call given a writer)."""
    msg = b"a message"
    sym_blob = encrypt(svc, k["sym"]["KeyId"], msg)
    rsa_blob = encrypt(svc, k["rsa_enc"]["KeyId"], msg, algorithm="RSAES_OAEP_SHA_256")
    peer = peer_p256()

    def key(name: str) -> str:
        return str(k[name]["KeyId"])

    return [
        ("Sign with an RSA ENCRYPT_DECRYPT key", "rsa_enc", "Sign",
         lambda w: svc.Sign(KeyId=key("rsa_enc"), Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("Verify with an RSA ENCRYPT_DECRYPT key", "rsa_enc", "Verify",
         lambda w: svc.Verify(KeyId=key("rsa_enc"), Message=msg, Signature=b"\x01" * 256,
                              SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("Sign with an HMAC key", "hmac", "Sign",
         lambda w: svc.Sign(KeyId=key("hmac"), Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("Sign with a KEY_AGREEMENT key", "ecdh", "Sign",
         lambda w: svc.Sign(KeyId=key("ecdh"), Message=msg, SigningAlgorithm="ECDSA_SHA_256")),
        ("Sign with a symmetric key", "sym", "Sign",
         lambda w: svc.Sign(KeyId=key("sym"), Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("Encrypt (SYMMETRIC_DEFAULT) with an HMAC key", "hmac", "Encrypt",
         lambda w: svc.Encrypt(KeyId=key("hmac"), reader=io.BytesIO(msg), writer=w)),
        ("Encrypt (SYMMETRIC_DEFAULT) with an RSA ENCRYPT_DECRYPT key", "rsa_enc", "Encrypt",
         lambda w: svc.Encrypt(KeyId=key("rsa_enc"), reader=io.BytesIO(msg), writer=w)),
        ("Encrypt (SYMMETRIC_DEFAULT) with an RSA SIGN_VERIFY key", "rsa_sign", "Encrypt",
         lambda w: svc.Encrypt(KeyId=key("rsa_sign"), reader=io.BytesIO(msg), writer=w)),
        ("Encrypt (RSAES_OAEP_SHA_256) with an RSA SIGN_VERIFY key", "rsa_sign", "Encrypt",
         lambda w: svc.Encrypt(KeyId=key("rsa_sign"), reader=io.BytesIO(msg), writer=w,
                               EncryptionAlgorithm="RSAES_OAEP_SHA_256")),
        ("Decrypt (RSAES_OAEP_SHA_256) with an RSA SIGN_VERIFY key", "rsa_sign", "Decrypt",
         lambda w: svc.Decrypt(reader=io.BytesIO(rsa_blob), writer=w, KeyId=key("rsa_sign"),
                               EncryptionAlgorithm="RSAES_OAEP_SHA_256")),
        ("GenerateDataKey under an RSA key", "rsa_enc", "GenerateDataKey",
         lambda w: svc.GenerateDataKey(KeyId=key("rsa_enc"), KeySpec="AES_256")),
        ("GenerateDataKeyWithoutPlaintext under an HMAC key", "hmac", "GenerateDataKeyWithoutPlaintext",
         lambda w: svc.GenerateDataKeyWithoutPlaintext(KeyId=key("hmac"), NumberOfBytes=32)),
        ("GenerateDataKeyPair under an RSA key", "rsa_enc", "GenerateDataKeyPair",
         lambda w: svc.GenerateDataKeyPair(KeyId=key("rsa_enc"), KeyPairSpec="ECC_NIST_P256")),
        ("GenerateDataKeyPairWithoutPlaintext under a KEY_AGREEMENT key", "ecdh",
         "GenerateDataKeyPairWithoutPlaintext",
         lambda w: svc.GenerateDataKeyPairWithoutPlaintext(KeyId=key("ecdh"), KeyPairSpec="ECC_NIST_P256")),
        ("DeriveSharedSecret with a SIGN_VERIFY P-256 key", "p256_sign", "DeriveSharedSecret",
         lambda w: svc.DeriveSharedSecret(KeyId=key("p256_sign"), KeyAgreementAlgorithm="ECDH", PublicKey=peer)),
        ("DeriveSharedSecret with an RSA key", "rsa_enc", "DeriveSharedSecret",
         lambda w: svc.DeriveSharedSecret(KeyId=key("rsa_enc"), KeyAgreementAlgorithm="ECDH", PublicKey=peer)),
        ("GenerateMac with a symmetric key", "sym", "GenerateMac",
         lambda w: svc.GenerateMac(KeyId=key("sym"), Message=msg, MacAlgorithm="HMAC_SHA_256")),
        ("GenerateMac with an ML-DSA key", "mldsa", "GenerateMac",
         lambda w: svc.GenerateMac(KeyId=key("mldsa"), Message=msg, MacAlgorithm="HMAC_SHA_256")),
        ("VerifyMac with an RSA key", "rsa_sign", "VerifyMac",
         lambda w: svc.VerifyMac(KeyId=key("rsa_sign"), Message=msg, MacAlgorithm="HMAC_SHA_256", Mac=b"\0" * 32)),
        ("ReEncrypt to an HMAC key", "hmac", "ReEncrypt",
         lambda w: svc.ReEncrypt(reader=io.BytesIO(sym_blob), writer=w, DestinationKeyId=key("hmac"))),
        ("ReEncrypt (SYMMETRIC_DEFAULT) to an RSA key", "rsa_enc", "ReEncrypt",
         lambda w: svc.ReEncrypt(reader=io.BytesIO(rsa_blob), writer=w, DestinationKeyId=key("rsa_enc"),
                                 SourceKeyId=key("rsa_enc"), SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256")),
        ("ReEncrypt (RSAES_OAEP_SHA_1) to an RSA SIGN_VERIFY key", "rsa_sign", "ReEncrypt",
         lambda w: svc.ReEncrypt(reader=io.BytesIO(sym_blob), writer=w, DestinationKeyId=key("rsa_sign"),
                                 DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")),
    ]


def test_every_operation_on_a_key_whose_usage_cannot_do_it_is_invalid_key_usage(
        svc: Kms, kinds: dict[str, dict[str, Any]]) -> None:
    cases = _usage_cases(svc, kinds)
    for case, culprit, event, call in cases:
        out = io.BytesIO()
        _, record = one_record(svc, lambda call=call, out=out: call(out), errors.InvalidKeyUsageException)
        arn = kinds[culprit]["Arn"]
        assert record["eventName"] == event, case
        assert record["errorCode"] == "InvalidKeyUsageException", case
        # AWS's words start with the key's ARN: "<arn> key usage is X which is not valid for Op." (or its spec).
        assert record["errorMessage"].startswith(arn + " key "), (case, record["errorMessage"])
        assert record["responseElements"] is None, case
        assert out.getvalue() == b"", case
    svc.VerifyAuditLog()


def test_invalid_key_usage_exception_names_the_key_arn_and_its_usage(svc: Kms,
                                                                     kinds: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(errors.InvalidKeyUsageException) as e:
        svc.Sign(KeyId=kinds["rsa_enc"]["KeyId"], Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")
    assert e.value.aws_message == (f"{kinds['rsa_enc']['Arn']} key usage is ENCRYPT_DECRYPT which is not valid "
                                   "for Sign.")
    assert e.value.exit_code == errors.EXIT_STATE
    with pytest.raises(errors.InvalidKeyUsageException) as e:
        svc.Encrypt(KeyId=kinds["hmac"]["KeyId"], reader=io.BytesIO(b"m"), writer=io.BytesIO())
    assert e.value.aws_message == (f"{kinds['hmac']['Arn']} key usage is GENERATE_VERIFY_MAC which is not valid "
                                   "for Encrypt.")


def test_an_rsa_algorithm_on_a_symmetric_key_is_invalid_key_usage(svc: Kms,
                                                                  kinds: dict[str, dict[str, Any]]) -> None:
    out = io.BytesIO()
    with pytest.raises(errors.InvalidKeyUsageException, match="SYMMETRIC_DEFAULT"):
        svc.Encrypt(KeyId=kinds["sym"]["KeyId"], reader=io.BytesIO(b"m"), writer=out,
                    EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert out.getvalue() == b""


@pytest.mark.parametrize("kind", ["hmac", "sym"])
def test_get_public_key_of_a_key_without_one_is_unsupported(svc: Kms, kinds: dict[str, dict[str, Any]],
                                                            kind: str) -> None:
    _, record = one_record(svc, lambda: svc.GetPublicKey(KeyId=kinds[kind]["KeyId"]),
                           errors.UnsupportedOperationException)
    assert (record["eventName"], record["errorCode"]) == ("GetPublicKey", "UnsupportedOperationException")
    assert record["responseElements"] is None


def test_get_public_key_answers_what_the_key_may_do(svc: Kms, kinds: dict[str, dict[str, Any]]) -> None:
    for name, member in (("rsa_enc", "EncryptionAlgorithms"), ("rsa_sign", "SigningAlgorithms"),
                         ("ecdh", "KeyAgreementAlgorithms"), ("mldsa", "SigningAlgorithms")):
        meta = kinds[name]
        out = svc.GetPublicKey(KeyId=meta["KeyId"])
        assert out["KeyId"] == meta["Arn"]
        assert (out["KeySpec"], out["KeyUsage"]) == (meta["KeySpec"], meta["KeyUsage"])
        assert out[member] == meta[member]
        assert ser.load_der_public_key(out["PublicKey"]) is not None


# ================================================================================
# 3. Rotation
# ================================================================================
NON_ROTATING = [("RSA_2048", "SIGN_VERIFY"), ("RSA_2048", "ENCRYPT_DECRYPT"), ("ECC_NIST_P256", "SIGN_VERIFY"),
                ("ML_DSA_44", "SIGN_VERIFY"), ("HMAC_256", "GENERATE_VERIFY_MAC")]


def _rotation_ops(svc: Kms, key: str) -> dict[str, Callable[[], Any]]:
    return {
        "EnableKeyRotation": lambda: svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=90),
        "DisableKeyRotation": lambda: svc.DisableKeyRotation(KeyId=key),
        "GetKeyRotationStatus": lambda: svc.GetKeyRotationStatus(KeyId=key),
        "RotateKeyOnDemand": lambda: svc.RotateKeyOnDemand(KeyId=key),
        "ListKeyRotations": lambda: svc.ListKeyRotations(KeyId=key),
        "SetMinDecryptVersion": lambda: svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=1),
    }


@pytest.mark.parametrize(("spec", "usage"), NON_ROTATING)
def test_rotation_is_unsupported_for_asymmetric_and_hmac_keys(svc: Kms, clock: Clock, spec: str,
                                                              usage: str) -> None:
    meta = make(svc, spec, usage)
    key = meta["KeyId"]
    before = stored(svc)[key]
    for name, op in _rotation_ops(svc, key).items():
        _, record = one_record(svc, op, errors.UnsupportedOperationException)
        assert (record["eventName"], record["errorCode"]) == (name, "UnsupportedOperationException"), name
        assert meta["Arn"] in record["errorMessage"] and spec in record["errorMessage"], name
    details = svc.DescribeKeyDetails(KeyId=key)
    assert "Rotation" not in details
    assert "CurrentKeyMaterialId" not in details["KeyMetadata"]
    # Nothing changed, and no time makes it rotate.
    clock.advance(days=3000)
    svc.ListKeys()
    after = stored(svc)[key]
    assert after == before
    assert len(after["Materials"]) == 1 and after["Rotation"]["Enabled"] is False


def test_symmetric_keys_still_rotate(svc: Kms, clock: Clock) -> None:
    key = make(svc)["KeyId"]
    blob = encrypt(svc, key, b"old material")
    svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=90)
    status = svc.GetKeyRotationStatus(KeyId=key)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 90
    assert svc.DescribeKeyDetails(KeyId=key)["Rotation"]["Enabled"] is True
    svc.RotateKeyOnDemand(KeyId=key)
    assert [r["RotationType"] for r in svc.ListKeyRotations(KeyId=key)["Rotations"]] == ["ON_DEMAND"]
    clock.advance(days=90)
    assert [r["RotationType"] for r in svc.ListKeyRotations(KeyId=key)["Rotations"]] == ["ON_DEMAND", "AUTOMATIC"]
    svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=1)
    svc.DisableKeyRotation(KeyId=key)
    assert svc.GetKeyRotationStatus(KeyId=key)["KeyRotationEnabled"] is False
    assert decrypt(svc, blob) == b"old material"


# ================================================================================
# 4. UpdateAlias: only to a key of the same type and usage
# ================================================================================
def _target(svc: Kms, alias: str) -> str:
    return next(a["TargetKeyId"] for a in svc.ListAliases()["Aliases"] if a["AliasName"] == alias)


@pytest.mark.parametrize(("old", "new", "allowed"), [
    pytest.param(("SYMMETRIC_DEFAULT", None), ("SYMMETRIC_DEFAULT", None), True, id="symmetric-to-symmetric"),
    pytest.param(("SYMMETRIC_DEFAULT", None), ("RSA_2048", "ENCRYPT_DECRYPT"), False, id="symmetric-to-rsa"),
    pytest.param(("SYMMETRIC_DEFAULT", None), ("HMAC_256", "GENERATE_VERIFY_MAC"), False, id="symmetric-to-hmac"),
    pytest.param(("RSA_2048", "SIGN_VERIFY"), ("RSA_2048", "ENCRYPT_DECRYPT"), False, id="rsa-sign-to-rsa-enc"),
    pytest.param(("RSA_2048", "SIGN_VERIFY"), ("ECC_NIST_P256", "SIGN_VERIFY"), True, id="rsa-sign-to-ecc-sign"),
    pytest.param(("ECC_NIST_P256", "SIGN_VERIFY"), ("ML_DSA_44", "SIGN_VERIFY"), True, id="ecc-sign-to-mldsa"),
    pytest.param(("ECC_NIST_P256", "SIGN_VERIFY"), ("ECC_NIST_P256", "KEY_AGREEMENT"), False,
                 id="ecc-sign-to-ecdh"),
    pytest.param(("RSA_2048", "ENCRYPT_DECRYPT"), ("SYMMETRIC_DEFAULT", None), False, id="rsa-enc-to-symmetric"),
    pytest.param(("HMAC_256", "GENERATE_VERIFY_MAC"), ("HMAC_512", "GENERATE_VERIFY_MAC"), True,
                 id="hmac256-to-hmac512"),
    pytest.param(("HMAC_256", "GENERATE_VERIFY_MAC"), ("SYMMETRIC_DEFAULT", None), False, id="hmac-to-symmetric"),
])
def test_update_alias_moves_only_to_a_key_of_the_same_type_and_usage(
        svc: Kms, old: tuple[str, str | None], new: tuple[str, str | None], allowed: bool) -> None:
    first = make(svc, *old, AliasName="alias/app")["KeyId"]
    second = make(svc, *new)
    if allowed:
        svc.UpdateAlias(AliasName="alias/app", TargetKeyId=second["KeyId"])
        assert _target(svc, "alias/app") == second["KeyId"]
        return
    _, record = one_record(svc, lambda: svc.UpdateAlias(AliasName="alias/app", TargetKeyId=second["KeyId"]),
                           errors.ValidationException)
    assert (record["eventName"], record["errorCode"]) == ("UpdateAlias", "ValidationException")
    assert second["Arn"] in record["errorMessage"]
    assert _target(svc, "alias/app") == first


# ================================================================================
# 5. Key policies: the key's spec and usage, and each operation's condition keys
# ================================================================================
def test_the_keys_spec_and_usage_are_in_the_policy_context(svc: Kms) -> None:
    only_rsa_2048 = policy(deny(["kms:Sign", "kms:GetPublicKey"], "StringEquals", "kms:KeySpec", "RSA_2048"))
    rsa = make(svc, "RSA_2048", "SIGN_VERIFY", Policy=only_rsa_2048)
    ecc = make(svc, "ECC_NIST_P256", "SIGN_VERIFY", Policy=only_rsa_2048)
    _, record = one_record(svc, lambda: svc.Sign(KeyId=rsa["KeyId"], Message=b"m",
                                                 SigningAlgorithm="RSASSA_PSS_SHA_256"),
                           errors.AccessDeniedException)
    assert (record["eventName"], record["errorCode"]) == ("Sign", "AccessDeniedException")
    assert "kms:Sign" in record["errorMessage"] and rsa["Arn"] in record["errorMessage"]
    with pytest.raises(errors.AccessDeniedException, match="kms:GetPublicKey"):
        svc.GetPublicKey(KeyId=rsa["KeyId"])
    svc.Sign(KeyId=ecc["KeyId"], Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    svc.GetPublicKey(KeyId=ecc["KeyId"])

    not_for_signing = policy(deny("kms:GetPublicKey", "StringEquals", "kms:KeyUsage", "SIGN_VERIFY"))
    signer = make(svc, "RSA_2048", "SIGN_VERIFY", Policy=not_for_signing)["KeyId"]
    encrypter = make(svc, "RSA_2048", "ENCRYPT_DECRYPT", Policy=not_for_signing)["KeyId"]
    with pytest.raises(errors.AccessDeniedException):
        svc.GetPublicKey(KeyId=signer)
    svc.GetPublicKey(KeyId=encrypter)

    # A symmetric key's context says what it is too.
    sym = make(svc, Policy=policy(deny("kms:Encrypt", "StringEquals", "kms:KeySpec", "SYMMETRIC_DEFAULT")))
    with pytest.raises(errors.AccessDeniedException):
        encrypt(svc, sym["KeyId"], b"m")
    sym2 = make(svc, Policy=policy(deny("kms:Encrypt", "StringNotEquals", "kms:KeyUsage", "ENCRYPT_DECRYPT")))
    encrypt(svc, sym2["KeyId"], b"m")


def test_signing_algorithm_and_message_type_conditions(svc: Kms) -> None:
    key = make(svc, "RSA_2048", "SIGN_VERIFY")["KeyId"]
    msg = b"release.tar.gz"
    digest = hashes.Hash(hashes.SHA256())
    digest.update(msg)
    d = digest.finalize()
    pkcs1 = svc.Sign(KeyId=key, Message=msg, SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")["Signature"]
    pss_digest = svc.Sign(KeyId=key, Message=d, MessageType="DIGEST",
                          SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    pss_raw = svc.Sign(KeyId=key, Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]

    svc.PutKeyPolicy(KeyId=key, Policy=policy(
        deny(["kms:Sign", "kms:Verify"], "StringEquals", "kms:SigningAlgorithm", "RSASSA_PKCS1_V1_5_SHA_256")))
    for op in ("Sign", "Verify"):
        with pytest.raises(errors.AccessDeniedException, match=f"kms:{op}"):
            if op == "Sign":
                svc.Sign(KeyId=key, Message=msg, SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
            else:
                svc.Verify(KeyId=key, Message=msg, Signature=pkcs1, SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
    svc.Verify(KeyId=key, Message=msg, Signature=pss_raw, SigningAlgorithm="RSASSA_PSS_SHA_256")

    svc.PutKeyPolicy(KeyId=key, Policy=policy(
        deny(["kms:Sign", "kms:Verify"], "StringEquals", "kms:MessageType", "DIGEST")))
    with pytest.raises(errors.AccessDeniedException, match="kms:Sign"):
        svc.Sign(KeyId=key, Message=d, MessageType="DIGEST", SigningAlgorithm="RSASSA_PSS_SHA_256")
    with pytest.raises(errors.AccessDeniedException, match="kms:Verify"):
        svc.Verify(KeyId=key, Message=d, MessageType="DIGEST", Signature=pss_digest,
                   SigningAlgorithm="RSASSA_PSS_SHA_256")
    # A digest signature is a signature of the message: RAW verifies it, and RAW is not denied.
    assert svc.Verify(KeyId=key, Message=msg, Signature=pss_digest,
                      SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"] is True

    # An omitted MessageType is RAW in the context, as in AWS.
    svc.PutKeyPolicy(KeyId=key, Policy=policy(
        deny(["kms:Sign", "kms:Verify"], "StringEquals", "kms:MessageType", "RAW")))
    with pytest.raises(errors.AccessDeniedException):
        svc.Sign(KeyId=key, Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_256")
    with pytest.raises(errors.AccessDeniedException):
        svc.Verify(KeyId=key, Message=msg, Signature=pss_raw, SigningAlgorithm="RSASSA_PSS_SHA_256")
    svc.Sign(KeyId=key, Message=d, MessageType="DIGEST", SigningAlgorithm="RSASSA_PSS_SHA_256")


def test_mac_algorithm_condition(svc: Kms) -> None:
    only_512 = policy(deny(["kms:GenerateMac", "kms:VerifyMac"], "StringNotEquals", "kms:MacAlgorithm",
                           "HMAC_SHA_512"))
    k512 = make(svc, "HMAC_512", "GENERATE_VERIFY_MAC", Policy=only_512)["KeyId"]
    k256 = make(svc, "HMAC_256", "GENERATE_VERIFY_MAC", Policy=only_512)["KeyId"]
    mac = svc.GenerateMac(KeyId=k512, Message=b"m", MacAlgorithm="HMAC_SHA_512")["Mac"]
    assert svc.VerifyMac(KeyId=k512, Message=b"m", MacAlgorithm="HMAC_SHA_512", Mac=mac)["MacValid"] is True
    with pytest.raises(errors.AccessDeniedException, match="kms:GenerateMac"):
        svc.GenerateMac(KeyId=k256, Message=b"m", MacAlgorithm="HMAC_SHA_256")
    with pytest.raises(errors.AccessDeniedException, match="kms:VerifyMac"):
        svc.VerifyMac(KeyId=k256, Message=b"m", MacAlgorithm="HMAC_SHA_256", Mac=b"\0" * 32)


def test_encryption_algorithm_condition_for_rsa_keys(svc: Kms) -> None:
    key = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    sha1 = encrypt(svc, key, b"m", algorithm="RSAES_OAEP_SHA_1")
    svc.PutKeyPolicy(KeyId=key, Policy=policy(
        deny(["kms:Encrypt", "kms:Decrypt"], "StringEquals", "kms:EncryptionAlgorithm", "RSAES_OAEP_SHA_1")))
    with pytest.raises(errors.AccessDeniedException, match="kms:Encrypt"):
        encrypt(svc, key, b"m", algorithm="RSAES_OAEP_SHA_1")
    with pytest.raises(errors.AccessDeniedException, match="kms:Decrypt"):
        decrypt(svc, sha1, key=key, algorithm="RSAES_OAEP_SHA_1")
    sha256 = encrypt(svc, key, b"m", algorithm="RSAES_OAEP_SHA_256")
    assert decrypt(svc, sha256, key=key, algorithm="RSAES_OAEP_SHA_256") == b"m"
    # ReEncrypt checks each side's algorithm.
    sym = make(svc)["KeyId"]
    svc.PutKeyPolicy(KeyId=key, Policy=policy(
        deny("kms:ReEncryptFrom", "StringEquals", "kms:EncryptionAlgorithm", "RSAES_OAEP_SHA_256"),
        deny("kms:ReEncryptTo", "StringEquals", "kms:EncryptionAlgorithm", "RSAES_OAEP_SHA_1")))
    with pytest.raises(errors.AccessDeniedException, match="kms:ReEncryptFrom"):
        reencrypt(svc, sha256, sym, SourceKeyId=key, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    sym_blob = encrypt(svc, sym, b"m")
    with pytest.raises(errors.AccessDeniedException, match="kms:ReEncryptTo"):
        reencrypt(svc, sym_blob, key, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    back, _ = reencrypt(svc, sym_blob, key, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert decrypt(svc, back, key=key, algorithm="RSAES_OAEP_SHA_256") == b"m"


SYMMETRIC_ACTIONS = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext",
                     "kms:GenerateDataKeyPair", "kms:GenerateDataKeyPairWithoutPlaintext", "kms:ReEncryptFrom",
                     "kms:ReEncryptTo"]


def _symmetric_calls(svc: Kms, key: str, blob: bytes) -> dict[str, Callable[[], Any]]:
    return {
        "Encrypt": lambda: encrypt(svc, key, b"m"),
        "Decrypt": lambda: decrypt(svc, blob),
        "GenerateDataKey": lambda: svc.GenerateDataKey(KeyId=key, KeySpec="AES_256"),
        "GenerateDataKeyWithoutPlaintext": lambda: svc.GenerateDataKeyWithoutPlaintext(KeyId=key, NumberOfBytes=16),
        "GenerateDataKeyPair": lambda: svc.GenerateDataKeyPair(KeyId=key, KeyPairSpec="ECC_NIST_P256"),
        "GenerateDataKeyPairWithoutPlaintext":
            lambda: svc.GenerateDataKeyPairWithoutPlaintext(KeyId=key, KeyPairSpec="ECC_NIST_P256"),
        "ReEncrypt": lambda: reencrypt(svc, blob, key),
    }


def test_symmetric_operations_send_symmetric_default_as_the_encryption_algorithm(svc: Kms) -> None:
    key = make(svc)["KeyId"]
    blob = encrypt(svc, key, b"m")
    # StringNotEquals is true for a missing key: these pass only if the context holds SYMMETRIC_DEFAULT.
    svc.PutKeyPolicy(KeyId=key, Policy=policy(
        deny(SYMMETRIC_ACTIONS, "StringNotEquals", "kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT")))
    for name, call in _symmetric_calls(svc, key, blob).items():
        assert call(), name
    svc.PutKeyPolicy(KeyId=key, Policy=policy(
        deny(SYMMETRIC_ACTIONS, "StringEquals", "kms:EncryptionAlgorithm", "SYMMETRIC_DEFAULT")))
    for name, call in _symmetric_calls(svc, key, blob).items():
        _, record = one_record(svc, call, errors.AccessDeniedException)
        assert (record["eventName"], record["errorCode"]) == (name, "AccessDeniedException"), name


def test_key_agreement_algorithm_condition(svc: Kms) -> None:
    peer = peer_p256()
    allowed = make(svc, "ECC_NIST_P256", "KEY_AGREEMENT", Policy=policy(
        deny("kms:DeriveSharedSecret", "StringNotEquals", "kms:KeyAgreementAlgorithm", "ECDH")))["KeyId"]
    assert len(svc.DeriveSharedSecret(KeyId=allowed, KeyAgreementAlgorithm="ECDH",
                                      PublicKey=peer)["SharedSecret"]) == 32
    denied = make(svc, "ECC_NIST_P256", "KEY_AGREEMENT", Policy=policy(
        deny("kms:DeriveSharedSecret", "StringEquals", "kms:KeyAgreementAlgorithm", "ECDH")))["KeyId"]
    with pytest.raises(errors.AccessDeniedException, match="kms:DeriveSharedSecret"):
        svc.DeriveSharedSecret(KeyId=denied, KeyAgreementAlgorithm="ECDH", PublicKey=peer)


def test_data_key_pair_spec_condition(svc: Kms) -> None:
    key = make(svc, Policy=policy(
        deny(["kms:GenerateDataKeyPair", "kms:GenerateDataKeyPairWithoutPlaintext"], "StringEquals",
             "kms:DataKeyPairSpec", "RSA_2048")))["KeyId"]
    for op in (svc.GenerateDataKeyPair, svc.GenerateDataKeyPairWithoutPlaintext):
        with pytest.raises(errors.AccessDeniedException, match=f"kms:{op.__name__}"):
            op(KeyId=key, KeyPairSpec="RSA_2048")
        assert op(KeyId=key, KeyPairSpec="ECC_NIST_P256")["KeyPairSpec"] == "ECC_NIST_P256"


# ================================================================================
# 6. The audit record of every new operation, and no secret in it
# ================================================================================
def test_each_new_operation_writes_one_record_without_its_secrets(svc: Kms) -> None:
    rsa_sign = make(svc, "RSA_2048", "SIGN_VERIFY", AliasName="alias/signer")
    rsa_enc = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    mldsa = make(svc, "ML_DSA_44", "SIGN_VERIFY")["KeyId"]
    hmac_key = make(svc, "HMAC_384", "GENERATE_VERIFY_MAC")["KeyId"]
    ecdh = make(svc, "ECC_NIST_P256", "KEY_AGREEMENT")["KeyId"]
    sym = make(svc)["KeyId"]
    secrets: dict[str, bytes] = {}

    def check(call: Callable[[], Any], event: str, request: dict[str, Any],
              error: type[errors.KmsError] | None = None) -> Any:
        result, record = one_record(svc, call, error)
        assert record["eventName"] == event
        assert record["requestParameters"] == request, event
        if error is None:
            assert "errorCode" not in record, event
        else:
            assert record["errorCode"] == error.name and record["responseElements"] is None, event
        return result

    message = secrets["message"] = os.urandom(48)
    sig = check(lambda: svc.Sign(KeyId="alias/signer", Message=message, SigningAlgorithm="RSASSA_PSS_SHA_384"),
                "Sign", {"keyId": "alias/signer", "signingAlgorithm": "RSASSA_PSS_SHA_384", "messageType": "RAW"})
    assert sig["KeyId"] == rsa_sign["Arn"]
    secrets["signature"] = sig["Signature"]
    check(lambda: svc.Verify(KeyId="alias/signer", Message=message, Signature=sig["Signature"],
                             SigningAlgorithm="RSASSA_PSS_SHA_384"),
          "Verify", {"keyId": "alias/signer", "signingAlgorithm": "RSASSA_PSS_SHA_384", "messageType": "RAW"})
    check(lambda: svc.Verify(KeyId="alias/signer", Message=message + b"!", Signature=sig["Signature"],
                             SigningAlgorithm="RSASSA_PSS_SHA_384"),
          "Verify", {"keyId": "alias/signer", "signingAlgorithm": "RSASSA_PSS_SHA_384", "messageType": "RAW"},
          errors.KMSInvalidSignatureException)
    digest = secrets["digest"] = os.urandom(64)
    secrets["digest-signature"] = check(
        lambda: svc.Sign(KeyId=rsa_sign["KeyId"], Message=digest, MessageType="DIGEST",
                         SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_512"),
        "Sign", {"keyId": rsa_sign["KeyId"], "signingAlgorithm": "RSASSA_PKCS1_V1_5_SHA_512",
                 "messageType": "DIGEST"})["Signature"]
    secrets["ml-dsa-signature"] = check(
        lambda: svc.Sign(KeyId=mldsa, Message=message, SigningAlgorithm="ML_DSA_SHAKE_256"),
        "Sign", {"keyId": mldsa, "signingAlgorithm": "ML_DSA_SHAKE_256", "messageType": "RAW"})["Signature"]
    check(lambda: svc.GetPublicKey(KeyId=rsa_sign["KeyId"]), "GetPublicKey", {"keyId": rsa_sign["KeyId"]})

    mac = check(lambda: svc.GenerateMac(KeyId=hmac_key, Message=message, MacAlgorithm="HMAC_SHA_384"),
                "GenerateMac", {"keyId": hmac_key, "macAlgorithm": "HMAC_SHA_384"})["Mac"]
    secrets["mac"] = mac
    check(lambda: svc.VerifyMac(KeyId=hmac_key, Message=message, MacAlgorithm="HMAC_SHA_384", Mac=mac),
          "VerifyMac", {"keyId": hmac_key, "macAlgorithm": "HMAC_SHA_384"})
    forged = bytes([mac[0] ^ 1]) + mac[1:]
    check(lambda: svc.VerifyMac(KeyId=hmac_key, Message=message, MacAlgorithm="HMAC_SHA_384", Mac=forged),
          "VerifyMac", {"keyId": hmac_key, "macAlgorithm": "HMAC_SHA_384"}, errors.KMSInvalidMacException)

    shared = check(lambda: svc.DeriveSharedSecret(KeyId=ecdh, KeyAgreementAlgorithm="ECDH", PublicKey=peer_p256()),
                   "DeriveSharedSecret", {"keyId": ecdh, "keyAgreementAlgorithm": "ECDH"})
    secrets["shared secret"] = shared["SharedSecret"]

    context = {"purpose": "audit-test"}
    pair = check(lambda: svc.GenerateDataKeyPair(KeyId=sym, KeyPairSpec="ECC_NIST_P384", EncryptionContext=context),
                 "GenerateDataKeyPair", {"keyId": sym, "keyPairSpec": "ECC_NIST_P384", "encryptionContext": context})
    secrets["private key"] = pair["PrivateKeyPlaintext"]
    secrets["private key blob"] = pair["PrivateKeyCiphertextBlob"]
    pair2 = check(lambda: svc.GenerateDataKeyPairWithoutPlaintext(KeyId=sym, KeyPairSpec="RSA_2048"),
                  "GenerateDataKeyPairWithoutPlaintext",
                  {"keyId": sym, "keyPairSpec": "RSA_2048", "encryptionContext": {}})
    secrets["private key blob 2"] = pair2["PrivateKeyCiphertextBlob"]

    plaintext = secrets["rsa plaintext"] = os.urandom(100)
    out = io.BytesIO()
    check(lambda: svc.Encrypt(KeyId=rsa_enc, reader=io.BytesIO(plaintext), writer=out,
                              EncryptionAlgorithm="RSAES_OAEP_SHA_1"),
          "Encrypt", {"keyId": rsa_enc, "encryptionContext": {}, "encryptionAlgorithm": "RSAES_OAEP_SHA_1",
                      "inputBytes": 100})
    secrets["rsa ciphertext"] = out.getvalue()
    assert check(lambda: decrypt(svc, out.getvalue(), key=rsa_enc, algorithm="RSAES_OAEP_SHA_1"),
                 "Decrypt", {"keyId": rsa_enc, "encryptionContext": {},
                             "encryptionAlgorithm": "RSAES_OAEP_SHA_1"}) == plaintext
    moved = check(lambda: reencrypt(svc, out.getvalue(), sym, SourceKeyId=rsa_enc,
                                    SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1"),
                  "ReEncrypt", {"destinationKeyId": sym, "sourceKeyId": rsa_enc, "sourceEncryptionContext": {},
                                "destinationEncryptionContext": {}, "sourceEncryptionAlgorithm": "RSAES_OAEP_SHA_1",
                                "destinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
    assert decrypt(svc, moved[0]) == plaintext

    records = audit_events(svc)
    for record in records:
        if record["eventName"] in ("Decrypt", "ReEncrypt") and "errorCode" not in record:
            assert record["responseElements"]["keyId"] in (rsa_enc, sym)
    # The key's own material, as the vault keeps it, is a secret too.
    for key_id in (rsa_sign["KeyId"], rsa_enc, mldsa, hmac_key, ecdh, sym):
        secrets[f"material of {key_id}"] = base64.b64decode(stored(svc)[key_id]["Materials"][0]["Material"])
    log = raw_log(svc)
    for name, secret in secrets.items():
        assert len(secret) >= 16, name
        for form in secret_forms(secret):
            assert form not in log, f"the {name} is in the audit log"
    report = svc.VerifyAuditLog(Strict=True)
    assert report["Unauthenticated"] == [] and report["Records"] == len(records)


def test_create_key_records_its_spec_and_usage(svc: Kms) -> None:
    meta, record = one_record(svc, lambda: make(svc, "ECC_NIST_P384", "KEY_AGREEMENT"))
    assert record["eventName"] == "CreateKey"
    assert (record["requestParameters"]["keySpec"], record["requestParameters"]["keyUsage"]) == (
        "ECC_NIST_P384", "KEY_AGREEMENT")
    assert record["responseElements"]["keyId"] == meta["KeyId"]
    _, record = one_record(svc, lambda: make(svc))
    assert (record["requestParameters"]["keySpec"], record["requestParameters"]["keyUsage"]) == (
        "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")  # an omitted usage is recorded as the one the key got


def test_a_failed_verify_is_exit_6_and_never_a_quiet_false(svc: Kms) -> None:
    key = make(svc, "ECC_NIST_P256", "SIGN_VERIFY")["KeyId"]
    other = make(svc, "ECC_NIST_P256", "SIGN_VERIFY")["KeyId"]
    sig = svc.Sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    for signature, signer in ((sig, other), (sig[:-1], key), (b"\x30" + sig[1:-1] + b"\x00", key)):
        with pytest.raises(errors.KMSInvalidSignatureException) as e:
            svc.Verify(KeyId=signer, Message=b"m", Signature=signature, SigningAlgorithm="ECDSA_SHA_256")
        assert e.value.exit_code == errors.EXIT_CIPHERTEXT
    hmac_key = make(svc, "HMAC_224", "GENERATE_VERIFY_MAC")["KeyId"]
    mac = svc.GenerateMac(KeyId=hmac_key, Message=b"m", MacAlgorithm="HMAC_SHA_224")["Mac"]
    assert len(mac) == 28
    for bad in (mac[:-1], mac + b"\0", os.urandom(28)):
        with pytest.raises(errors.KMSInvalidMacException) as e2:
            svc.VerifyMac(KeyId=hmac_key, Message=b"m", MacAlgorithm="HMAC_SHA_224", Mac=bad)
        assert e2.value.exit_code == errors.EXIT_CIPHERTEXT
    failed = [e for e in audit_events(svc) if e.get("errorCode")]
    assert [(e["eventName"], e["errorCode"]) for e in failed] == (
        [("Verify", "KMSInvalidSignatureException")] * 3 + [("VerifyMac", "KMSInvalidMacException")] * 3)
    assert all(e["responseElements"] is None for e in failed)


# ================================================================================
# 7. Data key pairs
# ================================================================================
@pytest.fixture(scope="module")
def pair_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kms, dict[str, Any]]]:
    """A vault with one symmetric key and a data key pair of every spec made under it (with CONTEXT_8K)."""
    path = tmp_path_factory.mktemp("pairs") / "v" / "vault.kms"
    svc = Kms(path, PassphraseKeySource(lambda: b"pw"), clock=Clock(),
              caller=Caller(user="alice", uid=1000, pid=1, host="test"))
    svc.CreateVault(CHEAP)
    meta = make(svc)
    pairs = {spec: svc.GenerateDataKeyPair(KeyId=meta["KeyId"], KeyPairSpec=spec, EncryptionContext=CONTEXT_8K)
             for spec in A.DATA_KEY_PAIR_SPECS}
    yield svc, {"key": meta, "pairs": pairs}


def test_the_big_context_is_the_largest_allowed() -> None:
    assert len(stream.encode_context(CONTEXT_8K)) == stream.CONTEXT_MAX_BYTES == 8192


@pytest.mark.parametrize("spec", A.DATA_KEY_PAIR_SPECS)
def test_data_key_pair_private_key_decrypts_to_the_plaintext_and_matches_the_public_key(
        pair_vault: tuple[Kms, dict[str, Any]], spec: str) -> None:
    svc, made = pair_vault
    pair = made["pairs"][spec]
    key = made["key"]
    assert set(pair) == {"PrivateKeyCiphertextBlob", "PrivateKeyPlaintext", "PublicKey", "KeyId", "KeyPairSpec",
                         "KeyMaterialId"}
    assert (pair["KeyId"], pair["KeyPairSpec"], pair["KeyMaterialId"]) == (key["Arn"], spec,
                                                                           key["CurrentKeyMaterialId"])
    blob = pair["PrivateKeyCiphertextBlob"]
    assert len(blob) <= A.MAX_BLOB  # AWS's CiphertextBlob limit, even with the largest context
    assert decrypt(svc, blob, CONTEXT_8K) == pair["PrivateKeyPlaintext"]
    assert decrypt(svc, blob, CONTEXT_8K, key=key["KeyId"]) == pair["PrivateKeyPlaintext"]
    with pytest.raises(errors.InvalidCiphertextException):
        decrypt(svc, blob, {**CONTEXT_8K, "k0": "other"})
    with pytest.raises(errors.InvalidCiphertextException):
        decrypt(svc, blob)
    private = ser.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    assert spki(private) == pair["PublicKey"]


@pytest.mark.parametrize("spec", ["RSA_2048", "ECC_SECG_P256K1", "ML_KEM_768"])
def test_data_key_pair_without_plaintext(pair_vault: tuple[Kms, dict[str, Any]], spec: str) -> None:
    svc, made = pair_vault
    key = made["key"]
    context = {"app": "x"}
    pair = svc.GenerateDataKeyPairWithoutPlaintext(KeyId=key["KeyId"], KeyPairSpec=spec, EncryptionContext=context)
    assert set(pair) == {"PrivateKeyCiphertextBlob", "PublicKey", "KeyId", "KeyPairSpec", "KeyMaterialId"}
    private = decrypt(svc, pair["PrivateKeyCiphertextBlob"], context)
    assert spki(ser.load_der_private_key(private, None)) == pair["PublicKey"]
    assert private not in (p["PrivateKeyPlaintext"] for p in made["pairs"].values())  # a new pair each time


@pytest.mark.parametrize("spec", ["SM2", "ML_KEM_512"])
def test_refused_data_key_pair_specs(pair_vault: tuple[Kms, dict[str, Any]], spec: str) -> None:
    svc, made = pair_vault
    for op in (svc.GenerateDataKeyPair, svc.GenerateDataKeyPairWithoutPlaintext):
        _, record = one_record(svc, lambda op=op: op(KeyId=made["key"]["KeyId"], KeyPairSpec=spec),
                               errors.UnsupportedOperationException)
        assert (record["eventName"], record["errorCode"]) == (op.__name__, "UnsupportedOperationException")
        assert record["requestParameters"]["keyPairSpec"] == spec
    with pytest.raises(errors.ValidationException, match="keyPairSpec"):
        svc.GenerateDataKeyPair(KeyId=made["key"]["KeyId"], KeyPairSpec="RSA_1024")


# ================================================================================
# 8. RSA encryption
# ================================================================================
@pytest.mark.parametrize(("algorithm", "limit"), [("RSAES_OAEP_SHA_1", 214), ("RSAES_OAEP_SHA_256", 190)])
def test_rsa_2048_plaintext_limit_is_exact(svc: Kms, algorithm: str, limit: int) -> None:
    key = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    _check_limit(svc, key, "RSA_2048", algorithm, limit)


@pytest.mark.parametrize("spec", ["RSA_3072", "RSA_4096"])
def test_larger_rsa_keys_plaintext_limits_are_exact(svc: Kms, pair_vault: tuple[Kms, dict[str, Any]], spec: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The KMS key takes the private key of the module's data key pair of its size (no second slow key)."""
    private = pair_vault[1]["pairs"][spec]["PrivateKeyPlaintext"]
    monkeypatch.setattr(A, "generate", lambda s: private if s == spec else pytest.fail(s))
    meta = make(svc, spec, "ENCRYPT_DECRYPT")
    monkeypatch.undo()
    assert svc.GetPublicKey(KeyId=meta["KeyId"])["PublicKey"] == pair_vault[1]["pairs"][spec]["PublicKey"]
    for algorithm, limit in {"RSA_3072": (("RSAES_OAEP_SHA_1", 342), ("RSAES_OAEP_SHA_256", 318)),
                             "RSA_4096": (("RSAES_OAEP_SHA_1", 470), ("RSAES_OAEP_SHA_256", 446))}[spec]:
        _check_limit(svc, meta["KeyId"], spec, algorithm, limit)


def _check_limit(svc: Kms, key: str, spec: str, algorithm: str, limit: int) -> None:
    assert A.max_plaintext(spec, algorithm) == limit
    plaintext = os.urandom(limit)
    blob = encrypt(svc, key, plaintext, algorithm=algorithm)
    assert len(blob) == int(spec[4:]) // 8
    assert decrypt(svc, blob, key=key, algorithm=algorithm) == plaintext
    out = io.BytesIO()
    _, record = one_record(svc, lambda: svc.Encrypt(KeyId=key, reader=io.BytesIO(os.urandom(limit + 1)), writer=out,
                                                    EncryptionAlgorithm=algorithm), errors.ValidationException)
    assert out.getvalue() == b""
    assert record["errorMessage"] == (f"Algorithm {algorithm} and key spec {spec} cannot encrypt data larger than "
                                      f"{limit} bytes.")
    with pytest.raises(errors.ValidationException, match="less than or equal to 4096"):
        encrypt(svc, key, b"x" * 4097, algorithm=algorithm)
    with pytest.raises(errors.ValidationException, match="greater than or equal to 1"):
        encrypt(svc, key, b"", algorithm=algorithm)


def test_rsa_encryption_takes_no_context_and_decrypt_needs_the_key(svc: Kms) -> None:
    key = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    sym = make(svc)["KeyId"]
    blob = encrypt(svc, key, b"m", algorithm="RSAES_OAEP_SHA_256")
    out = io.BytesIO()
    _, record = one_record(svc, lambda: svc.Encrypt(KeyId=key, reader=io.BytesIO(b"m"), writer=out,
                                                    EncryptionContext={"a": "b"},
                                                    EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
                           errors.ValidationException)
    assert out.getvalue() == b"" and record["eventName"] == "Encrypt"
    with pytest.raises(errors.ValidationException, match="encryption context"):
        decrypt(svc, blob, {"a": "b"}, key=key, algorithm="RSAES_OAEP_SHA_256")
    _, record = one_record(svc, lambda: decrypt(svc, blob, algorithm="RSAES_OAEP_SHA_256"),
                           errors.ValidationException)
    assert record["eventName"] == "Decrypt" and "KeyId" in record["errorMessage"]
    with pytest.raises(errors.ValidationException, match="SourceKeyId"):
        reencrypt(svc, blob, sym, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    with pytest.raises(errors.ValidationException, match="encryption context"):
        reencrypt(svc, encrypt(svc, sym, b"m"), key, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                  DestinationEncryptionContext={"a": "b"})
    with pytest.raises(errors.ValidationException, match="encryptionAlgorithm"):
        encrypt(svc, key, b"m", algorithm="RSAES_PKCS1_V1_5")


def test_an_rsa_ciphertext_decrypts_only_under_its_key_and_algorithm(svc: Kms) -> None:
    key = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    other = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    sym = make(svc)["KeyId"]
    blob = encrypt(svc, key, b"secret", algorithm="RSAES_OAEP_SHA_256")
    envelope = encrypt(svc, sym, b"secret")
    for call in (lambda: decrypt(svc, blob, key=other, algorithm="RSAES_OAEP_SHA_256"),
                 lambda: decrypt(svc, blob, key=key, algorithm="RSAES_OAEP_SHA_1"),
                 lambda: decrypt(svc, blob[:-1], key=key, algorithm="RSAES_OAEP_SHA_256"),
                 lambda: decrypt(svc, blob),  # as a kmscli envelope: not one
                 lambda: decrypt(svc, envelope, key=key, algorithm="RSAES_OAEP_SHA_256"),
                 lambda: reencrypt(svc, blob, sym, SourceKeyId=other, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256")):
        _, record = one_record(svc, call, errors.InvalidCiphertextException)
        assert record["errorCode"] == "InvalidCiphertextException"
    assert decrypt(svc, blob, key=key, algorithm="RSAES_OAEP_SHA_256") == b"secret"


def test_reencrypt_round_trips_between_rsa_and_symmetric_keys(svc: Kms) -> None:
    rsa1 = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")
    rsa2 = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")
    sym = make(svc)
    plaintext = os.urandom(150)
    ctx = {"tenant": "a"}

    # RSA -> symmetric
    from_rsa = encrypt(svc, rsa1["KeyId"], plaintext, algorithm="RSAES_OAEP_SHA_1")
    env, resp = reencrypt(svc, from_rsa, sym["KeyId"], SourceKeyId=rsa1["KeyId"],
                          SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1", DestinationEncryptionContext=ctx)
    assert (resp["KeyId"], resp["SourceKeyId"]) == (sym["Arn"], rsa1["Arn"])
    assert (resp["SourceEncryptionAlgorithm"], resp["DestinationEncryptionAlgorithm"]) == (
        "RSAES_OAEP_SHA_1", "SYMMETRIC_DEFAULT")
    assert resp["DestinationKeyMaterialId"] == sym["CurrentKeyMaterialId"]
    assert decrypt(svc, env, ctx) == plaintext

    # symmetric -> RSA
    to_rsa, resp = reencrypt(svc, env, rsa2["KeyId"], SourceEncryptionContext=ctx,
                             DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert (resp["KeyId"], resp["SourceKeyId"]) == (rsa2["Arn"], sym["Arn"])
    assert resp["SourceKeyMaterialId"] == sym["CurrentKeyMaterialId"]
    assert len(to_rsa) == 256
    assert decrypt(svc, to_rsa, key=rsa2["KeyId"], algorithm="RSAES_OAEP_SHA_256") == plaintext
    with pytest.raises(errors.InvalidCiphertextException):  # the source context still binds
        reencrypt(svc, env, rsa2["KeyId"], DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")

    # RSA -> RSA, another key and algorithm
    back, resp = reencrypt(svc, to_rsa, rsa1["KeyId"], SourceKeyId=rsa2["KeyId"],
                           SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                           DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    assert (resp["KeyId"], resp["SourceKeyId"]) == (rsa1["Arn"], rsa2["Arn"])
    assert decrypt(svc, back, key=rsa1["KeyId"], algorithm="RSAES_OAEP_SHA_1") == plaintext
    with pytest.raises(errors.InvalidCiphertextException):
        decrypt(svc, back, key=rsa2["KeyId"], algorithm="RSAES_OAEP_SHA_1")


@pytest.mark.parametrize("size", [191, 4096, 4097, 100_000])
def test_reencrypt_to_rsa_of_a_plaintext_over_the_limit_writes_nothing(svc: Kms, size: int) -> None:
    rsa = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    sym = make(svc)["KeyId"]
    env = encrypt(svc, sym, os.urandom(size))
    out = io.BytesIO()
    _, record = one_record(svc, lambda: svc.ReEncrypt(reader=io.BytesIO(env), writer=out, DestinationKeyId=rsa,
                                                      DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256"),
                           errors.ValidationException)
    assert out.getvalue() == b""
    assert (record["eventName"], record["errorCode"]) == ("ReEncrypt", "ValidationException")
    assert record["responseElements"] is None
    # 190 bytes, the limit, moves.
    ok = encrypt(svc, sym, b"p" * 190)
    moved, _ = reencrypt(svc, ok, rsa, DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert decrypt(svc, moved, key=rsa, algorithm="RSAES_OAEP_SHA_256") == b"p" * 190


# ================================================================================
# 9. An envelope that names a non-symmetric key
# ================================================================================
def test_an_envelope_naming_an_asymmetric_or_hmac_key_is_invalid_ciphertext(svc: Kms) -> None:
    rsa = make(svc, "RSA_2048", "ENCRYPT_DECRYPT")["KeyId"]
    hmac_key = make(svc, "HMAC_256", "GENERATE_VERIFY_MAC")["KeyId"]
    sym = make(svc)["KeyId"]
    # Forged with a random key for the RSA key, and with the HMAC key's own 32-byte secret: were the key's
    # spec not checked, that one would decrypt.
    hmac_secret = base64.b64decode(stored(svc)[hmac_key]["Materials"][0]["Material"])
    assert len(hmac_secret) == 32
    for key, master in ((rsa, os.urandom(32)), (hmac_key, hmac_secret)):
        forged = stream.encrypt_bytes(b"forged plaintext", master_key=master, key_id=key, material_version=1,
                                      context={})
        calls: list[Callable[[io.BytesIO], Any]] = [
            lambda w, forged=forged: svc.Decrypt(reader=io.BytesIO(forged), writer=w),
            lambda w, forged=forged, key=key: svc.Decrypt(reader=io.BytesIO(forged), writer=w, KeyId=key),
            lambda w, forged=forged: svc.ReEncrypt(reader=io.BytesIO(forged), writer=w, DestinationKeyId=sym),
            lambda w, forged=forged: svc.ReEncrypt(reader=io.BytesIO(forged), writer=w, DestinationKeyId=rsa,
                                                   DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256"),
        ]
        for call in calls:
            out = io.BytesIO()
            _, record = one_record(svc, lambda call=call, out=out: call(out), errors.InvalidCiphertextException)
            assert (record["errorCode"], record["responseElements"]) == ("InvalidCiphertextException", None)
            assert out.getvalue() == b""
    svc.VerifyAuditLog()


# ================================================================================
# 10. Persistence
# ================================================================================
def test_asymmetric_keys_survive_reopening_the_vault(svc: Kms) -> None:
    made = {name: make(svc, spec, usage) for name, (spec, usage) in {
        "rsa": ("RSA_2048", "SIGN_VERIFY"), "ecc": ("ECC_NIST_P256", "SIGN_VERIFY"), "mldsa": ("ML_DSA_44",
                                                                                            "SIGN_VERIFY"),
        "ecdh": ("ECC_NIST_P256", "KEY_AGREEMENT"), "hmac": ("HMAC_512", "GENERATE_VERIFY_MAC")}.items()}
    sym = make(svc)
    public = {n: svc.GetPublicKey(KeyId=m["KeyId"])["PublicKey"] for n, m in made.items() if n != "hmac"}
    mac = svc.GenerateMac(KeyId=made["hmac"]["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_512")["Mac"]
    peer = ec.generate_private_key(ec.SECP256R1())
    secret = svc.DeriveSharedSecret(KeyId=made["ecdh"]["KeyId"], KeyAgreementAlgorithm="ECDH",
                                    PublicKey=spki(peer))["SharedSecret"]

    again = Kms(svc.store.path, PassphraseKeySource(lambda: b"pw"), clock=svc.clock, caller=svc.caller)
    for name, meta in made.items():
        assert again.DescribeKey(KeyId=meta["KeyId"])["KeyMetadata"] == meta, name
        if name in public:
            assert again.GetPublicKey(KeyId=meta["KeyId"])["PublicKey"] == public[name], name
    sig = again.Sign(KeyId=made["rsa"]["KeyId"], Message=b"after", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
    rsa_public: Any = ser.load_der_public_key(public["rsa"])
    rsa_public.verify(sig["Signature"], b"after", padding.PKCS1v15(), hashes.SHA256())  # raises if not
    ecc_sig = again.Sign(KeyId=made["ecc"]["KeyId"], Message=b"after", SigningAlgorithm="ECDSA_SHA_256")
    ecc_public: Any = ser.load_der_public_key(public["ecc"])
    ecc_public.verify(ecc_sig["Signature"], b"after", ec.ECDSA(hashes.SHA256()))
    ml = again.Sign(KeyId=made["mldsa"]["KeyId"], Message=b"after", SigningAlgorithm="ML_DSA_SHAKE_256")
    assert again.Verify(KeyId=made["mldsa"]["KeyId"], Message=b"after", Signature=ml["Signature"],
                        SigningAlgorithm="ML_DSA_SHAKE_256")["SignatureValid"] is True
    assert again.GenerateMac(KeyId=made["hmac"]["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_512")["Mac"] == mac
    assert again.DeriveSharedSecret(KeyId=made["ecdh"]["KeyId"], KeyAgreementAlgorithm="ECDH",
                                    PublicKey=spki(peer))["SharedSecret"] == secret
    ecdh_public: Any = ser.load_der_public_key(public["ecdh"])
    assert peer.exchange(ec.ECDH(), ecdh_public) == secret

    keys = stored(again)
    assert set(keys[sym["KeyId"]]) == SYMMETRIC_RECORD_FIELDS  # no KeySpec / KeyUsage members
    for name, meta in made.items():
        record = keys[meta["KeyId"]]
        assert set(record) == SYMMETRIC_RECORD_FIELDS | {"KeySpec", "KeyUsage"}, name
        assert (record["KeySpec"], record["KeyUsage"]) == (meta["KeySpec"], meta["KeyUsage"]), name
        assert len(record["Materials"]) == 1, name
    again.VerifyAuditLog()
