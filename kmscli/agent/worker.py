"""One request in a forked worker: read it, check it, become the caller's kmscli, answer.

The worker is a fork of the warm agent, so the CLI, Typer and cryptography are
already imported. It takes the caller's stdin, stdout, stderr and working
directory (SCM_RIGHTS), the caller's relevant environment and argv, runs the
same ``kmscli`` code a process without a session runs, and sends back the exit
code. Data streams straight between the caller's descriptors and this
process: nothing is copied through the agent or the socket.
"""

from __future__ import annotations

import array
import contextlib
import hmac
import io
import os
import socket
import sys
import time
from typing import Any

from .. import errors
from . import protocol as P

#: A worker's exit status: it served a request, or refused one (or a probe).
SERVED, REJECTED = 0, 3
#: A client must send its whole request this fast; a slow one only ties up its own worker.
REQUEST_TIMEOUT_S = 10.0
#: How long a refused client may go on sending before its worker gives up on it.
DRAIN_S = 1.0
#: Commands a session never runs, by command path, and why: each needs the
#: passphrase itself (SPEC), because what it does would outlive the session.
#: Matched by name, whether or not this version has the command.
NOT_THROUGH_A_SESSION = {
    ("passwd",): "it changes the passphrase and the vault key",
    ("unlock",): "a session cannot start another session with a fresh TTL",
    ("init",): "it makes a new vault, which takes its own passphrase",
    ("audit", "restart"): "it starts a new audit log",
    ("vault", "restore"): "it replaces the vault and its log with a backup's",
}
_FD_SIZE = array.array("i").itemsize


def serve(conn: socket.socket, peer: tuple[int, int, int], served: Any) -> int:
    """Handle the one request on ``conn``; return SERVED or REJECTED. Never raises."""
    fds: list[int] = []
    try:
        fields, fds = read_request(conn)
        op = fields[1]
        if op == P.OP_END_VAULT:
            return _end_vault(conn, fields, served)
        if op == P.OP_RUN:
            return _run(conn, fields, fds, peer, served)
        raise P.ProtocolError("unknown operation")
    except P.ProtocolError as e:
        _reply_error(conn, errors.ValidationException(f"malformed request to the session agent: {e}"))
    except errors.KmsError as e:
        _reply_error(conn, e)
    except (OSError, ValueError):
        pass  # the client went away or sent garbage too slowly: nobody to answer
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return REJECTED


# -- reading ----------------------------------------------------------------
def read_request(conn: socket.socket) -> tuple[list[bytes], list[int]]:
    """The request's fields and the descriptors that came with it, within size and time bounds."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    fds: list[int] = []
    try:
        header = _recv(conn, P.HEADER_SIZE, deadline, fds)
        if not header:
            raise OSError("no request")  # a probe: connect and close
        size = P.payload_size(P.REQUEST_MAGIC, header, P.MAX_REQUEST_BYTES)
        payload = _recv(conn, size, deadline, fds)
        if len(payload) != size:
            raise P.ProtocolError("the request ends before its announced length")
        fields = P.fields(payload, 2)
        if fields[0] != P.VERSION:
            raise P.ProtocolError("unsupported protocol version")
        return fields, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _recv(conn: socket.socket, size: int, deadline: float, fds: list[int]) -> bytes:
    """Exactly ``size`` bytes (fewer only at EOF), collecting every descriptor that arrives."""
    buf = bytearray()
    ancillary = socket.CMSG_SPACE((P.RUN_FDS + 1) * _FD_SIZE)
    while len(buf) < size:
        conn.settimeout(max(0.001, deadline - time.monotonic()))
        data, anc, flags, _ = conn.recvmsg(min(size - len(buf), 1 << 16), ancillary, socket.MSG_CMSG_CLOEXEC)
        fds.extend(descriptors(anc))
        if flags & socket.MSG_CTRUNC:
            raise P.ProtocolError("too many descriptors")
        if not data:
            break
        buf += data
    return bytes(buf)


def descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    out: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
            out.extend(fds)
    return out


# -- answering --------------------------------------------------------------
def _reply(conn: socket.socket, fields: list[bytes]) -> None:
    with contextlib.suppress(OSError):
        conn.settimeout(REQUEST_TIMEOUT_S)
        conn.sendall(P.frame(P.REPLY_MAGIC, fields))


def _reply_error(conn: socket.socket, e: errors.KmsError) -> None:
    _reply(conn, [P.REPLY_ERROR, str(e.exit_code).encode(), e.name.encode(), e.message.encode(errors="replace")])
    _drain(conn)


def _drain(conn: socket.socket) -> None:
    """Read what the client still sends (bounded), then close: closing a socket with
    unread data resets it, and the client would lose the error we just sent."""
    deadline = time.monotonic() + DRAIN_S
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        left = P.MAX_REQUEST_BYTES
        while left > 0 and time.monotonic() < deadline:
            conn.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = conn.recv(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)


# -- operations -------------------------------------------------------------
def _end_vault(conn: socket.socket, fields: list[bytes], served: Any) -> int:
    """``lock`` without a session and ``passwd``: any process of this user may end a session.

    The parent already checked the peer runs as this user, who could kill the
    agent anyway, so no secret is asked: ending a session gives nothing away.
    """
    if len(fields) != 3:
        raise P.ProtocolError("end-vault takes one vault path")
    if fields[2] != os.fsencode(served.config.vault):
        _reply(conn, [P.REPLY_OTHER])
        return REJECTED
    served.end()
    _reply(conn, [P.REPLY_ENDED])
    return REJECTED


def _run(conn: socket.socket, fields: list[bytes], fds: list[int], peer: tuple[int, int, int], served: Any) -> int:
    if len(fds) != P.RUN_FDS:
        raise P.ProtocolError(f"a run request carries {P.RUN_FDS} descriptors, not {len(fds)}")
    stdio, argv, env = _split_run(fields)
    _authenticate(fields[2], served)
    _refuse_outliving(argv)
    served.shared.touch()
    owned = list(fds)
    fds.clear()  # _execute closes them; serve() must not close the numbers again
    code = _execute(owned, stdio, argv, env, peer, served)
    served.shared.touch()
    _reply(conn, [P.REPLY_EXIT, str(code).encode()])
    return SERVED


def _authenticate(secret: bytes, served: Any) -> None:
    # Constant time: the comparison must not tell a guesser how many bytes were right.
    if not hmac.compare_digest(secret, served.config.secret):
        raise errors.InvalidSessionException(
            "KMSCLI_SESSION does not match its agent's secret (forged or mistyped); "
            "run 'eval \"$(kmscli unlock)\"' again, or unset KMSCLI_SESSION to use a passphrase"
        )
    refusal = served.refusal()
    if refusal is not None:
        raise errors.InvalidSessionException(
            f"{refusal}; run 'eval \"$(kmscli unlock)\"' again, or unset KMSCLI_SESSION to use a passphrase"
        )


def _refuse_outliving(argv: list[str]) -> None:
    """Refuse the commands of NOT_THROUGH_A_SESSION (the service refuses them too: defence in depth).

    The thin client runs ``init`` and ``unlock`` itself, but any process holding
    the session string can send the agent any argv, so the worker decides from
    the argv it is about to run, parsed as the CLI will parse it.
    """
    try:
        path, wants_help = command_path(argv)
    except Exception as e:  # an unreadable argv must not slip through: fail closed
        raise errors.KMSInternalException(
            f"the session agent could not tell which command this is ({e!r}); run it without KMSCLI_SESSION"
        ) from None
    why = NOT_THROUGH_A_SESSION.get(path)
    if why is not None and not wants_help:
        command = "kmscli " + " ".join(path)
        raise errors.InvalidSessionException(
            f"'{command}' needs the passphrase and never runs through a session ({why}); "
            f"run it without KMSCLI_SESSION (env -u KMSCLI_SESSION {command} ...)"
        )


def command_path(argv: list[str]) -> tuple[tuple[str, ...], bool]:
    """The command names ``kmscli ARGV`` runs (``("audit", "restart")``), and whether it asks only for --help.

    Click's own parser reads the options of each group, so global options
    before the command (``--vault X passwd``, ``--vault=X``, ``--``) are skipped
    exactly as the CLI skips them, and names resolve as click resolves them
    (exactly: it has no prefixes or aliases). A name the tree does not have
    ends the path as written.
    """
    from typer.core import TyperGroup

    from ..cli.app import click_command

    cmd: Any = click_command()
    ctx: Any = None
    args = list(argv)
    path: list[str] = []
    while True:
        # resilient_parsing: no callback runs and a usage error stops the parse
        # (click would then refuse to run anything at all).
        settings = {**cmd.context_settings, "resilient_parsing": True}  # as make_context builds it
        ctx = cmd.context_class(cmd, info_name=path[-1] if path else "kmscli", parent=ctx, **settings)
        opts, rest, _order = cmd.make_parser(ctx).parse_args(args=args)
        if not isinstance(cmd, TyperGroup) or not rest:
            return tuple(path), bool(opts.get("help"))
        name, sub, args = cmd.resolve_command(ctx, rest)  # click's own lookup, normalization and all
        path.append(name if name is not None else rest[0])
        if sub is None:
            return tuple(path), False
        cmd = sub


def _split_run(fields: list[bytes]) -> tuple[list[str], list[str], dict[str, str]]:
    if len(fields) < 5 or not fields[4].isdigit() or len(fields[4]) > 6:
        raise P.ProtocolError("run takes: secret, stdio, argc, argv..., environment...")
    argc = int(fields[4])
    if argc > len(fields) - 5:
        raise P.ProtocolError("argc is larger than the arguments sent")
    stdio = os.fsdecode(fields[3]).split(":")
    if len(stdio) != 7:
        raise P.ProtocolError("bad stdio description")
    argv = [os.fsdecode(a) for a in fields[5 : 5 + argc]]
    env: dict[str, str] = {}
    for item in fields[5 + argc :]:
        name, sep, value = item.partition(b"=")
        if not sep or not name:
            raise P.ProtocolError("environment entries are NAME=VALUE")
        env[os.fsdecode(name)] = os.fsdecode(value)
    return stdio, argv, env


# -- becoming the caller's kmscli -------------------------------------------
def _execute(fds: list[int], stdio: list[str], argv: list[str], env: dict[str, str],
             peer: tuple[int, int, int], served: Any) -> int:
    """Run the CLI on the caller's descriptors, directory and environment; return its exit code."""
    import signal

    try:
        _adopt_descriptors(fds)
        _adopt_stdio(stdio)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["kmscli", *argv]
        _bind_session(peer, served)
        from ..cli.main import run_local

        code = run_local(argv)
    except KeyboardInterrupt:
        code = 130
    except errors.KmsError as e:
        from ..cli.output import error_line

        _stderr_line(error_line(e.name, e.message))
        code = e.exit_code
    except BaseException as e:  # the CLI catches everything itself; this is for the setup above
        _stderr_line(f"kmscli: KMSInternalException: the session agent failed to run the command ({e!r})")
        code = errors.EXIT_INTERNAL
    # From here on a late SIGINT (the client hanging up after its answer) must
    # not turn a finished command into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _release_stdio()
    return code


def _adopt_descriptors(fds: list[int]) -> None:
    """Make the caller's descriptors this process's 0, 1, 2 and working directory."""
    stdin, stdout, stderr, cwd = fds
    try:
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target)
        try:
            os.fchdir(cwd)
        except OSError as e:
            raise errors.UsageError(f"cannot enter the caller's working directory: {e.strerror}") from None
    finally:
        for fd in fds:
            if fd > 2:
                os.close(fd)


def _adopt_stdio(stdio: list[str]) -> None:
    """sys.std* as the caller's interpreter had them: same encodings, error handlers, buffering."""
    in_enc, in_err, out_enc, out_err, err_enc, err_err, unbuffered = stdio
    raw_out = unbuffered == "1"
    sys.stdin = _text(0, "r", in_enc, in_err, False)
    sys.stdout = _text(1, "w", out_enc, out_err, raw_out)
    sys.stderr = _text(2, "w", err_enc, err_err, raw_out)


def _text(fd: int, mode: str, encoding: str, errors_: str, unbuffered: bool) -> io.TextIOWrapper:
    raw = io.FileIO(fd, mode, closefd=False)
    tty = raw.isatty()
    buffer: Any = io.BufferedReader(raw) if mode == "r" else _writer(raw, unbuffered)
    return io.TextIOWrapper(buffer, encoding=encoding or "utf-8", errors=errors_ or "strict",
                            line_buffering=tty or fd == 2, write_through=unbuffered and mode == "w")


def _writer(raw: io.FileIO, unbuffered: bool) -> Any:
    # As CPython does under PYTHONUNBUFFERED, stdout.buffer is then the raw
    # file, whose write() may be partial (every kmscli writer loops).
    return raw if unbuffered else io.BufferedWriter(raw)


def _release_stdio() -> None:
    """Flush, then let go of the caller's descriptors before answering.

    The caller exits on our answer; a pipe reader such as ``$(kmscli ...)`` or
    ``| sha256sum`` must then see EOF at once, not when this worker is gone.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _stderr_line(text: str) -> None:
    # Straight to fd 2: sys.stderr may still be the agent's own (/dev/null) here.
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode(errors="replace"))


def _bind_session(peer: tuple[int, int, int], served: Any) -> None:
    """Hand the CLI the in-memory key and the caller as the kernel saw it (SO_PEERCRED).

    Policies and the audit log see the client's real uid and pid: a client
    cannot claim another identity, since it never states one.
    """
    from ..cli import common
    from .session import BoundSession, SessionKeySource

    cfg = served.config
    common.SESSION = BoundSession(vault=cfg.vault, keys=SessionKeySource(cfg.key, cfg.header),
                                  caller=caller_from_peer(peer, served), end=served.end,
                                  alive=lambda: served.refusal() is None)


def caller_from_peer(peer: tuple[int, int, int], served: Any) -> Any:
    """The caller from the kernel's SO_PEERCRED record. The agent accepts only its
    own uid, so the user name is the agent's, looked up once from the passwd database."""
    from ..service import Caller

    pid, uid, _gid = peer
    return Caller(user=served.user, uid=uid, pid=pid, host=served.host)
