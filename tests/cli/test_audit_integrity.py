"""The vault and its log vouch for each other: cuts, rollbacks, redirection, forgeries and restarts.

Each test reproduces a hole an outside review found (issue 12: items 3, 4, 5, 6)
through the real entry point, as someone who can write the vault's folder but
does not know the passphrase would attack it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, kmscli_command, ok


def log_of(vault: Path) -> Path:
    return vault.with_name("audit.jsonl")


def records(vault: Path) -> list[dict]:
    return [json.loads(line) for line in log_of(vault).read_bytes().splitlines()]


def new_key(kms: Runner, *args: str) -> str:
    return ok(kms("keys", "create", *args)).stdout.decode().strip()


def test_a_log_cut_behind_the_vaults_last_write_is_refused_not_continued(kms: Runner, vault: Path) -> None:
    for _ in range(3):
        new_key(kms)
    lines = log_of(vault).read_bytes().splitlines(keepends=True)
    log_of(vault).write_bytes(b"".join(lines[:2]))  # CreateVault and the first CreateKey only
    cut = log_of(vault).read_bytes()
    line = fails(kms("keys", "create"), 8, "AuditLogException")
    assert "cut or rolled back" in line and "record 2" in line and "record 4" in line
    assert log_of(vault).read_bytes() == cut  # nothing chained on from the cut
    fails(kms("keys", "list"), 8, "AuditLogException")
    fails(kms("audit", "verify"), 8, "AuditVerificationException")


def test_a_deleted_log_is_refused_and_not_recreated(kms: Runner, vault: Path) -> None:
    key = new_key(kms)
    ct = ok(kms("encrypt", "--key", key, input=b"x")).stdout
    log_of(vault).unlink()
    line = fails(kms("decrypt", input=ct), 8, "AuditLogException")
    assert "missing" in line and "audit restart" in line
    assert not log_of(vault).exists()


def test_an_older_copy_of_the_log_is_refused(kms: Runner, vault: Path) -> None:
    new_key(kms)
    old = log_of(vault).read_bytes()
    new_key(kms)
    new_key(kms)
    log_of(vault).write_bytes(old)
    fails(kms("keys", "list"), 8, "AuditLogException")


def test_an_older_copy_of_the_vault_is_refused(kms: Runner, vault: Path) -> None:
    """The review: a key scheduled for deletion came back by restoring an old vault file."""
    key = new_key(kms)
    old = vault.read_bytes()
    ok(kms("keys", "schedule-delete", key, "--days", "7"))
    vault.write_bytes(old)
    line = fails(kms("keys", "describe", key), 8, "AuditLogException")
    assert "older than its audit log" in line and "rolled back" in line
    fails(kms("encrypt", "--key", key, input=b"x"), 8)
    fails(kms("audit", "verify"), 8, "AuditVerificationException")


def test_the_very_last_write_rolled_back_is_caught(kms: Runner, vault: Path) -> None:
    """Rolling the vault back by exactly one write leaves every head the log holds: the generation tells."""
    key = new_key(kms)
    old = vault.read_bytes()
    ok(kms("keys", "disable", key))
    vault.write_bytes(old)
    fails(kms("keys", "enable", key), 8, "AuditLogException")


def test_rolling_back_both_files_is_caught_by_the_witness(kms: Runner, vault: Path, tmp_path: Path) -> None:
    new_key(kms)
    saved = tmp_path / "saved"
    saved.mkdir()
    shutil.copy2(vault, saved / "vault.kms")
    shutil.copy2(log_of(vault), saved / "audit.jsonl")
    key = new_key(kms)
    ok(kms("keys", "schedule-delete", key, "--days", "7"))
    witness = ok(kms("audit", "head")).stdout.decode().strip()
    seq, mac = witness.split(":")
    assert int(seq) == len(records(vault)) and len(mac) == 64
    assert records(vault)[-1]["eventName"] == "GetAuditHead" and records(vault)[-1]["chainMac"] == mac
    ok(kms("audit", "verify", "--head", witness))
    shutil.copy2(saved / "vault.kms", vault)
    shutil.copy2(saved / "audit.jsonl", log_of(vault))
    ok(kms("keys", "list"))  # consistent with each other: only the witness can tell
    line = fails(kms("audit", "verify", "--head", witness), 8, "AuditVerificationException")
    assert f"'audit head' printed record {seq}" in line
    fails(kms("audit", "verify", "--head", "not-a-head"), 2, "ValidationException")


def test_a_crash_between_the_vault_write_and_the_log_append_is_completed(kms: Runner, vault: Path) -> None:
    """The vault carries its last write's records: the next command appends what a crash kept out."""
    new_key(kms)
    before = log_of(vault).read_bytes()
    key = new_key(kms, "--alias", "alias/late")
    after = log_of(vault).read_bytes()
    log_of(vault).write_bytes(before)  # as if killed after the vault's rename, before the log's write
    ok(kms("keys", "describe", "alias/late"))
    assert log_of(vault).read_bytes().startswith(after)
    assert any(r["eventName"] == "CreateKey" and r["responseElements"]["keyId"] == key for r in records(vault))
    ok(kms("audit", "verify", "--strict"))


def test_the_log_cannot_be_redirected(kms: Runner, vault: Path, tmp_path: Path) -> None:
    key = new_key(kms)
    ct = ok(kms("encrypt", "--key", key, input=b"secret")).stdout
    other = tmp_path / "other.jsonl"
    line = fails(kms("--audit-log", str(other), "decrypt", input=ct), 2, "ValidationException")
    assert "fixed when the vault was created" in line
    fails(kms("decrypt", input=ct, env_update={"KMSCLI_AUDIT_LOG": str(other)}), 2, "ValidationException")
    assert not other.exists()
    attempts = [r for r in records(vault) if r["eventName"] == "Decrypt"]
    assert [r["errorCode"] for r in attempts] == ["ValidationException", "ValidationException"]
    # The same log named explicitly, or through a symlink to its folder, is fine.
    ok(kms("--audit-log", str(log_of(vault)), "keys", "list"))
    (tmp_path / "alias-dir").symlink_to(vault.parent)
    ok(kms("--audit-log", str(tmp_path / "alias-dir" / "audit.jsonl"), "keys", "list"))


def test_a_vault_named_through_a_symlink_records_beside_the_real_file(kms: Runner, vault: Path,
                                                                      tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "vault.kms").symlink_to(vault)
    key = ok(kms("keys", "create", env_update={"KMSCLI_VAULT": str(elsewhere / "vault.kms")})).stdout.decode()
    assert not (elsewhere / "audit.jsonl").exists() and not (elsewhere / "vault.kms.lock").exists()
    assert records(vault)[-1]["responseElements"]["keyId"] == key.strip()


def test_init_fixes_a_custom_log_location(kms: Runner, vault_dir: Path, tmp_path: Path) -> None:
    custom = tmp_path / "logs" / "kms-audit.jsonl"
    ok(kms("init", "--kdf-memory", "8", "--kdf-time", "1", "--audit-log", str(custom)))
    new_key(kms)  # no option needed afterwards
    assert [json.loads(x)["eventName"] for x in custom.read_bytes().splitlines()] == ["CreateVault", "CreateKey"]
    assert not (vault_dir / "audit.jsonl").exists()
    fails(kms("keys", "list", env_update={"KMSCLI_AUDIT_LOG": str(vault_dir / "audit.jsonl")}), 2)


def _unkeyed_line(prev: dict, **fields: object) -> bytes:
    """A record as someone without the key can make one: the unkeyed link over the last MAC."""
    rec = {"eventName": "Decrypt", "eventTime": "2026-12-01T00:00:00Z", "eventType": "AwsApiCall",
           "eventVersion": "1.08", "eventSource": "kms.local", "eventID": "00000000-0000-4000-8000-000000000000",
           "userIdentity": {"type": "LocalUser", "userName": "mallory"}, "requestParameters": {},
           "responseElements": {"keyId": "forged"}, "readOnly": False,
           "chainSeq": prev["chainSeq"] + 1, "chainPrev": prev["chainMac"], "keyed": False, **fields}
    body = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    mac = hashlib.sha256(b"kmscli-audit-unkeyed-link v1" + bytes.fromhex(prev["chainMac"]) + body).hexdigest()
    return json.dumps({**rec, "chainMac": mac}, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def test_a_forged_unkeyed_record_is_never_laundered(kms: Runner, vault: Path) -> None:
    new_key(kms)
    with log_of(vault).open("ab") as f:
        f.write(_unkeyed_line(records(vault)[-1]))
    forged_at = len(records(vault))
    new_key(kms)  # the owner's next command chains over it ...
    line = fails(kms("audit", "verify"), 8, "AuditVerificationException")
    assert line.startswith(f"kmscli: AuditVerificationException: line {forged_at}: ")  # ... and it is named
    assert "not a failed unlock" in line


def test_failed_unlocks_are_listed_as_unauthenticated_and_fail_strict(kms: Runner, vault: Path) -> None:
    fails(kms("keys", "list", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5)
    new_key(kms)
    r = ok(kms("audit", "verify"))
    assert b"1 failed unlock(s) written without the vault key, unauthenticated" in r.stderr
    assert b"line 2" in r.stderr
    line = fails(kms("audit", "verify", "--strict"), 8, "AuditVerificationException")
    assert line.startswith("kmscli: AuditVerificationException: line 2: ")


def test_audit_restart_starts_a_new_keyed_log_naming_the_old_head(kms: Runner, vault: Path) -> None:
    new_key(kms)
    head = records(vault)[-1]
    log_of(vault).write_bytes(b"garbage\n")
    fails(kms("keys", "list"), 8)
    fails(kms("audit", "restart", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5)
    r = ok(kms("audit", "restart"))
    assert b"started a new audit log" in r.stderr
    retired = [p.name for p in vault.parent.iterdir() if ".retired-" in p.name]
    assert len(retired) == 1 and (vault.parent / retired[0]).read_bytes().startswith(b"garbage\n")
    first = records(vault)[0]
    assert first["eventName"] == "RestartAuditLog" and first["keyed"] is True and first["chainSeq"] == 1
    assert first["requestParameters"]["previousHead"]["seq"] == head["chainSeq"]
    assert first["requestParameters"]["previousHead"]["mac"] == head["chainMac"]
    new_key(kms)
    ok(kms("audit", "verify", "--strict"))


def test_decrypt_records_before_the_first_plaintext_byte(kms: Runner, vault: Path, env: dict[str, str],
                                                         tmp_path: Path) -> None:
    """A decrypt stopped half-way still leaves its record: written before any plaintext left."""
    key = new_key(kms)
    ct_file = tmp_path / "big.kms"
    ct_file.write_bytes(ok(kms("encrypt", "--key", key, input=os.urandom(16 << 20))).stdout)
    n_before = len(records(vault))
    with ct_file.open("rb") as ct:
        # Nobody reads stdout: the child blocks once the pipe is full, mid-stream.
        p = subprocess.Popen([*kmscli_command(), "decrypt"], stdin=ct, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            first = p.stdout.read(1) if p.stdout else b""  # the first plaintext byte has left ...
            assert len(first) == 1
            got = records(vault)[n_before:]
            assert [r["eventName"] for r in got] == ["Decrypt"]  # ... and its record was already on disk
            assert got[0]["responseElements"]["keyId"] == key and "errorCode" not in got[0]
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=120)
    ok(kms("audit", "verify"))


def test_a_decrypt_that_fails_after_output_began_records_the_outcome_after(kms: Runner, vault: Path) -> None:
    key = new_key(kms)
    ct = bytearray(ok(kms("encrypt", "--key", key, input=os.urandom(3 << 20))).stdout)
    ct[-40] ^= 1  # the last chunk is damaged: earlier chunks were released
    fails(kms("decrypt", input=bytes(ct)), 6, "InvalidCiphertextException")
    first, outcome = records(vault)[-2:]
    assert first["eventName"] == outcome["eventName"] == "Decrypt"
    assert "errorCode" not in first
    assert outcome["errorCode"] == "InvalidCiphertextException"
    assert outcome["requestParameters"]["outcomeOf"] == first["eventID"]


def test_a_closed_pipe_during_decrypt_leaves_the_record(kms: Runner, vault: Path, env: dict[str, str],
                                                        tmp_path: Path) -> None:
    key = new_key(kms)
    ct = tmp_path / "c.kms"
    ct.write_bytes(ok(kms("encrypt", "--key", key, input=os.urandom(8 << 20))).stdout)
    cmd = f"{' '.join(kmscli_command())} decrypt -i {ct} | head -c 10 > /dev/null"
    subprocess.run(["bash", "-c", cmd], env=env, timeout=120, check=False, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(r["eventName"] == "Decrypt" for r in records(vault)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(r["eventName"] == "Decrypt" for r in records(vault))
    ok(kms("audit", "verify"))


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777])
def test_a_vault_folder_others_can_write_is_refused(kms: Runner, vault: Path, mode: int) -> None:
    os.chmod(vault.parent, mode)
    try:
        line = fails(kms("keys", "list"), 8)
        assert str(vault.parent) in line and "writable by group or others" in line
    finally:
        os.chmod(vault.parent, 0o700)
    ok(kms("keys", "list"))
