"""Fault tests report figures (operations, kills, seeds) in pytest's terminal summary, with or without ``-s``.

A figure is kept on the test's report (``user_properties``, named ``FIGURE``), not in a list of this
process: under pytest-xdist the test runs in a worker and the summary is written by the controller,
which receives the reports. ``tests/conftest.py`` gathers them there and writes the section.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from tests.conftest import FIGURE


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``figures(line)``: keep a line for the "kmscli fault figures" section of the summary."""
    return lambda line: request.node.user_properties.append((FIGURE, line))


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed for a test's random choices: ``KMSCLI_FAULT_SEED`` if set, else a fresh one, always reported."""
    value = int(os.environ.get("KMSCLI_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    request.node.user_properties.append(
        (FIGURE, f"{request.node.nodeid}: seed {value} (rerun with KMSCLI_FAULT_SEED={value})"))
    return value
