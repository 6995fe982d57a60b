"""The audit log's reading side at scale: show --since reads what its window holds, verify's quick
check accepts exactly what the full check accepts, and readers keep few files open however many there are.

Cost is measured by counting work (bytes read through ``audit._pread``, lines parsed), never by timing.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli import audit
from kmscli.audit import SINCE_SLACK, AuditLog, ChainHead, KeyRing, chain_key
from kmscli.errors import AuditLogException, AuditVerificationException

KEY = chain_key(bytes(range(32)))
VAULT_ID = "vault-scale"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SLACK_S = int(SINCE_SLACK.total_seconds())


def encrypt(when: datetime, i: int) -> dict:
    return {
        "eventName": "Encrypt",
        "eventTime": audit.format_event_time(when),
        "userIdentity": {"type": "IAMUser", "userName": "alice", "uid": 1000, "pid": 4242, "host": "ws"},
        "requestParameters": {"keyId": "alias/app", "encryptionContext": {"app": "billing"}, "numberOfBytes": i},
        "responseElements": {"keyId": "arn:aws:kms:local:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"},
        "additionalEventData": {"vaultGeneration": 3},
    }


def build(path: Path, times: list[datetime], *, max_bytes: int = 64 * 1024, batch: int = 50) -> AuditLog:
    """A log of one record per time, appended in batches (rotation happens between batches)."""
    log = AuditLog(path, vault_id=VAULT_ID, max_bytes=max_bytes)
    for b in range(0, len(times), batch):
        log.append_batch([encrypt(t, b + i) for i, t in enumerate(times[b : b + batch])], KEY)
    return log


def when(rec: dict) -> datetime:
    return datetime.fromisoformat(rec["eventTime"])


def seqs(recs: Iterator[dict] | list[dict]) -> list[int]:
    return [r["chainSeq"] for r in recs]


class Counter:
    """Counts the bytes the reading side reads and the lines it parses as JSON."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self.parsed = 0
        pread, parse = audit._pread, audit._parse_json_object

        def counting_pread(fd: int, n: int, pos: int) -> bytes:
            data = pread(fd, n, pos)
            self.bytes += len(data)
            return data

        def counting_parse(line: bytes) -> dict | None:
            self.parsed += 1
            return parse(line)

        monkeypatch.setattr(audit, "_pread", counting_pread)
        monkeypatch.setattr(audit, "_parse_json_object", counting_parse)

    def reset(self) -> None:
        self.bytes = self.parsed = 0


def log_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if re.fullmatch(r"audit\.jsonl(\.\d{6})?", p.name)]


# -- show --since: exact, and costs what the window holds -----------------------------------------


@pytest.fixture(scope="module")
def jittered(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditLog, list[dict], list[datetime]]:
    """3,000 records, one every 10 s, each stamped up to SINCE_SLACK early: out of order, within the slack."""
    rng = random.Random(14)
    base = [T0 + timedelta(seconds=10 * i) for i in range(3000)]
    times = [b - timedelta(seconds=rng.randrange(SLACK_S)) for b in base]
    path = tmp_path_factory.mktemp("jittered") / "audit.jsonl"
    log = build(path, times)
    assert len(log_files(path.parent)) > 20
    return log, list(log.read()), base


def test_since_within_the_slack_is_exactly_the_full_scan(jittered) -> None:
    log, full, _ = jittered
    assert sum(when(a) > when(b) for a, b in zip(full, full[1:], strict=False)) > 1000  # really out of order
    rng = random.Random(1)
    cuts = [T0 - timedelta(days=1), when(full[0]), when(full[-1]), when(full[-1]) + timedelta(seconds=1),
            T0 + timedelta(days=30)]
    cuts += [when(r) for r in rng.sample(full, 40)]  # exactly a record's time: it must be included
    cuts += [T0 + timedelta(seconds=rng.randrange(31000)) for _ in range(40)]
    for t in cuts:
        assert seqs(log.read(since=t)) == [r["chainSeq"] for r in full if when(r) >= t], t
        naive = t.replace(tzinfo=None)
        assert seqs(log.read(since=naive, operation="encrypt")) == seqs(log.read(since=t))


def test_since_reads_only_the_window(jittered, monkeypatch) -> None:
    log, full, base = jittered
    count = Counter(monkeypatch)
    total = sum(p.stat().st_size for p in log_files(log.path.parent))
    size = max(len(audit.canonical(r)) for r in full) + 1
    for back in (timedelta(0), timedelta(minutes=30), timedelta(hours=2)):
        t = base[-1] - back
        count.reset()
        got = seqs(log.read(since=t))
        assert got == [r["chainSeq"] for r in full if when(r) >= t]
        # What it reads: records stamped from t - SINCE_SLACK on (read in full), the rest of the
        # file that holds the first of them, and a few probe lines per bisection.
        from_bound = sum(1 for b in base if b >= t - SINCE_SLACK)
        assert count.parsed <= from_bound + 40, (back, count.parsed, from_bound)
        assert count.bytes <= (from_bound + 40) * size + 40 * audit.PROBE_BLOCK, (back, count.bytes)
        if back == timedelta(0):
            assert count.bytes < total / 20
    count.reset()
    assert len(list(log.read())) == len(full)
    assert count.parsed == len(full) and count.bytes == total  # without since: everything, once


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_since_beyond_the_slack_keeps_the_documented_guarantee(tmp_path_factory, data) -> None:
    """Clocks that step back further than the slack: only records followed by one older than since - slack
    may be left out; nothing before since is ever shown; what is shown is every match from some point on."""
    n = data.draw(st.integers(1, 400))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    times, t = [], T0
    for _ in range(n):
        step = rng.choice([7, 7, 7, 60, 600, -3 * SLACK_S, -30, 20 * SLACK_S])
        t += timedelta(seconds=step)
        times.append(t)
    folder = tmp_path_factory.mktemp("steps")
    log = build(folder / "audit.jsonl", times, max_bytes=data.draw(st.sampled_from([2000, 20000, 1 << 20])),
                batch=data.draw(st.integers(1, 30)))
    full = list(log.read())
    for _ in range(5):
        first, last = (int((x - T0).total_seconds()) for x in (min(times), max(times)))
        since = T0 + timedelta(seconds=rng.randrange(first - 100, last + 100))
        exact = [r for r in full if when(r) >= since]
        got = seqs(log.read(since=since))
        if got:
            assert got == [r["chainSeq"] for r in exact if r["chainSeq"] >= got[0]]
        for r in exact:
            if r["chainSeq"] not in got:
                assert any(when(x) < since - SINCE_SLACK for x in full[r["chainSeq"]:]), (since, r["chainSeq"])


def test_since_cost_does_not_grow_with_old_files(tmp_path: Path, monkeypatch) -> None:
    """Files whose last record is older than since - slack are never opened for their lines."""
    times = [T0 + timedelta(seconds=10 * i) for i in range(4000)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=8 * 1024, batch=10)
    files = len(log_files(tmp_path))
    assert files > 300
    count = Counter(monkeypatch)
    t = times[-1] - timedelta(minutes=20)
    assert seqs(log.read(since=t)) == list(range(4000 - 20 * 6, 4001))
    window = sum(1 for x in times if x >= t - SINCE_SLACK)
    assert count.parsed <= window + 2 * files.bit_length() + 20
    assert count.bytes < 2 * (window + 40) * 600 + 40 * audit.PROBE_BLOCK


def test_damage_inside_the_window_is_named_as_a_full_read_names_it(tmp_path: Path) -> None:
    times = [T0 + timedelta(seconds=30 * i) for i in range(600)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=1 << 30, batch=600)
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    since = times[500]
    for junk, what in ((b"garbage\n", "not a JSON object"), (b'{"eventTime":5}\n', "eventTime")):
        path.write_bytes(b"".join([*lines[:550], junk, *lines[550:]]))
        with pytest.raises(AuditLogException, match=f"^line 551: {what}"):
            list(log.read(since=since))
    # Damage well before the window is not read at all (verify reads everything).
    path.write_bytes(b"".join([*lines[:50], b"garbage\n", *lines[50:]]))
    assert seqs(log.read(since=since)) == list(range(501, 601))
    with pytest.raises(AuditLogException, match="^line 51: not a JSON object"):
        list(log.read())


def test_since_with_a_torn_tail_and_a_whole_record_missing_its_newline(tmp_path: Path) -> None:
    times = [T0 + timedelta(seconds=30 * i) for i in range(300)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=20000, batch=20)
    path = tmp_path / "audit.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-1])  # a whole record missing only its newline: still a record
    assert seqs(log.read(since=times[-1])) == [300]
    path.write_bytes(data[:-30])  # a torn last line: not a record
    assert seqs(log.read(since=times[-1])) == []
    assert seqs(log.read(since=times[-2])) == [299]


# -- files: one at a time ---------------------------------------------------------------------------


def open_log_fds(folder: Path) -> int:
    """How many files of the log (not its lock) this process has open."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
        if target.parent == folder and re.fullmatch(r"audit\.jsonl(\.\d{6})?", target.name):
            n += 1
    return n


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_readers_hold_at_most_two_files_open(tmp_path: Path, monkeypatch) -> None:
    times = [T0 + timedelta(seconds=i) for i in range(1500)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=4000, batch=5)
    files = len(log_files(tmp_path))
    assert files > 250
    most = [0]
    pread = audit._pread

    def watching(fd: int, n: int, pos: int) -> bytes:
        most[0] = max(most[0], open_log_fds(tmp_path))
        return pread(fd, n, pos)

    def opening(path: Path) -> int:
        fd = open_existing(path)
        most[0] = max(most[0], open_log_fds(tmp_path))
        return fd

    open_existing = audit._open_existing
    monkeypatch.setattr(audit, "_pread", watching)
    monkeypatch.setattr(audit, "_open_existing", opening)
    report = log.verify(KEY)
    assert (report.records, report.files) == (1500, files)
    assert seqs(log.read()) == list(range(1, 1501))
    assert seqs(log.read(since=times[700])) == list(range(701, 1501))
    assert log.head() is not None and log.head().seq == 1500
    assert 1 <= most[0] <= 2, most[0]
    assert open_log_fds(tmp_path) == 0


def test_a_reader_follows_files_that_audit_restart_sets_aside(tmp_path: Path) -> None:
    times = [T0 + timedelta(seconds=i) for i in range(200)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=3000, batch=5)
    reader = log.read()
    assert next(reader)["chainSeq"] == 1  # the snapshot is taken
    log.retire(".retired-20260301T000000Z-abcdef")
    fresh = AuditLog(tmp_path / "audit.jsonl", vault_id="new", max_bytes=3000)
    for i in range(20):  # a new log reuses the names
        fresh.append(encrypt(T0, i), KEY)
    assert [r["chainSeq"] for r in reader] == list(range(2, 201))  # the files it saw, not the new ones
    assert len(log_files(tmp_path)) >= 3
    gone = fresh.read()
    next(gone)
    (tmp_path / "audit.jsonl.000002").unlink()
    with pytest.raises(AuditLogException, match="removed or replaced while it was being read"):
        list(gone)


def test_verify_names_files_and_lines_across_many_files(tmp_path: Path) -> None:
    times = [T0 + timedelta(seconds=i) for i in range(400)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=3000, batch=4)
    heads = log.verify(KEY).last_head
    assert heads is not None and heads.seq == 400
    seg = tmp_path / "audit.jsonl.000050"
    lines = seg.read_bytes().splitlines(keepends=True)
    seg.write_bytes(b"".join([lines[0], lines[1].replace(b"Encrypt", b"Encrypd"), *lines[2:]]))
    with pytest.raises(AuditVerificationException, match=r"^file audit\.jsonl\.000050 line 2: chainMac does not"):
        log.verify(KEY)
    seg.write_bytes(b"".join(lines[1:]))
    with pytest.raises(AuditVerificationException, match=r"^file audit\.jsonl\.000050 line 1: record \d+ follows"):
        log.verify(KEY)
    seg.write_bytes(b"".join(lines))
    (tmp_path / "audit.jsonl.000051").unlink()
    with pytest.raises(AuditVerificationException, match=r"^file audit\.jsonl\.000052 line 1: .*file may be missing"):
        log.verify(KEY, heads)


# -- verify: the quick check accepts exactly what the full check accepts -----------------------------


def count_full_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    parse = audit.parse_line

    def counting(line: bytes, *, strict: bool = True) -> dict:
        calls[0] += 1
        return parse(line, strict=strict)

    monkeypatch.setattr(audit, "parse_line", counting)
    return calls


def test_an_intact_keyed_log_is_verified_without_parsing_a_line(tmp_path: Path, monkeypatch) -> None:
    times = [T0 + timedelta(seconds=i) for i in range(500)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=20000)
    calls = count_full_checks(monkeypatch)
    report = log.verify(KEY)
    assert (report.records, report.keyed, calls[0]) == (500, 500, 0)
    # Only the lines the head and the witness name, and unkeyed records, are checked fully.
    heads = [log.append({"eventName": "ListKeys"}, KEY), log.append({"eventName": "Decrypt",
             "errorCode": "IncorrectPassphraseException"}, None), log.append({"eventName": "ListKeys"}, KEY)]
    mac300 = next(r for r in log.read() if r["chainSeq"] == 300)["chainMac"]
    calls[0] = 0
    report = log.verify(KEY, heads[0], witness=(300, mac300))
    assert (report.records, report.keyed, report.unkeyed, calls[0]) == (503, 502, 1, 3)
    assert report.last_head == heads[-1]


def test_a_record_moved_or_respelled_but_equal_as_json_is_refused(tmp_path: Path) -> None:
    """The quick check takes the MAC input from the line's bytes: it must still refuse a line that is
    not the canonical form, even when it parses to the very record that was sealed."""
    times = [T0 + timedelta(seconds=i) for i in range(6)]
    log = build(tmp_path / "audit.jsonl", times, batch=6)
    path = tmp_path / "audit.jsonl"
    orig = path.read_bytes().splitlines(keepends=True)
    line = orig[3]
    member = re.search(rb'"chainMac":"[0-9a-f]{64}",', line)
    assert member
    without = line[: member.start()] + line[member.end() :]
    edits = {
        "member at the end": without[:-2] + b"," + member.group()[:-1] + b"}\n",
        "member first": b"{" + member.group() + without[1:],
        "space after the member": line.replace(member.group(), member.group() + b" "),
        "escaped letter": line.replace(b"alice", b"\\u0061lice"),
        "spaced JSON": json.dumps(json.loads(line), sort_keys=True).encode() + b"\n",
    }
    for what, edited in edits.items():
        assert edited != line and json.loads(edited) == json.loads(line), what
        path.write_bytes(b"".join([*orig[:3], edited, *orig[4:]]))
        with pytest.raises(AuditVerificationException, match=r"^line 4: (not in canonical form|not an audit)"):
            log.verify(KEY)
    # The same MAC in capitals: the same bytes to bytes.fromhex, not the line that was written.
    upper = line.replace(member.group(), member.group().upper().replace(b"CHAINMAC", b"chainMac"))
    path.write_bytes(b"".join([*orig[:3], upper, *orig[4:]]))
    with pytest.raises(AuditVerificationException, match=r"^line 4: not an audit record: chainMac"):
        log.verify(KEY)
    path.write_bytes(b"".join(orig))
    assert log.verify(KEY).records == 6


def test_records_that_name_chain_fields_inside_are_checked_fully_and_pass(tmp_path: Path, monkeypatch) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    odd = [
        {"eventName": "A", "additionalEventData": {"chainMac": "0" * 64, "chainPrev": "1" * 64}},
        {"eventName": "B", "requestParameters": {"description": 'a "chainPrev":"' + "2" * 64 + '","chainSeq":9,'}},
        {"eventName": "C", "aaa": {"chainSeq": 1}, "chainNote": "sorts between chainMac and chainPrev"},
        {"eventName": "D", "requestParameters": {"x": "\u00e9\u2028\"chain"}},
    ]
    for rec in odd:
        log.append(rec, KEY)
    log.append({"eventName": "E"}, KEY)
    calls = count_full_checks(monkeypatch)
    assert log.verify(KEY).records == 5
    assert calls[0] == 4  # the odd ones, fully; the plain one quickly
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines(keepends=True)
    # C with chainMac moved after chainNote: same record, not canonical.
    c = lines[2]
    member = re.search(rb'"chainMac":"[0-9a-f]{64}",', c)
    assert member
    moved = c[: member.start()] + c[member.end() :]
    at = moved.index(b'"chainPrev"')
    moved = moved[:at] + member.group() + moved[at:]
    assert json.loads(moved) == json.loads(c)
    (tmp_path / "audit.jsonl").write_bytes(b"".join([*lines[:2], moved, *lines[3:]]))
    with pytest.raises(AuditVerificationException, match="^line 3: not in canonical form"):
        log.verify(KEY)


def test_keys_change_at_their_first_record(tmp_path: Path) -> None:
    k1, k2 = KEY, chain_key(b"\x09" * 32)
    log = AuditLog(tmp_path / "audit.jsonl", vault_id=VAULT_ID)
    one, both = KeyRing(((1, k1),)), KeyRing(((1, k1), (5, k2)))
    for i in range(4):
        log.append(encrypt(T0, i), one)
    for i in range(6):
        log.append(encrypt(T0, i), both)
    assert log.verify(both).records == 10
    with pytest.raises(AuditVerificationException, match=r"^line 4: chainMac does not match"):
        log.verify(KeyRing(((1, k1), (4, k2))))
    with pytest.raises(AuditVerificationException, match=r"^line 5: chainMac does not match"):
        log.verify(one)
    with pytest.raises(AuditVerificationException, match="another vault"):
        log.verify(k2)


names = st.sampled_from(["a", "chainMac", "chainPrev", "chainSeq", "zz", "keyId", "chainNote"])
texts = st.text(alphabet='abc"\\/\u00e9\u2028\n chainMPrevSq:,{}', max_size=20)
values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | texts,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names | texts, inner, max_size=3),
                      max_leaves=8)
records = st.fixed_dictionaries(
    {"eventName": st.sampled_from(["Encrypt", "Decrypt"])},
    optional={"additionalEventData": st.dictionaries(names, values, max_size=3),
              "requestParameters": st.dictionaries(names | texts, values, max_size=3),
              "aaa": values, "chainNote": values},
)
FAILED = {"errorCode": "IncorrectPassphraseException", "responseElements": None}


def outcome(verify: Callable[[], audit.VerifyReport]) -> object:
    try:
        return verify()
    except (AuditVerificationException, AuditLogException) as e:
        return f"{type(e).__name__}: {e}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(st.tuples(records, st.booleans()), min_size=1, max_size=6), data=st.data())
def test_the_quick_check_agrees_with_the_full_check(tmp_path_factory, monkeypatch, recs, data) -> None:
    folder = tmp_path_factory.mktemp("agree")
    path = folder / "audit.jsonl"
    log = AuditLog(path, vault_id=VAULT_ID, max_bytes=data.draw(st.sampled_from([300, 1 << 20])))
    heads = [log.append(r, KEY) if keyed else log.append({**r, **FAILED}, None) for r, keyed in recs]
    files = sorted(log_files(folder), key=lambda p: (p.name == "audit.jsonl", p.name))
    target = data.draw(st.sampled_from(files))
    blob = target.read_bytes()
    how = data.draw(st.sampled_from(["byte", "move", "swap", "none", "upper"]))
    lines = blob.splitlines(keepends=True)
    if how == "byte" and blob:
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:pos] + bytes([data.draw(st.integers(0, 255))]) + blob[pos + 1 :]
    elif how == "move" and lines:
        k = data.draw(st.integers(0, len(lines) - 1))
        members = list(re.finditer(rb'"chainMac":"[0-9a-f]{64}",?', lines[k]))
        m = members[0] if members else None
        if m:
            rest = lines[k][: m.start()] + lines[k][m.end() :]
            at = data.draw(st.integers(1, len(rest) - 2))
            lines[k] = rest[:at] + m.group() + rest[at:]
        blob = b"".join(lines)
    elif how == "swap" and len(lines) > 1:
        k = data.draw(st.integers(0, len(lines) - 2))
        lines[k], lines[k + 1] = lines[k + 1], lines[k]
        blob = b"".join(lines)
    elif how == "upper":
        blob = re.sub(rb"[0-9a-f]{64}", lambda m: m.group().upper() if data.draw(st.booleans()) else m.group(), blob)
    target.write_bytes(blob)
    head = data.draw(st.none() | st.sampled_from(heads))
    witness = data.draw(st.none() | st.sampled_from([(h.seq, h.mac) for h in heads] + [(99, "0" * 64)]))
    strict = data.draw(st.booleans())

    def run() -> audit.VerifyReport:
        return log.verify(KEY, head, witness=witness, strict=strict)

    quick = outcome(run)
    monkeypatch.setattr(audit, "_QUICK_CHECK", False)
    try:
        assert quick == outcome(run)
    finally:
        monkeypatch.setattr(audit, "_QUICK_CHECK", True)
    if how == "none" and not strict:
        assert isinstance(quick, audit.VerifyReport) or witness == (99, "0" * 64), quick
        if isinstance(quick, audit.VerifyReport):
            assert quick.last_head == heads[-1] and quick.records == len(recs)


def test_head_is_the_same_after_the_reading_side_changed(tmp_path: Path) -> None:
    times = [T0 + timedelta(seconds=i) for i in range(50)]
    log = build(tmp_path / "audit.jsonl", times, max_bytes=3000, batch=5)
    h = log.head()
    assert isinstance(h, ChainHead) and h == log.verify(KEY).last_head and h.seq == 50
    (tmp_path / "audit.jsonl").unlink()  # as after a crash between rotation and the next write
    h2 = log.head()
    assert h2 is not None and h2.file_index == h.file_index - 1 and h2.seq < 50
