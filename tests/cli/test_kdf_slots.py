"""Key derivations of one user run a few at a time: twenty parallel calls without a session took 10.8 GB.

A derivation holds a slot (a flock'd file in the private session folder) for
its run only; when every slot is held the call waits, says so once and goes on
when one frees. The test holds the only slot itself, so what it sees does not
depend on timing: the call must wait until the test lets go.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

from kmscli.cli import kdf_slots
from tests.conftest import HANG_GUARD_S, Runner, kmscli_command, ok


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    return folder


def test_a_call_waits_for_a_free_slot_and_says_so_once(kms: Runner, vault: Path, env: dict[str, str],
                                                       runtime_dir: Path) -> None:
    import pty

    held = os.open(runtime_dir / "kmscli-kdf-0.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    master, slave = pty.openpty()  # stderr on a terminal: where the call says it waits
    proc = subprocess.Popen([*kmscli_command(), "keys", "list"], stdout=subprocess.PIPE, stderr=slave,
                            env={**env, "KMSCLI_RUNTIME_DIR": str(runtime_dir), "KMSCLI_KDF_SLOTS": "1"},
                            start_new_session=True)
    os.close(slave)
    try:
        seen = b""
        while b"\n" not in seen:  # blocks until the call says it waits (a read error: it ended)
            seen += os.read(master, 1024)
        line = seen.decode().splitlines()[0]
        assert line.startswith("kmscli: waiting: 1 key derivation of yours already running"), line
        assert "'kmscli unlock'" in line
        assert proc.poll() is None  # still waiting: the slot is ours
    finally:
        os.close(held)  # frees the slot
    proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0
    rest = b""
    with contextlib.suppress(OSError):  # EIO once the call's end closed the terminal
        while chunk := os.read(master, 1024):
            rest += chunk
    os.close(master)
    assert b"waiting" not in rest  # said once


def test_a_slot_is_held_only_during_the_derivation(kms: Runner, vault: Path, runtime_dir: Path) -> None:
    ok(kms("keys", "create", env_update={"KMSCLI_RUNTIME_DIR": str(runtime_dir), "KMSCLI_KDF_SLOTS": "1"}))
    slot = runtime_dir / "kmscli-kdf-0.lock"
    assert slot.exists() and slot.stat().st_mode & 0o777 == 0o600
    fd = os.open(slot, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once the call ended
    finally:
        os.close(fd)


def test_parallel_calls_all_finish_with_one_slot(kms: Runner, vault: Path, env: dict[str, str],
                                                 runtime_dir: Path) -> None:
    procs = [subprocess.Popen([*kmscli_command(), "keys", "create"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "KMSCLI_RUNTIME_DIR": str(runtime_dir), "KMSCLI_KDF_SLOTS": "1"},
                              start_new_session=True) for _ in range(6)]
    deadline = time.monotonic() + HANG_GUARD_S
    results = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [r[1] for r in results]
    assert len({r[0] for r in results}) == 6  # six keys made
    assert [r[1] for r in results] == [b""] * 6  # waiting is said on a terminal only: scripts see nothing new


def test_how_many_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kdf_slots.SLOTS_ENV, raising=False)
    monkeypatch.setattr(kdf_slots, "_available_kib", lambda: 4 * 1024 * 1024)  # 4 GiB free
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert kdf_slots.slots_for(512 * 1024) == 7  # 4 GiB / (512 + 64) MiB
    assert kdf_slots.slots_for(8 * 1024) == 16  # memory is no limit: one per CPU
    monkeypatch.setattr(kdf_slots, "_available_kib", lambda: 100 * 1024)
    assert kdf_slots.slots_for(512 * 1024) == 1  # always at least one
    monkeypatch.setenv(kdf_slots.SLOTS_ENV, "3")
    assert kdf_slots.slots_for(512 * 1024) == 3
    monkeypatch.setenv(kdf_slots.SLOTS_ENV, "0")
    with pytest.raises(Exception, match="1..64"):
        kdf_slots.slots_for(512 * 1024)
