"""Signing benchmark: `kmscli sign` with a session beside `openssl dgst -sign` (issue 16, "Speed").

    .venv/bin/python bench/sign_bench.py [--runs N] [--rounds N] [--keygen-runs N] [--big-mib N] [--big-runs N]
                                         [--out FILE] [--note TEXT]

Everything happens in a fresh temporary folder: a vault made by `kmscli init`
with the default KDF parameters (passphrase from KMSCLI_PASSPHRASE, no --kdf
flags), one session (`kmscli unlock`), the keys, openssl's keys, the messages
and hyperfine's JSON. The session is locked and the folder removed at the end,
also on failure, Ctrl-C or SIGTERM. Prints a Markdown report and writes it to
--out (default bench/SIGN.md). See bench/README.md.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import find_agent, loadavg, ms, timed_run  # noqa: E402 - bench/bench.py's helpers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = os.environ.get("BENCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
KMSCLI = os.environ.get("BENCH_KMSCLI", str(ROOT / ".venv" / "bin" / "kmscli"))
PASSPHRASE = "correct horse battery staple, sign benchmark only"
MIB = 1 << 20

#: (label, key spec, usage, alias); created with the session before anything is timed.
KEYS = (
    ("symmetric", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "alias/sym"),
    ("P-256", "ECC_NIST_P256", "SIGN_VERIFY", "alias/p256"),
    ("RSA_2048", "RSA_2048", "SIGN_VERIFY", "alias/rsa2048"),
    ("RSA_4096", "RSA_4096", "SIGN_VERIFY", "alias/rsa4096"),
    ("ML_DSA_65", "ML_DSA_65", "SIGN_VERIFY", "alias/mldsa65"),
    ("HMAC_256", "HMAC_256", "GENERATE_VERIFY_MAC", "alias/hmac256"),
)
#: openssl keys of the same sizes: file stem -> genpkey arguments.
OSSL_KEYS = {
    "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa4096": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
}
PSS = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"]  # AWS's PSS: salt = digest length


def log(msg: str) -> None:
    print(f"sign_bench: {msg}", file=sys.stderr, flush=True)


class Run:
    """The temp folder, the environments and the session of one benchmark run."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp, self.args = tmp, args
        self.json_dir = tmp / "hyperfine"
        for d in ("vault", "run", "pycache", "hyperfine", "ossl"):
            (tmp / d).mkdir(mode=0o700)
        env = dict(os.environ)
        # As bench/bench.py: no inherited KMSCLI_* (the user's vault is never touched), and none of this
        # machine's PYTHONUNBUFFERED/PYTHONDONTWRITEBYTECODE (a user's shell has neither); .pyc files
        # go to the temp folder, so the editable install runs with them, as a pip install would.
        for k in list(env):
            if k.startswith("KMSCLI_") or k in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"):
                del env[k]
        env.update(KMSCLI_VAULT=str(tmp / "vault" / "vault.kms"), KMSCLI_RUNTIME_DIR=str(tmp / "run"),
                   PYTHONPYCACHEPREFIX=str(tmp / "pycache"), NO_COLOR="1", LC_ALL="C")
        self.base_env = env
        self.pass_env = dict(env, KMSCLI_PASSPHRASE=PASSPHRASE)
        self.sess_env: dict[str, str] | None = None
        self.agent_pid: int | None = None
        self.notes: list[str] = []
        self.loads: list[str] = []
        self.msg = tmp / "msg100"
        self.msg.write_bytes(os.urandom(100))

    def run(self, cmd: list[str], env: dict | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
        # start_new_session: no controlling terminal, so nothing can prompt
        p = subprocess.run(cmd, env=env or self.base_env, start_new_session=True, capture_output=True, **kw)
        if check and p.returncode != 0:
            raise RuntimeError(f"{shlex.join(map(str, cmd))} -> exit {p.returncode}: "
                               f"{p.stderr.decode(errors='replace').strip()[:400]}")
        return p

    def section(self, name: str) -> None:
        self.loads.append(f"{name} {loadavg().split()[0]}")
        log(f"{name} (load {loadavg()})")

    def hyperfine(self, name: str, cmds: list[tuple[str, list[str]]], env: dict, runs: int,
                  warmup: int = 3) -> dict[str, dict]:
        """One hyperfine call (-N, output to a pipe); results by label."""
        out = self.json_dir / f"{name}.json"
        argv = ["hyperfine", "-N", "--warmup", str(warmup), "--runs", str(runs), "--output", "pipe",
                "--style", "basic", "--export-json", str(out)]
        for label, cmd in cmds:
            argv += ["-n", label, shlex.join(cmd)]
        log(f"hyperfine {name}: {len(cmds)} commands x {runs} runs (+{warmup} warmup)")
        p = subprocess.run(argv, env=env, start_new_session=True, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"hyperfine {name} failed: {p.stderr.strip()[-600:]}")
        return {r["command"]: r for r in json.loads(out.read_text())["results"]}

    def rounds(self, cmds: list[tuple[str, list[str]]], env: dict, n: int) -> dict[str, list[float]]:
        """Wall times of `n` rounds in which every command runs once, the order reversed every other round.

        The machine's speed drifts within seconds when it is shared; a ratio taken round by round (command
        / floor in the same round, then the median over rounds) cancels that drift, as bench.py's
        interleaved pairs do."""
        def once(cmd: list[str]) -> float:
            return timed_run(cmd, env)

        log(f"interleaved rounds: {len(cmds)} commands x {n} rounds")
        times: dict[str, list[float]] = {label: [] for label, _ in cmds}
        for _label, cmd in cmds:  # one warm-up pass
            once(cmd)
        for i in range(n):
            for label, cmd in (cmds if i % 2 == 0 else cmds[::-1]):
                times[label].append(once(cmd))
        return times


# -- notes on the machine (bench/bench.py's conventions) ---------------------------------------------
def first_line(cmd: list[str], env: dict) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "n/a"


def machine_info(env: dict) -> dict[str, str]:
    cpu, flags = "unknown", ""
    try:
        txt = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:(.*)$", txt, re.M)
        cpu = m.group(1).strip() if m else cpu
        fl = set(re.search(r"^flags\s*:(.*)$", txt, re.M).group(1).split())
        flags = ", ".join(f for f in ("aes", "sha_ni", "avx2", "avx512f", "adx", "bmi2") if f in fl)
    except (OSError, AttributeError):
        pass
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "kmscli"],
                      capture_output=True, text=True).stdout.strip():
        commit += " (uncommitted changes in kmscli/)"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname": first_line(["uname", "-srm"], env),
        "cpu": cpu + (f" (flags: {flags})" if flags else ""),
        "cores": str(os.cpu_count()),
        "python": first_line([PY, "-VV"], env),
        "kmscli": first_line([KMSCLI, "--version"], env) + f", commit {commit or 'n/a'}",
        "openssl": first_line(["openssl", "version"], env),
        "hyperfine": first_line(["hyperfine", "--version"], env),
        "cryptography": first_line([PY, "-c", "import cryptography; print(cryptography.__version__)"], env),
    }


# -- setup --------------------------------------------------------------------------------------------
def setup(r: Run) -> None:
    log("kmscli init with the default KDF (no --kdf flags)")
    t0 = time.perf_counter()
    r.run([KMSCLI, "init"], env=r.pass_env)
    r.notes.append(f"`kmscli init` (default KDF parameters) took {time.perf_counter() - t0:.2f} s.")
    script = (f'out="$({shlex.join([KMSCLI, "unlock", "--ttl", "10m"])})" || exit 1; eval "$out" && '
              '[ -n "${KMSCLI_SESSION:-}" ] && printf %s "$KMSCLI_SESSION"')
    p = r.run(["bash", "-c", script], env=r.pass_env)
    # The session alone from here on: no passphrase in the environment, so no call can pay the KDF.
    r.sess_env = dict(r.base_env, KMSCLI_SESSION=p.stdout.decode())
    r.agent_pid = find_agent(r)
    log(f"session open (agent pid {r.agent_pid})")
    for _label, spec, usage, alias in KEYS:
        cmd = [KMSCLI, "keys", "create", "--alias", alias]
        if spec != "SYMMETRIC_DEFAULT":
            cmd += ["--spec", spec, "--usage", usage]
        r.run(cmd, env=r.sess_env)
    for alias in ("alias/p256", "alias/rsa2048", "alias/rsa4096"):
        name = alias.split("/")[1]
        (r.tmp / f"{name}-kms.pem").write_bytes(r.run([KMSCLI, "pubkey", alias], env=r.sess_env).stdout)
    for name, opts in OSSL_KEYS.items():
        key = r.tmp / "ossl" / f"{name}.pem"
        r.run(["openssl", "genpkey", *opts, "-out", str(key)])
        r.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(r.tmp / "ossl" / f"{name}.pub.pem")])
    check_signatures(r)


def check_signatures(r: Run) -> None:
    """Untimed: every signature made by the timed commands verifies (openssl where it can)."""
    s = r.sess_env
    m = str(r.msg)

    def sig(name: str, data: bytes) -> str:
        path = r.tmp / f"sig-{name}"
        path.write_bytes(data)
        return str(path)

    for alias, alg, pss in (("p256", "ECDSA_SHA_256", False), ("rsa2048", "RSASSA_PSS_SHA_256", True),
                            ("rsa2048", "RSASSA_PKCS1_V1_5_SHA_256", False), ("rsa4096", "RSASSA_PSS_SHA_256", True)):
        out = r.run([KMSCLI, "sign", "--key", f"alias/{alias}", "--algorithm", alg, "-i", m], env=s).stdout
        f = sig(f"{alias}-{alg}", out)
        r.run(["openssl", "dgst", "-sha256", "-verify", str(r.tmp / f"{alias}-kms.pem"), *(PSS if pss else []),
               "-signature", f, m])
    out = r.run([KMSCLI, "sign", "--key", "alias/mldsa65", "--algorithm", "ML_DSA_SHAKE_256", "-i", m], env=s).stdout
    if len(out) != 3309:
        raise RuntimeError(f"an ML-DSA-65 signature is 3309 bytes, got {len(out)}")
    r.run([KMSCLI, "verify", "--key", "alias/mldsa65", "--algorithm", "ML_DSA_SHAKE_256", "-i", m,
           "-s", sig("mldsa", out)], env=s)
    out = r.run([KMSCLI, "mac", "--key", "alias/hmac256", "--algorithm", "HMAC_SHA_256", "-i", m], env=s).stdout
    r.run([KMSCLI, "verify-mac", "--key", "alias/hmac256", "--algorithm", "HMAC_SHA_256", "-i", m,
           "--mac", sig("hmac", out)], env=s)
    for name in OSSL_KEYS:
        out = r.run(["openssl", "dgst", "-sha256", "-sign", str(r.tmp / "ossl" / f"{name}.pem"), m]).stdout
        r.run(["openssl", "dgst", "-sha256", "-verify", str(r.tmp / "ossl" / f"{name}.pub.pem"),
               "-signature", sig(f"ossl-{name}", out), m])
    # the P-256 signatures the verify rows check
    r.kms_p256_sig = str(r.tmp / "sig-p256-ECDSA_SHA_256")
    r.ossl_p256_sig = str(r.tmp / "sig-ossl-p256")
    ct = r.run([KMSCLI, "encrypt", "--key", "alias/sym", "-i", m], env=s).stdout
    if r.run([KMSCLI, "decrypt"], env=s, input=ct).stdout != r.msg.read_bytes():
        raise RuntimeError("kmscli encrypt/decrypt round trip failed")


# -- the parts ------------------------------------------------------------------------------------------
def round_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def row(label: str, res: dict, floor: float, rr: float | None, vs: float | None, bold: bool = False) -> str:
    x = f"{rr:.2f}×" if rr is not None else ""
    x = f"**{x}**" if bold and x else x
    return (f"| {label} | {ms(res['median'])} | {ms(res['mean'])} ± {ms(res['stddev'])} | {ms(res['min'])} | "
            f"{len(res['times'])} | {res['median'] / floor:.2f}× | {x} | {f'{vs:.2f}×' if vs else ''} |")


def bench_small(r: Run) -> list[str]:
    s, m, o = r.sess_env, str(r.msg), r.tmp / "ossl"

    def sign(alias: str, alg: str) -> list[str]:
        return [KMSCLI, "sign", "--key", alias, "--algorithm", alg, "-i", m]

    def osign(name: str) -> list[str]:
        return ["openssl", "dgst", "-sha256", "-sign", str(o / f"{name}.pem"), m]

    cmds = [
        ("floor", [PY, "-c", "pass"]),
        ("encrypt", [KMSCLI, "encrypt", "--key", "alias/sym", "-i", m]),
        ("p256", sign("alias/p256", "ECDSA_SHA_256")),
        ("p256-o", sign("alias/p256", "ECDSA_SHA_256") + ["-o", str(r.tmp / "sig-out")]),
        ("rsa2048-pss", sign("alias/rsa2048", "RSASSA_PSS_SHA_256")),
        ("rsa2048-pkcs1", sign("alias/rsa2048", "RSASSA_PKCS1_V1_5_SHA_256")),
        ("rsa4096-pss", sign("alias/rsa4096", "RSASSA_PSS_SHA_256")),
        ("mldsa65", sign("alias/mldsa65", "ML_DSA_SHAKE_256")),
        ("hmac", [KMSCLI, "mac", "--key", "alias/hmac256", "--algorithm", "HMAC_SHA_256", "-i", m]),
        ("verify", [KMSCLI, "verify", "--key", "alias/p256", "--algorithm", "ECDSA_SHA_256", "-i", m,
                    "-s", r.kms_p256_sig]),
        ("o-p256", osign("p256")),
        ("o-rsa2048", osign("rsa2048")),
        ("o-rsa4096", osign("rsa4096")),
        ("o-verify", ["openssl", "dgst", "-sha256", "-verify", str(o / "p256.pub.pem"), "-signature",
                      r.ossl_p256_sig, m]),
        ("floor-end", [PY, "-c", "pass"]),
    ]
    res = r.hyperfine("small", cmds, s, r.args.runs)
    floor = res["floor"]["median"]
    rt = r.rounds(cmds[:-1], s, r.args.rounds)  # every command but the second floor

    def line(label: str, key: str, peer: str | None, bold: bool = False) -> str:
        return row(label, res[key], floor, round_ratio(rt[key], rt["floor"]) if key in rt else None,
                   round_ratio(rt[key], rt[peer]) if peer else None, bold)

    lines = [
        f"## 100-byte message, one call each (kmscli with a session; hyperfine `-N --warmup 3 --runs {r.args.runs}`, "
        f"output to a pipe; then {r.args.rounds} interleaved rounds)", "",
        "| command | median ms | mean ± σ ms | min ms | runs | × `python -c pass`, hyperfine medians | "
        "× `python -c pass`, interleaved | kmscli / openssl, interleaved |",
        "|---|---|---|---|---|---|---|---|",
        line("`python -c pass` (venv python: the floor)", "floor", None),
        line("`kmscli encrypt` (symmetric, for comparison)", "encrypt", None),
        line("`kmscli sign` ECDSA P-256, ECDSA_SHA_256", "p256", "o-p256", bold=True),
        line("`kmscli sign` ECDSA P-256, `-o FILE` (written via a temp file, fsync'd)", "p256-o", "o-p256"),
        line("`kmscli sign` RSA_2048, RSASSA_PSS_SHA_256", "rsa2048-pss", "o-rsa2048"),
        line("`kmscli sign` RSA_2048, RSASSA_PKCS1_V1_5_SHA_256", "rsa2048-pkcs1", "o-rsa2048"),
        line("`kmscli sign` RSA_4096, RSASSA_PSS_SHA_256", "rsa4096-pss", "o-rsa4096"),
        line("`kmscli sign` ML_DSA_65, ML_DSA_SHAKE_256", "mldsa65", None),
        line("`kmscli mac` HMAC_256, HMAC_SHA_256", "hmac", None),
        line("`kmscli verify` ECDSA P-256", "verify", "o-verify"),
        line("`openssl dgst -sha256 -sign` P-256 key (PEM on disk)", "o-p256", None),
        line("`openssl dgst -sha256 -sign` RSA 2048 key (PKCS#1 v1.5)", "o-rsa2048", None),
        line("`openssl dgst -sha256 -sign` RSA 4096 key (PKCS#1 v1.5)", "o-rsa4096", None),
        line("`openssl dgst -sha256 -verify` P-256", "o-verify", None),
        line("`python -c pass` again, last in the hyperfine call (drift check)", "floor-end", None),
        "",
    ]
    hf = res["p256"]["median"] / floor
    rr = round_ratio(rt["p256"], rt["floor"])
    verdict = "meets" if rr <= 3.0 else "misses"
    gap = statistics.median(a - b for a, b in zip(rt["p256"], rt["encrypt"], strict=True))
    lines += [
        f"**P-256 sign with a session / `python -c pass` = {rr:.2f}×** (median over {r.args.rounds} interleaved "
        f"rounds) — {verdict} the ≤3× goal; symmetric encrypt: {round_ratio(rt['encrypt'], rt['floor']):.2f}×. "
        f"From the hyperfine medians (run one command after the other, so drift lands in the ratio): {hf:.2f}×. "
        f"Sign minus encrypt, median over rounds: {ms(gap)} ms.",
        "",
        "`openssl dgst -sign` of RSA keys uses PKCS#1 v1.5 (its default); PSS padding costs microseconds more, "
        "so both RSA_2048 kmscli rows are set against the same openssl row. ML-DSA has no openssl row: the "
        "machine's OpenSSL 3.0 has no ML-DSA. openssl reads its private key from a PEM file on disk; kmscli's "
        "private key stays in the vault and the session agent.",
    ]
    return lines


def bench_big(r: Run) -> list[str]:
    size = r.args.big_mib * MIB
    big = r.tmp / "big.bin"
    log(f"writing {r.args.big_mib} MiB of random data")
    with open(big, "wb") as f:
        for _ in range(r.args.big_mib):
            f.write(os.urandom(MIB))
    with open(big, "rb", buffering=0) as f:  # into the page cache before anything is timed
        while f.read(4 * MIB):
            pass
    s, b = r.sess_env, str(big)
    kms = [KMSCLI, "sign", "--key", "alias/p256", "--algorithm", "ECDSA_SHA_256", "-i", b]
    ossl = ["openssl", "dgst", "-sha256", "-sign", str(r.tmp / "ossl" / "p256.pem"), b]
    sig = r.tmp / "sig-big"
    sig.write_bytes(r.run(kms, env=s).stdout)
    r.run(["openssl", "dgst", "-sha256", "-verify", str(r.tmp / "p256-kms.pem"), "-signature", str(sig), b])
    small_kms = kms[:-1] + [str(r.msg)]
    small_ossl = ossl[:-1] + [str(r.msg)]
    res = r.hyperfine("big", [("kmscli", kms), ("openssl", ossl), ("sha256sum", ["sha256sum", b]),
                              ("kmscli-small", small_kms), ("openssl-small", small_ossl)],
                      s, r.args.big_runs, warmup=1)
    big.unlink()
    mb = size / 1e6
    lines = [f"## Sign a {r.args.big_mib} MiB file with P-256 (hyperfine wall time, `--runs {r.args.big_runs}`; "
             "kmscli hashes the file in the session's worker and signs the digest, MessageType DIGEST)", "",
             "| command | median s | min s | max s | MB/s | MB/s net of the 100-byte call | kmscli / openssl |",
             "|---|---|---|---|---|---|---|"]
    for label, key, small, peer in (("`kmscli sign` P-256, session", "kmscli", "kmscli-small", "openssl"),
                                    ("`openssl dgst -sha256 -sign` P-256", "openssl", "openssl-small", None),
                                    ("`sha256sum` (coreutils, hash only; reference)", "sha256sum", None, None)):
        x = res[key]
        vs = f"**{x['median'] / res[peer]['median']:.2f}×**" if peer else ""
        net = x["median"] - res[small]["median"] if small else 0.0
        net_s = f"{mb / net:.0f}" if net > 0 else ""
        lines.append(f"| {label} | {x['median']:.3f} | {x['min']:.3f} | {x['max']:.3f} | "
                     f"{mb / x['median']:.0f} | {net_s} | {vs} |")
    lines += ["", f"The 100-byte sign in the same hyperfine call: kmscli {ms(res['kmscli-small']['median'])} ms, "
              f"openssl {ms(res['openssl-small']['median'])} ms (medians); the \"net\" column takes it off, which "
              "leaves about the hashing (MB = 10⁶ bytes)."]
    lines += ["", "The kmscli signature of the file was checked with `openssl dgst -verify` against "
              "`kmscli pubkey`'s PEM before timing."]
    return lines


def bench_keygen(r: Run) -> list[str]:
    s, kr = r.sess_env, r.args.keygen_runs

    def create(spec: str) -> list[str]:
        return [KMSCLI, "keys", "create", "--spec", spec, "--usage", "SIGN_VERIFY"]

    def gen(opts: list[str]) -> list[str]:
        return ["openssl", "genpkey", *opts]

    slow = r.hyperfine("keygen-rsa4096", [("kms", create("RSA_4096")), ("ossl", gen(OSSL_KEYS["rsa4096"]))],
                       s, kr, warmup=1)
    fast = r.hyperfine("keygen", [
        ("kms-rsa2048", create("RSA_2048")), ("ossl-rsa2048", gen(OSSL_KEYS["rsa2048"])),
        ("kms-p256", create("ECC_NIST_P256")), ("ossl-p256", gen(OSSL_KEYS["p256"])),
        ("kms-mldsa65", create("ML_DSA_65")),
    ], s, kr, warmup=1)
    lines = ["## Key creation (`kmscli keys create --spec SPEC --usage SIGN_VERIFY` with a session; "
             "`openssl genpkey` writing PEM to a pipe)", "",
             "| command | median ms | min ms | max ms | mean ± σ ms | runs | kmscli / openssl |",
             "|---|---|---|---|---|---|---|"]

    def line(label: str, x: dict, peer: dict | None, bold: bool = False) -> str:
        vs = f"{x['median'] / peer['median']:.2f}×" if peer else ""
        med = f"**{ms(x['median'])}**" if bold else ms(x["median"])
        return (f"| {label} | {med} | {ms(x['min'])} | {ms(x['max'])} | {ms(x['mean'])} ± {ms(x['stddev'])} | "
                f"{len(x['times'])} | {vs} |")

    lines += [
        line("`kmscli keys create` RSA_4096", slow["kms"], slow["ossl"], bold=True),
        line("`openssl genpkey` RSA 4096", slow["ossl"], None),
        line("`kmscli keys create` RSA_2048", fast["kms-rsa2048"], fast["ossl-rsa2048"]),
        line("`openssl genpkey` RSA 2048", fast["ossl-rsa2048"], None),
        line("`kmscli keys create` ECC_NIST_P256", fast["kms-p256"], fast["ossl-p256"]),
        line("`openssl genpkey` EC P-256", fast["ossl-p256"], None),
        line("`kmscli keys create` ML_DSA_65", fast["kms-mldsa65"], None),
        "",
        "RSA key generation searches for random primes, so its time varies a lot from key to key: "
        "compare medians and look at min/max, not the mean. Each kmscli run (warmup included) adds a key "
        "to the vault.",
    ]
    return lines


# -- cleanup and main -------------------------------------------------------------------------------------
def end_session(r: Run) -> None:
    """`kmscli lock`, then make sure our agent (and only ours, by pid) is gone."""
    if r.sess_env is None:
        return
    p = subprocess.run([KMSCLI, "lock"], env=r.sess_env, capture_output=True, start_new_session=True)
    if p.returncode == 0:
        e = subprocess.run([KMSCLI, "encrypt", "--key", "alias/sym", "-i", str(r.msg)], env=r.sess_env,
                           capture_output=True, start_new_session=True)
        r.notes.append(f"`kmscli lock` ended the session: an encrypt with it afterwards exited {e.returncode}"
                       + (" (expected 5)." if e.returncode == 5 else " (expected 5!)."))
    else:
        r.notes.append(f"`kmscli lock` exited {p.returncode}.")
    r.sess_env = None
    if r.agent_pid:
        for _ in range(50):
            if find_agent(r) != r.agent_pid:
                return
            time.sleep(0.1)
        log(f"session agent {r.agent_pid} still alive after lock; sending SIGTERM")
        os.kill(r.agent_pid, signal.SIGTERM)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="hyperfine runs per small command (default 20)")
    ap.add_argument("--keygen-runs", type=int, default=10, help="runs of each key creation (at least 10)")
    ap.add_argument("--big-mib", type=int, default=100, help="size of the large file in MiB (default 100)")
    ap.add_argument("--big-runs", type=int, default=5, help="hyperfine runs of the large-file sign (default 5)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the 100-byte commands (default 15)")
    ap.add_argument("--out", default=str(HERE / "SIGN.md"), help="Markdown report (default bench/SIGN.md)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    args = ap.parse_args(argv)
    args.keygen_runs = max(10, args.keygen_runs)
    args.runs = max(3, args.runs)
    args.rounds = max(1, args.rounds)
    return args


def shown_args(argv: list[str]) -> list[str]:
    """argv for the report's header, without the --note texts (they are in the notes)."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            shown.append(a)
    return shown


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if shutil.which("hyperfine") is None:
        log("hyperfine is missing: apt-get install -y hyperfine")
        return 2
    if shutil.which("openssl") is None:
        log("openssl is missing: apt-get install -y openssl")
        return 2
    if not (os.access(PY, os.X_OK) and os.access(KMSCLI, os.X_OK)):
        log(f"no {PY} or {KMSCLI}: make the venv (python3 -m venv .venv && .venv/bin/pip install -e .)")
        return 2
    out_path = Path(args.out).resolve()
    load_start, t_start = loadavg(), time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="kmscli-signbench-"))
    tmp.chmod(0o700)
    cwd = os.getcwd()
    os.chdir(tmp)  # nothing a tool drops in its working folder lands in the repository

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    r = None
    try:
        r = Run(tmp, args)
        info = machine_info(r.base_env)
        log(f"temp dir {tmp}; load {load_start}")
        setup(r)
        sections = []
        for name, fn in (("small", bench_small), ("big file", bench_big), ("key creation", bench_keygen)):
            r.section(name)
            sections.append(fn(r))
        end_session(r)
    finally:
        if r is not None and r.sess_env is not None:
            end_session(r)
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)
    load_end, elapsed = loadavg(), time.perf_counter() - t_start

    header = [
        "# kmscli signing benchmark (`bench/sign_bench.py`)", "",
        f"- command: `{shlex.join(['.venv/bin/python', 'bench/sign_bench.py', *shown_args(argv)])}`",
        f"- date: {info['date']}",
        f"- system: `{info['uname']}`; CPU: {info['cpu']}; cores: {info['cores']}",
        f"- Python: {info['python']} (`{PY}`); cryptography {info['cryptography']}",
        f"- {info['kmscli']}; vault from `kmscli init` with the default KDF parameters; every kmscli call "
        "ran with `KMSCLI_SESSION` only (no passphrase in the environment)",
        f"- {info['openssl']}; {info['hyperfine']}",
        f"- load average (1/5/15 min): start {load_start}, end {load_end}; 1-min load as each part began: "
        f"{', '.join(r.loads)}; run took {elapsed / 60:.1f} min",
        "",
    ]
    body: list[str] = []
    for s in sections:
        body += s + [""]
    notes = args.note + r.notes + [
        "Timed commands run without `PYTHONUNBUFFERED`/`PYTHONDONTWRITEBYTECODE` (exported on this machine, not "
        "in a user's shell) and with `PYTHONPYCACHEPREFIX` in the temp folder, as in `bench/run`.",
        "Ratios taken round by round (the interleaved columns) are steadier than the "
        "absolute times on this shared 2-core machine (see bench/README.md, \"Noise\").",
    ]
    text = "\n".join(header + body + ["## Notes", ""] + [f"- {n}" for n in notes]) + "\n"
    print(text)
    out_path.write_text(text)
    log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
