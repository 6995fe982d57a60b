"""The AWS Encryption SDK's CLI, unmodified, against `kmscli serve`: a 10 MB round trip under a key ARN.

The SDK signs for the region in the key ARN, so the key is made from a
us-west-2 client; the endpoint comes from ``AWS_ENDPOINT_URL_KMS``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import VENV_BIN, Served

ESDK = VENV_BIN / "aws-encryption-cli"
REGION = "us-west-2"
POLICY = ("--commitment-policy", "require-encrypt-require-decrypt")

pytestmark = pytest.mark.skipif(not ESDK.exists(), reason="aws-encryption-cli is not installed")


def esdk(served: Served, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # No region in the environment: the SDK takes it from the key ARN.
    return subprocess.run([str(ESDK), *args], capture_output=True, env=served.aws_env(), cwd=cwd,
                          timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL, start_new_session=True)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.args, r.returncode, r.stderr.decode(errors="replace"))
    return r


@pytest.fixture(scope="module")
def key_arn(served: Served) -> str:
    arn = served.client(region=REGION).create_key(Description="esdk")["KeyMetadata"]["Arn"]
    assert arn.startswith(f"arn:aws:kms:{REGION}:{served.account}:key/")
    return arn  # type: ignore[no-any-return]


def test_ten_megabytes_round_trip(served: Served, key_arn: str, tmp_path: Path) -> None:
    data = os.urandom(10 * 1024 * 1024)
    (tmp_path / "plain.bin").write_bytes(data)
    ok(esdk(served, "--encrypt", "--input", "plain.bin", "--output", "plain.bin.enc",
            "--wrapping-keys", f"key={key_arn}", *POLICY, "--encryption-context", "purpose=esdk-test",
            "--metadata-output", "encrypt-meta.json", cwd=tmp_path))
    encrypted = (tmp_path / "plain.bin.enc").read_bytes()
    assert len(encrypted) > len(data) and data[:4096] not in encrypted
    meta = json.loads((tmp_path / "encrypt-meta.json").read_text())
    assert meta["mode"] == "encrypt"
    keys = meta["header"]["encrypted_data_keys"]
    # The metadata holds bytes as base64.
    assert [base64.b64decode(k["key_provider"]["provider_id"]) for k in keys] == [b"aws-kms"]
    assert [base64.b64decode(k["key_provider"]["key_info"]) for k in keys] == [key_arn.encode()]
    assert base64.b64decode(keys[0]["encrypted_data_key"]).startswith(b"\x89KMS")  # kmscli's ciphertext
    assert meta["header"]["encryption_context"]["purpose"] == "esdk-test"

    ok(esdk(served, "--decrypt", "--input", "plain.bin.enc", "--output", "plain.bin.dec",
            "--wrapping-keys", f"key={key_arn}", *POLICY, "--encryption-context", "purpose=esdk-test",
            "-S", cwd=tmp_path))
    assert (tmp_path / "plain.bin.dec").read_bytes() == data

    # A context the message does not carry is refused by the SDK, after kmscli decrypted the data key.
    r = esdk(served, "--decrypt", "--input", "plain.bin.enc", "--output", "wrong.dec",
             "--wrapping-keys", f"key={key_arn}", *POLICY, "--encryption-context", "purpose=other", "-S",
             cwd=tmp_path)
    # (The SDK's CLI exits 0 here; it says so on stderr and deletes the output.)
    assert b"Operation failed" in r.stderr, r.stderr
    assert not (tmp_path / "wrong.dec").exists()

    # The SDK's calls reached kmscli and are in the audit log, with the message's context.
    sdk_calls = [r for r in served.audit() if "AwsEncryptionSdkCli" in (r.get("userAgent") or "")
                 and (r["requestParameters"] or {}).get("encryptionContext", {}).get("purpose") == "esdk-test"]
    assert [r["eventName"] for r in sdk_calls] == ["GenerateDataKey", "Decrypt", "Decrypt"]
    for rec in sdk_calls:
        assert "errorCode" not in rec
        assert rec["userIdentity"]["userName"] == "alice"
        assert f":{REGION}:" in json.dumps(rec["resources"])


def test_a_disabled_key_stops_the_sdk(served: Served, key_arn: str, tmp_path: Path) -> None:
    (tmp_path / "small.txt").write_bytes(b"small")
    ok(esdk(served, "--encrypt", "--input", "small.txt", "--output", "small.enc", "--wrapping-keys",
            f"key={key_arn}", *POLICY, "-S", cwd=tmp_path))
    kms = served.client(region=REGION)
    kms.disable_key(KeyId=key_arn)
    try:
        r = esdk(served, "--decrypt", "--input", "small.enc", "--output", "small.dec", "--wrapping-keys",
                 f"key={key_arn}", *POLICY, "-S", cwd=tmp_path)
        assert b"Unable to decrypt any data key" in r.stderr, r.stderr  # the SDK's CLI exits 0 even so
        assert not (tmp_path / "small.dec").exists()
        refused = [rec for rec in served.audit() if rec.get("eventName") == "Decrypt"
                   and "AwsEncryptionSdkCli" in (rec.get("userAgent") or "") and rec.get("errorCode")]
        assert [rec["errorCode"] for rec in refused] == ["DisabledException"]
    finally:
        kms.enable_key(KeyId=key_arn)
    ok(esdk(served, "--decrypt", "--input", "small.enc", "--output", "small.dec", "--wrapping-keys",
            f"key={key_arn}", *POLICY, "-S", cwd=tmp_path))
    assert (tmp_path / "small.dec").read_bytes() == b"small"
