"""Choose the HTTP server for `kmscli serve` by measurement (see bench/SERVER_CHOICE.md).

    .venv/bin/python bench/server_choice.py load      [--reps 3 --duration 10 --only a,b]
    .venv/bin/python bench/server_choice.py startup   [--runs 5]
    .venv/bin/python bench/server_choice.py features  [--only a,b]
    .venv/bin/python bench/server_choice.py deps

load      every candidate of bench/server_apps.py plus moto_server (real KMS
          Encrypt / GenerateDataKey), 16 connections, wrk replaying pre-signed
          requests (bench/serve_load.py); candidates and repetitions interleaved.
startup   import time of each server package and spawn-to-"serving on" time.
features  per candidate: SIGTERM with a request in flight, 1,000 idle
          connections, a client gone mid-body, 10 MB bodies (Content-Length and
          chunked), TLS with a cert/key file, port 0.
deps      the distributions each candidate pulls in and their installed size.

Output is Markdown on stdout, progress on stderr; --json FILE keeps the raw numbers.
Everything is loopback and bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load as sl  # noqa: E402
from server_apps import CANDIDATES  # noqa: E402

HERE = Path(__file__).resolve().parent
APPS = HERE / "server_apps.py"
PY = sys.executable
ORDER = list(CANDIDATES)

# What each candidate imports to serve, and the distributions it needs beyond the stdlib.
IMPORTS = {
    "raw-asyncio": "import asyncio, httptools",
    "raw-uvloop": "import asyncio, httptools, uvloop",
    "uvicorn-httptools-uvloop": "import uvicorn, uvicorn.protocols.http.httptools_impl, uvloop",
    "uvicorn-httptools-asyncio": "import uvicorn, uvicorn.protocols.http.httptools_impl",
    "uvicorn-h11-asyncio": "import uvicorn, uvicorn.protocols.http.h11_impl",
    "hypercorn-asyncio": "import hypercorn.asyncio, hypercorn.config",
    "hypercorn-uvloop": "import hypercorn.asyncio, hypercorn.config, uvloop",
    "aiohttp-asyncio": "from aiohttp import web",
    "aiohttp-uvloop": "from aiohttp import web; import uvloop",
    "granian-asgi": "from granian.server.embed import Server",
    "granian-rsgi": "from granian.server.embed import Server",
}
DISTS = {
    "raw-asyncio": ["httptools"],
    "raw-uvloop": ["httptools", "uvloop"],
    "uvicorn-httptools-uvloop": ["uvicorn", "httptools", "uvloop"],
    "uvicorn-httptools-asyncio": ["uvicorn", "httptools"],
    "uvicorn-h11-asyncio": ["uvicorn"],
    "hypercorn-asyncio": ["hypercorn"],
    "hypercorn-uvloop": ["hypercorn", "uvloop"],
    "aiohttp-asyncio": ["aiohttp"],
    "aiohttp-uvloop": ["aiohttp", "uvloop"],
    "granian-asgi": ["granian"],
    "granian-rsgi": ["granian"],
}


def log(msg: str) -> None:
    print(f"server-choice: {msg}", file=sys.stderr, flush=True)


def start(name: str, *extra: str, env: dict | None = None) -> sl.Server:
    return sl.start_server(name, [PY, str(APPS), name, "--port", "0", *extra], env=env)


def machine_note() -> str:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; `{platform.platform()}`; {cpu}; "
        f"{os.cpu_count()} cores; "
        f"Python {platform.python_version()}; wrk: `{shutil.which('wrk')}`; load average {sl.loadavg()}"
    )


# -- load ----------------------------------------------------------------------------------
def cmd_load(a) -> dict:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("server-choice: wrk not found (apt-get install -y wrk)")
    names = a.only.split(",") if a.only else ORDER
    creds = sl.Creds()
    servers: list[sl.Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="server-choice-"))
    results: list[sl.RunResult] = []
    ops = a.ops.split(",")
    try:
        for n in names:
            for mode in a.audit.split(","):
                env = dict(os.environ, BENCH_AUDIT=mode, BENCH_AUDIT_FILE=str(tmp / f"{n}-{mode}.jsonl"))
                s = start(n, env=env)
                if mode != "none":
                    s.name = f"{n} audit={mode}"
                servers.append(s)
        if not a.no_moto:
            servers.append(sl.start_moto(PY))
        keys = {}
        for s in servers:
            keys[s.name] = sl.create_key(s.url, creds) if s.name == "moto" else "alias/bench"
            for op in ops:
                sl.check_one(s.url, sl.presign(s.url, op, keys[s.name], 1, creds)[0], op)
            lua = tmp / "warm.lua"
            sl.write_lua(lua, sl.presign(s.url, ops[0], keys[s.name], 50, creds))
            sl.run_wrk(wrk, s.url + "/", lua, a.connections, a.warmup, 1, s.pid)
            log(f"{s.name}: ready at {s.url}, warmed up {a.warmup:g} s")
        log(f"load average before: {sl.loadavg()}")
        for rep in range(1, a.reps + 1):
            for op in ops:
                # rotate the order each repetition so no server always runs first/last
                order = servers[(rep - 1) % len(servers) :] + servers[: (rep - 1) % len(servers)]
                for s in order:
                    lua = tmp / f"{s.name}-{op}.lua"
                    sl.write_lua(lua, sl.presign(s.url, op, keys[s.name], a.presign, creds))
                    r = sl.run_wrk(wrk, s.url + "/", lua, a.connections, a.duration, 1, s.pid, s.name, op, rep)
                    results.append(r)
                    log(
                        f"rep {rep} {s.name:26s} {op:15s} {r.rps:7.0f} req/s "
                        f"p50 {r.p50_ms:6.2f} p99 {r.p99_ms:6.2f} ms "
                        f"server {r.server_cpu_ms_per_req:.3f} ms/req ({r.server_cpu_share:.2f} core) "
                        f"wrk {r.wrk_cpu_share:.2f} core, other {r.other_cores:.2f} core, errors {r.errors}"
                    )
        log(f"load average after: {sl.loadavg()}")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = sl.summarize(results)
    # order rows by op, then by the candidate order
    rank = {s.name: i for i, s in enumerate(servers)}
    rows.sort(key=lambda r: (ops.index(r["op"]), rank.get(r["target"], 99)))
    print(sl.markdown(rows, None if a.no_moto else "moto"))
    return {"runs": [r.row() for r in results], "summary": rows}


# -- startup -------------------------------------------------------------------------------
def cmd_startup(a) -> dict:
    names = a.only.split(",") if a.only else ORDER
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    imp: dict[str, list[float]] = {n: [] for n in names}
    ready: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, float] = {}
    base: list[float] = []
    code = "import time; t=time.perf_counter(); {imp}; print(time.perf_counter()-t)"
    for i in range(a.runs + 1):  # first round warms the page cache and writes .pyc; not counted
        out = subprocess.run(
            [PY, "-c", code.format(imp="import json, asyncio, ssl")], capture_output=True, text=True, env=env
        )
        if i:
            base.append(float(out.stdout))
        for n in names:
            out = subprocess.run(
                [PY, "-c", code.format(imp=IMPORTS[n])], capture_output=True, text=True, env=env, check=True
            )
            if i:
                imp[n].append(float(out.stdout))
            s = start(n)
            try:
                if i:
                    ready[n].append(s.ready_s or float("nan"))
                    rss[n] = sl.proc_rss_kib(s.pid)[0] / 1024
            finally:
                s.stop()
    print("| candidate | import ms (median) | spawn → `serving on` ms (median) | idle RSS MiB |")
    print("|---|---|---|---|")
    print(f"| (stdlib json+asyncio+ssl, for reference) | {1000 * statistics.median(base):.0f} | | |")
    for n in names:
        print(
            f"| {n} | {1000 * statistics.median(imp[n]):.0f} | "
            f"{1000 * statistics.median(ready[n]):.0f} | {rss[n]:.1f} |"
        )
    return {"import_s": imp, "ready_s": ready, "rss_mib": rss, "stdlib_import_s": base}


# -- features ------------------------------------------------------------------------------
def post_raw(url: str, target: str, body: bytes, extra: str = "", timeout: float = 10) -> tuple[int, bytes]:
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as c:
        c.sendall(
            f"POST / HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/x-amz-json-1.1\r\n"
            f"X-Amz-Target: {target}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
            + body
        )
        return read_response(c)


def read_response(c: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            raise ConnectionError(f"closed before a response ({buf[:80]!r})")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(rest) < n:
        d = c.recv(65536)
        if not d:
            break
        rest += d
    return status, rest[:n]


ENC_BODY = json.dumps({"KeyId": "alias/bench", "Plaintext": "aGVsbG8gd29ybGQ="}).encode()


def ok_request(url: str) -> bool:
    try:
        return post_raw(url, "TrentService.Encrypt", ENC_BODY, timeout=5)[0] == 200
    except OSError:
        return False


def feat_graceful(n: str) -> str:
    s = start(n)
    u = urlsplit(s.url)
    box: dict = {}

    def slow():
        try:
            box["resp"] = post_raw(s.url, "TrentService.BenchSleep", b'{"Seconds": 1.5}', timeout=15)
        except OSError as e:
            box["err"] = repr(e)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)
    # an idle keep-alive connection, to see whether it is closed on shutdown
    idle = socket.create_connection((u.hostname, u.port), timeout=5)
    idle.sendall(
        f"POST / HTTP/1.1\r\nHost: {u.netloc}\r\nX-Amz-Target: TrentService.Encrypt\r\n"
        f"Content-Length: {len(ENC_BODY)}\r\n\r\n".encode()
        + ENC_BODY
    )
    read_response(idle)
    t0 = time.perf_counter()
    os.killpg(s.pid, signal.SIGTERM)
    time.sleep(0.2)
    refused = not ok_request(s.url)
    t.join(20)
    try:
        rc = s.proc.wait(20)
    except subprocess.TimeoutExpired:
        rc = "no exit in 20 s"
        s.stop()
    took = time.perf_counter() - t0
    idle.settimeout(1)
    try:
        idle_closed = idle.recv(1) == b""
    except OSError:
        idle_closed = False
    idle.close()
    st = box.get("resp", (None,))[0]
    return (
        f"in-flight request: {'200' if st == 200 else box.get('err', st)}; new connections after SIGTERM "
        f"{'refused' if refused else 'still served'}; idle keep-alive conn {'closed' if idle_closed else 'left open'}; "
        f"exit {rc} after {took:.1f} s"
    )


def feat_idle(n: str, count: int = 1000) -> str:
    s = start(n)
    u = urlsplit(s.url)
    socks = []
    try:
        rss0 = sl.proc_rss_kib(s.pid)[0]
        for _ in range(count):
            c = socket.create_connection((u.hostname, u.port), timeout=5)
            socks.append(c)
        time.sleep(1)
        rss1 = sl.proc_rss_kib(s.pid)[0]
        lat = []
        for _ in range(20):
            t0 = time.perf_counter()
            good = ok_request(s.url)
            lat.append(time.perf_counter() - t0)
        time.sleep(9)  # past common 5 s keep-alive timeouts
        closed = 0
        for c in socks:
            r, _, _ = select.select([c], [], [], 0)
            if r:
                try:
                    if c.recv(1, socket.MSG_PEEK) == b"":
                        closed += 1
                except OSError:
                    closed += 1
        alive = s.proc.poll() is None
        return (
            f"{count} idle conns: RSS +{(rss1 - rss0) / 1024:.1f} MiB, a request meanwhile "
            f"{'OK' if good else 'FAILED'} in {1000 * statistics.median(lat):.1f} ms; "
            f"closed by the server after 10 s: {closed}; server {'alive' if alive else 'DIED'}"
        )
    finally:
        for c in socks:
            c.close()
        s.stop()


def feat_midbody(n: str) -> str:
    s = start(n)
    u = urlsplit(s.url)
    try:
        for _ in range(20):
            c = socket.create_connection((u.hostname, u.port), timeout=5)
            c.sendall(
                f"POST / HTTP/1.1\r\nHost: {u.netloc}\r\nX-Amz-Target: TrentService.Encrypt\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b'{"KeyId"'
            )
            time.sleep(0.01)
            c.close()
        time.sleep(0.5)
        good = ok_request(s.url)
        errs = [ln for ln in s.stderr_lines if "Traceback" in ln or "Error" in ln or "error" in ln]
        return (
            f"20 clients gone mid-body: next request {'OK' if good else 'FAILED'}; error lines logged: {len(errs)}"
            + (f" (e.g. `{errs[0][:100]}`)" if errs else "")
        )
    finally:
        s.stop()


def feat_bigbody(n: str) -> str:
    """10 MB with Content-Length, then 10 MB chunked: status, time, server peak RSS growth."""
    s = start(n)
    u = urlsplit(s.url)
    out = []
    try:
        for mode in ("content-length", "chunked"):
            hwm0 = sl.proc_rss_kib(s.pid)[1]
            c = socket.create_connection((u.hostname, u.port), timeout=10)
            head = f"POST / HTTP/1.1\r\nHost: {u.netloc}\r\nX-Amz-Target: TrentService.Encrypt\r\n"
            size = 10 * 1000 * 1000
            if mode == "content-length":
                head += f"Content-Length: {size}\r\n\r\n"
            else:
                head += "Transfer-Encoding: chunked\r\n\r\n"
            box: dict = {}
            chunk = b"x" * 65536

            def sender(c=c, head=head, mode=mode, size=size, chunk=chunk, box=box):
                try:
                    c.sendall(head.encode())
                    sent = 0
                    while sent < size:
                        piece = chunk if mode == "content-length" else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                        c.sendall(piece)
                        sent += len(chunk)
                    if mode == "chunked":
                        c.sendall(b"0\r\n\r\n")
                    box["sent"] = sent
                except OSError as e:
                    box["send_err"] = type(e).__name__

            t0 = time.perf_counter()
            th = threading.Thread(target=sender, daemon=True)
            th.start()
            try:
                st, _ = read_response(c)
            except OSError as e:
                st = f"no response ({type(e).__name__})"
            took = time.perf_counter() - t0
            c.close()
            th.join(10)
            hwm1 = sl.proc_rss_kib(s.pid)[1]
            out.append(f"{mode}: {st} in {1000 * took:.0f} ms, peak RSS +{(hwm1 - hwm0) / 1024:.1f} MiB")
        good = ok_request(s.url)
        return "10 MB body, " + "; ".join(out) + f"; next request {'OK' if good else 'FAILED'}"
    finally:
        s.stop()


def make_cert(d: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cf, kf = d / "cert.pem", d / "key.pem"
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cf, kf


def feat_tls(n: str, cert: Path, key: Path) -> str:
    try:
        s = start(n, "--tls-cert", str(cert), "--tls-key", str(key))
    except RuntimeError as e:
        return f"TLS: did not start ({str(e).splitlines()[-1][:120]})"
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        u = urlsplit(s.url)
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
        conn.request(
            "POST",
            "/",
            ENC_BODY,
            {"X-Amz-Target": "TrentService.Encrypt", "Content-Type": "application/x-amz-json-1.1"},
        )
        r = conn.getresponse()
        r.read()
        ver = conn.sock.version()
        conn.close()
        return f"TLS: {s.url.split(':')[0]} {r.status} over {ver}"
    except Exception as e:  # noqa: BLE001 - report whatever failed
        return f"TLS: FAILED ({type(e).__name__}: {e})"
    finally:
        s.stop()


def cmd_features(a) -> dict:
    names = a.only.split(",") if a.only else ORDER
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    tmp = Path(tempfile.mkdtemp(prefix="server-choice-tls-"))
    cert, key = make_cert(tmp)
    res: dict[str, dict[str, str]] = {}
    try:
        for n in names:
            r = {}
            for what, fn, args in (
                ("graceful", feat_graceful, (n,)),
                ("idle", feat_idle, (n,)),
                ("midbody", feat_midbody, (n,)),
                ("bigbody", feat_bigbody, (n,)),
                ("tls", feat_tls, (n, cert, key)),
            ):
                try:
                    r[what] = fn(*args)
                except Exception as e:  # noqa: BLE001
                    r[what] = f"check failed: {type(e).__name__}: {e}"
                log(f"{n} {what}: {r[what]}")
            res[n] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for n, r in res.items():
        print(f"\n**{n}**\n")
        for k, v in r.items():
            print(f"- {k}: {v}")
    return res


# -- deps ------------------------------------------------------------------------------------
def dist_closure(names: list[str]) -> list[str]:
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: dict[str, None] = {}
    todo = list(names)
    while todo:
        n = todo.pop(0)
        key = n.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            d = metadata.distribution(n)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = None
        for req in d.requires or []:
            r = Requirement(req)
            if r.marker and not r.marker.evaluate({"extra": ""}):
                continue
            todo.append(r.name)
    return list(seen)


def dist_size(name: str) -> int:
    from importlib import metadata

    d = metadata.distribution(name)
    total = 0
    for f in d.files or []:
        p = Path(d.locate_file(f))
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def cmd_deps(a) -> dict:
    from importlib import metadata

    out = {}
    print("| candidate | distributions (beyond the stdlib) | installed size MiB | compiled parts |")
    print("|---|---|---|---|")
    for n in ORDER:
        ds = dist_closure(DISTS[n])
        size = sum(dist_size(d) for d in ds)
        compiled = [
            d for d in ds if any(str(f).endswith((".so", ".pyd")) for f in (metadata.distribution(d).files or []))
        ]
        vers = [f"{d} {metadata.version(d)}" for d in ds]
        out[n] = {"dists": vers, "size": size, "compiled": compiled}
        print(f"| {n} | {', '.join(vers)} | {size / (1 << 20):.1f} | {', '.join(compiled) or 'none'} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--presign", type=int, default=1000)
    p.add_argument("--ops", default="Encrypt,GenerateDataKey")
    p.add_argument("--no-moto", action="store_true")
    p.add_argument("--audit", default="none", help="comma list of BENCH_AUDIT modes per candidate: none, fsync, group")
    p.add_argument("--only")
    p = sub.add_parser("startup")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only")
    p = sub.add_parser("features")
    p.add_argument("--only")
    sub.add_parser("deps")
    for p in sub.choices.values():
        p.add_argument("--json", type=Path)
    a = ap.parse_args()
    print(f"<!-- {machine_note()} -->")
    log(machine_note())
    res = {"load": cmd_load, "startup": cmd_startup, "features": cmd_features, "deps": cmd_deps}[a.cmd](a)
    log(f"done; load average {sl.loadavg()}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
