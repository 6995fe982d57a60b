"""The openssl command line in tests: the independent tool that checks kmscli's keys, signatures and wraps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import HANG_GUARD_S

OPENSSL = shutil.which("openssl")


def openssl(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run openssl; the test reads the return code and output."""
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *map(str, args)], input=stdin, capture_output=True, timeout=HANG_GUARD_S,
                          check=False)


def ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    """openssl's stdout, once it succeeded."""
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout
