"""A log of ~1,200 files through the real entry point, with few file descriptors allowed (issue 14).

Readers used to open every file of the log at once: ``audit show`` and ``audit verify`` died with
EMFILE under ``ulimit -n 1024`` once rotation had made enough files. They now open one at a time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmscli import audit
from kmscli.service._core import chain_keys_of
from kmscli.vault.store import PassphraseKeySource, VaultStore
from tests.conftest import HANG_GUARD_S, PASSPHRASE, kmscli_command

SEGMENTS = 1200
PER_FILE = 3
FD_LIMIT = 64


def seal_segments(vault: Path) -> tuple[int, datetime]:
    """Continue the vault's log in files of PER_FILE records, sealed with its own key: SEGMENTS files in all.

    Returns the number of records and the time of the last. The live file (holding the vault's
    CreateVault record) becomes the first older file, as rotation would have renamed it.
    """
    ov = VaultStore(vault).open(PassphraseKeySource(lambda: PASSPHRASE.encode()))
    ring = audit.KeyRing(tuple((k["from_seq"], bytes.fromhex(k["key"])) for k in chain_keys_of(ov)))
    live = vault.with_name("audit.jsonl")
    first = json.loads(live.read_bytes().splitlines()[-1])
    seq, prev = first["chainSeq"], bytes.fromhex(first["chainMac"])
    start = datetime.fromisoformat(first["eventTime"])
    os.rename(live, vault.with_name("audit.jsonl.000001"))
    t = start
    for index in range(2, SEGMENTS + 1):
        lines = []
        for _ in range(PER_FILE):
            seq += 1
            t = start + timedelta(seconds=seq)
            rec = audit._prepare({"eventName": "Encrypt", "requestParameters": {"keyId": "alias/app", "n": seq},
                                  "additionalEventData": {"vaultGeneration": ov.generation}},
                                 t, audit.new_event_id())
            line, prev = audit.seal_record(rec, ring.key_for(seq), seq, prev)
            lines.append(line)
        name = "audit.jsonl" if index == SEGMENTS else f"audit.jsonl.{index:06d}"
        path = vault.with_name(name)
        path.write_bytes(b"".join(lines))
        path.chmod(0o600)
    return seq, t


def run_limited(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """kmscli with at most FD_LIMIT open files (as 'ulimit -n 64' would do)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    return subprocess.run([*kmscli_command(), *args], env=env, capture_output=True, input=b"",
                          timeout=HANG_GUARD_S, preexec_fn=limit, start_new_session=True)


@pytest.fixture
def many_files(vault: Path) -> tuple[Path, int, datetime]:
    records, last = seal_segments(vault)
    assert len([p for p in vault.parent.iterdir() if p.name.startswith("audit.jsonl.0")]) == SEGMENTS - 1
    return vault, records, last


def test_show_and_verify_read_1200_files_with_64_descriptors(env: dict[str, str], many_files) -> None:
    vault, records, last = many_files
    shown = run_limited(env, "audit", "show")
    assert shown.returncode == 0, shown.stderr.decode()
    recs = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["chainSeq"] for r in recs] == list(range(1, records + 1))
    assert recs[0]["eventName"] == "CreateVault" and recs[-1]["requestParameters"]["n"] == records

    verified = run_limited(env, "audit", "verify", "--strict")
    assert verified.returncode == 0, verified.stderr.decode()
    assert f"intact: {records} records in {SEGMENTS} file(s)".encode() in verified.stderr

    since = (last - timedelta(seconds=9)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = run_limited(env, "audit", "show", "--since", since, "--operation", "Encrypt")
    assert recent.returncode == 0, recent.stderr.decode()
    assert [json.loads(line)["chainSeq"] for line in recent.stdout.splitlines()] == list(range(records - 9,
                                                                                               records + 1))
    head = run_limited(env, "audit", "head")
    assert head.returncode == 0, head.stderr.decode()
    seq, mac = head.stdout.decode().strip().split(":")
    assert int(seq) == records + 2  # after verify's record and its own
    again = run_limited(env, "audit", "verify", "--head", f"{seq}:{mac}")
    assert again.returncode == 0, again.stderr.decode()
    assert f"intact: {records + 2} records".encode() in again.stderr


def test_a_bad_line_in_file_900_is_named_with_64_descriptors(env: dict[str, str], many_files) -> None:
    vault, _, _ = many_files
    seg = vault.with_name("audit.jsonl.000900")
    lines = seg.read_bytes().splitlines(keepends=True)
    seg.write_bytes(lines[0] + lines[1].replace(b'"n":', b'"n":1') + lines[2])
    r = run_limited(env, "audit", "verify")
    assert r.returncode == 8, r.stderr.decode()
    assert b"AuditVerificationException: file audit.jsonl.000900 line 2: chainMac does not match" in r.stderr
