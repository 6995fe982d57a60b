"""How long this disk takes to make an appended record durable: the floor under a durable request's latency.

    .venv/bin/python bench/fsync_probe.py [--dir DIR] [--procs 2] [--rate 1500] [--per-sync 4]
                                          [--bytes 1500] [--duration 10] [--reps 3]

`kmscli serve` answers a request only once its audit record is on disk: a
worker writes the record, then waits for an ``fdatasync`` of the log that it
shares with the requests queued meanwhile. However well that is grouped,
no answer leaves faster than the disk completes a sync, so a stall of the
disk is a stall of every request waiting on it.

This probe does only that, without kmscli: ``--procs`` processes append
``--bytes``-byte lines to one file in ``--dir`` (the folder of the vault, so
the same file system) at ``--rate`` lines per second in all, calling
``fdatasync`` after every ``--per-sync`` lines, for ``--duration`` seconds,
``--reps`` times. It prints the sync latency percentiles and the stalls
(syncs over 20 ms): how many, and how much of the run they took. Run it
next to bench/serve_load.py, with the server's request rate, to tell a
latency the server adds from one the disk imposes. Bounded: every run stops
after its duration, and the file is removed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

STALL_MS = 20.0


def _append(path: str, rate: float, per_sync: int, size: int, duration: float, out: mp.Queue) -> None:
    line = b"x" * (size - 1) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies: list[float] = []
    start = time.monotonic()
    written = 0
    try:
        while (now := time.monotonic()) - start < duration:
            due = start + written / rate
            if due > now:
                time.sleep(due - now)
            for _ in range(per_sync):
                os.write(fd, line)
            written += per_sync
            t = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
    out.put(latencies)


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))]


def run(folder: Path, procs: int, rate: float, per_sync: int, size: int, duration: float) -> dict[str, float]:
    fd, name = tempfile.mkstemp(prefix=".fsync-probe-", dir=folder)
    os.close(fd)
    try:
        out: mp.Queue = mp.Queue()
        workers = [mp.Process(target=_append, args=(name, rate / procs, per_sync, size, duration, out))
                   for _ in range(procs)]
        for w in workers:
            w.start()
        latencies = sorted(x for _ in workers for x in out.get(timeout=duration + 120))
        for w in workers:
            w.join(timeout=60)
    finally:
        os.unlink(name)
    stalls = [x for x in latencies if x > STALL_MS]
    return {
        "syncs": len(latencies), "p50": _pct(latencies, 0.50), "p99": _pct(latencies, 0.99),
        "p999": _pct(latencies, 0.999), "max": latencies[-1], "stalls": len(stalls),
        # Per process; a stall blocks every request waiting in that worker meanwhile.
        "stalled_share": sum(stalls) / 1000 / (duration * procs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = Path(os.environ.get("KMSCLI_VAULT", tempfile.gettempdir() + "/x")).parent
    ap.add_argument("--dir", type=Path, default=default_dir)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=1500.0, help="lines per second, all processes together")
    ap.add_argument("--per-sync", type=int, default=4)
    ap.add_argument("--bytes", type=int, default=1500)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if not args.dir.is_dir():
        ap.error(f"{args.dir} is not a folder")
    print(f"fdatasync of {args.bytes}-byte appends in {args.dir}: {args.procs} processes, {args.rate:g} lines/s, "
          f"a sync every {args.per_sync} lines, {args.duration:g} s x {args.reps}; "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print("| rep | syncs | p50 ms | p99 ms | p99.9 ms | max ms | stalls > 20 ms | time stalled |")
    print("|---|---|---|---|---|---|---|---|")
    shares = []
    for rep in range(1, args.reps + 1):
        r = run(args.dir, args.procs, args.rate, args.per_sync, args.bytes, args.duration)
        shares.append(r["stalled_share"])
        print(f"| {rep} | {r['syncs']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | {r['max']:.1f} | "
              f"{r['stalls']:.0f} | {r['stalled_share'] * 100:.1f}% |", flush=True)
    print(f"\nmedian share of time stalled: {statistics.median(shares) * 100:.1f}%; "
          "a request that waits on a stalled sync waits as long as it lasts.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
