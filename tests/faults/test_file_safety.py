"""Files someone else could have written are refused; ``-o`` never follows a planted link; modes are 0600.

The vault and the audit log are refused (exit 8, one line, nothing done)
when they are group- or world-writable or belong to another user: whoever
could write them could have swapped the keys or forged the log. Reading the
log (``audit show``, ``audit verify``) is allowed whoever owns it: the MACs,
not the owner, decide (docs/audit.md), so those are checked to still work.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from kmscli.cli import fileio
from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, Runner, clean_env, fails, kmscli_command, ok
from tests.faults._inproc import one_error_line, run_cli

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return ok(kms("keys", "create", "--alias", "alias/app")).stdout.decode().strip()


def env_of(vault: Path) -> dict[str, str]:
    return {"KMSCLI_VAULT": str(vault), "KMSCLI_PASSPHRASE": PASSPHRASE}


def assert_refused_everywhere(kms: Runner, vault: Path, key: str, needle: str) -> None:
    """Every command that opens the vault refuses it: in process (fast), and once as a real process."""
    before = vault.read_bytes()
    for args in (["keys", "list"], ["keys", "create"], ["encrypt", "--key", key], ["alias", "create", "alias/x", key],
                 ["audit", "verify"], ["passwd"]):
        line = one_error_line(run_cli(args, dict(env_of(vault), KMSCLI_NEW_PASSPHRASE="n"), b"data"), 8)
        assert needle in line and str(vault) in line, line
    line = fails(kms("keys", "create"), 8, "VaultFileException")
    assert needle in line
    assert vault.read_bytes() == before


@pytest.mark.parametrize("bad_mode", [0o620, 0o602, 0o666])
def test_vault_writable_by_others_is_refused(kms: Runner, vault: Path, key: str, bad_mode: int) -> None:
    os.chmod(vault, bad_mode)
    assert_refused_everywhere(kms, vault, key, "writable by group or others")
    os.chmod(vault, 0o600)
    assert run_cli(["keys", "describe", key], env_of(vault)).returncode == 0


@root_only
def test_vault_of_another_user_is_refused(kms: Runner, vault: Path, key: str) -> None:
    os.chown(vault, NOBODY, NOBODY)
    assert_refused_everywhere(kms, vault, key, "belongs to another user")
    os.chown(vault, 0, 0)
    assert run_cli(["keys", "describe", key], env_of(vault)).returncode == 0


@pytest.mark.parametrize("change", ["chmod 0646", "chmod 0660", "chown nobody", "lock chmod 0666",
                                    "lock chown nobody"])
def test_audit_log_others_could_write_is_refused(kms: Runner, vault: Path, key: str, change: str) -> None:
    words = change.split()
    what = "lock" if words[0] == "lock" else "log"
    action, arg = words[-2:]
    target = vault.with_name("audit.jsonl.lock" if what == "lock" else "audit.jsonl")
    if action == "chown":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(target, NOBODY, NOBODY)
    else:
        os.chmod(target, int(arg, 8))
    before = vault.read_bytes()
    log_before = vault.with_name("audit.jsonl").read_bytes()
    out = vault.parent.parent / "out.kms"
    for args in (["keys", "create"], ["encrypt", "--key", key, "-o", str(out)], ["keys", "list"], ["datakey", key]):
        r = run_cli(args, env_of(vault), b"data")
        line = one_error_line(r, 8)
        assert line.startswith("kmscli: AuditLogException: ") and str(target) in line, line
        assert "another user" in line or "group or others" in line, line
        assert r.stdout == b"" and not out.exists()  # no key id, ciphertext or data key: nothing unrecorded
    if what == "log":
        fails(kms("keys", "create"), 8, "AuditLogException")
    # Fail closed: nothing happened that the log does not show.
    assert vault.read_bytes() == before
    assert vault.with_name("audit.jsonl").read_bytes() == log_before
    # Reading it is allowed: the MACs decide. Once the file is private again, it verifies.
    assert run_cli(["audit", "show", "--json"], env_of(vault)).stdout
    if action == "chown":
        os.chown(target, os.geteuid(), os.getegid())
    else:
        os.chmod(target, 0o600)
    assert run_cli(["audit", "verify"], env_of(vault)).returncode == 0


def test_decrypt_to_stdout_releases_nothing_when_the_log_refuses_the_record(kms: Runner, vault: Path, key: str) -> None:
    ct = ok(kms("encrypt", "--key", key, input=b"top secret")).stdout
    os.chmod(vault.with_name("audit.jsonl"), 0o666)
    r = kms("decrypt", input=ct)
    fails(r, 8, "AuditLogException")
    assert b"top secret" not in r.stdout


def test_output_never_follows_a_link_planted_at_its_temporary_name(
    kms: Runner, vault: Path, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ct = tmp_path / "ct"
    ok(kms("encrypt", "--key", key, "-o", str(ct), input=b"secret plaintext"))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "plain.txt"
    planted = [out_dir / ".plain.txt.000000000001.tmp", out_dir / ".plain.txt.000000000002.tmp"]
    planted[0].symlink_to(victim)  # an attacker who guessed the name
    os.mkfifo(planted[1])  # or put something else there
    names = iter([*planted, out_dir / ".plain.txt.000000000003.tmp"])
    monkeypatch.setattr(fileio, "_temp_name", lambda path: next(names))
    env = env_of(vault)
    r = run_cli(["decrypt", "-i", str(ct), "-o", str(target)], env)
    assert r.returncode == 0, r.err
    assert target.read_bytes() == b"secret plaintext" and mode(target) == 0o600
    assert victim.read_bytes() == b"precious"
    assert planted[0].is_symlink() and stat.S_ISFIFO(planted[1].lstat().st_mode)  # skipped, not followed or removed
    # Every name taken: a clear exit 2, the victim untouched.
    monkeypatch.setattr(fileio, "_temp_name", lambda path: planted[0])
    line = one_error_line(run_cli(["decrypt", "-i", str(ct), "-o", str(out_dir / "plain.txt")], env), 2)
    assert "temporary file" in line
    assert victim.read_bytes() == b"precious"


def test_output_replaces_a_link_at_the_target_and_never_writes_through_it(
    kms: Runner, vault: Path, key: str, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "out.kms"
    target.symlink_to(victim)
    ok(kms("encrypt", "--key", key, "-o", str(target), input=b"x"))
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and mode(target) == 0o600


def test_stale_temporary_cleanup_never_follows_or_removes_foreign_files(
    kms: Runner, vault: Path, key: str, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / ".out.kms.0123456789ab.tmp"
    link.symlink_to(victim)
    ok(kms("encrypt", "--key", key, "-o", str(tmp_path / "out.kms"), input=b"x"))
    assert link.is_symlink() and victim.read_bytes() == b"precious"


def test_output_to_a_device_or_fifo_writes_to_it_and_never_replaces_it(
    kms: Runner, vault: Path, key: str, tmp_path: Path
) -> None:
    """``-o /dev/null`` as root once renamed a regular file over the device node."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    ok(kms("encrypt", "--key", key, "-o", str(null), input=b"x" * 1000))
    assert stat.S_ISCHR(null.lstat().st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        ok(kms("encrypt", "--key", key, "--armor", "-o", str(fifo), input=b"y"))
        assert reader.communicate(timeout=HANG_GUARD_S)[0].startswith(b"-----BEGIN KMSCLI ENCRYPTED MESSAGE-----")
    finally:
        if reader.poll() is None:  # kmscli never opened the FIFO: do not leave cat waiting on it
            reader.kill()
            reader.wait()
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    fails(kms("encrypt", "--key", key, "-o", str(tmp_path), input=b"x"), 2, "ValidationException")


def test_every_file_is_0600_and_every_folder_0700_under_umask_000(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "outs"
    out.mkdir()
    (out / "existing.txt").write_text("old")
    os.chmod(out / "existing.txt", 0o666)
    env = clean_env(KMSCLI_VAULT=str(home / "a" / "b" / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE,
                    KMSCLI_NEW_PASSPHRASE="second")
    script = f"""
umask 000
k() {{ "$@" || exit 99; }}
K="{' '.join(kmscli_command())}"
k $K init {' '.join(CHEAP_KDF)}
id=$(k $K keys create --alias alias/a)
echo hello | k $K encrypt --key "$id" -o {out}/c.kms
k $K decrypt -i {out}/c.kms -o {out}/p.txt
k $K decrypt -i {out}/c.kms -o {out}/existing.txt
k $K datakey alias/a --json > /dev/null
k $K passwd
KMSCLI_PASSPHRASE=second k $K audit verify
"""
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, start_new_session=True,
                       timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr.decode()
    files = [p for p in home.rglob("*") if p.is_file()] + [p for p in out.iterdir()]
    names = {p.name for p in files}
    assert {"vault.kms", "vault.kms.lock", "audit.jsonl", "audit.jsonl.lock", "c.kms", "p.txt",
            "existing.txt"} <= names, names
    assert {p.name: oct(mode(p)) for p in files if mode(p) != 0o600} == {}
    assert {str(p): oct(mode(p)) for p in [home / "a", home / "a" / "b"] if mode(p) != 0o700} == {}
    assert (out / "existing.txt").read_text() == "hello\n"
