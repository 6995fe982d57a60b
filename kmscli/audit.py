"""The audit log: append-only JSON Lines with a MAC chain; reader; verifier.

``docs/audit.md`` is the format; the constants below are named after it. The
service builds the CloudTrail-shaped part of each record and calls
:meth:`AuditLog.append`; this module adds the CloudTrail bookkeeping fields and
the chain, writes the line durably under a lock, rotates files, and checks a
log with :meth:`AuditLog.verify`. It imports the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .crypto.primitives import constant_time_equal, hkdf, hmac_sha256
from .errors import AuditLogException, AuditVerificationException

EVENT_VERSION = "1.08"
EVENT_SOURCE = "kms.local"
DEFAULT_EVENT_TYPE = "AwsApiCall"
EVENT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

CHAIN_KEY_INFO = b"kmscli audit chain v1"
GENESIS_LABEL = b"kmscli-audit-genesis"
UNKEYED_LINK_LABEL = b"kmscli-audit-unkeyed-link v1"
LINK_SIZE = 32
CHAIN_KEY_SIZE = 32

SEQ_FIELD = "chainSeq"
PREV_FIELD = "chainPrev"
MAC_FIELD = "chainMac"
KEYED_FIELD = "keyed"
#: Fields the log sets; a record handed to append must not carry them.
LOG_FIELDS = frozenset({"eventVersion", "eventSource", "eventID", SEQ_FIELD, PREV_FIELD, MAC_FIELD, KEYED_FIELD})

#: Bound on one line, so that neither append nor verify can be made to hold an
#: arbitrary amount in memory (AWS caps a key policy at 32 KiB).
MAX_LINE_BYTES = 1024 * 1024
MAX_DEPTH = 32
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
SEGMENT_DIGITS = 6
LOCK_SUFFIX = ".lock"
READ_BLOCK = 1 << 16
LOCK_TIMEOUT_S = 120.0
FILE_MODE = 0o600
DIR_MODE = 0o700

#: The only errors a record written without the key may carry: a call that
#: failed before the vault was unlocked. Anything else unkeyed is a forgery.
UNKEYED_ERROR_CODES = frozenset({
    "IncorrectPassphraseException", "PassphraseRequiredException", "InvalidSessionException",
    "SessionAgentException", "UnlockException", "RootKeyUnavailableException",
})
#: Where a keyed record says which vault write generation it saw (service-set).
GENERATION_FIELD = "vaultGeneration"

#: Field names (lower-cased, letters and digits only) that would hold a secret.
SECRET_NAME_PARTS = ("plaintext", "ciphertextblob", "passphrase", "password", "privatekey", "secretkey")
SECRET_NAMES = frozenset({"keymaterial", "datakey", "vaultkey", "rootkey", "chainkey"})
#: Fields of requestParameters / responseElements that name a key, for read().
KEY_FIELDS = ("keyId", "sourceKeyId", "destinationKeyId", "targetKeyId", "aliasName")

#: fdatasync flushes the data and the size, not timestamps; macOS has only fsync.
_sync = getattr(os, "fdatasync", os.fsync)
#: Seams for tests that make the disk fill up or fail.
_write = os.write
_HEX_LINK = re.compile(r"[0-9a-f]{64}")
_NON_ALNUM = re.compile(r"[^a-z0-9]")
_SECRET_PART = re.compile("|".join(SECRET_NAME_PARTS))


def chain_key(vault_key: bytes) -> bytes:
    """Derive the audit chain key from the vault key (used for nothing else)."""
    return hkdf(vault_key, info=CHAIN_KEY_INFO)


@dataclass(frozen=True)
class ChainHead:
    """Where the log ends: the vault stores this at each write to detect a cut tail."""

    file_index: int
    seq: int
    mac: str


@dataclass(frozen=True)
class KeyRing:
    """The chain keys of a log by record number: ``passwd`` starts a new key at a new record.

    ``entries`` is ((first seq, key), ...) in ascending order, the first at seq 1.
    A key opens only its own range, so whoever holds an old key (an old vault
    copy and the old passphrase) cannot write a record the current key covers.
    """

    entries: tuple[tuple[int, bytes], ...]

    @classmethod
    def single(cls, key: bytes) -> KeyRing:
        return cls(((1, key),))

    def key_for(self, seq: int) -> bytes:
        found = self.entries[0][1]
        for first, key in self.entries:
            if first > seq:
                break
            found = key
        return found

    @property
    def current(self) -> bytes:
        return self.entries[-1][1]


def _ring(key: bytes | KeyRing) -> KeyRing:
    if isinstance(key, KeyRing):
        for _, k in key.entries:
            _check_key(k)
        return key
    _check_key(key)
    return KeyRing.single(key)


@dataclass(frozen=True)
class Tail:
    """The end of a log as an opening command checks it (see :meth:`AuditLog.tail`)."""

    #: (seq, mac, file index) of the last record, or None for an empty log.
    last: ChainHead | None
    #: The last record written with the key, parsed, or None if there is none. (Of a record this
    #: process wrote, only its chain fields and the vault generation it records: what a tail is for.)
    last_keyed: dict[str, Any] | None
    #: Its line (without the newline), to check its MAC.
    last_keyed_line: bytes = b""
    #: The chain key this process sealed it with, when it wrote it itself (its MAC needs no check).
    sealed_with: bytes | None = None


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`AuditLog.verify` found in an intact log."""

    records: int
    files: int
    keyed: int
    unkeyed: int
    last_head: ChainHead | None
    #: Unkeyed records: failed unlocks, which anyone could have written; never
    #: counted as proven, whatever follows them.
    unproven: int = 0
    #: Where they are: "line N" (or "file F line N").
    unauthenticated: tuple[str, ...] = ()


# -- the chain ---------------------------------------------------------------


def canonical(record: dict[str, Any]) -> bytes:
    """The one serialization of a record: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def genesis_link(key: bytes | None, vault_id: str) -> bytes:
    """``mac_0``: binds the chain to the vault (and, when keyed, to its key)."""
    data = GENESIS_LABEL + vault_id.encode("utf-8")
    return hmac_sha256(key, data) if key is not None else hashlib.sha256(data).digest()


def link(key: bytes | None, prev: bytes, body: bytes) -> bytes:
    """``mac_n`` from ``mac_{n-1}`` and the canonical record without its MAC."""
    if key is not None:
        return hmac_sha256(key, prev + body)
    # Anyone can compute this: it only matters once a keyed record covers it.
    return hashlib.sha256(UNKEYED_LINK_LABEL + prev + body).digest()


def record_mac_ok(key: bytes, rec: dict[str, Any]) -> bool:
    """Whether a parsed keyed record's MAC is right under ``key`` (its chainPrev as written)."""
    body = dict(rec)
    mac_hex = body.pop(MAC_FIELD)
    try:
        mac = link(key, bytes.fromhex(rec[PREV_FIELD]), canonical(body))
    except (TypeError, ValueError):
        return False
    return constant_time_equal(bytes.fromhex(mac_hex), mac)


def unkeyed_claim_error(rec: dict[str, Any]) -> str | None:
    """Why an unkeyed record cannot be genuine, or None when it is a failed unlock as it must be."""
    code = rec.get("errorCode")
    if code not in UNKEYED_ERROR_CODES:
        return (f"written without the key, but it is not a failed unlock (errorCode {code!r}): "
                "only a call that failed before the vault was unlocked is recorded without the key")
    if rec.get("responseElements") not in (None, {}):
        return "written without the key, but it claims a response: only failed unlocks are recorded without the key"
    return None


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != CHAIN_KEY_SIZE:
        raise ValueError(f"the audit chain key must be {CHAIN_KEY_SIZE} bytes (use chain_key(vault_key))")


# -- records -------------------------------------------------------------------


def _event_id() -> str:
    """A random UUID version 4, without importing ``uuid`` (2 ms at start-up)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_event_id = _event_id


def format_event_time(t: datetime) -> str:
    """CloudTrail's ``eventTime``: UTC, to the second, with a ``Z``."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime(EVENT_TIME_FORMAT)


@functools.lru_cache(maxsize=1024)
def _named_like_secret(name: str) -> bool:
    norm = _NON_ALNUM.sub("", name.lower())
    return norm in SECRET_NAMES or _SECRET_PART.search(norm) is not None


def _check_value(value: Any, where: str, depth: int) -> None:
    """Refuse what JSON cannot carry exactly and field names that would hold a secret."""
    if depth > MAX_DEPTH:
        raise AuditLogException(f"refusing to log the record: {where} nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditLogException(f"refusing to log the record: {where} is {value}, which JSON cannot carry")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise AuditLogException(f"refusing to log the record: {where} has a non-string field name {name!r}")
            if _named_like_secret(name):
                raise AuditLogException(
                    f"refusing to log the record: field {where}.{name} is named like a secret "
                    "(plaintext, ciphertext, passphrase or key material); the audit log never holds secrets"
                )
            _check_value(item, f"{where}.{name}", depth + 1)
        return
    # bytes above all: raw bytes in a record are most likely key material.
    raise AuditLogException(f"refusing to log the record: {where} is a {type(value).__name__}, not a JSON value")


def _prepare(record: dict[str, Any], now: datetime, event_id: str) -> dict[str, Any]:
    """The record as the log stores it, before the chain fields."""
    if not isinstance(record, dict):
        raise AuditLogException(f"refusing to log the record: it is a {type(record).__name__}, not a dict")
    owned = sorted(LOG_FIELDS.intersection(record))
    if owned:
        raise AuditLogException(f"refusing to log the record: it sets {', '.join(owned)}, which the audit log sets")
    rec = dict(record)
    t = rec.get("eventTime")
    if t is None:
        rec["eventTime"] = format_event_time(now)
    elif isinstance(t, datetime):
        rec["eventTime"] = format_event_time(t)
    elif not isinstance(t, str):
        raise AuditLogException(f"refusing to log the record: eventTime is a {type(t).__name__}, not a string")
    _check_value(rec, "record", 0)
    rec.setdefault("eventType", DEFAULT_EVENT_TYPE)
    rec["eventVersion"] = EVENT_VERSION
    rec["eventSource"] = EVENT_SOURCE
    rec["eventID"] = event_id
    return rec


def seal_record(rec: dict[str, Any], key: bytes | None, seq: int, prev: bytes) -> tuple[bytes, bytes]:
    """Add the chain fields to ``rec`` (in place); return its line and its link."""
    rec[SEQ_FIELD] = seq
    rec[PREV_FIELD] = prev.hex()
    rec[KEYED_FIELD] = key is not None
    rec.pop(MAC_FIELD, None)
    try:
        body = canonical(rec)
        mac = link(key, prev, body)
        rec[MAC_FIELD] = mac.hex()
        line = _with_mac(rec, body, rec[MAC_FIELD]) + b"\n"
    except (TypeError, ValueError) as e:  # a huge int, say: _check_value lets ints through
        raise AuditLogException(f"refusing to log the record: it cannot be written as JSON ({e})") from None
    if len(line) - 1 > MAX_LINE_BYTES:
        raise AuditLogException(
            f"refusing to log the record: its line would be {len(line) - 1} bytes, over the limit of {MAX_LINE_BYTES}"
        )
    return line, mac


def _with_mac(rec: dict[str, Any], body: bytes, mac_hex: str) -> bytes:
    """canonical(rec), given ``body`` = canonical(rec without its MAC): the MAC's member spliced in.

    With sorted keys every top-level member is written the same whatever its
    neighbours, so the members before the MAC's place are exactly
    canonical() of those members alone; only they are encoded again (they
    are a few short ones), not the whole record.
    """
    before = canonical({k: v for k, v in rec.items() if k < MAC_FIELD})
    member = b'"' + MAC_FIELD.encode("ascii") + b'":"' + mac_hex.encode("ascii") + b'"'
    head = before[:-1] + (b"," if len(before) > 2 else b"")
    rest = body[len(before) - 1:]
    if rest[:1] == b",":
        rest = rest[1:]
    return head + member + (b"," + rest if rest != b"}" else rest)


class _BadLine(Exception):
    """A line that is not a well-formed audit record (internal; carries the reason)."""


def parse_line(line: bytes, *, strict: bool = True) -> dict[str, Any]:
    """Parse one line (without its newline) as an audit record, or raise _BadLine.

    ``strict`` also requires the canonical form (verify); append only needs the
    chain fields of the last record and leaves the rest to verify.
    """
    if len(line) > MAX_LINE_BYTES:
        raise _BadLine(f"longer than the limit of {MAX_LINE_BYTES} bytes")
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _BadLine("not valid JSON") from None
    if not isinstance(rec, dict):
        raise _BadLine("not a JSON object")
    seq = rec.get(SEQ_FIELD)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise _BadLine(f"not an audit record: {SEQ_FIELD} is missing or not a positive integer")
    for name in (PREV_FIELD, MAC_FIELD):
        value = rec.get(name)
        if not isinstance(value, str) or not _HEX_LINK.fullmatch(value):
            raise _BadLine(f"not an audit record: {name} is missing or not 64 lowercase hex digits")
    if not isinstance(rec.get(KEYED_FIELD), bool):
        raise _BadLine(f"not an audit record: {KEYED_FIELD} is missing or not true/false")
    if not strict:
        return rec
    try:
        again = canonical(rec)
    except (TypeError, ValueError, RecursionError):
        again = b""
    if again != line:
        raise _BadLine("not in canonical form (changed after it was written)")
    return rec


def _is_record(line: bytes) -> bool:
    try:
        parse_line(line)
    except _BadLine:
        return False
    return True


def _parse_json_object(line: bytes) -> dict[str, Any] | None:
    """Lenient parse for read(): any JSON object, or None."""
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


# -- files -------------------------------------------------------------------


#: How far before ``since`` ``read(since=...)`` starts reading every line
#: (docs/audit.md, "Reading"): eventTime is stamped before the writer takes the
#: log's lock, and clocks step back, so times are only nearly in order.
SINCE_SLACK = timedelta(minutes=10)
#: What readers read at once when they go through a file, and when they look
#: for a single line (the start of ``read(since=...)``).
SCAN_BLOCK = 1 << 20
PROBE_BLOCK = 1 << 11
#: Seam: the reading side's reads of lines go through it, so tests can count the bytes.
_pread = os.pread
#: Length of the member '"chainMac":"<64 hex>",' in a line.
_MAC_MEMBER = 78
#: Seam: False makes verify check every line fully (tests compare the two ways).
_QUICK_CHECK = True


@dataclass
class _File:
    """One file of a snapshot: its name, number, and the size and identity it had under the lock.

    Only the live file is kept open (``fd``) from the snapshot on, since a
    rotation may rename it; older files never change and are opened one at a
    time when a reader gets to them, checked to be the same file (``ident``).
    """

    name: str
    index: int
    size: int
    ident: tuple[int, int]  # (st_dev, st_ino)
    fd: int = -1


@dataclass
class _Walk:
    """Where :meth:`AuditLog._verify` is in the chain, for the lines it checks fully."""

    files: list[_File]
    ring: KeyRing
    head: ChainHead | None
    witness: tuple[int, str] | None
    strict: bool
    seq: int = 0
    prev: bytes = b""
    prev_hex: bytes = b""
    prev_file: _File | None = None
    keyed: int = 0
    unkeyed: int = 0
    unauthenticated: list[str] = field(default_factory=list)
    head_seen: bool = False
    witness_seen: bool = False


def _oserror(e: OSError) -> str:
    code = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e}" + (f" ({code})" if code else "")


class FrozenLog:
    """The files of a log as :meth:`AuditLog.frozen` noted them: what a backup copies."""

    def __init__(self, log: AuditLog, parts: list[tuple[_File, int]], head: ChainHead | None) -> None:
        self._log = log
        self._parts = parts
        #: (name, length to copy) of each file, oldest first, the live file last.
        self.files = [(f.name, size) for f, size in parts]
        #: The last record within those lengths (None: the log is empty).
        self.head = head

    def open(self, i: int) -> contextlib.AbstractContextManager[int]:
        """A descriptor of the ``i``-th file (the same file, wherever a rotation renamed it): read it with pread."""
        return self._log._opened(self._parts[i][0])


class AuditLog:
    """An audit log at ``path`` (plus its older files ``path.000001``, ...)."""

    def __init__(
        self,
        path: Path | str,
        *,
        vault_id: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer (got {max_bytes!r})")
        self.path = Path(path)
        self.vault_id = vault_id
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout
        self.lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self._segment_re = re.compile(re.escape(self.path.name) + rf"\.(\d{{{SEGMENT_DIGITS},}})")
        #: (device, inode, number) of the live file as last seen: its number is
        #: the older files' count plus one, which changes only when a rotation
        #: (or `audit restart`) puts a new live file, with a new inode, in place.
        #: Saves listing the folder, whatever its size, at every append.
        self._live: tuple[int, int, int] | None = None
        #: (identity of the live file, its Tail) as this process last read or
        #: wrote it: a long-lived process (serve, a session's worker) re-reads
        #: the end only when the file changed (another inode, size, mtime or ctime).
        self._known_tail: tuple[tuple[int, ...], Tail] | None = None

    # -- names ------------------------------------------------------------------

    def _segment_path(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index:0{SEGMENT_DIGITS}d}")

    def _live_number(self, st: os.stat_result) -> int:
        """The number of the live file ``st`` (older files + 1), listing the folder only for a new live file."""
        live = self._live
        if live is not None and live[0] == st.st_dev and live[1] == st.st_ino:
            return live[2]
        segments = self._segments()
        number = (segments[-1][0] if segments else 0) + 1
        self._live = (st.st_dev, st.st_ino, number)
        return number

    def _segments(self) -> list[tuple[int, str]]:
        """Older files as (number, name), oldest first."""
        try:
            names = os.listdir(self.path.parent)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = self._segment_re.fullmatch(name)
            if m:
                found.append((int(m.group(1)), name))
        found.sort()
        return found

    # -- locking ----------------------------------------------------------------

    def _flock(self, fd: int, op: int) -> None:
        # Poll rather than block so a stopped process cannot hang us forever;
        # holders keep the lock for about a millisecond, so start small.
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0002
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise AuditLogException(
                    f"another process has held the audit log lock {self.lock_path} for over "
                    f"{self.lock_timeout:.0f} s; nothing was recorded"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.005)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the writers' lock, creating the folder and the lock file as needed."""
        try:
            fd, _ = _open_private(self.lock_path, os.O_RDWR, "audit log lock file")
        except FileNotFoundError:  # no folder yet
            self._ensure_folder()
            fd, _ = _open_private(self.lock_path, os.O_RDWR, "audit log lock file")
        try:
            self._flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        """Hold the readers' lock if there is a lock file we can open; never create one."""
        try:
            fd = _open_existing(self.lock_path)
        except FileNotFoundError:
            fd = -1  # no writer has run yet: read without it
        except AuditLogException:
            raise
        except OSError:
            fd = -1  # a read-only copy of a log: read without it
        if fd < 0:
            yield
            return
        try:
            self._flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _ensure_folder(self) -> None:
        folder = self.path.parent
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                pass
            except OSError as e:
                raise AuditLogException(f"cannot create the audit log folder {d}: {_oserror(e)}") from None
            else:
                os.chmod(d, DIR_MODE)  # mkdir's mode went through the umask

    def _fsync_folder(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- append -----------------------------------------------------------------

    def preflight(self) -> None:
        """Check that an append could open the log, without writing: AuditLogException if not.

        For streams whose output cannot be taken back (stdout): the checks an
        append makes on the file (type, owner, mode, writability, the folder)
        run before the first byte is released, so the common failures stop the
        operation while nothing has happened yet. A disk that fills in the
        meantime is still caught only by the append itself.
        """
        self._ensure_folder()
        if not self.path.exists():
            if not os.access(self.path.parent, os.W_OK | os.X_OK):
                raise AuditLogException(f"cannot create the audit log {self.path}: its folder is not writable")
            return
        fd, _ = self._open_live()
        os.close(fd)

    def exists(self) -> bool:
        """Whether any file of the log (live or older) is present."""
        try:
            return self.path.exists() or bool(self._segments())
        except OSError:  # no folder to hold one (a missing folder, or a file in its place)
            return False

    def append(self, record: dict[str, Any], key: bytes | KeyRing | None) -> ChainHead:
        """Add ``record`` to the log durably and return its head.

        ``key`` is the chain key (``chain_key(vault_key)``), or None for a call
        that failed before the vault was unlocked. Raises AuditLogException, and
        has recorded nothing, when the record cannot be written and synced.
        """
        return self.append_batch([record], key)[-1]

    def append_at(self, record: dict[str, Any], key: bytes | KeyRing | None, *, now: datetime,
                  event_id: str) -> ChainHead:
        """:meth:`append` with the clock and the event id given (the deterministic seam)."""
        return self.append_batch([record], key, now=now, event_ids=[event_id])[-1]

    def append_batch(
        self,
        records: list[dict[str, Any]],
        key: bytes | KeyRing | None,
        *,
        before_write: Callable[[list[str], list[ChainHead]], None] | None = None,
        next_key: bytes | None = None,
        switch_at: int | None = None,
        catch_up: Callable[[], list[str] | None] | None = None,
        now: datetime | None = None,
        event_ids: list[str] | None = None,
    ) -> list[ChainHead]:
        """Append ``records`` in order, durably, as one write; return their heads.

        ``key`` is the chain key (or the vault's key ring), None only for a call
        that failed before the vault was unlocked. ``before_write(lines, heads)``
        runs under the log's lock once the records are sealed and before any
        byte reaches the log: the service writes the vault there, carrying the
        lines, so that the vault and the log can never disagree about what was
        appended (the next command completes an append a crash cut short).
        From ``records[switch_at]`` on, records are sealed under ``next_key``
        (``passwd`` starts the new vault key's chain key inside its own write).
        ``catch_up()`` also runs under the lock, first: it returns the lines of a
        vault write this log may lack (a writer killed between its vault's
        rename and its append), which are appended before ``records``, so a
        caller that opened the vault earlier never chains past them.
        Raises AuditLogException, with nothing appended, when the records
        cannot be written; an exception from ``before_write`` propagates, with
        nothing appended.
        """
        ring = _ring(key) if key is not None else None
        if next_key is not None:
            _check_key(next_key)
        now = now or datetime.now(UTC)
        ids = event_ids or [_event_id() for _ in records]
        recs = [_prepare(r, now, i) for r, i in zip(records, ids, strict=True)]
        try:
            with self._exclusive():
                return self._append_locked(recs, ring, before_write, next_key, switch_at, catch_up)
        except OSError as e:
            raise AuditLogException(f"cannot append to the audit log {self.path}: {_oserror(e)}") from None

    def _append_locked(self, recs: list[dict[str, Any]], ring: KeyRing | None,
                       before_write: Callable[[list[str], list[ChainHead]], None] | None,
                       next_key: bytes | None, switch_at: int | None,
                       catch_up: Callable[[], list[str] | None] | None = None) -> list[ChainHead]:
        fd, created = self._open_live()
        try:
            st = os.fstat(fd)
            known = self._known_tail
            sealed_with: bytes | None = None
            if known is not None and known[0] == _identity(st):
                size = st.st_size  # as this process left it: ends with its last record, keyed
                last: dict[str, Any] | None = known[1].last_keyed
                sealed_with = known[1].sealed_with
            else:
                size, last = _repair_tail(fd), None
            missing = catch_up() if catch_up is not None else None
            if missing:
                size += self._complete_into(fd, size, missing)[0]
                last = sealed_with = None
            if last is None:
                last = self._last_before_append(fd, size)
            if last is None:
                seq, prev = 1, genesis_link(ring.key_for(1) if ring else None, self.vault_id)
            else:
                # Its MAC needs no check when this process sealed it, with the key the ring gives it.
                if ring is not None and last[KEYED_FIELD] \
                        and not (sealed_with is not None
                                 and constant_time_equal(sealed_with, ring.key_for(last[SEQ_FIELD]))) \
                        and not record_mac_ok(ring.key_for(last[SEQ_FIELD]), last):
                    # The vault was rewritten under another key after this call
                    # opened it (passwd), or the log is not this vault's.
                    raise AuditLogException(
                        f"the last record of the audit log {self.path} was written under another key than the "
                        "vault this call opened (the passphrase was changed meanwhile, or the log is not this "
                        "vault's); nothing was recorded; run the command again"
                    )
                seq, prev = last[SEQ_FIELD] + 1, bytes.fromhex(last[MAC_FIELD])
            lines: list[bytes] = []
            macs: list[str] = []
            k: bytes | None = None
            for i, rec in enumerate(recs):
                seq_i = seq + i
                switched = switch_at is not None and i >= switch_at
                k = next_key if switched else (ring.key_for(seq_i) if ring else None)
                line, mac = seal_record(rec, k, seq_i, prev)
                lines.append(line)
                macs.append(mac.hex())
                prev = mac
            data = b"".join(lines)
            index = self._live_number(st)
            rotate = size > 0 and size + len(data) > self.max_bytes
            if rotate:
                index += 1
            heads = [ChainHead(file_index=index, seq=seq + i, mac=m) for i, m in enumerate(macs)]
            if before_write is not None:
                try:
                    before_write([line[:-1].decode("ascii") for line in lines], heads)
                except BaseException:
                    if created:  # leave no empty log behind a vault that was never written (init)
                        with contextlib.suppress(OSError):
                            os.unlink(self.path)
                    raise
            if rotate:
                _sync(fd)  # a deferred sync must not leave a hole behind in the file rotated away
                os.close(fd)
                fd = -1
                os.rename(self.path, self._segment_path(index - 1))
                self._fsync_folder()
                fd, created = self._open_live()
                size = 0
                st = os.fstat(fd)
                self._live = (st.st_dev, st.st_ino, index)
            if created:
                self._fsync_folder()
            self._known_tail = None
            _write_line(fd, data, size)
            deferred = getattr(_DEFERRED, "fds", None)
            if deferred is not None and before_write is None:
                deferred.append(os.dup(fd))  # synced by the caller before it answers (see deferring_sync)
            else:
                _sync(fd)
            if k is not None:  # the last record is keyed: the tail is known
                line = lines[-1][:-1]
                # What parse_line would give of it, for what the tail is read for: its chain
                # fields and the vault generation it records (the line is our own canonical()).
                sealed = recs[-1]
                last_keyed = {f: sealed[f] for f in (SEQ_FIELD, PREV_FIELD, MAC_FIELD, KEYED_FIELD)}
                extra = sealed.get("additionalEventData")
                if isinstance(extra, dict) and GENERATION_FIELD in extra:
                    last_keyed["additionalEventData"] = {GENERATION_FIELD: extra[GENERATION_FIELD]}
                self._known_tail = (_identity(os.fstat(fd)),
                                    Tail(last=heads[-1], last_keyed=last_keyed, last_keyed_line=line,
                                         sealed_with=k))
            return heads
        finally:
            if fd >= 0:
                os.close(fd)

    def _open_live(self) -> tuple[int, bool]:
        """Open (or create, 0600) the live file for appending; refuse one we should not write."""
        try:
            return _open_private(self.path, os.O_RDWR | os.O_APPEND, "audit log")
        except OSError as e:
            raise AuditLogException(self._open_error(e)) from None

    def _open_error(self, e: OSError) -> str:
        if e.errno == errno.ELOOP:
            return f"the audit log {self.path} is a symbolic link; point the audit log option at the file itself"
        return f"cannot open the audit log {self.path} for appending: {_oserror(e)}"

    def _last_before_append(self, fd: int, size: int) -> dict[str, Any] | None:
        """The last record (parsed leniently): in the live file, else the newest older file."""
        if size > 0:
            return self._last_record(fd, size, self.path.name)
        for _, name in reversed(self._segments()):
            try:
                sfd = _open_existing(self.path.with_name(name))
            except FileNotFoundError:
                continue
            try:
                ssize = os.fstat(sfd).st_size
                if ssize > 0:
                    return self._last_record(sfd, ssize, name)
            finally:
                os.close(sfd)
        return None

    def _last_record(self, fd: int, size: int, name: str) -> dict[str, Any]:
        line = _last_line(fd, size)
        try:
            if line is None:
                raise _BadLine("its last line is longer than the limit")
            return parse_line(line, strict=False)
        except _BadLine as e:
            raise AuditLogException(
                f"the last record of the audit log file {self.path.with_name(name)} cannot be read ({e}); "
                "nothing was recorded; run 'kmscli audit verify' to see where the log is damaged"
            ) from None

    # -- the tail, as every command checks it ------------------------------------

    def tail(self) -> Tail:
        """The last record and the last keyed record, reading backwards from the end.

        Opens one file at a time. Unkeyed records after the last keyed one are
        passed over (they are failed unlocks, few in a genuine log).
        """
        last: ChainHead | None = None
        known = self._known_tail
        if known is not None:
            with contextlib.suppress(OSError):
                if known[0] == _identity(os.stat(self.path, follow_symlinks=False)):
                    return known[1]
        try:
            try:
                fd = _open_existing(self.path)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    number = self._live_number(st)
                    for rec, line in self._records_backwards(fd, st.st_size, self.path.name):
                        if last is None:
                            last = ChainHead(file_index=number, seq=rec[SEQ_FIELD], mac=rec[MAC_FIELD])
                        if rec[KEYED_FIELD]:
                            tail = Tail(last=last, last_keyed=rec, last_keyed_line=line)
                            if last.seq == rec[SEQ_FIELD]:  # kept only when the last record is the keyed one
                                self._known_tail = (_identity(st), tail)
                            return tail
                finally:
                    os.close(fd)
            for number, name in reversed(self._segments()):
                try:
                    fd = _open_existing(self.path.with_name(name))
                except FileNotFoundError:
                    continue
                try:
                    for rec, line in self._records_backwards(fd, os.fstat(fd).st_size, name):
                        if last is None:
                            last = ChainHead(file_index=number, seq=rec[SEQ_FIELD], mac=rec[MAC_FIELD])
                        if rec[KEYED_FIELD]:
                            return Tail(last=last, last_keyed=rec, last_keyed_line=line)
                finally:
                    os.close(fd)
        except OSError as e:
            raise AuditLogException(f"cannot read the audit log {self.path}: {_oserror(e)}") from None
        return Tail(last=last, last_keyed=None)

    def _records_backwards(self, fd: int, size: int, name: str) -> Iterator[tuple[dict[str, Any], bytes]]:
        """(record, line) of a file's complete lines, last first; a damaged one is an AuditLogException."""
        for line in _lines_backwards(fd, _complete_size(fd, size)):
            try:
                yield parse_line(line, strict=False), line
            except _BadLine as e:
                raise AuditLogException(
                    f"the audit log file {self.path.with_name(name)} ends with a damaged record ({e}); "
                    "run 'kmscli audit verify' to see where"
                ) from None

    def complete(self, lines: list[str]) -> int:
        """Append those of ``lines`` (a vault's last write) that a crash kept out of the log.

        Under the writers' lock: when the log ends just before the first of
        them, or inside them at the same MAC, the rest are appended as they
        were sealed. Returns how many were appended (0 when the log already
        holds them or does not end where they begin: the caller decides).
        """
        first = parse_line(lines[0].encode("ascii"), strict=False)
        if first[SEQ_FIELD] != 1 and not self.exists():
            return 0  # a deleted log is not recreated here: the caller reports it
        try:
            with self._exclusive():
                fd, created = self._open_live()
                try:
                    size = _repair_tail(fd)
                    _, added = self._complete_into(fd, size, lines)
                    if added and created:
                        self._fsync_folder()
                    return added
                finally:
                    os.close(fd)
        except OSError as e:
            raise AuditLogException(f"cannot append to the audit log {self.path}: {_oserror(e)}") from None

    def _complete_into(self, fd: int, size: int, lines: list[str]) -> tuple[int, int]:
        """Append the lines a crash kept out, where the log ends among them; return (bytes, records) added."""
        recs = [parse_line(line.encode("ascii"), strict=False) for line in lines]
        last = self._last_before_append(fd, size)
        last_seq = last[SEQ_FIELD] if last is not None else 0
        last_mac = last[MAC_FIELD] if last is not None else None
        todo = None
        for i, rec in enumerate(recs):
            if rec[SEQ_FIELD] == last_seq + 1 and (last_mac is None or rec[PREV_FIELD] == last_mac):
                todo = i
                break
            if rec[SEQ_FIELD] == last_seq and rec[MAC_FIELD] == last_mac:
                todo = i + 1
                break
        if todo is None or todo >= len(recs):
            return 0, 0
        data = "".join(line + "\n" for line in lines[todo:]).encode("ascii")
        _write_line(fd, data, size)
        _sync(fd)
        return len(data), len(lines) - todo

    def retire(self, suffix: str) -> list[str]:
        """Rename every file of the log to NAME + suffix (under the writers' lock); return the new names."""
        moved: list[tuple[Path, Path]] = []
        try:
            with self._exclusive():
                self._set_aside(suffix, moved)
                self._fsync_folder()
        except OSError as e:
            raise AuditLogException(f"cannot move the audit log {self.path} aside: {_oserror(e)}") from None
        return [new.name for _, new in moved]

    def replace(self, files: list[tuple[Path, str]], suffix: str, then: Callable[[], None] | None = None) -> list[str]:
        """Put another log's files in this one's place (``vault restore``); return the names the old files got.

        Under the writers' lock, so no append lands in between: every file of
        the log is renamed to NAME + suffix (kept, as :meth:`retire` keeps
        them), each ``(path, name)`` of ``files`` (older files first, the live
        file last; on this folder's file system) is renamed to ``name`` beside
        the log, the folder is synced, and ``then()`` (the vault's own
        replacement) runs before the lock is let go. If any step fails, the
        renames made are undone, so the log is the old one again.
        """
        done: list[tuple[Path, Path]] = []
        try:
            with self._exclusive():
                try:
                    self._set_aside(suffix, done)
                    kept = len(done)
                    for path, name in files:
                        new = self.path.with_name(name)
                        os.rename(path, new)
                        done.append((path, new))
                    self._fsync_folder()
                    if then is not None:
                        then()
                except BaseException:
                    for old, new in reversed(done):
                        with contextlib.suppress(OSError):
                            os.rename(new, old)
                    with contextlib.suppress(OSError):
                        self._fsync_folder()
                    raise
                finally:
                    self._live = self._known_tail = None
        except OSError as e:
            raise AuditLogException(f"cannot put the restored audit log in place of {self.path}: "
                                    f"{_oserror(e)}; it is unchanged") from None
        return [new.name for _, new in done[:kept]]

    def _set_aside(self, suffix: str, done: list[tuple[Path, Path]]) -> None:
        """Rename every file of the log to NAME + suffix, noting each (old, new) in ``done`` as it goes."""
        for _, name in [*self._segments(), (0, self.path.name)]:
            src = self.path.with_name(name)
            if not os.path.lexists(src):
                continue
            new = src.with_name(name + suffix)
            os.rename(src, new)
            done.append((src, new))

    # -- a frozen copy (vault backup) ------------------------------------------------

    @contextlib.contextmanager
    def frozen(self, first: Callable[[], None] | None = None) -> Iterator[FrozenLog]:
        """Every file of the log as it is now, for a copy that later appends and rotations leave unchanged.

        ``first()`` (the vault's copy) runs under the readers' lock, which
        keeps every appender out, and the files and their lengths are noted
        under it too: no record lands between the two. An older file never
        changes and the live file only grows (it stays open here, whatever a
        rotation renames), so the noted lengths can be copied after the lock
        is let go. The live file's length stops at its last complete line.
        """
        with contextlib.ExitStack() as stack:
            with self._shared():
                if first is not None:
                    first()
                files = stack.enter_context(self._snapshot())
            parts: list[tuple[_File, int]] = []
            head: ChainHead | None = None
            try:
                for f in files:
                    with self._opened(f) as fd:
                        size = _complete_size(fd, f.size)
                        if size:
                            rec = self._last_record(fd, size, f.name)
                            head = ChainHead(file_index=f.index, seq=rec[SEQ_FIELD], mac=rec[MAC_FIELD])
                    parts.append((f, size))
            except OSError as e:
                raise AuditLogException(f"cannot read the audit log {self.path}: {_oserror(e)}") from None
            yield FrozenLog(self, parts, head)

    # -- snapshot for readers ------------------------------------------------------

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[list[_File]]:
        """Note every file of the log, oldest first, with its size, under the shared lock.

        Older files are opened one at a time to check them and closed again: they
        never change once renamed, and readers open them again, one at a time,
        when they get to them (:meth:`_opened`). The live file stays open, since
        a rotation may rename it. So the set of files and their sizes are fixed
        here, whatever happens next, with at most two files of the log open.
        """
        files: list[_File] = []
        live = -1
        try:
            with self._shared():
                segments = self._segments()
                live_index = (segments[-1][0] if segments else 0) + 1
                for index, name in segments:
                    try:
                        fd = _open_existing(self.path.with_name(name))
                    except FileNotFoundError:
                        continue
                    try:
                        st = os.fstat(fd)
                    finally:
                        os.close(fd)
                    files.append(_File(name, index, st.st_size, (st.st_dev, st.st_ino)))
                try:
                    live = _open_existing(self.path)
                except FileNotFoundError:
                    pass
                else:
                    st = os.fstat(live)
                    files.append(_File(self.path.name, live_index, st.st_size, (st.st_dev, st.st_ino), live))
        except BaseException as e:
            if live >= 0:
                os.close(live)
            if isinstance(e, OSError):
                raise AuditLogException(f"cannot read the audit log {self.path}: {_oserror(e)}") from None
            raise
        try:
            yield files
        finally:
            if live >= 0:
                os.close(live)

    @contextlib.contextmanager
    def _opened(self, f: _File) -> Iterator[int]:
        """A descriptor of the snapshot's file ``f``: the live file's, or an older file's opened for the while."""
        if f.fd >= 0:
            yield f.fd
            return
        fd = self._reopen(f)
        try:
            yield fd
        finally:
            os.close(fd)

    def _reopen(self, f: _File) -> int:
        """Open the older file ``f`` of the snapshot again: the same file, wherever a rename put it."""
        try:
            fd = _open_existing(self.path.with_name(f.name))
        except FileNotFoundError:
            pass
        else:
            if _ident(fd) == f.ident:
                return fd
            os.close(fd)
        # Renamed since the snapshot: 'audit restart' sets every file aside as NAME.retired-...
        for name in os.listdir(self.path.parent):
            if not name.startswith(f.name + "."):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.path.with_name(name), follow_symlinks=False)
                if (st.st_dev, st.st_ino) == f.ident:
                    fd = _open_existing(self.path.with_name(name))
                    if _ident(fd) == f.ident:
                        return fd
                    os.close(fd)
        raise AuditLogException(
            f"the audit log file {f.name} was removed or replaced while it was being read; run the command again"
        )

    def _where(self, files: list[_File], f: _File, n: int) -> str:
        return f"line {n}" if len(files) <= 1 else f"file {f.name} line {n}"

    # -- head -----------------------------------------------------------------

    def head(self) -> ChainHead | None:
        """The last record's head (reads only the end of the last file), or None for an empty log."""
        with self._snapshot() as files:
            for f in reversed(files):
                try:
                    with self._opened(f) as fd:
                        size = _complete_size(fd, f.size)
                        if f.size - size <= MAX_LINE_BYTES:  # a whole record missing only its newline?
                            tail = os.pread(fd, f.size - size, size)
                            if tail and _is_record(tail):
                                rec = parse_line(tail)
                                return ChainHead(file_index=f.index, seq=rec[SEQ_FIELD], mac=rec[MAC_FIELD])
                        if size == 0:
                            continue
                        rec = self._last_record(fd, size, f.name)
                        return ChainHead(file_index=f.index, seq=rec[SEQ_FIELD], mac=rec[MAC_FIELD])
                except OSError as e:
                    raise AuditLogException(f"cannot read the audit log {self.path}: {_oserror(e)}") from None
        return None

    # -- read -----------------------------------------------------------------

    def read(
        self,
        *,
        key_id: str | None = None,
        operation: str | None = None,
        since: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield the records, oldest first, that match every filter given.

        ``key_id`` matches keyId-like fields of requestParameters/responseElements
        (key ARNs by key id, alias ARNs by alias name); ``operation`` matches
        eventName case-insensitively; ``since`` keeps eventTime >= since (naive = UTC).
        Lines are parsed, not verified: use verify() for that.

        With ``since``, reading starts near the first record at ``since -
        SINCE_SLACK``, found by bisection over the files and then over the byte
        offsets of one file; docs/audit.md ("Reading") says exactly what that
        guarantees when times are out of order.
        """
        want_key = _KeyMatcher(_key_name(key_id)) if key_id is not None else None
        want_op = operation.casefold() if operation is not None else None
        bound = None
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            with contextlib.suppress(OverflowError):  # nothing is older than that
                bound = since - SINCE_SLACK
        with self._snapshot() as files:
            first = self._first_file(files, bound) if bound is not None else 0
            for f in files[first:]:
                try:
                    with self._opened(f) as fd:
                        start = _start_offset(fd, f.size, bound) if bound is not None and f is files[first] else 0
                        n = 0
                        for lines, complete in _line_blocks(f, fd, start):
                            for line in lines:
                                n += 1
                                if not complete and not (f is files[-1] and _is_record(line)):
                                    if f is files[-1]:
                                        return  # an append cut short: not a record
                                    where = self._where(files, f, _line_number(fd, start, n))
                                    raise AuditLogException(f"{where}: incomplete line; run 'kmscli audit verify'")
                                rec = _parse_json_object(line)
                                if rec is None:
                                    where = self._where(files, f, _line_number(fd, start, n))
                                    raise AuditLogException(f"{where}: not a JSON object; run 'kmscli audit verify'")
                                # The key first: it learns what an alias stands for from every record read.
                                if want_key is not None and not want_key.matches(rec):
                                    continue
                                if want_op is not None and str(rec.get("eventName", "")).casefold() != want_op:
                                    continue
                                if since is not None:
                                    t = _parse_event_time(rec.get("eventTime"))
                                    if t is None:
                                        where = self._where(files, f, _line_number(fd, start, n))
                                        raise AuditLogException(f"{where}: eventTime is not an ISO 8601 time")
                                    if t < since:
                                        continue
                                yield rec
                except OSError as e:
                    raise AuditLogException(f"cannot read the audit log file {f.name}: {_oserror(e)}") from None

    def _first_file(self, files: list[_File], bound: datetime) -> int:
        """Where ``read(since)`` starts: a file such that every file before it ends with a record older than bound.

        Bisection over the files, each probe opening one file to read its last
        line. The last file is never passed over: it may end with a record
        missing only its newline.
        """
        lo, hi = 0, len(files) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            f = files[mid]
            try:
                with self._opened(f) as fd:
                    end = _complete_end(fd, f.size)
                    found = _probe(fd, end - 1, 0, end) if end else None
            except OSError as e:
                raise AuditLogException(f"cannot read the audit log file {f.name}: {_oserror(e)}") from None
            if found is not None and _older_than(found[2], bound):
                lo = mid + 1
            else:
                hi = mid
        return lo

    # -- verify ---------------------------------------------------------------

    def verify(self, key: bytes | KeyRing, head: ChainHead | None = None, *,
               witness: tuple[int, str] | None = None, strict: bool = False) -> VerifyReport:
        """Check every file of the log against the chain; raise on the first bad line.

        Raises AuditVerificationException("line N: ..." or "file F line N: ...").
        ``head`` is the vault's last stored head: the log must hold that record.
        ``witness`` is (seq, mac) printed earlier by ``audit head``: the log
        must still hold that record too. An unkeyed record that is not a failed
        unlock fails; with ``strict`` any unkeyed record fails.
        """
        ring = _ring(key)
        with self._snapshot() as files:
            return self._verify(files, ring, head, witness, strict)

    def _verify(self, files: list[_File], ring: KeyRing, head: ChainHead | None,
                witness: tuple[int, str] | None, strict: bool) -> VerifyReport:
        """Walk the files one at a time, checking each line quickly if it can be, fully if not.

        The quick check (docs/audit.md, "Verifying quickly") accepts a keyed line
        whose MAC, over the line's own bytes without its chainMac member, is
        right, with that member where canonical form puts it: such a line is
        byte for byte one the chain key sealed. Every other line, and every line
        the head or the witness names, gets :meth:`_check_line`, which parses
        it, checks its canonical form and every rule, and names what is wrong.
        """
        w = _Walk(files, ring, head, witness, strict)
        seq = 0  # the last record's seq, its link (raw and as written), in locals for speed
        prev = genesis_link(ring.key_for(1), self.vault_id)
        prev_hex = prev.hex().encode()
        quick = 0  # records the quick check accepted (all keyed)
        head_seq = head.seq if head is not None else -1
        witness_seq = witness[0] if witness is not None else -1
        inner = outer = hashlib.sha256()
        pads_until = 0  # the first seq the current key's pads do not cover
        compare = constant_time_equal
        quick_check = _QUICK_CHECK
        last_file: _File | None = None
        last_n = 0
        for f in files:
            n = 0
            try:
                with self._opened(f) as fd:
                    for lines, complete in _line_blocks(f, fd):
                        for line in lines:
                            n += 1
                            s = seq + 1
                            if quick_check and complete and s != head_seq and s != witness_seq:
                                if s >= pads_until:
                                    inner, outer, pads_until = _pads_for(ring, s)
                                i = line.find(b'"chain')
                                j = i + _MAC_MEMBER
                                after = b'"chainPrev":"%s","chainSeq":%d,' % (prev_hex, s)
                                if (
                                    i > 0
                                    and line.startswith(b'Mac":"', i + 6)
                                    and line.startswith(b'",', j - 2)
                                    and line.startswith(after, j)
                                    and line.find(b'"chain', j + len(after)) < 0
                                ):
                                    h = inner.copy()
                                    h.update(prev)
                                    h.update(line[:i])
                                    h.update(line[j:])
                                    o = outer.copy()
                                    o.update(h.digest())
                                    mac = o.digest()
                                    written = line[i + 12 : j - 2]
                                    if compare(mac.hex().encode(), written):
                                        seq, prev, prev_hex = s, mac, written
                                        quick += 1
                                        continue
                            w.seq, w.prev = seq, prev
                            w.prev_file = f if n > 1 else last_file
                            self._check_line(w, f, n, line, complete)
                            seq, prev, prev_hex = w.seq, w.prev, w.prev_hex
            except OSError as e:
                raise AuditLogException(f"cannot read the audit log file {f.name}: {_oserror(e)}") from None
            if n:
                last_file, last_n = f, n

        def bad(f: _File, n: int, what: str) -> AuditVerificationException:
            return AuditVerificationException(f"{self._where(files, f, n)}: {what}")

        if head is not None and not w.head_seen:
            if last_file is None:
                raise AuditVerificationException(
                    f"line 1: the log is empty, but the vault last recorded record {head.seq}: the log was removed"
                )
            raise bad(
                last_file,
                last_n + 1,
                f"the log ends after record {seq}, but the vault last recorded record {head.seq}: "
                "records were removed from the end",
            )
        if witness is not None and not w.witness_seen:
            where = f"line {last_n + 1}" if last_file is None else self._where(files, last_file, last_n + 1)
            raise AuditVerificationException(
                f"{where}: the log ends after record {seq}, but 'audit head' printed record {witness[0]}: "
                "the log (and perhaps the vault) was rolled back"
            )
        return VerifyReport(
            records=seq,
            files=len(files),
            keyed=quick + w.keyed,
            unkeyed=w.unkeyed,
            last_head=None if last_file is None else ChainHead(last_file.index, seq, prev_hex.decode("ascii")),
            unproven=w.unkeyed,
            unauthenticated=tuple(w.unauthenticated),
        )

    def _check_line(self, w: _Walk, f: _File, n: int, line: bytes, complete: bool) -> None:
        """Check one line fully against the chain so far (``w``), and move ``w`` past it; raise if it is bad."""
        files = w.files

        def bad(what: str) -> AuditVerificationException:
            return AuditVerificationException(f"{self._where(files, f, n)}: {what}")

        # A whole record that lacks only its final newline is checked like any other.
        if not complete and not (f is files[-1] and _is_record(line)):
            if f is files[-1]:
                raise bad(
                    "torn final line (no newline at the end): an append was cut short (disk full or "
                    "killed) and never acknowledged; the next append removes it"
                )
            raise bad("incomplete line (no newline) before the end of the log")
        try:
            rec = parse_line(line)
        except _BadLine as e:
            raise bad(str(e)) from None
        seq, prev, head, witness = w.seq, w.prev, w.head, w.witness
        rec_seq: int = rec[SEQ_FIELD]
        rec_keyed: bool = rec[KEYED_FIELD]
        rec_key = w.ring.key_for(rec_seq) if rec_keyed else None
        if seq == 0:
            prev = genesis_link(rec_key, self.vault_id)
        starts_file = f is not w.prev_file and w.prev_file is not None
        if rec_seq != seq + 1:
            if seq == 0:
                raise bad(f"the log begins at record {rec_seq}, not 1: its first records or files are missing")
            if rec_seq > seq + 1:
                what = f"record {rec_seq} follows record {seq}: records are missing or out of order here"
                if starts_file:
                    what += " (a file may be missing)"
                raise bad(what)
            raise bad(f"record {rec_seq} follows record {seq}: a record was copied, moved or inserted here")
        if not constant_time_equal(bytes.fromhex(rec[PREV_FIELD]), prev):
            if seq == 0:
                raise bad(
                    "the log does not begin with this vault's genesis link: it belongs to another vault "
                    "or was written under another key"
                )
            raise bad(f"{PREV_FIELD} is not the previous record's {MAC_FIELD}: the chain is broken here")
        body = dict(rec)
        mac_hex = body.pop(MAC_FIELD)
        mac = link(rec_key, prev, canonical(body))
        if not constant_time_equal(bytes.fromhex(mac_hex), mac):
            if rec_keyed:
                raise bad(f"{MAC_FIELD} does not match: the record was edited or written under another key")
            raise bad(f"{MAC_FIELD} does not match: the record (written without the key) was edited")
        if not rec_keyed:
            why = unkeyed_claim_error(rec)
            if why is not None:
                raise bad(why)
            if w.strict:
                raise bad("written without the key (a failed unlock that anyone could have written); "
                          "--strict accepts only keyed records")
            w.unauthenticated.append(self._where(files, f, n))
        if head is not None and rec_seq == head.seq:
            if f.index != head.file_index or not constant_time_equal(mac_hex.encode(), head.mac.encode()):
                raise bad(
                    f"record {rec_seq} is not the one the vault last recorded (file {head.file_index}, "
                    f"{MAC_FIELD} {head.mac[:16]}...): the log was replaced from here"
                )
            w.head_seen = True
        if witness is not None and rec_seq == witness[0]:
            if not constant_time_equal(mac_hex.encode(), witness[1].encode()):
                raise bad(f"record {rec_seq} is not the one 'audit head' printed ({witness[1][:16]}...): "
                          "the log was replaced or rolled back and rewritten from here")
            w.witness_seen = True
        if rec_keyed:
            w.keyed += 1
        else:
            w.unkeyed += 1
        w.seq, w.prev, w.prev_hex = rec_seq, mac, mac_hex.encode("ascii")


# -- file helpers --------------------------------------------------------------


def _open_private(path: Path, flags: int, what: str) -> tuple[int, bool]:
    """Open ``path``, creating it 0600 if missing; refuse a file we should not write.

    Returns the descriptor and whether this call created the file.
    """
    # O_NONBLOCK: a FIFO planted here must be refused, not waited on.
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    created = False
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
            created = True
        except FileExistsError:  # another process made it just now
            fd = os.open(path, flags)
    try:
        if created:
            os.fchmod(fd, FILE_MODE)  # the umask filtered the mode os.open used
        _check_private(os.fstat(fd), path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's content may have: a new file, a new size, a write or a metadata change."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _open_existing(path: Path) -> int:
    """Open a log file for reading without blocking or following a link; refuse a non-regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditLogException(f"refusing to read the audit log file {path}: it is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lines_backwards(fd: int, size: int) -> Iterator[bytes]:
    """The newline-terminated lines of the first ``size`` bytes, last first (without newlines)."""
    end = size - 1  # position of the newline ending the current line
    while end >= 0:
        line = _last_line(fd, end + 1)
        if line is None:
            raise AuditLogException("an audit log line is longer than the limit; run 'kmscli audit verify'")
        yield line
        end -= len(line) + 1


def _check_private(st: os.stat_result, path: Path, what: str) -> None:
    """Refuse a file we should not write: not regular, not ours, writable by others, or frozen."""
    if not stat.S_ISREG(st.st_mode):
        raise AuditLogException(f"refusing to use the {what} {path}: it is not a regular file")
    if st.st_uid != os.geteuid():
        raise AuditLogException(
            f"refusing to use the {what} {path}: it belongs to another user (uid {st.st_uid}, you are {os.geteuid()})"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AuditLogException(
            f"refusing to use the {what} {path}: it is writable by group or others (mode {mode:04o}); "
            f"make it private with 'chmod 600 {path}', then check it with 'kmscli audit verify'"
        )
    if not mode & stat.S_IWUSR:
        raise AuditLogException(f"refusing to write the {what} {path}: it is read-only (mode {mode:04o})")


def _write_line(fd: int, line: bytes, size: int) -> None:
    """Append ``line`` with one write (continuing a short one); on failure cut it back off."""
    try:
        done = _write(fd, line)
        while done < len(line):
            done += _write(fd, line[done:])
    except OSError:
        with contextlib.suppress(OSError):  # if this fails too, the next append removes it
            os.ftruncate(fd, size)  # leave no torn line behind (we hold the lock)
        raise


def _complete_size(fd: int, size: int) -> int:
    """``size`` cut back to just after the last newline (0 if there is none)."""
    pos = size
    chunk = 4096
    while pos > 0:
        start = max(0, pos - chunk)
        data = os.pread(fd, pos - start, start)
        i = data.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
        chunk = min(chunk * 2, 1 << 20)
    return 0


def _repair_tail(fd: int) -> int:
    """Deal with a last line that has no newline (call with the lock held); return the size.

    It is an append that never returned (SIGKILL, disk full). A whole record
    that lacks only its newline (an editor may drop it) is kept and completed;
    anything else is a fragment of a record nobody was told about, and is cut off.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    good = _complete_size(fd, size)
    if size - good <= MAX_LINE_BYTES and _is_record(os.pread(fd, size - good, good)):
        _write_line(fd, b"\n", size)
        return size + 1
    os.ftruncate(fd, good)
    return good


def _last_line(fd: int, size: int) -> bytes | None:
    """The last line of a file that ends in a newline (without it); None if over the limit."""
    end = size - 1  # the final newline
    pos = end
    chunk = 4096  # a typical record fits in one read, which is then all it takes
    data = b""
    while pos > 0:
        start = max(0, pos - chunk)
        data = os.pread(fd, pos - start, start) + data
        i = data.rfind(b"\n")
        if i >= 0:
            line = data[i + 1 :]
            return line if len(line) <= MAX_LINE_BYTES else None
        pos = start
        if end - pos > MAX_LINE_BYTES:
            return None
        chunk = min(chunk * 4, 1 << 20)
    return data if len(data) <= MAX_LINE_BYTES else None


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _line_blocks(f: _File, fd: int, pos: int = 0) -> Iterator[tuple[list[bytes], bool]]:
    """The lines of the snapshot's file ``f`` from byte ``pos`` (a line start) up to its noted size.

    Yields (lines without their newlines, True) a block of SCAN_BLOCK bytes at
    a time; then, if the file does not end in a newline, ([what follows the
    last one], False). A line longer than MAX_LINE_BYTES is cut to one byte
    over the limit and ends the file (the parsers refuse it), so memory stays
    bounded whatever the file holds.
    """
    rest = b""
    while pos < f.size:
        data = _pread(fd, min(SCAN_BLOCK, f.size - pos), pos)
        if not data:  # the file shrank under us (an append removed a torn tail)
            f.size = pos
            break
        pos += len(data)
        cut = data.rfind(b"\n")
        if cut < 0:
            rest += data
            if len(rest) > MAX_LINE_BYTES:
                yield [rest[: MAX_LINE_BYTES + 1]], True
                return
            continue
        lines = (rest + data[:cut] if rest else data[:cut]).split(b"\n")
        rest = data[cut + 1 :]
        yield lines, True
    if rest:
        yield [rest[: MAX_LINE_BYTES + 1]], len(rest) > MAX_LINE_BYTES


def _line_number(fd: int, start: int, n: int) -> int:
    """The number of the ``n``-th line read from byte ``start`` (only for messages: it reads what came before)."""
    pos = 0
    while pos < start:
        data = _pread(fd, min(SCAN_BLOCK, start - pos), pos)
        if not data:
            break
        n += data.count(b"\n")
        pos += len(data)
    return n


def _complete_end(fd: int, size: int) -> int:
    """Just after the last newline in the first ``size`` bytes (0 if none within a line's length of the end)."""
    pos = size
    while pos > 0 and size - pos <= MAX_LINE_BYTES:
        start = max(0, pos - PROBE_BLOCK)
        data = _pread(fd, pos - start, start)
        i = data.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def _probe(fd: int, pos: int, lo: int, end: int) -> tuple[int, int, bytes] | None:
    """The line holding byte ``pos``: (its start, where its newline is, the line), or None if it is over the limit.

    ``lo`` is a line start at or before ``pos``, ``end`` is just after a
    newline after it: the search goes no further either way. It reads
    PROBE_BLOCK bytes around ``pos`` first, which hold a typical line.
    """
    a = max(lo, pos - PROBE_BLOCK // 2)
    b = min(end, a + PROBE_BLOCK)
    buf = _pread(fd, b - a, a)
    grow = PROBE_BLOCK
    while len(buf) == b - a:  # else the file shrank
        i = buf.rfind(b"\n", 0, pos - a)
        start = a + i + 1 if i >= 0 else (lo if a == lo else -1)
        j = buf.find(b"\n", pos - a)
        if start >= 0 and j >= 0:
            return start, a + j, buf[start - a : j]
        if b - a > MAX_LINE_BYTES + PROBE_BLOCK:
            return None
        if start < 0:
            na = max(lo, a - grow)
            buf = _pread(fd, a - na, na) + buf
            a = na
        if j < 0:
            if b >= end:
                return None
            nb = min(end, b + grow)
            buf += _pread(fd, nb - b, b)
            b = nb
        grow *= 2
    return None


def _older_than(line: bytes, bound: datetime) -> bool:
    """Whether the line is a record whose eventTime is before ``bound`` (False for anything else)."""
    rec = _parse_json_object(line)
    t = _parse_event_time(rec.get("eventTime")) if rec is not None else None
    return t is not None and t < bound


def _start_offset(fd: int, size: int, bound: datetime) -> int:
    """A line start in the file from which ``read(since)`` reads every line: 0, or just after a record older than bound.

    Bisection over byte offsets: each probe reads the line that holds the
    middle byte. Soundness needs no order at all: the line just before the
    offset returned is always a record older than ``bound`` (or there is none).
    """
    end = _complete_end(fd, size)
    lo, hi = 0, end
    while lo < hi:
        mid = (lo + hi) // 2
        found = _probe(fd, mid, lo, end)
        if found is None:
            hi = mid
            continue
        start, stop, line = found
        if _older_than(line, bound):
            lo = stop + 1
        else:
            hi = start
    return lo


def _pads_for(ring: KeyRing, seq: int) -> tuple[Any, Any, int]:
    """HMAC-SHA-256 (RFC 2104) for record ``seq``'s key, its inner and outer hash states made once.

    Returns the two states and the first seq they no longer cover (the next
    key's first record). The same MAC as :func:`link` for keyed records, without
    hashing the padded key again for every record.
    """
    key = ring.entries[0][1]
    until = 1 << 63
    for first, k in ring.entries:
        if first > seq:
            until = first
            break
        key = k
    block = key.ljust(64, b"\0")  # chain keys are 32 bytes, under SHA-256's 64-byte block
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer, until


def _key_name(value: str) -> str:
    """A key reference reduced to what identifies it: key id, or alias/NAME."""
    if value.startswith("arn:"):
        parts = value.split(":", 5)
        if len(parts) == 6:
            value = parts[5]
    return value.removeprefix("key/")


def _names_in(rec: dict[str, Any]) -> set[str]:
    """Every key a record names (key ids and alias/NAMEs), however the caller named it: the request's and
    the answer's key fields, the key metadata, and the resources (a failed Decrypt names its key only there)."""
    names: set[str] = set()
    for section in ("requestParameters", "responseElements"):
        part = rec.get(section)
        if not isinstance(part, dict):
            continue
        for name in KEY_FIELDS:
            value = part.get(name)
            if isinstance(value, str):
                names.add(_key_name(value))
        meta = part.get("keyMetadata")
        if isinstance(meta, dict) and isinstance(meta.get("keyId"), str):
            names.add(_key_name(meta["keyId"]))
    resources = rec.get("resources")
    if isinstance(resources, list):
        for r in resources:
            if isinstance(r, dict) and isinstance(r.get("ARN"), str):
                names.add(_key_name(r["ARN"]))
    return names


class _KeyMatcher:
    """Whether records are about one key, read in order: for an alias, also the records of the key it
    stood for at the time (a Decrypt names the key only by its id).

    What an alias stands for is learned from the log as it is read: set by a
    successful CreateAlias or UpdateAlias, cleared by DeleteAlias, and taken
    from any successful call made through the alias (its answer names the key).
    """

    def __init__(self, want: str) -> None:
        self.want = want
        self.alias = want.startswith("alias/")
        self.targets: set[str] = set()

    def matches(self, rec: dict[str, Any]) -> bool:
        names = _names_in(rec)
        if self.alias and self.want in names and not rec.get("errorCode"):
            event = rec.get("eventName")
            request = rec.get("requestParameters")
            target = request.get("targetKeyId") if isinstance(request, dict) else None
            if event == "DeleteAlias":
                self.targets = set()
            elif event in ("CreateAlias", "UpdateAlias") and isinstance(target, str):
                self.targets = {_key_name(target)}
            else:
                keys = {n for n in names if not n.startswith("alias/")}
                if keys:
                    self.targets = keys
        return self.want in names or bool(self.targets & names)


def _parse_event_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


_DEFERRED = threading.local()


@contextlib.contextmanager
def deferring_sync() -> Iterator[list[int]]:
    """Appends made by this thread meanwhile are written but not yet synced: the caller syncs them.

    For ``kmscli serve``, which runs requests on its event loop's thread: a
    record is written under the log's lock as usual (so the chain and every
    other process see it at once), and the descriptors to ``fdatasync`` are
    collected in the yielded list (duplicates the caller must hand to
    :func:`sync_batch`, which closes them). The caller sends no answer before
    they are synced, so a response still never leaves before its record is on
    disk; one ``fdatasync`` then covers every request waiting at that moment.
    Appends that carry a vault write (``before_write``) sync at once, as ever.
    A rotation syncs the file it moves away first, so a crash never leaves a
    gap between a synced newer file and an older one.
    """
    fds: list[int] = []
    _DEFERRED.fds = fds
    try:
        yield fds
    finally:
        _DEFERRED.fds = None


def sync_batch(batch: list[list[int]]) -> list[OSError | None]:
    """``fdatasync`` what :func:`deferring_sync` collected for several requests; close the descriptors.

    Each file is synced once, which covers every record written to it before
    the call, however many requests wait on it. Returns, per request, None
    when all its records are on disk, else the error.
    """
    synced: dict[tuple[int, int], OSError | None] = {}
    outcome: list[OSError | None] = []
    for fds in batch:
        error: OSError | None = None
        for fd in fds:
            try:
                st = os.fstat(fd)
                file = (st.st_dev, st.st_ino)
                if file not in synced:
                    try:
                        _sync(fd)
                        synced[file] = None
                    except OSError as e:
                        synced[file] = e
                error = error or synced[file]
            except OSError as e:
                error = error or e
            finally:
                os.close(fd)
        outcome.append(error)
    return outcome


class GroupCommit:
    """Appends from the threads of one process, as few writes and fsyncs as possible (``kmscli serve``).

    A thread that finds no append in progress leads: it takes every record
    queued so far, appends them in order as one ``append_batch`` (one write,
    one fsync) and wakes their threads; the records queued meanwhile go in the
    next batch, which one of their own threads leads. Each caller still
    returns only once its record is on disk, so a served answer never leaves
    before its record; the chain is the same as with single appends.
    Records of different logs, or sealed under different key rings (a
    ``passwd`` between two reads), go in separate batches.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[_Queued] = []
        self._leading = False

    def append(self, log: AuditLog, record: dict[str, Any], ring: KeyRing, *,
               catch_up: Callable[[], list[str] | None] | None, event_id: str) -> ChainHead:
        if getattr(_DEFERRED, "fds", None) is not None:
            # Its sync is the caller's (deferring_sync): never lead other threads' records into it.
            return log.append_batch([record], ring, catch_up=catch_up, event_ids=[event_id])[-1]
        entry = _Queued(log, record, ring, catch_up, event_id)
        with self._cond:
            self._queue.append(entry)
            while self._leading and not entry.done:
                self._cond.wait()
            lead = not entry.done
            if lead:
                self._leading = True
                batch, self._queue = self._queue, []
        if lead:
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if entry.error is not None:
            raise entry.error
        assert entry.head is not None
        return entry.head

    @staticmethod
    def _write(batch: list[_Queued]) -> None:
        groups: dict[tuple[str, tuple[tuple[int, bytes], ...]], list[_Queued]] = {}
        for e in batch:
            groups.setdefault((str(e.log.path), e.ring.entries), []).append(e)
        for entries in groups.values():
            first = entries[0]
            catch_ups = [e.catch_up for e in entries if e.catch_up is not None]

            def catch_up(fns: list[Callable[[], list[str] | None]] = catch_ups) -> list[str] | None:
                return next((lines for lines in (fn() for fn in fns) if lines), None)

            try:
                heads = first.log.append_batch([e.record for e in entries], first.ring, catch_up=catch_up,
                                               event_ids=[e.event_id for e in entries])
            except BaseException as err:  # every record of the batch failed with it; each caller raises
                for e in entries:
                    e.error = err
            else:
                for e, head in zip(entries, heads, strict=True):
                    e.head = head
            finally:
                for e in entries:
                    e.done = True


@dataclass
class _Queued:
    log: AuditLog
    record: dict[str, Any]
    ring: KeyRing
    catch_up: Callable[[], list[str] | None] | None
    event_id: str
    head: ChainHead | None = None
    error: BaseException | None = None
    done: bool = False


#: The process's group commit: every immediate append goes through it.
GROUP_COMMIT = GroupCommit()
