"""``-i`` and ``-o``: where data comes from and goes to.

An output file is written to a temporary file beside it (0600, never through a
symlink) and renamed into place only when the command has fully succeeded, so
a failed decrypt leaves nothing behind and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO

from .. import errors
from .output import is_tty, stdout_reason


def open_input(path: str | None) -> tuple[BinaryIO, int | None]:
    """The input stream and its size when known (for the progress bar)."""
    if path in (None, "-"):
        stream = sys.stdin.buffer
        grow_pipe(stream)
        return stream, _regular_size(stream)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the process exit / caller
    except OSError as e:
        raise errors.UsageError(f"cannot read the input {path}: {e.strerror}") from None
    return f, _regular_size(f)


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
    output being unwritable (SPEC: exit 2). A broken pipe stays what it is,
    so the CLI can exit quietly as ``head`` expects.
    """

    def __init__(self, raw: Any, where: str) -> None:
        self._raw = raw
        self._where = where

    def _fail(self, e: OSError) -> errors.UsageError:
        return errors.UsageError(f"cannot write {self._where}: {stdout_reason(e)}")

    def write(self, data: Any) -> int | None:
        try:
            return self._raw.write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise self._fail(e) from None

    def flush(self) -> None:
        try:
            self._raw.flush()
        except BrokenPipeError:
            raise
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

    def __init__(self, path: str | None, *, binary: bool) -> None:
        self.path = None if path in (None, "-") else Path(path)
        self._tmp: Path | None = None
        if self.path is None:
            if binary and is_tty(sys.stdout):
                raise errors.UsageError(
                    "refusing to write binary ciphertext to a terminal; use --armor, -o FILE, or redirect stdout"
                )
            # With PYTHONUNBUFFERED=1 this is a raw FileIO whose write() may be
            # partial: every writer in kmscli loops on the count it returns.
            grow_pipe(sys.stdout.buffer)
            self.stream: Any = _Sink(sys.stdout.buffer, "to standard output")
            return
        where = f"the output {self.path}"
        if path is not None and path.endswith(os.sep):
            # Path() drops the trailing slash; "dir/" must not become a file named "dir".
            raise errors.UsageError(f"-o {path} names a folder; give a file name (e.g. {path}out.kms)")
        fd = _open_special(self.path)
        if fd is not None:
            # A device, FIFO or socket (/dev/null, /dev/stdout, a named pipe): written
            # to as `cat > PATH` would. Renaming a file over it would replace the
            # device node itself (as root: /dev/null).
            if binary and os.isatty(fd):
                os.close(fd)
                raise errors.UsageError(
                    f"refusing to write binary ciphertext to the terminal {self.path}; use --armor or another file"
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


def _open_special(path: Path) -> int | None:
    """Open ``path`` for writing if it exists and is not a regular file; None for a regular or new file."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing (or unreachable: creating the temporary file will say why)
    if stat.S_ISDIR(st.st_mode):
        raise errors.UsageError(f"cannot write the output {path}: it is a folder")
    if stat.S_ISREG(st.st_mode):
        return None
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise errors.UsageError(f"cannot write the output {path}: {e.strerror}") from None
    if stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by a regular file since the stat: never write into it
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
    import fcntl

    folder = path.parent
    try:
        names = os.listdir(folder)
    except OSError:
        return  # creating the temporary file will report the problem
    for name in names:
        m = _TEMP_RE.fullmatch(name)
        if not m or m.group("name") != path.name:
            continue
        try:
            fd = os.open(folder / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            with contextlib.suppress(OSError):
                if os.stat(folder / name, follow_symlinks=False).st_ino == st.st_ino:
                    os.unlink(folder / name)
        finally:
            os.close(fd)


@contextlib.contextmanager
def output(path: str | None, *, binary: bool) -> Any:
    """Yield an :class:`Output`; commit it if the block succeeds, remove it otherwise."""
    out = Output(path, binary=binary)
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
