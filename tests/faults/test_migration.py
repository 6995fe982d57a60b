"""Format 1 vaults become format 2 on the first open with the passphrase: atomically, verified, nothing lost.

A format-1 vault is made through the service itself (``create_format=1``,
``migrate=False``), with keys, aliases, rotated material, policies, tags,
credentials, schedules and an audit log; it is then opened as any later
kmscli opens it. Killing the migrating process at every I/O step it takes,
and at random moments, leaves a vault that opens, in one format or the
other, with everything in it.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from kmscli import errors
from kmscli.agent.session import SessionKeySource
from kmscli.service import Caller, Kms
from kmscli.vault import format as F
from kmscli.vault.store import PassphraseKeySource, VaultStore
from tests.unit.conftest import CHEAP, Clock
from tests.vault_contents import contents

_CTX = multiprocessing.get_context("fork")
SQLITE = b"SQLite format 3\0"


class V1:
    """A populated format-1 vault, the ciphertexts it made, and what it holds."""

    def __init__(self, folder: Path, clock: Clock, n_keys: int = 6) -> None:
        self.path = folder / "v" / "vault.kms"
        self.keys = PassphraseKeySource(lambda: b"pw")
        self.caller = Caller(user="alice", uid=1000, pid=1, host="test")
        self.clock = clock
        svc = self.service(VaultStore(self.path, create_format=F.FORMAT_VERSION, migrate=False))
        svc.CreateVault(CHEAP)
        assert self.path.read_bytes()[:8] == F.MAGIC
        ids = [svc.CreateKey(Description=f"key {i}", AliasName=f"alias/k{i}",
                             Tags=[{"TagKey": "n", "TagValue": str(i)}])["KeyMetadata"]["KeyId"]
               for i in range(n_keys)]
        self.ids = ids
        self.ciphertexts: list[tuple[str, bytes, bytes]] = []
        for i, key_id in enumerate(ids[:4]):
            if i == 2:
                continue  # scheduled for deletion below: it decrypts nothing any more
            self.ciphertexts.append((key_id, f"before rotation {i}".encode(), self.encrypt(svc, key_id, i)))
        svc.RotateKeyOnDemand(KeyId=ids[0])
        svc.RotateKeyOnDemand(KeyId=ids[0])
        self.ciphertexts.append((ids[0], b"after rotation", self.encrypt(svc, ids[0], "after rotation")))
        svc.EnableKeyRotation(KeyId=ids[1], RotationPeriodInDays=90)
        svc.ScheduleKeyDeletion(KeyId=ids[2], PendingWindowInDays=7)
        svc.CreateAlias(AliasName="alias/second", TargetKeyId=ids[3])
        policy = json.loads(svc.GetKeyPolicy(KeyId=ids[3])["Policy"])
        policy["Statement"][0]["Sid"] = "Edited before the upgrade"
        svc.PutKeyPolicy(KeyId=ids[3], Policy=json.dumps(policy))
        svc.DisableKey(KeyId=ids[4])
        self.secret = svc.CreateAccessKey(UserName="bob")["AccessKey"]
        with svc.store.open(self.keys) as ov:
            self.vault_key = ov.vault_key
            self.header_raw = ov.header.raw
        self.bytes = self.path.read_bytes()
        self.doc, _ = contents(self.path, keys=self.keys, store=VaultStore(self.path, migrate=False))

    def service(self, store: VaultStore | None = None, keys: Any = None) -> Kms:
        return Kms(self.path, keys or self.keys, caller=self.caller, clock=self.clock, store=store)

    def encrypt(self, svc: Kms, key_id: str, tag: object) -> bytes:
        out = io.BytesIO()
        plain = f"before rotation {tag}".encode() if isinstance(tag, int) else str(tag).encode()
        svc.Encrypt(KeyId=key_id, reader=io.BytesIO(plain), writer=out, EncryptionContext={"t": str(tag)})
        return out.getvalue()

    def restore(self) -> None:
        """Put the format-1 file back, as it was (and nothing of a migration beside it)."""
        folder = self.path.parent
        for f in folder.iterdir():
            if f.name.startswith((".vault.kms", "vault.kms.v1", "vault.kms-")):
                f.unlink()
        tmp = folder / "restore.tmp"
        tmp.write_bytes(self.bytes)
        tmp.chmod(0o600)
        os.replace(tmp, self.path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def same_contents(doc: dict[str, Any], v1: V1) -> None:
    assert {k: v for k, v in doc.items() if k != "next_due"} == v1.doc


@pytest.fixture
def v1(tmp_path: Path, clock: Clock) -> V1:
    return V1(tmp_path, clock)


def test_a_format_1_vault_migrates_on_first_open_with_nothing_lost(v1: V1, capfd: pytest.CaptureFixture[str]) -> None:
    svc = v1.service()
    described = svc.DescribeKey(KeyId="alias/second")  # the first open: the migration
    err = capfd.readouterr().err
    assert described["KeyMetadata"]["KeyId"] == v1.ids[3]
    assert v1.path.read_bytes()[:16] == SQLITE
    kept = v1.path.with_name("vault.kms.v1")
    assert kept.read_bytes() == v1.bytes and (kept.stat().st_mode & 0o777) == 0o600
    assert err.count("upgraded to format 2") == 1 and str(kept) in err
    assert not [f for f in v1.path.parent.iterdir() if f.name.endswith(".tmp")]
    # Everything is there, sealed records now, and the generation is the one the log anchors.
    doc, _ = contents(v1.path, keys=v1.keys)
    same_contents(doc, v1)
    assert doc["generation"] >= v1.doc["generation"]
    # Every ciphertext made before decrypts after, through the migrated vault.
    for key_id, plain, ct in v1.ciphertexts:
        out = io.BytesIO()
        tag = plain.decode().rsplit(" ", 1)[-1] if plain.startswith(b"before") else plain.decode()
        svc.Decrypt(reader=io.BytesIO(ct), writer=out, EncryptionContext={"t": tag})
        assert out.getvalue() == plain, key_id
    svc.VerifyAuditLog(Strict=True)
    # Said once: later opens find a format-2 vault and say nothing.
    svc.ListKeys()
    assert "upgraded" not in capfd.readouterr().err
    # What the format-2 vault keeps beside the records: indexes and the schedule.
    with v1.service().store.open(v1.keys) as ov:
        assert ov.key_aliases(v1.ids[3]) == ["alias/k3", "alias/second"]
        assert [c["AccessKeyId"] for c in ov.user_credentials("bob")] == [v1.secret["AccessKeyId"]]
        assert ov.meta["next_due"] == min(v1.doc["keys"][v1.ids[1]]["Rotation"]["NextRotationDate"],
                                          v1.doc["keys"][v1.ids[2]]["DeletionDate"])


def test_the_migrated_vault_keeps_working(v1: V1, clock: Clock) -> None:
    svc = v1.service()
    new = svc.CreateKey(AliasName="alias/new")["KeyMetadata"]["KeyId"]
    svc.UpdateAlias(AliasName="alias/second", TargetKeyId=new)
    assert [a["AliasName"] for a in svc.ListAliases(KeyId=new)["Aliases"]] == ["alias/new", "alias/second"]
    clock.advance(days=8)  # the key pending deletion goes, with its alias
    with pytest.raises(errors.NotFoundException):
        svc.DescribeKey(KeyId=v1.ids[2])
    assert "alias/k2" not in [a["AliasName"] for a in svc.ListAliases()["Aliases"]]
    clock.advance(days=90)  # the key with automatic rotation rotates once
    rotations = svc.ListKeyRotations(KeyId=v1.ids[1])["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]
    secret = svc._credential  # the server's lookup
    with svc.store.open(svc.keys) as ov:
        assert secret(ov, v1.secret["AccessKeyId"])["SecretAccessKey"] == v1.secret["SecretAccessKey"]
    svc.VerifyAuditLog(Strict=True)


def test_a_session_neither_migrates_nor_ends_with_the_migration(v1: V1) -> None:
    session = SessionKeySource(v1.vault_key, v1.header_raw)
    via_session = v1.service(keys=session)
    assert via_session.DescribeKey(KeyId="alias/k1")["KeyMetadata"]["KeyId"] == v1.ids[1]
    assert v1.path.read_bytes() == v1.bytes  # the session's key cannot seal a new header: still format 1
    v1.service().ListKeys()  # the passphrase migrates it
    assert v1.path.read_bytes()[:16] == SQLITE
    # The session began on the format-1 header (same salt, same KDF): it goes on.
    assert via_session.DescribeKey(KeyId="alias/k1")["KeyMetadata"]["KeyId"] == v1.ids[1]
    via_session.CreateKey()
    # passwd makes a new salt: then it ends, as before.
    v1.service().ChangePassphrase(b"new")
    with pytest.raises(errors.InvalidSessionException):
        via_session.ListKeys()


def test_a_wrong_passphrase_migrates_nothing(v1: V1) -> None:
    with pytest.raises(errors.IncorrectPassphraseException):
        v1.service(keys=PassphraseKeySource(lambda: b"wrong")).ListKeys()
    assert v1.path.read_bytes() == v1.bytes
    assert not v1.path.with_name("vault.kms.v1").exists()


def test_a_vault_newer_than_this_kmscli_is_exit_8(v1: V1) -> None:
    v1.service().ListKeys()
    data = bytearray(v1.path.read_bytes())
    data[60:64] = (3).to_bytes(4, "big")
    v1.path.write_bytes(bytes(data))
    with pytest.raises(errors.VaultVersionException, match="newer than this kmscli understands") as info:
        v1.service().ListKeys()
    assert info.value.exit_code == 8


def test_an_earlier_kept_copy_is_not_overwritten(v1: V1) -> None:
    kept = v1.path.with_name("vault.kms.v1")
    kept.write_bytes(b"someone's own file")
    kept.chmod(0o600)
    v1.service().ListKeys()
    assert kept.read_bytes() == b"someone's own file"
    assert v1.path.with_name("vault.kms.v1.1").read_bytes() == v1.bytes


# -- killed while migrating -------------------------------------------------------------------
def _migrate_child(path: str, at: int, after: bool, counter_w: int) -> None:
    """Open the vault with its passphrase (migrating it), SIGKILLed at its ``at``-th I/O step."""
    count = [0]

    def wrap(name: str) -> None:
        real = getattr(os, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == at and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                return real(*args, **kwargs)
            finally:  # after the step, whether it succeeded or raised
                if count[0] == at:
                    os.kill(os.getpid(), signal.SIGKILL)

        setattr(os, name, step)

    write = os.write
    for name in ("write", "fsync", "replace", "rename", "link", "unlink", "close", "open"):
        wrap(name)
    import sys

    sys.stderr = io.StringIO()
    store = VaultStore(Path(path))
    store.open(PassphraseKeySource(lambda: b"pw")).close()
    write(counter_w, str(count[0]).encode())
    os._exit(0)


def _run_child(path: Path, at: int, after: bool) -> tuple[int | None, int]:
    r, w = os.pipe()
    p = _CTX.Process(target=_migrate_child, args=(str(path), at, after, w))
    p.start()
    os.close(w)
    p.join(300)
    if p.is_alive():
        p.kill()
        p.join()
    with os.fdopen(r, "rb") as f:
        steps = f.read()
    return p.exitcode, int(steps) if steps else 0


def test_killed_at_every_step_of_the_migration_leaves_a_vault_that_opens(tmp_path: Path, clock: Clock,
                                                                          seed: int) -> None:
    v1 = V1(tmp_path, clock)
    code, steps = _run_child(v1.path, 0, False)  # count the steps of a whole migration
    assert code == 0 and steps > 10, (code, steps)
    rng = random.Random(seed)
    seen = {"format 1": 0, "format 2": 0}
    for at in range(1, steps + 1):
        for after in (False, True):
            v1.restore()
            code, _ = _run_child(v1.path, at, after)
            assert code == -signal.SIGKILL, (at, after, code)
            seen["format 2" if v1.path.read_bytes()[:16] == SQLITE else "format 1"] += 1
            doc, _ = contents(v1.path, keys=v1.keys)  # opens (and finishes the migration if needed)
            same_contents(doc, v1)
            assert v1.path.read_bytes()[:16] == SQLITE
            assert not [f for f in v1.path.parent.iterdir() if ".tmp" in f.name], (at, after)
            if rng.random() < 0.1:
                v1.service().VerifyAuditLog(Strict=True)
    assert seen["format 1"] and seen["format 2"], seen


def test_killed_at_random_moments_of_a_large_migration(tmp_path: Path, clock: Clock, seed: int) -> None:
    import time

    v1 = V1(tmp_path, clock)
    # Grow it: many keys make a migration that takes long enough to be cut at any point.
    with VaultStore(v1.path, migrate=False).open(v1.keys) as ov:
        body = ov.body  # type: ignore[attr-defined]
    template = body["keys"][v1.ids[0]]
    for i in range(3000):
        key_id = f"00000000-0000-4000-8000-{i:012d}"
        body["keys"][key_id] = {**template, "KeyId": key_id, "Description": f"bulk {i}"}
    store = VaultStore(v1.path, migrate=False)
    with store.locked(), store.open(v1.keys) as ov:
        ov.body = body  # type: ignore[attr-defined]
        ov.meta = body
        store.write_vault(ov)
    v1.bytes = v1.path.read_bytes()
    v1.doc, _ = contents(v1.path, keys=v1.keys, store=VaultStore(v1.path, migrate=False))
    start = time.monotonic()
    code, _ = _run_child(v1.path, 0, False)
    took = time.monotonic() - start
    assert code == 0
    rng = random.Random(seed)
    for _ in range(8):
        v1.restore()
        p = _CTX.Process(target=_migrate_child, args=(str(v1.path), 0, False, os.open(os.devnull, os.O_WRONLY)))
        p.start()
        time.sleep(rng.uniform(0, took))
        p.kill()
        p.join()
        doc, _ = contents(v1.path, keys=v1.keys)
        same_contents(doc, v1)
