"""The agent process: one vault key in memory, one socket, a forked worker per request.

``kmscli unlock`` starts ``python -m kmscli.agent`` in a new session (no
terminal), writes the configuration (vault key, secret, socket, TTLs) to its
stdin and waits for ``ready``. The agent imports the whole CLI once, so that
every forked worker starts warm, then serves until the session ends: ``lock``,
``passwd``, its absolute TTL, its idle TTL, or a signal.

The parent never reads a request: a worker does, so a malformed or hostile
request can at worst crash that worker. The parent only accepts, checks the
peer's uid, forks, watches for the client hanging up (to stop its worker) and
reaps. At most MAX_WORKERS run at once; further connections wait, unforked,
in the listen queue.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import worker as W

#: From SIGINT (the worker cleans up, as on Ctrl-C) to SIGKILL for a worker whose client is gone.
#: Cleaning up (removing a temporary output, recording the interrupted call)
#: takes milliseconds, but a loaded machine (two test suites on two cores)
#: stretched it past 2 s, and a killed worker leaves its temporary file for
#: the next writer to reap. A client waits this long at most; a second
#: Ctrl-C stops waiting at once.
GRACE_S = 10.0
#: The TTL clock (CLOCK_BOOTTIME) runs on while the machine sleeps, epoll's timer does not:
#: wake at least this often so a suspended laptop's session ends on time.
POLL_MAX_S = 5.0
#: Workers running at once. Each is a fork of a 40 MB process: a flood of
#: connections (any process of the user can connect, secret or not) must not
#: become hundreds of processes and gigabytes. 8 keeps two cores busy with
#: room for clients that wait on their pipes.
MAX_WORKERS = 8
#: Connections waiting for a worker, queued by the kernel (nothing is forked for
#: them); beyond it a client's connect fails with EAGAIN and the client retries
#: for a while, then says the agent is busy (client.QUEUE_WAIT_S).
LISTEN_BACKLOG = 64
#: The signals that end the session in the agent and interrupt the command in a worker.
AGENT_SIGNALS = frozenset((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
MAX_CONFIG_BYTES = 64 * 1024
#: Modules the CLI imports lazily; loading them before any fork makes every worker warm.
PRELOAD = (
    "kmscli.cli.main", "kmscli.cli.app", "kmscli.cli.fileio", "kmscli.cli.output", "kmscli.cli.passphrase",
    "kmscli.service", "kmscli.audit", "kmscli.policy", "kmscli.ids", "kmscli.model",
    "kmscli.crypto.primitives", "kmscli.crypto.stream", "kmscli.crypto.armor", "kmscli.vault.format",
    "kmscli.vault.store", "kmscli.vault.state", "kmscli.vault.records", "sqlite3", "kmscli.agent.worker",
    "kmscli.agent.session", "filelock", "pwd", "hmac", "io",
    "cryptography.hazmat.primitives.ciphers.aead", "typer._click.decorators", "typer._click._textwrap",
    "rich.console", "rich.table",
    # Asymmetric and HMAC keys (sign, verify, mac, pubkey, ...): without these a worker imported them on every
    # call, 25-40 ms more than an encrypt (bench/SIGN.md); loading them costs an unlock ~18 ms once.
    "kmscli.crypto.asymmetric", "kmscli.service.asymmetric_ops", "kmscli.service.grants", "kmscli.service.grant_rules",
    "kmscli.aws_model",
    "kmscli.cli.sign_cmds", "kmscli.cli.grants_cmds",
    # Every decrypt sniffs its input for an AWS Encryption SDK message (kmscli.envelope); the codec itself is
    # loaded for such messages only, or with --format esdk.
    "kmscli.envelope", "kmscli.crypto.esdk",
    "cryptography.hazmat.primitives.serialization", "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.hmac", "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.rsa", "cryptography.hazmat.primitives.asymmetric.padding",
    "cryptography.hazmat.primitives.asymmetric.utils", "cryptography.hazmat.primitives.asymmetric.mldsa",
    "cryptography.hazmat.primitives.asymmetric.mlkem", "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.backends.openssl",
)


def now() -> float:
    """Seconds on CLOCK_BOOTTIME, which counts time asleep: a TTL is wall time, not CPU-awake time."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Shared:
    """What the agent and its workers share: one anonymous MAP_SHARED page.

    A worker that ends the session (``lock``) must stop the next request at
    once, before the parent has even reaped it; the parent must see the
    requests' activity for the idle TTL. A single byte and a double need no lock.
    """

    _LAYOUT = struct.Struct("=Bxxxxxxxd")  # ended, last activity (CLOCK_BOOTTIME)

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)
        self.touch()

    def end(self) -> None:
        self._page[0] = 1

    @property
    def ended(self) -> bool:
        return self._page[0] == 1

    def touch(self) -> None:
        struct.pack_into("=d", self._page, 8, now())

    @property
    def last_activity(self) -> float:
        return float(self._LAYOUT.unpack_from(self._page)[1])


@dataclass
class Config:
    """The session as ``unlock`` made it (read from stdin, never from argv)."""

    vault: str
    key: bytes
    header: bytes
    secret: bytes
    socket: Path
    ttl: int
    idle: int

    @classmethod
    def read(cls, fd: int) -> Config:
        data = b""
        while len(data) <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        raw = json.loads(data)
        return cls(vault=raw["vault"], key=bytes.fromhex(raw["key"]), header=bytes.fromhex(raw["header"]),
                   secret=raw["secret"].encode(), socket=Path(raw["socket"]), ttl=int(raw["ttl"]),
                   idle=int(raw["idle"]))


@dataclass
class Served:
    """The session a worker serves: the config, the shared page, the socket to remove on ``lock``."""

    config: Config
    shared: Shared
    deadline: float
    socket_ino: int
    #: The agent's user and host: a peer must run as this user, so its name is known in advance.
    user: str = ""
    host: str = ""

    def end(self) -> None:
        """End the session now: no new request passes, the socket disappears."""
        self.shared.end()
        remove_socket(self.config.socket, self.socket_ino)

    def refusal(self) -> str | None:
        """Why a request arriving now is refused, or None."""
        if self.shared.ended:
            return "the session was locked"
        if now() >= self.deadline:
            return "the session expired"
        return None


def remove_socket(path: Path, ino: int) -> None:
    """Unlink our socket, but never a newer agent's that took the name."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == ino:
            os.unlink(path)


@dataclass
class Worker:
    """A forked process serving one connection; the parent keeps the connection to watch for hang-ups."""

    pid: int
    pidfd: int
    conn: socket.socket
    kill_at: float | None = None
    watching: bool = True


@dataclass
class Spare:
    """A worker forked and warmed before any request, waiting for a connection on ``ctl``.

    Forking and the first touch of the warm pages (copy-on-write) cost a few
    milliseconds; a spare pays them while nobody waits, so a shell loop's
    next call finds a worker ready.
    """

    pid: int
    pidfd: int
    ctl: socket.socket


@dataclass
class Agent:
    served: Served
    listener: socket.socket | None
    epoll: Any = field(default_factory=select.epoll)
    workers: dict[int, Worker] = field(default_factory=dict)  # by pidfd
    by_conn: dict[int, Worker] = field(default_factory=dict)  # by connection fd
    spare: Spare | None = None
    wakeup: tuple[int, int] = (-1, -1)
    accepting: bool = True  # the listener is watched for connections (fewer than MAX_WORKERS run)

    def serve(self) -> None:
        assert self.listener is not None
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.epoll.register(self.wakeup[0], select.EPOLLIN)
        self._new_spare()
        while self.listener is not None or self.workers or self.spare is not None:
            if self.listener is not None and self._should_end():
                self._stop_listening()
            self._handle(self.epoll.poll(self._timeout()))
            self._escalate()

    # -- the session's end ---------------------------------------------------
    def _should_end(self) -> bool:
        t, cfg = now(), self.served.config
        idle_over = cfg.idle and not self.workers and t - self.served.shared.last_activity >= cfg.idle
        return self.served.shared.ended or t >= self.served.deadline or bool(idle_over)

    def _stop_listening(self) -> None:
        """Refuse new requests at once; requests already running finish (docs/session.md)."""
        assert self.listener is not None
        self.served.end()
        self.epoll.unregister(self.listener.fileno())
        self.listener.close()
        self.listener = None
        if self.spare is not None:
            self.spare.ctl.close()  # the spare sees EOF and exits; its pidfd reports it

    def _timeout(self) -> float:
        t, cfg = now(), self.served.config
        waits = [POLL_MAX_S]
        if self.listener is not None:
            waits.append(self.served.deadline - t)
            if cfg.idle and not self.workers:
                waits.append(self.served.shared.last_activity + cfg.idle - t)
        waits += [w.kill_at - t for w in self.workers.values() if w.kill_at is not None]
        return max(0.0, min(waits)) + 0.001

    # -- events --------------------------------------------------------------
    def _handle(self, events: list[tuple[int, int]]) -> None:
        """Reap and notice hang-ups first, accept last: an fd closed by a reap
        in this batch must not be reused by a new connection until its stale
        events are gone, or a new client's worker could be stopped by mistake."""
        listening = self.listener is not None and any(fd == self.listener.fileno() for fd, _ in events)
        for fd, _ in events:
            self._dispatch(fd)
        if listening:
            self._accept()
        if self.spare is None and self.listener is not None and not self.workers:
            self._new_spare()  # while nobody waits, not while a worker needs the CPU
        self._pace()

    def _pace(self) -> None:
        """Watch the listener only while a worker may start; otherwise connections wait in its queue.

        Level-triggered epoll would report a waiting connection on every
        poll, so at the cap the listener's events are switched off, not ignored.
        """
        if self.listener is None:
            return
        accepting = len(self.workers) < MAX_WORKERS
        if accepting != self.accepting:
            self.epoll.modify(self.listener.fileno(), select.EPOLLIN if accepting else 0)
            self.accepting = accepting

    def _dispatch(self, fd: int) -> None:
        if fd == self.wakeup[0]:
            with contextlib.suppress(OSError):
                os.read(fd, 512)  # a signal arrived; its handler marked the session ended
        elif fd in self.workers:
            self._reap(self.workers[fd])
        elif fd in self.by_conn:
            self._client_gone(self.by_conn[fd])
        elif self.spare is not None and fd == self.spare.pidfd:
            self._reap_spare(self.spare)

    def _accept(self) -> None:
        assert self.listener is not None
        while len(self.workers) < MAX_WORKERS:  # a handed-over spare counts: it is a worker then
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: the client sees a reset, the agent lives on
            conn.setblocking(True)
            peer = peer_of(conn)
            # The folder is 0700 and the socket 0600; checking the kernel's
            # record of the peer's uid also stops root-owned or leaked descriptors.
            if peer is None or peer[1] != os.getuid():
                conn.close()
                continue
            if not self._hand_to_spare(conn, peer):
                self._spawn(conn, peer)

    # -- workers -------------------------------------------------------------
    def _spawn(self, conn: socket.socket, peer: tuple[int, int, int]) -> None:
        pid = _fork()
        if pid is None:
            conn.close()
            return
        if pid == 0:
            self._become_worker(conn, peer)
        self._track(Worker(pid=pid, pidfd=os.pidfd_open(pid), conn=conn), new_pidfd=True)

    def _track(self, worker: Worker, new_pidfd: bool) -> None:
        self.workers[worker.pidfd] = worker
        self.by_conn[worker.conn.fileno()] = worker
        if new_pidfd:
            self.epoll.register(worker.pidfd, select.EPOLLIN)
        # Only hang-ups: the worker owns the connection's data, the parent never reads it.
        self.epoll.register(worker.conn.fileno(), select.EPOLLRDHUP)

    def _become_worker(self, conn: socket.socket, peer: tuple[int, int, int]) -> None:
        status = W.REJECTED
        try:
            self._child_setup()
            status = W.serve(conn, peer, self.served)
        except BaseException:  # noqa: S110 - a worker never returns into the agent's loop
            pass
        finally:
            os._exit(status)

    def _new_spare(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = _fork()
        if pid is None:
            parent_end.close()
            child_end.close()
            return
        if pid == 0:
            parent_end.close()
            self._become_spare(child_end)
        child_end.close()
        self.spare = Spare(pid=pid, pidfd=os.pidfd_open(pid), ctl=parent_end)
        self.epoll.register(self.spare.pidfd, select.EPOLLIN)

    def _become_spare(self, ctl: socket.socket) -> None:
        status = W.REJECTED
        try:
            self._child_setup()
            _warm_up()  # copy the pages a request writes to now, before a client waits
            handed = _receive_connection(ctl)
            if handed is not None:
                status = W.serve(*handed, self.served)
        except BaseException:  # noqa: S110 - a spare never returns into the agent's loop
            pass
        finally:
            os._exit(status)

    def _hand_to_spare(self, conn: socket.socket, peer: tuple[int, int, int]) -> bool:
        spare, self.spare = self.spare, None
        if spare is None:
            return False
        try:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", conn.fileno()))]
            spare.ctl.sendmsg([struct.pack("3i", *peer)], rights)
        except OSError:
            self._reap_spare(spare, kill=True)
            return False
        spare.ctl.close()
        self._track(Worker(pid=spare.pid, pidfd=spare.pidfd, conn=conn), new_pidfd=False)
        return True

    def _reap_spare(self, spare: Spare, kill: bool = False) -> None:
        if kill:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(spare.pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
        self.epoll.unregister(spare.pidfd)
        os.close(spare.pidfd)
        with contextlib.suppress(OSError):
            spare.ctl.close()
        if self.spare is spare:
            self.spare = None

    def _child_setup(self) -> None:
        """A worker's own signal handling: Ctrl-C (forwarded as SIGINT) interrupts the command."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self._close_inherited()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, AGENT_SIGNALS)

    def _close_inherited(self) -> None:
        """Drop the parent's descriptors: a worker holding another client's
        connection would keep that client waiting after its own worker died."""
        if self.listener is not None:
            self.listener.close()
        self.epoll.close()
        for fd in self.wakeup:
            os.close(fd)
        for w in self.workers.values():
            w.conn.close()
            os.close(w.pidfd)
        if self.spare is not None:
            self.spare.ctl.close()
            os.close(self.spare.pidfd)

    def _client_gone(self, worker: Worker) -> None:
        """The client hung up (Ctrl-C, killed): stop its worker, gently first."""
        self.epoll.unregister(worker.conn.fileno())
        worker.watching = False
        if worker.kill_at is None:
            _signal(worker, signal.SIGINT)
            worker.kill_at = now() + GRACE_S

    def _escalate(self) -> None:
        t = now()
        for w in self.workers.values():
            if w.kill_at is not None and t >= w.kill_at:
                _signal(w, signal.SIGKILL)
                w.kill_at = float("inf")

    def _reap(self, worker: Worker) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker.pid, 0)
        self.epoll.unregister(worker.pidfd)
        os.close(worker.pidfd)
        del self.workers[worker.pidfd]
        del self.by_conn[worker.conn.fileno()]
        if worker.watching:
            self.epoll.unregister(worker.conn.fileno())
        worker.conn.close()


def _receive_connection(ctl: socket.socket) -> tuple[socket.socket, tuple[int, int, int]] | None:
    """The connection and peer the agent hands this spare; None when the agent closes ``ctl``."""
    peer_size = struct.calcsize("3i")
    data, ancillary, _flags, _ = ctl.recvmsg(peer_size, socket.CMSG_SPACE(struct.calcsize("i")))
    fds = W.descriptors(ancillary)
    if len(data) != peer_size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    pid, uid, gid = struct.unpack("3i", data)
    return socket.socket(fileno=fds[0]), (pid, uid, gid)


def _fork() -> int | None:
    """fork() with the agent's signals held until the child has its own handlers.

    A SIGINT meant for a new worker (its client hung up at once) must not run
    the agent's handler, inherited for a moment, which ends the whole session.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, AGENT_SIGNALS)
    try:
        pid = os.fork()
    except OSError:
        pid = None
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, AGENT_SIGNALS)
    return pid


def _signal(worker: Worker, sig: int) -> None:
    # Through the pidfd: a recycled pid can never receive a signal meant for our worker.
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(worker.pidfd, sig)


def peer_of(conn: socket.socket) -> tuple[int, int, int] | None:
    try:
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", cred)
    return pid, uid, gid


def bind(path: Path) -> socket.socket:
    from .session import short_address

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with short_address(path) as address:
        sock.bind(address)  # umask 077 (set in main) makes it 0600 from its first moment
    os.chmod(path, 0o600)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def harden() -> None:
    """No core dumps and no ptrace or /proc/<pid>/mem reads by the user's other processes."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
        libc.prctl(15, b"kmscli-agent", 0, 0, 0)  # PR_SET_NAME, for ps and top
    with contextlib.suppress(Exception):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from ..cli import app

    app.click_command()
    _warm_up()
    # Keep the warm objects out of the collector's way, so a worker's first
    # collection does not touch (and copy) every page it shares with the agent.
    gc.freeze()


def _warm_up() -> None:
    """Run what every request runs once, so each worker finds its caches filled (about 1.5 ms each)."""
    from .. import policy
    from ..cli.main import run_local
    from ..crypto import primitives

    policy.parse(policy.default_policy("0" * 12))
    primitives.open_(bytes(32), bytes(12), primitives.seal(bytes(32), bytes(12), b"", b""), b"")
    devnull = os.open(os.devnull, os.O_RDWR)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        for args in (["--help"], ["encrypt", "--help"], ["keys", "list", "--help"]):
            run_local(args)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (devnull, *saved):
            os.close(fd)


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # no passwd entry (containers): the uid stands for the name, as Caller.current does
        return str(os.getuid())


def _on_signal(served: Served) -> Any:
    def handler(signum: int, frame: Any) -> None:
        served.shared.end()

    return handler


def main() -> int:
    os.umask(0o077)
    out = os.fdopen(1, "w", closefd=False)
    try:
        listener, served = _start()
    except Exception as e:  # unlock prints it as the reason the session did not start
        out.write(f"{type(e).__name__}: {e}\n")
        out.flush()
        return 1
    config = served.config
    wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup[1])
    for sig in AGENT_SIGNALS:
        signal.signal(sig, _on_signal(served))
    out.write("ready\n")
    out.flush()
    _detach_stdio()
    agent = Agent(served=served, listener=listener, wakeup=wakeup)
    try:
        agent.serve()
    finally:
        remove_socket(config.socket, served.socket_ino)
    return 0


def _start() -> tuple[socket.socket, Served]:
    config = Config.read(0)
    harden()
    listener = bind(config.socket)
    try:
        served = Served(config=config, shared=Shared(), deadline=now() + config.ttl,
                        socket_ino=os.stat(config.socket).st_ino, user=_user_name(), host=socket.gethostname())
        preload()
    except BaseException:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(config.socket)
        raise
    return listener, served


def _detach_stdio() -> None:
    """Let go of unlock's pipes: ``$(kmscli unlock)`` must see EOF once unlock exits."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the agent


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
