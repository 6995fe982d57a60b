"""Asymmetric and HMAC keys through the real entry point, checked by tools nobody here wrote (issue 16).

* RSA and ECDSA: every signature ``kmscli sign`` makes (each of the six RSA
  algorithms on RSA_2048, ECDSA on P-256, P-384, P-521 and secp256k1; one
  RSA_3072 and one RSA_4096) verifies with ``openssl dgst -verify`` against
  ``kmscli pubkey``'s PEM, for a 1-byte, a 4096-byte, a 4097-byte, an empty
  and a 3 MB file (the last three are hashed locally and signed as DIGEST);
  so do ``--digest`` signatures over ``openssl dgst -binary`` and
  ``--format base64`` ones. PSS is pinned to AWS's salt length (the digest's).
* Known keys: a key seeded (in process, SeedVault) with the private key of a
  ``kmscli datakey-pair`` verifies what ``openssl dgst -sign`` makes with that
  private key, and signs PKCS#1 v1.5 byte for byte as openssl does; an RSA
  encryption key seeded with an ``openssl genpkey`` key decrypts in openssl
  what ``kmscli encrypt --algorithm`` made, and its ``pubkey`` is openssl's.
* ML-DSA: dilithium-py (pure Python FIPS 204) verifies ``kmscli sign``'s
  signatures over a small file (RAW), a 10 KB file (external mu) and a mu it
  computed itself (``--digest``).
* RSA-OAEP: ``openssl pkeyutl -encrypt`` (SHA-1 and SHA-256, OAEP and MGF1)
  decrypts in ``kmscli decrypt``, at AWS's exact limits.
* ECDH: ``openssl pkeyutl -derive`` with an openssl peer gives ``kmscli
  derive-secret``'s secret, the peer in PEM and DER.
* HMAC: with material seeded at a known value, ``kmscli mac`` equals ``openssl
  dgst -mac HMAC`` and Python's ``hmac`` for the four HMAC specs.
* ``--json`` documents are judged by botocore's model; every refusal is its
  AWS exception and exit code, and the audit log records it as a failure.

One vault for the module, its keys made once (RSA_4096 is slow to make). Most
commands go through one session (``kmscli unlock``: three times faster than
deriving the vault key each time); the vault's setup, some refusals, the
disabled key and section 9 use the passphrase, where the CLI opens the vault
itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, clean_env, fails, kmscli_command, ok
from tests.openssl_cli import OPENSSL, openssl
from tests.openssl_cli import ok as done
from tests.session.conftest import agent_pid, alive, stop, token_of, wait_until

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

RSA_SIGNING = ("RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
               "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512")
ECDSA = {"ECC_NIST_P256": "ECDSA_SHA_256", "ECC_NIST_P384": "ECDSA_SHA_384", "ECC_NIST_P521": "ECDSA_SHA_512",
         "ECC_SECG_P256K1": "ECDSA_SHA_256"}
SIGNERS = [("RSA_2048", a) for a in RSA_SIGNING] + list(ECDSA.items())
MLDSA = ("ML_DSA_44", "ML_DSA_65", "ML_DSA_87")
ECDH_CURVES = {"ECC_NIST_P256": "P-256", "ECC_NIST_P384": "P-384", "ECC_NIST_P521": "P-521"}
HMAC_BYTES = {"HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}
#: Keys made with ``keys create --spec --usage`` (SYMMETRIC_DEFAULT included).
CREATED = [("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), ("RSA_2048", "SIGN_VERIFY"), ("RSA_3072", "SIGN_VERIFY"),
           ("RSA_4096", "SIGN_VERIFY"), ("RSA_2048", "ENCRYPT_DECRYPT"),
           *((s, "SIGN_VERIFY") for s in ECDSA), *((s, "KEY_AGREEMENT") for s in ECDH_CURVES),
           *((s, "SIGN_VERIFY") for s in MLDSA), ("HMAC_384", "GENERATE_VERIFY_MAC")]
#: The sizes of the files signed: the largest RAW message, one byte over it, none, and a big one.
FILES = {"one": 1, "max": 4096, "over": 4097, "empty": 0, "big": 3 * 1024 * 1024}

# What DescribeKey lists for each (spec, usage), as AWS's developer guide and botocore's examples show it.
RSA_SIGN_LIST = ["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
                 "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512"]
ALGORITHMS: dict[tuple[str, str], dict[str, list[str]]] = {
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"): {"EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"]},
    **{(s, "SIGN_VERIFY"): {"SigningAlgorithms": RSA_SIGN_LIST} for s in ("RSA_2048", "RSA_3072", "RSA_4096")},
    ("RSA_2048", "ENCRYPT_DECRYPT"): {"EncryptionAlgorithms": ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]},
    **{(s, "SIGN_VERIFY"): {"SigningAlgorithms": [a]} for s, a in ECDSA.items()},
    **{(s, "KEY_AGREEMENT"): {"KeyAgreementAlgorithms": ["ECDH"]} for s in ECDH_CURVES},
    **{(s, "SIGN_VERIFY"): {"SigningAlgorithms": ["ML_DSA_SHAKE_256"]} for s in MLDSA},
    **{(s, "GENERATE_VERIFY_MAC"): {"MacAlgorithms": ["HMAC_SHA_" + s[5:]]} for s in HMAC_BYTES},
}


# -- helpers ----------------------------------------------------------------------------------------
def hash_of(algorithm: str) -> str:
    return "sha" + algorithm.rsplit("_", 1)[1]


def openssl_verify(pub: Path, algorithm: str, signature: Path, data: Path) -> subprocess.CompletedProcess[bytes]:
    """``openssl dgst -verify``; PSS with the salt length pinned to the digest's, as AWS signs."""
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"] if "_PSS_" in algorithm else []
    return openssl("dgst", f"-{hash_of(algorithm)}", "-verify", pub, "-signature", signature, *pss, data)


def assert_verified(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert (proc.returncode, proc.stdout.strip()) == (0, b"Verified OK"), proc.stderr.decode(errors="replace")


def assert_not_verified(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.returncode == 1 and b"Verification failure" in proc.stdout, (proc.stdout, proc.stderr)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass
class Box:
    """One vault for the module: its keys, its files, and runners with and without a session."""

    dir: Path
    vault: Path
    env: dict[str, str]
    keys: dict[Any, str] = field(default_factory=dict)
    #: ``keys create --json`` output of each key in CREATED.
    created: dict[tuple[str, str], bytes] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    hmac_material: dict[str, bytes] = field(default_factory=dict)
    #: openssl-made private keys (PEM) of the seeded keys.
    private_pem: dict[str, Path] = field(default_factory=dict)
    session: dict[str, str] = field(default_factory=dict)
    _pubs: dict[str, Path] = field(default_factory=dict)
    _n: int = 0

    def run(self, *args: str | Path, input: bytes | None = None, session: bool = True,
            env_update: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """kmscli through the module's session (no passphrase in the environment), or with the passphrase."""
        env = dict(self.env)
        if session and self.session:
            env.pop("KMSCLI_PASSPHRASE")
            env.update(self.session)
        env.update(env_update or {})
        return subprocess.run([*kmscli_command(), *map(str, args)], input=input if input is not None else b"",
                              capture_output=True, env=env, timeout=HANG_GUARD_S, start_new_session=True)

    def path(self, name: str) -> Path:
        """A new file name in the module's folder."""
        self._n += 1
        return self.dir / f"{self._n:03d}-{name}"

    def pub(self, key: str) -> Path:
        """``kmscli pubkey KEY``'s PEM, in a file (once per key)."""
        if key not in self._pubs:
            out = self.path("pub.pem")
            ok(self.run("pubkey", key, "-o", out))
            self._pubs[key] = out
        return self._pubs[key]

    def sign(self, key: str, algorithm: str, data: Path, *extra: str | Path) -> Path:
        out = self.path("sig")
        ok(self.run("sign", "--key", key, "--algorithm", algorithm, "-i", data, "-o", out, *extra))
        return out

    def audit(self) -> list[dict[str, Any]]:
        text = self.vault.with_name("audit.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]


def seed(vault: Path, keys: list[dict[str, Any]]) -> None:
    """SeedVault in process, into the vault the CLI made (the CLI's region)."""
    from kmscli.ids import DEFAULT_REGION
    from kmscli.service import Kms
    from kmscli.vault.store import PassphraseKeySource

    Kms(vault, PassphraseKeySource(lambda: PASSPHRASE.encode()), region=DEFAULT_REGION).SeedVault(
        Keys=keys, Aliases=[])


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    d = tmp_path_factory.mktemp("asym")
    vault = d / "kms" / "vault.kms"
    env = clean_env(KMSCLI_VAULT=str(vault), KMSCLI_PASSPHRASE=PASSPHRASE, KMSCLI_RUNTIME_DIR=str(d / "run"))
    b = Box(dir=d, vault=vault, env=env)
    ok(b.run("init", *CHEAP_KDF))
    for name, size in FILES.items():
        b.files[name] = write(d / f"{name}.bin", os.urandom(size))
    b.files["10k"] = write(d / "10k.bin", os.urandom(10 * 1024))

    # Known private keys: two from `kmscli datakey-pair` (the "private key of a data key pair"),
    # one from `openssl genpkey`; and HMAC material of known value.
    b.keys["sym"] = ok(b.run("keys", "create", "--alias", "alias/pairs")).stdout.decode().strip()
    seeds: list[dict[str, Any]] = []
    for name, spec in (("pair-rsa", "RSA_2048"), ("pair-ec", "ECC_NIST_P256")):
        private, _encrypted, public = ok(b.run("datakey-pair", "alias/pairs", "--spec", spec)).stdout.split(b"\t")
        der = write(b.path(f"{name}.der"), b64(private.decode()))
        b.private_pem[name] = b.path(f"{name}.pem")
        done(openssl("pkey", "-inform", "DER", "-in", der, "-out", b.private_pem[name]))
        b.keys[name] = str(uuid.uuid4())
        seeds.append({"KeyId": b.keys[name], "KeySpec": spec, "KeyUsage": "SIGN_VERIFY",
                      "Materials": [der.read_bytes()]})
        b.keys[f"{name}-public"] = public.decode().strip()
    b.private_pem["rsa-enc"] = b.path("rsa-enc.pem")
    done(openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", b.private_pem["rsa-enc"]))
    pkcs8 = done(openssl("pkcs8", "-topk8", "-nocrypt", "-in", b.private_pem["rsa-enc"], "-outform", "DER"))
    b.keys["rsa-enc"] = str(uuid.uuid4())
    seeds.append({"KeyId": b.keys["rsa-enc"], "KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT",
                  "Materials": [pkcs8]})
    for spec, n in HMAC_BYTES.items():
        b.hmac_material[spec] = hashlib.sha512(spec.encode()).digest()[:n]
        b.keys[spec] = str(uuid.uuid4())
        seeds.append({"KeyId": b.keys[spec], "KeySpec": spec, "KeyUsage": "GENERATE_VERIFY_MAC",
                      "Materials": [b.hmac_material[spec]]})
    seed(vault, seeds)

    token = token_of(ok(b.run("unlock", "--ttl", "900")).stdout)
    pid = agent_pid(token)
    assert pid is not None, "unlock returned, but no agent serves its session"
    b.session = {"KMSCLI_SESSION": token}
    try:
        for spec, usage in CREATED:
            if spec == "SYMMETRIC_DEFAULT":
                r = ok(b.run("keys", "create", "--json"))
            elif spec.startswith("HMAC_"):
                r = ok(b.run("keys", "create", "--spec", spec, "--json"))  # GENERATE_VERIFY_MAC, implied
            else:
                r = ok(b.run("keys", "create", "--spec", spec, "--usage", usage, "--json"))
            b.created[(spec, usage)] = r.stdout
            b.keys[(spec, usage)] = json.loads(r.stdout)["KeyMetadata"]["KeyId"]
        yield b
    finally:
        b.run("lock")
        stop(pid, signal.SIGTERM)
        if not wait_until(lambda: not alive(pid)):
            stop(pid, signal.SIGKILL)


# == 1. RSA and ECDSA signatures, verified by openssl =================================================
@pytest.mark.parametrize(("spec", "algorithm"), SIGNERS)
def test_signatures_verify_with_openssl_for_every_size(box: Box, spec: str, algorithm: str) -> None:
    key = box.keys[(spec, "SIGN_VERIFY")]
    pub = box.pub(key)
    sigs = {name: box.sign(key, algorithm, path) for name, path in box.files.items() if name in FILES}
    for name, sig in sigs.items():
        assert_verified(openssl_verify(pub, algorithm, sig, box.files[name]))
        assert stat.S_IMODE(sig.stat().st_mode) == 0o600
    # The check has teeth: a signature does not verify for another file (4096 vs 4097 bytes: RAW vs DIGEST).
    assert_not_verified(openssl_verify(pub, algorithm, sigs["max"], box.files["over"]))
    assert_not_verified(openssl_verify(pub, algorithm, sigs["over"], box.files["max"]))

    # --digest: openssl hashes, kmscli signs the digest, openssl verifies against the file.
    digest = done(openssl("dgst", f"-{hash_of(algorithm)}", "-binary", box.files["over"]))
    assert len(digest) == int(algorithm.rsplit("_", 1)[1]) // 8
    from_digest = box.path("digest.sig")
    ok(box.run("sign", "--key", key, "--algorithm", algorithm, "--digest", "-o", from_digest, input=digest))
    assert_verified(openssl_verify(pub, algorithm, from_digest, box.files["over"]))

    # --format base64: one line of standard base64, the signature openssl verifies; kmscli verify reads it too.
    armored = box.sign(key, algorithm, box.files["one"], "--format", "base64")
    text = armored.read_bytes()
    assert text.endswith(b"\n") and text.count(b"\n") == 1
    raw = write(box.path("decoded.sig"), b64(text.decode().strip()))
    assert_verified(openssl_verify(pub, algorithm, raw, box.files["one"]))
    assert ok(box.run("verify", "--key", key, "--algorithm", algorithm, "--signature", armored,
                      "-i", box.files["one"])).stdout == b""
    # kmscli verify over the whole 3 MB file (hashed on the way in) and the empty one.
    for name in ("big", "empty"):
        ok(box.run("verify", "--key", key, "--algorithm", algorithm, "--signature", sigs[name],
                   "-i", box.files[name]))
    fails(box.run("verify", "--key", key, "--algorithm", algorithm, "--signature", sigs["big"],
                  "-i", box.files["over"]), 6, "KMSInvalidSignatureException")


@pytest.mark.parametrize(("spec", "algorithm", "name"), [("RSA_3072", "RSASSA_PSS_SHA_384", "big"),
                                                         ("RSA_4096", "RSASSA_PKCS1_V1_5_SHA_512", "one"),
                                                         ("RSA_4096", "RSASSA_PSS_SHA_256", "over")])
def test_larger_rsa_keys_verify_with_openssl(box: Box, spec: str, algorithm: str, name: str) -> None:
    key = box.keys[(spec, "SIGN_VERIFY")]
    pub = box.pub(key)
    bits = done(openssl("pkey", "-pubin", "-in", pub, "-noout", "-text")).decode()
    assert f"({spec[4:]} bit)" in bits
    sig = box.sign(key, algorithm, box.files[name])
    assert len(sig.read_bytes()) == int(spec[4:]) // 8
    assert_verified(openssl_verify(pub, algorithm, sig, box.files[name]))


@pytest.mark.parametrize("name", ["pair-rsa", "pair-ec"])
def test_a_data_key_pairs_private_key_signs_for_openssl_and_kmscli(box: Box, name: str) -> None:
    """openssl signs with a datakey-pair's plaintext private key: openssl verifies with the pair's PublicKey,
    and `kmscli verify` accepts it with a key seeded with that private key (whose pubkey is the PublicKey)."""
    key = box.keys[name]
    spki = b64(box.keys[f"{name}-public"])
    pub = box.path("pair-public.pem")
    done(openssl("pkey", "-pubin", "-inform", "DER", "-out", pub, stdin=spki))
    assert ok(box.run("pubkey", key, "--format", "der")).stdout == spki
    assert box.pub(key).read_text() == pub.read_text()
    data = box.files["one" if name == "pair-ec" else "big"]
    algorithms = ["ECDSA_SHA_256"] if name == "pair-ec" else ["RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PSS_SHA_512"]
    for algorithm in algorithms:
        sig = box.path("openssl.sig")
        pss = (["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
               if "_PSS_" in algorithm else [])
        done(openssl("dgst", f"-{hash_of(algorithm)}", "-sign", box.private_pem[name], *pss, "-out", sig, data))
        assert_verified(openssl_verify(pub, algorithm, sig, data))
        ok(box.run("verify", "--key", key, "--algorithm", algorithm, "--signature", sig, "-i", data))
        if algorithm.startswith("RSASSA_PKCS1"):
            # Deterministic: kmscli's signature is openssl's, byte for byte.
            assert box.sign(key, algorithm, data).read_bytes() == sig.read_bytes()
        bad = bytearray(sig.read_bytes())
        bad[len(bad) // 2] ^= 0x01
        fails(box.run("verify", "--key", key, "--algorithm", algorithm, "--signature",
                      write(box.path("bad.sig"), bytes(bad)), "-i", data), 6, "KMSInvalidSignatureException")


# == 2. ML-DSA, verified by dilithium-py ===============================================================
def dilithium(spec: str) -> Any:
    ml_dsa = pytest.importorskip("dilithium_py.ml_dsa")
    return {"ML_DSA_44": ml_dsa.ML_DSA_44, "ML_DSA_65": ml_dsa.ML_DSA_65, "ML_DSA_87": ml_dsa.ML_DSA_87}[spec]


@pytest.mark.parametrize("spec", MLDSA)
def test_mldsa_signatures_verify_with_dilithium_py(box: Box, spec: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    impl = dilithium(spec)
    key = box.keys[(spec, "SIGN_VERIFY")]
    public = load_der_public_key(ok(box.run("pubkey", key, "--format", "der")).stdout)
    pk = public.public_bytes_raw()  # type: ignore[union-attr]
    assert len(pk) == {"ML_DSA_44": 1312, "ML_DSA_65": 1952, "ML_DSA_87": 2592}[spec]
    size = {"ML_DSA_44": 2420, "ML_DSA_65": 3309, "ML_DSA_87": 4627}[spec]
    for name in ("one", "10k"):  # RAW, and external mu computed by kmscli from GetPublicKey
        data = box.files[name].read_bytes()
        sig = box.sign(key, "ML_DSA_SHAKE_256", box.files[name])
        assert len(sig.read_bytes()) == size
        assert impl.verify(pk, data, sig.read_bytes())  # pure ML-DSA, empty context
        assert not impl.verify(pk, data + b"!", sig.read_bytes())
        ok(box.run("verify", "--key", key, "--algorithm", "ML_DSA_SHAKE_256", "--signature", sig,
                   "-i", box.files[name]))
    # --digest takes FIPS 204's mu: dilithium-py computes it, kmscli signs it, the signature is the message's.
    data = box.files["10k"].read_bytes()
    mu = impl.prehash_external_mu(pk, data)
    assert len(mu) == 64
    sig = ok(box.run("sign", "--key", key, "--algorithm", "ML_DSA_SHAKE_256", "--digest", input=mu)).stdout
    assert impl.verify(pk, data, sig)
    bad = bytearray(sig)
    bad[7] ^= 0x10
    fails(box.run("verify", "--key", key, "--algorithm", "ML_DSA_SHAKE_256", "--signature",
                  write(box.path("bad.sig"), bytes(bad)), "-i", box.files["10k"]), 6, "KMSInvalidSignatureException")
    fails(box.run("sign", "--key", key, "--algorithm", "ML_DSA_SHAKE_256", "--digest", input=mu[:32]), 2,
          "ValidationException")


# == 3. RSA encryption =================================================================================
@pytest.mark.parametrize(("algorithm", "md", "limit"), [("RSAES_OAEP_SHA_256", "sha256", 190),
                                                        ("RSAES_OAEP_SHA_1", "sha1", 214)])
def test_openssl_oaep_ciphertexts_decrypt_in_kmscli(box: Box, algorithm: str, md: str, limit: int) -> None:
    key = box.keys[("RSA_2048", "ENCRYPT_DECRYPT")]
    pub = box.pub(key)
    for size in (1, limit):
        plain = write(box.path("plain"), os.urandom(size))
        ct = done(openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", pub, "-pkeyopt", "rsa_padding_mode:oaep",
                          "-pkeyopt", f"rsa_oaep_md:{md}", "-pkeyopt", f"rsa_mgf1_md:{md}", "-in", plain))
        assert len(ct) == 256
        got = ok(box.run("decrypt", "--key", key, "--algorithm", algorithm, input=ct)).stdout
        assert got == plain.read_bytes()
        other = "RSAES_OAEP_SHA_1" if algorithm.endswith("256") else "RSAES_OAEP_SHA_256"
        fails(box.run("decrypt", "--key", key, "--algorithm", other, input=ct), 6, "InvalidCiphertextException")


@pytest.mark.parametrize(("algorithm", "md", "limit"), [("RSAES_OAEP_SHA_256", "sha256", 190),
                                                        ("RSAES_OAEP_SHA_1", "sha1", 214)])
def test_kmscli_oaep_ciphertexts_decrypt_in_openssl_and_limits_are_awss(box: Box, algorithm: str, md: str,
                                                                        limit: int) -> None:
    """A key seeded with an openssl private key: openssl decrypts what kmscli encrypts. The largest plaintext
    is AWS's (RSA_2048: 214 bytes with SHA-1, 190 with SHA-256); one byte more is refused, no -o file left."""
    key = box.keys["rsa-enc"]
    expected_pub = done(openssl("pkey", "-in", box.private_pem["rsa-enc"], "-pubout"))
    assert box.pub(key).read_bytes() == expected_pub
    plain = write(box.path("plain"), os.urandom(limit))
    ct = box.path("rsa.ct")
    ok(box.run("encrypt", "--key", key, "--algorithm", algorithm, "-i", plain, "-o", ct))
    assert len(ct.read_bytes()) == 256 and stat.S_IMODE(ct.stat().st_mode) == 0o600
    back = done(openssl("pkeyutl", "-decrypt", "-inkey", box.private_pem["rsa-enc"], "-pkeyopt",
                        "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}", "-pkeyopt", f"rsa_mgf1_md:{md}",
                        "-in", ct))
    assert back == plain.read_bytes()
    assert ok(box.run("decrypt", "--key", key, "--algorithm", algorithm, "-i", ct)).stdout == back
    # One byte over the limit: exit 2, nothing written, an existing file untouched, recorded as a failure.
    over = write(box.path("plain"), os.urandom(limit + 1))
    out = box.path("over.ct")
    line = fails(box.run("encrypt", "--key", key, "--algorithm", algorithm, "-i", over, "-o", out), 2,
                 "ValidationException")
    assert f"larger than {limit} bytes" in line
    assert not out.exists()
    assert [p for p in box.dir.iterdir() if p.name.startswith(f".{out.name}")] == []
    assert (box.audit()[-1]["eventName"], box.audit()[-1].get("errorCode")) == ("Encrypt", "ValidationException")
    out.write_bytes(b"before")
    fails(box.run("encrypt", "--key", key, "--algorithm", algorithm, "-i", over, "-o", out), 2)
    assert out.read_bytes() == b"before"


# == 4. ECDH ===============================================================================================
@pytest.mark.parametrize("spec", list(ECDH_CURVES))
def test_derive_secret_equals_openssl_derive(box: Box, spec: str) -> None:
    key = box.keys[(spec, "KEY_AGREEMENT")]
    peer = box.path("peer.pem")
    done(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{ECDH_CURVES[spec]}", "-out", peer))
    peer_pem = write(box.path("peer-pub.pem"), done(openssl("pkey", "-in", peer, "-pubout")))
    peer_der = write(box.path("peer-pub.der"), done(openssl("pkey", "-in", peer, "-pubout", "-outform", "DER")))
    expected = done(openssl("pkeyutl", "-derive", "-inkey", peer, "-peerkey", box.pub(key)))
    assert len(expected) == {"ECC_NIST_P256": 32, "ECC_NIST_P384": 48, "ECC_NIST_P521": 66}[spec]
    out = box.path("secret")
    ok(box.run("derive-secret", "--key", key, "--public-key", peer_pem, "-o", out))
    assert out.read_bytes() == expected
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = ok(box.run("derive-secret", "--key", key, "--public-key", peer_der, "--format", "base64")).stdout
    assert b64(text.decode().strip()) == expected
    # A peer on another curve, an RSA public key, a mangled key: exit 2.
    wrong = "P-384" if spec != "ECC_NIST_P384" else "P-256"
    other = box.path("other.pem")
    done(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{wrong}", "-out", other))
    other_pub = write(box.path("other-pub.pem"), done(openssl("pkey", "-in", other, "-pubout")))
    fails(box.run("derive-secret", "--key", key, "--public-key", other_pub), 2, "ValidationException")
    fails(box.run("derive-secret", "--key", key, "--public-key", box.pub(box.keys["rsa-enc"])), 2,
          "ValidationException")
    fails(box.run("derive-secret", "--key", key, "--public-key", write(box.path("junk"), peer_der.read_bytes()[:40])),
          2, "ValidationException")


def test_derive_secret_json_is_awss_shape(box: Box) -> None:
    from tests.aws.botocore_model import wire_errors

    key = box.keys[("ECC_NIST_P256", "KEY_AGREEMENT")]
    peer = box.path("peer.pem")
    done(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", peer))
    peer_pub = write(box.path("peer-pub.pem"), done(openssl("pkey", "-in", peer, "-pubout")))
    doc = json.loads(ok(box.run("derive-secret", "--key", key, "--public-key", peer_pub, "--json")).stdout)
    assert wire_errors("DeriveSharedSecret", doc) == []
    assert b64(doc["SharedSecret"]) == done(openssl("pkeyutl", "-derive", "-inkey", peer, "-peerkey", box.pub(key)))
    assert doc["KeyId"].endswith(f":key/{key}") and doc["KeyAgreementAlgorithm"] == "ECDH"


# == 5. HMAC at a known key ============================================================================
@pytest.mark.parametrize("spec", list(HMAC_BYTES))
def test_mac_equals_openssl_and_pythons_hmac(box: Box, spec: str) -> None:
    key, material = box.keys[spec], box.hmac_material[spec]
    algorithm = "HMAC_SHA_" + spec[5:]
    md = "sha" + spec[5:]
    for name in ("one", "max"):
        data = box.files[name]
        out = box.path("mac")
        ok(box.run("mac", "--key", key, "--algorithm", algorithm, "-i", data, "-o", out))
        mac = out.read_bytes()
        assert mac == hmac.new(material, data.read_bytes(), md).digest()
        assert mac == done(openssl("dgst", f"-{md}", "-mac", "HMAC", "-macopt", f"hexkey:{material.hex()}",
                                   "-binary", data))
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = box.files["max"]
    mac = hmac.new(material, data.read_bytes(), md).digest()
    text = ok(box.run("mac", "--key", key, "--algorithm", algorithm, "--format", "base64", "-i", data)).stdout
    assert text == base64.b64encode(mac) + b"\n"
    doc = json.loads(ok(box.run("mac", "--key", key, "--algorithm", algorithm, "-i", data, "--json")).stdout)
    assert b64(doc["Mac"]) == mac and doc["MacAlgorithm"] == algorithm and doc["KeyId"].endswith(key)
    # verify-mac: a raw MAC file and a base64 one are both accepted...
    for f in (write(box.path("mac.raw"), mac), write(box.path("mac.b64"), text)):
        assert ok(box.run("verify-mac", "--key", key, "--algorithm", algorithm, "--mac", f, "-i", data)).stdout == b""
    # ... a flipped bit, a truncated MAC, another message or another algorithm are not.
    flipped = bytearray(mac)
    flipped[-1] ^= 0x01
    for bad in (bytes(flipped), mac[:-1]):
        fails(box.run("verify-mac", "--key", key, "--algorithm", algorithm, "--mac", write(box.path("bad"), bad),
                      "-i", data), 6, "KMSInvalidMacException")
    fails(box.run("verify-mac", "--key", key, "--algorithm", algorithm, "--mac", write(box.path("m"), mac),
                  "-i", box.files["one"]), 6, "KMSInvalidMacException")
    other = "HMAC_SHA_256" if algorithm != "HMAC_SHA_256" else "HMAC_SHA_384"
    fails(box.run("mac", "--key", key, "--algorithm", other, "-i", data), 4, "InvalidKeyUsageException")


def test_mac_json_documents_are_awss_shapes(box: Box) -> None:
    from tests.aws.botocore_model import wire_errors

    key, data = box.keys["HMAC_256"], box.files["one"]
    doc = json.loads(ok(box.run("mac", "--key", key, "--algorithm", "HMAC_SHA_256", "-i", data, "--json")).stdout)
    assert wire_errors("GenerateMac", doc) == []
    mac = write(box.path("mac"), b64(doc["Mac"]))
    verified = json.loads(ok(box.run("verify-mac", "--key", key, "--algorithm", "HMAC_SHA_256", "--mac", mac,
                                     "-i", data, "--json")).stdout)
    assert wire_errors("VerifyMac", verified) == []
    assert verified["MacValid"] is True


# == 6. Data key pairs ===================================================================================
PAIR_SPECS = ["RSA_2048", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1",
              "ECC_NIST_EDWARDS25519", "ML_KEM_768", "ML_KEM_1024"]


def public_of(private_der: Path, spec: str) -> bytes:
    """The SubjectPublicKeyInfo of a PKCS#8 private key, by openssl (by cryptography for ML-KEM: openssl 3.0
    has none)."""
    if spec.startswith("ML_KEM_"):
        from cryptography.hazmat.primitives import serialization as ser

        private = ser.load_der_private_key(private_der.read_bytes(), None)
        public = private.public_key()  # type: ignore[union-attr]
        return public.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return done(openssl("pkey", "-inform", "DER", "-in", private_der, "-pubout", "-outform", "DER"))


@pytest.mark.parametrize("spec", PAIR_SPECS)
def test_datakey_pair(box: Box, spec: str) -> None:
    sym = box.keys["sym"]
    line = ok(box.run("datakey-pair", sym, "--spec", spec, "-c", "purpose=pair")).stdout
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    fields = line.decode().rstrip("\n").split("\t")
    assert len(fields) == 3
    private, encrypted, public = (b64(f) for f in fields)
    # The encrypted private key is a kmscli ciphertext of the PKCS#8 plaintext, under its context only.
    assert ok(box.run("decrypt", "--key", sym, "-c", "purpose=pair", input=encrypted)).stdout == private
    fails(box.run("decrypt", input=encrypted), 6, "InvalidCiphertextException")
    der = write(box.path("private.der"), private)
    if not spec.startswith("ML_KEM_"):
        text = done(openssl("pkey", "-inform", "DER", "-in", der, "-noout", "-text")).decode()
        if spec.startswith("RSA_"):
            assert f"({spec[4:]} bit, 2 primes)" in text
        else:
            curve = {"ECC_NIST_P256": "prime256v1", "ECC_NIST_P384": "secp384r1", "ECC_NIST_P521": "secp521r1",
                     "ECC_SECG_P256K1": "secp256k1", "ECC_NIST_EDWARDS25519": "ED25519"}[spec]
            assert curve in text
    assert public_of(der, spec) == public

    # --no-plaintext: two fields, the encrypted private key of the public key.
    fields = ok(box.run("datakey-pair", sym, "--spec", spec, "--no-plaintext")).stdout.decode().strip().split("\t")
    assert len(fields) == 2
    encrypted, public = (b64(f) for f in fields)
    der = write(box.path("private.der"), ok(box.run("decrypt", input=encrypted)).stdout)
    assert public_of(der, spec) == public


@pytest.mark.parametrize("no_plaintext", [False, True])
def test_datakey_pair_json_is_awss_shape(box: Box, no_plaintext: bool) -> None:
    from tests.aws.botocore_model import wire_errors

    operation = "GenerateDataKeyPairWithoutPlaintext" if no_plaintext else "GenerateDataKeyPair"
    flag = ["--no-plaintext"] if no_plaintext else []
    doc = json.loads(ok(box.run("datakey-pair", "alias/pairs", "--spec", "ECC_NIST_P384", *flag, "--json")).stdout)
    assert wire_errors(operation, doc) == []
    meta = json.loads(ok(box.run("keys", "describe", "alias/pairs", "--json")).stdout)["KeyMetadata"]
    assert doc["KeyId"] == meta["Arn"] and doc["KeyPairSpec"] == "ECC_NIST_P384"
    assert ("PrivateKeyPlaintext" in doc) is not no_plaintext
    private = ok(box.run("decrypt", input=b64(doc["PrivateKeyCiphertextBlob"]))).stdout
    if not no_plaintext:
        assert private == b64(doc["PrivateKeyPlaintext"])
    assert public_of(write(box.path("private.der"), private), "ECC_NIST_P384") == b64(doc["PublicKey"])


def test_datakey_pair_refusals(box: Box) -> None:
    fails(box.run("datakey-pair", box.keys["sym"], "--spec", "SM2"), 2, "UnsupportedOperationException")
    fails(box.run("datakey-pair", box.keys["sym"], "--spec", "RSA_1024"), 2, "ValidationException")
    fails(box.run("datakey-pair", box.keys[("RSA_2048", "ENCRYPT_DECRYPT")], "--spec", "RSA_2048"), 4,
          "InvalidKeyUsageException")


# == 7. Bad input: the AWS exception, its exit code, and a failure in the audit log ==========================
def refused(box: Box, args: tuple[str | Path, ...], code: int, name: str, event: str | None,
            input: bytes | None = None, session: bool = True) -> str:
    """The refusal is ``name`` with exit ``code``; the audit log gains only failures: ``event``'s record with
    errorCode ``name`` last, or (``event`` None: refused before the vault is used) no record at all.
    Through the module's session, or (``session=False``) with the passphrase, where the CLI opens the vault."""
    before = len(box.audit())
    line = fails(box.run(*args, input=input, session=session), code, name)
    new = box.audit()[before:]
    assert all(r.get("errorCode") for r in new), new
    if event is None:
        assert new == []
    else:
        assert new, f"no audit record of the refused {event}"
        assert (new[-1]["eventName"], new[-1]["errorCode"]) == (event, name)
    return line


def test_refusals_are_awss_exceptions_and_recorded_as_failures(box: Box) -> None:
    rsa, p256 = box.keys[("RSA_2048", "SIGN_VERIFY")], box.keys[("ECC_NIST_P256", "SIGN_VERIFY")]
    one = box.files["one"]
    # Wrong algorithm for the key's spec or usage: 4.
    for key, algorithm in ((p256, "ECDSA_SHA_384"), (p256, "RSASSA_PSS_SHA_256"), (rsa, "ECDSA_SHA_256"),
                           (rsa, "ML_DSA_SHAKE_256"), (box.keys[("ML_DSA_44", "SIGN_VERIFY")], "ECDSA_SHA_256")):
        refused(box, ("sign", "--key", key, "--algorithm", algorithm, "-i", one, "-o", box.path("x")), 4,
                "InvalidKeyUsageException", "Sign")
    # A digest of the wrong length: 2.
    for key, algorithm, n in ((rsa, "RSASSA_PSS_SHA_256", 31), (rsa, "RSASSA_PKCS1_V1_5_SHA_512", 32),
                              (p256, "ECDSA_SHA_256", 48)):
        refused(box, ("sign", "--key", key, "--algorithm", algorithm, "--digest", "-o", box.path("x")), 2,
                "ValidationException", "Sign", input=os.urandom(n))
    # Signatures that do not verify: another key's, truncated, one byte flipped: 6.
    sig = box.sign(rsa, "RSASSA_PSS_SHA_256", one).read_bytes()
    ec_sig = box.sign(p256, "ECDSA_SHA_256", one).read_bytes()
    other = box.sign(box.keys["pair-rsa"], "RSASSA_PSS_SHA_256", one)
    other_ec = box.sign(box.keys["pair-ec"], "ECDSA_SHA_256", one)
    flipped, ec_flipped = bytearray(sig), bytearray(ec_sig)
    flipped[100] ^= 0xFF
    ec_flipped[-5] ^= 0x01
    for key, algorithm, bad in ((rsa, "RSASSA_PSS_SHA_256", other),
                                (p256, "ECDSA_SHA_256", other_ec),
                                (rsa, "RSASSA_PSS_SHA_256", write(box.path("cut"), sig[:-1])),
                                (p256, "ECDSA_SHA_256", write(box.path("cut"), ec_sig[:-1])),
                                (rsa, "RSASSA_PSS_SHA_256", write(box.path("flip"), bytes(flipped))),
                                (p256, "ECDSA_SHA_256", write(box.path("flip"), bytes(ec_flipped))),
                                (rsa, "RSASSA_PKCS1_V1_5_SHA_256", write(box.path("sig"), sig))):
        refused(box, ("verify", "--key", key, "--algorithm", algorithm, "--signature", bad, "-i", one), 6,
                "KMSInvalidSignatureException", "Verify")
    # Keys used for what their usage does not allow: 4.
    hmac_key, sym = box.keys["HMAC_256"], box.keys["sym"]
    refused(box, ("encrypt", "--key", hmac_key, "-i", one, "-o", box.path("x")), 4, "InvalidKeyUsageException",
            "Encrypt")
    refused(box, ("sign", "--key", box.keys[("RSA_2048", "ENCRYPT_DECRYPT")], "--algorithm", "RSASSA_PSS_SHA_256",
                  "-i", one, "-o", box.path("x")), 4, "InvalidKeyUsageException", "Sign")
    refused(box, ("sign", "--key", sym, "--algorithm", "ECDSA_SHA_256", "-i", one, "-o", box.path("x")), 4,
            "InvalidKeyUsageException", "Sign")
    refused(box, ("mac", "--key", rsa, "--algorithm", "HMAC_SHA_256", "-i", one, "-o", box.path("x")), 4,
            "InvalidKeyUsageException", "GenerateMac")
    refused(box, ("encrypt", "--key", rsa, "--algorithm", "RSAES_OAEP_SHA_256", "-i", one, "-o", box.path("x")), 4,
            "InvalidKeyUsageException", "Encrypt")
    refused(box, ("derive-secret", "--key", p256, "--public-key", box.pub(p256)), 4, "InvalidKeyUsageException",
            "DeriveSharedSecret")
    # Keys that cannot be made: 2 (these and the rotations with the passphrase, no session).
    refused(box, ("keys", "create", "--spec", "RSA_2048"), 2, "ValidationException", "CreateKey", session=False)
    refused(box, ("keys", "create", "--spec", "SM2", "--usage", "SIGN_VERIFY"), 2, "UnsupportedOperationException",
            "CreateKey", session=False)
    refused(box, ("keys", "create", "--spec", "HMAC_256", "--usage", "SIGN_VERIFY"), 2, "ValidationException",
            "CreateKey", session=False)
    refused(box, ("keys", "create", "--spec", "ECC_SECG_P256K1", "--usage", "KEY_AGREEMENT"), 2,
            "ValidationException", "CreateKey", session=False)
    # Rotation: only symmetric keys rotate, as in AWS: 2.
    for key in (rsa, hmac_key):
        refused(box, ("keys", "rotate", key), 2, "UnsupportedOperationException", "RotateKeyOnDemand",
                session=False)
        refused(box, ("keys", "rotation", key, "--enable"), 2, "UnsupportedOperationException", "EnableKeyRotation",
                session=False)
    # No public key: 2.
    for key in (sym, hmac_key):
        refused(box, ("pubkey", key), 2, "UnsupportedOperationException", "GetPublicKey")
    # MAC messages are 1 to 4096 bytes, refused before the vault opens: 2, no record.
    refused(box, ("mac", "--key", hmac_key, "--algorithm", "HMAC_SHA_256", "-i", box.files["over"]), 2,
            "ValidationException", None)
    refused(box, ("mac", "--key", hmac_key, "--algorithm", "HMAC_SHA_256", "-i", box.files["empty"]), 2,
            "ValidationException", None)
    # An RSA ciphertext names no key: decrypt needs --key.
    line = refused(box, ("decrypt", "--algorithm", "RSAES_OAEP_SHA_256"), 2, "ValidationException", "Decrypt",
                   input=os.urandom(256))
    assert "--key" in line
    # The signature and the message cannot both come from stdin.
    fails(box.run("verify", "--key", rsa, "--algorithm", "RSASSA_PSS_SHA_256", "--signature", "-", input=sig), 2,
          "ValidationException")
    # An output that cannot be written is refused before anything is signed, made or recorded as done.
    for args in (("sign", "--key", rsa, "--algorithm", "RSASSA_PSS_SHA_256", "-i", one),
                 ("mac", "--key", hmac_key, "--algorithm", "HMAC_SHA_256", "-i", one),
                 ("derive-secret", "--key", box.keys[("ECC_NIST_P256", "KEY_AGREEMENT")], "--public-key",
                  box.pub(p256)),
                 ("pubkey", p256)):
        refused(box, (*args, "-o", box.dir / "no" / "such" / "folder"), 2, "ValidationException", None)
    # Nothing a refused sign named by -o was made.
    assert not any(p.name.endswith("-x") or p.name.startswith(".") for p in box.dir.iterdir())


def test_a_disabled_key_neither_signs_nor_verifies(box: Box) -> None:
    key = ok(box.run("keys", "create", "--spec", "ECC_NIST_P256", "--usage", "SIGN_VERIFY")).stdout.decode().strip()
    one = box.files["one"]
    sig = box.sign(key, "ECDSA_SHA_256", one)
    pub = box.pub(key)
    ok(box.run("keys", "disable", key))
    refused(box, ("sign", "--key", key, "--algorithm", "ECDSA_SHA_256", "-i", one, "-o", box.path("x")), 4,
            "DisabledException", "Sign", session=False)
    refused(box, ("verify", "--key", key, "--algorithm", "ECDSA_SHA_256", "--signature", sig, "-i", one), 4,
            "DisabledException", "Verify", session=False)
    refused(box, ("pubkey", key), 4, "DisabledException", "GetPublicKey", session=False)
    assert_verified(openssl_verify(pub, "ECDSA_SHA_256", sig, one))  # what it signed stays verifiable offline
    ok(box.run("keys", "enable", key))
    ok(box.run("verify", "--key", key, "--algorithm", "ECDSA_SHA_256", "--signature", sig, "-i", one))


# == 8. Output hygiene and metadata =======================================================================
@pytest.mark.parametrize(("args", "what"), [(("sign", "--algorithm", "ECDSA_SHA_256"), "sign"),
                                            (("mac", "--algorithm", "HMAC_SHA_256"), "mac")])
def test_raw_bytes_are_refused_on_a_terminal(box: Box, args: tuple[str, ...], what: str) -> None:
    from tests.ttyrun import run_on_tty

    key = box.keys[("ECC_NIST_P256", "SIGN_VERIFY")] if what == "sign" else box.keys["HMAC_256"]
    env = {**box.env, **box.session}
    env.pop("KMSCLI_PASSPHRASE")
    before = len(box.audit())
    code, screen = run_on_tty([args[0], "--key", key, *args[1:]], env, [], stdin_data=b"message")
    assert code == 2, screen
    assert b"ValidationException" in screen and b"refusing to write binary" in screen
    assert b"--format base64" in screen, screen  # the way out this command has (it has no --armor)
    assert all(r["eventName"] not in ("Sign", "GenerateMac") for r in box.audit()[before:])
    message = write(box.path("message"), b"message")
    code, screen = run_on_tty([args[0], "--key", key, *args[1:], "--format", "base64", "-i", str(message)], env, [])
    assert code == 0, screen
    made = b64(screen.decode().strip())
    if what == "mac":
        assert made == hmac.new(box.hmac_material["HMAC_256"], b"message", "sha256").digest()
    else:
        assert_verified(openssl_verify(box.pub(key), "ECDSA_SHA_256", write(box.path("sig"), made), message))


def test_pubkey_forms_agree_and_openssl_reads_them(box: Box) -> None:
    from tests.aws.botocore_model import wire_errors

    for spec, usage in CREATED:
        if spec in ("SYMMETRIC_DEFAULT", "HMAC_384"):
            continue
        key = box.keys[(spec, usage)]
        pem = box.pub(key)
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        text = pem.read_text()
        assert text.startswith("-----BEGIN PUBLIC KEY-----\n") and text.endswith("-----END PUBLIC KEY-----\n")
        der = ok(box.run("pubkey", key, "--format", "der")).stdout
        doc = json.loads(ok(box.run("pubkey", key, "--json")).stdout)
        assert wire_errors("GetPublicKey", doc) == []
        assert b64(doc["PublicKey"]) == der
        assert (doc["KeySpec"], doc["KeyUsage"]) == (spec, usage)
        assert {k: v for k, v in doc.items() if k.endswith("Algorithms")} == ALGORITHMS[(spec, usage)]
        if spec.startswith("ML_DSA_"):
            from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

            assert load_pem_public_key(pem.read_bytes()) == load_der_public_key(der)
            continue  # openssl 3.0 knows no ML-DSA
        done(openssl("pkey", "-pubin", "-in", pem, "-noout"))
        assert done(openssl("pkey", "-pubin", "-in", pem, "-outform", "DER")) == der


def test_describe_shows_awss_algorithm_members(box: Box) -> None:
    from tests.aws.test_cli_json import check

    for (spec, usage), created in box.created.items():
        check("CreateKey", created)
        out = ok(box.run("keys", "describe", box.keys[(spec, usage)], "--json")).stdout
        check("DescribeKey", out)
        meta = json.loads(out)["KeyMetadata"]
        assert meta == json.loads(created)["KeyMetadata"]
        assert (meta["KeySpec"], meta["KeyUsage"]) == (spec, usage)
        listed = {k: v for k, v in meta.items() if k.endswith("Algorithms")}
        assert listed == ALGORITHMS[(spec, usage)], (spec, usage)
        assert ("CurrentKeyMaterialId" in meta) is (spec == "SYMMETRIC_DEFAULT")
    for spec in HMAC_BYTES:  # the seeded keys are described as made ones
        out = ok(box.run("keys", "describe", box.keys[spec], "--json")).stdout
        check("DescribeKey", out)
        meta = json.loads(out)["KeyMetadata"]
        assert meta["MacAlgorithms"] == ["HMAC_SHA_" + spec[5:]] and "CurrentKeyMaterialId" not in meta


# == 9. Through a session, as without ===================================================================
def test_sign_and_verify_through_an_evaluated_unlock(box: Box) -> None:
    """`eval "$(kmscli unlock)"` in sh, the passphrase gone afterwards: the signature is the one signed with
    the passphrase (PKCS#1 v1.5 is deterministic), and each side verifies the other's."""
    key = box.keys[("RSA_2048", "SIGN_VERIFY")]
    data = box.files["over"]
    direct = box.sign(key, "RSASSA_PKCS1_V1_5_SHA_384", data)
    script = ('set -e; eval "$("$KMSCLI" unlock --ttl 300)"; unset KMSCLI_PASSPHRASE; echo "$KMSCLI_SESSION" >&2; '
              '"$KMSCLI" sign --key "$KEY" --algorithm RSASSA_PKCS1_V1_5_SHA_384 -i "$DATA" -o "$OUT"; '
              '"$KMSCLI" verify --key "$KEY" --algorithm RSASSA_PKCS1_V1_5_SHA_384 --signature "$SIG" -i "$DATA"; '
              '"$KMSCLI" lock')
    out = box.path("session.sig")
    env = {**box.env, "KMSCLI_RUNTIME_DIR": str(box.dir / "run9"), "KMSCLI": kmscli_command()[0], "KEY": key,
           "DATA": str(data), "OUT": str(out), "SIG": str(direct)}
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, timeout=HANG_GUARD_S,
                       start_new_session=True)
    tokens = [line for line in r.stderr.decode().splitlines() if line.startswith("kms1:")]
    pid = agent_pid(tokens[0]) if tokens else None
    if pid is not None:  # `lock` did not run (the script failed): end the agent it left behind
        stop(pid, signal.SIGTERM)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert out.read_bytes() == direct.read_bytes()
    ok(box.run("verify", "--key", key, "--algorithm", "RSASSA_PKCS1_V1_5_SHA_384", "--signature", out, "-i", data,
               session=False))
    assert_verified(openssl_verify(box.pub(key), "RSASSA_PKCS1_V1_5_SHA_384", out, data))
