"""Constant memory through the real binary: 2 GiB and 0 bytes cost the same peak RSS."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Runner, kmscli_command, ok

LIMIT_KIB = 64 * 1024
BLOCK = hashlib.shake_256(b"memory").digest(1 << 20)


def peak_kib(pid: int) -> int | None:
    """The process's own high-water RSS (VmHWM): unlike ru_maxrss, not inherited from whoever forked it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def watch(procs: list[subprocess.Popen], peaks: dict[int, int], stop: threading.Event) -> None:
    while not stop.is_set():
        for p in procs:
            kib = peak_kib(p.pid)
            if kib is not None:
                peaks[p.pid] = max(peaks.get(p.pid, 0), kib)
        time.sleep(0.02)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("mib", [0, 2048])
def test_encrypt_decrypt_pipeline_memory(kms: Runner, vault: Path, env: dict[str, str], mib: int) -> None:
    ok(kms("keys", "create", "--alias", "alias/big"))
    enc = subprocess.Popen([*kmscli_command(), "encrypt", "--key", "alias/big", "-c", "job=big"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    dec = subprocess.Popen([*kmscli_command(), "decrypt", "-c", "job=big"],
                           stdin=enc.stdout, stdout=subprocess.PIPE, env=env)
    assert enc.stdout is not None and enc.stdin is not None and dec.stdout is not None
    enc.stdout.close()  # the decrypt process holds the pipe now
    peaks: dict[int, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=([enc, dec], peaks, stop), daemon=True)
    watcher.start()
    sent, got = hashlib.sha256(), hashlib.sha256()

    def feed() -> None:
        for _ in range(mib):
            enc.stdin.write(BLOCK)
            sent.update(BLOCK)
        enc.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    total = 0
    while chunk := dec.stdout.read(1 << 20):
        got.update(chunk)
        total += len(chunk)
    feeder.join()
    assert enc.wait(60) == 0 and dec.wait(60) == 0
    stop.set()
    watcher.join()
    assert total == mib << 20 and got.digest() == sent.digest()
    assert peaks, "could not sample the processes"
    for pid, kib in peaks.items():
        assert kib < LIMIT_KIB, f"pid {pid} peaked at {kib} KiB for {mib} MiB"
