"""`kmscli serve --tls-cert FILE --tls-key FILE`: HTTPS that real clients verify."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import boto3
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import REGION, ServerProcess, create_credential, make_vault


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), made here: no network, no openssl binary needed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmscli test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_https_with_a_certificate_the_client_verifies(tmp_path: Path) -> None:
    env, _ = make_vault(tmp_path)
    cred = create_credential(env, "alice")
    cert, key = _self_signed(tmp_path)
    server = ServerProcess(["--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)], env)
    try:
        assert server.url.startswith("https://127.0.0.1:"), server.url
        session = boto3.session.Session(aws_access_key_id=cred.access_key_id,
                                        aws_secret_access_key=cred.secret, region_name=REGION)
        kms = session.client("kms", endpoint_url=server.url, verify=str(cert),
                             config=Config(connect_timeout=HANG_GUARD_S, read_timeout=HANG_GUARD_S))
        arn = kms.create_key()["KeyMetadata"]["Arn"]
        blob = kms.encrypt(KeyId=arn, Plaintext=b"over tls")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"over tls"
    finally:
        server.assert_clean_stop()
