"""The AWS CLI v1 (`aws kms ...`), unmodified, against `kmscli serve`.

It reaches the server through ``AWS_ENDPOINT_URL_KMS`` (service-specific
endpoints) or ``--endpoint-url``; credentials and region come from the
environment, as a user would set them.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import VENV_BIN, Served

AWS = VENV_BIN / "aws"

pytestmark = pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI is not installed beside this interpreter")


def aws(served: Served, *args: str, endpoint_flag: bool = False, region: str = "us-east-1",
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = served.aws_env(AWS_DEFAULT_REGION=region)
    if endpoint_flag:
        env.pop("AWS_ENDPOINT_URL_KMS")
        args = ("--endpoint-url", served.url, *args)
    return subprocess.run([str(AWS), *args], capture_output=True, env=env, cwd=cwd, timeout=HANG_GUARD_S,
                          stdin=subprocess.DEVNULL, start_new_session=True)


def ok_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, (r.args, r.returncode, r.stderr.decode(errors="replace"))
    return json.loads(r.stdout) if r.stdout.strip() else {}


def test_key_lifecycle_and_round_trip(served: Served, tmp_path: Path) -> None:
    region = "us-east-2"  # a namespace of this test's own
    created = ok_json(aws(served, "kms", "create-key", "--description", "from the aws cli",
                          "--tags", "TagKey=tool,TagValue=awscli", region=region))
    md = created["KeyMetadata"]
    assert md["Arn"] == f"arn:aws:kms:{region}:{served.account}:key/{md['KeyId']}"
    assert md["Description"] == "from the aws cli" and md["KeyState"] == "Enabled"
    assert isinstance(md["CreationDate"], (int, float))  # CLI v1 prints the wire's epoch seconds

    listed = ok_json(aws(served, "kms", "list-keys", region=region))
    assert listed["Keys"] == [{"KeyId": md["KeyId"], "KeyArn": md["Arn"]}]

    described = ok_json(aws(served, "kms", "describe-key", "--key-id", md["Arn"], region=region))
    assert described["KeyMetadata"] == md

    ok_json(aws(served, "kms", "create-alias", "--alias-name", "alias/cli", "--target-key-id", md["KeyId"],
                region=region))
    aliases = ok_json(aws(served, "kms", "list-aliases", region=region))["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in aliases] == [("alias/cli", md["KeyId"])]
    assert aliases[0]["AliasArn"] == f"arn:aws:kms:{region}:{served.account}:alias/cli"

    secret = bytes(range(256)) + b"\n\x00 trailing"
    (tmp_path / "plain.bin").write_bytes(secret)
    enc = ok_json(aws(served, "kms", "encrypt", "--key-id", "alias/cli", "--plaintext", "fileb://plain.bin",
                      "--encryption-context", "purpose=cli-test", region=region, cwd=tmp_path))
    assert enc["KeyId"] == md["Arn"] and enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    (tmp_path / "blob.bin").write_bytes(base64.b64decode(enc["CiphertextBlob"], validate=True))
    # --query/--output text, as shell scripts use it.
    r = aws(served, "kms", "decrypt", "--ciphertext-blob", "fileb://blob.bin", "--encryption-context",
            "purpose=cli-test", "--query", "Plaintext", "--output", "text", region=region, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert base64.b64decode(r.stdout.strip(), validate=True) == secret

    # The CLI's calls are recorded with its user agent.
    agents = [rec["userAgent"] for rec in served.audit() if rec.get("eventName") == "Decrypt"
              and rec.get("requestID") and "aws-cli/" in (rec.get("userAgent") or "")]
    assert agents, "no Decrypt from the AWS CLI in the audit log"


def test_the_endpoint_url_option_works_too(served: Served, tmp_path: Path) -> None:
    region = "eu-central-1"
    kms = served.client(region=region)
    key = kms.create_key(Description="made with boto3")["KeyMetadata"]
    (tmp_path / "blob.bin").write_bytes(kms.encrypt(KeyId=key["KeyId"], Plaintext=b"flag")["CiphertextBlob"])
    dec = ok_json(aws(served, "kms", "decrypt", "--ciphertext-blob", "fileb://blob.bin", endpoint_flag=True,
                      region=region, cwd=tmp_path))
    assert base64.b64decode(dec["Plaintext"], validate=True) == b"flag" and dec["KeyId"] == key["Arn"]


def test_errors_exit_255_naming_the_exception(served: Served, tmp_path: Path) -> None:
    r = aws(served, "kms", "describe-key", "--key-id", "alias/not-there")
    assert r.returncode == 255, (r.returncode, r.stderr)
    err = r.stderr.decode()
    assert "An error occurred (NotFoundException) when calling the DescribeKey operation" in err, err
    assert r.stdout == b""

    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    r = aws(served, "kms", "decrypt", "--ciphertext-blob", "fileb://junk.bin", cwd=tmp_path)
    assert r.returncode == 255 and b"(InvalidCiphertextException)" in r.stderr, r.stderr


def test_list_keys_pages_through_everything(served: Served) -> None:
    """The CLI pages on its own while Truncated is true: --page-size 1 still lists every key."""
    region = "ap-northeast-1"
    kms = served.client(region=region)
    made = {kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(3)}
    listed = ok_json(aws(served, "kms", "list-keys", "--page-size", "1", region=region))
    assert {k["KeyId"] for k in listed["Keys"]} == made and len(listed["Keys"]) == 3
