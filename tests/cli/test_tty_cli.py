"""The passphrase prompt on the controlling terminal, driven through a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path

from tests.conftest import CHEAP_KDF, clean_env, kmscli_command


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
                break
    if status is None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:  # still waiting at the deadline: a hang is a failure, not a stuck suite
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


def test_init_asks_twice_on_the_terminal(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    code, screen = run_on_tty(["init", *CHEAP_KDF], env, [b"tty secret", b"tty secret"])
    assert code == 0, screen
    assert screen.count(b"passphrase") >= 2
    assert b"tty secret" not in screen  # no echo
    # The passphrase typed on the terminal unlocks the vault, with data on stdin untouched.
    code, screen = run_on_tty(["keys", "create"], env, [b"tty secret"])
    assert code == 0, screen


def test_init_mismatch_changes_nothing(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    code, screen = run_on_tty(["init", *CHEAP_KDF], clean_env(KMSCLI_VAULT=str(vault)), [b"one", b"two"])
    assert code == 2, screen
    assert b"differ" in screen
    assert not vault.exists()


def test_wrong_passphrase_on_terminal(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"right", b"right"])[0] == 0
    code, screen = run_on_tty(["keys", "list"], env, [b"wrong"])
    assert code == 5, screen
    assert b"wrong" not in screen


def test_prompt_leaves_stdin_for_data(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"pw", b"pw"])[0] == 0
    assert run_on_tty(["keys", "create", "--alias", "alias/t"], env, [b"pw"])[0] == 0
    out = tmp_path / "ct"
    code, screen = run_on_tty(["encrypt", "--key", "alias/t", "-o", str(out)], env, [b"pw"],
                              stdin_data=b"piped data")
    assert code == 0, screen
    code, screen = run_on_tty(["decrypt", "-i", str(out)], env, [b"pw"])
    assert code == 0 and b"piped data" in screen


def test_binary_ciphertext_refused_on_terminal(tmp_path: Path) -> None:
    import subprocess

    env = clean_env(KMSCLI_VAULT=str(tmp_path / "v" / "vault.kms"), KMSCLI_PASSPHRASE="pw")
    for args in (["init", *CHEAP_KDF], ["keys", "create", "--alias", "alias/t"]):
        subprocess.run([*kmscli_command(), *args], env=env, check=True, capture_output=True)
    code, screen = run_on_tty(["encrypt", "--key", "alias/t"], env, [], stdin_data=b"secret")
    assert code == 2, screen
    assert b"ValidationException" in screen and b"--armor" in screen
    assert b"\x89KMS" not in screen
    code, screen = run_on_tty(["encrypt", "--key", "alias/t", "--armor"], env, [], stdin_data=b"secret")
    assert code == 0, screen
    assert b"-----BEGIN" in screen
