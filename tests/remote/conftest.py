"""Remote mode (``--endpoint`` / ``KMSCLI_ENDPOINT``): the real ``kmscli`` against KMSes it does not own.

Two KMSes, each started once for the package and stopped at its end:

- moto's server (``moto_server``), the AWS emulator test suites use, on a free
  loopback port; ready when it answers HTTP (polled, never a fixed sleep);
- a second ``kmscli serve`` on a cheap vault of its own, reached with access
  keys made by ``kmscli credentials create`` (tests/serve/conftest.py's
  ``serving``: at its end the server must stop cleanly and its audit log verify).

The ``remote`` fixture is parametrized over both. Each test gets a
:class:`Remote` bound to a region of its own, so ``keys list`` shows exactly
the keys the test made, and to an empty HOME (XDG folders inside it, and the
working directory). When the test ends, every HOME kmscli ran in must still be
empty: in remote mode nothing is written locally, no vault, no audit log.

moto lacks some of AWS KMS. A test of a feature moto lacks is skipped on moto
with :meth:`Remote.lacks`, naming the gap (``MOTO_GAPS``). Where moto leaves out
a member that botocore's model makes optional (CreationDate of aliases and
grants, RotationPeriodInDays, KeyMaterialId), kmscli's tables must still work:
the same tests run on moto and pass.

For crypto round trips (encrypt, decrypt, reencrypt, inspect) use
``remote.run(...)`` with ``input=`` and absolute paths anywhere in ``tmp_path``
but the HOME (``tmp_path / "remote-home"``, also the working directory),
``remote.env(home)`` for a subprocess of your own, ``remote.run_all(...)`` for
independent commands side by side, and ``remote.create_key(...)`` for a key ARN.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG_GUARD_S, kmscli_command, ok

pytest.importorskip("botocore")

import botocore.session  # noqa: E402

from tests.aws.test_cli_json import check  # noqa: E402
from tests.serve.conftest import VENV_BIN, Served, aws_free_env, serving  # noqa: E402

MOTO_SERVER = VENV_BIN / "moto_server"
#: moto's account unless told otherwise (its default for any access key).
MOTO_ACCOUNT = "123456789012"
#: Regions handed out one per test; us-east-1 (the fallback) and us-west-2 are left to the tests that name them.
REGIONS = tuple(r for r in botocore.session.get_session().get_available_regions("kms")
                if r not in ("us-east-1", "us-west-2"))

#: What moto does not do as AWS KMS does: a test of it is skipped on moto with this reason.
MOTO_GAPS = {
    "key-state": "moto does not refuse cryptographic operations on a disabled or pending-deletion key",
    "credentials": "moto accepts any access key and secret and checks no signature",
    "principals": "moto's key policies ignore Principal (a Deny denies every caller) and it has no Allow check",
}
#: moto answers HTTP 500 (a KeyError inside it) when these name a key by its ARN: tests give them the key id.
MOTO_KEY_ID_ONLY = "EnableKey, DisableKey, ScheduleKeyDeletion, CancelKeyDeletion"


# -- moto's server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT``; a port another process took meanwhile means another try."""

    def __init__(self, log: Path) -> None:
        self.log = log
        for _ in range(5):
            port = free_port()
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(
                    [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=aws_free_env(), start_new_session=True)
            if self._ready(port):
                self.url = f"http://127.0.0.1:{port}"
                return
        raise AssertionError(f"moto_server did not start: {log.read_text(errors='replace')[-2000:]}")

    def _ready(self, port: int) -> bool:
        """Poll until moto answers HTTP (True) or exits (False: the port was taken)."""
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_S)
                try:
                    conn.request("GET", "/moto-api/")
                    if conn.getresponse().status == 200:
                        return True
                finally:
                    conn.close()
            except OSError:
                pass  # not listening yet
            try:  # the poll interval: returns at once if moto exits
                self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            return False

    def reset(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=HANG_GUARD_S)
        try:
            conn.request("POST", "/moto-api/reset")
            assert conn.getresponse().status == 200
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=HANG_GUARD_S)
            raise AssertionError("moto_server did not stop on SIGTERM") from None


# -- the two KMSes ----------------------------------------------------------------------------
@dataclass
class Backend:
    """One KMS for the package: where it is, whose keys, and the regions not yet handed out."""

    name: str
    url: str
    account: str
    #: user -> (access key id, secret)
    users: dict[str, tuple[str, str]]
    served: Served | None = None
    moto: MotoServer | None = None
    handed_out: int = 0

    def next_region(self) -> str:
        """A region no earlier test used, so listings hold only the test's keys."""
        n, self.handed_out = self.handed_out, self.handed_out + 1
        if n % len(REGIONS) == 0 and n and self.moto is not None:
            self.moto.reset()  # every region used: moto forgets the earlier tests' keys and starts again
        if n >= len(REGIONS) and self.moto is None:
            return f"zz-test-{n}"  # kmscli serve takes any region name
        return REGIONS[n % len(REGIONS)]


@pytest.fixture(scope="package")
def moto_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if not MOTO_SERVER.exists():
        pytest.skip("moto's server is not installed (pip install 'moto[server]')")
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield Backend("moto", server.url, MOTO_ACCOUNT,
                      {"alice": ("testing", "testing"), "bob": ("testing-bob", "testing-bob")}, moto=server)
    finally:
        server.stop()


@pytest.fixture(scope="package")
def serve_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with serving(tmp_path_factory.mktemp("remote-serve")) as served:
        yield Backend("serve", served.url, served.account,
                      {u: (c.access_key_id, c.secret) for u, c in served.creds.items()}, served=served)


# -- a test's view of one ---------------------------------------------------------------------
@dataclass
class Remote:
    """One KMS as a test uses it: its own region, its own empty HOME, and kmscli in remote mode."""

    backend: Backend
    region: str
    home: Path
    node: Any
    homes: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def account(self) -> str:
        return self.backend.account

    @property
    def is_moto(self) -> bool:
        return self.backend.name == "moto"

    @property
    def served(self) -> Served | None:
        return self.backend.served

    def principal(self, user: str) -> str:
        return f"arn:aws:iam::{self.account}:user/{user}"

    def arn(self, key_id: str, region: str | None = None) -> str:
        return f"arn:aws:kms:{region or self.region}:{self.account}:key/{key_id}"

    def env(self, home: Path | None = None, *, user: str = "alice", region: str | None = None,
            endpoint: bool = True) -> dict[str, str]:
        """The environment of a kmscli subprocess in remote mode: ``KMSCLI_ENDPOINT``, ``KMSCLI_REGION``, the
        user's access key, HOME (and the XDG folders) in ``home``, no AWS configuration from this machine.
        ``endpoint=False`` leaves KMSCLI_ENDPOINT out (for ``--endpoint``)."""
        home = self.home if home is None else home
        if home not in self.homes:
            self.homes.append(home)
        akid, secret = self.backend.users[user]
        return remote_env(home, self.url if endpoint else None, AWS_ACCESS_KEY_ID=akid, AWS_SECRET_ACCESS_KEY=secret,
                          KMSCLI_REGION=region or self.region)

    def run(self, *args: str, input: bytes | None = None, home: Path | None = None, user: str = "alice",
            region: str | None = None, env_update: dict[str, str] | None = None, env_remove: tuple[str, ...] = (),
            prefix: tuple[str, ...] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``kmscli ARGS`` in remote mode (see :meth:`env`), run in the HOME; stdin empty unless ``input``.
        ``env_remove`` takes variables out of that environment, then ``env_update`` sets some."""
        env = self.env(home, user=user, region=region)
        for name in env_remove:
            env.pop(name, None)
        env.update(env_update or {})
        return subprocess.run([*prefix, *kmscli_command(), *args], input=input if input is not None else b"",
                              capture_output=True, env=env, cwd=cwd or env["HOME"], timeout=HANG_GUARD_S,
                              start_new_session=True)

    def run_all(self, *calls: tuple[str, ...], home: Path | None = None) -> list[subprocess.CompletedProcess]:
        """Independent commands (the reads after a change) side by side; their results in order."""
        self.env(home)  # the HOME is known before the threads start
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            return list(pool.map(lambda args: self.run(*args, home=home), calls))

    def create_key(self, *args: str, home: Path | None = None, region: str | None = None) -> str:
        """``keys create ARGS --json``, checked against botocore's CreateKey; the new key's ARN."""
        return str(self.create_key_metadata(*args, home=home, region=region)["Arn"])

    def create_key_metadata(self, *args: str, home: Path | None = None, region: str | None = None
                            ) -> dict[str, Any]:
        """``keys create ARGS --json``, checked against botocore's CreateKey; its KeyMetadata."""
        meta = aws_json("CreateKey", ok(self.run("keys", "create", *args, "--json", home=home, region=region)
                                        ).stdout)["KeyMetadata"]
        assert meta["Arn"] == f"arn:aws:kms:{region or self.region}:{self.account}:key/{meta['KeyId']}", meta
        return meta  # type: ignore[no-any-return]

    def lacks(self, gap: str) -> None:
        """Skip on moto, which lacks this (MOTO_GAPS names how)."""
        if self.is_moto:
            pytest.skip(f"moto gap: {MOTO_GAPS[gap]}")


def remote_env(home: Path, endpoint: str | None, **extra: str) -> dict[str, str]:
    """A kmscli environment with HOME, the XDG folders and the working directory's home in ``home``, no AWS
    configuration from this machine, and ``KMSCLI_ENDPOINT=endpoint`` (unless None)."""
    env = aws_free_env(HOME=str(home), XDG_DATA_HOME=str(home / ".local/share"),
                       XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
                       XDG_STATE_HOME=str(home / ".local/state"), XDG_RUNTIME_DIR=str(home / "run"), **extra)
    if endpoint is not None:
        env["KMSCLI_ENDPOINT"] = endpoint
    return env


def assert_empty(home: Path) -> None:
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []
    assert left == [], f"remote mode wrote into {home}: {left}"


def _view(request: pytest.FixtureRequest, tmp_path: Path, backend: Backend) -> Iterator[Remote]:
    home = tmp_path / "remote-home"
    home.mkdir()
    view = Remote(backend, backend.next_region(), home, request.node)
    yield view
    for h in view.homes:
        assert_empty(h)


@pytest.fixture(params=["moto", "serve"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    """kmscli in remote mode against moto's server, then against a second ``kmscli serve``."""
    yield from _view(request, tmp_path, request.getfixturevalue(f"{request.param}_backend"))


@pytest.fixture
def serve_remote(request: pytest.FixtureRequest, tmp_path: Path, serve_backend: Backend) -> Iterator[Remote]:
    """The ``kmscli serve`` KMS alone, for what happens in kmscli whichever KMS answers."""
    yield from _view(request, tmp_path, serve_backend)


@pytest.fixture
def closed_endpoint() -> Iterator[str]:
    """An http URL on 127.0.0.1 where nothing listens: a socket bound there, never listening, refuses every
    connection, and no other process can take the port meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """An empty HOME that must still be empty when the test ends."""
    h = tmp_path / "home"
    h.mkdir()
    yield h
    assert_empty(h)


def run_in(home: Path, env: dict[str, str], *args: str, input: bytes | None = None,
           prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``kmscli ARGS`` with ``env``, in ``home``."""
    return subprocess.run([*prefix, *kmscli_command(), *args], input=input if input is not None else b"",
                          capture_output=True, env=env, cwd=home, timeout=HANG_GUARD_S, start_new_session=True)


def aws_json(operation: str, stdout: bytes) -> dict[str, Any]:
    """A ``--json`` document, checked against botocore's model of ``operation``'s response (tests/aws)."""
    check(operation, stdout)
    doc = json.loads(stdout)
    assert isinstance(doc, dict)
    return doc


def when(timestamp: str) -> str:
    """A ``--json`` timestamp as kmscli's tables print it: ISO 8601 UTC to the second, with a Z."""
    return datetime.fromisoformat(timestamp).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lines(r: subprocess.CompletedProcess) -> list[str]:
    return r.stdout.decode().splitlines()
