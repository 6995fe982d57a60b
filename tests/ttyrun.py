"""Run kmscli on a real pseudo-terminal: the prompt reads /dev/tty, which no runner can fake."""

from __future__ import annotations

import os
import pty
import select
import signal
import time

from tests.conftest import kmscli_command


def run_on_tty(args: list[str], env: dict[str, str], answers: list[bytes], stdin_data: bytes | None = None,
               timeout: float = 30) -> tuple[int, bytes]:
    """Run kmscli with a pty as its controlling terminal; answer each prompt in turn.

    Returns the exit code and everything written to the terminal.
    """
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is stdin/stdout/stderr and the controlling terminal
        if stdin_data is not None:
            r, w = os.pipe()
            os.write(w, stdin_data)
            os.close(w)
            os.dup2(r, 0)
        os.execve(kmscli_command()[0], [*kmscli_command(), *args], env)
    seen = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if pending and seen.rstrip().endswith(b":"):
                os.write(fd, pending.pop(0) + b"\n")
        else:
            # Quiet terminal: if the child is gone, stop waiting for an EOF that a
            # process still holding the terminal (e.g. a daemon it started) would delay.
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                seen += _drain(fd)  # it may have written its last bytes after the quiet tick
                break
    if status is None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:  # still waiting at the deadline: a hang is a failure, not a stuck suite
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


def _drain(fd: int) -> bytes:
    """Whatever is still buffered on the terminal's master side."""
    out = b""
    while select.select([fd], [], [], 0.05)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out
