"""The audit log's group commit: concurrent appends of one process share writes, and the chain stays whole.

`kmscli serve` answers a request only once its record is on disk; with one
fsync per record, sixteen connections would queue behind each other's
fsyncs. These tests count batches (work), never seconds.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kmscli import audit
from kmscli.audit import AuditLog, GroupCommit, KeyRing, chain_key
from kmscli.errors import AuditLogException
from tests.conftest import HANG_GUARD_S

VAULT_ID = "ab" * 16
RING = KeyRing.single(chain_key(bytes(range(32))))


def _record(i: int) -> dict[str, Any]:
    return {"eventName": "Encrypt", "eventType": "AwsApiCall", "requestParameters": {"n": i}, "readOnly": True}


class CountingLog(AuditLog):
    """An AuditLog whose first batch waits until ``release`` is set: the others must queue behind it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self.release = threading.Event()
        #: Batches after the first fail as a full disk would.
        self.fail_later = False

    def append_batch(self, records: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        self.batches.append(len(records))
        if len(self.batches) == 1:
            assert self.release.wait(HANG_GUARD_S)
        elif self.fail_later:
            raise AuditLogException("disk full")
        return super().append_batch(records, *args, **kwargs)


def _append(group: GroupCommit, log: AuditLog, i: int, results: list[Any],
            started: threading.Barrier | None = None) -> None:
    """Append record ``i``; its head, or the exception, lands in ``results[i]``."""
    if started is not None:
        started.wait(HANG_GUARD_S)
    try:
        results[i] = group.append(log, _record(i), RING, catch_up=None, event_id=_event_id(i))
    except BaseException as e:  # collected and asserted on by the test
        results[i] = e


def _event_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def _run(group: GroupCommit, log: AuditLog, ns: range, results: list[Any],
         started: threading.Barrier | None = None) -> list[threading.Thread]:
    threads = [threading.Thread(target=_append, args=(group, log, i, results, started)) for i in ns]
    for t in threads:
        t.start()
    return threads


def test_appends_queued_behind_a_write_go_in_one_batch(tmp_path: Path) -> None:
    log = CountingLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    group = GroupCommit()
    results: list[Any] = [None] * 17
    first = _run(group, log, range(1), results)
    # The first append leads and blocks inside its write; sixteen more queue meanwhile.
    assert _wait_for(lambda: len(log.batches) == 1)
    rest = _run(group, log, range(1, 17), results)
    assert _wait_for(lambda: len(group._queue) == 16)
    log.release.set()
    for t in [*first, *rest]:
        t.join(HANG_GUARD_S)
    assert log.batches == [1, 16]  # two writes and two fsyncs for seventeen records
    seqs = sorted(r.seq for r in results)
    assert seqs == list(range(1, 18))
    report = log.verify(RING)
    assert report.records == 17 and report.unkeyed == 0


def test_many_threads_keep_one_whole_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    group = GroupCommit()
    results: list[Any] = [None] * 64
    threads = _run(group, log, range(64), results, threading.Barrier(64))
    for t in threads:
        t.join(HANG_GUARD_S)
    assert all(isinstance(r, audit.ChainHead) for r in results), results
    assert sorted(r.seq for r in results) == list(range(1, 65))
    assert len({r.mac for r in results}) == 64
    assert log.verify(RING).records == 64


def test_a_failed_batch_fails_every_caller_in_it(tmp_path: Path) -> None:
    log = CountingLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    group = GroupCommit()
    results: list[Any] = [None] * 5
    first = _run(group, log, range(1), results)
    assert _wait_for(lambda: len(log.batches) == 1)
    rest = _run(group, log, range(1, 5), results)
    assert _wait_for(lambda: len(group._queue) == 4)
    log.fail_later = True  # the second batch's write fails
    log.release.set()
    for t in [*first, *rest]:
        t.join(HANG_GUARD_S)
    assert isinstance(results[0], audit.ChainHead)  # the first batch was written before the failure
    assert all(isinstance(r, AuditLogException) for r in results[1:]), results
    assert log.batches == [1, 4]
    assert log.verify(RING).records == 1  # nothing of the failed batch reached the log


def test_different_logs_are_separate_batches(tmp_path: Path) -> None:
    a = AuditLog(tmp_path / "a.jsonl", vault_id=VAULT_ID)
    b = AuditLog(tmp_path / "b.jsonl", vault_id=VAULT_ID)
    group = GroupCommit()
    batch = [audit._Queued(log, _record(i), RING, None, _event_id(i))
             for i, log in enumerate([a, b, a, b])]
    group._write(batch)
    assert [e.head.seq for e in batch if e.head is not None] == [1, 1, 2, 2]
    assert a.verify(RING).records == 2 and b.verify(RING).records == 2


def _wait_for(predicate: Any) -> bool:
    import time

    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False
