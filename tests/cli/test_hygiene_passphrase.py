"""A passphrase file must be the user's alone: whoever can write it chooses the passphrase.

A file another user owns, or one its group or others may write, is refused
(exit 2, naming the file and ``chmod 600``), for every way of naming it and
by ``init`` too; so is a FIFO or a device, at once, without waiting for a
writer. A pipe the shell opened for kmscli (``<(pass show kms)``) is fine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CHEAP_KDF, PASSPHRASE, Runner, fails, kmscli_command, ok

OTHER_UID = 65534  # nobody


def pass_file(folder: Path, mode: int = 0o600, uid: int | None = None, text: str = PASSPHRASE) -> Path:
    path = folder / "pass"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


BAD = [pytest.param(0o620, None, "writable by its group", id="group-writable"),
       pytest.param(0o602, None, "writable by others", id="world-writable"),
       pytest.param(0o666, None, "writable by others", id="0666"),
       pytest.param(0o600, OTHER_UID, "belongs to another user", id="another-users")]


def ways(path: Path) -> list[tuple[tuple[str, ...], dict[str, str]]]:
    return [(("--passphrase-file", str(path)), {}), ((), {"KMSCLI_PASSPHRASE_FILE": str(path)})]


@pytest.mark.parametrize(("mode", "uid", "why"), BAD)
def test_unsafe_passphrase_file_is_refused(kms: Runner, vault: Path, tmp_path: Path, mode: int, uid: int | None,
                                           why: str) -> None:
    path = pass_file(tmp_path, mode, uid)
    before = vault.read_bytes()
    for args, extra in ways(path):
        line = fails(kms("keys", "create", *args, env_update=extra, env_remove=("KMSCLI_PASSPHRASE",)), 2,
                     "ValidationException")
        assert str(path) in line and why in line and "chmod 600" in line, line
    assert vault.read_bytes() == before


@pytest.mark.parametrize(("mode", "uid", "why"), BAD)
def test_init_refuses_an_unsafe_passphrase_file(kms: Runner, vault_dir: Path, tmp_path: Path, mode: int,
                                                uid: int | None, why: str) -> None:
    path = pass_file(tmp_path, mode, uid, text="chosen by someone else")
    for args, extra in ways(path):
        line = fails(kms("init", *CHEAP_KDF, *args, env_update=extra, env_remove=("KMSCLI_PASSPHRASE",)), 2,
                     "ValidationException")
        assert str(path) in line and why in line
        assert not (vault_dir / "vault.kms").exists()


@pytest.mark.parametrize(("mode", "uid", "why"), BAD)
def test_passwd_refuses_an_unsafe_new_passphrase_file(kms: Runner, vault: Path, tmp_path: Path, mode: int,
                                                      uid: int | None, why: str) -> None:
    path = pass_file(tmp_path, mode, uid, text="chosen by someone else")
    before = vault.read_bytes()
    for args, extra in ((("--new-passphrase-file", str(path)), {}), ((), {"KMSCLI_NEW_PASSPHRASE_FILE": str(path)})):
        line = fails(kms("passwd", *args, env_update=extra), 2, "ValidationException")
        assert str(path) in line and why in line
    assert vault.read_bytes() == before
    ok(kms("keys", "list"))  # the old passphrase still opens it


def test_fifo_and_devices_are_refused_without_waiting(kms: Runner, vault: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path, kind in ((fifo, "FIFO"), (Path("/dev/zero"), "character device"), (Path("/dev/null"), "device"),
                       (tmp_path, "folder")):
        # No writer ever opens the FIFO: before, kmscli waited for one forever.
        line = fails(kms("keys", "list", "--passphrase-file", str(path), env_remove=("KMSCLI_PASSPHRASE",),
                         timeout=60), 2, "ValidationException")
        assert str(path) in line and kind in line, line
    fails(kms("init", *CHEAP_KDF, "--passphrase-file", str(fifo), env_update={"KMSCLI_VAULT": str(tmp_path / "n")},
              timeout=60), 2, "ValidationException")


def test_private_files_links_to_them_and_shell_pipes_still_work(kms: Runner, vault: Path, tmp_path: Path,
                                                               env: dict[str, str]) -> None:
    path = pass_file(tmp_path)
    ok(kms("keys", "list", "--passphrase-file", str(path), env_remove=("KMSCLI_PASSPHRASE",)))
    os.chmod(path, 0o644)  # readable by others is their secret's problem, not a way to choose it
    ok(kms("keys", "list", "--passphrase-file", str(path), env_remove=("KMSCLI_PASSPHRASE",)))
    link = tmp_path / "link"
    link.symlink_to(path)  # a link to the user's own file is checked as the file
    ok(kms("keys", "list", "--passphrase-file", str(link), env_remove=("KMSCLI_PASSPHRASE",)))
    os.chown(path, OTHER_UID, -1)
    line = fails(kms("keys", "list", "--passphrase-file", str(link), env_remove=("KMSCLI_PASSPHRASE",)), 2)
    assert "belongs to another user" in line
    # --passphrase-file <(pass show kms): a pipe of the caller's, as /dev/fd/N.
    r, w = os.pipe()
    os.write(w, PASSPHRASE.encode() + b"\n")
    os.close(w)
    e = {k: v for k, v in env.items() if k != "KMSCLI_PASSPHRASE"}
    try:
        res = subprocess.run([*kmscli_command(), "keys", "list", "--passphrase-file", f"/dev/fd/{r}"], env=e,
                             pass_fds=(r,), capture_output=True, timeout=60, start_new_session=True)
    finally:
        os.close(r)
    assert res.returncode == 0, res.stderr
