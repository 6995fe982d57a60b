"""Run the ASGI application on uvicorn: bind, say where, serve until SIGTERM or Ctrl-C.

uvicorn (with httptools) was chosen by measurement (bench/SERVER_CHOICE.md).
The socket is bound here, before uvicorn starts, so ``--port 0`` can report the
port the kernel picked; the "serving on" line is written once the server
accepts connections. On SIGTERM or SIGINT uvicorn stops accepting, lets the
requests in flight finish (their records go to disk first), then the
application's shutdown waits for its worker threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Callable
from typing import Any

from .. import errors

#: How long a stop waits for connections to close. Requests in flight take
#: milliseconds; what can last is an idle TLS connection, whose close waits for
#: the client's close_notify (asyncio's 30 s by default): cut that to this. A
#: request still running then finishes in its thread, record included (the
#: application's shutdown waits for them); only its answer is lost.
GRACEFUL_STOP_S = 10
#: How often a server running through a session checks that the session still lasts.
STOP_POLL_S = 0.25
#: A connection idle this long between requests is closed (clients reconnect).
KEEP_ALIVE_S = 15


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: the kernel picks); exit 2 with the reason when it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise errors.ValidationException(f"cannot use --host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise errors.ValidationException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def serve(app: Any, sock: socket.socket, *, tls_cert: str | None = None, tls_key: str | None = None,
          on_ready: Callable[[], None] | None = None, should_stop: Callable[[], bool] | None = None) -> int | None:
    """Serve until stopped; the signal that stopped it (SIGTERM, SIGINT), or None.

    uvicorn re-raises the stop signal once it has shut down cleanly; the
    handlers installed here only note it, so the caller can say so and exit
    with the usual status instead of dying by the signal mid-cleanup.
    """
    import signal

    import uvicorn

    stopped_by: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped_by.append(signum))

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", server_header=False, date_header=True,
        ssl_certfile=tls_cert, ssl_keyfile=tls_key, timeout_graceful_shutdown=GRACEFUL_STOP_S,
        timeout_keep_alive=KEEP_ALIVE_S, http="httptools", loop="asyncio",
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started and on_ready is not None:
            on_ready()
        while should_stop is not None and not task.done():
            if should_stop():  # the session it serves through ended: stop as on SIGTERM
                server.should_exit = True
                break
            await asyncio.sleep(STOP_POLL_S)
        await task

    asyncio.run(main())
    if not server.started:
        sys.exit(errors.EXIT_USAGE)
    return stopped_by[0] if stopped_by else None
