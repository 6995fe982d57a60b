"""Security review of the session agent: floods, the runtime folder's fallback, commands that outlive a session.

Work is counted (processes, connections), never timed: waits are bounded
polls for a state, not measurements.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmscli import errors
from kmscli.agent import client, server, session, worker
from tests.conftest import CHEAP_KDF, PASSPHRASE, Runner, fails, kmscli_command, ok
from tests.session.conftest import Unlocker, agent_pid, children, socket_of, wait_until

#: More connections than the agent runs workers for and its listen queue holds together.
FLOOD = 120


@pytest.fixture
def session_env(kms: Runner, unlock: Unlocker) -> dict[str, str]:
    ok(kms("keys", "create", "--alias", "alias/app"))
    return unlock()


# -- (a) a flood of connections ------------------------------------------------------------
class Flood:
    """Idle connections to an agent, made without blocking: a full queue is EAGAIN, counted."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.open: list[socket.socket] = []
        self.refused = 0

    def connect(self, count: int) -> None:
        dfd = os.open(os.path.dirname(self.path), os.O_PATH)
        try:
            for _ in range(count):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(f"/proc/self/fd/{dfd}/{os.path.basename(self.path)}")
                except BlockingIOError:  # the agent's queue is full
                    s.close()
                    self.refused += 1
                    continue
                self.open.append(s)
        finally:
            os.close(dfd)

    def close(self) -> None:
        for s in self.open:
            s.close()
        self.open.clear()


@pytest.fixture
def flood(session_env: dict[str, str]) -> Iterator[Flood]:
    f = Flood(socket_of(session_env["KMSCLI_SESSION"]))
    yield f
    f.close()


def test_a_flood_of_idle_connections_runs_at_most_max_workers(
    kms: Runner, env: dict[str, str], session_env: dict[str, str], flood: Flood, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = agent_pid(session_env["KMSCLI_SESSION"])
    assert pid is not None
    flood.connect(FLOOD)
    # The agent takes connections until it runs MAX_WORKERS (each waits for a
    # request that never comes); then it must stop forking.
    assert wait_until(lambda: len(children(pid)) >= server.MAX_WORKERS, 20), children(pid)
    counts = []
    for _ in range(10):
        flood.connect(5)  # keep knocking: the queue stays full, nothing new is forked
        counts.append(len(children(pid)))
    assert max(counts) == server.MAX_WORKERS, counts
    # The rest wait in a bounded queue, and the connections beyond it are refused by the kernel.
    assert len(flood.open) <= server.MAX_WORKERS + server.LISTEN_BACKLOG + 1
    assert flood.refused >= FLOOD + 50 - (server.MAX_WORKERS + server.LISTEN_BACKLOG + 1)

    # A client that finds the queue full waits (QUEUE_WAIT_S), then says why, never hangs.
    monkeypatch.setattr(client, "QUEUE_WAIT_S", 0.0)
    with pytest.raises(client.Refused) as refused:
        client.connect(flood.path)
    assert refused.value.name == "SessionAgentException" and refused.value.code == errors.EXIT_UNLOCK
    assert "busy" in str(refused.value) and flood.path in str(refused.value)

    # A real request made now completes once the idle connections are gone.
    real = subprocess.Popen([*kmscli_command(), "keys", "list"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**env, **session_env}, start_new_session=True)
    flood.close()
    out, err = real.communicate(timeout=120)
    assert real.returncode == 0, err
    assert out.strip()
    assert len(children(pid)) <= server.MAX_WORKERS
    ok(kms("encrypt", "--key", "alias/app", input=b"x", env_update=session_env))


# -- (b) the runtime folder's fallback under the temporary folder ---------------------------
@pytest.fixture
def fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No KMSCLI_RUNTIME_DIR, no XDG_RUNTIME_DIR, no /run/user/<uid>: the folder is <tmp>/runtime-<uid>."""
    monkeypatch.delenv(session.RUNTIME_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(session, "RUN_USER", tmp_path / "no-run-user", raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)  # as /tmp: everyone may create names here
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # gettempdir() read TMPDIR once, before this test
    return tmp / f"runtime-{os.getuid()}"


def test_a_missing_fallback_is_created_private(fallback: Path) -> None:
    folder = session.runtime_dir()
    assert folder == fallback / "kmscli"
    for d in (fallback, folder):
        st = os.lstat(d)
        assert st.st_uid == os.getuid()
        assert st.st_mode & 0o777 == 0o700


def test_an_existing_private_fallback_of_ours_is_used(fallback: Path) -> None:
    fallback.mkdir(0o700)
    assert session.runtime_dir() == fallback / "kmscli"


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o777, 0o701])
def test_a_fallback_open_to_others_is_refused_naming_it(fallback: Path, mode: int) -> None:
    fallback.mkdir()
    fallback.chmod(mode)
    with pytest.raises(errors.SessionAgentException) as e:
        session.runtime_dir()
    assert str(fallback) in e.value.message and f"{mode:04o}" in e.value.message
    assert fallback.stat().st_mode & 0o777 == mode  # refused, not repaired: others may have been inside
    assert not (fallback / "kmscli").exists()


def test_a_fallback_that_is_a_symlink_is_refused_never_followed(fallback: Path, tmp_path: Path) -> None:
    target = tmp_path / "theirs"
    target.mkdir(0o700)
    fallback.symlink_to(target)
    for create in (True, False):  # unlock; lock and passwd looking for sessions to end
        with pytest.raises(errors.SessionAgentException) as e:
            session.runtime_dir(create=create)
        assert str(fallback) in e.value.message and "symbolic link" in e.value.message
    assert not (target / "kmscli").exists()


def test_a_fallback_of_another_user_is_refused_naming_it(fallback: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("making a folder another user's needs root")
    fallback.mkdir(0o700)
    os.chown(fallback, 65534, 65534)
    for create in (True, False):
        with pytest.raises(errors.SessionAgentException) as e:
            session.runtime_dir(create=create)
        assert str(fallback) in e.value.message and "uid 65534" in e.value.message
    assert not (fallback / "kmscli").exists()


def test_unlock_refuses_a_foreign_fallback_with_exit_5(kms: Runner, vault: Path, tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("making a folder another user's needs root")
    if os.path.isdir(f"/run/user/{os.getuid()}"):
        pytest.skip("this machine has /run/user/<uid>: the fallback may not be used")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    base = tmp / f"runtime-{os.getuid()}"
    base.mkdir(0o700)
    os.chown(base, 65534, 65534)
    r = kms("unlock", env_update={"TMPDIR": str(tmp)}, env_remove=("KMSCLI_RUNTIME_DIR", "XDG_RUNTIME_DIR"))
    line = fails(r, 5, "SessionAgentException")
    assert str(base) in line and "uid 65534" in line


# -- (c) commands that would outlive the session ---------------------------------------------
@pytest.mark.parametrize(
    ("argv", "path", "wants_help"),
    [
        (["passwd"], ("passwd",), False),
        (["--vault", "v.kms", "passwd"], ("passwd",), False),
        (["--vault=v.kms", "--debug", "passwd", "--kdf-time", "2"], ("passwd",), False),
        (["--passphrase-file", "passwd", "keys", "list"], ("keys", "list"), False),  # a value, not the command
        (["--", "passwd"], ("passwd",), False),
        (["audit", "restart"], ("audit", "restart"), False),  # matched by name, whether it exists or not
        (["--audit-log", "a.jsonl", "audit", "restart"], ("audit", "restart"), False),
        (["unlock", "--ttl", "24h"], ("unlock",), False),
        (["--vault", "v.kms", "init"], ("init",), False),
        (["passwd", "--help"], ("passwd",), True),
        (["passwd", "-h"], ("passwd",), True),
        (["passwd", "--new-passphrase-file", "--help"], ("passwd",), False),  # "--help" is the file's name here
        (["keys", "create", "--description", "passwd"], ("keys", "create"), False),
        (["encrypt", "--key", "passwd"], ("encrypt",), False),
        (["pass"], ("pass",), False),  # click takes no abbreviations: this runs nothing
        (["--bogus", "passwd"], (), False),  # a usage error: nothing runs
    ],
)
def test_command_path_is_what_click_runs(argv: list[str], path: tuple[str, ...], wants_help: bool) -> None:
    assert worker.command_path(argv) == (path, wants_help)


def test_every_refused_command_names_the_passphrase_and_kmscli_session() -> None:
    for path in worker.NOT_THROUGH_A_SESSION:
        with pytest.raises(errors.InvalidSessionException) as e:
            worker._refuse_outliving(["--debug", *path])
        assert e.value.exit_code == errors.EXIT_UNLOCK
        assert "needs the passphrase" in e.value.message and "without KMSCLI_SESSION" in e.value.message
        assert f"'kmscli {' '.join(path)}'" in e.value.message


@pytest.mark.parametrize(
    "argv",
    [
        ["passwd"],
        ["--vault", "{vault}", "passwd"],
        ["--debug", "passwd", "--kdf-time", "1"],
        ["audit", "restart"],
        ["--vault={vault}", "audit", "restart"],
    ],
)
def test_passwd_and_audit_restart_through_a_session_are_exit_5(kms: Runner, vault: Path,
                                                                session_env: dict[str, str], argv: list[str]) -> None:
    args = [a.format(vault=vault) for a in argv]
    r = kms(*args, env_update={**session_env, "KMSCLI_NEW_PASSPHRASE": "a new one"})
    line = fails(r, 5, "InvalidSessionException")
    assert "needs the passphrase" in line and "without KMSCLI_SESSION" in line
    # nothing changed: the old passphrase still opens the vault, and the session still works
    ok(kms("keys", "list", env_remove=("KMSCLI_SESSION",)))
    ok(kms("keys", "list", env_update=session_env))


def test_help_of_a_refused_command_still_works_through_a_session(kms: Runner, session_env: dict[str, str]) -> None:
    assert b"passphrase" in ok(kms("passwd", "--help", env_update=session_env)).stdout


def ask_agent(token: str, argv: list[str]) -> list[bytes] | None:
    """Send ``argv`` to the agent as any process holding the session string could, past the thin client."""
    path, secret = client.parse(token)
    sock = client.connect(path)
    client.send(sock, secret, argv)
    reply = client.read_reply(sock)
    sock.close()
    return reply


@pytest.mark.parametrize("argv", [["unlock"], ["unlock", "--ttl", "24h"], ["--vault", "{vault}", "unlock"],
                                  ["init", *CHEAP_KDF], ["--debug", "init"]])
def test_unlock_and_init_sent_straight_to_the_agent_are_refused(vault: Path, session_env: dict[str, str],
                                                                argv: list[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The thin client runs unlock and init itself; a crafted client must not get them from the agent."""
    monkeypatch.setenv("KMSCLI_PASSPHRASE", PASSPHRASE)  # would be sent along if the filter let it
    monkeypatch.setenv("KMSCLI_VAULT", str(vault.with_name("new.kms")))
    reply = ask_agent(session_env["KMSCLI_SESSION"], [a.format(vault=vault) for a in argv])
    assert reply is not None and reply[:3] == [b"error", b"5", b"InvalidSessionException"], reply
    assert b"without KMSCLI_SESSION" in reply[3]
    assert not vault.with_name("new.kms").exists()
