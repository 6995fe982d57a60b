"""AWS Encryption SDK format benchmark: kmscli's ESDK messages beside aws-encryption-cli, kmscli's own
format and age, through pipes (issue 18, "speed").

    .venv/bin/python bench/esdk_bench.py [--size 1G] [--aws-size SIZE] [--runs 3] [--lat-runs 20]
                                         [--rounds 10] [--codec-size 256M] [--codec-runs 3] [--parts ...]
                                         [--max-load X] [--out bench/ESDK.md] [--note TEXT]

Everything happens in fresh temporary folders (vaults, audit logs, ciphertexts, hyperfine JSON in
the temp folder; the plaintext in /dev/shm): two vaults made with a cheap KDF (`kmscli init
--kdf-memory 8 --kdf-time 1`, passphrase from KMSCLI_PASSPHRASE), the first used directly (own format
and `--format esdk`), the second served by `kmscli serve --port 0` on 127.0.0.1 with a credential from
`kmscli credentials create`, so that kmscli's remote mode (`--endpoint URL`), `aws-encryption-cli` and
`aws kms` all use the same remote key (AWS_ENDPOINT_URL_KMS). The server gets SIGTERM, the session is
locked and the folders are removed at the end, also on failure, Ctrl-C or SIGTERM.

Parts (`--parts`, default all): `throughput` (`cat FILE | TOOL | wc -c`, every variant encrypt and
decrypt once per repetition, repetitions interleaved, order reversed every other one), `latency`
(100-byte encrypt, hyperfine medians plus interleaved rounds against `python -c pass`), `codec`
(in-process, the ESDK codec with `threaded_hash` off and on, hashlib SHA-384 and AES-GCM alone;
wall and CPU time) and `ceilings` (`openssl speed` and `python -c` hashlib). Prints a Markdown report
and writes it to --out (default bench/ESDK.md). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import find_agent, loadavg, ms, pipeline, warm  # noqa: E402 - bench/bench.py's helpers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = ROOT / ".venv" / "bin"
PY = os.environ.get("BENCH_PYTHON", str(BIN / "python"))
KMSCLI = os.environ.get("BENCH_KMSCLI", str(BIN / "kmscli"))
AWS_ESDK_CLI = os.environ.get("BENCH_AWS_ENCRYPTION_CLI", str(BIN / "aws-encryption-cli"))
AWS_CLI = os.environ.get("BENCH_AWS_CLI", str(BIN / "aws"))
PASSPHRASE = "correct horse battery staple, esdk benchmark only"
CHEAP_KDF = ["--kdf-memory", "8", "--kdf-time", "1"]
MIB = 1 << 20
SAMPLE = 4 * MIB  # round-trip and interoperability checks, untimed
PARTS = ("throughput", "latency", "codec", "ceilings")
COMMITMENT = ["--commitment-policy", "require-encrypt-require-decrypt"]
#: the throughput variants, by name
OWN = "kmscli, own format (vault)"
V_SIGNED = "kmscli `--format esdk`, signed 0x0578 (vault)"
V_UNSIGNED = "kmscli `--format esdk --unsigned` 0x0478 (vault)"
R_SIGNED = "kmscli remote, signed 0x0578"
R_UNSIGNED = "kmscli remote `--unsigned` 0x0478"
AWS_4K = "aws-encryption-cli, signed, 4096-byte frames (its default)"
AWS_1M = "aws-encryption-cli, signed, `--frame-length 1048576`"
AWS_UNSIGNED = "aws-encryption-cli, unsigned `--algorithm AES_256_GCM_HKDF_SHA512_COMMIT_KEY`, 4096-byte frames"
AWS_ROWS = (AWS_4K, AWS_1M, AWS_UNSIGNED)
AGE = "age (X25519)"
CAT = "`cat` (the pipe itself, no crypto)"
SHA384 = "`openssl dgst -sha384` (the signed suite's hash alone)"
#: the python -c commands of the hashlib ceiling (256 MiB in 1 MiB updates; prints MB/s)
HASH_CMD = ("import hashlib,os,time; b=os.urandom(1<<20); h=hashlib.{alg}(); t=time.perf_counter(); "
            "[h.update(b) for _ in range(256)]; print(256*(1<<20)/(time.perf_counter()-t)/1e6)")


def log(msg: str) -> None:
    print(f"esdk_bench: {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """'1G', '256M', '512MiB', '64k', '1048576' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 256M, 64k, 1048576)")
    n = int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    if n < 1:
        raise argparse.ArgumentTypeError("the size must be at least 1 byte")
    return n


def size_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


class Run:
    """The temp folders, environments, server and session of one benchmark run."""

    def __init__(self, tmp: Path, shm: Path, args: argparse.Namespace) -> None:
        self.tmp, self.shm, self.args = tmp, shm, args
        self.json_dir = tmp / "hyperfine"
        for d in ("v1", "v2", "run", "pycache", "hyperfine", "ct", "age", "aws"):
            (tmp / d).mkdir(mode=0o700)
        env = dict(os.environ)
        # As bench/bench.py: no inherited KMSCLI_* or AWS_* (the user's vault and AWS account are never
        # touched), none of this machine's PYTHONUNBUFFERED/PYTHONDONTWRITEBYTECODE (a user's shell has
        # neither); .pyc files go to the temp folder, so the editable install runs with them.
        for k in list(env):
            if k.startswith(("KMSCLI_", "AWS_")) or k in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"):
                del env[k]
        env.update(KMSCLI_RUNTIME_DIR=str(tmp / "run"), PYTHONPYCACHEPREFIX=str(tmp / "pycache"), NO_COLOR="1",
                   LC_ALL="C", AWS_CONFIG_FILE=str(tmp / "aws" / "config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp / "aws" / "credentials"), AWS_EC2_METADATA_DISABLED="true")
        self.base_env = env
        self.vault_env = dict(env, KMSCLI_VAULT=str(tmp / "v1" / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE)
        self.serve_env = dict(env, KMSCLI_VAULT=str(tmp / "v2" / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE)
        self.remote_env: dict[str, str] = {}  # after setup: the credential, region and endpoint
        self.sess_env: dict[str, str] | None = None
        self.agent_pid: int | None = None
        self.server: subprocess.Popen | None = None
        self.url = ""
        self.arn = ""
        self.age_recipient = ""
        self.age_key = tmp / "age" / "key.txt"
        # results, for the summary
        self.throughput: dict[str, Variant] | None = None
        self.latency: dict[str, float] | None = None
        self.latency_x: dict[str, float] = {}
        self.codec: dict[str, Any] | None = None
        self.codec_gain: list[float] = []
        self.ceilings: dict[str, float] = {}
        self.notes: list[str] = []
        self.loads: list[str] = []
        self.msg = tmp / "msg100"
        self.msg.write_bytes(os.urandom(100))

    def run(self, cmd: list[str], env: dict | None = None, check: bool = True,
            **kw: Any) -> subprocess.CompletedProcess:
        # start_new_session: no controlling terminal, so nothing can prompt
        p = subprocess.run(cmd, env=env or self.base_env, start_new_session=True, capture_output=True, **kw)
        if check and p.returncode != 0:
            raise RuntimeError(f"{shlex.join(map(str, cmd))} -> exit {p.returncode}: "
                               f"{p.stderr.decode(errors='replace').strip()[:400]}")
        return p

    def section(self, name: str) -> None:
        self.loads.append(f"{name} {loadavg()}")
        log(f"{name} (load {loadavg()})")


# -- notes on the machine -------------------------------------------------------------------------
def first_line(cmd: list[str], env: Mapping[str, str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "n/a"


def machine_info(env: dict) -> dict[str, str]:
    cpu, flags = "unknown", ""
    try:
        txt = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:(.*)$", txt, re.M)
        cpu = m.group(1).strip() if m else cpu
        fl = set(re.search(r"^flags\s*:(.*)$", txt, re.M).group(1).split())  # type: ignore[union-attr]
        flags = ", ".join(f for f in ("aes", "vaes", "pclmulqdq", "sha_ni", "avx2", "avx512f") if f in fl)
    except (OSError, AttributeError):
        pass
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "kmscli"],
                      capture_output=True, text=True).stdout.strip():
        commit += " (uncommitted changes in kmscli/)"
    mem = "?"
    try:
        kib = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))  # type: ignore[union-attr]
        mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    pyver = ("import cryptography, botocore, importlib.metadata as m; print('cryptography', cryptography.__version__, "
             "'botocore', botocore.__version__, 'aws-encryption-sdk', m.version('aws-encryption-sdk'))")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname": first_line(["uname", "-srm"], env),
        "cpu": cpu + (f" (flags: {flags})" if flags else ""),
        "cores": str(os.cpu_count()),
        "memory": mem,
        "python": first_line([PY, "-VV"], env),
        "libs": first_line([PY, "-c", pyver], env),
        "kmscli": first_line([KMSCLI, "--version"], env) + f", commit {commit or 'n/a'}",
        "esdk_cli": first_line([AWS_ESDK_CLI, "--version"], env),
        "aws": first_line([AWS_CLI, "--version"], env),
        "age": first_line(["age", "--version"], env),
        "openssl": first_line(["openssl", "version"], env),
        "hyperfine": first_line(["hyperfine", "--version"], env),
    }


# -- setup ------------------------------------------------------------------------------------------
def start_server(r: Run) -> None:
    errlog = r.tmp / "serve.err"
    with open(errlog, "wb") as err:
        r.server = subprocess.Popen([KMSCLI, "serve", "--port", "0"], env=r.serve_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = re.search(r"serving on (http://\S+)", errlog.read_text(errors="replace"))
        if m:
            r.url = m.group(1)
            return
        if r.server.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"kmscli serve did not start: {errlog.read_text(errors='replace')[-400:]}")


def stop_server(r: Run) -> None:
    if r.server is None or r.server.poll() is not None:
        return
    r.server.send_signal(signal.SIGTERM)  # the server we started, by pid; it stops its workers
    try:
        r.server.wait(30)
    except subprocess.TimeoutExpired:
        log(f"kmscli serve (pid {r.server.pid}) still running 30 s after SIGTERM; SIGKILL to its process group")
        os.killpg(r.server.pid, signal.SIGKILL)  # the group start_new_session made for it
        r.server.wait(10)


def setup(r: Run) -> None:
    log("two vaults with a cheap KDF; keys; a credential; kmscli serve on the second")
    for env in (r.vault_env, r.serve_env):
        r.run([KMSCLI, "init", *CHEAP_KDF], env=env)
    r.run([KMSCLI, "keys", "create", "--alias", "alias/bench"], env=r.vault_env)
    cred = json.loads(r.run([KMSCLI, "credentials", "create", "bench", "--json"], env=r.serve_env).stdout)["AccessKey"]
    start_server(r)
    r.remote_env = dict(r.vault_env, AWS_ACCESS_KEY_ID=cred["AccessKeyId"],
                        AWS_SECRET_ACCESS_KEY=cred["SecretAccessKey"], AWS_DEFAULT_REGION="us-east-1",
                        AWS_ENDPOINT_URL_KMS=r.url)
    meta = json.loads(r.run([KMSCLI, "keys", "create", "--endpoint", r.url, "--alias", "alias/remote", "--json"],
                            env=r.remote_env).stdout)
    r.arn = meta["KeyMetadata"]["Arn"]
    log(f"serving on {r.url}, remote key {r.arn}")
    key = r.age_key
    r.run(["age-keygen", "-o", str(key)])
    r.age_recipient = next(line.split(": ", 1)[1] for line in key.read_text().splitlines()
                           if line.startswith("# public key: "))


def open_session(r: Run) -> None:
    script = (f'out="$({shlex.join([KMSCLI, "unlock", "--ttl", "30m"])})" || exit 1; eval "$out" && '
              '[ -n "${KMSCLI_SESSION:-}" ] && printf %s "$KMSCLI_SESSION"')
    p = r.run(["bash", "-c", script], env=r.vault_env)
    env = dict(r.vault_env, KMSCLI_SESSION=p.stdout.decode())
    del env["KMSCLI_PASSPHRASE"]  # the session alone: no call can pay the KDF
    r.sess_env = env
    r.agent_pid = find_agent(r)  # type: ignore[arg-type]  # it reads only .base_env, which Run has
    log(f"session open (agent pid {r.agent_pid})")


def end_session(r: Run) -> None:
    if r.sess_env is None:
        return
    r.run([KMSCLI, "lock"], env=r.sess_env, check=False)
    r.sess_env = None
    if r.agent_pid:  # the agent this run started, by pid, if lock did not end it
        for _ in range(50):
            if not Path(f"/proc/{r.agent_pid}").exists() or find_agent(r) != r.agent_pid:  # type: ignore[arg-type]
                return
            time.sleep(0.1)
        log(f"session agent {r.agent_pid} still alive after lock; sending SIGTERM")
        os.kill(r.agent_pid, signal.SIGTERM)


# -- throughput ---------------------------------------------------------------------------------------
class Variant:
    def __init__(self, name: str, enc: list[str], dec: list[str] | None, env: dict, note: str = "") -> None:
        self.name, self.enc, self.dec, self.env, self.note = name, enc, dec, env, note
        self.size = 0  # plaintext bytes, set by bench_throughput
        self.plain: Path | None = None
        self.ct: Path | None = None
        self.times: dict[str, list[float]] = {"encrypt": [], "decrypt": []}
        self.rss: dict[str, int] = {"encrypt": 0, "decrypt": 0}


def variants(r: Run) -> list[Variant]:
    k, v, rem = KMSCLI, r.vault_env, r.remote_env
    ep = ["--endpoint", r.url]
    aws_e = [AWS_ESDK_CLI, "-e", "-i", "-", "-o", "-", "-S", "--wrapping-keys", f"key={r.arn}", *COMMITMENT]
    aws_d = [AWS_ESDK_CLI, "-d", "-i", "-", "-o", "-", "-S", "--wrapping-keys", f"key={r.arn}", *COMMITMENT]
    return [
        Variant(OWN, [k, "encrypt", "--key", "alias/bench"], [k, "decrypt"], v),
        Variant(V_SIGNED, [k, "encrypt", "--key", "alias/bench", "--format",
                                                                "esdk"], [k, "decrypt"], v),
        Variant(V_UNSIGNED,
                [k, "encrypt", "--key", "alias/bench", "--format", "esdk", "--unsigned"], [k, "decrypt"], v),
        Variant(R_SIGNED, [k, "encrypt", *ep, "--key", "alias/remote"],
                [k, "decrypt", *ep], rem),
        Variant(R_UNSIGNED, [k, "encrypt", *ep, "--key", "alias/remote", "--unsigned"],
                [k, "decrypt", *ep], rem),
        Variant(AWS_4K, aws_e, aws_d, rem),
        Variant(AWS_1M, [*aws_e, "--frame-length", "1048576"], aws_d, rem),
        Variant(AWS_UNSIGNED, [*aws_e, "--algorithm", "AES_256_GCM_HKDF_SHA512_COMMIT_KEY"], aws_d, rem),
        Variant(AGE, ["age", "-r", r.age_recipient], ["age", "-d", "-i", str(r.age_key)], r.base_env),
        Variant(CAT, ["cat"], None, r.base_env),
        Variant(SHA384, ["openssl", "dgst", "-sha384"], None,
                r.base_env),
    ]


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(MIB, left))  # fresh bytes per MiB: nothing compresses or repeats
            f.write(chunk)
            left -= len(chunk)


def to_file(cmd: list[str], env: dict, src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        p = subprocess.run(cmd, stdin=fi, stdout=fo, stderr=subprocess.PIPE, env=env, start_new_session=True)
        fo.flush()
        os.fsync(fo.fileno())
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exit {p.returncode}: {p.stderr.decode(errors='replace')[:400]}")
    return time.perf_counter() - t0


def check_round_trip(cmd: list[str], env: dict, ct: Path, plain: Path, what: str) -> None:
    with open(ct, "rb") as fi:
        p = subprocess.run(cmd, stdin=fi, capture_output=True, env=env, start_new_session=True)
    if p.returncode != 0 or p.stdout != plain.read_bytes():
        raise RuntimeError(f"{what}: {shlex.join(cmd)} < {ct.name} exit {p.returncode}, does not give back the "
                           f"input: {p.stderr.decode(errors='replace')[:300]}")


def checks(r: Run, vs: list[Variant]) -> None:
    """Untimed: every variant's round trip on a sample, and both ways between kmscli and the SDK's CLI."""
    sample = r.tmp / "sample.bin"
    write_random(sample, SAMPLE)
    cts: dict[str, Path] = {}
    for i, v in enumerate(vs):
        if v.dec is None:
            continue
        ct = r.tmp / "ct" / f"sample{i}.bin"
        to_file(v.enc, v.env, sample, ct)
        check_round_trip(v.dec, v.env, ct, sample, v.name)
        cts[v.name] = ct
    by = {v.name: v for v in vs}
    aws_dec = by[AWS_4K].dec
    kms_dec = by[R_SIGNED].dec
    assert aws_dec is not None and kms_dec is not None
    done = []
    for name in (R_SIGNED, R_UNSIGNED):
        check_round_trip(aws_dec, r.remote_env, cts[name], sample, f"aws-encryption-cli reading {name}")
        done.append(f"aws-encryption-cli decrypted {name}")
    for name in AWS_ROWS:
        check_round_trip(kms_dec, r.remote_env, cts[name], sample, f"kmscli remote reading {name}")
        done.append(f"kmscli remote decrypted {name}")
    r.notes.append(f"Checked before timing, on a {size_label(SAMPLE)} random sample: every variant's round trip "
                   f"(byte for byte), and {'; '.join(done)}.")
    for ct in cts.values():
        ct.unlink()
    sample.unlink()


def per_rep_ratio(a: Variant, b: Variant, op: str) -> float:
    """Throughput of A over throughput of B, median of the ratios taken repetition by repetition."""
    return statistics.median((a.size / ta) / (b.size / tb) for ta, tb in zip(a.times[op], b.times[op], strict=True))


def bench_throughput(r: Run) -> list[str]:
    size, runs = r.args.size, r.args.runs
    aws_size = r.args.aws_size or size
    vs = variants(r)
    need = size * 10
    if shutil.disk_usage(r.tmp).free < need or shutil.disk_usage(r.shm).free < size * 1.2:
        raise RuntimeError(f"need ~{need / 2**30:.1f} GiB free in {r.tmp} and {size * 1.2 / 2**30:.1f} in {r.shm}")
    checks(r, vs)
    plain = r.shm / "plain.bin"
    log(f"writing {size_label(size)} of random input to {plain}")
    write_random(plain, size)
    plains = {size: plain}
    if aws_size != size:
        plains[aws_size] = r.shm / "plain-aws.bin"
        write_random(plains[aws_size], aws_size)
        r.notes.append(f"**The aws-encryption-cli rows encrypt {size_label(aws_size)}** (`--aws-size`), the others "
                       f"{size_label(size)}; MB/s and ratios use each row's own size.")
    made = []
    for i, v in enumerate(vs):
        v.size = aws_size if v.name in AWS_ROWS else size
        v.plain = plains[v.size]
        if v.dec is None:
            continue
        v.ct = r.tmp / "ct" / f"ct{i}.bin"
        log(f"{v.name}: making the {size_label(v.size)} ciphertext (untimed; load {loadavg()})")
        t = to_file(v.enc, v.env, v.plain, v.ct)
        made.append(f"{v.name} {v.size / t / 1e6:.0f}")
    r.notes.append("Untimed pass that made the ciphertexts (file to file, MB/s, under the load of the moment): "
                   + "; ".join(made) + ".")
    for p in plains.values():
        warm(p)
    for v in vs:
        if v.ct is not None:
            warm(v.ct)
    for rep in range(runs):
        r.loads.append(f"throughput rep {rep + 1}: {loadavg()}")
        log(f"throughput rep {rep + 1}/{runs} (load {loadavg()})")
        for v in vs if rep % 2 == 0 else vs[::-1]:
            for op in ("encrypt", "decrypt"):
                if op == "decrypt" and v.dec is None:
                    continue
                cmd, src = (v.enc, v.plain) if op == "encrypt" else (v.dec, v.ct)
                assert cmd is not None and src is not None
                t, n, rss, _ = pipeline(cmd, v.env, src)
                if v.dec is not None and (n <= v.size if op == "encrypt" else n != v.size):
                    raise RuntimeError(f"{v.name} {op} wrote {n} bytes (input {v.size})")
                v.times[op].append(t)
                v.rss[op] = max(v.rss[op], rss)
    r.loads.append(f"throughput end: {loadavg()}")
    r.throughput = {v.name: v for v in vs}

    def mbs(v: Variant, op: str) -> float:
        return v.size / statistics.median(v.times[op]) / 1e6

    def runs_s(v: Variant, op: str) -> str:
        return " / ".join(f"{t:.2f}" for t in v.times[op])

    aws_note = f" (aws-encryption-cli rows: {size_label(aws_size)})" if aws_size != size else ""
    lines = [f"## Throughput: {size_label(size)}{aws_note} through pipes (`cat FILE | TOOL | wc -c`), median of "
             f"{runs} interleaved repetitions; MB = 10⁶ bytes of plaintext per second", "",
             "| variant | encrypt MB/s | decrypt MB/s | encrypt runs, s | decrypt runs, s | peak RSS MiB enc / dec |",
             "|---|---:|---:|---|---|---|"]
    for v in vs:
        if v.dec is None:
            lines.append(f"| {v.name} | {mbs(v, 'encrypt'):.0f} |  | {runs_s(v, 'encrypt')} |  | "
                         f"{v.rss['encrypt'] / 1024:.1f} |")
        else:
            lines.append(f"| {v.name} | {mbs(v, 'encrypt'):.0f} | {mbs(v, 'decrypt'):.0f} | {runs_s(v, 'encrypt')} | "
                         f"{runs_s(v, 'decrypt')} | {v.rss['encrypt'] / 1024:.1f} / {v.rss['decrypt'] / 1024:.1f} |")
    lines += ["", "Commands (`$K` = `.venv/bin/kmscli`; vault rows with `KMSCLI_PASSPHRASE` and a cheap-KDF vault, "
              "so each call pays one Argon2id of m=8 MiB, t=1, a few ms; remote rows and aws-encryption-cli with "
              "the credential and `AWS_ENDPOINT_URL_KMS`; decrypt reads the variant's own ciphertext):", "", "```"]
    for v in vs:
        lines.append(f"# {v.name}")
        lines.append(shlex.join(v.enc).replace(KMSCLI, "$K").replace(AWS_ESDK_CLI, "aws-encryption-cli")
                     .replace(r.arn, "$ARN").replace(r.url, "$URL").replace(r.age_recipient, "$AGE_RECIPIENT"))
        if v.dec is not None:
            lines.append(shlex.join(v.dec).replace(KMSCLI, "$K").replace(AWS_ESDK_CLI, "aws-encryption-cli")
                         .replace(r.arn, "$ARN").replace(r.url, "$URL").replace(str(r.tmp), "$TMP"))
    lines += ["```", ""]

    by = {v.name: v for v in vs}
    own = by[OWN]
    aws4k = by[AWS_4K]
    aws1m = by[AWS_1M]
    awsu = by[AWS_UNSIGNED]
    age = by[AGE]

    def ratio_row(label: str, a: Variant, b: Variant, target: float | None, pct: bool = False) -> str:
        cells = []
        for op in ("encrypt", "decrypt"):
            x = per_rep_ratio(a, b, op)
            text = f"{100 * x:.0f}%" if pct else (f"{x:.1f}×" if x >= 2 else f"{x:.2f}×")
            if target is not None:
                text = f"**{text}** {'met' if x >= target else 'NOT met'}"
            cells.append(text)
        goal = "" if target is None else (f"≥ {100 * target:.0f}%" if pct else f"≥ {target:.0f}×")
        return f"| {label} | {cells[0]} | {cells[1]} | {goal} |"

    lines += ["### Ratios (throughput of A / throughput of B, median of the per-repetition ratios)", "",
              "| A / B | encrypt | decrypt | issue 18 target |", "|---|---:|---:|---|"]
    rs = by[R_SIGNED]
    ru = by[R_UNSIGNED]
    vs_ = by[V_SIGNED]
    vu = by[V_UNSIGNED]
    lines += [
        ratio_row("kmscli remote signed / aws-encryption-cli (both at their defaults, same key)", rs, aws4k, 10),
        ratio_row("kmscli remote signed / aws-encryption-cli `--frame-length 1048576`", rs, aws1m, None),
        ratio_row("kmscli remote unsigned / aws-encryption-cli unsigned (default frames)", ru, awsu, 10),
        ratio_row("kmscli remote unsigned / aws-encryption-cli signed (default frames)", ru, aws4k, None),
        ratio_row("kmscli `--format esdk` signed (vault) / kmscli own format (vault)", vs_, own, 0.8, pct=True),
        ratio_row("kmscli `--format esdk --unsigned` (vault) / kmscli own format (vault)", vu, own, 0.8, pct=True),
        ratio_row("kmscli remote signed / kmscli own format (vault)", rs, own, None, pct=True),
        ratio_row("kmscli remote unsigned / kmscli own format (vault)", ru, own, None, pct=True),
        ratio_row("aws-encryption-cli 1 MiB frames / its 4096-byte default", aws1m, aws4k, None),
        ratio_row("kmscli own format / age", own, age, None),
        ratio_row("kmscli `--format esdk --unsigned` (vault) / age", vu, age, None),
    ]
    sha = by[SHA384]
    lines += ["", f"The signed rows cannot beat the `openssl dgst -sha384` row ({mbs(sha, 'encrypt'):.0f} MB/s here, "
              "the same pipeline hashing only): the signed suite hashes every byte of the message with SHA-384 in "
              "one sequential stream, which this CPU has no instructions for."]
    return lines


# -- 100-byte latency -----------------------------------------------------------------------------------
def hyperfine(r: Run, name: str, cmds: list[tuple[str, list[str]]], env: dict, runs: int,
              warmup: int = 3) -> dict[str, dict]:
    out = r.json_dir / f"{name}.json"
    argv = ["hyperfine", "-N", "--warmup", str(warmup), "--runs", str(runs), "--output", "pipe",
            "--style", "basic", "--export-json", str(out)]
    for label, cmd in cmds:
        argv += ["-n", label, shlex.join(cmd)]
    log(f"hyperfine {name}: {len(cmds)} commands x {runs} runs (+{warmup} warmup; load {loadavg()})")
    p = subprocess.run(argv, env=env, start_new_session=True, capture_output=True, text=True, cwd=r.tmp)
    if p.returncode != 0:
        raise RuntimeError(f"hyperfine {name} failed: {p.stderr.strip()[-600:]}")
    return {x["command"]: x for x in json.loads(out.read_text())["results"]}


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, start_new_session=True)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} -> exit {p.returncode}: {p.stderr.decode(errors='replace')[:300]}")
    return t


def bench_latency(r: Run) -> list[str]:
    open_session(r)
    assert r.sess_env is not None
    k, m, ep = KMSCLI, str(r.msg), ["--endpoint", r.url]
    floor = ("`python -c pass` (venv python: the floor)", [PY, "-c", "pass"])
    # a remote ESDK message of the 100 bytes, for the decrypt row
    small_ct = r.tmp / "msg100.esdk"
    small_ct.write_bytes(r.run([k, "encrypt", *ep, "--key", "alias/remote", "-i", m], env=r.remote_env).stdout)
    sess = [
        floor,
        ("(a) `kmscli encrypt`, vault, session (own format)", [k, "encrypt", "--key", "alias/bench", "-i", m]),
        ("(a') `kmscli encrypt --format esdk`, vault, session (signed)",
         [k, "encrypt", "--key", "alias/bench", "--format", "esdk", "-i", m]),
    ]
    rem = [
        floor,
        ("(b) `kmscli encrypt`, vault, passphrase (cheap KDF: m=8 MiB, t=1)",
         [k, "encrypt", "--key", "alias/bench", "-i", m]),
        ("(b') `kmscli encrypt --format esdk`, vault, passphrase (signed)",
         [k, "encrypt", "--key", "alias/bench", "--format", "esdk", "-i", m]),
        ("(c) `kmscli encrypt --endpoint URL` (remote, signed)", [k, "encrypt", *ep, "--key", "alias/remote", "-i", m]),
        ("(c) `kmscli encrypt --endpoint URL --unsigned` (remote)",
         [k, "encrypt", *ep, "--key", "alias/remote", "--unsigned", "-i", m]),
        ("(c') `kmscli decrypt --endpoint URL` of a signed 100-byte message", [k, "decrypt", *ep, "-i", str(small_ct)]),
        ("(f) `python -c` botocore: import, make a KMS client, no request (remote mode's floor)",
         [PY, "-c", 'import botocore.session as s; s.get_session().create_client("kms", region_name="us-east-1")']),
        ("(d) `aws kms encrypt` (AWS CLI v1, same serve)",
         [AWS_CLI, "kms", "encrypt", "--key-id", "alias/remote", "--plaintext", f"fileb://{m}", "--output", "text",
          "--query", "CiphertextBlob"]),
        ("(d') `aws-encryption-cli -e` (signed, same key)",
         [AWS_ESDK_CLI, "-e", "-i", m, "-o", "-", "-S", "--wrapping-keys", f"key={r.arn}", *COMMITMENT]),
    ]
    runs = r.args.lat_runs
    slow = max(2, runs // 2)  # the ~0.5 s tools: fewer runs
    calls = [("session", sess[1:], r.sess_env, runs), ("remote", rem[1:7], r.remote_env, runs),
             ("aws", rem[7:], r.remote_env, slow)]
    res: dict[str, dict] = {}
    table: list[tuple[str, list[str]]] = []  # (row label, command) in the order shown
    for name, group, env, n in calls:
        fl = (f"`python -c pass` (the floor, first in the {name} call)", floor[1])
        res.update(hyperfine(r, f"latency-{name}", [fl, *group], env, n))
        table += [fl, *group]
    # interleaved rounds (each command once per round, order reversed every other round), for x-floor ratios
    envs = {label: r.sess_env for label, _ in sess[1:]} | {label: r.remote_env for label, _ in rem[1:]}
    cmds = [floor, *sess[1:], *rem[1:]]
    envs[floor[0]] = r.base_env
    rounds: dict[str, list[float]] = {label: [] for label, _ in cmds}
    log(f"latency: {r.args.rounds} interleaved rounds of {len(cmds)} commands (load {loadavg()})")
    for label, cmd in cmds:  # warm-up
        timed(cmd, envs[label], r.tmp)
    for i in range(r.args.rounds):
        for label, cmd in cmds if i % 2 == 0 else cmds[::-1]:
            rounds[label].append(timed(cmd, envs[label], r.tmp))
    end_session(r)
    base = rounds[floor[0]]
    ratio = {label: statistics.median(a / b for a, b in zip(rounds[label], base, strict=True)) for label, _ in cmds}

    lines = ["## 100-byte encrypt, one process per call (hyperfine `-N --warmup 3`, output to a pipe)", "",
             "| command | median ms | mean ± σ ms | min ms | runs | × `python -c pass`, interleaved rounds |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, _ in table:
        x = res[label]
        rr = f"{ratio[label]:.2f}×" if label in ratio else ""
        lines.append(f"| {label} | {ms(x['median'])} | {ms(x['mean'])} ± {ms(x['stddev'])} | {ms(x['min'])} | "
                     f"{len(x['times'])} | {rr} |")
    lines += ["", f"Hyperfine ran three calls, each beginning with the floor: the session rows, the passphrase and "
              f"kmscli remote rows ({runs} runs each), and the AWS tools ({slow} runs). The last "
              f"column is the median over {r.args.rounds} interleaved rounds of (command / `python -c pass` in the "
              "same round): the stable number on a shared machine. Remote rows go to `kmscli serve` on 127.0.0.1 "
              "(default workers) over plain HTTP; each call makes one TCP connection and one KMS request "
              "(GenerateDataKey for encrypt, Decrypt for decrypt, Encrypt for `aws kms encrypt`).", "",
              "```"]
    for label, cmd in [floor, *sess[1:], *rem[1:]]:
        lines.append(f"# {label}")
        lines.append(shlex.join(cmd).replace(KMSCLI, "$K").replace(AWS_ESDK_CLI, "aws-encryption-cli")
                     .replace(AWS_CLI, "aws").replace(PY, "$PY").replace(r.arn, "$ARN").replace(r.url, "$URL")
                     .replace(str(r.tmp), "$TMP"))
    lines += ["```"]
    r.latency = {label: res[label]["median"] for label, _ in table}
    r.latency_x = ratio
    return lines


# -- in-process codec ------------------------------------------------------------------------------------
def codec_child(size: int, runs: int) -> None:
    """Runs in a child process (a clean heap): prints JSON {row: {op: [[wall, cpu], ...]}}."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from esdk_codec import codec_rows

    data = os.urandom(size)
    data_key = os.urandom(32)
    view = memoryview(data)

    def sha384() -> None:
        h = hashlib.sha384()
        for i in range(0, size, MIB):
            h.update(view[i: i + MIB])
        h.digest()

    def aesgcm() -> None:
        a = AESGCM(data_key)
        out = bytearray(MIB + 16)
        for n, i in enumerate(range(0, size, MIB)):
            chunk = view[i: i + MIB]
            a.encrypt_into(n.to_bytes(12, "big"), chunk, b"", memoryview(out)[: len(chunk) + 16])

    rows: dict[str, dict[str, Any]] = {
        "hashlib SHA-384 alone (1 MiB updates)": {"encrypt": sha384},
        "AES-256-GCM alone (cryptography `encrypt_into`, 1 MiB)": {"encrypt": aesgcm},
    }
    rows.update(codec_rows(data, data_key))
    result: dict[str, dict[str, list[list[float]]]] = {k: {op: [] for op in ops} for k, ops in rows.items()}
    order = list(rows)
    for rep in range(runs):
        for label in order if rep % 2 == 0 else order[::-1]:
            for op, fn in rows[label].items():
                w, c = time.perf_counter(), time.process_time()
                fn()
                result[label][op].append([time.perf_counter() - w, time.process_time() - c])
    print(json.dumps(result))


def bench_codec(r: Run) -> list[str]:
    size, runs = r.args.codec_size, r.args.codec_runs
    log(f"in-process codec: {size_label(size)}, {runs} interleaved repetitions (load {loadavg()})")
    p = r.run([PY, str(Path(__file__).resolve()), "--codec-child", str(size), str(runs)], env=r.base_env,
              cwd=HERE)
    res = json.loads(p.stdout)
    own = res["kmscli own format (`stream`, 1 MiB chunks)"]

    def wall(rows: list[list[float]]) -> float:
        return statistics.median(x[0] for x in rows)

    lines = [f"## In-process codec: {size_label(size)} in memory, writer that only counts, median of {runs} "
             "interleaved repetitions (the `bench/esdk_codec.py` set-up; no pipes, no process start)", "",
             "| codec | encrypt MB/s | decrypt MB/s | encrypt / decrypt vs own format | CPU / wall (cores busy) "
             "enc / dec |", "|---|---:|---:|---:|---:|"]
    for label, ops in res.items():
        cells, vs, cores = [], [], []
        for op in ("encrypt", "decrypt"):
            if op not in ops:
                cells.append("")
                continue
            cells.append(f"{size / wall(ops[op]) / 1e6:.0f}")
            vs.append(f"{100 * statistics.median(o[0] / x[0] for o, x in zip(own[op], ops[op], strict=True)):.0f}%")
            cores.append(f"{statistics.median(x[1] / x[0] for x in ops[op]):.2f}")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {' / '.join(vs) if 'decrypt' in ops else ''} | "
                     f"{' / '.join(cores)} |")
    signed = "ESDK 0x0578 signed, `threaded_hash=False` (the default)"
    threaded = "ESDK 0x0578 signed, `threaded_hash=True`"
    gains = [statistics.median(a[0] / b[0] for a, b in zip(res[signed][op], res[threaded][op], strict=True))
             for op in ("encrypt", "decrypt")]
    sha = size / wall(res["hashlib SHA-384 alone (1 MiB updates)"]["encrypt"]) / 1e6
    aes = size / wall(res["AES-256-GCM alone (cryptography `encrypt_into`, 1 MiB)"]["encrypt"]) / 1e6
    lines += ["", f"One thread doing AES-GCM then SHA-384 over each byte can reach at most 1 / (1/{aes:.0f} + "
              f"1/{sha:.0f}) = **{1 / (1 / aes + 1 / sha):.0f} MB/s**; with the hash perfectly overlapped on a "
              f"second core, {min(aes, sha):.0f} MB/s."]
    lines += ["", f"`threaded_hash=True` / `False` (throughput, median of per-repetition ratios): encrypt "
              f"**{gains[0]:.2f}×**, decrypt **{gains[1]:.2f}×**. CPU / wall is `time.process_time()` (all "
              "threads) over wall time: above 1 means a second core did work."]
    r.codec = res
    r.codec_gain = gains
    return lines


# -- ceilings ----------------------------------------------------------------------------------------------
def bench_ceilings(r: Run) -> list[str]:
    log(f"ceilings: openssl speed and python hashlib (load {loadavg()})")
    rows = []
    for alg in ("sha384", "sha256", "aes-256-gcm"):
        p = subprocess.run(["openssl", "speed", "-mr", "-seconds", "2", "-bytes", str(MIB), "-evp", alg],
                           capture_output=True, text=True)
        m = re.search(r"^\+F:\d+:[^:]+:([\d.]+)", p.stdout, re.M)
        rate = float(m.group(1)) / 1e6 if m else float("nan")  # -mr's +F line: bytes per second
        rows.append((f"`openssl speed -evp {alg} -bytes 1048576 -seconds 2` (user CPU time)", rate))
    for alg in ("sha384", "sha256"):
        vals = [float(r.run([PY, "-c", HASH_CMD.format(alg=alg)]).stdout) for _ in range(3)]
        rows.append((f"`python -c` hashlib.{alg}, 256 MiB in 1 MiB updates (wall, median of 3)",
                     statistics.median(vals)))
    lines = ["## Ceilings: the primitives alone", "", "| what | MB/s |", "|---|---:|"]
    lines += [f"| {label} | {rate:.0f} |" for label, rate in rows]
    lines += ["", "The `python -c` command:", "", "```", f"$PY -c {shlex.quote(HASH_CMD.format(alg='sha384'))}",
              "```", "", "SHA-256 has hardware instructions on this CPU (SHA-NI); SHA-384/512 has none, so the "
              "signed suite's hash runs several times slower than AES-GCM."]
    r.ceilings = dict(rows)
    return lines


# -- the README-ready summary ---------------------------------------------------------------------------
def summary(r: Run) -> list[str]:
    tp, lat = r.throughput, r.latency
    if tp is None and lat is None:
        return []
    size = r.args.size
    lines = ["## Summary (README-ready)", "", "| what | kmscli | beside |", "| --- | --- | --- |"]
    if tp:
        def mb(name: str, op: str) -> float:
            return tp[name].size / statistics.median(tp[name].times[op]) / 1e6

        def rr(a: str, b: str, op: str) -> float:
            return per_rep_ratio(tp[a], tp[b], op)

        sl = size_label(size)
        for op in ("encrypt", "decrypt"):
            lines.append(f"| {sl} ESDK {op} through pipes, remote (`--endpoint`, signed 0x0578) | "
                         f"{mb(R_SIGNED, op):.0f} MB/s | aws-encryption-cli {mb(AWS_4K, op):.0f} MB/s "
                         f"(**{rr(R_SIGNED, AWS_4K, op):.1f}×**); with 1 MiB frames {mb(AWS_1M, op):.0f} MB/s "
                         f"({rr(R_SIGNED, AWS_1M, op):.1f}×) |")
        lines.append(f"| {sl} ESDK remote `--unsigned` (0x0478), encrypt / decrypt | {mb(R_UNSIGNED, 'encrypt'):.0f}"
                     f" / {mb(R_UNSIGNED, 'decrypt'):.0f} MB/s | aws-encryption-cli unsigned "
                     f"{mb(AWS_UNSIGNED, 'encrypt'):.0f} / {mb(AWS_UNSIGNED, 'decrypt'):.0f} MB/s "
                     f"(**{rr(R_UNSIGNED, AWS_UNSIGNED, 'encrypt'):.0f}× / "
                     f"{rr(R_UNSIGNED, AWS_UNSIGNED, 'decrypt'):.0f}×**) |")
        lines.append(f"| {sl} vault, own format, encrypt / decrypt | {mb(OWN, 'encrypt'):.0f} / "
                     f"{mb(OWN, 'decrypt'):.0f} MB/s | age {mb(AGE, 'encrypt'):.0f} / {mb(AGE, 'decrypt'):.0f} MB/s |")
        for op in ("encrypt", "decrypt"):
            beside = f"SHA-384 alone (`openssl dgst -sha384`): {mb(SHA384, 'encrypt'):.0f} MB/s" if op == "decrypt" \
                else ""
            lines.append(f"| {sl} vault, `--format esdk` signed / `--unsigned`, {op} | {mb(V_SIGNED, op):.0f} / "
                         f"{mb(V_UNSIGNED, op):.0f} MB/s (**{100 * rr(V_SIGNED, OWN, op):.0f}% / "
                         f"{100 * rr(V_UNSIGNED, OWN, op):.0f}%** of own format) | {beside} |")
    if lat:
        def lk(prefix: str) -> tuple[float, float]:
            label = next(k for k in lat if k.startswith(prefix))
            return lat[label], r.latency_x.get(label, 1.0)

        f, _ = lk("`python -c pass` (the floor, first in the session call)")
        s, sx = lk("(a) ")
        c, cx = lk("(c) `kmscli encrypt --endpoint URL` (remote, signed)")
        d, _ = lk("(d) ")
        e, _ = lk("(d') ")
        lines.append(f"| 100-byte encrypt, remote (`--endpoint`, signed) | {ms(c)} ms ({cx:.1f}× `python -c pass`)"
                     f" | `aws kms encrypt` {ms(d)} ms, aws-encryption-cli {ms(e)} ms |")
        lines.append(f"| 100-byte encrypt, vault with a session | {ms(s)} ms ({sx:.1f}×) | `python -c pass` "
                     f"{ms(f)} ms |")
    return lines


# -- main -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"),
                    help="throughput input size (1G, 256M, 16M, ...; default 1G)")
    ap.add_argument("--aws-size", type=parse_size, default=None,
                    help="input size for the aws-encryption-cli rows only (default: --size); it runs at ~50 MB/s")
    ap.add_argument("--runs", type=int, default=3, help="throughput repetitions, interleaved (default 3)")
    ap.add_argument("--lat-runs", type=int, default=20, help="hyperfine runs per 100-byte command (default 20; the "
                    "~0.5 s AWS tools get half)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds for the x-floor ratios (default 10)")
    ap.add_argument("--codec-size", type=parse_size, default=parse_size("256M"),
                    help="in-process codec input (default 256M)")
    ap.add_argument("--codec-runs", type=int, default=3, help="in-process repetitions (default 3)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--max-load", type=float, default=None,
                    help="wait (up to --wait-load seconds) for the 1-min load average to fall below this")
    ap.add_argument("--wait-load", type=float, default=600)
    ap.add_argument("--shm", default="/dev/shm", help="where the plaintext goes (default /dev/shm)")
    ap.add_argument("--out", default=str(HERE / "ESDK.md"), help="report file (default bench/ESDK.md; '-' = none)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    ap.add_argument("--codec-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    args.parts = parts
    if min(args.runs, args.lat_runs, args.rounds, args.codec_runs) < 1:
        ap.error("--runs, --lat-runs, --rounds and --codec-runs must be at least 1")
    return args


def shown_args(argv: list[str]) -> str:
    return shlex.join([".venv/bin/python", "bench/esdk_bench.py", *argv])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.codec_child:
        codec_child(*args.codec_child)
        return 0
    missing = [t for t in ("hyperfine", "age", "age-keygen", "openssl") if shutil.which(t) is None]
    missing += [t for t in (KMSCLI, AWS_ESDK_CLI, AWS_CLI, PY) if not os.access(t, os.X_OK)]
    if missing:
        log(f"missing: {', '.join(missing)} (apt-get install -y hyperfine age; pip install -e '.[test]')")
        return 2
    if args.max_load is not None:
        t_end = time.monotonic() + args.wait_load
        while os.getloadavg()[0] >= args.max_load and time.monotonic() < t_end:
            log(f"waiting for load < {args.max_load} (now {loadavg()})")
            time.sleep(15)
    t_start = time.perf_counter()
    uptime_start = first_line(["uptime"], os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="kmscli-esdkbench-"))
    shm = Path(tempfile.mkdtemp(prefix="kmscli-esdkbench-", dir=args.shm))
    for d in (tmp, shm):
        d.chmod(0o700)

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    r = Run(tmp, shm, args)
    sections: list[list[str]] = []
    try:
        info = machine_info(r.base_env)
        if {"throughput", "latency"} & set(args.parts):
            setup(r)  # vaults, credential, server: only the parts that run kmscli and the AWS tools need them
        for part, fn in (("throughput", bench_throughput), ("latency", bench_latency), ("codec", bench_codec),
                         ("ceilings", bench_ceilings)):
            if part in args.parts:
                r.section(part)
                sections.append(fn(r))
                log(f"{part} done (load {loadavg()})")
    finally:
        try:
            end_session(r)
        finally:
            stop_server(r)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(shm, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    uptime_end = first_line(["uptime"], os.environ)
    header = [
        "# AWS Encryption SDK format benchmark (`bench/esdk_bench.py`)", "",
        f"- command: `{shown_args(argv)}`",
        f"- date: {info['date']}; run took {elapsed / 60:.1f} min",
        f"- system: `{info['uname']}`; CPU: {info['cpu']}; cores: {info['cores']}; memory: {info['memory']}",
        f"- Python: {info['python']}; {info['libs']}",
        f"- {info['kmscli']}; vaults from `kmscli init --kdf-memory 8 --kdf-time 1` (passphrase in "
        "`KMSCLI_PASSPHRASE`); `kmscli serve --port 0` (default workers) on the second, on 127.0.0.1",
        f"- {info['esdk_cli']}; {info['aws']}; age {info['age']}; {info['openssl']}; {info['hyperfine']}",
        f"- `uptime` before: `{uptime_start}`; after: `{uptime_end}`",
        "- 1/5/15-min load as each part began: " + "; ".join(r.loads),
        "",
    ]
    notes = r.notes + args.note + [
        "Timed commands run without `PYTHONUNBUFFERED`/`PYTHONDONTWRITEBYTECODE` (exported on this machine, not in "
        "a user's shell) and with `PYTHONPYCACHEPREFIX` in the temp folder, so the editable install runs with .pyc "
        "files as a pip install would. No inherited `KMSCLI_*` or `AWS_*` variable reaches them; AWS config and "
        "credential files point into the temp folder.",
        "The machine has 2 vCPUs shared with other sessions; absolute figures move by tens of percent between runs. "
        "Ratios from the same repetition or round are the steadier numbers.",
    ]
    body: list[str] = []
    for s in [summary(r), *sections]:
        if s:
            body += s + [""]
    body += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(header + body)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
