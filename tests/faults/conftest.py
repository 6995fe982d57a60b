"""Fault tests report figures (operations, kills, seeds) in pytest's terminal summary, with or without ``-s``."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

_FIGURES: list[str] = []


@pytest.fixture
def figures() -> Callable[[str], None]:
    """``figures(line)``: keep a line for the "kmscli fault figures" section of the summary."""
    return _FIGURES.append


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed for a test's random choices: ``KMSCLI_FAULT_SEED`` if set, else a fresh one, always reported."""
    value = int(os.environ.get("KMSCLI_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    _FIGURES.append(f"{request.node.nodeid}: seed {value} (rerun with KMSCLI_FAULT_SEED={value})")
    return value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("kmscli fault figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
