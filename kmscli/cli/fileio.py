"""``-i`` and ``-o``: where data comes from and goes to.

An output file is written to a temporary file beside it (0600, never through a
symlink) and renamed into place only when the command has fully succeeded, so
a failed decrypt leaves nothing behind and a reader never sees half a file.

What ``-o PATH`` does with what is already at PATH (see :func:`_open_existing`):

- nothing, or a regular file: a new file takes its place (temporary + rename);
- ``-``, ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``
  (however spelled, or reached through links): that open descriptor, written
  where it already points (a shell's ``>``, ``>>`` or ``>(...)``);
- a symlink, FIFO, socket or device in a folder that others can write (group
  or world writable, like the sticky /tmp, or owned by another user): refused,
  exit 2. Anyone there could have put it there, to read the output (a FIFO),
  or to have it written over a device or someone else's file (root writing
  ``-o /tmp/x`` once overwrote a block device through a planted link). Nothing
  is opened first, so a planted FIFO cannot make kmscli wait either;
- in the user's own folders (writable by the user or root alone), what is
  there was put there by them: a device, FIFO or socket (``/dev/null``, a
  named pipe) is written to as ``cat > PATH`` would, since renaming a file over
  it would replace the node itself (as root: /dev/null); a symlink is followed
  to a device, FIFO or socket the same way, link by link, as long as every
  link and the node sit in such folders; a symlink that leads to a regular
  file or nowhere is replaced by the new file, never written through (the
  link may lead anywhere, and the temporary file and the rename must be in
  the folder the user named).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .. import errors
from .output import broken_pipe, is_tty, stdout_reason


def open_input(path: str | None) -> tuple[BinaryIO, int | None]:
    """The input stream and its size when known (for the progress bar)."""
    if path in (None, "-"):
        stream = sys.stdin.buffer
        if is_tty(sys.stdin):
            # Unbuffered: a buffered read may swallow a Ctrl-D that arrives with the last line.
            return _TerminalInput(getattr(stream, "raw", stream)), None  # type: ignore[return-value]
        grow_pipe(stream)
        return stream, _regular_size(stream)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the process exit / caller
    except OSError as e:
        raise errors.UsageError(f"cannot read the input {path}: {e.strerror}") from None
    return f, _regular_size(f)


class _TerminalInput(io.RawIOBase):
    """Standard input that is a terminal: the first read says how to end the input, as gpg does,
    instead of waiting in silence (it comes after any passphrase prompt, when the data is wanted)."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        self._said = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        if not self._said:
            self._said = True
            sys.stderr.write("kmscli: reading the input from the terminal: type or paste it, then Ctrl-D on a "
                             "line of its own (or give -i FILE)\n")
            sys.stderr.flush()
        return self._raw.readinto(b)  # type: ignore[no-any-return]

    def fileno(self) -> int:
        return self._raw.fileno()  # type: ignore[no-any-return]


#: Linux's F_SETPIPE_SZ; a 1 MiB pipe (the unprivileged maximum by default)
#: moves a 256 KiB chunk in one read instead of four 64 KiB ones.
_F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


def grow_pipe(stream: Any) -> None:
    """Enlarge a pipe on one of our standard streams; anything else, or any refusal, is left alone."""
    try:
        fd = stream.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            import fcntl

            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, ValueError, AttributeError):
        pass  # not Linux, over the per-user pipe quota, or not a real descriptor


def _regular_size(stream: Any) -> int | None:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class _Sink:
    """The destination's writer: an I/O error becomes the documented exit 2, not a crash.

    A full disk or an I/O error while writing ``-o`` (or stdout) is the user's
    output being unwritable (SPEC: exit 2). A broken pipe ends the command
    quietly with exit 141, as ``head`` expects (output.broken_pipe).
    """

    def __init__(self, raw: Any, where: str, *, stdout: bool = False) -> None:
        self._raw = raw
        self._where = where
        self._stdout = stdout

    def _fail(self, e: OSError) -> errors.UsageError:
        return errors.UsageError(f"cannot write {self._where}: {stdout_reason(e)}")

    def write(self, data: Any) -> int | None:
        try:
            return self._raw.write(data)
        except BrokenPipeError:
            raise broken_pipe(self._stdout) from None
        except OSError as e:
            raise self._fail(e) from None

    def flush(self) -> None:
        try:
            self._raw.flush()
        except BrokenPipeError:
            raise broken_pipe(self._stdout) from None
        except OSError as e:
            raise self._fail(e) from None

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def close(self) -> None:
        self._raw.close()


class Output:
    """A destination that becomes visible only on :meth:`commit`.

    The temporary file is ``.NAME.<12 hex>.tmp`` beside NAME, created with
    ``O_EXCL | O_NOFOLLOW`` (a planted symlink or file is never followed or
    reused) and ``flock``ed for its whole life. A writer killed by SIGKILL
    cannot remove it; the next kmscli writing NAME removes every such file
    whose lock nobody holds, so partial plaintext does not outlive the next run.
    """

    def __init__(self, path: str | None, *, binary: bool, what: str = "ciphertext", way_out: str = "--armor"
                 ) -> None:
        descriptor = None if path in (None, "-") else names_descriptor(path)
        self.path = None if path in (None, "-") or descriptor == 1 else Path(path)
        self._tmp: Path | None = None
        if self.path is None:
            if binary and is_tty(sys.stdout):
                raise errors.UsageError(
                    f"refusing to write binary {what} to a terminal; use {way_out}, -o FILE, or redirect stdout"
                )
            # With PYTHONUNBUFFERED=1 this is a raw FileIO whose write() may be
            # partial: every writer in kmscli loops on the count it returns.
            grow_pipe(sys.stdout.buffer)
            self.stream: Any = _Sink(sys.stdout.buffer, "to standard output", stdout=True)
            return
        where = f"the output {self.path}"
        if path is not None and path.endswith(os.sep):
            # Path() drops the trailing slash; "dir/" must not become a file named "dir".
            raise errors.UsageError(f"-o {path} names a folder; give a file name (e.g. {path}out.kms)")
        fd = _dup(descriptor, self.path) if descriptor is not None else _open_existing(self.path)
        if fd is not None:
            if binary and os.isatty(fd):
                os.close(fd)
                raise errors.UsageError(
                    f"refusing to write binary {what} to the terminal {self.path}; use {way_out} or another file"
                )
            self.stream = _Sink(open(fd, "wb", buffering=0), where)  # noqa: SIM115
            return
        _remove_stale_temps(self.path)
        fd, self._tmp = _create_temp(self.path)
        self.stream = _Sink(open(fd, "wb", buffering=0), where)  # noqa: SIM115

    def commit(self) -> None:
        if self._tmp is None or self.path is None:
            self.stream.flush()
            if self.path is not None:
                self.stream.close()
            return
        try:
            os.fsync(self.stream.fileno())
            os.replace(self._tmp, self.path)
            self._tmp = None
            self.stream.close()  # releases the lock, after the rename
        except OSError as e:
            self.abort()
            raise errors.UsageError(f"cannot write the output {self.path}: {e.strerror}") from None

    def abort(self) -> None:
        if self._tmp is None:
            if self.path is not None:
                with contextlib.suppress(OSError):
                    self.stream.close()
            return
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)  # unlink before close: nobody can take the lock on a name in use
        with contextlib.suppress(OSError):
            self.stream.close()
        self._tmp = None


_TEMP_RE = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")


#: Names of one of this process's descriptors, once the folder part is resolved:
#: /dev/stdin, /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N, /proc/<our pid>/fd/N.
_DESCRIPTOR_RE = re.compile(r"/dev/std(?P<std>in|out|err)|(?:/dev/fd|/proc/(?:self|thread-self|(?P<pid>[0-9]+))/fd)"
                            r"/(?P<fd>[0-9]{1,9})")
_STD = {"in": 0, "out": 1, "err": 2}
#: Symbolic links followed at most, as the kernel's own limit (ELOOP).
_MAX_LINKS = 40


def names_descriptor(path: str) -> int | None:
    """The descriptor ``path`` names (/dev/stdout is 1), whatever the spelling; None for any other path.

    Such a name is written through a copy of the descriptor, never opened:
    Linux would reopen the file it points to at offset 0 (losing ``>>``), and
    for a regular file the name looks like one to replace by renaming.
    """
    head, name = os.path.split(path)
    try:
        folder = os.path.realpath(head or ".")
    except (OSError, ValueError):
        return None
    m = _DESCRIPTOR_RE.fullmatch("/" + os.path.join(folder, name).lstrip("/"))
    if m is None or (m.group("pid") is not None and int(m.group("pid")) != os.getpid()):
        return None
    return _STD[m.group("std")] if m.group("std") else int(m.group("fd"))


def _dup(descriptor: int, path: Path) -> int:
    import fcntl

    try:
        return fcntl.fcntl(descriptor, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError as e:
        raise errors.UsageError(f"cannot write the output {path}: {e.strerror}") from None


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, for messages: "a FIFO (named pipe)", "a block device", ..."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def shared_folder(folder: str | Path) -> str | None:
    """Why others can put files in ``folder`` ("writable by others (mode 1777)"), or None if only we and root can.

    Group-writable counts: the group's other members are others. The folder
    is the one the name really lives in (links in the folder part followed).
    """
    try:
        st = os.stat(folder)
    except OSError:
        return None  # creating the temporary file there will say what is wrong
    if st.st_uid not in (os.geteuid(), 0):
        return f"owned by another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _refuse(path: Path, hop: str | None, mode: int, why: str) -> errors.UsageError:
    """Refuse ``-o path`` because of what sits at it (or at ``hop``, a link on the way) in a shared folder."""
    what = f"it is {kind_of(mode)}" if hop is None else f"it is a link to {hop}, {kind_of(mode)}"
    folder = os.path.dirname(hop if hop is not None else str(path)) or "."
    return errors.UsageError(
        f"refusing to write the output {path}: {what} in {folder}, a folder {why}, so anyone could have put it "
        "there to read or redirect what kmscli writes; remove it if it is yours, or write elsewhere"
    )


def _open_existing(path: Path) -> int | None:
    """What to write for ``-o path``: an open descriptor for a device, FIFO or socket the user owns
    (see the module's docstring), None to write a new file in its place; refuses what others could plant."""
    try:
        st = os.lstat(path)
    except OSError:
        return None  # missing (or unreachable: creating the temporary file will say why)
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        raise errors.UsageError(f"cannot write the output {path}: it is a folder")
    why = shared_folder(path.parent)
    if why is not None:
        raise _refuse(path, None, st.st_mode, why)
    if not stat.S_ISLNK(st.st_mode):
        return _open_node(path, path)
    hop = str(path)
    for _ in range(_MAX_LINKS):
        try:
            hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
        except OSError as e:
            raise errors.UsageError(f"cannot write the output {path}: {e.strerror}") from None
        descriptor = names_descriptor(hop)
        if descriptor is not None:  # /dev/stdout or /dev/fd/N behind a link of the user's
            return _dup(descriptor, path)
        try:
            st = os.lstat(hop)
        except OSError:
            return None  # a link to nothing: replaced
        if stat.S_ISREG(st.st_mode):
            return None  # a link to a regular file: replaced, never written through
        if stat.S_ISDIR(st.st_mode):
            raise errors.UsageError(f"cannot write the output {path}: it is a link to a folder")
        why = shared_folder(os.path.dirname(hop) or ".")
        if why is not None:
            raise _refuse(path, hop, st.st_mode, why)
        if not stat.S_ISLNK(st.st_mode):
            return _open_node(Path(hop), path)
    raise errors.UsageError(f"cannot write the output {path}: too many levels of symbolic links")


def _open_node(node: Path, path: Path) -> int | None:
    """Open a device, FIFO or socket the user put in their own folder, as ``cat > PATH`` would."""
    try:
        # O_NOFOLLOW: the node was not a link when looked at; if it became one, refuse.
        fd = os.open(node, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise errors.UsageError(f"cannot write the output {path}: {e.strerror}") from None
    if stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by a regular file since the lstat: never write into it
        os.close(fd)
        return None
    return fd


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create and lock a fresh private temporary file beside ``path``."""
    import fcntl

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _attempt in range(8):
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue  # something sits at that name (even a symlink): never use it, draw another
        except OSError as e:
            raise errors.UsageError(f"cannot write the output {path}: {e.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Another kmscli's clean-up may have removed the name between our
            # open and our lock (it saw an unlocked file): then start again.
            if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise errors.UsageError(f"cannot write the output {path}: {e.strerror}") from None
        os.close(fd)
    raise errors.UsageError(f"cannot write the output {path}: could not create a temporary file beside it")


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files of ``path`` left by killed writers: ours, regular, and unlocked."""
    folder = path.parent
    try:
        names = os.listdir(folder)
    except OSError:
        return  # creating the temporary file will report the problem
    for name in names:
        m = _TEMP_RE.fullmatch(name)
        if m and m.group("name") == path.name:
            remove_abandoned(folder / name, os.unlink)


def remove_abandoned(path: Path, remove: Callable[[Path], None], *, folder: bool = False) -> None:
    """Remove ``path`` with ``remove`` if a killed kmscli left it: it is ours, a regular file (or with
    ``folder`` a folder), and nobody holds its ``flock``, which a live kmscli holds for its whole life.

    Opened without following a link, checked and locked on that descriptor,
    and removed only while the name still leads to what was checked.
    """
    import fcntl

    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
             | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not (stat.S_ISDIR if folder else stat.S_ISREG)(st.st_mode) or st.st_uid != os.geteuid():
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a live writer holds it
        with contextlib.suppress(OSError):
            if os.stat(path, follow_symlinks=False).st_ino == st.st_ino:
                remove(path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def output(path: str | None, *, binary: bool, what: str = "ciphertext", way_out: str = "--armor") -> Any:
    """Yield an :class:`Output`; commit it if the block succeeds, remove it otherwise.

    ``what`` and ``way_out`` name, when binary output to a terminal is refused, what it was and the command's
    option that writes text instead."""
    out = Output(path, binary=binary, what=what, way_out=way_out)
    try:
        yield out
    except BaseException:
        out.abort()
        raise
    out.commit()


class Progress:
    """A Rich progress bar on stderr for inputs over a few MiB, only on a terminal.

    It starts at the first bytes that flow, not before: a passphrase prompt on
    the same terminal comes first and must not be drawn over. With the size
    unknown (a pipe), it appears once THRESHOLD bytes have gone through and
    shows bytes and speed without a total.
    """

    THRESHOLD = 8 * 1024 * 1024

    def __init__(self, total: int | None, label: str) -> None:
        self._bar: Any = None
        self._total, self._label, self._seen = total, label, 0
        self._wanted = (is_tty(sys.stderr) and os.environ.get("NO_COLOR") != "dumb"
                        and (total is None or total >= self.THRESHOLD))

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        self._seen += n
        if self._wanted and (self._total is not None or self._seen >= self.THRESHOLD):
            self._start()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=Console(stderr=True), transient=True)
        self._task = self._bar.add_task(self._label, total=self._total, completed=self._seen)
        self._bar.start()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
