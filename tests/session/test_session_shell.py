"""A shell user's sessions (issue 15): a new unlock replaces the shell's session, lock unsets the variable,
and unlock warns about a passphrase file others can read."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, Runner, fails, kmscli_command, ok
from tests.session.conftest import Unlocker, agent_pid, alive, socket_of, token_of, wait_until

NO_PASS = ("KMSCLI_PASSPHRASE",)


def sockets(runtime_dir: Path) -> list[Path]:
    return sorted(runtime_dir.glob("*.sock"))


def test_a_new_unlock_replaces_the_session_of_the_same_vault(kms: Runner, unlock: Unlocker,
                                                             runtime_dir: Path) -> None:
    """Three `eval "$(kmscli unlock)"` in one shell left three agents, each holding the vault key."""
    first = unlock()
    first_pid = agent_pid(first["KMSCLI_SESSION"])
    assert first_pid is not None
    r = ok(kms("unlock", env_update=first))
    second = {"KMSCLI_SESSION": token_of(r.stdout)}
    assert second != first
    assert r.stderr.decode().splitlines()[-1] == (
        "kmscli: ended the session KMSCLI_SESSION held before: the new one replaces it")
    # The old agent is gone (its socket at once, the process once it has wound down); the new one serves.
    assert sockets(runtime_dir) == [Path(socket_of(second["KMSCLI_SESSION"]))]
    assert wait_until(lambda: not alive(first_pid))
    fails(kms("keys", "list", env_update=first, env_remove=NO_PASS), 5, "InvalidSessionException")
    ok(kms("keys", "list", env_update=second, env_remove=NO_PASS))
    ok(kms("lock", env_update=second))


def test_three_unlocks_in_one_shell_leave_one_agent_and_lock_unsets_the_variable(
        kms: Runner, vault: Path, env: dict[str, str], runtime_dir: Path) -> None:
    script = """
        set -e
        eval "$("$K" unlock)"; eval "$("$K" unlock)"; eval "$("$K" unlock)"
        "$K" keys list >/dev/null
        ls "$KMSCLI_RUNTIME_DIR" | grep -c '[.]sock$' || true
        eval "$("$K" lock)"
        echo "after lock: [${KMSCLI_SESSION-unset}]"
        ls "$KMSCLI_RUNTIME_DIR" | grep -c '[.]sock$' || true
    """
    try:
        r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=HANG_GUARD_S,
                           start_new_session=True, env={**env, "K": kmscli_command()[0]})
    finally:
        kms("lock")  # whatever the script left running
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["1", "after lock: [unset]", "0"], r.stdout
    assert r.stderr.decode().count("the new one replaces it") == 2


def test_a_session_of_another_vault_is_left_alone(kms: Runner, unlock: Unlocker, tmp_path: Path,
                                                  runtime_dir: Path) -> None:
    other = tmp_path / "other" / "vault.kms"
    ok(kms("init", *CHEAP_KDF, env_update={"KMSCLI_VAULT": str(other)}))
    theirs = unlock(env_update={"KMSCLI_VAULT": str(other)})
    r = ok(kms("unlock", env_update=theirs))
    ours = {"KMSCLI_SESSION": token_of(r.stdout)}
    assert b"of another vault: it runs on" in r.stderr
    assert len(sockets(runtime_dir)) == 2
    ok(kms("keys", "list", env_update={**theirs, "KMSCLI_VAULT": str(other)}, env_remove=NO_PASS))
    ok(kms("keys", "list", env_update=ours, env_remove=NO_PASS))
    ok(kms("lock", env_update=ours))


def test_lock_prints_the_line_that_unsets_the_variable(kms: Runner, unlock: Unlocker) -> None:
    """SPEC: lock "prints `unset KMSCLI_SESSION` for eval", as `ssh-agent -k` unsets its variables."""
    s = unlock()
    r = ok(kms("lock", env_update=s, env_remove=NO_PASS))
    assert r.stdout == b"unset KMSCLI_SESSION\n"
    assert r.stderr == b"kmscli: session locked\n"
    r = ok(kms("lock", "--shell", "fish", env_update=s, env_remove=NO_PASS))  # already ended: still the line
    assert r.stdout == b"set -e KMSCLI_SESSION;\n" and b"already ended" in r.stderr
    r = ok(kms("lock", "--shell=fish", env_update=s, env_remove=NO_PASS))
    assert r.stdout == b"set -e KMSCLI_SESSION;\n"
    fish = unlock()
    assert ok(kms("lock", "--shell", "fish", env_update=fish, env_remove=NO_PASS)).stdout == \
        b"set -e KMSCLI_SESSION;\n"
    assert ok(kms("lock")).stdout == b"unset KMSCLI_SESSION\n"  # without a session: every session of the vault
    fails(kms("lock", "--shell", "tcsh"), 2, "ValidationException")


def test_unlock_warns_about_a_passphrase_file_others_can_read(kms: Runner, unlock: Unlocker, vault: Path,
                                                             tmp_path: Path) -> None:
    pass_file = tmp_path / "pass"
    pass_file.write_text(PASSPHRASE + "\n")
    for mode, who in ((0o640, "its group"), (0o604, "others")):
        pass_file.chmod(mode)
        r = ok(kms("unlock", "--passphrase-file", str(pass_file), env_remove=NO_PASS))
        warnings = [line for line in r.stderr.decode().splitlines() if "warning" in line]
        assert warnings == [f"kmscli: warning: the passphrase file {pass_file} is readable by {who} "
                            f"(mode {mode:o}), who can read the passphrase; run chmod 600 {pass_file}"]
        assert PASSPHRASE not in r.stderr.decode()
        session = {"KMSCLI_SESSION": token_of(r.stdout)}  # still unlocked
        ok(kms("keys", "list", env_update=session, env_remove=NO_PASS))
        ok(kms("lock", env_update=session))
    pass_file.chmod(0o600)
    r = ok(kms("unlock", "--passphrase-file", str(pass_file), env_remove=NO_PASS))
    assert b"warning" not in r.stderr
    ok(kms("lock", env_update={"KMSCLI_SESSION": token_of(r.stdout)}))
    pass_file.chmod(0o620)  # writable by the group: refused, as before
    line = fails(kms("unlock", "--passphrase-file", str(pass_file), env_remove=NO_PASS), 2, "ValidationException")
    assert "writable by its group" in line


def test_unlock_sends_nothing_to_a_socket_outside_the_session_folder(kms: Runner, unlock: Unlocker,
                                                                     tmp_path: Path) -> None:
    """KMSCLI_SESSION is only an environment variable: a socket it names elsewhere is never contacted."""
    import socket

    elsewhere = tmp_path / "elsewhere.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(elsewhere))
        listener.listen(8)
        listener.setblocking(False)
        r = ok(kms("unlock", env_update={"KMSCLI_SESSION": f"kms1:{elsewhere}:" + "ab" * 32}))
        assert b"held before" not in r.stderr
        try:
            listener.accept()
            raise AssertionError("unlock connected to a socket outside the session folder")
        except BlockingIOError:
            pass  # no connection is waiting: unlock (finished) never connected
        ok(kms("lock", env_update={"KMSCLI_SESSION": token_of(r.stdout)}))
    finally:
        listener.close()
