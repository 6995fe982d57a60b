"""Remote mode's failures: one stderr line naming the error, the SPEC's exit code, never a traceback.

Exit 10 is a KMS that cannot be reached or refuses the caller (the remote
exception's name printed); the KMS's own refusals keep the codes they have
against the vault (3 not found, 4 wrong state or usage, 7 denied, 9 exists).
Every address is loopback: a closed port, a listener that counts connections,
an HTTP server that is not a KMS, moto, and `kmscli serve`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import fails, ok
from tests.remote.conftest import Remote, remote_env, run_in

#: Credentials for endpoints that never check them (nothing listening, not a KMS).
SOME_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
CANNOT_REACH_HINT = "check the endpoint URL and that the KMS is running"
CREDENTIALS_HINT = "check AWS_PROFILE / AWS_ACCESS_KEY_ID and the clock"


# -- nothing there, or not a KMS --------------------------------------------------------------------
def test_a_closed_port_is_exit_10_endpoint_connection_error(home: Path, closed_endpoint: str) -> None:
    """With botocore's default attempts; the run finishing inside the hang guard is the point (no timing)."""
    r = run_in(home, remote_env(home, closed_endpoint, **SOME_CREDENTIALS), "keys", "list")
    assert fails(r, 10, "EndpointConnectionError") == (
        f"kmscli: EndpointConnectionError: cannot reach {closed_endpoint}: Could not connect to the endpoint URL: "
        f'"{closed_endpoint}/"; {CANNOT_REACH_HINT}')
    assert r.stdout == b""


class CountingListener:
    """A TCP listener on loopback that counts connections and closes each one unanswered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            if self.stopping:
                conn.close()
                return
            self.connections += 1  # before the close the client waits for: counted by the time it gives up
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    def close(self) -> None:
        self.stopping = True
        socket.create_connection(self.sock.getsockname(), timeout=60).close()  # wakes the accept
        self.thread.join(timeout=60)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    found = CountingListener()
    yield found
    found.close()


@pytest.mark.parametrize(("max_attempts", "attempts"), [("1", 1), (None, 3)], ids=["AWS_MAX_ATTEMPTS=1", "default"])
def test_attempts_at_a_dead_endpoint(home: Path, listener: CountingListener, max_attempts: str | None,
                                     attempts: int) -> None:
    """botocore's standard retries, three attempts in all unless AWS_MAX_ATTEMPTS says otherwise: counted."""
    env = remote_env(home, listener.url, **SOME_CREDENTIALS)
    if max_attempts is not None:
        env["AWS_MAX_ATTEMPTS"] = max_attempts
    r = run_in(home, env, "keys", "list")
    assert fails(r, 10, "ConnectionClosedError") == (
        f"kmscli: ConnectionClosedError: cannot reach {listener.url}: Connection was closed before we received a "
        f'valid response from endpoint URL: "{listener.url}/".; {CANNOT_REACH_HINT}')
    assert listener.connections == attempts


def test_a_bad_aws_max_attempts_is_a_usage_error(home: Path, closed_endpoint: str) -> None:
    env = remote_env(home, closed_endpoint, **SOME_CREDENTIALS, AWS_MAX_ATTEMPTS="three")
    fails(run_in(home, env, "keys", "list"), 2, "ValidationException")


class NotAKms(http.server.BaseHTTPRequestHandler):
    """Answers every request 404, as a web server at the wrong URL does; remembers what it was sent."""

    seen: list[tuple[str, str, str | None]] = []

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append((self.command, self.path, self.headers.get("X-Amz-Target")))
        body = b"<html><body>404 Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_a_kms() -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []
    handler = type("Handler", (NotAKms,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=60)


def test_an_http_server_that_is_not_a_kms_is_exit_10(home: Path,
                                                     not_a_kms: tuple[str, list[tuple[str, str, str | None]]]
                                                     ) -> None:
    url, seen = not_a_kms
    r = run_in(home, remote_env(home, url, **SOME_CREDENTIALS), "keys", "list")
    assert fails(r, 10, "HTTP404") == f"kmscli: HTTP404: {url} answered HTTP 404, not as a KMS; check the endpoint URL"
    assert seen == [("POST", "/", "TrentService.ListKeys")]  # one request: a 404 is not retried


def test_bad_endpoints_regions_and_parameters_are_usage_errors(home: Path, closed_endpoint: str) -> None:
    """Exit 2, decided before anything is sent (a request to the closed port would be exit 10)."""
    bad_url = ("kmscli: ValidationException: --endpoint must be 'aws' or an http(s) URL such as "
               "http://127.0.0.1:8080 (got 'notaurl')")
    calls = [
        (remote_env(home, None, **SOME_CREDENTIALS), ("--endpoint", "notaurl", "keys", "list")),
        (remote_env(home, "notaurl", **SOME_CREDENTIALS), ("keys", "list")),
        (remote_env(home, "aws", **SOME_CREDENTIALS), ("keys", "list")),  # AWS itself, and no region anywhere
        (remote_env(home, closed_endpoint, **SOME_CREDENTIALS),
         ("datakey", "1234abcd-12ab-34cd-56ef-1234567890ab", "--bytes", "0")),
    ]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        option, variable, aws, none = pool.map(lambda c: run_in(home, c[0], *c[1]), calls)
    assert fails(option, 2) == bad_url
    assert fails(variable, 2) == bad_url
    assert fails(aws, 2) == ("kmscli: ValidationException: no AWS region is configured for --endpoint aws; set "
                             "AWS_REGION, give --region, or set a region in your AWS profile")
    assert fails(none, 2) == ("kmscli: ValidationException: Parameter validation failed: Invalid value for parameter "
                              "NumberOfBytes, value: 0, valid min value: 1")  # botocore checks its model's minimum


def test_no_credentials_anywhere_is_exit_10(home: Path, closed_endpoint: str) -> None:
    """No AWS variables, no config or credentials file, no instance metadata: refused before any request."""
    env = remote_env(home, closed_endpoint, AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                     AWS_EC2_METADATA_DISABLED="true")
    assert not {k for k in env if k.startswith("AWS_") and ("KEY" in k or "TOKEN" in k or "PROFILE" in k)}
    assert fails(run_in(home, env, "keys", "list"), 10, "NoCredentialsError") == (
        f"kmscli: NoCredentialsError: no usable AWS credentials for {closed_endpoint}: Unable to locate "
        "credentials; set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


# -- a KMS that refuses the caller -----------------------------------------------------------------
@pytest.mark.parametrize("case", ["unknown access key", "wrong secret", "clock a day ahead", "clock a day behind"])
def test_refused_credentials_are_exit_10(remote: Remote, case: str) -> None:
    remote.lacks("credentials")
    prefix: tuple[str, ...] = ()
    env: dict[str, str] = {}
    if case == "unknown access key":
        env, name, words = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"}, "UnrecognizedClientException", "token"
    elif case == "wrong secret":
        env, name, words = {"AWS_SECRET_ACCESS_KEY": "x" * 40}, "InvalidSignatureException", "does not match"
    else:
        if shutil.which("faketime") is None:
            pytest.skip("faketime is not installed")
        ahead = case.endswith("ahead")
        prefix = ("faketime", "-f", "+1d" if ahead else "-1d")
        name, words = "InvalidSignatureException", "not yet current" if ahead else "Signature expired"
    r = remote.run("keys", "list", env_update=env, prefix=prefix)
    line = fails(r, 10, name)
    assert line.startswith(f"kmscli: {name}: {remote.url} refused the credentials: ") and words in line, line
    assert line.endswith(CREDENTIALS_HINT)
    secret = env.get("AWS_SECRET_ACCESS_KEY", remote.backend.users["alice"][1])
    assert secret not in r.stderr.decode()  # the secret is never shown


# -- a KMS's own refusals ----------------------------------------------------------------------------
def test_not_found_wrong_usage_and_already_exists(remote: Remote, tmp_path: Path) -> None:
    arn = remote.create_key("--alias", "alias/taken")
    (tmp_path / "message").write_bytes(b"hello\n")
    missing, misuse, taken = remote.run_all(
        ("keys", "describe", "1234abcd-12ab-34cd-56ef-1234567890ab"),
        ("mac", "--key", arn, "-a", "HMAC_SHA_256", "-f", "base64", "-i", str(tmp_path / "message")),
        ("alias", "create", "alias/taken", arn))
    fails(missing, 3, "NotFoundException")
    fails(misuse, 4, "InvalidKeyUsageException")  # a symmetric key makes no MACs
    fails(taken, 9, "AlreadyExistsException")
    assert (missing.stdout, misuse.stdout, taken.stdout) == (b"", b"", b"")


def test_a_key_of_another_region_is_not_found(remote: Remote) -> None:
    """As in AWS: the request's region decides which keys exist, whatever region the ARN names."""
    made = ok(remote.run("keys", "create", "--json", "--region", "us-west-2"))
    arn = json.loads(made.stdout)["KeyMetadata"]["Arn"]
    assert arn.startswith(f"arn:aws:kms:us-west-2:{remote.account}:key/")
    elsewhere, there = remote.run_all(("keys", "describe", arn, "--region", "us-east-1"),
                                      ("keys", "describe", arn, "--json", "--region", "us-west-2"))
    fails(elsewhere, 3, "NotFoundException")
    assert json.loads(ok(there).stdout)["KeyMetadata"]["Arn"] == arn


def test_a_disabled_or_deleted_key_cannot_be_used(remote: Remote) -> None:
    remote.lacks("key-state")
    made = remote.run_all(("keys", "create"), ("keys", "create"))
    disabled, deleted = (ok(r).stdout.decode().strip() for r in made)
    for r in remote.run_all(("keys", "disable", disabled), ("keys", "schedule-delete", deleted, "--days", "7")):
        ok(r)
    first, second = remote.run_all(("datakey", disabled), ("datakey", deleted))
    fails(first, 4, "DisabledException")
    fails(second, 4, "KMSInvalidStateException")


def test_a_key_policy_denial_is_exit_7(remote: Remote, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{remote.account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Not bob", "Effect": "Deny", "Principal": {"AWS": remote.principal("bob")},
         "Action": "kms:DescribeKey", "Resource": "*"}]}))
    arn = remote.create_key("--policy", str(policy))
    fails(remote.run("keys", "describe", arn, "--json", user="bob"), 7, "AccessDeniedException")
    if not remote.is_moto:  # moto ignores Principal: its Deny denies alice too (MOTO_GAPS["principals"])
        assert json.loads(ok(remote.run("keys", "describe", arn, "--json")).stdout)["KeyMetadata"]["Arn"] == arn
