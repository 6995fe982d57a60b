"""The record store (kmscli/vault/records.py) at 10 to 100,000 keys: per-operation cost and file size.

    .venv/bin/python bench/records_scale.py                 # everything (~5 min on 2 cores)
    .venv/bin/python bench/records_scale.py --max-keys 10000 --skip-writers --skip-alternatives

Each key is three records, as the service will store them: the key's metadata
(400 bytes of JSON, as issue 14 sizes it), one 32-byte material (its version,
id, base64 bytes and date: 212 bytes of JSON), and one alias (133 bytes). Stores are
built in transactions of 1,000 keys; then, at each size, it times (median and
p99, microseconds):

* ``open``: RecordStore.open (file checks, header, schema check) and close;
* ``view``: a read transaction: schema check, sealed metadata opened;
* ``view+get``: a fresh view and one verified ``get`` of a random key (what one call pays);
* ``get``: a verified ``get`` in an open view, cold buckets (random keys, none read twice);
* ``put+commit``: one writer transaction (under the blocking flock) replacing one key's
  record: durable (WAL, synchronous=FULL), so it includes an fsync;
* ``cli write``: open the store, the same write, close: what one CLI call pays, since the
  last connection to close folds the WAL into the file (a checkpoint: a second fsync)
  and deletes it, so every call also creates the WAL anew;
* ``scan 100``: one page of 100 keys after a random marker, every row and the chain verified.

Then 16 processes writing at once (blocking flock around each transaction, and
SQLite's busy handler alone), the journal modes compared, and the stdlib and
lmdb alternatives where present. Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kmscli.vault import format as F  # noqa: E402
from kmscli.vault import records as R  # noqa: E402

CHEAP = F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1)
VAULT_KEY = bytes(range(32))
SIZES = (10, 1_000, 10_000, 100_000)
BATCH = 1_000
KEY_JSON = 400


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def key_id(i: int) -> str:
    return str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 12345) % (1 << 128), version=4))


def key_records(i: int) -> list[tuple[str, str, dict[str, Any]]]:
    kid = key_id(i)
    meta: dict[str, Any] = {
        "KeyId": kid, "CreationDate": "2026-11-29T06:03:25.123456Z", "Description": "",
        "KeyState": "Enabled", "DeletionDate": None, "PendingDeletionWindowInDays": None,
        "KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT", "Origin": "AWS_KMS", "Tags": {},
        "Policy": None, "Rotation": {"Enabled": False, "PeriodInDays": 365, "NextRotationDate": None,
                                     "MinDecryptVersion": 1, "OnDemandCount": 0},
    }
    # The key's metadata is KEY_JSON bytes of JSON, as issue 14 sizes it.
    pad = KEY_JSON - len(json.dumps(meta, separators=(",", ":")))
    meta["Description"] = (f"benchmark key number {i} " + "d" * pad)[:pad]
    material = {"Version": 1, "KeyMaterialId": os.urandom(32).hex(),
                "Material": "A" * 43 + "=", "CreationDate": "2026-11-29T06:03:25Z", "RotationType": None}
    alias = {"TargetKeyId": kid, "CreationDate": "2026-11-29T06:03:25Z", "LastUpdatedDate": "2026-11-29T06:03:25Z"}
    return [("key", kid, meta), ("material", f"{kid}:1", material), ("alias", f"alias/bench-{i}", alias)]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if not p.name.endswith(".lock"))


def make_store(folder: Path) -> R.RecordStore:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    header = F.build_header(CHEAP, os.urandom(16), os.urandom(32), VAULT_KEY, os.urandom(12), version=2)
    return R.RecordStore.create(folder / "vault.kms", header.raw, VAULT_KEY,
                                {"vault_id": "00" * 16, "account": "123456789012", "audit_head": None})


def measure(path: Path, n_keys: int, rng: random.Random) -> dict[str, list[float]]:
    store = R.RecordStore.open(path)
    res: dict[str, list[float]] = {}
    res["open"] = timed(lambda: R.RecordStore.open(path).close(), 200)

    def view() -> None:
        store.reader(VAULT_KEY).close()

    res["view"] = timed(view, 300)

    def view_get() -> None:
        with store.reader(VAULT_KEY) as v:
            assert v.get("key", key_id(rng.randrange(n_keys))) is not None

    res["view+get"] = timed(view_get, 300)
    sample = rng.sample(range(n_keys), min(n_keys, 300))
    with store.reader(VAULT_KEY) as v:
        it = iter(sample)
        res["get"] = timed(lambda: v.get("key", key_id(next(it))), len(sample))

    def put() -> None:
        i = rng.randrange(n_keys)
        with store.writer(VAULT_KEY) as tx:
            tx.put("key", key_id(i), dict(key_records(i)[0][2], Description=f"updated {time.time()}"))

    res["put+commit"] = timed(put, 200)
    store.close()  # the next cycles open and close the store each time, as a CLI call does

    def cli_write() -> None:
        s = R.RecordStore.open(path)
        i = rng.randrange(n_keys)
        with s.writer(VAULT_KEY) as tx:
            tx.put("key", key_id(i), dict(key_records(i)[0][2], Description=f"updated {time.time()}"))
        s.close()

    res["cli write"] = timed(cli_write, 50)

    def scan() -> None:
        with store.reader(VAULT_KEY) as v:
            v.scan("key", key_id(rng.randrange(n_keys)), 100)

    res["scan 100"] = timed(scan, 50)
    return res


def build_and_measure(work: Path, max_keys: int) -> tuple[list[str], list[tuple[int, float]], dict[int, int]]:
    store = make_store(work / "scale")
    rng = random.Random(14)
    lines = ["| keys | records | open | view | view+get | get (in view) | scan 100 | put+commit | cli write "
             "| file B/key |", "|---:|---:|---|---|---|---|---|---|---|---:|"]
    built = 0
    segments: list[tuple[int, float]] = []
    sizes: dict[int, int] = {}
    seg_start = time.perf_counter()
    seg_keys = 0
    for target in [s for s in SIZES if s <= max_keys]:
        while built < target:
            step = min(BATCH, target - built)
            with store.writer(VAULT_KEY) as tx:
                for i in range(built, built + step):
                    for kind, name, value in key_records(i):
                        tx.put(kind, name, value)
            built += step
            seg_keys += step
            if built % 10_000 == 0:
                segments.append((built, time.perf_counter() - seg_start))
                say(f"  built {built} keys ({segments[-1][1]:.1f} s for the last {seg_keys})")
                seg_start = time.perf_counter()
                seg_keys = 0
        store.checkpoint()
        size = file_bytes(store.path)
        sizes[target] = size
        say(f"measuring at {target} keys ({size / 1e6:.1f} MB)")
        seg_pause = time.perf_counter()
        path = store.path
        store.close()  # measured alone: no other connection of this process keeps the WAL open
        res = measure(path, target, rng)
        store = R.RecordStore.open(path)
        seg_start += time.perf_counter() - seg_pause
        with store.reader(VAULT_KEY) as v:
            records = sum(v.count(k) for k in v.kinds())
        cells = [f"{statistics.median(res[k]):.0f} / {pct(res[k], 0.99):.0f}"
                 for k in ("open", "view", "view+get", "get", "scan 100", "put+commit", "cli write")]
        lines.append(f"| {target:,} | {records:,} | " + " | ".join(cells) + f" | {size / target:,.0f} |")
    store.close()
    return lines, segments, sizes


# -- sixteen writers -------------------------------------------------------------------------
def writer_worker(path: str, worker: int, n: int, lock: bool) -> None:
    store = R.RecordStore.open(path)
    lat = []
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()  # start together
    for j in range(n):
        t = time.perf_counter()
        with store.writer(VAULT_KEY, lock=lock) as tx:
            tx.put("key", f"w{worker}-{j}", {"worker": worker, "j": j, "pad": "x" * 300})
        lat.append((time.perf_counter() - t) * 1e6)
    sys.stdout.write(json.dumps(lat) + "\n")


def sixteen_writers(work: Path, lock: bool, n: int = 40) -> tuple[list[float], float]:
    store = make_store(work / f"writers-{lock}")
    with store.writer(VAULT_KEY) as tx:
        for i in range(1000):
            for kind, name, value in key_records(i):
                tx.put(kind, name, value)
    path = str(store.path)
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", path, str(w), str(n), "1" if lock else "0"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for w in range(16)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    t = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    lat: list[float] = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        lat += json.loads(out)
    wall = time.perf_counter() - t
    with store.reader(VAULT_KEY) as v:
        assert v.count("key") == 1000 + 16 * n
    store.close()
    return lat, wall


# -- journal modes and alternatives -------------------------------------------------------------
def journal_modes(work: Path) -> list[str]:
    import sqlite3

    lines = ["| journal mode | synchronous | put+commit median µs | p99 µs | durable on power loss |",
             "|---|---|---:|---:|---|"]
    for mode, sync, durable in (("wal", "FULL", "yes (chosen)"), ("wal", "NORMAL", "no: last commits may roll back"),
                                ("delete", "FULL", "yes"), ("truncate", "FULL", "yes")):
        store = make_store(work / f"jm-{mode}-{sync}")
        with store.writer(VAULT_KEY) as tx:
            for i in range(1000):
                for kind, name, value in key_records(i):
                    tx.put(kind, name, value)
        store.close()
        store = R.RecordStore.open(store.path)
        store.close()  # no other connection while the journal mode changes
        conn = sqlite3.connect(R._uri(store.path, "rw"), uri=True, isolation_level=None)
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("PRAGMA secure_delete=ON")
        store._rw = conn
        rng = random.Random(1)

        def put(store: R.RecordStore = store, rng: random.Random = rng) -> None:
            i = rng.randrange(1000)
            with store.writer(VAULT_KEY) as tx:
                tx.put("key", key_id(i), {"i": i, "t": time.time(), "pad": "x" * 300})

        xs = timed(put, 100)
        store.close()
        lines.append(f"| {mode} | {sync} | {statistics.median(xs):.0f} | {pct(xs, 0.99):.0f} | {durable} |")
    return lines


def alternatives(work: Path) -> list[str]:
    lines = ["| store | put+sync median µs | get median µs | file B/key (1,000 keys × 3 records) | notes |",
             "|---|---:|---:|---:|---|"]
    try:
        import lmdb
    except ImportError:
        lines.append("| lmdb | - | - | - | not installed (not in the stdlib; `pip install lmdb` to compare) |")
    else:
        env = lmdb.open(str(work / "lmdb"), map_size=1 << 30, sync=True, metasync=True)
        with env.begin(write=True) as txn:
            for i in range(1000):
                for kind, name, value in key_records(i):
                    txn.put(f"{kind}:{name}".encode(), json.dumps(value).encode() + os.urandom(28))
        rng = random.Random(2)

        def put() -> None:
            with env.begin(write=True) as txn:
                txn.put(f"key:{key_id(rng.randrange(1000))}".encode(), os.urandom(500))

        def get() -> None:
            with env.begin() as txn:
                txn.get(f"key:{key_id(rng.randrange(1000))}".encode())

        p, g = timed(put, 100), timed(get, 300)
        size = sum(f.stat().st_size for f in (work / "lmdb").iterdir())
        env.close()
        lines.append(f"| lmdb {lmdb.version()} (plain, no crypto) | {statistics.median(p):.0f} | "
                     f"{statistics.median(g):.0f} | {size / 1000:,.0f} | a C extension to add; one writer per "
                     "environment, a fixed map size, no SQL (scans by key prefix) |")
    import dbm.dumb

    with dbm.dumb.open(str(work / "dumb"), "c") as db:
        for i in range(1000):
            for kind, name, value in key_records(i):
                db[f"{kind}:{name}"] = json.dumps(value).encode() + os.urandom(28)
        db.sync()
        rng = random.Random(3)

        def dput() -> None:
            db[f"key:{key_id(rng.randrange(1000))}"] = os.urandom(500)
            db.sync()

        def dget() -> None:
            db[f"key:{key_id(rng.randrange(1000))}"]

        p, g = timed(dput, 100), timed(dget, 300)
    size = sum(f.stat().st_size for f in work.glob("dumb*"))
    lines.append(f"| dbm.dumb (stdlib; plain) | {statistics.median(p):.0f} | {statistics.median(g):.0f} | "
                 f"{size / 1000:,.0f} | no transactions, no fsync, index rewritten on sync, grows on every "
                 "update; dbm.gnu/ndbm are not even built into this Python |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-keys", type=int, default=100_000)
    ap.add_argument("--skip-writers", action="store_true")
    ap.add_argument("--skip-alternatives", action="store_true")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        path, w, n, lock = args.worker
        writer_worker(path, int(w), int(n), lock == "1")
        return
    work = Path(tempfile.mkdtemp(prefix="records-bench-", dir=os.environ.get("BENCH_DIR")))
    os.chmod(work, 0o700)
    try:
        t0 = time.perf_counter()
        lines, segments, _sizes = build_and_measure(work, args.max_keys)
        print("### Per-operation cost, µs (median / p99), and file size\n")
        print("\n".join(lines))
        if segments:
            print("\n### Bulk creation (transactions of 1,000 keys = 3,000 records)\n")
            print("| keys so far | s for the last 10,000 keys | keys/s |")
            print("|---:|---:|---:|")
            for built, secs in segments:
                print(f"| {built:,} | {secs:.1f} | {10_000 / secs:,.0f} |")
            total = sum(s for _, s in segments)
            print(f"\nTotal for {segments[-1][0]:,} keys: {total:.0f} s (measurements at each size excluded).")
        if not args.skip_writers:
            print("\n### 16 processes writing at once (40 one-record transactions each, store of 1,000 keys)\n")
            print("| around each transaction | p50 ms | p99 ms | max ms | transactions/s |")
            print("|---|---:|---:|---:|---:|")
            for lock, label in ((True, "blocking flock (`writer(lock=True)`)"),
                                (False, "SQLite's busy handler alone (`lock=False`)")):
                say(f"16 writers, lock={lock}")
                lat, wall = sixteen_writers(work, lock)
                print(f"| {label} | {pct(lat, 0.5) / 1e3:.1f} | {pct(lat, 0.99) / 1e3:.1f} | "
                      f"{max(lat) / 1e3:.1f} | {len(lat) / wall:,.0f} |")
        if not args.skip_alternatives:
            say("journal modes")
            print("\n### Journal modes (put+commit of one record, store of 1,000 keys)\n")
            print("\n".join(journal_modes(work)))
            say("alternatives")
            print("\n### Alternatives (no crypto, no verification: the engines alone)\n")
            print("\n".join(alternatives(work)))
        say(f"done in {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
