"""The audit log under real concurrent processes, and processes killed mid-append."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmscli.audit import AuditLog, ChainHead, chain_key
from kmscli.errors import AuditVerificationException
from tests.conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
KEY = chain_key(b"\x07" * 32)
VAULT_ID = "vault-concurrency"

# A writer: says "ready", waits until the gate (a pipe) closes, appends N records (forever if
# N < 0), prints each head it got back. Gate "-": no waiting.
WRITER = r"""
import json, os, sys
from kmscli.audit import AuditLog
path, vault_id, key_hex, n, gate, tag, max_bytes, unkeyed_every = sys.argv[1:]
n, max_bytes, unkeyed_every = int(n), int(max_bytes), int(unkeyed_every)
key = bytes.fromhex(key_hex)
log = AuditLog(path, vault_id=vault_id, max_bytes=max_bytes)
if gate != "-":
    os.write(1, b"ready\n")
    while os.read(int(gate), 1):  # EOF once the test closes its end: every writer starts at once
        pass
i = 0
while n < 0 or i < n:
    rec = {"eventName": "Encrypt", "userIdentity": {"userName": tag}, "requestParameters": {"keyId": tag, "i": i}}
    keyed = not (unkeyed_every and i % unkeyed_every == unkeyed_every - 1)
    if not keyed:  # the only record written without the key: a failed unlock
        rec["errorCode"] = "IncorrectPassphraseException"
    h = log.append(rec, key if keyed else None)
    os.write(1, (json.dumps([h.file_index, h.seq, h.mac]) + "\n").encode())  # one write: a kill cannot split it
    i += 1
"""


def writer(path: Path, n: int, tag: str, max_bytes: int = 64 << 20, unkeyed_every: int = 0,
           gate: int | None = None) -> subprocess.Popen:
    """Start a writer; with ``gate`` (a pipe's read end) it prints "ready" and waits for the pipe to close."""
    args = [str(path), VAULT_ID, KEY.hex(), str(n), "-" if gate is None else str(gate), tag, str(max_bytes),
            str(unkeyed_every)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        pass_fds=() if gate is None else (gate,),
    )


def read_line(p: subprocess.Popen) -> bytes:
    """The writer's next line; it must come (a writer that died instead shows its stderr)."""
    assert p.stdout is not None and p.stderr is not None
    line = p.stdout.readline()
    assert line.endswith(b"\n"), (line, p.wait(HANG_GUARD_S), p.stderr.read().decode())
    return line


def on_disk(path: Path) -> dict[int, ChainHead]:
    """Every record's head as the files hold it, by seq."""
    segments = sorted(path.parent.glob(path.name + ".[0-9]*"))
    live_index = int(segments[-1].name.rsplit(".", 1)[1]) + 1 if segments else 1
    found = {}
    for f in [*segments, path]:
        index = int(f.name.rsplit(".", 1)[1]) if f != path else live_index
        if f.exists():
            for line in f.read_bytes().splitlines():
                rec = json.loads(line)
                found[rec["chainSeq"]] = ChainHead(index, rec["chainSeq"], rec["chainMac"])
    return found


def heads_of(out: bytes) -> list[ChainHead]:
    """Heads a writer was given back (a line cut off by a kill is not one)."""
    heads = []
    for line in out.splitlines(keepends=True):
        if line.endswith(b"\n"):
            heads.append(ChainHead(*json.loads(line)))
    return heads


@pytest.mark.parametrize(
    ("max_bytes", "unkeyed_every"),
    [(64 << 20, 0), (16 << 10, 7)],
    ids=["one-file", "rotating-with-unkeyed"],
)
def test_eight_processes_append_at_once(tmp_path: Path, max_bytes: int, unkeyed_every: int) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, vault_id=VAULT_ID)
    # A start barrier that counts processes, not seconds: all eight are up and
    # waiting on the gate before it opens, however slowly they started.
    gate, opener = os.pipe()
    try:
        procs = [writer(path, 50, f"p{p}", max_bytes, unkeyed_every, gate=gate) for p in range(8)]
    finally:
        os.close(gate)
    try:
        for p in procs:
            assert read_line(p) == b"ready\n"
    finally:
        os.close(opener)  # EOF on the gate: all start at once
    # Readers while the writers run: each snapshot is a consistent prefix of the chain.
    seen = 0
    while any(p.poll() is None for p in procs):
        report = log.verify(KEY)
        assert report.records >= seen
        seen = report.records
        time.sleep(0.01)
    results = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()
    acked = [h for out, _ in results for h in heads_of(out)]
    assert len(acked) == 400

    last = max(acked, key=lambda h: h.seq)
    report = log.verify(KEY, last)
    assert report.records == 400 and report.last_head == last
    if max_bytes < 64 << 20:
        assert report.files >= 5
    assert sorted(h.seq for h in acked) == list(range(1, 401))  # unique and contiguous
    disk = on_disk(path)
    assert all(disk[h.seq] == h for h in acked)  # every acknowledged record is there, as its writer was told
    assert log.verify(KEY, acked[0]).records == 400
    recs = list(log.read())
    assert [r["chainSeq"] for r in recs] == list(range(1, 401))
    for p in range(8):  # each process's records are in its own order
        mine = [r["requestParameters"]["i"] for r in recs if r["requestParameters"]["keyId"] == f"p{p}"]
        assert mine == list(range(50))


#: Appends each killed writer has acknowledged at least: 24 writers times this many
#: records of about 440 bytes fill more than three 8 KiB files, however slow the machine.
MIN_APPENDS = 5


def test_sigkill_at_random_moments_never_breaks_the_chain(tmp_path: Path) -> None:
    """Kill writers (two at a time, in tight append loops, rotating often) at seeded random moments."""
    rng = random.Random(20261201)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, vault_id=VAULT_ID)
    acked: list[ChainHead] = []
    kills = 0
    for _ in range(12):
        procs = [writer(path, -1, f"k{kills + j}", max_bytes=8 << 10) for j in range(2)]
        for p in procs:
            # Kill after a seeded number of acknowledged appends (work, not seconds), while
            # the other writer appends too; the jitter varies where in an append it lands.
            for _ in range(rng.randrange(MIN_APPENDS, 3 * MIN_APPENDS)):
                acked.append(ChainHead(*json.loads(read_line(p))))
            time.sleep(rng.uniform(0, 0.003))
            p.send_signal(signal.SIGKILL)
            kills += 1
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            out = p.stdout.read()  # not communicate(): it would skip what readline() buffered
            p.wait()
            p.stdout.close()
            p.stderr.close()
            assert p.returncode == -signal.SIGKILL
            acked.extend(heads_of(out))
    assert kills >= 20
    last = max(acked, key=lambda h: h.seq)
    try:
        report = log.verify(KEY, last)
    except AuditVerificationException as e:
        # Possible only if a kill landed between two pages of one write(2): the next append repairs it.
        assert "torn final line" in str(e), str(e)
        log.append({"eventName": "Encrypt"}, KEY)
        report = log.verify(KEY, last)
    assert report.records >= len({h.seq for h in acked})
    assert report.files > 3
    disk = on_disk(path)
    assert all(disk[h.seq] == h for h in acked)  # nothing acknowledged was lost, every head still matches
    assert log.verify(KEY, rng.choice(acked)).records == report.records
    after = log.append({"eventName": "Encrypt"}, KEY)
    assert after.seq == report.records + 1
    assert log.verify(KEY, after).records == after.seq
