"""Properties of the audit log: any input fails only in the documented ways; any edit is named."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kmscli import audit
from kmscli.audit import AuditLog, ChainHead, chain_key
from kmscli.errors import AuditLogException, AuditVerificationException

KEY = chain_key(b"\x05" * 32)
VAULT_ID = "vault-props"
#: What a record written without the key must be: a failed unlock (docs/audit.md).
FAILED_UNLOCK = {"errorCode": "IncorrectPassphraseException", "responseElements": None}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Field names that cannot spell a secret-like name or a field the log owns.
names = st.text(alphabet="abcdfghjkmoquvwyzABEFGHJ_", min_size=1, max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4), max_leaves=12
)
records = st.fixed_dictionaries(
    {"eventName": st.sampled_from(["Encrypt", "Decrypt", "CreateKey", "ScheduleKeyDeletion"])},
    optional={"requestParameters": st.dictionaries(names, values, max_size=4), "userIdentity": values},
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


_valid: dict[int, tuple[list[bytes], list[ChainHead]]] = {}


def valid_log(folder: Path, n: int) -> tuple[list[bytes], list[ChainHead]]:
    """The lines and heads of an intact log of n records (some unkeyed), built once per n."""
    if n not in _valid:
        path = folder / f"valid-{n}" / "audit.jsonl"
        log = AuditLog(path, vault_id=VAULT_ID)
        heads = [
            log.append({"eventName": "Encrypt", "requestParameters": {"i": i}, **FAILED_UNLOCK}, None)
            if i % 4 == 1
            else log.append({"eventName": "Encrypt", "requestParameters": {"i": i}}, KEY)
            for i in range(n)
        ]
        _valid[n] = (path.read_bytes().splitlines(keepends=True) if n else [], heads)
    return _valid[n]


def fresh(folder: Path, data: bytes) -> AuditLog:
    path = folder / "work" / "audit.jsonl"
    path.parent.mkdir(exist_ok=True)
    for old in path.parent.iterdir():
        old.unlink()
    path.write_bytes(data)
    return AuditLog(path, vault_id=VAULT_ID)


def named_line(log: AuditLog, head: ChainHead | None = None) -> int:
    with pytest.raises(AuditVerificationException) as e:
        log.verify(KEY, head)
    m = re.match(r"line (\d+): ", str(e.value))
    assert m, str(e.value)
    return int(m.group(1))


# Lines that are almost records: valid JSON objects with chain-like fields of any type.
near_records = st.fixed_dictionaries(
    {},
    optional={
        "chainSeq": st.one_of(st.integers(-3, 30), st.text(max_size=3), st.booleans(), st.none()),
        "chainPrev": st.one_of(st.text("0123456789abcdef", min_size=63, max_size=65), st.integers()),
        "chainMac": st.one_of(st.text("0123456789abcdefABCDEF", min_size=64, max_size=64), st.none()),
        "keyed": st.one_of(st.booleans(), st.integers(0, 1)),
        "eventTime": st.one_of(st.text(max_size=25), st.integers(), st.just("2026-01-01T00:00:00Z")),
        "eventName": st.one_of(st.text(max_size=10), st.lists(st.integers(), max_size=2)),
        "requestParameters": st.one_of(values, st.dictionaries(st.sampled_from(["keyId", "aliasName"]), values)),
    },
).map(lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")).encode())
any_line = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    values.map(lambda v: json.dumps(v).encode()),
    near_records,
    st.sampled_from([b"", b"{", b"[" * 5000, b"1e999999", b'{"a":NaN}', b"9" * 5000, b'{"a":1,"a":2}']),
)


@SETTINGS
@given(
    lines=st.lists(any_line, max_size=8),
    valid=st.integers(0, 5),
    at=st.integers(0, 8),
    newline_at_end=st.booleans(),
    head=st.none()
    | st.builds(ChainHead, st.integers(0, 12), st.integers(-1, 12), st.text("0123456789abcdef", max_size=64)),
)
def test_arbitrary_lines_fail_only_as_documented(folder, lines, valid, at, newline_at_end, head) -> None:
    good, _ = valid_log(folder, valid)
    mixed = [*good[:at], *(line.replace(b"\n", b"") + b"\n" for line in lines), *good[at:]]
    data = b"".join(mixed)
    if not newline_at_end and data.endswith(b"\n"):
        data = data[:-1]
    log = fresh(folder, data)
    for call in (
        lambda: log.verify(KEY),
        lambda: log.verify(KEY, head),
        lambda: list(log.read()),
        lambda: list(log.read(key_id="alias/x", operation="encrypt", since=audit.datetime(2026, 1, 1))),
        log.head,
        lambda: log.append({"eventName": "Encrypt"}, KEY),
        lambda: log.append({"eventName": "Encrypt"}, None),
    ):
        with contextlib.suppress(AuditVerificationException, AuditLogException):  # anything else fails the test
            call()


@SETTINGS
@given(n=st.integers(1, 8), data=st.data())
def test_any_single_byte_change_is_named_at_its_line(folder, n, data) -> None:
    good, heads = valid_log(folder, n)
    blob = b"".join(good)
    pos = data.draw(st.integers(0, len(blob) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != blob[pos]))
    edited = blob[:pos] + bytes([new]) + blob[pos + 1 :]
    line = blob[:pos].count(b"\n") + 1
    log = fresh(folder, edited)
    assert named_line(log) == line
    assert named_line(log, heads[-1]) == line


@SETTINGS
@given(n=st.integers(1, 8), data=st.data())
def test_a_replaced_or_inserted_line_is_named(folder, n, data) -> None:
    good, heads = valid_log(folder, n)
    i = data.draw(st.integers(0, n))
    junk = data.draw(any_line).replace(b"\n", b"") + b"\n"
    if i < n and data.draw(st.booleans()):
        assume(junk != good[i])
        lines = [*good[:i], junk, *good[i + 1 :]]
    else:
        assume(i == n or junk != good[i])
        lines = [*good[:i], junk, *good[i:]]
    log = fresh(folder, b"".join(lines))
    assert named_line(log, heads[-1]) == i + 1


@SETTINGS
@given(recs=st.lists(records, min_size=1, max_size=6), keyed=st.lists(st.booleans(), min_size=6, max_size=6))
def test_round_trip(folder, recs, keyed) -> None:
    log = fresh(folder, b"")
    recs = [r if k else {**r, **FAILED_UNLOCK} for r, k in zip(recs, keyed, strict=False)]
    heads = [log.append(r, KEY if k else None) for r, k in zip(recs, keyed, strict=False)]
    got = list(log.read())
    assert len(got) == len(recs)
    for r, g in zip(recs, got, strict=True):
        assert {k: g[k] for k in r} == r
    report = log.verify(KEY, heads[-1])
    assert report.records == len(recs) and report.last_head == heads[-1] == log.head()
    assert report.keyed + report.unkeyed == len(recs)


@SETTINGS
@given(v=values)
def test_canonical_form_is_a_fixed_point(v) -> None:
    once = audit.canonical({"v": v})
    assert audit.canonical(json.loads(once)) == once


# Top-level names on both sides of the MAC's place ("chainMac"), nested copies of the chain fields.
top_names = st.sampled_from(["a", "additionalEventData", "awsRegion", "chainLink", "chainMa", "chainMacs",
                             "chainMac0", "errorCode", "eventName", "requestParameters", "zz"]) | names
chain_echo = st.dictionaries(st.sampled_from([audit.MAC_FIELD, audit.PREV_FIELD, audit.SEQ_FIELD, "x"]), values,
                             max_size=3)


@SETTINGS
@given(rec=st.dictionaries(top_names, values | chain_echo, max_size=8), seq=st.integers(1, 2**40),
       prev=st.binary(min_size=32, max_size=32), keyed=st.booleans())
def test_a_sealed_line_is_exactly_the_canonical_form_of_its_record(rec, seq, prev, keyed) -> None:
    """seal_record splices the MAC into the encoding it already made: the line must be canonical()."""
    line, mac = audit.seal_record(rec, KEY if keyed else None, seq, prev)
    assert line == audit.canonical(rec) + b"\n"
    assert rec[audit.MAC_FIELD] == mac.hex()
    body = dict(rec)
    del body[audit.MAC_FIELD]
    assert mac == audit.link(KEY if keyed else None, prev, audit.canonical(body))
