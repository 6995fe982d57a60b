"""sops (the getsops Go binary, AWS SDK for Go v2), unmodified, against `kmscli serve`.

The Go SDK signs more headers than botocore (``amz-sdk-invocation-id``,
``amz-sdk-request``, ``content-length``), so a round trip proves the verifier
takes them. sops signs for the region in the key ARN and reads the endpoint
from ``AWS_ENDPOINT_URL_KMS``; no region variable is set.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import VENV_BIN, Served

SOPS = VENV_BIN / "sops"
REGION = "eu-west-2"
PLAIN = "db:\n    user: admin\n    password: hunter2\nport: 5432\n"

pytestmark = pytest.mark.skipif(not SOPS.exists(), reason="sops is not installed")


def sops(served: Served, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    e = served.aws_env(HOME=str(cwd), XDG_CONFIG_HOME=str(cwd / ".config"), **env)
    return subprocess.run([str(SOPS), *args], capture_output=True, env=e, cwd=cwd, timeout=HANG_GUARD_S,
                          stdin=subprocess.DEVNULL, start_new_session=True)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.args, r.returncode, r.stderr.decode(errors="replace"))
    return r


@pytest.fixture(scope="module")
def key_arn(served: Served) -> str:
    return served.client(region=REGION).create_key(Description="sops")["KeyMetadata"]["Arn"]  # type: ignore[no-any-return]


def go_sdk_records(served: Served) -> list[dict]:
    return [r for r in served.audit() if (r.get("userAgent") or "").startswith("aws-sdk-go-v2/")]


def test_encrypt_and_decrypt_a_yaml_file(served: Served, key_arn: str, tmp_path: Path) -> None:
    (tmp_path / "secrets.yaml").write_text(PLAIN)
    enc = ok(sops(served, "--encrypt", "--kms", key_arn, "secrets.yaml", cwd=tmp_path)).stdout.decode()
    assert "hunter2" not in enc and "admin" not in enc
    assert "ENC[AES256_GCM," in enc and key_arn in enc
    (tmp_path / "secrets.enc.yaml").write_text(enc)
    dec = ok(sops(served, "--decrypt", "secrets.enc.yaml", cwd=tmp_path)).stdout.decode()
    assert dec == PLAIN

    names = [(r["eventName"], r.get("errorCode")) for r in go_sdk_records(served)]
    assert ("Encrypt", None) in names and ("Decrypt", None) in names, names
    for rec in go_sdk_records(served):
        assert rec["userIdentity"]["userName"] == "alice"
        assert f":{REGION}:" in str(rec.get("resources"))


def test_encryption_context_is_sent_and_enforced(served: Served, key_arn: str, tmp_path: Path) -> None:
    (tmp_path / "ctx.yaml").write_text(PLAIN)
    enc = ok(sops(served, "--encrypt", "--kms", key_arn, "--encryption-context", "app:billing,env:prod",
                  "ctx.yaml", cwd=tmp_path)).stdout.decode()
    (tmp_path / "ctx.enc.yaml").write_text(enc)
    assert ok(sops(served, "--decrypt", "ctx.enc.yaml", cwd=tmp_path)).stdout.decode() == PLAIN
    contexts = [r["requestParameters"].get("encryptionContext") for r in go_sdk_records(served)
                if r["eventName"] in ("Encrypt", "Decrypt") and "errorCode" not in r]
    assert {"app": "billing", "env": "prod"} in contexts, contexts

    # The context stored in the file is what sops sends back; change it and kmscli refuses the data key.
    tampered = enc.replace("app: billing", "app: payroll")
    assert tampered != enc
    (tmp_path / "tampered.yaml").write_text(tampered)
    r = sops(served, "--decrypt", "tampered.yaml", cwd=tmp_path)
    assert r.returncode != 0 and b"hunter2" not in r.stdout
    assert any(rec.get("errorCode") == "InvalidCiphertextException" for rec in go_sdk_records(served))


def test_a_credential_kmscli_does_not_know_is_refused(served: Served, key_arn: str, tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(PLAIN)
    r = sops(served, "--encrypt", "--kms", key_arn, "x.yaml", cwd=tmp_path,
             AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE", AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert r.returncode != 0
    assert b"UnrecognizedClientException" in r.stderr, r.stderr
