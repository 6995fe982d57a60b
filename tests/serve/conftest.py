"""Fixtures for `kmscli serve`: a cheap vault served on a loopback port, its credentials, and clients.

A ``Served`` server is a real ``kmscli serve --port 0`` subprocess. It is
started once per module (starting costs about a second) and stopped with
SIGTERM at the module's end, when the fixture also checks that it exited 0,
that it never reported an internal error on stderr, and that ``kmscli audit
verify`` accepts the log its requests wrote.

Nothing here depends on how fast the machine is: waits end on an event (the
"serving on" line, a process exit) and ``HANG_GUARD_S`` only guards against hangs.
Every address is loopback.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest

from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, clean_env, kmscli_command

boto3 = pytest.importorskip("boto3")
botocore = pytest.importorskip("botocore")

from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from tests.aws.botocore_model import wire_errors  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CONTENT_TYPE = "application/x-amz-json-1.1"
SERVING = re.compile(r"kmscli: serving on (https?://127\.0\.0\.1:(\d+))")
STOPPED = "kmscli: stopped: every request in flight was answered and recorded"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
KEY_ARN = re.compile(r"arn:aws:kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):key/(?P<id>" + UUID.pattern + ")")
#: The region every test uses unless it says otherwise.
REGION = "us-east-1"
#: Environment variables that would steer an AWS client elsewhere than the test says.
_AWS_STEERING = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL_STS",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
                 "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


def aws_free_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points an AWS client at a profile, region, endpoint or proxy."""
    env = clean_env()
    for name in _AWS_STEERING:
        env.pop(name, None)
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


@pytest.fixture(scope="package", autouse=True)
def _no_stray_aws_configuration() -> Iterator[None]:
    """In-process boto3 clients read no profile, config file or proxy of the machine running the tests."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _AWS_STEERING:
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


# -- the server process ---------------------------------------------------------------------
class ServerProcess:
    """``kmscli serve ...`` as a subprocess; its stderr is read by a thread so it can never block."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*kmscli_command(), "serve", *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.lines: list[str] = []
        self.stdout = b""
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()
        self.url = self._await_serving()
        self.port = int(urlsplit(self.url).port or 0)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def _await_serving(self) -> str:
        while True:  # bounded: every get waits at most the hang guard, and stderr ends when the process does
            try:
                line = self._queue.get(timeout=HANG_GUARD_S)
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"kmscli serve said nothing for {HANG_GUARD_S} s: {self.lines}") from None
            if line is None:
                self.proc.wait(timeout=HANG_GUARD_S)
                raise AssertionError(f"kmscli serve exited {self.proc.returncode} before serving: {self.lines}")
            match = SERVING.fullmatch(line)
            if match:
                return match.group(1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int | None = signal.SIGTERM) -> int:
        """Send ``sig`` (None: none, the process is already stopping), wait for the exit; its status."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=HANG_GUARD_S)
            raise AssertionError(f"kmscli serve did not stop on SIGTERM: {self.lines}") from None
        self._reader.join(timeout=HANG_GUARD_S)
        self._out_reader.join(timeout=HANG_GUARD_S)
        return code

    def assert_clean_stop(self) -> None:
        code = self.stop()
        assert code == 0, (code, self.lines)
        assert self.stdout == b"", self.stdout  # serve writes data nowhere; messages go to stderr
        # No request ever failed inside the server (those are logged as "request ... failed" and answered 500).
        assert self.lines[0] == f"kmscli: serving on {self.url}", self.lines
        assert self.lines[-1] == STOPPED, self.lines
        assert not [line for line in self.lines if "failed" in line or "Traceback" in line], self.lines


@dataclass
class Credential:
    user: str
    access_key_id: str
    secret: str


@dataclass
class Served:
    """A running ``kmscli serve`` over a cheap vault, and ways to call it."""

    server: ServerProcess
    env: dict[str, str]
    vault: Path
    account: str
    creds: dict[str, Credential] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def audit_path(self) -> Path:
        return self.vault.parent / "audit.jsonl"

    # -- the CLI on the same vault
    def kms(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*kmscli_command(), *args], input=b"", capture_output=True, env=self.env,
                              timeout=HANG_GUARD_S, start_new_session=True)

    def add_credential(self, user: str) -> Credential:
        cred = create_credential(self.env, user)
        self.creds[user] = cred
        return cred

    def principal(self, user: str) -> str:
        return f"arn:aws:iam::{self.account}:user/{user}"

    # -- the audit log
    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def record(self, request_id: str) -> dict[str, Any]:
        found = [r for r in self.audit() if r.get("requestID") == request_id]
        assert len(found) == 1, (request_id, found)
        return found[0]

    # -- clients
    def client(self, user: str = "alice", region: str = REGION, endpoint: str | None = None, **kw: Any) -> Any:
        cred = self.creds[user]
        return make_client(endpoint or self.url, cred.access_key_id, cred.secret, region, **kw)

    def post(self, target: str | None, body: bytes = b"{}", *, user: str = "alice", region: str = REGION,
             path: str = "/", **kw: Any) -> Response:
        cred = self.creds[user]
        return signed_post(self.url, target, body, cred.access_key_id, cred.secret, region, path=path, **kw)

    def aws_env(self, user: str = "alice", **extra: str) -> dict[str, str]:
        """A subprocess environment in which AWS tools reach this server as ``user``."""
        cred = self.creds[user]
        return aws_free_env(**{"AWS_ACCESS_KEY_ID": cred.access_key_id, "AWS_SECRET_ACCESS_KEY": cred.secret,
                               "AWS_ENDPOINT_URL_KMS": self.url, **extra})


def run_kmscli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*kmscli_command(), *args], input=b"", capture_output=True, env=env,
                          timeout=HANG_GUARD_S, start_new_session=True)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.args, r.returncode, r.stdout.decode(errors="replace"),
                               r.stderr.decode(errors="replace"))
    return r


def create_credential(env: dict[str, str], user: str) -> Credential:
    lines = ok(run_kmscli(env, "credentials", "create", user)).stdout.decode().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    return Credential(user, values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"])


def make_vault(folder: Path, *init_args: str) -> tuple[dict[str, str], str]:
    """A cheap vault in ``folder``; (the kmscli environment for it, its account)."""
    env = clean_env(KMSCLI_VAULT=str(folder / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE)
    r = ok(run_kmscli(env, "init", *CHEAP_KDF, *init_args))
    account = re.search(rb"account (\d{12})", r.stderr)
    assert account, r.stderr
    return env, account.group(1).decode()


@contextlib.contextmanager
def serving(folder: Path, users: tuple[str, ...] = ("alice", "bob")) -> Iterator[Served]:
    """A vault with a credential per user, served until the block ends; then the stop and the log are checked."""
    env, account = make_vault(folder)
    creds = {user: create_credential(env, user) for user in users}
    server = ServerProcess(["--port", "0"], env)
    served = Served(server, env, folder / "vault.kms", account, creds)
    try:
        yield served
    finally:
        was_alive = server.alive()
        if was_alive:
            server.assert_clean_stop()
        else:
            server.stop()
    assert was_alive, f"kmscli serve died during the tests: {server.lines}"
    verify = run_kmscli(env, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert_no_request_logged_twice(served)


def assert_no_request_logged_twice(served: Served) -> None:
    ids = [r["requestID"] for r in served.audit() if "requestID" in r]
    assert len(ids) == len(set(ids)), [i for i in set(ids) if ids.count(i) > 1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server per test module, with credentials for alice and bob."""
    with serving(tmp_path_factory.mktemp("served")) as s:
        yield s


# -- clients --------------------------------------------------------------------------------
def make_client(endpoint: str, access_key_id: str, secret: str, region: str = REGION, **config: Any) -> Any:
    """boto3's KMS client as a user would make it; only its timeouts are hang guards instead of 60 s."""
    session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                                    region_name=region)
    cfg = Config(connect_timeout=HANG_GUARD_S, read_timeout=HANG_GUARD_S, **config)
    return session.client("kms", endpoint_url=endpoint, config=cfg)


def error_of(excinfo: pytest.ExceptionInfo[Any], code: str) -> dict[str, Any]:
    """The botocore error response of a failed call, checked to be ``code`` on HTTP 400 without retries."""
    response = excinfo.value.response
    assert response["Error"]["Code"] == code, response["Error"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400, response["ResponseMetadata"]
    assert response["ResponseMetadata"]["RetryAttempts"] == 0
    assert UUID.fullmatch(response["ResponseMetadata"]["RequestId"])
    return response  # type: ignore[no-any-return]


# -- raw HTTP ---------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str | None:
        return self.json().get("__type") if self.status != 200 else None

    @property
    def request_id(self) -> str:
        return self.headers["x-amzn-requestid"]


def sign(url: str, target: str | None, body: bytes, access_key_id: str, secret: str, region: str = REGION,
         *, path: str = "/", extra_headers: dict[str, str] | None = None,
         skew: timedelta = timedelta(0), method: str = "POST") -> dict[str, str]:
    """The headers botocore's SigV4Auth puts on this request, signed ``skew`` away from now."""
    parts = urlsplit(url)
    headers = {"Content-Type": CONTENT_TYPE, "Host": parts.netloc}
    if target is not None:
        headers["X-Amz-Target"] = target
    headers.update(extra_headers or {})
    request = AWSRequest(method=method, url=f"{parts.scheme}://{parts.netloc}{path}", data=body, headers=headers)
    when = datetime.now(UTC).replace(tzinfo=None) + skew
    with mock.patch("botocore.auth.get_current_datetime", lambda *a, **k: when):
        SigV4Auth(Credentials(access_key_id, secret), "kms", region).add_auth(request)
    return dict(request.headers.items())


def send(url: str, headers: dict[str, str], body: bytes, *, path: str = "/", method: str = "POST") -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=HANG_GUARD_S)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def signed_post(url: str, target: str | None, body: bytes, access_key_id: str, secret: str,
                region: str = REGION, *, path: str = "/", extra_headers: dict[str, str] | None = None,
                skew: timedelta = timedelta(0)) -> Response:
    headers = sign(url, target, body, access_key_id, secret, region, path=path, extra_headers=extra_headers,
                   skew=skew)
    return send(url, headers, body, path=path)


def op(name: str) -> str:
    return f"TrentService.{name}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def assert_aws_error(r: Response, name: str) -> dict[str, Any]:
    """An AWS JSON 1.1 error answer: 400, both places name ``name``, a message, the usual headers."""
    assert r.status == 400, (r.status, r.body)
    assert r.headers.get("content-type") == CONTENT_TYPE, r.headers
    assert r.headers.get("x-amzn-errortype") == name, (r.headers, r.body)
    doc = r.json()
    assert set(doc) == {"__type", "message"}, doc
    assert doc["__type"] == name, doc
    assert isinstance(doc["message"], str) and doc["message"], doc
    assert UUID.fullmatch(r.request_id), r.headers
    return doc  # type: ignore[no-any-return]


def assert_no_nulls(value: Any, where: str = "$") -> None:
    assert value is not None, f"null at {where}"
    if isinstance(value, dict):
        for k, v in value.items():
            assert_no_nulls(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_no_nulls(v, f"{where}[{i}]")


def raw_connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_S)


@dataclass
class WireLog:
    """Problems with any response body a client received, in order (botocore's after-call hook sees each one,
    an error's too, before the client raises); ``seen`` names every operation answered."""

    problems: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def __call__(self, http_response: Any, model: Any, **_: Any) -> None:
        name = model.name
        self.seen.append(name)
        try:
            doc = json.loads(http_response.content)
        except ValueError:
            self.problems.append(f"{name}: the body is not JSON: {http_response.content[:200]!r}")
            return
        if http_response.status_code == 200:
            self.problems += [f"{name}: {p}" for p in wire_errors(name, doc)]
            return
        error_type = http_response.headers.get("x-amzn-errortype")
        if (http_response.status_code != 400 or not isinstance(doc, dict) or set(doc) != {"__type", "message"}
                or doc["__type"] != error_type or not isinstance(doc["message"], str)):
            self.problems.append(f"{name}: not AWS's error answer: {http_response.status_code} {error_type} {doc}")
