"""Sessions and the terminal: unlock asks there; a bad session never does."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import PASSPHRASE, Runner
from tests.session.conftest import agent_pid, stop
from tests.ttyrun import run_on_tty


def on_tty(args: list[str], env: dict[str, str], answer: bytes | None) -> tuple[int, bytes]:
    """Run kmscli on a pseudo-terminal, typing ``answer`` once a passphrase prompt shows.

    ``run_on_tty`` waits for events (the prompt, the terminal closing), not for
    time; its clock is only a hang guard, so a slow machine passes too.
    """
    return run_on_tty(args, env, [answer] if answer is not None else [])


def test_unlock_asks_on_the_terminal(kms: Runner, vault: Path, env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "KMSCLI_PASSPHRASE"}
    code, screen = on_tty(["unlock", "--ttl", "30"], env, PASSPHRASE.encode())
    assert code == 0, screen
    token = screen.split(b"export KMSCLI_SESSION=", 1)[1].split()[0].decode()
    pid = agent_pid(token)
    try:
        code, screen = on_tty(["keys", "list"], {**env, "KMSCLI_SESSION": token}, None)
        assert code == 0, screen
        assert b"passphrase" not in screen
    finally:
        assert kms("lock", env_update={"KMSCLI_SESSION": token}).returncode == 0
        if pid is not None:
            stop(pid, signal.SIGTERM)


def test_a_bad_session_never_prompts(vault: Path, env: dict[str, str]) -> None:
    env = {**env, "KMSCLI_SESSION": "kms1:/nonexistent/agent.sock:" + "ab" * 32}
    code, screen = on_tty(["keys", "list"], env, PASSPHRASE.encode())
    assert code == 5, screen
    assert b"InvalidSessionException" in screen and b"passphrase:" not in screen
