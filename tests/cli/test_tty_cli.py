"""The passphrase prompt on the controlling terminal, driven through a real pseudo-terminal.

``run_on_tty`` types an answer when its prompt shows and reads until the
terminal closes: nothing here waits a fixed time, and its clock (and the
``timeout=`` below) only guards against a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from tests.conftest import CHEAP_KDF, clean_env, kmscli_command
from tests.ttyrun import HANG_GUARD_S, run_on_tty


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


def test_init_mismatch_three_times_changes_nothing(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    code, screen = run_on_tty(["init", *CHEAP_KDF], clean_env(KMSCLI_VAULT=str(vault)),
                              [b"one", b"two", b"three", b"four", b"five", b"six"])
    assert code == 2, screen
    assert screen.count(b"the two passphrases differ; try again") == 2
    assert b"ValidationException: the two passphrases differed 3 times; nothing was changed" in screen
    assert not vault.exists()


def test_init_mismatch_asks_again(tmp_path: Path) -> None:
    """Issue 15: a typo in the confirmation ended init (exit 2); now it asks again, three tries in all."""
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    code, screen = run_on_tty(["init", *CHEAP_KDF], env, [b"right", b"rihgt", b"", b"right", b"right"])
    assert code == 0, screen
    lines = screen.decode().replace("\r\n", "\n").split("\n")
    assert lines[:6] == [
        "kmscli: new vault passphrase: ", "kmscli: new vault passphrase again: ",
        "kmscli: the two passphrases differ; try again (2 of 3)", "kmscli: new vault passphrase: ",
        "kmscli: the passphrase must not be empty; try again (3 of 3)", "kmscli: new vault passphrase: ",
    ], screen
    assert b"right" not in screen  # no echo
    # The passphrase that matched its confirmation is the vault's.
    assert run_on_tty(["keys", "list"], {**env, "KMSCLI_PASSPHRASE": "right"}, [])[0] == 0


def _failed_unlocks(vault: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in (vault.parent / "audit.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("errorCode") == "IncorrectPassphraseException"]


def test_wrong_passphrase_on_terminal_three_tries(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"right", b"right"])[0] == 0
    code, screen = run_on_tty(["keys", "list"], env, [b"wrong1", b"wrong2", b"wrong3"])
    assert code == 5, screen
    assert screen.count(b"kmscli: vault passphrase: ") == 3
    assert b"try again (2 of 3)" in screen and b"try again (3 of 3)" in screen
    assert screen.count(b"IncorrectPassphraseException") == 1  # one error line, after the last try
    assert b"wrong" not in screen
    # Each try is a failed unlock of its own, written without the key, as a single failure is.
    failed = _failed_unlocks(vault)
    assert [(r["eventName"], r["keyed"]) for r in failed] == [("ListKeys", False)] * 3


def test_a_wrong_passphrase_is_asked_again(tmp_path: Path) -> None:
    """Issue 15: one typo on the terminal ended the command (exit 5); sudo and ssh give three tries."""
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"right", b"right"])[0] == 0
    code, screen = run_on_tty(["keys", "create", "--alias", "alias/t"], env, [b"wrong", b"right"])
    assert code == 0, screen
    assert b"kmscli: that passphrase does not unlock this vault; try again (2 of 3)\r\nkmscli: vault passphrase: " \
        in screen
    assert b"IncorrectPassphraseException" not in screen
    assert len(_failed_unlocks(vault)) == 1
    records = [json.loads(line) for line in (vault.parent / "audit.jsonl").read_text().splitlines()]
    assert [(r["eventName"], r.get("errorCode")) for r in records[-2:]] == [
        ("CreateKey", "IncorrectPassphraseException"), ("CreateKey", None)]


def test_a_passphrase_from_a_file_or_the_environment_gets_one_try(tmp_path: Path) -> None:
    """The same wrong answer would come again: no retry, no prompt, exit 5 at once, one failed unlock."""
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"right", b"right"])[0] == 0
    wrong = tmp_path / "pass"
    wrong.write_bytes(b"wrong\n")
    wrong.chmod(0o600)
    for extra, args in (({"KMSCLI_PASSPHRASE": "wrong"}, []), ({}, ["--passphrase-file", str(wrong)])):
        code, screen = run_on_tty([*args, "keys", "list"], {**env, **extra}, [])
        assert code == 5, screen
        assert b"passphrase: " not in screen and b"try again (" not in screen
    assert len(_failed_unlocks(vault)) == 2


def test_passwd_asks_for_the_current_passphrase_first(tmp_path: Path) -> None:
    """As passwd, ssh-keygen -p and gpg do; the prompt says which passphrase it wants."""
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"old", b"old"])[0] == 0
    code, screen = run_on_tty(["passwd"], env, [b"olf", b"old", b"new", b"newer", b"new", b"new"])
    assert code == 0, screen
    lines = screen.decode().replace("\r\n", "\n").split("\n")
    assert lines[:7] == [
        "kmscli: current vault passphrase: ",
        "kmscli: that passphrase does not unlock this vault; try again (2 of 3)",
        "kmscli: current vault passphrase: ",
        "kmscli: new vault passphrase: ", "kmscli: new vault passphrase again: ",
        "kmscli: the two passphrases differ; try again (2 of 3)", "kmscli: new vault passphrase: ",
    ], screen
    assert run_on_tty(["keys", "list"], {**env, "KMSCLI_PASSPHRASE": "new"}, [])[0] == 0
    assert run_on_tty(["keys", "list"], {**env, "KMSCLI_PASSPHRASE": "old"}, [])[0] == 5


def test_passwd_stops_after_three_wrong_current_passphrases(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"old", b"old"])[0] == 0
    code, screen = run_on_tty(["passwd"], env, [b"a", b"b", b"c"])
    assert code == 5, screen
    assert b"new vault passphrase" not in screen  # never asked for a new one
    assert [r["eventName"] for r in _failed_unlocks(vault)] == ["ChangePassphrase"] * 3
    assert run_on_tty(["keys", "list"], {**env, "KMSCLI_PASSPHRASE": "old"}, [])[0] == 0


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
        subprocess.run([*kmscli_command(), *args], env=env, check=True, capture_output=True,
                       timeout=HANG_GUARD_S)
    code, screen = run_on_tty(["encrypt", "--key", "alias/t"], env, [], stdin_data=b"secret")
    assert code == 2, screen
    assert b"ValidationException" in screen and b"--armor" in screen
    assert b"\x89KMS" not in screen
    code, screen = run_on_tty(["encrypt", "--key", "alias/t", "--armor"], env, [], stdin_data=b"secret")
    assert code == 0, screen
    assert b"-----BEGIN" in screen


def test_progress_bar_on_terminal_for_big_inputs(tmp_path: Path) -> None:
    import subprocess
    import threading

    env = clean_env(KMSCLI_VAULT=str(tmp_path / "v" / "vault.kms"), KMSCLI_PASSPHRASE="pw")
    for args in (["init", *CHEAP_KDF], ["keys", "create", "--alias", "alias/t"]):
        subprocess.run([*kmscli_command(), *args], env=env, check=True, capture_output=True,
                       timeout=HANG_GUARD_S)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(1 << 20) * 24)
    code, screen = run_on_tty(["encrypt", "--key", "alias/t", "-i", str(big), "-o", str(tmp_path / "a")], env, [])
    assert code == 0, screen
    assert b"encrypting" in screen and b"MB" in screen  # bytes done / total, speed
    # Size unknown (a FIFO): the bar appears once enough has flowed.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(big.read_bytes()), daemon=True)
    feeder.start()
    code, screen = run_on_tty(["encrypt", "--key", "alias/t", "-i", str(fifo), "-o", str(tmp_path / "b")], env, [])
    if feeder.is_alive() and code != 0:  # kmscli failed before reading it all: release the writer
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    feeder.join(HANG_GUARD_S)
    assert not feeder.is_alive()
    assert code == 0, screen
    assert b"encrypting" in screen
    # Small inputs draw nothing.
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1000)
    code, screen = run_on_tty(["encrypt", "--key", "alias/t", "-i", str(small), "-o", str(tmp_path / "c")], env, [])
    assert code == 0 and b"encrypting" not in screen, screen


def test_input_typed_on_the_terminal_is_asked_for(tmp_path: Path) -> None:
    """encrypt with the terminal as its input used to wait in silence (issue 15): it says how to end
    the input, as gpg does, then encrypts what was typed."""
    import pty
    import select
    import subprocess
    import time

    env = clean_env(KMSCLI_VAULT=str(tmp_path / "v" / "vault.kms"), KMSCLI_PASSPHRASE="pw")
    for args in (["init", *CHEAP_KDF], ["keys", "create", "--alias", "alias/t"]):
        subprocess.run([*kmscli_command(), *args], env=env, check=True, capture_output=True, timeout=HANG_GUARD_S)
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execve(kmscli_command()[0], [*kmscli_command(), "encrypt", "--key", "alias/t", "--armor"], env)
        finally:
            os._exit(127)
    screen = b""
    typed = False
    deadline = time.monotonic() + HANG_GUARD_S  # a guard: the loop ends when the terminal closes
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break  # EIO: the process ended and everything was read
            if not chunk:
                break
            screen += chunk
            if not typed and b"Ctrl-D" in screen:
                os.write(fd, b"typed secret\n\x04")
                typed = True
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    text = screen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert ("kmscli: reading the input from the terminal: type or paste it, then Ctrl-D on a line of its own "
            "(or give -i FILE)") in text
    assert "-----BEGIN KMSCLI ENCRYPTED MESSAGE-----" in text


def test_serve_gives_three_tries_too(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault))
    assert run_on_tty(["init", *CHEAP_KDF], env, [b"right", b"right"])[0] == 0
    code, screen = run_on_tty(["serve", "--port", "0"], env, [b"a", b"b", b"c"])
    assert code == 5, screen
    assert screen.count(b"kmscli: vault passphrase: ") == 3 and b"serving on" not in screen
