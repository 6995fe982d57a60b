"""The audit log: record shape, the MAC chain, tamper detection, rotation, modes, failing closed."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmscli import audit
from kmscli.audit import AuditLog, ChainHead, chain_key
from kmscli.crypto.primitives import hkdf
from kmscli.errors import AuditLogException, AuditVerificationException

VAULT_KEY = bytes(range(32))
KEY = chain_key(VAULT_KEY)
VAULT_ID = "vault-0123"
N = 20


def record(i: int = 0, name: str = "Encrypt", key_id: str = "alias/app") -> dict:
    return {
        "eventName": name,
        "userIdentity": {"type": "IAMUser", "userName": "alice", "uid": 1000, "pid": 4242, "host": "ws"},
        "requestParameters": {"keyId": key_id, "encryptionContext": {"app": "billing"}, "numberOfBytes": i},
        "responseElements": None,
    }


def failed_unlock(i: int = 0) -> dict:
    """The only record that may be written without the key: a call that failed before unlocking."""
    return {**record(i), "errorCode": "IncorrectPassphraseException", "errorMessage": "wrong passphrase"}


def build(path: Path, n: int = N, *, keyed: Callable[[int], bool] = lambda i: True, **kw) -> tuple[AuditLog, list]:
    log = AuditLog(path, vault_id=VAULT_ID, **kw)
    heads = [log.append(record(i), KEY) if keyed(i) else log.append(failed_unlock(i), None) for i in range(n)]
    return log, heads


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def bad_line(log: AuditLog, head: ChainHead | None = None, key: bytes = KEY) -> int:
    """The line number verify names (it must name one)."""
    with pytest.raises(AuditVerificationException) as e:
        log.verify(key, head)
    m = re.match(r"(?:file \S+ )?line (\d+): ", str(e.value))
    assert m, str(e.value)
    return int(m.group(1))


@pytest.fixture
def log20(tmp_path: Path) -> tuple[AuditLog, Path, list[ChainHead]]:
    path = tmp_path / "audit.jsonl"
    log, heads = build(path)
    return log, path, heads


# -- record shape and round trip ----------------------------------------------------------------


def test_round_trip(log20) -> None:
    log, path, heads = log20
    got = list(log.read())
    assert len(got) == N
    for i, rec in enumerate(got):
        for k, v in record(i).items():
            assert rec[k] == v
        assert rec["eventVersion"] == "1.08"
        assert rec["eventSource"] == "kms.local"
        assert rec["eventType"] == "AwsApiCall"
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rec["eventID"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["eventTime"])
        assert rec["chainSeq"] == i + 1
        assert rec["keyed"] is True
        assert rec["chainMac"] == heads[i].mac
    assert len({r["eventID"] for r in got}) == N
    assert log.head() == heads[-1] == ChainHead(file_index=1, seq=N, mac=heads[-1].mac)
    report = log.verify(KEY, heads[-1])
    assert (report.records, report.files, report.keyed, report.unkeyed, report.unproven) == (N, 1, N, 0, 0)
    assert report.last_head == heads[-1]
    # One compact canonical line per record.
    for line in lines_of(path):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert line[:-1] == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":")).encode()


def test_chain_construction_matches_the_document(tmp_path: Path) -> None:
    """Recompute docs/audit.md's formulas with hmac/hashlib directly: pins the format."""
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    now = datetime(2026, 12, 1, 10, 20, 30, tzinfo=UTC)
    log.append_at(failed_unlock(1), None, now=now, event_id="00000000-0000-4000-8000-000000000001")
    h2 = log.append_at(record(2), KEY, now=now, event_id="00000000-0000-4000-8000-000000000002")
    recs = [json.loads(line) for line in lines_of(tmp_path / "audit.jsonl")]

    def canon(r: dict) -> bytes:
        return json.dumps(
            {k: v for k, v in r.items() if k != "chainMac"}, sort_keys=True, separators=(",", ":")
        ).encode()

    g_unkeyed = hashlib.sha256(b"kmscli-audit-genesis" + VAULT_ID.encode()).digest()
    assert recs[0]["chainPrev"] == g_unkeyed.hex()
    mac1 = hashlib.sha256(b"kmscli-audit-unkeyed-link v1" + g_unkeyed + canon(recs[0])).digest()
    assert recs[0]["chainMac"] == mac1.hex()
    mac2 = hmac.new(KEY, mac1 + canon(recs[1]), hashlib.sha256).digest()
    assert recs[1]["chainPrev"] == mac1.hex() and recs[1]["chainMac"] == mac2.hex() == h2.mac
    assert recs[1]["eventTime"] == "2026-12-01T10:20:30Z"
    assert chain_key(VAULT_KEY) == hkdf(VAULT_KEY, info=b"kmscli audit chain v1") != VAULT_KEY
    # A keyed first record starts from the keyed genesis link.
    other = AuditLog(tmp_path / "b.jsonl", vault_id=VAULT_ID)
    other.append(record(), KEY)
    first = json.loads(lines_of(tmp_path / "b.jsonl")[0])
    assert first["chainPrev"] == hmac.new(KEY, b"kmscli-audit-genesis" + VAULT_ID.encode(), hashlib.sha256).hexdigest()


def test_service_fields_are_kept_and_event_time_given_is_used(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    rec = record() | {"eventTime": "2026-01-02T03:04:05Z", "eventType": "AwsServiceEvent", "errorCode": "X"}
    log.append(rec, KEY)
    log.append(record() | {"eventTime": datetime(2026, 1, 2, 4, 0, tzinfo=UTC)}, KEY)
    got = list(log.read())
    assert got[0]["eventTime"] == "2026-01-02T03:04:05Z"
    assert got[0]["eventType"] == "AwsServiceEvent" and got[0]["errorCode"] == "X"
    assert got[1]["eventTime"] == "2026-01-02T04:00:00Z"
    assert rec["eventTime"] == "2026-01-02T03:04:05Z" and "chainSeq" not in rec  # caller's dict untouched


# -- tampering ------------------------------------------------------------------------------------


def test_verify_passes_on_intact_log_and_empty_log(log20, tmp_path: Path) -> None:
    log, _, heads = log20
    for h in heads:  # any earlier head the vault stored is still contained
        assert log.verify(KEY, h).records == N
    empty = AuditLog(tmp_path / "none" / "audit.jsonl", vault_id=VAULT_ID)
    report = empty.verify(KEY)
    assert (report.records, report.files, report.last_head) == (0, 0, None)
    assert empty.head() is None and list(empty.read()) == []
    assert not (tmp_path / "none").exists()  # reading creates nothing


def test_editing_any_character_of_any_line_is_named(log20) -> None:
    log, path, heads = log20
    orig = lines_of(path)
    for i, line in enumerate(orig):
        body = line[:-1]
        mac_at = body.index(b'"chainMac":"') + 12
        prev_at = body.index(b'"chainPrev":"') + 13
        seq_at = body.index(b'"chainSeq":') + 11
        name_at = body.index(b"Encrypt")
        for pos in {
            0,
            len(body) // 2,
            len(body) - 1,
            mac_at,
            mac_at + 63,
            prev_at + 5,
            seq_at,
            name_at,
            (i * 7) % len(body),
        }:
            for new in (b"0", b"x", b" "):
                if body[pos : pos + 1] == new:
                    continue
                edited = body[:pos] + new + body[pos + 1 :] + b"\n"
                write_lines(path, [*orig[:i], edited, *orig[i + 1 :]])
                assert bad_line(log) == i + 1, (i, pos, new)
                assert bad_line(log, heads[-1]) == i + 1
    write_lines(path, orig)
    log.verify(KEY, heads[-1])


def test_deleting_each_line_is_named(log20) -> None:
    log, path, heads = log20
    orig = lines_of(path)
    for i in range(N):
        write_lines(path, orig[:i] + orig[i + 1 :])
        assert bad_line(log, heads[-1]) == i + 1, i
        if i < N - 1:
            assert bad_line(log) == i + 1  # without the head only the last line can go unnoticed


def test_swapping_adjacent_lines_is_named(log20) -> None:
    log, path, _ = log20
    orig = lines_of(path)
    for i in range(N - 1):
        swapped = list(orig)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        write_lines(path, swapped)
        assert bad_line(log) == i + 1, i


def test_inserting_a_copied_line_is_named(log20) -> None:
    log, path, _ = log20
    orig = lines_of(path)
    for j in range(N):  # which line is copied
        for k in range(N + 1):  # where it goes (0-based position of the copy)
            write_lines(path, [*orig[:k], orig[j], *orig[k:]])
            # A copy put just before its original is indistinguishable from it: the original is then the bad one.
            assert bad_line(log) == (k + 2 if j == k else k + 1), (j, k)


def test_truncating_the_tail_is_named_with_the_head(log20) -> None:
    log, path, heads = log20
    orig = lines_of(path)
    for m in range(N):  # keep m lines
        write_lines(path, orig[:m])
        assert bad_line(log, heads[-1]) == m + 1, m
        if m:
            assert log.verify(KEY).records == m  # without a head a cut tail is undetectable (docs)
            assert log.verify(KEY, heads[m - 1]).records == m
    path.unlink()
    assert bad_line(log, heads[-1]) == 1


def test_a_head_that_differs_is_named(log20) -> None:
    log, _, heads = log20
    forged = ChainHead(file_index=1, seq=7, mac="0" * 64)
    assert bad_line(log, forged) == 7
    assert bad_line(log, ChainHead(file_index=2, seq=7, mac=heads[6].mac)) == 7


def test_another_vaults_log_or_key_fails_at_line_1(log20, tmp_path: Path) -> None:
    log, path, _ = log20
    assert bad_line(log, key=chain_key(b"\x02" * 32)) == 1
    assert bad_line(AuditLog(path, vault_id="vault-other")) == 1
    other_path = tmp_path / "other.jsonl"
    other = AuditLog(other_path, vault_id="vault-other")
    other_key = chain_key(b"\x03" * 32)
    for i in range(3):
        other.append(record(i), other_key)
    shutil.copy(other_path, path)
    with pytest.raises(AuditVerificationException, match=r"^line 1: .*another vault"):
        log.verify(KEY)
    # An unkeyed first record is bound to the vault id too.
    write_lines(other_path, [])
    other.append(record(), None)
    shutil.copy(other_path, path)
    assert bad_line(log) == 1


def test_torn_final_line_is_reported_distinctly_and_repaired_by_the_next_append(log20) -> None:
    log, path, heads = log20
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # SIGKILL or ENOSPC in the middle of the last write
    with pytest.raises(AuditVerificationException, match=r"^line 20: torn final line"):
        log.verify(KEY)
    assert log.head() == heads[-2]  # the last complete record
    assert len(list(log.read())) == N - 1
    h = log.append(record(99), KEY)
    assert h.seq == N  # the torn record was never acknowledged; its seq is reused
    assert log.verify(KEY, h).records == N
    # A torn line in the middle of the log is damage, not a torn tail.
    lines = lines_of(path)
    write_lines(path, [*lines[:5], lines[5][:-1], *lines[6:]])
    assert bad_line(log) == 6


def test_a_whole_last_record_missing_only_its_newline_is_kept(log20) -> None:
    log, path, heads = log20
    path.write_bytes(path.read_bytes()[:-1])  # as an editor that drops the final newline would
    assert log.verify(KEY, heads[-1]).records == N
    assert log.head() == heads[-1]
    assert len(list(log.read())) == N
    h = log.append(record(), KEY)  # completes the line instead of cutting an acknowledged record
    assert h.seq == N + 1
    assert log.verify(KEY, heads[-1]).records == N + 1


def test_garbage_lines_are_named(log20) -> None:
    log, path, _ = log20
    orig = lines_of(path)
    for junk in (b"\n", b"{}\n", b"[1,2]\n", b"not json\n", b"\xff\xfe\n", b'{"chainSeq":5}\n', b" " + orig[4]):
        write_lines(path, [*orig[:4], junk, *orig[5:]])
        assert bad_line(log) == 5, junk
    # Same object, other spelling: not canonical, so an edit.
    spaced = json.dumps(json.loads(orig[4])).encode() + b"\n"
    write_lines(path, [*orig[:4], spaced, *orig[5:]])
    with pytest.raises(AuditVerificationException, match="line 5: not in canonical form"):
        log.verify(KEY)


# -- records written without the key ------------------------------------------------------------


def test_unkeyed_records_are_chained_and_the_trailing_ones_unproven(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    unkeyed = {0, 1, 7, 8, 17, 18, 19}
    log, heads = build(path, keyed=lambda i: i not in unkeyed)
    report = log.verify(KEY, heads[16])
    # Unkeyed records are never proven, whatever keyed record or head follows them:
    # anyone can write one, so verify lists each as unauthenticated.
    assert (report.records, report.keyed, report.unkeyed, report.unproven) == (N, 13, 7, 7)
    assert report.unauthenticated == tuple(f"line {i + 1}" for i in sorted(unkeyed))
    assert log.verify(KEY, heads[18]).unproven == 7
    with pytest.raises(AuditVerificationException, match=r"^line 1: .*--strict"):
        log.verify(KEY, strict=True)
    recs = list(log.read())
    assert [r["keyed"] for r in recs] == [i not in unkeyed for i in range(N)]
    orig = lines_of(path)

    def relink(rec: dict) -> bytes:
        rec.pop("chainMac")
        rec["chainMac"] = audit.link(None, bytes.fromhex(rec["chainPrev"]), audit.canonical(rec)).hex()
        return audit.canonical(rec) + b"\n"

    def forge(i: int, change: Callable[[dict], None]) -> list[bytes]:
        """Edit line i as someone without the key would: recompute its plain link."""
        rec = json.loads(orig[i])
        change(rec)
        return [*orig[:i], relink(rec), *orig[i + 1 :]]

    def forge_run(i: int, change: Callable[[dict], None]) -> list[bytes]:
        """Edit line i and relink the unkeyed lines after it, up to the next keyed one."""
        lines = forge(i, change)
        j = i + 1
        while j < len(lines) and not json.loads(lines[j])["keyed"]:
            rec = json.loads(lines[j])
            rec["chainPrev"] = json.loads(lines[j - 1])["chainMac"]
            lines[j] = relink(rec)
            j += 1
        return lines

    def rename(r: dict) -> None:
        r["eventName"] = "Decrypt"

    # Edited without fixing the link: named at that line.
    write_lines(path, [*orig[:7], orig[7].replace(b"Encrypt", b"Decrypt"), *orig[8:]])
    assert bad_line(log) == 8
    # Edited with only its own link recomputed: the next line's chainPrev no longer matches.
    write_lines(path, forge(7, rename))
    assert bad_line(log) == 9
    # The whole unkeyed run relinked: the next keyed record's MAC still covers the original.
    write_lines(path, forge_run(7, rename))
    assert bad_line(log) == 10
    write_lines(path, forge_run(0, rename))
    assert bad_line(log) == 3
    # Removing an unkeyed record before a keyed one.
    write_lines(path, orig[:8] + orig[9:])
    assert bad_line(log) == 9
    # After the last keyed record nobody can tell an edit of a failed unlock
    # (docs: unauthenticated) ...
    write_lines(path, forge_run(17, rename))
    assert log.verify(KEY).unproven == 7
    write_lines(path, orig[:18])
    assert log.verify(KEY).unproven == 5
    # ... unless the plain link itself is broken, or the vault's head covers them (below).
    write_lines(path, forge(17, rename))
    assert bad_line(log) == 19
    # A keyed record turned into an unkeyed one is no failed unlock: named at once.
    write_lines(path, forge(10, lambda r: r.update(keyed=False)))
    assert bad_line(log) == 11
    # ... and at the very end it is caught by the head the vault stored.
    log2, heads2 = build(tmp_path / "b.jsonl", 5)
    lines2 = lines_of(tmp_path / "b.jsonl")
    rec = json.loads(lines2[-1])
    rec.update(keyed=False)
    rec.pop("chainMac")
    rec["chainMac"] = audit.link(None, bytes.fromhex(rec["chainPrev"]), audit.canonical(rec)).hex()
    write_lines(tmp_path / "b.jsonl", [*lines2[:-1], audit.canonical(rec) + b"\n"])
    assert bad_line(log2) == 5
    assert bad_line(log2, heads2[-1]) == 5


def test_a_log_of_only_unkeyed_records_verifies_as_unproven(tmp_path: Path) -> None:
    log, heads = build(tmp_path / "audit.jsonl", 4, keyed=lambda i: False)
    report = log.verify(KEY)
    assert (report.records, report.keyed, report.unkeyed, report.unproven) == (4, 0, 4, 4)
    assert report.last_head == heads[-1]


# -- rotation -------------------------------------------------------------------------------------


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log, heads = build(path, 40, max_bytes=3000)
    names = sorted(p.name for p in tmp_path.iterdir())
    segments = [n for n in names if re.fullmatch(r"audit\.jsonl\.\d{6}", n)]
    assert len(segments) >= 3 and "audit.jsonl" in names and "audit.jsonl.lock" in names
    assert segments[0] == "audit.jsonl.000001"
    for n in segments + ["audit.jsonl"]:
        assert (tmp_path / n).stat().st_size <= 3000
        assert stat.S_IMODE((tmp_path / n).stat().st_mode) == 0o600
    report = log.verify(KEY, heads[-1])
    assert (report.records, report.files) == (40, len(segments) + 1)
    assert heads[-1].file_index == len(segments) + 1
    assert [h.seq for h in heads] == list(range(1, 41))
    assert len(list(log.read())) == 40
    # Heads taken before a rotation stay valid after it (the live file is renamed to its index).
    for h in heads:
        assert log.verify(KEY, h).records == 40
    seg = {int(n.rsplit(".", 1)[1]): [json.loads(x)["chainSeq"] for x in lines_of(tmp_path / n)] for n in segments}
    for h in heads:
        if h.file_index in seg:
            assert h.seq in seg[h.file_index]


def test_a_record_larger_than_max_bytes_gets_its_own_file(tmp_path: Path) -> None:
    log, heads = build(tmp_path / "audit.jsonl", 3, max_bytes=10)
    assert [h.file_index for h in heads] == [1, 2, 3]
    assert log.verify(KEY, heads[-1]).files == 3


def test_deleting_a_rotated_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log, heads = build(path, 40, max_bytes=3000)
    (tmp_path / "audit.jsonl.000002").unlink()
    with pytest.raises(AuditVerificationException, match=r"^file audit\.jsonl\.000003 line 1: .*file may be missing"):
        log.verify(KEY, heads[-1])
    (tmp_path / "audit.jsonl.000001").unlink()
    with pytest.raises(AuditVerificationException, match=r"^file audit\.jsonl\.000003 line 1: the log begins at"):
        log.verify(KEY)


def test_error_in_a_rotated_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log, _ = build(path, 40, max_bytes=3000)
    seg2 = tmp_path / "audit.jsonl.000002"
    lines = lines_of(seg2)
    write_lines(seg2, [lines[0], lines[1].replace(b"Encrypt", b"Encrypd"), *lines[2:]])
    with pytest.raises(AuditVerificationException, match=r"^file audit\.jsonl\.000002 line 2: chainMac does not match"):
        log.verify(KEY)


def test_crash_between_rename_and_first_write_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log, heads = build(path, 10, max_bytes=3000)
    index = heads[-1].file_index
    os.rename(path, tmp_path / f"audit.jsonl.{index:06d}")  # what rotation does before the crash
    assert log.head() == heads[-1]
    assert log.verify(KEY, heads[-1]).records == 10
    h = log.append(record(), KEY)
    assert (h.seq, h.file_index) == (11, index + 1)
    assert log.verify(KEY, h).records == 11


# -- read -----------------------------------------------------------------------------------------


def test_read_filters(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    kid = "1234abcd-12ab-34cd-56ef-1234567890ab"
    arn = f"arn:aws:kms:local:123456789012:key/{kid}"
    t0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    specs = [
        ("CreateKey", {"description": "x"}, {"keyMetadata": {"keyId": kid}}),
        ("Encrypt", {"keyId": "alias/app"}, {"keyId": arn}),
        ("Decrypt", {}, {"keyId": arn}),
        ("Encrypt", {"keyId": "alias/other"}, {"keyId": "arn:aws:kms:local:123456789012:key/other"}),
        ("CreateAlias", {"aliasName": "alias/app", "targetKeyId": kid}, None),
        ("ReEncrypt", {"sourceKeyId": arn, "destinationKeyId": "other"}, None),
        ("Encrypt", {"keyId": kid}, None),
    ]
    for i, (name, req, resp) in enumerate(specs):
        rec = {"eventName": name, "requestParameters": req, "responseElements": resp}
        log.append(rec | {"eventTime": (t0 + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ")}, KEY)

    def names(**kw) -> list[int]:
        return [r["chainSeq"] for r in log.read(**kw)]

    assert names() == [1, 2, 3, 4, 5, 6, 7]
    assert names(operation="Encrypt") == names(operation="encrypt") == [2, 4, 7]
    assert names(key_id=kid) == names(key_id=arn) == names(key_id=f"key/{kid}") == [1, 2, 3, 5, 6, 7]
    # An alias matches the records of the key it stood for from the first record that ties them
    # (record 2: a call through the alias whose answer names the key), as well as those naming it.
    assert names(key_id="alias/app") == names(key_id="arn:aws:kms:local:123456789012:alias/app") == [2, 3, 5, 6, 7]
    assert names(since=t0 + timedelta(hours=3)) == [4, 5, 6, 7]
    assert names(since=(t0 + timedelta(hours=3)).replace(tzinfo=None)) == [4, 5, 6, 7]  # naive = UTC
    assert names(operation="Encrypt", key_id=kid, since=t0 + timedelta(minutes=1)) == [2, 7]
    assert names(operation="Nothing") == []


def test_read_rejects_a_line_that_is_not_json_but_skips_a_torn_tail(log20) -> None:
    log, path, _ = log20
    orig = lines_of(path)
    write_lines(path, [*orig, b'{"eventName":"Encr'])
    assert len(list(log.read())) == N
    write_lines(path, [*orig[:3], b"garbage\n", *orig[3:]])
    with pytest.raises(AuditLogException, match="line 4: not a JSON object"):
        list(log.read())
    write_lines(path, [*orig[:3], b'{"eventTime":5}\n', *orig[3:]])
    with pytest.raises(AuditLogException, match="line 4: eventTime"):
        list(log.read(since=datetime(2020, 1, 1)))


def test_head_reads_only_the_tail(log20) -> None:
    log, path, heads = log20
    orig = lines_of(path)
    write_lines(path, [b"x" * (3 << 20) + b"\n", *orig])  # a damaged start does not matter to head()
    assert log.head() == heads[-1]
    write_lines(path, [*orig, b"oops\n"])
    with pytest.raises(AuditLogException, match="last record"):
        log.head()


# -- no secrets, reserved fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"requestParameters": {"plaintext": "s3cret"}},
        {"requestParameters": {"Plaintext": "s3cret"}},
        {"responseElements": {"CiphertextBlob": "AAAA"}},
        {"requestParameters": {"nested": [{"passphrase": "x"}]}},
        {"requestParameters": {"new_password": "x"}},
        {"requestParameters": {"keyMaterial": "x"}},
        {"requestParameters": {"data_key": "x"}},
        {"requestParameters": {"sourcePlaintextLength": 4}},
        {"requestParameters": {"keyId": b"\x00" * 32}},
        {"requestParameters": {"n": float("nan")}},
        {"requestParameters": {"n": float("inf")}},
        {"requestParameters": {"when": datetime(2026, 1, 1)}},
        {"requestParameters": {1: "x"}},
        {"requestParameters": {"n": 10**5000}},
        {"chainSeq": 1},
        {"eventID": "mine"},
        {"eventSource": "kms.amazonaws.com"},
        {"keyed": True},
        {"eventTime": 12},
        {"requestParameters": {"policy": "x" * (1 << 20)}},
    ],
)
def test_records_that_could_leak_or_break_the_log_are_refused(tmp_path: Path, bad: dict) -> None:
    log, heads = build(tmp_path / "audit.jsonl", 2)
    before = (tmp_path / "audit.jsonl").read_bytes()
    with pytest.raises(AuditLogException, match="refusing to log"):
        log.append(record() | bad, KEY)
    assert (tmp_path / "audit.jsonl").read_bytes() == before


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(AuditLogException, match="deeper"):
        AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID).append({"requestParameters": deep}, KEY)


def test_innocent_names_that_look_alike_pass(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    ok = {"keyMaterialId": "abc", "numberOfBytes": 32, "keySpec": "AES_256", "dataKeySpec": "AES_256", "keyId": "k"}
    log.append({"eventName": "GenerateDataKey", "requestParameters": ok}, KEY)
    assert next(log.read())["requestParameters"] == ok


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a", vault_id=VAULT_ID, max_bytes=0)
    log = AuditLog(tmp_path / "a", vault_id=VAULT_ID)
    with pytest.raises(ValueError, match="32 bytes"):
        log.append(record(), b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        log.verify(b"short")
    with pytest.raises(AuditLogException):
        log.append(["not", "a", "dict"], KEY)  # type: ignore[arg-type]


# -- files, modes, owners ---------------------------------------------------------------------------


def test_modes_under_umask_0_and_a_restrictive_umask(tmp_path: Path) -> None:
    for umask, sub in ((0, "u0"), (0o277, "u277")):
        old = os.umask(umask)
        try:
            log = AuditLog(tmp_path / sub / "deeper" / "audit.jsonl", vault_id=VAULT_ID, max_bytes=1000)
            for i in range(5):
                log.append(record(i), KEY)
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / sub).stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / sub / "deeper").stat().st_mode) == 0o700
        for p in (tmp_path / sub / "deeper").iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert log.verify(KEY).records == 5


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    AuditLog(folder / "audit.jsonl", vault_id=VAULT_ID).append(record(), KEY)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o400, 0o444])
def test_a_log_others_can_write_or_frozen_read_only_is_refused(tmp_path: Path, mode: int) -> None:
    log, _ = build(tmp_path / "audit.jsonl", 2)
    os.chmod(tmp_path / "audit.jsonl", mode)
    with pytest.raises(AuditLogException, match=r"writable by group or others|read-only"):
        log.append(record(), KEY)
    os.chmod(tmp_path / "audit.jsonl", 0o600)
    os.chmod(tmp_path / "audit.jsonl.lock", 0o666)
    with pytest.raises(AuditLogException, match="lock file"):
        log.append(record(), KEY)
    os.chmod(tmp_path / "audit.jsonl.lock", 0o600)
    assert log.verify(KEY).records == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_a_log_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    log, _ = build(tmp_path / "audit.jsonl", 2)
    os.chown(tmp_path / "audit.jsonl", 65534, 65534)
    with pytest.raises(AuditLogException, match="belongs to another user"):
        log.append(record(), KEY)
    assert log.verify(KEY).records == 2  # reading another user's log is fine: the MACs decide


def test_a_symlink_or_a_folder_in_place_of_the_log_is_refused(tmp_path: Path) -> None:
    real, _ = build(tmp_path / "real.jsonl", 1)
    (tmp_path / "audit.jsonl").symlink_to(tmp_path / "real.jsonl")
    with pytest.raises(AuditLogException, match="symbolic link"):
        AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID).append(record(), KEY)
    (tmp_path / "dir" / "audit.jsonl").mkdir(parents=True)
    with pytest.raises(AuditLogException):
        AuditLog(tmp_path / "dir" / "audit.jsonl", vault_id=VAULT_ID).append(record(), KEY)


# -- failing closed -------------------------------------------------------------------------------


def as_unprivileged(fn: Callable[[Path], None]) -> None:
    """Run fn(folder) where permissions apply: as is, or as nobody in a forked child when root."""
    if os.geteuid() != 0:
        folder = Path(tempfile.mkdtemp())
        try:
            fn(folder)
        finally:
            for p in [folder, *folder.rglob("*")]:
                if p.is_dir():
                    os.chmod(p, 0o700)
            shutil.rmtree(folder)
        return
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chown(folder, 65534, 65534)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        msg = b"ok"
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn(folder)
        except BaseException as e:
            msg = f"{type(e).__name__}: {e}".encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read()
    os.waitpid(pid, 0)
    shutil.rmtree(folder)
    assert msg == b"ok", msg.decode()


def _read_only_folder(folder: Path) -> None:
    log = AuditLog(folder / "log" / "audit.jsonl", vault_id=VAULT_ID, max_bytes=600)
    h = log.append(record(), KEY)
    os.chmod(folder / "log", 0o500)
    # The log and its lock exist: appending still works until it has to rotate.
    try:
        log.append(record(), KEY)
    except AuditLogException as e:
        assert "Permission denied" in str(e) and "audit.jsonl" in str(e), str(e)
    else:
        raise AssertionError("a rotation in a read-only folder was reported as success")
    assert log.verify(KEY, h).records == 1  # nothing half-written
    (folder / "ro").mkdir()
    os.chmod(folder / "ro", 0o500)
    with pytest.raises(AuditLogException, match="Permission denied"):
        AuditLog(folder / "ro" / "audit.jsonl", vault_id=VAULT_ID).append(record(), KEY)
    with pytest.raises(AuditLogException, match="Permission denied"):
        AuditLog(folder / "ro" / "sub" / "audit.jsonl", vault_id=VAULT_ID).append(record(), KEY)


def _read_only_log_and_lock(folder: Path) -> None:
    log = AuditLog(folder / "audit.jsonl", vault_id=VAULT_ID)
    log.append(record(), KEY)
    os.chmod(folder / "audit.jsonl", 0o400)
    with pytest.raises(AuditLogException, match=r"Permission denied|read-only"):
        log.append(record(), KEY)
    os.chmod(folder / "audit.jsonl", 0o600)
    os.chmod(folder / "audit.jsonl.lock", 0o400)
    with pytest.raises(AuditLogException):
        log.append(record(), KEY)
    assert log.verify(KEY).records == 1  # readers cope with a lock they can only read


def test_read_only_folder_fails_closed() -> None:
    as_unprivileged(_read_only_folder)


def test_read_only_log_fails_closed() -> None:
    as_unprivileged(_read_only_log_and_lock)


def test_disk_full_mid_write_fails_closed_and_leaves_no_torn_line(log20, monkeypatch) -> None:
    log, path, heads = log20
    before = path.read_bytes()
    calls = []

    def full(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return os.write(fd, data[:100])  # a short write ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then the disk is full

    monkeypatch.setattr(audit, "_write", full)
    with pytest.raises(AuditLogException, match=r"No space left on device \(ENOSPC\)"):
        log.append(record(), KEY)
    assert len(calls) == 2
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert log.append(record(), KEY).seq == N + 1


def test_a_short_write_is_completed(log20, monkeypatch) -> None:
    log, _, _ = log20
    monkeypatch.setattr(audit, "_write", lambda fd, data: os.write(fd, data[:50]))
    h = log.append(record(), KEY)
    monkeypatch.undo()
    assert log.verify(KEY, h).records == N + 1


def test_fsync_failure_fails_closed(log20, monkeypatch) -> None:
    log, _, _ = log20

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(audit, "_sync", eio)
    with pytest.raises(AuditLogException, match="EIO"):
        log.append(record(), KEY)


def test_lock_timeout_fails_closed(log20) -> None:
    log, path, _ = log20
    fd = os.open(log.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        stuck = AuditLog(path, vault_id=VAULT_ID, lock_timeout=0.2)
        with pytest.raises(AuditLogException, match="held the audit log lock"):
            stuck.append(record(), KEY)
        with pytest.raises(AuditLogException, match="held the audit log lock"):
            stuck.verify(KEY)
    finally:
        os.close(fd)
    assert log.verify(KEY).records == N


def test_a_damaged_last_record_stops_appends(log20) -> None:
    log, path, _ = log20
    orig = lines_of(path)
    write_lines(path, [*orig, b'{"chainSeq":"x"}\n'])
    with pytest.raises(AuditLogException, match=r"last record .* cannot be read.*audit verify"):
        log.append(record(), KEY)
    write_lines(path, [*orig, b"x" * (audit.MAX_LINE_BYTES + 10) + b"\n"])
    with pytest.raises(AuditLogException, match="last record"):
        log.append(record(), KEY)
