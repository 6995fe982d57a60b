"""Real processes against one vault: no lost update, no torn vault, ever."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import Runner, kmscli_command, ok

#: A guard against hangs only: no test here passes or fails by how fast it ran.
HANG_GUARD_S = 300


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*kmscli_command(), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def listed(kms: Runner) -> set[str]:
    return {k["KeyId"] for k in json.loads(ok(kms("keys", "list", "--all", "--json")).stdout)["Keys"]}


def test_sixteen_creates_at_once(kms: Runner, vault: Path, env: dict[str, str]) -> None:
    procs = [spawn(env, "keys", "create", "--description", f"p{i}") for i in range(16)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [o[1] for o in outs]
    created = {o[0].decode().strip() for o in outs}
    assert len(created) == 16
    assert listed(kms) == created
    # Each key has its own creator's description (ListKeys has no descriptions: the table does).
    rows = [line.split("\t") for line in ok(kms("keys", "list")).stdout.decode().splitlines()]
    assert {cols[0]: cols[4] for cols in rows} == {o[0].decode().strip(): f"p{i}" for i, o in enumerate(outs)}
    assert len(rows) == 16
    ok(kms("audit", "verify"))


def test_sigkill_never_loses_an_acknowledged_key(kms: Runner, vault: Path, env: dict[str, str]) -> None:
    """Kill writers at random moments; every key whose creation reported success survives."""
    rng = random.Random(20261128)
    acknowledged: set[str] = set()
    for _round in range(12):
        procs = [spawn(env, "keys", "create") for _ in range(4)]
        time.sleep(rng.uniform(0.05, 0.4))
        victim = rng.choice(procs)
        victim.send_signal(signal.SIGKILL)
        for p in procs:
            out, _err = p.communicate(timeout=120)
            if p.returncode == 0:
                acknowledged.add(out.decode().strip())
        # The vault opens after every round, with every acknowledged key.
        assert acknowledged <= listed(kms)
    assert len(acknowledged) >= 12 * 3 - 6  # most creates were not the one killed
    assert not list(vault.parent.glob(".vault.kms.*.tmp")) or ok(kms("keys", "create"))
    assert not list(vault.parent.glob(".vault.kms.*.tmp"))


def _create_forever(vault_path: str, audit_path: str, fd: int) -> None:
    """Child: create keys as fast as possible, reporting each id once it is durable."""
    import os

    from kmscli.service import Kms
    from kmscli.vault.store import PassphraseKeySource
    from tests.conftest import PASSPHRASE

    svc = Kms(Path(vault_path), PassphraseKeySource(lambda: PASSPHRASE.encode()), audit_path=Path(audit_path))
    while True:
        key_id = svc.CreateKey()["KeyMetadata"]["KeyId"]
        os.write(fd, key_id.encode() + b"\n")


def test_sigkill_mid_write_in_a_tight_loop(kms: Runner, vault: Path) -> None:
    """40 kills of a tight create loop, each at a seeded random moment of a write: the vault always opens.

    Each round waits for the child to acknowledge a seeded 1..3 creates (work,
    not time), then kills it a random fraction of one create's observed
    duration later, so the kill lands inside the next write however slow the
    machine is. The only clock is a hang guard.
    """
    import multiprocessing
    import os
    import select

    ctx = multiprocessing.get_context("fork")
    rng = random.Random(7)
    acknowledged: set[str] = set()
    wanted = 0
    for _ in range(40):
        r, w = os.pipe()
        child = ctx.Process(target=_create_forever, args=(str(vault), str(vault.with_name("audit.jsonl")), w))
        child.start()
        os.close(w)
        target = rng.randint(1, 3)
        wanted += target
        got = b""
        started = time.monotonic()
        while got.count(b"\n") < target:
            assert time.monotonic() < started + HANG_GUARD_S and child.is_alive(), ("no progress", got)
            if select.select([r], [], [], 1.0)[0]:
                got += os.read(r, 4096)
        # What one create takes on this machine, now (start-up included): a kill this
        # far into the next create lands somewhere inside it.
        one = (time.monotonic() - started) / got.count(b"\n")
        time.sleep(rng.uniform(0.0, one))
        os.kill(child.pid, signal.SIGKILL)
        child.join(HANG_GUARD_S)
        with os.fdopen(r, "rb") as f:
            acknowledged |= {line.decode() for line in (got + f.read()).splitlines() if len(line) == 36}
        assert acknowledged <= listed(kms)
    assert len(acknowledged) >= wanted >= 40  # every round waited for its acknowledged creates
    ok(kms("audit", "verify"))
