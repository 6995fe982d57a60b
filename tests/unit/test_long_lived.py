"""What a long-lived process (`kmscli serve`) keeps between requests, and why it stays correct.

A server keeps the vault it opened, the end of the log it last read or wrote
and which log file is live; each is reused only while the file on disk is
the very same (inode, size, mtime, ctime), so anything another process does
is seen at the next request. Records written on the event loop are synced
in batches before their answers leave. Work is counted (system calls made,
files read), never timed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from kmscli import audit, errors
from kmscli.audit import AuditLog, KeyRing, chain_key
from kmscli.vault import format as F
from kmscli.vault.store import FixedKeySource, PassphraseKeySource, VaultStore

VAULT_ID = "cd" * 16
KEY = chain_key(bytes(range(32)))
RING = KeyRing.single(KEY)


def _record(i: int) -> dict[str, Any]:
    return {"eventName": "Encrypt", "eventType": "AwsApiCall", "requestParameters": {"n": i}, "readOnly": True}


class Counting:
    """Counts calls to a function of a module while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.calls = 0
        real = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


# -- the log's end --------------------------------------------------------------


def test_the_tail_a_process_wrote_is_known_without_reading_the_log(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    head = log.append(_record(1), RING)
    preads = Counting(monkeypatch, os, "pread")
    tail = log.tail()
    assert preads.calls == 0
    assert tail.last == head and tail.last_keyed is not None and tail.last_keyed[audit.SEQ_FIELD] == 1
    assert tail.sealed_with == KEY  # written here: no MAC to check again
    # The next append needs no read of the end either (the file is as this process left it), nor
    # a check of the last record's MAC: this process sealed it, with the key the ring gives it.
    macs = Counting(monkeypatch, audit, "record_mac_ok")
    head2 = log.append(_record(2), RING)
    assert preads.calls == 0 and head2.seq == 2 and macs.calls == 0
    # Under another ring (the passphrase changed meanwhile) the record is checked, and refused.
    with pytest.raises(errors.AuditLogException, match="another key"):
        log.append(_record(3), KeyRing.single(chain_key(bytes(32))))
    assert macs.calls == 1


def test_another_writer_is_seen_at_the_next_read(tmp_path: Path) -> None:
    ours = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    theirs = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)  # another process, in effect
    ours.append(_record(1), RING)
    assert ours.tail().last.seq == 1
    theirs.append(_record(2), RING)
    tail = ours.tail()
    assert tail.last.seq == 2 and tail.sealed_with is None  # read from the file, its MAC to be checked
    # and the chain goes on from the other writer's record, not from what we remembered
    assert ours.append(_record(3), RING).seq == 3
    assert theirs.append(_record(4), RING).seq == 4
    assert ours.verify(KEY).records == 4


def test_a_log_cut_back_behind_a_process_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, vault_id=VAULT_ID)
    for i in range(3):
        log.append(_record(i), RING)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # the last record cut off by someone else
    assert log.tail().last.seq == 2


def test_a_log_replaced_by_another_file_of_the_same_size_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, vault_id=VAULT_ID)
    log.append(_record(1), RING)
    other = AuditLog(tmp_path / "other.jsonl", vault_id=VAULT_ID)
    other.append(_record(9), KeyRing.single(chain_key(bytes(32))))
    assert (tmp_path / "other.jsonl").stat().st_size == path.stat().st_size
    os.replace(tmp_path / "other.jsonl", path)  # a new inode in place
    tail = log.tail()
    assert tail.sealed_with is None and not audit.record_mac_ok(KEY, tail.last_keyed)


def test_an_unkeyed_record_after_the_keyed_one_is_not_mistaken_for_the_end(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ours = AuditLog(path, vault_id=VAULT_ID)
    ours.append(_record(1), RING)
    AuditLog(path, vault_id=VAULT_ID).append({**_record(2), "errorCode": "IncorrectPassphraseException",
                                              "errorMessage": "wrong passphrase"}, None)
    tail = ours.tail()
    assert tail.last.seq == 2 and tail.last_keyed[audit.SEQ_FIELD] == 1
    assert ours.append(_record(3), RING).seq == 3  # chained after the unkeyed record, not the keyed one
    assert ours.verify(KEY).records == 3


def test_appends_list_the_folder_only_when_a_new_live_file_appears(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, vault_id=VAULT_ID, max_bytes=4096)
    for i in range(40):  # several rotations
        log.append(_record(i), RING)
    segments = len(list(tmp_path.glob("audit.jsonl.0*")))
    assert segments >= 3
    listings = Counting(monkeypatch, os, "listdir")
    heads = [log.append(_record(i), RING) for i in range(40, 80)]
    rotations = len(list(tmp_path.glob("audit.jsonl.0*"))) - segments
    assert rotations >= 3
    assert listings.calls == 0  # the new live file's number is the rotated one's plus one
    assert heads[-1].file_index == segments + rotations + 1
    assert log.verify(KEY).records == 80
    # A process that starts afresh lists the folder once, then no more.
    before = listings.calls
    fresh = AuditLog(path, vault_id=VAULT_ID, max_bytes=1 << 20)
    for i in range(80, 90):
        fresh.append(_record(i), RING)
    assert listings.calls - before == 1


# -- deferred syncs -------------------------------------------------------------


def test_deferred_appends_are_written_at_once_and_synced_once_per_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(audit, "_sync", lambda fd: synced.append(os.fstat(fd).st_ino))
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    batch = []
    for i in range(5):
        with audit.deferring_sync() as fds:
            log.append(_record(i), RING)
        assert len(fds) == 1
        batch.append(fds)
    assert synced == []
    # Written and chained already: another process sees and extends the chain.
    assert AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID).tail().last.seq == 5
    assert audit.sync_batch(batch) == [None] * 5
    assert synced == [(tmp_path / "audit.jsonl").stat().st_ino]  # one call covers all five
    for fds in batch:  # and the duplicates are closed
        with pytest.raises(OSError):
            os.fstat(fds[0])


def test_a_failed_deferred_sync_is_reported_to_every_request_that_waits_on_it(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    batch = []
    for i in range(3):
        with audit.deferring_sync() as fds:
            log.append(_record(i), RING)
        batch.append(fds)
    monkeypatch.setattr(audit, "_sync", full)
    outcome = audit.sync_batch(batch)
    assert [e.errno if e else None for e in outcome] == [28, 28, 28]


def test_a_rotation_syncs_the_file_it_moves_away_even_when_syncs_are_deferred(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = audit._sync
    monkeypatch.setattr(audit, "_sync", lambda fd: (synced.append(os.fstat(fd).st_ino), real(fd)))
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, vault_id=VAULT_ID, max_bytes=2048)
    first_inode = None
    pending = []
    for i in range(30):
        with audit.deferring_sync() as fds:
            log.append(_record(i), RING)
        pending.append(fds)
        first_inode = first_inode or path.stat().st_ino
        if list(tmp_path.glob("audit.jsonl.0*")):
            break
    assert list(tmp_path.glob("audit.jsonl.0*")), "no rotation happened"
    assert first_inode in synced  # synced before the rename, not left to the deferred batch
    audit.sync_batch(pending)


def test_group_commit_never_leads_another_threads_record_into_a_deferred_batch(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    group = audit.GroupCommit()
    with audit.deferring_sync() as fds:
        group.append(log, _record(1), RING, catch_up=None, event_id=audit.new_event_id())
        other: list[Any] = []
        t = threading.Thread(target=lambda: other.append(
            group.append(log, _record(2), RING, catch_up=None, event_id=audit.new_event_id())))
        t.start()
        t.join(30)
    assert len(fds) == 1  # only this thread's own record waits for the caller's sync
    assert other and other[0].seq == 2
    audit.sync_batch([fds])


# -- the vault kept opened ------------------------------------------------------


def _vault(tmp_path: Path) -> tuple[Path, bytes]:
    from kmscli.service import Kms

    path = tmp_path / "v" / "vault.kms"
    keys = PassphraseKeySource(lambda: b"pw")
    Kms(path, keys).CreateVault(F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1))
    with VaultStore(path).open(keys) as ov:
        return path, ov.vault_key


def _key_ids(store: VaultStore, vault_key: bytes) -> list[str]:
    with store.open(FixedKeySource(vault_key)) as ov:
        return [k["KeyId"] for _, k in ov.iter_keys()]


def test_a_kept_vault_is_reused_while_the_file_is_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kmscli.vault import records

    path, vault_key = _vault(tmp_path)
    store = VaultStore(path, keep_opened=True)
    with store.open(FixedKeySource(vault_key)) as first:
        meta = dict(first.meta)
    opens = Counting(monkeypatch, records.RecordStore, "open")
    with store.open(FixedKeySource(vault_key)) as again:
        assert opens.calls == 0  # the same record store, a fresh view of its last commit
        assert again.meta == meta and again.meta is not first.meta  # each call gets its own copy to change
    store.close()


def test_a_kept_vault_is_read_again_once_another_process_wrote_it(tmp_path: Path) -> None:
    from kmscli.service import Kms

    path, vault_key = _vault(tmp_path)
    store = VaultStore(path, keep_opened=True)
    assert _key_ids(store, vault_key) == []
    key_id = Kms(path, FixedKeySource(vault_key)).CreateKey()["KeyMetadata"]["KeyId"]
    assert _key_ids(store, vault_key) == [key_id]
    store.close()


def test_a_kept_vault_is_opened_again_once_another_file_took_its_place(tmp_path: Path) -> None:
    from kmscli.service import Kms

    path, vault_key = _vault(tmp_path)
    store = VaultStore(path, keep_opened=True)
    assert _key_ids(store, vault_key) == []
    Kms(path, PassphraseKeySource(lambda: b"pw")).ChangePassphrase(b"new")
    with pytest.raises(errors.VaultCorruptException):  # the new file is sealed under a new vault key
        store.open(FixedKeySource(vault_key))
    with store.open(PassphraseKeySource(lambda: b"new")) as ov:
        assert ov.generation >= 2
    store.close()


def test_a_kept_vault_is_never_handed_to_another_key(tmp_path: Path) -> None:
    path, vault_key = _vault(tmp_path)
    store = VaultStore(path, keep_opened=True)
    store.open(FixedKeySource(vault_key)).close()
    with pytest.raises(errors.VaultCorruptException):
        store.open(FixedKeySource(bytes(32)))  # the file decides, as without the cache
    store.close()


def test_a_kept_vault_still_refuses_a_folder_made_writable_by_others(tmp_path: Path) -> None:
    path, vault_key = _vault(tmp_path)
    store = VaultStore(path, keep_opened=True)
    store.open(FixedKeySource(vault_key)).close()
    path.parent.chmod(0o777)
    try:
        with pytest.raises(errors.VaultFileError, match="writable by group or others"):
            store.open(FixedKeySource(vault_key))
    finally:
        path.parent.chmod(0o700)
        store.close()


def test_writes_of_a_process_that_keeps_the_vault_open_are_seen_by_others(tmp_path: Path) -> None:
    """POSIX locks are per process: a descriptor of the vault closed anywhere in the process that keeps
    SQLite connections open would drop their locks; another process closing the vault would then fold
    and delete the WAL under them, and their later commits would go to a deleted file."""
    import subprocess
    import sys

    from kmscli.service import Kms

    path, vault_key = _vault(tmp_path)
    store = VaultStore(path, keep_opened=True)
    served = Kms(path, FixedKeySource(vault_key), store=store)
    other = (f"import sys; from pathlib import Path; from kmscli.service import Kms; "
             f"from kmscli.vault.store import FixedKeySource; "
             f"k = Kms(Path({str(path)!r}), FixedKeySource(bytes.fromhex({vault_key.hex()!r}))); "
             "k.CreateKey() if sys.argv[1] == 'create' else print(len(k.ListKeys()['Keys']))")
    for round_ in range(3):
        subprocess.run([sys.executable, "-c", other, "create"], check=True, timeout=120)  # writes, closes
        assert len(served.ListKeys()["Keys"]) == 2 * round_ + 1
        served.CreateKey()  # into the WAL the other process must still see
        seen = subprocess.run([sys.executable, "-c", other, "count"], check=True, capture_output=True, timeout=120)
        assert int(seen.stdout) == 2 * round_ + 2
    store.close()


# -- what readers of one record-store snapshot share ---------------------------------------


def _warm_store(tmp_path: Path) -> tuple[Any, bytes]:
    """A record store with 40 keys, read once through (so its snapshot is verified and kept)."""
    from kmscli.vault import records as R

    folder = tmp_path / "r"
    folder.mkdir(mode=0o700)
    vault_key = bytes(range(32))
    header = F.build_header(F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1), bytes(16), bytes(32),
                            vault_key, bytes(12), version=F.RECORDS_FORMAT_VERSION)
    store = R.RecordStore.create(folder / "vault.kms", header.raw, vault_key, {"vault_id": "v"})
    with store.writer(vault_key) as tx:
        for i in range(40):
            tx.put("key", f"k{i}", {"KeyId": f"k{i}", "n": i})
    with store.reader(vault_key) as view:
        assert view.get("key", "k1") == {"KeyId": "k1", "n": 1}
    return store, vault_key


def test_readers_of_an_unchanged_snapshot_verify_nothing_again(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from kmscli.vault import records as R

    store, vault_key = _warm_store(tmp_path)
    opened = Counting(monkeypatch, R.RecordKeys, "open_meta")
    leaves = Counting(monkeypatch, R.RecordKeys, "leaf_digest")
    schemas = Counting(monkeypatch, R, "_check_schema")
    for _ in range(5):
        with store.reader(vault_key) as view:
            assert view.get("key", "k1") == {"KeyId": "k1", "n": 1}
            view.meta["generation"] = -1  # each reader's meta is its own
    assert (opened.calls, leaves.calls, schemas.calls) == (0, 0, 0)
    with store.reader(vault_key) as view:
        assert view.generation == 1
    store.close()


def test_a_write_by_anyone_is_a_new_snapshot_verified_from_the_start(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from kmscli.vault import records as R

    store, vault_key = _warm_store(tmp_path)
    other = R.RecordStore.open(store.path)  # another process, as far as SQLite and the cache go
    with other.writer(vault_key) as tx:
        tx.put("key", "k1", {"KeyId": "k1", "n": 100})
    other.close()
    opened = Counting(monkeypatch, R.RecordKeys, "open_meta")
    with store.reader(vault_key) as view:
        assert view.get("key", "k1") == {"KeyId": "k1", "n": 100}
        assert view.generation == 2
    assert opened.calls == 1
    store.close()


def test_a_warm_snapshot_still_refuses_metadata_rolled_back_in_place(tmp_path: Path) -> None:
    import sqlite3

    store, vault_key = _warm_store(tmp_path)
    with sqlite3.connect(store.path, isolation_level=None) as db:
        old_meta = db.execute("SELECT sealed FROM meta").fetchone()[0]
    with store.writer(vault_key) as tx:
        tx.put("key", "k1", {"KeyId": "k1", "n": 100})
    with store.reader(vault_key) as view:
        assert view.get("key", "k1") == {"KeyId": "k1", "n": 100}  # the new snapshot, verified and kept
    with sqlite3.connect(store.path, isolation_level=None) as db:
        db.execute("UPDATE meta SET sealed = ?", (old_meta,))
    with pytest.raises(errors.VaultCorruptException, match="rolled back"), store.reader(vault_key) as view:
        view.get("key", "k1")
    store.close()


def test_a_warm_snapshot_serves_only_what_it_verified(tmp_path: Path) -> None:
    """A row altered in place under an unchanged root: a bucket already verified keeps its verified
    rows (the root vouches for them, not for the file's new bytes); any other is read and refused."""
    import sqlite3

    from kmscli.vault import records as R

    store, vault_key = _warm_store(tmp_path)
    keys = R.RecordKeys(vault_key)
    with sqlite3.connect(store.path, isolation_level=None) as db:
        for name in ("k1", "k2"):
            key = keys.row_key("key", name)
            (value,) = db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
            db.execute("UPDATE records SET value = ? WHERE key = ?", (value[:-1] + bytes([value[-1] ^ 1]), key))
    with store.reader(vault_key) as view:
        assert view.get("key", "k1") == {"KeyId": "k1", "n": 1}
        with pytest.raises(errors.VaultCorruptException, match="integrity check"):
            view.get("key", "k2")
    store.close()


def test_closing_a_kept_store_of_a_replaced_vault_leaves_the_new_vaults_wal_alone(tmp_path: Path) -> None:
    """SQLite deletes a database's WAL by name when its last connection closes. A server still holding
    the vault that passwd (or a restore) replaced must not delete the new vault's WAL, which holds
    commits not yet folded into the new file: SQLite skips the checkpoint and the delete for a file
    that has moved (SQLITE_FCNTL_HAS_MOVED), and this shows it holds through kmscli's stores."""
    from kmscli.service import Kms

    path, vault_key = _vault(tmp_path)
    old = VaultStore(path, keep_opened=True)
    assert _key_ids(old, vault_key) == []  # connections to the first file, kept
    Kms(path, PassphraseKeySource(lambda: b"pw")).ChangePassphrase(b"new")
    new = PassphraseKeySource(lambda: b"new")
    writer = VaultStore(path, keep_opened=True)  # keeps the new file open: its WAL is not folded
    key_id = Kms(path, new, store=writer).CreateKey()["KeyMetadata"]["KeyId"]
    wal = Path(str(path) + "-wal")
    assert wal.stat().st_size > 0
    old.close()  # the replaced file's last connections
    assert wal.stat().st_size > 0
    assert [k["KeyId"] for k in Kms(path, new).ListKeys()["Keys"]] == [key_id]
    writer.close()
    assert [k["KeyId"] for k in Kms(path, new).ListKeys()["Keys"]] == [key_id]
