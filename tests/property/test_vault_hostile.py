"""A vault file from anyone: only the documented errors, bounded memory, Argon2 never above its caps.

The header is the attack surface of a vault file: anyone who can write the
file (but not unlock it) chooses every byte, and can recompute the unkeyed
header checksum. Whatever they write, opening it raises ``VaultFileError``
(exit 8) or, for a header that is well formed but was not made with this
passphrase, ``IncorrectPassphraseException`` (exit 5); Argon2 runs only with
parameters inside the caps of docs/vault.md; memory stays bounded by the
file-size cap. Here Argon2 is replaced by a stand-in that checks its
parameters (a cheap real run is kept for the files made with the right
passphrase).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli import errors
from kmscli.crypto import primitives as P
from kmscli.vault import format as F
from kmscli.vault.store import PassphraseKeySource, VaultStore

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CHEAP = F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1)
PASSPHRASE = b"pw"
VAULT_KEY = bytes(range(200, 232))
BODY = {"format": 1, "vault_id": "00" * 16, "account": "123456789012", "created": "2026-01-01T00:00:00Z",
        "generation": 1, "audit_head": None, "keys": {}, "aliases": {}}
DOCUMENTED = (errors.VaultFileError, errors.IncorrectPassphraseException)
_REAL_ARGON2 = P.argon2id
ARGON2_CALLS: list[tuple[int, int, int]] = []


def _checked_argon2(passphrase: bytes, salt: bytes, memory_kib: int, time_cost: int, parallelism: int) -> bytes:
    """Argon2 as kmscli must call it: parameters inside the caps, whatever the file said."""
    assert F.MIN_MEMORY_KIB <= memory_kib <= F.MAX_MEMORY_KIB, memory_kib
    assert F.MIN_TIME <= time_cost <= F.MAX_TIME, time_cost
    assert F.MIN_PARALLELISM <= parallelism <= F.MAX_PARALLELISM, parallelism
    assert len(salt) == F.SALT_SIZE
    ARGON2_CALLS.append((memory_kib, time_cost, parallelism))
    if (memory_kib, time_cost, parallelism) == (CHEAP.memory_kib, CHEAP.time_cost, CHEAP.parallelism):
        return _REAL_ARGON2(passphrase, salt, memory_kib, time_cost, parallelism)
    return hashlib.sha256(b"stand-in kek" + passphrase + salt).digest()  # never run gigabytes for a hostile file


@pytest.fixture(autouse=True)
def argon2_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "argon2id", _checked_argon2)

    def low_level(**kwargs):  # nothing may reach the library but through the checked primitive
        raise AssertionError(f"argon2 called directly with {kwargs}")

    import argon2.low_level

    real = argon2.low_level.hash_secret_raw

    def guarded(*args, **kwargs):
        import inspect

        if not any(f.function == "_checked_argon2" for f in inspect.stack()[1:6]):
            low_level(**kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(argon2.low_level, "hash_secret_raw", guarded)


def make(body: dict | None = None, kdf: F.KdfParams = CHEAP, salt: bytes = bytes(range(16))) -> bytes:
    kek = _REAL_ARGON2(PASSPHRASE, salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism) if kdf == CHEAP \
        else hashlib.sha256(b"stand-in kek" + PASSPHRASE + salt).digest()
    header = F.build_header(kdf, salt, kek, VAULT_KEY, bytes(range(100, 112)))
    return F.seal_body(header, VAULT_KEY, body or BODY, nonce=bytes(12))


GOOD = make()


def open_file(folder: Path, data: bytes) -> dict | None:
    """Open ``data`` as a vault file; None when refused in a documented way."""
    path = folder / "vault.kms"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    try:
        return VaultStore(path).open(PassphraseKeySource(lambda: PASSPHRASE)).body
    except DOCUMENTED as e:
        assert str(e) and "\n" not in str(e)
        return None


def with_checksum(header_fields: bytes, rest: bytes) -> bytes:
    """Bytes 0..99 as given, a correct header checksum, then ``rest``: what an attacker can always make."""
    return header_fields + hashlib.sha256(header_fields).digest() + rest


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes(tmp_path: Path, blob: bytes) -> None:
    for data in (blob, F.MAGIC + blob, F.MAGIC + b"\x00\x01" + blob):
        assert open_file(tmp_path, data) is None


@SETTINGS
@given(
    version=st.integers(0, 0xFFFF) | st.just(1),
    kdf_id=st.integers(0, 255) | st.just(1),
    m=st.integers(0, 2**32 - 1) | st.sampled_from([F.MIN_MEMORY_KIB - 1, F.MAX_MEMORY_KIB, F.MAX_MEMORY_KIB + 1]),
    t=st.integers(0, 2**32 - 1) | st.integers(0, 20),
    p=st.integers(0, 2**32 - 1) | st.integers(0, 20),
    salt=st.binary(min_size=16, max_size=16),
    wrapped=st.binary(min_size=60, max_size=60),
    rest=st.binary(max_size=200),
)
def test_crafted_headers_with_a_valid_checksum(tmp_path: Path, version: int, kdf_id: int, m: int, t: int, p: int,
                                               salt: bytes, wrapped: bytes, rest: bytes) -> None:
    fields = struct.pack(">8sHBIII16s", F.MAGIC, version, kdf_id, m, t, p, salt) + wrapped
    ARGON2_CALLS.clear()
    try:
        assert open_file(tmp_path, with_checksum(fields, rest)) is None
    finally:
        in_bounds = F.KdfParams(m, t, p).in_bounds()
        assert ARGON2_CALLS in ([], [(m, t, p)]) and (in_bounds or not ARGON2_CALLS), (m, t, p, ARGON2_CALLS)


@SETTINGS
@given(st.data())
def test_any_change_to_a_real_vault(tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(GOOD)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice", "rechecksum"]))
    pos = data.draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del blob[pos:]
    elif kind == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
    else:  # change the header, then fix the checksum as an attacker would
        at = data.draw(st.integers(0, 98))
        blob[at] ^= data.draw(st.integers(1, 255))
        blob[99:131] = hashlib.sha256(bytes(blob[:99])).digest()
    assert open_file(tmp_path, bytes(blob)) is None


def test_the_untouched_vault_opens(tmp_path: Path) -> None:
    assert open_file(tmp_path, GOOD) == BODY


@pytest.mark.parametrize("body", [[], "x", 1, None, {}, {"format": 2}, {"format": "1"}])
def test_an_authenticated_body_of_the_wrong_shape(tmp_path: Path, body: object) -> None:
    header = F.parse_header(GOOD)
    data = header.raw + bytes(12) + P.seal(F.body_key(VAULT_KEY), bytes(12),
                                           __import__("json").dumps(body).encode(), header.raw)
    assert open_file(tmp_path, data) is None


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "vault.kms"
    with open(path, "wb") as f:
        f.write(GOOD[: F.HEADER_SIZE])
        f.truncate(1 << 30)  # sparse: a gigabyte on paper, nothing on disk
    os.chmod(path, 0o600)

    def open_it() -> None:
        with pytest.raises(errors.VaultCorruptException, match="larger than kmscli allows"):
            VaultStore(path).open(PassphraseKeySource(lambda: PASSPHRASE))

    assert _peak(open_it) < 1 << 20


@pytest.mark.parametrize("size", [F.MIN_FILE_SIZE, 1 << 16, 1 << 20])
def test_memory_while_refusing_a_hostile_file_is_bounded_by_its_size(tmp_path: Path, size: int) -> None:
    """A header at the caps (1 GiB, the most passes allowed) with a body of junk: memory ~ file size."""
    t = F.MAX_WORK_MIB_PASSES // (F.MAX_MEMORY_KIB // 1024)
    fields = struct.pack(">8sHBIII16s", F.MAGIC, 1, 1, F.MAX_MEMORY_KIB, t, F.MAX_PARALLELISM, bytes(16))
    data = with_checksum(fields + bytes(60), os.urandom(size - F.HEADER_SIZE))
    ARGON2_CALLS.clear()
    assert _peak(lambda: open_file(tmp_path, data)) < 3 * size + (2 << 20)  # reads in 1 MiB blocks
    caps = (F.MAX_MEMORY_KIB, t, F.MAX_PARALLELISM)
    calls = list(ARGON2_CALLS)
    assert calls == [caps]  # the caps, checked, not above
