"""A call's work does not grow with the vault (issue 14): counted, never timed.

Two vaults, one of 12 keys and one of 700 (each key with an alias, some with
rotated material), answer the same calls; what each call reads from the
record store (verified gets and scans) is counted and must be the same, and
the SQL statements it runs stay under a small constant. Time-based events are
found through the schedule, listings come a page at a time, and the CLI
prints a listing of any size page by page, byte for byte what one document
would be.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kmscli import errors
from kmscli.model import parse_iso
from kmscli.service import Caller, Kms
from kmscli.vault import records as R
from kmscli.vault.store import PassphraseKeySource
from tests.unit.conftest import CHEAP, Clock

SMALL, LARGE = 12, 700


def make(tmp_path: Path, n: int, clock: Clock) -> Kms:
    svc = Kms(tmp_path / f"v{n}" / "vault.kms", PassphraseKeySource(lambda: b"pw"), clock=clock,
              caller=Caller(user="alice", uid=1000, pid=1, host="test"))
    svc.CreateVault(CHEAP)
    keys = [{"KeyId": str(uuid.UUID(int=i + 1, version=4)), "Materials": [bytes([i % 256]) * 32] * (1 + i % 3),
             "Description": f"key {i}", "Tags": {"n": str(i)}} for i in range(n)]
    aliases = [{"AliasName": f"alias/k{i}", "TargetKeyId": k["KeyId"]} for i, k in enumerate(keys)]
    for start in range(0, n, 300):
        svc.SeedVault(Keys=keys[start : start + 300], Aliases=aliases[start : start + 300])
    for i, k in enumerate(keys[: n // 3]):
        svc.EnableKeyRotation(KeyId=k["KeyId"], RotationPeriodInDays=90 + i % 400)
    return svc


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count verified gets and scans (by kind) and SQL statements, while the block runs."""
    seen: Counter[str] = Counter()
    with monkeypatch.context() as m:
        real_get, real_scan, real_connect = R.RecordView.get, R.RecordView.scan, R._connect_as

        def get(self: R.RecordView, kind: str, name: str) -> Any:
            seen[f"get {kind}"] += 1
            return real_get(self, kind, name)

        def scan(self: R.RecordView, kind: str, after: str | None = None, limit: int = 100) -> Any:
            seen[f"scan {kind}"] += 1
            return real_scan(self, kind, after, limit)

        def connect(*args: Any, **kwargs: Any) -> Any:
            conn = real_connect(*args, **kwargs)
            conn.set_trace_callback(lambda sql: seen.update(["sql"]))
            return conn

        m.setattr(R.RecordView, "get", get)
        m.setattr(R.RecordView, "scan", scan)
        m.setattr(R, "_connect_as", connect)
        yield seen


def calls(svc: Kms, n: int) -> list[tuple[str, Callable[[], object]]]:
    key = str(uuid.UUID(int=n // 2, version=4))
    out = io.BytesIO()
    svc.Encrypt(KeyId=key, reader=io.BytesIO(b"x" * 100), writer=out)
    ciphertext = out.getvalue()
    policy = svc.GetKeyPolicy(KeyId=key)["Policy"]
    return [
        ("encrypt", lambda: svc.Encrypt(KeyId=f"alias/k{n // 2}", reader=io.BytesIO(b"x" * 100),
                                        writer=io.BytesIO())),
        ("decrypt", lambda: svc.Decrypt(reader=io.BytesIO(ciphertext), writer=io.BytesIO())),
        ("describe", lambda: svc.DescribeKey(KeyId=key)),
        ("describe table", lambda: svc.DescribeKeyDetails(KeyId=key)),
        ("create", lambda: svc.CreateKey(AliasName="alias/new")),
        ("alias create", lambda: svc.CreateAlias(AliasName="alias/second", TargetKeyId=key)),
        ("alias update", lambda: svc.UpdateAlias(AliasName="alias/second", TargetKeyId=f"alias/k{n // 2 + 1}")),
        ("alias delete", lambda: svc.DeleteAlias(AliasName="alias/second")),
        ("policy put", lambda: svc.PutKeyPolicy(KeyId=key, Policy=policy)),
        ("rotate", lambda: svc.RotateKeyOnDemand(KeyId=key)),
        ("tag", lambda: svc.TagResource(KeyId=key, Tags=[{"TagKey": "a", "TagValue": "b"}])),
        ("schedule deletion", lambda: svc.ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=7)),
        ("cancel deletion", lambda: svc.CancelKeyDeletion(KeyId=key)),
        ("list keys, a page", lambda: svc.ListKeys(Limit=10)),
        ("list aliases, a page", lambda: svc.ListAliases(Limit=10)),
        ("list a key's aliases", lambda: svc.ListAliases(KeyId=key)),
        ("credential", lambda: svc.ListAccessKeys(UserName="bob")),
    ]


def test_single_key_calls_read_the_same_at_12_and_700_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work: dict[int, dict[str, Counter[str]]] = {}
    for n in (SMALL, LARGE):
        svc = make(tmp_path, n, Clock())
        svc.CreateAccessKey(UserName="bob")
        work[n] = {}
        for name, call in calls(svc, n):
            with counting(monkeypatch) as seen:
                call()
            work[n][name] = seen
    for name in work[SMALL]:
        small, large = work[SMALL][name], work[LARGE][name]
        reads = {k: v for k, v in small.items() if k != "sql"}
        assert reads == {k: v for k, v in large.items() if k != "sql"}, (name, small, large)
        # Physical work: a handful of statements, whatever the size (a bucket read, a mid node, the chain).
        assert large["sql"] <= 60, (name, small, large)


def test_time_based_events_come_from_the_schedule_not_from_every_key(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    svc = make(tmp_path, LARGE, clock)
    doomed = str(uuid.UUID(int=LARGE // 2, version=4))
    svc.CreateAlias(AliasName="alias/doomed-too", TargetKeyId=doomed)
    svc.ScheduleKeyDeletion(KeyId=doomed, PendingWindowInDays=7)
    with counting(monkeypatch) as idle:
        svc.DescribeKey(KeyId="alias/k1")  # nothing due: the sealed metadata says when the next event is
    assert not any(k.startswith("get due") or k.startswith("get schedule") for k in idle), idle
    clock.advance(days=7, seconds=1)
    with counting(monkeypatch) as due:
        svc.DescribeKey(KeyId="alias/k1")  # the deletion falls due: applied by this call, as before
    assert sum(v for k, v in due.items() if k.startswith("get")) < 40, due
    assert not any(k.startswith("scan") for k in due), due
    with pytest.raises(errors.NotFoundException):
        svc.DescribeKey(KeyId=doomed)
    names = set()
    marker = None
    while True:
        page = svc.ListAliases(Limit=100, Marker=marker)
        names |= {a["AliasName"] for a in page["Aliases"]}
        marker = page.get("NextMarker")
        if marker is None:
            break
    assert f"alias/k{LARGE // 2 - 1}" not in names and "alias/doomed-too" not in names and len(names) == LARGE - 1
    # A year on, every key with rotation on has rotated once (each at its own date), through the schedule.
    clock.advance(days=500)
    svc.ListKeys(Limit=1)
    rotated = [svc.ListKeyRotations(KeyId=str(uuid.UUID(int=i + 1, version=4)))["Rotations"]
               for i in range(LARGE // 3)]
    assert all(len([r for r in rs if r["RotationType"] == "AUTOMATIC"]) == 1 for rs in rotated)
    with svc.store.open(svc.keys) as ov:
        assert ov.meta["next_due"] is not None and parse_iso(ov.meta["next_due"]) > clock.now
    svc.VerifyAuditLog(Strict=True)


def test_the_alias_quota_and_a_keys_aliases_come_from_the_keys_own_list(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    svc = make(tmp_path, LARGE, Clock())
    key = str(uuid.UUID(int=3, version=4))
    for i in range(49):
        svc.CreateAlias(AliasName=f"alias/more-{i}", TargetKeyId=key)
    with counting(monkeypatch) as seen, pytest.raises(errors.LimitExceededException, match="at most 50"):
        svc.CreateAlias(AliasName="alias/one-too-many", TargetKeyId=key)
    assert "scan alias" not in seen and seen["get key-aliases"] == 1, seen
    assert len(svc.ListAliases(KeyId=key, Limit=100)["Aliases"]) == 50


def test_listing_pages_cover_every_key_once_in_the_stores_order(tmp_path: Path) -> None:
    svc = make(tmp_path, LARGE, Clock())
    seen: list[str] = []
    marker = None
    while True:
        page = svc.ListKeys(Limit=33, Marker=marker)
        assert len(page["Keys"]) <= 33
        seen += [k["KeyId"] for k in page["Keys"]]
        marker = page.get("NextMarker")
        if marker is None:
            break
    assert len(seen) == len(set(seen)) == LARGE
    details = svc.ListKeyDetails(Limit=50)
    assert [k["KeyId"] for k in details["Keys"]] == seen[:50] and details["Truncated"]
    assert details["Keys"][0]["Aliases"] and details["Keys"][0]["KeyMetadata"]["KeyId"] == seen[0]
    with pytest.raises(errors.InvalidMarkerException):
        svc.ListKeys(Marker="bm90IG91cnM")


def test_keys_list_streams_what_one_document_would_be(tmp_path: Path) -> None:
    from tests.conftest import CHEAP_KDF, PASSPHRASE
    from tests.faults._inproc import run_cli

    vault = tmp_path / "kms" / "vault.kms"
    env = {"KMSCLI_VAULT": str(vault), "KMSCLI_PASSPHRASE": PASSPHRASE}
    assert run_cli(["init", *CHEAP_KDF], env).returncode == 0
    empty = run_cli(["keys", "list", "--json"], env)
    assert empty.stdout == b'{\n  "Keys": [],\n  "Truncated": false\n}\n'
    svc = Kms(vault, PassphraseKeySource(lambda: PASSPHRASE.encode()))
    n = 2_150  # three pages of the CLI's 1,000
    svc.SeedVault(Keys=[{"KeyId": str(uuid.UUID(int=i + 1, version=4)), "Materials": [bytes(32)]}
                        for i in range(n)], Aliases=[])
    listed = run_cli(["keys", "list", "--json"], env)
    assert listed.returncode == 0, listed.err
    doc = json.loads(listed.stdout)
    assert listed.stdout.decode() == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    assert len({k["KeyId"] for k in doc["Keys"]}) == n and doc["Truncated"] is False
    table = run_cli(["keys", "list"], env)  # a pipe: one tab-separated line per key, page after page
    assert sorted(line.split(b"\t")[0] for line in table.stdout.splitlines()) == sorted(
        k["KeyId"].encode() for k in doc["Keys"])
    aliases = run_cli(["alias", "list", "--json"], env)
    assert aliases.stdout == b'{\n  "Aliases": [],\n  "Truncated": false\n}\n'
    ListKeys = [r for r in map(json.loads, vault.with_name("audit.jsonl").read_text().splitlines())
                if r["eventName"] == "ListKeys"]
    assert len(ListKeys) >= 2 * 3  # --json and the table: three pages each, one record each


def test_a_key_record_is_stored_compactly_and_read_back_exactly() -> None:
    from kmscli.policy import default_policy
    from kmscli.service._core import new_key, new_material
    from kmscli.vault.state import DERIVED, pack_key, unpack_key

    account = "111122223333"
    key = new_key(str(uuid.UUID(int=7, version=4)), "local", "2026-01-01T00:00:00Z", "d", {"a": "b"},
                  default_policy(account), bytes(range(32)))
    key["Materials"].append(new_material(2, "2026-02-01T00:00:00Z", "ON_DEMAND", bytes(32)))
    packed = pack_key(key, account)
    assert packed["Policy"] == DERIVED and all(m["KeyMaterialId"] == DERIVED for m in packed["Materials"])
    assert len(json.dumps(packed)) < len(json.dumps(key)) - 300
    assert unpack_key(packed, account) == key
    # Anything not derivable is kept as it is: another policy, another account's, an id of another form.
    odd = {**key, "Policy": default_policy("444455556666"),
           "Materials": [{**key["Materials"][0], "KeyMaterialId": "not a hash"}, {"Version": 3}]}
    assert pack_key(odd, account) == odd and unpack_key(pack_key(odd, account), account) == odd
    no_policy = {k: v for k, v in key.items() if k != "Policy"}
    assert unpack_key(pack_key(no_policy, account), account) == no_policy
