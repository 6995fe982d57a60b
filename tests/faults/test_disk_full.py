"""Full disks and I/O errors: one clear line, the documented exit code, nothing half-written.

Exit codes: a vault or audit log that cannot be written is exit 8
(``VaultFileException`` / ``AuditLogException``), like any other vault or
audit file problem; an ``-o`` file or stdout that cannot be written is exit 2
(``ValidationException``), like any other unwritable ``-o`` (SPEC). In every
case the previous vault is intact and opens with all its keys, no temporary
file is left, no ``-o`` file appears, and the audit log still verifies.

Two ways in: a real, small tmpfs filled up (where the machine lets us mount
one: root in CI), and ``ENOSPC``/``EIO`` injected at every single write,
fsync, rename and link a command makes, one at a time, with the CLI run in
process.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kmscli import audit
from kmscli.cli import fileio
from kmscli.service import Kms
from kmscli.vault.store import PassphraseKeySource
from tests.conftest import CHEAP_KDF, PASSPHRASE, Runner, fails, ok
from tests.faults._inproc import one_error_line, run_cli
from tests.vault_contents import contents


# -- a real full disk ---------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of our own, where the machine lets us mount one."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected faults below still run")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system holding ``folder`` to the last byte; return the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def key_ids(vault: Path, passphrase: str = PASSPHRASE) -> set[str]:
    return set(contents(vault, passphrase)[0]["keys"])


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_full_disk_under_the_vault_and_its_log(kms: Runner, tmpfs: Path, figures: Callable[[str], None]) -> None:
    vault = tmpfs / "v" / "vault.kms"
    v = ("--vault", str(vault))
    ok(kms("init", *CHEAP_KDF, *v))
    before_keys = {ok(kms("keys", "create", *v)).stdout.decode().strip() for _ in range(3)}
    before = vault.read_bytes()
    filler = fill(tmpfs)
    # Not a page left: a new passphrase cannot be written (its record may still fit the log's last page).
    line = fails(kms("passwd", *v, env_update={"KMSCLI_NEW_PASSPHRASE": "new"}), 8)
    assert "disk is full" in line or "No space left" in line, line
    assert vault.read_bytes() == before and temps(vault.parent) == []
    seen = set()
    # Give back space a page at a time: the log's append fails (unless its record
    # fits the log's last page), then the vault's rewrite, until the whole change
    # fits. Each failure is clean.
    freed = 0
    written = 0
    while True:
        r = kms("keys", "create", *v)
        if r.returncode == 0:
            break
        line = fails(r, 8)
        seen.add(line.split(":")[1].strip())
        assert "disk is full" in line or "No space left" in line, line
        if "was written" in line:
            # The vault's commit (a few pages of its WAL) fitted and the log's append did not: the
            # change is in place, says so, and its record waits in the vault for the next command.
            written += 1
            before = vault.read_bytes()
        assert vault.read_bytes() == before
        assert temps(vault.parent) == []
        freed += 4096
        os.truncate(filler, max(0, filler.stat().st_size - 4096))
        assert freed < 1 << 20
    new_key = r.stdout.decode().strip()
    filler.unlink()
    found = key_ids(vault)  # the old passphrase still opens it, with every key
    assert before_keys | {new_key} <= found and len(found) == len(before_keys) + 1 + written
    ok(kms("audit", "verify", *v))
    figures(f"full tmpfs: keys create failed cleanly ({', '.join(sorted(seen))}, exit 8) until {freed} bytes "
            "were freed; vault intact, audit verify 0")
    assert seen and seen <= {"AuditLogException", "VaultFileException"}, seen


def test_full_disk_under_the_output(kms: Runner, vault: Path, tmpfs: Path, tmp_path: Path) -> None:
    key = ok(kms("keys", "create")).stdout.decode().strip()
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(300_000))
    ct = tmp_path / "ct"
    ok(kms("encrypt", "--key", key, "-i", str(plain), "-o", str(ct)))
    fill(tmpfs)
    for args in (["decrypt", "-i", str(ct)], ["encrypt", "--key", key, "-i", str(plain)],
                 ["reencrypt", "--key", key, "-i", str(ct)]):
        line = fails(kms(*args, "-o", str(tmpfs / "out")), 2, "ValidationException")
        assert f"cannot write the output {tmpfs / 'out'}" in line, line
        assert sorted(p.name for p in tmpfs.iterdir()) == ["filler"]
    line = fails(kms("decrypt", "-i", str(ct), "-o", "/dev/full"), 2, "ValidationException")
    assert "disk is full" in line
    ok(kms("audit", "verify"))


def test_init_on_a_full_disk(kms: Runner, tmpfs: Path) -> None:
    vault = tmpfs / "v" / "vault.kms"
    vault.parent.mkdir()
    filler = fill(tmpfs)
    fails(kms("init", *CHEAP_KDF, "--vault", str(vault)), 8)
    assert not vault.exists() and temps(vault.parent) == []
    filler.unlink()


def test_init_after_a_failed_init_verifies(tmp_path: Path) -> None:
    vault = tmp_path / "v" / "vault.kms"
    env = {"KMSCLI_VAULT": str(vault), "KMSCLI_PASSPHRASE": PASSPHRASE}
    with _faults(lambda what, path: what == "os.link", errno.ENOSPC):
        one_error_line(run_cli(["init", *CHEAP_KDF], env), 8)
    assert not vault.exists()
    assert run_cli(["init", *CHEAP_KDF], env).returncode == 0
    assert run_cli(["audit", "verify"], env).returncode == 0


# -- injected at every step ------------------------------------------------------------------
class _Injector:
    """Counts I/O steps; raises ``OSError(code)`` at step ``at`` when ``select(what, path)`` holds."""

    def __init__(self) -> None:
        self.at = 0
        self.count = 0
        self.code = errno.ENOSPC
        self.select: Callable[[str, str], bool] = lambda what, path: True
        self.hit: tuple[str, str] | None = None

    def step(self, what: str, path: str) -> None:
        if not self.select(what, path):
            return
        self.count += 1
        if self.count == self.at:
            self.hit = (what, path)
            raise OSError(self.code, os.strerror(self.code))


INJECT = _Injector()


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


class _FaultyRaw:
    """The raw file under an ``-o`` or stdout sink, failing when the injector says so."""

    def __init__(self, raw) -> None:
        self._raw = raw

    def write(self, data):
        INJECT.step("output write", _fd_path(self._raw.fileno()))
        return self._raw.write(data)

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


@pytest.fixture(autouse=True)
def _hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Route the write paths' system calls through INJECT (inert while INJECT.at is 0)."""
    INJECT.at = 0

    def hook(owner, name: str, path_of: Callable[..., str]) -> None:
        real = getattr(owner, name)

        def faulty(*args, **kwargs):
            INJECT.step(f"{getattr(owner, '__name__', 'os')}.{name}", path_of(*args))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, faulty)

    hook(os, "write", lambda fd, *a: _fd_path(fd))
    hook(os, "fsync", lambda fd, *a: _fd_path(fd))
    hook(os, "replace", lambda src, dst, *a, **k: str(dst))
    hook(os, "rename", lambda src, dst, *a, **k: str(dst))
    hook(os, "link", lambda src, dst, *a, **k: str(dst))
    hook(audit, "_write", lambda fd, *a: _fd_path(fd))
    hook(audit, "_sync", lambda fd, *a: _fd_path(fd))
    real_init = fileio._Sink.__init__
    monkeypatch.setattr(fileio._Sink, "__init__",
                        lambda self, raw, where, **kw: real_init(self, _FaultyRaw(raw), where, **kw))
    yield
    INJECT.at = 0


class _faults:
    """Within the block, fail the first step that ``select`` picks, with ``code``."""

    def __init__(self, select: Callable[[str, str], bool], code: int, at: int = 1) -> None:
        self.select, self.code, self.at = select, code, at

    def __enter__(self) -> _Injector:
        INJECT.count, INJECT.hit = 0, None
        INJECT.select, INJECT.code, INJECT.at = self.select, self.code, self.at
        return INJECT

    def __exit__(self, *exc: object) -> None:
        INJECT.at = 0


def _every_step(command: Callable[[], object], code: int) -> Iterator[tuple[int, object, tuple[str, str] | None]]:
    """Run ``command`` once per I/O step it makes, failing that step; yield (step, its result, what failed)."""
    at = 0
    while True:
        at += 1
        with _faults(lambda what, path: True, code, at) as inj:
            result = command()
        if inj.hit is None:  # it made fewer steps than ``at``: every one has had its turn
            return
        yield at, result, inj.hit


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    env = {"KMSCLI_VAULT": str(tmp_path / "kms" / "vault.kms"), "KMSCLI_PASSPHRASE": PASSPHRASE}
    assert run_cli(["init", *CHEAP_KDF], env).returncode == 0
    keys = set()
    for _ in range(2):
        r = run_cli(["keys", "create"], env)
        keys.add(r.stdout.decode().strip())
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(70_000))
    out = tmp_path / "out"
    out.mkdir()
    ct = tmp_path / "ct"
    assert run_cli(["encrypt", "--key", min(keys), "-i", str(plain), "-o", str(ct)], env).returncode == 0
    return {"env": env, "vault": tmp_path / "kms" / "vault.kms", "keys": keys, "plain": plain, "ct": ct, "out": out}


def _check_vault(s: dict, passphrase: str = PASSPHRASE) -> set[str]:
    found = key_ids(s["vault"], passphrase)
    assert s["keys"] <= found
    assert temps(s["vault"].parent) == []
    # As a user would check it: the service completes an append a failure kept out, then verifies.
    Kms(s["vault"], PassphraseKeySource(lambda: passphrase.encode())).VerifyAuditLog(Strict=True)
    return found


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_every_step_of_keys_create(setup: dict, code: int, figures: Callable[[str], None]) -> None:
    s = setup
    steps = 0
    for _at, r, hit in _every_step(lambda: run_cli(["keys", "create"], s["env"]), code):
        steps += 1
        line = one_error_line(r, 8)
        assert os.strerror(code) in line or (code == errno.ENOSPC and "disk is full" in line), line
        found = _check_vault(s)
        if "was written" in line:
            # A failure after the vault's rename (its folder's fsync, or the log's write, which the
            # vault's copy of the record then completes): the change is in place, and says so.
            assert hit is not None and hit[0] in ("os.fsync", "kmscli.audit._write", "kmscli.audit._sync"), (hit, line)
            assert len(found) == len(s["keys"]) + 1, (hit, line)
            s["keys"] = found
        else:
            assert found == s["keys"], (hit, line)
    figures(f"injected {errno.errorcode[code]}: keys create failed cleanly at each of its {steps} I/O steps")
    # The vault's own writes are SQLite's, below Python (the real full disk above and the
    # SIGKILL tests cover them); what Python writes is the audit record, and its sync.
    assert steps >= 2


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_every_step_of_passwd(setup: dict, code: int) -> None:
    s = setup
    env = dict(s["env"], KMSCLI_NEW_PASSPHRASE="new passphrase")
    steps = 0
    for _at, r, _hit in _every_step(lambda: run_cli(["passwd"], env), code):
        steps += 1
        line = one_error_line(r, 8)
        if "was written" in line:
            _check_vault(s, "new passphrase")
            return  # changed (and said so): the rest of the steps would run against the new passphrase
        _check_vault(s)  # the old passphrase still opens it
    assert steps >= 5


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("command", ["decrypt", "encrypt", "reencrypt"])
def test_every_step_of_writing_an_output_file(setup: dict, code: int, command: str,
                                              figures: Callable[[str], None]) -> None:
    s = setup
    n = [0]

    def call():
        n[0] += 1
        target = s["out"] / f"{command}-{n[0]}"
        args = {"decrypt": ["decrypt", "-i", str(s["ct"])],
                "encrypt": ["encrypt", "--key", min(s["keys"]), "-i", str(s["plain"])],
                "reencrypt": ["reencrypt", "--key", max(s["keys"]), "-i", str(s["ct"])]}[command]
        return target, run_cli([*args, "-o", str(target)], s["env"])

    steps = 0
    for _at, (target, r), hit in _every_step(call, code):
        assert not target.exists()
        steps += 1
        assert hit is not None
        on_output = str(s["out"]) in hit[1]
        line = one_error_line(r, 2 if on_output else 8)
        assert os.strerror(code) in line or (code == errno.ENOSPC and "disk is full" in line), line
        assert list(s["out"].iterdir()) == [], (hit, line)  # no output, no temporary file
        _check_vault(s)
    figures(f"injected {errno.errorcode[code]}: {command} -o failed cleanly at each of its {steps} I/O steps")
    assert steps >= 4


def test_stdout_that_cannot_be_written(setup: dict) -> None:
    s = setup
    with _faults(lambda what, path: what == "output write", errno.EIO):
        r = run_cli(["decrypt", "-i", str(s["ct"])], s["env"])
    line = one_error_line(r, 2)
    assert "cannot write to standard output" in line
    records = [json.loads(x) for x in s["vault"].with_name("audit.jsonl").read_bytes().splitlines()]
    assert records[-1]["eventName"] == "Decrypt" and records[-1]["errorCode"] == "ValidationException"
