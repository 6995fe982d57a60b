"""Envelope encryption in the AWS Encryption SDK's message format, over any KMS (docs/esdk.md).

The same code serves the vault (``encrypt --format esdk``) and a remote KMS
(remote mode's default): it asks the KMS it is given for a data key
(``GenerateDataKey``) and to unwrap one (``Decrypt``), through the methods
both implementations share, and streams the data itself here with
:mod:`kmscli.crypto.esdk`. One KMS call per message, whatever its size.

``reencrypt`` joins a decrypting side and an encrypting side through a pipe,
a chunk at a time: the plaintext never touches disk, and if the source fails
(tampered, truncated, wrong context, a bad signature at the end) the
destination never finishes its message, so no valid ciphertext of partial
data can come out.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from . import errors

SYMMETRIC = "SYMMETRIC_DEFAULT"
FORMAT_KMSCLI = "kmscli"
FORMAT_ESDK = "esdk"
FORMATS = (FORMAT_KMSCLI, FORMAT_ESDK)
#: What a KMS ciphertext blob (AWS's Decrypt input) may be at most.
MAX_BLOB = 6144
#: A KMS that answers these for one encrypted data key may still unwrap another of the same message.
_TRY_NEXT = (errors.NotFoundException, errors.AccessDeniedException, errors.InvalidCiphertextException,
             errors.DisabledException, errors.KMSInvalidStateException, errors.InvalidKeyUsageException)
_SNIFF_BYTES = 8


def check_format(value: str | None) -> str | None:
    if value is not None and value not in FORMATS:
        raise errors.ValidationException(f"--format must be kmscli or esdk (got '{value}')")
    return value


def sniff(reader: BinaryIO) -> tuple[str | None, BinaryIO]:
    """Which format ``reader`` holds (kmscli's, the ESDK's, or None: neither, perhaps a KMS ciphertext blob),
    and a reader that yields every byte again."""
    from .crypto import armor, stream

    head, reader = armor.peek(reader, _SNIFF_BYTES)
    if head.startswith(stream.MAGIC):
        return FORMAT_KMSCLI, reader
    # The ESDK's version byte: 2, whatever suite follows, so that a message of a suite kmscli does not read is
    # refused naming its suite (exit 6), not sent to a KMS as a blob; or 1 then type 0x80 (crypto/esdk.py
    # is_esdk). AWS KMS's own blobs start 0x01 0x02. Tested without loading the codec: a local decrypt of
    # kmscli's own format never imports it.
    if head[:1] == b"\x02" or head[:2] == b"\x01\x80":
        return FORMAT_ESDK, reader
    return None, reader


def read_small(reader: BinaryIO, what: str, limit: int = MAX_BLOB) -> bytes:
    """All of ``reader`` when it is at most ``limit`` bytes (a blob AWS's API takes whole), else exit 2."""
    from .crypto.stream import read_up_to

    data = read_up_to(reader, limit + 1)
    if len(data) > limit:
        raise errors.ValidationException(f"the {what} is over {limit} bytes, more than the KMS takes in one call")
    return data


def arn_region(key_id: str | None) -> str | None:
    """The region of a key or alias ARN, else None (a key id or alias name: the client's own region)."""
    if key_id and key_id.startswith("arn:"):
        parts = key_id.split(":", 5)
        if len(parts) == 6 and parts[3]:
            return parts[3]
    return None


def esdk_encrypt(kms: Any, key_id: str, reader: BinaryIO, writer: BinaryIO, context: dict[str, str], *,
                 signed: bool = True, progress: Any = None) -> dict[str, Any]:
    """Encrypt ``reader`` onto ``writer`` as an ESDK message whose one data key ``kms`` wraps under ``key_id``."""
    from .crypto import esdk

    made: dict[str, Any] = {}

    def data_key(full_context: dict[str, str]) -> tuple[bytes, list[Any]]:
        answer = kms.GenerateDataKey(KeyId=key_id, KeySpec="AES_256", EncryptionContext=full_context)
        made["KeyId"] = answer["KeyId"]
        return answer["Plaintext"], [esdk.EncryptedDataKey(esdk.PROVIDER_AWS_KMS, answer["KeyId"],
                                                           answer["CiphertextBlob"])]

    esdk.encrypt(reader, writer, context=context, get_data_key=data_key,
                 suite=esdk.SUITE_COMMIT_SIGNED if signed else esdk.SUITE_COMMIT, progress=progress)
    return {"KeyId": made["KeyId"], "EncryptionAlgorithm": SYMMETRIC}


def esdk_decrypt(kms: Any, reader: BinaryIO, writer: BinaryIO, required: dict[str, str], key_id: str | None, *,
                 progress: Any = None) -> dict[str, Any]:
    """Decrypt an ESDK message: the first ``aws-kms`` data key ``kms`` unwraps (only ``key_id``'s if given)."""
    from .crypto import esdk

    header = esdk.read_header(reader)
    if not esdk.required_context_present(header, required):
        raise errors.InvalidCiphertextException()
    ours = [k for k in header.data_keys if k.provider_id == esdk.PROVIDER_AWS_KMS]
    if not ours:
        providers = ", ".join(sorted({k.provider_id for k in header.data_keys}))
        raise errors.InvalidCiphertextException(
            hint=f"its data keys are for other key providers ({providers}); kmscli unwraps only aws-kms ones")
    if key_id is not None and key_id.startswith("arn:aws:kms:") and ":key/" in key_id:
        ours = [k for k in ours if k.provider_info == key_id]
        if not ours:
            raise errors.IncorrectKeyException(hint=f"the message has no data key for {key_id}")
    failure: errors.KmsError | None = None
    for edk in ours:
        plain = io.BytesIO()
        try:
            answer = kms.Decrypt(reader=io.BytesIO(edk.ciphertext), writer=plain, EncryptionContext=header.context,
                                 KeyId=key_id or edk.provider_info, Esdk=False)
        except _TRY_NEXT as e:
            failure = failure or e
            continue
        data_key = plain.getvalue()
        if len(data_key) != esdk.DATA_KEY_SIZE:  # a data key the message's suite cannot have: not its data key
            raise errors.InvalidCiphertextException()
        esdk.decrypt(header, reader, writer, data_key=data_key, progress=progress)
        return {"KeyId": answer["KeyId"], "EncryptionAlgorithm": SYMMETRIC}
    assert failure is not None
    raise failure


# -- reencrypt: a decrypting side and an encrypting side, joined by a pipe ------------------------
Side = Callable[[BinaryIO], Any]


def pipe_through(source: Side, destination: Side) -> tuple[Any, Any]:
    """Run ``source(writer)`` in a thread and ``destination(reader)`` here, the plaintext passing between them
    through a pipe; return both results. A source that fails makes the destination's reader fail at its end,
    so the destination never completes a message of partial data."""
    import threading

    r, w = os.pipe()
    outcome: dict[str, Any] = {}

    def run_source() -> None:
        try:
            with open(w, "wb", closefd=True) as out:
                outcome["result"] = source(out)
        except BaseException as e:  # handed to the reading side, raised there
            outcome["error"] = e

    thread = threading.Thread(target=run_source, name="kmscli-reencrypt-source", daemon=True)
    with open(r, "rb", buffering=0) as raw:
        reader = _Checked(raw, thread, outcome)
        thread.start()
        try:
            result = destination(reader)  # type: ignore[arg-type]
            reader.drain()
        except BaseException:
            reader.abandon()
            raise
    return outcome.get("result"), result


class _Checked(io.RawIOBase):
    """The pipe's reading end: at its end, the source's failure if it failed, else the end."""

    def __init__(self, raw: Any, thread: Any, outcome: dict[str, Any]) -> None:
        super().__init__()
        self._raw, self._thread, self._outcome = raw, thread, outcome

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._raw.readinto(b)
        if not n:
            self._finish()
            return 0
        return int(n)

    def _finish(self) -> None:
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]

    def drain(self) -> None:
        """After the destination finished: the source must have too, successfully, with nothing left over."""
        if self._raw.read(1):
            raise errors.KMSInternalException("re-encryption stopped before the plaintext ended")
        self._finish()

    def abandon(self) -> None:
        self._raw.close()  # the source's next write fails (EPIPE) and its thread ends
        self._thread.join()


def reencrypt(source_kms: Any, destination_kms: Any, reader: BinaryIO, writer: BinaryIO, destination_key: str,
              source_context: dict[str, str], destination_context: dict[str, str], source_key: str | None, *,
              Format: str | None = None, Signed: bool = True, **unsupported: Any) -> dict[str, Any]:
    """Decrypt with ``source_kms`` and encrypt with ``destination_kms``, streaming (either may be the other)."""
    if any(v not in (None, SYMMETRIC) for v in unsupported.values()):
        raise errors.ValidationException("re-encryption between message formats takes symmetric keys only")

    def source(out: BinaryIO) -> Any:
        return source_kms.Decrypt(reader=reader, writer=out, EncryptionContext=source_context, KeyId=source_key)

    def destination(plain: BinaryIO) -> Any:
        return destination_kms.Encrypt(KeyId=destination_key, reader=plain, writer=writer,
                                       EncryptionContext=destination_context, Format=Format, Signed=Signed)

    src, dst = pipe_through(source, destination)
    return {"KeyId": dst["KeyId"], "SourceKeyId": src["KeyId"], "SourceEncryptionAlgorithm": SYMMETRIC,
            "DestinationEncryptionAlgorithm": SYMMETRIC}
