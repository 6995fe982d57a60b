"""Properties of the ciphertext format and the armor, for arbitrary inputs."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from kmscli.crypto import armor, stream
from kmscli.errors import InvalidCiphertextException, ValidationException

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)
MK = bytes(range(32))
KID = "1b4e28ba-2fa1-4d2e-883f-0016d3cca427"
CHUNK = stream.MIN_CHUNK_SIZE

# Any text Python can encode as UTF-8 (no lone surrogates); keys non-empty.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
contexts = st.dictionaries(text.filter(bool), text, max_size=8)
payloads = st.binary(max_size=3 * CHUNK + 50)


class Trickle(io.RawIOBase):
    def __init__(self, data: bytes, step: int) -> None:
        self._src, self._step = io.BytesIO(data), step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        return self._src.readinto(memoryview(b)[: self._step])


def encrypt(data: bytes, context: dict[str, str]) -> bytes:
    return stream.encrypt_bytes(data, master_key=MK, key_id=KID, material_version=1, context=context, chunk_size=CHUNK)


def decrypt_any(blob: bytes, context: dict[str, str]) -> bytes:
    """Decrypt as the CLI does: sniff for armor, read the header, decrypt."""
    is_armored, src = armor.sniff(io.BytesIO(blob))
    if is_armored:
        src = armor.ArmorReader(src)
    header = stream.read_header(src)
    out = io.BytesIO()
    stream.decrypt_stream(header, src, out, master_key=MK, context=context)
    return out.getvalue()


@SETTINGS
@given(payloads, contexts, st.integers(1, 5000), st.booleans())
def test_round_trip(data: bytes, context: dict[str, str], step: int, armored: bool) -> None:
    out = io.BytesIO()
    sink = armor.ArmorWriter(out) if armored else out
    n = stream.encrypt_stream(
        Trickle(data, step), sink, master_key=MK, key_id=KID, material_version=1, context=context, chunk_size=CHUNK
    )
    if armored:
        sink.close()
    assert n == len(data)
    assert decrypt_any(out.getvalue(), dict(reversed(list(context.items())))) == data


@SETTINGS
@given(contexts)
def test_context_encoding_is_injective_and_order_free(context: dict[str, str]) -> None:
    encoded = stream.encode_context(context)
    assert stream.encode_context(dict(sorted(context.items(), reverse=True))) == encoded
    header = stream.read_header(io.BytesIO(encrypt(b"", context)))
    assert header.context_length == len(encoded)
    if len(encoded) <= stream.CONTEXT_INLINE_MAX_BYTES:
        assert header.context == context
    else:
        assert header.context is None and header.context_digest == stream.context_digest(encoded)


BLOB_MAX = 6144  # AWS's bound on a CiphertextBlob
BLOB_PLAINTEXT_MAX = 4096  # the most the blob API (data keys, wire Encrypt) seals


@st.composite
def contexts_within_limits(draw: st.DrawFn) -> dict[str, str]:
    """Any context encode_context accepts, up to 64 pairs and 8192 bytes, often at or
    around the limits: 8192 bytes, 64 pairs, and 1024/1025 bytes (stored or digest)."""
    pairs = draw(st.one_of(st.integers(0, stream.CONTEXT_MAX_PAIRS), st.just(stream.CONTEXT_MAX_PAIRS)))
    limit = draw(st.one_of(st.sampled_from([1024, 1025, stream.CONTEXT_MAX_BYTES]), st.integers(2, 8192)))
    fill = draw(st.booleans())  # pad the last value so the encoding is exactly `limit` bytes
    share = draw(st.booleans())  # values of similar sizes rather than the first one taking most
    context: dict[str, str] = {}
    used = 2
    for i in range(pairs):
        key = f"{i:02d}" + draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=3))
        room = limit - used - 4 - len(key.encode())
        if room < 0:
            break
        piece = draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=4))
        cap = room // (pairs - i) if share else room
        value = (piece * (cap // len(piece.encode()) + 1))[: draw(st.integers(0, cap))]
        while len(value.encode()) > room:
            value = value[:-1]
        if fill and i == pairs - 1:
            value += "x" * (room - len(value.encode()))
        context[key] = value
        used += 4 + len(key.encode()) + len(value.encode())
    return context


@settings(SETTINGS, max_examples=300)
@given(contexts_within_limits(), st.integers(0, BLOB_PLAINTEXT_MAX), st.sampled_from([stream.CHUNK_SIZE, CHUNK]))
def test_a_blob_of_at_most_4096_bytes_fits_6144_bytes_whatever_the_context(
    context: dict[str, str], n: int, chunk_size: int
) -> None:
    encoded = stream.encode_context(context)  # within the limits by construction
    data = bytes(range(256)) * (n // 256) + bytes(n % 256)
    blob = stream.encrypt_bytes(
        data, master_key=MK, key_id=KID, material_version=1, context=context, chunk_size=chunk_size
    )
    assert len(blob) <= BLOB_MAX, (len(blob), len(encoded), n)
    header = stream.read_header(io.BytesIO(blob))
    stored = len(encoded) <= stream.CONTEXT_INLINE_MAX_BYTES
    event("context stored" if stored else "context as digest")
    event(f"{len(context)} pairs, {len(encoded)} bytes" if len(encoded) == stream.CONTEXT_MAX_BYTES else "not full")
    assert len(blob) == 96 + (len(encoded) if stored else 32) + 112 + n + 16
    assert header.context == (context if stored else None)
    assert stream.decrypt_bytes(blob, master_key=MK, context=dict(reversed(list(context.items())))) == data
    if context:  # one pair changed: still the one opaque error, stored or digest-bound
        key = next(iter(context))
        try:
            stream.decrypt_bytes(blob, master_key=MK, context=dict(context, **{key: context[key] + "!"}))
        except InvalidCiphertextException:
            return
        raise AssertionError("decrypted under another context")


@SETTINGS
@given(contexts, contexts)
def test_a_different_context_never_decrypts(a: dict[str, str], b: dict[str, str]) -> None:
    assume(a != b)
    ct = encrypt(b"secret", a)
    try:
        decrypt_any(ct, b)
    except InvalidCiphertextException:
        return
    raise AssertionError("decrypted under another context")


@SETTINGS
@given(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=70))
def test_invalid_contexts_are_validation_errors(context: dict[str, str]) -> None:
    try:
        stream.encode_context(context)
    except ValidationException:
        assert (
            "" in context
            or len(context) > 64
            or any("\ud800" <= c <= "\udfff" for s in context.items() for part in s for c in part)
        )


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_invalid_ciphertext(blob: bytes) -> None:
    for candidate in (
        blob,
        stream.MAGIC + b"\x01" + blob,
        stream.MAGIC + b"\x01\x0c" + blob,
        stream.MAGIC + b"\x02\x0c" + blob,
    ):
        try:
            decrypt_any(candidate, {})
        except InvalidCiphertextException:
            pass
        else:
            raise AssertionError("random bytes decrypted")


@SETTINGS
@given(st.binary(max_size=400), st.integers(1, 50), st.sampled_from([b"\x01", b"\x02"]))
def test_read_header_only_raises_invalid_ciphertext(blob: bytes, step: int, version: bytes) -> None:
    raw = bytearray(stream.MAGIC + version + b"\x0c" + bytes(84) + b"\x00\x02\x00\x00" + bytes(112))
    raw[26:30] = b"\x00\x00\x00\x01"
    raw[: len(blob)] = blob[: len(raw)]  # overwrite a valid-looking header from its start
    try:
        header = stream.read_header(Trickle(bytes(raw) + blob, step))
    except InvalidCiphertextException:
        return
    assert header.size <= stream.HEADER_MAX_SIZE


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    data = draw(payloads)
    ct = encrypt(data, {"k": "v"})
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    pos = draw(st.integers(0, len(ct) - 1))
    if kind == "flip":
        bad = bytearray(ct)
        bad[pos] ^= draw(st.integers(1, 255))
        return data, bytes(bad)
    if kind == "truncate":
        return data, ct[:pos]
    if kind == "insert":
        return data, ct[:pos] + draw(st.binary(min_size=1, max_size=20)) + ct[pos:]
    return data, ct[:pos] + ct[pos + draw(st.integers(1, 20)) :]


@SETTINGS
@given(mutations())
def test_any_modification_is_detected(case: tuple[bytes, bytes]) -> None:
    _, bad = case
    try:
        decrypt_any(bad, {"k": "v"})
    except InvalidCiphertextException:
        return
    raise AssertionError("a modified ciphertext decrypted")


@SETTINGS
@given(st.binary(max_size=2000), st.integers(1, 300))
def test_armor_round_trip(data: bytes, step: int) -> None:
    text = armor.armor(data)
    assert all(len(line) <= 64 for line in text.split(b"\n")[1:-2])
    assert armor.ArmorReader(Trickle(text, step)).read() == data


@SETTINGS
@given(st.binary(max_size=300))
def test_armor_parser_on_arbitrary_bytes(blob: bytes) -> None:
    for candidate in (blob, armor.BEGIN + b"\n" + blob, armor.BEGIN + b"\n" + blob + b"\n" + armor.END):
        try:
            decoded = armor.dearmor(candidate)
        except InvalidCiphertextException:
            continue
        # Whatever it accepts is canonical: it is exactly what the writer makes,
        # give or take the white space the format allows around it.
        assert candidate.strip(armor.WHITESPACE).replace(b"\r\n", b"\n") == armor.armor(decoded).strip()


@SETTINGS
@given(st.binary(max_size=500), st.integers(0, 10_000), st.binary(min_size=1, max_size=3))
def test_armor_modifications_are_refused_or_harmless(data: bytes, pos: int, junk: bytes) -> None:
    text = armor.armor(data)
    pos %= len(text)
    bad = text[:pos] + junk + text[pos:]
    try:
        decoded = armor.dearmor(bad)
    except InvalidCiphertextException:
        return
    # Accepted only if the insertion was white space outside the message.
    assert decoded == data
    assert not junk.strip(armor.WHITESPACE)
