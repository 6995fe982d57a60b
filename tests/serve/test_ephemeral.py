"""`kmscli serve --ephemeral`: a KMS for test suites, in memory, any SigV4 credentials, moto's reset hook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.serve.conftest import (
    CONTENT_TYPE,
    ServerProcess,
    assert_aws_error,
    aws_free_env,
    error_of,
    make_client,
    op,
    send,
    signed_post,
)

MOTO_AKID, MOTO_SECRET = "testing", "testing"  # what moto's documentation tells suites to set


def ephemeral_env(home: Path) -> dict[str, str]:
    """No vault, no passphrase, and a home of its own (nothing may be written there)."""
    return aws_free_env(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ephemeral-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(["--ephemeral", "--port", "0"], ephemeral_env(home), cwd=home)
    try:
        yield s
    finally:
        alive = s.alive()
        if alive:
            s.assert_clean_stop()
        else:
            s.stop()
    assert alive, s.lines
    assert list(home.iterdir()) == [], list(home.rglob("*"))  # no vault, no log, no file of any kind


def reset(server: ServerProcess, path: str = "/moto-api/reset") -> None:
    r = send(server.url, {}, b"", path=path)
    assert r.status == 200, (r.status, r.body)


def test_any_credentials_work_and_the_account_is_motos(server: ServerProcess) -> None:
    reset(server)
    for akid, secret in (("AKIDEXAMPLE", "secret"), (MOTO_AKID, MOTO_SECRET), ("AKIAIOSFODNN7EXAMPLE", "x" * 40)):
        kms = make_client(server.url, akid, secret, "us-east-1")
        md = kms.create_key(Description=akid)["KeyMetadata"]
        assert md["AWSAccountId"] == "123456789012"
        assert md["Arn"] == f"arn:aws:kms:us-east-1:123456789012:key/{md['KeyId']}"
    # Every caller sees the same keys (one account), region by region.
    keys = make_client(server.url, "someone", "else", "us-east-1").list_keys()["Keys"]
    assert len(keys) == 3
    assert make_client(server.url, "someone", "else", "eu-west-1").list_keys()["Keys"] == []


def test_a_moto_style_flow(server: ServerProcess) -> None:
    """What a moto-based suite does, against kmscli instead of moto_server, unchanged."""
    reset(server)
    kms = make_client(server.url, MOTO_AKID, MOTO_SECRET, "us-east-1")
    key_id = kms.create_key(Description="my key", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/my-key", TargetKeyId=key_id)
    blob = kms.encrypt(KeyId="alias/my-key", Plaintext=b"data")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"data"
    assert [k["KeyId"] for k in kms.list_keys()["Keys"]] == [key_id]
    assert [a["AliasName"] for a in kms.list_aliases()["Aliases"]] == ["alias/my-key"]
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "k", "TagValue": "v"}])
    assert kms.list_resource_tags(KeyId=key_id)["Tags"] == [{"TagKey": "k", "TagValue": "v"}]
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    error_of(e, "KMSInvalidStateException")


@pytest.mark.parametrize("path", ["/moto-api/reset", "/_kmscli/reset"])
def test_reset_wipes_every_key_and_alias(server: ServerProcess, path: str) -> None:
    reset(server)
    kms = make_client(server.url, MOTO_AKID, MOTO_SECRET, "us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/before-reset", TargetKeyId=key_id)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"gone")["CiphertextBlob"]
    r = send(server.url, {}, b"", path=path)
    assert r.status == 200 and r.json() == {"status": "reset"}
    assert kms.list_keys()["Keys"] == []
    assert kms.list_aliases()["Aliases"] == []
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId=key_id)
    error_of(e, "NotFoundException")
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob)
    assert e.value.response["Error"]["Code"] in ("InvalidCiphertextException", "NotFoundException")
    # The alias name is free again.
    kms.create_alias(AliasName="alias/before-reset", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])


def test_the_caller_is_the_access_key_id_as_an_iam_user(server: ServerProcess) -> None:
    reset(server)
    root = make_client(server.url, "admin", "x", "us-east-1")
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "All", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "NotMallory", "Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::123456789012:user/MALLORY"},
         "Action": "kms:Decrypt", "Resource": "*"}]})
    key_id = root.create_key(Policy=policy)["KeyMetadata"]["KeyId"]
    blob = root.encrypt(KeyId=key_id, Plaintext=b"p")["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        make_client(server.url, "MALLORY", "whatever", "us-east-1").decrypt(CiphertextBlob=blob)
    assert "arn:aws:iam::123456789012:user/MALLORY" in error_of(e, "AccessDeniedException")["Error"]["Message"]
    assert make_client(server.url, "ALICE", "whatever", "us-east-1").decrypt(CiphertextBlob=blob)["Plaintext"] == b"p"


def test_a_request_must_still_be_signed_and_well_formed(server: ServerProcess) -> None:
    r = send(server.url, {"Content-Type": CONTENT_TYPE, "X-Amz-Target": op("ListKeys")}, b"{}")
    assert_aws_error(r, "MissingAuthenticationTokenException")
    assert_aws_error(signed_post(server.url, op("Nope"), b"{}", "a", "b"), "UnknownOperationException")
    assert_aws_error(signed_post(server.url, op("ListKeys"), b"{", "a", "b"), "SerializationException")
    from datetime import timedelta

    assert_aws_error(signed_post(server.url, op("ListKeys"), b"{}", "a", "b", skew=timedelta(minutes=-10)),
                     "InvalidSignatureException")


def test_account_option_changes_the_arns(tmp_path: Path) -> None:
    s = ServerProcess(["--ephemeral", "--port", "0", "--account", "111122223333"], ephemeral_env(tmp_path),
                      cwd=tmp_path)
    try:
        kms = make_client(s.url, "AKIDEXAMPLE", "secret", "eu-north-1")
        md = kms.create_key()["KeyMetadata"]
        assert md["AWSAccountId"] == "111122223333"
        assert md["Arn"] == f"arn:aws:kms:eu-north-1:111122223333:key/{md['KeyId']}"
        policy = json.loads(kms.get_key_policy(KeyId=md["KeyId"], PolicyName="default")["Policy"])
        assert policy["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}
    finally:
        s.assert_clean_stop()


def test_a_bad_account_is_refused(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import HANG_GUARD_S, kmscli_command

    r = subprocess.run([*kmscli_command(), "serve", "--ephemeral", "--port", "0", "--account", "12345"],
                       capture_output=True, env=ephemeral_env(tmp_path), timeout=HANG_GUARD_S,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().startswith("kmscli: ValidationException: "), r.stderr


def test_requests_during_a_reset_never_fail_inside_the_server(tmp_path: Path) -> None:
    import threading

    s = ServerProcess(["--ephemeral", "--port", "0"], ephemeral_env(tmp_path), cwd=tmp_path)
    statuses: list[int] = []
    done = threading.Event()

    def client() -> None:
        for _ in range(10_000):  # bounded; ends as soon as the resets are over
            if done.is_set():
                return
            statuses.append(signed_post(s.url, op("ListKeys"), b"{}", "AKIDEXAMPLE", "secret").status)

    workers = [threading.Thread(target=client) for _ in range(2)]
    try:
        for w in workers:
            w.start()
        for _ in range(20):
            reset(s, "/_kmscli/reset")
    finally:
        done.set()
        for w in workers:
            w.join()
        s.assert_clean_stop()
    assert statuses and set(statuses) == {200}, {code: statuses.count(code) for code in set(statuses)}
