"""HTTP load harness for AWS KMS endpoints: pre-signed botocore requests replayed by wrk.

Used by bench/server_choice.py (which HTTP server `kmscli serve` is built on) and,
side by side, for `kmscli serve` against moto_server (issue 13):

    .venv/bin/python bench/serve_load.py \\
        --target 'kmscli=kmscli serve --port 0' --target moto \\
        --ops Encrypt,GenerateDataKey --connections 16 --duration 10 --reps 3

How a run works, per target:

1. The server is started in its own session (`--target NAME=COMMAND`; the
   command must print `... serving on http://HOST:PORT` to stderr once it
   accepts, as `kmscli serve --port 0` will), or `--target moto` starts
   `moto_server` on a free loopback port, or `--target NAME=@http://HOST:PORT`
   uses a server that is already running. Only loopback addresses are accepted.
2. A symmetric key is created through the endpoint with boto3 (CreateKey), or
   `--key-id [NAME=]KEY` names one.
3. Right before each measured run, N distinct requests per operation are made by
   a real boto3 client whose `before-send` hook captures them instead of sending:
   the exact headers botocore sends (SigV4 `Authorization`, `X-Amz-Date`,
   `X-Amz-Target`, `User-Agent`, `amz-sdk-*`), signed for that endpoint's Host.
   Encrypt plaintexts are random, so no two bodies are alike. Replaying them is
   valid for the 5 minutes of SigV4 skew; each run lasts seconds.
4. One of each is sent with http.client and its answer checked (200, JSON with
   CiphertextBlob, and Plaintext for GenerateDataKey) before any load.
5. wrk (one thread, C connections, D seconds, a generated Lua script that cycles
   through the pre-built requests) drives the load and prints its own JSON summary.
   Around it the harness reads /proc: the server's CPU time (its whole process
   tree, all threads), wrk's CPU time (its rusage), the whole machine's busy
   share (/proc/stat), and the server's RSS.

Targets and repetitions are interleaved (A B A B ...), as the other benchmarks
here do, because this shared 2-core machine drifts by tens of percent.
Everything is bounded: wrk stops after D seconds, every wait has a timeout, and
servers the harness started are stopped (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
PAGE = os.sysconf("SC_PAGE_SIZE")
READY_RE = re.compile(r"serving on (https?://\S+)")
LOOPBACK = ("127.", "::1", "[::1]", "localhost")

# Credentials for signing. moto and the candidate apps ignore them; kmscli serve
# will check them, so a run against it passes the ones it was started with.
DEFAULT_ACCESS_KEY = "AKIDKMSCLIBENCH00001"
DEFAULT_SECRET_KEY = "kmscli-bench-secret-key-not-a-real-one-000"
DEFAULT_REGION = "us-east-1"


def log(msg: str) -> None:
    print(f"serve-load: {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (only for servers that cannot bind port 0 and say so)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not (host.startswith("127.") or host in ("::1", "localhost")):
        raise SystemExit(f"serve-load: refusing non-loopback endpoint {url}")


# -- /proc readings ----------------------------------------------------------------
def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat ppid fields)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user+system, all threads) used so far by pid and its live descendants."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def proc_rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB summed over pid and its descendants."""
    rss = hwm = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            continue
    return rss, hwm


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts) - idle, sum(parts)


# -- servers -------------------------------------------------------------------------
@dataclass
class Server:
    """A server under test: started here (proc set) or already running (proc None)."""

    name: str
    url: str
    proc: subprocess.Popen | None = None
    ready_s: float | None = None  # spawn -> "serving on" line
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 10.0) -> int | None:
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name}: no exit {timeout:.0f} s after SIGTERM; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def _drain(proc: subprocess.Popen, lines: list[str], ready: threading.Event, box: dict) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip("\n")
        if len(lines) < 2000:
            lines.append(line)
        m = READY_RE.search(line)
        if m and not ready.is_set():
            box["url"] = m.group(1)
            box["t"] = time.perf_counter()
            ready.set()
    ready.set()


def start_server(name: str, argv: list[str], env: dict | None = None, timeout: float = 60.0) -> Server:
    """Start argv in a new session; wait for 'serving on URL' on its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    lines: list[str] = []
    ready = threading.Event()
    box: dict = {}
    threading.Thread(target=_drain, args=(proc, lines, ready, box), daemon=True).start()
    ready.wait(timeout)
    srv = Server(name, box.get("url", ""), proc, None, lines)
    if "url" not in box:
        srv.stop()
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"{name}: no 'serving on URL' line within {timeout:.0f} s; stderr:\n{tail}")
    srv.ready_s = box["t"] - t0
    check_loopback(srv.url)
    return srv


def wait_http(url: str, timeout: float = 60.0) -> float:
    """Seconds until a TCP connect to url succeeds."""
    u = urlsplit(url)
    t0 = time.perf_counter()
    while True:
        try:
            with socket.create_connection((u.hostname, u.port), timeout=1):
                return time.perf_counter() - t0
        except OSError:
            if time.perf_counter() - t0 > timeout:
                raise
            time.sleep(0.02)


def start_moto(python: str, timeout: float = 60.0) -> Server:
    """moto_server on a free loopback port (it reports its URL only through werkzeug's log).

    Its per-request access log goes to a temporary file, not through a pipe this
    process would have to drain during the measurement."""
    port = free_port()
    moto = str(Path(python).with_name("moto_server"))
    argv = [moto] if os.path.exists(moto) else [python, "-m", "moto.server"]
    argv += ["-H", "127.0.0.1", "-p", str(port)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as errf:  # stays open in the child after we close ours
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(url, timeout)
    return Server("moto", url, proc, time.perf_counter() - t0, [])


# -- requests ----------------------------------------------------------------------
@dataclass
class Creds:
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    region: str = DEFAULT_REGION


def kms_client(url: str, creds: Creds):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "kms",
        endpoint_url=url,
        region_name=creds.region,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


def create_key(url: str, creds: Creds) -> str:
    return kms_client(url, creds).create_key(Description="kmscli serve benchmark")["KeyMetadata"]["Arn"]


def op_params(op: str, key_id: str, i: int) -> dict:
    if op == "Encrypt":
        return {"KeyId": key_id, "Plaintext": os.urandom(100)}
    if op == "GenerateDataKey":
        return {"KeyId": key_id, "KeySpec": "AES_256"}
    raise ValueError(f"no parameters defined for operation {op}")


@dataclass
class Captured:
    path: str
    headers: list[tuple[str, str]]
    body: bytes


class _Raw:
    """Stands in for urllib3's response object inside botocore's AWSResponse."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *a, **k):
        yield self._body


def presign(url: str, op: str, key_id: str, n: int, creds: Creds) -> list[Captured]:
    """n requests exactly as boto3 would send them to url (signed now, never sent)."""
    from botocore.awsrequest import AWSResponse

    client = kms_client(url, creds)
    out: list[Captured] = []
    host = urlsplit(url).netloc
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()

    def capture(request, **kwargs):
        hdrs = [(k, v.decode() if isinstance(v, bytes) else str(v)) for k, v in request.headers.items()]
        if not any(k.lower() == "host" for k, _ in hdrs):
            hdrs.insert(0, ("Host", host))  # signed by SigV4; urllib3 would add it on the wire
        body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
        out.append(Captured(urlsplit(request.url).path or "/", hdrs, body))
        return AWSResponse(request.url, 200, {"x-amzn-requestid": "captured"}, _Raw(b"{}"))

    client.meta.events.register("before-send.kms.*", capture)
    call = getattr(client, snake)
    for i in range(n):
        call(**op_params(op, key_id, i))
    return out


def check_one(url: str, req: Captured, op: str) -> dict:
    """Send one captured request with http.client; return the parsed answer or raise."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("POST", req.path, skip_host=True, skip_accept_encoding=True)
        for k, v in req.headers:
            conn.putheader(k, v)
        conn.endheaders(req.body)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{op} at {url}: HTTP {resp.status}: {data[:300]!r}")
    doc = json.loads(data)
    need = ["CiphertextBlob"] + (["Plaintext"] if op == "GenerateDataKey" else [])
    for k in need:
        base64.b64decode(doc[k], validate=True)
    return {"content_type": resp.getheader("Content-Type"), "request_id": resp.getheader("x-amzn-RequestId")}


# -- wrk ---------------------------------------------------------------------------
def lua_str(s: str | bytes) -> str:
    b = s.encode() if isinstance(s, str) else s
    out = []
    for c in b:
        if c in (0x22, 0x5C) or c < 0x20 or c > 0x7E:
            out.append(f"\\{c:03d}")
        else:
            out.append(chr(c))
    return '"' + "".join(out) + '"'


LUA_TEMPLATE = r"""
-- generated by bench/serve_load.py: replays pre-signed requests in turn
local raw = {
%(requests)s
}
local reqs = {}
local idx = 0
local thread_no = 0
local counter = 0

setup = function(thread)
  thread:set("thread_no", counter)
  counter = counter + 1
end

init = function(args)
  for i, r in ipairs(raw) do
    reqs[i] = wrk.format("POST", r[1], r[2], r[3])
  end
  idx = ((thread_no or 0) * 7919) %% #reqs
end

request = function()
  idx = idx %% #reqs + 1
  return reqs[idx]
end

done = function(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 90, 99, 99.9}) do
    p[#p + 1] = string.format('"%%s": %%d', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'WRKJSON {"duration_us": %%d, "requests": %%d, "bytes": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "lat_min_us": %%d, "lat_max_us": %%d, ' ..
    '"lat_mean_us": %%.1f, "lat_stdev_us": %%.1f, "pct_us": {%%s}}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(p, ", ")))
end
"""


def write_lua(path: Path, reqs: list[Captured]) -> None:
    rows = []
    for r in reqs:
        # wrk.format adds Content-Length itself; a second one would be a framing error.
        hdrs = ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in r.headers if k.lower() != "content-length")
        rows.append(f"  {{{lua_str(r.path)}, {{{hdrs}}}, {lua_str(r.body)}}},")
    path.write_text(LUA_TEMPLATE % {"requests": "\n".join(rows)})


@dataclass
class RunResult:
    target: str
    op: str
    rep: int
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    server_cpu_s: float
    server_cpu_ms_per_req: float
    server_cpu_share: float  # of one core
    wrk_cpu_s: float
    wrk_cpu_share: float  # of one core
    machine_busy: float  # whole machine, 0..1 of all cores
    other_cores: float  # cores busy with anything but the server and wrk (this harness, other work)
    rss_mib: float
    hwm_mib: float
    wall_s: float
    raw: dict

    def row(self) -> dict:
        d = self.__dict__.copy()
        d.pop("raw")
        return d


def run_wrk(
    wrk: str,
    url: str,
    lua: Path,
    connections: int,
    duration: float,
    threads: int = 1,
    server_pid: int | None = None,
    target: str = "",
    op: str = "",
    rep: int = 0,
    timeout_s: float = 5.0,
) -> RunResult:
    check_loopback(url)
    argv = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration:g}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(lua),
        url,
    ]
    cpu0 = proc_cpu(server_pid) if server_pid else 0.0
    m0 = machine_cpu()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errf, start_new_session=True)
        # wrk stops by itself after `duration`; this timer is only a guard against a hang.
        guard = threading.Timer(duration + 60, lambda: os.killpg(proc.pid, signal.SIGKILL))
        guard.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read()
            # Reap it ourselves to get wrk's own rusage (its CPU time).
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            guard.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read()
    wall = time.perf_counter() - t0
    m1 = machine_cpu()
    cpu1 = proc_cpu(server_pid) if server_pid else 0.0
    wrk_cpu = ru.ru_utime + ru.ru_stime
    text = out.decode(errors="replace")
    m = re.search(r"WRKJSON (\{.*\})", text)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{text}\n{err.decode(errors='replace')}")
    w = json.loads(m.group(1))
    secs = w["duration_us"] / 1e6
    nreq = w["requests"]
    errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    scpu = cpu1 - cpu0
    rss, hwm = proc_rss_kib(server_pid) if server_pid else (0, 0)
    pct = w["pct_us"]
    return RunResult(
        target=target,
        op=op,
        rep=rep,
        rps=nreq / secs if secs else 0.0,
        requests=nreq,
        errors=errors,
        p50_ms=pct["50"] / 1000,
        p90_ms=pct["90"] / 1000,
        p99_ms=pct["99"] / 1000,
        p999_ms=pct["99.9"] / 1000,
        max_ms=w["lat_max_us"] / 1000,
        server_cpu_s=scpu,
        server_cpu_ms_per_req=1000 * scpu / nreq if nreq else float("nan"),
        server_cpu_share=scpu / wall,
        wrk_cpu_s=wrk_cpu,
        wrk_cpu_share=wrk_cpu / wall,
        machine_busy=(m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
        other_cores=(m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * NCPU - scpu / wall - wrk_cpu / wall,
        rss_mib=rss / 1024,
        hwm_mib=hwm / 1024,
        wall_s=wall,
        raw=w,
    )


# -- reporting ---------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(results: list[RunResult]) -> list[dict]:
    """Median over repetitions per (target, op), keeping the order of first appearance."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.target, r.op), []).append(r)
    rows = []
    for (t, op), rs in groups.items():
        rows.append(
            {
                "target": t,
                "op": op,
                "reps": len(rs),
                "rps": median([r.rps for r in rs]),
                "rps_all": [round(r.rps) for r in rs],
                "p50_ms": median([r.p50_ms for r in rs]),
                "p99_ms": median([r.p99_ms for r in rs]),
                "p99_max_ms": max(r.p99_ms for r in rs),
                "cpu_ms_req": median([r.server_cpu_ms_per_req for r in rs]),
                "server_core": median([r.server_cpu_share for r in rs]),
                "wrk_core": median([r.wrk_cpu_share for r in rs]),
                "machine_busy": median([r.machine_busy for r in rs]),
                "other_cores": median([r.other_cores for r in rs]),
                "errors": sum(r.errors for r in rs),
                "hwm_mib": max(r.hwm_mib for r in rs),
            }
        )
    return rows


def markdown(rows: list[dict], baseline: str | None = None) -> str:
    base = {r["op"]: r["rps"] for r in rows if r["target"] == baseline} if baseline else {}
    head = (
        "| server | op | req/s (median) | req/s per rep | p50 ms | p99 ms (max rep) | server CPU ms/req "
        "| server cores | wrk cores | other cores | errors | peak RSS MiB |"
    )
    if base:
        head += f" × {baseline} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['target']} | {r['op']} | {r['rps']:.0f} | {' / '.join(map(str, r['rps_all']))} | "
            f"{r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} ({r['p99_max_ms']:.2f}) | {r['cpu_ms_req']:.3f} | {r['server_core']:.2f} | "
            f"{r['wrk_core']:.2f} | {r['other_cores']:.2f} | {r['errors']} | {r['hwm_mib']:.1f} |"
        )
        if base:
            b = base.get(r["op"])
            line += f" {r['rps'] / b:.2f}× |" if b else " |"
        lines.append(line)
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------
def parse_target(spec: str, python: str) -> tuple[str, str]:
    if spec == "moto":
        return "moto", "moto"
    if "=" not in spec:
        raise SystemExit(f"serve-load: --target wants NAME=COMMAND, NAME=@URL or moto (got {spec!r})")
    name, rest = spec.split("=", 1)
    return name, rest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--target", action="append", required=True, help="NAME=COMMAND (prints 'serving on URL'), NAME=@URL, or moto"
    )
    ap.add_argument("--ops", default="Encrypt,GenerateDataKey")
    ap.add_argument("--connections", "-c", type=int, default=16)
    ap.add_argument("--duration", "-d", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (1 keeps the generator small)")
    ap.add_argument("--presign", type=int, default=1000, help="distinct pre-signed requests per op and run")
    ap.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unmeasured load before each target's first run"
    )
    ap.add_argument(
        "--key-id",
        action="append",
        default=[],
        help="KEY for every target, or NAME=KEY for one (repeatable); targets without one get a key from CreateKey",
    )
    ap.add_argument("--access-key", default=os.environ.get("BENCH_ACCESS_KEY", DEFAULT_ACCESS_KEY))
    ap.add_argument("--secret-key", default=os.environ.get("BENCH_SECRET_KEY", DEFAULT_SECRET_KEY))
    ap.add_argument("--region", default=DEFAULT_REGION)
    ap.add_argument("--baseline", default="moto", help="target the ratio column compares with")
    ap.add_argument("--json", type=Path, help="write every run's numbers here")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)

    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("serve-load: wrk not found (apt-get install -y wrk)")
    creds = Creds(args.access_key, args.secret_key, args.region)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    results: list[RunResult] = []
    try:
        for spec in args.target:
            name, how = parse_target(spec, args.python)
            if how == "moto":
                srv = start_moto(args.python)
            elif how.startswith("@"):
                check_loopback(how[1:])
                srv = Server(name, how[1:].rstrip("/"))
            else:
                srv = start_server(name, shlex.split(how))
            log(f"{name}: {srv.url} (ready in {srv.ready_s or 0:.2f} s)")
            servers.append(srv)
        given = dict(k.split("=", 1) if "=" in k and not k.startswith("arn:") else ("*", k) for k in args.key_id)
        keys = {s.name: given.get(s.name) or given.get("*") or create_key(s.url, creds) for s in servers}
        for s in servers:
            for op in ops:
                reqs = presign(s.url, op, keys[s.name], 2, creds)
                info = check_one(s.url, reqs[0], op)
                log(f"{s.name} {op}: answered 200, Content-Type {info['content_type']}, RequestId {info['request_id']}")
            if args.warmup > 0:
                lua = tmp / "warm.lua"
                write_lua(lua, presign(s.url, ops[0], keys[s.name], 50, creds))
                run_wrk(wrk, s.url + "/", lua, args.connections, args.warmup, args.threads, s.pid)
        log(f"load average before the runs: {loadavg()}")
        for rep in range(1, args.reps + 1):
            for op in ops:
                for s in servers:
                    lua = tmp / f"{s.name}-{op}.lua"
                    write_lua(lua, presign(s.url, op, keys[s.name], args.presign, creds))
                    r = run_wrk(
                        wrk, s.url + "/", lua, args.connections, args.duration, args.threads, s.pid, s.name, op, rep
                    )
                    results.append(r)
                    log(
                        f"rep {rep} {s.name:10s} {op:16s} {r.rps:8.0f} req/s "
                        f"p50 {r.p50_ms:6.2f} p99 {r.p99_ms:6.2f} ms "
                        f"server {r.server_cpu_ms_per_req:.3f} ms/req ({r.server_cpu_share:.2f} core) "
                        f"wrk {r.wrk_cpu_share:.2f} core "
                        f"errors {r.errors}"
                    )
        log(f"load average after the runs: {loadavg()}")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = summarize(results)
    print(markdown(rows, args.baseline if any(s.name == args.baseline for s in servers) else None))
    if args.json:
        args.json.write_text(json.dumps({"runs": [r.row() for r in results], "summary": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
