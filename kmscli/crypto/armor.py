"""Strict PEM-style ASCII armor for ciphertexts, streaming both ways (docs/format.md).

The armor is a transport encoding only: it authenticates nothing, the
ciphertext inside does. It is still parsed strictly, so that one ciphertext has
one armored form and a damaged paste fails loudly instead of decoding to
something else.
"""

from __future__ import annotations

import binascii
import io
import struct
from typing import Any

from ..errors import InvalidCiphertextException
from .stream import Source, write_all

BEGIN = b"-----BEGIN KMSCLI ENCRYPTED MESSAGE-----"
END = b"-----END KMSCLI ENCRYPTED MESSAGE-----"
LINE_CHARS = 64
LINE_BYTES = LINE_CHARS // 4 * 3  # 48 bytes of data per full line
#: White space allowed before BEGIN; bounded so that sniffing peeks a bounded
#: amount and junk cannot be mistaken for a long run of blanks (as age does).
MAX_LEADING_WHITESPACE = 1024
WHITESPACE = b" \t\r\n"
#: What marks armor when sniffing; a binary ciphertext starts with 0x89.
ARMOR_PREFIX = b"-----BEGIN"

_BLOCK_LINES = 1024
_BLOCK_BYTES = LINE_BYTES * _BLOCK_LINES
# Splitting a block's base64 into lines with one C call keeps the encoder
# at memory speed instead of a Python loop per 64 characters.
_SPLIT_BLOCK = struct.Struct(f"{LINE_CHARS}s" * _BLOCK_LINES)
_READ_SIZE = 64 * 1024


def _invalid() -> InvalidCiphertextException:
    return InvalidCiphertextException()


class ArmorWriter:
    """A binary writer that armors what is written to it into ``writer``.

    Writes BEGIN on the first write and the rest and END on :meth:`close`,
    which does not close ``writer``. Used as a context manager it closes only
    when the block succeeded, so failed output never looks complete.
    """

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._pending = bytearray()
        self._started = False
        self._closed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._closed:
            raise ValueError("write to a closed ArmorWriter")
        self._start()
        view = memoryview(data).cast("B")
        size = len(view)
        if self._pending:
            take = min(size, _BLOCK_BYTES - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < _BLOCK_BYTES:
                return size
            write_all(self._writer, _encode_block(self._pending))
            self._pending.clear()
        whole = len(view) - len(view) % _BLOCK_BYTES
        for offset in range(0, whole, _BLOCK_BYTES):
            write_all(self._writer, _encode_block(view[offset : offset + _BLOCK_BYTES]))
        self._pending += view[whole:]
        return size

    def flush(self) -> None:
        flush = getattr(self._writer, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """Write the last line and END (BEGIN too if nothing was written)."""
        if self._closed:
            return
        self._start()
        tail = binascii.b2a_base64(self._pending, newline=False)
        lines = [tail[i : i + LINE_CHARS] + b"\n" for i in range(0, len(tail), LINE_CHARS)]
        write_all(self._writer, b"".join(lines) + END + b"\n")
        self._pending.clear()
        self._closed = True

    def _start(self) -> None:
        if not self._started:
            write_all(self._writer, BEGIN + b"\n")
            self._started = True

    def __enter__(self) -> ArmorWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()


def _encode_block(block: Any) -> bytes:
    lines = _SPLIT_BLOCK.unpack(binascii.b2a_base64(block, newline=False))
    return b"\n".join(lines) + b"\n"


class ArmorReader(io.RawIOBase):
    """A readable binary file that de-armors ``reader`` strictly as it is read.

    Raises InvalidCiphertextException (from ``readinto``) at the first defect:
    bad or missing BEGIN/END lines, a line of the wrong length, a character
    outside the base64 alphabet, bad or misplaced padding, mixed line endings,
    or anything but white space after END. End of input is reported only after
    END and the white space after it were checked.
    """

    def __init__(self, reader: Any) -> None:
        super().__init__()
        self._source = Source(reader)
        self._chunk = memoryview(bytearray(_READ_SIZE))
        self._text = bytearray()  # undecoded text, always starting at a line start
        self._eof = False
        self._begun = False
        self._done = False
        self._eol = b"\n"
        self._stride = LINE_CHARS + 1
        self._lines_decoded = False
        self._decoded: memoryview = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._decoded:
            if self._done:
                return 0
            self._advance()
        n = min(len(b), len(self._decoded))
        memoryview(b).cast("B")[:n] = self._decoded[:n]
        self._decoded = self._decoded[n:]
        return n

    # -- parsing ----------------------------------------------------------------
    def _more(self) -> bool:
        """Append the next piece of input to the text; False at end of input."""
        if self._eof:
            return False
        n = self._source.fill(self._chunk)
        if n < len(self._chunk):
            self._eof = True
        self._text += self._chunk[:n]
        return n > 0

    def _advance(self) -> None:
        if not self._begun:
            self._read_begin()
            return
        text = self._text
        dash = text.find(b"-")
        if dash < 0:
            if self._eof:
                raise _invalid()  # no END line
            lines = len(text) // self._stride
            # The last complete line may be the final one (which alone may
            # carry padding): hold it back until we see what follows it.
            if lines * self._stride == len(text):
                lines -= 1
            if lines > 0:
                cut = lines * self._stride
                self._emit(self._decode_full_lines(text[:cut]))
                del text[:cut]
            else:
                self._more()
            return
        if len(text) < dash + len(END) + 2 and self._more():
            return
        if text[dash : dash + len(END)] != END:
            raise _invalid()
        data = self._decode_final(text[:dash])
        self._check_trailing(text[dash + len(END) :])
        self._text = bytearray()
        self._done = True
        self._emit(data)

    def _read_begin(self) -> None:
        text = self._text
        while True:
            start = len(text) - len(text.lstrip(WHITESPACE))
            if start > MAX_LEADING_WHITESPACE:
                raise _invalid()
            if start < len(text) and len(text) >= start + len(BEGIN) + 2:
                break
            if not self._more():
                break
        line = text[start : start + len(BEGIN)]
        after = text[start + len(BEGIN) : start + len(BEGIN) + 2]
        if line != BEGIN:
            raise _invalid()
        if after.startswith(b"\r\n"):
            self._eol = b"\r\n"
        elif not after.startswith(b"\n"):
            raise _invalid()
        self._stride = LINE_CHARS + len(self._eol)
        del text[: start + len(BEGIN) + len(self._eol)]
        self._begun = True

    def _decode_full_lines(self, block: bytearray) -> bytes:
        """Decode lines that are known not to be the last: exactly 64 characters
        each, the chosen line ending at exactly the right places, no padding."""
        stride, eol = self._stride, self._eol
        count = len(block) // stride
        if count * stride != len(block):
            raise _invalid()
        if block.count(b"\n") != count or block[stride - 1 :: stride] != b"\n" * count:
            raise _invalid()
        if eol == b"\r\n" and (block.count(b"\r") != count or block[LINE_CHARS::stride] != b"\r" * count):
            raise _invalid()
        chars = block.translate(None, eol)
        if b"=" in chars:
            raise _invalid()  # padding in a line that is not the last
        self._lines_decoded = True
        return _b64decode(chars)

    def _decode_final(self, region: bytearray) -> bytes:
        """Decode the lines before END: full lines, then a last line of 1..64
        characters in canonical base64. No lines at all is the empty message."""
        if not region:
            if self._lines_decoded:
                raise _invalid()
            return b""
        if not region.endswith(self._eol):
            raise _invalid()  # END does not start a line
        start = region.rfind(b"\n", 0, len(region) - 1) + 1
        head = self._decode_full_lines(region[:start]) if start else b""
        last = bytes(region[start : len(region) - len(self._eol)])
        if not 1 <= len(last) <= LINE_CHARS:
            raise _invalid()
        tail = _b64decode(last)
        # Canonical: unused bits are zero, so no two texts armor one ciphertext.
        if binascii.b2a_base64(tail, newline=False) != last:
            raise _invalid()
        return head + tail

    def _check_trailing(self, rest: bytearray) -> None:
        if rest.strip(WHITESPACE):
            raise _invalid()
        while not self._eof:
            self._text = bytearray()
            self._more()
            if self._text.strip(WHITESPACE):
                raise _invalid()

    def _emit(self, data: bytes) -> None:
        self._decoded = memoryview(data)


def _b64decode(chars: bytes | bytearray) -> bytes:
    try:
        return binascii.a2b_base64(chars, strict_mode=True)
    except binascii.Error:
        raise _invalid() from None


class _Prefixed(io.RawIOBase):
    """``reader`` with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, reader: Any) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._reader = reader

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            memoryview(b).cast("B")[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._reader.readinto(b)

    def fileno(self) -> int:
        return self._reader.fileno()


def sniff(reader: Any) -> tuple[bool, Any]:
    """Tell armor from binary ciphertext by the first bytes of ``reader``.

    Returns ``(is_armored, reader2)``: ``reader2`` yields everything ``reader``
    would have, including the bytes peeked at. Wrap it in :class:`ArmorReader`
    when ``is_armored``.
    """
    head, reader2 = peek(reader, MAX_LEADING_WHITESPACE + len(ARMOR_PREFIX))
    return head.lstrip(WHITESPACE).startswith(ARMOR_PREFIX), reader2


def peek(reader: Any, n: int) -> tuple[bytes, Any]:
    """The first ``n`` bytes of ``reader`` (fewer at its end), and a reader that yields them again, then the rest."""
    buf = bytearray(n)
    got = Source(reader).fill(memoryview(buf))
    head = bytes(buf[:got])
    return head, _Prefixed(head, reader)


def armor(data: bytes) -> bytes:
    """Armor a small ciphertext held in memory."""
    out = io.BytesIO()
    with ArmorWriter(out) as writer:
        writer.write(data)
    return out.getvalue()


def dearmor(text: bytes) -> bytes:
    """De-armor a small armored ciphertext held in memory, strictly."""
    return ArmorReader(io.BytesIO(text)).readall()
