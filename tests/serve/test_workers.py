"""`kmscli serve --workers N`: several processes serve one vault and one audit log, and stop as one.

Requests from many connections are spread over the workers by the kernel;
every answer has exactly one record in one unbroken chain. A stop reaches
every worker; a worker that dies takes the server down with an error rather
than leaving it half-alive. Processes and records are counted, never timed.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import ServerProcess, create_credential, make_client, make_vault, ok, run_kmscli


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found


def test_workers_share_the_vault_and_the_log(tmp_path: Path) -> None:
    env, _ = make_vault(tmp_path)
    cred = create_credential(env, "alice")
    server = ServerProcess(["--port", "0", "--workers", "3"], env)
    try:
        workers = _children(server.proc.pid)
        assert len(workers) == 3, workers
        key = make_client(server.url, cred.access_key_id, cred.secret).create_key()["KeyMetadata"]["KeyId"]
        answered: list[str] = []
        lock = threading.Lock()

        def client() -> None:
            kms = make_client(server.url, cred.access_key_id, cred.secret)  # its own connection
            for _ in range(25):
                r: Any = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
                with lock:
                    answered.append(r["ResponseMetadata"]["RequestId"])

        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG_GUARD_S)
        assert len(answered) == 12 * 25
        # A key made through one worker is used at once through the others; the CLI sees it too.
        ok(run_kmscli(env, "--region", "us-east-1", "keys", "describe", key))
    finally:
        server.assert_clean_stop()
    ok(run_kmscli(env, "audit", "verify"))
    log = (tmp_path / "audit.jsonl").read_text()
    assert [rid for rid in answered if log.count(rid) != 1] == []


def test_a_worker_that_dies_stops_the_server_with_an_error(tmp_path: Path) -> None:
    env, _ = make_vault(tmp_path)
    cred = create_credential(env, "alice")
    server = ServerProcess(["--port", "0", "--workers", "2"], env)
    workers = _children(server.proc.pid)
    assert len(workers) == 2
    make_client(server.url, cred.access_key_id, cred.secret).list_keys()
    os.kill(workers[0], signal.SIGKILL)
    code = server.stop(None)
    assert code == 1, server.lines
    assert any("a serving process ended unexpectedly (exit status -9)" in line for line in server.lines), server.lines
    for pid in workers:  # none is left behind
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    ok(run_kmscli(env, "audit", "verify"))


def test_workers_are_refused_where_the_state_lives_in_one_process(tmp_path: Path) -> None:
    env, _ = make_vault(tmp_path)
    r = run_kmscli(env, "serve", "--ephemeral", "--workers", "2", "--port", "0")
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines() == [
        "kmscli: ValidationException: --workers 2: --ephemeral keeps its state in one process; "
        "serve with --workers 1"]
    r = run_kmscli(env, "serve", "--workers", "0", "--port", "0")
    assert r.returncode == 2 and b"--workers must be 1..64 (got 0)" in r.stderr


def test_connections_are_spread_over_the_workers(tmp_path: Path) -> None:
    """Each worker listens on its own socket (SO_REUSEPORT): with one shared socket the first
    worker to wake took 16 connections of 17. The kernel spreads them by a hash of the
    address: the chance that 32 land on one of two workers is 2**-31."""
    import http.client

    env, _ = make_vault(tmp_path)
    server = ServerProcess(["--port", "0", "--workers", "2"], env)
    try:
        workers = _children(server.proc.pid)

        def sockets(pid: int) -> int:
            return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if "socket:" in os.readlink(fd))

        idle = {pid: sockets(pid) for pid in workers}  # the listening socket, the event loop's own pair
        connections = []
        for _ in range(32):
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HANG_GUARD_S)
            c.request("POST", "/", body=b"{}")  # unsigned: refused, but accepted and answered by a worker
            assert c.getresponse().read()
            connections.append(c)
        held = {pid: sockets(pid) - idle[pid] for pid in workers}
        assert sum(held.values()) == 32 and all(n > 0 for n in held.values()), held
        for c in connections:
            c.close()
    finally:
        server.assert_clean_stop()
