"""Asymmetric, post-quantum and HMAC key material, under AWS KMS's rules.

What this module gives its caller (the service layer, once issue 16 is wired):

* the tables AWS KMS applies: which usages each key spec allows
  (:data:`KEY_USAGES`), which algorithms DescribeKey and GetPublicKey list for a
  (spec, usage) pair, in AWS's order (:func:`key_algorithms`), and the checks
  that turn a bad request into AWS's exception (:func:`check_key_spec`,
  :func:`check_key_usage`, :func:`require_usage`);
* key material: :func:`generate` (PKCS#8 DER for RSA, ECC and ML-DSA, random
  bytes for HMAC), :func:`public_key_der` (GetPublicKey's SubjectPublicKeyInfo),
  :func:`generate_data_key_pair` (GenerateDataKeyPair);
* the operations: :func:`sign` / :func:`verify` (every AWS signing algorithm,
  MessageType RAW, DIGEST and EXTERNAL_MU; :func:`verify_public` with only a
  public key), :func:`encrypt` / :func:`decrypt` (RSAES_OAEP_SHA_1/256),
  :func:`generate_mac` / :func:`verify_mac`, and :func:`derive_shared_secret`
  (ECDH); :func:`check_private_material` for key pairs from outside.

Each operation takes the key's spec and material (what the vault keeps), and
optionally its usage and ARN (``usage=``, ``key_id=``): with them, a key used
for what its usage does not allow gets AWS's InvalidKeyUsageException naming it;
without, the spec's possible usages are assumed.

Every primitive is ``cryptography``'s; nothing here is hand-rolled. It is
imported on first use, as in ``primitives.py``, so the tables cost nothing at
start-up. Verification never returns a quiet ``False``: it returns ``None`` or
raises :class:`KMSInvalidSignatureException` / :class:`KMSInvalidMacException`.
No message here ever contains key material, plaintext, a message or a MAC.

Facts relied on, and where they come from
------------------------------------------
[M]  botocore 1.44.8's KMS model, ``botocore/data/kms/2014-11-01/service-2.json``
     (mirrored in ``kmscli/aws_model.py``); [X] its ``examples-1.json``.
[G]  AWS KMS Developer Guide, ``asymmetric-key-specs.md`` (awsdocs/
     aws-kms-developer-guide, doc_source/), and ``hmac.md``, ``mldsa.md``.
[S]  Responses recorded from AWS KMS itself by LocalStack's snapshot tests
     (localstack/localstack, ``tests/aws/services/kms/test_kms.snapshot.json``).
[B]  AWS Security Blog, "How to create post-quantum signatures using AWS KMS and
     ML-DSA" and the ECDH example of DeriveSharedSecret (DescribeKey output).

1. Enums (KeySpec, KeyUsageType, SigningAlgorithmSpec, EncryptionAlgorithmSpec,
   MacAlgorithmSpec, KeyAgreementAlgorithmSpec, DataKeyPairSpec, MessageType)
   and the length limits of Message/Plaintext (1..4096), Signature/Mac/
   CiphertextBlob (1..6144) and PublicKey (1..8192): [M].
2. Allowed usages: SYMMETRIC_DEFAULT -> ENCRYPT_DECRYPT; HMAC_* ->
   GENERATE_VERIFY_MAC; RSA_* -> ENCRYPT_DECRYPT or SIGN_VERIFY; ECC_NIST_P* ->
   SIGN_VERIFY or KEY_AGREEMENT; ECC_SECG_P256K1 -> SIGN_VERIFY; ML_DSA_* ->
   SIGN_VERIFY: [M] CreateKey.KeyUsage documentation. A missing KeyUsage on a
   non-symmetric key is ValidationException "You must specify a KeyUsage value
   for all KMS keys except for symmetric encryption keys." [S]; an
   incompatible pair is ValidationException "KeyUsage K is not compatible with
   KeySpec S" (LocalStack's wording, not in [S]).
3. Algorithm lists, in AWS's order: RSA SIGN_VERIFY -> RSASSA_PKCS1_V1_5_SHA_256,
   _384, _512, RSASSA_PSS_SHA_256, _384, _512 ([X] DescribeKey "RSA asymmetric
   KMS key"); RSA ENCRYPT_DECRYPT -> RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256 ([X]
   CreateKey RSA_4096 and GetPublicKey); one ECDSA algorithm per curve:
   P256 and SECG_P256K1 -> ECDSA_SHA_256, P384 -> ECDSA_SHA_384, P521 ->
   ECDSA_SHA_512 ([G], [X] CreateKey ECC_NIST_P521, [S]); HMAC_n ->
   HMAC_SHA_n ([G] hmac.md, [X], [S]); KEY_AGREEMENT -> ECDH ([B]);
   ML_DSA_* -> ML_DSA_SHAKE_256 ([B], [M] Sign.MessageType).
4. RSASSA-PSS uses MGF1 with the message hash and a salt as long as the digest
   ("a 256-bit salt" for SHA-256, ...); RSAES-OAEP uses the same hash for the
   digest and MGF1 and an empty label; the largest plaintext is
   k/8 - 2*hLen - 2 bytes: RSA_2048 214/190, RSA_3072 342/318, RSA_4096
   470/446 (SHA-1/SHA-256) [G]. A longer plaintext is ValidationException
   "Algorithm RSAES_OAEP_SHA_1 and key spec RSA_2048 cannot encrypt data larger
   than 214 bytes." [S].
5. ECDSA signatures are DER (ANSI X9.62, RFC 3279 2.2.3); RSA signatures are
   PKCS #1 [M] SignResponse.Signature.
6. MessageType DIGEST: the message is the digest, its length must be the
   algorithm's digest size, else ValidationException "Digest is invalid length
   for algorithm ECDSA_SHA_256." [S]; EXTERNAL_MU: a 64-byte mu of FIPS 204
   section 6.2, ML-DSA only; ML-DSA signs RAW messages of up to 4096 bytes
   with pure ML-DSA (not HashML-DSA) and an empty context, and a signature over
   an external mu equals the RAW one [M], [G] mldsa.md, [B] (mu =
   SHAKE256(SHAKE256(pk, 64) || 0x00 || 0x00 || M, 64)). AWS's wording for
   DIGEST on an ML-DSA key, EXTERNAL_MU on another key or a mu of the wrong
   length was not found; the messages here follow the digest one.
7. A signature or MAC that does not verify is KMSInvalidSignatureException /
   KMSInvalidMacException, with an empty message on the wire [S].
8. An algorithm the key spec cannot use is InvalidKeyUsageException "Algorithm
   HMAC_SHA_256 is incompatible with key spec HMAC_224." [S] (MAC; the same
   exception for signing and encryption algorithms: [M]
   InvalidKeyUsageException); an operation the key usage cannot do is
   InvalidKeyUsageException "<key ARN> key usage is GENERATE_VERIFY_MAC which
   is not valid for Sign." [S]; an algorithm outside the enum is
   ValidationException "1 validation error detected: Value 'INVALID' at
   'macAlgorithm' failed to satisfy constraint: Member must satisfy enum value
   set: [...]" [S].
9. HMAC keys: the key spec's length is the key's length and decides the MAC
   algorithm [G] hmac.md: 28, 32, 48 and 64 bytes.
10. DeriveSharedSecret returns the raw ECDH secret; the peer key is a DER
    SubjectPublicKeyInfo on the same curve as the KMS key; a malformed key is a
    ValidationException [M]. AWS's exception for a well-formed key on another
    curve was not found: ValidationException is used (the only one of
    DeriveSharedSecret's errors that fits).
11. Data key pairs: private key PKCS#8 PrivateKeyInfo DER, public key
    SubjectPublicKeyInfo DER; ML-KEM private keys in seed form; SM2 is China
    Regions only [M] GenerateDataKeyPair.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from ..errors import (
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInternalException,
    KMSInvalidMacException,
    KMSInvalidSignatureException,
    UnsupportedOperationException,
    ValidationException,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.hazmat.primitives.hashes import HashAlgorithm


# -- names ---------------------------------------------------------------------
SYMMETRIC_DEFAULT: Final = "SYMMETRIC_DEFAULT"
ENCRYPT_DECRYPT: Final = "ENCRYPT_DECRYPT"
SIGN_VERIFY: Final = "SIGN_VERIFY"
GENERATE_VERIFY_MAC: Final = "GENERATE_VERIFY_MAC"
KEY_AGREEMENT: Final = "KEY_AGREEMENT"
RAW: Final = "RAW"
DIGEST: Final = "DIGEST"
EXTERNAL_MU: Final = "EXTERNAL_MU"
ECDH: Final = "ECDH"
ML_DSA_SHAKE_256: Final = "ML_DSA_SHAKE_256"

#: API limits [M]: Message and Plaintext, Signature/Mac/CiphertextBlob, PublicKey.
MAX_MESSAGE: Final = 4096
MAX_BLOB: Final = 6144
MAX_PUBLIC_KEY: Final = 8192
#: FIPS 204 section 6.2: mu is 64 bytes.
MU_SIZE: Final = 64

_RSA_BITS: Final = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
#: Key spec -> curve name as ``cryptography`` names it.
_CURVES: Final = {
    "ECC_NIST_P256": "secp256r1",
    "ECC_NIST_P384": "secp384r1",
    "ECC_NIST_P521": "secp521r1",
    "ECC_SECG_P256K1": "secp256k1",
}
_MLDSA: Final = ("ML_DSA_44", "ML_DSA_65", "ML_DSA_87")
#: HMAC key spec -> key length in bytes (fact 9).
HMAC_KEY_BYTES: Final = {"HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}

#: Every key spec kmscli creates, in botocore's enum order, with the usages AWS
#: allows for it (fact 2), the first being the one DescribeKey examples use.
KEY_USAGES: Final[dict[str, tuple[str, ...]]] = {
    "RSA_2048": (ENCRYPT_DECRYPT, SIGN_VERIFY),
    "RSA_3072": (ENCRYPT_DECRYPT, SIGN_VERIFY),
    "RSA_4096": (ENCRYPT_DECRYPT, SIGN_VERIFY),
    "ECC_NIST_P256": (SIGN_VERIFY, KEY_AGREEMENT),
    "ECC_NIST_P384": (SIGN_VERIFY, KEY_AGREEMENT),
    "ECC_NIST_P521": (SIGN_VERIFY, KEY_AGREEMENT),
    "ECC_SECG_P256K1": (SIGN_VERIFY,),
    SYMMETRIC_DEFAULT: (ENCRYPT_DECRYPT,),
    "HMAC_224": (GENERATE_VERIFY_MAC,),
    "HMAC_256": (GENERATE_VERIFY_MAC,),
    "HMAC_384": (GENERATE_VERIFY_MAC,),
    "HMAC_512": (GENERATE_VERIFY_MAC,),
    "ML_DSA_44": (SIGN_VERIFY,),
    "ML_DSA_65": (SIGN_VERIFY,),
    "ML_DSA_87": (SIGN_VERIFY,),
}
KEY_SPECS: Final = tuple(KEY_USAGES)

#: Key specs AWS has that kmscli refuses (UnsupportedOperationException, exit 2), with the reason shown.
REFUSED_KEY_SPECS: Final[dict[str, str]] = {
    "SM2": "SM2 keys exist only in AWS's China Regions; kmscli does not make them",
    "ECC_NIST_EDWARDS25519": "kmscli does not make Ed25519 KMS keys yet (data key pairs of this spec it does make)",
    "ML_KEM_512": "kmscli does not make ML-KEM KMS keys (ENCAPSULATE_DECAPSULATE) yet",
    "ML_KEM_768": "kmscli does not make ML-KEM KMS keys (ENCAPSULATE_DECAPSULATE) yet",
    "ML_KEM_1024": "kmscli does not make ML-KEM KMS keys (ENCAPSULATE_DECAPSULATE) yet",
}

_RSA_SIGNING: Final = (
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
)
_RSA_ENCRYPTION: Final = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")

#: (key spec, usage) -> the DescribeKey/GetPublicKey member and its list, in AWS's order (fact 3).
_ALGORITHMS: Final[dict[tuple[str, str], tuple[str, tuple[str, ...]]]] = {
    **{(s, SIGN_VERIFY): ("SigningAlgorithms", _RSA_SIGNING) for s in _RSA_BITS},
    **{(s, ENCRYPT_DECRYPT): ("EncryptionAlgorithms", _RSA_ENCRYPTION) for s in _RSA_BITS},
    ("ECC_NIST_P256", SIGN_VERIFY): ("SigningAlgorithms", ("ECDSA_SHA_256",)),
    ("ECC_NIST_P384", SIGN_VERIFY): ("SigningAlgorithms", ("ECDSA_SHA_384",)),
    ("ECC_NIST_P521", SIGN_VERIFY): ("SigningAlgorithms", ("ECDSA_SHA_512",)),
    ("ECC_SECG_P256K1", SIGN_VERIFY): ("SigningAlgorithms", ("ECDSA_SHA_256",)),
    **{(s, KEY_AGREEMENT): ("KeyAgreementAlgorithms", (ECDH,)) for s in ("ECC_NIST_P256", "ECC_NIST_P384",
                                                                         "ECC_NIST_P521")},
    (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT): ("EncryptionAlgorithms", (SYMMETRIC_DEFAULT,)),
    **{(s, GENERATE_VERIFY_MAC): ("MacAlgorithms", ("HMAC_SHA_" + s[5:],)) for s in HMAC_KEY_BYTES},
    **{(s, SIGN_VERIFY): ("SigningAlgorithms", (ML_DSA_SHAKE_256,)) for s in _MLDSA},
}

#: Signing algorithm -> the hash it uses (None: ML-DSA's SHAKE256 is internal to it).
_SIGNING_HASH: Final[dict[str, str | None]] = {
    "RSASSA_PSS_SHA_256": "sha256",
    "RSASSA_PSS_SHA_384": "sha384",
    "RSASSA_PSS_SHA_512": "sha512",
    "RSASSA_PKCS1_V1_5_SHA_256": "sha256",
    "RSASSA_PKCS1_V1_5_SHA_384": "sha384",
    "RSASSA_PKCS1_V1_5_SHA_512": "sha512",
    "ECDSA_SHA_256": "sha256",
    "ECDSA_SHA_384": "sha384",
    "ECDSA_SHA_512": "sha512",
    ML_DSA_SHAKE_256: None,
}
#: Digest sizes in bytes, for MessageType DIGEST (fact 6).
DIGEST_SIZES: Final = {alg: {"sha256": 32, "sha384": 48, "sha512": 64}[h] for alg, h in _SIGNING_HASH.items() if h}
_OAEP_HASH: Final = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"}
_HASH_BYTES: Final = {"sha1": 20, "sha256": 32}
_MAC_HASH: Final = {"HMAC_SHA_224": "sha224", "HMAC_SHA_256": "sha256", "HMAC_SHA_384": "sha384",
                    "HMAC_SHA_512": "sha512"}

#: Data key pair spec -> how it is made. Every DataKeyPairSpec AWS has, but SM2
#: (China Regions only, and refused by SPEC) and ML_KEM_512 (``cryptography`` 50
#: has only ML-KEM-768 and -1024).
DATA_KEY_PAIR_SPECS: Final = (
    "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1",
    "ECC_NIST_EDWARDS25519", "ML_KEM_768", "ML_KEM_1024",
)
REFUSED_DATA_KEY_PAIR_SPECS: Final[dict[str, str]] = {
    "SM2": "SM2 data key pairs exist only in AWS's China Regions; kmscli does not make them",
    "ML_KEM_512": "kmscli cannot make ML_KEM_512 data key pairs: its cryptography library has no ML-KEM-512",
}


# -- validation ------------------------------------------------------------------
def _enum(shape: str) -> tuple[str, ...]:
    from .. import aws_model

    return tuple(aws_model.SHAPES[shape]["enum"])


def _check_enum(value: object, shape: str, member: str) -> str:
    """``value`` if it is in the model's enum ``shape``, else AWS's ValidationException naming ``member``."""
    allowed = _enum(shape)
    if not isinstance(value, str) or value not in allowed:
        # User input quoted in an error: one line, clipped (the CLI escapes any control character left).
        text = str(value).replace("\n", "\\n").replace("\r", "\\r")
        shown = "null" if value is None else f"'{text if len(text) <= 80 else text[:79] + '…'}'"
        raise ValidationException(
            f"1 validation error detected: Value {shown} at '{member}' failed to satisfy constraint: "
            f"Member must satisfy enum value set: [{', '.join(allowed)}]"
        )
    return value


def _check_length(data: object, member: str, maximum: int) -> bytes:
    """``data`` as bytes if 1 <= len <= maximum, else AWS's ValidationException (never showing the bytes)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationException(f"1 validation error detected: Value at '{member}' failed to satisfy constraint: "
                                  "Member must not be null")
    data = bytes(data)
    if len(data) < 1:
        bound = "greater than or equal to 1"
    elif len(data) > maximum:
        bound = f"less than or equal to {maximum}"
    else:
        return data
    raise ValidationException(f"1 validation error detected: Value at '{member}' failed to satisfy constraint: "
                              f"Member must have length {bound}")


def check_enum(value: object, shape: str, member: str) -> str:
    """``value`` if it is in the AWS model's enum ``shape``; AWS's ValidationException naming ``member`` otherwise."""
    return _check_enum(value, shape, member)


def check_length(data: object, member: str, maximum: int) -> bytes:
    """``data`` as bytes if it is 1 to ``maximum`` bytes long; AWS's ValidationException otherwise."""
    return _check_length(data, member, maximum)


def check_key_spec(spec: object) -> str:
    """``spec`` if kmscli makes keys of it; AWS's ValidationException for an unknown name, exit 2 with a reason for
    a spec AWS has that kmscli refuses (SM2, ...)."""
    spec = _check_enum(spec, "KeySpec", "keySpec")
    if spec in REFUSED_KEY_SPECS:
        raise UnsupportedOperationException(f"KeySpec {spec} is not supported: {REFUSED_KEY_SPECS[spec]}")
    return spec


def check_key_usage(spec: str, usage: str | None) -> str:
    """The usage a new key of ``spec`` gets (CreateKey): ``usage``, or ENCRYPT_DECRYPT for a symmetric key
    when it is omitted; ValidationException when it is omitted for another spec or the pair is not AWS's."""
    spec = check_key_spec(spec)
    if usage is None:
        if spec == SYMMETRIC_DEFAULT:
            return ENCRYPT_DECRYPT
        raise ValidationException("You must specify a KeyUsage value for all KMS keys except for symmetric "
                                  "encryption keys.")
    usage = _check_enum(usage, "KeyUsageType", "keyUsage")
    if usage not in KEY_USAGES[spec]:
        raise ValidationException(f"KeyUsage {usage} is not compatible with KeySpec {spec}",
                                  hint=f"{spec} keys allow {' or '.join(KEY_USAGES[spec])}")
    return usage


def key_algorithms(spec: str, usage: str) -> dict[str, list[str]]:
    """The algorithm member DescribeKey and GetPublicKey show for a key: ``{"SigningAlgorithms": [...]}`` etc.,
    exactly as AWS lists it; AWS shows only the member of the key's usage (fact 3)."""
    member, algorithms = _ALGORITHMS[(spec, usage)]
    return {member: list(algorithms)}


def require_usage(spec: str, usage: str | None, needed: str, operation: str, key_id: str | None = None) -> None:
    """InvalidKeyUsageException, in AWS's words, unless a key of ``spec`` and ``usage`` may do ``operation``.

    ``usage`` None means "whatever ``spec`` allows": a spec with several usages (RSA, NIST curves) then passes
    if one of them is ``needed``. ``key_id`` (the key's ARN) starts AWS's message when given.
    """
    usages = KEY_USAGES.get(spec, ())
    if (needed == usage) if usage is not None else (needed in usages):
        return
    shown = usage if usage is not None else " or ".join(usages) or spec
    raise InvalidKeyUsageException(f"{key_id or 'KMS'} key usage is {shown} which is not valid for {operation}.")


def _incompatible(algorithm: str, spec: str) -> InvalidKeyUsageException:
    return InvalidKeyUsageException(f"Algorithm {algorithm} is incompatible with key spec {spec}.")


def _check_signing(spec: str, usage: str | None, algorithm: object, message: object, message_type: object,
                   operation: str, key_id: str | None) -> tuple[str, bytes, str]:
    """Every check Sign and Verify make before any cryptography, in AWS's order (request shape, usage,
    algorithm for the spec, message type for the spec, digest length)."""
    algorithm = _check_enum(algorithm, "SigningAlgorithmSpec", "signingAlgorithm")
    message_type = _check_enum(RAW if message_type is None else message_type, "MessageType", "messageType")
    message = _check_length(message, "message", MAX_MESSAGE)
    require_usage(spec, usage, SIGN_VERIFY, operation, key_id)
    if (spec, SIGN_VERIFY) not in _ALGORITHMS or algorithm not in _ALGORITHMS[(spec, SIGN_VERIFY)][1]:
        raise _incompatible(algorithm, spec)
    if spec in _MLDSA:
        # ML-DSA signs a RAW message or a 64-byte mu, never a bare digest (fact 6).
        if message_type == DIGEST:
            raise ValidationException(f"Message type {message_type} is incompatible with key spec {spec}.")
        if message_type == EXTERNAL_MU and len(message) != MU_SIZE:
            raise ValidationException(f"External Mu is invalid length for algorithm {algorithm}.")
    else:
        if message_type == EXTERNAL_MU:
            raise ValidationException(f"Message type {message_type} is incompatible with key spec {spec}.")
        if message_type == DIGEST and len(message) != DIGEST_SIZES[algorithm]:
            raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
    return algorithm, message, message_type


# -- key material ----------------------------------------------------------------
def _hash(name: str) -> HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    made: dict[str, Callable[[], HashAlgorithm]] = {
        "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
        "sha512": hashes.SHA512,
    }
    return made[name]()


def _curve(spec: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    made: dict[str, Callable[[], ec.EllipticCurve]] = {
        "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1, "secp256k1": ec.SECP256K1,
    }
    return made[_CURVES[spec]]()


def _mldsa_class(spec: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import mldsa

    return {"ML_DSA_44": mldsa.MLDSA44PrivateKey, "ML_DSA_65": mldsa.MLDSA65PrivateKey,
            "ML_DSA_87": mldsa.MLDSA87PrivateKey}[spec]


def _pkcs8(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization as ser

    return key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())


def _spki(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization as ser

    return key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)


def generate(spec: str) -> bytes:
    """New private key material for a KMS key of ``spec``: PKCS#8 DER for RSA, ECC and ML-DSA, random bytes of
    the spec's length for HMAC (fact 9) and 32 for SYMMETRIC_DEFAULT (a 256-bit AES-GCM key)."""
    spec = check_key_spec(spec)
    if spec in HMAC_KEY_BYTES:
        return os.urandom(HMAC_KEY_BYTES[spec])
    if spec == SYMMETRIC_DEFAULT:
        return os.urandom(32)
    if spec in _MLDSA:
        return mldsa_from_seed(spec, os.urandom(32))
    return _generate_keypair(spec)


def mldsa_from_seed(spec: str, seed: bytes) -> bytes:
    """The ML-DSA private key (PKCS#8 DER, seed form) FIPS 204's ML-DSA.KeyGen_internal makes from a 32-byte
    seed: the deterministic seam under :func:`generate`, for known-answer tests."""
    if spec not in _MLDSA:
        raise ValueError(f"{spec} is not an ML-DSA key spec")
    if len(seed) != 32:
        raise ValueError("an ML-DSA seed is 32 bytes")
    return _pkcs8(_mldsa_class(spec).from_seed_bytes(seed))


def _generate_keypair(spec: str) -> bytes:
    if spec in _RSA_BITS:
        from cryptography.hazmat.primitives.asymmetric import rsa

        return _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[spec]))
    if spec in _CURVES:
        from cryptography.hazmat.primitives.asymmetric import ec

        return _pkcs8(ec.generate_private_key(_curve(spec)))
    if spec == "ECC_NIST_EDWARDS25519":
        from cryptography.hazmat.primitives.asymmetric import ed25519

        return _pkcs8(ed25519.Ed25519PrivateKey.generate())
    if spec in ("ML_KEM_768", "ML_KEM_1024"):
        from cryptography.hazmat.primitives.asymmetric import mlkem

        cls = mlkem.MLKEM768PrivateKey if spec == "ML_KEM_768" else mlkem.MLKEM1024PrivateKey
        return _pkcs8(cls.generate())
    raise ValueError(f"no key pair for {spec}")


def _matches(spec: str, key: Any) -> bool:
    """Whether ``key`` (private or public) is a key of ``spec``: the algorithm, RSA size or curve."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa

    kinds: dict[str, tuple[Any, ...]] = {
        "ML_DSA_44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey),
        "ML_DSA_65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey),
        "ML_DSA_87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey),
        "ECC_NIST_EDWARDS25519": (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey),
        "ML_KEM_768": (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
        "ML_KEM_1024": (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
    }
    if spec in _RSA_BITS:
        return isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size == _RSA_BITS[spec]
    if spec in _CURVES:
        return (isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)
                and key.curve.name == _CURVES[spec])
    return spec in kinds and isinstance(key, kinds[spec])


def _private_key(spec: str, material: bytes, *, validate: bool = False) -> Any:
    """The private key object in ``material`` (PKCS#8 DER), which must be of ``spec``.

    Material that does not parse or is of another spec is a vault inconsistency, never user input: it is
    KMSInternalException, and the message says nothing about the bytes.

    OpenSSL's RSA key check (is n = pq, do the CRT values agree) costs 0.7 s for an RSA_4096 key, on every
    use. It is skipped for material this module made and the vault keeps under its AEAD, which no one without
    the vault key can alter; material from outside (imported key pairs) goes through
    :func:`check_private_material` once, with the check.
    """
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    try:
        key = load_der_private_key(bytes(material), password=None, unsafe_skip_rsa_key_validation=not validate)
    except (ValueError, TypeError):
        key = None
    if key is None or not _matches(spec, key):
        raise KMSInternalException(f"the key material of this {spec} key is not a {spec} private key")
    return key


def check_private_material(spec: str, material: bytes) -> None:
    """Refuse private key material from outside kmscli (an imported key pair) unless it is a sound PKCS#8
    private key of ``spec``: RSA keys get OpenSSL's full consistency check here, once, not at each use."""
    try:
        _private_key(spec, material, validate=True)
    except KMSInternalException:
        raise ValidationException(f"the key material is not a valid PKCS#8 DER private key of key spec {spec}") \
            from None


def _hmac_material(spec: str, material: bytes) -> bytes:
    if not isinstance(material, bytes | bytearray) or not material:
        raise KMSInternalException(f"the key material of this {spec} key is empty")
    return bytes(material)


def public_key_der(spec: str, material: bytes) -> bytes:
    """GetPublicKey's PublicKey: the DER SubjectPublicKeyInfo of the key pair in ``material``.

    Symmetric and HMAC keys have none: UnsupportedOperationException, as AWS answers.
    """
    if spec not in _RSA_BITS and spec not in _CURVES and spec not in _MLDSA:
        raise UnsupportedOperationException(f"GetPublicKey is not supported for KMS keys with key spec {spec}",
                                            hint="only asymmetric keys (RSA, ECC, ML-DSA) have a public key")
    return _spki(_private_key(spec, material).public_key())


def spki_to_pem(der: bytes) -> bytes:
    """A DER SubjectPublicKeyInfo as PEM (``-----BEGIN PUBLIC KEY-----``), what ``openssl`` reads."""
    from cryptography.hazmat.primitives import serialization as ser

    key = ser.load_der_public_key(bytes(der))
    return key.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)


def generate_data_key_pair(pair_spec: object) -> tuple[bytes, bytes]:
    """GenerateDataKeyPair's key pair: (PrivateKeyPlaintext as PKCS#8 DER, PublicKey as SubjectPublicKeyInfo DER).

    The caller encrypts the private key under its symmetric KMS key and forgets the plaintext when asked to.
    """
    pair_spec = _check_enum(pair_spec, "DataKeyPairSpec", "keyPairSpec")
    if pair_spec in REFUSED_DATA_KEY_PAIR_SPECS:
        raise UnsupportedOperationException(f"KeyPairSpec {pair_spec} is not supported: "
                                            f"{REFUSED_DATA_KEY_PAIR_SPECS[pair_spec]}")
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    private = _generate_keypair(pair_spec)
    # Just made by cryptography itself: OpenSSL's RSA check would add 0.7 s to an RSA_4096 pair for nothing.
    return private, _spki(load_der_private_key(private, None, unsafe_skip_rsa_key_validation=True).public_key())


# -- Sign and Verify ---------------------------------------------------------------
def message_hasher(algorithm: str, public_key: bytes | None = None) -> tuple[Any, str]:
    """A streaming hash that turns a message of any size into what Sign takes in its place: (hasher, MessageType).

    For RSA and ECDSA the algorithm's digest (MessageType DIGEST); for ML-DSA the FIPS 204 external mu (MessageType
    EXTERNAL_MU), which needs the key's ``public_key`` (GetPublicKey's SubjectPublicKeyInfo): mu =
    SHAKE256(SHAKE256(pk, 64) || 0x00 || 0x00 || M, 64), pure ML-DSA with an empty context. Either gives the same
    signature as signing the whole message RAW. The hasher has ``update`` and ``finish() -> bytes``.
    """
    import hashlib

    algorithm = _check_enum(algorithm, "SigningAlgorithmSpec", "signingAlgorithm")
    name = _SIGNING_HASH[algorithm]
    if name is not None:
        return _Hasher(hashlib.new(name), None), DIGEST
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    public = load_der_public_key(_check_length(public_key, "publicKey", MAX_PUBLIC_KEY))
    tr = hashlib.shake_256(public.public_bytes_raw()).digest(64)  # type: ignore[union-attr]
    h = hashlib.shake_256(tr + b"\x00\x00")
    return _Hasher(h, MU_SIZE), EXTERNAL_MU


class _Hasher:
    def __init__(self, h: Any, length: int | None) -> None:
        self._h, self._length = h, length

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def finish(self) -> bytes:
        return bytes(self._h.digest(self._length) if self._length is not None else self._h.digest())


def _sign_args(algorithm: str, message_type: str) -> tuple[Any, Any]:
    """(padding, or None for ECDSA; hash argument) of an RSA or ECDSA algorithm. DIGEST: the message is the
    digest already, so cryptography must not hash it again (Prehashed)."""
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    name = _SIGNING_HASH[algorithm]
    assert name is not None, algorithm
    chosen: Any = Prehashed(_hash(name)) if message_type == DIGEST else _hash(name)
    if algorithm.startswith("RSASSA_PSS_"):
        # AWS's PSS: MGF1 over the same hash and a salt as long as the digest (fact 4).
        return padding.PSS(mgf=padding.MGF1(_hash(name)), salt_length=DIGEST_SIZES[algorithm]), chosen
    if algorithm.startswith("RSASSA_PKCS1_V1_5_"):
        return padding.PKCS1v15(), chosen
    return None, chosen


def sign(spec: str, material: bytes, algorithm: str, message: bytes, message_type: str = RAW, *,
         usage: str | None = None, key_id: str | None = None) -> bytes:
    """Sign: the signature of ``message`` (or of the digest or mu it is) with the private key in ``material``.

    RSA signatures are PKCS #1, ECDSA signatures DER, ML-DSA signatures FIPS 204's encoding (pure ML-DSA,
    empty context). Raises the AWS exception of each misuse before touching the key.
    """
    algorithm, message, message_type = _check_signing(spec, usage, algorithm, message, message_type, "Sign", key_id)
    key = _private_key(spec, material)
    if spec in _MLDSA:
        return bytes(key.sign_mu(message) if message_type == EXTERNAL_MU else key.sign(message))
    pad, chosen = _sign_args(algorithm, message_type)
    if pad is None:
        from cryptography.hazmat.primitives.asymmetric import ec

        return bytes(key.sign(message, ec.ECDSA(chosen)))
    return bytes(key.sign(message, pad, chosen))


def verify(spec: str, material: bytes, algorithm: str, message: bytes, signature: bytes,
           message_type: str = RAW, *, usage: str | None = None, key_id: str | None = None) -> None:
    """Verify: returns when ``signature`` is ``algorithm``'s signature of ``message`` by the key in ``material``;
    KMSInvalidSignatureException otherwise (wrong key, message, algorithm, truncated or altered signature)."""
    signature = _check_length(signature, "signature", MAX_BLOB)
    algorithm, message, message_type = _check_signing(spec, usage, algorithm, message, message_type, "Verify",
                                                      key_id)
    _verify_with(spec, _private_key(spec, material).public_key(), algorithm, message, signature, message_type)


def verify_public(spec: str, public_key: bytes, algorithm: str, message: bytes, signature: bytes,
                  message_type: str = RAW) -> None:
    """:func:`verify` with only the public key, ``public_key`` a DER SubjectPublicKeyInfo of ``spec``'s kind
    (what GetPublicKey returned); the same checks and the same exceptions."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    signature = _check_length(signature, "signature", MAX_BLOB)
    algorithm, message, message_type = _check_signing(spec, SIGN_VERIFY, algorithm, message, message_type,
                                                      "Verify", None)
    try:
        public = load_der_public_key(_check_length(public_key, "publicKey", MAX_PUBLIC_KEY))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        public = None
    if public is None or not _matches(spec, public):
        raise ValidationException(f"PublicKey is not a {spec} public key (DER SubjectPublicKeyInfo)")
    _verify_with(spec, public, algorithm, message, signature, message_type)


def _verify_with(spec: str, public: Any, algorithm: str, message: bytes, signature: bytes,
                 message_type: str) -> None:
    from cryptography.exceptions import InvalidSignature

    try:
        if spec in _MLDSA:
            if message_type == EXTERNAL_MU:
                public.verify_mu(signature, message)
            else:
                public.verify(signature, message)
            return
        pad, chosen = _sign_args(algorithm, message_type)
        if pad is None:
            from cryptography.hazmat.primitives.asymmetric import ec

            public.verify(signature, message, ec.ECDSA(chosen))
        else:
            public.verify(signature, message, pad, chosen)
    except (InvalidSignature, ValueError):
        # ValueError: a signature cryptography cannot even parse (a DER error, a wrong ML-DSA length); to the
        # caller it is just as invalid, and one exception for every failure tells an attacker nothing.
        raise KMSInvalidSignatureException() from None


# -- Encrypt and Decrypt (RSA) -------------------------------------------------------
def max_plaintext(spec: str, algorithm: str) -> int:
    """The largest plaintext AWS encrypts with ``algorithm`` under an RSA key of ``spec`` (fact 4)."""
    return _RSA_BITS[spec] // 8 - 2 * _HASH_BYTES[_OAEP_HASH[algorithm]] - 2


def _check_encryption(spec: str, usage: str | None, algorithm: object, operation: str,
                      key_id: str | None) -> str:
    algorithm = _check_enum(SYMMETRIC_DEFAULT if algorithm is None else algorithm, "EncryptionAlgorithmSpec",
                            "encryptionAlgorithm")
    require_usage(spec, usage, ENCRYPT_DECRYPT, operation, key_id)
    if spec not in _RSA_BITS or algorithm not in _RSA_ENCRYPTION:
        raise _incompatible(algorithm, spec)
    return algorithm


def _oaep(algorithm: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import padding

    # Same hash for the digest and MGF1, empty label (fact 4).
    h = _OAEP_HASH[algorithm]
    return padding.OAEP(mgf=padding.MGF1(_hash(h)), algorithm=_hash(h), label=None)


def encrypt(spec: str, material: bytes, algorithm: str, plaintext: bytes, *, usage: str | None = None,
            key_id: str | None = None) -> bytes:
    """Encrypt with an RSA key: RSAES-OAEP of ``plaintext`` under the public half of ``material``."""
    plaintext = _check_length(plaintext, "plaintext", MAX_MESSAGE)
    algorithm = _check_encryption(spec, usage, algorithm, "Encrypt", key_id)
    limit = max_plaintext(spec, algorithm)
    if len(plaintext) > limit:
        raise ValidationException(f"Algorithm {algorithm} and key spec {spec} cannot encrypt data larger than "
                                  f"{limit} bytes.")
    return bytes(_private_key(spec, material).public_key().encrypt(plaintext, _oaep(algorithm)))


def decrypt(spec: str, material: bytes, algorithm: str, ciphertext: bytes, *, usage: str | None = None,
            key_id: str | None = None) -> bytes:
    """Decrypt with an RSA key; InvalidCiphertextException (one fixed message) for anything that does not
    decrypt, whatever the reason."""
    ciphertext = _check_length(ciphertext, "ciphertextBlob", MAX_BLOB)
    algorithm = _check_encryption(spec, usage, algorithm, "Decrypt", key_id)
    key = _private_key(spec, material)
    if len(ciphertext) != key.key_size // 8:
        raise InvalidCiphertextException()
    try:
        return bytes(key.decrypt(ciphertext, _oaep(algorithm)))
    except ValueError:
        raise InvalidCiphertextException() from None


# -- GenerateMac and VerifyMac ----------------------------------------------------------
def _check_mac(spec: str, usage: str | None, algorithm: object, message: object, operation: str,
               key_id: str | None) -> tuple[str, bytes]:
    algorithm = _check_enum(algorithm, "MacAlgorithmSpec", "macAlgorithm")
    message = _check_length(message, "message", MAX_MESSAGE)
    require_usage(spec, usage, GENERATE_VERIFY_MAC, operation, key_id)
    if (spec, GENERATE_VERIFY_MAC) not in _ALGORITHMS or algorithm not in _ALGORITHMS[(spec, GENERATE_VERIFY_MAC)][1]:
        raise _incompatible(algorithm, spec)
    return algorithm, message


def _hmac(algorithm: str, key: bytes, message: bytes) -> Any:
    from cryptography.hazmat.primitives import hmac

    h = hmac.HMAC(key, _hash(_MAC_HASH[algorithm]))
    h.update(message)
    return h


def generate_mac(spec: str, material: bytes, algorithm: str, message: bytes, *, usage: str | None = None,
                 key_id: str | None = None) -> bytes:
    """GenerateMac: the HMAC (RFC 2104) of ``message`` under the HMAC key ``material``."""
    algorithm, message = _check_mac(spec, usage, algorithm, message, "GenerateMac", key_id)
    return bytes(_hmac(algorithm, _hmac_material(spec, material), message).finalize())


def verify_mac(spec: str, material: bytes, algorithm: str, message: bytes, mac: bytes, *,
               usage: str | None = None, key_id: str | None = None) -> None:
    """VerifyMac: returns when ``mac`` is the HMAC of ``message``; KMSInvalidMacException otherwise.

    The comparison is cryptography's constant-time one: how much of a forged MAC matches is not observable.
    """
    from cryptography.exceptions import InvalidSignature

    mac = _check_length(mac, "mac", MAX_BLOB)
    algorithm, message = _check_mac(spec, usage, algorithm, message, "VerifyMac", key_id)
    try:
        _hmac(algorithm, _hmac_material(spec, material), message).verify(mac)
    except InvalidSignature:
        raise KMSInvalidMacException() from None


# -- DeriveSharedSecret ------------------------------------------------------------------
def load_peer_public_key(data: bytes) -> Any:
    """A peer's public key from DER SubjectPublicKeyInfo or PEM; ValidationException when it is neither."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser

    data = _check_length(data, "publicKey", MAX_PUBLIC_KEY)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return ser.load_pem_public_key(data)
        return ser.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # cryptography also refuses here an EC point that is not on its curve.
        raise ValidationException("PublicKey is not a valid public key: it must be a DER-encoded X.509 "
                                  "SubjectPublicKeyInfo (or its PEM form)") from None


def derive_shared_secret(spec: str, material: bytes, peer_public_key: bytes, algorithm: str = ECDH, *,
                         usage: str | None = None, key_id: str | None = None) -> bytes:
    """DeriveSharedSecret: the raw ECDH shared secret (the x-coordinate, as long as the curve's field) of the
    private key in ``material`` and the peer's public key, which must be on the same curve."""
    from cryptography.hazmat.primitives.asymmetric import ec

    algorithm = _check_enum(algorithm, "KeyAgreementAlgorithmSpec", "keyAgreementAlgorithm")
    require_usage(spec, usage, KEY_AGREEMENT, "DeriveSharedSecret", key_id)
    if (spec, KEY_AGREEMENT) not in _ALGORITHMS:
        raise _incompatible(algorithm, spec)
    peer = load_peer_public_key(peer_public_key)
    if not isinstance(peer, ec.EllipticCurvePublicKey):
        raise ValidationException(f"PublicKey is not an elliptic curve key; a {spec} key agrees only with a key "
                                  f"on {_CURVES[spec]}")
    if peer.curve.name != _CURVES[spec]:
        raise ValidationException(f"PublicKey is on curve {peer.curve.name}, not on {_CURVES[spec]}: both key "
                                  f"pairs must use the same curve as the {spec} KMS key")
    return bytes(_private_key(spec, material).exchange(ec.ECDH(), peer))
