"""kmscli through the real CLI on one vault grown from 10 to 100,000 keys (issue 14): per-call cost and size.

    .venv/bin/python bench/vault_scale.py                       # 10 / 1,000 / 10,000 / 100,000 keys
    .venv/bin/python bench/vault_scale.py --sizes 10,1000 --runs 7

One vault (format 2, made by ``kmscli init --kdf-memory 8 --kdf-time 1``, so
that a call without a session pays storage, not Argon2) grows through the
service's SeedVault in batches of 2,000 keys, each key with one alias and
every tenth with a second material version; the growth is timed per 10,000
keys. At each size it times, through the real ``kmscli`` entry point, each
call ``--runs`` times with a session (``kmscli unlock``) and without one
(``KMSCLI_PASSPHRASE``): 100-byte encrypt, decrypt, ``keys describe`` (the
table: metadata, aliases, tags, rotation), ``keys create``, ``alias create``,
``policy put``, ``keys rotate``; then ``keys list --json`` of every key
(wall time and the peak RSS of the process, without a session), the file
size per key, and 16 parallel ``keys create`` writers (session). Medians and
p90 in milliseconds, and each median over the 10-key median. Markdown on
stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KMSCLI = str(Path(sys.executable).with_name("kmscli"))
PASSPHRASE = "bench passphrase"
CALLS = ("encrypt", "decrypt", "describe", "create", "alias", "policy", "rotate")
BATCH = 2_000


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class Vault:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "kms" / "vault.kms"
        self.base = {k: v for k, v in os.environ.items() if not k.startswith("KMSCLI_")}
        self.base.update(KMSCLI_VAULT=str(self.path), NO_COLOR="1")
        self.pass_env = dict(self.base, KMSCLI_PASSPHRASE=PASSPHRASE)
        self.sess_env: dict[str, str] = {}
        self.keys = 0
        self.ids: list[str] = []
        self.rng = random.Random(14)
        self.msg = folder / "msg"
        self.msg.write_bytes(os.urandom(100))
        self.policy = folder / "policy.json"
        self.n = 0

    def run(self, args: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        p = subprocess.run([KMSCLI, *args], env=env, input=stdin, capture_output=True, timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"kmscli {shlex.join(args)} failed ({p.returncode}): {p.stderr.decode()[-400:]}")
        return p

    def init(self) -> None:
        self.run(["init", "--kdf-memory", "8", "--kdf-time", "1", "--kdf-parallelism", "1",
                  "--account", "111122223333"], self.pass_env)
        out = self.run(["unlock", "--ttl", "4h"], self.pass_env).stdout.decode()
        token = out.split("KMSCLI_SESSION=", 1)[1].split()[0].strip("'\";")
        self.sess_env = dict(self.base, KMSCLI_SESSION=token)
        self.run(["keys", "list"], self.sess_env)
        doc = json.loads(self.run(["keys", "create", "--json"], self.pass_env).stdout)
        first = doc["KeyMetadata"]["KeyId"]
        self.ids.append(first)
        self.keys = 1
        self.policy.write_text(self.run(["policy", "get", first], self.pass_env).stdout.decode())

    def grow(self, to: int) -> list[tuple[int, float]]:
        """Seed keys (and an alias each) up to ``to``; the seconds each 10,000 (or each batch) took."""
        from kmscli.service import Caller, Kms
        from kmscli.vault.store import PassphraseKeySource

        svc = Kms(self.path, PassphraseKeySource(lambda: PASSPHRASE.encode()),
                  caller=Caller(user="bench", uid=os.getuid(), pid=os.getpid(), host="bench"))
        laps: list[tuple[int, float]] = []
        lap_start, lap_keys = time.perf_counter(), self.keys
        while self.keys < to:
            n = min(BATCH, to - self.keys)
            keys, aliases = [], []
            for i in range(self.keys, self.keys + n):
                key_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
                materials = [os.urandom(32)] + ([os.urandom(32)] if i % 10 == 0 else [])
                keys.append({"KeyId": key_id, "Materials": materials, "Description": f"bench key {i}",
                             "Tags": {"n": str(i)}})
                aliases.append({"AliasName": f"alias/bench-{i}", "TargetKeyId": key_id})
                self.ids.append(key_id)
            svc.SeedVault(Keys=keys, Aliases=aliases)
            self.keys += n
            if self.keys - lap_keys >= 10_000 or self.keys == to:
                laps.append((self.keys, time.perf_counter() - lap_start))
                lap_start, lap_keys = time.perf_counter(), self.keys
        return laps

    def call(self, what: str, env: dict[str, str]) -> float:
        """One call of ``what`` through the CLI; its wall time in ms (process start to exit)."""
        self.n += 1
        key = self.rng.choice(self.ids)
        stdin = b""
        if what == "encrypt":
            args = ["encrypt", "--key", key, "-i", str(self.msg)]
        elif what == "decrypt":
            args, stdin = ["decrypt"], self.ciphertext
        elif what == "describe":
            args = ["keys", "describe", key]
        elif what == "create":
            args = ["keys", "create"]
        elif what == "alias":
            args = ["alias", "create", f"alias/b{os.getpid()}-{self.n}", key]
        elif what == "policy":
            args = ["policy", "put", key, str(self.policy)]
        else:
            args = ["keys", "rotate", key]
        t = time.perf_counter()
        p = self.run(args, env, stdin)
        took = (time.perf_counter() - t) * 1e3
        if what == "create":
            self.ids.append(p.stdout.decode().strip())
            self.keys += 1
        return took

    def measure(self, runs: int) -> dict[tuple[str, str], list[float]]:
        self.ciphertext = self.run(["encrypt", "--key", self.rng.choice(self.ids), "-i", str(self.msg)],
                                   self.sess_env).stdout
        out: dict[tuple[str, str], list[float]] = {}
        for mode, env in (("session", self.sess_env), ("passphrase", self.pass_env)):
            for what in CALLS:
                self.call(what, env)  # warm the page cache for this call's path
                out[(what, mode)] = [self.call(what, env) for _ in range(runs)]
                say(f"  {what:9} {mode:10} median {statistics.median(out[(what, mode)]):7.1f} ms")
        return out

    def list_all(self) -> tuple[float, float, int]:
        """`keys list --json` of every key without a session: seconds, peak RSS (MiB), keys listed.

        The peak is the process's own VmHWM from /proc, read while it runs (a
        child's ru_maxrss from wait4 would count the pages it shared with this
        harness when it forked).
        """
        import threading

        t = time.perf_counter()
        p = subprocess.Popen([KMSCLI, "keys", "list", "--all", "--json"], env=self.pass_env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        peak = [0]

        def watch() -> None:
            while p.poll() is None:
                try:
                    for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
                except (OSError, ValueError):
                    pass
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        listed = 0
        assert p.stdout is not None
        for line in p.stdout:
            listed += line.count(b'"KeyId"')
        code = p.wait()
        watcher.join()
        if code != 0:
            raise SystemExit(f"keys list failed ({code})")
        return time.perf_counter() - t, peak[0] / 1024, listed

    def writers(self, n: int = 16, each: int = 5) -> list[float]:
        def one(_: int) -> list[float]:
            return [self.call("create", self.sess_env) for _ in range(each)]

        with ThreadPoolExecutor(max_workers=n) as pool:
            return [x for xs in pool.map(one, range(n)) for x in xs]

    def size_per_key(self) -> float:
        size = sum(p.stat().st_size for p in self.path.parent.glob("vault.kms*") if not p.name.endswith(".lock"))
        return size / self.keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,1000,10000,100000")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kmscli-vault-scale-") as tmp:
        v = Vault(Path(tmp))
        v.init()
        results: dict[int, dict[tuple[str, str], list[float]]] = {}
        extra: dict[int, dict[str, Any]] = {}
        growth: list[tuple[int, float]] = []
        for size in sizes:
            if v.keys < size:
                say(f"growing to {size:,} keys")
                growth += v.grow(size)
            say(f"at {v.keys:,} keys")
            results[size] = v.measure(args.runs)
            secs, rss, listed = v.list_all()
            extra[size] = {"list_s": secs, "list_rss": rss, "listed": listed, "bytes": v.size_per_key(),
                           "keys": v.keys}
            say(f"  keys list --json: {listed:,} keys in {secs:.1f} s, peak RSS {rss:.0f} MiB; "
                f"{extra[size]['bytes']:,.0f} B/key")
        say("16 parallel writers")
        lat = v.writers()
        subprocess.run([KMSCLI, "lock"], env=v.sess_env, capture_output=True)
    print(f"Command: `.venv/bin/python bench/vault_scale.py --sizes {args.sizes} --runs {args.runs}`; "
          f"started {started}, load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"(2 shared cores; other work on the machine). Median / p90 ms per call through the CLI, "
          f"`{args.runs}` runs each, and the median over the 10-key median.\n")
    base = sizes[0]
    for mode in ("session", "passphrase"):
        print(f"**{mode}** ({'`kmscli unlock`' if mode == 'session' else 'KMSCLI_PASSPHRASE, Argon2id 8 MiB t=1'})\n")
        print("| call | " + " | ".join(f"{s:,} keys" for s in sizes) + " |")
        print("|---|" + "---:|" * len(sizes))
        for what in CALLS:
            cells = []
            for s in sizes:
                xs = results[s][(what, mode)]
                m = statistics.median(xs)
                ratio = m / statistics.median(results[base][(what, mode)])
                cells.append(f"{m:.0f} / {pct(xs, 0.9):.0f} ({ratio:.2f}×)")
            print(f"| {what} | " + " | ".join(cells) + " |")
        print()
    print("| at | keys list --json (all, no session) | peak RSS | file bytes per key |")
    print("|---|---:|---:|---:|")
    for s in sizes:
        e = extra[s]
        print(f"| {e['keys']:,} keys | {e['list_s']:.2f} s ({e['listed']:,} keys) | {e['list_rss']:.0f} MiB "
              f"| {e['bytes']:,.0f} |")
    print()
    if growth:
        print("| keys so far | s for the last step | keys/s |")
        print("|---:|---:|---:|")
        prev = 1
        for keys, secs in growth:
            print(f"| {keys:,} | {secs:.1f} | {(keys - prev) / secs:,.0f} |")
            prev = keys
        print()
    print(f"16 parallel `keys create` (session), {len(lat)} calls: p50 {pct(lat, 0.5):.0f} ms, "
          f"p99 {pct(lat, 0.99):.0f} ms (p99/p50 {pct(lat, 0.99) / pct(lat, 0.5):.2f}), max {max(lat):.0f} ms.")
    print(f"\nPeak RSS of this harness: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
