"""init, passwd, passphrase sources, and damaged vaults, through the real entry point."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from kmscli import errors
from tests.conftest import CHEAP_KDF, PASSPHRASE, Runner, fails, ok


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_creates_private_vault(kms: Runner, vault_dir: Path) -> None:
    r = ok(kms("init", *CHEAP_KDF))
    vault = vault_dir / "vault.kms"
    assert mode(vault) == 0o600
    assert mode(vault_dir) == 0o700
    assert b"created vault" in r.stderr
    assert r.stdout == b""
    assert vault.read_bytes()[:16] == b"SQLite format 3\0"  # format 2: sealed records (docs/vault-v2.md)
    assert vault.read_bytes()[60:64] == b"\0\0\0\2" and vault.read_bytes()[68:72] == b"KMSV"


def test_init_files_private_even_under_permissive_umask(kms: Runner, vault_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "umask.sh"
    r = kms("init", *CHEAP_KDF, env_update={})  # baseline
    ok(r)
    other = tmp_path / "other" / "deep" / "vault.kms"
    import subprocess

    from tests.conftest import clean_env, kmscli_command

    script.write_text("umask 000\nexec \"$@\"\n")
    r = subprocess.run(["sh", str(script), *kmscli_command(), "init", *CHEAP_KDF],
                       env=clean_env(KMSCLI_VAULT=str(other), KMSCLI_PASSPHRASE=PASSPHRASE),
                       capture_output=True, stdin=subprocess.DEVNULL, start_new_session=True)
    ok(r)
    assert mode(other) == 0o600
    assert mode(other.parent) == 0o700
    assert mode(other.with_name("audit.jsonl")) == 0o600


def test_init_refuses_to_overwrite(kms: Runner, vault: Path) -> None:
    before = vault.read_bytes()
    fails(kms("init", *CHEAP_KDF), 9, "AlreadyExistsException")
    assert vault.read_bytes() == before


def test_init_default_location_uses_platformdirs(kms: Runner, tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = kms("init", *CHEAP_KDF, env_remove=("KMSCLI_VAULT",),
            env_update={"HOME": str(home), "XDG_DATA_HOME": str(home / ".local/share")})
    ok(r)
    assert (home / ".local/share/kmscli/vault.kms").exists()


def test_vault_option_overrides_env(kms: Runner, tmp_path: Path) -> None:
    target = tmp_path / "explicit.kms"
    ok(kms("init", *CHEAP_KDF, "--vault", str(target)))
    assert target.exists()
    ok(kms("--vault", str(target), "keys", "list"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--kdf-memory", "4"], "--kdf-memory"),
        (["--kdf-memory", "5000"], "--kdf-memory"),
        (["--kdf-time", "0"], "--kdf-time"),
        (["--kdf-parallelism", "0"], "--kdf-parallelism"),
        (["--kdf-parallelism", "99"], "--kdf-parallelism"),
        (["--kdf-time", "9"], "--kdf-time"),
        (["--kdf-memory", "1024", "--kdf-time", "3"], "MiB-passes"),
    ],
)
def test_init_refuses_unsafe_kdf(kms: Runner, vault_dir: Path, args: list[str], needle: str) -> None:
    line = fails(kms("init", "--kdf-memory", "8", "--kdf-time", "1", *args), 2, "ValidationException")
    assert needle in line
    assert not (vault_dir / "vault.kms").exists()


def test_init_warns_about_test_parameters(kms: Runner) -> None:
    r = ok(kms("init", *CHEAP_KDF))
    assert b"OWASP" in r.stderr


def test_empty_passphrase_at_init(kms: Runner, vault_dir: Path) -> None:
    fails(kms("init", *CHEAP_KDF, env_update={"KMSCLI_PASSPHRASE": ""}), 2, "ValidationException")
    assert not (vault_dir / "vault.kms").exists()


def test_no_passphrase_source_no_terminal(kms: Runner, vault: Path) -> None:
    line = fails(kms("keys", "list", env_remove=("KMSCLI_PASSPHRASE",)), 5)
    for option in ("--passphrase-file", "KMSCLI_PASSPHRASE_FILE", "KMSCLI_PASSPHRASE"):
        assert option in line


def test_passphrase_file_first_line(kms: Runner, vault: Path, tmp_path: Path) -> None:
    f = tmp_path / "pass"
    f.write_text(PASSPHRASE + "\nsecond line ignored\n")
    ok(kms("keys", "list", "--passphrase-file", str(f), env_remove=("KMSCLI_PASSPHRASE",)))
    ok(kms("keys", "list", env_remove=("KMSCLI_PASSPHRASE",), env_update={"KMSCLI_PASSPHRASE_FILE": str(f)}))


def test_passphrase_file_wins_over_env(kms: Runner, vault: Path, tmp_path: Path) -> None:
    f = tmp_path / "pass"
    f.write_text(PASSPHRASE)
    ok(kms("keys", "list", "--passphrase-file", str(f), env_update={"KMSCLI_PASSPHRASE": "wrong"}))
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    fails(kms("keys", "list", "--passphrase-file", str(bad)), 5)


def test_wrong_passphrase_leaves_vault_unchanged(kms: Runner, vault: Path) -> None:
    before = vault.read_bytes()
    line = fails(kms("keys", "create", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5,
                 "IncorrectPassphraseException")
    assert "wrong" not in line.split(":", 2)[2]  # the passphrase is never echoed
    assert vault.read_bytes() == before


def test_session_variable_never_falls_back(kms: Runner, vault: Path) -> None:
    fails(kms("keys", "list", env_update={"KMSCLI_SESSION": "forged"}), 5)


def test_missing_vault_hint(kms: Runner, vault_dir: Path) -> None:
    line = fails(kms("keys", "list"), 8)
    assert "kmscli init" in line


def test_passwd_rotates_the_vault_key(kms: Runner, vault: Path, tmp_path: Path) -> None:
    """An old copy of the vault and the old passphrase open nothing written after passwd."""
    from kmscli.vault import format as F
    from kmscli.vault.records import RecordStore
    from kmscli.vault.store import PassphraseKeySource, VaultStore

    key_id = ok(kms("keys", "create")).stdout.decode().strip()
    before = vault.read_bytes()
    old_header = VaultStore(vault).read_header()
    with VaultStore(vault).open(PassphraseKeySource(lambda: PASSPHRASE.encode())) as ov:
        old_key = ov.vault_key
    new = tmp_path / "new"
    new.write_text("new passphrase\n")
    os.chmod(new, 0o600)
    ok(kms("passwd", "--new-passphrase-file", str(new)))
    after = VaultStore(vault).read_header()
    assert after.salt != old_header.salt  # new salt
    assert after.kdf == old_header.kdf  # same KDF parameters unless asked
    fails(kms("keys", "list"), 5)
    new_env = {"KMSCLI_PASSPHRASE": "new passphrase"}
    later = ok(kms("keys", "create", env_update=new_env)).stdout.decode().strip()
    r = ok(kms("keys", "describe", key_id, "--json", env_update=new_env))
    assert key_id.encode() in r.stdout
    with RecordStore.open(vault) as store, pytest.raises(errors.VaultCorruptException):
        store.reader(old_key)
    assert F.RECORDS_FORMAT_VERSION == 2 and later.encode() not in before
    r = ok(kms("audit", "verify", env_update=new_env))
    assert b"1 failed unlock(s)" in r.stderr  # the old passphrase, tried above


def test_passwd_takes_new_kdf_settings(kms: Runner, vault: Path) -> None:
    from kmscli.vault import format as F

    env = {"KMSCLI_NEW_PASSPHRASE": "other"}
    ok(kms("passwd", "--kdf-memory", "16", "--kdf-time", "2", env_update=env))
    from kmscli.vault.store import VaultStore

    assert VaultStore(vault).read_header().kdf == F.KdfParams(16 * 1024, 2, 1)
    before = vault.read_bytes()
    line = fails(kms("passwd", "--kdf-memory", "4096", env_update={"KMSCLI_PASSPHRASE": "other", **env}), 2)
    assert "--kdf-memory must be between 8 and 1024" in line
    assert vault.read_bytes() == before


def test_passwd_checks_the_current_passphrase_before_asking_for_the_new_one(kms: Runner, vault: Path) -> None:
    # No new passphrase source either: asking for it first would have said PassphraseRequiredException.
    fails(kms("passwd", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5, "IncorrectPassphraseException")


def test_passwd_from_env(kms: Runner, vault: Path) -> None:
    ok(kms("passwd", env_update={"KMSCLI_NEW_PASSPHRASE": "other"}))
    ok(kms("keys", "list", env_update={"KMSCLI_PASSPHRASE": "other"}))


def test_passwd_without_new_source(kms: Runner, vault: Path) -> None:
    before = vault.read_bytes()
    line = fails(kms("passwd"), 5)
    assert "--new-passphrase-file" in line and "KMSCLI_NEW_PASSPHRASE" in line
    assert vault.read_bytes() == before


# -- damaged vaults -------------------------------------------------------
def _stored(vault: Path, sql: str) -> bytes:
    """A value as SQLite keeps it in the file (read without kmscli)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{vault}?mode=ro", uri=True)
    try:
        return bytes(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def damage(vault: Path, how: str) -> None:
    data = bytearray(vault.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "bitflip-header":  # the KDF header, kept in clear: its salt
        at = bytes(data).find(_stored(vault, "SELECT raw FROM header"))
        assert at > 0
        data[at + 30] ^= 0x10
    elif how == "bitflip-body":  # the sealed metadata (the tree's root, the generation)
        sealed = _stored(vault, "SELECT sealed FROM meta")
        at = bytes(data).find(sealed[:64])
        assert at > 0
        data[at + 40] ^= 0x01
    elif how == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif how == "empty":
        data = bytearray()
    elif how == "newer":  # SQLite's user_version: the vault's format version
        data[60:64] = struct.pack(">I", 9)
    vault.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "bitflip-header", "bitflip-body", "garbage", "empty", "newer"])
def test_damaged_vault_exit_8_no_traceback(kms: Runner, vault: Path, how: str) -> None:
    ok(kms("keys", "create"))
    damage(vault, how)
    before = vault.read_bytes()
    line = fails(kms("keys", "list"), 8)
    if how == "newer":
        assert "newer" in line and "upgrade" in line
    fails(kms("keys", "create"), 8)
    assert vault.read_bytes() == before


def test_group_writable_vault_refused(kms: Runner, vault: Path) -> None:
    os.chmod(vault, 0o664)
    line = fails(kms("keys", "list"), 8)
    assert "chmod 600" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder(kms: Runner, vault: Path) -> None:  # pragma: no cover - CI runs as root
    os.chmod(vault.parent, 0o500)
    try:
        fails(kms("keys", "create"), 8)
    finally:
        os.chmod(vault.parent, 0o700)


def test_unwritable_folder_via_read_only_bind(kms: Runner, vault: Path, tmp_path: Path) -> None:
    """As root, chmod does not stop writes; a vault path under a regular file's name does."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(kms("init", *CHEAP_KDF, "--vault", str(blocker / "vault.kms")), 8)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small tmpfs of our own, where the machine lets us mount one (root in CI)."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_vault_folder(kms: Runner, tmpfs: Path) -> None:
    import subprocess

    vault = tmpfs / "v" / "vault.kms"
    ok(kms("init", *CHEAP_KDF, "--vault", str(vault)))
    ok(kms("keys", "create", "--vault", str(vault)))
    before = vault.read_bytes()
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)]).returncode == 0
    line = fails(kms("keys", "create", "--vault", str(vault)), 8)
    assert "Read-only" in line or "read-only" in line
    assert vault.read_bytes() == before
    # Reading works without writing the vault, but its audit record cannot be
    # written either, and kmscli fails closed rather than act unrecorded.
    fails(kms("keys", "list", "--vault", str(vault)), 8, "AuditLogException")


def test_vault_behind_a_symlink_stays_behind_it(kms: Runner, vault: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    real = elsewhere / "vault.kms"
    vault.rename(real)
    vault.symlink_to(real)
    before = real.read_bytes()
    key = ok(kms("keys", "create")).stdout.decode().strip()
    assert vault.is_symlink() and real.read_bytes() != before
    assert key in ok(kms("keys", "list")).stdout.decode()
