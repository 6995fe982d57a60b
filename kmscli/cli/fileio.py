"""``-i`` and ``-o``: where data comes from and goes to.

An output file is written to a temporary file beside it (0600, never through a
symlink) and renamed into place only when the command has fully succeeded, so
a failed decrypt leaves nothing behind and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from .. import errors
from .output import is_tty


def open_input(path: str | None) -> tuple[BinaryIO, int | None]:
    """The input stream and its size when known (for the progress bar)."""
    if path in (None, "-"):
        stream = sys.stdin.buffer
        return stream, _regular_size(stream)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the process exit / caller
    except OSError as e:
        raise errors.UsageError(f"cannot read the input {path}: {e.strerror}") from None
    return f, _regular_size(f)


def _regular_size(stream: Any) -> int | None:
    import stat

    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class Output:
    """A destination that becomes visible only on :meth:`commit`."""

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
            self.stream: BinaryIO = sys.stdout.buffer
            return
        folder = self.path.parent
        self._tmp = folder / f".{self.path.name}.{os.urandom(6).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self._tmp, flags, 0o600)
        except OSError as e:
            raise errors.UsageError(f"cannot write the output {self.path}: {e.strerror}") from None
        os.fchmod(fd, 0o600)
        self.stream = open(fd, "wb", buffering=0)  # noqa: SIM115

    def commit(self) -> None:
        if self._tmp is None or self.path is None:
            self.stream.flush()
            return
        try:
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.replace(self._tmp, self.path)
            self._tmp = None
        except OSError as e:
            self.abort()
            raise errors.UsageError(f"cannot write the output {self.path}: {e.strerror}") from None

    def abort(self) -> None:
        if self._tmp is None:
            return
        with contextlib.suppress(OSError):
            self.stream.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
        self._tmp = None


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
    """A Rich progress bar on stderr for inputs over a few MiB, only on a terminal."""

    THRESHOLD = 8 * 1024 * 1024

    def __init__(self, total: int | None, label: str) -> None:
        self._bar: Any = None
        if total is None or total < self.THRESHOLD or not is_tty(sys.stderr) or os.environ.get("NO_COLOR") == "dumb":
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=Console(stderr=True), transient=True)
        self._task = self._bar.add_task(label, total=total)
        self._bar.start()

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
