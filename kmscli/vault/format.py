"""The vault file format, version 1, exactly as docs/vault.md lays it out."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..crypto import primitives as P

MAGIC = b"KMSVAULT"
FORMAT_VERSION = 1
#: The record store (kmscli/vault/records.py, docs/vault-v2.md): the same header, version 2,
#: kept in a clear table of a SQLite file instead of at the start of a sealed file.
RECORDS_FORMAT_VERSION = 2
KDF_ARGON2ID = 1
#: No KDF: the KEK is a data key of a remote KMS, unwrapped by its Decrypt (format 2 only, docs/root-key.md).
KDF_KMS = 2
SALT_SIZE = 16
VAULT_KEY_SIZE = 32
_FIXED = struct.Struct(">8sHBIII16s")  # magic, version, kdf id, m, t, p, salt
KDF_AAD_SIZE = _FIXED.size  # bytes 0..39: what the wrapped vault key's AAD covers
WRAPPED_KEY_SIZE = VAULT_KEY_SIZE + P.TAG_SIZE
HEADER_CHECKSUM_SIZE = 32
HEADER_SIZE = KDF_AAD_SIZE + P.NONCE_SIZE + WRAPPED_KEY_SIZE + HEADER_CHECKSUM_SIZE
MIN_FILE_SIZE = HEADER_SIZE + P.NONCE_SIZE + P.TAG_SIZE
MAX_BODY_SIZE = 64 * 1024 * 1024
# A KMS root key's header (docs/root-key.md): the key ARN and the KMS's CiphertextBlob, each with a
# 2-byte length, between the fixed fields and the wrap nonce, where the wrapped key's AAD covers them.
ROOT_ARN_MAX = 2048
ROOT_BLOB_MAX = 6144  # AWS KMS's limit on a CiphertextBlob
MAX_KMS_HEADER_SIZE = HEADER_SIZE + 4 + ROOT_ARN_MAX + ROOT_BLOB_MAX
#: The encryption context's key in every GenerateDataKey and Decrypt of a root key.
ROOT_CONTEXT_KEY = "kmscli:vault"
BODY_KEY_INFO = b"kmscli vault body v1"

# Bounds on KDF parameters a header may ask for: checked before Argon2 runs,
# so a crafted file cannot make kmscli allocate gigabytes or spin for minutes.
# They are exactly what `init` and `passwd` accept, so every vault kmscli can
# write opens, and a hostile header costs at most MAX_WORK_MIB_PASSES of
# Argon2 work (twice the default: about 1 s and 1 GiB on the project's machine).
MIN_MEMORY_KIB = 8 * 1024
MAX_MEMORY_KIB = 1024 * 1024
MIN_TIME, MAX_TIME = 1, 8
MIN_PARALLELISM, MAX_PARALLELISM = 1, 8
#: memory (MiB) x passes: the total work a header may ask for.
MAX_WORK_MIB_PASSES = 2048
# Below OWASP's Argon2id floor (19 MiB, t=2): allowed for tests, warned about.
WEAK_MEMORY_KIB = 19 * 1024
WEAK_TIME = 2

DEFAULT_MEMORY_KIB = 512 * 1024
DEFAULT_TIME = 2
DEFAULT_PARALLELISM = 4


@dataclass(frozen=True)
class KdfParams:
    memory_kib: int = DEFAULT_MEMORY_KIB
    time_cost: int = DEFAULT_TIME
    parallelism: int = DEFAULT_PARALLELISM

    def in_bounds(self) -> bool:
        return (
            MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB
            and MIN_TIME <= self.time_cost <= MAX_TIME
            and MIN_PARALLELISM <= self.parallelism <= MAX_PARALLELISM
            and (self.memory_kib // 1024) * self.time_cost <= MAX_WORK_MIB_PASSES
        )

    def bounds_error(self) -> str | None:
        """Why these parameters are refused (naming the rule), or None when they are in bounds."""
        m_mib = self.memory_kib // 1024
        if not MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB:
            lo, hi = MIN_MEMORY_KIB // 1024, MAX_MEMORY_KIB // 1024
            return f"--kdf-memory must be between {lo} and {hi} MiB (got {m_mib})"
        if not MIN_TIME <= self.time_cost <= MAX_TIME:
            return f"--kdf-time must be between {MIN_TIME} and {MAX_TIME} (got {self.time_cost})"
        if not MIN_PARALLELISM <= self.parallelism <= MAX_PARALLELISM:
            return f"--kdf-parallelism must be between {MIN_PARALLELISM} and {MAX_PARALLELISM} (got {self.parallelism})"
        if m_mib * self.time_cost > MAX_WORK_MIB_PASSES:
            return (f"--kdf-memory x --kdf-time must be at most {MAX_WORK_MIB_PASSES} MiB-passes "
                    f"(got {m_mib} x {self.time_cost} = {m_mib * self.time_cost})")
        return None

    def is_weak(self) -> bool:
        return self.memory_kib < WEAK_MEMORY_KIB or self.time_cost < WEAK_TIME


@dataclass(frozen=True)
class RootKey:
    """A vault key's KEK held by a remote KMS: the KMS key's ARN and the data key it made, encrypted.

    ``root_id`` (the header's salt field: random, new at every init and
    passwd) names this wrapping in the encryption context, so the blob
    decrypts only for this vault header's wrapping (docs/root-key.md).
    """

    arn: str
    blob: bytes
    root_id: bytes

    @property
    def context(self) -> dict[str, str]:
        return root_context(self.root_id)


def root_context(root_id: bytes) -> dict[str, str]:
    """The encryption context of a root key's GenerateDataKey and Decrypt: ``{"kmscli:vault": hex(root id)}``."""
    return {ROOT_CONTEXT_KEY: root_id.hex()}


@dataclass(frozen=True)
class Header:
    kdf: KdfParams
    salt: bytes
    wrap_nonce: bytes
    wrapped_vault_key: bytes
    raw: bytes  # the header's bytes as stored, checksum included (HEADER_SIZE with a passphrase)
    #: The KMS root key (KDF id 2), or None for a passphrase's Argon2id KEK.
    root_key: RootKey | None = None

    @property
    def kdf_aad(self) -> bytes:
        """What the wrapped vault key's AAD covers: the fixed fields, and a root key's ARN and blob."""
        if self.root_key is None:
            return self.raw[:KDF_AAD_SIZE]
        return self.raw[: len(self.raw) - P.NONCE_SIZE - WRAPPED_KEY_SIZE - HEADER_CHECKSUM_SIZE]


def derive_kek(passphrase: bytes, header: Header) -> bytes:
    kdf = header.kdf
    return P.argon2id(passphrase, header.salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism)


def build_header(kdf: KdfParams, salt: bytes, kek: bytes, vault_key: bytes, wrap_nonce: bytes,
                 *, version: int = FORMAT_VERSION) -> Header:
    fixed = _FIXED.pack(MAGIC, version, KDF_ARGON2ID, kdf.memory_kib, kdf.time_cost, kdf.parallelism, salt)
    wrapped = P.seal(kek, wrap_nonce, vault_key, fixed)
    unsummed = fixed + wrap_nonce + wrapped
    raw = unsummed + hashlib.sha256(unsummed).digest()
    return Header(kdf=kdf, salt=salt, wrap_nonce=wrap_nonce, wrapped_vault_key=wrapped, raw=raw)


def build_kms_header(root: RootKey, kek: bytes, vault_key: bytes, wrap_nonce: bytes) -> Header:
    """A format-2 header whose vault key is wrapped by ``kek``, the plaintext of ``root``'s blob."""
    arn = root.arn.encode("ascii")
    if not 0 < len(arn) <= ROOT_ARN_MAX or not 0 < len(root.blob) <= ROOT_BLOB_MAX or len(root.root_id) != SALT_SIZE:
        raise errors.ValidationException("the KMS root key's ARN or CiphertextBlob is too long for a vault header")
    # No KDF: its parameters are zeros; the salt field holds the root id (the encryption context's value).
    fixed = _FIXED.pack(MAGIC, RECORDS_FORMAT_VERSION, KDF_KMS, 0, 0, 0, root.root_id)
    aad = fixed + struct.pack(">H", len(arn)) + arn + struct.pack(">H", len(root.blob)) + root.blob
    wrapped = P.seal(kek, wrap_nonce, vault_key, aad)
    unsummed = aad + wrap_nonce + wrapped
    raw = unsummed + hashlib.sha256(unsummed).digest()
    return Header(kdf=KdfParams(0, 0, 0), salt=root.root_id, wrap_nonce=wrap_nonce, wrapped_vault_key=wrapped,
                  raw=raw, root_key=root)


def _check_version(data: bytes, version: int) -> None:
    """Magic bytes, then the format version: a newer one is refused before anything else is parsed."""
    if len(data) < len(MAGIC) + 2 or data[: len(MAGIC)] != MAGIC:
        raise errors.VaultCorruptException("the vault file is not a kmscli vault (bad magic bytes)")
    (found,) = struct.unpack_from(">H", data, len(MAGIC))
    if found > version:
        raise errors.VaultVersionException(
            f"vault format version {found} is newer than this kmscli understands ({version}); upgrade kmscli"
        )
    if found != version:
        raise errors.VaultCorruptException(f"the vault file has an unknown format version {found}")


def _parse_fields(raw: bytes) -> Header:
    """Checksum, KDF id and KDF bounds of exactly HEADER_SIZE bytes whose version was checked."""
    if not P.constant_time_equal(hashlib.sha256(raw[:-HEADER_CHECKSUM_SIZE]).digest(), raw[-HEADER_CHECKSUM_SIZE:]):
        raise errors.VaultCorruptException("the vault header is damaged (checksum mismatch); restore it from a backup")
    _magic, version, kdf_id, m, t, p, salt = _FIXED.unpack_from(raw)
    if kdf_id == KDF_KMS and version == RECORDS_FORMAT_VERSION:
        return _parse_kms_fields(raw, (m, t, p), salt)
    if kdf_id != KDF_ARGON2ID:
        raise errors.VaultCorruptException(f"the vault names an unknown KDF (id {kdf_id})")
    if len(raw) != HEADER_SIZE:
        raise errors.VaultCorruptException(f"the vault header is {len(raw)} bytes long, not {HEADER_SIZE}")
    kdf = KdfParams(m, t, p)
    if not kdf.in_bounds():
        raise errors.VaultCorruptException(
            f"the vault's KDF parameters are out of bounds (m={m} KiB, t={t}, p={p}); refusing to derive"
        )
    off = KDF_AAD_SIZE
    wrap_nonce = raw[off : off + P.NONCE_SIZE]
    wrapped = raw[off + P.NONCE_SIZE : off + P.NONCE_SIZE + WRAPPED_KEY_SIZE]
    return Header(kdf=kdf, salt=salt, wrap_nonce=wrap_nonce, wrapped_vault_key=wrapped, raw=raw)


def _parse_kms_fields(raw: bytes, kdf: tuple[int, int, int], root_id: bytes) -> Header:
    """A KMS root key's header (checksum checked): the ARN and blob, each within its bound, then the wrap."""
    if kdf != (0, 0, 0):
        raise errors.VaultCorruptException("the vault's KMS root key header has KDF parameters")
    end = len(raw) - HEADER_CHECKSUM_SIZE - WRAPPED_KEY_SIZE - P.NONCE_SIZE
    off = KDF_AAD_SIZE
    fields = []
    for bound in (ROOT_ARN_MAX, ROOT_BLOB_MAX):
        if off + 2 > end:
            raise errors.VaultCorruptException("the vault's KMS root key header is truncated")
        (n,) = struct.unpack_from(">H", raw, off)
        if not 0 < n <= bound or off + 2 + n > end:
            raise errors.VaultCorruptException("the vault's KMS root key header has a field out of bounds")
        fields.append(raw[off + 2 : off + 2 + n])
        off += 2 + n
    if off != end:
        raise errors.VaultCorruptException("the vault's KMS root key header has bytes after its fields")
    try:
        arn = fields[0].decode("ascii")
    except UnicodeDecodeError:
        raise errors.VaultCorruptException("the vault's KMS root key ARN is not ASCII") from None
    root = RootKey(arn=arn, blob=fields[1], root_id=root_id)
    return Header(kdf=KdfParams(0, 0, 0), salt=root_id, wrap_nonce=raw[end : end + P.NONCE_SIZE],
                  wrapped_vault_key=raw[end + P.NONCE_SIZE : end + P.NONCE_SIZE + WRAPPED_KEY_SIZE], raw=raw,
                  root_key=root)


def parse_header(data: bytes) -> Header:
    """Parse and bound-check the header; no secret needed, nothing derived."""
    _check_version(data, FORMAT_VERSION)
    if len(data) < MIN_FILE_SIZE:
        raise errors.VaultCorruptException(
            f"the vault file is truncated ({len(data)} bytes, a vault has at least {MIN_FILE_SIZE})"
        )
    header = _parse_fields(data[:HEADER_SIZE])
    if len(data) - HEADER_SIZE - P.NONCE_SIZE > MAX_BODY_SIZE + P.TAG_SIZE:
        raise errors.VaultCorruptException("the vault body is larger than kmscli allows (64 MiB)")
    return header


def parse_records_header(raw: bytes) -> Header:
    """The header row of a format-2 record store: the same layout and checks, version 2, nothing after it."""
    _check_version(raw, RECORDS_FORMAT_VERSION)
    if not HEADER_SIZE <= len(raw) <= MAX_KMS_HEADER_SIZE:
        raise errors.VaultCorruptException(f"the vault header is {len(raw)} bytes long, not {HEADER_SIZE}")
    return _parse_fields(raw)


def unwrap_vault_key(header: Header, kek: bytes) -> bytes:
    """Open the wrapped vault key; a tag failure here means the wrong passphrase.

    With a KMS root key it means a header whose ARN or blob was swapped (the
    KMS decrypted the blob, so the KEK is the blob's): the file is corrupt.
    """
    try:
        return P.open_(kek, header.wrap_nonce, header.wrapped_vault_key, header.kdf_aad)
    except P.AuthenticationFailed:
        if header.root_key is not None:
            raise errors.VaultCorruptException(
                "the key the KMS unwrapped does not open this vault's key: the vault header's root key "
                "(its ARN or wrapped blob) was altered or swapped; restore the vault from a backup") from None
        raise errors.IncorrectPassphraseException(
            "the passphrase does not unlock this vault; check it and try again"
        ) from None


def body_key(vault_key: bytes) -> bytes:
    return P.hkdf(vault_key, BODY_KEY_INFO)


def seal_body(header: Header, vault_key: bytes, body: dict[str, Any], nonce: bytes | None = None) -> bytes:
    """Return the whole file: header, then the body sealed under the vault key."""
    nonce = nonce or P.random_bytes(P.NONCE_SIZE)
    plain = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if len(plain) > MAX_BODY_SIZE:
        raise errors.LimitExceededException("the vault would grow past 64 MiB; delete unused keys first")
    return header.raw + nonce + P.seal(body_key(vault_key), nonce, plain, header.raw)


def open_body(data: bytes, header: Header, vault_key: bytes) -> dict[str, Any]:
    return parse_body(open_body_bytes(data, header, vault_key))


def open_body_bytes(data: bytes, header: Header, vault_key: bytes) -> bytes:
    """The body's plaintext (JSON bytes), after its integrity check."""
    nonce = data[HEADER_SIZE : HEADER_SIZE + P.NONCE_SIZE]
    try:
        return P.open_(body_key(vault_key), nonce, data[HEADER_SIZE + P.NONCE_SIZE :], header.raw)
    except P.AuthenticationFailed:
        raise errors.VaultCorruptException(
            "the vault body failed its integrity check (modified or truncated); restore it from a backup"
        ) from None


def parse_body(plain: bytes) -> dict[str, Any]:
    try:
        body = json.loads(plain)
    except ValueError:
        raise errors.VaultCorruptException("the vault body is not valid JSON") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT_VERSION:
        raise errors.VaultCorruptException("the vault body has an unknown layout")
    return body
