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
from tests.unit.conftest import CHEAP, Clock

B64 = base64.b64encode
#: Operations whose answer names the key by its ARN (SPEC, "Credentials and kmscli serve").
ARN_KEY_ID = {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
              "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "Sign", "Verify", "ScheduleKeyDeletion"}
#: Two contexts kmscli accepts (its limit is 8 KiB, docs/format.md) with which AWS's blobs stay far below 6144
#: bytes: AWS's symmetric ciphertext does not grow with the context.
CONTEXT_2K = {f"k{i}": "v" * 250 for i in range(8)}
CONTEXT_6K = {f"k{i}": "v" * 750 for i in range(8)}


def _stream(svc: Kms, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """Call a streaming operation as an AWS blob operation: blob in, blob out."""
    out = io.BytesIO()
    if operation == "Encrypt":
        answer = svc.Encrypt(params["KeyId"], io.BytesIO(params["Plaintext"]), out,
                             EncryptionContext=params.get("EncryptionContext"))
        return {**answer, "CiphertextBlob": out.getvalue()}
    if operation == "Decrypt":
        answer = svc.Decrypt(io.BytesIO(params["CiphertextBlob"]), out,
                             EncryptionContext=params.get("EncryptionContext"), KeyId=params.get("KeyId"))
        return {**answer, "Plaintext": out.getvalue()}
    assert operation == "ReEncrypt"
    answer = svc.ReEncrypt(io.BytesIO(params["CiphertextBlob"]), out, params["DestinationKeyId"],
                           SourceEncryptionContext=params.get("SourceEncryptionContext"),
                           DestinationEncryptionContext=params.get("DestinationEncryptionContext"),
                           SourceKeyId=params.get("SourceKeyId"))
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
        elif step == "CreateKey-second":
            state["key2"] = answer["KeyMetadata"]["KeyId"]
        elif step == "GetKeyPolicy":
            state["policy"] = answer["Policy"]
        elif step == "Encrypt":
            state["ciphertext"] = answer["CiphertextBlob"]
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

