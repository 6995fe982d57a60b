"""The vault file format: layout, round trip, and every tampered byte detected."""

from __future__ import annotations

import hashlib
import struct

import pytest

from kmscli import errors
from kmscli.crypto import primitives as P
from kmscli.vault import format as F

CHEAP = F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1)
SALT = bytes(range(16))
NONCE = bytes(range(100, 112))
VAULT_KEY = bytes(range(200, 232))
BODY = {"format": 1, "vault_id": "00" * 16, "account": "123456789012", "created": "2026-01-01T00:00:00Z",
        "generation": 1, "audit_head": None, "keys": {}, "aliases": {"alias/x": {"TargetKeyId": "k"}}}


def make(passphrase: bytes = b"pw", body: dict | None = None) -> bytes:
    kek = P.argon2id(passphrase, SALT, CHEAP.memory_kib, CHEAP.time_cost, CHEAP.parallelism)
    header = F.build_header(CHEAP, SALT, kek, VAULT_KEY, NONCE)
    return F.seal_body(header, VAULT_KEY, body or BODY, nonce=bytes(12))


def open_vault(data: bytes, passphrase: bytes = b"pw") -> dict:
    header = F.parse_header(data)
    key = F.unwrap_vault_key(header, F.derive_kek(passphrase, header))
    return F.open_body(data, header, key)


def test_layout_matches_docs() -> None:
    data = make()
    assert data[:8] == b"KMSVAULT"
    assert struct.unpack(">H", data[8:10]) == (1,)
    assert data[10] == 1  # Argon2id
    assert struct.unpack(">III", data[11:23]) == (8 * 1024, 1, 1)
    assert data[23:39] == SALT
    assert data[39:51] == NONCE
    assert data[99:131] == hashlib.sha256(data[:99]).digest()
    assert F.HEADER_SIZE == 131
    assert data[131:143] == bytes(12)


def test_round_trip() -> None:
    assert open_vault(make()) == BODY


def test_nothing_readable_in_clear() -> None:
    body = dict(BODY, aliases={"alias/very-secret-name": {"TargetKeyId": "k"}})
    data = make(body=body)
    assert b"very-secret-name" not in data
    assert b"alias" not in data
    assert b"123456789012" not in data


def test_wrong_passphrase_is_unlock_error() -> None:
    with pytest.raises(errors.IncorrectPassphraseException):
        open_vault(make(), b"not it")


def test_every_tampered_byte_is_detected() -> None:
    data = make()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(errors.KmsError) as info:
            open_vault(bytes(bad))
        # Damage is reported as a damaged vault (8), never as success; a flip
        # the checksum cannot see does not exist, since it covers the header.
        assert info.value.exit_code == errors.EXIT_FILE, (i, info.value)


def test_every_truncation_is_detected() -> None:
    data = make()
    for n in range(len(data)):
        with pytest.raises(errors.VaultFileError):
            open_vault(data[:n])


def test_newer_format_version_is_refused_clearly() -> None:
    data = bytearray(make())
    data[8:10] = struct.pack(">H", 2)
    with pytest.raises(errors.VaultVersionException, match="newer than this kmscli"):
        F.parse_header(bytes(data))


@pytest.mark.parametrize(
    ("m", "t", "p"),
    [(1024, 1, 1), (F.MAX_MEMORY_KIB + 1, 1, 1), (8192, 0, 1), (8192, 17, 1), (8192, 1, 0), (8192, 1, 200),
     # The review's hostile header: 4 GiB and 16 passes ran 187 s and 4.2 GB before the passphrase was checked.
     (4 * 1024 * 1024, 16, 4), (F.MAX_MEMORY_KIB, F.MAX_TIME, 1), (F.MAX_MEMORY_KIB, 3, 1), (512 * 1024, 5, 4)],
)
def test_kdf_parameters_bounded_before_derivation(m: int, t: int, p: int) -> None:
    """A header asking for absurd Argon2 work is refused without running Argon2."""
    fixed = struct.pack(">8sHBIII16s", b"KMSVAULT", 1, 1, m, t, p, SALT)
    unsummed = fixed + NONCE + bytes(48)
    data = unsummed + hashlib.sha256(unsummed).digest() + bytes(12 + 16)
    with pytest.raises(errors.VaultCorruptException, match="out of bounds"):
        F.parse_header(data)


def test_garbage_is_not_a_vault() -> None:
    with pytest.raises(errors.VaultCorruptException, match="not a kmscli vault"):
        F.parse_header(b"hello world, this is not a vault" * 10)


def test_kdf_bounds_are_what_init_and_passwd_accept() -> None:
    """Every vault kmscli writes opens; the most work a header may ask for is twice the default."""
    most = F.KdfParams(F.MAX_MEMORY_KIB, F.MAX_WORK_MIB_PASSES // (F.MAX_MEMORY_KIB // 1024), F.MAX_PARALLELISM)
    assert most.in_bounds() and most.bounds_error() is None
    assert (most.memory_kib // 1024) * most.time_cost == 2 * (F.DEFAULT_MEMORY_KIB // 1024) * F.DEFAULT_TIME
    assert F.KdfParams().in_bounds()
    over = F.KdfParams(F.MAX_MEMORY_KIB, most.time_cost + 1, 1)
    assert not over.in_bounds() and "2048 MiB-passes" in (over.bounds_error() or "")
