"""A served answer leaves only once its audit record is on disk, with records synced in batches.

Requests run on the event loop's thread and write their records at once; the
``fdatasync`` runs in a thread, one call for every request waiting at that
moment. These tests drive the ASGI application in-process, with the sync
held back, and look at what has been sent (events and counts, not time).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kmscli import audit
from kmscli.server.app import EphemeralBackend, KmsApp
from tests.conftest import HANG_GUARD_S


def _scope_and_body(target: str, params: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    request = AWSRequest("POST", "http://127.0.0.1:8080/", data=json.dumps(params).encode(),
                         headers={"X-Amz-Target": f"TrentService.{target}",
                                  "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials("AKIAEXAMPLE", "secret"), "kms", "us-east-1").add_auth(request)
    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
    headers.append((b"host", b"127.0.0.1:8080"))
    return ({"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 50000)}, request.body)


async def _call(app: KmsApp, target: str, params: dict[str, Any], sent: list[dict[str, Any]]) -> None:
    scope, body = _scope_and_body(target, params)
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(HANG_GUARD_S)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)


@pytest.fixture
def app() -> Any:
    backend = EphemeralBackend()
    application = KmsApp(backend)
    yield application
    application.syncs.close()
    backend.close()


def test_no_answer_leaves_before_its_record_is_synced(app: KmsApp, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        created: list[dict[str, Any]] = []
        await _call(app, "CreateKey", {}, created)
        key_id = json.loads(created[-1]["body"])["KeyMetadata"]["KeyId"]

        syncing, release = threading.Event(), threading.Event()
        real = audit._sync

        def held(fd: int) -> None:
            syncing.set()
            assert release.wait(HANG_GUARD_S)
            real(fd)

        monkeypatch.setattr(audit, "_sync", held)
        sent: list[dict[str, Any]] = []
        task = asyncio.create_task(_call(app, "Encrypt", {"KeyId": key_id,
                                                          "Plaintext": base64.b64encode(b"x" * 100).decode()}, sent))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, syncing.wait, HANG_GUARD_S)
        for _ in range(20):  # the loop is free meanwhile, and still sends nothing for this request
            await asyncio.sleep(0)
        assert sent == []
        # The record is already written (another process would see it), only not yet synced.
        log = app.backend._state.folder / "audit.jsonl"
        assert b'"eventName":"Encrypt"' in log.read_bytes()
        release.set()
        await asyncio.wait_for(task, HANG_GUARD_S)
        assert sent[0]["status"] == 200

    asyncio.run(main())


def test_requests_waiting_together_share_one_sync(app: KmsApp, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        created: list[dict[str, Any]] = []
        await _call(app, "CreateKey", {}, created)
        key_id = json.loads(created[-1]["body"])["KeyMetadata"]["KeyId"]

        calls: list[int] = []
        first, release = threading.Event(), threading.Event()
        real = audit._sync

        def counted(fd: int) -> None:
            calls.append(fd)
            first.set()
            assert release.wait(HANG_GUARD_S)
            real(fd)

        monkeypatch.setattr(audit, "_sync", counted)
        answers: list[list[dict[str, Any]]] = [[] for _ in range(9)]
        params = {"KeyId": key_id, "NumberOfBytes": 32}
        tasks = [asyncio.create_task(_call(app, "GenerateDataKey", params, answers[0]))]
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, first.wait, HANG_GUARD_S)  # the first sync is under way
        # Eight more arrive while it runs: they wait for the next sync, all together.
        tasks += [asyncio.create_task(_call(app, "GenerateDataKey", params, answers[i])) for i in range(1, 9)]
        for _ in range(200):
            await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD_S)
        assert [a[0]["status"] for a in answers] == [200] * 9
        assert len(calls) == 2, calls  # one for the first request, one for the eight behind it

    asyncio.run(main())


def test_requests_ready_in_the_same_loop_turn_share_the_first_sync(app: KmsApp,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync starts once the loop has run the requests it has ready, not after the first of them."""
    async def main() -> None:
        created: list[dict[str, Any]] = []
        await _call(app, "CreateKey", {}, created)
        key_id = json.loads(created[-1]["body"])["KeyMetadata"]["KeyId"]

        batches: list[int] = []
        real = audit.sync_batch

        def counted(batch: list[list[int]]) -> list[OSError | None]:
            batches.append(len(batch))
            return real(batch)

        monkeypatch.setattr(audit, "sync_batch", counted)
        answers: list[list[dict[str, Any]]] = [[] for _ in range(6)]
        params = {"KeyId": key_id, "NumberOfBytes": 32}
        tasks = [asyncio.create_task(_call(app, "GenerateDataKey", params, answers[i])) for i in range(6)]
        await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD_S)
        assert [a[0]["status"] for a in answers] == [200] * 6
        assert batches == [6]  # six requests, one fdatasync round
        await app.syncs.drain()

    asyncio.run(main())


def test_a_record_that_cannot_be_synced_is_an_error_and_releases_nothing(app: KmsApp,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        created: list[dict[str, Any]] = []
        await _call(app, "CreateKey", {}, created)
        key_id = json.loads(created[-1]["body"])["KeyMetadata"]["KeyId"]

        def failing(fd: int) -> None:
            raise OSError(5, os.strerror(5))

        monkeypatch.setattr(audit, "_sync", failing)
        sent: list[dict[str, Any]] = []
        await _call(app, "GenerateDataKey", {"KeyId": key_id, "NumberOfBytes": 32}, sent)
        assert sent[0]["status"] == 500
        body = json.loads(sent[1]["body"])
        assert body["__type"] == "KMSInternalException" and "Plaintext" not in body

    asyncio.run(main())
