"""Cryptographic operations: envelope encryption of streams, re-encryption, data keys, random bytes."""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from .. import errors
from ..model import KEY_SPEC as SYMMETRIC
from ..model import key_spec, key_usage
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
                EncryptionContext: dict[str, str] | None = None, progress: Any = None,
                EncryptionAlgorithm: str | None = None, Format: str | None = None,
                Signed: bool = True) -> dict[str, Any]:
        """Envelope-encrypt everything ``reader`` yields onto ``writer``; with an RSAES_OAEP_* algorithm, encrypt
        a small plaintext with an RSA key instead (no envelope, AWS's size limits).

        ``Format="esdk"``: the AWS Encryption SDK's message format instead of kmscli's, its data key from this
        vault's GenerateDataKey (recorded as such), signed unless ``Signed`` is False (kmscli/envelope.py).
        """
        from ..crypto import stream

        algorithm = EncryptionAlgorithm or SYMMETRIC
        if Format == "esdk" and algorithm == SYMMETRIC:
            from .. import envelope

            return envelope.esdk_encrypt(self, KeyId, reader, writer, dict(EncryptionContext or {}), signed=Signed,
                                         progress=progress)
        request = {"keyId": KeyId, "encryptionContext": dict(EncryptionContext or {}),
                   "encryptionAlgorithm": algorithm}
        with self._refusing("Encrypt", request):
            context = context_of(EncryptionContext)
            _check_algorithm(algorithm, "encryptionAlgorithm", context)
        if algorithm != SYMMETRIC:
            return self._rsa_encrypt(KeyId, reader, writer, algorithm, request)

        def encrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:Encrypt",
                            {**context_conditions(context), "kms:EncryptionAlgorithm": SYMMETRIC})
            self._require_symmetric(ov, key, "Encrypt")
            self._require_enabled(ov, key)
            material = key["Materials"][-1]
            self._preflight(ov, writer)
            n = stream.encrypt_stream(reader, writer, master_key=material_bytes(material), key_id=key["KeyId"],
                                      material_version=material["Version"], context=context, progress=progress)
            call.request["inputBytes"] = n
            call.response["keyMaterialId"] = material["KeyMaterialId"]
            return {"KeyId": self._arn(ov, key), "EncryptionAlgorithm": SYMMETRIC}

        return self._read("Encrypt", request, encrypt)

    def _rsa_encrypt(self, key_ref: str, reader: BinaryIO, writer: BinaryIO, algorithm: str,
                     request: dict[str, Any]) -> dict[str, Any]:
        from ..crypto import asymmetric as A

        def encrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, key_ref, "kms:Encrypt", {"kms:EncryptionAlgorithm": algorithm})
            spec, usage = key_spec(key), key_usage(key)
            plaintext = read_bounded(reader, A.MAX_MESSAGE, "plaintext")
            call.request["inputBytes"] = len(plaintext)
            self._require_enabled(ov, key)
            blob = A.encrypt(spec, material_bytes(key["Materials"][-1]), algorithm, plaintext, usage=usage,
                             key_id=self._arn(ov, key))
            self._preflight(ov, writer)
            writer.write(blob)
            return {"KeyId": self._arn(ov, key), "EncryptionAlgorithm": algorithm}

        return self._read("Encrypt", request, encrypt)

    def Decrypt(self, reader: BinaryIO, writer: BinaryIO, EncryptionContext: dict[str, str] | None = None,
                KeyId: str | None = None, progress: Any = None,
                EncryptionAlgorithm: str | None = None, Esdk: bool = True) -> dict[str, Any]:
        """Decrypt a kmscli ciphertext; the key comes from the ciphertext, ``KeyId`` only asserts it.

        An AWS Encryption SDK message is recognised too, unless ``Esdk`` is False (AWS's Decrypt on the wire
        takes a KMS ciphertext blob only; so does the unwrapping of a message's data key).

        With an RSAES_OAEP_* algorithm the input is an RSA ciphertext, which names no key: ``KeyId`` is needed.
        """
        from ..crypto import stream

        algorithm = EncryptionAlgorithm or SYMMETRIC
        request: dict[str, Any] = {"encryptionContext": dict(EncryptionContext or {}),
                                   "encryptionAlgorithm": algorithm}
        if KeyId is not None:
            request["keyId"] = KeyId
        with self._refusing("Decrypt", request):
            context = context_of(EncryptionContext)
            _check_algorithm(algorithm, "encryptionAlgorithm", context)
            if algorithm != SYMMETRIC and KeyId is None:
                raise errors.ValidationException(
                    f"KeyId is required to decrypt with {algorithm}: an RSA ciphertext does not name its key",
                    hint="give --key")
        if algorithm != SYMMETRIC:
            assert KeyId is not None
            return self._rsa_decrypt(KeyId, reader, writer, algorithm, request)
        from .. import envelope

        kind, reader = envelope.sniff(reader) if Esdk else (None, reader)
        if kind == envelope.FORMAT_ESDK:
            # Its data key is unwrapped by this method, called again on the encrypted data key (recorded as a
            # Decrypt with the message's context); the body is streamed by the ESDK codec.
            return envelope.esdk_decrypt(self, reader, writer, context, KeyId, progress=progress)

        def decrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            header = stream.read_header(reader)
            key, material = self._ciphertext_key(ov, call, header, KeyId, "kms:Decrypt", context,
                                                 {"kms:EncryptionAlgorithm": SYMMETRIC})
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
                    "EncryptionAlgorithm": SYMMETRIC}

        return self._read("Decrypt", request, decrypt)

    def _rsa_decrypt(self, key_ref: str, reader: BinaryIO, writer: BinaryIO, algorithm: str,
                     request: dict[str, Any]) -> dict[str, Any]:
        from ..crypto import asymmetric as A

        def decrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, key_ref, "kms:Decrypt", {"kms:EncryptionAlgorithm": algorithm})
            ciphertext = read_bounded(reader, A.MAX_BLOB, "ciphertextBlob")
            self._require_enabled(ov, key)
            plaintext = A.decrypt(key_spec(key), material_bytes(key["Materials"][-1]), algorithm, ciphertext,
                                  usage=key_usage(key), key_id=self._arn(ov, key))
            call.response["outputBytes"] = len(plaintext)
            self._preflight(ov, writer)
            self._record_before_release(ov, call)
            writer.write(plaintext)
            return {"KeyId": self._arn(ov, key), "EncryptionAlgorithm": algorithm}

        return self._read("Decrypt", request, decrypt)

    def ReEncrypt(self, reader: BinaryIO, writer: BinaryIO, DestinationKeyId: str,
                  SourceEncryptionContext: dict[str, str] | None = None,
                  DestinationEncryptionContext: dict[str, str] | None = None,
                  SourceKeyId: str | None = None, SourceEncryptionAlgorithm: str | None = None,
                  DestinationEncryptionAlgorithm: str | None = None, Format: str | None = None,
                  Signed: bool = True, Esdk: bool = True) -> dict[str, Any]:
        """Move a ciphertext to another key, material or context without releasing its plaintext.

        Between symmetric keys it streams; when either side is an RSA key (an RSAES_OAEP_* algorithm) the
        plaintext is a small one, held in memory only, as AWS bounds it. An ESDK message, or ``Format="esdk"``,
        goes through kmscli/envelope.py: a Decrypt and a GenerateDataKey, the plaintext streamed in between.
        """
        from .. import envelope
        from ..crypto import stream

        if Esdk and SourceEncryptionAlgorithm in (None, SYMMETRIC) and \
                DestinationEncryptionAlgorithm in (None, SYMMETRIC):
            kind, reader = envelope.sniff(reader)
            if kind == envelope.FORMAT_ESDK or Format == envelope.FORMAT_ESDK:
                return envelope.reencrypt(self, self, reader, writer, DestinationKeyId,
                                          dict(SourceEncryptionContext or {}),
                                          dict(DestinationEncryptionContext or {}), SourceKeyId,
                                          Format=Format or envelope.FORMAT_KMSCLI, Signed=Signed)

        src_alg = SourceEncryptionAlgorithm or SYMMETRIC
        dst_alg = DestinationEncryptionAlgorithm or SYMMETRIC
        request: dict[str, Any] = {"destinationKeyId": DestinationKeyId,
                                   "sourceEncryptionContext": dict(SourceEncryptionContext or {}),
                                   "destinationEncryptionContext": dict(DestinationEncryptionContext or {}),
                                   "sourceEncryptionAlgorithm": src_alg, "destinationEncryptionAlgorithm": dst_alg}
        if SourceKeyId is not None:
            request["sourceKeyId"] = SourceKeyId
        with self._refusing("ReEncrypt", request):
            src_ctx, dst_ctx = context_of(SourceEncryptionContext), context_of(DestinationEncryptionContext)
            _check_algorithm(src_alg, "sourceEncryptionAlgorithm", src_ctx)
            _check_algorithm(dst_alg, "destinationEncryptionAlgorithm", dst_ctx)
            if src_alg != SYMMETRIC and SourceKeyId is None:
                raise errors.ValidationException(
                    f"SourceKeyId is required to re-encrypt from {src_alg}: an RSA ciphertext does not name its key")
        if src_alg != SYMMETRIC or dst_alg != SYMMETRIC:
            return self._reencrypt_small(reader, writer, DestinationKeyId, src_ctx, dst_ctx, SourceKeyId,
                                         src_alg, dst_alg, request)

        def reencrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            header = stream.read_header(reader)
            dst = self._resolve(ov, call, DestinationKeyId)
            # kms:RequestAlias is per key: the destination's alias must not
            # stand for the source key in its ReEncryptFrom check, nor the reverse.
            dst_alias, call.alias = call.alias, None
            same = dst["KeyId"] == header.key_id
            src, src_material = self._ciphertext_key(ov, call, header, SourceKeyId, "kms:ReEncryptFrom", src_ctx,
                                                     {"kms:ReEncryptOnSameKey": same,
                                                      "kms:EncryptionAlgorithm": SYMMETRIC})
            call.alias = dst_alias
            self._authorize(ov, call, dst, "kms:ReEncryptTo",
                            {**context_conditions(dst_ctx), "kms:ReEncryptOnSameKey": same,
                             "kms:EncryptionAlgorithm": SYMMETRIC})
            self._require_symmetric(ov, dst, "ReEncrypt")
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
                    "SourceEncryptionAlgorithm": SYMMETRIC, "DestinationEncryptionAlgorithm": SYMMETRIC}

        return self._read("ReEncrypt", request, reencrypt)

    def _reencrypt_small(self, reader: BinaryIO, writer: BinaryIO, dst_ref: str, src_ctx: dict[str, str],
                         dst_ctx: dict[str, str], src_ref: str | None, src_alg: str, dst_alg: str,
                         request: dict[str, Any]) -> dict[str, Any]:
        """ReEncrypt with an RSA key on either side: the plaintext (at most 4096 bytes) stays in this process."""
        from ..crypto import asymmetric as A
        from ..crypto import stream

        def reencrypt(ov: OpenVault, call: Call) -> dict[str, Any]:
            dst = self._resolve(ov, call, dst_ref)
            dst_alias, call.alias = call.alias, None
            out: dict[str, Any] = {}
            if src_alg == SYMMETRIC:
                header = stream.read_header(reader)
                same = dst["KeyId"] == header.key_id
                src, src_material = self._ciphertext_key(ov, call, header, src_ref, "kms:ReEncryptFrom", src_ctx,
                                                         {"kms:ReEncryptOnSameKey": same,
                                                          "kms:EncryptionAlgorithm": SYMMETRIC})
                held = _Bounded(A.MAX_MESSAGE)
                stream.decrypt_stream(header, reader, held, master_key=material_bytes(src_material), context=src_ctx)
                plaintext = held.getvalue()
                out["SourceKeyMaterialId"] = src_material["KeyMaterialId"]
            else:
                assert src_ref is not None
                src = self._resolve(ov, call, src_ref)
                same = dst["KeyId"] == src["KeyId"]
                self._authorize(ov, call, src, "kms:ReEncryptFrom",
                                {"kms:ReEncryptOnSameKey": same, "kms:EncryptionAlgorithm": src_alg})
                ciphertext = read_bounded(reader, A.MAX_BLOB, "ciphertextBlob")
                self._require_enabled(ov, src)
                plaintext = A.decrypt(key_spec(src), material_bytes(src["Materials"][-1]), src_alg, ciphertext,
                                      usage=key_usage(src), key_id=self._arn(ov, src))
            call.alias = dst_alias
            self._authorize(ov, call, dst, "kms:ReEncryptTo",
                            {**context_conditions(dst_ctx), "kms:ReEncryptOnSameKey": same,
                             "kms:EncryptionAlgorithm": dst_alg})
            self._require_enabled(ov, dst)
            dst_material = dst["Materials"][-1]
            if dst_alg == SYMMETRIC:
                self._require_symmetric(ov, dst, "ReEncrypt")
                blob = stream.encrypt_bytes(plaintext, master_key=material_bytes(dst_material), key_id=dst["KeyId"],
                                            material_version=dst_material["Version"], context=dst_ctx)
                out["DestinationKeyMaterialId"] = dst_material["KeyMaterialId"]
            else:
                blob = A.encrypt(key_spec(dst), material_bytes(dst_material), dst_alg, plaintext,
                                 usage=key_usage(dst), key_id=self._arn(ov, dst))
            self._preflight(ov, writer)
            writer.write(blob)
            call.response.update(keyId=dst["KeyId"], sourceKeyId=src["KeyId"])
            return {"KeyId": self._arn(ov, dst), "SourceKeyId": self._arn(ov, src), **out,
                    "SourceEncryptionAlgorithm": src_alg, "DestinationEncryptionAlgorithm": dst_alg}

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
            key = self._key(ov, call, key_ref, "kms:" + event,
                            {**context_conditions(context), "kms:EncryptionAlgorithm": SYMMETRIC})
            self._require_symmetric(ov, key, event)
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

    def GenerateDataKeyPair(self, KeyId: str, KeyPairSpec: str,
                            EncryptionContext: dict[str, str] | None = None) -> dict[str, Any]:
        """A new key pair: its public key, its private key encrypted under a symmetric key and in plaintext."""
        return self._data_key_pair("GenerateDataKeyPair", KeyId, KeyPairSpec, EncryptionContext, True)

    def GenerateDataKeyPairWithoutPlaintext(self, KeyId: str, KeyPairSpec: str,
                                            EncryptionContext: dict[str, str] | None = None) -> dict[str, Any]:
        """A new key pair: its public key and its private key encrypted under a symmetric key only."""
        return self._data_key_pair("GenerateDataKeyPairWithoutPlaintext", KeyId, KeyPairSpec, EncryptionContext,
                                   False)

    def _data_key_pair(self, event: str, key_ref: str, pair_spec: str, ec: dict[str, str] | None,
                       with_plaintext: bool) -> dict[str, Any]:
        from ..crypto import asymmetric as A
        from ..crypto import stream

        request: dict[str, Any] = {"keyId": key_ref, "keyPairSpec": pair_spec, "encryptionContext": dict(ec or {})}
        with self._refusing(event, request):
            context = context_of(ec)
            spec = A.check_enum(pair_spec, "DataKeyPairSpec", "keyPairSpec")
            if spec in A.REFUSED_DATA_KEY_PAIR_SPECS:
                raise errors.UnsupportedOperationException(
                    f"KeyPairSpec {spec} is not supported: {A.REFUSED_DATA_KEY_PAIR_SPECS[spec]}")

        def generate(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, key_ref, "kms:" + event,
                            {**context_conditions(context), "kms:DataKeyPairSpec": spec,
                             "kms:EncryptionAlgorithm": SYMMETRIC})
            self._require_symmetric(ov, key, event)
            self._require_enabled(ov, key)
            material = key["Materials"][-1]
            private, public = A.generate_data_key_pair(spec)
            blob = stream.encrypt_bytes(private, master_key=material_bytes(material), key_id=key["KeyId"],
                                        material_version=material["Version"], context=context)
            out: dict[str, Any] = {"PrivateKeyCiphertextBlob": blob}
            if with_plaintext:
                out["PrivateKeyPlaintext"] = private
            out.update(PublicKey=public, KeyId=self._arn(ov, key), KeyPairSpec=spec,
                       KeyMaterialId=material["KeyMaterialId"])
            call.response["keyMaterialId"] = material["KeyMaterialId"]
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


def _check_algorithm(algorithm: str, member: str, context: dict[str, str]) -> None:
    """An EncryptionAlgorithmSpec of AWS's enum; an RSA one takes no encryption context (AWS binds a context to
    symmetric ciphertexts only)."""
    from ..crypto import asymmetric as A

    A.check_enum(algorithm, "EncryptionAlgorithmSpec", member)
    if algorithm != SYMMETRIC and context:
        raise errors.ValidationException(
            f"an encryption context applies only to SYMMETRIC_DEFAULT encryption, not to {algorithm}",
            hint="drop --context; RSA ciphertexts bind no context")


def read_bounded(reader: BinaryIO, limit: int, member: str) -> bytes:
    """All of ``reader`` when it holds at most ``limit`` bytes; AWS's length ValidationException otherwise
    (reading stops one byte past the limit, so a large input costs nothing)."""
    from ..crypto import asymmetric as A
    from ..crypto import stream

    return A.check_length(stream.read_up_to(reader, limit + 1), member, limit)


class _Bounded:
    """A writer that holds at most ``limit`` bytes: the plaintext of a re-encryption to an RSA key."""

    def __init__(self, limit: int) -> None:
        self._parts: list[bytes] = []
        self._held = 0
        self._limit = limit

    def write(self, data: Any) -> int:
        self._held += len(data)
        if self._held > self._limit:
            raise errors.ValidationException(
                f"the plaintext is over {self._limit} bytes: too large to re-encrypt under an RSA key")
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
