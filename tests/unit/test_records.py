"""The record store (format 2): round trips, the documented derivations, and every tampering detected.

Tampering is done the way an attacker who can write the file would: with a
plain SQLite connection, without the vault key. No test here depends on how
fast the machine is: child processes report events on a pipe, and every
timeout is a hang guard only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli import errors
from kmscli.vault import format as F
from kmscli.vault import records as R
from tests.unit import records_worker as W

CHEAP = F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1)
VAULT_KEY = bytes(range(32))
KEK = bytes(range(100, 132))
SALT = bytes(range(16))
NONCE = bytes(range(50, 62))
HEADER = F.build_header(CHEAP, SALT, KEK, VAULT_KEY, NONCE, version=2)
REPO = Path(__file__).resolve().parents[2]
#: A guard against hangs only: no test passes or fails by how fast it ran.
HANG_GUARD_S = 300


def new_store(folder: Path, meta: dict[str, Any] | None = None) -> R.RecordStore:
    folder.mkdir(mode=0o700, exist_ok=True)
    return R.RecordStore.create(folder / "vault.kms", HEADER.raw, VAULT_KEY, meta or {"vault_id": "v1"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[R.RecordStore]:
    s = new_store(tmp_path / "v")
    yield s
    s.close()


@pytest.fixture
def filled(store: R.RecordStore) -> R.RecordStore:
    with store.writer(VAULT_KEY) as tx:
        for i in range(30):
            tx.put("key", f"k{i}", {"KeyId": f"k{i}", "Description": f"key number {i}"})
            tx.put("alias", f"alias/a{i}", {"TargetKeyId": f"k{i}"})
    return store


def attacker(store: R.RecordStore) -> sqlite3.Connection:
    """A plain connection to the file: what anyone who can write it can do."""
    return sqlite3.connect(store.path, isolation_level=None)


KEYS = R.RecordKeys(VAULT_KEY)


def rid(kind: str, name: str) -> bytes:
    return KEYS.record_id(kind, name)


def rkey(kind: str, name: str) -> bytes:
    """The row's primary key: kind tag, then record id."""
    return KEYS.row_key(kind, name)


def get(store: R.RecordStore, kind: str, name: str) -> dict[str, Any] | None:
    with store.reader(VAULT_KEY) as view:
        return view.get(kind, name)


def scan_all(view: R.RecordView, kind: str, page: int = 7) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    after = None
    while True:
        got = view.scan(kind, after, page)
        out += got
        if len(got) < page:
            return out
        after = got[-1][0]


def everything(store: R.RecordStore) -> dict[tuple[str, str], dict[str, Any]]:
    with store.reader(VAULT_KEY) as view:
        found = {(kind, name): value for kind in view.kinds() for name, value in scan_all(view, kind)}
        for kind in view.kinds():
            assert view.count(kind) == sum(1 for k, _ in found if k == kind)
        for (kind, name), value in found.items():
            assert view.get(kind, name) == value
        return found


# -- round trips ------------------------------------------------------------------
def test_round_trip_and_reopen(filled: R.RecordStore) -> None:
    with filled.reader(VAULT_KEY) as view:
        assert view.get("key", "k3") == {"KeyId": "k3", "Description": "key number 3"}
        assert view.get("alias", "alias/a29") == {"TargetKeyId": "k29"}
        assert view.get("key", "nope") is None
        assert view.get("alias", "k3") is None  # same name, other kind
        assert view.count("key") == 30 and view.count("alias") == 30 and view.count("credential") == 0
        assert view.kinds() == ["alias", "key"]
        assert view.meta == {"vault_id": "v1", "generation": 1}
    path = filled.path
    filled.close()
    again = R.RecordStore.open(path)
    try:
        assert len(everything(again)) == 60
    finally:
        again.close()


def test_scan_pages_in_a_stable_order(filled: R.RecordStore) -> None:
    with filled.reader(VAULT_KEY) as view:
        whole = view.scan("key", limit=100)
        assert sorted(n for n, _ in whole) == sorted(f"k{i}" for i in range(30))
        assert [n for n, _ in whole] == sorted((n for n, _ in whole), key=lambda n: rid("key", n))
        for page in (1, 4, 7, 29, 30):
            assert scan_all(view, "key", page) == whole
        # A marker naming a record deleted since still pages on from where it was.
        gone = whole[10][0]
    with filled.writer(VAULT_KEY) as tx:
        assert tx.delete("key", gone)
    with filled.reader(VAULT_KEY) as view:
        assert view.scan("key", gone, 100) == whole[11:]
        assert view.scan("nothing", None, 5) == []


def test_unicode_names_and_values(store: R.RecordStore) -> None:
    with store.writer(VAULT_KEY) as tx:
        tx.put("alias", "alias/ключ-🔑", {"d": "é\u0000x"})
    assert get(store, "alias", "alias/ключ-🔑") == {"d": "é\u0000x"}


def test_writes_see_themselves_and_generation_grows(store: R.RecordStore) -> None:
    with store.writer(VAULT_KEY) as tx:
        assert tx.generation == 0
        tx.put("key", "a", {"v": 1})
        assert tx.get("key", "a") == {"v": 1}
        tx.put("key", "a", {"v": 2})
        assert tx.get("key", "a") == {"v": 2} and tx.count("key") == 1
        assert tx.scan("key") == [("a", {"v": 2})]
        assert tx.delete("key", "a") and not tx.delete("key", "a")
        assert tx.get("key", "a") is None and tx.count("key") == 0
        tx.put("key", "b", {})
        tx.meta["audit_head"] = {"seq": 4}
    assert tx.generation == 1
    with store.reader(VAULT_KEY) as view:
        assert view.generation == 1 and view.meta["audit_head"] == {"seq": 4}
        assert view.scan("key") == [("b", {})]


def test_an_exception_rolls_back(filled: R.RecordStore) -> None:
    with pytest.raises(RuntimeError), filled.writer(VAULT_KEY) as tx:
        tx.put("key", "k1", {"changed": True})
        tx.delete("key", "k2")
        tx.meta["x"] = 1
        raise RuntimeError("boom")
    with filled.reader(VAULT_KEY) as view:
        assert view.generation == 1 and "x" not in view.meta
        assert view.get("key", "k1") == {"KeyId": "k1", "Description": "key number 1"}
        assert view.get("key", "k2") is not None


def test_a_transaction_that_changes_nothing_commits_nothing(filled: R.RecordStore) -> None:
    with filled.writer(VAULT_KEY) as tx:
        tx.get("key", "k1")
        assert not tx.delete("key", "missing")
    assert not tx.committed
    with filled.reader(VAULT_KEY) as view:
        assert view.generation == 1


def test_a_snapshot_does_not_move(filled: R.RecordStore) -> None:
    view = filled.reader(VAULT_KEY)
    try:
        with filled.writer(VAULT_KEY) as tx:
            tx.put("key", "k1", {"new": True})
            tx.delete("key", "k2")
        assert view.get("key", "k1") == {"KeyId": "k1", "Description": "key number 1"}
        assert view.get("key", "k2") is not None and view.generation == 1
    finally:
        view.close()
    with pytest.raises(errors.KMSInternalException):
        view.get("key", "k1")
    assert get(filled, "key", "k1") == {"new": True}


def test_limits_and_misuse(store: R.RecordStore) -> None:
    with store.writer(VAULT_KEY) as tx:
        with pytest.raises(errors.LimitExceededException):
            tx.put("key", "big", {"x": "a" * R.MAX_VALUE_BYTES})
        with pytest.raises(ValueError):
            tx.put("Key!", "x", {})
        with pytest.raises(errors.ValidationException):
            tx.put("key", "", {})
        with pytest.raises(ValueError):
            tx.scan("key", limit=0)


def test_a_failed_change_poisons_the_transaction(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("DELETE FROM records WHERE key = ?", (rkey("key", "k4"),))
    with pytest.raises(errors.KMSInternalException), filled.writer(VAULT_KEY) as tx:
        with pytest.raises(errors.VaultCorruptException):
            tx.put("key", "k4", {"papering": "over"})
        tx.put("key", "k5", {"fine": True})  # the caller swallowed the error: the commit still refuses
    assert get(filled, "key", "k5") == {"KeyId": "k5", "Description": "key number 5"}


def test_create_never_replaces_and_makes_private_files(store: R.RecordStore) -> None:
    with store.writer(VAULT_KEY) as tx:
        tx.put("key", "x", {})
    for side in ("", "-wal", "-shm", ".lock"):
        assert store.path.with_name(store.path.name + side).stat().st_mode & 0o777 == 0o600, side
    with pytest.raises(errors.AlreadyExistsException):
        R.RecordStore.create(store.path, HEADER.raw, VAULT_KEY, {})
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(errors.VaultCorruptException):  # a version-1 header is not a record store's
        R.RecordStore.create(store.path.with_name("other.kms"), F.build_header(
            CHEAP, SALT, KEK, VAULT_KEY, NONCE).raw, VAULT_KEY, {})


# -- the documented derivations (docs/vault-v2.md), computed independently ---------------------
def hkdf(ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_known_answers() -> None:
    assert KEYS.index == hkdf(VAULT_KEY, b"kmscli vault index v2")
    assert KEYS.record == hkdf(VAULT_KEY, b"kmscli vault record v2")
    assert KEYS.tree == hkdf(VAULT_KEY, b"kmscli vault tree v2")
    assert KEYS.meta == hkdf(VAULT_KEY, b"kmscli vault meta v2")
    assert len({KEYS.index, KEYS.record, KEYS.tree, KEYS.meta}) == 4
    # Frozen values: a change here is a change of the file format.
    assert KEYS.index.hex() == "854e01e804d3d840fec16fd4b9633193bef6dcc1637264f36df25d64d5506bb0"
    assert rid("key", "k1").hex() == "7c8fa9261acc082d8a80e556d1d3d2c6"
    assert KEYS.kind_tag("key").hex() == "a3d2dc8e660d9118"
    assert rid("key", "k1") == hmac.new(KEYS.index, b"record\x00\x03keyk1", hashlib.sha256).digest()[:16]
    assert KEYS.kind_tag("alias") == hmac.new(KEYS.index, b"kind\x00alias", hashlib.sha256).digest()[:8]
    assert rkey("key", "k1") == KEYS.kind_tag("key") + rid("key", "k1")
    row_a = R._Row(b"N" * 16, b"sealed-a")
    row_b = R._Row(None, b"b")
    key_a, key_b = b"T" * 8 + b"\x01\x02" + b"a" * 14, b"U" * 8 + b"\x01\x02" + b"b" * 14
    assert R.bucket_of(key_a) == R.bucket_of(key_b) == 0x0102
    leaf = KEYS.leaf_digest(0x0102, {key_b: row_b, key_a: row_a})
    expect = hmac.new(KEYS.tree, b"leaf\x00\x01\x02"
                      + key_a + b"\x10" + b"N" * 16 + struct.pack(">I", 8) + b"sealed-a"
                      + key_b + b"\x00" + struct.pack(">I", 1) + b"b",
                      hashlib.sha256).digest()[:16]
    assert leaf == expect
    assert KEYS.leaf_digest(5, {}) == bytes(16)
    blob = bytes(16) * 3 + b"\x07" * 16 + bytes(16) * 252
    assert KEYS.mid_digest(9, blob) == hmac.new(KEYS.tree, b"mid\x00\x09" + blob, hashlib.sha256).digest()[:16]
    assert KEYS.mid_digest(9, bytes(4096)) == bytes(16)


def test_an_independent_reader_following_the_docs(filled: R.RecordStore) -> None:
    """Read the file with sqlite3 and AES-GCM alone, as docs/vault-v2.md describes it, and verify everything."""
    db = sqlite3.connect(f"file:{filled.path}?mode=ro", uri=True)
    head = filled.path.read_bytes()[:100]
    assert head[:16] == b"SQLite format 3\x00" and head[68:72] == b"KMSV" and head[60:64] == b"\x00\x00\x00\x02"
    ((raw,),) = db.execute("SELECT raw FROM header WHERE id = 1")
    assert raw == HEADER.raw and raw[:8] == b"KMSVAULT" and raw[8:10] == b"\x00\x02"
    ((sealed,),) = db.execute("SELECT sealed FROM meta WHERE id = 1")
    plain = AESGCM(hkdf(VAULT_KEY, b"kmscli vault meta v2")).decrypt(
        sealed[:12], sealed[12:], b"kmscli vault meta v2\x00" + raw)
    top, body = plain[:4096], json.loads(plain[4096:])
    assert body["format"] == 2 and body["meta"] == {"vault_id": "v1", "generation": 1}
    assert {k: v[0] for k, v in body["kinds"].items()} == {"key": 30, "alias": 30}
    tree = hkdf(VAULT_KEY, b"kmscli vault tree v2")
    rec_key = AESGCM(hkdf(VAULT_KEY, b"kmscli vault record v2"))
    mids = dict(db.execute("SELECT mid, digests FROM nodes"))
    for m in range(256):
        if top[m * 16 : m * 16 + 16] == bytes(16):
            assert m not in mids
        else:
            assert hmac.new(tree, b"mid\x00" + bytes([m]) + mids[m], hashlib.sha256).digest()[:16] == top[m * 16:][:16]
    buckets: dict[int, list[tuple[bytes, bytes | None, bytes]]] = {}
    for row in db.execute("SELECT key, next, value FROM records ORDER BY key"):
        buckets.setdefault(row[0][8] * 256 + row[0][9], []).append(row)  # id = key[8:], bucket = id[:2]
    for b, rows in buckets.items():
        msg = b"leaf\x00" + b.to_bytes(2, "big") + b"".join(
            k + bytes([len(n or b"")]) + (n or b"") + len(v).to_bytes(4, "big") + v for k, n, v in rows)
        assert hmac.new(tree, msg, hashlib.sha256).digest()[:16] == mids[b >> 8][(b & 255) * 16:][:16]
    names = {}
    for k, _n, v in db.execute("SELECT key, next, value FROM records"):
        name, value = json.loads(rec_key.decrypt(v[:12], v[12:], b"kmscli vault record v2\x00" + k))
        names[name] = value
    assert names["alias/a7"] == {"TargetKeyId": "k7"} and len(names) == 60
    # Each kind's rows form one chain in id order, from the head kept in the sealed metadata.
    for kind, (count, head) in body["kinds"].items():
        tag = KEYS.kind_tag(kind)
        chain, nxt = [], bytes.fromhex(head)
        while nxt is not None:
            chain.append(tag + nxt)
            ((nxt,),) = db.execute("SELECT next FROM records WHERE key = ?", (tag + nxt,))
        assert chain == [r[0] for r in db.execute(
            "SELECT key FROM records WHERE substr(key, 1, 8) = ? ORDER BY key", (tag,))] and len(chain) == count
    db.close()


def test_nothing_readable_without_the_key(filled: R.RecordStore) -> None:
    filled.checkpoint()
    data = filled.path.read_bytes()
    for secret in (b"alias/a1", b"key number", b"KeyId", b"TargetKeyId", b"vault_id", b"generation", b"alias"):
        assert secret not in data


# -- tampering: each must be caught, as corruption (exit 8), naming the kind -----------------
def bucket_mates(kind: str, count: int) -> list[str]:
    """``count`` names of ``kind`` whose ids share one bucket."""
    seen: dict[int, list[str]] = {}
    i = 0
    while True:
        name = f"n{i}"
        group = seen.setdefault(R.bucket_of(rkey(kind, name)), [])
        group.append(name)
        if len(group) == count:
            return group
        i += 1


def corrupt(match: str | None = None) -> Any:
    return pytest.raises(errors.VaultCorruptException, match=match)


def test_an_altered_ciphertext_byte(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        (value,) = db.execute("SELECT value FROM records WHERE key = ?", (rkey("key", "k4"),)).fetchone()
        db.execute("UPDATE records SET value = ? WHERE key = ?",
                   (value[:30] + bytes([value[30] ^ 1]) + value[31:], rkey("key", "k4")))
    with corrupt("reading a 'key' record"):
        get(filled, "key", "k4")
    with corrupt(), filled.reader(VAULT_KEY) as view:
        scan_all(view, "key")
    assert get(filled, "key", "k5") is not None  # other buckets still read
    with corrupt(), filled.writer(VAULT_KEY) as tx:
        tx.put("key", "k4", {"overwrite": True})  # a writer does not paper over it either


def test_a_deleted_row(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("DELETE FROM records WHERE key = ?", (rkey("alias", "alias/a3"),))
    with corrupt("'alias'"):
        get(filled, "alias", "alias/a3")  # not "no such alias"
    with corrupt("'alias'"), filled.reader(VAULT_KEY) as view:
        scan_all(view, "alias", 100)


def test_a_deleted_row_is_missed_by_no_listing(filled: R.RecordStore) -> None:
    """A page that never reads the deleted row's bucket still notices the gap, by the chain."""
    with filled.reader(VAULT_KEY) as view:
        order = [n for n, _ in view.scan("key", limit=100)]
    victim = order[12]
    with attacker(filled) as db:
        db.execute("DELETE FROM records WHERE key = ?", (rkey("key", victim),))
    with corrupt("list of 'key' records is broken"), filled.reader(VAULT_KEY) as view:
        view.scan("key", order[11], 5)
    with corrupt(), filled.reader(VAULT_KEY) as view:
        view.scan("key", order[5], 10)


def test_an_inserted_copy_of_a_row(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        row = db.execute("SELECT next, value FROM records WHERE key = ?", (rkey("key", "k1"),)).fetchone()
        # A copy under another id in the same bucket, and one in a bucket of its own.
        same_bucket = rkey("key", "k1")[:10] + b"\xff" * 14
        db.execute("INSERT INTO records VALUES (?, ?, ?)", (same_bucket, *row))
        db.execute("INSERT INTO records VALUES (?, ?, ?)", (KEYS.kind_tag("key") + b"\xfe\xfe" + bytes(14), *row))
    with corrupt("'key'"):
        get(filled, "key", "k1")
    with corrupt("'key'"), filled.reader(VAULT_KEY) as view:
        scan_all(view, "key", 100)


def test_two_rows_swapped(filled: R.RecordStore) -> None:
    a, b = rkey("key", "k1"), rkey("key", "k2")
    with attacker(filled) as db:
        va = db.execute("SELECT value FROM records WHERE key = ?", (a,)).fetchone()[0]
        vb = db.execute("SELECT value FROM records WHERE key = ?", (b,)).fetchone()[0]
        db.execute("UPDATE records SET value = ? WHERE key = ?", (vb, a))
        db.execute("UPDATE records SET value = ? WHERE key = ?", (va, b))
    with corrupt():
        get(filled, "key", "k1")
    with corrupt():
        get(filled, "key", "k2")


def test_an_old_row_value_restored_after_an_update(filled: R.RecordStore) -> None:
    """The attack a per-row AEAD cannot see: a valid older ciphertext of the same row."""
    key = rkey("key", "k6")
    with attacker(filled) as db:
        old = db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()[0]
    with filled.writer(VAULT_KEY) as tx:
        tx.put("key", "k6", {"KeyState": "PendingDeletion"})
    with attacker(filled) as db:
        db.execute("UPDATE records SET value = ? WHERE key = ?", (old, key))
    with corrupt("rolled back"):
        get(filled, "key", "k6")


def test_an_old_row_restored_after_its_deletion(filled: R.RecordStore) -> None:
    key = rkey("alias", "alias/a9")
    with attacker(filled) as db:
        old = db.execute("SELECT key, next, value FROM records WHERE key = ?", (key,)).fetchone()
    with filled.writer(VAULT_KEY) as tx:
        tx.delete("alias", "alias/a9")
    with attacker(filled) as db:
        db.execute("INSERT INTO records VALUES (?, ?, ?)", old)
    with corrupt():
        get(filled, "alias", "alias/a9")


@pytest.mark.parametrize("with_nodes", [False, True])
def test_the_metadata_rolled_back(filled: R.RecordStore, with_nodes: bool) -> None:
    """An older sealed metadata row (and, second case, the older tree nodes with it) put back."""
    with attacker(filled) as db:
        old_meta = db.execute("SELECT sealed FROM meta").fetchone()[0]
        old_nodes = db.execute("SELECT mid, digests FROM nodes").fetchall()
    with filled.writer(VAULT_KEY) as tx:
        tx.put("key", "k8", {"rotated": True})
        tx.put("key", "new", {"new": True})
    with attacker(filled) as db:
        db.execute("UPDATE meta SET sealed = ?", (old_meta,))
        if with_nodes:
            db.execute("DELETE FROM nodes")
            db.executemany("INSERT INTO nodes VALUES (?, ?)", old_nodes)
    with corrupt("rolled back"):
        get(filled, "key", "k8")
    with corrupt():
        get(filled, "key", "new")
    with filled.reader(VAULT_KEY) as view:
        assert view.generation == 1  # what the service checks against the audit log's generation


@pytest.mark.parametrize("how", ["flip", "delete", "truncate"])
def test_the_tree_nodes_altered(filled: R.RecordStore, how: str) -> None:
    m = rid("key", "k0")[0]  # the mid node: the first byte of the record id
    with attacker(filled) as db:
        (blob,) = db.execute("SELECT digests FROM nodes WHERE mid = ?", (m,)).fetchone()
        if how == "flip":
            db.execute("UPDATE nodes SET digests = ? WHERE mid = ?", (bytes([blob[0] ^ 1]) + blob[1:], m))
        elif how == "delete":
            db.execute("DELETE FROM nodes WHERE mid = ?", (m,))
        else:
            db.execute("UPDATE nodes SET digests = ? WHERE mid = ?", (blob[:100], m))
    with corrupt("tree"):
        get(filled, "key", "k0")


def test_sealed_metadata_altered_or_swapped_in_from_another_vault(filled: R.RecordStore, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir(mode=0o700)
    other_key = bytes(range(1, 33))
    other = R.RecordStore.create(tmp_path / "other" / "vault.kms", F.build_header(
        CHEAP, SALT, KEK, other_key, NONCE, version=2).raw, other_key, {"vault_id": "v1"})
    with attacker(other) as db:
        foreign = db.execute("SELECT sealed FROM meta").fetchone()[0]
    other.close()
    with attacker(filled) as db:
        (mine,) = db.execute("SELECT sealed FROM meta").fetchone()
        db.execute("UPDATE meta SET sealed = ?", (mine[:-1] + bytes([mine[-1] ^ 1]),))
    with corrupt("sealed metadata failed"):
        filled.reader(VAULT_KEY)
    with attacker(filled) as db:
        db.execute("UPDATE meta SET sealed = ?", (foreign,))
    with corrupt("sealed metadata failed"):
        filled.reader(VAULT_KEY)
    with attacker(filled) as db:
        db.execute("UPDATE meta SET sealed = ?", (mine,))
    with corrupt("sealed metadata failed"):
        filled.reader(bytes(32))  # the wrong vault key
    assert get(filled, "key", "k1") is not None


def test_a_row_relabelled_to_another_kind(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        key = rkey("key", "k3")
        db.execute("UPDATE records SET key = ? WHERE key = ?", (KEYS.kind_tag("alias") + key[8:], key))
    with corrupt():
        get(filled, "key", "k3")
    with corrupt("list of 'alias' records is broken"), filled.reader(VAULT_KEY) as view:
        scan_all(view, "alias")  # it now shows among the aliases, where no chain leads to it


def test_an_insider_with_the_tree_key_still_cannot_swap_values(filled: R.RecordStore) -> None:
    """Defence in depth: even with the tree recomputed, a value only opens under its own id and kind."""
    a, b = rkey("key", "k1"), rkey("alias", "alias/a1")
    with attacker(filled) as db:
        va = db.execute("SELECT value FROM records WHERE key = ?", (a,)).fetchone()[0]
        vb = db.execute("SELECT value FROM records WHERE key = ?", (b,)).fetchone()[0]
        db.execute("UPDATE records SET value = ? WHERE key = ?", (vb, a))
        db.execute("UPDATE records SET value = ? WHERE key = ?", (va, b))
    rebuild_tree(filled)
    with corrupt("'key' record failed to decrypt"):
        get(filled, "key", "k1")
    with corrupt("'alias' record failed to decrypt"):
        get(filled, "alias", "alias/a1")


def rebuild_tree(store: R.RecordStore) -> None:
    """Recompute every digest and re-seal the metadata: what only a holder of the vault key could do."""
    db = attacker(store)
    buckets: dict[int, dict[bytes, R._Row]] = {}
    for k, n, v in db.execute("SELECT key, next, value FROM records"):
        buckets.setdefault(R.bucket_of(k), {})[k] = R._Row(n, v)
    mids = {m: bytearray(R.MID_SIZE) for m in range(256)}
    for b, rows in buckets.items():
        mids[b >> 8][(b & 255) * 16 : (b & 255) * 16 + 16] = KEYS.leaf_digest(b, rows)
    top = bytearray(R.TOP_SIZE)
    db.execute("BEGIN")
    db.execute("DELETE FROM nodes")
    for m, blob in mids.items():
        top[m * 16 : m * 16 + 16] = KEYS.mid_digest(m, bytes(blob))
        if bytes(blob) != R.ZERO_MID:
            db.execute("INSERT INTO nodes VALUES (?, ?)", (m, bytes(blob)))
    (sealed,) = db.execute("SELECT sealed FROM meta").fetchone()
    plain = KEYS.open_meta(store.header.raw, sealed)
    db.execute("UPDATE meta SET sealed = ?", (KEYS.seal_meta(store.header.raw, bytes(top) + plain[R.TOP_SIZE:]),))
    db.execute("COMMIT")
    db.close()


# -- the schema and the file ------------------------------------------------------------------
def test_the_schema_constant_is_what_sqlite_records() -> None:
    db = sqlite3.connect(":memory:")
    for *_x, sql in R.SCHEMA:
        db.execute(sql)
    assert sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")) == sorted(R.SCHEMA)


PLANTS = {
    "trigger": "CREATE TRIGGER t1 AFTER INSERT ON records BEGIN INSERT INTO loot VALUES (new.value); END",
    "update trigger": "CREATE TRIGGER t2 BEFORE UPDATE ON meta BEGIN INSERT INTO loot VALUES (old.sealed); END",
    "view": "CREATE VIEW v AS SELECT * FROM records",
    "index": "CREATE INDEX i ON records (value)",
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_schema_object_is_refused_and_never_runs(filled: R.RecordStore, plant: str) -> None:
    with attacker(filled) as db:
        db.execute(PLANTS[plant])
    # Already open: the next transaction of either kind refuses it before touching a table.
    with corrupt("schema that is not kmscli's"), filled.writer(VAULT_KEY) as tx:
        tx.put("key", "x", {})
    with corrupt("schema"):
        filled.reader(VAULT_KEY)
    with corrupt("schema"):
        R.RecordStore.open(filled.path)


def test_a_planted_trigger_with_its_own_table_never_fires(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("CREATE TABLE loot (v BLOB)")
        db.execute(PLANTS["trigger"])
        db.execute(PLANTS["update trigger"])
    for _ in range(2):
        with corrupt("unexpected loot, t1, t2"), filled.writer(VAULT_KEY) as tx:
            tx.put("key", "x", {})
    with attacker(filled) as db:
        assert db.execute("SELECT count(*) FROM loot").fetchone() == (0,)


def test_a_table_replaced_by_a_view(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("ALTER TABLE meta RENAME TO meta_old")
        db.execute("CREATE VIEW meta AS SELECT id, sealed FROM meta_old")
    with corrupt("schema"):
        R.RecordStore.open(filled.path)


def test_an_unparsable_schema_is_corruption_not_a_traceback(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("PRAGMA writable_schema=ON")
        db.execute("INSERT INTO sqlite_master VALUES ('table', 'zz', 'zz', 0, 'CREATE GARBAGE')")
    with corrupt("damaged"):
        R.RecordStore.open(filled.path)


def test_header_row_missing_doubled_or_damaged(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("UPDATE header SET raw = ?", (HEADER.raw[:-1] + bytes([HEADER.raw[-1] ^ 1]),))
    with corrupt("checksum"):
        R.RecordStore.open(filled.path)
    with attacker(filled) as db:
        db.execute("DELETE FROM header")
    with corrupt("header row"):
        R.RecordStore.open(filled.path)


def test_garbage_empty_and_foreign_files(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    garbage = tmp_path / "garbage.kms"
    garbage.write_bytes(b"hello, this is not a vault at all " * 20)
    empty = tmp_path / "empty.kms"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.kms"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    v1 = tmp_path / "v1.kms"
    v1.write_bytes(F.seal_body(F.build_header(CHEAP, SALT, KEK, VAULT_KEY, NONCE), VAULT_KEY, {"format": 1}))
    half = tmp_path / "half.kms"
    half.write_bytes(b"SQLite format 3\x00" + bytes(84) + os.urandom(4000))
    for f in (garbage, empty, foreign, v1, half):
        f.chmod(0o600)
    with corrupt("not a kmscli vault"):
        R.RecordStore.open(garbage)
    with corrupt("truncated"):
        R.RecordStore.open(empty)
    with corrupt("SQLite database but not a kmscli vault"):
        R.RecordStore.open(foreign)
    with corrupt("format-1"):
        R.RecordStore.open(v1)
    with corrupt():
        R.RecordStore.open(half)
    with pytest.raises(errors.VaultNotFoundException):
        R.RecordStore.open(tmp_path / "missing.kms")


def test_a_garbled_page_is_corruption(filled: R.RecordStore) -> None:
    filled.checkpoint()
    path = filled.path
    filled.close()
    data = bytearray(path.read_bytes())
    for off in range(4096 + 8, len(data), 4096):  # the page headers of every page but the first
        data[off : off + 64] = os.urandom(64)
    path.write_bytes(bytes(data))
    with pytest.raises(errors.VaultFileError):
        s = R.RecordStore.open(path)
        everything(s)


def test_an_oversized_planted_blob_is_refused_not_loaded(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("UPDATE records SET value = zeroblob(?) WHERE key = ?", (R.MAX_SEALED_META + 4096,
                                                                            rkey("key", "k2")))
    with corrupt("damaged"):
        get(filled, "key", "k2")


def test_a_newer_format_version_is_refused_clearly(filled: R.RecordStore) -> None:
    with attacker(filled) as db:
        db.execute("PRAGMA user_version=3")
    filled.checkpoint()
    with pytest.raises(errors.VaultVersionException, match="version 3 is newer than this kmscli understands"):
        R.RecordStore.open(filled.path)


def test_a_newer_header_version_is_refused_clearly(filled: R.RecordStore) -> None:
    raw3 = F.build_header(CHEAP, SALT, KEK, VAULT_KEY, NONCE, version=3).raw
    with attacker(filled) as db:
        db.execute("UPDATE header SET raw = ?", (raw3,))
    with pytest.raises(errors.VaultVersionException, match="version 3 is newer than this kmscli understands \\(2\\)"):
        R.RecordStore.open(filled.path)


def test_symlinks_and_shared_files_are_refused(filled: R.RecordStore, tmp_path: Path) -> None:
    link = filled.path.with_name("link.kms")
    link.symlink_to(filled.path)
    with pytest.raises(errors.VaultFileError, match="symbolic link"):
        R.RecordStore.open(link)
    os.chmod(filled.path, 0o620)
    with pytest.raises(errors.VaultFileError, match="writable by group or others"):
        R.RecordStore.open(filled.path)
    os.chmod(filled.path, 0o600)
    target = tmp_path / "elsewhere"
    os.symlink(target, filled.path.parent / "planted.kms")
    with pytest.raises(errors.AlreadyExistsException):  # create never follows a planted link either
        R.RecordStore.create(filled.path.parent / "planted.kms", HEADER.raw, VAULT_KEY, {})
    assert not target.exists()
    # Nor does it touch the WAL of a vault that is there.
    with filled.writer(VAULT_KEY) as tx:
        tx.put("key", "in-the-wal", {})
    with pytest.raises(errors.AlreadyExistsException):
        R.RecordStore.create(filled.path, HEADER.raw, VAULT_KEY, {})
    assert get(filled, "key", "in-the-wal") == {}


def test_whole_file_rollback_shows_as_an_older_generation(filled: R.RecordStore, tmp_path: Path) -> None:
    """Not detectable locally: the service anchors the generation in the audit log."""
    filled.checkpoint()
    old = filled.path.read_bytes()
    with filled.writer(VAULT_KEY) as tx:
        tx.put("key", "k1", {"new": True})
    filled.checkpoint()
    path = filled.path
    filled.close()
    path.write_bytes(old)
    again = R.RecordStore.open(path)
    with again.reader(VAULT_KEY) as view:
        assert view.generation == 1 and view.get("key", "k1") != {"new": True}
    again.close()


# -- a model-based property test ----------------------------------------------------------------
def _names() -> list[str]:
    """Names that include several sharing one bucket, so buckets of many rows and the chain get exercised."""
    return ["a", "b", "c", "alias/x", *bucket_mates("key", 3), *bucket_mates("alias", 2)]


NAMES = _names()
OPS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(["key", "alias"]), st.sampled_from(NAMES),
              st.integers(0, 3)),
    st.tuples(st.just("del"), st.sampled_from(["key", "alias"]), st.sampled_from(NAMES), st.just(0)),
)
TXS = st.lists(st.tuples(st.lists(OPS, max_size=12), st.booleans(), st.integers(1, 5)), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(txs=TXS)
def test_matches_a_dict_model(tmp_path_factory: pytest.TempPathFactory,
                              txs: list[tuple[list[tuple[str, str, str, int]], bool, int]]) -> None:
    folder = tmp_path_factory.mktemp("prop")
    folder.chmod(0o700)
    store = R.RecordStore.create(folder / "vault.kms", HEADER.raw, VAULT_KEY, {})
    model: dict[tuple[str, str], dict[str, Any]] = {}
    generation = 0
    try:
        for ops, commit, page in txs:
            pending = dict(model)

            class Abort(Exception):
                pass

            try:
                with store.writer(VAULT_KEY) as tx:
                    for op, kind, name, n in ops:
                        if op == "put":
                            value = {"n": n, "name": name}
                            tx.put(kind, name, value)
                            pending[(kind, name)] = value
                        else:
                            assert tx.delete(kind, name) == ((kind, name) in pending)
                            pending.pop((kind, name), None)
                        assert tx.get(kind, name) == pending.get((kind, name))
                    for kind in ("key", "alias"):
                        assert dict(scan_all(tx, kind, page)) == {n: v for (k, n), v in pending.items() if k == kind}
                    if not commit:
                        raise Abort
            except Abort:
                pass
            else:
                if tx.committed:
                    generation += 1
                model = pending
            assert everything(store) == model
            with store.reader(VAULT_KEY) as view:
                assert view.generation == generation
        path = store.path
        store.close()
        store = R.RecordStore.open(path)
        assert everything(store) == model
    finally:
        store.close()


# -- real processes: SIGKILL and sixteen writers -------------------------------------------------
def child(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RECORDS_TEST_KEY=VAULT_KEY.hex(), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "tests.unit.records_worker", *args], cwd=REPO, env=env,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_during_a_stream_of_writes_leaves_old_or_new(tmp_path: Path) -> None:
    store = new_store(tmp_path / "v")
    path = store.path
    store.close()
    acknowledged = 0
    for round_, acks in enumerate((1, 9, 3, 25, 6, 14)):
        proc = child("stream", str(path))
        assert proc.stdout is not None
        seen = 0
        while seen < acks:
            line = proc.stdout.readline()
            assert line.startswith(b"ack "), (line, proc.stderr.read() if proc.stderr else b"")
            acknowledged = int(line.split()[1])
            seen += 1
        # Kill at once, or after letting it run into its next transactions a little.
        for _ in range(round_ % 3):
            proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
        assert proc.returncode == -signal.SIGKILL
        again = R.RecordStore.open(path)
        try:
            with again.reader(VAULT_KEY) as view:
                generation = view.generation
            assert generation >= acknowledged  # nothing acknowledged is lost
            assert everything(again) == W.model_at(generation)  # and what is there is exactly one state
        finally:
            again.close()
    assert acknowledged >= sum((1, 9, 3, 25, 6, 14))


def test_sixteen_processes_lose_no_write(tmp_path: Path) -> None:
    store = new_store(tmp_path / "v")
    n = 12
    procs = [child("counter", str(store.path), str(w), str(n)) for w in range(16)]
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [o[1] for o in outs]
    with store.reader(VAULT_KEY) as view:
        assert view.get("counter", "shared") == {"n": 16 * n}
        assert view.generation == 16 * n and view.count("key") == 16 * n
    assert set(everything(store)) == {("counter", "shared")} | {("key", f"w{w}-{j}") for w in range(16)
                                                                   for j in range(n)}
    store.close()


def test_without_the_lock_sqlite_alone_still_loses_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "v")
    procs = [child("counter", str(store.path), str(w), "5", "nolock") for w in range(6)]
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [o[1] for o in outs]
    assert get(store, "counter", "shared") == {"n": 30}
    store.close()


def test_readers_do_not_wait_for_a_writer(filled: R.RecordStore) -> None:
    proc = child("hold", str(filled.path), stdin=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == b"holding\n"
        # The child holds an open write transaction (and the write lock) until we answer.
        with filled.reader(VAULT_KEY) as view:
            assert view.get("key", "held") is None and view.get("key", "k1") is not None
        again = R.RecordStore.open(filled.path)
        assert again.reader(VAULT_KEY).count("key") == 30
        again.close()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"committed\n"
    finally:
        proc.kill()
        proc.wait(timeout=HANG_GUARD_S)
    assert get(filled, "key", "held") == {"held": True}


def test_sigkill_inside_an_open_transaction_leaves_the_old_state(filled: R.RecordStore) -> None:
    proc = child("hold", str(filled.path), stdin=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"holding\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD_S)
    before = everything(filled)
    assert ("key", "held") not in before and len(before) == 60
    with filled.writer(VAULT_KEY) as tx:  # the lock died with it; writing goes on
        tx.put("key", "after", {})
    assert get(filled, "key", "after") == {}
