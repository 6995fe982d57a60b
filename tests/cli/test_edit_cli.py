"""``kmscli edit FILE`` through the real entry point, with a fake editor that records what it was given.

The fake editor (a small Python script set as $VISUAL) writes one JSON line
per run: the path it got, that path's modes and file system type, its
environment and terminal, and what the file held; then it does what
FAKE_EDITOR_ACTION says (append text, exit non-zero, remove the file, wait
for a signal). Nothing waits a fixed time: the signal tests wait for the
editor's record to appear, with HANG_GUARD_S as a guard against hangs only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    HANG_GUARD_S,
    PASSPHRASE,
    Runner,
    clean_env,
    default_signals,
    fails,
    kmscli_command,
    ok,
)

FAKE_EDITOR = r'''
import json, os, signal, stat, subprocess, sys, time
path = sys.argv[-1]
st, folder = os.stat(path), os.stat(os.path.dirname(path))
with open(path, "rb") as f:
    content = f.read()
echo = None
if os.isatty(0):
    import termios
    echo = bool(termios.tcgetattr(0)[3] & termios.ECHO)
record = {
    "argv": sys.argv[1:], "path": path, "pid": os.getpid(), "ppid": os.getppid(),
    "file_mode": stat.S_IMODE(st.st_mode), "folder_mode": stat.S_IMODE(folder.st_mode),
    "fs": subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip(),
    "content": content.decode("latin-1"), "tty": [os.isatty(0), os.isatty(1)], "echo": echo,
    "env": {k: os.environ.get(k) for k in ("TMPDIR", "KMSCLI_PASSPHRASE", "KMSCLI_SESSION")},
}
with open(os.environ["FAKE_EDITOR_LOG"], "a") as f:
    f.write(json.dumps(record) + "\n")
action = os.environ.get("FAKE_EDITOR_ACTION", "keep")
if action.startswith("append:"):
    with open(path, "ab") as f:
        f.write(action[len("append:"):].encode())
elif action.startswith("replace:"):  # as vim and most editors save: a new file renamed over the old
    with open(path + ".new", "wb") as f:
        f.write(action[len("replace:"):].encode())
    os.replace(path + ".new", path)
elif action.startswith("exit:"):
    with open(path, "ab") as f:
        f.write(b"not to be kept")
    sys.exit(int(action[len("exit:"):]))
elif action == "remove":
    os.unlink(path)
elif action == "wait":
    while True:
        signal.pause()
'''


class FakeEditor:
    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "fake_editor.py"
        self.script.write_text(FAKE_EDITOR)
        self.log = tmp_path / "editor.jsonl"
        self.command = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.script))}"

    def env(self, action: str = "keep", **extra: str) -> dict[str, str]:
        return {"VISUAL": self.command, "EDITOR": "", "FAKE_EDITOR_LOG": str(self.log),
                "FAKE_EDITOR_ACTION": action, **extra}

    def runs(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def last(self) -> dict[str, Any]:
        runs = self.runs()
        assert runs, "the editor never ran"
        return runs[-1]


@pytest.fixture
def editor(tmp_path: Path) -> FakeEditor:
    return FakeEditor(tmp_path)


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return ok(kms("keys", "create", "--alias", "alias/app")).stdout.decode().strip()


def encrypt_to(kms: Runner, path: Path, data: bytes, *args: str) -> bytes:
    ok(kms("encrypt", *args, "-o", str(path), input=data))
    return path.read_bytes()


def inspect(kms: Runner, path: Path) -> dict[str, Any]:
    return json.loads(ok(kms("inspect", str(path), "--json")).stdout)


def events(kms: Runner) -> list[tuple[str, dict[str, Any], str | None]]:
    out = ok(kms("audit", "show")).stdout.decode()
    return [(r["eventName"], r.get("requestParameters", {}), r.get("errorCode"))
            for r in map(json.loads, out.splitlines())]


def names(kms: Runner) -> list[str]:
    return [name for name, _, _ in events(kms)]


#: What the tests themselves keep in tmp_path: the vault's folder, the fake editor and its log.
SCAFFOLDING = frozenset(("kms", "fake_editor.py", "editor.jsonl"))


def beside(path: Path) -> list[str]:
    """The files in ``path``'s folder, less the tests' own: a temporary file left behind shows here."""
    return sorted(p.name for p in path.parent.iterdir() if p.name not in SCAFFOLDING)


# -- the round trip -----------------------------------------------------------------
def test_round_trip_keeps_key_and_context(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml.kms"
    encrypt_to(kms, f, b"user: admin\n", "--key", "alias/app", "-c", "app=web", "-c", "env=prod")
    before = names(kms)
    r = ok(kms("edit", str(f), env_update=editor.env("append:password: s3cret\n")))
    assert r.stdout == b""
    assert editor.last()["content"] == "user: admin\n"  # the editor saw the plaintext
    # The new text is encrypted under the same key and context, as a binary ciphertext, mode 0600.
    assert ok(kms("decrypt", "-c", "env=prod", "-c", "app=web", "-i", str(f))).stdout == (
        b"user: admin\npassword: s3cret\n")
    doc = inspect(kms, f)
    assert (doc["KeyId"], doc["EncryptionContext"], doc["Armored"]) == (key, {"app": "web", "env": "prod"}, False)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert b"s3cret" not in f.read_bytes()
    assert beside(f) == ["app.yaml.kms"]  # no temporary file left
    # One Decrypt, one Encrypt: nothing else, and both under the file's own key and context.
    new = events(kms)[len(before):-1]  # less the decrypt just above
    assert [(n, e) for n, _, e in new] == [("Decrypt", None), ("Encrypt", None)]
    assert new[0][1]["encryptionContext"] == new[1][1]["encryptionContext"] == {"app": "web", "env": "prod"}
    assert new[1][1]["keyId"] == key
    assert new[1][1]["inputBytes"] == len(b"user: admin\npassword: s3cret\n")


def test_an_editor_that_saves_by_renaming_is_read_back(kms: Runner, key: str, editor: FakeEditor,
                                                       tmp_path: Path) -> None:
    f = tmp_path / "notes.kms"
    encrypt_to(kms, f, b"old", "--key", key)
    ok(kms("edit", str(f), env_update=editor.env("replace:new text")))
    assert ok(kms("decrypt", "-i", str(f))).stdout == b"new text"


def test_plaintext_lives_in_a_private_memory_folder_that_is_removed(kms: Runner, key: str, editor: FakeEditor,
                                                                   tmp_path: Path) -> None:
    f = tmp_path / "db.env.kms"
    encrypt_to(kms, f, b"PASSWORD=hunter2\n", "--key", key)
    ok(kms("edit", str(f), env_update=editor.env("append:X=1\n")))
    run = editor.last()
    plain = Path(run["path"])
    assert run["fs"] in ("tmpfs", "ramfs"), run["fs"]
    assert plain.name == "db.env"  # the extension kept for the editor's syntax, the ciphertext's dropped
    assert run["folder_mode"] == 0o700 and run["file_mode"] == 0o600
    assert plain.parent.name.startswith("kmscli-edit-")
    assert not plain.parent.exists()  # removed, with everything the editor put in it
    # The editor's temporary files go beside the plaintext; kmscli's secrets are not in its environment.
    assert run["env"] == {"TMPDIR": str(plain.parent), "KMSCLI_PASSPHRASE": None, "KMSCLI_SESSION": None}
    assert run["argv"] == [str(plain)]


# -- what is not written ---------------------------------------------------------------
@pytest.mark.parametrize("action", ["exit:3", "remove"])
def test_editor_failure_leaves_the_file_byte_identical(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path,
                                                       action: str) -> None:
    f = tmp_path / "secret.kms"
    original = encrypt_to(kms, f, b"keep me", "--key", key)
    before = names(kms)
    line = fails(kms("edit", str(f), env_update=editor.env(action)), 1, "EditorException")
    assert str(f) in line and "not" in line
    assert f.read_bytes() == original
    assert beside(f) == ["secret.kms"]
    assert not Path(editor.last()["path"]).parent.exists()
    assert names(kms)[len(before):] == ["Decrypt"]  # nothing was encrypted


def test_unchanged_content_is_not_rewritten(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path) -> None:
    f = tmp_path / "secret.kms"
    original = encrypt_to(kms, f, b"same", "--key", key)
    st = f.stat()
    before = names(kms)
    r = ok(kms("edit", str(f), env_update=editor.env("keep")))
    assert b"unchanged" in r.stderr and str(f).encode() in r.stderr
    assert f.read_bytes() == original
    assert (f.stat().st_ino, f.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)  # not even replaced
    assert names(kms)[len(before):] == ["Decrypt"]  # no Encrypt record
    assert beside(f) == ["secret.kms"]


def test_a_denied_encrypt_leaves_the_file_as_it_was(kms: Runner, key: str, editor: FakeEditor,
                                                    tmp_path: Path) -> None:
    """Policies apply to edit's own calls: Decrypt allowed and Encrypt denied is exit 7, file untouched."""
    f = tmp_path / "secret.kms"
    original = encrypt_to(kms, f, b"data", "--key", key)
    deny = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*"}]}
    ok(kms("policy", "put", key, "-", input=json.dumps(deny).encode()))
    fails(kms("edit", str(f), env_update=editor.env("append:more")), 7, "AccessDeniedException")
    assert f.read_bytes() == original
    assert events(kms)[-1][0::2] == ("Encrypt", "AccessDeniedException")


# -- another key, context or form ----------------------------------------------------------
def test_key_and_context_retarget(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path) -> None:
    other = ok(kms("keys", "create", "--alias", "alias/other")).stdout.decode().strip()
    f = tmp_path / "secret.kms"
    encrypt_to(kms, f, b"v1", "--key", key, "-c", "env=dev")
    before = names(kms)
    ok(kms("edit", str(f), "--key", "alias/other", "-c", "env=prod", env_update=editor.env("append:+v2")))
    assert ok(kms("decrypt", "-c", "env=prod", "-i", str(f))).stdout == b"v1+v2"
    fails(kms("decrypt", "-c", "env=dev", "-i", str(f)), 6)
    doc = inspect(kms, f)
    assert (doc["KeyId"], doc["EncryptionContext"]) == (other, {"env": "prod"})
    # Decrypt with the file's own context; the new target is tried (an Encrypt of nothing) before the
    # editor opens, then the real Encrypt.
    new = events(kms)[len(before):len(before) + 3]
    assert [(n, p.get("keyId"), p["encryptionContext"], p.get("inputBytes")) for n, p, _ in new] == [
        ("Decrypt", None, {"env": "dev"}, None),
        ("Encrypt", "alias/other", {"env": "prod"}, 0),
        ("Encrypt", "alias/other", {"env": "prod"}, 5),
    ]


def test_an_unusable_target_stops_before_the_editor(kms: Runner, key: str, editor: FakeEditor,
                                                    tmp_path: Path) -> None:
    f = tmp_path / "secret.kms"
    original = encrypt_to(kms, f, b"data", "--key", key)
    fails(kms("edit", str(f), "--key", "alias/typo", env_update=editor.env("append:x")), 3, "NotFoundException")
    ok(kms("keys", "disable", key))
    fails(kms("edit", str(tmp_path / "new.kms"), "--key", key, env_update=editor.env("append:x")), 4,
          "DisabledException")
    assert editor.runs() == []
    assert f.read_bytes() == original
    assert beside(f) == ["secret.kms"]


def test_armored_input_stays_armored(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path) -> None:
    f = tmp_path / "token.txt.asc"
    encrypt_to(kms, f, b"tok-1", "--key", key, "--armor")
    ok(kms("edit", str(f), env_update=editor.env("append:\ntok-2")))
    assert Path(editor.last()["path"]).name == "token.txt"
    text = f.read_bytes()
    assert text.startswith(b"-----BEGIN KMSCLI ENCRYPTED MESSAGE-----\n")
    assert text.rstrip().endswith(b"-----END KMSCLI ENCRYPTED MESSAGE-----")
    assert inspect(kms, f)["Armored"] is True
    assert ok(kms("decrypt", "-i", str(f))).stdout == b"tok-1\ntok-2"


def test_armor_option_turns_a_binary_file_into_armor(kms: Runner, key: str, editor: FakeEditor,
                                                     tmp_path: Path) -> None:
    f = tmp_path / "token.kms"
    encrypt_to(kms, f, b"tok", "--key", key)
    ok(kms("edit", str(f), "--armor", env_update=editor.env("append:!")))
    assert f.read_bytes().startswith(b"-----BEGIN KMSCLI ENCRYPTED MESSAGE-----")
    assert ok(kms("decrypt", "-i", str(f))).stdout == b"tok!"


def test_a_context_stored_as_its_digest_must_be_given(kms: Runner, key: str, editor: FakeEditor,
                                                      tmp_path: Path) -> None:
    big = "v" * 1100  # over 1024 encoded bytes: the header keeps only its digest
    f = tmp_path / "big.kms"
    original = encrypt_to(kms, f, b"data", "--key", key, "-c", f"k={big}")
    line = fails(kms("edit", str(f), env_update=editor.env("append:!")), 2, "ValidationException")
    assert "--context" in line and "digest" in line
    assert editor.runs() == [] and f.read_bytes() == original
    ok(kms("edit", str(f), "-c", f"k={big}", env_update=editor.env("append:!")))
    assert ok(kms("decrypt", "-c", f"k={big}", "-i", str(f))).stdout == b"data!"


# -- a new file --------------------------------------------------------------------------
def test_a_new_file_starts_empty_and_needs_a_key(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path) -> None:
    f = tmp_path / "new.yaml.kms"
    line = fails(kms("edit", str(f), env_update=editor.env("append:a: 1\n")), 2, "ValidationException")
    assert "--key" in line and not f.exists()
    before = names(kms)
    ok(kms("edit", str(f), "--key", "alias/app", "-c", "app=web", env_update=editor.env("append:a: 1\n")))
    assert editor.last()["content"] == "" and Path(editor.last()["path"]).name == "new.yaml"
    assert ok(kms("decrypt", "-c", "app=web", "-i", str(f))).stdout == b"a: 1\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and inspect(kms, f)["Armored"] is False
    assert [(n, p.get("inputBytes")) for n, p, _ in events(kms)[len(before):len(before) + 2]] == [
        ("Encrypt", 0), ("Encrypt", 5)]
    # Nothing saved: nothing created.
    g = tmp_path / "empty.kms"
    r = ok(kms("edit", str(g), "--key", key, env_update=editor.env("keep")))
    assert b"not created" in r.stderr and not g.exists()


# -- what edit refuses ----------------------------------------------------------------------
def test_a_file_that_is_not_a_ciphertext_is_exit_6(kms: Runner, key: str, editor: FakeEditor,
                                                   tmp_path: Path) -> None:
    f = tmp_path / "plain.yaml"
    f.write_bytes(b"password: hunter2\n")
    line = fails(kms("edit", str(f), env_update=editor.env("append:x")), 6, "InvalidCiphertextException")
    assert str(f) in line and "not a kmscli ciphertext" in line and "kmscli encrypt" in line
    assert "hunter2" not in line
    assert f.read_bytes() == b"password: hunter2\n" and editor.runs() == []


def test_links_and_special_files_are_refused(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path) -> None:
    target = tmp_path / "real.kms"
    original = encrypt_to(kms, target, b"data", "--key", key)
    link = tmp_path / "link.kms"
    link.symlink_to(target)
    line = fails(kms("edit", str(link), env_update=editor.env("append:x")), 2, "ValidationException")
    assert "symbolic link" in line and str(target) in line
    assert link.is_symlink() and target.read_bytes() == original
    fails(kms("edit", str(tmp_path), env_update=editor.env("append:x")), 2, "ValidationException")
    fails(kms("edit", "-", env_update=editor.env("append:x")), 2, "ValidationException")
    assert editor.runs() == []


def test_no_memory_file_system_is_refused(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """In process, with every mount reported as a disk: exit 2 before the vault is opened, no plaintext."""
    from kmscli.cli import memfs
    from tests.faults._inproc import run_cli

    f = tmp_path / "secret.kms"
    original = encrypt_to(kms, f, b"data", "--key", key)
    before = names(kms)
    monkeypatch.setattr(memfs, "_mounts", lambda: [("/", "ext4")])
    for name, value in editor.env("append:x").items():
        monkeypatch.setenv(name, value)
    r = run_cli(["edit", str(f)], env)
    assert r.returncode == 2, r.err
    assert r.err.startswith("kmscli: ValidationException: ") and "memory file system" in r.err
    assert editor.runs() == [] and f.read_bytes() == original
    assert names(kms) == before


def test_the_file_system_is_the_deepest_mount_mounted_last(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kmscli.cli import memfs

    mounts = [("/", "ext4"), (str(tmp_path), "ext4"), (str(tmp_path), "tmpfs"), (f"{tmp_path}/a b", "xfs")]
    monkeypatch.setattr(memfs, "_mounts", lambda: mounts)
    (tmp_path / "a b").mkdir()
    assert memfs.filesystem_type(tmp_path / "x") == "tmpfs"  # mounted on top of the ext4 at the same point
    assert memfs.filesystem_type(tmp_path / "a b" / "f") == "xfs"
    assert memfs.filesystem_type(f"{tmp_path}-other") == "ext4"  # a prefix of the name is not a parent


# -- the editor ----------------------------------------------------------------------------
def test_visual_then_editor_then_vi_split_as_a_shell_splits(kms: Runner, key: str, editor: FakeEditor,
                                                           tmp_path: Path) -> None:
    f = tmp_path / "s.kms"
    encrypt_to(kms, f, b"x", "--key", key)
    # $EDITOR when $VISUAL is empty, split into words: its arguments come before the file.
    ok(kms("edit", str(f), env_update={**editor.env("keep"), "VISUAL": "",
                                       "EDITOR": f"{editor.command} --wait 'two words'"}))
    assert editor.last()["argv"][:2] == ["--wait", "two words"]
    # Neither: vi, from PATH. A "vim" gets the options that keep swap, backup, undo and viminfo files out.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("vi", "vim"):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {editor.command} \"$@\"\n")
        (bin_dir / name).chmod(0o700)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    ok(kms("edit", str(f), env_update={**editor.env("keep"), "VISUAL": "", "PATH": path}))
    assert editor.last()["argv"] == [editor.last()["path"]]  # a vi that is no vim: as it is
    ok(kms("edit", str(f), env_update={**editor.env("keep"), "VISUAL": "vim -R", "PATH": path}))
    assert editor.last()["argv"] == ["-n", "-i", "NONE", "-c", "set nobackup nowritebackup noundofile", "-R",
                                     editor.last()["path"]]


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")
def test_vim_leaves_no_copy_outside_the_private_folder(kms: Runner, key: str, tmp_path: Path) -> None:
    """A vimrc that puts swap, backup, undo and viminfo files on disk (as many do): none is written there.

    Without kmscli's options this vim run leaves the undo file (the text) and the viminfo in ``disk``.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    vimrc = tmp_path / "vimrc"
    vimrc.write_text(f"set nocompatible\nset swapfile directory={disk}//\nset backup writebackup backupdir={disk}//\n"
                     f"set undofile undodir={disk}//\nset viminfo='10,n{disk}/viminfo\n")
    f = tmp_path / "secret.kms"
    encrypt_to(kms, f, b"hello\n", "--key", key)
    visual = f"vim -u {shlex.quote(str(vimrc))} -es -c 'call append(line(\"$\"), \"added\")' -c wq"
    ok(kms("edit", str(f), env_update={"VISUAL": visual, "EDITOR": ""}))
    assert ok(kms("decrypt", "-i", str(f))).stdout == b"hello\nadded\n"
    assert sorted(disk.iterdir()) == []


def test_an_editor_that_cannot_run_is_exit_2_before_decrypting(kms: Runner, key: str, editor: FakeEditor,
                                                               tmp_path: Path) -> None:
    f = tmp_path / "s.kms"
    encrypt_to(kms, f, b"x", "--key", key)
    before = names(kms)
    line = fails(kms("edit", str(f), env_update={"VISUAL": "no-such-editor-here --wait"}), 2, "ValidationException")
    assert "no-such-editor-here" in line and "$VISUAL" in line
    fails(kms("edit", str(f), env_update={"VISUAL": "vim 'unbalanced"}), 2, "ValidationException")
    assert names(kms) == before


# -- signals -------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        assert time.monotonic() < deadline, "hang guard"
        time.sleep(0.05)


@contextlib.contextmanager
def editing(env: dict[str, str], editor: FakeEditor, f: Path) -> Iterator[tuple[subprocess.Popen, dict[str, Any]]]:
    """``kmscli edit f`` with an editor that waits for a signal; yields once the editor runs, with its record.

    Neither kmscli nor the editor outlives the test, whatever it does to them.
    """
    proc = subprocess.Popen([*kmscli_command(), "edit", str(f)], env={**env, **editor.env("wait")},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=default_signals)
    run: dict[str, Any] = {}
    try:
        wait_for(lambda: bool(editor.runs()))
        run = editor.last()
        yield proc, run
    finally:
        if proc.poll() is None:
            proc.kill()
        if run:
            with contextlib.suppress(ProcessLookupError):
                os.kill(run["pid"], signal.SIGKILL)  # it holds the output pipes too
        proc.communicate(timeout=HANG_GUARD_S)


def pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits to be delivered to ``pid`` (once delivered, Python runs its handler
    before it waits for the editor again: the wait returns EINTR)."""
    with open(f"/proc/{pid}/status") as fh:
        masks = dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)
    bit = 1 << (sig - 1)
    return bool((int(masks["SigPnd"], 16) | int(masks["ShdPnd"], 16)) & bit)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_stops_the_editor_and_removes_the_plaintext(kms: Runner, key: str, editor: FakeEditor,
                                                                 tmp_path: Path, env: dict[str, str],
                                                                 sig: int) -> None:
    f = tmp_path / "secret.kms"
    original = encrypt_to(kms, f, b"data", "--key", key)
    with editing(env, editor, f) as (proc, run):
        proc.send_signal(sig)
        proc.wait(timeout=HANG_GUARD_S)
        wait_for(lambda: gone(run["pid"]))  # kmscli ended its editor before its own end
    assert proc.returncode == -sig  # ends by the signal, as a shell expects
    assert not Path(run["path"]).parent.exists()
    assert f.read_bytes() == original
    assert beside(f) == ["secret.kms"]


def test_ctrl_c_goes_to_the_editor_not_to_kmscli(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path,
                                                 env: dict[str, str]) -> None:
    f = tmp_path / "secret.kms"
    encrypt_to(kms, f, b"data", "--key", key)
    with editing(env, editor, f) as (proc, run):
        proc.send_signal(signal.SIGINT)  # to kmscli alone: it waits on, the plaintext stays for the editor
        wait_for(lambda: not pending(proc.pid, signal.SIGINT))
        assert Path(run["path"]).exists() and proc.poll() is None
        # Had the SIGINT ended kmscli, it would exit 130 "interrupted"; it is still waiting for the
        # editor, and says how it ended.
        os.kill(run["pid"], signal.SIGTERM)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 1, err
    assert b"EditorException" in err and b"SIGTERM" in err
    assert not Path(run["path"]).parent.exists()


def test_a_killed_edit_leaves_nothing_for_the_next(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path,
                                                   env: dict[str, str]) -> None:
    f = tmp_path / "secret.kms"
    encrypt_to(kms, f, b"data", "--key", key)
    with editing(env, editor, f) as (proc, run):
        proc.kill()  # SIGKILL: no clean-up can run
        proc.wait(timeout=HANG_GUARD_S)
    left = Path(run["path"]).parent
    assert left.exists()
    ok(kms("edit", str(f), env_update=editor.env("keep")))  # the next edit removes it
    assert not left.exists()


# -- a session and a terminal ---------------------------------------------------------------------
def test_through_a_session(kms: Runner, key: str, editor: FakeEditor, tmp_path: Path) -> None:
    f = tmp_path / "secret.kms"
    encrypt_to(kms, f, b"v1", "--key", key, "-c", "a=b")
    runtime = {"KMSCLI_RUNTIME_DIR": str(tmp_path / "run")}
    line = ok(kms("unlock", env_update=runtime)).stdout.decode().strip()
    session = {**runtime, "KMSCLI_SESSION": line.split("=", 1)[1]}
    try:
        before = names(kms)
        r = ok(kms("edit", str(f), env_update={**editor.env("append:+v2"), **session},
                   env_remove=("KMSCLI_PASSPHRASE",)))
        assert editor.last()["env"]["KMSCLI_SESSION"] is None
        assert ok(kms("decrypt", "-c", "a=b", "-i", str(f))).stdout == b"v1+v2"
        out = ok(kms("audit", "show")).stdout.decode()
        made = [json.loads(line) for line in out.splitlines()][len(before):len(before) + 2]
        assert [r["eventName"] for r in made] == ["Decrypt", "Encrypt"]
        # Both made by the agent for one caller, the edit process, as the kernel named it (SO_PEERCRED).
        assert made[0]["userIdentity"]["pid"] == made[1]["userIdentity"]["pid"] == editor.last()["ppid"]
        # A session that cannot be used stops it before the editor, with the session's own error.
        fails(kms("edit", str(f), env_update={**editor.env("append:x"), **session,
                                              "KMSCLI_SESSION": session["KMSCLI_SESSION"][:-4] + "0000"},
                  env_remove=("KMSCLI_PASSPHRASE",)), 5, "InvalidSessionException")
        assert len(editor.runs()) == 1
        assert r.stderr == b""
    finally:
        kms("lock", env_update=session)


def test_the_editor_gets_the_terminal_after_the_prompt(vault: Path, kms: Runner, key: str, editor: FakeEditor,
                                                        tmp_path: Path) -> None:
    from tests.ttyrun import run_on_tty

    f = tmp_path / "secret.kms"
    encrypt_to(kms, f, b"v1", "--key", key)
    env = clean_env(KMSCLI_VAULT=str(vault), **editor.env("append:+v2"))
    code, screen = run_on_tty(["edit", str(f)], env, [PASSPHRASE.encode()])
    assert code == 0, screen
    assert screen.count(b"passphrase") == 1  # asked once, for both calls
    assert PASSPHRASE.encode() not in screen
    run = editor.last()
    assert run["tty"] == [True, True] and run["echo"] is True  # the prompt gave the terminal back as it was
    assert ok(kms("decrypt", "-i", str(f))).stdout == b"v1+v2"
