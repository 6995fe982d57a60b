"""``-o PATH`` never follows what another user planted at PATH.

Root decrypting to ``-o /tmp/x`` once overwrote a block device through a
link planted there, and another user collected plaintext through a FIFO
planted in /tmp. In a folder others can write (group or world writable, or
another user's), a symlink, FIFO, socket or device at the target is refused
with exit 2, naming it, and nothing is opened first. Folders "others can
write" are simulated with mode 1777 (and 0777, 0770, another owner), since
these tests run as root. ``-o /dev/null``, ``/dev/stdout`` and ``/dev/fd/N``
keep working.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, kmscli_command, ok

PLAINTEXT = b"top secret plaintext\n"
OTHER_UID = 65534  # nobody


@pytest.fixture
def ct(kms: Runner, vault: Path, tmp_path: Path) -> Path:
    ok(kms("keys", "create", "--alias", "alias/t"))
    path = tmp_path / "ct"
    ok(kms("encrypt", "--key", "alias/t", "-o", str(path), input=PLAINTEXT))
    return path


def shared_folder(tmp_path: Path, mode: int = 0o1777, uid: int | None = None) -> Path:
    folder = tmp_path / f"shared-{mode:o}-{uid}"
    folder.mkdir()
    os.chmod(folder, mode)
    if uid is not None:
        os.chown(folder, uid, -1)
    return folder


SHARED = [pytest.param(0o1777, None, "writable by others (mode 1777)", id="sticky-1777"),
          pytest.param(0o777, None, "writable by others (mode 777)", id="0777"),
          pytest.param(0o770, None, "writable by its group (mode 770)", id="group-0770"),
          pytest.param(0o755, OTHER_UID, "owned by another user (uid 65534)", id="another-users")]


def refused(kms: Runner, ct: Path, target: Path, *words: str) -> str:
    line = fails(kms("decrypt", "-i", str(ct), "-o", str(target), timeout=60), 2, "ValidationException")
    assert f"refusing to write the output {target}" in line, line
    for w in words:
        assert w in line, (w, line)
    return line


@pytest.mark.parametrize(("mode", "uid", "why"), SHARED)
def test_planted_link_to_another_users_file_is_refused(kms: Runner, ct: Path, tmp_path: Path, mode: int,
                                                       uid: int | None, why: str) -> None:
    folder = shared_folder(tmp_path, mode, uid)
    victim = tmp_path / "victim"
    victim.write_bytes(b"belongs to someone else")
    os.chown(victim, OTHER_UID, OTHER_UID)
    target = folder / "x"
    target.symlink_to(victim)
    os.lchown(target, OTHER_UID, OTHER_UID)
    refused(kms, ct, target, "a symbolic link", str(folder), why)
    assert victim.read_bytes() == b"belongs to someone else"
    assert target.is_symlink() and os.listdir(folder) == ["x"]  # no temporary file left either


def test_planted_link_to_a_device_is_refused_and_the_device_never_opened(kms: Runner, ct: Path,
                                                                        tmp_path: Path) -> None:
    folder = shared_folder(tmp_path)
    # A stand-in for /dev/sda: a FIFO with nobody reading, so that opening it
    # for writing would hang; and a character device (1, 3: /dev/null's numbers).
    fifo = tmp_path / "disk"
    os.mkfifo(fifo)
    chr_dev = tmp_path / "chr"
    os.mknod(chr_dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for name, dest in (("x", fifo), ("y", chr_dev), ("z", Path("/dev/null"))):
        (folder / name).symlink_to(dest)
        refused(kms, ct, folder / name, "a symbolic link", "remove it")
        assert stat.S_ISCHR(chr_dev.lstat().st_mode) and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_planted_device_nodes_and_sockets_are_refused(kms: Runner, ct: Path, tmp_path: Path) -> None:
    folder = shared_folder(tmp_path)
    os.mknod(folder / "blk", stat.S_IFBLK | 0o666, os.makedev(7, 250))
    os.mknod(folder / "chr", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(folder / "sock"))
    try:
        refused(kms, ct, folder / "blk", "a block device")
        refused(kms, ct, folder / "chr", "a character device")
        refused(kms, ct, folder / "sock", "a socket")
    finally:
        sock.close()
    assert stat.S_ISBLK((folder / "blk").lstat().st_mode) and stat.S_ISCHR((folder / "chr").lstat().st_mode)


def test_planted_fifo_gets_nothing_and_does_not_block(kms: Runner, ct: Path, tmp_path: Path) -> None:
    folder = shared_folder(tmp_path)
    fifo = folder / "plain.txt"
    os.mkfifo(fifo, 0o666)
    os.chown(fifo, OTHER_UID, OTHER_UID)
    # The other user is listening: before, the plaintext went to them.
    listener = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        refused(kms, ct, fifo, "a FIFO (named pipe)", str(folder))
        try:
            got = os.read(listener, 65536)
        except BlockingIOError:
            got = b""
        assert got == b""
    finally:
        os.close(listener)
    # Nobody listening: before, kmscli waited forever for a reader (kms's timeout fails the test).
    refused(kms, ct, fifo, "a FIFO (named pipe)")


def test_link_in_own_folder_through_a_shared_folder_is_refused(kms: Runner, ct: Path, tmp_path: Path) -> None:
    folder = shared_folder(tmp_path)
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    mine = tmp_path / "mine"
    mine.symlink_to(fifo)  # the user's own link, but what it leads to is someone else's to swap
    line = refused(kms, ct, mine, f"a link to {fifo}", "a FIFO (named pipe)", str(folder))
    assert "writable by others" in line


def test_regular_and_new_files_in_a_shared_folder_still_work(kms: Runner, ct: Path, tmp_path: Path) -> None:
    folder = shared_folder(tmp_path)
    ok(kms("decrypt", "-i", str(ct), "-o", str(folder / "new")))
    existing = folder / "existing"
    existing.write_bytes(b"old")
    ok(kms("decrypt", "-i", str(ct), "-o", str(existing)))
    for path in (folder / "new", existing):
        assert path.read_bytes() == PLAINTEXT and stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert sorted(os.listdir(folder)) == ["existing", "new"]


def test_own_fifo_and_link_to_dev_null_in_a_private_folder_are_written(kms: Runner, ct: Path,
                                                                       tmp_path: Path) -> None:
    """The documented choice: in the user's own folder, their FIFO or link to a device is theirs to use."""
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    (own / "null").symlink_to("/dev/null")
    ok(kms("decrypt", "-i", str(ct), "-o", str(own / "null")))
    assert (own / "null").is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = own / "fifo"
    os.mkfifo(fifo, 0o600)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        ok(kms("decrypt", "-i", str(ct), "-o", str(fifo)))
        assert reader.communicate(timeout=60)[0] == PLAINTEXT
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()


def test_dev_null_dev_stdout_and_descriptors_still_work(kms: Runner, ct: Path, env: dict[str, str],
                                                       tmp_path: Path) -> None:
    r = ok(kms("decrypt", "-i", str(ct), "-o", "/dev/null"))
    assert r.stdout == b"" and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    for spelling in ("/dev/stdout", "-", "/dev/fd/1", "/proc/self/fd/1", "//dev/./stdout"):
        assert ok(kms("decrypt", "-i", str(ct), "-o", spelling)).stdout == PLAINTEXT, spelling
    assert ok(kms("decrypt", "-i", str(ct), "-o", "/dev/stderr")).stderr == PLAINTEXT
    assert os.path.islink("/dev/stdout")
    # An open descriptor to a regular file is written where it stands (a shell's >>),
    # never treated as a file to replace by renaming.
    log = tmp_path / "log"
    log.write_bytes(b"first\n")
    with open(log, "ab") as f:
        res = subprocess.run([*kmscli_command(), "decrypt", "-i", str(ct), "-o", f"/dev/fd/{f.fileno()}"],
                             env=env, pass_fds=(f.fileno(),), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert log.read_bytes() == b"first\n" + PLAINTEXT
