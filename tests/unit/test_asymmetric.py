"""kmscli/crypto/asymmetric.py, checked by tools nobody here wrote.

* RSA and ECDSA: every signature kmscli makes verifies with ``openssl dgst`` (RAW)
  or ``openssl pkeyutl`` (DIGEST) against the PEM of GetPublicKey's key, with
  the PSS salt length pinned to the digest length; signatures openssl makes
  with the same private key (PKCS#8 DER turned into PEM by openssl) verify in
  kmscli. RSA-OAEP: openssl's ciphertexts decrypt in kmscli and kmscli's in
  openssl, with the hash in both OAEP and MGF1.
* ECDH: ``openssl pkeyutl -derive`` gives kmscli's shared secret, from both sides.
* HMAC: Python's ``hmac`` and ``openssl mac`` give kmscli's MAC.
* ML-DSA: openssl 3.0 here has none, so: dilithium-py, an independent pure
  Python FIPS 204 implementation, derives the same key pair from a seed and
  verifies kmscli's signatures (RAW and EXTERNAL_MU) while kmscli verifies its
  own; a Project Wycheproof vector (tests/vectors/asymmetric/) verifies; mu
  computed with hashlib from FIPS 204 section 6.2 signs and verifies as the RAW
  message does; the key's rho is FIPS 204's from the seed (hashlib).
* The tables are botocore's enums and the lists AWS's examples show.

Keys are made once per module (RSA_4096 is slow to make); openssl runs on files
in pytest's tmp_path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, mlkem, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from kmscli.crypto import asymmetric as A
from kmscli.errors import (
    EXIT_CIPHERTEXT,
    EXIT_STATE,
    EXIT_USAGE,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KmsError,
    KMSInternalException,
    UnsupportedOperationException,
    ValidationException,
)
from tests.openssl_cli import OPENSSL, ok, openssl

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "asymmetric"
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

RSA = ("RSA_2048", "RSA_3072", "RSA_4096")
NIST = ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521")
ECC = (*NIST, "ECC_SECG_P256K1")
MLDSA = ("ML_DSA_44", "ML_DSA_65", "ML_DSA_87")
HMACS = ("HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512")
HASH_OF = {"256": "sha256", "384": "sha384", "512": "sha512"}
MESSAGE = b"release-1.2.3.tar.gz: the bytes of a release file\n"


# -- helpers ------------------------------------------------------------------------------


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def private_pem(tmp: Path, name: str, material: bytes) -> Path:
    """The PKCS#8 DER ``material`` as a PEM file, converted by openssl itself (not by kmscli)."""
    pem = ok(openssl("pkey", "-inform", "DER", "-outform", "PEM", stdin=material))
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    return write(tmp / f"{name}.key.pem", pem)


def public_pem(tmp: Path, name: str, spec: str, material: bytes) -> Path:
    """GetPublicKey's DER SubjectPublicKeyInfo, as the PEM ``kmscli pubkey`` prints."""
    return write(tmp / f"{name}.pub.pem", A.spki_to_pem(A.public_key_der(spec, material)), 0o644)


def algorithms(spec: str) -> list[str]:
    return A.key_algorithms(spec, A.SIGN_VERIFY)["SigningAlgorithms"]


def pss_opts(alg: str, flag: str) -> list[str]:
    """openssl options for AWS's PSS: MGF1 over the same hash, salt length exactly the digest length."""
    if not alg.startswith("RSASSA_PSS_"):
        return []
    return [flag, "rsa_padding_mode:pss", flag, f"rsa_pss_saltlen:{A.DIGEST_SIZES[alg]}"]


def raises(exc: type[KmsError], fn: Callable[[], Any]) -> KmsError:
    with pytest.raises(exc) as info:
        fn()
    assert type(info.value) is exc, f"{type(info.value).__name__} is not exactly {exc.__name__}"
    return info.value


def raw_mldsa_public(spec: str, material: bytes) -> bytes:
    key = ser.load_der_public_key(A.public_key_der(spec, material))
    assert isinstance(key, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey)
    return key.public_bytes_raw()


def botocore_enum(shape: str) -> list[str]:
    """An enum of botocore's own KMS model (not kmscli/aws_model.py, which is made from it)."""
    session = pytest.importorskip("botocore.session")
    return list(session.get_session().get_service_model("kms").shape_for(shape).enum)


def fips204_mu(public_raw: bytes, message: bytes) -> bytes:
    """FIPS 204 section 6.2 / Algorithm 7 lines 6-7 with an empty context, from hashlib alone:
    tr = H(pk, 64); mu = H(tr || 0x00 || 0x00 || M, 64), H = SHAKE256."""
    tr = hashlib.shake_256(public_raw).digest(64)
    return hashlib.shake_256(tr + b"\x00\x00" + message).digest(64)


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    """One key of every spec kmscli makes, RSA_4096 included, made once for the module."""
    return {spec: A.generate(spec) for spec in A.KEY_SPECS}


@pytest.fixture(scope="module")
def others() -> dict[str, bytes]:
    """A second key of the specs whose signatures and secrets the tests swap between keys."""
    return {spec: A.generate(spec) for spec in ("RSA_2048", *ECC, *MLDSA, *HMACS)}


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[bytes, bytes]]:
    return {spec: A.generate_data_key_pair(spec) for spec in A.DATA_KEY_PAIR_SPECS}


@pytest.fixture(scope="module")
def pems(keys: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """spec -> (private PEM, public PEM) for the RSA and ECC keys, in a directory of the module."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    tmp = tmp_path_factory.mktemp("pems")
    return {s: (private_pem(tmp, s, keys[s]), public_pem(tmp, s, s, keys[s])) for s in (*RSA, *ECC)}


# -- the tables ------------------------------------------------------------------------------
def test_key_specs_and_usages_are_awss() -> None:
    """Every KeySpec of botocore is either made (with AWS's usages) or refused with a reason; usages are
    KeyUsageType values; the pairs are CreateKey's documented ones."""
    assert set(A.KEY_USAGES) | set(A.REFUSED_KEY_SPECS) == set(botocore_enum("KeySpec"))
    assert not set(A.KEY_USAGES) & set(A.REFUSED_KEY_SPECS)
    assert set(A.KEY_USAGES) == {"SYMMETRIC_DEFAULT", *RSA, *ECC, *MLDSA, *HMACS}
    usages = set(botocore_enum("KeyUsageType"))
    assert all(set(u) <= usages for u in A.KEY_USAGES.values())
    assert {s: set(u) for s, u in A.KEY_USAGES.items()} == {
        "SYMMETRIC_DEFAULT": {"ENCRYPT_DECRYPT"},
        **{s: {"ENCRYPT_DECRYPT", "SIGN_VERIFY"} for s in RSA},
        **{s: {"SIGN_VERIFY", "KEY_AGREEMENT"} for s in NIST},
        "ECC_SECG_P256K1": {"SIGN_VERIFY"},
        **{s: {"SIGN_VERIFY"} for s in MLDSA},
        **{s: {"GENERATE_VERIFY_MAC"} for s in HMACS},
    }


def test_describe_key_lists_algorithms_exactly_as_aws() -> None:
    """The member and order AWS shows: botocore's DescribeKey/CreateKey/GetPublicKey examples and the
    responses LocalStack recorded from AWS."""
    rsa_sign = ["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
                "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512"]
    expected = {
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"): {"EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"]},
        **{(s, "SIGN_VERIFY"): {"SigningAlgorithms": rsa_sign} for s in RSA},
        **{(s, "ENCRYPT_DECRYPT"): {"EncryptionAlgorithms": ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]} for s in RSA},
        ("ECC_NIST_P256", "SIGN_VERIFY"): {"SigningAlgorithms": ["ECDSA_SHA_256"]},
        ("ECC_NIST_P384", "SIGN_VERIFY"): {"SigningAlgorithms": ["ECDSA_SHA_384"]},
        ("ECC_NIST_P521", "SIGN_VERIFY"): {"SigningAlgorithms": ["ECDSA_SHA_512"]},
        ("ECC_SECG_P256K1", "SIGN_VERIFY"): {"SigningAlgorithms": ["ECDSA_SHA_256"]},
        **{(s, "KEY_AGREEMENT"): {"KeyAgreementAlgorithms": ["ECDH"]} for s in NIST},
        **{(s, "SIGN_VERIFY"): {"SigningAlgorithms": ["ML_DSA_SHAKE_256"]} for s in MLDSA},
        **{(s, "GENERATE_VERIFY_MAC"): {"MacAlgorithms": ["HMAC_SHA_" + s[5:]]} for s in HMACS},
    }
    got = {(s, u): A.key_algorithms(s, u) for s, us in A.KEY_USAGES.items() for u in us}
    assert got == expected
    enums = {"SigningAlgorithms": "SigningAlgorithmSpec", "EncryptionAlgorithms": "EncryptionAlgorithmSpec",
             "MacAlgorithms": "MacAlgorithmSpec", "KeyAgreementAlgorithms": "KeyAgreementAlgorithmSpec"}
    for lists in got.values():
        for member, values in lists.items():
            assert set(values) <= set(botocore_enum(enums[member]))


def test_check_key_usage_accepts_awss_pairs_and_defaults_a_symmetric_key() -> None:
    assert A.check_key_usage("SYMMETRIC_DEFAULT", None) == "ENCRYPT_DECRYPT"
    for spec, usages in A.KEY_USAGES.items():
        for usage in usages:
            assert A.check_key_usage(spec, usage) == usage


def test_check_key_usage_refuses_a_missing_or_incompatible_usage() -> None:
    e = raises(ValidationException, lambda: A.check_key_usage("RSA_2048", None))
    assert e.aws_message == "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."
    e = raises(ValidationException, lambda: A.check_key_usage("RSA_2048", "KEY_AGREEMENT"))
    assert e.aws_message == "KeyUsage KEY_AGREEMENT is not compatible with KeySpec RSA_2048"
    for spec, usage in [("ECC_SECG_P256K1", "KEY_AGREEMENT"), ("HMAC_256", "SIGN_VERIFY"),
                        ("ML_DSA_65", "ENCRYPT_DECRYPT"), ("ECC_NIST_P256", "ENCRYPT_DECRYPT"),
                        ("SYMMETRIC_DEFAULT", "GENERATE_VERIFY_MAC")]:
        raises(ValidationException, lambda s=spec, u=usage: A.check_key_usage(s, u))
    e = raises(ValidationException, lambda: A.check_key_usage("RSA_2048", "SIGN"))
    assert e.aws_message.startswith("1 validation error detected: Value 'SIGN' at 'keyUsage' failed to satisfy "
                                    "constraint: Member must satisfy enum value set: [SIGN_VERIFY, ")


def test_refused_and_unknown_key_specs() -> None:
    """SM2 (and the AWS specs kmscli does not make) is exit 2 with a reason; a name AWS lacks is AWS's enum
    error; neither makes a key."""
    for spec in A.REFUSED_KEY_SPECS:
        e = raises(UnsupportedOperationException, lambda s=spec: A.generate(s))
        assert e.exit_code == EXIT_USAGE and spec in str(e) and ": " in str(e)
    assert "China" in str(raises(UnsupportedOperationException, lambda: A.check_key_spec("SM2")))
    e = raises(ValidationException, lambda: A.generate("RSA_1024"))
    assert e.aws_message == ("1 validation error detected: Value 'RSA_1024' at 'keySpec' failed to satisfy constraint: "
                             f"Member must satisfy enum value set: [{', '.join(botocore_enum('KeySpec'))}]")


def test_require_usage_speaks_awss_words() -> None:
    arn = "arn:aws:kms:local:111122223333:key/1b4e28ba-2fa1-4d2e-883f-0016d3cca427"
    e = raises(InvalidKeyUsageException, lambda: A.require_usage("HMAC_256", None, A.SIGN_VERIFY, "Sign", arn))
    assert e.aws_message == f"{arn} key usage is GENERATE_VERIFY_MAC which is not valid for Sign."
    assert e.exit_code == EXIT_STATE
    A.require_usage("RSA_2048", "SIGN_VERIFY", A.SIGN_VERIFY, "Sign")
    A.require_usage("RSA_2048", None, A.ENCRYPT_DECRYPT, "Encrypt")
    e = raises(InvalidKeyUsageException, lambda: A.require_usage("RSA_2048", "ENCRYPT_DECRYPT", A.SIGN_VERIFY, "Sign"))
    assert "key usage is ENCRYPT_DECRYPT which is not valid for Sign." in e.aws_message


# -- key material --------------------------------------------------------------------------
def test_generate_makes_pkcs8_of_the_spec_and_hmac_keys_of_awss_lengths(keys: dict[str, bytes]) -> None:
    """RSA keys of the spec's size (with OpenSSL's full RSA check), ECC keys on the spec's curve, ML-DSA keys
    of the spec's parameter set, all PKCS#8 DER; HMAC keys of the spec's length; all fresh."""
    curves = {"ECC_NIST_P256": "secp256r1", "ECC_NIST_P384": "secp384r1", "ECC_NIST_P521": "secp521r1",
              "ECC_SECG_P256K1": "secp256k1"}
    kinds = {"ML_DSA_44": mldsa.MLDSA44PrivateKey, "ML_DSA_65": mldsa.MLDSA65PrivateKey,
             "ML_DSA_87": mldsa.MLDSA87PrivateKey}
    for spec in (*RSA, *ECC, *MLDSA):
        key: Any = ser.load_der_private_key(keys[spec], password=None)
        if spec in RSA:
            assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == int(spec[4:])
        elif spec in ECC:
            assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == curves[spec]
        else:
            assert isinstance(key, kinds[spec])
    assert {s: len(keys[s]) for s in HMACS} == {"HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}
    assert len(keys["SYMMETRIC_DEFAULT"]) == 32
    assert A.generate("HMAC_256") != A.generate("HMAC_256")


@needs_openssl
@pytest.mark.parametrize("spec", [*RSA, *ECC])
def test_get_public_key_is_spki_that_openssl_reads(spec: str, keys: dict[str, bytes]) -> None:
    der = A.public_key_der(spec, keys[spec])
    text = ok(openssl("pkey", "-pubin", "-inform", "DER", "-noout", "-text", stdin=der)).decode()
    if spec in RSA:
        assert f"Public-Key: ({spec[4:]} bit)" in text
    else:
        assert {"ECC_NIST_P256": "prime256v1", "ECC_NIST_P384": "secp384r1", "ECC_NIST_P521": "secp521r1",
                "ECC_SECG_P256K1": "secp256k1"}[spec] in text
    # openssl derives the same public key from the private key, independently of kmscli.
    assert ok(openssl("pkey", "-inform", "DER", "-pubout", "-outform", "DER", stdin=keys[spec])) == der


def test_mldsa_get_public_key_is_spki_with_the_fips204_oid(keys: dict[str, bytes]) -> None:
    """SubjectPublicKeyInfo with NIST's OIDs id-ml-dsa-44/65/87 (2.16.840.1.101.3.4.3.17/18/19) around the
    FIPS 204 public key of the spec's size."""
    last = {"ML_DSA_44": "11", "ML_DSA_65": "12", "ML_DSA_87": "13"}
    sizes = {"ML_DSA_44": 1312, "ML_DSA_65": 1952, "ML_DSA_87": 2592}
    for spec in MLDSA:
        der = A.public_key_der(spec, keys[spec])
        assert bytes.fromhex("300b0609608648016503040" + "3" + last[spec]) in der[:24]
        raw = raw_mldsa_public(spec, keys[spec])
        assert len(raw) == sizes[spec] and der.endswith(raw)


def test_no_public_key_for_symmetric_or_hmac_keys(keys: dict[str, bytes]) -> None:
    for spec in ("SYMMETRIC_DEFAULT", *HMACS):
        raises(UnsupportedOperationException, lambda s=spec: A.public_key_der(s, keys[s]))


def test_material_of_another_spec_is_an_internal_error(keys: dict[str, bytes]) -> None:
    """Material is the vault's, never the user's: a mismatch is a bug or a corrupt vault, exit 1, and says
    nothing about the bytes."""
    for spec, material in [("ECC_NIST_P384", keys["ECC_NIST_P256"]), ("RSA_3072", keys["RSA_2048"]),
                           ("ML_DSA_65", keys["ML_DSA_44"]), ("RSA_2048", b"\x30\x03junk")]:
        e = raises(KMSInternalException, lambda s=spec, m=material: A.sign(s, m, algorithms(s)[0], MESSAGE))
        assert material.hex()[:16] not in str(e)


def test_imported_private_material_is_checked_once(keys: dict[str, bytes]) -> None:
    """check_private_material (for key pairs from outside) runs OpenSSL's RSA consistency check that the
    operations skip: a PKCS#8 RSA key whose CRT coefficient is wrong is refused, exit 2."""
    for spec in ("RSA_2048", "ECC_NIST_P256", "ML_DSA_44"):
        A.check_private_material(spec, keys[spec])
    n = ser.load_der_private_key(keys["RSA_2048"], None).private_numbers()  # type: ignore[union-attr]
    broken = rsa.RSAPrivateNumbers(n.p, n.q, n.d, n.dmp1, n.dmq1, n.iqmp + 1, n.public_numbers)
    bad = broken.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    for spec, material in [("RSA_2048", bad), ("RSA_2048", keys["ECC_NIST_P256"]), ("ECC_NIST_P256", b"junk")]:
        e = raises(ValidationException, lambda s=spec, m=material: A.check_private_material(s, m))
        assert e.exit_code == EXIT_USAGE


# -- RSA and ECDSA signatures against openssl -------------------------------------------------------
SIGNING_CASES = [(s, alg, t) for s in (*RSA, *ECC) for alg in algorithms(s) for t in ("RAW", "DIGEST")]


@needs_openssl
@pytest.mark.parametrize(("spec", "alg", "message_type"), SIGNING_CASES)
def test_signature_verifies_with_openssl(spec: str, alg: str, message_type: str, keys: dict[str, bytes],
                                         pems: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """kmscli signs (the message, or its digest); openssl verifies against GetPublicKey's PEM: dgst over the
    message for RAW, pkeyutl over the digest for DIGEST. PSS is checked with the salt length pinned to the
    digest length, so a signature with any other salt fails."""
    h = HASH_OF[alg[-3:]]
    digest = hashlib.new(h, MESSAGE).digest()
    given = MESSAGE if message_type == "RAW" else digest
    sig = write(tmp_path / "sig", A.sign(spec, keys[spec], alg, given, message_type))
    msg = write(tmp_path / "msg", MESSAGE)
    pub = pems[spec][1]
    if message_type == "RAW":
        proc = openssl("dgst", f"-{h}", "-verify", pub, *pss_opts(alg, "-sigopt"), "-signature", sig, msg)
        assert b"Verified OK" in ok(proc)
    else:
        dig = write(tmp_path / "digest", digest)
        proc = openssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-pkeyopt", f"digest:{h}",
                       *pss_opts(alg, "-pkeyopt"), "-in", dig, "-sigfile", sig)
        assert b"Signature Verified Successfully" in ok(proc)
    # The same signature of another message fails in openssl too: it verifies something, not everything.
    other = write(tmp_path / "other", MESSAGE + b"!")
    assert openssl("dgst", f"-{h}", "-verify", pub, *pss_opts(alg, "-sigopt"), "-signature", sig,
                   other).returncode != 0


@needs_openssl
@pytest.mark.parametrize(("spec", "alg"), [(s, a) for s, a, t in SIGNING_CASES if t == "RAW"])
def test_openssl_signature_verifies_in_kmscli(spec: str, alg: str, keys: dict[str, bytes],
                                              pems: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """openssl signs with the key's private half (PKCS#8 DER -> PEM by openssl); kmscli Verify accepts it as
    RAW and as DIGEST, and refuses it for another message."""
    h = HASH_OF[alg[-3:]]
    msg = write(tmp_path / "msg", MESSAGE)
    sig = ok(openssl("dgst", f"-{h}", "-sign", pems[spec][0], *pss_opts(alg, "-sigopt"), msg))
    A.verify(spec, keys[spec], alg, MESSAGE, sig)
    A.verify(spec, keys[spec], alg, hashlib.new(h, MESSAGE).digest(), sig, "DIGEST")
    A.verify_public(spec, A.public_key_der(spec, keys[spec]), alg, MESSAGE, sig)
    raises(A.KMSInvalidSignatureException, lambda: A.verify(spec, keys[spec], alg, MESSAGE + b"!", sig))


@pytest.mark.parametrize("spec", ECC)
def test_ecdsa_signatures_are_der(spec: str, keys: dict[str, bytes]) -> None:
    """AWS returns ECDSA signatures DER-encoded (RFC 3279): decoding and re-encoding gives the same bytes, and
    the raw r||s form of the same signature is refused."""
    alg = algorithms(spec)[0]
    sig = A.sign(spec, keys[spec], alg, MESSAGE)
    r, s = decode_dss_signature(sig)
    assert encode_dss_signature(r, s) == sig
    size = (ser.load_der_private_key(keys[spec], None).curve.key_size + 7) // 8  # type: ignore[union-attr]
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raises(A.KMSInvalidSignatureException, lambda: A.verify(spec, keys[spec], alg, MESSAGE, raw))


# -- RSA encryption against openssl ------------------------------------------------------------------
@needs_openssl
@pytest.mark.parametrize(("spec", "alg"), [(s, a) for s in RSA for a in ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")])
def test_openssl_oaep_ciphertext_decrypts_in_kmscli(spec: str, alg: str, keys: dict[str, bytes],
                                                    pems: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """openssl pkeyutl -encrypt with OAEP and the same hash for OAEP and MGF1, at AWS's largest plaintext."""
    h = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"}[alg]
    plaintext = os.urandom(A.max_plaintext(spec, alg))
    pt = write(tmp_path / "pt", plaintext)
    ct = ok(openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", pems[spec][1], "-pkeyopt", "rsa_padding_mode:oaep",
                    "-pkeyopt", f"rsa_oaep_md:{h}", "-pkeyopt", f"rsa_mgf1_md:{h}", "-in", pt))
    assert A.decrypt(spec, keys[spec], alg, ct) == plaintext
    other = "RSAES_OAEP_SHA_256" if alg == "RSAES_OAEP_SHA_1" else "RSAES_OAEP_SHA_1"
    raises(InvalidCiphertextException, lambda: A.decrypt(spec, keys[spec], other, ct))


@needs_openssl
@pytest.mark.parametrize("alg", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
def test_kmscli_oaep_ciphertext_decrypts_in_openssl(alg: str, keys: dict[str, bytes],
                                                    pems: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    h = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"}[alg]
    ct = write(tmp_path / "ct", A.encrypt("RSA_2048", keys["RSA_2048"], alg, b"a small secret"))
    out = ok(openssl("pkeyutl", "-decrypt", "-inkey", pems["RSA_2048"][0], "-pkeyopt", "rsa_padding_mode:oaep",
                     "-pkeyopt", f"rsa_oaep_md:{h}", "-pkeyopt", f"rsa_mgf1_md:{h}", "-in", ct))
    assert out == b"a small secret"


@pytest.mark.parametrize(("spec", "alg", "limit"), [
    ("RSA_2048", "RSAES_OAEP_SHA_1", 214), ("RSA_2048", "RSAES_OAEP_SHA_256", 190),
    ("RSA_3072", "RSAES_OAEP_SHA_1", 342), ("RSA_3072", "RSAES_OAEP_SHA_256", 318),
    ("RSA_4096", "RSAES_OAEP_SHA_1", 470), ("RSA_4096", "RSAES_OAEP_SHA_256", 446),
])
def test_rsa_plaintext_limits_are_awss(spec: str, alg: str, limit: int, keys: dict[str, bytes]) -> None:
    """The AWS developer guide's table; one byte more is AWS's ValidationException, word for word."""
    assert A.max_plaintext(spec, alg) == limit
    ct = A.encrypt(spec, keys[spec], alg, b"\x01" * limit)
    assert A.decrypt(spec, keys[spec], alg, ct) == b"\x01" * limit
    e = raises(ValidationException, lambda: A.encrypt(spec, keys[spec], alg, b"\x01" * (limit + 1)))
    assert e.aws_message == f"Algorithm {alg} and key spec {spec} cannot encrypt data larger than {limit} bytes."
    raises(ValidationException, lambda: A.encrypt(spec, keys[spec], alg, b""))


def test_a_ciphertext_that_does_not_decrypt_is_invalid_ciphertext(keys: dict[str, bytes],
                                                                  others: dict[str, bytes]) -> None:
    alg = "RSAES_OAEP_SHA_256"
    ct = A.encrypt("RSA_2048", keys["RSA_2048"], alg, b"secret")
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    for bad in (flipped, ct[:-1], ct + b"\x00", b"\x00" * 256):
        e = raises(InvalidCiphertextException, lambda b=bad: A.decrypt("RSA_2048", keys["RSA_2048"], alg, b))
        assert e.exit_code == EXIT_CIPHERTEXT
    raises(InvalidCiphertextException, lambda: A.decrypt("RSA_2048", others["RSA_2048"], alg, ct))
    e = raises(InvalidKeyUsageException, lambda: A.encrypt("RSA_2048", keys["RSA_2048"], "SYMMETRIC_DEFAULT", b"x"))
    assert e.aws_message == "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048."


# -- HMAC against Python and openssl ------------------------------------------------------------------
@needs_openssl
@pytest.mark.parametrize("spec", HMACS)
def test_hmac_equals_python_and_openssl(spec: str, tmp_path: Path) -> None:
    """With material at a known value (as a seeded or imported key has), GenerateMac is RFC 2104's HMAC."""
    material = bytes(range(A.HMAC_KEY_BYTES[spec]))
    alg = "HMAC_SHA_" + spec[5:]
    mac = A.generate_mac(spec, material, alg, MESSAGE)
    h = "sha" + spec[5:]
    assert mac == hmac.new(material, MESSAGE, h).digest()
    msg = write(tmp_path / "msg", MESSAGE)
    out = ok(openssl("mac", "-digest", h.upper(), "-macopt", f"hexkey:{material.hex()}", "-in", msg, "HMAC"))
    assert out.strip().decode().lower() == mac.hex()
    A.verify_mac(spec, material, alg, MESSAGE, mac)


@pytest.mark.parametrize("spec", HMACS)
def test_verify_mac_accepts_its_mac_only(spec: str, keys: dict[str, bytes], others: dict[str, bytes]) -> None:
    alg = "HMAC_SHA_" + spec[5:]
    mac = A.generate_mac(spec, keys[spec], alg, MESSAGE)
    A.verify_mac(spec, keys[spec], alg, MESSAGE, mac)
    for bad_message, bad_mac, material in [(MESSAGE + b"!", mac, keys[spec]), (MESSAGE, mac[:-1], keys[spec]),
                                           (MESSAGE, bytes([mac[0] ^ 0x80]) + mac[1:], keys[spec]),
                                           (MESSAGE, mac + b"\x00", keys[spec]), (MESSAGE, mac, others[spec])]:
        e = raises(A.KMSInvalidMacException,
                   lambda m=bad_message, t=bad_mac, k=material: A.verify_mac(spec, k, alg, m, t))
        assert e.exit_code == EXIT_CIPHERTEXT
    raises(ValidationException, lambda: A.generate_mac(spec, keys[spec], alg, b"x" * 4097))
    assert len(A.generate_mac(spec, keys[spec], alg, b"x" * 4096)) == int(spec[5:]) // 8


# -- ECDH against openssl ----------------------------------------------------------------------------------
@needs_openssl
@pytest.mark.parametrize("spec", NIST)
def test_ecdh_secret_equals_openssl_derive(spec: str, keys: dict[str, bytes], pems: dict[str, tuple[Path, Path]],
                                           tmp_path: Path) -> None:
    """A peer key made by openssl: kmscli's secret (peer key given as PEM and as DER) is what openssl derives
    on the KMS key's side and on the peer's side, the raw x-coordinate."""
    curve = {"ECC_NIST_P256": "P-256", "ECC_NIST_P384": "P-384", "ECC_NIST_P521": "P-521"}[spec]
    peer = tmp_path / "peer.key.pem"
    ok(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-out", peer))
    peer.chmod(0o600)
    peer_pub = write(tmp_path / "peer.pub.pem", ok(openssl("pkey", "-in", peer, "-pubout")), 0o644)
    ours = A.derive_shared_secret(spec, keys[spec], peer_pub.read_bytes(), usage="KEY_AGREEMENT")
    peer_der = ok(openssl("pkey", "-in", peer, "-pubout", "-outform", "DER"))
    assert A.derive_shared_secret(spec, keys[spec], peer_der) == ours
    assert ok(openssl("pkeyutl", "-derive", "-inkey", pems[spec][0], "-peerkey", peer_pub)) == ours
    assert ok(openssl("pkeyutl", "-derive", "-inkey", peer, "-peerkey", pems[spec][1])) == ours
    assert len(ours) == {"ECC_NIST_P256": 32, "ECC_NIST_P384": 48, "ECC_NIST_P521": 66}[spec]


def test_a_peer_key_of_another_curve_or_kind_is_refused(keys: dict[str, bytes]) -> None:
    p256 = keys["ECC_NIST_P256"]
    p384_pub = A.public_key_der("ECC_NIST_P384", keys["ECC_NIST_P384"])
    k1_pub = A.public_key_der("ECC_SECG_P256K1", keys["ECC_SECG_P256K1"])
    rsa_pub = A.public_key_der("RSA_2048", keys["RSA_2048"])
    for peer in (p384_pub, k1_pub, A.spki_to_pem(p384_pub), rsa_pub, b"not a key", b"-----BEGIN PUBLIC KEY-----\n"):
        e = raises(ValidationException, lambda p=peer: A.derive_shared_secret("ECC_NIST_P256", p256, p))
        assert e.exit_code == EXIT_USAGE
    # A well-formed SubjectPublicKeyInfo whose point is not on P-256: refused, not multiplied.
    good = bytearray(A.public_key_der("ECC_NIST_P256", keys["ECC_NIST_P256"]))
    good[-1] ^= 0x01
    raises(ValidationException, lambda: A.derive_shared_secret("ECC_NIST_P256", p256, bytes(good)))
    raises(ValidationException, lambda: A.derive_shared_secret("ECC_NIST_P256", p256, b""))
    raises(ValidationException, lambda: A.derive_shared_secret("ECC_NIST_P256", p256, b"x" * 8193))
    e = raises(ValidationException, lambda: A.derive_shared_secret("ECC_NIST_P256", p256, p384_pub, "ECDHE"))
    assert "'keyAgreementAlgorithm'" in e.aws_message


def test_only_a_key_agreement_key_derives(keys: dict[str, bytes]) -> None:
    peer = A.public_key_der("ECC_NIST_P256", keys["ECC_NIST_P256"])
    raises(InvalidKeyUsageException,
           lambda: A.derive_shared_secret("ECC_NIST_P256", keys["ECC_NIST_P256"], peer, usage="SIGN_VERIFY"))
    for spec in ("ECC_SECG_P256K1", "RSA_2048", "HMAC_256", "ML_DSA_44", "SYMMETRIC_DEFAULT"):
        raises(InvalidKeyUsageException, lambda s=spec: A.derive_shared_secret(s, keys[s], peer))


# -- ML-DSA -------------------------------------------------------------------------------------------
SEED = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")


def dilithium(spec: str) -> Any:
    """dilithium-py's ML-DSA object for ``spec``: a pure Python FIPS 204 implementation, not cryptography's."""
    ml_dsa = pytest.importorskip("dilithium_py.ml_dsa")
    return {"ML_DSA_44": ml_dsa.ML_DSA_44, "ML_DSA_65": ml_dsa.ML_DSA_65, "ML_DSA_87": ml_dsa.ML_DSA_87}[spec]


@pytest.mark.parametrize("spec", MLDSA)
def test_mldsa_key_from_a_seed_is_the_one_dilithium_py_derives(spec: str) -> None:
    """FIPS 204 ML-DSA.KeyGen_internal from one 32-byte seed, in two implementations: the same public key."""
    pk, _ = dilithium(spec).key_derive(SEED)
    assert raw_mldsa_public(spec, A.mldsa_from_seed(spec, SEED)) == pk


@pytest.mark.parametrize("spec", MLDSA)
def test_mldsa_rho_is_fips204s(spec: str) -> None:
    """Without any ML-DSA library: pk starts with rho, the first 32 bytes of SHAKE256(seed || k || l, 128)."""
    rows, columns = {"ML_DSA_44": (4, 4), "ML_DSA_65": (6, 5), "ML_DSA_87": (8, 7)}[spec]
    rho = hashlib.shake_256(SEED + bytes([rows, columns])).digest(128)[:32]
    assert raw_mldsa_public(spec, A.mldsa_from_seed(spec, SEED))[:32] == rho


@pytest.mark.parametrize("spec", MLDSA)
def test_mldsa_signatures_cross_verify_with_dilithium_py(spec: str) -> None:
    """kmscli's RAW and EXTERNAL_MU signatures verify in dilithium-py; dilithium-py's (of the same key, from the
    seed) verify in kmscli, RAW and with dilithium-py's mu; each refuses the other message."""
    impl = dilithium(spec)
    pk, sk = impl.key_derive(SEED)
    material = A.mldsa_from_seed(spec, SEED)
    mu = impl.prehash_external_mu(pk, MESSAGE)
    assert mu == fips204_mu(pk, MESSAGE)
    raw_sig = A.sign(spec, material, "ML_DSA_SHAKE_256", MESSAGE)
    mu_sig = A.sign(spec, material, "ML_DSA_SHAKE_256", mu, "EXTERNAL_MU")
    assert impl.verify(pk, MESSAGE, raw_sig) and impl.verify(pk, MESSAGE, mu_sig)
    assert not impl.verify(pk, MESSAGE + b"!", raw_sig)
    theirs = impl.sign(sk, MESSAGE)
    A.verify(spec, material, "ML_DSA_SHAKE_256", MESSAGE, theirs)
    A.verify(spec, material, "ML_DSA_SHAKE_256", mu, theirs, "EXTERNAL_MU")
    raises(A.KMSInvalidSignatureException,
           lambda: A.verify(spec, material, "ML_DSA_SHAKE_256", MESSAGE + b"!", theirs))
    assert len(raw_sig) == {"ML_DSA_44": 2420, "ML_DSA_65": 3309, "ML_DSA_87": 4627}[spec]


def test_mldsa_wycheproof_vector_verifies() -> None:
    """Project Wycheproof's ML-DSA-44 baseline (another implementation's signature, empty context): valid as
    RAW and as EXTERNAL_MU with mu computed by hashlib; one flipped bit or byte less is invalid."""
    v = json.loads((VECTORS / "mldsa_44_wycheproof.json").read_text())
    assert (v["keySpec"], v["result"]) == ("ML_DSA_44", "valid")
    spki, msg, sig = (bytes.fromhex(v[k]) for k in ("publicKeyDer", "msg", "sig"))
    A.verify_public("ML_DSA_44", spki, "ML_DSA_SHAKE_256", msg, sig)
    raw = ser.load_der_public_key(spki).public_bytes_raw()  # type: ignore[union-attr]
    A.verify_public("ML_DSA_44", spki, "ML_DSA_SHAKE_256", fips204_mu(raw, msg), sig, "EXTERNAL_MU")
    flipped = bytearray(sig)
    flipped[100] ^= 0x04
    for bad in (bytes(flipped), sig[:-1]):
        raises(A.KMSInvalidSignatureException,
               lambda b=bad: A.verify_public("ML_DSA_44", spki, "ML_DSA_SHAKE_256", msg, b))
    raises(A.KMSInvalidSignatureException,
           lambda: A.verify_public("ML_DSA_44", spki, "ML_DSA_SHAKE_256", msg + b"!", sig))
    raises(ValidationException, lambda: A.verify_public("ML_DSA_65", spki, "ML_DSA_SHAKE_256", msg, sig))


@pytest.mark.parametrize("spec", MLDSA)
def test_mldsa_external_mu_is_the_raw_messages_mu(spec: str, keys: dict[str, bytes]) -> None:
    """AWS: a signature over the externally computed mu is the RAW one. mu from hashlib (FIPS 204 6.2):
    RAW signatures verify as EXTERNAL_MU and the other way round."""
    mu = fips204_mu(raw_mldsa_public(spec, keys[spec]), MESSAGE)
    raw_sig = A.sign(spec, keys[spec], "ML_DSA_SHAKE_256", MESSAGE)
    A.verify(spec, keys[spec], "ML_DSA_SHAKE_256", mu, raw_sig, "EXTERNAL_MU")
    mu_sig = A.sign(spec, keys[spec], "ML_DSA_SHAKE_256", mu, "EXTERNAL_MU")
    A.verify(spec, keys[spec], "ML_DSA_SHAKE_256", MESSAGE, mu_sig)


@pytest.mark.parametrize("spec", MLDSA)
def test_mldsa_agrees_with_cryptographys_other_api(spec: str, keys: dict[str, bytes]) -> None:
    """The raw-bytes API (from_public_bytes) verifies what kmscli signs through PKCS#8/SPKI, and the reverse."""
    cls = {"ML_DSA_44": mldsa.MLDSA44PublicKey, "ML_DSA_65": mldsa.MLDSA65PublicKey,
           "ML_DSA_87": mldsa.MLDSA87PublicKey}[spec]
    public = cls.from_public_bytes(raw_mldsa_public(spec, keys[spec]))
    public.verify(A.sign(spec, keys[spec], "ML_DSA_SHAKE_256", MESSAGE), MESSAGE)
    seed_key = {"ML_DSA_44": mldsa.MLDSA44PrivateKey, "ML_DSA_65": mldsa.MLDSA65PrivateKey,
                "ML_DSA_87": mldsa.MLDSA87PrivateKey}[spec].from_seed_bytes(SEED)
    A.verify(spec, A.mldsa_from_seed(spec, SEED), "ML_DSA_SHAKE_256", MESSAGE, seed_key.sign(MESSAGE))


@pytest.mark.parametrize("spec", MLDSA)
def test_mldsa_refuses_another_key_bit_flips_and_truncation(spec: str, keys: dict[str, bytes],
                                                            others: dict[str, bytes]) -> None:
    sig = A.sign(spec, keys[spec], "ML_DSA_SHAKE_256", MESSAGE)
    flipped = bytearray(sig)
    flipped[len(sig) // 2] ^= 0x10
    for material, bad in [(others[spec], sig), (keys[spec], bytes(flipped)), (keys[spec], sig[:-1]),
                          (keys[spec], sig + b"\x00")]:
        raises(A.KMSInvalidSignatureException,
               lambda m=material, b=bad: A.verify(spec, m, "ML_DSA_SHAKE_256", MESSAGE, b))


def test_mldsa_message_types(keys: dict[str, bytes]) -> None:
    """RAW up to 4096 bytes and a 64-byte EXTERNAL_MU; DIGEST is not ML-DSA's, nor EXTERNAL_MU another key's."""
    m = keys["ML_DSA_65"]
    A.sign("ML_DSA_65", m, "ML_DSA_SHAKE_256", b"x" * 4096)
    raises(ValidationException, lambda: A.sign("ML_DSA_65", m, "ML_DSA_SHAKE_256", b"x" * 4097))
    e = raises(ValidationException, lambda: A.sign("ML_DSA_65", m, "ML_DSA_SHAKE_256", b"x" * 64, "DIGEST"))
    assert e.aws_message == "Message type DIGEST is incompatible with key spec ML_DSA_65."
    for size in (63, 65, 32):
        e = raises(ValidationException,
                   lambda n=size: A.sign("ML_DSA_65", m, "ML_DSA_SHAKE_256", b"x" * n, "EXTERNAL_MU"))
        assert e.aws_message == "External Mu is invalid length for algorithm ML_DSA_SHAKE_256."
    e = raises(ValidationException,
               lambda: A.sign("ECC_NIST_P256", keys["ECC_NIST_P256"], "ECDSA_SHA_256", b"x" * 64, "EXTERNAL_MU"))
    assert e.aws_message == "Message type EXTERNAL_MU is incompatible with key spec ECC_NIST_P256."
    raises(InvalidKeyUsageException, lambda: A.sign("ML_DSA_65", m, "ECDSA_SHA_256", MESSAGE))


# -- bad input: AWS's exception for each ------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "alg"), [
    ("ECC_NIST_P256", "ECDSA_SHA_384"), ("ECC_NIST_P384", "ECDSA_SHA_256"), ("ECC_NIST_P521", "ECDSA_SHA_256"),
    ("ECC_SECG_P256K1", "ECDSA_SHA_512"), ("ECC_NIST_P256", "RSASSA_PSS_SHA_256"), ("RSA_2048", "ECDSA_SHA_256"),
    ("RSA_3072", "ML_DSA_SHAKE_256"), ("ML_DSA_44", "RSASSA_PKCS1_V1_5_SHA_256"), ("RSA_2048", "SM2DSA"),
    ("ECC_NIST_P256", "ED25519_SHA_512"),
])
def test_a_signing_algorithm_the_spec_cannot_use_is_invalid_key_usage(spec: str, alg: str,
                                                                     keys: dict[str, bytes]) -> None:
    e = raises(InvalidKeyUsageException, lambda: A.sign(spec, keys[spec], alg, MESSAGE))
    assert e.aws_message == f"Algorithm {alg} is incompatible with key spec {spec}."
    assert e.exit_code == EXIT_STATE
    raises(InvalidKeyUsageException, lambda: A.verify(spec, keys[spec], alg, MESSAGE, b"\x30\x00"))


def test_a_mac_algorithm_the_spec_cannot_use_is_invalid_key_usage(keys: dict[str, bytes]) -> None:
    """Recorded from AWS: GenerateMac with HMAC_SHA_256 on an HMAC_224 key."""
    e = raises(InvalidKeyUsageException, lambda: A.generate_mac("HMAC_224", keys["HMAC_224"], "HMAC_SHA_256", b"m"))
    assert e.aws_message == "Algorithm HMAC_SHA_256 is incompatible with key spec HMAC_224."
    raises(InvalidKeyUsageException,
           lambda: A.verify_mac("HMAC_256", keys["HMAC_256"], "HMAC_SHA_512", b"m", b"\x00" * 64))


@pytest.mark.parametrize(("spec", "alg"), [(s, algorithms(s)[i]) for s in ("RSA_2048", *ECC) for i in (0, -1)])
def test_a_digest_of_the_wrong_length_is_refused(spec: str, alg: str, keys: dict[str, bytes]) -> None:
    size = A.DIGEST_SIZES[alg]
    for n in (size - 1, size + 1, 20, 1):
        e = raises(ValidationException, lambda k=n: A.sign(spec, keys[spec], alg, b"\x00" * k, "DIGEST"))
        assert e.aws_message == f"Digest is invalid length for algorithm {alg}."
        raises(ValidationException, lambda k=n: A.verify(spec, keys[spec], alg, b"\x00" * k, b"\x30\x00", "DIGEST"))
    A.sign(spec, keys[spec], alg, b"\x00" * size, "DIGEST")


@pytest.mark.parametrize("spec", ["RSA_2048", "ECC_NIST_P256", "ML_DSA_44"])
def test_raw_messages_are_1_to_4096_bytes(spec: str, keys: dict[str, bytes]) -> None:
    alg = algorithms(spec)[0]
    sig = A.sign(spec, keys[spec], alg, b"\xab" * 4096)
    A.verify(spec, keys[spec], alg, b"\xab" * 4096, sig)
    e = raises(ValidationException, lambda: A.sign(spec, keys[spec], alg, b"\xab" * 4097))
    assert e.aws_message == ("1 validation error detected: Value at 'message' failed to satisfy constraint: "
                             "Member must have length less than or equal to 4096")
    raises(ValidationException, lambda: A.verify(spec, keys[spec], alg, b"\xab" * 4097, sig))
    e = raises(ValidationException, lambda: A.sign(spec, keys[spec], alg, b""))
    assert e.aws_message.endswith("Member must have length greater than or equal to 1")


@pytest.mark.parametrize("spec", ["RSA_2048", *ECC, "ML_DSA_87"])
def test_another_keys_signature_is_invalid(spec: str, keys: dict[str, bytes], others: dict[str, bytes]) -> None:
    for alg in algorithms(spec):
        sig = A.sign(spec, others[spec], alg, MESSAGE)
        e = raises(A.KMSInvalidSignatureException, lambda a=alg, s=sig: A.verify(spec, keys[spec], a, MESSAGE, s))
        assert e.exit_code == EXIT_CIPHERTEXT and e.name == "KMSInvalidSignatureException"


@pytest.mark.parametrize("spec", ["RSA_2048", "RSA_4096", *ECC, *MLDSA])
def test_a_truncated_altered_or_misused_signature_is_invalid(spec: str, keys: dict[str, bytes]) -> None:
    algs = algorithms(spec)
    sig = A.sign(spec, keys[spec], algs[0], MESSAGE)
    A.verify(spec, keys[spec], algs[0], MESSAGE, sig)
    flipped = bytearray(sig)
    flipped[len(sig) // 2] ^= 0x01
    for bad in (sig[:-1], sig[: len(sig) // 2], sig[1:], bytes(flipped)):
        raises(A.KMSInvalidSignatureException, lambda b=bad: A.verify(spec, keys[spec], algs[0], MESSAGE, b))
    if len(algs) > 1:  # RSA: a PKCS#1 v1.5 signature is not a PSS one, nor SHA-256 a SHA-384 one
        for other in algs[1:]:
            raises(A.KMSInvalidSignatureException, lambda a=other: A.verify(spec, keys[spec], a, MESSAGE, sig))
    raises(ValidationException, lambda: A.verify(spec, keys[spec], algs[0], MESSAGE, b""))
    raises(ValidationException, lambda: A.verify(spec, keys[spec], algs[0], MESSAGE, b"\x00" * 6145))


def test_signed_twice_is_not_signed_once(keys: dict[str, bytes]) -> None:
    """A digest signed as RAW is hashed again: it does not verify as that digest (AWS's warning)."""
    digest = hashlib.sha256(MESSAGE).digest()
    sig = A.sign("ECC_NIST_P256", keys["ECC_NIST_P256"], "ECDSA_SHA_256", digest)  # RAW: hashed again
    raises(A.KMSInvalidSignatureException,
           lambda: A.verify("ECC_NIST_P256", keys["ECC_NIST_P256"], "ECDSA_SHA_256", digest, sig, "DIGEST"))
    A.verify("ECC_NIST_P256", keys["ECC_NIST_P256"], "ECDSA_SHA_256", digest, sig)


def test_a_key_cannot_do_what_its_usage_does_not_allow(keys: dict[str, bytes]) -> None:
    """A MAC key used to sign, encrypt or agree; a signing key used for MACs or to encrypt; an encryption key
    used to sign: InvalidKeyUsageException (exit 4), with AWS's sentence."""
    arn = "arn:aws:kms:local:111122223333:key/1b4e28ba-2fa1-4d2e-883f-0016d3cca427"
    hmac_key = keys["HMAC_256"]
    e = raises(InvalidKeyUsageException, lambda: A.sign("HMAC_256", hmac_key, "ECDSA_SHA_256", MESSAGE, key_id=arn))
    assert e.aws_message == f"{arn} key usage is GENERATE_VERIFY_MAC which is not valid for Sign."
    e = raises(InvalidKeyUsageException, lambda: A.encrypt("HMAC_256", hmac_key, "RSAES_OAEP_SHA_256", b"x"))
    assert "GENERATE_VERIFY_MAC which is not valid for Encrypt." in e.aws_message
    raises(InvalidKeyUsageException, lambda: A.verify("HMAC_256", hmac_key, "ECDSA_SHA_256", MESSAGE, b"\x30\x00"))
    raises(InvalidKeyUsageException, lambda: A.decrypt("HMAC_256", hmac_key, "RSAES_OAEP_SHA_256", b"x" * 256))
    e = raises(InvalidKeyUsageException, lambda: A.generate_mac("ECC_NIST_P256", keys["ECC_NIST_P256"],
                                                                "HMAC_SHA_256", MESSAGE))
    assert "not valid for GenerateMac." in e.aws_message
    rsa = keys["RSA_2048"]
    e = raises(InvalidKeyUsageException, lambda: A.sign("RSA_2048", rsa, "RSASSA_PSS_SHA_256", MESSAGE,
                                                        usage="ENCRYPT_DECRYPT", key_id=arn))
    assert e.aws_message == f"{arn} key usage is ENCRYPT_DECRYPT which is not valid for Sign."
    raises(InvalidKeyUsageException,
           lambda: A.encrypt("RSA_2048", rsa, "RSAES_OAEP_SHA_256", b"x", usage="SIGN_VERIFY"))
    raises(InvalidKeyUsageException,
           lambda: A.encrypt("ECC_NIST_P256", keys["ECC_NIST_P256"], "RSAES_OAEP_SHA_256", b"x"))
    raises(InvalidKeyUsageException, lambda: A.sign("SYMMETRIC_DEFAULT", keys["SYMMETRIC_DEFAULT"],
                                                    "ECDSA_SHA_256", MESSAGE))


@pytest.mark.parametrize(("call", "member"), [
    (lambda k: A.sign("RSA_2048", k["RSA_2048"], "RSASSA_PSS_SHA_1", MESSAGE), "signingAlgorithm"),
    (lambda k: A.sign("RSA_2048", k["RSA_2048"], "RSASSA_PSS_SHA_256", MESSAGE, "HASHED"), "messageType"),
    (lambda k: A.encrypt("RSA_2048", k["RSA_2048"], "RSAES_PKCS1", b"x"), "encryptionAlgorithm"),
    (lambda k: A.generate_mac("HMAC_256", k["HMAC_256"], "HMAC_SHA_1", b"x"), "macAlgorithm"),
    (lambda k: A.generate_data_key_pair("RSA_1024"), "keyPairSpec"),
])
def test_names_aws_does_not_have_are_validation_errors(call: Callable[[dict[str, bytes]], Any], member: str,
                                                       keys: dict[str, bytes]) -> None:
    e = raises(ValidationException, lambda: call(keys))
    assert f" at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [" in e.aws_message
    assert e.aws_message.startswith("1 validation error detected: Value '")


def test_errors_carry_specs_exit_codes_and_never_the_secret_bytes(keys: dict[str, bytes]) -> None:
    assert (A.KMSInvalidSignatureException.exit_code, A.KMSInvalidMacException.exit_code) == (6, 6)
    assert A.KMSInvalidSignatureException().name == "KMSInvalidSignatureException"
    assert A.KMSInvalidMacException().name == "KMSInvalidMacException"
    secret = b"SECRET-PLAINTEXT-" * 20
    failures = [
        lambda: A.encrypt("RSA_2048", keys["RSA_2048"], "RSAES_OAEP_SHA_256", secret),
        lambda: A.sign("ECC_NIST_P256", keys["ECC_NIST_P256"], "ECDSA_SHA_256", secret * 20),
        lambda: A.verify_mac("HMAC_256", keys["HMAC_256"], "HMAC_SHA_256", secret, secret[:32]),
        lambda: A.verify("ECC_NIST_P256", keys["ECC_NIST_P256"], "ECDSA_SHA_256", secret, secret),
        lambda: A.derive_shared_secret("ECC_NIST_P256", keys["ECC_NIST_P256"], secret),
    ]
    for fail in failures:
        with pytest.raises(KmsError) as info:
            fail()
        text = str(info.value) + info.value.aws_message
        assert "SECRET" not in text and secret.hex()[:20] not in text
        for material in keys.values():
            assert material.hex()[:24] not in text


# -- data key pairs -----------------------------------------------------------------------------------------
def test_data_key_pairs_cover_every_pair_spec_aws_has() -> None:
    """All of botocore's DataKeyPairSpec: made, or refused with a reason (SM2: China Regions, per SPEC;
    ML_KEM_512: cryptography 50 has no ML-KEM-512). No ML-DSA pair spec exists in AWS."""
    enum = set(botocore_enum("DataKeyPairSpec"))
    assert set(A.DATA_KEY_PAIR_SPECS) | set(A.REFUSED_DATA_KEY_PAIR_SPECS) == enum
    assert not any(s.startswith("ML_DSA") for s in enum)
    for spec in A.REFUSED_DATA_KEY_PAIR_SPECS:
        e = raises(UnsupportedOperationException, lambda s=spec: A.generate_data_key_pair(s))
        assert spec in str(e)


@needs_openssl
@pytest.mark.parametrize("spec", [s for s in A.DATA_KEY_PAIR_SPECS if not s.startswith("ML_KEM")])
def test_data_key_pair_public_key_is_the_private_keys_by_openssl(spec: str, pairs: dict[str, tuple[bytes, bytes]]
                                                                 ) -> None:
    """PKCS#8 PrivateKeyInfo and SubjectPublicKeyInfo DER that belong together: openssl derives the public
    key from the private one and gets kmscli's bytes."""
    private, public = pairs[spec]
    assert ok(openssl("pkey", "-inform", "DER", "-pubout", "-outform", "DER", stdin=private)) == public


@pytest.mark.parametrize("spec", ["ML_KEM_768", "ML_KEM_1024"])
def test_mlkem_data_key_pair_is_seed_form_and_works(spec: str, pairs: dict[str, tuple[bytes, bytes]]) -> None:
    """AWS: ML-KEM private keys in seed form, so one length for every parameter set (86 bytes: a 64-byte seed);
    a secret encapsulated to the public key decapsulates with the private key."""
    private, public = pairs[spec]
    assert len(private) == 86 and private[-66:-64] == b"\x80\x40"
    key = ser.load_der_private_key(private, None)
    pub = ser.load_der_public_key(public)
    assert isinstance(key, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey)
    assert isinstance(pub, mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey)
    secret, ciphertext = pub.encapsulate()
    assert key.decapsulate(ciphertext) == secret


@needs_openssl
@pytest.mark.parametrize(("spec", "alg"), [("RSA_2048", "RSASSA_PSS_SHA_256"), ("ECC_NIST_P384", "ECDSA_SHA_384"),
                                           ("ECC_SECG_P256K1", "ECDSA_SHA_256")])
def test_openssl_signs_with_a_data_key_pair_and_kmscli_verifies(spec: str, alg: str, tmp_path: Path,
                                                                pairs: dict[str, tuple[bytes, bytes]]) -> None:
    private, public = pairs[spec]
    key = private_pem(tmp_path, "pair", private)
    msg = write(tmp_path / "msg", MESSAGE)
    sig = ok(openssl("dgst", f"-{HASH_OF[alg[-3:]]}", "-sign", key, *pss_opts(alg, "-sigopt"), msg))
    A.verify_public(spec, public, alg, MESSAGE, sig)
    raises(A.KMSInvalidSignatureException, lambda: A.verify_public(spec, public, alg, MESSAGE + b"!", sig))


@needs_openssl
def test_ed25519_data_key_pair_signs_for_openssl(pairs: dict[str, tuple[bytes, bytes]], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private, public = pairs["ECC_NIST_EDWARDS25519"]
    key = ser.load_der_private_key(private, None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    msg = write(tmp_path / "msg", MESSAGE)
    sig = write(tmp_path / "sig", key.sign(MESSAGE))
    pub = write(tmp_path / "pub.pem", A.spki_to_pem(public), 0o644)
    assert b"Signature Verified Successfully" in ok(openssl("pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin",
                                                            "-in", msg, "-sigfile", sig))
