"""``kmscli vault backup OUT`` and ``kmscli vault restore IN [--force]``, through the real entry point.

A backup is a consistent, still-encrypted copy of the vault and its log taken
under the lock (docs/vault.md, "Backups"); restoring an older copy over a
newer vault is a rollback, refused without --force and then changing nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, Runner, clean_env, fails, kmscli_command, ok


def log_of(vault: Path) -> Path:
    return vault.with_name("audit.jsonl")


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_bytes().splitlines()]


def new_key(kms: Runner, *args: str) -> str:
    return ok(kms("keys", "create", *args)).stdout.decode().strip()


def key_ids(kms: Runner, *args: str) -> set[str]:
    return {k["KeyId"] for k in json.loads(ok(kms(*args, "keys", "list", "--all", "--json")).stdout)["Keys"]}


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` by name with its bytes, but SQLite's WAL index (any reader may leave it)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.endswith("-shm"):
            continue
        if p.name.endswith("-wal"):
            assert p.stat().st_size == 0, p  # a reader's empty WAL: nothing in it
            continue
        out[p.name] = p.read_bytes()
    return out


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def rebuild(archive: Path, out: Path, change: dict[str, bytes], *, fix_manifest: bool) -> None:
    """``archive`` with some members' bytes replaced (and, with ``fix_manifest``, their hashes recomputed)."""
    found = members(archive)
    found.update(change)
    manifest = json.loads(found["manifest.json"])
    if fix_manifest:
        for m in manifest["members"]:
            m["size"], m["sha256"] = len(found[m["name"]]), hashlib.sha256(found[m["name"]]).hexdigest()
        found["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in found.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def populated(kms: Runner, vault: Path, tmp_path: Path) -> dict[str, object]:
    """A vault with a key under an alias and a ciphertext made under it."""
    key = new_key(kms, "--alias", "alias/app")
    ct = ok(kms("encrypt", "--key", "alias/app", input=b"made before the backup")).stdout
    return {"key": key, "ct": ct}


def backup(kms: Runner, out: Path, *args: str) -> Path:
    ok(kms("vault", "backup", str(out), *args))
    return out


# -- consistency under the lock -------------------------------------------------------------
def test_a_backup_taken_while_four_writers_run_restores_to_a_pair_that_verifies(
        kms: Runner, vault: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Four processes create keys and encrypt while the backup runs; the archive is one consistent moment."""
    new_key(kms, "--alias", "alias/app")
    stop = tmp_path / "stop"
    script = ('i=0; while [ ! -e "$STOP" ]; do "$@" keys create >/dev/null || exit 1; '
              'echo x | "$@" encrypt --key alias/app >/dev/null || exit 1; i=$((i+1)); echo $i > "$COUNT"; done')
    workers, counts = [], []
    for n in range(4):
        count = tmp_path / f"count{n}"
        counts.append(count)
        workers.append(subprocess.Popen(["sh", "-c", script, "sh", *kmscli_command()],
                                        env={**env, "STOP": str(stop), "COUNT": str(count)},
                                        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))

    def done() -> list[int]:
        return [int(c.read_text() or 0) if c.exists() else 0 for c in counts]

    def wait_for(pred: object) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while not pred() and time.monotonic() < deadline:  # type: ignore[operator]
            assert all(w.poll() is None for w in workers), [w.stderr.read() for w in workers if w.poll()]
            time.sleep(0.05)

    try:
        wait_for(lambda: all(n >= 1 for n in done()))  # every writer is running
        before = done()
        archive = backup(kms, tmp_path / "busy.tar")
        wait_for(lambda: all(a > b for a, b in zip(done(), before, strict=True)))  # and still runs after it
    finally:
        stop.touch()
        for w in workers:
            w.wait(timeout=HANG_GUARD_S)
    assert [w.returncode for w in workers] == [0, 0, 0, 0], [w.stderr.read() for w in workers]

    elsewhere = tmp_path / "restored" / "vault.kms"
    ok(kms("--vault", str(elsewhere), "vault", "restore", str(archive)))
    ok(kms("--vault", str(elsewhere), "audit", "verify", "--strict"))
    # The vault holds exactly the keys whose creation its log records: nothing in one is missing from the other.
    created = {r["responseElements"]["keyId"] for r in records(log_of(elsewhere))
               if r["eventName"] == "CreateKey" and not r.get("errorCode")}
    listed = key_ids(kms, "--vault", str(elsewhere))
    assert listed == created and len(created) > 1
    ok(kms("--vault", str(elsewhere), "keys", "create"))
    ok(kms("--vault", str(elsewhere), "encrypt", "--key", "alias/app", input=b"y"))
    ok(kms("--vault", str(elsewhere), "audit", "verify"))


# -- round trip and rollback ------------------------------------------------------------------
def test_restore_force_brings_back_the_old_keys_and_old_ciphertexts_decrypt(
        kms: Runner, vault: Path, populated: dict, tmp_path: Path) -> None:
    archive = backup(kms, tmp_path / "b.tar")
    keys_then = key_ids(kms)
    later = new_key(kms, "--alias", "alias/later")
    ok(kms("keys", "rotate", "alias/app"))
    ok(kms("alias", "delete", "alias/app"))
    ok(kms("keys", "schedule-delete", populated["key"], "--days", "7"))
    line = fails(kms("vault", "restore", str(archive)), 8, "VaultRollbackException")
    assert "--force" in line

    r = ok(kms("vault", "restore", "--force", str(archive)))
    assert key_ids(kms) == keys_then and later not in keys_then
    assert ok(kms("decrypt", input=populated["ct"])).stdout == b"made before the backup"
    state = json.loads(ok(kms("keys", "describe", "alias/app", "--json")).stdout)["KeyMetadata"]["KeyState"]
    assert state == "Enabled"
    assert len(json.loads(ok(kms("keys", "rotations", "alias/app", "--json")).stdout)["Rotations"]) == 1
    ok(kms("audit", "verify", "--strict"))
    # what was replaced is kept aside, and the replaced pair still verifies as the pair it was
    kept = sorted(p.name for p in vault.parent.iterdir() if ".replaced-" in p.name)
    assert [n.split(".replaced-")[0] for n in kept] == ["audit.jsonl", "vault.kms"]
    assert all(k in r.stderr.decode() for k in kept)
    assert all(stat.S_IMODE(vault.with_name(k).stat().st_mode) == 0o600 for k in kept)
    aside = tmp_path / "aside"
    aside.mkdir(mode=0o700)
    for k in kept:
        os.link(vault.with_name(k), aside / k.split(".replaced-")[0])
    assert later in key_ids(kms, "--vault", str(aside / "vault.kms"))


def test_restore_over_a_newer_vault_is_refused_and_changes_nothing(
        kms: Runner, vault: Path, populated: dict, tmp_path: Path) -> None:
    archive = backup(kms, tmp_path / "b.tar")
    new_key(kms)
    before = files_of(vault.parent)
    line = fails(kms("vault", "restore", str(archive)), 8, "VaultRollbackException")
    assert "newer than the backup" in line and "--force" in line
    assert files_of(vault.parent) == before  # byte for byte: vault, log and no file kept aside or staged
    ok(kms("audit", "verify"))


def test_restore_over_a_log_that_goes_further_is_refused(kms: Runner, vault: Path, populated: dict,
                                                         tmp_path: Path) -> None:
    """No vault write since the backup, but records were appended (an Encrypt): restoring would cut them."""
    archive = backup(kms, tmp_path / "b.tar")
    ok(kms("encrypt", "--key", "alias/app", input=b"after"))
    before = files_of(vault.parent)
    line = fails(kms("vault", "restore", str(archive)), 8, "VaultRollbackException")
    assert "goes further than the backup" in line and "--force" in line
    assert files_of(vault.parent) == before


def test_restore_over_another_vault_or_another_passphrase_needs_force(
        kms: Runner, vault: Path, populated: dict, tmp_path: Path) -> None:
    archive = backup(kms, tmp_path / "b.tar")
    other = tmp_path / "other" / "vault.kms"
    ok(kms("--vault", str(other), "init", *CHEAP_KDF))
    before = files_of(other.parent)
    line = fails(kms("--vault", str(other), "vault", "restore", str(archive)), 8, "VaultRollbackException")
    assert "another vault" in line
    assert files_of(other.parent) == before
    ok(kms("--vault", str(other), "vault", "restore", "--force", str(archive)))
    assert ok(kms("--vault", str(other), "decrypt", input=populated["ct"])).stdout == b"made before the backup"

    ok(kms("passwd", env_update={"KMSCLI_NEW_PASSPHRASE": "a new one"}))
    line = fails(kms("vault", "restore", str(archive)), 8, "VaultRollbackException")
    assert "does not open with this passphrase" in line


def test_restore_needs_the_passphrase_that_opens_the_backup(kms: Runner, vault: Path, populated: dict,
                                                                   tmp_path: Path) -> None:
    archive = backup(kms, tmp_path / "b.tar")
    target = tmp_path / "new" / "vault.kms"
    fails(kms("--vault", str(target), "vault", "restore", str(archive), env_update={"KMSCLI_PASSPHRASE": "wrong"}),
          5, "IncorrectPassphraseException")
    assert not target.exists() and os.listdir(target.parent) == []  # the staged copy is gone too
    fails(kms("--vault", str(target), "vault", "restore", str(archive), env_remove=("KMSCLI_PASSPHRASE",)),
          5, "PassphraseRequiredException")


def test_a_call_that_opened_the_replaced_vault_records_nothing_in_the_restored_log(
        kms: Runner, vault: Path, populated: dict, tmp_path: Path) -> None:
    """The in-process seam: a call that read the newer vault before the restore, and records after it."""
    from kmscli import errors
    from kmscli.service import Kms
    from kmscli.service._core import Call
    from kmscli.vault.store import PassphraseKeySource

    archive = backup(kms, tmp_path / "b.tar")
    new_key(kms)
    new_key(kms)  # two writes: the vault now is newer than the restore will leave it
    svc = Kms(vault, PassphraseKeySource(lambda: PASSPHRASE.encode()))
    ov = svc._open_recording(Call("Encrypt", {}))
    try:
        ok(kms("vault", "restore", "--force", str(archive)))
        restored = log_of(vault).read_bytes()
        with pytest.raises(errors.AuditLogException, match="replaced by an older copy"):
            svc._record(ov, Call("Encrypt", {}))
    finally:
        ov.close()
        svc.store.close()
    assert log_of(vault).read_bytes() == restored
    ok(kms("audit", "verify", "--strict"))


def test_a_restore_that_fails_while_putting_files_in_place_leaves_the_old_pair(
        kms: Runner, vault: Path, populated: dict, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The vault's rename fails after the log's files were renamed in: those renames are undone."""
    from kmscli import errors
    from kmscli.vault.store import VaultStore
    from tests.faults._inproc import run_cli

    archive = backup(kms, tmp_path / "b.tar")
    new_key(kms)
    before = files_of(vault.parent)

    def broken(self: VaultStore, staged: Path, keep_old_as: Path | None) -> None:
        raise errors.VaultFileError("injected: the vault could not be renamed")

    monkeypatch.setattr(VaultStore, "install", broken)
    r = run_cli(["vault", "restore", "--force", str(archive)], env)
    assert r.returncode == 8 and "injected" in r.err, r.err
    assert files_of(vault.parent) == before  # the old log is back under its name; no staging folder is left
    ok(kms("audit", "verify", "--strict"))


# -- damaged and forged archives -------------------------------------------------------------
def flip_in_sealed_meta(vault_file: bytes, tmp_path: Path) -> bytes:
    """The vault file with one bit of its sealed metadata flipped (where the generation and tree root are)."""
    import sqlite3

    copy = tmp_path / "peek.kms"
    copy.write_bytes(vault_file)
    with contextlib.closing(sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)) as conn:
        sealed = conn.execute("SELECT sealed FROM meta").fetchone()[0]
    at = vault_file.index(sealed) + len(sealed) // 2
    return vault_file[:at] + bytes([vault_file[at] ^ 1]) + vault_file[at + 1 :]


@pytest.mark.parametrize(("what", "fix_manifest", "needle"), [
    ("vault", False, "does not match its SHA-256"),
    ("log", False, "does not match its SHA-256"),
    ("vault", True, "its vault does not open"),  # hashes recomputed: the vault's own authentication catches it
    ("log", True, "fails verification"),         # hashes recomputed: the log's chain catches it
    ("manifest", True, "differ from its vault's own"),
])
def test_a_tampered_archive_is_refused_and_nothing_changes(kms: Runner, vault: Path, populated: dict,
                                                            tmp_path: Path, what: str, fix_manifest: bool,
                                                            needle: str) -> None:
    archive = backup(kms, tmp_path / "b.tar")
    found = members(archive)
    if what == "vault":
        change = {"vault.kms": flip_in_sealed_meta(found["vault.kms"], tmp_path)}
    elif what == "log":
        log = found["log/audit.jsonl"]
        change = {"log/audit.jsonl": log.replace(b'"keySpec":"SYMMETRIC_DEFAULT"', b'"keySpec":"SYMMETRIC_DEFAULX"')}
        assert change["log/audit.jsonl"] != log
    else:
        manifest = json.loads(found["manifest.json"])
        manifest["vault"]["generation"] = 1
        change = {"manifest.json": json.dumps(manifest).encode()}
    bad = tmp_path / "bad.tar"
    rebuild(archive, bad, change, fix_manifest=fix_manifest)
    before = files_of(vault.parent)
    line = fails(kms("vault", "restore", "--force", str(bad)), 8)
    assert needle in line, line
    assert files_of(vault.parent) == before
    target = tmp_path / "new" / "vault.kms"
    fails(kms("--vault", str(target), "vault", "restore", str(bad)), 8)
    assert not target.exists()


@pytest.mark.parametrize(("vault_from", "needle"), [("older", "disagree: the vault is older than its audit log"),
                                                     ("newer", "records were removed from the end")])
def test_an_archive_mixing_two_moments_is_refused(kms: Runner, vault: Path, populated: dict, tmp_path: Path,
                                                  vault_from: str, needle: str) -> None:
    """Each member intact and the manifest made to match: the vault and the log still vouch for each other."""
    old = members(backup(kms, tmp_path / "old.tar"))
    new_key(kms)
    new = members(backup(kms, tmp_path / "new.tar"))
    vault_side, log_side = (old, new) if vault_from == "older" else (new, old)
    manifest = json.loads(vault_side["manifest.json"])
    manifest["log"] = json.loads(log_side["manifest.json"])["log"]
    mixed = tmp_path / "mixed.tar"
    rebuild(tmp_path / "new.tar", mixed, {"vault.kms": vault_side["vault.kms"],
                                          "log/audit.jsonl": log_side["log/audit.jsonl"],
                                          "manifest.json": json.dumps(manifest).encode()}, fix_manifest=True)
    target = tmp_path / "elsewhere" / "vault.kms"
    line = fails(kms("--vault", str(target), "vault", "restore", str(mixed)), 8, "VaultCorruptException")
    assert needle in line, line
    assert not target.exists()


@pytest.mark.parametrize("cut", ["short", "garbage", "empty"])
def test_a_cut_or_foreign_archive_is_refused(kms: Runner, vault: Path, tmp_path: Path, cut: str) -> None:
    archive = backup(kms, tmp_path / "b.tar")
    data = archive.read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes({"short": data[: len(data) // 2], "garbage": b"not a tar at all\n" * 100, "empty": b""}[cut])
    line = fails(kms("vault", "restore", "--force", str(bad)), 8, "VaultCorruptException")
    assert "not a kmscli backup" in line
    ok(kms("audit", "verify"))


# -- where the archive goes --------------------------------------------------------------
def test_backup_file_is_0600_and_a_planted_link_is_never_followed(kms: Runner, vault: Path, env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "umask000" / "b.tar"
    out.parent.mkdir()
    r = subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh", *kmscli_command(), "vault", "backup", str(out)],
                       env=env, capture_output=True, stdin=subprocess.DEVNULL, start_new_session=True)
    ok(r)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "b.tar").symlink_to(victim)
    line = fails(kms("vault", "backup", str(shared / "b.tar")), 2, "ValidationException")
    assert "a symbolic link" in line
    assert victim.read_bytes() == b"not yours" and os.listdir(shared) == ["b.tar"]

    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    (own / "b.tar").symlink_to(victim)
    ok(kms("vault", "backup", str(own / "b.tar")))  # replaced by a new file, never written through
    assert victim.read_bytes() == b"not yours"
    assert not (own / "b.tar").is_symlink() and stat.S_IMODE((own / "b.tar").stat().st_mode) == 0o600


def test_backup_refuses_to_write_over_the_vault_or_its_log(kms: Runner, vault: Path) -> None:
    for target in (vault, log_of(vault)):
        before = files_of(vault.parent)
        line = fails(kms("vault", "backup", str(target)), 2, "ValidationException")
        assert "a file of the vault or of its audit log" in line
        after = files_of(vault.parent)
        assert after.pop("audit.jsonl").startswith(before.pop("audit.jsonl"))  # the refusal was recorded
        assert after == before
    ok(kms("audit", "verify"))


def test_backup_to_stdout_restores_from_stdin_into_an_empty_place(kms: Runner, vault: Path, populated: dict,
                                                                  tmp_path: Path) -> None:
    data = ok(kms("vault", "backup", "-")).stdout
    assert data[257:262] == b"ustar"
    target = tmp_path / "fresh" / "deeper" / "vault.kms"
    r = ok(kms("--vault", str(target), "vault", "restore", "-", input=data))
    assert b"kept as" not in r.stderr  # nothing was there to keep
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(("-wal", "-shm"))) == \
        ["audit.jsonl", "audit.jsonl.lock", "vault.kms", "vault.kms.lock"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in target.parent.iterdir())
    # the restored vault's log is its own, beside it; the original's log is untouched
    assert ok(kms("--vault", str(target), "decrypt", input=populated["ct"])).stdout == b"made before the backup"
    ok(kms("--vault", str(target), "audit", "verify", "--strict"))
    ok(kms("audit", "verify", "--strict"))
    assert not any(r["eventName"] == "RestoreVault" for r in records(log_of(vault)))


def test_backup_and_restore_are_audited(kms: Runner, vault: Path, populated: dict, tmp_path: Path) -> None:
    archive = backup(kms, tmp_path / "b.tar")
    made = [r for r in records(log_of(vault)) if r["eventName"] == "BackupVault"]
    assert len(made) == 1 and made[0]["keyed"] and not made[0].get("errorCode")
    assert made[0]["requestParameters"] == {"output": str(tmp_path / "b.tar")}
    # the archive holds the record of its own making, as its last record
    assert json.loads(members(archive)["log/audit.jsonl"].splitlines()[-1])["eventID"] == made[0]["eventID"]
    shown = ok(kms("audit", "show", "--operation", "BackupVault")).stdout
    assert made[0]["eventID"].encode() in shown

    new_key(kms)
    ok(kms("vault", "restore", "--force", str(archive)))
    restored = [r for r in records(log_of(vault)) if r["eventName"] == "RestoreVault"]
    assert len(restored) == 1 and restored[0]["keyed"]
    assert restored[0]["requestParameters"] == {"input": str(archive), "force": True}
    kept = restored[0]["responseElements"]
    assert vault.with_name(kept["replacedVault"]).exists()
    assert all(vault.with_name(n).exists() for n in kept["replacedLogFiles"])
    # the restore is a vault write: the same backup again is a rollback of it
    fails(kms("vault", "restore", str(archive)), 8, "VaultRollbackException")


def test_backup_and_restore_carry_every_file_of_a_rotated_log(kms: Runner, vault: Path, tmp_path: Path) -> None:
    small = {"KMSCLI_AUDIT_MAX_SIZE": "2K"}
    for _ in range(4):
        new_key(kms)
        ok(kms("keys", "list", env_update=small))
    assert vault.with_name("audit.jsonl.000002").exists()
    archive = backup(kms, tmp_path / "b.tar")
    names = list(members(archive))
    assert names[0] == "vault.kms" and names[-2:] == ["log/audit.jsonl", "manifest.json"]
    assert "log/audit.jsonl.000001" in names
    target = tmp_path / "r" / "vault.kms"
    ok(kms("--vault", str(target), "vault", "restore", str(archive)))
    ok(kms("--vault", str(target), "audit", "verify", "--strict"))
    assert sorted(p.name for p in target.parent.glob("audit.jsonl.0*")) == \
        sorted(p.name for p in vault.parent.glob("audit.jsonl.0*"))


# -- sessions ----------------------------------------------------------------------------------
@pytest.fixture
def session(kms: Runner, vault: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A session of the test's vault, in a runtime folder of the test's own; its agent ended afterwards."""
    from tests.session.conftest import agent_pid, alive, stop, token_of, wait_until

    run = {"KMSCLI_RUNTIME_DIR": str(tmp_path / "run")}
    token = token_of(ok(kms("unlock", env_update=run)).stdout)
    pid = agent_pid(token)
    yield {**run, "KMSCLI_SESSION": token}
    kms("lock", env_update=run)
    if pid is not None:
        stop(pid, signal.SIGTERM)
        if not wait_until(lambda: not alive(pid)):
            stop(pid, signal.SIGKILL)


def test_a_session_backs_up_but_cannot_restore_and_a_restore_ends_it(kms: Runner, vault: Path, populated: dict,
                                                                      session: dict, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    ok(kms("vault", "backup", str(archive), env_update=session, env_remove=("KMSCLI_PASSPHRASE",)))
    line = fails(kms("vault", "restore", str(archive), env_update=session), 5, "InvalidSessionException")
    assert "needs the passphrase" in line
    # no write since the backup (the refusal above is only appended): no --force needed... but the log goes
    # further now, so the owner forces it; the session of the replaced vault is ended either way
    r = ok(kms("vault", "restore", "--force", str(archive),
               env_update={"KMSCLI_RUNTIME_DIR": session["KMSCLI_RUNTIME_DIR"]}))
    assert b"ended 1 session" in r.stderr
    fails(kms("keys", "list", env_update=session, env_remove=("KMSCLI_PASSPHRASE",)), 5)


def test_restore_help_and_usage_errors(kms: Runner, vault: Path, tmp_path: Path) -> None:
    assert b"--force" in ok(kms("vault", "restore", "--help")).stdout
    fails(kms("vault", "restore", str(tmp_path / "missing.tar")), 2)
    fails(kms("vault", "backup"), 2)
    env = clean_env(KMSCLI_VAULT=str(tmp_path / "none" / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE)
    r = subprocess.run([*kmscli_command(), "vault", "backup", str(tmp_path / "x.tar")], env=env,
                       capture_output=True, stdin=subprocess.DEVNULL, start_new_session=True)
    fails(r, 8, "VaultNotFoundException")
    assert not (tmp_path / "x.tar").exists()
