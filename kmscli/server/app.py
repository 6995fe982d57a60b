"""`kmscli serve`'s ASGI application: authenticate, route, call the service, answer.

Each request runs on the event loop's own thread, one at a time: its work is
Python (the signature check, the policy, AES-GCM on small blobs), which more
threads would only pass the GIL around (measured: 16 threads cost 1.9 ms of
CPU per Encrypt, one thread 1.1 ms). What waits is the disk: the request's
audit record is written under the log's lock at once, and its ``fdatasync``
is left to a thread that syncs every record waiting at that moment in one call
(audit.deferring_sync); the answer is sent only once its record is on disk.
Every request gets an ``x-amzn-RequestId``, the ``requestID`` of its audit
record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import errors
from . import wire

_GONE = object()
#: Paths that reset an ephemeral server, as moto's server mode and kmscli name them.
RESET_PATHS = frozenset({"/moto-api/reset", "/_kmscli/reset"})


def _now() -> datetime:
    return datetime.now(UTC)


class Backend:
    """Where requests go: a vault (serve) or a throw-away one (serve --ephemeral)."""

    def verify(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        raise NotImplementedError  # pragma: no cover - interface

    def service(self, identity: Any, source_ip: str | None, user_agent: str | None, request_id: str) -> Any:
        raise NotImplementedError  # pragma: no cover - interface

    def reset(self) -> bool:
        """Wipe all state (ephemeral only); False when this backend keeps its state."""
        return False

    def close(self) -> None:
        pass


class VaultBackend(Backend):
    """A passphrase vault: signatures checked against the credentials sealed in it."""

    def __init__(self, vault_path: Path, keys: Any, *, audit_path: Path | None = None,
                 clock: Callable[[], datetime] = _now, alive: Callable[[], bool] | None = None) -> None:
        from ..vault.store import VaultStore
        from .sigv4 import SigV4Verifier

        self.vault_path = vault_path
        self.keys = keys
        self.audit_path = audit_path
        self.clock = clock
        self.store = VaultStore(vault_path, keep_opened=True)
        self._lock = threading.Lock()
        self._verifier = SigV4Verifier(self._secret_for)
        #: Served through a session: whether it still lasts (checked before every request).
        self.alive = alive

    def _secret_for(self, access_key_id: str) -> tuple[str, str] | None:
        """(secret, user name) of an active access key, as the vault holds it now (one record read)."""
        with self._lock, contextlib.closing(self.store.open(self.keys)) as ov:
            entry = ov.get_credential(access_key_id)
        if entry is None or entry.get("Status") != "Active":
            return None
        return entry["SecretAccessKey"], entry["UserName"]

    def verify(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        if self.alive is not None and not self.alive():
            # Nothing done through a session outlives it: the server stops, and
            # no request slips in between the session's end and the stop.
            raise errors.InvalidSessionException("the session this server runs through has ended")
        identity = self._verifier.verify(method, target, headers, body, now=self.clock())
        if "x-amz-target" not in identity.signed_headers and _header(headers, b"x-amz-target") is not None:
            # Else a request captured in its 5-minute window could be replayed as
            # another operation with the same body (DescribeKey's {"KeyId"} as
            # ScheduleKeyDeletion's). botocore and the Go SDK always sign it.
            raise errors.InvalidSignatureException("'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.")
        return identity

    def service(self, identity: Any, source_ip: str | None, user_agent: str | None, request_id: str) -> Any:
        from ..service import Kms

        caller = _served_caller(identity.principal, identity, source_ip, user_agent, request_id)
        return Kms(self.vault_path, self.keys, caller=caller, audit_path=self.audit_path, region=identity.region,
                   store=self.store)

    def close(self) -> None:
        self.store.close()


class EphemeralBackend(Backend):
    """`serve --ephemeral`: a vault that lives in memory for the server's life, any signature accepted.

    The state is a real vault (the same service, rules and audit log) in a
    private folder on a memory file system (/dev/shm when there is one), under
    a random key that never leaves this process; it is removed on reset and
    at exit.
    """

    DEFAULT_ACCOUNT = "123456789012"

    def __init__(self, account: str = DEFAULT_ACCOUNT, seed: Callable[[Any], None] | None = None) -> None:
        from .sigv4 import SigV4Verifier

        self.account = account
        self._seed = seed
        self._lock = threading.Lock()
        self._verifier = SigV4Verifier.accept_any()
        self._state: _State | None = None
        self._old: _State | None = None
        self._make()

    def _make(self) -> None:
        """A new empty (or seeded) vault, swapped in whole: a request sees the old state or the new."""
        import tempfile

        from ..service import Kms
        from ..vault import format as F
        from ..vault.store import FixedKeySource, PassphraseKeySource, VaultStore

        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        folder = Path(tempfile.mkdtemp(prefix="kmscli-ephemeral-", dir=base))
        secret = os.urandom(32).hex().encode()
        vault = folder / "vault.kms"
        # A random 256-bit passphrase: the KDF's cost adds nothing to it.
        opener = PassphraseKeySource(lambda: secret)
        Kms(vault, opener).CreateVault(F.KdfParams(memory_kib=8 * 1024, time_cost=1, parallelism=1),
                                       Account=self.account)
        store = VaultStore(vault, keep_opened=True)
        with contextlib.closing(store.open(opener)) as opened:
            state = _State(vault, FixedKeySource(opened.vault_key), folder, store)
        if self._seed is not None:
            self._seed(_Seeding(self, state))
        with self._lock:
            # Requests still running on the state before last are long done; the
            # one before is kept until the next reset, so none fails mid-way.
            old, self._old = self._old, self._state
            self._state = state
        if old is not None:
            old.remove()

    def verify(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        return self._verifier.verify(method, target, headers, body, now=_now())

    def service(self, identity: Any, source_ip: str | None, user_agent: str | None, request_id: str) -> Any:
        from ..service import Kms

        # Any credentials are accepted: the caller is the access key id itself.
        caller = _served_caller(identity.access_key_id, identity, source_ip, user_agent, request_id)
        state = self._state
        assert state is not None
        return Kms(state.vault_path, state.keys, caller=caller, region=identity.region, store=state.store)

    def reset(self) -> bool:
        self._make()
        return True

    def close(self) -> None:
        with self._lock:
            states, self._state, self._old = (self._state, self._old), None, None
        for state in states:
            if state is not None:
                state.remove()


@dataclass
class _State:
    """One ephemeral vault: its file, its key, the private folder holding it and its log."""

    vault_path: Path
    keys: Any
    folder: Path
    store: Any

    def remove(self) -> None:
        import shutil

        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class _Seeding:
    """What a seed sees while the new state is built: the backend's service, on that state."""

    def __init__(self, backend: EphemeralBackend, state: _State) -> None:
        self.backend, self.state = backend, state

    def service(self) -> Any:
        from ..service import Caller, Kms

        caller = Caller(user="seed", uid=None, pid=None, host=_hostname())
        return Kms(self.state.vault_path, self.state.keys, caller=caller, region="local",
                   store=self.state.store)


@functools.cache
def _hostname() -> str:
    import socket

    return socket.gethostname()


def _served_caller(user: str, identity: Any, source_ip: str | None, user_agent: str | None,
                   request_id: str) -> Any:
    """The caller of a verified request: the user its access key belongs to, as the record names it."""
    from ..service import Caller

    return Caller(user=user, uid=None, pid=None, host=_hostname(), access_key_id=identity.access_key_id,
                  source_ip=source_ip, user_agent=user_agent, request_id=request_id)


class KmsApp:
    """The ASGI application. ``backend`` decides where requests go; nothing here decides what they may do."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.syncs = _Syncs()
        self.in_flight = 0
        #: Set when the vault can no longer be unlocked with what the server holds
        #: (passwd changed the passphrase and the vault key): the server stops, as
        #: passwd ends every session, instead of answering 500 from then on.
        self.stop_requested = False

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = str(uuid.uuid4())
        body = await self._body(receive)
        if body is _GONE:
            return  # the client hung up before its body was whole: nothing to answer, nothing done
        if body is None:
            await self._send(send, request_id, wire.Answer(413, b'{"__type":"RequestEntityTooLargeException",'
                                                                b'"message":"the request body is over 1 MiB"}',
                                                           [("Content-Type", wire.CONTENT_TYPE),
                                                            ("X-Amzn-ErrorType", "RequestEntityTooLargeException"),
                                                            ("Connection", "close")]))
            return
        from ..audit import deferring_sync

        self.in_flight += 1
        try:
            with deferring_sync() as unsynced:
                answer = self.handle(scope, body, request_id)
            if unsynced:
                answer = await self._synced(unsynced, answer, request_id)
        finally:
            self.in_flight -= 1
        await self._send(send, request_id, answer)

    async def _synced(self, fds: list[int], answer: wire.Answer, request_id: str) -> wire.Answer:
        """``answer`` once the records written for it are on disk; an AWS 500 if they cannot be synced."""
        error = await self.syncs.wait(fds)
        if error is None:
            return answer
        sys.stderr.write(f"kmscli: serve: request {request_id}: its audit record could not be synced: {error}\n")
        return wire.failure(errors.KMSInternalException(
            f"the request's audit record could not be written to disk (request {request_id}); nothing was "
            "released"), request_id)

    def handle(self, scope: dict[str, Any], body: bytes, request_id: str) -> wire.Answer:
        """One request, in a worker thread: authenticate, route, call, render. Never raises."""
        headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        path = scope.get("raw_path") or scope.get("path", "/").encode("latin-1")
        target = path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            if scope.get("method") == "POST" and scope.get("path") in RESET_PATHS and self.backend.reset():
                return wire.Answer(200, b'{"status":"reset"}', [("Content-Type", "application/json")])
            identity = self.backend.verify(scope.get("method", ""), target, headers, body)
            if scope.get("method") != "POST":
                raise errors.UnknownOperationException("KMS answers POST requests only")
            client = scope.get("client")
            kms = self.backend.service(identity, client[0] if client else None,
                                       _header(headers, b"user-agent"), request_id)
            try:
                operation = wire.operation_of(_header(headers, b"x-amz-target"))
            except errors.KmsError as e:  # signed, so recorded like every request that names its caller
                kms.record_refusal("UnknownOperation", e)
                raise
            return wire.ok(operation, wire.call(kms, operation, body))
        except errors.UnlockError as e:
            # A session's end stops the server by itself (serve polls it); this is the vault's key changing.
            if not self.stop_requested and not isinstance(e, errors.InvalidSessionException):
                self.stop_requested = True
                sys.stderr.write("kmscli: serve: the vault can no longer be unlocked with the key this server holds "
                                 "(was the passphrase changed?); stopping: start 'kmscli serve' again\n")
            return wire.failure(e, request_id)
        except errors.KmsError as e:
            return wire.failure(e, request_id)
        except Exception as e:  # the last line of defence: an AWS 500, the details on the server's stderr
            sys.stderr.write(f"kmscli: serve: request {request_id} failed: {type(e).__name__}: {e}\n")
            return wire.failure(errors.KMSInternalException(f"internal error (request {request_id})"), request_id)

    @staticmethod
    async def _body(receive: Callable[..., Any]) -> Any:
        """The whole body; None when it is over the limit, _GONE when the client left before sending it all."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > wire.MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _send(send: Callable[..., Any], request_id: str, answer: wire.Answer) -> None:
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        headers += [(b"x-amzn-requestid", request_id.encode()), (b"content-length", str(len(answer.body)).encode())]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.syncs.drain()  # the records of requests in flight reach the disk
                self.syncs.close()
                self.backend.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Syncs:
    """Group commit on the event loop: one ``fdatasync`` call in a thread at a time, for every
    request that wrote a record before it started (audit.deferring_sync).

    Requests arriving while a sync runs wait for the next one, which starts as
    soon as it ends, with all of them: one thread hand-off per batch, not per request.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[list[int], asyncio.Future[OSError | None]]] = []
        self._running: asyncio.Future[list[OSError | None]] | None = None
        self._kicked = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kmscli-audit-sync")

    async def wait(self, fds: list[int]) -> OSError | None:
        """None once every descriptor's file is synced (they are closed), else the error."""
        done: asyncio.Future[OSError | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((fds, done))
        if self._running is None and not self._kicked:
            # Not at once: after the requests the loop has ready now, so that one
            # sync covers all of them rather than the first one alone.
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._kick)
        return await done

    def _kick(self) -> None:
        self._kicked = False
        if self._running is None and self._waiting:
            self._start()

    def _start(self) -> None:
        from ..audit import sync_batch

        batch, self._waiting = self._waiting, []
        running = asyncio.get_running_loop().run_in_executor(self._executor, sync_batch, [fds for fds, _ in batch])
        self._running = running

        def finished(f: asyncio.Future[list[OSError | None]]) -> None:
            self._running = None
            failed = f.exception()
            outcome = f.result() if failed is None else [OSError(str(failed))] * len(batch)
            for (_, done), error in zip(batch, outcome, strict=True):
                if not done.done():
                    done.set_result(error)
            if self._waiting:
                self._start()

        running.add_done_callback(finished)

    async def drain(self) -> None:
        """Until no sync runs or waits."""
        while self._running is not None or self._kicked:
            if self._running is None:
                await asyncio.sleep(0)  # the kick is due in this loop turn
            else:
                await asyncio.wait([self._running])

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None
