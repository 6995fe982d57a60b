"""Make the AWS Encryption SDK known-answer vectors in this folder (see README.md).

    .venv/bin/python tests/vectors/esdk/generate.py   # writes only files that do not exist yet

``sdk_*.json`` are messages made by the AWS Encryption SDK for Python itself
(aws_encryption_sdk, a raw AES master key with the static wrapping key below):
the SDK picks the data key, message id and signing key at random, so running
this again gives other bytes, which is why an existing file is never
overwritten. The data key each one was made with is recorded, unwrapped from
its encrypted data key at generation time; the test decrypts with it.

``kmscli_*.json`` are made by kmscli's own ``esdk.encrypt`` through its
deterministic seam (data key, message id) with the unsigned suite, so they
are reproducible byte for byte; the test checks that encrypt still writes
exactly these bytes and that the SDK decrypts them.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from kmscli.crypto import esdk  # noqa: E402

HERE = Path(__file__).resolve().parent
WRAPPING_KEY = bytes(range(32))
PROVIDER_ID = "kmscli-test"
KEY_NAME = b"static-wrapping-key"


def _pt(name: str, n: int) -> bytes:
    return hashlib.shake_256(name.encode()).digest(n)


def sdk_vector(name: str, algorithm_name: str, frame_length: int, size: int, context: dict[str, str]) -> dict:
    import aws_encryption_sdk
    from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy, EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    class Provider(RawMasterKeyProvider):  # type: ignore[misc]
        provider_id = PROVIDER_ID

        def _get_raw_key(self, key_id: bytes) -> WrappingKey:
            return WrappingKey(wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                               wrapping_key=WRAPPING_KEY, wrapping_key_type=EncryptionKeyType.SYMMETRIC)

    provider = Provider()
    provider.add_master_key(KEY_NAME)
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    plaintext = _pt(name, size)
    message, _ = client.encrypt(source=plaintext, key_provider=provider, algorithm=getattr(Algorithm, algorithm_name),
                                frame_length=frame_length, encryption_context=context)
    header = esdk.read_header(io.BytesIO(message))
    edk = header.data_keys[0]
    iv = edk.provider_info_bytes[len(KEY_NAME) + 8:]
    data_key = AESGCM(WRAPPING_KEY).decrypt(iv, edk.ciphertext, esdk.serialize_context(header.context))
    return {
        "description": f"made by aws_encryption_sdk {aws_encryption_sdk.__version__}: {algorithm_name}, "
                       f"frame length {frame_length}, {size} plaintext bytes (SHAKE-256 of the vector's name)",
        "expect": "success",
        "suite": f"0x{header.suite_id:04X}",
        "frame_length": frame_length,
        "wrapping_key": WRAPPING_KEY.hex(),
        "provider_id": PROVIDER_ID,
        "key_name": KEY_NAME.decode(),
        "data_key": data_key.hex(),
        "context": header.context,
        "plaintext": plaintext.hex(),
        "message": message.hex(),
    }


def kmscli_vector(name: str, frame_length: int, size: int, context: dict[str, str]) -> dict:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data_key = hashlib.shake_256(b"data key " + name.encode()).digest(32)
    message_id = hashlib.shake_256(b"message id " + name.encode()).digest(32)
    wrap_iv = hashlib.shake_256(b"wrap iv " + name.encode()).digest(12)
    plaintext = _pt(name, size)

    def get_data_key(full: dict[str, str]) -> tuple[bytes, list[esdk.EncryptedDataKey]]:
        wrapped = AESGCM(WRAPPING_KEY).encrypt(wrap_iv, data_key, esdk.serialize_context(full))
        info = KEY_NAME + struct.pack(">II", 128, 12) + wrap_iv
        return data_key, [esdk.EncryptedDataKey.from_bytes(PROVIDER_ID, info, wrapped)]

    out = io.BytesIO()
    esdk.encrypt(io.BytesIO(plaintext), out, context=context, get_data_key=get_data_key, suite=esdk.SUITE_COMMIT,
                 frame_length=frame_length, message_id=message_id)
    return {
        "description": f"made by kmscli's esdk.encrypt through its seam: 0x0478, frame length {frame_length}, "
                       f"{size} plaintext bytes; SHAKE-256 of the name gives data key, message id, wrap IV, plaintext",
        "expect": "success",
        "suite": "0x0478",
        "frame_length": frame_length,
        "wrapping_key": WRAPPING_KEY.hex(),
        "provider_id": PROVIDER_ID,
        "key_name": KEY_NAME.decode(),
        "data_key": data_key.hex(),
        "message_id": message_id.hex(),
        "wrap_iv": wrap_iv.hex(),
        "context": context,
        "plaintext": plaintext.hex(),
        "message": out.getvalue().hex(),
    }


VECTORS = {
    "sdk_commit_key_three_frames": lambda n: sdk_vector(n, "AES_256_GCM_HKDF_SHA512_COMMIT_KEY", 128, 300,
                                                         {"purpose": "test vectors", "tenant": "acme"}),
    "sdk_commit_key_ecdsa_p384_frame_multiple": lambda n: sdk_vector(
        n, "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384", 128, 256, {"purpose": "test vectors"}),
    "sdk_commit_key_ecdsa_p384_empty": lambda n: sdk_vector(
        n, "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384", 4096, 0, {}),
    "kmscli_commit_key_odd_frames": lambda n: kmscli_vector(n, 100, 250, {"purpose": "test vectors", "é": "ü"}),
}


def main() -> None:
    for name, make in VECTORS.items():
        path = HERE / f"{name}.json"
        if path.exists():
            print(f"kept {path.name}")
            continue
        path.write_text(json.dumps(make(name), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
