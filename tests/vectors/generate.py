"""Generate the ciphertext test vectors in this folder (see README.md).

Each generator is named after the defect it plants and returns a Vector. The
files were made once and committed; tests/unit/test_vectors.py only reads them.
Run from the repository root:

    .venv/bin/python tests/vectors/generate.py           # write missing files; report any that would change
    .venv/bin/python tests/vectors/generate.py --check   # compare only

An existing file that would change is never overwritten: a changed vector
means old ciphertexts no longer decrypt, which is a format change, not a fix.

Everything random in the format comes from the deterministic seam
(``data_key``, ``salt``, ``wrap_salt``), derived here from the vector's name.
The vectors made before format version 2 existed are made with
``format_version=1`` and must come out byte for byte as committed; the ``v2_``
vectors are made with version 2, what encryption writes now.
Headers with a planted defect are rebuilt by ``forge_header``, a second,
independent writer of the header that follows docs/format.md, so that a
defect is planted behind a valid wrap, commitment and MAC: the vector then
proves the reader's bound check, not merely its MAC check.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kmscli.crypto import armor, primitives, stream  # noqa: E402

HERE = Path(__file__).resolve().parent
SUFFIX = ".vec"

MASTER_KEY = bytes(range(32))
OTHER_MASTER_KEY = hashlib.sha256(b"kmscli vectors: another master key").digest()
KEY_ID = "1b4e28ba-2fa1-4d2e-883f-0016d3cca427"
MATERIAL_VERSION = 3
CONTEXT = {"purpose": "test vectors", "tenant": "acme"}
#: Vectors use the smallest chunk size the format allows, to stay small.
CHUNK = stream.MIN_CHUNK_SIZE
TAG = 16
#: Version 2: a context encoded in more bytes than this is held as its digest.
INLINE_MAX = 1024
#: The blob API's bound: at most 4096 plaintext bytes give at most this many.
BLOB_MAX = 6144


@dataclass
class Vector:
    expect: str  # success | header failure | payload failure | armor failure | wrong context | wrong key
    defect: str
    ciphertext: bytes
    master_key: bytes = MASTER_KEY
    key_id: str = KEY_ID
    material_version: int = MATERIAL_VERSION
    context: dict[str, str] = field(default_factory=lambda: dict(CONTEXT))
    plaintext: bytes | None = None
    armored: bool = False

    def to_bytes(self) -> bytes:
        lines = [
            f"expect: {self.expect}",
            f"defect: {self.defect}",
            f"master-key: {self.master_key.hex()}",
            f"key-id: {self.key_id}",
            f"material-version: {self.material_version}",
            f"context: {json.dumps(self.context, sort_keys=True, ensure_ascii=True)}",
            f"armor: {'yes' if self.armored else 'no'}",
        ]
        if self.plaintext is not None:
            lines.append(f"plaintext-length: {len(self.plaintext)}")
            lines.append(f"plaintext-sha256: {hashlib.sha256(self.plaintext).hexdigest()}")
        return "\n".join(lines).encode("ascii") + b"\n\n" + self.ciphertext


GENERATORS: dict[str, Callable[[], Vector]] = {}


def vector(fn: Callable[[], Vector]) -> Callable[[], Vector]:
    GENERATORS[fn.__name__] = fn
    return fn


# -- deterministic material ---------------------------------------------------
def det(label: str, n: int) -> bytes:
    """n bytes fixed by ``label``: stands in for the CSPRNG in vectors only."""
    return hashlib.shake_256(b"kmscli vectors: " + label.encode()).digest(n)


def plaintext(label: str, n: int) -> bytes:
    return det("plaintext " + label, n)


def seal(label: str, data: bytes, **kw: object) -> bytes:
    """A normal encryption through the public API and its seam, in format
    version 1 unless ``format_version=2`` is given (see the module docstring)."""
    args: dict = dict(
        format_version=1,
        master_key=MASTER_KEY,
        key_id=KEY_ID,
        material_version=MATERIAL_VERSION,
        context=CONTEXT,
        chunk_size=CHUNK,
        data_key=det(label + " data key", 32),
        salt=det(label + " payload salt", 32),
        wrap_salt=det(label + " wrap salt", 32),
    )
    args.update(kw)
    return stream.encrypt_bytes(data, **args)


def header_size(ciphertext: bytes) -> int:
    (ctx_len,) = struct.unpack_from(">H", ciphertext, 94)
    stored = ciphertext[8] == 1 or ctx_len <= INLINE_MAX
    return 96 + (ctx_len if stored else 32) + 48 + 32 + 32


def records(ciphertext: bytes, chunk: int = CHUNK) -> tuple[bytes, list[bytes]]:
    """Split a ciphertext into its header and body records."""
    h = header_size(ciphertext)
    body = ciphertext[h:]
    step = chunk + TAG
    return ciphertext[:h], [body[i : i + step] for i in range(0, len(body), step)]


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


# -- an independent header writer (docs/format.md, "Header" and "Keys") -------
def hkdf(ikm: bytes, info: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def encode_pairs(pairs: list[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    """Context encoding without any of the writer's checks (pairs as given)."""
    out = struct.pack(">H", len(pairs) if count is None else count)
    for k, v in pairs:
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def canonical(context: dict[str, str]) -> bytes:
    return encode_pairs(sorted((k.encode(), v.encode()) for k, v in context.items()))


def context_digest(encoded: bytes) -> bytes:
    """docs/format.md, "How the header binds the context" (version 2)."""
    return hashlib.sha256(b"kmscli ciphertext context digest v2" + encoded).digest()


def forge_header(
    *,
    data_key: bytes,
    payload_salt: bytes,
    wrap_salt: bytes,
    master_key: bytes = MASTER_KEY,
    key_id: str = KEY_ID,
    material_version: int = MATERIAL_VERSION,
    context: bytes | None = None,
    chunk_log2: int = 12,
    version: int = 1,
    magic: bytes = b"\x89KMS\r\n\x1a\n",
    commitment: bytes | None = None,
    wrapped: bytes | None = None,
    context_length: int | None = None,
    context_field: bytes | None = None,
    wrap_label: int | None = None,
) -> bytes:
    """A header with whatever fields it is given, and a valid wrap, commitment and MAC over them.

    ``context`` is the canonical context; ``context_length`` and ``context_field``
    (the bytes after the length: the context, or in version 2 above 1024 bytes
    its digest) default to what the format says for it, and ``wrap_label`` (the
    version in the wrap key's label) to the header's version, 2 for a version
    the format does not know."""
    ctx = canonical(CONTEXT) if context is None else context
    if context_length is None:
        context_length = len(ctx)
    if context_field is None:
        context_field = ctx if version == 1 or len(ctx) <= INLINE_MAX else context_digest(ctx)
    if wrap_label is None:
        wrap_label = version if version in (1, 2) else 2
    kid = bytes.fromhex(key_id.replace("-", ""))
    prefix = (
        struct.pack(">8sBB16sI32s32s", magic, version, chunk_log2, kid, material_version, payload_salt, wrap_salt)
        + struct.pack(">H", context_length)
        + context_field
    )
    if wrapped is None:
        label = f"kmscli ciphertext wrap key v{wrap_label}".encode()
        wrap_key = hkdf(master_key, label + kid + material_version.to_bytes(4, "big"), wrap_salt)
        wrapped = primitives.seal(wrap_key, bytes(12), data_key, prefix)
    if commitment is None:
        commitment = hkdf(data_key, b"kmscli ciphertext commitment v1", payload_salt)
    signed = prefix + wrapped + commitment
    return signed + primitives.hmac_sha256(hkdf(data_key, b"kmscli ciphertext header v1", payload_salt), signed)


def seal_chunks(data_key: bytes, payload_salt: bytes, chunks: list[tuple[int, bool, bytes]]) -> bytes:
    """Seal (counter, last, plaintext) chunks exactly as given: no rules applied."""
    payload_key = hkdf(data_key, b"kmscli ciphertext payload v1", payload_salt)
    return b"".join(
        primitives.seal(payload_key, i.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), data, b"")
        for i, last, data in chunks
    )


def forged(label: str, body: bytes = b"forged body", **kw: object) -> bytes:
    """A header forged with ``kw`` planted, followed by a valid one-chunk body."""
    dk, ps = det(label + " data key", 32), det(label + " payload salt", 32)
    header = forge_header(data_key=dk, payload_salt=ps, wrap_salt=det(label + " wrap salt", 32), **kw)
    return header + seal_chunks(dk, ps, [(0, True, body)])


# -- success ------------------------------------------------------------------
def _success(name: str, n: int, defect: str, **kw: object) -> Vector:
    data = plaintext(name, n)
    return Vector("success", defect, seal(name, data, **kw), plaintext=data)


@vector
def empty_plaintext() -> Vector:
    return _success("empty_plaintext", 0, "none: the empty plaintext is one empty final chunk")


@vector
def one_byte() -> Vector:
    return _success("one_byte", 1, "none: one byte in one final chunk")


@vector
def chunk_minus_one() -> Vector:
    return _success("chunk_minus_one", CHUNK - 1, "none: one short final chunk")


@vector
def exactly_one_chunk() -> Vector:
    return _success("exactly_one_chunk", CHUNK, "none: one full final chunk, nothing after it")


@vector
def chunk_plus_one() -> Vector:
    return _success("chunk_plus_one", CHUNK + 1, "none: a full chunk and a one-byte final chunk")


@vector
def two_chunks_and_some() -> Vector:
    return _success("two_chunks_and_some", 2 * CHUNK + 100, "none: two full chunks and a short final chunk")


@vector
def exactly_two_chunks() -> Vector:
    return _success("exactly_two_chunks", 2 * CHUNK, "none: a full chunk and a full final chunk")


@vector
def default_chunk_size() -> Vector:
    return _success(
        "default_chunk_size",
        1000,
        "none: made with the default chunk size (1 MiB, chunk_size_log2 20)",
        chunk_size=1 << 20,
    )


@vector
def largest_chunk_size() -> Vector:
    return _success(
        "largest_chunk_size", 100, "none: chunk_size_log2 22 (4 MiB), the largest allowed", chunk_size=1 << 22
    )


@vector
def empty_context() -> Vector:
    v = _success("empty_context", 100, "none: the empty encryption context", context={})
    v.context = {}
    return v


@vector
def unicode_context() -> Vector:
    ctx = {"é": "", "Z": "ünïcödé ✓", "a=b": "c,d", "\U0001f511": "key"}
    v = _success(
        "unicode_context", 100, "none: non-ASCII keys and values, an empty value, '=' and ',' in strings", context=ctx
    )
    v.context = ctx
    return v


def largest_ctx() -> dict[str, str]:
    """64 pairs whose canonical encoding is exactly 8192 bytes: both limits at once."""
    ctx = {f"k{i:02d}": "v" * 121 for i in range(63)}
    used = 2 + sum(4 + len(k) + len(v) for k, v in ctx.items())
    ctx["last"] = "w" * (8192 - used - 4 - 4)
    assert len(canonical(ctx)) == 8192 and len(ctx) == 64
    return ctx


def sized_ctx(n: int) -> dict[str, str]:
    """One pair whose canonical encoding is exactly n bytes."""
    ctx = {"blob": "x" * (n - 2 - 2 - len("blob") - 2)}
    assert len(canonical(ctx)) == n
    return ctx


@vector
def largest_context() -> Vector:
    ctx = largest_ctx()
    v = _success("largest_context", 10, "none: 64 context pairs, 8192 bytes encoded (both limits)", context=ctx)
    v.context = ctx
    return v


@vector
def largest_material_version() -> Vector:
    v = _success("largest_material_version", 10, "none: material version 2**32-1", material_version=0xFFFFFFFF)
    v.material_version = 0xFFFFFFFF
    return v


@vector
def armored() -> Vector:
    v = _success("armored", 2 * CHUNK + 100, "none: armored, LF line endings")
    v.ciphertext, v.armored = armor.armor(v.ciphertext), True
    return v


@vector
def armored_crlf_with_whitespace() -> Vector:
    v = _success(
        "armored_crlf_with_whitespace", 200, "none: armored with CRLF, blank lines before BEGIN, white space after END"
    )
    text = armor.armor(v.ciphertext).replace(b"\n", b"\r\n")
    v.ciphertext, v.armored = b"\r\n  \r\n" + text + b"\r\n \t\r\n", True
    return v


# -- header failures ------------------------------------------------------------
def _small(name: str) -> bytes:
    return seal(name, plaintext(name, 100))


def _header_failure(defect: str, ciphertext: bytes) -> Vector:
    return Vector("header failure", defect, ciphertext)


@vector
def empty_file() -> Vector:
    return _header_failure("the input is empty", b"")


@vector
def truncated_header() -> Vector:
    ct = _small("truncated_header")
    return _header_failure(
        "the input ends in the middle of the header (inside the wrapped key)", ct[: header_size(ct) - 70]
    )


@vector
def flipped_magic_byte() -> Vector:
    return _header_failure("one bit of the magic flipped", flip(_small("flipped_magic_byte"), 1))


@vector
def unknown_format_version() -> Vector:
    # Made before version 2 existed: a version 1 header relabelled 2, wrapped
    # with the version 1 wrap key. It fails now at the version 2 wrap key.
    return _header_failure(
        "format version 2, otherwise valid (MAC and wrap made over it)",
        forged("unknown_format_version", version=2, wrap_label=1),
    )


@vector
def chunk_size_too_small() -> Vector:
    return _header_failure(
        "chunk_size_log2 11 (2 KiB), below the minimum, behind a valid MAC",
        forged("chunk_size_too_small", chunk_log2=11),
    )


@vector
def chunk_size_too_large() -> Vector:
    return _header_failure(
        "chunk_size_log2 23 (8 MiB), above the maximum, behind a valid MAC",
        forged("chunk_size_too_large", chunk_log2=23),
    )


@vector
def material_version_zero() -> Vector:
    v = _header_failure("material version 0, behind a valid MAC", forged("material_version_zero", material_version=0))
    v.material_version = 0
    return v


@vector
def oversized_context_length() -> Vector:
    ctx = encode_pairs([(b"k", b"v" * (8193 - 2 - 4 - 1))])
    assert len(ctx) == 8193
    return _header_failure(
        "context length 8193 (one over the limit), well-formed and behind a valid MAC",
        forged("oversized_context_length", context=ctx),
    )


@vector
def context_length_too_small() -> Vector:
    return _header_failure(
        "context length 1 (a lone byte where the pair count belongs), behind a valid MAC",
        forged("context_length_too_small", context=b"\x00"),
    )


@vector
def too_many_context_pairs() -> Vector:
    ctx = encode_pairs([(f"k{i:02d}".encode(), b"") for i in range(65)])
    return _header_failure(
        "65 context pairs (one over the limit), behind a valid MAC", forged("too_many_context_pairs", context=ctx)
    )


@vector
def unsorted_context() -> Vector:
    ctx = encode_pairs([(b"tenant", b"acme"), (b"purpose", b"test vectors")])
    return _header_failure(
        "context pairs out of order (a second encoding of the usual context), behind a valid MAC",
        forged("unsorted_context", context=ctx),
    )


@vector
def duplicate_context_key() -> Vector:
    ctx = encode_pairs([(b"purpose", b"test vectors"), (b"purpose", b"x"), (b"tenant", b"acme")])
    return _header_failure(
        "a context key given twice, behind a valid MAC", forged("duplicate_context_key", context=ctx)
    )


@vector
def empty_context_key() -> Vector:
    ctx = encode_pairs([(b"", b"x"), (b"purpose", b"test vectors"), (b"tenant", b"acme")])
    return _header_failure("an empty context key, behind a valid MAC", forged("empty_context_key", context=ctx))


@vector
def context_not_utf8() -> Vector:
    ctx = encode_pairs([(b"purpose", b"test \xff vectors"), (b"tenant", b"acme")])
    return _header_failure(
        "a context value that is not UTF-8, behind a valid MAC", forged("context_not_utf8", context=ctx)
    )


@vector
def context_pairs_overrun_length() -> Vector:
    bad = bytearray(canonical(CONTEXT))
    bad[-len("acme") - 1] = 5  # tenant's value length 4 -> 5, one past the end
    return _header_failure(
        "the last context value's length runs past the context length, behind a valid MAC",
        forged("context_pairs_overrun_length", context=bytes(bad)),
    )


@vector
def context_length_mismatch() -> Vector:
    ctx = canonical(CONTEXT) + b"\x00"
    return _header_failure(
        "one stray byte after the last context pair, inside the context length, behind a valid MAC",
        forged("context_length_mismatch", context=ctx),
    )


def _flipped_field(name: str, offset_from: str, delta: int, what: str) -> Vector:
    ct = _small(name)
    h = header_size(ct)
    base = {"start": 0, "trailer": h - 112}[offset_from]
    return _header_failure(f"one bit flipped in the {what}", flip(ct, base + delta))


@vector
def flipped_version_byte() -> Vector:
    return _flipped_field("flipped_version_byte", "start", 8, "format version (1 -> 0)")


@vector
def flipped_chunk_size_byte() -> Vector:
    return _flipped_field("flipped_chunk_size_byte", "start", 9, "chunk size exponent (12 -> 13, still in range)")


@vector
def flipped_key_id_byte() -> Vector:
    v = _flipped_field("flipped_key_id_byte", "start", 10 + 15, "key id")
    v.key_id = KEY_ID[:-1] + "6"
    return v


@vector
def flipped_material_version_byte() -> Vector:
    v = _flipped_field("flipped_material_version_byte", "start", 29, "material version (3 -> 2)")
    v.material_version = 2
    return v


@vector
def flipped_payload_salt_byte() -> Vector:
    return _flipped_field("flipped_payload_salt_byte", "start", 30 + 7, "payload salt")


@vector
def flipped_wrap_salt_byte() -> Vector:
    return _flipped_field("flipped_wrap_salt_byte", "start", 62 + 31, "wrap salt")


@vector
def flipped_wrapped_key_byte() -> Vector:
    return _flipped_field("flipped_wrapped_key_byte", "trailer", 5, "wrapped data key")


@vector
def flipped_wrap_tag_byte() -> Vector:
    return _flipped_field("flipped_wrap_tag_byte", "trailer", 40, "wrapped key's GCM tag")


@vector
def flipped_commitment_byte() -> Vector:
    return _flipped_field("flipped_commitment_byte", "trailer", 48 + 3, "key commitment")


@vector
def flipped_header_mac_byte() -> Vector:
    return _flipped_field("flipped_header_mac_byte", "trailer", 80 + 31, "header MAC")


@vector
def commitment_of_another_data_key() -> Vector:
    label = "commitment_of_another_data_key"
    other = hkdf(det("another data key", 32), b"kmscli ciphertext commitment v1", det(label + " payload salt", 32))
    return _header_failure(
        "valid wrap and MAC, but the commitment belongs to another data key", forged(label, commitment=other)
    )


def _gf_mul(x: int, y: int) -> int:
    """Multiply in GCM's GF(2^128) (bit-reflected, as in NIST SP 800-38D)."""
    r = 0xE1 << 120
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def _gf_inv(x: int) -> int:
    result, power, e = 1 << 127, x, (1 << 128) - 2  # 1 is the top bit in GCM's order
    while e:
        if e & 1:
            result = _gf_mul(result, power)
        power = _gf_mul(power, power)
        e >>= 1
    return result


def _gcm_multikey_wrap(k1: bytes, k2: bytes, aad: bytes) -> bytes:
    """A 32-byte ciphertext and tag that AES-256-GCM opens under both k1 and k2
    (zero nonce, ``aad``): the "invisible salamander" the commitment defeats."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    def ecb(key: bytes, block: bytes) -> bytes:
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return enc.update(block) + enc.finalize()

    def num(b: bytes) -> int:
        return int.from_bytes(b, "big")

    j0 = bytes(12) + b"\x00\x00\x00\x01"
    h1, h2 = num(ecb(k1, bytes(16))), num(ecb(k2, bytes(16)))
    s1, s2 = num(ecb(k1, j0)), num(ecb(k2, j0))
    padded = aad + bytes(-len(aad) % 16)
    c2 = b"\x00" * 16  # second ciphertext block fixed; solve for the first
    blocks = [num(padded[i : i + 16]) for i in range(0, len(padded), 16)]
    length = num(struct.pack(">QQ", len(aad) * 8, 32 * 8))

    def ghash_without_c1(h: int) -> int:
        y = 0
        for blk in [*blocks, 0, num(c2), length]:  # c1 counted as 0 here
            y = _gf_mul(y ^ blk, h)
        return y

    # tag = GHASH_h(A, C) ^ s; GHASH is linear in c1 with coefficient h^3.
    h1_3, h2_3 = _gf_mul(_gf_mul(h1, h1), h1), _gf_mul(_gf_mul(h2, h2), h2)
    rhs = ghash_without_c1(h1) ^ s1 ^ ghash_without_c1(h2) ^ s2
    c1 = _gf_mul(rhs, _gf_inv(h1_3 ^ h2_3))
    tag = _gf_mul(c1, h1_3) ^ ghash_without_c1(h1) ^ s1
    return c1.to_bytes(16, "big") + c2 + tag.to_bytes(16, "big")


@vector
def wrapped_key_opens_under_two_master_keys() -> Vector:
    label = "wrapped_key_opens_under_two_master_keys"
    ws, ps = det(label + " wrap salt", 32), det(label + " payload salt", 32)
    kid = bytes.fromhex(KEY_ID.replace("-", ""))
    info = b"kmscli ciphertext wrap key v1" + kid + MATERIAL_VERSION.to_bytes(4, "big")
    k1, k2 = hkdf(MASTER_KEY, info, ws), hkdf(OTHER_MASTER_KEY, info, ws)
    ctx = canonical(CONTEXT)
    prefix = struct.pack(">8sBB16sI32s32sH", b"\x89KMS\r\n\x1a\n", 1, 12, kid, MATERIAL_VERSION, ps, ws, len(ctx)) + ctx
    wrapped = _gcm_multikey_wrap(k1, k2, prefix)
    dk1 = primitives.open_(k1, bytes(12), wrapped, prefix)
    assert primitives.open_(k2, bytes(12), wrapped, prefix) != dk1
    # Committed to, MAC'd with and encrypting under the data key master key 1 yields.
    header = forge_header(data_key=dk1, payload_salt=ps, wrap_salt=ws, wrapped=wrapped)
    ct = header + seal_chunks(dk1, ps, [(0, True, b"meant for master key 1")])
    return Vector(
        "wrong key",
        "the wrapped key is a GCM multi-key collision: it opens under the wrap keys of both master keys "
        "(to different data keys); decrypting with the other master key must fail on the commitment",
        ct,
        master_key=OTHER_MASTER_KEY,
    )


# -- wrong key / wrong context ----------------------------------------------------
@vector
def wrong_master_key() -> Vector:
    v = Vector("wrong key", "decrypted with another master key", _small("wrong_master_key"))
    v.master_key = OTHER_MASTER_KEY
    return v


@vector
def wrong_context_value() -> Vector:
    v = Vector("wrong context", "one context value differs", _small("wrong_context_value"))
    v.context = {"purpose": "test vectors", "tenant": "acme2"}
    return v


@vector
def missing_context_pair() -> Vector:
    v = Vector("wrong context", "one context pair left out at decryption", _small("missing_context_pair"))
    v.context = {"purpose": "test vectors"}
    return v


@vector
def extra_context_pair() -> Vector:
    v = Vector("wrong context", "one context pair too many at decryption", _small("extra_context_pair"))
    v.context = dict(CONTEXT, extra="x")
    return v


@vector
def context_given_none_expected() -> Vector:
    v = Vector(
        "wrong context",
        "encrypted with an empty context, decrypted with one pair",
        seal("context_given_none_expected", b"x" * 50, context={}),
    )
    v.context = {"purpose": "test vectors"}
    return v


# -- payload failures ---------------------------------------------------------------
def _three_chunks(name: str) -> tuple[bytes, list[bytes]]:
    return records(seal(name, plaintext(name, 2 * CHUNK + 100)))


def _payload_failure(defect: str, ciphertext: bytes) -> Vector:
    return Vector("payload failure", defect, ciphertext)


@vector
def header_only() -> Vector:
    header, _ = _three_chunks("header_only")
    return _payload_failure("a valid header and no body at all", header)


@vector
def missing_final_chunk() -> Vector:
    header, recs = _three_chunks("missing_final_chunk")
    return _payload_failure("the final (short) chunk is dropped: ends at a chunk boundary", header + recs[0] + recs[1])


@vector
def missing_full_final_chunk() -> Vector:
    header, recs = records(seal("missing_full_final_chunk", plaintext("missing_full_final_chunk", 2 * CHUNK)))
    return _payload_failure("the final chunk, which is full, is dropped", header + recs[0])


@vector
def truncated_mid_chunk() -> Vector:
    header, recs = _three_chunks("truncated_mid_chunk")
    return _payload_failure("the input ends 1000 bytes into the second chunk", header + recs[0] + recs[1][:1000])


@vector
def truncated_final_tag() -> Vector:
    ct = seal("truncated_final_tag", plaintext("truncated_final_tag", 2 * CHUNK + 100))
    return _payload_failure("the last byte of the final chunk's tag is missing", ct[:-1])


@vector
def reordered_chunks() -> Vector:
    header, recs = _three_chunks("reordered_chunks")
    return _payload_failure("the first two chunks swapped", header + recs[1] + recs[0] + recs[2])


@vector
def duplicated_chunk() -> Vector:
    header, recs = _three_chunks("duplicated_chunk")
    return _payload_failure("the first chunk repeated", header + recs[0] + recs[0] + recs[1] + recs[2])


@vector
def dropped_first_chunk() -> Vector:
    header, recs = _three_chunks("dropped_first_chunk")
    return _payload_failure("the first chunk removed", header + recs[1] + recs[2])


@vector
def extra_chunk_after_final() -> Vector:
    name = "extra_chunk_after_final"
    ct = seal(name, plaintext(name, CHUNK))  # one full final chunk
    extra = seal_chunks(det(name + " data key", 32), det(name + " payload salt", 32), [(1, True, b"more")])
    return _payload_failure(
        "a valid-looking chunk with the next counter appended after the (full) final chunk", ct + extra
    )


@vector
def trailing_byte_after_final() -> Vector:
    return _payload_failure(
        "one zero byte after the final chunk", seal("trailing_byte_after_final", b"short message") + b"\x00"
    )


@vector
def two_ciphertexts_concatenated() -> Vector:
    a = seal("two_ciphertexts_concatenated a", b"first message")
    b = seal("two_ciphertexts_concatenated b", b"second message")
    return _payload_failure("two complete ciphertexts (same key and context) one after the other", a + b)


@vector
def spliced_chunk_from_another_message() -> Vector:
    header, recs = _three_chunks("spliced_chunk_from_another_message")
    _, other = _three_chunks("spliced_chunk_from_another_message: donor")
    return _payload_failure(
        "the second chunk replaced by the second chunk of another message under the same key",
        header + recs[0] + other[1] + recs[2],
    )


@vector
def flipped_body_byte() -> Vector:
    header, recs = _three_chunks("flipped_body_byte")
    return _payload_failure(
        "one bit flipped in the second chunk's ciphertext", header + recs[0] + flip(recs[1], 100) + recs[2]
    )


@vector
def flipped_final_tag_byte() -> Vector:
    ct = seal("flipped_final_tag_byte", plaintext("flipped_final_tag_byte", 2 * CHUNK + 100))
    return _payload_failure("one bit flipped in the final chunk's tag", flip(ct, len(ct) - 1, 0x80))


@vector
def empty_final_chunk_after_full_chunk() -> Vector:
    name = "empty_final_chunk_after_full_chunk"
    dk, ps = det(name + " data key", 32), det(name + " payload salt", 32)
    header = forge_header(data_key=dk, payload_salt=ps, wrap_salt=det(name + " wrap salt", 32))
    body = seal_chunks(dk, ps, [(0, False, plaintext(name, CHUNK)), (1, True, b"")])
    return _payload_failure(
        "a full chunk then an empty final chunk, each validly sealed (no encoder writes this)", header + body
    )


@vector
def final_flag_on_first_of_two_chunks() -> Vector:
    name = "final_flag_on_first_of_two_chunks"
    dk, ps = det(name + " data key", 32), det(name + " payload salt", 32)
    header = forge_header(data_key=dk, payload_salt=ps, wrap_salt=det(name + " wrap salt", 32))
    body = seal_chunks(dk, ps, [(0, True, plaintext(name, CHUNK)), (1, True, b"tail")])
    return _payload_failure("the first of two chunks sealed as final (a stream cut after its 'end')", header + body)


@vector
def non_final_flag_on_last_chunk() -> Vector:
    name = "non_final_flag_on_last_chunk"
    dk, ps = det(name + " data key", 32), det(name + " payload salt", 32)
    header = forge_header(data_key=dk, payload_salt=ps, wrap_salt=det(name + " wrap salt", 32))
    body = seal_chunks(dk, ps, [(0, False, plaintext(name, CHUNK)), (1, False, b"tail")])
    return _payload_failure(
        "the last chunk sealed as non-final (a stream truncated at a chunk boundary)", header + body
    )


@vector
def record_shorter_than_tag() -> Vector:
    header, recs = _three_chunks("record_shorter_than_tag")
    return _payload_failure("a body of 10 bytes, shorter than one tag", header + recs[0][:10])


# -- armor failures -------------------------------------------------------------------
def _armored(name: str, n: int = 2 * CHUNK + 100) -> list[bytes]:
    ct = seal(name, plaintext(name, n))
    return armor.armor(ct).split(b"\n")


def _armor_failure(defect: str, lines: list[bytes]) -> Vector:
    return Vector("armor failure", defect, b"\n".join(lines), armored=True)


@vector
def armor_missing_end_line() -> Vector:
    lines = _armored("armor_missing_end_line")
    assert lines[-2].startswith(b"-----END") and lines[-1] == b""
    return _armor_failure("the END line is missing", lines[:-2] + [b""])


@vector
def armor_garbage_after_end() -> Vector:
    lines = _armored("armor_garbage_after_end")
    return _armor_failure("text after the END line", lines + [b"P.S. not armor"])


@vector
def armor_text_before_begin() -> Vector:
    lines = _armored("armor_text_before_begin")
    v = _armor_failure(
        "a line of text before BEGIN (sniff sees no armor: decrypt reads it as binary)",
        [b"Here is the secret:"] + lines,
    )
    v.armored = False
    return v


@vector
def armor_bad_begin_line() -> Vector:
    lines = _armored("armor_bad_begin_line")
    lines[0] = b"-----BEGIN AGE ENCRYPTED FILE-----"
    return _armor_failure("the BEGIN line names another type", lines)


@vector
def armor_short_line_in_middle() -> Vector:
    lines = _armored("armor_short_line_in_middle")
    lines[100] = lines[100][:-4]
    return _armor_failure("a line in the middle 4 characters short (60)", lines)


@vector
def armor_long_line_in_middle() -> Vector:
    lines = _armored("armor_long_line_in_middle")
    lines[100:102] = [lines[100] + lines[101][:4], lines[101][4:]]
    return _armor_failure("a line in the middle 4 characters long (68), the next one short", lines)


@vector
def armor_non_base64_character() -> Vector:
    lines = _armored("armor_non_base64_character")
    lines[50] = lines[50][:10] + b"*" + lines[50][11:]
    return _armor_failure("a '*' in a middle line", lines)


@vector
def armor_url_safe_alphabet() -> Vector:
    lines = _armored("armor_url_safe_alphabet")
    lines = [ln.replace(b"+", b"-").replace(b"/", b"_") if not ln.startswith(b"-----") else ln for ln in lines]
    return _armor_failure("the URL-safe base64 alphabet ('-', '_') instead of the standard one", lines)


@vector
def armor_padding_in_middle_line() -> Vector:
    lines = _armored("armor_padding_in_middle_line")
    lines[60] = lines[60][:-4] + b"AA=="
    return _armor_failure("'==' padding at the end of a middle line", lines)


@vector
def armor_missing_padding() -> Vector:
    lines = _armored("armor_missing_padding")
    assert lines[-3].endswith(b"=")
    lines[-3] = lines[-3].rstrip(b"=")
    return _armor_failure("the last line without its '=' padding", lines)


@vector
def armor_noncanonical_last_line() -> Vector:
    lines = _armored("armor_noncanonical_last_line", 2 * CHUNK + 101)
    last = lines[-3]
    assert last.endswith(b"=") and not last.endswith(b"==")  # 2 data bytes: 2 unused bits
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    ch = alphabet.index(last[-2:-1])
    lines[-3] = last[:-2] + alphabet[ch | 1 : (ch | 1) + 1] + b"="
    assert lines[-3] != last
    return _armor_failure("the last line's unused bits set (decodes to the same bytes, but not canonical)", lines)


@vector
def armor_blank_line_before_end() -> Vector:
    lines = _armored("armor_blank_line_before_end")
    return _armor_failure("an empty line between the last line and END", lines[:-2] + [b"", lines[-2], b""])


@vector
def armor_mixed_line_endings() -> Vector:
    lines = _armored("armor_mixed_line_endings")
    lines[70] = lines[70] + b"\r"
    return _armor_failure("one CRLF line ending among LF ones", lines)


# -- format version 2 -----------------------------------------------------------------
def seal2(label: str, data: bytes, **kw: object) -> bytes:
    return seal(label, data, format_version=2, **kw)


def _success2(name: str, n: int, defect: str, context: dict[str, str] | None = None, **kw: object) -> Vector:
    ctx = CONTEXT if context is None else context
    data = plaintext(name, n)
    ct = seal2(name, data, context=ctx, **kw)
    assert ct[8] == 2
    if n <= 4096:
        assert len(ct) <= BLOB_MAX, (name, len(ct))
    return Vector("success", defect, ct, context=dict(ctx), plaintext=data)


def forged2(label: str, context: dict[str, str] | None = None, **kw: object) -> tuple[bytes, dict[str, str]]:
    """A version 2 header forged with ``kw`` planted, a valid one-chunk body, and the context to decrypt with."""
    ctx = CONTEXT if context is None else context
    kw.setdefault("version", 2)
    return forged(label, context=canonical(ctx), **kw), dict(ctx)


@vector
def v2_empty_context() -> Vector:
    return _success2("v2_empty_context", 100, "none: version 2, the empty context (stored)", context={})


@vector
def v2_small_context() -> Vector:
    return _success2("v2_small_context", 100, "none: version 2, the usual small context, stored in the header")


@vector
def v2_unicode_context() -> Vector:
    ctx = {"é": "", "Z": "ünïcödé ✓", "a=b": "c,d", "\U0001f511": "key"}
    return _success2("v2_unicode_context", 100, "none: version 2, non-ASCII keys and values (stored)", context=ctx)


@vector
def v2_largest_stored_context() -> Vector:
    return _success2(
        "v2_largest_stored_context",
        4096,
        "none: version 2, a context of 1024 bytes encoded (the largest stored) and 4096 plaintext bytes "
        "with the default chunk size: 5344 bytes, the largest ciphertext of a 4096-byte plaintext",
        context=sized_ctx(INLINE_MAX),
        chunk_size=1 << 20,
    )


@vector
def v2_smallest_digest_context() -> Vector:
    return _success2(
        "v2_smallest_digest_context",
        100,
        "none: version 2, a context of 1025 bytes encoded (the smallest held only as its digest)",
        context=sized_ctx(INLINE_MAX + 1),
    )


@vector
def v2_largest_context() -> Vector:
    return _success2(
        "v2_largest_context",
        4096,
        "none: version 2, 64 context pairs, 8192 bytes encoded (both limits), held as its digest, and 4096 "
        "plaintext bytes with the default chunk size: 4352 bytes",
        context=largest_ctx(),
        chunk_size=1 << 20,
    )


@vector
def v2_digest_context_three_chunks() -> Vector:
    return _success2(
        "v2_digest_context_three_chunks",
        2 * CHUNK + 100,
        "none: version 2, the largest context (digest) over two full chunks and a short final chunk",
        context=largest_ctx(),
    )


@vector
def v2_reencrypted_from_version_1() -> Vector:
    name = "v2_reencrypted_from_version_1"
    data = plaintext(name, 2 * CHUNK + 100)
    old = seal(name, data)  # version 1, the usual context
    src = io.BytesIO(old)
    out = io.BytesIO()
    stream.rewrap_stream(
        stream.read_header(src),
        src,
        out,
        old_master_key=MASTER_KEY,
        context=CONTEXT,
        new_master_key=MASTER_KEY,
        new_key_id=KEY_ID,
        new_material_version=MATERIAL_VERSION,
        new_context=largest_ctx(),
        wrap_salt=det(name + " new wrap salt", 32),
    )
    ct = out.getvalue()
    assert ct[8] == 2 and ct[header_size(ct) :] == old[header_size(old) :]
    return Vector(
        "success",
        "none: a version 1 ciphertext reencrypted to version 2 and the largest context: the body is version 1's, "
        "byte for byte, under a version 2 header",
        ct,
        context=largest_ctx(),
        plaintext=data,
    )


@vector
def v2_wrong_master_key() -> Vector:
    ct = seal2("v2_wrong_master_key", b"x" * 100, context=largest_ctx())
    v = Vector("wrong key", "version 2 with the largest context (digest), decrypted with another master key", ct)
    v.master_key, v.context = OTHER_MASTER_KEY, largest_ctx()
    return v


@vector
def v2_wrong_digest_context() -> Vector:
    name = "v2_wrong_digest_context"
    ctx = largest_ctx()
    v = Vector("wrong context", "", seal2(name, b"x" * 50, context=ctx))
    ctx["k07"] = "u" + ctx["k07"][1:]
    v.defect = "one value of the largest context differs, same encoded length: only the digest tells them apart"
    v.context = ctx
    return v


@vector
def v2_wrong_stored_context() -> Vector:
    ct = seal2("v2_wrong_stored_context", b"x")
    v = Vector("wrong context", "version 2, one value of a stored context differs", ct)
    v.context = {"purpose": "test vectors", "tenant": "acme2"}
    return v


@vector
def v2_small_context_for_digest_header() -> Vector:
    v = Vector(
        "wrong context",
        "version 2, encrypted with the largest context (digest), decrypted with the usual small one",
        seal2("v2_small_context_for_digest_header", b"x", context=largest_ctx()),
    )
    v.context = dict(CONTEXT)
    return v


@vector
def v2_flipped_context_digest_byte() -> Vector:
    ct = seal2("v2_flipped_context_digest_byte", b"x" * 100, context=largest_ctx())
    v = _header_failure("version 2, one bit flipped in the context digest", flip(ct, 96 + 5))
    v.context = largest_ctx()
    return v


@vector
def v2_oversized_context_length() -> Vector:
    ctx = encode_pairs([(b"k", b"v" * (8193 - 2 - 4 - 1))])
    assert len(ctx) == 8193
    return _header_failure(
        "version 2, context length 8193 (one over the limit) with the digest of a well-formed 8193-byte context, "
        "behind a valid MAC",
        forged("v2_oversized_context_length", context=ctx, version=2),
    )


@vector
def v2_context_length_too_small() -> Vector:
    return _header_failure(
        "version 2, context length 1 (a lone byte where the pair count belongs), behind a valid MAC",
        forged("v2_context_length_too_small", context=b"\x00", version=2),
    )


@vector
def v2_context_length_not_the_digested_one() -> Vector:
    ctx = largest_ctx()
    ct, _ = forged2("v2_context_length_not_the_digested_one", ctx, context_length=8191)
    v = _header_failure(
        "version 2, the digest of the largest context (8192 bytes) under context length 8191, behind a valid MAC: "
        "the length must be the context's too",
        ct,
    )
    v.context = ctx
    return v


@vector
def v2_context_stored_above_the_limit() -> Vector:
    ctx = sized_ctx(INLINE_MAX + 1)
    ct, _ = forged2("v2_context_stored_above_the_limit", ctx, context_field=canonical(ctx))
    v = _header_failure(
        "version 2, a 1025-byte context stored whole instead of its digest, behind a valid MAC "
        "(read as a digest and misaligned)",
        ct,
    )
    v.context = ctx
    return v


@vector
def v2_digest_without_label() -> Vector:
    ctx = largest_ctx()
    ct, _ = forged2("v2_digest_without_label", ctx, context_field=hashlib.sha256(canonical(ctx)).digest())
    v = _header_failure("version 2, the context digest made without its label, behind a valid MAC", ct)
    v.context = ctx
    return v


@vector
def v2_wrapped_with_the_version_1_wrap_key() -> Vector:
    ctx = largest_ctx()
    ct, _ = forged2("v2_wrapped_with_the_version_1_wrap_key", ctx, wrap_label=1)
    v = _header_failure(
        "version 2 with the largest context, the data key wrapped under the version 1 wrap key (label v1)", ct
    )
    v.context = ctx
    return v


@vector
def v2_downgraded_to_version_1() -> Vector:
    ct = seal2("v2_downgraded_to_version_1", b"x" * 100)
    bad = bytearray(ct)
    bad[8] = 1  # a stored-context version 2 header is laid out as a version 1 one
    return _header_failure("a version 2 ciphertext (stored context) with its version byte set to 1", bytes(bad))


@vector
def v2_unknown_format_version_3() -> Vector:
    ct, _ = forged2("v2_unknown_format_version_3", version=3)
    return _header_failure("format version 3 in version 2's layout, otherwise valid (MAC and wrap made over it)", ct)


@vector
def v2_truncated_inside_digest() -> Vector:
    ct = seal2("v2_truncated_inside_digest", b"x" * 100, context=largest_ctx())
    v = _header_failure("version 2, the input ends 10 bytes into the context digest", ct[: 96 + 10])
    v.context = largest_ctx()
    return v


@vector
def v2_missing_final_chunk() -> Vector:
    name = "v2_missing_final_chunk"
    header, recs = records(seal2(name, plaintext(name, 2 * CHUNK + 100), context=largest_ctx()))
    v = _payload_failure("version 2 with a digest context, the final (short) chunk dropped", header + recs[0] + recs[1])
    v.context = largest_ctx()
    return v


# -- writing --------------------------------------------------------------------
def build() -> dict[str, bytes]:
    return {name + SUFFIX: fn().to_bytes() for name, fn in GENERATORS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    wanted = build()
    changed = []
    for name, data in sorted(wanted.items()):
        path = HERE / name
        if path.exists():
            if path.read_bytes() != data:
                changed.append(name)
        elif check:
            changed.append(name + " (missing)")
        else:
            path.write_bytes(data)
            print("wrote", name)
    stale = sorted(p.name for p in HERE.glob("*" + SUFFIX) if p.name not in wanted)
    for name in changed:
        print("DIFFERS:", name, file=sys.stderr)
    for name in stale:
        print("NO GENERATOR:", name, file=sys.stderr)
    total = sum(p.stat().st_size for p in HERE.glob("*" + SUFFIX))
    print(f"{len(wanted)} vectors, {total} bytes")
    return 1 if changed or stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
