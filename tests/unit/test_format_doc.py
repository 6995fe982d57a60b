"""docs/format.md is enough to read a kmscli ciphertext without kmscli's code.

The decoder below was written from docs/format.md alone, on `cryptography`'s
primitives (AES-GCM, HKDF, HMAC); it imports nothing from ``kmscli``. It must
decrypt every frozen success vector in tests/vectors/ to the plaintext the
vector records, and refuse every other vector. If it cannot, either kmscli or
the document is wrong: fix the one that is, never the vector.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


class Invalid(Exception):
    """The input is not a valid ciphertext for this key and context."""


# -- "Conventions" ------------------------------------------------------------------------
def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF with SHA-256, 32-byte output; every salt in the format is 32 header bytes."""
    assert len(salt) == 32
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def key_id_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def key_id_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace("-", ""))


# -- "Encryption context" -----------------------------------------------------------------
def encode_context(context: dict[str, str]) -> bytes:
    pairs = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    out = len(pairs).to_bytes(2, "big")
    for k, v in pairs:
        out += len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v
    return out


def decode_context(data: bytes) -> dict[str, str]:
    if not 2 <= len(data) <= 8192:
        raise Invalid("context length")
    n = u16(data, 0)
    if n > 64:
        raise Invalid("more than 64 pairs")
    pos, previous, context = 2, None, {}
    for _ in range(n):
        strings = []
        for _ in range(2):
            if pos + 2 > len(data):
                raise Invalid("length prefix past the context")
            size = u16(data, pos)
            if pos + 2 + size > len(data):
                raise Invalid("string past the context")
            strings.append(data[pos + 2 : pos + 2 + size])
            pos += 2 + size
        key, value = strings
        if not key or (previous is not None and key <= previous):
            raise Invalid("keys not strictly ascending, or empty")
        previous = key
        try:
            context[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("not UTF-8") from None
    if pos != len(data):
        raise Invalid("pairs do not fill the context")
    return context


# -- "How the header binds the context (version 2)" ------------------------------------------
def context_digest(encoded: bytes) -> bytes:
    return hashlib.sha256(b"kmscli ciphertext context digest v2" + encoded).digest()


def context_field(version: int, encoded: bytes) -> bytes:
    """What the header holds at offset 96 for this canonical context."""
    return encoded if version == 1 or len(encoded) <= 1024 else context_digest(encoded)


# -- "Header" -------------------------------------------------------------------------------
MAGIC = bytes.fromhex("894B4D530D0A1A0A")


class Header:
    def __init__(self, data: bytes) -> None:
        if len(data) < 96:
            raise Invalid("short header")
        fixed = data[:96]
        if fixed[0:8] != MAGIC or fixed[8] not in (1, 2):
            raise Invalid("magic or version")
        self.version = fixed[8]
        if not 12 <= fixed[9] <= 22:
            raise Invalid("chunk size")
        self.chunk_size = 1 << fixed[9]
        self.key_id = key_id_text(fixed[10:26])
        self.material_version = int.from_bytes(fixed[26:30], "big")
        if self.material_version == 0:
            raise Invalid("material version 0")
        self.payload_salt = fixed[30:62]
        self.wrap_salt = fixed[62:94]
        length = u16(fixed, 94)
        if not 2 <= length <= 8192:
            raise Invalid("context length")
        self.stored = self.version == 1 or length <= 1024
        x = length if self.stored else 32
        self.size = 208 + x
        if len(data) < self.size:
            raise Invalid("input ends inside the header")
        h = data[: self.size]
        self.raw = h
        self.field = h[96 : 96 + x]  # the context, or its digest
        self.context = decode_context(self.field) if self.stored else None
        self.wrapped_key = h[96 + x : 144 + x]
        self.commitment = h[144 + x : 176 + x]
        self.mac = h[176 + x : 208 + x]
        self.length = length
        self.x = x


# -- "Keys" and "What decryption checks, in order" ---------------------------------------------
def open_header(header: Header, master_key: bytes, context: dict[str, str]) -> bytes:
    """The payload key, once the header authenticated."""
    given = encode_context(context)
    if len(given) != header.length or context_field(header.version, given) != header.field:
        raise Invalid("context differs")
    label = b"kmscli ciphertext wrap key v1" if header.version == 1 else b"kmscli ciphertext wrap key v2"
    wrap_key = hkdf(master_key, header.wrap_salt, label + key_id_bytes(header.key_id) + u32(header.material_version))
    try:
        data_key = AESGCM(wrap_key).decrypt(bytes(12), header.wrapped_key, header.raw[: 96 + header.x])
    except InvalidTag:
        raise Invalid("wrapped key") from None
    commitment = hkdf(data_key, header.payload_salt, b"kmscli ciphertext commitment v1")
    if not hmac.compare_digest(commitment, header.commitment):
        raise Invalid("commitment")
    header_key = hkdf(data_key, header.payload_salt, b"kmscli ciphertext header v1")
    mac = hmac.new(header_key, header.raw[: 176 + header.x], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, header.mac):
        raise Invalid("header MAC")
    return hkdf(data_key, header.payload_salt, b"kmscli ciphertext payload v1")


# -- "Body" ------------------------------------------------------------------------------------
def open_body(payload_key: bytes, chunk_size: int, body: bytes) -> bytes:
    aead = AESGCM(payload_key)
    record_size = chunk_size + 16
    out, pos, i = [], 0, 0
    while True:
        record = body[pos : pos + record_size]
        pos += len(record)
        final = len(record) < record_size or pos == len(body)
        if len(record) < 16 or (len(record) == 16 and i > 0):
            raise Invalid("record too short")
        nonce = i.to_bytes(11, "big") + (b"\x01" if final else b"\x00")
        try:
            out.append(aead.decrypt(nonce, record, b""))
        except InvalidTag:
            raise Invalid(f"chunk {i}") from None
        if final:
            return b"".join(out)
        i += 1


def decrypt(data: bytes, master_key: bytes, context: dict[str, str]) -> bytes:
    if is_armor(data):
        data = dearmor(data)
    header = Header(data)
    return open_body(open_header(header, master_key, context), header.chunk_size, data[header.size :])


# -- "ASCII armor" -------------------------------------------------------------------------------
BEGIN = b"-----BEGIN KMSCLI ENCRYPTED MESSAGE-----"
END = b"-----END KMSCLI ENCRYPTED MESSAGE-----"
WHITE = b" \t\r\n"
ALPHABET = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def is_armor(data: bytes) -> bool:
    return data[:1034].lstrip(WHITE).startswith(b"-----BEGIN")


def dearmor(text: bytes) -> bytes:
    start = len(text) - len(text.lstrip(WHITE))
    if start > 1024:
        raise Invalid("too much white space before BEGIN")
    rest = text[start:]
    if not rest.startswith(BEGIN):
        raise Invalid("no BEGIN line")
    rest = rest[len(BEGIN) :]
    if rest.startswith(b"\r\n"):
        eol = b"\r\n"
    elif rest.startswith(b"\n"):
        eol = b"\n"
    else:
        raise Invalid("BEGIN line ending")
    rest = rest[len(eol) :]
    lines = []
    while not rest.startswith(END):
        cut = rest.find(eol)
        if cut < 0:
            raise Invalid("no END line, or a line without the message's line ending")
        lines.append(rest[:cut])
        rest = rest[cut + len(eol) :]
    if rest[len(END) :].strip(WHITE):
        raise Invalid("something other than white space after END")
    decoded = b""
    for n, line in enumerate(lines):
        last = n == len(lines) - 1
        if not set(line) <= ALPHABET | ({ord("=")} if last else set()):
            raise Invalid("character outside the alphabet (or padding before the last line)")
        if not last and len(line) != 64:
            raise Invalid("a line other than the last is not 64 characters")
        if last and not 1 <= len(line) <= 64:
            raise Invalid("last line length")
        try:
            chunk = binascii.a2b_base64(line, strict_mode=True)
        except binascii.Error:
            raise Invalid("bad base64") from None
        if last and binascii.b2a_base64(chunk, newline=False) != line:
            raise Invalid("last line not canonical")
        decoded += chunk
    return decoded


# -- the vectors -----------------------------------------------------------------------------------
def load(path: Path) -> tuple[dict[str, str], bytes]:
    text, _, ciphertext = path.read_bytes().partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in text.decode("ascii").split("\n"))
    return fields, ciphertext


ALL = sorted(VECTORS.glob("*.vec"))
SUCCESS = [p for p in ALL if load(p)[0]["expect"] == "success"]
FAILURE = [p for p in ALL if load(p)[0]["expect"] != "success"]


def test_there_are_vectors_of_both_kinds() -> None:
    assert len(SUCCESS) >= 15 and len(FAILURE) >= 50


def _header_of(path: Path) -> Header:
    ciphertext = load(path)[1]
    return Header(dearmor(ciphertext) if is_armor(ciphertext) else ciphertext)


def test_the_success_vectors_cover_both_versions_and_both_ways_of_binding_the_context() -> None:
    kinds = {(h.version, h.stored) for h in map(_header_of, SUCCESS)}
    assert kinds == {(1, True), (2, True), (2, False)}


def test_a_version_2_blob_of_4096_plaintext_bytes_fits_6144_bytes() -> None:
    """The reason for version 2, from the vectors alone: the header's worst case plus one full record."""
    for path in SUCCESS:
        fields, ciphertext = load(path)
        if _header_of(path).version == 2 and int(fields["plaintext-length"]) <= 4096:
            assert len(ciphertext) <= 6144, (path.name, len(ciphertext))
    worst = load(VECTORS / "v2_largest_stored_context.vec")[1]
    assert len(worst) == 1232 + 4096 + 16 == 5344


@pytest.mark.parametrize("path", SUCCESS, ids=[p.stem for p in SUCCESS])
def test_the_document_decrypts_every_success_vector(path: Path) -> None:
    fields, ciphertext = load(path)
    assert is_armor(ciphertext) == (fields["armor"] == "yes")
    plaintext = decrypt(ciphertext, bytes.fromhex(fields["master-key"]), json.loads(fields["context"]))
    assert len(plaintext) == int(fields["plaintext-length"])
    assert hashlib.sha256(plaintext).hexdigest() == fields["plaintext-sha256"]
    header = Header(dearmor(ciphertext) if is_armor(ciphertext) else ciphertext)
    assert header.key_id == fields["key-id"]
    assert header.material_version == int(fields["material-version"])
    if header.stored:
        assert header.context == json.loads(fields["context"])
    else:  # the header holds the digest: what inspect can show, and check a candidate context against
        assert header.field == context_digest(encode_context(json.loads(fields["context"])))


@pytest.mark.parametrize("path", FAILURE, ids=[p.stem for p in FAILURE])
def test_the_document_refuses_every_failure_vector_where_the_vector_says(path: Path) -> None:
    fields, ciphertext = load(path)
    master_key, context = bytes.fromhex(fields["master-key"]), json.loads(fields["context"])
    with pytest.raises(Invalid):
        decrypt(ciphertext, master_key, context)
    # ... and at the stage the vector names.
    if fields["expect"] == "armor failure":
        with pytest.raises(Invalid):
            dearmor(ciphertext)
        return
    data = dearmor(ciphertext) if is_armor(ciphertext) else ciphertext
    if fields["expect"] == "payload failure":
        header = Header(data)
        payload_key = open_header(header, master_key, context)  # the header is fine
        with pytest.raises(Invalid):
            open_body(payload_key, header.chunk_size, data[header.size :])
    else:  # header failure, wrong key, wrong context: refused before any body byte is read
        with pytest.raises(Invalid):
            open_header(Header(data), master_key, context)


def test_the_salamander_is_refused_by_the_commitment_not_the_wrap() -> None:
    """The one failure vector that GCM alone would accept: the document's step 4 refuses it."""
    fields, ciphertext = load(VECTORS / "wrapped_key_opens_under_two_master_keys.vec")
    with pytest.raises(Invalid, match="commitment"):
        decrypt(ciphertext, bytes.fromhex(fields["master-key"]), json.loads(fields["context"]))
