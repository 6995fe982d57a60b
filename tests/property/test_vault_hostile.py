"""A vault file from anyone: only the documented errors, bounded memory, Argon2 never above its caps.

Format 1 (one sealed body) first, then format 2 (sealed records in SQLite):
for a format-2 file, bytes of the file and rows of its tables are changed at
random (values, links, nodes, metadata, header, schema, rows rolled back to an
older version); every outcome of a real service call is a clean exit 8 or the
correct answer, never a traceback.

The header is the attack surface of a format-1 vault file: anyone who can write the
file (but not unlock it) chooses every byte, and can recompute the unkeyed
header checksum. Whatever they write, opening it raises ``VaultFileError``
(exit 8) or, for a header that is well formed but was not made with this
passphrase, ``IncorrectPassphraseException`` (exit 5); Argon2 runs only with
parameters inside the caps of docs/vault.md; memory stays bounded by the
file-size cap. Here Argon2 is replaced by a stand-in that checks its
parameters (a cheap real run is kept for the files made with the right
passphrase).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli import errors
from kmscli.crypto import primitives as P
from kmscli.vault import format as F
from kmscli.vault.store import PassphraseKeySource, VaultStore

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CHEAP = F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1)
PASSPHRASE = b"pw"
VAULT_KEY = bytes(range(200, 232))
BODY = {"format": 1, "vault_id": "00" * 16, "account": "123456789012", "created": "2026-01-01T00:00:00Z",
        "generation": 1, "audit_head": None, "keys": {}, "aliases": {}}
DOCUMENTED = (errors.VaultFileError, errors.IncorrectPassphraseException)
_REAL_ARGON2 = P.argon2id
ARGON2_CALLS: list[tuple[int, int, int]] = []


def _checked_argon2(passphrase: bytes, salt: bytes, memory_kib: int, time_cost: int, parallelism: int) -> bytes:
    """Argon2 as kmscli must call it: parameters inside the caps, whatever the file said."""
    assert F.MIN_MEMORY_KIB <= memory_kib <= F.MAX_MEMORY_KIB, memory_kib
    assert F.MIN_TIME <= time_cost <= F.MAX_TIME, time_cost
    assert F.MIN_PARALLELISM <= parallelism <= F.MAX_PARALLELISM, parallelism
    assert len(salt) == F.SALT_SIZE
    ARGON2_CALLS.append((memory_kib, time_cost, parallelism))
    if (memory_kib, time_cost, parallelism) == (CHEAP.memory_kib, CHEAP.time_cost, CHEAP.parallelism):
        return _REAL_ARGON2(passphrase, salt, memory_kib, time_cost, parallelism)
    return hashlib.sha256(b"stand-in kek" + passphrase + salt).digest()  # never run gigabytes for a hostile file


@pytest.fixture(autouse=True)
def argon2_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "argon2id", _checked_argon2)

    def low_level(**kwargs):  # nothing may reach the library but through the checked primitive
        raise AssertionError(f"argon2 called directly with {kwargs}")

    import argon2.low_level

    real = argon2.low_level.hash_secret_raw

    def guarded(*args, **kwargs):
        import inspect

        if not any(f.function == "_checked_argon2" for f in inspect.stack()[1:6]):
            low_level(**kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(argon2.low_level, "hash_secret_raw", guarded)


def make(body: dict | None = None, kdf: F.KdfParams = CHEAP, salt: bytes = bytes(range(16))) -> bytes:
    kek = _REAL_ARGON2(PASSPHRASE, salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism) if kdf == CHEAP \
        else hashlib.sha256(b"stand-in kek" + PASSPHRASE + salt).digest()
    header = F.build_header(kdf, salt, kek, VAULT_KEY, bytes(range(100, 112)))
    return F.seal_body(header, VAULT_KEY, body or BODY, nonce=bytes(12))


GOOD = make()


def open_file(folder: Path, data: bytes) -> dict | None:
    """Open ``data`` as a vault file; None when refused in a documented way."""
    path = folder / "vault.kms"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    try:
        # migrate=False: the format-1 reader itself (the migration reads through it too).
        with VaultStore(path, migrate=False).open(PassphraseKeySource(lambda: PASSPHRASE)) as ov:
            return ov.body  # type: ignore[attr-defined, no-any-return]
    except DOCUMENTED as e:
        assert str(e) and "\n" not in str(e)
        return None


def with_checksum(header_fields: bytes, rest: bytes) -> bytes:
    """Bytes 0..99 as given, a correct header checksum, then ``rest``: what an attacker can always make."""
    return header_fields + hashlib.sha256(header_fields).digest() + rest


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes(tmp_path: Path, blob: bytes) -> None:
    for data in (blob, F.MAGIC + blob, F.MAGIC + b"\x00\x01" + blob):
        assert open_file(tmp_path, data) is None


@SETTINGS
@given(
    version=st.integers(0, 0xFFFF) | st.just(1),
    kdf_id=st.integers(0, 255) | st.just(1),
    m=st.integers(0, 2**32 - 1) | st.sampled_from([F.MIN_MEMORY_KIB - 1, F.MAX_MEMORY_KIB, F.MAX_MEMORY_KIB + 1]),
    t=st.integers(0, 2**32 - 1) | st.integers(0, 20),
    p=st.integers(0, 2**32 - 1) | st.integers(0, 20),
    salt=st.binary(min_size=16, max_size=16),
    wrapped=st.binary(min_size=60, max_size=60),
    rest=st.binary(max_size=200),
)
def test_crafted_headers_with_a_valid_checksum(tmp_path: Path, version: int, kdf_id: int, m: int, t: int, p: int,
                                               salt: bytes, wrapped: bytes, rest: bytes) -> None:
    fields = struct.pack(">8sHBIII16s", F.MAGIC, version, kdf_id, m, t, p, salt) + wrapped
    ARGON2_CALLS.clear()
    try:
        assert open_file(tmp_path, with_checksum(fields, rest)) is None
    finally:
        in_bounds = F.KdfParams(m, t, p).in_bounds()
        assert ARGON2_CALLS in ([], [(m, t, p)]) and (in_bounds or not ARGON2_CALLS), (m, t, p, ARGON2_CALLS)


@SETTINGS
@given(st.data())
def test_any_change_to_a_real_vault(tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(GOOD)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice", "rechecksum"]))
    pos = data.draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del blob[pos:]
    elif kind == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
    else:  # change the header, then fix the checksum as an attacker would
        at = data.draw(st.integers(0, 98))
        blob[at] ^= data.draw(st.integers(1, 255))
        blob[99:131] = hashlib.sha256(bytes(blob[:99])).digest()
    assert open_file(tmp_path, bytes(blob)) is None


def test_the_untouched_vault_opens(tmp_path: Path) -> None:
    assert open_file(tmp_path, GOOD) == BODY


@pytest.mark.parametrize("body", [[], "x", 1, None, {}, {"format": 2}, {"format": "1"}])
def test_an_authenticated_body_of_the_wrong_shape(tmp_path: Path, body: object) -> None:
    header = F.parse_header(GOOD)
    data = header.raw + bytes(12) + P.seal(F.body_key(VAULT_KEY), bytes(12),
                                           __import__("json").dumps(body).encode(), header.raw)
    assert open_file(tmp_path, data) is None


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "vault.kms"
    with open(path, "wb") as f:
        f.write(GOOD[: F.HEADER_SIZE])
        f.truncate(1 << 30)  # sparse: a gigabyte on paper, nothing on disk
    os.chmod(path, 0o600)

    def open_it() -> None:
        with pytest.raises(errors.VaultCorruptException, match="larger than kmscli allows"):
            VaultStore(path, migrate=False).open(PassphraseKeySource(lambda: PASSPHRASE))

    assert _peak(open_it) < 1 << 20


@pytest.mark.parametrize("size", [F.MIN_FILE_SIZE, 1 << 16, 1 << 20])
def test_memory_while_refusing_a_hostile_file_is_bounded_by_its_size(tmp_path: Path, size: int) -> None:
    """A header at the caps (1 GiB, the most passes allowed) with a body of junk: memory ~ file size."""
    t = F.MAX_WORK_MIB_PASSES // (F.MAX_MEMORY_KIB // 1024)
    fields = struct.pack(">8sHBIII16s", F.MAGIC, 1, 1, F.MAX_MEMORY_KIB, t, F.MAX_PARALLELISM, bytes(16))
    data = with_checksum(fields + bytes(60), os.urandom(size - F.HEADER_SIZE))
    ARGON2_CALLS.clear()
    assert _peak(lambda: open_file(tmp_path, data)) < 3 * size + (2 << 20)  # reads in 1 MiB blocks
    caps = (F.MAX_MEMORY_KIB, t, F.MAX_PARALLELISM)
    calls = list(ARGON2_CALLS)
    assert calls == [caps]  # the caps, checked, not above


def test_an_untouched_format_1_vault_migrates(tmp_path: Path) -> None:
    from tests.vault_contents import contents

    path = tmp_path / "vault.kms"
    path.write_bytes(GOOD)
    os.chmod(path, 0o600)
    doc, _ = contents(path, PASSPHRASE)
    assert {k: v for k, v in doc.items() if k != "next_due"} == {
        **{k: v for k, v in BODY.items() if k != "format"}, "credentials": {}}
    assert path.read_bytes()[:16] == b"SQLite format 3\0" and (tmp_path / "vault.kms.v1").read_bytes() == GOOD


# -- format 2 -----------------------------------------------------------------------------
class V2:
    """A real format-2 vault made through the service, and what correct answers about it are."""

    def __init__(self, folder: Path) -> None:
        import json

        from kmscli.service import Caller, Kms
        from kmscli.vault.store import FixedKeySource

        self.folder = folder / "pristine"
        self.vault = self.folder / "vault.kms"
        caller = Caller(user="alice", uid=1000, pid=1, host="test")
        svc = Kms(self.vault, PassphraseKeySource(lambda: PASSPHRASE), caller=caller)
        svc.CreateVault(CHEAP)
        ids = [svc.CreateKey(Description=f"k{i}", AliasName=f"alias/a{i}")["KeyMetadata"]["KeyId"] for i in range(12)]
        svc.RotateKeyOnDemand(KeyId=ids[0])
        svc.EnableKeyRotation(KeyId=ids[1])
        svc.ScheduleKeyDeletion(KeyId=ids[2], PendingWindowInDays=7)
        svc.CreateAlias(AliasName="alias/second", TargetKeyId=ids[3])
        svc.PutKeyPolicy(KeyId=ids[4], Policy=svc.GetKeyPolicy(KeyId=ids[4])["Policy"].replace("Enable", "Allow"))
        svc.CreateAccessKey(UserName="bob")
        # An older state of every row (a rolled-back copy's material), then one more write.
        self.old = rows_of(self.vault)
        svc.TagResource(KeyId=ids[5], Tags=[{"TagKey": "t", "TagValue": "v"}])
        svc.CreateKey(Description="late")
        with svc.store.open(svc.keys) as ov:
            self.vault_key = ov.vault_key
        self.keys = FixedKeySource(self.vault_key)
        self.caller = caller
        self.answers = self.ask(self.vault)
        assert len(json.loads(self.answers["keys"])) == 13

    def ask(self, vault: Path) -> dict[str, str]:
        """What the service answers (as JSON text), through a real Kms on ``vault``."""
        import json

        from kmscli.service import Kms

        svc = Kms(vault, self.keys, caller=self.caller)
        out: dict[str, str] = {}
        keys = []
        marker = None
        while True:
            page = svc.ListKeys(Limit=5, Marker=marker)
            keys += [k["KeyId"] for k in page["Keys"]]
            marker = page.get("NextMarker")
            if marker is None:
                break
        out["keys"] = json.dumps(sorted(keys))
        out["aliases"] = json.dumps(sorted(a["AliasName"] for a in svc.ListAliases(Limit=100)["Aliases"]))
        for key_id in sorted(keys):
            out[key_id] = json.dumps(svc.DescribeKeyDetails(KeyId=key_id), default=str, sort_keys=True)
        out["alias"] = json.dumps(svc.DescribeKey(KeyId="alias/second"), default=str, sort_keys=True)
        out["creds"] = json.dumps(svc.ListAccessKeys(UserName="bob")["AccessKeyMetadata"])
        return out

    def copy(self) -> Path:
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp(dir=self.folder.parent))
        os.chmod(folder, 0o700)
        for f in self.folder.iterdir():
            if f.is_file() and not f.name.endswith((".lock", "-shm", "-wal")):
                shutil.copy2(f, folder / f.name)
        return folder / "vault.kms"


def rows_of(vault: Path) -> dict[str, list[tuple]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{vault}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in ("header", "meta", "nodes", "records")}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> V2:
    return V2(tmp_path_factory.mktemp("v2"))


def _outcome(v2: V2, vault: Path) -> None:
    """A clean exit 8, or every answer correct."""
    try:
        answers = v2.ask(vault)
    except errors.KmsError as e:
        assert e.exit_code == errors.EXIT_FILE, (type(e).__name__, e.message)
        assert str(e) and "\n" not in str(e)
        return
    assert answers == v2.answers


def _sql(vault: Path, *statements: tuple[str, tuple]) -> None:
    import sqlite3

    conn = sqlite3.connect(f"file:{vault}?mode=rw", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for sql, args in statements:
            conn.execute(sql, args)
        conn.execute("COMMIT")
    finally:
        conn.close()


ROW_CHANGES = ["value", "next", "key", "delete", "insert", "swap", "node", "node-delete", "meta", "meta-old",
               "meta-and-nodes-old", "row-old", "header", "schema", "kind-move"]


@SETTINGS
@given(st.data())
def test_any_change_to_a_format_2_file(v2: V2, data: st.DataObject) -> None:
    vault = v2.copy()
    blob = bytearray(vault.read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice", "zero-page"]))
    pos = data.draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del blob[pos:]
    elif kind == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=4096))
    elif kind == "splice":
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
    else:
        page = pos // 4096 * 4096
        blob[page : page + 4096] = bytes(len(blob[page : page + 4096]))
    vault.write_bytes(bytes(blob))
    _outcome(v2, vault)


@SETTINGS
@given(st.data())
def test_any_change_to_the_rows_of_a_format_2_vault(v2: V2, data: st.DataObject) -> None:
    vault = v2.copy()
    rows = rows_of(vault)
    records = rows["records"]
    change = data.draw(st.sampled_from(ROW_CHANGES))
    pick = data.draw(st.integers(0, len(records) - 1))
    key, nxt, value = records[pick]
    if change == "value":
        at = data.draw(st.integers(0, len(value) - 1))
        bad = bytearray(value)
        bad[at] ^= data.draw(st.integers(1, 255))
        _sql(vault, ("UPDATE records SET value = ? WHERE key = ?", (bytes(bad), key)))
    elif change == "next":
        new = data.draw(st.none() | st.binary(min_size=16, max_size=16))
        if new == nxt:
            return
        _sql(vault, ("UPDATE records SET next = ? WHERE key = ?", (new, key)))
    elif change == "key":
        new_key = bytearray(key)
        new_key[data.draw(st.integers(0, len(key) - 1))] ^= data.draw(st.integers(1, 255))
        _sql(vault, ("DELETE FROM records WHERE key = ?", (key,)),
             ("INSERT OR REPLACE INTO records (key, next, value) VALUES (?, ?, ?)", (bytes(new_key), nxt, value)))
    elif change == "delete":
        _sql(vault, ("DELETE FROM records WHERE key = ?", (key,)))
    elif change == "insert":
        new_key = key[:8] + data.draw(st.binary(min_size=16, max_size=16))
        _sql(vault, ("INSERT OR IGNORE INTO records (key, next, value) VALUES (?, ?, ?)", (new_key, nxt, value)))
    elif change == "swap":
        other = records[data.draw(st.integers(0, len(records) - 1))]
        if other[0] == key:
            return
        _sql(vault, ("UPDATE records SET value = ? WHERE key = ?", (other[2], key)),
             ("UPDATE records SET value = ? WHERE key = ?", (value, other[0])))
    elif change in ("node", "node-delete"):
        mid, digests = rows["nodes"][data.draw(st.integers(0, len(rows["nodes"]) - 1))]
        if change == "node-delete":
            _sql(vault, ("DELETE FROM nodes WHERE mid = ?", (mid,)))
        else:
            bad = bytearray(digests)
            bad[data.draw(st.integers(0, len(bad) - 1))] ^= 1
            _sql(vault, ("UPDATE nodes SET digests = ? WHERE mid = ?", (bytes(bad), mid)))
    elif change == "meta":
        sealed = bytearray(rows["meta"][0][1])
        sealed[data.draw(st.integers(0, len(sealed) - 1))] ^= 1
        _sql(vault, ("UPDATE meta SET sealed = ? WHERE id = 1", (bytes(sealed),)))
    elif change in ("meta-old", "meta-and-nodes-old"):
        statements = [("UPDATE meta SET sealed = ? WHERE id = 1", (v2.old["meta"][0][1],))]
        if change == "meta-and-nodes-old":
            statements += [("DELETE FROM nodes", ())]
            statements += [("INSERT INTO nodes (mid, digests) VALUES (?, ?)", row) for row in v2.old["nodes"]]
        _sql(vault, *statements)
    elif change == "row-old":
        old = [r for r in v2.old["records"] if r not in records]
        if not old:
            return
        row = old[data.draw(st.integers(0, len(old) - 1))]
        _sql(vault, ("INSERT OR REPLACE INTO records (key, next, value) VALUES (?, ?, ?)", row))
    elif change == "header":
        raw = bytearray(rows["header"][0][1])
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        if data.draw(st.booleans()):  # with the checksum an attacker can recompute
            raw[99:131] = hashlib.sha256(bytes(raw[:99])).digest()
        _sql(vault, ("UPDATE header SET raw = ? WHERE id = 1", (bytes(raw),)))
    elif change == "schema":
        sql = data.draw(st.sampled_from([
            "CREATE TABLE extra (x)", "CREATE INDEX i ON records (value)",
            "CREATE VIEW v AS SELECT * FROM records",
            "CREATE TRIGGER t AFTER INSERT ON records BEGIN DELETE FROM records; END"]))
        _sql(vault, (sql, ()))
    else:  # kind-move: a row under another kind's tag
        tags = sorted({r[0][:8] for r in records})
        tag = tags[data.draw(st.integers(0, len(tags) - 1))]
        if tag == key[:8]:
            return
        _sql(vault, ("DELETE FROM records WHERE key = ?", (key,)),
             ("INSERT OR REPLACE INTO records (key, next, value) VALUES (?, ?, ?)", (tag + key[8:], nxt, value)))
    _outcome(v2, vault)


def test_a_format_2_file_with_a_newer_version_is_refused_as_such(v2: V2) -> None:
    vault = v2.copy()
    blob = bytearray(vault.read_bytes())
    blob[60:64] = struct.pack(">I", 3)
    vault.write_bytes(bytes(blob))
    with pytest.raises(errors.VaultVersionException, match="newer than this kmscli understands"):
        v2.ask(vault)


def test_the_untouched_format_2_copy_answers(v2: V2) -> None:
    assert v2.ask(v2.copy()) == v2.answers
