"""The audit log through the real entry point: what is recorded, what never is, and tamper evidence."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import CHEAP_KDF, PASSPHRASE, Runner, fails, ok
from tests.vault_contents import contents


def records(kms: Runner, *args: str) -> list[dict]:
    out = ok(kms("audit", "show", *args)).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def log_path(vault: Path) -> Path:
    return vault.with_name("audit.jsonl")


def new_key(kms: Runner, *args: str, env_update: dict[str, str] | None = None) -> str:
    return ok(kms("keys", "create", *args, env_update=env_update)).stdout.decode().strip()


def master_keys(vault: Path, passphrase: str = PASSPHRASE) -> list[bytes]:
    """The vault key and every key's material, read straight from the vault: never to show up elsewhere."""
    doc, vault_key = contents(vault, passphrase)
    return [vault_key] + [base64.b64decode(m["Material"]) for k in doc["keys"].values() for m in k["Materials"]]


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret could be written into a text log."""
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")]


def test_every_outcome_is_recorded(kms: Runner, vault: Path) -> None:
    key = new_key(kms, "--alias", "alias/app")
    ct = ok(kms("encrypt", "--key", key, "-c", "app=web", input=b"data")).stdout
    ok(kms("decrypt", "-c", "app=web", input=ct))
    fails(kms("keys", "describe", "alias/nope"), 3)
    fails(kms("keys", "schedule-delete", key, "--days", "6"), 2)
    fails(kms("decrypt", input=ct), 6)  # wrong (missing) context
    ok(kms("keys", "disable", key))
    fails(kms("encrypt", "--key", key, input=b"x"), 4)
    fails(kms("keys", "list", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5)
    ok(kms("keys", "enable", key))
    deny = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}]}
    ok(kms("policy", "put", key, "-", input=json.dumps(deny).encode()))
    fails(kms("encrypt", "--key", key, input=b"x"), 7)

    got = [(r["eventName"], r.get("errorCode")) for r in records(kms)]
    assert got == [
        ("CreateVault", None), ("CreateKey", None), ("Encrypt", None), ("Decrypt", None),
        ("DescribeKey", "NotFoundException"), ("ScheduleKeyDeletion", "ValidationException"),
        ("Decrypt", "InvalidCiphertextException"), ("DisableKey", None), ("Encrypt", "DisabledException"),
        ("ListKeys", "IncorrectPassphraseException"),
        ("EnableKey", None), ("PutKeyPolicy", None), ("Encrypt", "AccessDeniedException"),
    ]
    failed_unlock = records(kms)[9]
    assert failed_unlock["keyed"] is False and failed_unlock["errorCode"]
    assert "accountId" not in failed_unlock["userIdentity"]  # nothing from inside the vault without its key
    enc = records(kms, "--operation", "Encrypt")[0]
    assert enc["requestParameters"]["encryptionContext"] == {"app": "web"}
    assert enc["requestParameters"]["inputBytes"] == 4
    assert enc["userIdentity"]["uid"] == os.getuid() and enc["userIdentity"]["pid"] > 0
    assert enc["eventTime"].endswith("Z") and enc["eventSource"] == "kms.local"
    ok(kms("audit", "verify"))


def test_record_fields_follow_cloudtrail(kms: Runner, vault: Path) -> None:
    key = new_key(kms, "-d", "billing")
    rec = records(kms, "--operation", "CreateKey")[0]
    for field in ("eventVersion", "eventTime", "eventName", "eventID", "eventSource", "userIdentity",
                  "requestParameters", "responseElements", "chainSeq", "chainPrev", "chainMac"):
        assert field in rec, field
    assert rec["responseElements"]["keyId"] == key
    assert "errorCode" not in rec


def test_no_secret_ever_reaches_the_log(kms: Runner, vault: Path, tmp_path: Path) -> None:
    """A full session, then the log is searched for every secret it handled, in every encoding."""
    plaintext = os.urandom(48)
    key = new_key(kms, "--alias", "alias/app")
    other = new_key(kms)
    ct = ok(kms("encrypt", "--key", key, "-c", "a=b", input=plaintext)).stdout
    assert ok(kms("decrypt", "-c", "a=b", input=ct)).stdout == plaintext
    armored = ok(kms("reencrypt", "--key", other, "--source-context", "a=b", "--armor", input=ct)).stdout
    ok(kms("decrypt", input=armored))
    dk = json.loads(ok(kms("datakey", key, "--json")).stdout)
    dk2 = json.loads(ok(kms("datakey", key, "--bytes", "64", "--no-plaintext", "--json")).stdout)
    ok(kms("keys", "rotate", key))
    newpass = tmp_path / "newpass"
    newpass.write_text("a much better passphrase\n")
    ok(kms("passwd", "--new-passphrase-file", str(newpass)))
    fails(kms("keys", "list"), 5)  # the old passphrase, now wrong
    ok(kms("keys", "list", env_update={"KMSCLI_PASSPHRASE": "a much better passphrase"}))

    log = log_path(vault).read_bytes()
    secrets = [plaintext, ct[-64:], armored.splitlines()[2], base64.b64decode(dk["Plaintext"]),
               base64.b64decode(dk["CiphertextBlob"])[-48:], base64.b64decode(dk2["CiphertextBlob"])[-48:]]
    for secret in secrets + master_keys(vault, "a much better passphrase"):
        for form in forms(secret):
            assert form not in log, secret
    for phrase in (PASSPHRASE, "a much better passphrase"):
        assert phrase.encode() not in log
    assert b'"Plaintext"' not in log and b'"CiphertextBlob"' not in log
    assert stat.S_IMODE(log_path(vault).stat().st_mode) == 0o600


def _lines(vault: Path) -> list[bytes]:
    return log_path(vault).read_bytes().splitlines(keepends=True)


def _tampered(kms: Runner, vault: Path, lines: list[bytes]) -> str:
    log_path(vault).write_bytes(b"".join(lines))
    return fails(kms("audit", "verify"), 8, "AuditVerificationException")


@pytest.fixture
def busy_vault(kms: Runner, vault: Path) -> Path:
    key = new_key(kms)
    for i in range(3):
        ok(kms("encrypt", "--key", key, input=b"%d" % i))
    ok(kms("keys", "disable", key))  # a vault write: the chain head moves into the vault
    return vault


@pytest.mark.parametrize("how", ["edit", "delete", "swap", "insert", "duplicate", "truncate_tail"])
def test_verify_names_the_first_bad_line(kms: Runner, busy_vault: Path, how: str) -> None:
    lines = _lines(busy_vault)
    n = len(lines)
    assert n == 6
    if how == "edit":
        lines[2] = lines[2].replace(b'"inputBytes":1', b'"inputBytes":9')
        assert b'"inputBytes":9' in lines[2]
        want = "line 3"
    elif how == "delete":
        del lines[3]
        want = "line 4"
    elif how == "swap":
        lines[2], lines[3] = lines[3], lines[2]
        want = "line 3"
    elif how == "insert":
        lines.insert(1, lines[4])
        want = "line 2"
    elif how == "duplicate":
        lines.insert(3, lines[2])
        want = "line 4"
    else:
        # The last two records are cut off: the DisableKey that moved the vault's head and an Encrypt.
        # (Cutting only the last write's records gives them back: the vault carries them, see below.)
        lines = lines[:-2]
        want = f"line {n - 1}"
    line = _tampered(kms, busy_vault, lines)
    assert want in line, line


def test_log_of_another_vault_is_refused(kms: Runner, busy_vault: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "vault.kms"
    env = {"KMSCLI_VAULT": str(other)}
    ok(kms("init", *CHEAP_KDF, env_update=env))
    ok(kms("keys", "create", env_update=env))
    log_path(busy_vault).write_bytes(log_path(other).read_bytes())
    line = fails(kms("audit", "verify"), 8, "AuditVerificationException")
    assert "line 1" in line


def test_verify_reports_the_count(kms: Runner, busy_vault: Path) -> None:
    r = ok(kms("audit", "verify"))
    assert r.stdout == b""
    assert b"intact: 6 records in 1 file(s); every record written with the vault key" in r.stderr
    assert records(kms)[-1]["eventName"] == "VerifyAuditLog"  # recorded after it checked


def test_fail_closed_when_the_log_cannot_be_written(kms: Runner, vault: Path, tmp_path: Path) -> None:
    key = new_key(kms)
    ct = ok(kms("encrypt", "--key", key, input=b"payload")).stdout
    before = vault.read_bytes()
    # A folder in place of the log: nothing can be appended, whoever runs the test (root included).
    log = log_path(vault)
    saved = log.read_bytes()
    log.unlink()
    log.mkdir()
    fails(kms("keys", "create"), 8, "AuditLogException")
    fails(kms("keys", "disable", key), 8, "AuditLogException")
    assert vault.read_bytes() == before  # neither change happened
    out = tmp_path / "secret.txt"
    fails(kms("decrypt", "-o", str(out), input=ct), 8, "AuditLogException")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kms"]  # no temp file left
    log.rmdir()
    log.write_bytes(saved)
    os.chmod(log, 0o600)
    assert json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]["KeyState"] == "Enabled"


def test_show_filters(kms: Runner, vault: Path) -> None:
    a = new_key(kms, "--alias", "alias/a")
    b = new_key(kms)
    ok(kms("encrypt", "--key", "alias/a", input=b"x"))
    ok(kms("encrypt", "--key", b, input=b"x"))
    assert [r["eventName"] for r in records(kms, "--key", a)] == ["CreateKey", "Encrypt"]
    assert [r["eventName"] for r in records(kms, "--key", "alias/a")][-1] == "Encrypt"
    assert len(records(kms, "--operation", "encrypt")) == 2
    assert records(kms, "--since", "2000-01-01T00:00:00Z") == records(kms)
    assert records(kms, "--since", "1h") == records(kms)
    assert records(kms, "--since", "2999-01-01T00:00:00Z") == []
    fails(kms("audit", "show", "--since", "yesterday"), 2, "ValidationException")


def test_show_needs_no_passphrase(kms: Runner, vault: Path) -> None:
    new_key(kms)
    r = ok(kms("audit", "show", env_remove=("KMSCLI_PASSPHRASE",)))
    assert len(r.stdout.splitlines()) == 2


def test_missing_log_and_missing_vault(kms: Runner, vault: Path) -> None:
    new_key(kms)
    ok(kms("keys", "list"))
    log_path(vault).unlink()
    line = fails(kms("audit", "verify"), 8)
    assert "line" in line or "missing" in line or "head" in line
    assert not log_path(vault).exists()


def test_the_records_of_the_last_write_come_back_from_the_vault(kms: Runner, busy_vault: Path) -> None:
    """The vault carries its last write's records: cutting exactly those hides nothing (they return)."""
    lines = _lines(busy_vault)
    log_path(busy_vault).write_bytes(b"".join(lines[:-1]))
    ok(kms("audit", "verify", "--strict"))
    assert _lines(busy_vault)[: len(lines)] == lines


def test_log_rotates_at_the_configured_size(kms: Runner, vault: Path) -> None:
    small = {"KMSCLI_AUDIT_MAX_SIZE": "2K"}
    key = new_key(kms, env_update=small)
    for _ in range(8):
        ok(kms("encrypt", "--key", key, input=b"x", env_update=small))
    files = sorted(p.name for p in vault.parent.glob("audit.jsonl*") if not p.name.endswith(".lock"))
    assert len(files) >= 3 and files[0] == "audit.jsonl"
    assert all(p.stat().st_size <= 2048 for p in vault.parent.glob("audit.jsonl.0*"))
    r = ok(kms("audit", "verify", env_update=small))
    assert b"%d file(s)" % len(files) in r.stderr
    assert len(records(kms)) == 11  # show reads every file, oldest first
    older = next(p for p in sorted(vault.parent.glob("audit.jsonl.0*")) if b'"inputBytes":1' in p.read_bytes())
    older.write_bytes(older.read_bytes().replace(b'"inputBytes":1', b'"inputBytes":2', 1))
    line = fails(kms("audit", "verify"), 8, "AuditVerificationException")
    assert older.name in line
    fails(kms("keys", "list", env_update={"KMSCLI_AUDIT_MAX_SIZE": "lots"}), 2, "ValidationException")


def test_init_refuses_an_orphan_log(kms: Runner, vault_dir: Path) -> None:
    vault_dir.mkdir()
    orphan = vault_dir / "audit.jsonl"
    orphan.write_bytes(b'{"old":"log"}\n')
    orphan.chmod(0o600)
    line = fails(kms("init", *CHEAP_KDF), 9, "AlreadyExistsException")
    assert "audit log" in line
    assert orphan.read_bytes() == b'{"old":"log"}\n' and not (vault_dir / "vault.kms").exists()
    orphan.rename(vault_dir / "audit.jsonl.kept")
    ok(kms("init", *CHEAP_KDF))
    ok(kms("audit", "verify"))


def test_show_key_finds_every_record_of_the_key_however_it_was_named(kms: Runner, vault: Path,
                                                                    tmp_path: Path) -> None:
    """Issue 15: `audit show --key alias/app` showed no Decrypt (a ciphertext names its key by id) and
    `--key KEY_ID` missed every failed decrypt (the key is only in `resources`)."""
    first = new_key(kms, "--alias", "alias/app")
    second = new_key(kms)
    ct = ok(kms("encrypt", "--key", "alias/app", "-c", "app=web", input=b"secret")).stdout
    ok(kms("decrypt", "-c", "app=web", input=ct))
    fails(kms("decrypt", "-c", "app=other", input=ct), 6, "InvalidCiphertextException")
    deny = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "No decrypt", "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"}]}
    (tmp_path / "deny.json").write_text(json.dumps(deny))
    ok(kms("policy", "put", first, str(tmp_path / "deny.json")))
    fails(kms("decrypt", "-c", "app=web", input=ct), 7, "AccessDeniedException")
    ok(kms("alias", "update", "alias/app", second))  # from here alias/app stands for the second key
    ct2 = ok(kms("encrypt", "--key", second, input=b"other")).stdout
    ok(kms("decrypt", input=ct2))

    def shown(*args: str) -> list[tuple[str, str | None]]:
        return [(r["eventName"], r.get("errorCode")) for r in records(kms, "--key", *args)]

    decrypts_of_first = [("Decrypt", None), ("Decrypt", "InvalidCiphertextException"),
                         ("Decrypt", "AccessDeniedException")]
    by_id = shown(first)
    assert [e for e in by_id if e[0] == "Decrypt"] == decrypts_of_first
    by_alias = shown("alias/app")
    # The first key's decrypts while alias/app stood for it, then the second key's after the update.
    assert [e for e in by_alias if e[0] == "Decrypt"] == [*decrypts_of_first, ("Decrypt", None)]
    assert ("UpdateAlias", None) in by_alias and ("Encrypt", None) in by_alias
    assert [e for e in shown("alias/app", "--operation", "decrypt")] == [*decrypts_of_first, ("Decrypt", None)]


def test_show_refuses_an_operation_nobody_records(kms: Runner, vault: Path) -> None:
    line = fails(kms("audit", "show", "--operation", "Decrpyt"), 2, "ValidationException")
    assert "--operation 'Decrpyt' is no operation kmscli records" in line
    ok(kms("audit", "show", "--operation", "createvault"))  # case-insensitive, kmscli's own events too


def _screen_lines(screen: bytes) -> list[str]:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", screen.decode())  # Rich's bold header: the text is what counts
    return text.replace("\r\n", "\n").rstrip("\n").split("\n")


def test_audit_show_reads_on_an_80_column_terminal(kms: Runner, env: dict[str, str], vault: Path) -> None:
    """Issue 15: at 80 columns the table broke every timestamp in two and said nothing of why a call failed."""
    from rich.cells import cell_len

    from tests.cli.test_hygiene_terminal import on_terminal

    key = new_key(kms, "--alias", "alias/app")
    fails(kms("keys", "describe", "alias/nope"), 3, "NotFoundException")
    fails(kms("keys", "list", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5, "IncorrectPassphraseException")
    fails(kms("keys", "schedule-delete", key, "--days", "3"), 2, "ValidationException")
    ok(kms("encrypt", "--key", "alias/app", input=b"x"))
    code, screen, err = on_terminal(["audit", "show"], env, columns=80)
    assert code == 0 and err == b"", err
    lines = _screen_lines(screen)
    assert max(cell_len(line) for line in lines) <= 80, screen
    words = " ".join(lines).split()
    firsts = [line for line in lines if line[:1].isdigit()]  # each record's first line starts with its time
    recs = records(kms)
    assert len(firsts) == len(recs), screen
    for r, line in zip(recs, firsts, strict=True):
        # Every time whole, on its record's line, with its operation beside it (cut with an ellipsis or not).
        assert line.startswith(r["eventTime"] + " "), line
        assert r["eventName"].startswith(line.split()[1].rstrip("\u2026")), line
        if "errorCode" in r:
            assert f"{r['errorCode']}:" in line  # the error code, unbroken, on the record's first line
            what = r["errorMessage"].split("; ")[0]
            assert all(w in words for w in what.split() if len(w) < 29), (what, screen)
    assert "check it and try again" not in " ".join(lines)  # what happened, not what to do: --json has it all
    assert lines[0].strip() == f"Audit log of {records(kms)[0]['userIdentity']['userName']}"
    assert lines[1].split() == ["Time", "Operation", "Key", "Result"]  # one user: named in the title


def test_audit_show_has_a_user_column_when_records_name_several(kms: Runner, env: dict[str, str],
                                                                vault: Path) -> None:
    # audit show shows what the file says (audit verify proves it): a record of another user, as a log
    # shared by two users (or edited) would hold, is enough to need the column.
    first = log_path(vault).read_text().splitlines()[0]
    other = json.loads(first)
    other["userIdentity"]["userName"] = "somebody-else"
    other["eventName"] = "ScheduleKeyDeletion"
    with log_path(vault).open("a") as f:
        f.write(json.dumps(other) + "\n")
    from tests.cli.test_hygiene_terminal import on_terminal

    code, screen, err = on_terminal(["audit", "show"], env, columns=80)
    assert code == 0, err
    lines = _screen_lines(screen)
    assert lines[0].strip() == "Audit log"
    assert lines[1].split() == ["Time", "Operation", "User", "Key", "Result"]
    assert any(other["eventTime"] in line and "somebody-" in line for line in lines), screen
    assert max(len(line) for line in lines) <= 80
