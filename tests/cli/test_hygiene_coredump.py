"""No kmscli process can dump core: it may hold a passphrase, a vault key or plaintext.

The installed ``kmscli`` is caught while it waits (for the data of
``encrypt`` on stdin, after unlocking the vault), and its /proc entries are
read: RLIMIT_CORE is 0, soft and hard, and the process is not dumpable, which
also keeps the user's other processes from reading its memory. Being root,
the test sees everything; so it drops CAP_SYS_PTRACE (``setpriv``) for both
kmscli and the reader, which then is refused /proc/PID/mem exactly when the
process is not dumpable (a control process shows the difference).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S, Runner, kmscli_command, ok

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

#: setpriv's prefix that drops CAP_SYS_PTRACE, so that the dumpable flag decides who may read memory.
NO_PTRACE = ["setpriv", "--bounding-set", "-sys_ptrace"]
#: Opens /proc/PID/mem as a debugger would; exit 13 when refused.
READ_MEM = ("import os, sys\n"
            "try:\n    os.close(os.open(sys.argv[1], os.O_RDONLY))\n"
            "except PermissionError:\n    sys.exit(13)")


def waiting(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=HANG_GUARD_S)


def blocked_in(what: str, pid: int) -> bool:
    """The process sleeps in a pipe ``what`` ("read", "write"): for kmscli, past start-up."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line.split()[1] for line in f if line.startswith("State:"))
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
    except (OSError, StopIteration):
        return False
    return state == "S" and "pipe" in wchan and what in wchan


def wait_until_blocked(proc: subprocess.Popen, what: str = "read", guard_s: float = HANG_GUARD_S) -> None:
    """Poll until ``proc`` sleeps in a pipe ``what``; ``guard_s`` is a hang guard, never a speed limit."""
    deadline = time.monotonic() + guard_s
    while not blocked_in(what, proc.pid):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"kmscli never reached the {what} of its pipe in {guard_s:.0f} s"
        time.sleep(0.05)


def core_limit(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max core file size"))
    soft, hard = line[len("Max core file size"):].split()[:2]
    return soft, hard


def memory_readable(pid: int) -> bool:
    r = subprocess.run([*NO_PTRACE, sys.executable, "-c", READ_MEM, f"/proc/{pid}/mem"], capture_output=True,
                       timeout=HANG_GUARD_S)
    assert r.returncode in (0, 13), r.stderr
    return r.returncode == 0


def test_core_limit_is_zero_while_kmscli_waits(kms: Runner, vault: Path, env: dict[str, str]) -> None:
    ok(kms("keys", "create", "--alias", "alias/t"))
    for proc in waiting([*kmscli_command(), "encrypt", "--key", "alias/t", "--armor"], env):
        wait_until_blocked(proc)
        assert core_limit(proc.pid) == ("0", "0")


def test_kmscli_is_not_dumpable(kms: Runner, vault: Path, env: dict[str, str]) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    ok(kms("keys", "create", "--alias", "alias/t"))
    control = [*NO_PTRACE, sys.executable, "-c", "import sys; sys.stdin.read()"]
    for proc in waiting(control, env):
        wait_until_blocked(proc)
        if not memory_readable(proc.pid):
            pytest.skip("even an ordinary process's memory is unreadable here: nothing to compare with")
    for proc in waiting([*NO_PTRACE, *kmscli_command(), "encrypt", "--key", "alias/t", "--armor"], env):
        wait_until_blocked(proc)
        assert not memory_readable(proc.pid)
        assert core_limit(proc.pid) == ("0", "0")


def test_fast_paths_set_the_core_limit_too(env: dict[str, str]) -> None:
    """``random`` answers before the CLI is loaded (and prints what may become a key): limited all the same."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(w, b"\0" * 65536)  # fill the pipe, so that kmscli waits in its write
    os.set_blocking(w, True)
    proc = subprocess.Popen([*kmscli_command(), "random", "1024", "--format", "raw"], stdout=w, env=env,
                            start_new_session=True)
    os.close(w)
    try:
        wait_until_blocked(proc, "write")
        assert core_limit(proc.pid) == ("0", "0")
    finally:
        os.close(r)  # kmscli's write fails with EPIPE: it ends, quietly
        assert proc.wait(timeout=HANG_GUARD_S) == 141
