"""Start-up: what the entry point imports, and the ``random`` fast path answering as Typer would."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S, Runner, clean_env, fails, kmscli_command, ok
from tests.session.conftest import Unlocker

HEAVY = ("typer", "rich", "cryptography", "pydantic", "argon2", "platformdirs", "click")


def imported(args: list[str], env: dict[str, str], input: bytes = b"") -> set[str]:
    """Top-level packages ``kmscli ARGS`` imports, from ``python -X importtime``."""
    r = subprocess.run([sys.executable, "-X", "importtime", *kmscli_command(), *args], input=input,
                       capture_output=True, env=env, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr[-2000:]
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", r.stderr.decode(), re.M)
    return {n.split(".")[0] for n in names}


def test_the_thin_client_imports_no_framework(kms: Runner, unlock: Unlocker, env: dict[str, str]) -> None:
    ok(kms("keys", "create", "--alias", "alias/app"))
    s = unlock()
    mods = imported(["encrypt", "--key", "alias/app"], {**env, **s}, b"x" * 100)
    assert not mods & set(HEAVY), mods & set(HEAVY)
    assert "socket" not in mods and "json" not in mods


@pytest.mark.parametrize("args", [["--version"], ["random", "16"], ["random", "32", "--format", "hex"]])
def test_fast_answers_import_no_framework(args: list[str]) -> None:
    mods = imported(args, clean_env())
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_typer_runs_without_pydantic(vault: Path, env: dict[str, str]) -> None:
    assert "pydantic" not in imported(["keys", "list"], env)


def test_random_fast_path_output(kms: Runner) -> None:
    for n in (1, 16, 1024):
        out = ok(kms("random", str(n))).stdout
        assert out.endswith(b"\n") and len(base64.b64decode(out[:-1], validate=True)) == n
    assert re.fullmatch(rb"[0-9a-f]{64}\n", ok(kms("random", "--format", "hex", "32")).stdout)
    assert re.fullmatch(rb"[0-9a-f]{8}\n", ok(kms("random", "-f", "hex", "4")).stdout)
    assert re.fullmatch(rb"[0-9a-f]{8}\n", ok(kms("random", "4", "--format=hex")).stdout)
    assert len(ok(kms("random", "100", "--format", "raw")).stdout) == 100


@pytest.mark.parametrize("args", [
    ["random", "0"], ["random", "1025"], ["random", "-1"], ["random", "abc"], ["random"],
    ["random", "16", "--format", "b64"], ["random", "16", "17"], ["random", "16", "--format"],
    ["random", "16", "--vault"],
])
def test_random_errors_come_from_typer_unchanged(kms: Runner, args: list[str]) -> None:
    """Whatever the fast path does not answer goes to Typer, so its errors stay as they were."""
    fast = kms(*args)
    typer_path = kms("--debug", *args)  # a global option: the fast path steps aside
    assert fast.returncode == typer_path.returncode == 2
    assert fast.stderr == typer_path.stderr
    fails(fast, 2)


def test_random_to_a_full_disk_fails_as_typer_does(kms: Runner, env: dict[str, str]) -> None:
    for fmt in ("base64", "hex", "raw"):
        with open("/dev/full", "wb") as full:
            fast = subprocess.run([*kmscli_command(), "random", "16", "--format", fmt], stdout=full,
                                  stderr=subprocess.PIPE, env=env, timeout=HANG_GUARD_S)
            slow = subprocess.run([*kmscli_command(), "random", f"-f{fmt}", "16"], stdout=full,
                                  stderr=subprocess.PIPE, env=env, timeout=HANG_GUARD_S)
        assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr)
        assert fast.returncode in (1, 2) and fast.stderr.startswith(b"kmscli: ")


def test_random_into_a_closed_pipe_is_quiet(env: dict[str, str]) -> None:
    kmscli = kmscli_command()[0]
    r = subprocess.run(f"{kmscli} random 1024 --format hex | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", capture_output=True, env=env, timeout=HANG_GUARD_S)
    assert r.stderr == b""
    assert r.stdout.strip() in (b"0", b"141")
