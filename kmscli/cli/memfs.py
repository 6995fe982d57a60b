"""Private folders on a memory file system, for plaintext that must not reach a disk (``kmscli edit``).

A folder is ``kmscli-edit-<random>`` (0700) in ``$XDG_RUNTIME_DIR`` or
``/dev/shm``, whichever is a memory file system (tmpfs) first, and holds its
files 0600. It is removed when its ``with`` block ends, however it ends; one
that a SIGKILL left behind is removed by the next one made (docs/edit.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import errors
from . import fileio, output

#: File systems whose files live in memory (tmpfs pages can still be swapped out: docs/edit.md).
MEMORY_FILE_SYSTEMS = frozenset(("tmpfs", "ramfs"))
#: The private folders, one per edit: ``kmscli-edit-<random>`` in the memory file system.
FOLDER_PREFIX = "kmscli-edit-"


def filesystem_type(path: str | Path) -> str | None:
    """The type of the file system ``path`` lives on ("tmpfs", "ext4"), from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    found: tuple[int, str] | None = None
    for mount, kind in _mounts():
        under = real == mount or real.startswith(mount.rstrip("/") + "/")
        # The deepest mount point wins; of two at one point, the later (mounted on top).
        if under and (found is None or len(mount) >= found[0]):
            found = (len(mount), kind)
    return found[1] if found else None


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of each of this process's mounts, in mount order."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if sep and len(parts) >= 5 and rest.split():
            # Spaces, tabs, newlines and backslashes in a mount point are written as \ooo.
            mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
            out.append((mount, rest.split()[0]))
    return out


def memory_base() -> Path:
    """Where private folders go: $XDG_RUNTIME_DIR (the user's own) or /dev/shm, if one is a memory file system."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    candidates = [Path(runtime)] if os.path.isabs(runtime) else []
    for base in [*candidates, Path("/dev/shm")]:
        try:
            st = os.stat(base)
        except OSError:
            continue
        if (stat.S_ISDIR(st.st_mode) and os.access(base, os.W_OK | os.X_OK)
                and filesystem_type(base) in MEMORY_FILE_SYSTEMS
                # Others must not be able to rename our folder away: the base is ours alone, or sticky.
                and (fileio.shared_folder(base) is None or st.st_mode & stat.S_ISVTX)):
            return base
    raise errors.UsageError(
        "found no memory file system to hold the plaintext while you edit ($XDG_RUNTIME_DIR and /dev/shm are "
        "not a writable tmpfs), and kmscli edit never writes plaintext to disk; decrypt and encrypt by hand "
        "where you judge it safe"
    )


@contextlib.contextmanager
def private_folder(base: Path) -> Iterator[Path]:
    """A new folder of ours (0700) in ``base``, locked while we live, removed with all it holds at the end.

    The lock (flock on the folder) tells a live edit's folder from one a
    SIGKILL left behind: each edit first removes those of its user that nobody
    holds, so plaintext does not outlive the next edit.
    """
    import fcntl
    import tempfile

    _remove_stale(base)
    for _attempt in range(8):
        folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=base))
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # another edit's clean-up took it before we could lock it: start again
        try:
            os.fchmod(fd, 0o700)  # whatever the umask
            fcntl.flock(fd, fcntl.LOCK_EX)
            # The same, between our open and our lock: the name no longer leads to our folder.
            if os.stat(folder, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    else:
        raise errors.UsageError(f"cannot make a private folder in {base}")
    try:
        yield folder
    finally:
        _remove(folder)
        os.close(fd)


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    if os.path.lexists(folder):
        output.message(f"could not remove {folder}, which holds the plaintext: remove it yourself")


def _remove_stale(base: Path) -> None:
    """Remove the private folders of this user's edits that ended without cleaning up (SIGKILL)."""
    try:
        names = [n for n in os.listdir(base) if n.startswith(FOLDER_PREFIX)]
    except OSError:
        return
    for name in names:
        fileio.remove_abandoned(base / name, _remove, folder=True)


@contextlib.contextmanager
def create_private(path: Path) -> Iterator[Any]:
    """A new file only we can read (0600), never through a link or over something already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb", buffering=0) as f:
        os.fchmod(fd, 0o600)
        yield f
