"""Sessions as the CLI sees them: durations, the session folder, starting and ending agents.

A session is ``kms1:<socket path>:<secret>``: the socket names the agent that
holds one unlocked vault key, the secret (32 random bytes, hex) proves the
holder was given the session by ``kmscli unlock``. Ending a session is ending
its agent; see docs/session.md.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors
from ..vault.store import KeySource
from . import protocol as P

DEFAULT_TTL_S = 15 * 60
MAX_TTL_S = 24 * 60 * 60
#: How long ``unlock`` waits for a new agent to import the CLI and bind its socket.
AGENT_START_TIMEOUT_S = 30.0
#: How long ``lock`` and ``passwd`` wait for each agent to answer: a healthy
#: agent answers in milliseconds; the margin is for a machine under heavy load.
AGENT_ANSWER_TIMEOUT_S = 30.0
SOCKET_SUFFIX = ".sock"
RUNTIME_ENV = "KMSCLI_RUNTIME_DIR"
#: Where systemd-logind makes each user's runtime folder (XDG_RUNTIME_DIR's usual value).
RUN_USER = Path("/run/user")
SHELLS = ("sh", "bash", "zsh", "fish")

# A bare number is seconds; with units, every part names its unit ("1h30" is refused, not guessed).
_DURATION = re.compile(r"(\d{1,9})|(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,9})s)?")
_UNLOCK_HINT = "run 'eval \"$(kmscli unlock)\"' again, or unset KMSCLI_SESSION to use a passphrase"


def parse_duration(text: str, option: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``1h30m`` in seconds; at most 24 hours."""
    m = _DURATION.fullmatch(text)
    seconds = 0
    if m and any(m.groups()):
        bare, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = bare + h * 3600 + mi * 60 + s
    if not 0 < seconds <= MAX_TTL_S:
        raise errors.ValidationException(
            f"{option} must be a duration from 1s to 24h such as 90, 90s, 15m, 2h or 1h30m (got '{text}')"
        )
    return seconds


def human_duration(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


# -- the session string -------------------------------------------------------
def format_token(socket_path: Path, secret_hex: str) -> str:
    return f"{P.SESSION_PREFIX}{socket_path}:{secret_hex}"


def export_line(token: str, shell: str) -> str:
    """The line ``eval`` runs: POSIX ``export`` or fish's ``set -gx``."""
    if shell == "fish":
        return f"set -gx KMSCLI_SESSION {_fish_quote(token)};"
    import shlex

    return f"export KMSCLI_SESSION={shlex.quote(token)}"


def _fish_quote(text: str) -> str:
    if re.fullmatch(r"[\w@%+=:,./-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- the session folder -------------------------------------------------------
def runtime_dir(create: bool = True) -> Path | None:
    """The private folder holding agent sockets (``KMSCLI_RUNTIME_DIR``, else the user runtime dir)."""
    override = os.environ.get(RUNTIME_ENV)
    folder = Path(override).expanduser() if override else _platform_runtime_dir(create)
    if not create and not folder.is_dir():
        return None
    if create:
        from ..vault.store import ensure_private_dir

        try:
            ensure_private_dir(folder)
        except errors.KmsError as e:
            raise errors.SessionAgentException(e.message) from None
    _check_private_dir(folder)
    return folder


def _platform_runtime_dir(create: bool) -> Path:
    """``$XDG_RUNTIME_DIR/kmscli``, else ``/run/user/<uid>/kmscli``, else ``<tmp>/runtime-<uid>/kmscli``.

    The last is a predictable name in a folder everyone can write: another
    user can make ``/tmp/runtime-<uid>`` first (theirs, open to them, or a
    symlink to a folder of theirs) and so see, replace or block our sockets.
    It is used only after checking it is ours and private (_check_runtime_base).
    """
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "kmscli"
    run_user = RUN_USER / str(uid)
    if _private_problem(run_user) is None:
        return run_user / "kmscli"
    import tempfile

    base = Path(tempfile.gettempdir()) / f"runtime-{uid}"
    _check_runtime_base(base, create)
    return base / "kmscli"


def _check_runtime_base(base: Path, create: bool) -> None:
    """Make ``base`` 0700 if it is missing; refuse it, naming it, unless it is a private folder of ours."""
    if create:
        try:
            os.mkdir(base, 0o700)  # never follows a symlink: one in its place is EEXIST
        except FileExistsError:
            pass  # checked below, whoever made it
        except OSError as e:
            raise errors.SessionAgentException(
                f"cannot create the session folder {base}: {e.strerror}; set {RUNTIME_ENV} (or XDG_RUNTIME_DIR) "
                "to a folder only you can use"
            ) from None
    problem = _private_problem(base)
    if problem is not None and not (problem == "is missing" and not create):
        raise errors.SessionAgentException(
            f"refusing the session folder {base}: it {problem}, and only a folder of yours that nobody else "
            f"can enter is safe for session sockets; remove it, or set {RUNTIME_ENV} (or XDG_RUNTIME_DIR) "
            "to a private folder"
        )


def _private_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a private folder of ours, or None. lstat: a symlink is never followed."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be checked ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != os.getuid():
        return f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    if st.st_mode & 0o077:
        return f"is open to group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _check_private_dir(folder: Path) -> None:
    """Sockets in a folder others can enter or replace would let them reach the agent: refuse one."""
    try:
        st = os.lstat(folder)
    except OSError as e:
        raise errors.SessionAgentException(f"cannot use the session folder {folder}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise errors.SessionAgentException(
            f"the session folder {folder} is not a folder of yours; set {RUNTIME_ENV} to a private folder"
        )
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)  # ours and not a symlink: repair rather than refuse


def socket_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SOCKET_SUFFIX}") if p.is_socket())


# -- talking to agents from a full kmscli process -----------------------------
def connect(path: Path, timeout: float) -> Any:
    """A connection to the agent at ``path``, checked to run as this user; None if it is gone."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with short_address(path) as address:
            sock.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        _remove_stale(path)
        return None
    except OSError:
        sock.close()
        return None
    if peer_credentials(sock)[1] != os.getuid():
        sock.close()  # someone else's socket in our folder: never send it anything
        return None
    return sock


def _remove_stale(path: Path) -> None:
    """A socket nobody listens on is an agent that died (SIGKILL, reboot): remove it."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


@contextlib.contextmanager
def short_address(path: Path) -> Any:
    """An address for ``path`` within AF_UNIX's 108 bytes, through /proc/self/fd when it is longer."""
    if len(os.fsencode(path)) < P.MAX_SOCKET_PATH:
        yield str(path)
        return
    dfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dfd}/{path.name}"
    finally:
        os.close(dfd)


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel recorded them at connect."""
    import socket
    import struct

    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def ask(sock: Any, fields: list[bytes]) -> list[bytes] | None:
    """Send one request, return the reply's fields (None if the agent hung up)."""
    try:
        sock.sendall(P.frame(P.REQUEST_MAGIC, fields))
        header = _recv_exact(sock, P.HEADER_SIZE)
        if header is None:
            return None
        payload = _recv_exact(sock, P.payload_size(P.REPLY_MAGIC, header, P.MAX_REPLY_BYTES))
        return None if payload is None else payload.split(b"\0")
    except (OSError, P.ProtocolError):
        return None
    finally:
        sock.close()


def _recv_exact(sock: Any, size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def end_vault_sessions(vault_path: Path) -> int:
    """End every session of this user serving ``vault_path``; return how many ended."""
    folder = runtime_dir(create=False)
    if folder is None:
        return 0
    target = os.fsencode(os.path.realpath(vault_path))
    ended = 0
    for path in socket_paths(folder):
        sock = connect(path, AGENT_ANSWER_TIMEOUT_S)
        if sock is not None and ask(sock, [P.VERSION, P.OP_END_VAULT, target]) == [P.REPLY_ENDED]:
            ended += 1
    return ended


def end_session(token: str, vault_path: Path) -> bool | None:
    """End the session ``token`` names if it serves ``vault_path``: True ended, False another vault's.

    None when there is nothing to end: not a session string, a socket outside
    this user's session folder (never sent anything), or an agent already gone.
    """
    prefix_ok = token.startswith(P.SESSION_PREFIX)
    path_text, sep, _secret = token[len(P.SESSION_PREFIX):].rpartition(":")
    folder = runtime_dir(create=False)
    if not (prefix_ok and sep and path_text.endswith(SOCKET_SUFFIX)) or folder is None:
        return None
    path = Path(path_text)
    if os.path.realpath(path.parent) != os.path.realpath(folder):
        return None
    sock = connect(path, AGENT_ANSWER_TIMEOUT_S)
    if sock is None:
        return None
    reply = ask(sock, [P.VERSION, P.OP_END_VAULT, os.fsencode(os.path.realpath(vault_path))])
    if reply == [P.REPLY_ENDED]:
        return True
    return False if reply == [P.REPLY_OTHER] else None


def remove_stale_sockets(folder: Path) -> None:
    for path in socket_paths(folder):
        sock = connect(path, AGENT_ANSWER_TIMEOUT_S)
        if sock is not None:
            sock.close()


# -- starting an agent --------------------------------------------------------
def open_session(svc: Any, ttl: int, idle: int) -> str:
    """Unlock the vault with ``svc``'s passphrase, start its agent, return the session string.

    The agent is started inside the audited ``Unlock`` call, so a wrong
    passphrase or an agent that fails to start is recorded as a failed Unlock.
    """
    import secrets

    folder = runtime_dir()
    assert folder is not None
    remove_stale_sockets(folder)
    session_id = secrets.token_hex(16)
    secret_hex = secrets.token_hex(P.SECRET_BYTES)
    sock_path = folder / f"{session_id}{SOCKET_SUFFIX}"

    def start(vault_key: bytes, header: bytes) -> str:
        spawn_agent({
            "vault": os.path.realpath(svc.store.path), "key": vault_key.hex(), "header": header.hex(),
            "secret": secret_hex, "socket": str(sock_path), "ttl": ttl, "idle": idle,
        })
        return session_id

    svc.Unlock(TtlSeconds=ttl, IdleSeconds=idle or None, start_session=start)
    return format_token(sock_path, secret_hex)


def spawn_agent(config: dict[str, Any]) -> None:
    """Start ``python -m kmscli.agent`` and hand it the key through a pipe; wait until it serves."""
    import json
    import subprocess

    # The key and the secret travel on the agent's stdin, never in argv or the
    # environment, which other processes of the user (and ps) can read.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSCLI_")}
    # The agent runs from "/", so the folder kmscli is imported from must be on its path.
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths if root in paths else [root, *paths])
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kmscli.agent"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd="/", env=env, start_new_session=True, close_fds=True,
        )
    except OSError as e:
        raise errors.SessionAgentException(f"cannot start the session agent: {e.strerror}") from None
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    except OSError:
        pass  # the agent died at once; its status line (or its absence) says why
    status = _read_status(proc.stdout.fileno(), AGENT_START_TIMEOUT_S)
    proc.stdout.close()
    if status != "ready":
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        raise errors.SessionAgentException(f"the session agent did not start: {status or 'it exited'}")


def _read_status(fd: int, timeout: float) -> str:
    import select
    import time

    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data and len(data) < 4096:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return f"no answer within {timeout:.0f} s"
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


# -- inside the agent's worker ------------------------------------------------
#: Header bytes 10..39: KDF id, parameters and salt (docs/vault.md).
_KDF_FIELDS = slice(10, 39)


class SessionKeySource(KeySource):
    """The vault key held by the agent, valid only while the vault's header is the one it unlocked.

    ``passwd`` rewrites the header (new salt): even if telling the agents
    failed, every later call through an old session then fails closed.
    """

    def __init__(self, vault_key: bytes, header_raw: bytes) -> None:
        self._key = vault_key
        self._header = header_raw

    def vault_key(self, header: Any) -> bytes:
        # The same KDF parameters and salt are the same passphrase epoch: only init and
        # passwd make a salt. So a session outlives the upgrade of its vault to format 2,
        # whose header differs in its version (and wrap nonce) only.
        if not hmac.compare_digest(header.raw[_KDF_FIELDS], self._header[_KDF_FIELDS]):
            raise errors.InvalidSessionException(
                f"the vault's passphrase changed (or the vault was replaced) since this session began; {_UNLOCK_HINT}"
            )
        return self._key


@dataclass
class BoundSession:
    """What a worker knows about the session it serves; ``cli.common.SESSION`` holds it."""

    vault: str
    keys: SessionKeySource
    caller: Any
    end: Callable[[], None]
    #: Whether the session still lasts (not locked, TTL not over): what runs
    #: for long through it (``serve``) stops when this turns false.
    alive: Callable[[], bool] = lambda: True

    def key_source(self, vault_path: Path) -> KeySource:
        """The session's key, for the one vault it was made for only."""
        if os.path.realpath(vault_path) != self.vault:
            raise errors.InvalidSessionException(
                f"this session was made for the vault {self.vault}, not {vault_path}; "
                "unset KMSCLI_SESSION to open another vault with its passphrase"
            )
        return self.keys
