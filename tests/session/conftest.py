"""Sessions under test: a private runtime folder per test, and agents that never outlive it."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S, Runner, ok

PREFIX = "kms1:"


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def env(env: dict[str, str], runtime_dir: Path) -> dict[str, str]:
    """The shared ``env`` plus a runtime folder of this test's own (``KMSCLI_RUNTIME_DIR``)."""
    return {**env, "KMSCLI_RUNTIME_DIR": str(runtime_dir)}


def token_of(export_line: bytes) -> str:
    line = export_line.decode().strip()
    assert line.startswith("export KMSCLI_SESSION="), line
    return line.split("=", 1)[1]


def socket_of(token: str) -> str:
    return token[len(PREFIX):].rpartition(":")[0]


def agent_pid(token: str) -> int | None:
    """The agent's pid, from the kernel's record of who listens on the session's socket."""
    path = socket_of(token)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        dfd = os.open(os.path.dirname(path), os.O_PATH)
        try:
            sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
        finally:
            os.close(dfd)
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return int(pid)
    except OSError:
        return None
    finally:
        sock.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float = HANG_GUARD_S) -> bool:
    """Poll ``predicate`` until it holds; False only if it still fails after ``timeout``, a hang guard.

    Returns as soon as the predicate holds, so the guard costs nothing when things work.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


Unlocker = Callable[..., dict[str, str]]


@pytest.fixture
def unlock(kms: Runner, vault: Path) -> Iterator[Unlocker]:
    """``unlock(*args)`` returns the env update holding a new session; every agent started is ended after the test.

    ``short_lived``: the session's TTL is so short that, on a slow machine, it
    may be over (its agent gone) by the time ``unlock`` has returned.
    """
    pids: list[int] = []

    def start(*args: str, env_update: dict[str, str] | None = None, short_lived: bool = False) -> dict[str, str]:
        r = ok(kms("unlock", *args, env_update=env_update))
        token = token_of(r.stdout)
        pid = agent_pid(token)
        assert pid is not None or short_lived, "unlock returned, but no agent serves its session"
        if pid is not None:
            pids.append(pid)
        return {"KMSCLI_SESSION": token}

    yield start
    kms("lock")
    for pid in pids:
        stop(pid, signal.SIGTERM)  # an agent ends its session on SIGTERM
    for pid in pids:
        if not wait_until(lambda p=pid: not alive(p)):
            stop(pid, signal.SIGKILL)


def stop(pid: int, sig: int) -> None:
    """Signal ``pid`` if it is still one of our agents (never a process that reused the number)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"kmscli.agent" not in f.read():
                return
        os.kill(pid, sig)
    except (OSError, ProcessLookupError):
        pass


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (an agent's workers), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []
