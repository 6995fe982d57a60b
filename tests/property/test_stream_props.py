"""Properties of the ciphertext format and the armor, for arbitrary inputs."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, assume, given, settings
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
    assert header.context == context


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
    for candidate in (blob, stream.MAGIC + b"\x01" + blob, stream.MAGIC + b"\x01\x0c" + blob):
        try:
            decrypt_any(candidate, {})
        except InvalidCiphertextException:
            pass
        else:
            raise AssertionError("random bytes decrypted")


@SETTINGS
@given(st.binary(max_size=400), st.integers(1, 50))
def test_read_header_only_raises_invalid_ciphertext(blob: bytes, step: int) -> None:
    raw = bytearray(stream.MAGIC + b"\x01\x0c" + bytes(84) + b"\x00\x02\x00\x00" + bytes(112))
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
