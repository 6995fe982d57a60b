"""Fixtures for the generated docs: the generator module, the command tree, shell runners."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPLETIONS = REPO / "completions"
MAN_PAGE = REPO / "man" / "kmscli.1"
#: Seconds after which a shell or tool run here counts as hung: a guard against
#: hangs only, far beyond what any run takes on a loaded CI machine. No test
#: passes or fails by how fast something finished.
HANG_GUARD_S = 300


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gen() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="session")
def root(gen: ModuleType) -> object:
    return gen.tree()


def need(tool: str, package: str) -> str:
    """The path of ``tool``, or skip: a developer machine may lack a shell that CI installs."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {package}; .ci/run installs it)")
    return path


def shell_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment whose PATH finds this checkout's kmscli first, and no KMSCLI_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSCLI_")}
    bin_dir = str(Path(sys.executable).parent)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", HOME=str(tmp_path), TERM="dumb")
    env.pop("XDG_CONFIG_HOME", None)
    env.update(extra)
    return env


def patient_shell_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """``shell_env`` with a ``timeout`` first on PATH that gives kmscli the hang guard instead of 3 s.

    The completions run ``timeout 3 kmscli ... alias list`` so that TAB never
    hangs; on a loaded machine kmscli's start-up and unlock alone can take 3 s,
    and the aliases would silently be missing. Tests of *what* is listed use
    this environment, so that no machine is too slow for them; the 3 s cap
    itself is proven with the real ``timeout`` by
    ``test_a_slow_kmscli_cannot_hang_tab``. The shim insists on being asked for
    3 s, so a completion that stopped passing its cap would fail here too.
    """
    real = shutil.which("timeout") or shutil.which("gtimeout")
    assert real is not None, "no timeout(1) on PATH"
    shim_dir = tmp_path / "patient-bin"
    shim_dir.mkdir(exist_ok=True)
    shim = shim_dir / "timeout"
    shim.write_text(
        "#!/bin/sh\n"
        '[ "$1" = 3 ] || exit 125  # the completion no longer asks for its 3 s cap\n'
        "shift\n"
        f'exec {real} {HANG_GUARD_S} "$@"\n'
    )
    shim.chmod(0o755)
    env = shell_env(tmp_path, **extra)
    env["PATH"] = f"{shim_dir}{os.pathsep}{env['PATH']}"
    return env
