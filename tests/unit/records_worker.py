"""A child process for the record store's crash and concurrency tests (tests/unit/test_records.py).

    python -m tests.unit.records_worker stream PATH      # one transaction after another, forever
    python -m tests.unit.records_worker counter PATH W N [nolock]  # N increments of a shared counter
    python -m tests.unit.records_worker hold PATH         # open a write transaction, wait for stdin

The vault key comes from ``RECORDS_TEST_KEY`` (hex). Each acknowledged
transaction is reported on stdout only after its commit returned, so every
line printed is a durable state the parent may count on.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from kmscli.vault.records import RecordStore, RecordWriter

KEYS = 40
ALIASES = 13


def stream_step(tx: RecordWriter, i: int) -> None:
    """The changes of the transaction that starts at generation ``i`` (deterministic, so the parent can replay)."""
    for kind, name, value in stream_ops(i):
        if value is None:
            tx.delete(kind, name)
        else:
            tx.put(kind, name, value)


def stream_ops(i: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    ops: list[tuple[str, str, dict[str, Any] | None]] = [
        ("key", f"k{i % KEYS}", {"i": i, "pad": "x" * (i % 97)}),
        ("alias", f"alias/a{i % ALIASES}", {"target": f"k{i % KEYS}"}),
    ]
    if i % 3 == 0:
        ops.append(("key", f"k{(i * 7) % KEYS}", None))
    if i % 5 == 0:
        ops.append(("alias", f"alias/a{(i * 3) % ALIASES}", None))
    return ops


def model_at(generation: int) -> dict[tuple[str, str], dict[str, Any]]:
    """What a store created at generation 0 holds once it reached ``generation`` by stream steps."""
    model: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(generation):
        for kind, name, value in stream_ops(i):
            if value is None:
                model.pop((kind, name), None)
            else:
                model[(kind, name)] = value
    return model


def main(argv: list[str]) -> int:
    key = bytes.fromhex(os.environ["RECORDS_TEST_KEY"])
    mode, path = argv[0], argv[1]
    store = RecordStore.open(path)
    out = sys.stdout
    if mode == "stream":
        while True:
            with store.writer(key) as tx:
                stream_step(tx, tx.generation)
            out.write(f"ack {tx.generation}\n")
            out.flush()
    if mode == "counter":
        worker, n = int(argv[2]), int(argv[3])
        lock = not (len(argv) > 4 and argv[4] == "nolock")
        for j in range(n):
            with store.writer(key, lock=lock) as tx:
                shared = tx.get("counter", "shared") or {"n": 0}
                tx.put("counter", "shared", {"n": shared["n"] + 1})
                tx.put("key", f"w{worker}-{j}", {"worker": worker, "j": j})
        out.write("done\n")
        return 0
    if mode == "hold":
        with store.writer(key) as tx:
            tx.put("key", "held", {"held": True})
            out.write("holding\n")
            out.flush()
            sys.stdin.readline()
        out.write("committed\n")
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
