"""Files of the user's own: private folders made, and files and folders someone else could write refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .. import errors


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


def create_private(path: Path) -> int:
    """A new file at ``path``, 0600 whatever the umask, open for writing; never an existing name or a link there.

    Raises OSError (FileExistsError when anything, a symlink included, is at ``path``).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
