"""The agent under load and abuse: parallel clients, big streams, killed clients, garbage on its socket."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S, Runner, fails, kmscli_command, ok
from tests.session.conftest import Unlocker, agent_pid, alive, children, socket_of, wait_until


def connect(token: str) -> socket.socket:
    path = socket_of(token)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(HANG_GUARD_S)
    dfd = os.open(os.path.dirname(path), os.O_PATH)
    try:
        sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
    finally:
        os.close(dfd)
    return sock


def answer(sock: socket.socket) -> bytes:
    """The agent's reply frame, or what it sent before hanging up (b"" if nothing)."""
    data = b""
    try:
        while len(data) < 8 or len(data) < 8 + int.from_bytes(data[4:8], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    sock.close()
    return data


@pytest.fixture
def session(kms: Runner, unlock: Unlocker) -> dict[str, str]:
    ok(kms("keys", "create", "--alias", "alias/app"))
    return unlock()


def test_sixteen_clients_at_once(kms: Runner, session: dict[str, str], env: dict[str, str]) -> None:
    procs = []
    for i in range(16):
        procs.append(subprocess.Popen([*kmscli_command(), "encrypt", "--key", "alias/app", "--context", f"n={i}"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env={**env, **session}))
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"message {procs.index(p)}".encode())
        p.stdin.close()
    outputs = []
    for p in procs:
        assert p.stdout is not None and p.stderr is not None
        out, err = p.stdout.read(), p.stderr.read()
        assert p.wait(HANG_GUARD_S) == 0, err
        outputs.append(out)
    for i, ct in enumerate(outputs):
        assert ok(kms("decrypt", "--context", f"n={i}", input=ct, env_update=session)).stdout == f"message {i}".encode()


def test_a_64_mib_stream_through_the_agent(session: dict[str, str], env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    with open(data, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    kmscli = kmscli_command()[0]
    r = subprocess.run(f"{kmscli} encrypt --key alias/app < {data} | {kmscli} decrypt | sha256sum", shell=True,
                       capture_output=True, env={**env, **session}, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == digest


def slow_client(session: dict[str, str], env: dict[str, str], *args: str) -> subprocess.Popen:
    """A client whose stdin we feed by hand, so it stays mid-stream as long as we like."""
    proc = subprocess.Popen([*kmscli_command(), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**env, **session}, start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(os.urandom(1 << 20))
    proc.stdin.flush()
    return proc


def workers(agent: int) -> set[int]:
    """The agent's children serving a client (holding its pipes); the idle spare holds none."""
    return {c for c in children(agent) if _working(c)}


def _working(pid: int) -> bool:
    """True while ``pid`` still holds a client's descriptors (a spare holds none)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def catches(pid: int, sig: int) -> bool:
    """True once ``pid`` has its own handler for ``sig`` (the kernel's SigCgt mask)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (sig - 1)))


def wait_mid_request(proc: subprocess.Popen, agent: int) -> set[int]:
    """Wait until ``proc``'s request runs in a worker and the client waits for it; return the workers.

    The thin client installs its SIGINT/SIGTERM/SIGHUP handlers (SIGHUP last)
    after sending the request, just before it waits for the answer: from then
    on a signal is forwarded to the worker, not the default action.
    """
    assert wait_until(lambda: proc.poll() is not None or (bool(workers(agent)) and catches(proc.pid, signal.SIGHUP)))
    assert proc.poll() is None, proc.communicate()
    return workers(agent)


def test_a_client_killed_mid_stream_stops_its_worker_only(kms: Runner, session: dict[str, str],
                                                         env: dict[str, str]) -> None:
    agent = agent_pid(session["KMSCLI_SESSION"])
    assert agent is not None
    proc = slow_client(session, env, "encrypt", "--key", "alias/app")
    busy = wait_mid_request(proc, agent)
    proc.kill()
    proc.wait(HANG_GUARD_S)
    # the worker is interrupted, then killed if it lingers; the agent itself lives on
    assert wait_until(lambda: not busy & workers(agent))
    assert alive(agent)
    ok(kms("encrypt", "--key", "alias/app", input=b"after", env_update=session))


def test_ctrl_c_on_the_client_interrupts_the_worker(kms: Runner, session: dict[str, str], env: dict[str, str],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "out.kms"
    agent = agent_pid(session["KMSCLI_SESSION"])
    assert agent is not None
    proc = slow_client(session, env, "encrypt", "--key", "alias/app", "-o", str(out))
    wait_mid_request(proc, agent)
    # mid-stream: the worker has its temporary output open, which the interrupt must clean up
    assert wait_until(lambda: proc.poll() is not None or bool(list(tmp_path.glob(".out.kms.*"))))
    proc.send_signal(signal.SIGINT)
    proc.wait(HANG_GUARD_S)  # stdin stays open (communicate would close it): only the interrupt can end it
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, err  # as kmscli without a session ends on Ctrl-C
    assert b"Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.kms.*"))  # cleaned up as in-process
    ok(kms("encrypt", "--key", "alias/app", input=b"after", env_update=session))


def test_sigterm_on_the_client_ends_it_by_that_signal(session: dict[str, str], env: dict[str, str]) -> None:
    agent = agent_pid(session["KMSCLI_SESSION"])
    assert agent is not None
    proc = slow_client(session, env, "encrypt", "--key", "alias/app")
    wait_mid_request(proc, agent)
    proc.send_signal(signal.SIGTERM)
    proc.wait(HANG_GUARD_S)  # stdin stays open (communicate would close it): only the signal can end it
    proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == -signal.SIGTERM


def test_garbage_on_the_socket_never_harms_the_agent(kms: Runner, session: dict[str, str]) -> None:
    token = session["KMSCLI_SESSION"]
    agent = agent_pid(token)
    rng = random.Random(6)
    # Random bytes, then a half-close (which the agent takes as "cancel"): no answer is owed.
    for size in [rng.randrange(1, 300) for _ in range(30)] + [1, 7, 8, 9]:
        sock = connect(token)
        sock.sendall(bytes(rng.getrandbits(8) for _ in range(size)))
        sock.shutdown(socket.SHUT_WR)
        assert answer(sock)[:4] in (b"", b"KMa1")
    sock = connect(token)
    sock.sendall(b"KMq1" + (10).to_bytes(4, "big") + b"1\0run\0xx")  # a payload cut short
    sock.shutdown(socket.SHUT_WR)
    answer(sock)
    # Well-framed but hostile requests each get an error, one line for the client to print.
    secret = token.rpartition(":")[2].encode()
    for payload, error in (
        (b"KMq1" + (1 << 31).to_bytes(4, "big"), b"ValidationException"),          # oversized length
        (b"XXXX" + (4).to_bytes(4, "big") + b"1\0ru", b"ValidationException"),     # bad magic
        (_frame([b"1", b"run", secret, b"x", b"1", b"keys"]), b"ValidationException"),  # no descriptors
        (_frame([b"9", b"run"]), b"ValidationException"),                          # unknown version
        (_frame([b"1", b"launch-missiles"]), b"ValidationException"),              # unknown operation
        (_frame([b"1", b"run"]), b"ValidationException"),                          # fields missing
        (_frame([b"1", b"run", secret, b"x", b"9" * 5000]), b"ValidationException"),  # absurd argc
        (_frame([b"1"] * 20000), b"ValidationException"),                          # too many fields
    ):
        sock = connect(token)
        sock.sendall(payload)
        assert error in answer(sock), payload[:40]
    # Descriptors: the right number with a wrong secret, then too many with the right one.
    for count, secret_sent, error in ((4, b"ab" * 32, b"InvalidSessionException"), (9, secret, b"Validation")):
        sock = connect(token)
        fds = [os.open(os.devnull, os.O_RDWR) for _ in range(count)]
        stdio = b"utf-8:strict:utf-8:strict:utf-8:strict:0"
        sock.sendmsg([_frame([b"1", b"run", secret_sent, stdio, b"1", b"keys"])],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{count}i", *fds))])
        for fd in fds:
            os.close(fd)
        assert error in answer(sock)
    assert agent is not None and alive(agent)
    ok(kms("keys", "list", env_update=session))


def test_a_client_that_sends_nothing_ties_up_only_its_own_worker(kms: Runner, session: dict[str, str]) -> None:
    idle = [connect(session["KMSCLI_SESSION"]) for _ in range(4)]
    try:
        ok(kms("keys", "list", env_update=session))
    finally:
        for s in idle:
            s.close()


def _frame(fields: list[bytes]) -> bytes:
    payload = b"\0".join(fields)
    return b"KMq1" + len(payload).to_bytes(4, "big") + payload


def test_a_long_socket_path_works(kms: Runner, unlock: Unlocker, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    s = unlock("--ttl", "300", env_update={"KMSCLI_RUNTIME_DIR": str(deep)})
    assert len(socket_of(s["KMSCLI_SESSION"])) > 108
    ok(kms("keys", "list", env_update=s))
    ok(kms("lock", env_update=s))
    fails(kms("keys", "list", env_update=s), 5, "InvalidSessionException")
