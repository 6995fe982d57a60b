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
