"""Candidate HTTP servers for `kmscli serve`, each running the same minimal KMS-like app.

    python bench/server_apps.py NAME [--host 127.0.0.1] [--port 0] [--tls-cert F --tls-key F]

NAME is one of CANDIDATES below. Every candidate is started programmatically
from a Python function (as `kmscli serve` must be), in one process, and prints
`kmscli: serving on http://HOST:PORT` to stderr once it accepts connections.
With --port 0 the port is the one the kernel picked: every candidate except
granian is handed a socket this file binds itself (so the port is known from
getsockname()); granian cannot take a socket (see start_granian).

The app (the same work for every server, standing in for the real request):
- POST only; a body over MAX_BODY (1 MiB) is refused with 413 before it is read
  when Content-Length says so, and as soon as the count passes it otherwise;
- route on X-Amz-Target (TrentService.Encrypt / GenerateDataKey, and
  TrentService.BenchSleep, which waits {"Seconds": s} to test graceful shutdown);
- parse the JSON body; SHA-256 of the body and one HMAC-SHA256 (what a SigV4
  check costs, minus the header canonicalisation); one AES-256-GCM encrypt of
  the 100-byte plaintext (or a fresh 32-byte data key) with `cryptography`;
- answer a small JSON with Content-Type application/x-amz-json-1.1 and
  x-amzn-RequestId; errors as {"__type": ..., "message": ...} with
  X-Amzn-ErrorType.

SIGTERM: stop accepting, finish in-flight requests (up to GRACE seconds), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import sys
import time
import uuid

T0 = time.perf_counter()
MAX_BODY = 1 << 20
GRACE = 10.0
JSON_CT = b"application/x-amz-json-1.1"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
_MAC_KEY = b"m" * 32
_aead = None


def _aes():
    global _aead
    if _aead is None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        _aead = AESGCM(b"k" * 32)
    return _aead


def error(status: int, typ: str, msg: str) -> tuple[int, bytes, str | None]:
    return status, json.dumps({"__type": typ, "message": msg}).encode(), typ


def work(target: str | None, body: bytes) -> tuple[int, bytes, str | None]:
    """The fixed per-request work: (status, JSON body, error type or None)."""
    if not target or not target.startswith("TrentService."):
        return error(400, "UnknownOperationException", "missing or unknown X-Amz-Target")
    op = target[13:]
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        return error(400, "SerializationException", "body is not JSON")
    if not isinstance(req, dict):
        return error(400, "SerializationException", "body is not a JSON object")
    # Stand-in for the SigV4 check: payload hash + one HMAC over a canonical-request-sized string.
    payload_hash = hashlib.sha256(body).hexdigest()
    hmac.new(_MAC_KEY, (target + "\n" + payload_hash).encode() * 4, hashlib.sha256).hexdigest()
    nonce = os.urandom(12)
    if op == "Encrypt":
        try:
            pt = base64.b64decode(req["Plaintext"], validate=True)
        except (KeyError, ValueError, TypeError):
            return error(400, "ValidationException", "Plaintext must be base64")
        ct = _aes().encrypt(nonce, pt, None)
        out = {
            "CiphertextBlob": base64.b64encode(nonce + ct).decode(),
            "KeyId": KEY_ARN,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }
    elif op == "GenerateDataKey":
        dk = os.urandom(32)
        ct = _aes().encrypt(nonce, dk, None)
        out = {
            "CiphertextBlob": base64.b64encode(nonce + ct).decode(),
            "Plaintext": base64.b64encode(dk).decode(),
            "KeyId": KEY_ARN,
        }
    else:
        return error(400, "UnknownOperationException", f"unknown operation {op}")
    return 200, json.dumps(out, separators=(",", ":")).encode(), None


def sleep_seconds(target: str | None, body: bytes) -> float | None:
    """For TrentService.BenchSleep: how long to wait before answering (else None)."""
    if target != "TrentService.BenchSleep":
        return None
    try:
        return float(json.loads(body).get("Seconds", 1))
    except (ValueError, AttributeError, TypeError):
        return 1.0


class Audit:
    """Stand-in for the durable audit log: one JSON line per request, hash-chained.

    BENCH_AUDIT=none   nothing written
    BENCH_AUDIT=fsync  write + fdatasync in the event loop, before answering (blocks the loop)
    BENCH_AUDIT=group  group commit: records wait in a batch; one write + fdatasync per batch
                       runs in a thread while the loop keeps serving; each request is answered
                       only after the batch holding its record is on disk
    BENCH_AUDIT_FILE   the log file (default: a temporary file)
    """

    def __init__(self) -> None:
        self.mode = os.environ.get("BENCH_AUDIT", "none")
        self.fd = -1
        self.prev = b"0" * 64
        self.pending: list[tuple[bytes, asyncio.Future]] = []
        self.flushing = False
        if self.mode != "none":
            path = os.environ.get("BENCH_AUDIT_FILE")
            if not path:
                import tempfile

                path = tempfile.mkstemp(prefix="bench-audit-", suffix=".jsonl")[1]
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def line(self, target: str | None, status: int, body: bytes) -> bytes:
        rec = {
            "time": time.time(),
            "op": target,
            "status": status,
            "requestId": str(uuid.uuid4()),
            "reqHash": hashlib.sha256(body).hexdigest(),
            "prev": self.prev.decode(),
        }
        data = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        self.prev = hashlib.sha256(data).hexdigest().encode()
        return data

    def _write(self, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(self.fd, mv) :]
        os.fdatasync(self.fd)

    async def record(self, target: str | None, status: int, body: bytes) -> None:
        if self.mode == "none":
            return
        data = self.line(target, status, body)
        if self.mode == "fsync":
            self._write(data)
            return
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((data, fut))
        if not self.flushing:
            self.flushing = True
            asyncio.ensure_future(self._flush())
        await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    await loop.run_in_executor(None, self._write, b"".join(d for d, _ in batch))
                except OSError as e:
                    for _, f in batch:
                        f.set_exception(e)
                    continue
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)
        finally:
            self.flushing = False


AUDIT = Audit()


def bound_socket(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on an
    # accepted connection only when sock.proto == IPPROTO_TCP, and without it a
    # response written in two pieces (ASGI start + body) waits ~40 ms for the
    # client's delayed ACK (Nagle). Measured: uvicorn on asyncio, 360 req/s.
    s = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(1024)
    s.setblocking(False)
    return s


def announce(scheme: str, sock_or_addr) -> None:
    host, port = sock_or_addr.getsockname()[:2] if hasattr(sock_or_addr, "getsockname") else sock_or_addr
    shown = f"[{host}]" if ":" in host else host
    ms = 1000 * (time.perf_counter() - T0)
    print(
        f"kmscli: serving on {scheme}://{shown}:{port} (ready {ms:.0f} ms after imports began)",
        file=sys.stderr,
        flush=True,
    )


def ssl_ctx(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


# -- ASGI (uvicorn, hypercorn, granian-asgi) ----------------------------------------------
async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    target = None
    clen = None
    for k, v in scope["headers"]:
        if k == b"x-amz-target":
            target = v.decode("latin-1")
        elif k == b"content-length":
            clen = int(v) if v.isdigit() else -1
    if scope["method"] != "POST":
        status, payload, etype = error(405, "UnsupportedOperationException", "only POST")
    elif clen is not None and (clen < 0 or clen > MAX_BODY):
        # Refuse before reading: the server then closes the connection (the body is unread).
        status, payload, etype = error(413, "ValidationException", f"request body over {MAX_BODY} bytes")
    else:
        chunks = []
        size = 0
        more = True
        too_big = False
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            b = msg.get("body", b"")
            size += len(b)
            if size > MAX_BODY:
                too_big = True
                break
            chunks.append(b)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        if too_big:
            status, payload, etype = error(413, "ValidationException", f"request body over {MAX_BODY} bytes")
        else:
            secs = sleep_seconds(target, body)
            if secs is not None:
                await asyncio.sleep(secs)
                status, payload, etype = 200, b"{}", None
            else:
                status, payload, etype = work(target, body)
                await AUDIT.record(target, status, body)
    headers = [
        (b"content-type", JSON_CT),
        (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    if etype:
        headers.append((b"x-amzn-errortype", etype.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def run(coro_fn, loop_impl: str = "asyncio") -> None:
    """asyncio.run(coro_fn()) on the asyncio or the uvloop event loop."""
    factory = None
    if loop_impl == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro_fn())


def start_uvicorn(host, port, http_impl, loop_impl, cert, key):
    import uvicorn

    sock = bound_socket(host, port)
    config = uvicorn.Config(
        asgi_app,
        http=http_impl,
        loop=loop_impl,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=GRACE,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    server = uvicorn.Server(config)

    async def main():
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.005)
        if server.started:
            announce("https" if cert else "http", sock)
        await task

    # serve() captures SIGINT/SIGTERM itself and shuts down gracefully.
    run(main, loop_impl)


def start_hypercorn(host, port, loop_impl, cert, key):
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = bound_socket(host, port)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.graceful_timeout = GRACE
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.include_server_header = False
    if cert:
        config.certfile, config.keyfile = cert, key

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # hypercorn has no "started" hook; it binds (here: adopts the fd) before its
        # first await inside serve(). Announce after giving it a few turns of the loop.
        task = asyncio.ensure_future(serve(asgi_app, config, shutdown_trigger=stop.wait, mode="asgi"))
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        if not task.done():
            announce("https" if cert else "http", sock)
        await task

    run(main, loop_impl)


def start_granian(host, port, interface, cert, key):
    from granian.constants import Interfaces
    from granian.server.embed import Server

    # Granian takes only an address and a port, and on Linux each worker binds
    # its own SO_REUSEPORT socket, so port 0 would give every worker another
    # port and nothing reports it. We pick a free port first (racy) instead.
    if port == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    target = asgi_app if interface == "asgi" else RsgiApp()
    kw = {}
    if cert:
        from pathlib import Path

        kw = {"ssl_cert": Path(cert), "ssl_key": Path(key)}
    server = Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.ASGINL if interface == "asgi" else Interfaces.RSGI,
        log_enabled=False,
        websockets=False,
        **kw,
    )
    server.workers_kill_timeout = int(GRACE)  # not a constructor argument of the embedded Server

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        task = asyncio.ensure_future(server.serve())
        # No "started" hook either: poll until the port accepts.
        for _ in range(2000):
            await asyncio.sleep(0.005)
            try:
                r, w = await asyncio.open_connection(host, port)
                w.close()
                break
            except OSError:
                if task.done():
                    break
        if not task.done():
            announce("https" if cert else "http", (host, port))
        await task

    run(main)


class RsgiApp:
    """The same app over granian's own RSGI interface (no ASGI message dicts)."""

    async def __call__(self, scope, proto):
        h = scope.headers
        target = h.get("x-amz-target")
        clen = h.get("content-length")
        if scope.method != "POST":
            status, payload, etype = error(405, "UnsupportedOperationException", "only POST")
        elif clen is not None and (not clen.isdigit() or int(clen) > MAX_BODY):
            status, payload, etype = error(413, "ValidationException", f"request body over {MAX_BODY} bytes")
        else:
            body = await proto()
            if len(body) > MAX_BODY:
                status, payload, etype = error(413, "ValidationException", f"request body over {MAX_BODY} bytes")
            else:
                secs = sleep_seconds(target, body)
                if secs is not None:
                    await asyncio.sleep(secs)
                    status, payload, etype = 200, b"{}", None
                else:
                    status, payload, etype = work(target, body)
                    await AUDIT.record(target, status, body)
        headers = [("content-type", JSON_CT.decode()), ("x-amzn-requestid", str(uuid.uuid4()))]
        if etype:
            headers.append(("x-amzn-errortype", etype))
        proto.response_bytes(status, headers, payload)


# -- aiohttp -----------------------------------------------------------------------------------
def start_aiohttp(host, port, loop_impl, cert, key):
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target")
        # client_max_size below makes read() raise 413 past MAX_BODY.
        body = await request.read()
        secs = sleep_seconds(target, body)
        if secs is not None:
            await asyncio.sleep(secs)
            status, payload, etype = 200, b"{}", None
        else:
            status, payload, etype = work(target, body)
            await AUDIT.record(target, status, body)
        headers = {"Content-Type": JSON_CT.decode(), "x-amzn-RequestId": str(uuid.uuid4())}
        if etype:
            headers["X-Amzn-ErrorType"] = etype
        return web.Response(status=status, body=payload, headers=headers)

    async def main():
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("POST", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=GRACE)
        await runner.setup()
        sock = bound_socket(host, port)
        site = web.SockSite(runner, sock, ssl_context=ssl_ctx(cert, key))
        await site.start()
        announce("https" if cert else "http", sock)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()  # stops listening, waits for handlers up to shutdown_timeout

    run(main, loop_impl)


# -- raw asyncio.Protocol + httptools (the floor: no framework) --------------------------------
class RawHttp(asyncio.Protocol):
    """HTTP/1.1 keep-alive on httptools' parser; one request at a time per connection."""

    conns: set[RawHttp] = set()

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.perr = httptools.HttpParserError
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closing = False

    # connection
    def connection_made(self, transport):
        self.transport = transport
        RawHttp.conns.add(self)

    def connection_lost(self, exc):
        RawHttp.conns.discard(self)
        self.closing = True

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self.perr:
            self.reply(*error(400, "SerializationException", "malformed HTTP request"), keep=False)

    # parser callbacks
    def on_message_begin(self):
        self.busy = True
        self.target = None
        self.clen = None
        self.chunks = []
        self.size = 0
        self.too_big = False

    def on_header(self, name, value):
        n = name.lower()
        if n == b"x-amz-target":
            self.target = value.decode("latin-1")
        elif n == b"content-length":
            self.clen = int(value) if value.isdigit() else -1

    def on_headers_complete(self):
        if self.clen is not None and (self.clen < 0 or self.clen > MAX_BODY):
            self.too_big = True
            # Answer now and close: the rest of the body is never read.
            self.reply(*error(413, "ValidationException", f"request body over {MAX_BODY} bytes"), keep=False)

    def on_body(self, b):
        if self.too_big:
            return
        self.size += len(b)
        if self.size > MAX_BODY:
            self.too_big = True
            self.reply(*error(413, "ValidationException", f"request body over {MAX_BODY} bytes"), keep=False)
            return
        self.chunks.append(b)

    def on_message_complete(self):
        if self.too_big or self.closing:
            return
        keep = self.parser.should_keep_alive()
        body = b"".join(self.chunks)
        if self.parser.get_method() != b"POST":
            self.reply(*error(405, "UnsupportedOperationException", "only POST"), keep=keep)
            return
        secs = sleep_seconds(self.target, body)
        if secs is not None:
            self.transport.pause_reading()  # keep answers in order: no pipelined request meanwhile

            async def later():
                await asyncio.sleep(secs)
                self.reply(200, b"{}", None, keep=keep)
                if not self.closing:
                    self.transport.resume_reading()

            asyncio.ensure_future(later())
            return
        status, payload, etype = work(self.target, body)
        if AUDIT.mode == "group":
            self.transport.pause_reading()
            target = self.target

            async def committed():
                await AUDIT.record(target, status, body)
                self.reply(status, payload, etype, keep=keep)
                if not self.closing:
                    self.transport.resume_reading()

            asyncio.ensure_future(committed())
            return
        if AUDIT.mode == "fsync":
            AUDIT._write(AUDIT.line(self.target, status, body))
        self.reply(status, payload, etype, keep=keep)

    def reply(self, status, payload, etype, keep=True):
        if self.transport is None or self.transport.is_closing():
            return
        reason = {200: b"OK", 400: b"Bad Request", 405: b"Method Not Allowed", 413: b"Payload Too Large"}.get(
            status, b""
        )
        keep = keep and not RawHttp.draining
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"Content-Type: " + JSON_CT + b"\r\n",
            b"x-amzn-RequestId: " + str(uuid.uuid4()).encode() + b"\r\n",
            b"Content-Length: %d\r\n" % len(payload),
        ]
        if etype:
            head.append(b"X-Amzn-ErrorType: " + etype.encode() + b"\r\n")
        if not keep:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + payload)
        self.busy = False
        if not keep:
            self.closing = True
            self.transport.close()

    draining = False


def start_raw(host, port, loop_impl, cert, key):

    async def main():
        loop = asyncio.get_running_loop()
        sock = bound_socket(host, port)
        server = await loop.create_server(RawHttp, sock=sock, ssl=ssl_ctx(cert, key))
        announce("https" if cert else "http", sock)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        # Graceful: stop accepting, close idle keep-alive connections, let busy ones
        # finish their request (answered with Connection: close), then exit.
        server.close()
        RawHttp.draining = True
        for c in list(RawHttp.conns):
            if not c.busy and c.transport:
                c.transport.close()
        deadline = loop.time() + GRACE
        while RawHttp.conns and loop.time() < deadline:
            await asyncio.sleep(0.01)

    run(main, loop_impl)


CANDIDATES = {
    "raw-asyncio": lambda h, p, c, k: start_raw(h, p, "asyncio", c, k),
    "raw-uvloop": lambda h, p, c, k: start_raw(h, p, "uvloop", c, k),
    "uvicorn-httptools-uvloop": lambda h, p, c, k: start_uvicorn(h, p, "httptools", "uvloop", c, k),
    "uvicorn-httptools-asyncio": lambda h, p, c, k: start_uvicorn(h, p, "httptools", "asyncio", c, k),
    "uvicorn-h11-asyncio": lambda h, p, c, k: start_uvicorn(h, p, "h11", "asyncio", c, k),
    "hypercorn-asyncio": lambda h, p, c, k: start_hypercorn(h, p, "asyncio", c, k),
    "hypercorn-uvloop": lambda h, p, c, k: start_hypercorn(h, p, "uvloop", c, k),
    "aiohttp-asyncio": lambda h, p, c, k: start_aiohttp(h, p, "asyncio", c, k),
    "aiohttp-uvloop": lambda h, p, c, k: start_aiohttp(h, p, "uvloop", c, k),
    "granian-asgi": lambda h, p, c, k: start_granian(h, p, "asgi", c, k),
    "granian-rsgi": lambda h, p, c, k: start_granian(h, p, "rsgi", c, k),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(CANDIDATES))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    if not (a.host.startswith("127.") or a.host == "::1"):
        raise SystemExit("server_apps: loopback only")
    CANDIDATES[a.name](a.host, a.port, a.tls_cert, a.tls_key)
    print(f"kmscli: {a.name} stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
