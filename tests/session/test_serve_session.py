"""`kmscli serve` through a session: nothing done through a session outlives it.

A server started with KMSCLI_SESSION runs in the session's agent, with the
vault key the agent holds; when the session ends (lock, or its TTL), the
server stops as on SIGTERM, and no request is answered after the end.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import HANG_GUARD_S, Runner, kmscli_command, ok
from tests.session.conftest import Unlocker


def _start(env: dict[str, str], session: dict[str, str]) -> tuple[subprocess.Popen, str]:
    e = {**env, **session}
    e.pop("KMSCLI_PASSPHRASE", None)  # the session is the only key source
    proc = subprocess.Popen([*kmscli_command(), "serve", "--port", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=e, start_new_session=True)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # the first line: "serving on", or why not
    assert line.startswith("kmscli: serving on http://127.0.0.1:"), line
    return proc, line.split("serving on ", 1)[1].strip()


def test_a_server_through_a_session_stops_when_it_is_locked(kms: Runner, vault: Path, unlock: Unlocker,
                                                              env: dict[str, str]) -> None:
    import urllib.request

    session = unlock("--ttl", "10m")
    proc, url = _start(env, session)
    try:
        # It answers (an unsigned request is refused by the signature check: it reached the server).
        req = urllib.request.Request(url + "/", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(req, timeout=HANG_GUARD_S)
        except urllib.error.HTTPError as e:
            assert e.code == 400 and e.headers["X-Amzn-ErrorType"] == "MissingAuthenticationTokenException"
        ok(kms("lock", env_update=session))
        assert proc.wait(HANG_GUARD_S) == 0
        assert proc.stderr is not None
        assert b"stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(HANG_GUARD_S)


def test_a_server_through_a_session_stops_at_its_ttl(kms: Runner, vault: Path, unlock: Unlocker,
                                                       env: dict[str, str]) -> None:
    session = unlock("--ttl", "15")  # room for a slow machine to start the server first
    proc, _ = _start(env, session)
    try:
        # No clock assertion: only that it ends by itself once the TTL is over.
        assert proc.wait(HANG_GUARD_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(HANG_GUARD_S)
