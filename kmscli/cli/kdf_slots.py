"""At most a few Argon2id derivations of one user at a time.

Each call without a session derives the vault's key with Argon2id, 512 MiB by
default. Twenty such calls started in parallel (a shell loop with ``&``, ``xargs
-P``, a CI matrix) took 10.8 GB and 48.7 s: on a laptop or a CI runner, an OOM
kill. A derivation first takes one of N slots, lock files in the user's private
session folder (``kmscli-kdf-<i>.lock``, held with ``flock`` for the
derivation only, so a killed process frees its slot at once); the others wait
for a slot, saying so once on a terminal, with the hint that ``kmscli unlock``
skips the derivation altogether.

N is how many derivations fit in the memory available now (``MemAvailable``
less a 64 MiB margin each), at most one per CPU, at least one;
``KMSCLI_KDF_SLOTS`` sets it (1..64).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .. import errors

SLOTS_ENV = "KMSCLI_KDF_SLOTS"
SLOTS_MAX = 64
#: Memory a derivation needs beyond its Argon2 matrix (the interpreter, the vault).
MARGIN_KIB = 64 * 1024
#: How long a call waits for a slot before giving up (exit 5).
WAIT_LIMIT_S = 600.0
POLL_S = 0.05


def install() -> None:
    """Make every Argon2id run of this process take a slot first."""
    from ..crypto import primitives

    primitives.kdf_gate = slot


def slots_for(memory_kib: int) -> int:
    """How many derivations of ``memory_kib`` may run at once (see the module's text)."""
    given = os.environ.get(SLOTS_ENV)
    if given:
        if not (given.isascii() and given.isdigit() and 1 <= int(given) <= SLOTS_MAX):
            raise errors.ValidationException(f"{SLOTS_ENV} must be a number of slots, 1..{SLOTS_MAX} (got '{given}')")
        return int(given)
    cpus = os.cpu_count() or 1
    available = _available_kib()
    if available is None:
        return cpus
    return max(1, min(cpus, available // (memory_kib + MARGIN_KIB)))


def _available_kib() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _folder() -> Path | None:
    """The user's private session folder, or None when there is none to be had (then: no limit)."""
    from ..agent.session import runtime_dir

    try:
        return runtime_dir()
    except errors.KmsError:
        return None


@contextlib.contextmanager
def slot(memory_kib: int) -> Iterator[None]:
    """Hold one of the user's derivation slots for the ``with`` block, waiting for one if all are taken."""
    folder = _folder()
    if folder is None:
        yield
        return
    n = slots_for(memory_kib)
    deadline = time.monotonic() + WAIT_LIMIT_S
    said = False
    while True:
        for i in range(n):
            fd = _open_slot(folder / f"kmscli-kdf-{i}.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                os.close(fd)  # releases the slot
            return
        if not said and sys.stderr.isatty():  # for a person waiting; a script's stderr stays as it was
            said = True
            sys.stderr.write(f"kmscli: waiting: {n} key derivation{'s' if n > 1 else ''} of yours already "
                             "running (each takes the KDF's memory); 'kmscli unlock' lets later calls skip it\n")
            sys.stderr.flush()
        if time.monotonic() > deadline:
            raise errors.UnlockError(
                f"waited {WAIT_LIMIT_S:.0f} s for one of {n} key derivation slots; other kmscli calls of yours "
                f"hold them all (set {SLOTS_ENV} to allow more at once, or use 'kmscli unlock')"
            )
        time.sleep(POLL_S)


def _open_slot(path: Path) -> int:
    """Open (creating it 0600) a slot's lock file: never through a symlink, never one that is not ours."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    st = os.fstat(fd)
    if not (st.st_uid == os.getuid() and (st.st_mode & 0o170000) == 0o100000):
        os.close(fd)
        raise errors.SessionAgentException(f"refusing the key derivation slot {path}: it is not a file of yours")
    return fd
