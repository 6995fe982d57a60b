"""The kmscli ciphertext format, versions 1 and 2, exactly as docs/format.md lays it out.

A ciphertext is a header (key id, material version, encryption context or, in
version 2 when the context is large, its digest, the data key wrapped under the
master key, a key commitment and a header MAC) and a body of AES-256-GCM chunks
in the STREAM construction. Encryption writes version 2; both versions are
read. This module knows nothing of vaults or the CLI: callers hand it master
key bytes and binary file objects. ``cryptography`` is imported only through
``primitives`` and only when a function here runs, never at import time.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidCiphertextException, ValidationException
from . import primitives

# -- Quantities named as in docs/format.md ------------------------------------
MAGIC = b"\x89KMS\r\n\x1a\n"
#: What encrypt and reencrypt write.
FORMAT_VERSION = 2
#: What a reader accepts: version 1 ciphertexts must decrypt forever.
READABLE_VERSIONS = (1, 2)
MIN_CHUNK_SIZE_LOG2 = 12
MAX_CHUNK_SIZE_LOG2 = 22
MIN_CHUNK_SIZE = 1 << MIN_CHUNK_SIZE_LOG2  # 4 KiB
MAX_CHUNK_SIZE = 1 << MAX_CHUNK_SIZE_LOG2  # 4 MiB
CHUNK_SIZE_LOG2 = 20
CHUNK_SIZE = 1 << CHUNK_SIZE_LOG2  # 1 MiB: see "Chunk size" in docs/format.md
KEY_ID_SIZE = 16
MAX_MATERIAL_VERSION = 0xFFFFFFFF
SALT_SIZE = 32
DATA_KEY_SIZE = primitives.KEY_SIZE
TAG_SIZE = primitives.TAG_SIZE
WRAPPED_KEY_SIZE = DATA_KEY_SIZE + TAG_SIZE
COMMITMENT_SIZE = 32
HEADER_MAC_SIZE = 32
CONTEXT_MAX_BYTES = 8192
CONTEXT_MAX_PAIRS = 64
#: Version 2 stores a context of up to this many encoded bytes; a larger one
#: only as its digest, so that a ciphertext of 4096 plaintext bytes (the blob
#: API) stays within 6144 bytes whatever the context (docs/format.md).
CONTEXT_INLINE_MAX_BYTES = 1024
CONTEXT_DIGEST_SIZE = 32
STREAM_NONCE_SIZE = primitives.NONCE_SIZE
STREAM_COUNTER_SIZE = STREAM_NONCE_SIZE - 1
LAST_CHUNK_FLAG = b"\x01"
NOT_LAST_CHUNK_FLAG = b"\x00"

# magic, version, chunk_size_log2, key_id, material_version, payload_salt, wrap_salt, context_length
_FIXED = struct.Struct(">8sBB16sI32s32sH")
FIXED_SIZE = _FIXED.size  # 96: the context starts here
_TRAILER_SIZE = WRAPPED_KEY_SIZE + COMMITMENT_SIZE + HEADER_MAC_SIZE
HEADER_MIN_SIZE = FIXED_SIZE + 2 + _TRAILER_SIZE  # 210, either version: the empty context
#: The most read_header ever reads: a version 1 header with the largest context.
HEADER_MAX_SIZE = FIXED_SIZE + CONTEXT_MAX_BYTES + _TRAILER_SIZE  # 8400
V2_HEADER_MAX_SIZE = FIXED_SIZE + CONTEXT_INLINE_MAX_BYTES + _TRAILER_SIZE  # 1232
V2_DIGEST_HEADER_SIZE = FIXED_SIZE + CONTEXT_DIGEST_SIZE + _TRAILER_SIZE  # 240

_U16 = struct.Struct(">H")
# A wrap key is derived from a fresh 256-bit wrap_salt for every wrap and
# seals exactly one data key, so a fixed nonce can never repeat under it.
_WRAP_NONCE = bytes(STREAM_NONCE_SIZE)
# Each format version has its own wrap key: a small-context header of version
# 2 is laid out exactly as one of version 1, and must never open as the other.
_LABEL_WRAP = {1: b"kmscli ciphertext wrap key v1", 2: b"kmscli ciphertext wrap key v2"}
_LABEL_CONTEXT_DIGEST = b"kmscli ciphertext context digest v2"
_LABEL_HEADER = b"kmscli ciphertext header v1"
_LABEL_COMMITMENT = b"kmscli ciphertext commitment v1"
_LABEL_PAYLOAD = b"kmscli ciphertext payload v1"
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Progress = Callable[[int], Any]


@dataclass(frozen=True)
class Header:
    """A parsed, bound-checked ciphertext header. Parsing proves nothing: only
    :func:`open_header` (or decrypting) authenticates it."""

    key_id: str
    material_version: int
    #: The context the header stores, or None when it holds only its digest.
    context: dict[str, str] | None
    #: The length of the context's canonical encoding, stored or not.
    context_length: int
    #: SHA-256 (with its label) of the canonical context, when that is what the
    #: header holds instead of the context (version 2, context over 1024 bytes).
    context_digest: bytes | None
    chunk_size: int
    format_version: int
    payload_salt: bytes
    wrap_salt: bytes
    wrapped_key: bytes
    commitment: bytes
    mac: bytes
    #: The header exactly as read: what the MAC and the wrap's AAD cover.
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)


@dataclass(frozen=True)
class OpenedHeader:
    """A header that authenticated under a master key: what the body needs."""

    header: Header
    data_key: bytes
    payload_key: bytes


# -- Encryption context --------------------------------------------------------
def encode_context(context: Mapping[str, str]) -> bytes:
    """Return the canonical encoding of an encryption context, or raise
    ValidationException naming the rule it breaks."""
    if not isinstance(context, Mapping):
        raise ValidationException("the encryption context must be a mapping of strings to strings")
    if len(context) > CONTEXT_MAX_PAIRS:
        raise ValidationException(
            f"the encryption context has {len(context)} pairs; at most {CONTEXT_MAX_PAIRS} are allowed"
        )
    pairs = []
    size = 2
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationException("encryption context keys and values must be strings")
        if not key:
            raise ValidationException("encryption context keys must not be empty")
        try:
            kb, vb = key.encode("utf-8"), value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationException(
                f"encryption context pair {key!r} is not valid Unicode text (lone surrogate)"
            ) from None
        size += 4 + len(kb) + len(vb)
        pairs.append((kb, vb))
    if size > CONTEXT_MAX_BYTES:
        raise ValidationException(
            f"the encryption context is {size} bytes encoded; at most {CONTEXT_MAX_BYTES} are allowed"
        )
    # Sorting by UTF-8 bytes gives one encoding per context whatever the
    # insertion order; the length prefixes make the encoding unambiguous.
    pairs.sort()
    parts = [_U16.pack(len(pairs))]
    for kb, vb in pairs:
        parts += (_U16.pack(len(kb)), kb, _U16.pack(len(vb)), vb)
    return b"".join(parts)


def context_digest(encoded: bytes) -> bytes:
    """The digest a version 2 header holds for a large canonical context."""
    return primitives.sha256(_LABEL_CONTEXT_DIGEST + encoded)


def _stores_context(version: int, length: int) -> bool:
    return version == 1 or length <= CONTEXT_INLINE_MAX_BYTES


def _context_field(version: int, encoded: bytes) -> bytes:
    """What a header of ``version`` holds after ``context_length`` for this
    canonical context: the context itself, or its digest."""
    return encoded if _stores_context(version, len(encoded)) else context_digest(encoded)


def _decode_context(data: bytes) -> dict[str, str]:
    """Parse a header's context; anything but the canonical encoding is invalid,
    so that one context has exactly one byte string a MAC can cover."""
    if len(data) < 2 or len(data) > CONTEXT_MAX_BYTES:
        raise InvalidCiphertextException()
    (count,) = _U16.unpack_from(data, 0)
    if count > CONTEXT_MAX_PAIRS:
        raise InvalidCiphertextException()
    pos = 2
    context: dict[str, str] = {}
    previous = b""
    try:
        for _ in range(count):
            key, pos = _take_string(data, pos)
            value, pos = _take_string(data, pos)
            if not key or key <= previous:
                raise InvalidCiphertextException()
            previous = key
            context[key.decode("utf-8")] = value.decode("utf-8")
    except (struct.error, UnicodeDecodeError):
        raise InvalidCiphertextException() from None
    if pos != len(data):
        raise InvalidCiphertextException()
    return context


def _take_string(data: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = _U16.unpack_from(data, pos)
    start, end = pos + 2, pos + 2 + length
    if end > len(data):
        raise InvalidCiphertextException()
    return data[start:end], end


# -- Key ids ------------------------------------------------------------------
def _key_id_bytes(key_id: str) -> bytes:
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise ValidationException(f"key id must be a lowercase UUID (got {key_id!r:.60})")
    return bytes.fromhex(key_id.replace("-", ""))


def _key_id_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- Header -------------------------------------------------------------------
def _check_master_key(master_key: bytes) -> None:
    if not isinstance(master_key, (bytes, bytearray)) or len(master_key) != primitives.KEY_SIZE:
        raise ValueError("master key must be 32 bytes")


def _chunk_size_log2(chunk_size: int) -> int:
    valid = isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0
    log2 = chunk_size.bit_length() - 1 if valid else 0
    if not valid or (1 << log2) != chunk_size or not MIN_CHUNK_SIZE_LOG2 <= log2 <= MAX_CHUNK_SIZE_LOG2:
        raise ValidationException(
            f"chunk size must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} (got {chunk_size!r})"
        )
    return log2


def _check_material_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_MATERIAL_VERSION:
        raise ValidationException(f"material version must be from 1 to {MAX_MATERIAL_VERSION} (got {version!r})")


def _random_or_given(value: bytes | None, size: int, what: str) -> bytes:
    if value is None:
        return primitives.random_bytes(size)
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValidationException(f"{what} must be {size} bytes")
    return bytes(value)


def _wrap_key(master_key: bytes, wrap_salt: bytes, key_id: bytes, material_version: int, version: int) -> bytes:
    # Binding the key identity into the derivation means the same material
    # under another key id or version never opens this wrap.
    info = _LABEL_WRAP[version] + key_id + material_version.to_bytes(4, "big")
    return primitives.hkdf(master_key, info, salt=wrap_salt)


def _header_key(data_key: bytes, payload_salt: bytes) -> bytes:
    return primitives.hkdf(data_key, _LABEL_HEADER, salt=payload_salt)


def _commitment(data_key: bytes, payload_salt: bytes) -> bytes:
    return primitives.hkdf(data_key, _LABEL_COMMITMENT, salt=payload_salt)


def _payload_key(data_key: bytes, payload_salt: bytes) -> bytes:
    return primitives.hkdf(data_key, _LABEL_PAYLOAD, salt=payload_salt)


def _seal_header(
    *,
    master_key: bytes,
    key_id: bytes,
    material_version: int,
    context: bytes,
    chunk_size_log2: int,
    data_key: bytes,
    payload_salt: bytes,
    wrap_salt: bytes,
    version: int = FORMAT_VERSION,
) -> bytes:
    """Build a header from already validated fields (``context`` canonical)."""
    prefix = _FIXED.pack(
        MAGIC,
        version,
        chunk_size_log2,
        key_id,
        material_version,
        payload_salt,
        wrap_salt,
        len(context),
    ) + _context_field(version, context)
    # The AAD is every field before the wrapped key, so only a holder of the
    # master key can bind a data key to this key id, version and context (or
    # the context's digest, which binds it as firmly: SHA-256 is collision-resistant).
    wrap_key = _wrap_key(master_key, wrap_salt, key_id, material_version, version)
    wrapped = primitives.seal(wrap_key, _WRAP_NONCE, data_key, prefix)
    body = prefix + wrapped + _commitment(data_key, payload_salt)
    return body + primitives.hmac_sha256(_header_key(data_key, payload_salt), body)


def parse_header(raw: bytes) -> Header:
    """Parse and bound-check a complete header held in memory (nothing after it)."""
    raw = bytes(raw)
    if len(raw) < FIXED_SIZE:
        raise InvalidCiphertextException()
    total = _check_fixed(raw[:FIXED_SIZE])
    if len(raw) != total:
        raise InvalidCiphertextException()
    _magic, version, log2, key_id, material_version, payload_salt, wrap_salt, ctx_len = _FIXED.unpack_from(raw)
    pos = total - _TRAILER_SIZE
    field = raw[FIXED_SIZE:pos]
    stored = _stores_context(version, ctx_len)
    return Header(
        key_id=_key_id_text(key_id),
        material_version=material_version,
        context=_decode_context(field) if stored else None,
        context_length=ctx_len,
        context_digest=None if stored else field,
        chunk_size=1 << log2,
        format_version=version,
        payload_salt=payload_salt,
        wrap_salt=wrap_salt,
        wrapped_key=raw[pos : pos + WRAPPED_KEY_SIZE],
        commitment=raw[pos + WRAPPED_KEY_SIZE : pos + WRAPPED_KEY_SIZE + COMMITMENT_SIZE],
        mac=raw[-HEADER_MAC_SIZE:],
        raw=raw,
    )


def _check_fixed(fixed: bytes) -> int:
    """Bound-check the fixed part and return the whole header's size."""
    magic, version, log2, _key_id, material_version, _ps, _ws, ctx_len = _FIXED.unpack(fixed)
    if magic != MAGIC:
        # Public knowledge (anyone can read the first bytes): said plainly.
        raise InvalidCiphertextException(NOT_A_CIPHERTEXT)
    # Refuse an unknown version before trusting any other field: a later
    # version may lay out everything after byte 8 differently.
    if version not in READABLE_VERSIONS:
        raise InvalidCiphertextException()
    # Bounding the chunk size bounds what a hostile header can make a reader
    # allocate (3 records) and how many AEAD calls it costs per byte.
    if not MIN_CHUNK_SIZE_LOG2 <= log2 <= MAX_CHUNK_SIZE_LOG2:
        raise InvalidCiphertextException()
    # The context length says how many bytes follow (the context, or in
    # version 2 above the inline limit its 32-byte digest), so it bounds what
    # the reader reads next: at most HEADER_MAX_SIZE in all.
    if material_version == 0 or not 2 <= ctx_len <= CONTEXT_MAX_BYTES:
        raise InvalidCiphertextException()
    field = ctx_len if _stores_context(version, ctx_len) else CONTEXT_DIGEST_SIZE
    return FIXED_SIZE + field + _TRAILER_SIZE


NOT_A_CIPHERTEXT = ("the input is not a kmscli ciphertext: it begins neither with kmscli's magic bytes nor "
                    "with '-----BEGIN KMSCLI ENCRYPTED MESSAGE-----'")
EMPTY_INPUT = "the input is empty: there is no ciphertext in it"


TRUNCATED_HEADER = "the ciphertext is truncated: it ends inside its header"


def context_differs(header: Header) -> str:
    """What to say when the context given is not the one the ciphertext was made with."""
    if header.context is None:  # stored as its digest: its keys are not in the header
        return ("the encryption context differs from the one the ciphertext was made with (a context of "
                f"{header.context_length} encoded bytes)")
    if not header.context:
        return "the ciphertext was made without an encryption context"
    keys = ", ".join(sorted(header.context))
    return (f"the encryption context differs from the one the ciphertext was made with, which has the "
            f"key(s) {keys}")


def read_header(reader: Any) -> Header:
    """Read exactly one header from ``reader`` and bound-check it; needs no key.

    Leaves ``reader`` positioned at the first body byte. Malformed input of any
    kind raises InvalidCiphertextException; I/O errors propagate as they are.
    """
    source = Source(reader)
    fixed = bytearray(FIXED_SIZE)
    got = source.fill(memoryview(fixed))
    if got != FIXED_SIZE:
        start = bytes(fixed[: min(got, len(MAGIC))])
        raise InvalidCiphertextException(EMPTY_INPUT if not got else TRUNCATED_HEADER if MAGIC.startswith(start)
                                         else NOT_A_CIPHERTEXT)
    total = _check_fixed(bytes(fixed))
    rest = bytearray(total - FIXED_SIZE)
    if source.fill(memoryview(rest)) != len(rest):
        raise InvalidCiphertextException(TRUNCATED_HEADER)
    return parse_header(bytes(fixed) + bytes(rest))


@dataclass(frozen=True)
class Inspection:
    """What a ciphertext says about itself without any key (``kmscli inspect``): nothing here is
    authenticated; only decrypting proves the header and the body are what they claim."""

    header: Header
    header_bytes: int
    body_bytes: int
    #: How many chunks the body holds and the plaintext size they add up to, from the body's length.
    chunks: int
    plaintext_bytes: int


def inspect(reader: Any) -> Inspection:
    """Parse the header of the ciphertext ``reader`` yields and measure its body, in constant memory.

    InvalidCiphertextException when the header does not parse or the body's
    length cannot be a sequence of sealed chunks.
    """
    header = read_header(reader)
    record = header.chunk_size + TAG_SIZE
    source = Source(reader)
    buf = memoryview(bytearray(1 << 20))
    body = 0
    while True:
        n = source.fill(buf)
        body += n
        if n < len(buf):
            break
    full, rest = divmod(body, record)
    if body == 0 or 0 < rest < TAG_SIZE:
        raise InvalidCiphertextException("the ciphertext's body is cut short or padded: its length is no sequence "
                                         "of sealed chunks")
    chunks = full + (1 if rest else 0)
    plaintext = body - chunks * TAG_SIZE
    return Inspection(header=header, header_bytes=len(header.raw), body_bytes=body, chunks=chunks,
                      plaintext_bytes=plaintext)


def open_header(header: Header, *, master_key: bytes, context: Mapping[str, str]) -> OpenedHeader:
    """Authenticate ``header`` under ``master_key`` and ``context`` and return the
    keys for its body; InvalidCiphertextException if anything does not match."""
    _check_master_key(master_key)
    # Re-parse the raw bytes so that every field used below is the one the
    # MAC covers, whatever a caller did to the dataclass.
    header = parse_header(header.raw)
    raw = header.raw
    prefix_end = len(raw) - _TRAILER_SIZE
    try:
        given = encode_context(context)
    except ValidationException:
        raise InvalidCiphertextException() from None
    # Step 2: the caller's context must give exactly the header's length and
    # the header's stored bytes (the context, or its digest).
    expected = _context_field(header.format_version, given)
    if len(given) != header.context_length or expected != raw[FIXED_SIZE:prefix_end]:
        # Compared before any key is used, with what the header holds in the
        # clear: saying so (and the keys it holds) is no oracle.
        raise InvalidCiphertextException(context_differs(header), hint="decrypt it without --context" if
                                         header.context == {} else "give exactly the same pairs with --context")
    key_id = _key_id_bytes(header.key_id)
    wrap_key = _wrap_key(master_key, header.wrap_salt, key_id, header.material_version, header.format_version)
    try:
        data_key = primitives.open_(wrap_key, _WRAP_NONCE, header.wrapped_key, raw[:prefix_end])
    except primitives.AuthenticationFailed:
        raise InvalidCiphertextException() from None
    # Key commitment: GCM alone would let one wrapped key open to different
    # data keys under different master keys; only one data key reproduces
    # this value.
    if not primitives.constant_time_equal(_commitment(data_key, header.payload_salt), header.commitment):
        raise InvalidCiphertextException()
    mac = primitives.hmac_sha256(_header_key(data_key, header.payload_salt), raw[:-HEADER_MAC_SIZE])
    if not primitives.constant_time_equal(mac, header.mac):
        raise InvalidCiphertextException()
    return OpenedHeader(header=header, data_key=data_key, payload_key=_payload_key(data_key, header.payload_salt))


# -- I/O helpers --------------------------------------------------------------
class Source:
    """Fills caller buffers from a binary reader with ``readinto``, looping over
    short reads (pipes, raw files) so that a short fill always means end of input."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._readinto = reader.readinto

    def fill(self, view: memoryview) -> int:
        """Fill ``view``; fewer bytes than its length means end of input."""
        size = len(view)
        total = 0
        while total < size:
            got = self._readinto(view[total:] if total else view)
            if got is None:
                # A non-blocking source with nothing yet: None is not end of
                # input, and taking it for one would silently truncate.
                _wait(self._reader, write=False)
            elif got == 0:
                break
            else:
                total += got
        return total


def read_up_to(reader: Any, limit: int) -> bytes:
    """At most ``limit`` bytes of ``reader``, fewer only at its end: a pipe or raw file may answer a read with
    less than was asked, so it is read until either. Read ``limit + 1`` to learn that an input is too large
    without reading the rest of it."""
    parts: list[bytes] = []
    held = 0
    while held < limit:
        part = reader.read(limit - held)
        if not part:
            break
        parts.append(part)
        held += len(part)
    return b"".join(parts)


def write_all(writer: Any, data: memoryview | bytes) -> None:
    """Write all of ``data``: raw files (stdout under PYTHONUNBUFFERED) may
    take only part of it, and a non-blocking one may take none (None)."""
    view = memoryview(data)
    while True:
        n = writer.write(view)
        if n is None:
            _wait(writer, write=True)
            continue
        if n >= len(view):
            return
        view = view[n:]


def _wait(stream: Any, *, write: bool) -> None:
    import select

    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    if write:
        select.select([], [fd], [])
    else:
        select.select([fd], [], [])


def _left_in_memory(reader: Any, unknown: int) -> int:
    """How many bytes an in-memory reader (a served request's blob) has left; ``unknown`` for a stream.

    A message shorter than one chunk then needs buffers of its own size, not
    three 1 MiB mappings (six system calls per request in a server).
    """
    if isinstance(reader, io.BytesIO):
        return len(reader.getbuffer()) - reader.tell()
    return unknown


def _buffer(size: int) -> memoryview:
    """A reusable zeroed buffer whose pages cost nothing until touched.

    ``bytearray(size)`` zero-fills eagerly: with 1 MiB chunks that is 3 MiB
    of page faults and memset per message, ~1.5 ms, which would dominate a
    small encrypt (a data key). An anonymous private mapping is zero-filled
    by the kernel one page at a time, as data actually arrives.
    """
    import mmap

    flags = getattr(mmap, "MAP_PRIVATE", None)
    if flags is None or size < mmap.PAGESIZE:  # no POSIX mmap, or a small message: an eager buffer
        return memoryview(bytearray(size))
    return memoryview(mmap.mmap(-1, size, flags=flags))


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(STREAM_COUNTER_SIZE, "big") + (LAST_CHUNK_FLAG if last else NOT_LAST_CHUNK_FLAG)


# -- Body ---------------------------------------------------------------------
def _seal_body(payload_key: bytes, chunk_size: int, reader: Any, writer: Any, progress: Progress | None) -> int:
    aead = primitives.aead(payload_key)
    encrypt_into = aead.encrypt_into
    source = Source(reader)
    size = min(chunk_size, _left_in_memory(reader, chunk_size))
    cur, nxt = _buffer(size), _buffer(size)
    out = _buffer(size + TAG_SIZE)
    n = source.fill(cur)
    counter = 0
    total = 0
    while True:
        # Read one chunk ahead: whether a chunk is final goes into its nonce,
        # and only end of input after it says so.
        if n == chunk_size:
            m = source.fill(nxt)
            last = m == 0
        else:
            m, last = 0, True
        sealed = out[: n + TAG_SIZE]
        encrypt_into(_nonce(counter, last), cur[:n], None, sealed)
        write_all(writer, sealed)
        total += n
        if progress is not None:
            progress(n)
        if last:
            return total
        cur, nxt, n = nxt, cur, m
        counter += 1


def _open_body(opened: OpenedHeader, reader: Any, writer: Any, progress: Progress | None, *, copy_records: bool) -> int:
    from cryptography.exceptions import InvalidTag

    chunk_size = opened.header.chunk_size
    record = chunk_size + TAG_SIZE
    decrypt_into = primitives.aead(opened.payload_key).decrypt_into
    source = Source(reader)
    size = min(record, _left_in_memory(reader, record))
    cur, nxt = _buffer(size), _buffer(size)
    out = _buffer(min(chunk_size, size))
    n = source.fill(cur)
    counter = 0
    total = 0
    while True:
        # A record is final when it is short or nothing follows it. Anything
        # after a real final chunk therefore makes it "non-final", and its tag
        # (made with the final flag) fails: trailing data is never accepted.
        if n == record:
            m = source.fill(nxt)
            last = m == 0
        else:
            m, last = 0, True
        # An empty final chunk is only the encoding of the empty plaintext;
        # refusing it elsewhere keeps one ciphertext per plaintext and header.
        if n < TAG_SIZE or (n == TAG_SIZE and counter):
            raise InvalidCiphertextException()
        plain = out[: n - TAG_SIZE]
        try:
            decrypt_into(_nonce(counter, last), cur[:n], None, plain)
        except InvalidTag:
            raise InvalidCiphertextException() from None
        # Only authenticated bytes leave this function: rewrap copies the
        # verified record, decrypt writes its plaintext.
        write_all(writer, cur[:n] if copy_records else plain)
        total += len(plain)
        if progress is not None:
            progress(len(plain))
        if last:
            return total
        cur, nxt, n = nxt, cur, m
        counter += 1


# -- Public API ---------------------------------------------------------------
def encrypt_stream(
    reader: Any,
    writer: Any,
    *,
    master_key: bytes,
    key_id: str,
    material_version: int,
    context: Mapping[str, str],
    chunk_size: int = CHUNK_SIZE,
    data_key: bytes | None = None,
    salt: bytes | None = None,
    wrap_salt: bytes | None = None,
    progress: Progress | None = None,
    format_version: int = FORMAT_VERSION,
) -> int:
    """Encrypt everything ``reader`` yields into ``writer``; return the plaintext size.

    ``data_key``, ``salt`` (the payload salt) and ``wrap_salt`` are the
    deterministic seam for test vectors; leave them None otherwise, and leave
    ``format_version`` alone (1 exists for the version 1 vectors and tests). Every
    argument is checked (ValidationException) before anything is written.
    """
    if isinstance(format_version, bool) or format_version not in READABLE_VERSIONS:
        raise ValidationException(f"format version must be one of {READABLE_VERSIONS} (got {format_version!r})")
    _check_master_key(master_key)
    key_id_bytes = _key_id_bytes(key_id)
    _check_material_version(material_version)
    context_bytes = encode_context(context)
    log2 = _chunk_size_log2(chunk_size)
    data_key = _random_or_given(data_key, DATA_KEY_SIZE, "data key")
    payload_salt = _random_or_given(salt, SALT_SIZE, "salt")
    header = _seal_header(
        master_key=master_key,
        key_id=key_id_bytes,
        material_version=material_version,
        context=context_bytes,
        chunk_size_log2=log2,
        data_key=data_key,
        payload_salt=payload_salt,
        wrap_salt=_random_or_given(wrap_salt, SALT_SIZE, "wrap salt"),
        version=format_version,
    )
    write_all(writer, header)
    return _seal_body(_payload_key(data_key, payload_salt), chunk_size, reader, writer, progress)


def decrypt_stream(
    header: Header,
    reader: Any,
    writer: Any,
    *,
    master_key: bytes,
    context: Mapping[str, str],
    progress: Progress | None = None,
) -> int:
    """Decrypt the body that follows ``header`` in ``reader`` into ``writer``;
    return the plaintext size.

    A chunk's plaintext is written only after it authenticated. Any failure
    (wrong key or context, tampering, truncation, trailing data) raises
    InvalidCiphertextException, possibly after earlier chunks were written:
    callers must discard the output then.
    """
    opened = open_header(header, master_key=master_key, context=context)
    return _open_body(opened, reader, writer, progress, copy_records=False)


def rewrap_stream(
    header: Header,
    reader: Any,
    writer: Any,
    *,
    old_master_key: bytes,
    context: Mapping[str, str],
    new_master_key: bytes,
    new_key_id: str,
    new_material_version: int,
    new_context: Mapping[str, str],
    wrap_salt: bytes | None = None,
    progress: Progress | None = None,
) -> None:
    """Move a ciphertext to another key and/or context without exposing its plaintext.

    The data key is re-wrapped under the new key in a new header (always of
    FORMAT_VERSION, whatever the old one's) and the body is copied unchanged,
    each record authenticated before it is copied, so a tampered body fails
    here (InvalidCiphertextException). New arguments are validated
    (ValidationException) before the old header is even opened.
    """
    _check_master_key(new_master_key)
    new_key_id_bytes = _key_id_bytes(new_key_id)
    _check_material_version(new_material_version)
    new_context_bytes = encode_context(new_context)
    new_wrap_salt = _random_or_given(wrap_salt, SALT_SIZE, "wrap salt")
    opened = open_header(header, master_key=old_master_key, context=context)
    old = opened.header
    new_header = _seal_header(
        master_key=new_master_key,
        key_id=new_key_id_bytes,
        material_version=new_material_version,
        context=new_context_bytes,
        chunk_size_log2=old.chunk_size.bit_length() - 1,
        data_key=opened.data_key,
        payload_salt=old.payload_salt,
        wrap_salt=new_wrap_salt,
    )
    write_all(writer, new_header)
    _open_body(opened, reader, writer, progress, copy_records=True)


def encrypt_bytes(
    plaintext: bytes,
    *,
    master_key: bytes,
    key_id: str,
    material_version: int,
    context: Mapping[str, str],
    chunk_size: int = CHUNK_SIZE,
    data_key: bytes | None = None,
    salt: bytes | None = None,
    wrap_salt: bytes | None = None,
    format_version: int = FORMAT_VERSION,
) -> bytes:
    """Encrypt a small plaintext held in memory (a data key, a test message).

    Up to 4096 plaintext bytes give at most 6144 bytes (the size AWS allows a
    CiphertextBlob), for every context ``encode_context`` accepts."""
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(plaintext),
        out,
        master_key=master_key,
        key_id=key_id,
        material_version=material_version,
        context=context,
        chunk_size=chunk_size,
        data_key=data_key,
        salt=salt,
        wrap_salt=wrap_salt,
        format_version=format_version,
    )
    return out.getvalue()


def decrypt_bytes(ciphertext: bytes, *, master_key: bytes, context: Mapping[str, str]) -> bytes:
    """Decrypt a whole binary ciphertext held in memory. To learn which master
    key it needs first, call :func:`read_header` on it."""
    source = io.BytesIO(ciphertext)
    header = read_header(source)
    out = io.BytesIO()
    decrypt_stream(header, source, out, master_key=master_key, context=context)
    return out.getvalue()
