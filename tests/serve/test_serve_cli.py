"""`kmscli serve` as a command: what it refuses before listening, and how it stops."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

from tests.conftest import HANG_GUARD_S, PASSPHRASE, kmscli_command
from tests.serve.conftest import STOPPED, ServerProcess, make_client, make_vault, run_kmscli


def serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*kmscli_command(), "serve", *args], input=b"", capture_output=True, env=env,
                          timeout=HANG_GUARD_S, start_new_session=True)


def one_error(r: subprocess.CompletedProcess, code: int, name: str) -> str:
    err = r.stderr.decode(errors="replace")
    assert r.returncode == code, (r.returncode, err)
    assert "serving on" not in err and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kmscli: {name}: "), err
    return lines[0]


def test_refusals_before_anything_listens(tmp_path: Path) -> None:
    env, _ = make_vault(tmp_path / "v")
    one_error(serve({**env, "KMSCLI_PASSPHRASE": "wrong"}, "--port", "0"), 5, "IncorrectPassphraseException")
    one_error(serve({**env, "KMSCLI_VAULT": str(tmp_path / "none" / "vault.kms")}, "--port", "0"), 8,
              "VaultNotFoundException")
    line = one_error(serve(env, "--host", "0.0.0.0", "--port", "0"), 2, "ValidationException")
    assert "TLS" in line
    one_error(serve(env, "--tls-cert", str(tmp_path / "cert.pem"), "--port", "0"), 2, "ValidationException")
    one_error(serve(env, "--account", "111122223333", "--port", "0"), 2, "ValidationException")
    one_error(serve(env, "--port", "70000"), 2, "ValidationException")
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        line = one_error(serve(env, "--port", str(taken.getsockname()[1])), 2, "ValidationException")
        assert str(taken.getsockname()[1]) in line
    finally:
        taken.close()
    no_source = {k: v for k, v in env.items() if k != "KMSCLI_PASSPHRASE"}
    one_error(serve(no_source, "--port", "0"), 5, "PassphraseRequiredException")


def test_sigint_stops_it_with_130_and_sigterm_with_0(tmp_path: Path) -> None:
    env, _ = make_vault(tmp_path / "v")
    s = ServerProcess(["--port", "0"], env)
    assert s.stop(signal.SIGINT) == 130 and s.lines[-1] == STOPPED, s.lines
    s = ServerProcess(["--port", "0"], env)
    s.assert_clean_stop()
    assert run_kmscli(env, "audit", "verify").returncode == 0


def test_it_serves_from_a_passphrase_file(tmp_path: Path) -> None:
    env, account = make_vault(tmp_path / "v")
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    file_env = {k: v for k, v in env.items() if k != "KMSCLI_PASSPHRASE"}
    file_env["KMSCLI_PASSPHRASE_FILE"] = str(tmp_path / "pass")
    lines = run_kmscli(env, "credentials", "create", "ci").stdout.decode().split()
    akid, secret = (line.split("=", 1)[1] for line in lines)
    s = ServerProcess(["--port", "0"], file_env)
    try:
        md = make_client(s.url, akid, secret).create_key()["KeyMetadata"]
        assert md["AWSAccountId"] == account
    finally:
        s.assert_clean_stop()
