"""AWS JSON 1.1 for KMS: one request body in, one service call, one response out.

This is the HTTP adapter's half that knows no HTTP server: it routes on the
operation named by ``X-Amz-Target``, reads the body as AWS's front end does
(``shapes.validate_input``), calls the one service method of that name and
renders its answer (``shapes.to_wire``: blobs base64, timestamps epoch
seconds, absent members omitted). Every rule (key state, policy, audit) is the
service's; nothing here decides what a caller may do.
"""

from __future__ import annotations

import functools
import inspect
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import errors, shapes

TARGET_PREFIX = "TrentService."
CONTENT_TYPE = "application/x-amz-json-1.1"
#: The largest request body read: KMS's biggest members (a 32 KiB policy, a
#: 6144-byte blob in base64, 50 tags) fit many times over.
MAX_BODY_BYTES = 1 << 20
#: JSON nesting deeper than any KMS request has (tags: 3 levels) is refused
#: before parsing, so a hostile body cannot exhaust the parser's recursion.
MAX_DEPTH = 32


@dataclass
class Answer:
    """An HTTP answer: status, headers (besides the request id) and body."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


def operation_of(target: str | None) -> str:
    """The operation an ``X-Amz-Target`` names, or UnknownOperationException."""
    if not target or not target.startswith(TARGET_PREFIX):
        raise errors.UnknownOperationException(
            "the request names no operation: send X-Amz-Target: TrentService.<Operation>"
        )
    name = target[len(TARGET_PREFIX):]
    if name not in shapes.OPERATIONS:
        raise errors.UnknownOperationException(f"{name[:64]} is not a KMS operation")
    return name


def parse_body(body: bytes) -> Any:
    """The request's JSON document; SerializationException for anything that is not one."""
    if not body.strip():
        return {}  # AWS takes an empty body as {} (botocore always sends at least {})
    if _too_deep(body):
        raise errors.SerializationException(f"the request nests JSON deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise errors.SerializationException("the request body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise errors.SerializationException("the request body is not a JSON document") from None


def _too_deep(body: bytes) -> bool:
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def call(kms: Any, operation: str, body: bytes) -> dict[str, Any]:
    """Run one wire request against the service; its AWS response document (Python values).

    A request refused here, before the service saw it (a body that is not
    JSON, a constraint of the model, a member kmscli cannot honour), is
    recorded all the same: every signed request is one audit record.
    """
    try:
        params = shapes.validate_input(operation, parse_body(body))
        # Grant tokens go with the request, not to one method: every authorization of the call checks them.
        kms.grant_tokens = tuple(params.pop("GrantTokens", None) or ())
        invoke = _prepare(kms, operation, params)
    except errors.KmsError as e:
        kms.record_refusal(operation, e)
        raise
    return invoke()


def _prepare(kms: Any, operation: str, params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """Check what only the wire can get wrong; return the one service call the request makes."""
    handler = _HANDLERS.get(operation)
    if handler is not None:
        return handler(kms, params)
    method = getattr(kms, operation, None)
    if method is None or operation.startswith("_"):
        raise errors.UnsupportedOperationException(f"kmscli does not support {operation} yet")
    # The request's members become the method's keyword arguments; one it cannot honour is refused.
    _common(operation, params, _parameters(getattr(method, "__func__", method)))
    return lambda: method(**params)  # type: ignore[no-any-return]


@functools.cache
def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    """The AWS members a service method takes (its capitalised keyword parameters)."""
    return frozenset(p for p in inspect.signature(function).parameters if p[:1].isupper())


# -- operations whose service method is not AWS's call shape -------------------------------
def _common(operation: str, params: dict[str, Any], allowed: tuple[str, ...] | frozenset[str]) -> None:
    """Drop members that change nothing; refuse those kmscli cannot honour yet (never ignore them silently)."""
    for name in list(params):
        if name == "DryRun":
            if params.pop(name):
                raise errors.UnsupportedOperationException(f"kmscli does not support DryRun for {operation} yet")
        elif name not in allowed:
            raise errors.UnsupportedOperationException(f"kmscli does not support {name} in {operation} yet")


Prepared = Callable[[], dict[str, Any]]


def _encrypt(kms: Any, params: dict[str, Any]) -> Prepared:
    _common("Encrypt", params, ("KeyId", "Plaintext", "EncryptionContext", "EncryptionAlgorithm"))

    def run() -> dict[str, Any]:
        out = io.BytesIO()
        answer = kms.Encrypt(params["KeyId"], io.BytesIO(params["Plaintext"]), out,
                             EncryptionContext=params.get("EncryptionContext"),
                             EncryptionAlgorithm=params.get("EncryptionAlgorithm"))
        return {**answer, "CiphertextBlob": out.getvalue()}

    return run


def _required_blob(params: dict[str, Any]) -> None:
    """CiphertextBlob is optional in the model (for DryRun) but needed by every request kmscli runs."""
    if "CiphertextBlob" not in params:
        raise errors.ValidationException(
            "1 validation error detected: Value null at 'ciphertextBlob' failed to satisfy constraint: "
            "Member must not be null"
        )


def _decrypt(kms: Any, params: dict[str, Any]) -> Prepared:
    _common("Decrypt", params, ("CiphertextBlob", "EncryptionContext", "KeyId", "EncryptionAlgorithm"))
    _required_blob(params)

    def run() -> dict[str, Any]:
        out = io.BytesIO()
        answer = kms.Decrypt(io.BytesIO(params["CiphertextBlob"]), out,
                             EncryptionContext=params.get("EncryptionContext"), KeyId=params.get("KeyId"),
                             EncryptionAlgorithm=params.get("EncryptionAlgorithm"), Esdk=False)
        return {**answer, "Plaintext": out.getvalue()}

    return run


def _reencrypt(kms: Any, params: dict[str, Any]) -> Prepared:
    _common("ReEncrypt", params, ("CiphertextBlob", "SourceEncryptionContext", "SourceKeyId", "DestinationKeyId",
                                  "DestinationEncryptionContext", "SourceEncryptionAlgorithm",
                                  "DestinationEncryptionAlgorithm"))
    _required_blob(params)

    def run() -> dict[str, Any]:
        out = io.BytesIO()
        answer = kms.ReEncrypt(io.BytesIO(params["CiphertextBlob"]), out, params["DestinationKeyId"],
                               SourceEncryptionContext=params.get("SourceEncryptionContext"),
                               DestinationEncryptionContext=params.get("DestinationEncryptionContext"),
                               SourceKeyId=params.get("SourceKeyId"),
                               SourceEncryptionAlgorithm=params.get("SourceEncryptionAlgorithm"),
                               DestinationEncryptionAlgorithm=params.get("DestinationEncryptionAlgorithm"),
                               Esdk=False)
        return {**answer, "CiphertextBlob": out.getvalue()}

    return run


def _generate_random(kms: Any, params: dict[str, Any]) -> Prepared:
    _common("GenerateRandom", params, ("NumberOfBytes",))
    n = params.get("NumberOfBytes")
    if n is None:  # optional in the model; kmscli asks for it rather than guess a size
        raise errors.ValidationException(
            "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy constraint: "
            "Member must not be null"
        )
    return lambda: {"Plaintext": kms.GenerateRandomRecorded(n)}


def _create_key(kms: Any, params: dict[str, Any]) -> Prepared:
    spec = params.pop("CustomerMasterKeySpec", None)
    if spec is not None and "KeySpec" not in params:
        params["KeySpec"] = spec
    if params.get("Origin", "AWS_KMS") not in ("AWS_KMS", "EXTERNAL"):  # EXTERNAL: imported key material
        raise errors.UnsupportedOperationException("kmscli makes keys with Origin AWS_KMS or EXTERNAL only "
                                                   "(it has no custom key stores)")
    if params.pop("MultiRegion", False):
        raise errors.UnsupportedOperationException("kmscli does not make multi-Region keys")
    _common("CreateKey", params, ("Description", "Tags", "Policy", "BypassPolicyLockoutSafetyCheck", "KeySpec",
                                  "KeyUsage", "Origin"))
    return lambda: kms.CreateKey(**params)  # type: ignore[no-any-return]


_HANDLERS: dict[str, Callable[[Any, dict[str, Any]], Prepared]] = {
    "Encrypt": _encrypt,
    "Decrypt": _decrypt,
    "ReEncrypt": _reencrypt,
    "GenerateRandom": _generate_random,
    "CreateKey": _create_key,
}


# -- rendering -------------------------------------------------------------------------------
def ok(operation: str, doc: dict[str, Any]) -> Answer:
    body = json.dumps(shapes.to_wire(operation, doc), separators=(",", ":")).encode()
    return Answer(200, body, [("Content-Type", CONTENT_TYPE)])


def failure(error: errors.KmsError, request_id: str = "") -> Answer:
    """AWS's error document: HTTP 400 for the caller's errors, 500 only for ours (clients retry 5xx).

    The vault or its log failing under the server, or a vault the server can
    no longer unlock (its passphrase changed), is not the caller's doing: the
    client gets KMSInternalException and the request id; the details (paths
    included) go to the server's stderr only.
    """
    name, status, message = error.name, 400, error.aws_message
    if isinstance(error, (errors.KMSInternalException, errors.VaultFileError, errors.UnlockError)):
        import sys

        sys.stderr.write(f"kmscli: serve: request {request_id} failed: {error.name}: {error.message}\n")
        name, status = "KMSInternalException", 500
        message = f"the server could not complete the request (request {request_id}); its log says why"
    body = json.dumps({"__type": name, "message": message}, separators=(",", ":")).encode()
    return Answer(status, body, [("Content-Type", CONTENT_TYPE), ("X-Amzn-ErrorType", name)])
