"""The primitives kmscli is built from, behind one small interface.

Every AEAD here is AES-256-GCM with 96-bit nonces; every KDF over a secret is
HKDF-SHA-256 with a purpose label, so no two uses of one key can collide.
Heavy modules (``cryptography``, ``argon2``) are imported on first use, never
at start-up, so commands that need no crypto stay fast.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


class AuthenticationFailed(Exception):
    """An AEAD tag did not verify. Callers turn this into their own opaque error."""


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)


def aead(key: bytes) -> Any:
    """Return a reusable AES-256-GCM object for ``key``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != KEY_SIZE:
        raise ValueError("AES-256-GCM key must be 32 bytes")
    return AESGCM(key)


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM encrypt; returns ciphertext || 16-byte tag."""
    return aead(key).encrypt(nonce, plaintext, aad)


def open_(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM decrypt, raising :class:`AuthenticationFailed` on any mismatch."""
    from cryptography.exceptions import InvalidTag

    try:
        return aead(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise AuthenticationFailed() from None


def hkdf(ikm: bytes, info: bytes, length: int = KEY_SIZE, salt: bytes = b"") -> bytes:
    """HKDF-SHA-256 (RFC 5869), written with the stdlib to keep imports light."""
    prk = hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256 of ``data``."""
    return hmac.new(key, data, hashlib.sha256).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two MACs without leaking where they differ."""
    return hmac.compare_digest(a, b)


#: Taken around every Argon2id run when set: a context manager factory given the
#: run's memory in KiB. The CLI sets it to bound how many run at once for one
#: user (kmscli/cli/kdf_slots.py); the library itself sets no limit.
kdf_gate: Callable[[int], AbstractContextManager[None]] | None = None


def argon2id(passphrase: bytes, salt: bytes, memory_kib: int, time_cost: int, parallelism: int) -> bytes:
    """Derive a 32-byte key from a passphrase with Argon2id (RFC 9106)."""
    gate = kdf_gate
    if gate is None:
        return _argon2id(passphrase, salt, memory_kib, time_cost, parallelism)
    with gate(memory_kib):
        return _argon2id(passphrase, salt, memory_kib, time_cost, parallelism)


def _argon2id(passphrase: bytes, salt: bytes, memory_kib: int, time_cost: int, parallelism: int) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=time_cost,
        memory_cost=memory_kib,
        parallelism=parallelism,
        hash_len=KEY_SIZE,
        type=Type.ID,
    )
