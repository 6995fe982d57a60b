"""Wrapping key material for ImportKeyMaterial the way a user's tool does it, with ``cryptography`` alone.

Independent of kmscli's code: what AWS's guide says a wrapping algorithm is
(RSAES-OAEP with one hash for the digest and MGF1; RSA_AES_KEY_WRAP: a fresh
AES-256 key OAEP-wrapped, then the material under RFC 5649 key wrap with
padding, the two concatenated). The CLI tests do the same with ``openssl``.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import padding


def oaep(hash_name: str) -> padding.OAEP:
    h = hashes.SHA1 if hash_name == "sha1" else hashes.SHA256
    return padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None)


def wrap(public_der: bytes, algorithm: str, material: bytes) -> bytes:
    """EncryptedKeyMaterial for ``material`` under the wrapping public key ``public_der`` with ``algorithm``."""
    public = ser.load_der_public_key(public_der)
    hash_name = "sha1" if algorithm.endswith("_SHA_1") else "sha256"
    if algorithm.startswith("RSAES_OAEP_"):
        return public.encrypt(material, oaep(hash_name))  # type: ignore[union-attr]
    assert algorithm.startswith("RSA_AES_KEY_WRAP_"), algorithm
    aes = os.urandom(32)
    return public.encrypt(aes, oaep(hash_name)) + keywrap.aes_key_wrap_with_padding(aes, material)  # type: ignore[union-attr]


def pkcs8(private_key: object) -> bytes:
    return private_key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                     ser.NoEncryption())
