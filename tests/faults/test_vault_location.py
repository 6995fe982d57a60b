"""Where the vault, its lock and its log live, against someone who can write near them (issue 12: 7, 8, 9, FIFOs).

Run as root here, so "another user" is simulated by chown to uid 65534; the
checks are on ownership and mode bits, which root's own writes do not bypass.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, ok

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def test_two_paths_to_one_vault_share_one_lock(kms: Runner, vault: Path, tmp_path: Path) -> None:
    """The review: 60 `keys create` through a link and the real path exited 0 and 59 keys existed."""
    link_dir = tmp_path / "links"
    link_dir.mkdir(mode=0o700)
    (link_dir / "vault.kms").symlink_to(vault)
    paths = [str(vault), str(link_dir / "vault.kms")]
    n = 24

    def create(i: int) -> int:
        return kms("keys", "create", env_update={"KMSCLI_VAULT": paths[i % 2]}, timeout=600).returncode

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(create, range(n)))
    assert codes == [0] * n
    listed = ok(kms("keys", "list")).stdout.decode().splitlines()
    assert len(listed) == n
    assert not (link_dir / "vault.kms.lock").exists()
    ok(kms("audit", "verify", "--strict"))


def test_filelock_is_new_enough_to_refuse_a_planted_symlink() -> None:
    major, minor, patch = (int(x) for x in version("filelock").split(".")[:3])
    assert (major, minor, patch) >= (3, 20, 3)


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(kms: Runner, vault: Path,
                                                                   tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    lock = vault.with_name("vault.kms.lock")
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    fails(kms("keys", "create"), 8)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("where", ["vault.kms", "vault.kms.lock", "audit.jsonl.lock", "audit.jsonl"])
def test_a_fifo_is_refused_without_hanging(kms: Runner, vault: Path, where: str) -> None:
    """The review: a FIFO at the vault path hung every command; at the audit lock, show and verify hung."""
    path = vault.with_name(where)
    path.unlink()
    os.mkfifo(path, 0o600)
    commands = [["keys", "create"]]
    if where.startswith("audit"):
        commands += [["audit", "show"], ["audit", "verify"]]
    for args in commands:
        r = kms(*args, timeout=120)  # a hang is the timeout: an error, not a pass
        assert r.returncode == 8, (args, r.stderr)
        assert b"not a regular file" in r.stderr and where.encode() in r.stderr, r.stderr


def test_a_fifo_as_a_log_segment_is_refused_without_hanging(kms: Runner, vault: Path) -> None:
    os.mkfifo(vault.with_name("audit.jsonl.000001"), 0o600)
    for args in (["audit", "show"], ["audit", "verify"]):
        r = kms(*args, timeout=120)
        assert r.returncode == 8 and b"not a regular file" in r.stderr, (args, r.stderr)


@as_root
def test_a_vault_folder_of_another_user_is_refused(kms: Runner, vault: Path) -> None:
    os.chown(vault.parent, NOBODY, -1)
    try:
        line = fails(kms("keys", "list"), 8)
        assert "belongs to another user" in line and str(vault.parent) in line
    finally:
        os.chown(vault.parent, 0, -1)


@as_root
def test_a_lock_file_of_another_user_is_refused(kms: Runner, vault: Path) -> None:
    lock = vault.with_name("vault.kms.lock")
    lock.touch(mode=0o600)
    os.chown(lock, NOBODY, -1)
    fails(kms("keys", "create"), 8)


def test_a_log_folder_others_can_write_is_refused(kms: Runner, vault_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    ok(kms("init", "--kdf-memory", "8", "--kdf-time", "1", "--audit-log", str(logs / "a.jsonl")))
    os.chmod(logs, 0o777)
    try:
        line = fails(kms("keys", "list"), 8)
        assert str(logs) in line and "writable by group or others" in line
    finally:
        os.chmod(logs, 0o700)


def test_init_refuses_a_log_folder_others_can_write(kms: Runner, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    fails(kms("init", "--kdf-memory", "8", "--kdf-time", "1", "--audit-log", str(shared / "a.jsonl")), 8)
