"""``kmscli unlock`` / ``lock``: what a session opens, how it ends, and that it never falls back."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, Runner, fails, kmscli_command, ok
from tests.session.conftest import Unlocker, agent_pid, alive, socket_of, wait_until

NO_PASS = ("KMSCLI_PASSPHRASE",)


def new_key(kms: Runner, alias: str = "alias/app") -> str:
    return ok(kms("keys", "create", "--alias", alias)).stdout.decode().strip()


def test_round_trip_through_a_session_without_any_passphrase(kms: Runner, unlock: Unlocker) -> None:
    key = new_key(kms)
    s = unlock()
    ct = ok(kms("encrypt", "--key", "alias/app", input=b"hello", env_update=s, env_remove=NO_PASS)).stdout
    assert ok(kms("decrypt", input=ct, env_update=s, env_remove=NO_PASS)).stdout == b"hello"
    # and a ciphertext made through the session decrypts without one
    assert ok(kms("decrypt", input=ct)).stdout == b"hello"
    listed = json.loads(ok(kms("keys", "list", "--json", env_update=s, env_remove=NO_PASS)).stdout)
    meta = json.loads(ok(kms("keys", "describe", key, "--json", env_update=s, env_remove=NO_PASS)).stdout)
    assert listed == {"Keys": [{"KeyId": key, "KeyArn": meta["KeyMetadata"]["Arn"]}], "Truncated": False}
    assert meta["KeyMetadata"]["KeyState"] == "Enabled"
    table = ok(kms("keys", "list", env_update=s, env_remove=NO_PASS)).stdout.decode()
    assert table.split("\t")[:3] == [key, "Enabled", "alias/app"]


def test_unlock_prints_the_export_line_for_sh_and_fish(kms: Runner, unlock: Unlocker, runtime_dir: Path) -> None:
    s = unlock("--ttl", "300")
    token = s["KMSCLI_SESSION"]
    assert token.startswith(f"kms1:{runtime_dir}/")
    r = ok(kms("unlock", "--shell", "fish"))
    line = r.stdout.decode()
    assert line.startswith("set -gx KMSCLI_SESSION kms1:") and line.endswith(";\n")
    fish_token = line.split()[3].rstrip(";")
    ok(kms("lock", env_update={"KMSCLI_SESSION": fish_token}))


def test_a_failed_unlock_fails_the_eval_that_runs_it(kms: Runner, vault: Path, env: dict[str, str],
                                                     runtime_dir: Path) -> None:
    """`eval "$(kmscli unlock)"` ran an empty string and succeeded when unlock failed (issue 15): the
    script went on without a session. A failed unlock prints `false` for the eval, in sh and fish alike."""
    script = 'set -e; eval "$("$KMSCLI" unlock)"; echo "went on"'
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=HANG_GUARD_S, start_new_session=True,
                       env={**env, "KMSCLI": kmscli_command()[0], "KMSCLI_PASSPHRASE": "not the passphrase"})
    assert r.returncode == 1 and b"went on" not in r.stdout
    assert r.stderr.decode().strip().splitlines() == [
        "kmscli: IncorrectPassphraseException: the passphrase does not unlock this vault; check it and try again"]
    r = kms("unlock", "--shell", "fish", env_update={"KMSCLI_PASSPHRASE": "not the passphrase"})
    assert r.returncode == 5 and r.stdout == b"false\n"
    assert not list(runtime_dir.glob("*.sock"))


def test_files_are_private(kms: Runner, unlock: Unlocker, runtime_dir: Path) -> None:
    s = unlock()
    assert runtime_dir.stat().st_mode & 0o777 == 0o700
    assert os.stat(socket_of(s["KMSCLI_SESSION"])).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("value", ["0", "abc", "25h", "1d", "-5", "15 m", "1h30", "90ss", ""])
def test_bad_durations_are_usage_errors(kms: Runner, vault: Path, value: str) -> None:
    fails(kms("unlock", "--ttl", value), 2, "ValidationException")


def test_bad_idle_and_shell_are_usage_errors(kms: Runner, vault: Path, runtime_dir: Path) -> None:
    fails(kms("unlock", "--idle", "0"), 2, "ValidationException")
    fails(kms("unlock", "--shell", "tcsh"), 2, "ValidationException")
    assert not list(runtime_dir.glob("*.sock"))


def test_durations() -> None:
    from kmscli.agent.session import parse_duration

    cases = {"90": 90, "90s": 90, "15m": 900, "2h": 7200, "1h30m": 5400, "24h": 86400, "1h0m1s": 3601}
    for text, seconds in cases.items():
        assert parse_duration(text, "--ttl") == seconds


def test_a_session_opens_only_its_own_vault(kms: Runner, unlock: Unlocker, tmp_path: Path, vault: Path) -> None:
    other = tmp_path / "other" / "vault.kms"
    ok(kms("init", *CHEAP_KDF, env_update={"KMSCLI_VAULT": str(other)}))
    s = unlock()
    line = fails(kms("--vault", str(other), "keys", "list", env_update=s), 5, "InvalidSessionException")
    assert str(other) in line
    fails(kms("keys", "list", env_update={**s, "KMSCLI_VAULT": str(other)}), 5, "InvalidSessionException")
    # the session is fine for its own vault, however it is spelled
    (tmp_path / "link").symlink_to(vault.parent)
    for spelling in (vault.parent / ".." / vault.parent.name / vault.name, tmp_path / "link" / vault.name):
        ok(kms("--vault", str(spelling), "keys", "list", env_update=s, env_remove=NO_PASS))


def test_forged_session_is_refused_even_with_a_passphrase(kms: Runner, unlock: Unlocker, vault: Path) -> None:
    new_key(kms)
    token = unlock()["KMSCLI_SESSION"]
    forged = token[:-8] + ("0" * 8 if not token.endswith("0" * 8) else "1" * 8)
    # KMSCLI_PASSPHRASE is set here: a bad session must not fall back to it.
    for bad in (forged, "kms1:/nonexistent/x.sock:" + "ab" * 32, "not-a-session", token + "x"):
        fails(kms("keys", "list", env_update={"KMSCLI_SESSION": bad}), 5, "InvalidSessionException")
        fails(kms("encrypt", "--key", "alias/app", input=b"x", env_update={"KMSCLI_SESSION": bad}), 5,
              "InvalidSessionException")
    # the forged attempts did not end the real session
    ok(kms("keys", "list", env_update={"KMSCLI_SESSION": token}))


#: The first TTL (seconds) a TTL test tries. A TTL check is conclusive only when
#: the calls it depends on took less than the TTL; when they did not (a slow
#: machine), the test tries again with a TTL fitted to the time they took.
FIRST_TTL = 2


def longer_ttl(ttl: int, work: float) -> int:
    """The next TTL to try after calls that took ``work`` seconds made ``ttl`` too short to tell."""
    longer = max(2 * ttl, math.ceil(2 * work))
    assert longer <= HANG_GUARD_S, f"calls took {work:.0f} s: the machine is hung"
    return longer


def sleep_until(moment: float) -> None:
    """Wait until time.monotonic() reaches ``moment``: for a TTL to pass, never for work to get done."""
    while (left := moment - time.monotonic()) > 0:
        time.sleep(left)


def test_the_absolute_ttl_ends_the_session(kms: Runner, unlock: Unlocker) -> None:
    """Valid before its TTL, refused after it, whatever the machine's speed.

    The agent sets its deadline (now + TTL) while ``unlock`` runs: no earlier
    than ``began`` and no later than ``unlocked``. A call that ends before
    ``began + ttl`` was checked before the deadline, so it must succeed; a call
    that starts after ``unlocked + ttl`` comes after it, so it must be refused.
    """
    ttl = FIRST_TTL
    while True:
        began = time.monotonic()
        s = unlock("--ttl", f"{ttl}s", short_lived=True)
        unlocked = time.monotonic()
        pid = agent_pid(s["KMSCLI_SESSION"])  # a probe: no request, no effect on the TTL
        r = kms("keys", "list", env_update=s)
        took = time.monotonic() - began
        if took < ttl:  # conclusive: all of it happened before the deadline
            ok(r)
            break
        ttl = longer_ttl(ttl, took)
    sleep_until(unlocked + ttl)
    fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")
    assert pid is not None and wait_until(lambda: not alive(pid))
    assert not os.path.exists(socket_of(s["KMSCLI_SESSION"]))


def test_the_idle_ttl_ends_an_unused_session(kms: Runner, unlock: Unlocker) -> None:
    """Each call restarts the idle clock; once unused for the idle TTL, the session ends.

    The agent counts idle time from its last request's activity (or its start),
    which lies between the previous call's start and end: a call that ends
    less than ``idle`` after the previous one began must succeed. Calls spaced
    ``idle / 4`` apart span more than ``idle`` in all, so the session outlives
    its idle TTL only because each call restarted the clock.
    """
    idle = FIRST_TTL
    while True:
        previous = time.monotonic()  # before the agent starts its idle clock, inside unlock
        s = unlock("--ttl", "1h", "--idle", str(idle), short_lived=True)
        for _ in range(5):
            time.sleep(idle / 4)
            started = time.monotonic()
            r = kms("keys", "list", env_update=s)
            gap = time.monotonic() - previous
            if gap >= idle:  # too slow to tell
                break
            ok(r)
            previous = started
        else:
            break  # conclusive: every call came within the idle TTL, and each one succeeded
        idle = longer_ttl(idle, gap - idle / 4)
    # Unused now: the agent ends the session (its socket goes) no sooner than idle after the last call began.
    sock = socket_of(s["KMSCLI_SESSION"])
    assert wait_until(lambda: not os.path.exists(sock)), "the idle session never ended"
    assert time.monotonic() - previous >= idle
    fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")


def test_lock_ends_the_session(kms: Runner, unlock: Unlocker) -> None:
    s = unlock()
    ok(kms("lock", env_update=s, env_remove=NO_PASS))
    fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")
    r = ok(kms("lock", env_update=s))  # locking twice is fine
    assert b"already ended" in r.stderr


def test_lock_without_a_session_ends_every_session_of_the_vault(kms: Runner, unlock: Unlocker,
                                                              tmp_path: Path) -> None:
    other = tmp_path / "other" / "vault.kms"
    ok(kms("init", *CHEAP_KDF, env_update={"KMSCLI_VAULT": str(other)}))
    a, b = unlock(), unlock()
    c = unlock(env_update={"KMSCLI_VAULT": str(other)})
    r = ok(kms("lock"))
    assert b"ended 2 sessions" in r.stderr
    for s in (a, b):
        fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")
    ok(kms("keys", "list", env_update={**c, "KMSCLI_VAULT": str(other)}))


def test_passwd_ends_every_session(kms: Runner, unlock: Unlocker) -> None:
    a, b = unlock(), unlock()
    ok(kms("passwd", env_update={"KMSCLI_NEW_PASSPHRASE": "new one"}))
    for s in (a, b):
        fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")
    ok(kms("keys", "list", env_update={"KMSCLI_PASSPHRASE": "new one"}))


def test_a_session_cannot_change_the_passphrase(kms: Runner, unlock: Unlocker, vault: Path) -> None:
    """The review: with only KMSCLI_SESSION, passwd succeeded and the session outlived its TTL for good."""
    s = unlock()
    before = vault.read_bytes()
    only_session = {**s, "KMSCLI_NEW_PASSPHRASE": "taken over"}
    line = fails(kms("passwd", env_update=only_session, env_remove=("KMSCLI_PASSPHRASE",)), 5,
                 "InvalidSessionException")
    assert "never runs through a session" in line
    # Not with the passphrase at hand either: KMSCLI_SESSION set means the session, never a fallback.
    fails(kms("passwd", env_update=only_session), 5, "InvalidSessionException")
    fails(kms("audit", "restart", env_update=s, env_remove=("KMSCLI_PASSPHRASE",)), 5, "InvalidSessionException")
    assert vault.read_bytes() == before
    ok(kms("keys", "list", env_update=s, env_remove=("KMSCLI_PASSPHRASE",)))  # the session itself still works


def test_a_session_survives_nothing_that_changed_the_vault_header(kms: Runner, unlock: Unlocker,
                                                                    tmp_path: Path, vault: Path) -> None:
    """Even an agent passwd could not reach (another runtime folder) refuses the changed vault."""
    s = unlock()
    ok(kms("passwd", env_update={"KMSCLI_NEW_PASSPHRASE": "new one", "KMSCLI_RUNTIME_DIR": str(tmp_path / "x")}))
    fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")


def test_secret_stays_out_of_argv_environment_and_audit_log(kms: Runner, unlock: Unlocker, vault: Path) -> None:
    new_key(kms)
    s = unlock()
    token = s["KMSCLI_SESSION"]
    secret = token.rpartition(":")[2]
    ok(kms("encrypt", "--key", "alias/app", input=b"x", env_update=s))
    pid = agent_pid(token)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
    assert b"kmscli.agent" in cmdline and secret.encode() not in cmdline
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert secret.encode() not in f.read()
    except PermissionError:
        pass  # the agent is not dumpable: the user's other processes cannot read it at all
    log = (vault.parent / "audit.jsonl").read_text()
    assert secret not in log and PASSPHRASE not in log
    assert '"Unlock"' in log


def test_unlock_with_a_wrong_passphrase_starts_nothing(kms: Runner, vault: Path, runtime_dir: Path) -> None:
    fails(kms("unlock", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5, "IncorrectPassphraseException")
    assert not list(runtime_dir.glob("*.sock"))
    records = [json.loads(line) for line in (vault.parent / "audit.jsonl").read_text().splitlines()]
    assert records[-1]["eventName"] == "Unlock" and records[-1]["errorCode"] == "IncorrectPassphraseException"


def test_unlock_without_a_vault_is_exit_8(kms: Runner, tmp_path: Path) -> None:
    fails(kms("unlock", env_update={"KMSCLI_VAULT": str(tmp_path / "none.kms")}), 8)


def test_a_killed_agent_leaves_nothing_that_blocks_the_next_unlock(kms: Runner, unlock: Unlocker,
                                                                     runtime_dir: Path) -> None:
    s = unlock()
    pid = agent_pid(s["KMSCLI_SESSION"])
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid))
    stale = Path(socket_of(s["KMSCLI_SESSION"]))
    assert stale.exists()  # SIGKILL gives the agent no chance to clean up
    fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")
    t = unlock()
    ok(kms("keys", "list", env_update=t))
    assert not stale.exists()  # unlock removed the dead agent's socket


def test_audit_records_carry_the_clients_pid_and_uid(kms: Runner, unlock: Unlocker, vault: Path,
                                                    env: dict[str, str]) -> None:
    new_key(kms)
    s = unlock()
    proc = subprocess.Popen([*kmscli_command(), "encrypt", "--key", "alias/app"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, **s})
    out, err = proc.communicate(b"data", timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err
    last = json.loads((vault.parent / "audit.jsonl").read_text().splitlines()[-1])
    assert last["eventName"] == "Encrypt"
    assert last["userIdentity"]["pid"] == proc.pid != agent_pid(s["KMSCLI_SESSION"])
    assert last["userIdentity"]["uid"] == os.getuid()
    import pwd

    assert last["userIdentity"]["userName"] == pwd.getpwuid(os.getuid()).pw_name


def test_the_user_name_comes_from_the_kernel_not_the_environment(kms: Runner, unlock: Unlocker,
                                                                 vault: Path) -> None:
    new_key(kms)
    s = unlock()
    ok(kms("encrypt", "--key", "alias/app", input=b"x", env_update={**s, "USER": "mallory", "LOGNAME": "mallory"}))
    last = json.loads((vault.parent / "audit.jsonl").read_text().splitlines()[-1])
    assert last["userIdentity"]["userName"] != "mallory"


def test_key_policy_applies_inside_the_agent(kms: Runner, unlock: Unlocker, tmp_path: Path) -> None:
    key_id = new_key(kms)
    account = json.loads(ok(kms("keys", "describe", key_id, "--json")).stdout)["KeyMetadata"]["Arn"].split(":")[4]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*",
             "Resource": "*"},
            {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"},
        ],
    }
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps(policy))
    s = unlock()
    ok(kms("policy", "put", key_id, str(doc), env_update=s))
    fails(kms("encrypt", "--key", key_id, input=b"x", env_update=s), 7, "AccessDeniedException")
    fails(kms("encrypt", "--key", key_id, input=b"x"), 7, "AccessDeniedException")
    ok(kms("datakey", key_id, env_update=s))


def test_an_unusable_session_folder_is_exit_5(kms: Runner, vault: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fails(kms("unlock", env_update={"KMSCLI_RUNTIME_DIR": str(blocker / "run")}), 5, "SessionAgentException")
    fails(kms("unlock", env_update={"KMSCLI_RUNTIME_DIR": str(blocker)}), 5, "SessionAgentException")
