"""Where the vault lives on disk and how it is read, locked and replaced.

A vault or log is always either the old version or the new one: writes go to a
temporary file in the same folder that is fsynced and renamed over the vault,
then the folder is fsynced, all under an exclusive lock held only for the
read-modify-write itself.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors
from . import format as F

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


def ensure_private_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) as 0700 if missing; leave existing ones be."""
    if folder.is_dir():
        return
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise errors.VaultFileError(f"cannot create the folder {folder}: {parent} is a file, not a folder")
    missing = []
    d = folder
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    # Each folder made here is 0700, not only the last: mkdir(parents=True)
    # makes the others 0777 & ~umask, world-writable under umask 000.
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made at the same moment by another process
        except OSError as e:
            raise errors.VaultFileError(f"cannot create the folder {folder}: {e.strerror}") from None
        try:
            os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as e:
            raise errors.VaultFileError(f"cannot create the folder {folder}: {e.strerror}") from None
    if not folder.is_dir():
        raise errors.VaultFileError(f"cannot create the folder {folder}: something else is in its place")


def check_private_file(st: os.stat_result, path: Path, what: str) -> None:
    """Refuse a file someone else could have written: not ours, or group/world-writable."""
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise errors.VaultFileError(f"refusing to use {what} {path}: it belongs to another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise errors.VaultFileError(
            f"refusing to use {what} {path}: it is writable by group or others; run 'chmod 600 {path}'"
        )


def check_private_folder(folder: Path, what: str) -> None:
    """Refuse a folder another user could write, as ssh refuses such a ~/.ssh.

    Whoever can write the folder can rename another vault over ours, roll it
    back, or hold its lock. The folder must belong to us (or root) and must not
    be writable by group or others: not even with the sticky bit, since a
    sticky /tmp still lets others plant the lock file and temporary names.
    """
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return  # made 0700 when it is first written
    except OSError as e:
        raise errors.VaultFileError(f"cannot inspect the folder of {what} {folder}: {e.strerror}") from None
    if hasattr(os, "geteuid") and st.st_uid not in (os.geteuid(), 0):
        raise errors.VaultFileError(
            f"refusing to use {what} in {folder}: the folder belongs to another user (uid {st.st_uid}), "
            "who could replace or roll back the files in it"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise errors.VaultFileError(
            f"refusing to use {what} in {folder}: the folder is writable by group or others, who could replace "
            f"or roll back the files in it; run 'chmod go-w {folder}' or keep it in a private folder"
        )


def open_regular(path: Path, what: str, *, flags: int = os.O_RDONLY, follow: bool = True) -> int:
    """Open an existing file without ever blocking; refuse anything but a regular file.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a
    writer; the fstat check then refuses it (and devices, sockets, folders).
    """
    flags |= os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errors.VaultFileError(f"refusing to use {what} {path}: it is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class OpenVault:
    """An unlocked vault: its header, its key and its decrypted body (mutable)."""

    header: F.Header
    vault_key: bytes
    body: dict[str, Any]
    #: Audit records that go to the log with the next write (None: records are appended at once).
    pending: list[dict[str, Any]] | None = None
    #: Which file this was read from (see file_id), to notice a write since.
    file_id: tuple[int, ...] | None = None


def file_id(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever the file may have: every write renames a new file (a new inode) in."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeySource:
    """Turns a vault header into the vault key: by passphrase or from a session."""

    def vault_key(self, header: F.Header) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


class PassphraseKeySource(KeySource):
    """Derives the KEK from a passphrase, at most once per salt and parameters.

    The passphrase is asked for lazily, so commands that fail before unlocking
    never prompt. Under the write lock the header is read again; when it is
    unchanged the cached vault key is reused instead of a second Argon2 run.
    """

    def __init__(self, get_passphrase: Callable[[], bytes]) -> None:
        self._get = get_passphrase
        self._passphrase: bytes | None = None
        self._keys: dict[bytes, bytes] = {}

    def passphrase(self) -> bytes:
        if self._passphrase is None:
            self._passphrase = self._get()
        return self._passphrase

    def vault_key(self, header: F.Header) -> bytes:
        cached = self._keys.get(header.raw)
        if cached is None:
            kek = F.derive_kek(self.passphrase(), header)
            cached = F.unwrap_vault_key(header, kek)
            self._keys[header.raw] = cached
        return cached


class FixedKeySource(KeySource):
    """A vault key already known (a session); it must still open the header's vault."""

    def __init__(self, vault_key: bytes) -> None:
        self._key = vault_key

    def vault_key(self, header: F.Header) -> bytes:
        return self._key


class VaultStore:
    """One vault file. With ``keep_opened`` (a long-lived process: ``serve``), the last
    vault opened is kept decrypted in memory and reused while the file on disk
    is the same one (see file_id): a request then costs two ``stat`` calls, not
    a read, a decryption and a key check. The plaintext stays in this process,
    which holds the vault key anyway."""

    def __init__(self, path: Path, *, keep_opened: bool = False) -> None:
        # The real path, resolved once: a vault reached through a symlink (kept
        # on another disk, say) is written where it really is, and its lock and
        # its default log sit beside the real file, so two writers that name it
        # through two paths still take the same lock.
        self.path = Path(os.path.realpath(path))
        self.lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self.last_read_id: tuple[int, ...] | None = None
        self.keep_opened = keep_opened
        #: (file id, header, vault key, body plaintext) of the last vault opened, with keep_opened.
        self._opened: tuple[tuple[int, ...], F.Header, bytes, bytes] | None = None

    # -- reading ---------------------------------------------------------
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

    def open(self, keys: KeySource) -> OpenVault:
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
        return OpenVault(header=header, vault_key=vault_key, body=body, file_id=read_id)

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
        return OpenVault(header=header, vault_key=vault_key, body=F.parse_body(plain), file_id=read_id)

    def changed_since(self, ov: OpenVault) -> bool:
        """Whether the vault file was replaced since ``ov`` was read (every write renames a new file in)."""
        try:
            return file_id(os.stat(self.path)) != ov.file_id
        except OSError:
            return True

    # -- writing ---------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the vault's exclusive write lock (a ``flock`` on ``vault.kms.lock``)."""
        from filelock import FileLock, Timeout

        ensure_private_dir(self.path.parent)
        check_private_folder(self.path.parent, "the vault")
        try:
            st = os.lstat(self.lock_path)
        except FileNotFoundError:
            pass
        else:
            # filelock (>= 3.20.3) opens with O_NOFOLLOW; refuse a FIFO, device or
            # someone else's file here too, naming it, rather than fail obscurely.
            if not stat.S_ISREG(st.st_mode):
                raise errors.VaultFileError(
                    f"refusing to use the vault lock {self.lock_path}: it is not a regular file"
                )
            check_private_file(st, self.lock_path, "the vault lock")
        lock = FileLock(str(self.lock_path), mode=0o600, timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except Timeout:
            raise errors.VaultFileError(
                f"another kmscli process has held the vault lock {self.lock_path} for over {LOCK_TIMEOUT_S:.0f} s"
            ) from None
        except OSError as e:
            raise errors.VaultFileError(f"cannot lock the vault {self.lock_path}: {e.strerror}") from None
        try:
            yield
        finally:
            lock.release()

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
            reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
            if in_place:
                # The new vault is already in place: saying "unchanged" would
                # make a script retry a change that was made.
                raise errors.VaultFileError(
                    f"the vault {self.path} was written, but finishing the write failed: {reason}; "
                    "the change is in place but may not survive a crash"
                ) from None
            raise errors.VaultFileError(f"cannot write the vault {self.path}: {reason}; it is unchanged") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove_stale_temps(self) -> None:
        """Delete temporary files a killed writer left behind (call with the lock held)."""
        pattern = f"{TMP_PREFIX}{self.path.name}.*{TMP_SUFFIX}"
        for p in self.path.parent.glob(pattern):
            with contextlib.suppress(OSError):
                p.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
