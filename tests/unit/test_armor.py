"""ASCII armor (kmscli/crypto/armor.py): strict, streaming, canonical."""

from __future__ import annotations

import base64
import io
import os

import pytest

from kmscli.crypto import armor, stream
from kmscli.errors import InvalidCiphertextException

BEGIN = b"-----BEGIN KMSCLI ENCRYPTED MESSAGE-----"
END = b"-----END KMSCLI ENCRYPTED MESSAGE-----"
BLOCK = 48 * 1024


def reference(data: bytes, eol: bytes = b"\n") -> bytes:
    """The armor of ``data`` built from the stdlib's base64 and the rules in docs/format.md."""
    b64 = base64.b64encode(data)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return eol.join([BEGIN, *lines, END]) + eol


class Trickle(io.RawIOBase):
    def __init__(self, data: bytes, step: int) -> None:
        self._src, self._step = io.BytesIO(data), step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        return self._src.readinto(memoryview(b)[: self._step])


SIZES = [0, 1, 2, 3, 47, 48, 49, 96, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17]


@pytest.mark.parametrize("n", SIZES)
def test_writer_output_is_exactly_the_reference(n: int) -> None:
    data = os.urandom(n)
    assert armor.armor(data) == reference(data)


@pytest.mark.parametrize("n", SIZES)
def test_writer_is_the_same_however_the_data_arrives(n: int) -> None:
    data = os.urandom(n)
    for step in (1, 5, 48, 1000, BLOCK + 3):
        out = io.BytesIO()
        w = armor.ArmorWriter(out)
        for i in range(0, n, step):
            assert w.write(memoryview(data)[i : i + step]) == len(data[i : i + step])
        w.close()
        assert out.getvalue() == reference(data)


# Byte-at-a-time reads only on the small sizes: on large ones it is slow and adds nothing.
READS = [(n, step) for n in SIZES for step in (1, 7, 65, 4096, 1 << 20) if step > 1 or n < 5000]


@pytest.mark.parametrize(("n", "step"), READS)
def test_reader_round_trip_with_short_reads(n: int, step: int) -> None:
    data = os.urandom(n)
    text = reference(data)
    r = armor.ArmorReader(Trickle(text, step))
    out = bytearray()
    buf = bytearray(13)
    while True:
        k = r.readinto(buf)
        if not k:
            break
        out += buf[:k]
    assert bytes(out) == data
    assert r.readinto(buf) == 0  # stays at end


@pytest.mark.parametrize("n", [0, 1, 49, BLOCK + 5])
def test_reader_accepts_crlf_and_surrounding_whitespace(n: int) -> None:
    data = os.urandom(n)
    assert armor.dearmor(reference(data, b"\r\n")) == data
    assert armor.dearmor(b" \n\t\r\n" + reference(data) + b"\n\n \t") == data
    assert armor.dearmor(reference(data)[:-1]) == data  # no newline after END
    assert armor.dearmor(b"\n" * 1024 + reference(data)) == data
    assert armor.dearmor(reference(data) + b" " * 200_000) == data


def lines_of(n: int = 500) -> list[bytes]:
    return reference(bytes(range(256)) * (n // 256) + bytes(n % 256)).split(b"\n")


def join(lines: list[bytes]) -> bytes:
    return b"\n".join(lines)


def _replace(lines: list[bytes], i: int, new: bytes) -> list[bytes]:
    lines = list(lines)
    lines[i] = new
    return lines


L = lines_of(499)  # BEGIN, 10 full lines, a last line of 28 chars ending "A==", END, ""
assert len(L[1]) == 64 and L[-3].endswith(b"A==") and L[-2] == END

BROKEN = {
    "empty input": b"",
    "only whitespace": b" \n\n",
    "no END": join(L[:-2] + [b""]),
    "END cut short": join(L[:-2] + [END[:-3]]),
    "nothing after BEGIN": BEGIN + b"\n",
    "BEGIN without newline": BEGIN,
    "another type": join(_replace(L, 0, b"-----BEGIN AGE ENCRYPTED FILE-----")),
    "BEGIN with a trailing space": join(_replace(L, 0, BEGIN + b" ")),
    "text before BEGIN": b"hello\n" + join(L),
    "too much leading whitespace": b"\n" * 1025 + join(L),
    "text after END": join(L) + b"x",
    "text after END and blanks": join(L) + b"\n\n  x\n",
    "text on the END line": join(L[:-2] + [END + b" x", b""]),
    "a second message after END": join(L) + join(L),
    "short middle line": join(_replace(L, 3, L[3][:-1])),
    "long middle line": join(L[:3] + [L[3] + L[4][:4], L[4][4:]] + L[5:]),
    "empty middle line": join(L[:3] + [b""] + L[3:]),
    "blank line before END": join(L[:-2] + [b"", END, b""]),
    "blank line after BEGIN": join(L[:1] + [b""] + L[1:]),
    "non-alphabet character": join(_replace(L, 2, L[2][:5] + b"*" + L[2][6:])),
    "space inside a line": join(_replace(L, 2, L[2][:5] + b" " + L[2][6:])),
    "URL-safe alphabet": join(_replace(L, 2, b"-_" + L[2][2:])),
    "padding in a middle line": join(_replace(L, 2, L[2][:-2] + b"==")),
    "padding missing": join(_replace(L, -3, L[-3].rstrip(b"="))),
    "too much padding": join(_replace(L, -3, L[-3] + b"==")),
    "last line too long": join(L[:-3] + [L[-4] + L[-3][:2], L[-3][2:]] + L[-2:]),
    "non-canonical last bits": join(_replace(L, -3, L[-3][:-3] + b"B==")),
    "mixed line endings": join(_replace(L, 2, L[2] + b"\r")),
    "CR only": join(L).replace(b"\n", b"\r"),
    "lowercase BEGIN": join(_replace(L, 0, BEGIN.lower())),
}


def test_the_non_canonical_case_is_really_non_canonical() -> None:
    last = join(_replace(L, -3, L[-3][:-3] + b"B==")).split(b"\n")[-3]
    assert base64.b64decode(last) == base64.b64decode(L[-3])  # same bytes, other text


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_armor_is_refused(name: str) -> None:
    with pytest.raises(InvalidCiphertextException):
        armor.dearmor(BROKEN[name])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_armor_is_refused_when_trickled(name: str) -> None:
    r = armor.ArmorReader(Trickle(BROKEN[name], 3))
    with pytest.raises(InvalidCiphertextException):
        r.read()


def test_whole_message_is_checked_before_end_of_input_is_reported() -> None:
    data = os.urandom(3 * BLOCK)
    r = armor.ArmorReader(io.BytesIO(reference(data) + b"junk"))
    got = bytearray()
    with pytest.raises(InvalidCiphertextException):
        while chunk := r.read(1000):
            got += chunk
    assert bytes(got) == data[: len(got)]


def test_empty_message() -> None:
    assert armor.armor(b"") == BEGIN + b"\n" + END + b"\n"
    assert armor.dearmor(BEGIN + b"\n" + END + b"\n") == b""


def test_writer_as_context_manager_writes_end_only_on_success() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), armor.ArmorWriter(out) as w:
        w.write(b"abc")
        raise RuntimeError("failed half-way")
    assert END not in out.getvalue()
    w = armor.ArmorWriter(out)
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError):
        w.write(b"late")


def test_writer_loops_on_short_writes() -> None:
    class Stingy:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, b) -> int:
            self.data += bytes(b[:7])
            return min(7, len(b))

    data = os.urandom(BLOCK + 100)
    sink = Stingy()
    with armor.ArmorWriter(sink) as w:
        w.write(data)
    assert bytes(sink.data) == reference(data)


# -- sniff ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("head", "armored"),
    [
        (reference(b"x"), True),
        (b"\n\n  " + reference(b"x"), True),
        (b"\x89KMS\r\n\x1a\n" + bytes(300), False),
        (b"", False),
        (b"-----BEG", False),
        (b"-----BEGIN PGP MESSAGE-----\n", True),  # looks like armor; the armor reader refuses it
        (b" " * 1025 + reference(b"x"), False),
    ],
)
def test_sniff_restores_what_it_peeked(head: bytes, armored: bool) -> None:
    data = head + os.urandom(5000)
    is_armored, reader = armor.sniff(io.BytesIO(data))
    assert is_armored is armored
    assert reader.read() == data


def test_sniff_with_a_trickling_source() -> None:
    text = reference(os.urandom(3000))
    is_armored, reader = armor.sniff(Trickle(text, 2))
    assert is_armored
    assert armor.ArmorReader(reader).read() == armor.dearmor(text)


# -- with the ciphertext format -----------------------------------------------------------------
MK = bytes(range(32))
KID = "1b4e28ba-2fa1-4d2e-883f-0016d3cca427"


@pytest.mark.parametrize("n", [0, 100, 3 * 4096 + 5])
def test_armored_encrypt_then_sniffing_decrypt(n: int) -> None:
    data = os.urandom(n)
    out = io.BytesIO()
    with armor.ArmorWriter(out) as w:
        stream.encrypt_stream(
            io.BytesIO(data), w, master_key=MK, key_id=KID, material_version=1, context={}, chunk_size=4096
        )
    text = out.getvalue()
    assert text.startswith(BEGIN + b"\n") and all(len(x) <= 64 for x in text.split(b"\n")[1:-2])
    for candidate in (text, armor.dearmor(text)):
        is_armored, src = armor.sniff(io.BytesIO(candidate))
        if is_armored:
            src = armor.ArmorReader(src)
        header = stream.read_header(src)
        plain = io.BytesIO()
        stream.decrypt_stream(header, src, plain, master_key=MK, context={})
        assert plain.getvalue() == data


def test_armor_defect_after_the_last_chunk_stops_decryption() -> None:
    data = os.urandom(200_000)  # larger than the reader's buffer: found only at the end
    out = io.BytesIO()
    with armor.ArmorWriter(out) as w:
        stream.encrypt_stream(
            io.BytesIO(data), w, master_key=MK, key_id=KID, material_version=1, context={}, chunk_size=4096
        )
    src = armor.ArmorReader(io.BytesIO(out.getvalue() + b"trailing junk"))
    plain = io.BytesIO()
    with pytest.raises(InvalidCiphertextException):
        header = stream.read_header(src)
        stream.decrypt_stream(header, src, plain, master_key=MK, context={})
    assert 0 < len(plain.getvalue()) < len(data)  # authenticated chunks out, the final one never
    assert data.startswith(plain.getvalue())
