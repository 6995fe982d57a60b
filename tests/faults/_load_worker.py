"""One load-test worker process (run by test_load.py, not collected by pytest).

    python _load_worker.py ROLE INDEX SECONDS RESULTS CLI_EVERY SEED

ROLE ``writer`` creates keys (half of them with an alias) and aliases for its
own keys; ROLE ``crypto`` encrypts and decrypts random data under random
contexts with the keys the test made beforehand (``alias/load-0`` ...). One
early and every CLI_EVERY-th operation go through the real ``kmscli``
command in a child process, the others through the service layer in this process (what the CLI
calls, without interpreter start-up, so the vault sees far more operations).

The worker unlocks the vault once, prints ``ready`` and waits for a line on
stdin: the test starts every worker's SECONDS at the same moment, after the
32 interpreters have started. Each operation that returned is appended to RESULTS as one JSON line, written
with a single ``write`` after the operation was acknowledged: ``{"op": ...,
"ok": true, ...}`` or ``{"op": ..., "ok": false, "error": "..."}``.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kmscli.service import Kms  # noqa: E402
from kmscli.vault.store import PassphraseKeySource  # noqa: E402
from tests.conftest import kmscli_command  # noqa: E402

CRYPTO_KEYS = 4
SIZES = [0, 1, 15, 16, 100, 4096, 65_536, 200_000, (1 << 20) + 1]


MIN_OPS = 2


def main() -> None:
    role, index, seconds, results, cli_every, seed = sys.argv[1:]
    idx, every = int(index), int(cli_every)
    rng = random.Random(int(seed) * 1000 + idx + (500 if role == "crypto" else 0))
    out = os.open(results, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    vault = Path(os.environ["KMSCLI_VAULT"])
    passphrase = os.environ["KMSCLI_PASSPHRASE"].encode()
    svc = Kms(vault, PassphraseKeySource(lambda: passphrase))
    scratch = Path(tempfile.mkdtemp(prefix=f"{role}{idx}-", dir=os.environ["LOAD_SCRATCH"]))
    own_keys: list[str] = []
    n = 0
    svc.ListAliases()  # unlock now (the one KDF run), not on the clock
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    end = time.time() + float(seconds)

    def report(entry: dict) -> None:
        os.write(out, (json.dumps(entry) + "\n").encode())

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*kmscli_command(), *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=300)

    def cli_ok(r: subprocess.CompletedProcess) -> str:
        if r.returncode != 0:
            raise RuntimeError(f"exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout.decode().strip()

    # Count work, not seconds: every worker does at least MIN_OPS operations, however slow the
    # machine, so that each kind (CreateKey, CreateAlias, RoundTrip; CLI and service) happens.
    while time.time() < end or n < MIN_OPS:
        n += 1
        # Every CLI_EVERY-th operation goes through the real command, and one early one, so that
        # even starved workers make CLI keys (even writers' 1st operation), CLI aliases (odd
        # writers' 2nd, always an alias) and CLI round trips (even crypto workers' 1st).
        early = (1 + idx % 2) if role == "writer" else (1 if idx % 2 == 0 else 0)
        via_cli = n == early or n % every == 0
        try:
            if role == "writer":
                # A writer's 1st operation makes a key and its 2nd an alias (CLI for one of each
                # pair of writers, the service for the other); after that, chance decides.
                if not own_keys or (n > MIN_OPS and rng.random() < 0.6):
                    alias = f"alias/load-w{idx}-k{n}" if rng.random() < 0.5 else None
                    if via_cli:
                        key_id = cli_ok(cli("keys", "create", "--description", f"w{idx}-{n}",
                                            *(["--alias", alias] if alias else [])))
                    else:
                        key_id = svc.CreateKey(Description=f"w{idx}-{n}", AliasName=alias)["KeyMetadata"]["KeyId"]
                    own_keys.append(key_id)
                    report({"op": "CreateKey", "ok": True, "cli": via_cli, "key": key_id, "alias": alias})
                else:
                    target, alias = rng.choice(own_keys), f"alias/load-w{idx}-a{n}"
                    if via_cli:
                        cli_ok(cli("alias", "create", alias, target))
                    else:
                        svc.CreateAlias(AliasName=alias, TargetKeyId=target)
                    report({"op": "CreateAlias", "ok": True, "cli": via_cli, "key": target, "alias": alias})
            else:
                key = f"alias/load-{rng.randrange(CRYPTO_KEYS)}"
                context = {f"k{i}": rng.choice(["", "v", "é", "x" * 40]) for i in range(rng.randrange(4))}
                data = rng.randbytes(rng.choice(SIZES))
                if via_cli:
                    src, ct, back = scratch / "in", scratch / "ct", scratch / "out"
                    src.write_bytes(data)
                    ctx = [a for k, v in context.items() for a in ("-c", f"{k}={v}")]
                    armor = ["--armor"] if rng.random() < 0.3 else []
                    cli_ok(cli("encrypt", "--key", key, *ctx, *armor, "-i", str(src), "-o", str(ct)))
                    cli_ok(cli("decrypt", *ctx, "-i", str(ct), "-o", str(back)))
                    same = back.read_bytes() == data
                else:
                    ct_buf, back_buf = io.BytesIO(), io.BytesIO()
                    svc.Encrypt(KeyId=key, reader=io.BytesIO(data), writer=ct_buf, EncryptionContext=context)
                    ct_buf.seek(0)
                    svc.Decrypt(reader=ct_buf, writer=back_buf, EncryptionContext=context)
                    same = back_buf.getvalue() == data
                if not same:
                    raise RuntimeError(f"round trip of {len(data)} bytes under {key} returned other bytes")
                report({"op": "RoundTrip", "ok": True, "cli": via_cli, "bytes": len(data)})
        except Exception as e:  # every failure is a finding: report it, keep going
            report({"op": role, "ok": False, "cli": via_cli, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
