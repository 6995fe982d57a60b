"""Where a served request's CPU goes: pre-signed requests through KmsApp, in one process, no HTTP.

    .venv/bin/python bench/serve_profile.py [--op Encrypt|GenerateDataKey] [-n 2000] [--keys N]
                                            [--seed N [--spread]] [--threads T] [--profile] [--sort tottime]

Makes a cheap vault in a temporary folder (kmscli init --kdf-memory 8 --kdf-time 1),
N keys and a credential through the real CLI (--seed adds N more through the
service's SeedVault, in batches of 2,000, each with an alias; --spread sends
each request to a random one of them, so most read a bucket not yet
verified), signs -n distinct requests with
botocore's SigV4, then calls KmsApp.handle on each (with --threads, from a pool
of T threads) and prints the CPU and wall time per request; --profile adds
cProfile's top functions. Each request's record is synced on its own here
(no event loop): compare CPU, not wall time, with bench/serve_load.py.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KMSCLI = [str(ROOT / ".venv" / "bin" / "kmscli")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", default="Encrypt", choices=["Encrypt", "GenerateDataKey"])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="cumulative")
    args = ap.parse_args()

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from kmscli.server.app import KmsApp, VaultBackend
    from kmscli.vault.store import PassphraseKeySource

    work = Path(tempfile.mkdtemp(prefix="kmscli-serve-profile-"))
    vault = work / "v" / "vault.kms"
    env = dict(os.environ, KMSCLI_VAULT=str(vault), KMSCLI_PASSPHRASE="profile")

    def cli(*a: str) -> str:
        return subprocess.run([*KMSCLI, *a], env=env, check=True, capture_output=True, text=True).stdout

    cli("init", "--kdf-memory", "8", "--kdf-time", "1")
    key_id = ""
    for _ in range(args.keys):
        key_id = json.loads(cli("keys", "create", "--json"))["KeyMetadata"]["KeyId"]
    targets = [key_id]
    if args.seed:
        import uuid

        from kmscli.service import Kms

        svc = Kms(vault, PassphraseKeySource(lambda: b"profile"))
        for start in range(0, args.seed, 2000):
            batch = [str(uuid.uuid4()) for _ in range(min(2000, args.seed - start))]
            svc.SeedVault(Keys=[{"KeyId": k, "Materials": [os.urandom(32)]} for k in batch],
                          Aliases=[{"AliasName": f"alias/seed-{k}", "TargetKeyId": k} for k in batch])
            targets += batch
    cred = json.loads(cli("credentials", "create", "profile", "--json"))["AccessKey"]
    signer = SigV4Auth(Credentials(cred["AccessKeyId"], cred["SecretAccessKey"]), "kms", "local")

    def signed() -> tuple[dict[str, Any], bytes]:
        params: dict[str, Any] = {"KeyId": random.choice(targets) if args.spread else key_id}
        if args.op == "Encrypt":
            params["Plaintext"] = base64.b64encode(os.urandom(100)).decode()
        else:
            params["KeySpec"] = "AES_256"
        req = AWSRequest("POST", "http://127.0.0.1:8080/", data=json.dumps(params).encode(),
                         headers={"X-Amz-Target": f"TrentService.{args.op}",
                                  "Content-Type": "application/x-amz-json-1.1"})
        signer.add_auth(req)
        headers = [(k.lower().encode(), v.encode()) for k, v in req.headers.items()] + [(b"host", b"127.0.0.1:8080")]
        return ({"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
                 "headers": headers, "client": ("127.0.0.1", 5555)}, req.body)

    requests = [signed() for _ in range(args.n)]
    app = KmsApp(VaultBackend(vault, PassphraseKeySource(lambda: b"profile")))
    for scope, body in requests[:20]:  # warm: imports, caches
        answer = app.handle(scope, body, "warm")
        assert answer.status == 200, answer.body
    profile = cProfile.Profile() if args.profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profile:
        profile.enable()
    if args.threads:
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda sb: app.handle(sb[0], sb[1], "r"), requests))
    else:
        for scope, body in requests:
            app.handle(scope, body, "r")
    if profile:
        profile.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    spread = " (spread)" if args.spread else ""
    print(f"{args.op}: {args.n} requests, {args.keys + args.seed} key(s){spread}, threads {args.threads or 'none'}: "
          f"CPU {cpu / args.n * 1000:.3f} ms/req, wall {wall / args.n * 1000:.3f} ms/req")
    if profile:
        pstats.Stats(profile).sort_stats(args.sort).print_stats(40)
    app.syncs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
