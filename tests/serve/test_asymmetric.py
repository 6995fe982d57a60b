"""Asymmetric, post-quantum and HMAC keys through `kmscli serve`, checked by clients and tools nobody here wrote.

boto3, unmodified, calls every operation of issue 16 on one module-wide server
(the AWS CLI calls sign, verify and get-public-key once each), and what comes
back is held against independent implementations:

* ``openssl`` (the machine's, 3.0): every RSA and ECDSA signature, RAW and
  DIGEST, verifies against the PEM made from GetPublicKey's DER by
  ``openssl pkey``; a message it encrypts with OAEP decrypts through Decrypt;
  its ECDH secret equals DeriveSharedSecret's; it derives each data key pair's
  public half from the private key KMS handed out, and signs with it;
* dilithium-py (a pure Python FIPS 204 implementation; the openssl here has no
  ML-DSA) verifies ML-DSA signatures, RAW and over an external mu it computed;
* Python's ``hmac`` gives the MAC of a key seeded with known material.

Every response body, success or error, is checked as it arrives: a 200 against
botocore's own model (``tests/aws/botocore_model.wire_errors``), an error as
AWS's ``{"__type", "message"}`` with the same name in ``X-Amzn-ErrorType``.
A refused request is looked up in the audit log: it is a failure record
(``errorCode``), never a success.

Keys are made once per module (RSA_2048 where the size does not matter; an
RSA_4096 key pair is made once, for the largest blob).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.aws.botocore_model import wire_errors
from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import (
    REGION,
    VENV_BIN,
    Served,
    ServerProcess,
    WireLog,
    assert_aws_error,
    aws_free_env,
    b64,
    body_of,
    error_of,
    make_client,
    op,
)

OPENSSL = shutil.which("openssl")
AWS = VENV_BIN / "aws"
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

MESSAGE = b"release 1.2.3\n\x00\xff a message with every kind of byte " + bytes(range(256))
HASHES = {"256": "sha256", "384": "sha384", "512": "sha512"}

RSA_SIGNING = ["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
               "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512"]
RSA_ENCRYPTION = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]

#: (label, KeySpec, KeyUsage, the one algorithm member DescribeKey shows, its list in AWS's order)
KEY_TABLE: list[tuple[str, str, str, str, list[str]]] = [
    ("rsa-sign", "RSA_2048", "SIGN_VERIFY", "SigningAlgorithms", RSA_SIGNING),
    ("rsa-enc", "RSA_2048", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", RSA_ENCRYPTION),
    ("rsa3072-enc", "RSA_3072", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", RSA_ENCRYPTION),
    ("p256-sign", "ECC_NIST_P256", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_256"]),
    ("p384-sign", "ECC_NIST_P384", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_384"]),
    ("p521-sign", "ECC_NIST_P521", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_512"]),
    ("p256-agree", "ECC_NIST_P256", "KEY_AGREEMENT", "KeyAgreementAlgorithms", ["ECDH"]),
    ("p384-agree", "ECC_NIST_P384", "KEY_AGREEMENT", "KeyAgreementAlgorithms", ["ECDH"]),
    ("k256-sign", "ECC_SECG_P256K1", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_256"]),
    ("mldsa44", "ML_DSA_44", "SIGN_VERIFY", "SigningAlgorithms", ["ML_DSA_SHAKE_256"]),
    ("mldsa65", "ML_DSA_65", "SIGN_VERIFY", "SigningAlgorithms", ["ML_DSA_SHAKE_256"]),
    ("mldsa87", "ML_DSA_87", "SIGN_VERIFY", "SigningAlgorithms", ["ML_DSA_SHAKE_256"]),
    ("hmac224", "HMAC_224", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_224"]),
    ("hmac256", "HMAC_256", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_256"]),
    ("hmac384", "HMAC_384", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_384"]),
    ("hmac512", "HMAC_512", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_512"]),
    ("symmetric", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", ["SYMMETRIC_DEFAULT"]),
]
ALGORITHM_MEMBERS = {"SigningAlgorithms", "EncryptionAlgorithms", "MacAlgorithms", "KeyAgreementAlgorithms"}
#: AWS's CustomerMasterKeySpec (deprecated) has no ML-DSA members: DescribeKey omits it for those keys.
NO_CMK_SPEC = {"ML_DSA_44", "ML_DSA_65", "ML_DSA_87"}
#: Key spec -> openssl's curve name, for peers of ECDH.
OPENSSL_CURVES = {"ECC_NIST_P256": "P-256", "ECC_NIST_P384": "P-384", "ECC_NIST_P521": "P-521"}
MLDSA_PUBLIC_BYTES = {"ML_DSA_44": 1312, "ML_DSA_65": 1952, "ML_DSA_87": 2592}
MLDSA_SIGNATURE_BYTES = {"ML_DSA_44": 2420, "ML_DSA_65": 3309, "ML_DSA_87": 4627}


# -- every answer checked as it arrives --------------------------------------------------------
@pytest.fixture(scope="module")
def wire() -> WireLog:
    return WireLog()


@pytest.fixture(scope="module")
def client(served: Served, wire: WireLog) -> Any:
    """alice's boto3 client; every response it gets is checked by ``wire``."""
    kms = served.client()
    kms.meta.events.register("after-call.kms", wire)
    return kms


@pytest.fixture(autouse=True)
def _answers_are_awss(wire: WireLog) -> Iterator[None]:
    yield
    problems, wire.problems[:] = list(wire.problems), []
    assert problems == [], problems


@pytest.fixture(scope="module")
def keys(client: Any) -> dict[str, dict[str, Any]]:
    """One key per row of KEY_TABLE: label -> CreateKey's KeyMetadata."""
    made = {}
    for label, spec, usage, _, _ in KEY_TABLE:
        made[label] = client.create_key(KeySpec=spec, KeyUsage=usage, Description=label)["KeyMetadata"]
    # A second RSA signing key, whose signatures the first must refuse.
    made["rsa-sign-other"] = client.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    return made


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


# -- helpers --------------------------------------------------------------------------------
def openssl(*args: str | Path) -> subprocess.CompletedProcess:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=HANG_GUARD_S)


def openssl_ok(*args: str | Path) -> bytes:
    r = openssl(*args)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout  # type: ignore[no-any-return]


def refused(excinfo: pytest.ExceptionInfo[Any], code: str, served: Served) -> dict[str, Any]:
    """``code`` on HTTP 400, and the request's audit record is the failure it is."""
    response = error_of(excinfo, code)
    rec = served.record(response["ResponseMetadata"]["RequestId"])
    assert rec["errorCode"] == code, rec
    assert rec.get("responseElements") is None, rec
    return response


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def public_pem(client: Any, key: dict[str, Any], folder: Path) -> Path:
    """GetPublicKey's DER turned into PEM by ``openssl pkey`` (not by kmscli or cryptography)."""
    pem = folder / f"{key['KeyId']}.pub.pem"
    if not pem.exists():
        der = write(folder / f"{key['KeyId']}.pub.der", client.get_public_key(KeyId=key["KeyId"])["PublicKey"])
        openssl_ok("pkey", "-pubin", "-inform", "DER", "-in", der, "-out", pem)
    return pem


def hash_of(algorithm: str) -> str:
    return HASHES[algorithm.rsplit("_", 1)[1]]


def pss_options(algorithm: str, flag: str) -> list[str]:
    """openssl's options for AWS's PSS: MGF1 with the message hash, a salt exactly as long as the digest."""
    if "_PSS_" not in algorithm:
        return []
    return [flag, "rsa_padding_mode:pss", flag, "rsa_pss_saltlen:digest", flag, f"rsa_mgf1_md:{hash_of(algorithm)}"]


def openssl_verifies_raw(pem: Path, algorithm: str, message: Path, signature: Path,
                         extra: list[str] | None = None) -> subprocess.CompletedProcess:
    options = extra if extra is not None else pss_options(algorithm, "-sigopt")
    return openssl("dgst", f"-{hash_of(algorithm)}", *options, "-verify", pem, "-signature", signature, message)


def openssl_verifies_digest(pem: Path, algorithm: str, digest: Path, signature: Path) -> subprocess.CompletedProcess:
    return openssl("pkeyutl", "-verify", "-pubin", "-inkey", pem, "-in", digest, "-sigfile", signature,
                   "-pkeyopt", f"digest:{hash_of(algorithm)}", *pss_options(algorithm, "-pkeyopt"))


# -- CreateKey / DescribeKey / GetPublicKey ----------------------------------------------------
@pytest.mark.parametrize(("label", "spec", "usage", "member", "algorithms"), KEY_TABLE, ids=[r[0] for r in KEY_TABLE])
def test_create_key_shows_exactly_the_algorithms_of_its_spec_and_usage(
        client: Any, served: Served, keys: dict[str, dict[str, Any]], label: str, spec: str, usage: str,
        member: str, algorithms: list[str]) -> None:
    md = keys[label]
    assert md["KeySpec"] == spec and md["KeyUsage"] == usage
    assert md["Arn"] == f"arn:aws:kms:{REGION}:{served.account}:key/{md['KeyId']}"
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True and md["Origin"] == "AWS_KMS"
    # Exactly one algorithm member, the one of the key's usage, in AWS's order.
    assert {m for m in md if m in ALGORITHM_MEMBERS} == {member}, md
    assert md[member] == algorithms
    if spec in NO_CMK_SPEC:
        assert "CustomerMasterKeySpec" not in md
    else:
        assert md["CustomerMasterKeySpec"] == spec
    # AWS shows CurrentKeyMaterialId only for keys whose material rotates.
    assert ("CurrentKeyMaterialId" in md) == (spec == "SYMMETRIC_DEFAULT")
    assert client.describe_key(KeyId=md["Arn"])["KeyMetadata"] == md


def test_the_deprecated_customer_master_key_spec_still_makes_the_key(client: Any) -> None:
    md = client.create_key(CustomerMasterKeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert (md["KeySpec"], md["CustomerMasterKeySpec"], md["SigningAlgorithms"]) == (
        "ECC_NIST_P384", "ECC_NIST_P384", ["ECDSA_SHA_384"])


def test_create_key_refuses_what_aws_refuses_and_makes_no_key(served: Served, wire: WireLog) -> None:
    region = "eu-north-1"  # a namespace of this test's own: nothing may appear in it
    kms = served.client(region=region)
    kms.meta.events.register("after-call.kms", wire)
    for spec in ("RSA_2048", "ECC_NIST_P256", "HMAC_256", "ML_DSA_44"):
        with pytest.raises(ClientError) as e:
            kms.create_key(KeySpec=spec)
        response = refused(e, "ValidationException", served)
        assert response["Error"]["Message"] == ("You must specify a KeyUsage value for all KMS keys except for "
                                                "symmetric encryption keys.")
    for spec, usage in (("RSA_2048", "KEY_AGREEMENT"), ("RSA_2048", "GENERATE_VERIFY_MAC"),
                        ("ECC_SECG_P256K1", "KEY_AGREEMENT"), ("ECC_NIST_P256", "ENCRYPT_DECRYPT"),
                        ("HMAC_256", "SIGN_VERIFY"), ("ML_DSA_65", "ENCRYPT_DECRYPT"),
                        ("SYMMETRIC_DEFAULT", "SIGN_VERIFY")):
        with pytest.raises(ClientError) as e:
            kms.create_key(KeySpec=spec, KeyUsage=usage)
        response = refused(e, "ValidationException", served)
        assert response["Error"]["Message"] == f"KeyUsage {usage} is not compatible with KeySpec {spec}"
    with pytest.raises(ClientError) as e:
        kms.create_key(KeySpec="SM2", KeyUsage="SIGN_VERIFY")
    assert "China" in refused(e, "UnsupportedOperationException", served)["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        kms.create_key(KeySpec="RSA_1024", KeyUsage="SIGN_VERIFY")  # not in botocore's enum, sent all the same
    assert "at 'keySpec' failed to satisfy constraint" in refused(e, "ValidationException", served)["Error"]["Message"]
    assert kms.list_keys()["Keys"] == []


@pytest.mark.parametrize("label", ["rsa-sign", "rsa-enc", "p384-sign", "p256-agree", "k256-sign", "mldsa65"])
def test_get_public_key_is_the_spki_openssl_reads(client: Any, keys: dict[str, dict[str, Any]], pki: Path,
                                                  label: str) -> None:
    md = keys[label]
    got = client.get_public_key(KeyId=md["KeyId"])
    assert got["KeyId"] == md["Arn"]
    assert (got["KeySpec"], got["KeyUsage"]) == (md["KeySpec"], md["KeyUsage"])
    member = next(m for m in ALGORITHM_MEMBERS if m in md)
    assert {m for m in got if m in ALGORITHM_MEMBERS} == {member} and got[member] == md[member]
    der = got["PublicKey"]
    if md["KeySpec"].startswith("ML_DSA"):
        # openssl 3.0 does not know ML-DSA: the SPKI is the FIPS 204 public key behind a fixed 22-byte header
        # naming id-ml-dsa-44/65/87 (2.16.840.1.101.3.4.3.17/18/19).
        n = MLDSA_PUBLIC_BYTES[md["KeySpec"]]
        oid_last = {"ML_DSA_44": 0x11, "ML_DSA_65": 0x12, "ML_DSA_87": 0x13}[md["KeySpec"]]
        assert len(der) == n + 22
        assert der[6:17] == bytes.fromhex("06096086480165030403") + bytes([oid_last])
        return
    # openssl reads it as a public key and writes the same DER back.
    source = write(pki / f"{label}.der", der)
    assert openssl_ok("pkey", "-pubin", "-inform", "DER", "-in", source, "-outform", "DER") == der
    text = openssl_ok("pkey", "-pubin", "-inform", "DER", "-in", source, "-noout", "-text").decode()
    expected = {"RSA_2048": "Public-Key: (2048 bit)", "ECC_NIST_P384": "NIST CURVE: P-384",
                "ECC_NIST_P256": "NIST CURVE: P-256", "ECC_SECG_P256K1": "ASN1 OID: secp256k1"}[md["KeySpec"]]
    assert expected in text, text


# -- Sign and Verify -------------------------------------------------------------------------------
SIGNING_CASES = [("rsa-sign", a) for a in RSA_SIGNING] + [
    ("p256-sign", "ECDSA_SHA_256"), ("p384-sign", "ECDSA_SHA_384"), ("p521-sign", "ECDSA_SHA_512"),
    ("k256-sign", "ECDSA_SHA_256")]


@pytest.mark.parametrize(("label", "algorithm"), SIGNING_CASES, ids=[f"{k}-{a}" for k, a in SIGNING_CASES])
def test_sign_raw_and_digest_verify_in_kms_and_in_openssl(client: Any, served: Served, keys: dict[str, dict[str, Any]],
                                                        pki: Path, tmp_path: Path, label: str, algorithm: str) -> None:
    md = keys[label]
    pem = public_pem(client, md, pki)
    message = write(tmp_path / "message.bin", MESSAGE)
    digest_bytes = hashlib.new(hash_of(algorithm), MESSAGE).digest()
    digest = write(tmp_path / "digest.bin", digest_bytes)

    raw = client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm=algorithm, MessageType="RAW")
    assert (raw["KeyId"], raw["SigningAlgorithm"]) == (md["Arn"], algorithm)
    rec = served.record(raw["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "Sign" and "errorCode" not in rec
    assert rec["requestParameters"] == {"keyId": md["KeyId"], "signingAlgorithm": algorithm, "messageType": "RAW"}
    signature = write(tmp_path / "raw.sig", raw["Signature"])
    r = openssl_verifies_raw(pem, algorithm, message, signature)
    assert r.returncode == 0 and r.stdout == b"Verified OK\n", (r.stdout, r.stderr)
    assert openssl_verifies_digest(pem, algorithm, digest, signature).returncode == 0

    signed_digest = client.sign(KeyId=md["KeyId"], Message=digest_bytes, SigningAlgorithm=algorithm,
                                MessageType="DIGEST")
    assert signed_digest["SigningAlgorithm"] == algorithm
    signature2 = write(tmp_path / "digest.sig", signed_digest["Signature"])
    r = openssl_verifies_digest(pem, algorithm, digest, signature2)
    assert r.returncode == 0 and r.stdout == b"Signature Verified Successfully\n", (r.stdout, r.stderr)
    assert openssl_verifies_raw(pem, algorithm, message, signature2).returncode == 0
    if "PKCS1" in algorithm:  # deterministic: signing the digest is signing the message
        assert signed_digest["Signature"] == raw["Signature"]
    elif algorithm.startswith("RSA"):
        assert len(raw["Signature"]) == 256
    # else ECDSA: openssl took it, so it is the DER (X9.62) encoding AWS returns

    for sig, kind, msg in ((raw["Signature"], "RAW", MESSAGE), (signed_digest["Signature"], "DIGEST", digest_bytes),
                           (raw["Signature"], "DIGEST", digest_bytes)):
        ok = client.verify(KeyId=md["KeyId"], Message=msg, Signature=sig, SigningAlgorithm=algorithm,
                           MessageType=kind)
        assert (ok["KeyId"], ok["SignatureValid"], ok["SigningAlgorithm"]) == (md["Arn"], True, algorithm)


def test_pss_salt_is_exactly_the_digest_length(client: Any, keys: dict[str, dict[str, Any]], pki: Path,
                                               tmp_path: Path) -> None:
    """openssl checks an explicit salt length exactly: 32 bytes verifies a PSS_SHA_256 signature, 20 does not."""
    md = keys["rsa-sign"]
    pem = public_pem(client, md, pki)
    message = write(tmp_path / "m", MESSAGE)
    sig = write(tmp_path / "s", client.sign(KeyId=md["KeyId"], Message=MESSAGE,
                                            SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"])
    base = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_mgf1_md:sha256", "-sigopt"]
    assert openssl_verifies_raw(pem, "RSASSA_PSS_SHA_256", message, sig, base + ["rsa_pss_saltlen:32"]).returncode == 0
    bad = openssl_verifies_raw(pem, "RSASSA_PSS_SHA_256", message, sig, base + ["rsa_pss_saltlen:20"])
    assert bad.returncode != 0 and b"Verification failure" in bad.stdout + bad.stderr, (bad.stdout, bad.stderr)


def dilithium(spec: str) -> Any:
    ml_dsa = pytest.importorskip("dilithium_py.ml_dsa")
    return {"ML_DSA_44": ml_dsa.ML_DSA_44, "ML_DSA_65": ml_dsa.ML_DSA_65, "ML_DSA_87": ml_dsa.ML_DSA_87}[spec]


@pytest.mark.parametrize("label", ["mldsa44", "mldsa65", "mldsa87"])
def test_mldsa_signatures_verify_in_dilithium_py(client: Any, served: Served, keys: dict[str, dict[str, Any]],
                                                 label: str) -> None:
    """RAW (pure ML-DSA, empty context) and EXTERNAL_MU (mu computed by dilithium-py) signatures made over the
    wire verify in an independent FIPS 204 implementation; DIGEST is refused for ML-DSA."""
    md = keys[label]
    spec = md["KeySpec"]
    impl = dilithium(spec)
    spki = client.get_public_key(KeyId=md["KeyId"])["PublicKey"]
    pk = spki[-MLDSA_PUBLIC_BYTES[spec]:]
    raw = client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="ML_DSA_SHAKE_256")
    assert raw["SigningAlgorithm"] == "ML_DSA_SHAKE_256" and raw["KeyId"] == md["Arn"]
    assert len(raw["Signature"]) == MLDSA_SIGNATURE_BYTES[spec]
    assert impl.verify(pk, MESSAGE, raw["Signature"]) is True
    assert impl.verify(pk, MESSAGE + b"!", raw["Signature"]) is False

    mu = impl.prehash_external_mu(pk, MESSAGE)
    from_mu = client.sign(KeyId=md["KeyId"], Message=mu, SigningAlgorithm="ML_DSA_SHAKE_256",
                          MessageType="EXTERNAL_MU")
    assert impl.verify(pk, MESSAGE, from_mu["Signature"]) is True
    # Each verifies in KMS both ways: a signature over mu is the RAW message's signature.
    for sig in (raw["Signature"], from_mu["Signature"]):
        assert client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=sig,
                             SigningAlgorithm="ML_DSA_SHAKE_256")["SignatureValid"] is True
        assert client.verify(KeyId=md["KeyId"], Message=mu, Signature=sig, SigningAlgorithm="ML_DSA_SHAKE_256",
                             MessageType="EXTERNAL_MU")["SignatureValid"] is True
    with pytest.raises(ClientError) as e:
        client.sign(KeyId=md["KeyId"], Message=hashlib.sha256(MESSAGE).digest(), SigningAlgorithm="ML_DSA_SHAKE_256",
                    MessageType="DIGEST")
    refused(e, "ValidationException", served)
    with pytest.raises(ClientError) as e:
        client.sign(KeyId=md["KeyId"], Message=mu[:63], SigningAlgorithm="ML_DSA_SHAKE_256",
                    MessageType="EXTERNAL_MU")
    refused(e, "ValidationException", served)


@pytest.mark.parametrize(("label", "algorithm"), [("rsa-sign", "RSASSA_PSS_SHA_256"),
                                                  ("rsa-sign", "RSASSA_PKCS1_V1_5_SHA_512"),
                                                  ("p256-sign", "ECDSA_SHA_256"), ("mldsa44", "ML_DSA_SHAKE_256")])
def test_a_bad_signature_is_kms_invalid_signature_and_a_failure_record(
        client: Any, served: Served, keys: dict[str, dict[str, Any]], label: str, algorithm: str) -> None:
    md = keys[label]
    good = client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm=algorithm)["Signature"]
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x10
    # A signature of the same message and algorithm by another key (for ECDSA, on another curve).
    other_key = {"rsa-sign": "rsa-sign-other", "p256-sign": "k256-sign", "mldsa44": "mldsa65"}[label]
    other = client.sign(KeyId=keys[other_key]["KeyId"], Message=MESSAGE, SigningAlgorithm=algorithm)["Signature"]
    for bad, message in ((bytes(flipped), MESSAGE), (good[:-1], MESSAGE), (good[:8], MESSAGE), (other, MESSAGE),
                         (good, MESSAGE + b"."), (b"\x00", MESSAGE)):
        with pytest.raises(ClientError) as e:
            client.verify(KeyId=md["KeyId"], Message=message, Signature=bad, SigningAlgorithm=algorithm)
        refused(e, "KMSInvalidSignatureException", served)
    if algorithm == "RSASSA_PSS_SHA_256":  # a valid signature under another algorithm of the same key
        with pytest.raises(ClientError) as e:
            client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=good, SigningAlgorithm="RSASSA_PSS_SHA_384")
        refused(e, "KMSInvalidSignatureException", served)


def test_an_invalid_signature_on_the_raw_wire(served: Served, keys: dict[str, dict[str, Any]]) -> None:
    """Byte for byte: 400, AWS's error document, the exception's name in X-Amzn-ErrorType; a failure record."""
    md = keys["p256-sign"]
    r = served.post(op("Verify"), body_of({"KeyId": md["KeyId"], "Message": b64(MESSAGE), "Signature": b64(b"\x30\x00"),
                                          "SigningAlgorithm": "ECDSA_SHA_256"}))
    doc = assert_aws_error(r, "KMSInvalidSignatureException")
    assert "SignatureValid" not in doc
    rec = served.record(r.request_id)
    assert rec["eventName"] == "Verify" and rec["errorCode"] == "KMSInvalidSignatureException"
    assert rec["responseElements"] is None
    # ... and a valid one: SignatureValid true, the key's ARN.
    sig = served.client().sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    r = served.post(op("Verify"), body_of({"KeyId": md["KeyId"], "Message": b64(MESSAGE), "Signature": b64(sig),
                                          "SigningAlgorithm": "ECDSA_SHA_256"}))
    assert r.status == 200 and r.json() == {"KeyId": md["Arn"], "SignatureValid": True,
                                            "SigningAlgorithm": "ECDSA_SHA_256"}
    assert wire_errors("Verify", r.json()) == []


# -- RSA Encrypt and Decrypt -------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", RSA_ENCRYPTION)
def test_rsa_encrypt_decrypt_round_trip(client: Any, served: Served, keys: dict[str, dict[str, Any]],
                                        algorithm: str) -> None:
    md = keys["rsa-enc"]
    secret = b"a 32-byte data key \x00\x01\x02...."
    one = client.encrypt(KeyId=md["KeyId"], Plaintext=secret, EncryptionAlgorithm=algorithm)
    two = client.encrypt(KeyId=md["KeyId"], Plaintext=secret, EncryptionAlgorithm=algorithm)
    assert (one["KeyId"], one["EncryptionAlgorithm"]) == (md["Arn"], algorithm)
    assert len(one["CiphertextBlob"]) == 256 and one["CiphertextBlob"] != two["CiphertextBlob"]  # OAEP is randomised
    for blob in (one["CiphertextBlob"], two["CiphertextBlob"]):
        got = client.decrypt(CiphertextBlob=blob, KeyId=md["KeyId"], EncryptionAlgorithm=algorithm)
        assert (got["Plaintext"], got["KeyId"], got["EncryptionAlgorithm"]) == (secret, md["Arn"], algorithm)
    rec = served.record(one["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "Encrypt" and rec["requestParameters"]["encryptionAlgorithm"] == algorithm
    assert "errorCode" not in rec
    other = RSA_ENCRYPTION[1 - RSA_ENCRYPTION.index(algorithm)]
    with pytest.raises(ClientError) as e:
        client.decrypt(CiphertextBlob=one["CiphertextBlob"], KeyId=md["KeyId"], EncryptionAlgorithm=other)
    refused(e, "InvalidCiphertextException", served)
    with pytest.raises(ClientError) as e:  # an RSA ciphertext names no key
        client.decrypt(CiphertextBlob=one["CiphertextBlob"], EncryptionAlgorithm=algorithm)
    refused(e, "ValidationException", served)
    with pytest.raises(ClientError) as e:  # and binds no encryption context
        client.encrypt(KeyId=md["KeyId"], Plaintext=secret, EncryptionAlgorithm=algorithm,
                       EncryptionContext={"purpose": "x"})
    refused(e, "ValidationException", served)


@pytest.mark.parametrize(("digest", "algorithm"), [("sha1", "RSAES_OAEP_SHA_1"), ("sha256", "RSAES_OAEP_SHA_256")])
def test_what_openssl_encrypts_with_oaep_decrypts_through_kms(client: Any, keys: dict[str, dict[str, Any]], pki: Path,
                                                             tmp_path: Path, digest: str, algorithm: str) -> None:
    md = keys["rsa-enc"]
    pem = public_pem(client, md, pki)
    plain = write(tmp_path / "plain", b"encrypted by openssl \xff\x00 " + digest.encode())
    blob = tmp_path / "blob"
    openssl_ok("pkeyutl", "-encrypt", "-pubin", "-inkey", pem, "-in", plain, "-out", blob,
               "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{digest}",
               "-pkeyopt", f"rsa_mgf1_md:{digest}")
    got = client.decrypt(CiphertextBlob=blob.read_bytes(), KeyId=md["Arn"], EncryptionAlgorithm=algorithm)
    assert got["Plaintext"] == plain.read_bytes() and got["KeyId"] == md["Arn"]


@pytest.mark.parametrize(("label", "algorithm", "limit"), [
    ("rsa-enc", "RSAES_OAEP_SHA_1", 214), ("rsa-enc", "RSAES_OAEP_SHA_256", 190),
    ("rsa3072-enc", "RSAES_OAEP_SHA_1", 342), ("rsa3072-enc", "RSAES_OAEP_SHA_256", 318)])
def test_rsa_plaintext_limits_are_awss(client: Any, served: Served, keys: dict[str, dict[str, Any]], label: str,
                                       algorithm: str, limit: int) -> None:
    md = keys[label]
    blob = client.encrypt(KeyId=md["KeyId"], Plaintext=b"\x07" * limit, EncryptionAlgorithm=algorithm)["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=blob, KeyId=md["KeyId"],
                          EncryptionAlgorithm=algorithm)["Plaintext"] == b"\x07" * limit
    with pytest.raises(ClientError) as e:
        client.encrypt(KeyId=md["KeyId"], Plaintext=b"\x07" * (limit + 1), EncryptionAlgorithm=algorithm)
    response = refused(e, "ValidationException", served)
    assert response["Error"]["Message"] == (f"Algorithm {algorithm} and key spec {md['KeySpec']} cannot encrypt data "
                                            f"larger than {limit} bytes.")


def test_re_encrypt_between_rsa_and_symmetric_keys(client: Any, served: Served,
                                                   keys: dict[str, dict[str, Any]]) -> None:
    rsa, sym = keys["rsa-enc"], keys["symmetric"]
    secret = b"moves between key kinds"
    rsa_blob = client.encrypt(KeyId=rsa["KeyId"], Plaintext=secret,
                              EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    moved = client.re_encrypt(CiphertextBlob=rsa_blob, SourceKeyId=rsa["KeyId"],
                              SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256", DestinationKeyId=sym["KeyId"],
                              DestinationEncryptionContext={"to": "symmetric"})
    assert (moved["SourceKeyId"], moved["KeyId"]) == (rsa["Arn"], sym["Arn"])
    assert (moved["SourceEncryptionAlgorithm"], moved["DestinationEncryptionAlgorithm"]) == (
        "RSAES_OAEP_SHA_256", "SYMMETRIC_DEFAULT")
    back = client.decrypt(CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"to": "symmetric"})
    assert back["Plaintext"] == secret and back["KeyId"] == sym["Arn"]

    sym_blob = client.encrypt(KeyId=sym["KeyId"], Plaintext=secret, EncryptionContext={"from": "sym"})["CiphertextBlob"]
    to_rsa = client.re_encrypt(CiphertextBlob=sym_blob, SourceEncryptionContext={"from": "sym"},
                               DestinationKeyId=rsa["Arn"], DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    assert (to_rsa["SourceKeyId"], to_rsa["KeyId"]) == (sym["Arn"], rsa["Arn"])
    assert (to_rsa["SourceEncryptionAlgorithm"], to_rsa["DestinationEncryptionAlgorithm"]) == (
        "SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1")
    assert len(to_rsa["CiphertextBlob"]) == 256
    assert client.decrypt(CiphertextBlob=to_rsa["CiphertextBlob"], KeyId=rsa["KeyId"],
                          EncryptionAlgorithm="RSAES_OAEP_SHA_1")["Plaintext"] == secret
    rec = served.record(to_rsa["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "ReEncrypt" and "errorCode" not in rec
    with pytest.raises(ClientError) as e:  # an RSA ciphertext names no key: SourceKeyId is needed
        client.re_encrypt(CiphertextBlob=rsa_blob, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                          DestinationKeyId=sym["KeyId"])
    refused(e, "ValidationException", served)
    # A symmetric ciphertext too large for the RSA key: AWS's limit, nothing re-encrypted.
    big = client.encrypt(KeyId=sym["KeyId"], Plaintext=b"x" * 215)["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        client.re_encrypt(CiphertextBlob=big, DestinationKeyId=rsa["KeyId"],
                          DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_1")
    refused(e, "ValidationException", served)


# -- GenerateMac and VerifyMac --------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["hmac224", "hmac256", "hmac384", "hmac512"])
def test_generate_and_verify_mac(client: Any, served: Served, keys: dict[str, dict[str, Any]], label: str) -> None:
    md = keys[label]
    bits = md["KeySpec"].split("_")[1]
    algorithm = f"HMAC_SHA_{bits}"
    got = client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm=algorithm)
    assert (got["KeyId"], got["MacAlgorithm"]) == (md["Arn"], algorithm)
    mac = got["Mac"]
    assert len(mac) == int(bits) // 8
    assert client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm=algorithm)["Mac"] == mac
    assert client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE + b"!", MacAlgorithm=algorithm)["Mac"] != mac
    rec = served.record(got["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "GenerateMac" and "errorCode" not in rec
    assert mac.hex() not in json.dumps(rec) and base64.b64encode(mac).decode() not in json.dumps(rec)
    ok = client.verify_mac(KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm=algorithm, Mac=mac)
    assert (ok["KeyId"], ok["MacValid"], ok["MacAlgorithm"]) == (md["Arn"], True, algorithm)
    flipped = bytearray(mac)
    flipped[0] ^= 1
    for bad, message in ((bytes(flipped), MESSAGE), (mac[:-1], MESSAGE), (mac, MESSAGE + b"!"),
                         (mac + b"\x00", MESSAGE)):
        with pytest.raises(ClientError) as e:
            client.verify_mac(KeyId=md["KeyId"], Message=message, MacAlgorithm=algorithm, Mac=bad)
        refused(e, "KMSInvalidMacException", served)
    wrong = "HMAC_SHA_512" if bits != "512" else "HMAC_SHA_224"
    with pytest.raises(ClientError) as e:
        client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm=wrong)
    assert refused(e, "InvalidKeyUsageException", served)["Error"]["Message"] == (
        f"Algorithm {wrong} is incompatible with key spec {md['KeySpec']}.")


def test_macs_of_different_keys_differ(client: Any, keys: dict[str, dict[str, Any]]) -> None:
    other = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    macs = {client.generate_mac(KeyId=k, Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")["Mac"]
            for k in (other["KeyId"], keys["hmac256"]["KeyId"])}
    assert len(macs) == 2


#: Known material for the seeded keys (hex for HMAC keys, as the seed takes it).
HMAC_MATERIAL = {"HMAC_224": bytes(range(28)), "HMAC_256": bytes(range(100, 132)),
                 "HMAC_384": bytes(range(48)), "HMAC_512": bytes(range(1, 65))}
SEED_IDS = {"HMAC_224": "11111111-1111-4111-8111-111111111224", "HMAC_256": "11111111-1111-4111-8111-111111111256",
            "HMAC_384": "11111111-1111-4111-8111-111111111384", "HMAC_512": "11111111-1111-4111-8111-111111111512",
            "ECC_NIST_P256": "22222222-2222-4222-8222-222222222256"}


def test_a_seeded_hmac_key_macs_as_pythons_hmac(tmp_path: Path, wire: WireLog) -> None:
    """`serve --ephemeral --seed` with HMAC keys of known material (and an ECC key from a PEM PKCS#8): GenerateMac
    equals Python's hmac, GetPublicKey is the seeded key's public half and openssl verifies its signature."""
    openssl_ok("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", tmp_path / "ec.pem")
    pkcs8 = openssl_ok("pkcs8", "-topk8", "-nocrypt", "-in", tmp_path / "ec.pem").decode()
    expected_public = openssl_ok("pkey", "-in", tmp_path / "ec.pem", "-pubout", "-outform", "DER")
    seed = {"Keys": [{"KeyId": SEED_IDS[spec], "KeySpec": spec, "KeyUsage": "GENERATE_VERIFY_MAC",
                      "Material": material.hex()} for spec, material in HMAC_MATERIAL.items()]
            + [{"KeyId": SEED_IDS["ECC_NIST_P256"], "KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY",
                "Material": pkcs8}]}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    home = tmp_path / "home"
    home.mkdir()
    env = aws_free_env(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))
    server = ServerProcess(["--ephemeral", "--port", "0", "--seed", str(tmp_path / "seed.json")], env, cwd=home)
    try:
        kms = make_client(server.url, "AKIDSEEDTEST", "secret", REGION)
        kms.meta.events.register("after-call.kms", wire)
        specs = {spec: kms.describe_key(KeyId=SEED_IDS[spec])["KeyMetadata"]["KeySpec"] for spec in SEED_IDS}
        assert all(got == spec for spec, got in specs.items()), specs
        for spec, material in HMAC_MATERIAL.items():
            algorithm = "HMAC_SHA_" + spec.split("_")[1]
            digest = "sha" + spec.split("_")[1]
            mac = kms.generate_mac(KeyId=SEED_IDS[spec], Message=MESSAGE, MacAlgorithm=algorithm)["Mac"]
            assert mac == hmac.new(material, MESSAGE, digest).digest(), spec
            theirs = hmac.new(material, b"webhook body", digest).digest()
            assert kms.verify_mac(KeyId=SEED_IDS[spec], Message=b"webhook body", MacAlgorithm=algorithm,
                                  Mac=theirs)["MacValid"] is True
        ec_id = SEED_IDS["ECC_NIST_P256"]
        assert kms.get_public_key(KeyId=ec_id)["PublicKey"] == expected_public
        sig = kms.sign(KeyId=ec_id, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
        r = openssl("dgst", "-sha256", "-verify", write(tmp_path / "pub.pem", openssl_ok(
            "pkey", "-in", tmp_path / "ec.pem", "-pubout")), "-signature", write(tmp_path / "sig", sig),
                    write(tmp_path / "msg", MESSAGE))
        assert r.returncode == 0, r.stderr
    finally:
        server.assert_clean_stop()


# -- GenerateDataKeyPair(WithoutPlaintext) ------------------------------------------------------------
PAIR_SPECS = ["RSA_2048", "RSA_3072", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1",
              "ECC_NIST_EDWARDS25519", "ML_KEM_768", "ML_KEM_1024"]
#: Specs openssl 3.0 reads (ML-KEM it does not: cryptography derives those public halves).
OPENSSL_PAIRS = {s for s in PAIR_SPECS if not s.startswith("ML_KEM")} | {"RSA_4096"}


def public_half(spec: str, private_der: bytes, folder: Path) -> bytes:
    """The DER SPKI of a PKCS#8 private key, by openssl where it can, else by cryptography."""
    if spec in OPENSSL_PAIRS:
        return openssl_ok("pkey", "-inform", "DER", "-in", write(folder / "priv.der", private_der),
                          "-pubout", "-outform", "DER")
    from cryptography.hazmat.primitives import serialization as ser

    key = ser.load_der_private_key(private_der, None)
    return key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)


def openssl_signs_with_the_pair(spec: str, private_der: bytes, public_der: bytes, folder: Path) -> None:
    """Sanity: openssl signs with the private key it was given and verifies with the public key it was given."""
    priv = folder / "priv.pem"
    openssl_ok("pkey", "-inform", "DER", "-in", write(folder / "priv.der", private_der), "-out", priv)
    pub = folder / "pub.pem"
    openssl_ok("pkey", "-pubin", "-inform", "DER", "-in", write(folder / "pub.der", public_der), "-out", pub)
    message, sig = write(folder / "msg", MESSAGE), folder / "sig"
    if spec == "ECC_NIST_EDWARDS25519":
        openssl_ok("pkeyutl", "-sign", "-rawin", "-inkey", priv, "-in", message, "-out", sig)
        r = openssl("pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", pub, "-in", message, "-sigfile", sig)
    else:
        openssl_ok("dgst", "-sha256", "-sign", priv, "-out", sig, message)
        r = openssl("dgst", "-sha256", "-verify", pub, "-signature", sig, message)
    assert r.returncode == 0, (spec, r.stdout, r.stderr)


@pytest.mark.parametrize("spec", PAIR_SPECS)
def test_generate_data_key_pair(client: Any, served: Served, keys: dict[str, dict[str, Any]], tmp_path: Path,
                                spec: str) -> None:
    sym = keys["symmetric"]
    context = {"purpose": "data key pair", "spec": spec}
    got = client.generate_data_key_pair(KeyId=sym["KeyId"], KeyPairSpec=spec, EncryptionContext=context)
    assert (got["KeyId"], got["KeyPairSpec"]) == (sym["Arn"], spec)
    private, public = got["PrivateKeyPlaintext"], got["PublicKey"]
    back = client.decrypt(CiphertextBlob=got["PrivateKeyCiphertextBlob"], EncryptionContext=context)
    assert back["Plaintext"] == private and back["KeyId"] == sym["Arn"]
    assert public_half(spec, private, tmp_path) == public
    if spec in OPENSSL_PAIRS:
        openssl_signs_with_the_pair(spec, private, public, tmp_path)
    rec = served.record(got["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "GenerateDataKeyPair" and "errorCode" not in rec
    assert rec["requestParameters"]["keyPairSpec"] == spec
    line = json.dumps(rec)
    assert base64.b64encode(private).decode()[:40] not in line and private.hex()[:40] not in line
    with pytest.raises(ClientError) as e:  # the private key is bound to the context
        client.decrypt(CiphertextBlob=got["PrivateKeyCiphertextBlob"])
    refused(e, "InvalidCiphertextException", served)

    bare = client.generate_data_key_pair_without_plaintext(KeyId=sym["KeyId"], KeyPairSpec=spec,
                                                           EncryptionContext=context)
    assert "PrivateKeyPlaintext" not in bare and bare["KeyPairSpec"] == spec and bare["KeyId"] == sym["Arn"]
    assert bare["PublicKey"] != public  # a new pair each call
    private2 = client.decrypt(CiphertextBlob=bare["PrivateKeyCiphertextBlob"], EncryptionContext=context)["Plaintext"]
    assert public_half(spec, private2, tmp_path) == bare["PublicKey"]
    rec = served.record(bare["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "GenerateDataKeyPairWithoutPlaintext" and "errorCode" not in rec


def test_an_rsa_4096_pair_under_a_large_context_fits_awss_blob_limit(client: Any, keys: dict[str, dict[str, Any]],
                                                                     tmp_path: Path) -> None:
    """The largest private key AWS hands out, bound to a context of about 8 KB: the blob is within 6144 bytes."""
    context = {f"k{i}": chr(0x41 + i) * 990 for i in range(8)}
    got = client.generate_data_key_pair(KeyId=keys["symmetric"]["KeyId"], KeyPairSpec="RSA_4096",
                                        EncryptionContext=context)
    blob = got["PrivateKeyCiphertextBlob"]
    assert len(got["PrivateKeyPlaintext"]) > 2300 and len(blob) <= 6144, len(blob)
    assert client.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"] == got["PrivateKeyPlaintext"]
    assert public_half("RSA_4096", got["PrivateKeyPlaintext"], tmp_path) == got["PublicKey"]
    text = openssl_ok("pkey", "-pubin", "-inform", "DER", "-in", write(tmp_path / "pub.der", got["PublicKey"]),
                      "-noout", "-text").decode()
    assert "Public-Key: (4096 bit)" in text


def test_data_key_pair_refusals(client: Any, served: Served, keys: dict[str, dict[str, Any]]) -> None:
    for spec in ("SM2", "ML_KEM_512"):
        with pytest.raises(ClientError) as e:
            client.generate_data_key_pair(KeyId=keys["symmetric"]["KeyId"], KeyPairSpec=spec)
        refused(e, "UnsupportedOperationException", served)
    for label in ("rsa-enc", "hmac256", "p256-sign"):  # a data key pair is encrypted under a symmetric key only
        with pytest.raises(ClientError) as e:
            client.generate_data_key_pair_without_plaintext(KeyId=keys[label]["KeyId"], KeyPairSpec="ECC_NIST_P256")
        refused(e, "InvalidKeyUsageException", served)


# -- DeriveSharedSecret -------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["p256-agree", "p384-agree"])
def test_derive_shared_secret_equals_openssls(client: Any, served: Served, keys: dict[str, dict[str, Any]], pki: Path,
                                             tmp_path: Path, label: str) -> None:
    md = keys[label]
    curve = OPENSSL_CURVES[md["KeySpec"]]
    peer = tmp_path / "peer.pem"
    openssl_ok("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-out", peer)
    peer_der = openssl_ok("pkey", "-in", peer, "-pubout", "-outform", "DER")
    got = client.derive_shared_secret(KeyId=md["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=peer_der)
    assert (got["KeyId"], got["KeyAgreementAlgorithm"], got["KeyOrigin"]) == (md["Arn"], "ECDH", "AWS_KMS")
    theirs = openssl_ok("pkeyutl", "-derive", "-inkey", peer, "-peerkey", public_pem(client, md, pki))
    assert got["SharedSecret"] == theirs and len(theirs) == {"P-256": 32, "P-384": 48}[curve]
    rec = served.record(got["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "DeriveSharedSecret" and "errorCode" not in rec
    assert theirs.hex() not in json.dumps(rec)

    other_curve = "P-384" if curve == "P-256" else "P-256"
    openssl_ok("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{other_curve}", "-out", tmp_path / "o")
    wrong = openssl_ok("pkey", "-in", tmp_path / "o", "-pubout", "-outform", "DER")
    with pytest.raises(ClientError) as e:
        client.derive_shared_secret(KeyId=md["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=wrong)
    refused(e, "ValidationException", served)
    rsa_public = client.get_public_key(KeyId=keys["rsa-enc"]["KeyId"])["PublicKey"]
    for bad in (rsa_public, b"\x30\x03\x02\x01\x00", peer_der[:-5]):
        with pytest.raises(ClientError) as e:
            client.derive_shared_secret(KeyId=md["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=bad)
        refused(e, "ValidationException", served)


def test_derive_shared_secret_needs_a_key_agreement_key(client: Any, served: Served, keys: dict[str, dict[str, Any]],
                                                        tmp_path: Path) -> None:
    openssl_ok("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", tmp_path / "peer")
    peer = openssl_ok("pkey", "-in", tmp_path / "peer", "-pubout", "-outform", "DER")
    with pytest.raises(ClientError) as e:
        client.derive_shared_secret(KeyId=keys["p256-sign"]["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=peer)
    assert refused(e, "InvalidKeyUsageException", served)["Error"]["Message"] == (
        f"{keys['p256-sign']['Arn']} key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret.")


# -- errors by name on the wire -----------------------------------------------------------------------
def test_a_key_used_for_what_its_usage_does_not_allow(client: Any, served: Served,
                                                      keys: dict[str, dict[str, Any]]) -> None:
    hmac_key, rsa_enc, p256 = keys["hmac256"], keys["rsa-enc"], keys["p256-sign"]
    with pytest.raises(ClientError) as e:
        client.encrypt(KeyId=hmac_key["KeyId"], Plaintext=b"x")
    refused(e, "InvalidKeyUsageException", served)
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=hmac_key["KeyId"], KeySpec="AES_256")
    refused(e, "InvalidKeyUsageException", served)
    with pytest.raises(ClientError) as e:
        client.sign(KeyId=rsa_enc["KeyId"], Message=b"x", SigningAlgorithm="RSASSA_PSS_SHA_256")
    assert refused(e, "InvalidKeyUsageException", served)["Error"]["Message"] == (
        f"{rsa_enc['Arn']} key usage is ENCRYPT_DECRYPT which is not valid for Sign.")
    with pytest.raises(ClientError) as e:
        client.generate_mac(KeyId=p256["KeyId"], Message=b"x", MacAlgorithm="HMAC_SHA_256")
    assert refused(e, "InvalidKeyUsageException", served)["Error"]["Message"] == (
        f"{p256['Arn']} key usage is SIGN_VERIFY which is not valid for GenerateMac.")
    with pytest.raises(ClientError) as e:
        client.encrypt(KeyId=p256["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    refused(e, "InvalidKeyUsageException", served)


@pytest.mark.parametrize(("label", "algorithm"), [("p256-sign", "ECDSA_SHA_384"), ("p256-sign", "RSASSA_PSS_SHA_256"),
                                                  ("p384-sign", "ECDSA_SHA_256"), ("rsa-sign", "ECDSA_SHA_256"),
                                                  ("rsa-sign", "ML_DSA_SHAKE_256"), ("mldsa44", "ECDSA_SHA_256")])
def test_sign_with_an_algorithm_the_spec_has_not(client: Any, served: Served, keys: dict[str, dict[str, Any]],
                                                 label: str, algorithm: str) -> None:
    md = keys[label]
    with pytest.raises(ClientError) as e:
        client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm=algorithm)
    assert refused(e, "InvalidKeyUsageException", served)["Error"]["Message"] == (
        f"Algorithm {algorithm} is incompatible with key spec {md['KeySpec']}.")
    with pytest.raises(ClientError) as e:
        client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=b"\x01" * 64, SigningAlgorithm=algorithm)
    refused(e, "InvalidKeyUsageException", served)


def test_message_shape_errors(client: Any, served: Served, keys: dict[str, dict[str, Any]]) -> None:
    p256, rsa = keys["p256-sign"], keys["rsa-sign"]
    for md, algorithm, length in ((p256, "ECDSA_SHA_256", 31), (p256, "ECDSA_SHA_256", 48),
                                  (rsa, "RSASSA_PSS_SHA_384", 32), (rsa, "RSASSA_PKCS1_V1_5_SHA_512", 65)):
        with pytest.raises(ClientError) as e:
            client.sign(KeyId=md["KeyId"], Message=b"\x01" * length, SigningAlgorithm=algorithm, MessageType="DIGEST")
        assert refused(e, "ValidationException", served)["Error"]["Message"] == (
            f"Digest is invalid length for algorithm {algorithm}.")
    # 4096 bytes is AWS's largest RAW message; 4097 is refused with AWS's wording, for each operation taking one.
    assert client.sign(KeyId=p256["KeyId"], Message=b"m" * 4096, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    too_long = ("1 validation error detected: Value at 'message' failed to satisfy constraint: "
                "Member must have length less than or equal to 4096")
    calls = [lambda: client.sign(KeyId=p256["KeyId"], Message=b"m" * 4097, SigningAlgorithm="ECDSA_SHA_256"),
             lambda: client.verify(KeyId=p256["KeyId"], Message=b"m" * 4097, Signature=b"\x30\x00",
                                   SigningAlgorithm="ECDSA_SHA_256"),
             lambda: client.generate_mac(KeyId=keys["hmac256"]["KeyId"], Message=b"m" * 4097,
                                         MacAlgorithm="HMAC_SHA_256")]
    for call in calls:
        with pytest.raises(ClientError) as e:
            call()
        assert refused(e, "ValidationException", served)["Error"]["Message"] == too_long
    with pytest.raises(ClientError) as e:  # a signature over AWS's 6144-byte blob limit
        client.verify(KeyId=p256["KeyId"], Message=b"m", Signature=b"s" * 6145, SigningAlgorithm="ECDSA_SHA_256")
    refused(e, "ValidationException", served)
    with pytest.raises(ClientError) as e:
        client.sign(KeyId=p256["KeyId"], Message=b"m" * 64, SigningAlgorithm="ECDSA_SHA_256",
                    MessageType="EXTERNAL_MU")
    refused(e, "ValidationException", served)


def test_a_disabled_key_neither_signs_nor_verifies(client: Any, served: Served) -> None:
    md = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    sig = client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    mac_key = client.create_key(KeySpec="HMAC_384", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    client.disable_key(KeyId=md["KeyId"])
    client.disable_key(KeyId=mac_key["KeyId"])
    calls = [lambda: client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256"),
             lambda: client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=sig, SigningAlgorithm="ECDSA_SHA_256"),
             lambda: client.get_public_key(KeyId=md["KeyId"]),
             lambda: client.generate_mac(KeyId=mac_key["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_384")]
    for call in calls:
        with pytest.raises(ClientError) as e:
            call()
        refused(e, "DisabledException", served)
    client.enable_key(KeyId=md["KeyId"])
    assert client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=sig,
                         SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"] is True


@pytest.mark.parametrize("label", ["rsa-sign", "rsa-enc", "hmac256", "mldsa44", "p256-agree"])
def test_rotation_is_unsupported_for_asymmetric_and_hmac_keys(client: Any, served: Served,
                                                              keys: dict[str, dict[str, Any]], label: str) -> None:
    key = keys[label]["KeyId"]
    calls = [lambda: client.enable_key_rotation(KeyId=key), lambda: client.enable_key_rotation(
        KeyId=key, RotationPeriodInDays=90), lambda: client.disable_key_rotation(KeyId=key),
             lambda: client.rotate_key_on_demand(KeyId=key), lambda: client.get_key_rotation_status(KeyId=key)]
    for call in calls:
        with pytest.raises(ClientError) as e:
            call()
        refused(e, "UnsupportedOperationException", served)


def test_aliases_pending_deletion_and_members_kmscli_does_not_honour(client: Any, served: Served) -> None:
    md = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    client.create_alias(AliasName="alias/release-signer", TargetKeyId=md["KeyId"])
    alias_arn = f"arn:aws:kms:{REGION}:{served.account}:alias/release-signer"
    for name in ("alias/release-signer", alias_arn, md["Arn"]):
        signed = client.sign(KeyId=name, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")
        assert signed["KeyId"] == md["Arn"]  # the key's ARN, whatever name the request used
        assert client.verify(KeyId=name, Message=MESSAGE, Signature=signed["Signature"],
                             SigningAlgorithm="ECDSA_SHA_256")["KeyId"] == md["Arn"]
        assert client.get_public_key(KeyId=name)["KeyId"] == md["Arn"]
    # Members AWS has that kmscli cannot honour are refused, never ignored.
    with pytest.raises(ClientError) as e:
        client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=b"\x30\x00", SigningAlgorithm="ECDSA_SHA_256",
                      DryRun=True)
    refused(e, "UnsupportedOperationException", served)
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": b"not an attestation"}
    with pytest.raises(ClientError) as e:
        client.generate_data_key_pair(KeyId=md["KeyId"], KeyPairSpec="ECC_NIST_P256", Recipient=recipient)
    refused(e, "UnsupportedOperationException", served)
    with pytest.raises(ClientError) as e:
        client.list_key_rotations(KeyId=md["KeyId"])
    refused(e, "UnsupportedOperationException", served)
    client.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=7)
    for call in (lambda: client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256"),
                 lambda: client.get_public_key(KeyId="alias/release-signer")):
        with pytest.raises(ClientError) as e:
            call()
        refused(e, "KMSInvalidStateException", served)


@pytest.mark.parametrize("label", ["hmac256", "symmetric"])
def test_get_public_key_of_a_key_without_one(client: Any, served: Served, keys: dict[str, dict[str, Any]],
                                             label: str) -> None:
    with pytest.raises(ClientError) as e:
        client.get_public_key(KeyId=keys[label]["KeyId"])
    refused(e, "UnsupportedOperationException", served)


# -- policy conditions ----------------------------------------------------------------------------------
def policy_with(account: str, deny: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "account", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "the condition under test", "Effect": "Deny", "Principal": {"AWS": "*"}, "Resource": "*", **deny}]})


def test_a_policy_on_kms_signing_algorithm(client: Any, served: Served) -> None:
    policy = policy_with(served.account, {"Action": "kms:Sign", "Condition": {
        "StringNotEquals": {"kms:SigningAlgorithm": "RSASSA_PSS_SHA_256"}}})
    md = client.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY", Policy=policy)["KeyMetadata"]
    for algorithm in ("RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_384"):
        with pytest.raises(ClientError) as e:
            client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm=algorithm)
        refused(e, "AccessDeniedException", served)
    sig = client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    assert client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=sig,
                         SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"] is True
    # Verify is not kms:Sign: another algorithm reaches the signature check (and fails there, not on the policy).
    with pytest.raises(ClientError) as e:
        client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=sig, SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
    refused(e, "KMSInvalidSignatureException", served)


def test_a_policy_on_kms_message_type(client: Any, served: Served) -> None:
    policy = policy_with(served.account, {"Action": ["kms:Sign", "kms:Verify"], "Condition": {
        "StringNotEquals": {"kms:MessageType": "RAW"}}})
    md = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Policy=policy)["KeyMetadata"]
    digest = hashlib.sha256(MESSAGE).digest()
    sig = client.sign(KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256",
                      MessageType="RAW")["Signature"]
    assert client.verify(KeyId=md["KeyId"], Message=MESSAGE, Signature=sig,
                         SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"] is True
    with pytest.raises(ClientError) as e:
        client.sign(KeyId=md["KeyId"], Message=digest, SigningAlgorithm="ECDSA_SHA_256", MessageType="DIGEST")
    refused(e, "AccessDeniedException", served)
    with pytest.raises(ClientError) as e:
        client.verify(KeyId=md["KeyId"], Message=digest, Signature=sig, SigningAlgorithm="ECDSA_SHA_256",
                      MessageType="DIGEST")
    refused(e, "AccessDeniedException", served)


def test_policies_on_mac_encryption_algorithm_and_data_key_pair_spec(client: Any, served: Served) -> None:
    mac_key = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC", Policy=policy_with(
        served.account, {"Action": "kms:VerifyMac", "Condition": {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_256"}}}
    ))["KeyMetadata"]
    mac = client.generate_mac(KeyId=mac_key["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")["Mac"]
    with pytest.raises(ClientError) as e:
        client.verify_mac(KeyId=mac_key["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256", Mac=mac)
    refused(e, "AccessDeniedException", served)

    rsa = client.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT", Policy=policy_with(
        served.account, {"Action": "kms:Encrypt",
                         "Condition": {"StringEquals": {"kms:EncryptionAlgorithm": "RSAES_OAEP_SHA_1"}}}
    ))["KeyMetadata"]
    with pytest.raises(ClientError) as e:
        client.encrypt(KeyId=rsa["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1")
    refused(e, "AccessDeniedException", served)
    assert client.encrypt(KeyId=rsa["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")["KeyId"]

    sym = client.create_key(Policy=policy_with(served.account, {
        "Action": "kms:GenerateDataKeyPair*",
        "Condition": {"StringNotEquals": {"kms:DataKeyPairSpec": "ECC_NIST_P256"}}}))["KeyMetadata"]
    with pytest.raises(ClientError) as e:
        client.generate_data_key_pair(KeyId=sym["KeyId"], KeyPairSpec="RSA_2048")
    refused(e, "AccessDeniedException", served)
    with pytest.raises(ClientError) as e:
        client.generate_data_key_pair_without_plaintext(KeyId=sym["KeyId"], KeyPairSpec="ECC_NIST_P384")
    refused(e, "AccessDeniedException", served)
    assert client.generate_data_key_pair(KeyId=sym["KeyId"], KeyPairSpec="ECC_NIST_P256")["KeyPairSpec"] == (
        "ECC_NIST_P256")


# -- the AWS CLI ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI is not installed beside this interpreter")
def test_the_aws_cli_signs_verifies_and_gets_the_public_key(client: Any, served: Served,
                                                            keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    md = keys["p384-sign"]

    def aws(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(AWS), "kms", *args], capture_output=True, cwd=tmp_path, timeout=HANG_GUARD_S,
                              env=served.aws_env(AWS_DEFAULT_REGION=REGION), stdin=subprocess.DEVNULL,
                              start_new_session=True)

    def ok_json(r: subprocess.CompletedProcess) -> dict[str, Any]:
        assert r.returncode == 0, (r.args, r.returncode, r.stderr.decode(errors="replace"))
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    got = ok_json(aws("get-public-key", "--key-id", md["Arn"]))
    der = base64.b64decode(got["PublicKey"], validate=True)
    assert der == client.get_public_key(KeyId=md["KeyId"])["PublicKey"]
    assert (got["KeySpec"], got["KeyUsage"], got["SigningAlgorithms"]) == ("ECC_NIST_P384", "SIGN_VERIFY",
                                                                           ["ECDSA_SHA_384"])
    write(tmp_path / "release.tar", MESSAGE * 3)
    signed = ok_json(aws("sign", "--key-id", md["KeyId"], "--message", "fileb://release.tar", "--message-type", "RAW",
                         "--signing-algorithm", "ECDSA_SHA_384"))
    assert (signed["KeyId"], signed["SigningAlgorithm"]) == (md["Arn"], "ECDSA_SHA_384")
    sig = write(tmp_path / "release.sig", base64.b64decode(signed["Signature"], validate=True))
    # The README's story: a release verified with openssl alone.
    openssl_ok("pkey", "-pubin", "-inform", "DER", "-in", write(tmp_path / "pub.der", der),
               "-out", tmp_path / "pub.pem")
    assert openssl_ok("dgst", "-sha384", "-verify", tmp_path / "pub.pem", "-signature", sig,
                      tmp_path / "release.tar") == b"Verified OK\n"
    verified = ok_json(aws("verify", "--key-id", md["KeyId"], "--message", "fileb://release.tar", "--signature",
                           "fileb://release.sig", "--signing-algorithm", "ECDSA_SHA_384"))
    assert verified == {"KeyId": md["Arn"], "SignatureValid": True, "SigningAlgorithm": "ECDSA_SHA_384"}
    write(tmp_path / "release.tar", MESSAGE * 3 + b"tampered")
    r = aws("verify", "--key-id", md["KeyId"], "--message", "fileb://release.tar", "--signature",
            "fileb://release.sig", "--signing-algorithm", "ECDSA_SHA_384")
    assert r.returncode == 255 and r.stdout == b""
    assert b"An error occurred (KMSInvalidSignatureException) when calling the Verify operation" in r.stderr, r.stderr
    agents = [rec for rec in served.audit() if rec.get("eventName") in ("Sign", "Verify", "GetPublicKey")
              and "aws-cli/" in (rec.get("userAgent") or "")]
    assert sorted((rec["eventName"], rec.get("errorCode", "")) for rec in agents) == [
        ("GetPublicKey", ""), ("Sign", ""), ("Verify", ""), ("Verify", "KMSInvalidSignatureException")]


def test_nothing_secret_reached_the_audit_log(served: Served, client: Any) -> None:
    """No message, signature, MAC, shared secret or private key of this module is in the log, by its marker."""
    text = served.audit_path.read_text()
    assert base64.b64encode(MESSAGE).decode()[:32] not in text and MESSAGE.hex()[:32] not in text
    assert "release 1.2.3" not in text
    assert client.list_keys()["Keys"]  # and the server still answers
