"""kmscli benchmark suite (started by bench/run; see bench/README.md).

Everything happens in a fresh temporary folder (vault, audit log, GnuPG home,
age identity, data files, .pyc cache) that is removed at the end. Timed tool
processes run in their own session (setsid), so nothing can ever prompt on the
terminal.
"""

from __future__ import annotations

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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MIB = 1 << 20


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


SIZE_MIB = env_int("BENCH_SIZE_MIB", 1024)
RUNS = env_int("BENCH_RUNS", 30)  # hyperfine runs for the fast per-call commands
SLOW_RUNS = env_int("BENCH_SLOW_RUNS", 20)  # ... for the ones that run a KDF (>= 20 asked)
REPS = env_int("BENCH_REPS", 3)  # repetitions of each throughput pipeline (median kept)
LOOP_N = env_int("BENCH_LOOP_N", 1000)
LOOP_PASS_N = env_int("BENCH_LOOP_PASS_N", 50)
PAIRS = env_int("BENCH_PAIRS", 30)  # interleaved pairs for the session/floor cross-check
MAX_LOAD = float(os.environ.get("BENCH_MAX_LOAD", "0") or 0)  # wait for 1-min load below this (0 = don't)
WAIT_LOAD_SECS = env_int("BENCH_WAIT_LOAD_SECS", 600)
RESULTS = Path(os.environ.get("BENCH_RESULTS", HERE / "RESULTS.md")).resolve()
OUTDIR = Path(os.environ.get("BENCH_OUT", HERE / "out")).resolve()  # raw hyperfine JSON and logs (git-ignored)
PY = os.environ.get("BENCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
KMSCLI = os.environ.get("BENCH_KMSCLI", str(ROOT / ".venv" / "bin" / "kmscli"))
PASSPHRASE = "correct horse battery staple, benchmark only"
# Measure a copy of the kmscli package taken at start (put first on PYTHONPATH), not the
# live editable tree: other people edit it while the benchmark runs.
SNAPSHOT = os.environ.get("BENCH_SNAPSHOT", "1") != "0"

notes: list[str] = []
section_loads: list[str] = []


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- environment ----------------------------------------------------------------
class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "vault").mkdir(mode=0o700)
        (tmp / "gnupg").mkdir(mode=0o700)
        (tmp / "pycache").mkdir(mode=0o700)
        (tmp / "run").mkdir(mode=0o700)
        self.run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = OUTDIR / self.run_id
        self.out.mkdir(parents=True, exist_ok=True)
        base = dict(os.environ)
        # This machine exports PYTHONUNBUFFERED=1 and PYTHONDONTWRITEBYTECODE=1 (see
        # perf-baseline.md §1). A user's shell has neither: without .pyc files the
        # editable install starts ~4x slower. The .pyc cache goes to the temp folder
        # (PYTHONPYCACHEPREFIX) so the run writes nothing into the source tree.
        for k in list(base):
            if k.startswith(("KMSCLI_", "GNUPG", "AGE_")) or k in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"):
                del base[k]
        base.update(
            KMSCLI_VAULT=str(tmp / "vault" / "vault.kms"),
            GNUPGHOME=str(tmp / "gnupg"),
            PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
            KMSCLI_RUNTIME_DIR=str(tmp / "run"),  # session agent sockets stay in the temp folder
            NO_COLOR="1",
            LC_ALL="C",
        )
        if SNAPSHOT:
            base["PYTHONPATH"] = str(tmp / "src")
        self.base_env = base
        self.pass_env = dict(base, KMSCLI_PASSPHRASE=PASSPHRASE)
        self.sess_env: dict[str, str] | None = None
        self.agent_pid: int | None = None
        self.session_reason = ""
        self.passfile = tmp / "gpg-pass"
        self.passfile.write_text(PASSPHRASE + "\n")
        self.passfile.chmod(0o600)
        self.msg = tmp / "msg100"
        self.msg.write_bytes(os.urandom(100))
        self.floor_ms: float | None = None
        self.percall: dict[str, dict] = {}

    # subprocess helpers; start_new_session=True: no controlling terminal, no prompt
    def run(self, cmd, env=None, check=True, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run(cmd, env=env or self.base_env, start_new_session=True,
                           capture_output=True, **kw)
        if check and p.returncode != 0:
            raise RuntimeError(f"{shlex.join(map(str, cmd))} -> exit {p.returncode}: "
                               f"{p.stderr.decode(errors='replace').strip()[:400]}")
        return p


def tool_versions(b: Bench) -> dict[str, str]:
    def first_line(cmd) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=b.base_env)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "n/a"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        txt = Path("/proc/cpuinfo").read_text()
        fl = set(re.search(r"^flags\s*:(.*)$", txt, re.M).group(1).split())
        flags = ", ".join(f for f in ("aes", "pclmulqdq", "avx2", "avx512f", "vaes", "vpclmulqdq") if f in fl)
    except (OSError, AttributeError):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except OSError:
        commit = "n/a"
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / MIB:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname": first_line(["uname", "-srm"]),
        "cpu": cpu + (f" (flags: {flags})" if flags else ""),
        "cores": str(os.cpu_count()),
        "memory": mem,
        "python": first_line([PY, "-VV"]),
        "kmscli": first_line([KMSCLI, "--version"]) + f", commit {commit}",
        "age": first_line(["age", "--version"]),
        "gpg": first_line(["gpg", "--version"]) + ", " + first_line(["sh", "-c", "gpg --version | sed -n 2p"]),
        "hyperfine": first_line(["hyperfine", "--version"]),
    }


def wait_for_load() -> None:
    if MAX_LOAD <= 0:
        return
    deadline = time.monotonic() + WAIT_LOAD_SECS
    while os.getloadavg()[0] > MAX_LOAD and time.monotonic() < deadline:
        log(f"load average {loadavg()} > {MAX_LOAD}; waiting...")
        time.sleep(20)
    if os.getloadavg()[0] > MAX_LOAD:
        notes.append(f"Load stayed above {MAX_LOAD} for {WAIT_LOAD_SECS} s; ran anyway (numbers are noisy).")


# -- setup ------------------------------------------------------------------------
def snapshot(b: Bench) -> str:
    """Copy ROOT/kmscli to TMP/src/kmscli until the copy runs `kmscli --help`; return its digest."""
    import hashlib

    src, dst = ROOT / "kmscli", b.tmp / "src" / "kmscli"
    for attempt in range(10):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        p = b.run([KMSCLI, "--help"], check=False)
        where = b.run([PY, "-c", "import kmscli; print(kmscli.__file__)"], check=False).stdout.decode().strip()
        if p.returncode == 0 and where.startswith(str(dst)):
            h = hashlib.sha256()
            for f in sorted(dst.rglob("*.py")):
                h.update(str(f.relative_to(dst)).encode() + b"\0" + f.read_bytes())
            return h.hexdigest()[:12]
        log(f"the kmscli tree does not run right now (exit {p.returncode}, imported from {where!r}); "
            f"retrying in 30 s ({attempt + 1}/10)")
        time.sleep(30)
    raise RuntimeError("kmscli in the working tree kept failing `kmscli --help`: "
                       + p.stderr.decode(errors="replace")[-400:])


def setup(b: Bench) -> None:
    log("init vault with the default KDF (no --kdf flags)")
    t0 = time.perf_counter()
    b.run([KMSCLI, "init"], env=b.pass_env)
    notes.append(f"`kmscli init` (default Argon2id parameters) took {time.perf_counter() - t0:.2f} s.")
    raw = Path(b.base_env["KMSCLI_VAULT"]).read_bytes()[:23]
    if raw[:8] == b"KMSVAULT":
        import struct
        _, _, _, m, t, p = struct.unpack(">8sHBIII", raw)
        b.kdf_desc = f"Argon2id m={m // 1024} MiB, t={t}, p={p}"
    else:
        b.kdf_desc = "Argon2id (default parameters)"
    b.run([KMSCLI, "keys", "create", "--alias", "alias/bench"], env=b.pass_env)
    b.run([KMSCLI, "keys", "create", "--alias", "alias/bench2"], env=b.pass_env)

    b.age_key = b.tmp / "age-key.txt"
    b.run(["age-keygen", "-o", str(b.age_key)])
    b.age_recipient = b.run(["age-keygen", "-y", str(b.age_key)]).stdout.decode().strip()

    # gpg: agent starts here, once (it is stopped in cleanup)
    b.gpg = ["gpg", "--batch", "--quiet", "--no-symkey-cache", "--pinentry-mode", "loopback",
             "--passphrase-file", str(b.passfile)]
    c = b.run(b.gpg + ["--symmetric", "-o", "-", str(b.msg)]).stdout
    (b.tmp / "probe.gpg").write_bytes(c)
    pk = b.run(b.gpg + ["--list-packets", str(b.tmp / "probe.gpg")], check=False)
    txt = (pk.stdout + pk.stderr).decode(errors="replace")
    mc = re.search(r"count (\d+)", txt)
    ma = re.search(r"cipher (\d+)", txt)
    algos = {"7": "AES-128", "8": "AES-192", "9": "AES-256"}
    b.gpg_s2k = mc.group(1) if mc else "?"
    # gpg 2.2 quirk: --s2k-count 1024 encodes as 0, which means "default", so the packet
    # says 65011712; 1088 (coded 1) is the smallest count it really uses.
    c = b.run(b.gpg + ["--symmetric", "--s2k-count", "1088", "-o", "-", str(b.msg)]).stdout
    (b.tmp / "probe-min.gpg").write_bytes(c)
    pk = b.run(b.gpg + ["--list-packets", str(b.tmp / "probe-min.gpg")], check=False)
    mc = re.search(r"count (\d+)", (pk.stdout + pk.stderr).decode(errors="replace"))
    b.gpg_s2k_min = mc.group(1) if mc else "?"
    b.gpg_cipher = algos.get(ma.group(1), "cipher " + ma.group(1)) if ma else "?"

    # sanity: each tool round-trips the small message
    m = b.msg.read_bytes()
    ct = b.run([KMSCLI, "encrypt", "--key", "alias/bench", "-i", str(b.msg)], env=b.pass_env).stdout
    assert b.run([KMSCLI, "decrypt"], env=b.pass_env, input=ct).stdout == m, "kmscli round trip"
    ct = b.run(["age", "-r", b.age_recipient, str(b.msg)]).stdout
    assert b.run(["age", "-d", "-i", str(b.age_key)], input=ct).stdout == m, "age round trip"
    ct = b.run(b.gpg + ["--symmetric", "-o", "-", str(b.msg)]).stdout
    assert b.run(b.gpg + ["-d"], input=ct).stdout == m, "gpg round trip"


def setup_session(b: Bench) -> None:
    """Detect `kmscli unlock`; if it works, b.sess_env carries KMSCLI_SESSION and no passphrase."""
    h = b.run([KMSCLI, "unlock", "--help"], env=b.pass_env, check=False)
    if h.returncode != 0:
        b.session_reason = "no `kmscli unlock` command"
        return
    token = None
    for extra in (["--ttl", "2h"], []):
        cmd = shlex.join([KMSCLI, "unlock", *extra])
        script = (f'out="$({cmd})" || exit 1; eval "$out" && '
                  '[ -n "${KMSCLI_SESSION:-}" ] && printf %s "$KMSCLI_SESSION"')
        p = b.run(["bash", "-c", script], env=b.pass_env, check=False)
        if p.returncode == 0 and p.stdout:
            token = p.stdout.decode()
            if not extra:
                notes.append("`kmscli unlock --ttl 2h` failed; used the default TTL.")
            break
    if token is None:
        b.session_reason = f"`kmscli unlock` failed: {p.stderr.decode(errors='replace').strip()[:200]}"
        return
    env = dict(b.base_env, KMSCLI_SESSION=token)  # no passphrase source at all: the session must carry it
    e = b.run([KMSCLI, "encrypt", "--key", "alias/bench", "-i", str(b.msg)], env=env, check=False)
    if e.returncode != 0:
        b.session_reason = f"encrypt with KMSCLI_SESSION failed (exit {e.returncode})"
        return
    d = b.run([KMSCLI, "decrypt"], env=env, input=e.stdout, check=False)
    if d.returncode != 0 or d.stdout != b.msg.read_bytes():
        b.session_reason = f"decrypt with KMSCLI_SESSION failed (exit {d.returncode})"
        return
    b.sess_env = env
    b.agent_pid = find_agent(b)
    log(f"session support detected (kmscli unlock works; agent pid {b.agent_pid})")


def find_agent(b: Bench) -> int | None:
    """The pid of the session agent this run started, if the session works through one.

    kmscli's agent renames itself `kmscli-agent`; ours is the one whose
    environment carries this run's PYTHONPYCACHEPREFIX (agents of other people's
    test runs may be alive at the same time)."""
    mark = f"PYTHONPYCACHEPREFIX={b.base_env['PYTHONPYCACHEPREFIX']}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() != "kmscli-agent":
                continue
            if mark in (d / "environ").read_bytes().split(b"\0"):
                return int(d.name)
        except OSError:
            continue
    return None


def proc_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class ChildPeak:
    """Samples VmHWM of the children (forked workers) of `pid` every 10 ms while running."""

    def __init__(self, pid: int | None) -> None:
        import threading

        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True) if pid else None

    def _loop(self) -> None:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        while not self._stop.is_set():
            try:
                kids = path.read_text().split()
            except OSError:
                kids = []
            for k in kids:
                self.peak = max(self.peak, proc_kib(int(k), "VmHWM"))
            self._stop.wait(0.01)

    def __enter__(self) -> ChildPeak:
        if self._t:
            self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._t:
            self._t.join()


def end_session(b: Bench) -> None:
    if b.sess_env is None:
        return
    p = b.run([KMSCLI, "lock"], env=b.sess_env, check=False)
    if p.returncode != 0:
        notes.append(f"`kmscli lock` failed with exit {p.returncode}.")
        return
    e = b.run([KMSCLI, "encrypt", "--key", "alias/bench", "-i", str(b.msg)], env=b.sess_env, check=False)
    notes.append(f"`kmscli lock` ended the session: a later encrypt with it exited {e.returncode}"
                 + (" (expected 5)." if e.returncode == 5 else " (expected 5!)."))
    b.sess_env_locked = True
    if b.agent_pid:
        for _ in range(50):
            if find_agent(b) != b.agent_pid:
                notes.append("The session agent exited after `kmscli lock`.")
                break
            time.sleep(0.1)
        else:
            notes.append("The session agent was still running 5 s after `kmscli lock`.")


# -- per-call timings (hyperfine) -------------------------------------------------------
def hyperfine(b: Bench, name: str, cmds: list[tuple[str, list[str]]], env: dict, runs: int) -> dict[str, dict]:
    out = b.out / f"hyperfine-{name}.json"
    args = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--output", "pipe",
            "--style", "basic", "--export-json", str(out)]
    for label, cmd in cmds:
        args += ["-n", label, shlex.join(cmd)]
    log(f"hyperfine {name}: {', '.join(label for label, _ in cmds)} ({runs} runs each)")
    p = subprocess.run(args, env=env, start_new_session=True, capture_output=True, text=True)
    (b.out / f"hyperfine-{name}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"hyperfine {name} failed: {p.stderr.strip()[-600:]}")
    res = {}
    for r in json.loads(out.read_text())["results"]:
        res[r["command"]] = r
    b.percall.update({f"{name}:{k}": v for k, v in res.items()})
    return res


def timed_run(cmd: list[str], env: dict) -> float:
    """Wall seconds of one run of ``cmd`` (no output kept); a failure stops the benchmark."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, start_new_session=True)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} -> exit {p.returncode}")
    return t


def paired_ratio(b: Bench, a_cmd, a_env, b_cmd, b_env, pairs: int) -> float:
    """Median over interleaved pairs of wall(A)/wall(B); drift cancels (perf-baseline §1)."""
    once = timed_run
    for _ in range(3):
        once(a_cmd, a_env), once(b_cmd, b_env)
    ratios = []
    for i in range(pairs):
        if i % 2:
            tb, ta = once(b_cmd, b_env), once(a_cmd, a_env)
        else:
            ta, tb = once(a_cmd, a_env), once(b_cmd, b_env)
        ratios.append(ta / tb)
    return statistics.median(ratios)


def ms(x: float) -> str:
    return f"{x * 1000:.1f}" if x < 10 else f"{x * 1000:.0f}"


def percall_row(label: str, r: dict, floor: float) -> str:
    return (f"| {label} | {ms(r['median'])} | {ms(r['mean'])} ± {ms(r['stddev'])} | {ms(r['min'])} | "
            f"{len(r['times'])} | {r['median'] / floor:.2f}× |")


def bench_percall(b: Bench) -> list[str]:
    K, enc = KMSCLI, [KMSCLI, "encrypt", "--key", "alias/bench", "-i", str(b.msg)]
    floor_cmd = [PY, "-c", "pass"]
    lines = ["## Per-call latency (hyperfine, `-N --warmup 3`, output to a pipe)", "",
             "| command | median ms | mean ± σ ms | min ms | runs | × `python -c pass` |",
             "|---|---|---|---|---|---|"]

    # 1. startup
    nopyc_env = dict(b.pass_env, PYTHONDONTWRITEBYTECODE="1")
    nopyc_env.pop("PYTHONPYCACHEPREFIX")
    r = hyperfine(b, "startup", [
        ("python -c pass", floor_cmd),
        ("kmscli --version", [K, "--version"]),
        ("kmscli random 16", [K, "random", "16"]),
    ], b.pass_env, RUNS)
    floor = r["python -c pass"]["median"]
    b.floor_ms = floor
    r2 = hyperfine(b, "nopyc", [("kmscli random 16 (no .pyc)", [K, "random", "16"])], nopyc_env, RUNS)
    lines += [
        percall_row("`python -c pass` (venv python: the floor)", r["python -c pass"], floor),
        percall_row("`kmscli --version`", r["kmscli --version"], floor),
        percall_row("`kmscli random 16`", r["kmscli random 16"], floor),
        percall_row("`kmscli random 16` with `PYTHONDONTWRITEBYTECODE=1`, no kmscli .pyc (this machine's env)",
                    r2["kmscli random 16 (no .pyc)"], floor),
    ]

    # 2. 100-byte encrypt, passphrase, and the peers
    gpg_enc = b.gpg + ["--symmetric", "-o", "-", str(b.msg)]
    r = hyperfine(b, "encrypt-slow", [
        ("kmscli encrypt (passphrase)", enc),
        ("gpg --symmetric", gpg_enc),
    ], b.pass_env, SLOW_RUNS)
    rf = hyperfine(b, "encrypt-fast", [
        ("age -r", ["age", "-r", b.age_recipient, str(b.msg)]),
        ("gpg --symmetric --s2k-count 1088", b.gpg + ["--symmetric", "--s2k-count", "1088", "-o", "-", str(b.msg)]),
    ], b.pass_env, RUNS)
    b.kms_pass_call = r["kmscli encrypt (passphrase)"]["median"]
    b.gpg_call = r["gpg --symmetric"]["median"]
    lines += [
        percall_row(f"`kmscli encrypt` 100 B, passphrase ({b.kdf_desc} per call)",
                    r["kmscli encrypt (passphrase)"], floor),
    ]
    goal = []
    if b.sess_env is not None:
        rs = hyperfine(b, "encrypt-session", [
            ("python -c pass", floor_cmd),
            ("kmscli encrypt (session)", enc),
        ], b.sess_env, RUNS)
        s = rs["kmscli encrypt (session)"]
        f2 = rs["python -c pass"]["median"]
        b.kms_sess_call = s["median"]
        lines.append(percall_row("`kmscli encrypt` 100 B, session (`KMSCLI_SESSION`)", s, floor))
        ratio = s["median"] / f2
        log(f"interleaved pairs: session encrypt vs python -c pass ({PAIRS} pairs)")
        pr = paired_ratio(b, enc, b.sess_env, floor_cmd, b.sess_env, PAIRS)
        verdict = "meets" if ratio <= 3.0 else "misses"
        goal = ["", f"**Session encrypt / `python -c pass` = {ratio:.3f}×** (medians from the same hyperfine call: "
                f"{ms(s['median'])} / {ms(f2)} ms) — {verdict} the ≤3× goal. "
                f"Cross-check, median of {PAIRS} interleaved pairs: {pr:.2f}×."]
    else:
        b.kms_sess_call = None
        lines.append(f"| `kmscli encrypt` 100 B, session | n/a (no session support: {b.session_reason}) | | | | |")
        goal = ["", "**Session encrypt / `python -c pass`**: n/a (no session support: "
                f"{b.session_reason}); passphrase encrypt / `python -c pass` = "
                f"{b.kms_pass_call / floor:.1f}× (goal for the session: ≤3×)."]
    lines += [
        percall_row("`age -r` (X25519 recipient) 100 B", rf["age -r"], floor),
        percall_row(f"`gpg --symmetric` 100 B (default S2K: iterated SHA-1, count {b.gpg_s2k})",
                    r["gpg --symmetric"], floor),
        percall_row(f"`gpg --symmetric --s2k-count 1088` 100 B (minimum S2K: count {b.gpg_s2k_min}; note only)",
                    rf["gpg --symmetric --s2k-count 1088"], floor),
    ]
    return lines + goal


# -- loops --------------------------------------------------------------------------
def time_loop(b: Bench, cmd: list[str], n: int, env: dict) -> float:
    script = (f'for ((i=0; i<{n}; i++)); do {shlex.join(cmd)} < {shlex.quote(str(b.msg))} > /dev/null '
              f'|| {{ echo "failed at $i" >&2; exit 1; }}; done')
    t0 = time.perf_counter()
    b.run(["bash", "-c", script], env=env)
    return time.perf_counter() - t0


def bench_loops(b: Bench) -> list[str]:
    enc = [KMSCLI, "encrypt", "--key", "alias/bench"]
    lines = ["## Shell loop of 100-byte encrypts (`for` loop in bash, `cmd < msg > /dev/null`; plain wall-clock)", "",
             "| loop | iterations run | total s | per call ms | 1,000 calls s |", "|---|---|---|---|---|"]
    rows = []
    if b.sess_env is not None:
        log(f"loop: {LOOP_N} session encrypts")
        t = time_loop(b, enc, LOOP_N, b.sess_env)
        rows.append(("`kmscli encrypt`, session", LOOP_N, t, False))
    else:
        lines.append("| `kmscli encrypt`, session | n/a (no session support) | | | |")
    log(f"loop: {LOOP_PASS_N} passphrase encrypts")
    t = time_loop(b, enc, LOOP_PASS_N, b.pass_env)
    rows.append(("`kmscli encrypt`, passphrase", LOOP_PASS_N, t, LOOP_PASS_N != 1000))
    log(f"loop: {LOOP_N} age encrypts, {LOOP_N} python -c pass")
    t = time_loop(b, ["age", "-r", b.age_recipient], LOOP_N, b.base_env)
    rows.append(("`age -r` (reference)", LOOP_N, t, False))
    t = time_loop(b, [PY, "-c", "pass"], LOOP_N, b.base_env)
    rows.append(("`python -c pass` (floor)", LOOP_N, t, False))
    for label, n, t, extrap in rows:
        per_ms = t * 1000 / n
        thousand = (f"**{t * 1000 / n:.0f} (extrapolated ×{1000 / n:.4g} from {n} calls)**" if extrap
                    else f"{t * 1000 / n:.1f}" if n == 1000 else f"{t * 1000 / n:.1f} (scaled from {n})")
        lines.append(f"| {label} | {n} | {t:.2f} | {per_ms:.1f} | {thousand} |")
    return lines


# -- throughput --------------------------------------------------------------------------
def make_input(b: Bench, size: int) -> Path:
    path = b.tmp / "plain.bin"
    log(f"writing {size // MIB} MiB of random input")
    with open(path, "wb") as f:
        left = size
        while left:
            # fresh random bytes per MiB (cheap: urandom ~ GB/s), so nothing compresses or repeats
            chunk = os.urandom(min(MIB, left))
            f.write(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return path


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 * MIB)
        while f.readinto(buf):
            pass


TIME = "/usr/bin/time"


def pipeline(cmd: list[str], env: dict, src: Path, agent: int | None = None) -> tuple[float, int, int, int]:
    """Time `cat SRC | CMD | wc -c`; return (seconds, bytes out, peak RSS KiB of CMD, of the agent's worker).

    Peak RSS comes from `/usr/bin/time -f %M`: the tool is forked from the small
    `time` process. (ru_maxrss from wait4 on a child forked from this Python
    process reads no lower than this process's own RSS, ~20 MiB.)
    """
    errf = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the pipeline
    rssf = tempfile.NamedTemporaryFile(prefix="rss-")  # noqa: SIM115
    timed = [TIME, "-f", "%M", "-o", rssf.name, *cmd] if os.access(TIME, os.X_OK) else cmd
    watch = ChildPeak(agent).__enter__()
    t0 = time.perf_counter()
    p1 = subprocess.Popen(["cat", str(src)], stdout=subprocess.PIPE, start_new_session=True)
    p2 = subprocess.Popen(timed, stdin=p1.stdout, stdout=subprocess.PIPE, stderr=errf, env=env,
                          start_new_session=True)
    p1.stdout.close()
    p3 = subprocess.Popen(["wc", "-c"], stdin=p2.stdout, stdout=subprocess.PIPE, start_new_session=True)
    p2.stdout.close()
    out = p3.communicate()[0]
    _, status, ru = os.wait4(p2.pid, 0)
    p2.returncode = os.waitstatus_to_exitcode(status)
    p1.wait()
    t = time.perf_counter() - t0
    watch.__exit__()
    if p2.returncode != 0:
        errf.seek(0)
        raise RuntimeError(f"{shlex.join(cmd)} exit {p2.returncode}: {errf.read().decode(errors='replace')[:400]}")
    rss = ru.ru_maxrss
    if timed is not cmd:
        rss = int(Path(rssf.name).read_text().split()[-1])
    rssf.close()
    return t, int(out.split()[0]), rss, watch.peak


def to_file(cmd: list[str], env: dict, src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        p = subprocess.run(cmd, stdin=fi, stdout=fo, stderr=subprocess.PIPE, env=env, start_new_session=True)
        fo.flush()
        os.fsync(fo.fileno())
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exit {p.returncode}: {p.stderr.decode(errors='replace')[:400]}")


def verify(cmd: list[str], env: dict, src: Path, plain: Path) -> None:
    script = f'{shlex.join(cmd)} < {shlex.quote(str(src))} | cmp -s - {shlex.quote(str(plain))}'
    p = subprocess.run(["bash", "-o", "pipefail", "-c", script], env=env, start_new_session=True)
    if p.returncode != 0:
        raise RuntimeError(f"round trip failed: {shlex.join(cmd)} < {src} does not give back the input")


def bench_throughput(b: Bench) -> list[str]:
    size = SIZE_MIB * MIB
    free = shutil.disk_usage(b.tmp).free
    if free < 4.5 * size:
        raise RuntimeError(f"need ~{4.5 * size / 2**30:.1f} GiB free in {b.tmp}, have {free / 2**30:.1f}")
    plain = make_input(b, size)
    kenv = b.sess_env if b.sess_env is not None else b.pass_env
    kmode = "session" if b.sess_env is not None else "passphrase"
    kagent = b.agent_pid if b.sess_env is not None else None
    # name: (encrypt argv, decrypt argv, env, agent pid whose workers do the work)
    tools = {
        f"kmscli ({kmode})": ([KMSCLI, "encrypt", "--key", "alias/bench"], [KMSCLI, "decrypt"], kenv, kagent),
        "age (X25519)": (["age", "-r", b.age_recipient], ["age", "-d", "-i", str(b.age_key)], b.base_env, None),
        "gpg --symmetric --compress-algo none": (
            b.gpg + ["--symmetric", "--compress-algo", "none"], b.gpg + ["-d"], b.base_env, None),
    }
    if b.sess_env is not None:  # the in-process path too (no agent), for comparison
        tools["kmscli (passphrase)"] = ([KMSCLI, "encrypt", "--key", "alias/bench"], [KMSCLI, "decrypt"],
                                        b.pass_env, None)
    cts: dict[str, Path] = {}
    for i, (name, (enc, dec, env, _)) in enumerate(tools.items()):
        ct = b.tmp / f"ct{i}.bin"
        log(f"{name}: making the ciphertext and checking the round trip")
        to_file(enc, env, plain, ct)
        verify(dec, env, ct, plain)
        cts[name] = ct
    kname = next(iter(tools))
    reenc = [KMSCLI, "reencrypt", "--key", "alias/bench2"]
    rct = b.tmp / "ct-re.bin"
    to_file(reenc, kenv, cts[kname], rct)
    verify([KMSCLI, "decrypt", "--key", "alias/bench2"], kenv, rct, plain)
    rct.unlink()

    warm(plain)
    for ct in cts.values():
        warm(ct)
    res: dict[tuple[str, str], list[tuple[float, int, int, int]]] = {}
    for rep in range(REPS):
        log(f"throughput rep {rep + 1}/{REPS} (load {loadavg()})")
        for name, (enc, dec, env, agent) in tools.items():
            t, n, rss, wrss = pipeline(enc, env, plain, agent)
            if n <= size:
                raise RuntimeError(f"{name} encrypt wrote only {n} bytes")
            res.setdefault((name, "encrypt"), []).append((t, size, rss, wrss))
            t, n, rss, wrss = pipeline(dec, env, cts[name], agent)
            if n != size:
                raise RuntimeError(f"{name} decrypt wrote {n} bytes, expected {size}")
            res.setdefault((name, "decrypt"), []).append((t, size, rss, wrss))
        t, n, rss, wrss = pipeline(reenc, kenv, cts[kname], kagent)
        ctsize = cts[kname].stat().st_size
        if abs(n - ctsize) > 4096:
            notes.append(f"reencrypt output {n} B vs input {ctsize} B.")
        res.setdefault((kname, "reencrypt"), []).append((t, ctsize, rss, wrss))
        t, n, rss, wrss = pipeline(["cat"], b.base_env, cts[kname])
        res.setdefault(("cat", "copy"), []).append((t, ctsize, rss, wrss))

    def stat(key):
        runs = res[key]
        t = statistics.median(r[0] for r in runs)
        rss = max(r[2] for r in runs) / 1024
        wrss = max(r[3] for r in runs) / 1024
        cell = f"{rss:.1f}" if not wrss else f"{rss:.1f} client + {wrss:.1f} agent worker"
        return t, runs[0][1] / t / 1e6, cell, [r[0] for r in runs]

    label = f"{SIZE_MIB} MiB" if SIZE_MIB % 1024 else f"{SIZE_MIB // 1024} GiB"
    lines = [f"## Throughput, {label} of random data (`cat FILE | TOOL | wc -c`, median of {REPS}; MB = 10⁶ bytes)", "",
             "| tool | operation | median s | MB/s | runs s | peak RSS MiB | kmscli / age |",
             "|---|---|---|---|---|---|---|"]
    age = "age (X25519)"
    for name in tools:
        for op in ("encrypt", "decrypt"):
            t, mbs, rss, runs = stat((name, op))
            ratio = ""
            if name.startswith("kmscli"):
                _, ambs, _, _ = stat((age, op))
                ratio = f"**{mbs / ambs:.2f}×**" if name == kname else f"{mbs / ambs:.2f}×"
            lines.append(f"| {name} | {op} | {t:.2f} | {mbs:.0f} | {' / '.join(f'{x:.2f}' for x in runs)} | "
                         f"{rss} | {ratio} |")
    t, mbs, rss, runs = stat((kname, "reencrypt"))
    _, embs, _, _ = stat((kname, "encrypt"))
    _, dmbs, _, _ = stat((kname, "decrypt"))
    lines.append(f"| {kname} | reencrypt → alias/bench2 (MB/s of ciphertext) | {t:.2f} | {mbs:.0f} | "
                 f"{' / '.join(f'{x:.2f}' for x in runs)} | {rss} | |")
    ct_t, ct_mbs, ct_rss, ct_runs = stat(("cat", "copy"))
    lines.append(f"| `cat` (pipe ceiling: no crypto, same pipeline, kmscli ciphertext) | copy | {ct_t:.2f} | "
                 f"{ct_mbs:.0f} | {' / '.join(f'{x:.2f}' for x in ct_runs)} | {ct_rss} | |")
    lines += ["", f"Reencrypt runs at **{mbs / embs:.2f}× encrypt** and {mbs / dmbs:.2f}× decrypt throughput "
              f"({mbs / ct_mbs:.2f}× the `cat` ceiling)."]
    if kagent:
        lines += ["", f"With a session, the work happens in a worker forked by the session agent (pid {kagent}, "
                  f"resident {proc_kib(kagent, 'VmRSS') / 1024:.1f} MiB, peak {proc_kib(kagent, 'VmHWM') / 1024:.1f} "
                  "MiB); the client only passes its stdin/stdout. The worker's peak RSS is sampled from "
                  "/proc every 10 ms and includes pages shared with the agent."]
    fixed = []
    if b.sess_env is None:
        fixed.append(f"kmscli rows use the passphrase and so include one Argon2id run "
                     f"(a 100-byte encrypt takes {b.kms_pass_call:.2f} s)")
    fixed.append(f"gpg rows include one S2K run (count {b.gpg_s2k}; a 100-byte `gpg --symmetric` takes "
                 f"{b.gpg_call:.2f} s); gpg cipher {b.gpg_cipher}")
    lines += ["", "Fixed per-call costs inside these times: " + "; ".join(fixed) + "."]
    return lines


# -- main ---------------------------------------------------------------------------
def main() -> int:
    wait_for_load()
    load_start = loadavg()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="kmscli-bench-"))
    tmp.chmod(0o700)
    cwd = os.getcwd()
    os.chdir(tmp)  # nothing a tool might drop in its working folder lands in the repository
    b = None

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        b = Bench(tmp)
        if os.environ.get("BENCH_INSTALLED"):
            notes.append(f"bench/run installed missing tools with apt-get: {os.environ['BENCH_INSTALLED'].strip()}.")
        log(f"temp dir {tmp}; load {load_start}; size {SIZE_MIB} MiB")
        b.snap = snapshot(b) if SNAPSHOT else None
        info = tool_versions(b)
        setup(b)
        setup_session(b)
        sections = []
        for name, fn in (("per-call", bench_percall), ("loops", bench_loops), ("throughput", bench_throughput)):
            section_loads.append(f"{name} {loadavg().split()[0]}")
            sections.append(fn(b))
        end_session(b)
        load_end = loadavg()
        elapsed = time.perf_counter() - t_start
    finally:
        if b is not None:
            subprocess.run(["gpgconf", "--homedir", str(tmp / "gnupg"), "--kill", "gpg-agent"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if b.sess_env is not None and not getattr(b, "sess_env_locked", False):
                subprocess.run([KMSCLI, "lock"], env=b.sess_env, capture_output=True, start_new_session=True)
            if b.agent_pid:  # the agent this run started, by pid, if lock did not end it
                for _ in range(50):
                    if not Path(f"/proc/{b.agent_pid}").exists() or find_agent(b) != b.agent_pid:
                        break
                    time.sleep(0.1)
                else:
                    log(f"session agent {b.agent_pid} still alive after lock; sending SIGTERM")
                    os.kill(b.agent_pid, signal.SIGTERM)
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)

    if b.sess_env is None:
        notes.insert(0, f"**Session rows are n/a: no session support ({b.session_reason}).** "
                        "Rerun bench/run once `kmscli unlock` exists.")
    env_note = ("Timed commands run without `PYTHONUNBUFFERED`/`PYTHONDONTWRITEBYTECODE` (exported on this machine, "
                "not in a user's shell) and with `PYTHONPYCACHEPREFIX` in the temp folder, so kmscli's editable "
                "install gets .pyc files like a pip install; the \"no .pyc\" row shows the cost when it does not.")
    body = []
    for s in sections:
        body += s + [""]
    header = [
        f"# kmscli benchmark results ({'full run' if SIZE_MIB == 1024 else f'BENCH_SIZE_MIB={SIZE_MIB}'})", "",
        f"- date: {info['date']}",
        f"- system: `{info['uname']}`; CPU: {info['cpu']}; cores: {info['cores']}; memory: {info['memory']}",
        f"- Python: {info['python']} (`{PY}`)",
        f"- {info['kmscli']}; "
        + (f"measured a copy of `kmscli/` taken at start (sha256 of its .py files {b.snap})" if b.snap
           else "measured the live tree") + f"; vault KDF: {b.kdf_desc}",
        f"- age {info['age']}; {info['gpg']}; {info['hyperfine']}",
        f"- load average (1/5/15 min): start {load_start}, end {load_end}; 1-min load as each part began: "
        f"{', '.join(section_loads)} (the benchmark itself adds 1-4: Argon2id p=4, 3-process pipelines); "
        f"run took {elapsed / 60:.1f} min",
        f"- raw hyperfine JSON and logs: `bench/out/{b.run_id}/`",
        "",
    ]
    footer = ["## Notes", ""] + [f"- {n}" for n in notes + [env_note]] + [""]
    table = "\n".join(body + footer)
    print(table)
    RESULTS.write_text("\n".join(header) + "\n" + table)
    log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
