"""Secrets stay where they belong, checked on every ``execve`` and ``write`` of a whole session.

A session of real commands (init, keys create, encrypt, decrypt, datakey,
decrypting the data key, reencrypt, passwd, audit show, audit verify) runs
under ``strace -f -e trace=execve,write``. Afterwards the test opens the vault
in process to learn the secrets it could not see from outside (every key's
material, the vault key, both KEKs) and checks, in raw bytes, base64 and hex:

* the passphrases are in no ``execve`` (arguments or environment: the session
  passes them by file), no ``write`` and no file but their own;
* key material, the vault key and the KEKs are in no ``write`` and no file;
* the plaintext and the data key are written only to the outputs the session
  asked for (and their temporary files), never to stderr, the audit log or
  anywhere else.

Needs ``strace`` (the CI script installs it) and ptrace; skipped with the
reason otherwise.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kmscli.vault import format as F
from kmscli.vault.store import VaultStore
from tests.conftest import CHEAP_KDF, clean_env, kmscli_command
from tests.vault_contents import contents

PASS1 = "first passphrase: hunter2 correct horse"
PASS2 = "second passphrase: Tr0ub4dor&3 battery"
MESSAGE = b"the launch code is 0000 and nobody must ever see it" * 100


def strace_argv() -> list[str]:
    exe = shutil.which("strace")
    if exe is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    probe = subprocess.run([exe, "-f", "-o", "/dev/null", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"ptrace is not permitted here: {probe.stderr.decode().strip()}")
    argv = [exe, "-f", "-xx", "-y", "-v", "-s", "1048576", "-e", "trace=execve,write"]
    if subprocess.run([*argv, "--seccomp-bpf", "-o", "/dev/null", "true"], capture_output=True).returncode == 0:
        argv.append("--seccomp-bpf")  # stop only at the traced calls: ten times faster
    return argv


SESSION = """
set -e
K="$KMS"
P="--passphrase-file pass1"
$K init $CHEAP $P 2>>err
$K keys create --alias alias/s --description session $P >key_id 2>>err
$K encrypt --key alias/s -c app=s $P -i plain -o ct 2>>err
$K decrypt -c app=s $P -i ct -o out 2>>err
$K datakey alias/s --json $P >dk.json 2>>err
sed -n 's/.*"CiphertextBlob": "\\(.*\\)".*/\\1/p' dk.json | base64 -d >dk.blob
$K decrypt $P -i dk.blob -o dk.plain 2>>err
$K reencrypt --key alias/s --source-context app=s -c app=t $P -i ct -o ct2 2>>err
$K decrypt -c app=t $P -i ct2 >out2 2>>err
$K passwd $P --new-passphrase-file pass2 2>>err
$K decrypt -c app=t --passphrase-file pass2 -i ct2 -o out3 2>>err
$K audit show --json >audit.out 2>>err
$K audit verify --passphrase-file pass2 2>>err
"""


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret could be written down: raw, base64 (both alphabets), hex (both cases)."""
    out = [secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret), secret.hex().encode(),
           secret.hex().upper().encode()]
    if len(secret) > 12:  # base64 of the secret at another offset inside a longer value
        out += [base64.b64encode(secret[i:])[4:-4] for i in (1, 2)]
    return out


def holds(blob: bytes, secret: bytes) -> bool:
    return any(f in blob for f in forms(secret))


_HEX = re.compile(rb"\\x([0-9a-f]{2})")


def decode(line: bytes) -> bytes:
    """An ``strace -xx`` line with every escaped string turned back into its bytes."""
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), line)


def test_a_whole_session_leaks_no_secret(tmp_path: Path) -> None:
    trace = strace_argv()
    work = tmp_path / "work"
    work.mkdir()
    (work / "pass1").write_text(PASS1 + "\n")
    (work / "pass2").write_text(PASS2 + "\n")
    (work / "plain").write_bytes(MESSAGE)
    log = tmp_path / "strace.log"
    env = clean_env(KMSCLI_VAULT=str(work / "vault" / "vault.kms"), KMS=" ".join(kmscli_command()),
                    CHEAP=" ".join(CHEAP_KDF))
    r = subprocess.run([*trace, "-o", str(log), "sh", "-c", SESSION], cwd=work, env=env, capture_output=True,
                       stdin=subprocess.DEVNULL, start_new_session=True, timeout=300)
    assert r.returncode == 0, (r.stderr.decode(), (work / "err").read_text() if (work / "err").exists() else "")
    assert (work / "out").read_bytes() == (work / "out2").read_bytes() == (work / "out3").read_bytes() == MESSAGE

    # The secrets nobody outside could see, from the vault itself.
    vault = work / "vault" / "vault.kms"
    opened, vault_key = contents(vault, PASS2)
    materials = [base64.b64decode(m["Material"]) for k in opened["keys"].values() for m in k["Materials"]]
    assert materials
    header = VaultStore(vault).read_header()
    kek2 = F.derive_kek(PASS2.encode(), header)
    data_key = base64.b64decode(json.loads((work / "dk.json").read_text())["Plaintext"])
    assert (work / "dk.plain").read_bytes() == data_key
    never = {"key material": materials, "vault key": [vault_key], "KEK": [kek2],
             "passphrase": [PASS1.encode(), PASS2.encode()]}
    # What may appear, and where (a written file's name, or an -o file's temporary name).
    allowed = {"plaintext": ([MESSAGE[:64]], {"plain", "out", "out2", "out3"}),
               "data key": ([data_key], {"dk.json", "dk.plain"})}

    # 1. Every execve and every write the session made.
    execs = writes = 0
    for raw in log.read_bytes().splitlines():
        line = decode(raw)
        call = re.match(rb"\d+\s+(execve|write)\(", line)
        if not call:
            continue
        if call.group(1) == b"execve":
            execs += 1
            for what, secrets in [*never.items(), *((w, s) for w, (s, _) in allowed.items())]:
                assert not any(holds(line, s) for s in secrets), f"{what} in an execve: {line[:200]!r}"
            continue
        writes += 1
        target = re.match(rb"\d+\s+write\(\d+<([^>]*)>", line)
        name = Path(target.group(1).decode(errors="replace")).name if target else "?"
        for what, secrets in never.items():
            assert not any(holds(line, s) for s in secrets), f"{what} written to {name}"
        for what, (secrets, where) in allowed.items():
            if any(holds(line, s) for s in secrets):
                base = re.sub(r"^\.(.*)\.[0-9a-f]{12}\.tmp$", r"\1", name)
                assert base in where, f"{what} written to {name}"
    assert execs >= 13 and writes > 30, (execs, writes)

    # 2. Every file the session left behind.
    for f in sorted(p for p in work.rglob("*") if p.is_file()):
        data = f.read_bytes()
        for what, secrets in never.items():
            if what == "passphrase" and f.name in ("pass1", "pass2"):
                continue
            assert not any(holds(data, s) for s in secrets), f"{what} in {f.relative_to(work)}"
        for what, (secrets, where) in allowed.items():
            assert f.name in where or not any(holds(data, s) for s in secrets), f"{what} in {f.relative_to(work)}"

    # 3. And the places people look: stderr and the audit log hold none of it.
    for f in ("err", "audit.out", "vault/audit.jsonl"):
        data = (work / f).read_bytes()
        assert data, f
        for secrets in [*never.values(), *(s for s, _ in allowed.values())]:
            assert not any(holds(data, s) for s in secrets), f
