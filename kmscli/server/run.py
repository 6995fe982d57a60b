"""Run the ASGI application on uvicorn: bind, say where, serve until SIGTERM or Ctrl-C.

uvicorn (with httptools) was chosen by measurement (bench/SERVER_CHOICE.md).
The socket is bound here, before uvicorn starts, so ``--port 0`` can report the
port the kernel picked; the "serving on" line is written once the server
accepts connections. On SIGTERM or SIGINT uvicorn stops accepting, lets the
requests in flight finish (their records go to disk first), then the
application's shutdown waits for the last audit sync.

With ``--workers N`` the process forks N workers after binding (so they share
the socket and inherit the unlocked vault key, which never crosses a pipe);
each runs its own event loop, and the parent announces, supervises and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
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
#: How much longer than GRACEFUL_STOP_S a worker may take to stop before it is killed.
WORKER_STOP_MARGIN_S = 20


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int, *, share: bool = False) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: the kernel picks); exit 2 with the reason when it cannot be.

    ``share``: other sockets of this user may listen on the same address
    (SO_REUSEPORT), so that each worker has its own and the kernel spreads
    connections over them; with one shared socket the first worker to wake
    takes nearly every connection (measured: 16 of 17).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise errors.ValidationException(f"cannot use --host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


@dataclass(frozen=True)
class Outcome:
    """How serving ended: the stop signal (SIGTERM, SIGINT) if any, and whether the
    vault could no longer be unlocked with what the server held (passwd)."""

    signal: int | None
    unlock_lost: bool = False
    #: A worker process ended by itself other than by losing the unlock: its exit status.
    worker_failed: int | None = None


def serve(make_app: Callable[[], Any], sock: socket.socket, *, workers: int = 1, tls_cert: str | None = None,
          tls_key: str | None = None, on_ready: Callable[[], None] | None = None,
          alive: Callable[[], bool] = lambda: True) -> Outcome:
    """Serve until stopped, in ``workers`` processes sharing the socket.

    ``make_app()`` builds the application in the process that runs it (after
    the fork, so no thread crosses one); ``alive()`` turning false stops the
    server as SIGTERM does. With several workers the parent only starts them,
    says "serving" once all accept, passes a stop on to them and waits: every
    worker then finishes its requests in flight, records on disk, as one would.
    """
    if workers <= 1:
        return _serve_one(make_app, sock, tls_cert=tls_cert, tls_key=tls_key, on_ready=on_ready, alive=alive)
    return _serve_forked(make_app, sock, workers, tls_cert=tls_cert, tls_key=tls_key, on_ready=on_ready,
                         alive=alive)


def _serve_one(make_app: Callable[[], Any], sock: socket.socket, *, tls_cert: str | None, tls_key: str | None,
               on_ready: Callable[[], None] | None, alive: Callable[[], bool]) -> Outcome:
    """Serve in this process until stopped.

    uvicorn re-raises the stop signal once it has shut down cleanly; the
    handlers installed here only note it, so the caller can say so and exit
    with the usual status instead of dying by the signal mid-cleanup.
    """
    import signal

    import uvicorn

    stopped_by: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped_by.append(signum))

    app = make_app()
    # What start-up made (modules, the app) lives as long as the server: out of
    # the collector's way, so a full collection scans only what requests make,
    # not a hundred thousand objects between two answers (a latency spike).
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", server_header=False, date_header=True,
        ssl_certfile=tls_cert, ssl_keyfile=tls_key, timeout_graceful_shutdown=GRACEFUL_STOP_S,
        timeout_keep_alive=KEEP_ALIVE_S, http="httptools", loop="asyncio",
        # The client's address is the connection's peer, never a header: uvicorn would otherwise
        # believe X-Forwarded-For from loopback, where every local caller is, and let any of them
        # write another address into the audit record.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started and on_ready is not None:
            on_ready()
        while not task.done():
            if app.stop_requested or not alive():  # the session it serves through ended: stop as on SIGTERM
                server.should_exit = True
                break
            await asyncio.sleep(STOP_POLL_S)
        await task

    asyncio.run(main())
    if not server.started:
        sys.exit(errors.EXIT_USAGE)
    return Outcome(stopped_by[0] if stopped_by else None, unlock_lost=app.stop_requested)


def _serve_forked(make_app: Callable[[], Any], sock: socket.socket, workers: int, *, tls_cert: str | None,
                  tls_key: str | None, on_ready: Callable[[], None] | None, alive: Callable[[], bool]) -> Outcome:
    import signal
    import time

    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    stopped_by: list[int] = []
    # Noted from before the first fork: a stop that arrives while workers start is not lost.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
    pids: list[int] = []
    for number in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: serve, then leave without running the parent's cleanup
            os.close(ready_r)
            code = 70  # EX_SOFTWARE: it died of something unexpected

            def accepting() -> None:
                os.write(ready_w, b".")

            try:
                # The first worker serves the socket bound before the fork; the
                # others listen on their own at the same address, when the
                # system lets several do so (bind(share=True)).
                own = sock if number == 0 else _sibling(sock)
                outcome = _serve_one(make_app, own, tls_cert=tls_cert, tls_key=tls_key, on_ready=accepting,
                                     alive=lambda: alive() and os.getppid() == parent)
                code = errors.EXIT_UNLOCK if outcome.unlock_lost else 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # noqa: BLE001 - said on stderr, then the worker's exit status tells
                sys.stderr.write(f"kmscli: serve: a worker failed: {type(e).__name__}: {e}\n")
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    os.close(ready_w)
    codes = _supervise(pids, ready_r, workers, stopped_by, on_ready, time.monotonic)
    os.close(ready_r)
    if codes and codes[0] == errors.EXIT_USAGE and not stopped_by:
        sys.exit(errors.EXIT_USAGE)  # no worker could start (TLS files unreadable, say): as one process would
    failed = next((c for c in codes if c not in (0, errors.EXIT_UNLOCK)), None)
    return Outcome(stopped_by[0] if stopped_by else None, unlock_lost=errors.EXIT_UNLOCK in codes,
                   worker_failed=failed)


def _sibling(sock: socket.socket) -> socket.socket:
    """Another listening socket at ``sock``'s address (SO_REUSEPORT), or ``sock`` itself where there is none."""
    if not hasattr(socket, "SO_REUSEPORT") or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        return sock
    own = socket.socket(sock.family, sock.type, sock.proto)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    own.bind(sock.getsockname())
    own.listen(1024)
    own.setblocking(False)
    sock.close()  # this worker accepts on its own socket only
    return own


def _supervise(pids: list[int], ready_r: int, workers: int, stopped_by: list[int],
               on_ready: Callable[[], None] | None, clock: Callable[[], float]) -> list[int]:
    """Announce once every worker accepts; when one ends or a stop comes, stop all; their exit codes."""
    import select
    import signal
    import time

    running = set(pids)
    codes: list[int] = []
    ready = 0
    stopping_since: float | None = None

    def stop_all() -> float:
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        return clock()

    while running:
        if ready < workers:
            readable, _, _ = select.select([ready_r], [], [], 0.05)
            if readable:
                got = os.read(ready_r, workers)
                ready += len(got)
                if ready >= workers and on_ready is not None and stopping_since is None:
                    on_ready()
        else:
            time.sleep(0.05)
        if stopped_by and stopping_since is None:
            stopping_since = stop_all()
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.discard(pid)
            codes.append(os.waitstatus_to_exitcode(status))
            if stopping_since is None:  # one worker ended by itself: the server ends as a whole
                stopping_since = stop_all()
        if stopping_since is not None and clock() - stopping_since > GRACEFUL_STOP_S + WORKER_STOP_MARGIN_S:
            for pid in running:  # bounded: a worker that ignores the stop is killed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return codes
