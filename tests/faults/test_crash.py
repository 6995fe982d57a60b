"""SIGKILL at random points of vault writes, audit appends and ``decrypt -o`` (seeded, seed in the summary).

``tests/concurrency`` already kills ``keys create`` loops by the clock. Here
every scenario is killed two ways, in the same round, by two children of
the test sharing one vault:

* at a **fault point**: the child counts its I/O steps (``os.write``,
  ``fsync``, ``replace``, ``rename``, ``link``, ``unlink``, ``ftruncate``,
  ``close``, the audit log's write and sync, every write to a ``-o`` file)
  and SIGKILLs itself just before or just after the N-th, N drawn from the
  number of steps three operations take (measured first), so every step of
  the write paths gets its turn;
* at a **random moment of its work**: the test waits until the other child
  has acknowledged a random number (0..2) of operations, then SIGKILLs it
  after a random fraction of the time one operation took in calibration,
  which can land inside a system call (a torn audit line, a half-written
  temporary file). Waiting for acknowledged work first, not for a fixed
  delay, means the kill lands inside an operation however slow the machine.

The children run the real CLI code in process (``kmscli.cli.app.run``, forked
from the test after the imports, so a call costs milliseconds, not an
interpreter start-up) and report each command that exited 0 on a pipe, after
it returned: that is what "acknowledged" means. After every round the vault
opens with every acknowledged change, the audit log verifies (or fails only
on a torn final line, which the next append removes), and no ``-o`` target
holds anything but the complete plaintext.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import select
import signal
import stat
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from kmscli import audit
from kmscli.errors import AuditVerificationException
from tests.conftest import PASSPHRASE, Runner, ok
from tests.vault_contents import contents

ROUNDS = {"vault": 45, "audit": 30, "decrypt": 40}  # two kills a round: 230 in all
PLAINTEXT_SIZE = (5 << 20) // 2  # 2.5 MiB: three chunks, so a kill can leave a partial one
TARGETS = ("out-a.txt", "out-b.txt", "out-c.txt")
#: Seconds after which a child counts as hung: a guard against hangs only, never
#: what a round waits for (a round waits for a child's acknowledgements or death).
HANG_GUARD_S = 300.0
_CTX = multiprocessing.get_context("fork")


# -- the child ---------------------------------------------------------------------------
def _install_fault(at: int, after: bool, counter: list[int]) -> None:
    """SIGKILL this process at its ``at``-th I/O step (0: only count the steps in ``counter``)."""
    from kmscli.cli import fileio

    def wrap(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def step(*args, **kwargs):
            counter[0] += 1
            if counter[0] == at and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if counter[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, step)

    for name in ("write", "fsync", "replace", "rename", "link", "unlink", "ftruncate", "close"):
        wrap(os, name)
    wrap(audit, "_write")
    wrap(audit, "_sync")
    wrap(fileio._Sink, "write")


def _child(scenario: str, work: str, ack: int, fault_at: int, after: bool, ops: int, seed: int) -> None:
    import io
    import sys

    from kmscli.cli.app import run

    real_write, real_close = os.write, os.close
    for name in [k for k in os.environ if k.startswith("KMSCLI_")]:
        del os.environ[name]
    os.environ.update(KMSCLI_VAULT=f"{work}/kms/vault.kms", KMSCLI_PASSPHRASE=PASSPHRASE)
    rng = random.Random(seed)
    counter = [0]
    _install_fault(fault_at, after, counter)
    key_id = Path(work, "key_id").read_text()
    own: list[str] = []  # keys this child made: a key takes at most 50 aliases
    n = 0
    real_write(ack, b'{"ready": true}\n')  # set up: the test may now count this child's work
    while ops == 0 or n < ops:
        n += 1
        if scenario == "vault":
            alias = f"alias/c{os.getpid()}-{n}"
            if own and n % 3 == 0:
                args = ["alias", "create", alias, own[-1]]
            else:
                args = ["keys", "create", "--alias", alias] if rng.random() < 0.5 else ["keys", "create"]
        elif scenario == "audit":
            args = rng.choice([["encrypt", "--key", "alias/crash", "-c", f"n={n}", "-i", f"{work}/small"],
                               ["keys", "describe", key_id, "--json"],
                               ["datakey", "alias/crash", "--no-plaintext", "--json"]])
        else:
            args = ["decrypt", "-i", f"{work}/big.kms", "-o", f"{work}/out/{rng.choice(TARGETS)}"]
        out, err = io.BytesIO(), io.BytesIO()
        sys.stdout = io.TextIOWrapper(out, write_through=True)
        sys.stderr = io.TextIOWrapper(err, write_through=True)
        rc = run(args)
        if rc == 0:
            line = {"args": args, "pid": os.getpid(), "stdout": out.getvalue()[:200].decode(errors="replace")}
            if args[:2] == ["keys", "create"]:
                own.append(line["stdout"].strip())
        else:
            line = {"args": args, "pid": os.getpid(), "failed": rc, "stderr": err.getvalue().decode()}
        real_write(ack, (json.dumps(line) + "\n").encode())
    real_write(ack, (json.dumps({"steps": counter[0]}) + "\n").encode())
    real_close(ack)
    os._exit(0)


# -- the test side -----------------------------------------------------------------------
class Crash:
    """Runs rounds of two children against one vault and keeps what they acknowledged."""

    def __init__(self, work: Path, rng: random.Random) -> None:
        self.work, self.rng = work, rng
        self.acks: list[dict] = []
        self.kills = Counter[str]()
        self.steps: dict[str, int] = {}
        self.op_seconds: dict[str, float] = {}  # one operation's wall time on this machine, now

    def start(self, scenario: str, fault_at: int, after: bool, ops: int = 0) -> tuple[multiprocessing.Process, int]:
        r, w = os.pipe()
        p = _CTX.Process(target=_child, args=(scenario, str(self.work), w, fault_at, after, ops,
                                              self.rng.randrange(1 << 30)))
        p.start()
        os.close(w)
        return p, r

    def wait_lines(self, r: int, count: int, head: bytes = b"") -> bytes:
        """Read from ``r`` until ``head`` and what follows hold ``count`` complete lines
        (or end of input); return ``head`` and what was read."""
        got = bytearray(head)
        deadline = time.monotonic() + HANG_GUARD_S
        while got.count(b"\n") < count:
            assert time.monotonic() < deadline, f"no {count} lines from a child in {HANG_GUARD_S} s: {bytes(got)!r}"
            if select.select([r], [], [], 1.0)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                got += chunk
        return bytes(got)

    def collect(self, r: int, head: bytes = b"") -> list[dict]:
        with os.fdopen(r, "rb") as f:
            lines = (head + f.read()).splitlines(keepends=True)
        got = [json.loads(line) for line in lines if line.endswith(b"\n")]  # a kill never splits one write
        failed = [g for g in got if "failed" in g]
        assert not failed, failed
        return got

    def calibrate(self, scenario: str) -> int:
        """How many I/O steps three operations of ``scenario`` take."""
        p, r = self.start(scenario, 0, False, ops=3)
        head = self.wait_lines(r, 1)  # "ready": time the three operations, not the fork
        start = time.monotonic()
        head = self.wait_lines(r, 1 + 3, head)
        self.op_seconds[scenario] = (time.monotonic() - start) / 3
        p.join(HANG_GUARD_S)
        if p.is_alive():  # hung: never leave it behind
            p.kill()
            p.join()
        got = self.collect(r, head)
        assert p.exitcode == 0, got
        self.acks += [g for g in got if "args" in g]
        self.steps[scenario] = got[-1]["steps"]
        return got[-1]["steps"]

    def round(self, scenario: str) -> None:
        steps = self.steps[scenario]
        at = self.rng.randint(1, steps)
        faulty = self.start(scenario, at, self.rng.random() < 0.5)
        timed = self.start(scenario, 0, False)
        # "ready" and then 0..2 acknowledged operations: the child is now inside its next one
        head = {timed[1]: self.wait_lines(timed[1], 1 + self.rng.randint(0, 2))}
        time.sleep(self.rng.uniform(0.0, self.op_seconds[scenario]))
        timed[0].kill()
        # The fault point is always reached: the step count goes on across operations,
        # so a child whose operations take fewer steps than calibration's only needs more of them.
        faulty[0].join(HANG_GUARD_S)
        hung = faulty[0].is_alive()
        if hung:  # never leave it behind
            faulty[0].kill()
        for p, r in (faulty, timed):
            p.join(HANG_GUARD_S)
            assert p.exitcode == -signal.SIGKILL, p.exitcode
            self.kills[scenario] += 1
            self.acks += [g for g in self.collect(r, head.get(r, b"")) if "args" in g]
        assert not hung, f"the child to die at I/O step {at} of {scenario} still ran after {HANG_GUARD_S} s"


def _warm_imports() -> None:
    """Import what the children use before forking them, so a child starts in a millisecond."""
    import argon2.low_level  # noqa: F401
    import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401

    import kmscli.cli.app  # noqa: F401
    import kmscli.crypto.armor  # noqa: F401
    import kmscli.crypto.stream  # noqa: F401
    import kmscli.policy  # noqa: F401
    import kmscli.service  # noqa: F401


@pytest.fixture
def crash(kms: Runner, vault: Path, tmp_path: Path, seed: int) -> Crash:
    _warm_imports()
    key_id = ok(kms("keys", "create", "--alias", "alias/crash")).stdout.decode().strip()
    (tmp_path / "key_id").write_text(key_id)
    (tmp_path / "small").write_bytes(b"s" * 100)
    (tmp_path / "out").mkdir()
    return Crash(tmp_path, random.Random(seed))


def open_vault(vault: Path) -> tuple[dict, bytes]:
    return contents(vault, PASSPHRASE)


def check_audit(vault: Path) -> str:
    """The log verifies against the vault's chain key and head; returns how.

    "intact"; "torn" when it fails only on a torn last line (the next append
    removes it); "completed" when it lacked only the records of the vault's
    last write (a kill between the vault's rename and the log's append) and
    verifies once they are appended from the vault, as the next command does.
    """
    body, vault_key = open_vault(vault)
    log = audit.AuditLog(vault.with_name("audit.jsonl"), vault_id=body["vault_id"])
    head = body["audit_head"]
    # The vault keeps more than the head itself ("lines"): take the head's own fields.
    stored = audit.ChainHead(file_index=head["file_index"], seq=head["seq"], mac=head["mac"]) if head else None
    key = audit.chain_key(vault_key)
    try:
        log.verify(key, stored)
    except AuditVerificationException as e:
        lines = vault.with_name("audit.jsonl").read_bytes().split(b"\n")
        if re.fullmatch(rf"line {len(lines)}: .*torn final line.*", str(e)):
            return "torn"
        assert "records were removed from the end" in str(e), str(e)
        assert log.complete(head["lines"]) > 0, str(e)
        log.verify(key, stored)
        return "completed"
    return "intact"


def test_vault_writes(crash: Crash, vault: Path, figures: Callable[[str], None], seed: int) -> None:
    steps = crash.calibrate("vault")
    torn = 0
    for i in range(ROUNDS["vault"]):
        crash.round("vault")
        body, _ = open_vault(vault)  # opens after every kill
        keys = {a["stdout"].strip() for a in crash.acks if a["args"][:2] == ["keys", "create"]}
        aliases = {a["args"][-1 if a["args"][0] == "keys" else 2]: a for a in crash.acks
                   if "--alias" in a["args"] or a["args"][0] == "alias"}
        assert keys <= set(body["keys"]), (seed, sorted(keys - set(body["keys"])))
        assert set(aliases) <= set(body["aliases"]), (seed, sorted(set(aliases) - set(body["aliases"])))
        if i % 5 == 4:
            torn += check_audit(vault) != "intact"
    torn += check_audit(vault) != "intact"
    figures(f"crash/vault: {crash.kills['vault']} kills ({steps} I/O steps per 3 operations), "
            f"{len(keys)} keys and {len(aliases)} aliases acknowledged and present, "
            f"torn audit tails or logs completed from the vault seen: {torn}")
    assert crash.kills["vault"] >= 2 * ROUNDS["vault"]


def test_audit_appends(crash: Crash, vault: Path, figures: Callable[[str], None], seed: int) -> None:
    steps = crash.calibrate("audit")
    torn = 0
    for i in range(ROUNDS["audit"]):
        crash.round("audit")
        if i % 5 == 4:
            torn += check_audit(vault) != "intact"
    torn += check_audit(vault) != "intact"
    # Every acknowledged operation has its record, by the process that made it.
    names = {"encrypt": "Encrypt", "keys": "DescribeKey", "datakey": "GenerateDataKeyWithoutPlaintext"}
    acked = Counter((a["pid"], names[a["args"][0]]) for a in crash.acks)
    lines = vault.with_name("audit.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines if line.endswith(b"}")]
    logged = Counter((r["userIdentity"]["pid"], r["eventName"]) for r in records if "errorCode" not in r)
    missing = {k: n - logged[k] for k, n in acked.items() if logged[k] < n}
    assert not missing, (seed, missing)
    figures(f"crash/audit: {crash.kills['audit']} kills ({steps} I/O steps per 3 operations), "
            f"{sum(acked.values())} acknowledged operations all recorded, {len(records)} records, "
            f"torn audit tails or logs completed from the vault seen: {torn}")
    assert crash.kills["audit"] >= 2 * ROUNDS["audit"]


def test_decrypt_to_file(crash: Crash, kms: Runner, vault: Path, tmp_path: Path,
                         figures: Callable[[str], None], seed: int) -> None:
    plain = random.Random(seed).randbytes(PLAINTEXT_SIZE)
    (tmp_path / "big").write_bytes(plain)
    ok(kms("encrypt", "--key", "alias/crash", "-i", str(tmp_path / "big"), "-o", str(tmp_path / "big.kms")))
    out = tmp_path / "out"
    steps = crash.calibrate("decrypt")
    temps_seen = 0
    temp = re.compile(r"\.(out-[abc]\.txt)\.[0-9a-f]{12}\.tmp")
    for _ in range(ROUNDS["decrypt"]):
        crash.round("decrypt")
        for f in out.iterdir():
            if f.name in TARGETS:  # a target is never partial
                assert f.stat().st_size == PLAINTEXT_SIZE and f.read_bytes() == plain, (seed, f.name)
            else:  # only a killed writer's private temporary file, which the next writer removes
                assert temp.fullmatch(f.name), (seed, f.name)
                assert stat.S_IMODE(f.stat().st_mode) == 0o600
                temps_seen += 1
    for name in TARGETS:  # the next writer of each target cleans up after the killed ones
        ok(kms("decrypt", "-i", str(tmp_path / "big.kms"), "-o", str(out / name)))
    assert sorted(f.name for f in out.iterdir()) == sorted(TARGETS), seed
    assert all((out / name).read_bytes() == plain for name in TARGETS)
    acked = sum(1 for a in crash.acks if a["args"][0] == "decrypt")
    figures(f"crash/decrypt -o: {crash.kills['decrypt']} kills ({steps} I/O steps per 3 operations), "
            f"{acked} acknowledged decrypts, never a partial target; {temps_seen} sightings of a killed "
            "writer's temporary file, all removed by the next writer")
    assert crash.kills["decrypt"] >= 2 * ROUNDS["decrypt"]
    check_audit(vault)
