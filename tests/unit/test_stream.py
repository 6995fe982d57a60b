"""The ciphertext format (kmscli/crypto/stream.py) against docs/format.md."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kmscli.crypto import stream
from kmscli.errors import InvalidCiphertextException, ValidationException

ROOT = Path(__file__).resolve().parents[2]
MK = bytes(range(32))
OTHER_MK = bytes(32)
KID = "1b4e28ba-2fa1-4d2e-883f-0016d3cca427"
CTX = {"app": "kat", "env": "test"}
SMALL = stream.MIN_CHUNK_SIZE


def enc(data: bytes, *, chunk_size: int = SMALL, context: dict | None = None, **kw) -> bytes:
    return stream.encrypt_bytes(
        data,
        master_key=kw.pop("master_key", MK),
        key_id=kw.pop("key_id", KID),
        material_version=kw.pop("material_version", 1),
        context=CTX if context is None else context,
        chunk_size=chunk_size,
        **kw,
    )


def dec(ct: bytes, *, master_key: bytes = MK, context: dict | None = None) -> bytes:
    return stream.decrypt_bytes(ct, master_key=master_key, context=CTX if context is None else context)


def data_of(n: int) -> bytes:
    return hashlib.shake_256(n.to_bytes(8, "big")).digest(n)


class ShortReader(io.RawIOBase):
    """Returns at most ``step`` bytes per readinto, and None (nothing yet, as a
    non-blocking file does) on every third call when ``nones`` is set."""

    def __init__(self, data: bytes, step: int, nones: bool = False) -> None:
        self._data, self._pos, self._step, self._nones, self._calls = data, 0, step, nones, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int | None:  # type: ignore[override]
        self._calls += 1
        if self._nones and self._calls % 3 == 0:
            return None
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class StingyWriter:
    """Takes at most ``step`` bytes per write, and nothing (None) every third call,
    as a raw or non-blocking stdout may."""

    def __init__(self, step: int) -> None:
        self.data, self._step, self._calls = bytearray(), step, 0

    def write(self, b) -> int | None:
        self._calls += 1
        if self._calls % 3 == 0:
            return None
        n = min(len(b), self._step)
        self.data += bytes(b[:n])
        return n


# -- known answer ------------------------------------------------------------------
KAT_PLAINTEXT = b"kmscli known answer\n"
KAT_CIPHERTEXT = bytes.fromhex(
    "894b4d530d0a1a0a010c1b4e28ba2fa14d2e883f0016d3cca42700000007222222222222222222222222222222222222"
    "222222222222222222222222222233333333333333333333333333333333333333333333333333333333333333330017"
    "0002000361707000036b61740003656e76000474657374ade2aaccaad57f9480083294c19008ad7821b1b2d770e2aec7"
    "33bd95ec24e872b95a06a28bd3eb7fd9bdfa58b9ac83d1eaa7aa238b140485f45b4d2755585878898575ca89cb99d8e7"
    "87cf4e24df130038c2d4e88536142b677000949a16812f31b79df4fba45aa70bb123728692c37a9702287b37c3aef7b4"
    "3d8570cc688baf05932aa21f0f53bfa852a758a8eb6d97cd014a62"
)


def kat_encrypt(**kw) -> bytes:
    return enc(
        kw.pop("plaintext", KAT_PLAINTEXT),
        material_version=7,
        data_key=b"\x11" * 32,
        salt=b"\x22" * 32,
        wrap_salt=b"\x33" * 32,
        format_version=kw.pop("format_version", 1),
        **kw,
    )


def test_known_answer_pins_every_byte() -> None:
    assert kat_encrypt() == KAT_CIPHERTEXT
    assert dec(KAT_CIPHERTEXT) == KAT_PLAINTEXT


# Version 2 with a context of 1035 bytes encoded: the header holds its digest.
KAT2_PLAINTEXT = b"kmscli known answer, version 2\n"
KAT2_CONTEXT = {"blob": "x" * 1015, "app": "kat"}
KAT2_CIPHERTEXT = bytes.fromhex(
    "894b4d530d0a1a0a020c1b4e28ba2fa14d2e883f0016d3cca42700000007222222222222222222222222222222222222"
    "22222222222222222222222222223333333333333333333333333333333333333333333333333333333333333333040b"
    "b532f0853997d429990986f849cd70a3f3c6cfa4df6d4260a60281d95472ca0b7693cd978ded2fbd4674d670bbce56f3"
    "a5c671691f975dcc213a026d4d50e5aa6b950ca870b4eb3e79c69bdd8c452f98eaa7aa238b140485f45b4d2755585878"
    "898575ca89cb99d8e787cf4e24df1300b2110ef4075a440655fd1dd854c8325ce79d7b6913570cc8f4137cf141bf383e"
    "9702287b37c3aef7b43d8570cc688baf05932a845666d18f3d28254cf34dfdfe2a01d101012ca66009e58bed0dbd29"
)


def test_version_2_known_answer_pins_every_byte() -> None:
    assert kat_encrypt(plaintext=KAT2_PLAINTEXT, context=KAT2_CONTEXT, format_version=2) == KAT2_CIPHERTEXT
    assert dec(KAT2_CIPHERTEXT, context=KAT2_CONTEXT) == KAT2_PLAINTEXT
    # The default is version 2, and a small context is stored exactly as in version 1.
    assert enc(b"x")[8] == stream.FORMAT_VERSION == 2
    v1, v2 = kat_encrypt(), kat_encrypt(format_version=2)
    p = 96 + len(stream.encode_context(CTX))  # where the wrapped key starts, in both
    assert v2[8] == 2 and v2[9:p] == v1[9:p] and v2[p : p + 48] != v1[p : p + 48]  # same layout, another wrap key
    assert len(v2) == len(v1)


def test_version_2_known_answer_decodes_with_only_the_spec_and_cryptography() -> None:
    """docs/format.md, "How the header binds the context", read by hand."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def hkdf(ikm: bytes, info: bytes, salt: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)

    ct = KAT2_CIPHERTEXT
    assert ct[8] == 2 and ct[94:96] == (1035).to_bytes(2, "big")  # L > 1024: a 32-byte digest follows
    encoded = b"\x00\x02" + b"\x00\x03app\x00\x03kat" + b"\x00\x04blob" + (1015).to_bytes(2, "big") + b"x" * 1015
    assert len(encoded) == 1035
    assert ct[96:128] == hashlib.sha256(b"kmscli ciphertext context digest v2" + encoded).digest()
    p = 128
    key_id, payload_salt, wrap_salt = ct[10:26], ct[30:62], ct[62:94]
    wrap_key = hkdf(MK, b"kmscli ciphertext wrap key v2" + key_id + (7).to_bytes(4, "big"), wrap_salt)
    data_key = AESGCM(wrap_key).decrypt(bytes(12), ct[p : p + 48], ct[:p])
    assert data_key == b"\x11" * 32
    assert ct[p + 48 : p + 80] == hkdf(data_key, b"kmscli ciphertext commitment v1", payload_salt)
    header_key = hkdf(data_key, b"kmscli ciphertext header v1", payload_salt)
    assert ct[p + 80 : p + 112] == hmac.new(header_key, ct[: p + 80], hashlib.sha256).digest()
    payload_key = hkdf(data_key, b"kmscli ciphertext payload v1", payload_salt)
    assert AESGCM(payload_key).decrypt(bytes(11) + b"\x01", ct[p + 112 :], b"") == KAT2_PLAINTEXT


def test_known_answer_decodes_with_only_the_spec_and_cryptography() -> None:
    """A second reader written from docs/format.md alone, sharing no code with stream.py."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def hkdf(ikm: bytes, info: bytes, salt: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)

    ct = KAT_CIPHERTEXT
    assert ct[0:8] == b"\x89KMS\r\n\x1a\n" and ct[8] == 1 and ct[9] == 12
    key_id, (version,) = ct[10:26], struct.unpack(">I", ct[26:30])
    payload_salt, wrap_salt = ct[30:62], ct[62:94]
    (ctx_len,) = struct.unpack(">H", ct[94:96])
    ctx = ct[96 : 96 + ctx_len]
    assert (
        key_id.hex() == KID.replace("-", "")
        and version == 7
        and (payload_salt, wrap_salt) == (b"\x22" * 32, b"\x33" * 32)
    )
    assert ctx == b"\x00\x02" + b"\x00\x03app\x00\x03kat" + b"\x00\x03env\x00\x04test"
    p = 96 + ctx_len
    wrapped, commitment, mac = ct[p : p + 48], ct[p + 48 : p + 80], ct[p + 80 : p + 112]
    wrap_key = hkdf(MK, b"kmscli ciphertext wrap key v1" + key_id + version.to_bytes(4, "big"), wrap_salt)
    data_key = AESGCM(wrap_key).decrypt(bytes(12), wrapped, ct[:p])
    assert data_key == b"\x11" * 32
    assert commitment == hkdf(data_key, b"kmscli ciphertext commitment v1", payload_salt)
    header_key = hkdf(data_key, b"kmscli ciphertext header v1", payload_salt)
    assert mac == hmac.new(header_key, ct[: p + 80], hashlib.sha256).digest()
    payload_key = hkdf(data_key, b"kmscli ciphertext payload v1", payload_salt)
    body = ct[p + 112 :]
    assert AESGCM(payload_key).decrypt(bytes(11) + b"\x01", body, b"") == KAT_PLAINTEXT


def test_header_fields() -> None:
    header = stream.parse_header(KAT_CIPHERTEXT[: len(KAT_CIPHERTEXT) - len(KAT_PLAINTEXT) - 16])
    assert header.key_id == KID
    assert header.material_version == 7
    assert header.context == CTX
    assert (header.context_length, header.context_digest) == (23, None)
    assert header.chunk_size == 4096
    assert header.format_version == 1
    assert header.size == stream.HEADER_MIN_SIZE + len(b"\x00\x03app\x00\x03kat\x00\x03env\x00\x04test")
    assert (header.payload_salt, header.wrap_salt) == (b"\x22" * 32, b"\x33" * 32)


def test_header_fields_of_a_digest_bound_context() -> None:
    header = stream.read_header(io.BytesIO(KAT2_CIPHERTEXT))
    assert header.format_version == 2 and header.key_id == KID and header.material_version == 7
    assert header.context is None and header.context_length == 1035
    digest = stream.context_digest(stream.encode_context(KAT2_CONTEXT))
    assert header.context_digest == digest == KAT2_CIPHERTEXT[96:128]
    assert header.size == stream.V2_DIGEST_HEADER_SIZE == 240


def test_default_chunk_size_is_1_mib() -> None:
    # Changing the default changes what new ciphertexts look like (not what
    # old ones decrypt to): do it only with new measurements in docs/format.md.
    assert stream.CHUNK_SIZE == 1 << 20
    assert enc(b"x", chunk_size=stream.CHUNK_SIZE)[9] == 20


def test_context_encoding_is_canonical() -> None:
    a = stream.encode_context({"b": "2", "a": "1", "é": ""})
    b = stream.encode_context({"é": "", "a": "1", "b": "2"})
    assert a == b == b"\x00\x03" + b"\x00\x01a\x00\x011" + b"\x00\x01b\x00\x012" + b"\x00\x02\xc3\xa9\x00\x00"
    assert stream.encode_context({}) == b"\x00\x00"
    # length prefixes keep these apart although their concatenations agree
    assert stream.encode_context({"ab": "c"}) != stream.encode_context({"a": "bc"})


# -- round trips -------------------------------------------------------------------
LENGTHS = [0, 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 2 * SMALL + 77]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("step", [1, 7, 1000, SMALL + 16, 1 << 20])
def test_round_trip_with_short_reads(n: int, step: int) -> None:
    data = data_of(n)
    out = io.BytesIO()
    got = stream.encrypt_stream(
        ShortReader(data, step, nones=step == 7),
        out,
        master_key=MK,
        key_id=KID,
        material_version=1,
        context=CTX,
        chunk_size=SMALL,
    )
    assert got == n
    ct = out.getvalue()
    assert ct == enc(data, data_key=_dk(ct), salt=_salt(ct), wrap_salt=_wsalt(ct))  # same bytes as one read
    src = ShortReader(ct, step, nones=step == 1000)
    header = stream.read_header(src)
    writer = StingyWriter(step=max(1, step // 2))
    assert stream.decrypt_stream(header, src, writer, master_key=MK, context=CTX) == n
    assert bytes(writer.data) == data


def _dk(ct: bytes) -> bytes:
    h = stream.read_header(io.BytesIO(ct))
    return stream.open_header(h, master_key=MK, context=h.context).data_key


def _salt(ct: bytes) -> bytes:
    return stream.read_header(io.BytesIO(ct)).payload_salt


def _wsalt(ct: bytes) -> bytes:
    return stream.read_header(io.BytesIO(ct)).wrap_salt


@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("chunks", [0, 1, 2])
def test_default_chunk_size_boundaries(chunks: int, delta: int) -> None:
    n = max(0, chunks * stream.CHUNK_SIZE + delta)
    data = data_of(n)
    ct = enc(data, chunk_size=stream.CHUNK_SIZE)
    full, rest = divmod(n, stream.CHUNK_SIZE)
    records = full + (1 if rest or n == 0 else 0)
    assert len(ct) == stream.read_header(io.BytesIO(ct)).size + n + 16 * records
    assert dec(ct) == data


def test_ciphertext_size_and_empty_plaintext() -> None:
    ct = enc(b"")
    header = stream.read_header(io.BytesIO(ct))
    assert len(ct) == header.size + 16  # one empty final chunk
    assert dec(ct) == b""


def test_every_chunk_size_allowed_round_trips() -> None:
    for log2 in range(stream.MIN_CHUNK_SIZE_LOG2, stream.MAX_CHUNK_SIZE_LOG2 + 1):
        data = data_of((1 << log2) + 3) if log2 <= 14 else b"small"
        assert dec(enc(data, chunk_size=1 << log2)) == data


def test_progress_and_return_values() -> None:
    data = data_of(2 * SMALL + 5)
    seen: list[int] = []
    out = io.BytesIO()
    n = stream.encrypt_stream(
        io.BytesIO(data),
        out,
        master_key=MK,
        key_id=KID,
        material_version=1,
        context=CTX,
        chunk_size=SMALL,
        progress=seen.append,
    )
    assert n == len(data) and seen == [SMALL, SMALL, 5]
    seen.clear()
    src = io.BytesIO(out.getvalue())
    h = stream.read_header(src)
    assert stream.decrypt_stream(h, src, io.BytesIO(), master_key=MK, context=CTX, progress=seen.append) == len(data)
    assert seen == [SMALL, SMALL, 5]


def test_fresh_randomness_each_time() -> None:
    a, b = enc(b"same"), enc(b"same")
    ha, hb = stream.read_header(io.BytesIO(a)), stream.read_header(io.BytesIO(b))
    assert ha.payload_salt != hb.payload_salt and ha.wrap_salt != hb.wrap_salt and ha.wrapped_key != hb.wrapped_key
    assert dec(a) == dec(b) == b"same"


def test_datakey_blob_is_a_normal_ciphertext() -> None:
    key = os.urandom(32)
    blob = enc(key, chunk_size=stream.CHUNK_SIZE)
    assert len(blob) == stream.read_header(io.BytesIO(blob)).size + 32 + 16
    assert dec(blob) == key


# -- what must fail ------------------------------------------------------------------
def small_ciphertext() -> bytes:
    return enc(data_of(2 * SMALL + 100))


def test_every_single_byte_flipped_fails() -> None:
    ct = small_ciphertext()
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(InvalidCiphertextException):
            dec(bytes(bad))


def test_every_truncation_fails() -> None:
    ct = small_ciphertext()
    for cut in range(len(ct)):
        with pytest.raises(InvalidCiphertextException):
            dec(ct[:cut])


@pytest.mark.parametrize("n", [0, 5, SMALL, 2 * SMALL + 100])
def test_extension_and_concatenation_fail(n: int) -> None:
    ct = enc(data_of(n))
    for tail in (b"\x00", b"x" * 16, b"x" * (SMALL + 16), ct, enc(b"other")):
        with pytest.raises(InvalidCiphertextException):
            dec(ct + tail)


def test_record_level_edits_fail() -> None:
    ct = small_ciphertext()
    h = stream.read_header(io.BytesIO(ct)).size
    rec = SMALL + 16
    r = [ct[h + i * rec : h + (i + 1) * rec] for i in range(3)]
    other = enc(data_of(2 * SMALL + 100))
    r_other = [other[h + i * rec : h + (i + 1) * rec] for i in range(3)]
    for body in (
        r[1] + r[0] + r[2],  # reordered
        r[0] + r[0] + r[1] + r[2],  # duplicated
        r[1] + r[2],  # first dropped
        r[0] + r[2],  # middle dropped
        r[0] + r[1],  # final dropped
        r[0] + r_other[1] + r[2],  # spliced
        b"",  # no body
    ):
        with pytest.raises(InvalidCiphertextException):
            dec(ct[:h] + body)


def test_header_swapped_between_messages_fails() -> None:
    a, b = enc(b"a" * 100), enc(b"b" * 100)
    h = stream.read_header(io.BytesIO(a)).size
    with pytest.raises(InvalidCiphertextException):
        dec(a[:h] + b[h:])


def test_wrong_key_and_context() -> None:
    ct = small_ciphertext()
    for kw in (
        {"master_key": OTHER_MK},
        {"context": {}},
        {"context": {"app": "kat"}},
        {"context": dict(CTX, extra="1")},
        {"context": {"app": "kat", "env": "prod"}},
        {"context": {"": "x"}},  # not even a valid context: still the one opaque error
        {"context": {"app": 1}},
    ):
        with pytest.raises(InvalidCiphertextException):
            dec(ct, **kw)
    assert dec(ct, context={"env": "test", "app": "kat"}) == data_of(2 * SMALL + 100)  # order never matters


def test_same_material_under_another_key_id_or_version_does_not_open() -> None:
    ct = enc(b"secret", material_version=2)
    raw = stream.read_header(io.BytesIO(ct)).raw
    for field in (slice(10, 11), slice(29, 30)):  # key id, material version
        bad = bytearray(raw)
        bad[field] = bytes([bad[field.start] ^ 1])
        with pytest.raises(InvalidCiphertextException):
            stream.open_header(stream.parse_header(bytes(bad)), master_key=MK, context=CTX)


def test_only_authenticated_chunks_are_written() -> None:
    data = data_of(2 * SMALL + 100)
    ct = enc(data)
    h = stream.read_header(io.BytesIO(ct)).size
    rec = SMALL + 16
    for broken_record, released in ((0, 0), (1, SMALL), (2, 2 * SMALL)):
        bad = bytearray(ct)
        bad[h + broken_record * rec + 5] ^= 1
        src = io.BytesIO(bytes(bad))
        header = stream.read_header(src)
        out = io.BytesIO()
        with pytest.raises(InvalidCiphertextException):
            stream.decrypt_stream(header, src, out, master_key=MK, context=CTX)
        assert out.getvalue() == data[:released]
    # Trailing data: the final chunk is never released.
    src = io.BytesIO(ct + b"!")
    header = stream.read_header(src)
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertextException):
        stream.decrypt_stream(header, src, out, master_key=MK, context=CTX)
    assert out.getvalue() == data[: 2 * SMALL]


def test_nothing_written_for_a_bad_header() -> None:
    ct = small_ciphertext()
    src = io.BytesIO(ct)
    header = stream.read_header(src)
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertextException):
        stream.decrypt_stream(header, src, out, master_key=OTHER_MK, context=CTX)
    assert out.getvalue() == b""


def test_open_header_uses_the_raw_bytes_not_the_dataclass() -> None:
    ct = small_ciphertext()
    header = stream.read_header(io.BytesIO(ct))
    lying = dataclasses.replace(header, context={"app": "other"}, chunk_size=1 << 22, material_version=9)
    assert stream.open_header(lying, master_key=MK, context=CTX).header.chunk_size == SMALL
    with pytest.raises(InvalidCiphertextException):
        stream.open_header(lying, master_key=MK, context={"app": "other"})


# -- read_header --------------------------------------------------------------------
def test_read_header_reads_exactly_the_header() -> None:
    ct = small_ciphertext()
    src = io.BytesIO(ct + b"junk")
    header = stream.read_header(src)
    assert src.tell() == header.size
    src = ShortReader(ct, 3)
    header = stream.read_header(src)
    assert src._pos == header.size


def fixed(**over: object) -> bytes:
    f = dict(
        magic=stream.MAGIC,
        version=1,
        log2=12,
        kid=bytes(16),
        mver=1,
        ps=bytes(32),
        ws=bytes(32),
        ctx=b"\x00\x00",
    )
    f.update(over)
    ctx = f["ctx"]
    assert isinstance(ctx, bytes)
    head = struct.pack(
        ">8sBB16sI32s32sH", f["magic"], f["version"], f["log2"], f["kid"], f["mver"], f["ps"], f["ws"], len(ctx)
    )
    return head + ctx + bytes(112)


def digest_header(length: int, version: int = 2) -> bytes:
    """A version 2 header that claims a context of ``length`` bytes and holds a digest."""
    head = struct.pack(">8sBB16sI32s32sH", stream.MAGIC, version, 12, bytes(16), 1, bytes(32), bytes(32), length)
    return head + bytes(range(32)) + bytes(112)


def test_read_header_structure_alone_parses_without_a_key() -> None:
    h = stream.read_header(io.BytesIO(fixed()))
    assert h.context == {} and h.chunk_size == SMALL and h.key_id == "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x89KMS",
        fixed()[:-1],
        fixed(magic=b"\x89KMS\r\n\x1a\r"),
        fixed(version=0),
        fixed(version=3),
        fixed(version=255),
        fixed(version=2, ctx=b""),
        fixed(version=2, ctx=b"\x00"),
        fixed(version=2, ctx=b"\x00\x01"),
        fixed(version=2, ctx=b"\x00\x41" + bytes(200)),  # 65 pairs
        digest_header(0xFFFF),  # more than 8192, though only a digest would follow
        digest_header(8193),
        digest_header(1025)[:-1],  # ends inside the MAC
        digest_header(1025)[: 96 + 10],  # ends inside the digest
        fixed(log2=0),
        fixed(log2=11),
        fixed(log2=23),
        fixed(log2=255),
        fixed(mver=0),
        fixed(ctx=b""),
        fixed(ctx=b"\x00"),
        fixed(ctx=b"\x00\x01"),  # one pair promised, none there
        fixed(ctx=b"\x00\x00\x00"),  # a stray byte
        fixed(ctx=b"\x00\x41" + bytes(200)),  # 65 pairs
        fixed(ctx=b"\x00\x01\x00\x00\x00\x00"),  # empty key
        fixed(ctx=b"\x00\x02\x00\x01b\x00\x00\x00\x01a\x00\x00"),  # unsorted
        fixed(ctx=b"\x00\x02\x00\x01a\x00\x00\x00\x01a\x00\x00"),  # duplicate
        fixed(ctx=b"\x00\x01\x00\x01\xff\x00\x00"),  # not UTF-8
        fixed(ctx=b"\x00\x01\x00\x01a\x00\x09abc"),  # value overruns
        fixed(ctx=b"\x00\x01\x00\x01a\x00\x00" + bytes(8186)),  # 8193 bytes
        b"-----BEGIN KMSCLI ENCRYPTED MESSAGE-----\n" + bytes(200),
    ],
)
def test_read_header_refuses(raw: bytes) -> None:
    with pytest.raises(InvalidCiphertextException):
        stream.read_header(io.BytesIO(raw))


@pytest.mark.parametrize("length", [1025, 4000, 8192])
def test_read_header_reads_only_the_digest_of_a_large_version_2_context(length: int) -> None:
    src = io.BytesIO(digest_header(length) + b"body")
    h = stream.read_header(src)
    assert src.tell() == h.size == stream.V2_DIGEST_HEADER_SIZE
    assert (h.context, h.context_length, h.context_digest) == (None, length, bytes(range(32)))
    # The same claim in version 1 is a stored context: it needs all its bytes.
    with pytest.raises(InvalidCiphertextException):
        stream.read_header(io.BytesIO(digest_header(length, version=1)))


def test_version_2_stores_up_to_1024_bytes_and_reads_it_as_version_1_does() -> None:
    ctx = b"\x00\x01\x00\x01a" + struct.pack(">H", 1024 - 7) + b"v" * (1024 - 7)
    h = stream.read_header(io.BytesIO(fixed(version=2, ctx=ctx)))
    assert h.context == {"a": "v" * (1024 - 7)} and h.context_digest is None and h.size == stream.V2_HEADER_MAX_SIZE


def test_read_header_accepts_the_largest_context() -> None:
    ctx = b"\x00\x01\x00\x01a" + struct.pack(">H", 8192 - 7) + b"v" * (8192 - 7)
    assert len(ctx) == 8192
    assert stream.read_header(io.BytesIO(fixed(ctx=ctx))).context == {"a": "v" * (8192 - 7)}


# -- validation at encrypt time ---------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {"key_id": "1B4E28BA-2FA1-4D2E-883F-0016D3CCA427"},
        {"key_id": "alias/app"},
        {"key_id": KID + "0"},
        {"material_version": 0},
        {"material_version": 1 << 32},
        {"material_version": True},
        {"material_version": "1"},
        {"chunk_size": 3000},
        {"chunk_size": 1 << 11},
        {"chunk_size": 1 << 23},
        {"chunk_size": 0},
        {"context": {"": "x"}},
        {"context": {"a": 1}},
        {"context": {"a": "\ud800"}},
        {"context": {f"k{i}": "" for i in range(65)}},
        {"context": {"k": "v" * 8186}},
        {"data_key": b"short"},
        {"salt": bytes(31)},
        {"wrap_salt": bytes(33)},
        {"format_version": 3},
        {"format_version": 0},
        {"format_version": True},
    ],
)
def test_encrypt_validates_before_writing(kw: dict) -> None:
    args = dict(master_key=MK, key_id=KID, material_version=1, context=CTX, chunk_size=SMALL)
    args.update(kw)
    out = io.BytesIO()
    with pytest.raises(ValidationException):
        stream.encrypt_stream(io.BytesIO(b"data"), out, **args)
    assert out.getvalue() == b""


def test_context_limits_are_inclusive() -> None:
    ctx = {f"k{i:02d}": "" for i in range(64)}
    assert dec(enc(b"x", context=ctx), context=ctx) == b"x"
    big = {"k": "v" * (8192 - 2 - 4 - 1)}
    assert len(stream.encode_context(big)) == 8192
    assert dec(enc(b"x", context=big), context=big) == b"x"


def largest_context() -> dict[str, str]:
    """64 pairs whose canonical encoding is exactly CONTEXT_MAX_BYTES: both limits at once."""
    ctx = {f"k{i:02d}": "v" * 121 for i in range(63)}
    used = 2 + sum(4 + len(k) + len(v) for k, v in ctx.items())
    ctx["last"] = "w" * (stream.CONTEXT_MAX_BYTES - used - 4 - 4)
    assert len(ctx) == stream.CONTEXT_MAX_PAIRS and len(stream.encode_context(ctx)) == stream.CONTEXT_MAX_BYTES
    return ctx


BLOB_MAX = 6144  # AWS's bound on a CiphertextBlob (botocore's model)


@pytest.mark.parametrize("chunk_size", [stream.CHUNK_SIZE, SMALL])
def test_the_largest_context_and_a_4096_byte_plaintext_fit_a_blob(chunk_size: int) -> None:
    ctx, data = largest_context(), data_of(4096)
    blob = enc(data, context=ctx, chunk_size=chunk_size)
    size = len(blob)
    assert size == 240 + 4096 + 16 <= BLOB_MAX, f"64 pairs, 8192 bytes of context, 4096 bytes: a {size}-byte blob"
    assert dec(blob, context=ctx) == data
    # The worst case of all: the largest context the header still stores.
    ctx = {"k": "v" * (stream.CONTEXT_INLINE_MAX_BYTES - 7)}
    blob = enc(data, context=ctx, chunk_size=chunk_size)
    size = len(blob)
    assert size == 1232 + 4096 + 16 <= BLOB_MAX, f"a stored 1024-byte context, 4096 bytes: a {size}-byte blob"
    assert stream.read_header(io.BytesIO(blob)).context == ctx
    # Version 1 stored the context whole: what version 2 is for.
    assert len(enc(data, context=largest_context(), format_version=1)) == 208 + 8192 + 4112 > BLOB_MAX


def test_a_digest_bound_context_is_still_bound() -> None:
    ctx = largest_context()
    ct = enc(b"secret", context=ctx)
    for change in ({"k00": "u" + ctx["k00"][1:]}, {"k00": ctx["k00"][1:]}, {"k00": ctx["k00"] + "v"}):
        with pytest.raises(InvalidCiphertextException):
            dec(ct, context=dict(ctx, **change))
    for other in (CTX, {}, {k: v for k, v in ctx.items() if k != "k00"}):
        with pytest.raises(InvalidCiphertextException):
            dec(ct, context=other)
    assert dec(ct, context=dict(reversed(ctx.items()))) == b"secret"


def test_every_single_byte_flipped_fails_with_a_digest_bound_context() -> None:
    ctx = largest_context()
    ct = enc(data_of(100), context=ctx)
    assert len(ct) == stream.V2_DIGEST_HEADER_SIZE + 116
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(InvalidCiphertextException):
            dec(bytes(bad), context=ctx)


def test_master_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        enc(b"x", master_key=bytes(16))


# -- rewrap -------------------------------------------------------------------------------
NEW_KID = "9f0c9a52-8f4e-4c5b-a1d2-3e4f5a6b7c8d"


def rewrap(ct: bytes, **kw) -> bytes:
    src = io.BytesIO(ct)
    header = stream.read_header(src)
    out = io.BytesIO()
    args = dict(
        old_master_key=MK,
        context=CTX,
        new_master_key=OTHER_MK,
        new_key_id=NEW_KID,
        new_material_version=4,
        new_context={"moved": "yes"},
    )
    args.update(kw)
    stream.rewrap_stream(header, src, out, **args)
    return out.getvalue()


@pytest.mark.parametrize("n", [0, 1, SMALL, 2 * SMALL + 100])
def test_rewrap_moves_to_the_new_key_and_context(n: int) -> None:
    data = data_of(n)
    ct = enc(data)
    new = rewrap(ct)
    h_old, h_new = stream.read_header(io.BytesIO(ct)), stream.read_header(io.BytesIO(new))
    assert (h_new.key_id, h_new.material_version, h_new.context) == (NEW_KID, 4, {"moved": "yes"})
    assert h_new.wrap_salt != h_old.wrap_salt and h_new.payload_salt == h_old.payload_salt
    assert new[h_new.size :] == ct[h_old.size :]  # the body is copied, not re-encrypted
    assert dec(new, master_key=OTHER_MK, context={"moved": "yes"}) == data
    for kw in ({"master_key": MK, "context": {"moved": "yes"}}, {"master_key": OTHER_MK, "context": CTX}):
        with pytest.raises(InvalidCiphertextException):
            dec(new, **kw)
    assert dec(ct) == data  # the old ciphertext is untouched


@pytest.mark.parametrize("new_context", [{"moved": "yes"}, "largest"])
def test_rewrap_moves_a_version_1_ciphertext_to_version_2(new_context: dict | str) -> None:
    new_ctx = largest_context() if new_context == "largest" else new_context
    data = data_of(2 * SMALL + 100)
    ct = enc(data, format_version=1)
    new = rewrap(ct, new_context=new_ctx)
    h_old, h_new = stream.read_header(io.BytesIO(ct)), stream.read_header(io.BytesIO(new))
    assert (h_old.format_version, h_new.format_version) == (1, 2)
    assert new[h_new.size :] == ct[h_old.size :] and h_new.commitment == h_old.commitment
    assert dec(new, master_key=OTHER_MK, context=new_ctx) == data
    back = rewrap(new, old_master_key=OTHER_MK, context=new_ctx, new_master_key=MK, new_key_id=KID, new_context=CTX)
    assert back[8] == 2 and dec(back) == data


def test_rewrap_to_the_same_key_and_context_gets_a_fresh_wrap() -> None:
    ct = enc(b"x" * 10)
    new = rewrap(ct, new_master_key=MK, new_key_id=KID, new_material_version=1, new_context=CTX)
    h_old, h_new = stream.read_header(io.BytesIO(ct)), stream.read_header(io.BytesIO(new))
    assert h_old.wrapped_key != h_new.wrapped_key and h_old.mac != h_new.mac
    assert dec(new) == b"x" * 10


def test_rewrap_is_deterministic_through_the_seam() -> None:
    ct = enc(b"x" * 10)
    assert rewrap(ct, wrap_salt=b"\x44" * 32) == rewrap(ct, wrap_salt=b"\x44" * 32)


def test_rewrap_detects_a_tampered_body_itself() -> None:
    ct = small_ciphertext()
    h = stream.read_header(io.BytesIO(ct)).size
    for bad in (
        ct[:-1],
        ct + b"x",
        ct[: h + SMALL + 16],
        ct[:h] + ct[h + SMALL + 16 :],
        bytes(ct[:h]) + bytes([ct[h] ^ 1]) + ct[h + 1 :],
    ):
        with pytest.raises(InvalidCiphertextException):
            rewrap(bad)


def test_rewrap_refuses_wrong_old_key_or_context_before_writing() -> None:
    ct = small_ciphertext()
    for kw in ({"old_master_key": OTHER_MK}, {"context": {}}):
        src = io.BytesIO(ct)
        header = stream.read_header(src)
        out = io.BytesIO()
        args = dict(
            old_master_key=MK,
            context=CTX,
            new_master_key=OTHER_MK,
            new_key_id=NEW_KID,
            new_material_version=1,
            new_context={},
        )
        args.update(kw)
        with pytest.raises(InvalidCiphertextException):
            stream.rewrap_stream(header, src, out, **args)
        assert out.getvalue() == b""


@pytest.mark.parametrize(
    "kw", [{"new_key_id": "nope"}, {"new_material_version": 0}, {"new_context": {"": ""}}, {"wrap_salt": b"x"}]
)
def test_rewrap_validates_new_arguments_first(kw: dict) -> None:
    # Even with the wrong old key: validation comes before any check or output.
    with pytest.raises(ValidationException):
        rewrap(small_ciphertext(), old_master_key=OTHER_MK, **kw)


# -- process-level properties -------------------------------------------------------------
def run_child(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def test_importing_the_format_does_not_import_cryptography() -> None:
    out = run_child("import sys, kmscli.crypto.stream, kmscli.crypto.armor; print('cryptography' in sys.modules)")
    assert out.strip() == "False"


MEMORY_CHILD = r"""
import hashlib, io, json, os, resource, threading
from kmscli.crypto import stream

TOTAL = 256 << 20
PATTERN = hashlib.shake_256(b"pattern").digest(1 << 20)

class Generated(io.RawIOBase):
    '''Yields TOTAL bytes in odd-sized pieces, never holding more than PATTERN.'''
    def __init__(self):
        self.left, self.digest = TOTAL, hashlib.sha256()
    def readable(self):
        return True
    def readinto(self, b):
        n = min(len(b), self.left, 100_003)
        off = self.left % 1000
        b[:n] = PATTERN[off:off + n]
        self.digest.update(b[:n])
        self.left -= n
        return n

class Hashing:
    def __init__(self):
        self.n, self.digest = 0, hashlib.sha256()
    def write(self, b):
        self.n += len(b)
        self.digest.update(b)
        return len(b)

mk, kid = os.urandom(32), "1b4e28ba-2fa1-4d2e-883f-0016d3cca427"
r, w = os.pipe()
source = Generated()

def produce():
    with open(w, "wb", buffering=0) as pipe_in:
        stream.encrypt_stream(source, pipe_in, master_key=mk, key_id=kid, material_version=1, context={"a": "b"})

t = threading.Thread(target=produce)
t.start()
sink = Hashing()
with open(r, "rb") as pipe_out:
    header = stream.read_header(pipe_out)
    stream.decrypt_stream(header, pipe_out, sink, master_key=mk, context={"a": "b"})
t.join()
# VmHWM is this process's own peak; ru_maxrss would carry over the parent's
# peak across fork+exec on Linux, and pytest's parent is far bigger than 64 MiB.
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": sink.n, "same": sink.digest.digest() == source.digest.digest(), "maxrss_kib": peak}))
"""


def test_memory_stays_constant_for_256_mib() -> None:
    result = json.loads(run_child(MEMORY_CHILD))
    assert result["n"] == 256 << 20 and result["same"]
    assert result["maxrss_kib"] < 64 * 1024, result
