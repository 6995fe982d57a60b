"""The AWS Encryption SDK message format codec (kmscli/crypto/esdk.py) against the real SDK library.

Messages made by aws_encryption_sdk (raw AES master key, static wrapping key) must
decrypt with esdk.decrypt given the data key the test unwraps itself; messages
made by esdk.encrypt (with an encrypted data key the test builds for that raw AES
master key) must decrypt with the SDK. Plus committed known-answer vectors,
tampering, refusals with their hints, properties and a memory bound.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli.crypto import esdk
from kmscli.errors import InvalidCiphertextException, ValidationException

aws_encryption_sdk = pytest.importorskip("aws_encryption_sdk")
from aws_encryption_sdk.identifiers import (  # noqa: E402
    Algorithm,
    CommitmentPolicy,
    EncryptionKeyType,
    WrappingAlgorithm,
)
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey  # noqa: E402
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "esdk"
WRAPPING_KEY = bytes(range(32))
PROVIDER_ID = "kmscli-test"
KEY_NAME = b"static-wrapping-key"
SUITES = {esdk.SUITE_COMMIT: Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
          esdk.SUITE_COMMIT_SIGNED: Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384}
CTX = {"purpose": "interop", "tenant": "acme", "ünï": "cödé"}


class _Provider(RawMasterKeyProvider):  # type: ignore[misc]
    provider_id = PROVIDER_ID

    def _get_raw_key(self, key_id: bytes) -> WrappingKey:
        return WrappingKey(wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                           wrapping_key=WRAPPING_KEY, wrapping_key_type=EncryptionKeyType.SYMMETRIC)


@pytest.fixture(scope="module")
def provider() -> _Provider:
    p = _Provider()
    p.add_master_key(KEY_NAME)
    return p


@pytest.fixture(scope="module")
def client():
    return aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


def data_of(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(struct.pack(">QQ", n, seed)).digest(n)


def unwrap(header: esdk.Header) -> bytes:
    """The raw AES master key's unwrap, done by hand: AES-GCM under the wrapping key, the IV at the end of the
    provider info (key name, tag length in bits, IV length, IV), the serialized context as AAD."""
    (edk,) = header.data_keys
    assert edk.provider_id == PROVIDER_ID
    info = edk.provider_info_bytes
    assert info[: len(KEY_NAME)] == KEY_NAME
    tag_bits, iv_len = struct.unpack(">II", info[len(KEY_NAME): len(KEY_NAME) + 8])
    assert (tag_bits, iv_len) == (128, 12)
    iv = info[len(KEY_NAME) + 8:]
    return AESGCM(WRAPPING_KEY).decrypt(iv, edk.ciphertext, esdk.serialize_context(header.context))


def make_get_data_key(seen: list | None = None, data_key: bytes | None = None):
    """A get_data_key callback that wraps a data key for the SDK's raw AES master key."""

    def get_data_key(full_context: dict[str, str]) -> tuple[bytes, list[esdk.EncryptedDataKey]]:
        if seen is not None:
            seen.append(dict(full_context))
        dk = data_key if data_key is not None else os.urandom(32)
        iv = os.urandom(12)
        wrapped = AESGCM(WRAPPING_KEY).encrypt(iv, dk, esdk.serialize_context(full_context))
        info = KEY_NAME + struct.pack(">II", 128, 12) + iv
        return dk, [esdk.EncryptedDataKey.from_bytes(PROVIDER_ID, info, wrapped)]

    return get_data_key


def our_encrypt(pt: bytes, *, suite: int = esdk.SUITE_COMMIT_SIGNED, frame_length: int = 4096,
                context: dict | None = None, **kw) -> bytes:
    out = io.BytesIO()
    n = esdk.encrypt(io.BytesIO(pt), out, context=CTX if context is None else context,
                     get_data_key=kw.pop("get_data_key", make_get_data_key()), suite=suite,
                     frame_length=frame_length, **kw)
    assert n == len(pt)
    return out.getvalue()


def our_decrypt(message: bytes, data_key: bytes | None = None) -> bytes:
    src = io.BytesIO(message)
    header = esdk.read_header(src)
    out = io.BytesIO()
    n = esdk.decrypt(header, src, out, data_key=unwrap(header) if data_key is None else data_key)
    assert n == len(out.getvalue())
    return out.getvalue()


def sdk_encrypt(client, provider, pt: bytes, suite: int, frame_length: int, context: dict) -> bytes:
    ct, _ = client.encrypt(source=pt, key_provider=provider, algorithm=SUITES[suite], frame_length=frame_length,
                           encryption_context=context)
    return ct


# -- (1) interop with the SDK, both ways --------------------------------------
FRAME_CASES = [(fl, n) for fl in (4096, 384) for n in (0, 1, fl - 1, fl, fl + 1, 3 * fl + 5)]


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize(("frame_length", "size"), FRAME_CASES)
def test_sdk_message_decrypts_with_ours(client, provider, suite, frame_length, size):
    context = CTX if size % 2 else {}
    pt = data_of(size)
    message = sdk_encrypt(client, provider, pt, suite, frame_length, context)
    header = esdk.read_header(io.BytesIO(message))
    assert (header.version, header.suite_id, header.frame_length, header.content_type) == (2, suite, frame_length, 2)
    assert header.committing and header.signed == (suite == esdk.SUITE_COMMIT_SIGNED)
    assert len(header.message_id) == 32 and len(header.commitment) == 32 and len(header.auth_tag) == 16
    public = {k: v for k, v in header.context.items() if k != esdk.PUBLIC_KEY_CONTEXT_KEY}
    assert public == context
    assert (esdk.PUBLIC_KEY_CONTEXT_KEY in header.context) == header.signed
    assert our_decrypt(message) == pt
    # inspect walks the same message without a key
    h2, info = esdk.inspect(io.BytesIO(message))
    assert h2 == header
    full, rest = divmod(size, frame_length)
    assert info["frames"] == full + 1  # the SDK always ends with a final frame of the rest (0..frame-1 bytes)
    assert info["plaintext_bytes"] == size and info["total_bytes"] == len(message)
    assert info["footer"] == header.signed and info["footer_bytes"] == (2 + 103 if header.signed else 0)


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize(("frame_length", "size"),
                         [(fl, n) for fl in (4096, 7, 1) for n in (0, 1, fl - 1, fl, fl + 1, 3 * fl + 5)]
                         + [(esdk.FRAME_LENGTH, esdk.FRAME_LENGTH + 1)])
def test_our_message_decrypts_with_sdk(client, provider, suite, frame_length, size):
    context = CTX if size % 2 else {}
    pt = data_of(size, 1)
    seen: list = []
    message = our_encrypt(pt, suite=suite, frame_length=frame_length, context=context,
                          get_data_key=make_get_data_key(seen))
    got, sdk_header = client.decrypt(source=message, key_provider=provider)
    assert got == pt
    assert sdk_header.algorithm.algorithm_id == suite and sdk_header.frame_length == frame_length
    (full_context,) = seen
    assert dict(sdk_header.encryption_context) == full_context
    if suite == esdk.SUITE_COMMIT_SIGNED:
        assert set(full_context) == set(context) | {esdk.PUBLIC_KEY_CONTEXT_KEY}
        assert len(full_context[esdk.PUBLIC_KEY_CONTEXT_KEY]) == 68  # base64 of a 49-byte compressed point
    else:
        assert full_context == context
    assert our_decrypt(message) == pt


def test_default_suite_and_frame_length_are_the_documented_ones():
    message = our_encrypt(b"x", frame_length=esdk.FRAME_LENGTH)
    default = io.BytesIO()
    esdk.encrypt(io.BytesIO(b"x"), default, context={}, get_data_key=make_get_data_key())
    h = esdk.read_header(io.BytesIO(default.getvalue()))
    assert (h.suite_id, h.frame_length) == (0x0578, 1 << 20)
    assert h.suite_name == "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384"
    assert esdk.read_header(io.BytesIO(message)).suite_id == 0x0578


def test_signature_footer_has_the_sdks_fixed_length():
    for i in range(6):
        message = our_encrypt(data_of(10, i), suite=esdk.SUITE_COMMIT_SIGNED)
        assert struct.unpack(">H", message[-105:-103]) == (103,)


def test_header_fields_and_data_keys_round_trip():
    keys = [esdk.EncryptedDataKey(esdk.PROVIDER_AWS_KMS, "arn:aws:kms:eu-west-1:111122223333:key/k1", b"\x01" * 184),
            esdk.EncryptedDataKey.from_bytes("raw", b"\xff\x00binary", b"\x02" * 40)]

    def get_data_key(ctx):
        return bytes(32), keys

    out = io.BytesIO()
    esdk.encrypt(io.BytesIO(b"abc"), out, context={"b": "2", "a": "1"}, get_data_key=get_data_key,
                 suite=esdk.SUITE_COMMIT, frame_length=100)
    h = esdk.read_header(io.BytesIO(out.getvalue()))
    assert h.data_keys == tuple(keys)
    assert h.data_keys[1].provider_info_bytes == b"\xff\x00binary"
    assert h.context == {"a": "1", "b": "2"} and list(h.context) == ["a", "b"]  # serialized sorted by key bytes
    assert our_decrypt(out.getvalue(), bytes(32)) == b"abc"


# -- (2) known answers ----------------------------------------------------------
VECTOR_FILES = sorted(VECTORS.glob("*.json"))


def test_vectors_exist():
    names = {p.stem for p in VECTOR_FILES}
    assert {"sdk_commit_key_three_frames", "sdk_commit_key_ecdsa_p384_frame_multiple",
            "sdk_commit_key_ecdsa_p384_empty", "kmscli_commit_key_odd_frames"} <= names


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_known_answer_vector(path, client, provider):
    v = json.loads(path.read_text(encoding="utf-8"))
    assert v["expect"] == "success"
    message, pt, data_key = bytes.fromhex(v["message"]), bytes.fromhex(v["plaintext"]), bytes.fromhex(v["data_key"])
    header = esdk.read_header(io.BytesIO(message))
    assert f"0x{header.suite_id:04X}" == v["suite"] and header.frame_length == v["frame_length"]
    assert header.context == v["context"]
    assert our_decrypt(message, data_key) == pt
    assert unwrap(header) == data_key
    got, _ = client.decrypt(source=message, key_provider=provider)
    assert got == pt
    if path.stem.startswith("kmscli_"):
        # encrypt still writes exactly these bytes through its seam
        iv = bytes.fromhex(v["wrap_iv"])

        def get_data_key(full):
            wrapped = AESGCM(WRAPPING_KEY).encrypt(iv, data_key, esdk.serialize_context(full))
            return data_key, [esdk.EncryptedDataKey.from_bytes(PROVIDER_ID, KEY_NAME + struct.pack(">II", 128, 12)
                                                               + iv, wrapped)]

        again = our_encrypt(pt, suite=esdk.SUITE_COMMIT, frame_length=v["frame_length"], context=v["context"],
                            get_data_key=get_data_key, message_id=bytes.fromhex(v["message_id"]))
        assert again == message


# -- (3) tampering and refusals ------------------------------------------------------
@pytest.fixture(scope="module")
def small_messages(client, provider):
    """One small SDK message per suite (three frames of 128 bytes and a final one of 66), with its data key."""
    out = {}
    for suite in SUITES:
        m = sdk_encrypt(client, provider, data_of(450, suite), suite, 128, {"k": "v"})
        out[suite] = (m, unwrap(esdk.read_header(io.BytesIO(m))))
    return out


def decrypt_or_invalid(message: bytes, data_key: bytes) -> None:
    """Must raise InvalidCiphertextException and nothing else."""
    src = io.BytesIO(message)
    with pytest.raises(InvalidCiphertextException):
        header = esdk.read_header(src)
        esdk.decrypt(header, src, io.BytesIO(), data_key=data_key)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_flipped_byte_is_refused(small_messages, suite):
    message, data_key = small_messages[suite]
    assert our_decrypt(message, data_key) == data_of(450, suite)
    for i in range(len(message)):
        for mask in (0x01, 0x80):
            bad = bytearray(message)
            bad[i] ^= mask
            decrypt_or_invalid(bytes(bad), data_key)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_truncation_is_refused(small_messages, suite):
    message, data_key = small_messages[suite]
    for n in range(len(message)):
        decrypt_or_invalid(message[:n], data_key)
        with pytest.raises(InvalidCiphertextException):
            esdk.inspect(io.BytesIO(message[:n]))


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_wrong_data_key_trailing_bytes_and_concatenation_are_refused(small_messages, suite):
    message, data_key = small_messages[suite]
    decrypt_or_invalid(message, bytes(32))
    decrypt_or_invalid(message, data_key[:-1] + bytes([data_key[-1] ^ 1]))
    for tail in (b"\x00", b"\xff" * 200, message):
        decrypt_or_invalid(message + tail, data_key)
        with pytest.raises(InvalidCiphertextException):
            esdk.inspect(io.BytesIO(message + tail))
    with pytest.raises(ValueError):
        esdk.decrypt(esdk.read_header(io.BytesIO(message)), io.BytesIO(message), io.BytesIO(), data_key=b"short")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_swapped_dropped_and_duplicated_frames_are_refused(small_messages, suite):
    message, data_key = small_messages[suite]
    header = esdk.read_header(io.BytesIO(message))
    body = header.size
    frame = 4 + 12 + 128 + 16
    f1, f2 = message[body: body + frame], message[body + frame: body + 2 * frame]
    rest = message[body + 2 * frame:]
    assert struct.unpack(">I", f1[:4]) == (1,) and struct.unpack(">I", f2[:4]) == (2,)
    head = message[:body]
    decrypt_or_invalid(head + f2 + f1 + rest, data_key)  # swapped
    decrypt_or_invalid(head + f2 + rest, data_key)  # first dropped
    decrypt_or_invalid(head + f1 + f1 + rest, data_key)  # duplicated
    # the same frame renumbered in place still fails: the sequence number is in the AAD
    decrypt_or_invalid(head + f1 + struct.pack(">I", 3) + f2[4:] + rest, data_key)


def test_frames_spliced_from_another_message_with_the_same_data_key_are_refused():
    dk = os.urandom(32)
    a, b = (our_encrypt(data_of(300), suite=esdk.SUITE_COMMIT, frame_length=100,
                        get_data_key=make_get_data_key(data_key=dk)) for _ in range(2))
    ha = esdk.read_header(io.BytesIO(a))
    hb = esdk.read_header(io.BytesIO(b))
    decrypt_or_invalid(a[: ha.size] + b[hb.size:], dk)  # message id differs: another derived key and AAD


def test_version_1_message_is_refused_naming_its_suite(provider):
    legacy = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)
    message, _ = legacy.encrypt(source=b"old", key_provider=provider,
                                algorithm=Algorithm.AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384)
    assert message[:4] == b"\x01\x80\x03\x78"
    assert esdk.is_esdk(message[:2]) and esdk.is_esdk(message[:3])
    with pytest.raises(InvalidCiphertextException) as e:
        esdk.read_header(io.BytesIO(message))
    text = str(e.value)
    assert "0x0378" in text and "AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384" in text
    assert "0x0478" in text and "0x0578" in text and "require-encrypt-require-decrypt" in text
    assert type(e.value) is InvalidCiphertextException
    with pytest.raises(InvalidCiphertextException, match="0x0378"):
        esdk.inspect(io.BytesIO(message))


@pytest.mark.parametrize(("suite_id", "words"), [(0x0178, "AES_256_GCM_IV12_TAG16_HKDF_SHA256"),
                                                 (0x0014, "AES_128_GCM_IV12_TAG16"),
                                                 (0x9999, "unknown algorithm suite 0x9999")])
def test_version_2_header_with_another_suite_is_refused_naming_it(small_messages, suite_id, words):
    message, _ = small_messages[esdk.SUITE_COMMIT]
    bad = message[:1] + struct.pack(">H", suite_id) + message[3:]
    with pytest.raises(InvalidCiphertextException) as e:
        esdk.read_header(io.BytesIO(bad))
    assert f"0x{suite_id:04X}" in str(e.value) and words in str(e.value)
    assert "only the committing algorithm suites 0x0478 and 0x0578" in str(e.value)


def test_non_framed_message_is_refused_with_a_hint(client, provider):
    message = sdk_encrypt(client, provider, b"unframed", esdk.SUITE_COMMIT, 0, {})
    with pytest.raises(InvalidCiphertextException, match="non-framed"):
        esdk.read_header(io.BytesIO(message))


def frame_length_offset(message: bytes) -> int:
    h = esdk.read_header(io.BytesIO(message))
    return len(h.raw) - 32 - 4


@pytest.mark.parametrize(("frame_length", "hint"), [(0, None), (esdk.MAX_FRAME_LENGTH + 1, "64 MiB"),
                                                    ((1 << 31) - 1, "64 MiB"), (1 << 31, None), (0xFFFFFFFF, None)])
def test_frame_length_bounds_on_read(small_messages, frame_length, hint):
    message, _ = small_messages[esdk.SUITE_COMMIT]
    off = frame_length_offset(message)
    bad = message[:off] + struct.pack(">I", frame_length) + message[off + 4:]
    with pytest.raises(InvalidCiphertextException) as e:
        esdk.read_header(io.BytesIO(bad))
    if hint:
        assert hint in str(e.value)
    else:
        assert str(e.value) == str(InvalidCiphertextException())


def test_a_frame_length_announced_larger_than_the_body_allocates_nothing_large(small_messages):
    """A header (authentic or not) announcing 64 MiB frames over a small body in memory: refused, cheaply."""
    message, dk = small_messages[esdk.SUITE_COMMIT]
    off = frame_length_offset(message)
    bad = message[:off] + struct.pack(">I", esdk.MAX_FRAME_LENGTH) + message[off + 4:]
    tracemalloc.start()
    try:
        decrypt_or_invalid(bad, dk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_header_bounds(small_messages):
    message, _ = small_messages[esdk.SUITE_COMMIT]
    h = esdk.read_header(io.BytesIO(message))
    ctx_len_off = 1 + 2 + 32
    ctx_end = ctx_len_off + 2 + struct.unpack(">H", message[ctx_len_off: ctx_len_off + 2])[0]
    # no encrypted data keys
    zero = message[:ctx_end] + b"\x00\x00" + message[ctx_end + 2:]
    with pytest.raises(InvalidCiphertextException):
        esdk.read_header(io.BytesIO(zero))
    # more than MAX_ENCRYPTED_DATA_KEYS: refused before reading them
    many = message[:ctx_end] + struct.pack(">H", esdk.MAX_ENCRYPTED_DATA_KEYS + 1) + message[ctx_end + 2:]
    with pytest.raises(InvalidCiphertextException):
        esdk.read_header(io.BytesIO(many))
    # a context of count 0 (the format writes an empty one as no bytes), or of one stray byte
    for ctx in (b"\x00\x00", b"\x00"):
        bad = message[:ctx_len_off] + struct.pack(">H", len(ctx)) + ctx + message[ctx_end:]
        with pytest.raises(InvalidCiphertextException):
            esdk.read_header(io.BytesIO(bad))
    # a duplicate key
    dup = b"\x00\x02" + (b"\x00\x01k\x00\x01v" * 2)
    bad = message[:ctx_len_off] + struct.pack(">H", len(dup)) + dup + message[ctx_end:]
    with pytest.raises(InvalidCiphertextException):
        esdk.read_header(io.BytesIO(bad))
    assert len(h.raw) + 16 == h.size


def test_signed_message_without_its_public_key_is_refused():
    """A signed-suite header that authenticates but holds no aws-crypto-public-key (made through the internals)."""
    dk, mid = os.urandom(32), os.urandom(32)
    body_key, commitment = esdk.derive_keys(dk, esdk.SUITE_COMMIT_SIGNED, mid)
    edk = esdk.EncryptedDataKey("p", "i", b"c")
    raw = esdk._serialize_header(esdk.SUITE_COMMIT_SIGNED, mid, esdk.serialize_context({"a": "b"}), [edk], 64,
                                 commitment)
    tag = AESGCM(body_key).encrypt(bytes(12), b"", raw)
    final = struct.pack(">II12sI", 0xFFFFFFFF, 1, bytes(8) + struct.pack(">I", 1), 0)
    aad = mid + b"AWSKMSEncryptionClient Final Frame" + struct.pack(">IQ", 1, 0)
    message = raw + tag + final + AESGCM(body_key).encrypt(bytes(8) + struct.pack(">I", 1), b"", aad)
    decrypt_or_invalid(message + b"\x00\x00", dk)


def build_unsigned(frames: list[tuple[bool, bytes]], frame_length: int, dk: bytes) -> bytes:
    """A 0x0478 message whose frames are laid out exactly as given (final flag, plaintext), by hand."""
    mid = os.urandom(32)
    body_key, commitment = esdk.derive_keys(dk, esdk.SUITE_COMMIT, mid)
    aead = AESGCM(body_key)
    raw = esdk._serialize_header(esdk.SUITE_COMMIT, mid, b"", [esdk.EncryptedDataKey("p", "i", b"c")],
                                 frame_length, commitment)
    out = [raw, aead.encrypt(bytes(12), b"", raw)]
    for seq, (final, pt) in enumerate(frames, 1):
        iv = bytes(8) + struct.pack(">I", seq)
        label = b"AWSKMSEncryptionClient Final Frame" if final else b"AWSKMSEncryptionClient Frame"
        sealed = aead.encrypt(iv, pt, mid + label + struct.pack(">IQ", seq, len(pt)))
        out.append(struct.pack(">II12sI", 0xFFFFFFFF, seq, iv, len(pt)) if final else struct.pack(">I12s", seq, iv))
        out.append(sealed)
    return b"".join(out)


def test_final_frame_of_a_full_frame_length_is_read(client, provider):
    """The spec allows a final frame as long as a frame (other SDKs write it); kmscli reads it."""
    dk = os.urandom(32)
    message = build_unsigned([(False, b"a" * 16), (True, b"b" * 16)], 16, dk)
    assert our_decrypt(message, dk) == b"a" * 16 + b"b" * 16
    _, info = esdk.inspect(io.BytesIO(message))
    assert info["frames"] == 2 and info["plaintext_bytes"] == 32
    # over the frame length: refused
    decrypt_or_invalid(build_unsigned([(True, b"b" * 17)], 16, dk), dk)
    # no final frame at all: refused
    decrypt_or_invalid(build_unsigned([(False, b"a" * 16)], 16, dk), dk)
    # an empty final frame after full frames (what the SDK writes for a multiple of the frame length)
    assert our_decrypt(build_unsigned([(False, b"a" * 16), (True, b"")], 16, dk), dk) == b"a" * 16


def test_sniff():
    assert esdk.is_esdk(b"\x02\x05\x78") and esdk.is_esdk(b"\x02\x04\x78") and esdk.is_esdk(b"\x02\x05")
    assert esdk.is_esdk(b"\x01\x80") and esdk.is_esdk(b"\x01\x80\x03\x78")
    assert esdk.is_esdk(b"\x02\x01\x78")  # a v2 header with a non-committing suite: ours to refuse with a hint
    for no in (b"", b"\x02", b"\x02\x09", b"\x02\x05\x79", b"\x01\x81", b"\x89KMS\r\n", b"-----BEGIN", b"\x03\x05\x78"):
        assert not esdk.is_esdk(no), no


def test_required_context_present(small_messages):
    h = esdk.read_header(io.BytesIO(small_messages[esdk.SUITE_COMMIT_SIGNED][0]))
    assert esdk.required_context_present(h, {}) and esdk.required_context_present(h, {"k": "v"})
    assert not esdk.required_context_present(h, {"k": "w"})
    assert not esdk.required_context_present(h, {"k": "v", "other": "x"})


# -- encrypt's argument checks --------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "words"), [
    ({"context": {"aws-crypto-public-key": "x"}}, "reserved"),
    ({"context": {"aws-crypto-anything": "x"}}, "reserved"),
    ({"context": {"a": 1}}, "strings"),
    ({"context": {"a": "\ud800"}}, "surrogate"),
    ({"context": {"k": "v" * 70000}}, "65535"),
    ({"suite": 0x0378}, "algorithm suite"),
    ({"suite": True}, "algorithm suite"),
    ({"frame_length": 0}, "frame length"),
    ({"frame_length": esdk.MAX_FRAME_LENGTH + 1}, "frame length"),
    ({"frame_length": 4096.0}, "frame length"),
    ({"message_id": b"short"}, "message id"),
])
def test_encrypt_refuses_bad_arguments_before_asking_for_a_key(kwargs, words):
    called = []
    kw = {"context": {}, "suite": esdk.SUITE_COMMIT, **kwargs}
    out = io.BytesIO()
    with pytest.raises(ValidationException, match=words):
        esdk.encrypt(io.BytesIO(b"x"), out, get_data_key=lambda c: called.append(c), **kw)
    assert called == [] and out.getvalue() == b""


@pytest.mark.parametrize("keys", [[], [esdk.EncryptedDataKey("p", "i", b"c")] * 257,
                                  [esdk.EncryptedDataKey("p", "i", b"c" * 70000)], ["not a key"]])
def test_encrypt_refuses_bad_data_keys_before_writing(keys):
    out = io.BytesIO()
    with pytest.raises(ValidationException):
        esdk.encrypt(io.BytesIO(b"x"), out, context={}, get_data_key=lambda c: (bytes(32), keys))
    assert out.getvalue() == b""


def test_progress_and_short_reads(small_messages):
    class OneByte(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._d, self._p = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[override]
            if self._p >= len(self._d):
                return 0
            b[0] = self._d[self._p]
            self._p += 1
            return 1

    pt = data_of(1000)
    dk = os.urandom(32)
    steps: list[int] = []
    out = io.BytesIO()
    esdk.encrypt(OneByte(pt), out, context={}, get_data_key=make_get_data_key(data_key=dk), frame_length=300,
                 progress=steps.append)
    assert steps == [300, 300, 300, 100]
    src = OneByte(out.getvalue())
    h = esdk.read_header(src)
    got = io.BytesIO()
    steps.clear()
    assert esdk.decrypt(h, src, got, data_key=dk, progress=steps.append) == 1000
    assert got.getvalue() == pt and steps == [300, 300, 300, 100]


def test_frames_are_released_as_they_authenticate(small_messages):
    """Streaming: a failure at the end (here the signature) raises after earlier frames were written."""
    message, dk = small_messages[esdk.SUITE_COMMIT_SIGNED]
    bad = message[:-1] + bytes([message[-1] ^ 1])
    src = io.BytesIO(bad)
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertextException):
        esdk.decrypt(esdk.read_header(src), src, out, data_key=dk)
    assert out.getvalue() == data_of(450, esdk.SUITE_COMMIT_SIGNED)


def test_decrypt_uses_the_headers_own_bytes(small_messages):
    """A caller that edits the dataclass cannot change what is checked: the raw bytes are re-read."""
    import dataclasses

    message, dk = small_messages[esdk.SUITE_COMMIT]
    src = io.BytesIO(message)
    h = esdk.read_header(src)
    forged = dataclasses.replace(h, frame_length=64)
    out = io.BytesIO()
    esdk.decrypt(forged, src, out, data_key=dk)
    assert out.getvalue() == data_of(450, esdk.SUITE_COMMIT)


# -- (4) properties ------------------------------------------------------------------------------------
context_keys = st.text(min_size=1, max_size=12).filter(lambda k: not k.startswith("aws-crypto-"))
contexts = st.dictionaries(context_keys, st.text(max_size=12), max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000), context=contexts, frame_length=st.integers(1, 700),
       suite=st.sampled_from(sorted(SUITES)), threaded=st.booleans())
def test_round_trip_property(data, context, frame_length, suite, threaded):
    dk = os.urandom(32)
    out = io.BytesIO()
    assert esdk.encrypt(io.BytesIO(data), out, context=context, get_data_key=make_get_data_key(data_key=dk),
                        suite=suite, frame_length=frame_length, threaded_hash=threaded) == len(data)
    message = out.getvalue()
    src = io.BytesIO(message)
    h = esdk.read_header(src)
    assert {k: v for k, v in h.context.items() if k != esdk.PUBLIC_KEY_CONTEXT_KEY} == context
    got = io.BytesIO()
    esdk.decrypt(h, src, got, data_key=dk, threaded_hash=not threaded)
    assert got.getvalue() == data
    _, info = esdk.inspect(io.BytesIO(message))
    assert info["frames"] == len(data) // frame_length + 1 and info["total_bytes"] == len(message)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.binary(max_size=400).map(lambda b: b"\x02\x04\x78" + b),
                 st.binary(max_size=400).map(lambda b: b"\x02\x05\x78" + b),
                 st.binary(max_size=100).map(lambda b: b"\x01\x80" + b)))
def test_read_header_on_random_bytes_raises_only_invalid_ciphertext(blob):
    try:
        h = esdk.read_header(io.BytesIO(blob))
    except InvalidCiphertextException:
        return
    assert h.size <= len(blob)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(0, 10_000), signed=st.booleans())
def test_mutated_messages_raise_only_invalid_ciphertext(small_messages, edits, cut, signed):
    message, dk = small_messages[esdk.SUITE_COMMIT_SIGNED if signed else esdk.SUITE_COMMIT]
    bad = bytearray(message)
    for pos, value in edits:
        bad[pos % len(bad)] = value
    bad = bad[: len(bad) - cut % 8]
    if bytes(bad) == message:
        return
    decrypt_or_invalid(bytes(bad), dk)


# -- (5) constant memory --------------------------------------------------------------------------------
class _Pattern(io.RawIOBase):
    """``total`` bytes from a repeated 64 KiB block, never held whole."""

    def __init__(self, total: int) -> None:
        self._block = memoryview(data_of(1 << 16, 7))
        self._left = total
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._left, len(self._block) - self._pos)
        b[:n] = self._block[self._pos: self._pos + n]
        self._pos = (self._pos + n) % len(self._block)
        self._left -= n
        return n


class _HashSink:
    def __init__(self) -> None:
        self.h, self.n = hashlib.sha256(), 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return len(b)


def test_64_mib_stream_in_constant_memory(tmp_path):
    size, frame = 64 << 20, 64 << 10
    dk = os.urandom(32)
    ct_path = tmp_path / "m.esdk"
    tracemalloc.start()
    try:
        with open(ct_path, "wb") as f:
            assert esdk.encrypt(_Pattern(size), f, context={"big": "yes"},
                                get_data_key=make_get_data_key(data_key=dk), frame_length=frame) == size
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = _HashSink()
        with open(ct_path, "rb") as f:
            h = esdk.read_header(f)
            assert esdk.decrypt(h, f, sink, data_key=dk) == size
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256()
    src = _Pattern(size)
    buf = bytearray(1 << 20)
    while n := src.readinto(buf):
        expected.update(memoryview(buf)[:n])
    assert sink.n == size and sink.h.digest() == expected.digest()
    # about two frames of buffers each way (4 x 64 KiB), nothing that grows with the 64 MiB
    assert enc_peak < 2 << 20, enc_peak
    assert dec_peak < 2 << 20, dec_peak
