"""Cryptographic operations: envelope encryption of streams, re-encryption, data keys, random bytes."""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from .. import errors
from ..vault.store import OpenVault
from ._core import (
    DATA_KEY_SPECS,
    RANDOM_BYTES_MAX,
    RANDOM_BYTES_MIN,
    Call,
    Core,
    RecordFirst,
    check_range,
    context_conditions,
    context_of,
    material_bytes,
)


class CryptoOps(Core):
    def Encrypt(self, KeyId: str, reader: BinaryIO, writer: BinaryIO,
                EncryptionContext: dict[str, str] | None = None, progress: Any = None) -> dict[str, Any]:
        """Envelope-encrypt everything ``reader`` yields onto ``writer``."""
        from ..crypto import stream

        request = {"keyId": KeyId, "encryptionContext": dict(EncryptionContext or {})}
        with self._refusing("Encrypt", request):
            context = context_of(EncryptionContext)

        def encrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:Encrypt", context_conditions(context))
            self._require_enabled(ov, key)
            material = key["Materials"][-1]
            self._preflight(ov, writer)
            n = stream.encrypt_stream(reader, writer, master_key=material_bytes(material), key_id=key["KeyId"],
                                      material_version=material["Version"], context=context, progress=progress)
            call.request["inputBytes"] = n
            call.response["keyMaterialId"] = material["KeyMaterialId"]
            return {"KeyId": self._arn(ov, key), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

        return self._read("Encrypt", request, encrypt)

    def Decrypt(self, reader: BinaryIO, writer: BinaryIO, EncryptionContext: dict[str, str] | None = None,
                KeyId: str | None = None, progress: Any = None) -> dict[str, Any]:
        """Decrypt a kmscli ciphertext; the key comes from the ciphertext, ``KeyId`` only asserts it."""
        from ..crypto import stream

        request: dict[str, Any] = {"encryptionContext": dict(EncryptionContext or {})}
        if KeyId is not None:
            request["keyId"] = KeyId
        with self._refusing("Decrypt", request):
            context = context_of(EncryptionContext)

        def decrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            header = stream.read_header(reader)
            key, material = self._ciphertext_key(ov, call, header, KeyId, "kms:Decrypt", context)
            call.response["keyMaterialId"] = material["KeyMaterialId"]
            self._preflight(ov, writer)
            # The record that releases plaintext is on disk before its first byte
            # leaves (after the header and first chunk authenticated, so a wrong
            # context is one failed record): a call stopped half-way has it.
            gated = RecordFirst(writer, lambda: self._record_before_release(ov, call))
            n = stream.decrypt_stream(header, reader, gated, master_key=material_bytes(material), context=context,
                                      progress=progress)
            call.response["outputBytes"] = n
            return {"KeyId": self._arn(ov, key), "KeyMaterialId": material["KeyMaterialId"],
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

        return self._read("Decrypt", request, decrypt)

    def ReEncrypt(self, reader: BinaryIO, writer: BinaryIO, DestinationKeyId: str,
                  SourceEncryptionContext: dict[str, str] | None = None,
                  DestinationEncryptionContext: dict[str, str] | None = None,
                  SourceKeyId: str | None = None) -> dict[str, Any]:
        """Move a ciphertext to another key, material or context without releasing its plaintext."""
        from ..crypto import stream

        request: dict[str, Any] = {"destinationKeyId": DestinationKeyId,
                                   "sourceEncryptionContext": dict(SourceEncryptionContext or {}),
                                   "destinationEncryptionContext": dict(DestinationEncryptionContext or {})}
        if SourceKeyId is not None:
            request["sourceKeyId"] = SourceKeyId
        with self._refusing("ReEncrypt", request):
            src_ctx, dst_ctx = context_of(SourceEncryptionContext), context_of(DestinationEncryptionContext)

        def reencrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            header = stream.read_header(reader)
            dst = self._resolve(ov, call, DestinationKeyId)
            # kms:RequestAlias is per key: the destination's alias must not
            # stand for the source key in its ReEncryptFrom check, nor the reverse.
            dst_alias, call.alias = call.alias, None
            same = dst["KeyId"] == header.key_id
            src, src_material = self._ciphertext_key(ov, call, header, SourceKeyId, "kms:ReEncryptFrom", src_ctx,
                                                     {"kms:ReEncryptOnSameKey": same})
            call.alias = dst_alias
            self._authorize(ov, call, dst, "kms:ReEncryptTo",
                            {**context_conditions(dst_ctx), "kms:ReEncryptOnSameKey": same})
            self._require_enabled(ov, dst)
            dst_material = dst["Materials"][-1]
            self._preflight(ov, writer)
            stream.rewrap_stream(header, reader, writer, old_master_key=material_bytes(src_material), context=src_ctx,
                                 new_master_key=material_bytes(dst_material), new_key_id=dst["KeyId"],
                                 new_material_version=dst_material["Version"], new_context=dst_ctx)
            call.response.update(keyId=dst["KeyId"], sourceKeyId=src["KeyId"])
            return {"KeyId": self._arn(ov, dst), "SourceKeyId": self._arn(ov, src),
                    "SourceKeyMaterialId": src_material["KeyMaterialId"],
                    "DestinationKeyMaterialId": dst_material["KeyMaterialId"],
                    "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                    "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

        return self._read("ReEncrypt", request, reencrypt)

    def GenerateDataKey(self, KeyId: str, KeySpec: str | None = None, NumberOfBytes: int | None = None,
                        EncryptionContext: dict[str, str] | None = None) -> dict[str, Any]:
        return self._data_key("GenerateDataKey", KeyId, KeySpec, NumberOfBytes, EncryptionContext, True)

    def GenerateDataKeyWithoutPlaintext(self, KeyId: str, KeySpec: str | None = None,
                                        NumberOfBytes: int | None = None,
                                        EncryptionContext: dict[str, str] | None = None) -> dict[str, Any]:
        return self._data_key("GenerateDataKeyWithoutPlaintext", KeyId, KeySpec, NumberOfBytes,
                              EncryptionContext, False)

    def _data_key(self, event: str, key_ref: str, spec: str | None, nbytes: int | None,
                  ec: dict[str, str] | None, with_plaintext: bool) -> dict[str, Any]:
        from ..crypto import primitives as P
        from ..crypto import stream

        request: dict[str, Any] = {"keyId": key_ref, "encryptionContext": dict(ec or {})}
        request.update({"keySpec": spec} if spec else {"numberOfBytes": nbytes})
        with self._refusing(event, request):
            if (spec is None) == (nbytes is None):
                raise errors.ValidationException("give exactly one of --spec (KeySpec) or --bytes (NumberOfBytes)")
            if spec is not None and spec not in DATA_KEY_SPECS:
                raise errors.ValidationException(f"KeySpec must be AES_256 or AES_128 (got '{spec}')")
            if nbytes is not None:
                check_range("NumberOfBytes (--bytes)", nbytes, RANDOM_BYTES_MIN, RANDOM_BYTES_MAX)
            context = context_of(ec)
        size = DATA_KEY_SPECS[spec] if spec is not None else nbytes
        assert size is not None

        def generate(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, key_ref, "kms:" + event, context_conditions(context))
            self._require_enabled(ov, key)
            material = key["Materials"][-1]
            plaintext = P.random_bytes(size)
            blob = stream.encrypt_bytes(plaintext, master_key=material_bytes(material), key_id=key["KeyId"],
                                        material_version=material["Version"], context=context)
            out = {"KeyId": self._arn(ov, key), "KeyMaterialId": material["KeyMaterialId"], "CiphertextBlob": blob}
            if with_plaintext:
                out["Plaintext"] = plaintext
            return out

        return self._read(event, request, generate)

    def GenerateRandomRecorded(self, NumberOfBytes: int) -> bytes:
        """GenerateRandom as `kmscli serve` answers it: recorded like every served request."""
        request = {"numberOfBytes": NumberOfBytes}
        with self._refusing("GenerateRandom", request):
            check_range("NumberOfBytes", NumberOfBytes, RANDOM_BYTES_MIN, RANDOM_BYTES_MAX)
        out: list[bytes] = []

        def generate(ov: OpenVault, call: Call) -> dict[str, Any]:
            out.append(os.urandom(NumberOfBytes))
            return {}

        self._read("GenerateRandom", request, generate)
        return out[0]

    @staticmethod
    def GenerateRandom(NumberOfBytes: int) -> bytes:
        """Random bytes from the OS CSPRNG; needs no vault and is not audited (SPEC)."""
        check_range("NumberOfBytes", NumberOfBytes, RANDOM_BYTES_MIN, RANDOM_BYTES_MAX)
        return os.urandom(NumberOfBytes)
