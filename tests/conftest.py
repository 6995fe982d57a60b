"""Shared fixtures: cheap vaults and a runner for the real ``kmscli`` entry point.

Vaults in tests use ``--kdf-memory 8 --kdf-time 1``: the defaults are never
weakened, the cheap parameters are simply written into each test vault's header.

No test passes or fails by how fast the machine is: tests wait for events
(a prompt, a line, a process state), and every timeout is ``HANG_GUARD_S``,
a guard against hangs far beyond what any command takes on a shared CI
machine ten times slower than a laptop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PASSPHRASE = "correct horse battery staple"
CHEAP_KDF = ["--kdf-memory", "8", "--kdf-time", "1", "--kdf-parallelism", "1"]
#: Seconds after which a subprocess or a wait counts as hung. A guard only: waiting
#: ends as soon as what is awaited happens, so a long guard costs nothing.
HANG_GUARD_S = 300.0


def kmscli_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m kmscli``."""
    script = Path(sys.executable).with_name("kmscli")
    if script.exists():
        return [str(script)]
    found = shutil.which("kmscli")
    return [found] if found else [sys.executable, "-m", "kmscli"]


def default_signals() -> None:
    """For Popen's preexec_fn: the child starts with SIGHUP and SIGTERM at their defaults.

    A suite run under ``nohup`` (or any parent ignoring them) passes the
    ignored disposition on, and kmscli rightly keeps an ignored SIGHUP
    ignored; tests that send these signals mean the default.
    """
    import signal

    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSCLI_")}
    env.pop("NO_COLOR", None)
    # A pip-installed kmscli has its .pyc files; an editable one under PYTHONDONTWRITEBYTECODE (exported on
    # some machines) would compile every module in every one of the suite's thousands of subprocesses.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


Runner = Callable[..., subprocess.CompletedProcess]

#: The ``user_properties`` name under which a test keeps a line for the "kmscli fault figures"
#: summary (tests/faults/conftest.py). The lines travel on the test reports, so the summary
#: is complete under pytest-xdist too, where the tests run in workers and the controller
#: writes the summary; this file is the conftest the controller loads.
FIGURE = "kmscli fault figure"
_FIGURES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # the last report of a test: it carries every line the test kept
        _FIGURES.extend(value for name, value in report.user_properties if name == FIGURE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("kmscli fault figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    d = tmp_path / "kms"
    return d


@pytest.fixture
def env(vault_dir: Path) -> dict[str, str]:
    return clean_env(KMSCLI_VAULT=str(vault_dir / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE)


@pytest.fixture
def kms(env: dict[str, str]) -> Runner:
    """Run kmscli with the test's environment; stdin is empty unless ``input`` is given.

    ``prefix`` runs it under another command, e.g. ``("faketime", "-f", "+8d")``.
    ``timeout`` is a hang guard only.
    """

    def run(*args: str, input: bytes | None = None, env_update: dict[str, str] | None = None,
            env_remove: tuple[str, ...] = (), timeout: float = HANG_GUARD_S,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        e = dict(env)
        e.update(env_update or {})
        for k in env_remove:
            e.pop(k, None)
        return subprocess.run(
            [*prefix, *kmscli_command(), *args],
            input=input if input is not None else b"",
            capture_output=True,
            env=e,
            timeout=timeout,
            start_new_session=True,  # no controlling terminal: never prompt
        )

    return run


@pytest.fixture
def vault(kms: Runner, vault_dir: Path) -> Path:
    """An initialised cheap vault; returns its path."""
    r = kms("init", *CHEAP_KDF)
    assert r.returncode == 0, r.stderr
    return vault_dir / "vault.kms"


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.returncode, r.stderr.decode(errors="replace"))
    return r


def fails(r: subprocess.CompletedProcess, code: int, name: str | None = None) -> str:
    """Assert exit ``code`` and a one-line ``kmscli: Name: ...`` error; return the line."""
    err = r.stderr.decode(errors="replace")
    assert r.returncode == code, (r.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("kmscli: ")
    if name is not None:
        assert lines[0].startswith(f"kmscli: {name}: "), lines[0]
    return lines[0]
