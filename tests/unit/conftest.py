"""Fixtures for service-level tests: a cheap vault and an injectable clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmscli.service import Caller, Kms
from kmscli.vault import format as F
from kmscli.vault.store import PassphraseKeySource

CHEAP = F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1)
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(tmp_path: Path, clock: Clock) -> Kms:
    keys = PassphraseKeySource(lambda: b"pw")
    kms = Kms(tmp_path / "v" / "vault.kms", keys, clock=clock,
              caller=Caller(user="alice", uid=1000, pid=1, host="test"))
    kms.CreateVault(CHEAP)
    return kms


def audit_events(svc: Kms) -> list[dict]:
    return [json.loads(line) for line in svc.audit_path.read_text().splitlines()]
