"""Every service operation that has an AWS counterpart answers in that operation's AWS shape.

One scenario on a cheap vault calls each operation the way ``kmscli serve``
will: an AWS request body goes through ``shapes.validate_input``, the
service is called with those AWS-named values, and its answer is checked three
ways, each its own test so that every departure shows by name:

- ``test_wire_document_is_what_aws_sends``: ``shapes.to_wire`` of the answer,
  judged by botocore's model alone (tests/aws/botocore_model.py);
- ``test_answer_keeps_the_python_contract``: the answer itself against
  ``shapes.shape_errors`` (bytes for blobs, aware datetimes for timestamps);
- ``test_key_id_is_the_key_arn``: the SPEC's rule that KeyId in the answers of
  Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, Sign, Verify and
  ScheduleKeyDeletion is the key ARN.

Encrypt, Decrypt and ReEncrypt stream (a reader and a writer, kmscli's
envelope format, no 4 KiB limit) instead of taking and returning blobs; the
scenario gives them the request's blob as the reader and puts what the writer
received into the answer as AWS's blob member (``CiphertextBlob`` or
``Plaintext``), which is what an HTTP adapter over them has to do.

These tests describe the service as AWS-shaped; where it is not yet, they fail
and name the member.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import pytest

from kmscli import shapes
from kmscli.service import Caller, Kms
from kmscli.vault.store import PassphraseKeySource
from tests.aws.botocore_model import wire_errors
from tests.import_wrap import wrap
from tests.unit.conftest import CHEAP, T0, Clock

B64 = base64.b64encode
#: Operations whose answer names the key by its ARN (SPEC, "Credentials and kmscli serve").
ARN_KEY_ID = {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
              "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "Sign", "Verify", "ScheduleKeyDeletion"}
#: Two contexts kmscli accepts (its limit is 8 KiB, docs/format.md) with which AWS's blobs stay far below 6144
#: bytes: AWS's symmetric ciphertext does not grow with the context.
CONTEXT_2K = {f"k{i}": "v" * 250 for i in range(8)}
CONTEXT_6K = {f"k{i}": "v" * 750 for i in range(8)}


#: One key of each kind issue 16 adds, by the name the scenario's state keeps its id under.
ASYMMETRIC_KEYS = {
    "rsa-sign": ("RSA_2048", "SIGN_VERIFY"),
    "rsa-enc": ("RSA_2048", "ENCRYPT_DECRYPT"),
    "ecc-sign": ("ECC_NIST_P384", "SIGN_VERIFY"),
    "ecdh": ("ECC_NIST_P384", "KEY_AGREEMENT"),
    "mldsa": ("ML_DSA_65", "SIGN_VERIFY"),
    "hmac": ("HMAC_512", "GENERATE_VERIFY_MAC"),
}


def _peer_p384() -> bytes:
    """A peer's P-384 public key (DER SubjectPublicKeyInfo), made outside kmscli."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)


def _stream(svc: Kms, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """Call a streaming operation as an AWS blob operation: blob in, blob out."""
    out = io.BytesIO()
    if operation == "Encrypt":
        answer = svc.Encrypt(params["KeyId"], io.BytesIO(params["Plaintext"]), out,
                             EncryptionContext=params.get("EncryptionContext"),
                             EncryptionAlgorithm=params.get("EncryptionAlgorithm"))
        return {**answer, "CiphertextBlob": out.getvalue()}
    if operation == "Decrypt":
        answer = svc.Decrypt(io.BytesIO(params["CiphertextBlob"]), out,
                             EncryptionContext=params.get("EncryptionContext"), KeyId=params.get("KeyId"),
                             EncryptionAlgorithm=params.get("EncryptionAlgorithm"))
        return {**answer, "Plaintext": out.getvalue()}
    assert operation == "ReEncrypt"
    answer = svc.ReEncrypt(io.BytesIO(params["CiphertextBlob"]), out, params["DestinationKeyId"],
                           SourceEncryptionContext=params.get("SourceEncryptionContext"),
                           DestinationEncryptionContext=params.get("DestinationEncryptionContext"),
                           SourceKeyId=params.get("SourceKeyId"),
                           SourceEncryptionAlgorithm=params.get("SourceEncryptionAlgorithm"),
                           DestinationEncryptionAlgorithm=params.get("DestinationEncryptionAlgorithm"))
    return {**answer, "CiphertextBlob": out.getvalue()}


def _call(svc: Kms, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    params = shapes.validate_input(operation, body)  # the test's own requests must be valid AWS requests
    if operation in ("Encrypt", "Decrypt", "ReEncrypt"):
        return _stream(svc, operation, params)
    if operation == "GenerateRandom":
        return {"Plaintext": Kms.GenerateRandom(**params)}
    return getattr(svc, operation)(**params)


def _scenario() -> list[tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]]]:
    """(step id, operation, request maker): the request maker reads what earlier steps left in ``state``."""

    def blob(data: bytes) -> str:
        return B64(data).decode()

    return [
        ("CreateKey", "CreateKey", lambda s: {"Description": "first", "Tags": [{"TagKey": "team", "TagValue": "a"}]}),
        ("CreateKey-second", "CreateKey", lambda s: {}),
        ("DescribeKey", "DescribeKey", lambda s: {"KeyId": s["key"]}),
        ("ListKeys", "ListKeys", lambda s: {}),
        ("UpdateKeyDescription", "UpdateKeyDescription", lambda s: {"KeyId": s["key"], "Description": "d"}),
        ("TagResource", "TagResource", lambda s: {"KeyId": s["key"], "Tags": [{"TagKey": "env", "TagValue": "t"}]}),
        ("ListResourceTags", "ListResourceTags", lambda s: {"KeyId": s["key"]}),
        ("UntagResource", "UntagResource", lambda s: {"KeyId": s["key"], "TagKeys": ["env"]}),
        ("ListResourceTags-paged", "ListResourceTags", lambda s: {"KeyId": s["key"], "Limit": 1}),
        ("CreateAlias", "CreateAlias", lambda s: {"AliasName": "alias/app", "TargetKeyId": s["key"]}),
        ("UpdateAlias", "UpdateAlias", lambda s: {"AliasName": "alias/app", "TargetKeyId": s["key2"]}),
        ("ListAliases", "ListAliases", lambda s: {}),
        ("ListAliases-for-key", "ListAliases", lambda s: {"KeyId": s["key2"]}),
        ("GetKeyPolicy", "GetKeyPolicy", lambda s: {"KeyId": s["key"], "PolicyName": "default"}),
        ("ListKeyPolicies", "ListKeyPolicies", lambda s: {"KeyId": s["key"]}),
        ("ListKeys-paged", "ListKeys", lambda s: {"Limit": 1}),
        ("PutKeyPolicy", "PutKeyPolicy", lambda s: {"KeyId": s["key"], "Policy": s["policy"]}),
        ("GetKeyRotationStatus-off", "GetKeyRotationStatus", lambda s: {"KeyId": s["key"]}),
        ("EnableKeyRotation", "EnableKeyRotation", lambda s: {"KeyId": s["key"], "RotationPeriodInDays": 90}),
        ("GetKeyRotationStatus-on", "GetKeyRotationStatus", lambda s: {"KeyId": s["key"]}),
        ("DescribeKey-rotation-on", "DescribeKey", lambda s: {"KeyId": s["key"]}),
        ("RotateKeyOnDemand", "RotateKeyOnDemand", lambda s: {"KeyId": s["key"]}),
        ("ListKeyRotations", "ListKeyRotations", lambda s: {"KeyId": s["key"]}),
        ("DisableKeyRotation", "DisableKeyRotation", lambda s: {"KeyId": s["key"]}),
        ("Encrypt", "Encrypt", lambda s: {"KeyId": "alias/app", "Plaintext": blob(b"hello"),
                                          "EncryptionContext": {"purpose": "test"}}),
        ("Encrypt-4096-bytes-2KiB-context", "Encrypt",
         lambda s: {"KeyId": s["key"], "Plaintext": blob(b"x" * 4096), "EncryptionContext": CONTEXT_2K}),
        ("Decrypt", "Decrypt", lambda s: {"CiphertextBlob": blob(s["ciphertext"]),
                                          "EncryptionContext": {"purpose": "test"}}),
        ("ReEncrypt", "ReEncrypt", lambda s: {"CiphertextBlob": blob(s["ciphertext"]), "DestinationKeyId": s["key"],
                                              "SourceEncryptionContext": {"purpose": "test"}}),
        ("GenerateDataKey", "GenerateDataKey", lambda s: {"KeyId": s["key"], "KeySpec": "AES_256"}),
        ("GenerateDataKey-1024-bytes", "GenerateDataKey", lambda s: {"KeyId": s["key"], "NumberOfBytes": 1024}),
        ("GenerateDataKeyWithoutPlaintext", "GenerateDataKeyWithoutPlaintext",
         lambda s: {"KeyId": s["key"], "KeySpec": "AES_128"}),
        ("GenerateDataKeyWithoutPlaintext-6KiB-context", "GenerateDataKeyWithoutPlaintext",
         lambda s: {"KeyId": s["key"], "NumberOfBytes": 32, "EncryptionContext": CONTEXT_6K}),
        ("GenerateRandom", "GenerateRandom", lambda s: {"NumberOfBytes": 16}),
        ("DisableKey", "DisableKey", lambda s: {"KeyId": s["key2"]}),
        ("EnableKey", "EnableKey", lambda s: {"KeyId": s["key2"]}),
        ("ScheduleKeyDeletion", "ScheduleKeyDeletion", lambda s: {"KeyId": s["key2"], "PendingWindowInDays": 7}),
        ("DescribeKey-pending-deletion", "DescribeKey", lambda s: {"KeyId": s["key2"]}),
        ("CancelKeyDeletion", "CancelKeyDeletion", lambda s: {"KeyId": s["key2"]}),
        ("DeleteAlias", "DeleteAlias", lambda s: {"AliasName": "alias/app"}),
        # Asymmetric and HMAC keys (issue 16): one key of each kind, then every operation on it.
        *[(f"CreateKey-{name}", "CreateKey", lambda s, spec=spec, usage=usage: {"KeySpec": spec, "KeyUsage": usage})
          for name, (spec, usage) in ASYMMETRIC_KEYS.items()],
        *[(f"DescribeKey-{name}", "DescribeKey", lambda s, name=name: {"KeyId": s[name]}) for name in ASYMMETRIC_KEYS],
        *[(f"GetPublicKey-{name}", "GetPublicKey", lambda s, name=name: {"KeyId": s[name]})
          for name in ASYMMETRIC_KEYS if not name.startswith("hmac")],
        ("Sign-rsa", "Sign", lambda s: {"KeyId": s["rsa-sign"], "Message": blob(b"m"),
                                        "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
        ("Sign-ecc-digest", "Sign", lambda s: {"KeyId": s["ecc-sign"], "Message": blob(b"d" * 48),
                                               "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_384"}),
        ("Sign-mldsa-4096-bytes", "Sign", lambda s: {"KeyId": s["mldsa"], "Message": blob(b"m" * 4096),
                                                     "SigningAlgorithm": "ML_DSA_SHAKE_256"}),
        ("Verify-rsa", "Verify", lambda s: {"KeyId": s["rsa-sign"], "Message": blob(b"m"),
                                            "Signature": blob(s["signature"]),
                                            "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
        ("Encrypt-rsa", "Encrypt", lambda s: {"KeyId": s["rsa-enc"], "Plaintext": blob(b"p" * 190),
                                              "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        ("Decrypt-rsa", "Decrypt", lambda s: {"KeyId": s["rsa-enc"], "CiphertextBlob": blob(s["rsa-ciphertext"]),
                                              "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        ("ReEncrypt-rsa-to-symmetric", "ReEncrypt",
         lambda s: {"CiphertextBlob": blob(s["rsa-ciphertext"]), "SourceKeyId": s["rsa-enc"],
                    "SourceEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "DestinationKeyId": s["key"]}),
        ("GenerateMac", "GenerateMac", lambda s: {"KeyId": s["hmac"], "Message": blob(b"m" * 4096),
                                                  "MacAlgorithm": "HMAC_SHA_512"}),
        ("VerifyMac", "VerifyMac", lambda s: {"KeyId": s["hmac"], "Message": blob(b"m" * 4096),
                                              "MacAlgorithm": "HMAC_SHA_512", "Mac": blob(s["mac"])}),
        ("GenerateDataKeyPair-RSA_4096-6KiB-context", "GenerateDataKeyPair",
         lambda s: {"KeyId": s["key"], "KeyPairSpec": "RSA_4096", "EncryptionContext": CONTEXT_6K}),
        ("GenerateDataKeyPairWithoutPlaintext", "GenerateDataKeyPairWithoutPlaintext",
         lambda s: {"KeyId": s["key"], "KeyPairSpec": "ECC_NIST_P256"}),
        # Grants (issue 17): made by the owner for another user of the vault.
        ("CreateGrant", "CreateGrant",
         lambda s: {"KeyId": s["key"], "GranteePrincipal": f"arn:aws:iam::{s['account']}:user/bob",
                    "RetiringPrincipal": f"arn:aws:iam::{s['account']}:user/carol",
                    "Operations": ["Encrypt", "Decrypt", "RetireGrant"], "Name": "ci-deploy",
                    "Constraints": {"EncryptionContextSubset": {"app": "billing"}}}),
        ("CreateGrant-sign", "CreateGrant",
         lambda s: {"KeyId": s["rsa-sign"], "GranteePrincipal": f"arn:aws:iam::{s['account']}:user/bob",
                    "Operations": ["Sign", "Verify", "GetPublicKey"]}),
        ("ListGrants", "ListGrants", lambda s: {"KeyId": s["key"]}),
        ("ListGrants-paged", "ListGrants", lambda s: {"KeyId": s["rsa-sign"], "Limit": 1}),
        ("ListRetirableGrants", "ListRetirableGrants",
         lambda s: {"RetiringPrincipal": f"arn:aws:iam::{s['account']}:user/carol"}),
        ("RetireGrant", "RetireGrant", lambda s: {"GrantToken": s["grant-token"]}),
        ("RevokeGrant", "RevokeGrant", lambda s: {"KeyId": s["rsa-sign"], "GrantId": s["grant-sign"]}),
        ("DeriveSharedSecret", "DeriveSharedSecret",
         lambda s: {"KeyId": s["ecdh"], "KeyAgreementAlgorithm": "ECDH", "PublicKey": blob(_peer_p384())}),
        # Imported key material (issue 17): an EXTERNAL key before, during and after its material.
        ("CreateKey-external", "CreateKey", lambda s: {"Origin": "EXTERNAL", "Description": "byok"}),
        ("DescribeKey-external-pending", "DescribeKey", lambda s: {"KeyId": s["external"]}),
        ("GetParametersForImport", "GetParametersForImport",
         lambda s: {"KeyId": s["external"], "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"}),
        ("ImportKeyMaterial", "ImportKeyMaterial",
         lambda s: {"KeyId": s["external"], "ImportToken": blob(s["import"]["ImportToken"]),
                    "EncryptedKeyMaterial": blob(wrap(s["import"]["PublicKey"], "RSAES_OAEP_SHA_256", b"k" * 32)),
                    "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": T0.timestamp() + 30 * 86400}),
        ("DescribeKey-external-imported", "DescribeKey", lambda s: {"KeyId": s["external"]}),
        ("ListKeyRotations-external", "ListKeyRotations",
         lambda s: {"KeyId": s["external"], "IncludeKeyMaterial": "ALL_KEY_MATERIAL"}),
        ("DeleteImportedKeyMaterial", "DeleteImportedKeyMaterial", lambda s: {"KeyId": s["external"]}),
        ("DescribeKey-external-deleted", "DescribeKey", lambda s: {"KeyId": s["external"]}),
    ]


STEPS = _scenario()
IDS = [step for step, _, _ in STEPS]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Any]]:
    """Each step's (operation, answer), or (operation, the exception it raised)."""
    svc = Kms(tmp_path_factory.mktemp("aws") / "v" / "vault.kms", PassphraseKeySource(lambda: b"pw"), clock=Clock(),
              caller=Caller(user="alice", uid=1000, pid=1, host="test"))
    svc.CreateVault(CHEAP)
    state: dict[str, Any] = {}
    out: dict[str, tuple[str, Any]] = {}
    for step, operation, request in STEPS:
        try:
            answer = _call(svc, operation, request(state))
        except Exception as e:  # reported by the step's tests
            out[step] = (operation, e)
            continue
        out[step] = (operation, answer)
        if step == "CreateKey":
            state["key"] = answer["KeyMetadata"]["KeyId"]
            state["account"] = answer["KeyMetadata"]["AWSAccountId"]
        elif step == "CreateGrant":
            state["grant-token"] = answer["GrantToken"]
        elif step == "CreateGrant-sign":
            state["grant-sign"] = answer["GrantId"]
        elif step == "CreateKey-second":
            state["key2"] = answer["KeyMetadata"]["KeyId"]
        elif step == "GetKeyPolicy":
            state["policy"] = answer["Policy"]
        elif step == "Encrypt":
            state["ciphertext"] = answer["CiphertextBlob"]
        elif step.startswith("CreateKey-") and step[len("CreateKey-"):] in ASYMMETRIC_KEYS:
            state[step[len("CreateKey-"):]] = answer["KeyMetadata"]["KeyId"]
        elif step == "Sign-rsa":
            state["signature"] = answer["Signature"]
        elif step == "Encrypt-rsa":
            state["rsa-ciphertext"] = answer["CiphertextBlob"]
        elif step == "GenerateMac":
            state["mac"] = answer["Mac"]
        elif step == "CreateKey-external":
            state["external"] = answer["KeyMetadata"]["KeyId"]
        elif step == "GetParametersForImport":
            state["import"] = answer
    return out


def _answer(answers: dict[str, tuple[str, Any]], step: str) -> tuple[str, Any]:
    operation, answer = answers[step]
    if isinstance(answer, BaseException):
        pytest.fail(f"{step}: the call raised {type(answer).__name__}: {answer}")
    return operation, answer


@pytest.mark.parametrize("step", IDS)
def test_wire_document_is_what_aws_sends(answers: dict[str, tuple[str, Any]], step: str) -> None:
    operation, answer = _answer(answers, step)
    problems = wire_errors(operation, shapes.to_wire(operation, answer))
    assert not problems, f"{operation} ({step}):\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("step", IDS)
def test_answer_keeps_the_python_contract(answers: dict[str, tuple[str, Any]], step: str) -> None:
    operation, answer = _answer(answers, step)
    problems = shapes.shape_errors(operation, answer)
    assert not problems, f"{operation} ({step}):\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("step", [s for s, op, _ in STEPS if op in ARN_KEY_ID])
def test_key_id_is_the_key_arn(answers: dict[str, tuple[str, Any]], step: str) -> None:
    operation, answer = _answer(answers, step)
    assert str(answer.get("KeyId", "")).startswith("arn:aws:kms:"), (operation, answer.get("KeyId"))


def test_every_service_operation_with_an_aws_counterpart_is_called() -> None:
    called = {op for _, op, _ in STEPS}
    aws_methods = {name for name in dir(Kms) if name in shapes.OPERATIONS}
    assert aws_methods - {"Encrypt", "Decrypt", "ReEncrypt"} <= called
    assert {"Encrypt", "Decrypt", "ReEncrypt"} <= called
    # Local operations have no AWS counterpart and no AWS shape to keep.
    local = {name for name in dir(Kms) if name[:1].isupper() and name not in shapes.OPERATIONS}
    assert local == {"CreateVault", "Unlock", "ChangePassphrase", "SetMinDecryptVersion", "VerifyAuditLog",
                     "GetAuditHead", "RestartAuditLog", "ReadAuditLog", "ListKeyDetails", "DescribeKeyDetails",
                     "GenerateRandomRecorded",  # GenerateRandom as serve records it
                     "SeedVault",  # serve --ephemeral --seed
                     "BackupVault", "RestoreVault",  # kmscli vault backup / restore
                     # IAM's, for `kmscli serve` credentials (tests/cli/test_credentials_cli.py)
                     "CreateAccessKey", "ListAccessKeys", "DeleteAccessKey"}

