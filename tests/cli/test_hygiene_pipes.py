"""A reader that goes away ends kmscli quietly, as it ends cat: exit 141, nothing on stderr.

``kmscli keys list | head -0`` used to be exit 1 (Typer turns EPIPE into
exit 1 before kmscli could), and a KMSInternalException line through a session.
Every case here writes into a pipe whose read end is already closed, so the
first write fails: no timing is involved.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S, Runner, kmscli_command, ok

EXIT_BROKEN_PIPE = 141


def into_closed_pipe(args: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run kmscli with stdout a pipe nobody reads from any more."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([*kmscli_command(), *args], input=stdin, stdout=w, stderr=subprocess.PIPE, env=env,
                              timeout=HANG_GUARD_S, start_new_session=True)
    finally:
        os.close(w)


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return ok(kms("keys", "create", "--alias", "alias/app", "--description", "d")).stdout.decode().strip()


@pytest.fixture
def ciphertext(kms: Runner, key: str, tmp_path: Path) -> Path:
    path = tmp_path / "ct"
    ok(kms("encrypt", "--key", key, "-o", str(path), input=os.urandom(3 << 20)))
    return path


def commands(key: str, ciphertext: Path) -> list[list[str]]:
    return [
        ["keys", "list"], ["keys", "list", "--json"], ["keys", "describe", key], ["keys", "describe", key, "--json"],
        ["alias", "list"], ["policy", "get", key], ["audit", "show"], ["datakey", key, "--json"],
        ["decrypt", "-i", str(ciphertext)], ["decrypt", "-i", str(ciphertext), "-o", "/dev/stdout"],
        ["encrypt", "--key", key, "--armor", "-i", str(ciphertext)],
        ["random", "1000", "--format", "hex"], ["random", "16"], ["random", "1000", "--format", "raw"],
        ["random", "1000", "--format", "hex", "--debug"],  # not a fast-path spelling: through Typer
        ["random", "1000", "--format", "raw", "--debug"], ["--version"],
    ]


def test_closed_stdout_ends_quietly_with_141(env: dict[str, str], key: str, ciphertext: Path) -> None:
    failures = []
    for args in commands(key, ciphertext):
        r = into_closed_pipe(args, env)
        if r.returncode != EXIT_BROKEN_PIPE or r.stderr != b"":
            failures.append((args, r.returncode, r.stderr.decode(errors="replace")))
    assert not failures, failures


def test_decrypt_from_stdin_into_a_closed_pipe(env: dict[str, str], ciphertext: Path) -> None:
    r = into_closed_pipe(["decrypt"], env, stdin=ciphertext.read_bytes())
    assert (r.returncode, r.stderr) == (EXIT_BROKEN_PIPE, b"")


def test_through_a_session_too(kms: Runner, env: dict[str, str], key: str, ciphertext: Path) -> None:
    out = ok(kms("unlock", "--ttl", "5m")).stdout.decode()
    token = out.strip().split("=", 1)[1].strip("'\"")
    session_env = {**env, "KMSCLI_SESSION": token}
    session_env.pop("KMSCLI_PASSPHRASE")
    try:
        for args in (["keys", "list"], ["decrypt", "-i", str(ciphertext)], ["audit", "show"]):
            r = into_closed_pipe(args, session_env)
            assert (r.returncode, r.stderr) == (EXIT_BROKEN_PIPE, b""), (args, r.stderr)
    finally:
        subprocess.run([*kmscli_command(), "lock"], env=session_env, capture_output=True, timeout=HANG_GUARD_S)
