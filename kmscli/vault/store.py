"""Where the vault lives on disk and how it is read, locked and replaced.

A vault or log is always either the old version or the new one: writes go to a
temporary file in the same folder that is fsynced and renamed over the vault,
then the folder is fsynced, all under an exclusive lock held only for the
read-modify-write itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import itertools
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import errors
from . import format as F
from .files import check_private_file, check_private_folder, create_private, ensure_private_dir, open_regular
from .state import BodyVault, OpenVault

__all__ = ["OpenVault", "BodyVault", "VaultStore", "KeySource", "PassphraseKeySource", "FixedKeySource",
           "check_private_file", "check_private_folder", "ensure_private_dir", "open_regular"]

VAULT_FILE = "vault.kms"
LOCK_SUFFIX = ".lock"
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"
#: How long a writer waits for another writer before giving up.
LOCK_TIMEOUT_S = 120.0


def default_vault_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("kmscli")) / VAULT_FILE


def resolve_vault_path(option: str | None) -> Path:
    """``--vault``, else ``KMSCLI_VAULT``, else the platform's user data folder."""
    value = option or os.environ.get("KMSCLI_VAULT")
    return Path(value).expanduser() if value else default_vault_path()


def file_id(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever the file may have: every write renames a new file (a new inode) in."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeySource:
    """Turns a vault header into the vault key: by passphrase or from a session."""

    def vault_key(self, header: F.Header) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def another_try(self) -> bool:
        """After a wrong passphrase: whether a new one may be asked for (then the next unlock asks it)."""
        return False


class PassphraseKeySource(KeySource):
    """The vault's own root (never a session): derives the KEK from a passphrase, at most once per salt
    and parameters, or, for a vault whose root key is in a remote KMS, has the KMS unwrap it.

    The passphrase is asked for lazily, so commands that fail before unlocking
    never prompt, and a vault with a KMS root key never asks for one (its
    sources are ignored: docs/root-key.md). Under the write lock the header is
    read again; when it is unchanged the cached vault key is reused instead of
    a second Argon2 run (or KMS call). ``may_retry``, when given, says whether
    a wrong passphrase may be asked for again (a person at a terminal gets
    three tries; a file or a variable gives the same answer every time, so it
    gets one).
    """

    def __init__(self, get_passphrase: Callable[[], bytes], *, may_retry: Callable[[], bool] | None = None) -> None:
        self._get = get_passphrase
        self._may_retry = may_retry
        self._passphrase: bytes | None = None
        self._keys: dict[bytes, bytes] = {}
        self._keks: dict[bytes, bytes] = {}

    def another_try(self) -> bool:
        if self._may_retry is None or not self._may_retry():
            return False
        # Forget the wrong passphrase and what was derived from it; the next unlock asks again.
        self._passphrase = None
        self._keks.clear()
        self._keys.clear()
        return True

    def passphrase(self) -> bytes:
        if self._passphrase is None:
            self._passphrase = self._get()
        return self._passphrase

    def kek(self, header: F.Header) -> bytes:
        """The key-encryption key of this passphrase under the header's salt and KDF (one Argon2 run)."""
        if header.root_key is not None:
            raise errors.KMSInternalException("this vault's key is wrapped by a KMS root key, not a passphrase")
        fixed = header.raw[len(F.MAGIC) + 2 : F.KDF_AAD_SIZE]  # KDF id, parameters and salt
        kek = self._keks.get(fixed)
        if kek is None:
            kek = self._keks[fixed] = F.derive_kek(self.passphrase(), header)
        return kek

    def vault_key(self, header: F.Header) -> bytes:
        cached = self._keys.get(header.raw)
        if cached is None:
            if header.root_key is not None:
                from . import rootkey

                # One KMS Decrypt per process and header; the KEK is dropped once it opened the key.
                cached = F.unwrap_vault_key(header, rootkey.unwrap(header.root_key))
            else:
                cached = F.unwrap_vault_key(header, self.kek(header))
            self._keys[header.raw] = cached
        return cached


class FixedKeySource(KeySource):
    """A vault key already known (a session); it must still open the header's vault."""

    def __init__(self, vault_key: bytes) -> None:
        self._key = vault_key

    def vault_key(self, header: F.Header) -> bytes:
        return self._key


class _Held:
    """A record store opened by one thread, and how many open vaults use it."""

    __slots__ = ("records", "users", "detached")

    def __init__(self, records: Any) -> None:
        self.records = records
        self.users = 0
        self.detached = False


class VaultStore:
    """One vault file, in either format: format 2 (records, docs/vault-v2.md) or format 1 (one body).

    A format-1 vault is migrated to format 2 the first time it is opened with
    its passphrase (a session holds the vault key but not the passphrase's
    key, which the new header needs; until then it is read as format 1).

    With ``keep_opened`` (a long-lived process: ``serve``) the record store is
    kept open between calls, one per thread, and each call takes a fresh view
    of it (the last commit); it is opened again when another file takes the
    vault's place (``passwd``). A format-1 vault is then kept decrypted in
    memory while the file on disk is the same one (see file_id).
    """

    def __init__(self, path: Path, *, keep_opened: bool = False, create_format: int = F.RECORDS_FORMAT_VERSION,
                 migrate: bool = True) -> None:
        # The real path, resolved once: a vault reached through a symlink (kept
        # on another disk, say) is written where it really is, and its lock and
        # its default log sit beside the real file, so two writers that name it
        # through two paths still take the same lock.
        self.path = Path(os.path.realpath(path))
        self.lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self.last_read_id: tuple[int, ...] | None = None
        self.keep_opened = keep_opened
        #: The format ``init`` writes (1 only for tests of the migration).
        self.create_format = create_format
        #: Whether a format-1 vault opened with its passphrase becomes format 2.
        self.migrate = migrate
        #: (file id, header, vault key, body plaintext) of the last format-1 vault opened, with keep_opened.
        self._opened: tuple[tuple[int, ...], F.Header, bytes, bytes] | None = None
        self._held: dict[int, _Held] = {}
        self._mutex = threading.Lock()
        #: The thread holding the write lock (locked()), if one of ours does.
        self._locker: int | None = None

    def close(self) -> None:
        """Close the record stores kept open (a long-lived process that stops)."""
        with self._mutex:
            held, self._held = list(self._held.values()), {}
        for h in held:
            h.detached = True
            if h.users == 0:
                h.records.close()

    # -- which format ----------------------------------------------------
    def format_version(self) -> int:
        """1 or 2, from the file's first bytes (before anything else reads it)."""
        from . import records as R

        check_private_folder(self.path.parent, "the vault")
        # Read through the record store's pinned descriptor: closing one of our own
        # would drop the SQLite locks this process holds on the file (records.pin).
        head = R.read_file_header(self.path, len(R.SQLITE_MAGIC))
        if head == R.SQLITE_MAGIC:
            return F.RECORDS_FORMAT_VERSION
        return F.FORMAT_VERSION  # or not a vault at all: format 1's reader says so

    def read_bytes(self) -> bytes:
        check_private_folder(self.path.parent, "the vault")
        try:
            fd = open_regular(self.path, "the vault")
        except FileNotFoundError:
            raise errors.VaultNotFoundException(
                f"no vault at {self.path}; create one with 'kmscli init' (or point --vault / KMSCLI_VAULT at yours)"
            ) from None
        except OSError as e:
            raise errors.VaultFileError(f"cannot open the vault {self.path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            self.last_read_id = file_id(st)
            check_private_file(st, self.path, "the vault")
            if st.st_size > F.HEADER_SIZE + F.MAX_BODY_SIZE + 64:
                raise errors.VaultCorruptException("the vault file is larger than kmscli allows (64 MiB)")
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as e:
            raise errors.VaultFileError(f"cannot read the vault {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)

    def read_header(self) -> F.Header:
        """The vault's clear header (KDF parameters), checked; needs no key."""
        if self.format_version() == F.FORMAT_VERSION:
            return F.parse_header(self.read_bytes())
        records, release = self._records()
        try:
            return records.header  # type: ignore[no-any-return]
        finally:
            release()

    # -- format 2: record stores, one per thread ----------------------------------
    def _records(self) -> tuple[Any, Callable[[], None]]:
        """This thread's record store for the vault (opened, or kept and still the file in place)."""
        from . import records as R

        found = self._held_records()
        if found is not None:
            return found
        held = _Held(R.RecordStore.open(self.path))
        with self._mutex:
            self._held[threading.get_ident()] = held
        return self._use(held)

    def _held_records(self) -> tuple[Any, Callable[[], None]] | None:
        """The record store this thread keeps, if it is still the file in place (checked as every open is)."""
        tid = threading.get_ident()
        with self._mutex:
            held = self._held.get(tid)
        if held is None or held.detached:
            return None
        # Checked at every open, as format 1 checks the file it reads.
        check_private_folder(self.path.parent, "the vault")
        try:
            st = os.lstat(self.path)
        except OSError:
            st = None
        if st is None or not held.records.same_file(st):
            self._detach(tid, held)  # replaced (passwd, a restore) or gone: open whatever is there now
            return None
        check_private_file(st, self.path, "the vault")
        return self._use(held)

    def _use(self, held: _Held) -> tuple[Any, Callable[[], None]]:
        tid = threading.get_ident()
        held.users += 1
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            held.users -= 1
            if held.users == 0 and (held.detached or not self.keep_opened):
                self._detach(tid, held)

        return held.records, release

    def _detach(self, tid: int, held: _Held) -> None:
        with self._mutex:
            if self._held.get(tid) is held:
                del self._held[tid]
        held.detached = True
        if held.users == 0:
            held.records.close()

    def _open_records(self, keys: KeySource, write: bool,
                      found: tuple[Any, Callable[[], None]] | None = None) -> OpenVault:
        from .state import RecordVault

        records, release = found or self._records()
        try:
            vault_key = keys.vault_key(records.header)
            view = records.begin(vault_key) if write else records.reader(vault_key)
        except BaseException:
            release()
            raise
        return RecordVault(records.header, vault_key, view, release=release)

    # -- opening ------------------------------------------------------------
    def open(self, keys: KeySource, *, write: bool = False) -> OpenVault:
        """Open and unlock the vault; with ``write`` (the lock held), for a change.

        A format-1 vault opened with its passphrase is migrated to format 2 first.
        """
        held = self._held_records()  # a long-lived process's kept store: format 2, nothing to sniff
        if held is not None or self.format_version() == F.RECORDS_FORMAT_VERSION:
            return self._open_records(keys, write, held)
        if self.migrate and isinstance(keys, PassphraseKeySource):
            if self._locker == threading.get_ident():
                migrated = self._migrate(keys)
            else:
                with self.locked():
                    migrated = self._migrate(keys)
            if migrated:
                return self._open_records(keys, write)
        return self._open_body(keys)

    def _open_body(self, keys: KeySource) -> OpenVault:
        kept = self._opened
        if kept is not None:
            reopened = self._reopen(kept, keys)
            if reopened is not None:
                return reopened
        data = self.read_bytes()
        read_id = self.last_read_id
        header = F.parse_header(data)
        vault_key = keys.vault_key(header)
        plain = F.open_body_bytes(data, header, vault_key)
        body = F.parse_body(plain)
        if self.keep_opened and read_id is not None:
            self._opened = (read_id, header, vault_key, plain)
        ov = BodyVault(header, vault_key, body)
        ov.file_id = read_id
        return ov

    def _reopen(self, kept: tuple[tuple[int, ...], F.Header, bytes, bytes], keys: KeySource) -> OpenVault | None:
        """The kept vault, if the file on disk is still the one it was read from and ``keys`` open it."""
        read_id, header, vault_key, plain = kept
        check_private_folder(self.path.parent, "the vault")
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # read it the usual way, with its usual errors
        if not stat.S_ISREG(st.st_mode) or file_id(st) != read_id:
            return None
        check_private_file(st, self.path, "the vault")
        if not hmac.compare_digest(keys.vault_key(header), vault_key):
            return None  # another key: let the file say whether it opens the vault
        self.last_read_id = read_id
        ov = BodyVault(header, vault_key, F.parse_body(plain))
        ov.file_id = read_id
        return ov

    # -- writing (either format) -----------------------------------------------
    def new_vault(self, header: F.Header, vault_key: bytes, meta: dict[str, Any]) -> OpenVault:
        """A vault not yet written (``init``): ``meta`` and nothing else; written by write_vault(create=True)."""
        if self.create_format == F.FORMAT_VERSION:
            return BodyVault(header, vault_key, {"format": F.FORMAT_VERSION, **meta, "keys": {}, "aliases": {}})
        return OpenVault(header, vault_key, dict(meta))

    def write_vault(self, ov: OpenVault, *, create: bool = False) -> None:
        """Make ``ov``'s changes durable (with the lock held, from the audit log's ``before_write``)."""
        from .state import RecordVault

        if isinstance(ov, BodyVault):
            self.write(ov.sealed(), create=create)
        elif isinstance(ov, RecordVault):
            if ov.opened_header.raw != ov.header.raw:  # passwd: a new vault key, so a new file
                self._rekey(ov)
            else:
                ov.commit()
        else:
            assert create
            self._create(ov)

    def _create(self, ov: OpenVault) -> None:
        from . import records as R

        ensure_private_dir(self.path.parent)
        R.RecordStore.create(self.path, ov.header.raw, ov.vault_key, ov.meta).close()
        _fsync_dir(self.path.parent)

    def newer_lines(self, ov: OpenVault) -> list[str] | None:
        """The audit lines of a vault write made since ``ov`` was read, if any (under the log's lock).

        Runs in whichever thread leads the log's group commit: it reads through
        that thread's own record store, never ``ov``'s.
        """
        if isinstance(ov, BodyVault) and not self.changed_since(ov):
            return None
        try:
            newer = self.open(FixedKeySource(ov.vault_key)) if isinstance(ov, BodyVault) else \
                self._open_records(FixedKeySource(ov.vault_key), False)
        except errors.KmsError:
            return None  # rewritten under another key (passwd): the append refuses a stale key itself
        with contextlib.closing(newer):
            if newer.generation < ov.generation:
                # Generations only grow: an older vault in place was put back (vault restore, or
                # a rollback), and the record of a call on the vault it replaced must not join
                # the log that vault vouches for, whose vault it would claim to be older than.
                raise errors.AuditLogException(
                    f"the vault {self.path} was replaced by an older copy while this call ran (kmscli vault "
                    "restore, or a rollback); nothing was recorded: run the command again")
            if newer.generation == ov.generation and not isinstance(ov, BodyVault):
                return None
            return (newer.audit_head or {}).get("lines")

    def changed_since(self, ov: OpenVault) -> bool:
        """Whether the vault was written since ``ov`` was read."""
        if isinstance(ov, BodyVault):
            try:
                return file_id(os.stat(self.path)) != ov.file_id
            except OSError:
                return True
        try:
            with contextlib.closing(self._open_records(FixedKeySource(ov.vault_key), False)) as now:
                return now.generation != ov.generation
        except errors.KmsError:
            return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the vault's exclusive write lock: a blocking ``flock`` on ``vault.kms.lock``.

        Writers queue in the kernel (not by polling), so sixteen of them wait
        about as long as the writes before theirs take; a writer still waiting
        after LOCK_TIMEOUT_S gives up with a clear error. Format 2's record
        store takes the same lock (RecordStore.write_lock).
        """
        ensure_private_dir(self.path.parent)
        check_private_folder(self.path.parent, "the vault")
        flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                 | os.O_NONBLOCK)
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise errors.VaultFileError(
                    f"refusing to use the vault lock {self.lock_path}: it is a symbolic link") from None
            raise errors.VaultFileError(f"cannot lock the vault {self.lock_path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            # Refuse a FIFO, device or someone else's file, naming it, rather than fail obscurely.
            if not stat.S_ISREG(st.st_mode):
                raise errors.VaultFileError(
                    f"refusing to use the vault lock {self.lock_path}: it is not a regular file"
                )
            check_private_file(st, self.lock_path, "the vault lock")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        if not _flock(fd, LOCK_TIMEOUT_S):  # the waiting thread owns fd now, and closes it
            raise errors.VaultFileError(
                f"another kmscli process has held the vault lock {self.lock_path} for over {LOCK_TIMEOUT_S:.0f} s"
            )
        outer = self._locker
        self._locker = threading.get_ident()
        try:
            yield
        finally:
            self._locker = outer
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def write(self, data: bytes, *, create: bool = False) -> None:
        """Replace the vault with ``data`` atomically (call with the lock held).

        With ``create`` the vault must not exist yet: it is linked into place
        with ``link`` semantics so two concurrent ``init`` calls cannot both win.
        """
        folder = self.path.parent
        ensure_private_dir(folder)
        tmp = folder / f"{TMP_PREFIX}{self.path.name}.{os.urandom(6).hex()}{TMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as e:
            raise errors.VaultFileError(f"cannot write in {folder}: {e.strerror}") from None
        in_place = False
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if create:
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    raise errors.AlreadyExistsException(
                        f"a vault already exists at {self.path}; kmscli never overwrites one"
                    ) from None
                in_place = True
                os.unlink(tmp)
            else:
                os.replace(tmp, self.path)
                in_place = True
            _fsync_dir(folder)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._write_failed(e, in_place) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _write_failed(self, e: OSError, in_place: bool) -> errors.VaultFileError:
        """The error for a vault write that failed with ``e``, before or after the new file took its place."""
        reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
        if in_place:
            # The new vault is already in place: saying "unchanged" would
            # make a script retry a change that was made.
            return errors.VaultFileError(
                f"the vault {self.path} was written, but finishing the write failed: {reason}; "
                "the change is in place but may not survive a crash"
            )
        return errors.VaultFileError(f"cannot write the vault {self.path}: {reason}; it is unchanged")

    def remove_stale_temps(self) -> None:
        """Delete temporary files a killed writer left behind (call with the lock held)."""
        # Ours, and those of a record store built under one of ours (RecordStore.create's).
        for pattern in (f"{TMP_PREFIX}{self.path.name}.*{TMP_SUFFIX}",
                        f"{TMP_PREFIX}{TMP_PREFIX}{self.path.name}.*{TMP_SUFFIX}"):
            for p in self.path.parent.glob(pattern):
                for suffix in ("-wal", "-shm", "-journal", ""):
                    with contextlib.suppress(OSError):
                        os.unlink(str(p) + suffix)
        # A killed restore's staging folder: removed once no restore holds its lock.
        for p in self.path.parent.glob(f"{TMP_PREFIX}{self.path.name}.*{STAGING_SUFFIX}"):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _remove_tree(p)
            except OSError:
                pass  # a restore is using it
            finally:
                os.close(fd)

    # -- backup and restore (docs/vault.md, "Backups") ------------------------------
    def copy(self, vault_key: bytes) -> tuple[int, int]:
        """A consistent copy of the vault's last commit, as one file: (a descriptor to read it, its generation).

        Format 2 through SQLite's online backup, which reads the last commit
        through the WAL whatever readers do; format 1 as its bytes. The copy
        is opened with ``vault_key`` to read its generation (so it is known to
        open), then its name is removed: nothing is left behind, whatever
        happens next. Call with the lock held, so the generation is the
        vault's.
        """
        version = self.format_version()
        tmp = self._temp_path()
        try:
            fd = create_private(tmp)
        except OSError as e:
            raise errors.VaultFileError(f"cannot copy the vault into {tmp.parent}: {e.strerror}") from None
        try:
            try:
                if version == F.FORMAT_VERSION:
                    view = memoryview(self.read_bytes())
                    while view:
                        view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            if version == F.RECORDS_FORMAT_VERSION:
                records, release = self._records()
                try:
                    records.copy_to(tmp)
                finally:
                    release()
            with contextlib.closing(VaultStore(tmp, migrate=False).open(FixedKeySource(vault_key))) as ov:
                generation = ov.generation
            _fsync_file(tmp)
            return open_regular(tmp, "the vault's copy"), generation
        except OSError as e:
            raise errors.VaultFileError(f"cannot copy the vault {self.path}: {e.strerror}") from None
        finally:
            self._remove(tmp)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A new private folder beside the vault (``.vault.kms.<random>.restore``, 0700) for a restore's files.

        ``flock``ed while it is used, and removed with what it holds at the
        end; a killed restore's is removed by the next writer
        (remove_stale_temps), which never takes one whose lock is held.
        """
        ensure_private_dir(self.path.parent)
        check_private_folder(self.path.parent, "the vault")
        folder = self.path.with_name(f"{TMP_PREFIX}{self.path.name}.{os.urandom(6).hex()}{STAGING_SUFFIX}")
        try:
            os.mkdir(folder, 0o700)
            os.chmod(folder, 0o700)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise errors.VaultFileError(f"cannot make a folder in {self.path.parent}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        finally:
            _remove_tree(folder)
            os.close(fd)

    def install(self, staged: Path, keep_old_as: Path | None) -> None:
        """Put the vault file ``staged`` (complete, on this folder's file system) in the vault's place.

        Call with the lock held. The vault in place, if any, is kept as
        ``keep_old_as`` (a hard link made first, with its WAL folded into it,
        or linked beside it as ``keep_old_as-wal`` when a reader keeps the WAL
        from folding), then ``staged`` is renamed over the vault: a crash
        leaves the old vault or the new one.
        """
        from . import records as R

        wal = Path(str(self.path) + "-wal")
        if keep_old_as is not None and os.path.lexists(self.path):
            folded = False
            with contextlib.suppress(errors.KmsError), contextlib.closing(R.RecordStore.open(self.path)) as old:
                folded = old.fold()  # a format-1 or damaged vault has nothing to fold: kept as it is
            if not folded and wal.exists() and wal.stat().st_size > 0:
                _keep_link(wal, keep_old_as.with_name(keep_old_as.name + "-wal"))
        is_records = R.read_file_header(staged, len(R.SQLITE_MAGIC)) == R.SQLITE_MAGIC
        self._seal_in(staged, R.RecordStore.open(staged) if is_records else None, keep_old_as=keep_old_as)

    # -- format 2: building a whole new file (migration, passwd) -------------------------
    def _temp_path(self) -> Path:
        return self.path.with_name(f"{TMP_PREFIX}{self.path.name}.{os.urandom(6).hex()}{TMP_SUFFIX}")

    def _build(self, header: F.Header, vault_key: bytes, meta: dict[str, Any], items: Any,
               count: int) -> tuple[Path, Any]:
        """A new record store under a temporary name: ``meta`` and the records ``items`` yields.

        ``items`` yields (kind, name, value), or calls ``fill(ov)`` on a
        RecordVault (which keeps its indexes); written in transactions of
        BUILD_BATCH records, so the generation the last one makes is
        ``meta["generation"]``.
        """
        from . import records as R

        tmp = self._temp_path()
        batches = max(0, -(-count // BUILD_BATCH))
        first = dict(meta, generation=int(meta.get("generation", 0)) - batches)
        try:
            store = R.RecordStore.create(tmp, header.raw, vault_key, first)
        except BaseException:
            self._remove(tmp)  # linked into place, then its folder's fsync failed
            raise
        try:
            done = 0
            while done < batches:
                tx = store.begin(vault_key)
                try:
                    items(tx, done * BUILD_BATCH, BUILD_BATCH)
                    tx.commit()
                finally:
                    tx.close()
                done += 1
        except BaseException:
            store.close()
            self._remove(tmp)
            raise
        return tmp, store

    def _seal_in(self, tmp: Path, store: Any, *, keep_old_as: Path | None = None) -> None:
        """Make the store at ``tmp`` (None: a file already complete) durable and rename it over the vault
        (keeping the old file, if asked)."""
        in_place = False
        try:
            if store is not None:
                store.checkpoint()
                store.close()
            wal = Path(str(tmp) + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise errors.VaultFileError(f"cannot finish writing {tmp}: its write-ahead log did not fold")
            _fsync_file(tmp)
            if keep_old_as is not None:
                _keep_link(self.path, keep_old_as)
            for suffix in ("-wal", "-shm"):  # a stale WAL would be replayed into the new file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(self.path) + suffix)
            os.replace(tmp, self.path)
            in_place = True
            _fsync_dir(self.path.parent)
        except OSError as e:
            self._remove(tmp)
            raise self._write_failed(e, in_place) from None
        except BaseException:
            self._remove(tmp)
            raise

    @staticmethod
    def _remove(tmp: Path) -> None:
        for suffix in ("-wal", "-shm", "-journal", ""):
            with contextlib.suppress(OSError):
                os.unlink(str(tmp) + suffix)

    def _rekey(self, ov: Any) -> None:
        """passwd on format 2: every record sealed anew under the new vault key, in a new file renamed in."""
        ov.flush()
        view = ov.view
        kinds = [(kind, view.count(kind)) for kind in view.kinds()]

        def every_record() -> Iterator[tuple[str, str, dict[str, Any]]]:
            for kind, _n in kinds:
                after = None
                while True:
                    page = view.scan(kind, after, 1000)
                    for name, value in page:
                        yield kind, name, value
                    if len(page) < 1000:
                        break
                    after = page[-1][0]

        source = every_record()

        def copy(tx: Any, start: int, n: int) -> None:
            for kind, name, value in itertools.islice(source, n):
                tx.put(kind, name, value)

        total = sum(n for _, n in kinds)
        tmp, store = self._build(ov.header, ov.vault_key, dict(ov.meta), copy, total)
        try:
            with contextlib.closing(store.reader(ov.vault_key)) as check:
                for kind, n in kinds:
                    if check.count(kind) != n:
                        raise errors.KMSInternalException(
                            f"passwd: the new vault holds {check.count(kind)} {kind!r} records, not {n}")
        except BaseException:
            store.close()
            self._remove(tmp)
            raise
        # The old transaction commits nothing: the new file replaces it. Before the old file's
        # WAL is removed (a WAL must never meet a file it was not written for), every commit
        # in it is folded into the old file, so a crash before the rename loses nothing.
        old = ov.view._store
        ov.view.close()
        try:
            folded = old.fold()
        except BaseException:
            store.close()
            self._remove(tmp)
            raise
        if not folded:
            store.close()
            self._remove(tmp)
            raise errors.VaultFileError(
                f"another process kept reading the vault {self.path} while its passphrase was being changed; "
                "nothing was changed: run the command again")
        ov.close()
        self._seal_in(tmp, store)

    def _migrate(self, keys: PassphraseKeySource) -> bool:
        """Format 1 to format 2, with the lock held: build, verify record by record, rename in.

        The old file stays beside the vault as ``vault.kms.v1`` (a hard link
        made before the rename), so a crash at any point leaves a vault that
        opens, in one format or the other, and nothing lost. False when the
        vault is not format 1 (any more).
        """
        from .state import RecordVault

        if self.format_version() != F.FORMAT_VERSION:
            return True  # migrated meanwhile by another process
        data = self.read_bytes()
        old = F.parse_header(data)
        kek = keys.kek(old)
        vault_key = F.unwrap_vault_key(old, kek)
        body = F.parse_body(F.open_body_bytes(data, old, vault_key))
        self.remove_stale_temps()
        from ..crypto import primitives as P

        header = F.build_header(old.kdf, old.salt, kek, vault_key, P.random_bytes(P.NONCE_SIZE),
                                version=F.RECORDS_FORMAT_VERSION)
        meta = {k: v for k, v in body.items() if k not in ("format", "keys", "aliases", "credentials", "grants")}
        meta["generation"] = int(body.get("generation", 0))
        keys_ = list(body["keys"].values())
        aliases = sorted(body["aliases"].items())
        creds = list((body.get("credentials") or {}).values())
        grants = list((body.get("grants") or {}).values())
        items: list[tuple[str, Any]] = ([("key", k) for k in keys_] + [("alias", a) for a in aliases]
                                        + [("credential", c) for c in creds] + [("grant", g) for g in grants])

        def fill(tx: Any, start: int, n: int) -> None:
            ov = RecordVault(header, vault_key, tx)
            for what, value in items[start : start + n]:
                if what == "key":
                    ov.put_key(value)
                elif what == "alias":
                    ov.put_alias(value[0], value[1])
                elif what == "grant":
                    ov.put_grant(value)
                else:
                    ov.put_credential(value)
            ov.flush()

        tmp, store = self._build(header, vault_key, meta, fill, len(items))
        try:
            self._verify_migration(store, vault_key, body)
        except BaseException:
            store.close()
            self._remove(tmp)
            raise
        kept = self.path.with_name(self.path.name + ".v1")
        kept = self._seal_migration(tmp, store, kept)
        sys.stderr.write(f"kmscli: the vault {self.path} was upgraded to format 2 (sealed records); the format-1 "
                         f"file is kept as {kept}: delete it once you no longer need it\n")
        return True

    def _seal_migration(self, tmp: Path, store: Any, kept: Path) -> Path:
        for n in range(100):
            candidate = kept if n == 0 else kept.with_name(f"{kept.name}.{n}")
            try:
                if os.path.lexists(candidate) and not os.path.samefile(candidate, self.path):
                    continue
            except OSError:
                continue
            self._seal_in(tmp, store, keep_old_as=candidate)
            return candidate
        self._seal_in(tmp, store)
        return self.path

    @staticmethod
    def _verify_migration(store: Any, vault_key: bytes, body: dict[str, Any]) -> None:
        """Every key, alias and credential of the format-1 body, read back from the new file, equal."""
        from .state import RecordVault, dumps

        with contextlib.closing(RecordVault(store.header, vault_key, store.reader(vault_key))) as ov:
            problems = []
            for key_id, key in body["keys"].items():
                if dumps(ov.get_key(key_id)) != dumps(key):
                    problems.append(f"key {key_id}")
            for slot, alias in body["aliases"].items():
                if dumps(ov.get_alias(slot)) != dumps(alias) or slot not in ov.key_aliases(alias["TargetKeyId"]):
                    problems.append("an alias")
            for akid, cred in (body.get("credentials") or {}).items():
                if dumps(ov.get_credential(akid)) != dumps(cred):
                    problems.append("a credential")
            for grant_id, grant in (body.get("grants") or {}).items():
                if dumps(ov.get_grant(grant_id)) != dumps(grant) or grant not in ov.key_grants(grant["KeyId"]):
                    problems.append("a grant")
            counts = (ov.view.count("key"), ov.view.count("alias"), ov.view.count("credential"),
                      ov.view.count("grant"))
            if counts != (len(body["keys"]), len(body["aliases"]), len(body.get("credentials") or {}),
                          len(body.get("grants") or {})):
                problems.append("the number of records")
            for field, value in body.items():
                if field in ("format", "keys", "aliases", "credentials", "grants"):
                    continue
                if dumps(ov.meta.get(field)) != dumps(value):
                    problems.append(f"the vault's {field}")
            if problems:
                raise errors.VaultCorruptException(
                    f"upgrading the vault to format 2 failed its check ({', '.join(problems[:3])} differ); "
                    "the format-1 vault is unchanged")


#: Records per transaction when a whole file is built (bounded memory at any size).
BUILD_BATCH = 5000
#: A restore's staging folder beside the vault: ``.vault.kms.<12 hex>.restore``.
STAGING_SUFFIX = ".restore"


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _flock(fd: int, timeout: float) -> bool:
    """Take an exclusive flock on ``fd``, waiting in the kernel's queue up to ``timeout`` seconds.

    The wait is a blocking ``flock`` in a helper thread (no polling, no
    signal): when it outlasts ``timeout`` the helper keeps ``fd`` and closes it
    once it gets (and drops) the lock, and False is returned.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    except OSError as e:
        os.close(fd)
        raise errors.VaultFileError(f"cannot lock the vault: {e.strerror}") from None
    got = threading.Event()
    mutex = threading.Lock()
    state: dict[str, Any] = {"abandoned": False, "error": None}

    def wait() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            state["error"] = e
        with mutex:
            if state["abandoned"]:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                return
            got.set()

    threading.Thread(target=wait, name="kmscli-vault-lock", daemon=True).start()
    if not got.wait(timeout):
        with mutex:
            if not got.is_set():
                state["abandoned"] = True
                return False
    if state["error"] is not None:
        os.close(fd)
        raise errors.VaultFileError(f"cannot lock the vault: {state['error'].strerror}")
    return True


def _keep_link(path: Path, kept: Path) -> None:
    """A second name for the vault file as it is now (the old format), made durable."""
    try:
        os.link(path, kept, follow_symlinks=False)
    except FileExistsError:
        if not os.path.samefile(path, kept):
            raise
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
