"""Run kmscli on a real pseudo-terminal: the prompt reads /dev/tty, which no runner can fake.

Nothing here depends on how fast the machine is. An answer is typed when its
prompt has appeared (never earlier: the prompt turns echo off with TCSAFLUSH,
which discards anything typed before it), the output is read until the
terminal reports that every process holding it has closed it, and the exit
status is taken from the child. The only clock is a hang guard,
``HANG_GUARD_S``, far beyond what any of these commands takes even on a
shared CI machine ten times slower than a laptop.
"""

from __future__ import annotations

import errno
import os
import pty
import re
import select
import signal
import time

from tests.conftest import kmscli_command

#: Seconds after which a run counts as hung. A guard against hangs only:
#: no test passes or fails by how quickly the command finished.
HANG_GUARD_S = 300.0
#: What a prompt looks like on the screen: kmscli's "kmscli: <label>: " with
#: no line ending after it yet (the answer's newline comes only once typed).
PROMPT = re.compile(rb"kmscli: [^\n]*passphrase[^\n]*: ")


class Hung(AssertionError):
    """The child neither exited nor closed the terminal within the hang guard."""


def run_on_tty(args: list[str], env: dict[str, str], answers: list[bytes], stdin_data: bytes | None = None,
               timeout: float = HANG_GUARD_S, stdout_path: str | None = None) -> tuple[int, bytes]:
    """Run kmscli with a pty as its controlling terminal; answer each prompt in turn.

    The i-th answer is typed once the i-th prompt is on the screen. Returns the
    exit code and everything written to the terminal. ``timeout`` is a hang
    guard only (a hung child is killed and ``Hung`` raised, with the screen).
    ``stdout_path``: stdout goes to that file instead, as in ``eval "$(kmscli unlock)"``
    (the prompt and stderr stay on the terminal).
    """
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is stdin/stdout/stderr and the controlling terminal
        try:
            if stdin_data is not None:
                r, w = os.pipe()
                os.write(w, stdin_data)
                os.close(w)
                os.dup2(r, 0)
            if stdout_path is not None:
                out = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(out, 1)
            os.execve(kmscli_command()[0], [*kmscli_command(), *args], env)
        finally:
            os._exit(127)
    deadline = time.monotonic() + timeout
    seen = bytearray()
    pending = list(answers)
    answered = 0
    status: int | None = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hung(f"kmscli {' '.join(args)} still running after {timeout:.0f} s; the terminal showed "
                           f"{bytes(seen)!r}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    chunk = b""  # EIO: no process has the terminal open any more, all output read
                if not chunk:
                    break
                seen += chunk
                # Type the next answer only for a prompt not answered yet.
                if pending and len(PROMPT.findall(seen)) > answered:
                    os.write(fd, pending.pop(0) + b"\n")
                    answered += 1
            elif status is None:
                # Quiet terminal: note whether the child is gone. Reading goes on until
                # the terminal reports EIO, which comes only after its last bytes.
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = st
            else:
                # The child is gone, yet something still holds the terminal and is quiet
                # (a process it left behind): its output is not the child's.
                break
        if status is None:
            status = _wait(pid, deadline)
    finally:
        if status is None:  # hung, or the test is being torn down: never leave the child behind
            _kill(pid)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), bytes(seen)


def _wait(pid: int, deadline: float) -> int:
    """The child's wait status, once it has exited (it has closed the terminal by now)."""
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            return st
        if time.monotonic() > deadline:
            raise Hung(f"pid {pid} closed its terminal but did not exit")
        time.sleep(0.05)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
