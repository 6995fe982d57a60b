"""The thin client: with KMSCLI_SESSION set, ``kmscli`` hands the whole call to the session's agent.

Starting the interpreter is most of a small call's cost, so this module loads
only C modules (``_socket``, ``_signal``, and ``time``, built into the
interpreter) besides ``os`` and ``sys``, which the interpreter has loaded
anyway: not the ``socket`` and ``signal`` wrappers
(enum), not json, and never Typer, Rich or cryptography, which the agent
holds warm. The client sends argv, a filtered environment, its stdin,
stdout, stderr and working directory, then waits for the exit code.
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys
import time  # built into the interpreter: no import cost

from . import protocol as P

#: The environment a command may depend on; the rest (cloud credentials, tokens) never reaches the agent.
ENV_NAMES = frozenset((b"HOME", b"USER", b"LOGNAME", b"PATH", b"TERM", b"COLORTERM", b"NO_COLOR", b"FORCE_COLOR",
                       b"COLUMNS", b"LINES", b"LANG", b"LANGUAGE", b"TZ", b"TMPDIR", b"SHELL"))
ENV_PREFIXES = (b"KMSCLI_", b"LC_", b"XDG_", b"TYPER_", b"_TYPER_")
#: The session's secret travels once, in its own field. The worker never unlocks with a
#: passphrase, so the passphrase itself stays in this process.
#: KMSCLI_ENDPOINT: a call with an endpoint runs in the caller's process (kmscli.cli.main), never in the agent,
#: which only ever serves the vault (the vault side of a cross-KMS reencrypt included).
ENV_EXCLUDED = frozenset((b"KMSCLI_SESSION", b"KMSCLI_PASSPHRASE", b"KMSCLI_ENDPOINT"))
SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)
SECRET_HEX = 2 * P.SECRET_BYTES
#: How long to wait for room in a busy agent's queue (its listen backlog) before giving up.
QUEUE_WAIT_S = 30.0

ENDED = ("the session has ended (it expired, was locked, or its agent stopped); "
         "run 'eval \"$(kmscli unlock)\"' again, or unset KMSCLI_SESSION to use a passphrase")


class Refused(Exception):
    """A session that cannot be used: one error line and its exit code, never a passphrase fallback."""

    def __init__(self, message: str, name: str = "InvalidSessionException", code: int = 5) -> None:
        super().__init__(message)
        self.name, self.code = name, code


class Ended(Refused):
    def __init__(self) -> None:
        super().__init__(ENDED)


def run(token: str, args: list[str], command: str | None) -> int:
    """Run ``kmscli ARGS`` in the agent named by ``token``; return its exit code."""
    try:
        sock = request(token, args, (0, 1, 2))
    except Ended as e:
        if command == "lock":
            sys.stderr.write("kmscli: the session had already ended\n")
            return _print_unset(args)
        return fail(e)
    except Refused as e:
        return fail(e)
    return wait(sock)


def call(token: str, args: list[str], stdin: int, stdout: int) -> int:
    """Run ``kmscli ARGS`` in the agent named by ``token`` on ``stdin`` and ``stdout``; return its exit code.

    For a command that runs in this process and hands its vault operations to
    the agent, one call each (``kmscli edit``): stderr and the working
    directory are ours, and an error is the agent's one line on our stderr.
    Signals stay with the caller: an interrupt raised while waiting closes the
    socket, and the agent stops the worker on that hang-up, as for ``run``.
    """
    try:
        sock = request(token, args, (stdin, stdout, 2))
    except Refused as e:
        return fail(e)
    try:
        reply = read_reply(sock)
    finally:
        sock.close()
    if reply is None:
        return fail(Refused("the session agent stopped while running this command; run it again",
                            "KMSInternalException", 1))
    return outcome(reply)


def request(token: str, args: list[str], std: tuple[int, int, int]) -> _socket.socket:
    """Connect to the agent named by ``token`` and send it ``kmscli ARGS`` on the descriptors ``std``."""
    path, secret = parse(token)
    sock = connect(path)
    try:
        send(sock, secret, args, std)
    except OSError:
        sock.close()
        raise Ended() from None  # the agent closed its socket between our connect and send
    return sock


def _print_unset(args: list[str]) -> int:
    """``lock`` of an ended session: still the line that unsets the variable, as the agent's lock prints it."""
    shell = "sh"
    for i, a in enumerate(args):
        if a == "--shell" and i + 1 < len(args):
            shell = args[i + 1]
        elif a.startswith("--shell="):
            shell = a[len("--shell="):]
    try:  # noqa: SIM105 - contextlib is an import the thin client does without
        os.write(1, (P.unset_line(shell) + "\n").encode())  # a few bytes: one write, under PIPE_BUF
    except OSError:
        pass  # nobody reads it (a closed pipe): the session is over all the same
    return 0


def parse(token: str) -> tuple[str, bytes]:
    path, sep, secret = token[len(P.SESSION_PREFIX):].rpartition(":")
    if (not token.startswith(P.SESSION_PREFIX) or not sep or not path.startswith("/")
            or len(secret) != SECRET_HEX or secret.strip("0123456789abcdef")):
        raise Refused("KMSCLI_SESSION is not a session made by 'kmscli unlock'; "
                      "run 'eval \"$(kmscli unlock)\"', or unset it to use a passphrase")
    return path, secret.encode()


def connect(path: str) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    dfd = -1
    try:
        address = path
        if len(os.fsencode(path)) >= P.MAX_SOCKET_PATH:
            # sun_path is 108 bytes; reach a longer path through its folder's descriptor.
            folder, _, name = path.rpartition("/")
            dfd = os.open(folder or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            address = f"/proc/self/fd/{dfd}/{name}"
        _connect_queued(sock, address, path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        raise Ended() from None
    except Refused:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        raise Refused(f"cannot reach the session agent at {path}: {e.strerror}") from None
    finally:
        if dfd >= 0:
            os.close(dfd)
    # Only an agent running as this user may receive our descriptors and the secret.
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    if int.from_bytes(cred[4:8], sys.byteorder) != os.getuid():
        sock.close()
        raise Refused(f"the session socket {path} belongs to another user; refusing to use it")
    return sock


def _connect_queued(sock: _socket.socket, address: str, path: str) -> None:
    """Connect, waiting (bounded) while the agent's queue is full.

    The agent runs at most a few workers and leaves further connections in its
    listen queue; a blocking connect to a full queue would wait forever, so the
    connect is non-blocking (EAGAIN when full: a Unix socket's connect never
    is in progress) and retried until QUEUE_WAIT_S, then refused with a reason.
    """
    sock.setblocking(False)
    deadline = time.monotonic() + QUEUE_WAIT_S
    pause = 0.001
    while True:
        try:
            sock.connect(address)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Refused(f"the session agent at {path} is busy: its queue of waiting requests stayed full "
                              f"for {QUEUE_WAIT_S:.0f} s; try again later, or unset KMSCLI_SESSION to use a "
                              "passphrase", "SessionAgentException") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    sock.setblocking(True)


def send(sock: _socket.socket, secret: bytes, args: list[str], std: tuple[int, int, int] = (0, 1, 2)) -> None:
    fields = [P.VERSION, P.OP_RUN, secret, stdio(), str(len(args)).encode(), *map(os.fsencode, args), *environment()]
    data = P.frame(P.REQUEST_MAGIC, fields)
    if len(data) > P.HEADER_SIZE + P.MAX_REQUEST_BYTES:
        raise Refused("the arguments and KMSCLI_* environment are larger than a session accepts (1 MiB)",
                      "ValidationException", 2)
    fds, opened = descriptors(std)
    try:
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        if sent < len(data):
            sock.sendall(data[sent:])
    finally:
        for fd in opened:
            os.close(fd)


def descriptors(std: tuple[int, int, int]) -> tuple[list[int], list[int]]:
    """stdin, stdout, stderr (``std``; a closed one as /dev/null) and the working directory."""
    fds, opened = [], []
    for fd in std:
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            opened.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
            fds.append(opened[-1])
    try:
        opened.append(os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as e:
        for fd in opened:
            os.close(fd)
        raise Refused(f"cannot open the working directory: {e.strerror}", "ValidationException", 2) from None
    fds.append(opened[-1])
    return fds, opened


def stdio() -> bytes:
    """Encodings and error handlers of sys.std*, so the worker's text streams behave as ours would."""
    parts = []
    for stream, default in ((sys.stdin, "strict"), (sys.stdout, "strict"), (sys.stderr, "backslashreplace")):
        parts += [getattr(stream, "encoding", None) or "utf-8", getattr(stream, "errors", None) or default]
    unbuffered = type(getattr(sys.stdout, "buffer", None)).__name__ == "FileIO"
    parts.append("1" if unbuffered else "0")
    return ":".join(parts).encode()


def environment() -> list[bytes]:
    return [k + b"=" + v for k, v in os.environb.items()
            if (k in ENV_NAMES or k.startswith(ENV_PREFIXES)) and k not in ENV_EXCLUDED]


def wait(sock: _socket.socket) -> int:
    """Wait for the exit code; on SIGINT, SIGTERM or SIGHUP have the worker stopped first."""
    got: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if got:
            os._exit(128 + signum)  # a second signal: stop waiting for the worker
        got.append(signum)
        # The agent sees the hang-up and interrupts our worker as Ctrl-C
        # would interrupt kmscli in this process; its answer still comes.
        try:  # noqa: SIM105 - contextlib would cost the thin client an import
            sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    for sig in SIGNALS:
        _signal.signal(sig, on_signal)
    reply = read_reply(sock)
    sock.close()
    if got and got[0] != _signal.SIGINT:
        _signal.signal(got[0], _signal.SIG_DFL)
        os.kill(os.getpid(), got[0])  # end as kmscli would have ended on this signal
    if reply is None:
        if got:
            return 130
        return fail(Refused("the session agent stopped while running this command; run it again",
                            "KMSInternalException", 1))
    return outcome(reply)


def read_reply(sock: _socket.socket) -> list[bytes] | None:
    try:
        header = recv_exact(sock, P.HEADER_SIZE)
        if header is None:
            return None
        payload = recv_exact(sock, P.payload_size(P.REPLY_MAGIC, header, P.MAX_REPLY_BYTES))
    except (OSError, P.ProtocolError):
        return None
    return None if payload is None else payload.split(b"\0")


def recv_exact(sock: _socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def outcome(reply: list[bytes]) -> int:
    if len(reply) == 2 and reply[0] == P.REPLY_EXIT and reply[1].isdigit():
        return int(reply[1])
    if len(reply) == 4 and reply[0] == P.REPLY_ERROR and reply[1].isdigit():
        name, message = reply[2].decode(errors="replace"), reply[3].decode(errors="replace")
        return fail(Refused(message, name, int(reply[1])))
    return fail(Refused("the session agent sent an answer this kmscli does not understand",
                        "KMSInternalException", 1))


def _printable(text: str) -> str:
    """Controls and invisible format characters shown escaped, as output.printable does (no import here)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                   for c in text)


def fail(e: Refused) -> int:
    """One line, as kmscli.cli.output.error_line writes it."""
    sys.stderr.write(f"kmscli: {e.name}: {_printable(' '.join(str(e).split()))}\n")
    sys.stderr.flush()
    return e.code
