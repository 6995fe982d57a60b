"""The audit log's reading side at scale (issue 14): ``audit verify`` and ``audit show --since`` on big logs.

    .venv/bin/python bench/audit_scale.py                      # 10k, 100k and 1M records (~5 min, ~0.8 GB of /tmp)
    .venv/bin/python bench/audit_scale.py --sizes 10000,100000 # quicker
    .venv/bin/python bench/audit_scale.py --kmscli "env PYTHONPATH=/tmp/old .venv/bin/python -m kmscli"  # another build

For each size it makes a vault with ``kmscli init --kdf-memory 8 --kdf-time 1`` (under
``faketime``, back in time, so that the records it then adds are in the past and in order),
appends the records with the real sealing code (``AuditLog.append_batch`` in batches, with the
vault's chain key; one record every 3.6 s, so an hour holds 1,000), then times through the real CLI:

* ``kmscli audit verify`` (best of ``--runs``): wall time, and records per second;
* ``kmscli audit show --since T`` with T one hour before the last record (best of ``--runs``),
  and ``kmscli audit show`` of the whole log (once), both writing to a pipe that is drained;
* ``kmscli audit show --since`` a time after every record: the floor (start-up, and finding the end).

Wall times include the interpreter's start-up. It prints a Markdown table on stdout (progress on
stderr). Needs ``faketime`` (Debian package ``faketime``).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from kmscli import audit  # noqa: E402
from kmscli.service._core import chain_keys_of  # noqa: E402
from kmscli.vault.store import PassphraseKeySource, VaultStore  # noqa: E402

PASSPHRASE = "correct horse battery staple, benchmark only"
SPACING = timedelta(seconds=3.6)  # 1,000 records an hour
BATCH = 20_000


def log(msg: str) -> None:
    print(f"audit_scale: {msg}", file=sys.stderr, flush=True)


def record(i: int, when: datetime, generation: int) -> dict:
    """A typical Encrypt record (the one docs/audit.md measures appends with), ~700 bytes sealed."""
    return {
        "eventName": "Encrypt",
        "eventTime": audit.format_event_time(when),
        "userIdentity": {"type": "IAMUser", "userName": "alice", "uid": 1000, "pid": 4242, "host": "workstation"},
        "requestParameters": {"keyId": "alias/app", "encryptionContext": {"app": "billing"}, "numberOfBytes": i},
        "responseElements": {"keyId": "arn:aws:kms:local:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"},
        "readOnly": False,
        "additionalEventData": {"vaultGeneration": generation},
    }


class Run:
    def __init__(self, folder: Path, kmscli: list[str]) -> None:
        self.folder = folder
        self.kmscli = kmscli
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KMSCLI_") and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")}
        # As a user's shell: .pyc files allowed (kept in the temp folder, not the source tree).
        env.update(KMSCLI_VAULT=str(folder / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE, NO_COLOR="1",
                   PYTHONPYCACHEPREFIX=str(folder / "pycache"))
        self.env = env

    def cli(self, *args: str, prefix: tuple[str, ...] = ()) -> tuple[float, subprocess.CompletedProcess]:
        t = time.perf_counter()
        p = subprocess.run([*prefix, *self.kmscli, *args], env=self.env, capture_output=True, cwd=self.folder,
                           start_new_session=True, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"kmscli {shlex.join(args)} -> exit {p.returncode}: {p.stderr.decode()[-400:]}")
        return elapsed, p

    def best(self, runs: int, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        results = [self.cli(*args) for _ in range(runs)]
        return min(results, key=lambda r: r[0])


def build(run: Run, n: int) -> tuple[datetime, int, float]:
    """Make the vault and n records after its CreateVault; return the last record's time, files, seconds."""
    days = math.ceil(n * SPACING.total_seconds() / 86400) + 2
    run.cli("init", "--kdf-memory", "8", "--kdf-time", "1", prefix=("faketime", "-f", f"-{days}d"))
    t = time.perf_counter()
    ov = VaultStore(run.folder / "vault.kms").open(PassphraseKeySource(lambda: PASSPHRASE.encode()))
    ring = audit.KeyRing(tuple((k["from_seq"], bytes.fromhex(k["key"])) for k in chain_keys_of(ov)))
    path = run.folder / "audit.jsonl"
    first = datetime.fromisoformat(audit.parse_line(path.read_bytes().splitlines()[0])["eventTime"])
    log_ = audit.AuditLog(path, vault_id=ov.body["vault_id"])
    generation = ov.body.get("generation", 0)
    sync = audit._sync
    audit._sync = lambda fd: None  # building only: the bench measures reading
    try:
        for b in range(0, n, BATCH):
            log_.append_batch([record(i, first + SPACING * (i + 1), generation) for i in range(b, min(n, b + BATCH))],
                              ring)
    finally:
        audit._sync = sync
    files = sum(1 for p in run.folder.iterdir() if p.name == "audit.jsonl" or p.name.startswith("audit.jsonl.0"))
    return first + SPACING * n, files, time.perf_counter() - t


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def measure(n: int, kmscli: list[str], runs: int, tmp: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"audit-scale-{n}-", dir=tmp))
    try:
        run = Run(folder, kmscli)
        log(f"{n:,} records: building")
        last, files, built = build(run, n)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("audit.jsonl")
                   and not p.name.endswith(".lock"))
        log(f"{n:,} records: built in {built:.1f} s ({files} files, {size / 2**20:.0f} MiB); verify")
        verify_s, p = run.best(runs, "audit", "verify")
        counted = int(p.stderr.decode().split("intact: ")[1].split(" ")[0])
        assert counted >= n + 1, p.stderr
        log(f"{n:,} records: show --since")
        since_s, p = run.best(runs, "audit", "show", "--since", iso(last - timedelta(hours=1)))
        window = len(p.stdout.splitlines())
        floor_s, p = run.best(runs, "audit", "show", "--since", iso(last + timedelta(days=365)))
        assert not p.stdout.strip()
        log(f"{n:,} records: show (all)")
        full_s, p = run.cli("audit", "show")
        shown = len(p.stdout.splitlines())
        assert shown >= n + 1 and window >= 1000
        return dict(n=n, files=files, mib=size / 2**20, built=built, verify=verify_s, counted=counted,
                    since=since_s, window=window, floor=floor_s, full=full_s, shown=shown)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated record counts")
    ap.add_argument("--runs", type=int, default=3, help="runs of verify and show --since (the best is kept)")
    ap.add_argument("--kmscli", default=str(ROOT / ".venv" / "bin" / "kmscli"), help="the command to measure")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the logs are built")
    args = ap.parse_args()
    if shutil.which("faketime") is None:
        sys.exit("audit_scale: needs faketime (apt-get install faketime)")
    kmscli = shlex.split(args.kmscli)
    rows = [measure(int(s), kmscli, args.runs, Path(args.tmp)) for s in args.sizes.split(",")]
    print(f"`{args.kmscli}`, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end, "
          f"best of {args.runs} (show all: once)\n")
    print("| records | files | log MiB | `audit verify` s | verify records/s | `show --since` 1 h s (records) "
          "| `show --since` end s | `show` all s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['files']} | {r['mib']:.0f} | {r['verify']:.2f} | {r['counted'] / r['verify']:,.0f} "
              f"| {r['since']:.2f} ({r['window']:,}) | {r['floor']:.2f} | {r['full']:.2f} |")


if __name__ == "__main__":
    main()
