"""The committed ciphertext vectors (tests/vectors/, see its README.md) still
give the outcome each one names. Nothing here regenerates them: a vector that
fails means kmscli no longer reads ciphertexts it once wrote or refused."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from kmscli.crypto import armor, primitives, stream
from kmscli.errors import InvalidCiphertextException

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
OUTCOMES = {"success", "header failure", "payload failure", "armor failure", "wrong context", "wrong key"}


@dataclass
class Vector:
    name: str
    fields: dict[str, str]
    ciphertext: bytes

    @property
    def expect(self) -> str:
        return self.fields["expect"]

    @property
    def master_key(self) -> bytes:
        return bytes.fromhex(self.fields["master-key"])

    @property
    def context(self) -> dict[str, str]:
        return json.loads(self.fields["context"])

    def reader(self) -> io.RawIOBase:
        """The ciphertext as decrypt sees it: sniffed, and de-armored if armored."""
        armored, src = armor.sniff(io.BytesIO(self.ciphertext))
        assert armored == (self.fields["armor"] == "yes"), "sniff disagrees with the vector's armor field"
        return armor.ArmorReader(src) if armored else src


def load(path: Path) -> Vector:
    data = path.read_bytes()
    text, sep, ciphertext = data.partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the text header"
    fields = dict(line.split(": ", 1) for line in text.decode("ascii").split("\n"))
    return Vector(path.stem, fields, ciphertext)


PATHS = sorted(VECTORS.glob("*.vec"))


def test_the_vectors_are_there_and_small() -> None:
    assert len(PATHS) >= 100
    assert sum(p.stat().st_size for p in PATHS) < 1 << 20
    outcomes = {load(p).expect for p in PATHS}
    assert outcomes == OUTCOMES
    v2 = [load(p) for p in PATHS if p.name.startswith("v2_")]
    assert len(v2) >= 20 and {v.expect for v in v2} == OUTCOMES - {"armor failure"}


def test_the_version_2_success_vectors_are_version_2_and_fit_the_blob_limit() -> None:
    for v in map(load, PATHS):
        if v.expect != "success":
            continue
        header = stream.read_header(v.reader())
        assert header.format_version == (2 if v.name.startswith("v2_") else 1), v.name
        if header.format_version == 2 and int(v.fields["plaintext-length"]) <= 4096:
            assert len(v.ciphertext) <= 6144, (v.name, len(v.ciphertext))


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_vector(path: Path) -> None:
    v = load(path)
    assert v.expect in OUTCOMES
    assert v.fields["defect"]
    {
        "success": _success,
        "header failure": _header_failure,
        "payload failure": _payload_failure,
        "armor failure": _armor_failure,
        "wrong context": _wrong_key_or_context,
        "wrong key": _wrong_key_or_context,
    }[v.expect](v)
    # Whatever the vector, whole-message decryption either gives the one
    # expected plaintext or raises the one opaque error.
    if v.expect != "success":
        out = io.BytesIO()
        with pytest.raises(InvalidCiphertextException):
            src = v.reader()
            stream.decrypt_stream(stream.read_header(src), src, out, master_key=v.master_key, context=v.context)
        if v.expect in ("header failure", "wrong key", "wrong context"):
            assert out.getvalue() == b"", "plaintext released before the header authenticated"


def _check_names(v: Vector, header: stream.Header) -> None:
    # The service picks the master key by these two fields, before any key is known.
    assert header.key_id == v.fields["key-id"]
    assert header.material_version == int(v.fields["material-version"])


def _carries(header: stream.Header, context: dict[str, str]) -> bool:
    """Whether the header, read without a key, says it was made for ``context``."""
    encoded = stream.encode_context(context)
    if header.context is not None:
        assert header.context_digest is None
        return header.context == context
    assert header.format_version == 2 and header.context_length > stream.CONTEXT_INLINE_MAX_BYTES
    return header.context_length == len(encoded) and header.context_digest == stream.context_digest(encoded)


def _success(v: Vector) -> None:
    src = v.reader()
    header = stream.read_header(src)
    _check_names(v, header)
    assert _carries(header, v.context)
    out = io.BytesIO()
    stream.decrypt_stream(header, src, out, master_key=v.master_key, context=v.context)
    plaintext = out.getvalue()
    assert len(plaintext) == int(v.fields["plaintext-length"])
    assert hashlib.sha256(plaintext).hexdigest() == v.fields["plaintext-sha256"]


def _header_failure(v: Vector) -> None:
    src = v.reader()
    with pytest.raises(InvalidCiphertextException):
        header = stream.read_header(src)
        stream.open_header(header, master_key=v.master_key, context=v.context)


def _wrong_key_or_context(v: Vector) -> None:
    src = v.reader()
    header = stream.read_header(src)  # the header is intact: only the key or context is wrong
    _check_names(v, header)
    if v.expect == "wrong context":
        assert not _carries(header, v.context)
    with pytest.raises(InvalidCiphertextException):
        stream.open_header(header, master_key=v.master_key, context=v.context)


def _payload_failure(v: Vector) -> None:
    src = v.reader()
    header = stream.read_header(src)
    _check_names(v, header)
    opened = stream.open_header(header, master_key=v.master_key, context=v.context)  # the header is fine
    assert opened.header.raw == header.raw
    with pytest.raises(InvalidCiphertextException):
        stream.decrypt_stream(header, src, io.BytesIO(), master_key=v.master_key, context=v.context)


def _armor_failure(v: Vector) -> None:
    # The defect is in the armor itself, whatever the ciphertext inside.
    with pytest.raises(InvalidCiphertextException):
        armor.dearmor(v.ciphertext)


def test_the_multikey_wrap_really_opens_under_both_master_keys() -> None:
    """The vector defeats the GCM wrap on purpose; what rejects it is the key
    commitment (and the MAC keyed from the data key)."""
    v = load(VECTORS / "wrapped_key_opens_under_two_master_keys.vec")
    header = stream.read_header(io.BytesIO(v.ciphertext))
    prefix = header.raw[: len(header.raw) - 112]
    kid = bytes.fromhex(header.key_id.replace("-", ""))
    info = b"kmscli ciphertext wrap key v1" + kid + header.material_version.to_bytes(4, "big")
    keys = []
    for master in (v.master_key, bytes(range(32))):
        wrap_key = primitives.hkdf(master, info, salt=header.wrap_salt)
        keys.append(primitives.open_(wrap_key, bytes(12), header.wrapped_key, prefix))
    assert keys[0] != keys[1]
    commit = [primitives.hkdf(k, b"kmscli ciphertext commitment v1", salt=header.payload_salt) for k in keys]
    assert commit[0] != header.commitment and commit[1] == header.commitment
    # The intended master key decrypts it.
    out = io.BytesIO()
    src = io.BytesIO(v.ciphertext)
    stream.decrypt_stream(stream.read_header(src), src, out, master_key=bytes(range(32)), context=v.context)
    assert out.getvalue() == b"meant for master key 1"
