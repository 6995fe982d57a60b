"""The AWS Encryption SDK message format, version 2, committing suites only: a pure streaming codec.

What the AWS Encryption SDK (and its CLI, ``aws-encryption-cli``) writes by
default: a header (suite, message id, encryption context, the data key
encrypted once per recipient, frame length, key commitment) authenticated by an
AES-GCM tag, a body of AES-256-GCM frames, and for the signed suite a footer
holding an ECDSA P-384 signature over everything before it. The layout is the
public specification's (data-format/message-header.md, message-body.md,
message-footer.md; framework/algorithm-suites.md); see docs/esdk.md.

This module knows nothing of vaults, KMS or the CLI: callers hand it the data
key (``decrypt``) or a callback that makes one and its encrypted copies
(``encrypt``), and binary file objects. ``cryptography`` is imported only
inside functions, never at import time.

Only the committing suites are read or written (0x0478, 0x0578), as the SDK's
default commitment policy ``require-encrypt-require-decrypt`` does; messages of
format version 1 and non-committing suites are refused with a hint naming the
suite. Only framed bodies (content type 0x02) are read or written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidCiphertextException, ValidationException
from .stream import Source, write_all

# -- Quantities named as in the specification ---------------------------------
SUITE_COMMIT_SIGNED = 0x0578  # AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384 (the SDK's default)
SUITE_COMMIT = 0x0478  # AES_256_GCM_HKDF_SHA512_COMMIT_KEY (unsigned)
#: What kmscli writes by default (the SDK writes 4096): large frames cost fewer
#: AEAD calls and frame headers per byte. Always a parameter.
FRAME_LENGTH = 1 << 20
PUBLIC_KEY_CONTEXT_KEY = "aws-crypto-public-key"
#: Context keys with this prefix are the SDK's own; a caller may not set them.
RESERVED_CONTEXT_PREFIX = "aws-crypto-"
PROVIDER_AWS_KMS = "aws-kms"

MESSAGE_VERSION = 0x02
V1_MESSAGE_VERSION = 0x01
V1_MESSAGE_TYPE = 0x80  # "customer authenticated encrypted data", the only v1 type
CONTENT_TYPE_NON_FRAMED = 0x01
CONTENT_TYPE_FRAMED = 0x02
MESSAGE_ID_SIZE = 32
COMMITMENT_SIZE = 32
DATA_KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
SEQUENCE_NUMBER_END = 0xFFFFFFFF
#: A message holds at most 2^32 - 1 frames (sequence numbers 1 .. 2^32 - 1).
MAX_FRAMES = 0xFFFFFFFF
#: The format's own bound on a frame (a 4-byte length, 2^31 - 1 as the SDK).
FORMAT_MAX_FRAME_LENGTH = (1 << 31) - 1
#: kmscli's bound, on read and on write: a reader holds about two frames in
#: memory, so a header may not ask for more than this. 64 MiB is 64 times what
#: kmscli writes and 16384 times the SDK's default.
MAX_FRAME_LENGTH = 64 << 20
#: The serialized encryption context has a 2-byte length.
MAX_CONTEXT_BYTES = 0xFFFF
#: kmscli's bounds on a header it reads (or writes): the format allows 65535
#: encrypted data keys of up to 3 x 64 KiB each. A message for 256 recipients
#: is far beyond any real use; the whole header (and so what read_header
#: allocates) stays within 1 MiB.
MAX_ENCRYPTED_DATA_KEYS = 256
MAX_HEADER_SIZE = 1 << 20
#: A DER ECDSA P-384 signature is at most 104 bytes; the SDK always writes 103.
SIGNATURE_SIZE = 103
MAX_SIGNATURE_SIZE = 104

_FRAME_AAD = b"AWSKMSEncryptionClient Frame"
_FINAL_FRAME_AAD = b"AWSKMSEncryptionClient Final Frame"
_DERIVE_KEY_LABEL = b"DERIVEKEY"
_COMMIT_KEY_LABEL = b"COMMITKEY"
_HEADER_AUTH_IV = bytes(IV_SIZE)
# The order n of the P-384 group (SEC 2), to give a signature the SDK's fixed length.
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16
)

SUITE_NAMES: dict[int, str] = {
    0x0014: "AES_128_GCM_IV12_TAG16",
    0x0046: "AES_192_GCM_IV12_TAG16",
    0x0078: "AES_256_GCM_IV12_TAG16",
    0x0114: "AES_128_GCM_IV12_TAG16_HKDF_SHA256",
    0x0146: "AES_192_GCM_IV12_TAG16_HKDF_SHA256",
    0x0178: "AES_256_GCM_IV12_TAG16_HKDF_SHA256",
    0x0214: "AES_128_GCM_IV12_TAG16_HKDF_SHA256_ECDSA_P256",
    0x0346: "AES_192_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384",
    0x0378: "AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384",
    SUITE_COMMIT: "AES_256_GCM_HKDF_SHA512_COMMIT_KEY",
    SUITE_COMMIT_SIGNED: "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384",
}
COMMITTING_SUITES = (SUITE_COMMIT, SUITE_COMMIT_SIGNED)
SIGNED_SUITES = (SUITE_COMMIT_SIGNED,)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_V2_START = struct.Struct(">H32sH")  # suite id, message id, context length (after the version byte)
_FRAMING = struct.Struct(">BI")  # content type, frame length
_FINAL_FRAME_START = struct.Struct(">I12sI")  # sequence number, IV, content length (after the end marker)

Progress = Callable[[int], Any]


@dataclass(frozen=True)
class EncryptedDataKey:
    """One encrypted copy of the data key, as the header lists it.

    ``provider_info`` is text: for ``aws-kms`` the key ARN. The format stores
    bytes, which other providers fill with binary (the raw AES keyring puts its
    IV there), so bytes that are not UTF-8 are kept as lone surrogates
    (``surrogateescape``): :attr:`provider_info_bytes` gives the exact bytes
    back, and :meth:`from_bytes` builds one from bytes.
    """

    provider_id: str
    provider_info: str
    ciphertext: bytes

    @property
    def provider_info_bytes(self) -> bytes:
        return self.provider_info.encode("utf-8", "surrogateescape")

    @classmethod
    def from_bytes(cls, provider_id: str, provider_info: bytes, ciphertext: bytes) -> EncryptedDataKey:
        return cls(provider_id, bytes(provider_info).decode("utf-8", "surrogateescape"), bytes(ciphertext))


@dataclass(frozen=True)
class Header:
    """A parsed, bound-checked message header (version 2, committing suite, framed).

    Parsing proves nothing: only :func:`decrypt` with the right data key
    authenticates it (commitment, then the header auth tag).
    """

    version: int
    suite_id: int
    message_id: bytes
    context: dict[str, str]
    data_keys: tuple[EncryptedDataKey, ...]
    content_type: int
    frame_length: int
    commitment: bytes | None
    #: The header exactly as read, without its auth tag: what the tag (and the signature) covers.
    raw: bytes
    auth_tag: bytes

    @property
    def signed(self) -> bool:
        return self.suite_id in SIGNED_SUITES

    @property
    def committing(self) -> bool:
        return self.suite_id in COMMITTING_SUITES

    @property
    def suite_name(self) -> str:
        return SUITE_NAMES.get(self.suite_id, f"0x{self.suite_id:04X}")

    @property
    def size(self) -> int:
        """Bytes from the message's start to its body: the header and its auth tag."""
        return len(self.raw) + len(self.auth_tag)


# -- Sniffing -----------------------------------------------------------------
def is_esdk(first_bytes: bytes) -> bool:
    """Whether these first bytes (2 or more) begin an AWS Encryption SDK message of either version.

    A cheap test for choosing a reader, not a check: version 2 is 0x02 then a
    known suite id (the high byte alone when only 2 bytes are given); version 1
    is 0x01 0x80. Neither kmscli's magic (0x89) nor its armor ('-') starts so.
    """
    b = bytes(first_bytes[:3])
    if len(b) < 2:
        return False
    if b[0] == V1_MESSAGE_VERSION:
        return b[1] == V1_MESSAGE_TYPE
    if b[0] == MESSAGE_VERSION:
        if len(b) == 2:
            return any(suite >> 8 == b[1] for suite in SUITE_NAMES)
        return (b[1] << 8 | b[2]) in SUITE_NAMES
    return False


# -- Refusals that name what they refuse (public: all of it is in the clear) --
_COMMITMENT_HINT = (
    "kmscli reads only the committing algorithm suites 0x0478 and 0x0578 (message format version 2), as the "
    "SDK's default commitment policy require-encrypt-require-decrypt; decrypt it with the AWS Encryption SDK "
    "under --commitment-policy require-encrypt-allow-decrypt and encrypt it again"
)


def _suite_refused(suite_id: int, version: int) -> InvalidCiphertextException:
    name = SUITE_NAMES.get(suite_id)
    what = f"algorithm suite 0x{suite_id:04X} ({name})" if name else f"an unknown algorithm suite 0x{suite_id:04X}"
    return InvalidCiphertextException(
        f"the AWS Encryption SDK message (format version {version}) uses {what}, which does not commit to its "
        "data key", hint=_COMMITMENT_HINT)


# -- Encryption context -------------------------------------------------------
def serialize_context(context: Mapping[str, str]) -> bytes:
    """The context as the header holds it: nothing for an empty one, else a pair count and the
    length-prefixed UTF-8 pairs sorted by key bytes. ValidationException naming the rule broken."""
    if not isinstance(context, Mapping):
        raise ValidationException("the encryption context must be a mapping of strings to strings")
    if not context:
        return b""
    pairs = []
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationException("encryption context keys and values must be strings")
        try:
            kb, vb = key.encode("utf-8"), value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationException(
                f"encryption context pair {key!r} is not valid Unicode text (lone surrogate)") from None
        if len(kb) > 0xFFFF or len(vb) > 0xFFFF:
            raise ValidationException("an encryption context key or value is over 65535 bytes encoded")
        pairs.append((kb, vb))
    pairs.sort()
    parts = [_U16.pack(len(pairs))]
    for kb, vb in pairs:
        parts += (_U16.pack(len(kb)), kb, _U16.pack(len(vb)), vb)
    out = b"".join(parts)
    if len(out) > MAX_CONTEXT_BYTES:
        raise ValidationException(
            f"the encryption context is {len(out)} bytes serialized; the format allows at most {MAX_CONTEXT_BYTES}")
    return out


def _parse_context(data: bytes) -> dict[str, str]:
    if not data:
        return {}
    (count,) = _U16.unpack_from(data, 0)
    # The format writes an empty context as no bytes at all, never a count of 0.
    if count == 0:
        raise InvalidCiphertextException()
    pos = 2
    context: dict[str, str] = {}
    for _ in range(count):
        key, pos = _take_u16_bytes(data, pos)
        value, pos = _take_u16_bytes(data, pos)
        k = key.decode("utf-8")
        if k in context:
            raise InvalidCiphertextException()
        context[k] = value.decode("utf-8")
    if pos != len(data):
        raise InvalidCiphertextException()
    return context


def _take_u16_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = _U16.unpack_from(data, pos)
    start, end = pos + 2, pos + 2 + length
    if end > len(data):
        raise InvalidCiphertextException()
    return data[start:end], end


def required_context_present(header: Header, required: Mapping[str, str]) -> bool:
    """Whether every pair of ``required`` is in the message's context (the SDK CLI's
    ``--encryption-context`` on decrypt: the message may hold more pairs)."""
    return all(header.context.get(key) == value for key, value in required.items())


# -- Header -------------------------------------------------------------------
class _HeaderReader:
    """Reads a header field by field, keeping its bytes and refusing a header over MAX_HEADER_SIZE."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self.raw = bytearray()

    def take(self, n: int) -> bytes:
        if len(self.raw) + n > MAX_HEADER_SIZE:
            raise InvalidCiphertextException()
        buf = bytearray(n)
        if self._source.fill(memoryview(buf)) != n:
            raise InvalidCiphertextException()
        self.raw += buf
        return bytes(buf)

    def u16_bytes(self) -> bytes:
        (n,) = _U16.unpack(self.take(2))
        return self.take(n)


def read_header(reader: Any) -> Header:
    """Read one message header and its auth tag from ``reader`` and bound-check them; needs no key.

    Leaves ``reader`` at the first body byte. Nothing is authenticated here.
    Malformed or truncated input raises InvalidCiphertextException (with a hint
    for a version 1 message, a non-committing or unknown suite, a non-framed
    body or a frame length over MAX_FRAME_LENGTH); I/O errors propagate.
    """
    h = _HeaderReader(Source(reader))
    try:
        (version,) = h.take(1)
        if version == V1_MESSAGE_VERSION:
            message_type, suite_id = struct.unpack(">BH", h.take(3))
            if message_type == V1_MESSAGE_TYPE:
                raise _suite_refused(suite_id, 1)
            raise InvalidCiphertextException()
        if version != MESSAGE_VERSION:
            raise InvalidCiphertextException()
        suite_id, message_id, context_length = _V2_START.unpack(h.take(_V2_START.size))
        if suite_id not in COMMITTING_SUITES:
            raise _suite_refused(suite_id, 2)
        context = _parse_context(h.take(context_length))
        (count,) = _U16.unpack(h.take(2))
        if not 1 <= count <= MAX_ENCRYPTED_DATA_KEYS:
            raise InvalidCiphertextException()
        keys = []
        for _ in range(count):
            provider_id = h.u16_bytes().decode("utf-8")
            provider_info = h.u16_bytes()
            keys.append(EncryptedDataKey.from_bytes(provider_id, provider_info, h.u16_bytes()))
        content_type, frame_length = _FRAMING.unpack(h.take(_FRAMING.size))
        if content_type == CONTENT_TYPE_NON_FRAMED:
            raise InvalidCiphertextException(
                "the AWS Encryption SDK message has a non-framed body (content type 0x01)",
                hint="kmscli reads only framed messages (content type 0x02), what the SDK writes unless asked "
                     "for a frame length of 0")
        if content_type != CONTENT_TYPE_FRAMED or not 1 <= frame_length <= FORMAT_MAX_FRAME_LENGTH:
            raise InvalidCiphertextException()
        if frame_length > MAX_FRAME_LENGTH:
            raise InvalidCiphertextException(
                f"the AWS Encryption SDK message's frames are {frame_length} bytes long",
                hint=f"kmscli reads frames of at most {MAX_FRAME_LENGTH} bytes (64 MiB)")
        commitment = h.take(COMMITMENT_SIZE)
        raw = bytes(h.raw)
        auth_tag = h.take(TAG_SIZE)
    except (struct.error, UnicodeDecodeError, ValueError):
        raise InvalidCiphertextException() from None
    return Header(
        version=version,
        suite_id=suite_id,
        message_id=message_id,
        context=context,
        data_keys=tuple(keys),
        content_type=content_type,
        frame_length=frame_length,
        commitment=commitment,
        raw=raw,
        auth_tag=auth_tag,
    )


def _reparse(header: Header) -> Header:
    """The header its own bytes say, whatever a caller did to the dataclass."""
    parsed = read_header(io.BytesIO(header.raw + header.auth_tag))
    if parsed.size != len(header.raw) + len(header.auth_tag):
        raise InvalidCiphertextException()
    return parsed


def _serialize_header(suite_id: int, message_id: bytes, context: bytes, data_keys: Iterable[EncryptedDataKey],
                      frame_length: int, commitment: bytes) -> bytes:
    keys = list(data_keys)
    parts = [_U8.pack(MESSAGE_VERSION), _V2_START.pack(suite_id, message_id, len(context)), context,
             _U16.pack(len(keys))]
    for edk in keys:
        for field in (edk.provider_id.encode("utf-8"), edk.provider_info_bytes, edk.ciphertext):
            parts += (_U16.pack(len(field)), field)
    parts += (_FRAMING.pack(CONTENT_TYPE_FRAMED, frame_length), commitment)
    return b"".join(parts)


def _check_data_keys(data_keys: Any) -> tuple[EncryptedDataKey, ...]:
    keys = tuple(data_keys)
    if not 1 <= len(keys) <= MAX_ENCRYPTED_DATA_KEYS:
        raise ValidationException(
            f"a message holds 1 to {MAX_ENCRYPTED_DATA_KEYS} encrypted data keys (got {len(keys)})")
    for edk in keys:
        if not isinstance(edk, EncryptedDataKey):
            raise ValidationException("encrypted data keys must be EncryptedDataKey objects")
        try:
            fields = (edk.provider_id.encode("utf-8"), edk.provider_info_bytes, bytes(edk.ciphertext))
        except (AttributeError, TypeError, UnicodeEncodeError):
            raise ValidationException("an encrypted data key's provider id or info is not text") from None
        if any(len(f) > 0xFFFF for f in fields):
            raise ValidationException("an encrypted data key's field is over 65535 bytes")
    return keys


# -- Key derivation -----------------------------------------------------------
def _hkdf_sha512(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF with SHA-512 (RFC 5869); ``length`` is at most one block here."""
    prk = hmac.new(salt, ikm, hashlib.sha512).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha512).digest()[:length]


def derive_keys(data_key: bytes, suite_id: int, message_id: bytes) -> tuple[bytes, bytes]:
    """(the key that encrypts the body and tags the header, the key commitment) for a data key."""
    key = _hkdf_sha512(data_key, message_id, _U16.pack(suite_id) + _DERIVE_KEY_LABEL)
    return key, _hkdf_sha512(data_key, message_id, _COMMIT_KEY_LABEL)


def _check_data_key(data_key: Any) -> bytes:
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != DATA_KEY_SIZE:
        raise ValueError("the data key must be 32 bytes")
    return bytes(data_key)


def _frame_iv(sequence_number: int) -> bytes:
    return bytes(IV_SIZE - 4) + _U32.pack(sequence_number)


def _frame_aad(message_id: bytes, final: bool, sequence_number: int, length: int) -> bytes:
    return message_id + (_FINAL_FRAME_AAD if final else _FRAME_AAD) + struct.pack(">IQ", sequence_number, length)


# -- Signatures ---------------------------------------------------------------
class _Hasher:
    """SHA-384 of everything before the footer.

    With ``threaded`` the updates run on one worker thread (hashlib releases
    the GIL for large buffers) while the caller goes on with AES-GCM and I/O:
    :meth:`update` returns at once, so the caller may not touch a buffer it
    gave until :meth:`barrier` (or :meth:`digest`) has returned.
    """

    def __init__(self, threaded: bool) -> None:
        self._hash = hashlib.sha384()
        self._pool: Any = None
        self._pending: Any = None
        if threaded:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kmscli-esdk-hash")

    def update(self, *views: Any) -> None:
        if self._pool is None:
            for v in views:
                self._hash.update(v)
            return
        self.barrier()
        self._pending = self._pool.submit(self._run, views)

    def _run(self, views: tuple[Any, ...]) -> None:
        for v in views:
            self._hash.update(v)

    def barrier(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def digest(self) -> bytes:
        self.barrier()
        return self._hash.digest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _sign(private_key: Any, digest: bytes) -> bytes:
    """DER ECDSA P-384 over a SHA-384 digest, of the SDK's fixed length (103 bytes) when a few tries give it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import (
        Prehashed,
        decode_dss_signature,
        encode_dss_signature,
    )

    algorithm = ec.ECDSA(Prehashed(hashes.SHA384()))
    signature = b""
    for _ in range(32):
        signature = private_key.sign(digest, algorithm)
        if len(signature) == SIGNATURE_SIZE:
            break
        # (r, n - s) is the same signature's other valid form: often it is the length wanted.
        r, s = decode_dss_signature(signature)
        signature = encode_dss_signature(r, _P384_ORDER - s)
        if len(signature) == SIGNATURE_SIZE:
            break
    return signature


def _public_key_from_context(context: Mapping[str, str]) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    encoded = context.get(PUBLIC_KEY_CONTEXT_KEY)
    if encoded is None:
        raise InvalidCiphertextException()
    try:
        point = base64.b64decode(encoded.encode("ascii"), validate=True)
        if len(point) != 49 or point[0] not in (2, 3):
            raise InvalidCiphertextException()
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point)
    except (ValueError, UnicodeEncodeError):
        raise InvalidCiphertextException() from None


def _verify(public_key: Any, signature: bytes, digest: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    try:
        public_key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA384())))
    except (InvalidSignature, ValueError):
        raise InvalidCiphertextException() from None


def _new_signing_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP384R1())


def _encode_public_key(private_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    point = private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.CompressedPoint)
    return base64.b64encode(point).decode("ascii")


# -- Buffers ------------------------------------------------------------------
def _left_in_memory(reader: Any, unknown: int) -> int:
    if isinstance(reader, io.BytesIO):
        return len(reader.getbuffer()) - reader.tell()
    return unknown


def _check_frame_length(frame_length: Any) -> int:
    if isinstance(frame_length, bool) or not isinstance(frame_length, int) or \
            not 1 <= frame_length <= MAX_FRAME_LENGTH:
        raise ValidationException(
            f"the frame length must be from 1 to {MAX_FRAME_LENGTH} bytes (got {frame_length!r})")
    return frame_length


# -- Encrypt ------------------------------------------------------------------
def encrypt(
    reader: Any,
    writer: Any,
    *,
    context: Mapping[str, str],
    get_data_key: Callable[[dict[str, str]], tuple[bytes, list[EncryptedDataKey]]],
    suite: int = SUITE_COMMIT_SIGNED,
    frame_length: int = FRAME_LENGTH,
    progress: Progress | None = None,
    message_id: bytes | None = None,
    signing_key: Any = None,
    threaded_hash: bool = False,
) -> int:
    """Encrypt everything ``reader`` yields into ``writer`` as one message; return the plaintext size.

    Streams in constant memory, one frame at a time. For the signed suite a
    fresh P-384 key pair is made and its public key put in the context as
    ``aws-crypto-public-key`` before ``get_data_key(full_context)`` is called;
    that returns (the 32-byte plaintext data key, its encrypted copies). Every
    argument is checked (ValidationException) before ``get_data_key`` runs or
    anything is written; a caller context may not hold keys starting with
    ``aws-crypto-``. The body is framed: full frames of ``frame_length`` bytes
    then a final frame of the rest, of 0 bytes when the plaintext is empty or
    a multiple of the frame length (as the SDK writes).

    ``message_id`` and ``signing_key`` (a cryptography P-384 private key) are
    the deterministic seam for test vectors; leave them None otherwise.
    ``threaded_hash`` runs the signed suite's SHA-384 on a worker thread
    (frames of 16 KiB or more); off by default: on the 2-vCPU machines measured
    it was no faster (bench/esdk_codec.py, docs/esdk.md).
    """
    if isinstance(suite, bool) or suite not in COMMITTING_SUITES:
        raise ValidationException(
            f"the algorithm suite must be 0x{SUITE_COMMIT_SIGNED:04X} or 0x{SUITE_COMMIT:04X} (got {suite!r})")
    _check_frame_length(frame_length)
    if not isinstance(context, Mapping):
        raise ValidationException("the encryption context must be a mapping of strings to strings")
    for key in context:
        if isinstance(key, str) and key.startswith(RESERVED_CONTEXT_PREFIX):
            raise ValidationException(
                f"encryption context key {key!r} is reserved: keys starting with {RESERVED_CONTEXT_PREFIX!r} "
                "belong to the AWS Encryption SDK")
    full_context = dict(context)
    serialize_context(full_context)  # validate before making keys
    if message_id is None:
        message_id = os.urandom(MESSAGE_ID_SIZE)
    elif not isinstance(message_id, (bytes, bytearray)) or len(message_id) != MESSAGE_ID_SIZE:
        raise ValidationException(f"the message id must be {MESSAGE_ID_SIZE} bytes")
    message_id = bytes(message_id)
    signer = None
    if suite in SIGNED_SUITES:
        signer = signing_key if signing_key is not None else _new_signing_key()
        full_context[PUBLIC_KEY_CONTEXT_KEY] = _encode_public_key(signer)
    context_bytes = serialize_context(full_context)
    data_key, data_keys = get_data_key(dict(full_context))
    data_key = _check_data_key(data_key)
    keys = _check_data_keys(data_keys)
    body_key, commitment = derive_keys(data_key, suite, message_id)
    header = _serialize_header(suite, message_id, context_bytes, keys, frame_length, commitment)
    if len(header) > MAX_HEADER_SIZE:
        raise ValidationException(f"the message header would be {len(header)} bytes; at most {MAX_HEADER_SIZE} are "
                                  "read back")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(body_key)
    auth_tag = aead.encrypt(_HEADER_AUTH_IV, b"", header)
    hasher = _Hasher(threaded_hash and frame_length >= 16384) if signer is not None else None
    try:
        write_all(writer, header + auth_tag)
        if hasher is not None:
            hasher.update(header, auth_tag)
        total = _seal_frames(aead, message_id, frame_length, reader, writer, progress, hasher)
        if hasher is not None:
            signature = _sign(signer, hasher.digest())
            write_all(writer, _U16.pack(len(signature)) + signature)
    finally:
        if hasher is not None:
            hasher.close()
    return total


def _seal_frames(aead: Any, message_id: bytes, frame_length: int, reader: Any, writer: Any,
                 progress: Progress | None, hasher: _Hasher | None) -> int:
    encrypt_into = aead.encrypt_into
    source = Source(reader)
    size = min(frame_length, _left_in_memory(reader, frame_length))
    # Two sets of buffers, so that the hash thread may read one frame while the next is sealed.
    inputs = [memoryview(bytearray(size)) for _ in range(2)]
    # A frame as written: a non-final one is sequence number, IV, ciphertext, tag; the final one
    # begins with the end marker and ends with its content length before the ciphertext.
    outs = [memoryview(bytearray(4 + 4 + IV_SIZE + 4 + size + TAG_SIZE)) for _ in range(2)]
    sequence = 1
    total = 0
    while True:
        # Buffers alternate: the hash thread may still read the previous frame's while this one is sealed
        # (update() waits for the hash before last, so the pair reused here is free).
        which = sequence & 1
        buf, out = inputs[which], outs[which]
        # A full frame is never final: a plaintext that ends on a frame boundary gets an empty final frame.
        n = source.fill(buf)
        final = n < frame_length
        if sequence > MAX_FRAMES or (sequence == MAX_FRAMES and not final):
            raise ValidationException(f"a message holds at most {MAX_FRAMES} frames: use a larger frame length")
        iv = _frame_iv(sequence)
        aad = _frame_aad(message_id, final, sequence, n)
        if final:
            start = _U32.pack(SEQUENCE_NUMBER_END) + _FINAL_FRAME_START.pack(sequence, iv, n)
        else:
            start = _U32.pack(sequence) + iv
        head = len(start)
        out[:head] = start
        frame = out[: head + n + TAG_SIZE]
        encrypt_into(iv, buf[:n], aad, frame[head:])
        write_all(writer, frame)
        if hasher is not None:
            hasher.update(frame)
        total += n
        if progress is not None and n:
            progress(n)
        if final:
            return total
        sequence += 1


# -- Decrypt ------------------------------------------------------------------
def decrypt(header: Header, reader: Any, writer: Any, *, data_key: bytes, progress: Progress | None = None,
            threaded_hash: bool = False) -> int:
    """Decrypt the body (and check the footer) that follows ``header`` in ``reader`` into ``writer``;
    return the plaintext size.

    Checks, in order: the key commitment (constant time) and the header auth
    tag under ``data_key``; then every frame in order (sequence numbers from 1,
    lengths, tags, exactly one final frame); for the signed suite the footer's
    ECDSA P-384 signature against the ``aws-crypto-public-key`` of the
    context; and that nothing follows the message. Any failure raises
    InvalidCiphertextException.

    Streaming release: each frame's plaintext is written as soon as its tag
    verifies, so a failure later in the body, or a bad signature at the very
    end, raises after earlier plaintext was written. The caller must write to a
    temporary file and put it in place only when this returns (the CLI does);
    until then the output is unauthenticated as a whole (for the signed suite,
    not yet proven to come from the holder of the signing key).
    """
    data_key = _check_data_key(data_key)
    header = _reparse(header)
    body_key, commitment = derive_keys(data_key, header.suite_id, header.message_id)
    if header.commitment is None or not hmac.compare_digest(commitment, header.commitment):
        raise InvalidCiphertextException()
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(body_key)
    try:
        aead.decrypt(_HEADER_AUTH_IV, header.auth_tag, header.raw)
    except InvalidTag:
        raise InvalidCiphertextException() from None
    public_key = _public_key_from_context(header.context) if header.signed else None
    hasher = _Hasher(threaded_hash and header.frame_length >= 16384) if public_key is not None else None
    try:
        if hasher is not None:
            hasher.update(header.raw, header.auth_tag)
        total = _open_frames(aead, header, reader, writer, progress, hasher)
        source = Source(reader)
        if hasher is not None:
            digest = hasher.digest()
            signature = _read_footer(source)
            _verify(public_key, signature, digest)
        # Nothing may follow the message.
        if source.fill(memoryview(bytearray(1))):
            raise InvalidCiphertextException()
    finally:
        if hasher is not None:
            hasher.close()
    return total


def _read_footer(source: Source) -> bytes:
    length = bytearray(2)
    if source.fill(memoryview(length)) != 2:
        raise InvalidCiphertextException()
    (n,) = _U16.unpack(length)
    if not 1 <= n <= MAX_SIGNATURE_SIZE:
        raise InvalidCiphertextException()
    signature = bytearray(n)
    if source.fill(memoryview(signature)) != n:
        raise InvalidCiphertextException()
    return bytes(signature)


def _open_frames(aead: Any, header: Header, reader: Any, writer: Any, progress: Progress | None,
                 hasher: _Hasher | None) -> int:
    from cryptography.exceptions import InvalidTag

    decrypt_into = aead.decrypt_into
    frame_length = header.frame_length
    message_id = header.message_id
    source = Source(reader)
    # Buffers sized by what is left when that is known (a small in-memory message, a
    # hostile header announcing large frames over a short body), else by the frame.
    record = IV_SIZE + frame_length + TAG_SIZE  # a non-final frame after its sequence number
    largest = _FINAL_FRAME_START.size + frame_length + TAG_SIZE  # a final frame of a full frame's length
    size = min(largest, max(_left_in_memory(reader, largest), _FINAL_FRAME_START.size + TAG_SIZE))
    ins = [memoryview(bytearray(size)) for _ in range(2)]
    plain = memoryview(bytearray(max(size - IV_SIZE - TAG_SIZE, 0)))
    marks = [memoryview(bytearray(4)) for _ in range(2)]
    sequence = 1
    total = 0
    while True:
        which = sequence & 1
        mark, buf = marks[which], ins[which]  # alternating, as in _seal_frames
        if source.fill(mark) != 4:
            raise InvalidCiphertextException()
        (first,) = _U32.unpack(mark)
        if first == SEQUENCE_NUMBER_END:
            start = buf[: _FINAL_FRAME_START.size]
            if source.fill(start) != len(start):
                raise InvalidCiphertextException()
            seq, iv, n = _FINAL_FRAME_START.unpack(start)
            if seq != sequence or n > frame_length:
                raise InvalidCiphertextException()
            sealed = buf[len(start): len(start) + n + TAG_SIZE]
            if len(sealed) != n + TAG_SIZE:  # a short buffer: the body is shorter than the length claims
                raise InvalidCiphertextException()
            final = True
        else:
            if first != sequence or sequence == MAX_FRAMES:
                raise InvalidCiphertextException()
            if len(buf) < record:
                raise InvalidCiphertextException()
            start = buf[:IV_SIZE]
            if source.fill(start) != IV_SIZE:
                raise InvalidCiphertextException()
            iv = bytes(start)
            n = frame_length
            sealed = buf[IV_SIZE: record]
            final = False
        if source.fill(sealed) != len(sealed):
            raise InvalidCiphertextException()
        out = plain[:n]
        try:
            decrypt_into(iv, sealed, _frame_aad(message_id, final, sequence, n), out)
        except InvalidTag:
            raise InvalidCiphertextException() from None
        if hasher is not None:
            hasher.update(mark, buf[: (len(start) + n + TAG_SIZE)])
        write_all(writer, out)
        total += n
        if progress is not None and n:
            progress(n)
        if final:
            return total
        sequence += 1


# -- Inspect ------------------------------------------------------------------
def inspect(reader: Any) -> tuple[Header, dict[str, Any]]:
    """Parse the header and walk the body without any key, in constant memory (``kmscli inspect``).

    Returns the header and what the body says of itself: ``frames``,
    ``header_bytes``, ``body_bytes``, ``plaintext_bytes``, ``footer`` (whether a
    signature footer is present: always for the signed suite), ``footer_bytes``
    and ``total_bytes``. Nothing here is authenticated. InvalidCiphertextException
    when the body is not a sequence of frames in order, ends early, or is followed
    by anything.
    """
    header = read_header(reader)
    source = Source(reader)
    frame_length = header.frame_length
    scratch = memoryview(bytearray(min(1 << 20, frame_length + TAG_SIZE)))
    small = memoryview(bytearray(_FINAL_FRAME_START.size))

    def skip(n: int) -> None:
        while n:
            step = min(n, len(scratch))
            if source.fill(scratch[:step]) != step:
                raise InvalidCiphertextException()
            n -= step

    frames = body = plaintext = 0
    sequence = 1
    while True:
        if source.fill(small[:4]) != 4:
            raise InvalidCiphertextException()
        (first,) = _U32.unpack(small[:4])
        if first == SEQUENCE_NUMBER_END:
            if source.fill(small) != len(small):
                raise InvalidCiphertextException()
            seq, _iv, n = _FINAL_FRAME_START.unpack(small)
            if seq != sequence or n > frame_length:
                raise InvalidCiphertextException()
            skip(n + TAG_SIZE)
            frames += 1
            body += 4 + len(small) + n + TAG_SIZE
            plaintext += n
            break
        if first != sequence or sequence == MAX_FRAMES:
            raise InvalidCiphertextException()
        skip(IV_SIZE + frame_length + TAG_SIZE)
        frames += 1
        body += 4 + IV_SIZE + frame_length + TAG_SIZE
        plaintext += frame_length
        sequence += 1
    footer_bytes = 0
    if header.signed:
        footer_bytes = 2 + len(_read_footer(source))
    if source.fill(scratch[:1]):
        raise InvalidCiphertextException()
    return header, {
        "frames": frames,
        "header_bytes": header.size,
        "body_bytes": body,
        "plaintext_bytes": plaintext,
        "footer": header.signed,
        "footer_bytes": footer_bytes,
        "total_bytes": header.size + body + footer_bytes,
    }
