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


def test_unlock_asks_on_the_terminal(kms: Runner, vault: Path, env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in env.items() if k != "KMSCLI_PASSPHRASE"}
    out = tmp_path / "eval-input"  # stdout to the shell's $(...), the prompt on the terminal
    code, screen = run_on_tty(["unlock", "--ttl", "30"], env, [PASSPHRASE.encode()], stdout_path=str(out))
    assert code == 0, screen
    assert b"export KMSCLI_SESSION" not in screen
    token = out.read_bytes().split(b"export KMSCLI_SESSION=", 1)[1].split()[0].decode()
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


def test_unlock_to_the_terminal_starts_nothing(vault: Path, env: dict[str, str], runtime_dir: Path) -> None:
    """Issue 15: `kmscli unlock` without eval printed the export line to the screen and left an agent
    holding the vault key that nothing could use. Now it says how to run it, asks nothing, starts nothing."""
    env = {k: v for k, v in env.items() if k != "KMSCLI_PASSPHRASE"}
    for args, hint in ((["unlock"], b"eval \"$(kmscli unlock)\""),
                       (["unlock", "--shell", "fish"], b"kmscli unlock --shell fish | source")):
        code, screen = on_tty(args, env, PASSPHRASE.encode())
        assert code == 2, screen
        lines = screen.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kmscli: ValidationException: unlock prints a line for your "
                                                       "shell to run"), screen
        assert hint in screen and b"passphrase:" not in screen and b"KMSCLI_SESSION=" not in screen
    assert not runtime_dir.exists() or not list(runtime_dir.glob("*.sock"))  # no agent was started
