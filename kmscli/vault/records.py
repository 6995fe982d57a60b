"""The vault as sealed records in one SQLite file: format version 2 (docs/vault-v2.md).

A change touches only what it changes and a read reads only what it needs:

* every record is one row, keyed by a keyed hash of its kind (8 bytes, the
  same for every row of the kind) then of its kind and name (16 bytes, the
  record's id), its value sealed with AES-256-GCM bound to both;
* rows fall into 65,536 leaf buckets by the first two bytes of their id; each
  bucket's digest (a MAC over its rows) sits in one of 256 clear "mid" nodes,
  and the 256 mid digests sit in the sealed metadata, with the generation. A
  read verifies one bucket, one mid node and the sealed root; a write rewrites
  one bucket's rows, one mid node and the metadata;
* rows of a kind form a chain in id order (each row names the next one), so a
  listing proves that nothing between two rows it returns was removed, as
  DNSSEC's NSEC3 proves that no name lies between two hashed names.

Nothing here trusts the file: it is read only after its clear header and its
schema were found to be exactly ours, with ``trusted_schema`` off, so no
trigger or view an attacker planted ever runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import json
import os
import re
import sqlite3
import stat
import struct
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import errors
from ..crypto import primitives as P
from . import format as F
from .files import check_private_file, open_regular

FORMAT_VERSION = F.RECORDS_FORMAT_VERSION
#: SQLite's application_id (file offset 68): ASCII "KMSV", so `file` can tell what this is.
APPLICATION_ID = 0x4B4D5356
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER_SIZE = 100
LOCK_SUFFIX = ".lock"

# HKDF labels: one per purpose, salt = 32 zero bytes, as format.py does.
INDEX_INFO = b"kmscli vault index v2"
RECORD_INFO = b"kmscli vault record v2"
TREE_INFO = b"kmscli vault tree v2"
META_INFO = b"kmscli vault meta v2"
# AAD prefixes (ASCII, then one zero byte, then what they bind).
RECORD_AAD = b"kmscli vault record v2\x00"
META_AAD = b"kmscli vault meta v2\x00"

ID_SIZE = 16
KIND_TAG_SIZE = 8
KEY_SIZE = KIND_TAG_SIZE + ID_SIZE  # a row's primary key: kind tag, then record id
DIGEST_SIZE = 16
FANOUT = 256
LEAVES = FANOUT * FANOUT  # 65,536 buckets, by the first two bytes of a row's id
MID_SIZE = FANOUT * DIGEST_SIZE  # 4,096 bytes: one mid node's leaf digests
TOP_SIZE = FANOUT * DIGEST_SIZE  # 4,096 bytes: the mid digests, sealed in the metadata
ZERO_DIGEST = bytes(DIGEST_SIZE)
ZERO_MID = bytes(MID_SIZE)

MAX_NAME_BYTES = 2048
MAX_VALUE_BYTES = 1024 * 1024  # a record's plaintext (its name and JSON value)
MAX_META_BYTES = 16 * 1024 * 1024
MAX_SEALED_VALUE = P.NONCE_SIZE + MAX_VALUE_BYTES + P.TAG_SIZE
MAX_SEALED_META = P.NONCE_SIZE + TOP_SIZE + MAX_META_BYTES + P.TAG_SIZE
MAX_SCAN_LIMIT = 10_000
_KIND_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")

#: Clean buckets a view keeps decoded (verified) at most; a write transaction keeps its dirty ones besides.
BUCKET_CACHE = 1024
PAGE_SIZE = 8192
BUSY_TIMEOUT_S = 60.0

SCHEMA: tuple[tuple[str, str, str, str], ...] = (
    ("table", "header", "header", "CREATE TABLE header (id INTEGER PRIMARY KEY CHECK (id = 1), raw BLOB NOT NULL)"),
    ("table", "meta", "meta", "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), sealed BLOB NOT NULL)"),
    ("table", "nodes", "nodes",
     "CREATE TABLE nodes (mid INTEGER PRIMARY KEY CHECK (mid BETWEEN 0 AND 255), digests BLOB NOT NULL)"),
    ("table", "records", "records",
     "CREATE TABLE records (key BLOB PRIMARY KEY, next BLOB, value BLOB NOT NULL) WITHOUT ROWID"),
)
_EXPECTED_SCHEMA = sorted(SCHEMA)

# SQLite's primary result codes that kmscli tells apart.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_TOOBIG, _SQLITE_FORMAT, _SQLITE_NOTADB = 18, 24, 26


# -- errors ---------------------------------------------------------------
def _corrupt(message: str) -> errors.VaultCorruptException:
    return errors.VaultCorruptException(message + "; restore the vault from a backup")


def _from_sqlite(e: sqlite3.Error, path: Path, action: str) -> errors.KmsError:
    """The project's error for what SQLite reported; SQLite's text names no secret."""
    if isinstance(e, sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return errors.KMSInternalException(f"internal error while {action} {path}: {e}")
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(e)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT, _SQLITE_TOOBIG) or "malformed" in text:
        return _corrupt(f"the vault {path} is damaged ({text})")
    if primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and _disk_full(path)):
        return errors.VaultFileError(f"cannot finish {action} {path}: the disk is full; the vault is unchanged")
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return errors.VaultFileError(f"the vault {path} stayed busy (locked by another process) while {action} it")
    return errors.VaultFileError(f"error while {action} the vault {path}: {text}")


def _disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has no block left (SQLite says "disk I/O error" when it
    cannot grow its WAL index there)."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


@contextlib.contextmanager
def _sqlite_errors(path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise _from_sqlite(e, path, action) from None
    except UnicodeDecodeError:  # text SQLite holds, damaged: we store only blobs and our schema
        raise _corrupt(f"the vault {path} is damaged: text in it is not UTF-8") from None


# -- derivations ------------------------------------------------------------
def _check_kind(kind: str) -> bytes:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValueError(f"a record kind is 1-32 characters a-z, 0-9, '_', '-' starting with a letter: {kind!r}")
    return kind.encode("ascii")


def _name_bytes(name: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError("a record name is a str")
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= MAX_NAME_BYTES:
        raise errors.ValidationException(f"a record name is 1 to {MAX_NAME_BYTES} bytes of UTF-8")
    return raw


class RecordKeys:
    """The four keys a vault key gives the record store, and what they compute."""

    __slots__ = ("index", "record", "tree", "meta", "_record_aead", "_meta_aead", "_tags")

    def __init__(self, vault_key: bytes) -> None:
        if len(vault_key) != F.VAULT_KEY_SIZE:
            raise ValueError("a vault key is 32 bytes")
        self.index = P.hkdf(vault_key, INDEX_INFO)
        self.record = P.hkdf(vault_key, RECORD_INFO)
        self.tree = P.hkdf(vault_key, TREE_INFO)
        self.meta = P.hkdf(vault_key, META_INFO)
        self._record_aead = P.aead(self.record)
        self._meta_aead = P.aead(self.meta)
        self._tags: dict[str, bytes] = {}

    def kind_tag(self, kind: str) -> bytes:
        """HMAC-SHA-256(index key, "kind" 0x00 kind)[:8]: which rows are of one kind, without naming it."""
        tag = self._tags.get(kind)
        if tag is None:
            tag = hmac.digest(self.index, b"kind\x00" + _check_kind(kind), "sha256")[:KIND_TAG_SIZE]
            self._tags[kind] = tag
        return tag

    def record_id(self, kind: str, name: str) -> bytes:
        """HMAC-SHA-256(index key, "record" 0x00 len(kind) kind name)[:16]."""
        k = _check_kind(kind)
        return hmac.digest(self.index, b"record\x00" + bytes([len(k)]) + k + _name_bytes(name), "sha256")[:ID_SIZE]

    def row_key(self, kind: str, name: str) -> bytes:
        """The row's primary key: kind tag (8 bytes), then record id (16 bytes)."""
        return self.kind_tag(kind) + self.record_id(kind, name)

    def seal_record(self, key: bytes, plaintext: bytes) -> bytes:
        nonce = P.random_bytes(P.NONCE_SIZE)
        return nonce + bytes(self._record_aead.encrypt(nonce, plaintext, RECORD_AAD + key))

    def open_record(self, key: bytes, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self._record_aead.decrypt(sealed[: P.NONCE_SIZE], sealed[P.NONCE_SIZE :], RECORD_AAD + key))
        except InvalidTag:
            raise P.AuthenticationFailed() from None

    def seal_meta(self, header_raw: bytes, plaintext: bytes) -> bytes:
        nonce = P.random_bytes(P.NONCE_SIZE)
        return nonce + bytes(self._meta_aead.encrypt(nonce, plaintext, META_AAD + header_raw))

    def open_meta(self, header_raw: bytes, sealed: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self._meta_aead.decrypt(sealed[: P.NONCE_SIZE], sealed[P.NONCE_SIZE :],
                                                 META_AAD + header_raw))
        except InvalidTag:
            raise P.AuthenticationFailed() from None

    def leaf_digest(self, bucket: int, rows: dict[bytes, _Row]) -> bytes:
        """MAC over a bucket's rows (of every kind) in key order; all zeros for an empty bucket."""
        if not rows:
            return ZERO_DIGEST
        parts = [b"leaf\x00", bucket.to_bytes(2, "big")]
        for key in sorted(rows):
            row = rows[key]
            nxt = row.next or b""
            parts += (key, bytes([len(nxt)]), nxt, len(row.value).to_bytes(4, "big"), row.value)
        return hmac.digest(self.tree, b"".join(parts), "sha256")[:DIGEST_SIZE]

    def mid_digest(self, mid: int, blob: bytes) -> bytes:
        """MAC over one mid node (256 leaf digests); all zeros when every leaf under it is empty."""
        if blob == ZERO_MID:
            return ZERO_DIGEST
        return hmac.digest(self.tree, b"mid\x00" + bytes([mid]) + blob, "sha256")[:DIGEST_SIZE]


def bucket_of(key: bytes) -> int:
    """A row's leaf bucket: the first two bytes of its record id (bytes 8 and 9 of its key)."""
    return (key[KIND_TAG_SIZE] << 8) | key[KIND_TAG_SIZE + 1]


def _after(prefix: bytes) -> bytes | None:
    """The smallest blob greater than every blob that starts with ``prefix`` (None: there is none)."""
    n = int.from_bytes(prefix, "big") + 1
    return None if n >> (8 * len(prefix)) else n.to_bytes(len(prefix), "big")


class _Row:
    """One row as stored: the id of the next row of its kind (None for the last) and its sealed value."""

    __slots__ = ("next", "value")

    def __init__(self, next_: bytes | None, value: bytes) -> None:
        self.next = next_
        self.value = value


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- the file ----------------------------------------------------------------
def _uri(path: Path, mode: str) -> str:
    return "file:" + urllib.parse.quote(str(path)) + "?mode=" + mode


def _check_sqlite_header(head: bytes, path: Path) -> None:
    """The 100-byte SQLite header, read by us before SQLite sees the file."""
    if len(head) < SQLITE_HEADER_SIZE:
        raise _corrupt(f"the vault {path} is truncated ({len(head)} bytes)")
    if head[: len(F.MAGIC)] == F.MAGIC:
        raise errors.VaultCorruptException(f"the vault {path} is a format-1 vault file, not a format-2 record store")
    if head[:16] != SQLITE_MAGIC:
        raise errors.VaultCorruptException(f"the file {path} is not a kmscli vault (bad magic bytes)")
    (user_version,) = struct.unpack_from(">I", head, 60)
    (app_id,) = struct.unpack_from(">I", head, 68)
    _check_ids(app_id, user_version, path)


def _check_ids(app_id: int, user_version: int, path: Path) -> None:
    if app_id != APPLICATION_ID:
        raise errors.VaultCorruptException(f"the file {path} is a SQLite database but not a kmscli vault")
    if user_version > FORMAT_VERSION:
        raise errors.VaultVersionException(
            f"vault format version {user_version} is newer than this kmscli understands ({FORMAT_VERSION}); "
            "upgrade kmscli"
        )
    if user_version != FORMAT_VERSION:
        raise errors.VaultCorruptException(f"the vault {path} has an unknown format version {user_version}")


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse any schema but ours: no extra table, index, view or trigger, nothing altered.

    Run first in every connection and transaction, before any statement that
    names one of our tables: until it passes, nothing of the file's schema is
    used but its text (which SQLite parses), and with ``trusted_schema`` off
    even that text can call no function with side effects.
    """
    try:
        rows = conn.execute("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master").fetchall()
    except UnicodeDecodeError:  # a damaged page: the schema's text is not even UTF-8
        raise _corrupt(f"the vault {path} has a damaged database schema (not text)") from None
    found = sorted((r[0], r[1], r[2], r[4]) for r in rows)
    if found != _EXPECTED_SCHEMA:
        ours = {s[1] for s in SCHEMA}
        extra = sorted({str(r[1]) for r in rows} - ours)
        what = f"unexpected {', '.join(extra)}" if extra else "altered or missing tables"
        raise _corrupt(f"the vault {path} has a database schema that is not kmscli's ({what})")
    roots = [r[3] for r in rows]
    if not all(isinstance(p, int) and p > 1 for p in roots) or len(set(roots)) != len(roots):
        raise _corrupt(f"the vault {path} has a damaged database schema (table roots)")


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    try:
        return _connect_as(path, "ro" if readonly else "rw", readonly)
    except sqlite3.OperationalError as e:
        code = getattr(e, "sqlite_errorcode", None)
        if not readonly or not isinstance(code, int) or code & 0xFF != _SQLITE_CANTOPEN \
                or os.path.lexists(str(path) + "-wal"):
            raise
    # A reader that cannot create the WAL's index beside the file (a read-only file system,
    # or a folder only root may write): with no WAL there is nothing but the file to read,
    # and nobody can write it through a WAL either, so it is read as it stands.
    return _connect_as(path, "ro&immutable=1", readonly)


def _connect_as(path: Path, mode: str, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(_uri(path, mode), uri=True, isolation_level=None,
                           timeout=BUSY_TIMEOUT_S, cached_statements=32)
    try:
        # Before the schema is read: no function with side effects from the file's schema,
        # every b-tree cell bounds-checked as it is read, and no blob larger than the
        # largest the format allows ever loaded (a planted 1 GB one is an error, not 1 GB).
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_SEALED_META + 1024)
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        conn.execute("PRAGMA mmap_size=0")
        # These read the database header (the newest copy of page 1, WAL included) without the schema.
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
        _check_ids(app_id, user_version, path)
        # Readers check the schema in each read transaction, before anything else; the writer here
        # too, before the journal-mode pragma, which reads the schema.
        if not readonly:
            _check_schema(conn, path)
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            # 32 MiB of page cache (SQLite's default is 2 MiB): what bulk writes at 100,000 keys
            # need to stay linear (bench/RESULTS.md); a one-record write uses a few pages of it.
            conn.execute("PRAGMA cache_size=-32768")
    except BaseException:
        conn.close()
        raise
    return conn


class _Pinned:
    """The descriptors this process holds on one vault file (an inode), and how many users need them."""

    __slots__ = ("fds", "users")

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.users = 0


#: POSIX record locks belong to a process and its file, not to a descriptor: closing
#: ANY descriptor of a file drops every lock the process holds on it, SQLite's
#: included, which lets another process think no one has the vault open, fold and
#: delete its WAL under a writer that goes on writing into the deleted file. So a
#: descriptor this module opens on a vault file that has connections open in this
#: process is closed only once the last of them (every RecordStore on that file) is.
_PINNED: dict[tuple[int, int], _Pinned] = {}
_PIN_LOCK = threading.Lock()


def pin(path: Path) -> tuple[tuple[int, int], int, os.stat_result]:
    """A descriptor on the vault file at ``path`` (a private regular file of ours), kept until unpin()."""
    with _PIN_LOCK:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise errors.VaultFileError(f"cannot open the vault {path}: {e.strerror}") from None
        if st is not None and stat.S_ISREG(st.st_mode):
            held = _PINNED.get((st.st_dev, st.st_ino))
            if held is not None and held.fds:
                held.users += 1
                return (st.st_dev, st.st_ino), held.fds[0], st
        try:
            fd = open_regular(path, "the vault", follow=False)
        except FileNotFoundError:
            raise errors.VaultNotFoundException(
                f"no vault at {path}; create one with 'kmscli init' (or point --vault / KMSCLI_VAULT at yours)"
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise errors.VaultFileError(f"refusing to use the vault {path}: it is a symbolic link") from None
            raise errors.VaultFileError(f"cannot open the vault {path}: {e.strerror}") from None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        held = _PINNED.setdefault(key, _Pinned())
        held.fds.append(fd)  # a second one only when the file changed between lstat and open
        held.users += 1
        return key, fd, st


def unpin(key: tuple[int, int]) -> None:
    with _PIN_LOCK:
        held = _PINNED.get(key)
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del _PINNED[key]
            for fd in held.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


def read_file_header(path: Path, size: int = SQLITE_HEADER_SIZE) -> bytes:
    """The first ``size`` bytes of the vault file, read without ever dropping this process's locks on it."""
    key, fd, st = pin(path)
    try:
        check_private_file(st, path, "the vault")
        return os.pread(fd, size, 0)
    except OSError as e:
        raise errors.VaultFileError(f"cannot read the vault {path}: {e.strerror}") from None
    finally:
        unpin(key)


def _open_file_header(path: Path) -> tuple[bytes, os.stat_result, tuple[int, int]]:
    """The file's first bytes and status, with the file pinned (the caller unpins it)."""
    key, fd, st = pin(path)
    try:
        check_private_file(st, path, "the vault")
        return os.pread(fd, SQLITE_HEADER_SIZE, 0), st, key
    except OSError as e:
        unpin(key)
        raise errors.VaultFileError(f"cannot read the vault {path}: {e.strerror}") from None
    except BaseException:
        unpin(key)
        raise


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _meta_plain(top: bytes | bytearray, meta: dict[str, Any], kinds: dict[str, list[Any]]) -> bytes:
    body = _dumps({"format": FORMAT_VERSION, "meta": meta, "kinds": kinds})
    if len(body) > MAX_META_BYTES:
        raise errors.LimitExceededException("the vault's metadata would grow past 16 MiB")
    return bytes(top) + body


class RecordStore:
    """One record-store file: its clear header, checked, and connections to read and write it."""

    def __init__(self, path: Path, header: F.Header, identity: tuple[int, int], ro: sqlite3.Connection) -> None:
        self.path = path
        self.header = header
        self.lock_path = path.with_name(path.name + LOCK_SUFFIX)
        self._identity = identity
        self._idle: list[sqlite3.Connection] = [ro]
        self._rw: sqlite3.Connection | None = None
        self._keys: tuple[bytes, RecordKeys] | None = None
        self._pinned: tuple[int, int] | None = None
        #: What readers last verified (see _Snapshot): reused while the sealed metadata is byte-for-byte the same.
        self._snapshot: _Snapshot | None = None
        #: id(connection) -> the schema cookie under which its schema was last checked (see _checked_schema).
        self._schemas: dict[int, int] = {}

    # -- creating and opening --------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], header: bytes, vault_key: bytes,
               meta: dict[str, Any]) -> RecordStore:
        """Make a new store at ``path`` (which must not exist) holding ``meta`` and no record.

        The file is built under a temporary name (O_CREAT | O_EXCL | O_NOFOLLOW,
        mode 0600), made durable, then linked into place: a crash leaves no
        half-made vault, and an existing vault is never replaced.
        """
        path = Path(path)
        parsed = F.parse_records_header(header)
        keys = RecordKeys(vault_key)
        meta = dict(meta)
        meta.setdefault("generation", 0)
        if not isinstance(meta["generation"], int):
            raise ValueError("meta['generation'] must be an int")
        folder = path.parent
        tmp = folder / f".{path.name}.{os.urandom(6).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as e:
            raise errors.VaultFileError(f"cannot write in {folder}: {e.strerror}") from None
        try:
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            with _sqlite_errors(path, "creating"):
                conn = sqlite3.connect(_uri(tmp, "rw"), uri=True, isolation_level=None)
                try:
                    conn.execute("PRAGMA trusted_schema=OFF")
                    # 8 KiB pages: a record of up to ~2 KiB (a key with its policy and a few
                    # material versions) stays in its b-tree page; with 4 KiB pages one of over
                    # ~1 KiB took an overflow page of its own (4 KiB per key: bench/RECORDS.md).
                    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
                    conn.execute("BEGIN IMMEDIATE")
                    for _type, _name, _tbl, sql in SCHEMA:
                        conn.execute(sql)
                    conn.execute("INSERT INTO header (id, raw) VALUES (1, ?)", (parsed.raw,))
                    plain = _meta_plain(bytes(TOP_SIZE), meta, {})
                    conn.execute("INSERT INTO meta (id, sealed) VALUES (1, ?)", (keys.seal_meta(parsed.raw, plain),))
                    conn.execute("COMMIT")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.close()  # the last connection folds the WAL into the file and deletes it
            _fsync_path(tmp)
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "exists")
            # A WAL or shared-memory file left by a vault deleted without them would be
            # replayed into the new one: they belong to no vault now.
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path.with_name(path.name + suffix))
            os.link(tmp, path)  # never replaces, never follows a link planted at ``path``
            _fsync_path(folder, directory=True)
        except FileExistsError:
            raise errors.AlreadyExistsException(
                f"a vault already exists at {path}; kmscli never overwrites one") from None
        except OSError as e:
            raise errors.VaultFileError(f"cannot create the vault {path}: {e.strerror}") from None
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(OSError):
                    os.unlink(str(tmp) + suffix)
        store = cls.open(path)
        store._keys = (vault_key, keys)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RecordStore:
        """Check the file (ours, private, a regular file), its format version, its schema and its header.

        Needs no key and derives nothing: the KDF parameters are bound-checked
        by format.py before anyone runs Argon2 on them.
        """
        path = Path(path)
        head, st, pinned = _open_file_header(path)
        try:
            _check_sqlite_header(head, path)
            with _sqlite_errors(path, "opening"):
                conn = _connect(path, readonly=True)
                try:
                    conn.execute("BEGIN")
                    _check_schema(conn, path)
                    rows = conn.execute("SELECT id, raw FROM header").fetchall()
                    conn.execute("COMMIT")
                    if len(rows) != 1 or rows[0][0] != 1 or not isinstance(rows[0][1], bytes):
                        raise _corrupt(f"the vault {path} has no single header row")
                    header = F.parse_records_header(rows[0][1])
                    try:
                        now = os.lstat(path)
                    except OSError:
                        now = None
                    if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                        raise errors.VaultFileError(f"the vault {path} was replaced while it was being opened")
                except BaseException:
                    conn.close()
                    raise
        except BaseException:
            unpin(pinned)
            raise
        store = cls(path, header, (st.st_dev, st.st_ino), conn)
        store._pinned = pinned
        return store

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._schemas.clear()
        self._snapshot = None
        if self._rw is not None:
            self._rw.close()
            self._rw = None
        pinned, self._pinned = self._pinned, None
        if pinned is not None:
            unpin(pinned)  # after every connection: only now may its descriptors be closed

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def replaced(self) -> bool:
        """Whether another file now sits at the path (a ``passwd`` or restore renamed one in)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def same_file(self, st: os.stat_result) -> bool:
        """Whether ``st`` (an lstat of the path) is the file this store opened."""
        return (st.st_dev, st.st_ino) == self._identity

    def _keys_for(self, vault_key: bytes) -> RecordKeys:
        if self._keys is not None and hmac.compare_digest(self._keys[0], vault_key):
            return self._keys[1]
        keys = RecordKeys(vault_key)
        self._keys = (vault_key, keys)
        return keys

    # -- reading -----------------------------------------------------------------
    def reader(self, vault_key: bytes) -> RecordView:
        """A consistent snapshot (one read transaction) until ``close()``; use it as a context manager."""
        keys = self._keys_for(vault_key)
        with _sqlite_errors(self.path, "reading"):
            conn = self._idle.pop() if self._idle else _connect(self.path, readonly=True)
            try:
                conn.execute("BEGIN")
                self._checked_schema(conn)  # also fixes the snapshot: every read below sees this one
                return RecordView(self, conn, keys, shared=True)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._idle.append(conn)
                raise

    def _checked_schema(self, conn: sqlite3.Connection) -> None:
        """_check_schema, at the start of a transaction of one of this store's connections.

        SQLite runs every statement against the schema its connection parsed,
        and parses it again only when the file's schema cookie changes. So a
        connection whose schema was checked under the cookie the file still
        shows runs on that checked schema, whatever its text on disk says now:
        the check is made again only when the cookie moves (and at a
        connection's first transaction). It costs a third of the full check.
        """
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        if self._schemas.get(id(conn)) == version:
            return
        _check_schema(conn, self.path)
        self._schemas[id(conn)] = version

    def _release(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        self._idle.append(conn)

    # -- writing ----------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """A blocking exclusive ``flock`` on ``<vault>.lock``: writers queue in the kernel, in order.

        SQLite's own busy handler polls with sleeps and favours no one; under
        this lock a write transaction never waits for SQLite's.
        """
        flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                 | os.O_NONBLOCK)
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError as e:
            raise errors.VaultFileError(f"cannot open the vault lock {self.lock_path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise errors.VaultFileError(f"refusing to use the vault lock {self.lock_path}: not a regular file")
            check_private_file(st, self.lock_path, "the vault lock")
            os.set_blocking(fd, True)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def writer(self, vault_key: bytes, *, lock: bool = True) -> Iterator[RecordWriter]:
        """One IMMEDIATE transaction: committed (generation + 1, durable) on success, rolled back on error.

        With ``lock`` (the default) it runs under :meth:`write_lock`; pass
        ``lock=False`` when the caller already holds that lock.
        """
        with self.write_lock() if lock else contextlib.nullcontext():
            tx = self.begin(vault_key)
            try:
                yield tx
                tx.commit()
            finally:
                tx.close()

    def begin(self, vault_key: bytes) -> RecordWriter:
        """One IMMEDIATE transaction, ended by its ``commit()`` or ``close()`` (a rollback).

        The caller holds :meth:`write_lock` (or the same lock taken otherwise).
        """
        keys = self._keys_for(vault_key)
        with _sqlite_errors(self.path, "writing"):
            if self._rw is None:
                self._rw = _connect(self.path, readonly=False)
            conn = self._rw
            conn.execute("BEGIN IMMEDIATE")
        try:
            with _sqlite_errors(self.path, "writing"):
                self._checked_schema(conn)
                return RecordWriter(self, conn, keys)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise

    # -- maintenance -----------------------------------------------------------
    def fold(self) -> bool:
        """Checkpoint the whole WAL into the file and empty it; False when a reader kept part of it."""
        with _sqlite_errors(self.path, "checkpointing"):
            if self._rw is None:
                self._rw = _connect(self.path, readonly=False)
            busy = self._rw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        try:
            return busy == 0 and os.stat(str(self.path) + "-wal").st_size == 0
        except FileNotFoundError:
            return busy == 0

    def copy_to(self, dest: Path) -> None:
        """Copy the last commit, WAL included, into ``dest`` (an empty file of ours): one complete file.

        SQLite's online backup in one step, inside one read transaction: a
        consistent snapshot whatever other readers do, and pages copied as
        they are (nothing in them is interpreted, so nothing in them runs).
        """
        with _sqlite_errors(self.path, "copying"):
            src = self._idle.pop() if self._idle else _connect(self.path, readonly=True)
            try:
                dst = sqlite3.connect(_uri(dest, "rw"), uri=True, isolation_level=None)
                try:
                    dst.execute("PRAGMA trusted_schema=OFF")
                    src.backup(dst)
                finally:
                    dst.close()  # the last connection: the copy's own WAL folds into it and goes
            finally:
                self._release(src)

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (a backup of the file alone is then complete)."""
        with _sqlite_errors(self.path, "checkpointing"):
            if self._rw is None:
                self._rw = _connect(self.path, readonly=False)
            self._rw.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class _Snapshot:
    """What readers of one sealed metadata blob verified, kept by the store for the next reader.

    Everything here is a function of authenticated bytes: the metadata opened
    under the vault key, and tree nodes and buckets whose digests chain up to
    its sealed root. A later read transaction that finds the same sealed
    blob (compared byte for byte, under the same key) therefore sees the same
    records, and may use these instead of reading and checking them again; a
    blob that differs in any byte (a write, a rollback, a swapped file) is
    opened and verified from the start. A long-lived process (``kmscli
    serve``) reads the vault several times per request, and this is most of
    what each read cost.
    """

    __slots__ = ("keys", "sealed", "top", "meta", "kinds", "mids", "clean")

    def __init__(self, keys: RecordKeys, sealed: bytes, top: bytes, meta: dict[str, Any],
                 kinds: dict[str, list[Any]], mids: dict[int, bytes],
                 clean: OrderedDict[int, dict[bytes, _Row]]) -> None:
        self.keys = keys
        self.sealed = sealed
        self.top = top
        self.meta = meta
        self.kinds = kinds
        self.mids = mids
        self.clean = clean


class RecordView:
    """What a read transaction sees: verified records of one consistent snapshot.

    A reader (``shared``) shares what it verifies with the store's later
    readers of the same snapshot (see _Snapshot): its ``meta`` is its own
    dict, but the values in it are shared, so replace them, never change
    them in place. A writer shares nothing.
    """

    _cache_limit = BUCKET_CACHE

    def __init__(self, store: RecordStore, conn: sqlite3.Connection, keys: RecordKeys, *,
                 shared: bool = False) -> None:
        self._store = store
        self._conn = conn
        self._keys = keys
        self._path = store.path
        self._header_raw = store.header.raw
        self._dirty: dict[int, dict[bytes, _Row]] = {}
        self._closed = False
        row = conn.execute("SELECT id, sealed FROM meta").fetchall()
        if len(row) != 1 or row[0][0] != 1 or not isinstance(row[0][1], bytes) \
                or not P.NONCE_SIZE + TOP_SIZE + P.TAG_SIZE <= len(row[0][1]) <= MAX_SEALED_META:
            raise _corrupt("the vault's sealed metadata is missing or malformed")
        sealed: bytes = row[0][1]
        snap = store._snapshot if shared else None
        if snap is not None and snap.keys is keys and snap.sealed == sealed:
            self._top: bytes | bytearray = snap.top
            self._kinds: dict[str, list[Any]] = snap.kinds
            self._mids: dict[int, bytes] = snap.mids
            self._clean: OrderedDict[int, dict[bytes, _Row]] = snap.clean
            self.meta: dict[str, Any] = dict(snap.meta)
            return
        try:
            plain = keys.open_meta(self._header_raw, sealed)
        except P.AuthenticationFailed:
            raise _corrupt("the vault's sealed metadata failed its integrity check (altered, or not sealed "
                           "under this vault's key)") from None
        try:
            body = json.loads(plain[TOP_SIZE:])
            meta, kinds = body["meta"], body["kinds"]
            if body.get("format") != FORMAT_VERSION or not isinstance(meta, dict) or not isinstance(kinds, dict) \
                    or not isinstance(meta.get("generation"), int):
                raise ValueError
            #: kind -> [count, id of its first row]; every kind that has rows, and no other.
            self._kinds = {}
            for kind, (count, head) in kinds.items():
                if not isinstance(count, int) or count < 1 or not isinstance(head, str) or len(head) != 2 * ID_SIZE:
                    raise ValueError
                self._kinds[kind] = [count, bytes.fromhex(head)]
        except (ValueError, KeyError, TypeError):
            raise _corrupt("the vault's sealed metadata has an unknown layout") from None
        self._mids = {}
        self._clean = OrderedDict()
        self.meta = meta
        if shared:
            self._top = bytes(plain[:TOP_SIZE])
            store._snapshot = _Snapshot(keys, sealed, self._top, dict(meta), self._kinds, self._mids, self._clean)
        else:
            self._top = bytearray(plain[:TOP_SIZE])  # a writer folds its changes into it

    # -- the context-manager shape -------------------------------------------------
    def close(self) -> None:
        """End the read transaction; the view can no longer be used."""
        if not self._closed:
            self._closed = True
            self._store._release(self._conn)

    def __enter__(self) -> RecordView:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _live(self) -> None:
        if self._closed:
            raise errors.KMSInternalException("this vault view was closed")

    @property
    def generation(self) -> int:
        """The write generation this snapshot shows (to anchor against the audit log)."""
        return int(self.meta["generation"])

    # -- verification ---------------------------------------------------------------
    def _mid(self, m: int) -> bytes:
        blob = self._mids.get(m)
        if blob is not None:
            return blob
        expected = bytes(self._top[m * DIGEST_SIZE : (m + 1) * DIGEST_SIZE])
        if expected == ZERO_DIGEST:
            blob = ZERO_MID
        else:
            row = self._conn.execute("SELECT digests FROM nodes WHERE mid = ?", (m,)).fetchone()
            found = row[0] if row is not None else None
            if not isinstance(found, bytes) or len(found) != MID_SIZE:
                raise _corrupt("a node of the vault's record tree is missing or malformed")
            if not hmac.compare_digest(self._keys.mid_digest(m, found), expected):
                raise _corrupt("a node of the vault's record tree does not match the sealed root: the tree or "
                               "the vault's metadata was altered or rolled back")
            blob = found
        self._mids[m] = blob
        return blob

    def _bucket(self, b: int, kind: str) -> dict[bytes, _Row]:
        """Bucket ``b``'s rows, read and checked against the tree (or this transaction's own, if it changed them).

        A bucket holds rows of every kind: one key range per kind the vault
        lists, and one for ``kind`` (listed or not, so that a row planted
        under a kind the vault has no record of is seen too).
        """
        rows = self._dirty.get(b)
        if rows is not None:
            return rows
        rows = self._clean.get(b)
        if rows is not None:
            self._clean.move_to_end(b)
            return rows
        mid = self._mid(b >> 8)
        tags = {self._keys.kind_tag(k) for k in self._kinds}
        tags.add(self._keys.kind_tag(kind))
        args: list[bytes] = []
        parts: list[str] = []
        for tag in sorted(tags):
            lo = tag + b.to_bytes(2, "big")
            hi = _after(lo)
            if hi is None:
                parts.append("SELECT key, next, value FROM records WHERE key >= ?")
                args.append(lo)
            else:
                parts.append("SELECT key, next, value FROM records WHERE key >= ? AND key < ?")
                args += (lo, hi)
        rows = {}
        for key, nxt, value in self._conn.execute(" UNION ALL ".join(parts), args):
            if not (isinstance(key, bytes) and len(key) == KEY_SIZE
                    and (nxt is None or (isinstance(nxt, bytes) and len(nxt) == ID_SIZE))
                    and isinstance(value, bytes) and P.NONCE_SIZE + P.TAG_SIZE <= len(value) <= MAX_SEALED_VALUE):
                raise _corrupt(f"a malformed row was found while reading a {kind!r} record")
            rows[key] = _Row(nxt, value)
        slot = (b & 0xFF) * DIGEST_SIZE
        if not hmac.compare_digest(self._keys.leaf_digest(b, rows), mid[slot : slot + DIGEST_SIZE]):
            raise _corrupt(f"the vault's records failed their integrity check while reading a {kind!r} record: "
                           "a record was altered, added, removed, swapped or rolled back")
        self._clean[b] = rows
        if len(self._clean) > self._cache_limit:
            self._clean.popitem(last=False)
        return rows

    def _row(self, key: bytes, kind: str) -> _Row | None:
        return self._bucket(bucket_of(key), kind).get(key)

    def _open(self, kind: str, key: bytes, row: _Row, name: str | None = None) -> tuple[str, dict[str, Any]]:
        try:
            plain = self._keys.open_record(key, row.value)
        except P.AuthenticationFailed:
            raise _corrupt(f"a {kind!r} record failed to decrypt (altered, or moved from another row)") from None
        try:
            found_name, value = json.loads(plain)
        except (ValueError, TypeError):
            raise _corrupt(f"a {kind!r} record has an unknown layout") from None
        if not isinstance(found_name, str) or not isinstance(value, dict) or (name is not None and found_name != name):
            raise _corrupt(f"a {kind!r} record has an unknown layout")
        if name is None and not hmac.compare_digest(self._keys.row_key(kind, found_name), key):
            raise _corrupt(f"a {kind!r} record is stored under another record's key")
        return found_name, value

    def _head(self, kind: str) -> bytes | None:
        info = self._kinds.get(kind)
        return info[1] if info else None

    def _before(self, tag: bytes, key: bytes, *, inclusive: bool) -> bytes | None:
        """The key of the last row of kind ``tag`` before ``key`` (or at it), as the file says: not yet verified."""
        op = "<=" if inclusive else "<"
        row = self._conn.execute(
            f"SELECT key FROM records WHERE key > ? AND key {op} ? ORDER BY key DESC LIMIT 1", (tag, key)).fetchone()
        return row[0] if row is not None and isinstance(row[0], bytes) and len(row[0]) == KEY_SIZE else None

    def _chain_start(self, kind: str, tag: bytes, key: bytes | None) -> bytes | None:
        """The id of the first row of ``kind`` after ``key`` (from the start with None), proven by the chain."""
        head = self._head(kind)
        if key is None:
            return head
        rid = key[KIND_TAG_SIZE:]
        prev = self._before(tag, key, inclusive=True)
        if prev is None:
            if head is not None and head <= rid:
                raise _broken(kind)
            return head
        row = self._row(prev, kind)
        if row is None:
            raise _broken(kind)
        if row.next is not None and row.next <= rid:
            raise _broken(kind)  # a row between ``prev`` and ``key`` is gone
        return row.next

    # -- the reading interface -------------------------------------------------------
    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The record's value, or None when the vault (verifiably) holds no such record."""
        self._live()
        key = self._keys.row_key(kind, name)
        with _sqlite_errors(self._path, "reading"):
            row = self._row(key, kind)
        return None if row is None else self._open(kind, key, row, name)[1]

    def scan(self, kind: str, after: str | None = None, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` records of ``kind`` following the one named ``after``, in a stable order (by record id).

        Pass the last name returned as ``after`` to get the next page; a short
        page means the end. Every row returned is verified, and so is the
        chain between them, so a row removed or added in between is noticed.
        """
        self._live()
        if not 0 < limit <= MAX_SCAN_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_SCAN_LIMIT}")
        tag = self._keys.kind_tag(kind)
        start = self._keys.row_key(kind, after) if after is not None else None
        end = _after(tag)
        out: list[tuple[str, dict[str, Any]]] = []
        with _sqlite_errors(self._path, "reading"):
            expected = self._chain_start(kind, tag, start)
            if end is None:
                cur = self._conn.execute("SELECT key FROM records WHERE key > ? ORDER BY key LIMIT ?",
                                         (start or tag, limit))
            else:
                cur = self._conn.execute("SELECT key FROM records WHERE key > ? AND key < ? ORDER BY key LIMIT ?",
                                         (start or tag, end, limit))
            keys = [r[0] for r in cur]
            for key in keys:
                if not isinstance(key, bytes) or len(key) != KEY_SIZE or key[KIND_TAG_SIZE:] != expected:
                    raise _broken(kind)
                row = self._row(key, kind)
                if row is None:
                    raise _broken(kind)
                out.append(self._open(kind, key, row))
                expected = row.next
            if len(keys) < limit and expected is not None:
                raise _broken(kind)
        return out

    def count(self, kind: str) -> int:
        """How many records of ``kind`` the vault holds (kept in the sealed metadata)."""
        self._live()
        _check_kind(kind)
        info = self._kinds.get(kind)
        return int(info[0]) if info else 0

    def kinds(self) -> list[str]:
        """The kinds that have at least one record."""
        return sorted(self._kinds)


def _broken(kind: str) -> errors.VaultCorruptException:
    return _corrupt(f"the vault's list of {kind!r} records is broken: a record was removed, added or rolled back")


class RecordWriter(RecordView):
    """A write transaction: reads see its own writes; ``meta`` may be changed in place."""

    def __init__(self, store: RecordStore, conn: sqlite3.Connection, keys: RecordKeys) -> None:
        super().__init__(store, conn, keys)
        self._start_generation = self.generation
        self._start_meta = _dumps(self.meta)
        self._changed = False
        self._failed = False
        self.committed = False

    def close(self) -> None:
        """End the transaction: rolled back unless it was committed; idempotent."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")

    def commit(self) -> None:
        """Fold the changes into the tree, seal the metadata with generation + 1, and commit (durably)."""
        try:
            with _sqlite_errors(self._path, "writing"):
                self._commit()
        except BaseException:
            self.close()
            raise

    def _for_write(self, b: int, kind: str) -> dict[bytes, _Row]:
        rows = self._dirty.get(b)
        if rows is None:
            rows = self._bucket(b, kind)
            self._clean.pop(b, None)
            self._dirty[b] = rows
        return rows

    @contextlib.contextmanager
    def _change(self) -> Iterator[None]:
        """A put or delete that fails half-way leaves the transaction unable to commit."""
        try:
            yield
        except BaseException:
            self._failed = True
            raise

    def put(self, kind: str, name: str, value: dict[str, Any]) -> None:
        """Create or replace a record. A refused argument leaves the transaction as it was."""
        self._live()
        if not isinstance(value, dict):
            raise TypeError("a record's value is a dict")
        tag = self._keys.kind_tag(kind)
        key = self._keys.row_key(kind, name)
        plain = _dumps([name, value])
        if len(plain) > MAX_VALUE_BYTES:
            raise errors.LimitExceededException(f"a {kind!r} record would be larger than 1 MiB")
        sealed = self._keys.seal_record(key, plain)
        with self._change():
            self._put(kind, tag, key, sealed)
            self._changed = True

    def delete(self, kind: str, name: str) -> bool:
        """Remove a record; False when there was none."""
        self._live()
        tag = self._keys.kind_tag(kind)
        key = self._keys.row_key(kind, name)
        with self._change():
            done = self._delete(kind, tag, key)
            self._changed |= done
        return done

    def _put(self, kind: str, tag: bytes, key: bytes, sealed: bytes) -> None:
        rid = key[KIND_TAG_SIZE:]
        with _sqlite_errors(self._path, "writing"):
            rows = self._for_write(bucket_of(key), kind)
            old = rows.get(key)
            if old is not None:
                rows[key] = _Row(old.next, sealed)
                self._conn.execute("UPDATE records SET value = ? WHERE key = ?", (sealed, key))
            else:
                prev = self._before(tag, key, inclusive=False)
                if prev is not None:
                    prow = self._row(prev, kind)
                    if prow is None or (prow.next is not None and prow.next <= rid):
                        raise _broken(kind)
                    nxt = prow.next
                    self._for_write(bucket_of(prev), kind)[prev] = _Row(rid, prow.value)
                    self._conn.execute("UPDATE records SET next = ? WHERE key = ?", (rid, prev))
                else:
                    nxt = self._head(kind)
                    if nxt is not None and nxt <= rid:
                        raise _broken(kind)
                info = self._kinds.setdefault(kind, [0, rid])
                info[0] += 1
                if prev is None:
                    info[1] = rid
                rows[key] = _Row(nxt, sealed)
                self._conn.execute("INSERT INTO records (key, next, value) VALUES (?, ?, ?)", (key, nxt, sealed))

    def _delete(self, kind: str, tag: bytes, key: bytes) -> bool:
        rid = key[KIND_TAG_SIZE:]
        with _sqlite_errors(self._path, "writing"):
            row = self._row(key, kind)
            if row is None:
                return False
            rows = self._for_write(bucket_of(key), kind)
            prev = self._before(tag, key, inclusive=False)
            info = self._kinds.get(kind)
            if info is None:
                raise _broken(kind)
            if prev is not None:
                prow = self._row(prev, kind)
                if prow is None or prow.next != rid:
                    raise _broken(kind)
                self._for_write(bucket_of(prev), kind)[prev] = _Row(row.next, prow.value)
                self._conn.execute("UPDATE records SET next = ? WHERE key = ?", (row.next, prev))
            else:
                if info[1] != rid:
                    raise _broken(kind)
                info[1] = row.next
            del rows[key]
            self._conn.execute("DELETE FROM records WHERE key = ?", (key,))
            info[0] -= 1
            if (info[0] == 0) != (info[1] is None):
                raise _broken(kind)
            if info[0] == 0:
                del self._kinds[kind]
        return True

    def _commit(self) -> None:
        """Fold the changed buckets into the tree, seal the metadata with generation + 1, and commit."""
        self._live()
        if self._failed:
            raise errors.KMSInternalException("a change in this vault transaction failed; it was rolled back")
        if not self._changed and _dumps(self.meta) == self._start_meta:
            self._conn.execute("ROLLBACK")  # nothing changed: nothing to make durable
            self._closed = True
            return
        keys = self._keys
        mids: dict[int, bytearray] = {}
        for b, rows in self._dirty.items():
            m = b >> 8
            if m not in mids:
                mids[m] = bytearray(self._mid(m))
            slot = (b & 0xFF) * DIGEST_SIZE
            mids[m][slot : slot + DIGEST_SIZE] = keys.leaf_digest(b, rows)
        for m, blob in mids.items():
            data = bytes(blob)
            digest = keys.mid_digest(m, data)
            if digest == ZERO_DIGEST:
                self._conn.execute("DELETE FROM nodes WHERE mid = ?", (m,))
            else:
                self._conn.execute("INSERT OR REPLACE INTO nodes (mid, digests) VALUES (?, ?)", (m, data))
            top = self._top
            assert isinstance(top, bytearray)  # a writer's own, never a shared snapshot's
            top[m * DIGEST_SIZE : (m + 1) * DIGEST_SIZE] = digest
            self._mids[m] = data
        self.meta["generation"] = self._start_generation + 1
        kinds = {k: [v[0], v[1].hex()] for k, v in self._kinds.items()}
        sealed = keys.seal_meta(self._header_raw, _meta_plain(self._top, self.meta, kinds))
        self._conn.execute("UPDATE meta SET sealed = ? WHERE id = 1", (sealed,))
        self._conn.execute("COMMIT")
        self._closed = True
        self.committed = True
