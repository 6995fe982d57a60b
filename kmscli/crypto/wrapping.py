"""Imported key material (bring your own key): the wrapping key pair, unwrapping, and what each key spec takes.

What this module gives the service (``service/imports.py``):

* :func:`check_wrapping` and :func:`check_wrapping_for_key`: AWS's rules on the
  wrapping algorithm and the wrapping key spec of GetParametersForImport;
* :func:`new_wrapping_key`: a fresh RSA key pair per GetParametersForImport call
  (PKCS#8 DER private half for the vault, SubjectPublicKeyInfo DER to hand out);
* :func:`unwrap`: the key material out of ImportKeyMaterial's EncryptedKeyMaterial;
* :func:`check_material`: material of the right length (symmetric, HMAC) or a
  sound PKCS#8 private key of the key's spec (RSA, ECC), re-encoded canonically.

Every primitive is ``cryptography``'s, imported on first use.

Facts relied on, and where they come from
------------------------------------------
[M]  botocore's KMS model (kmscli/aws_model.py): AlgorithmSpec, WrappingKeySpec, and the documentation of
     GetParametersForImport.WrappingAlgorithm, ImportKeyMaterial.ValidTo/ExpirationModel/ImportType.
[G]  AWS KMS Developer Guide, "Importing key material" (importing-keys-*.md), and the key state table.

1. Wrapping algorithms [M]: RSAES_OAEP_SHA_1 / RSAES_OAEP_SHA_256 encrypt the material itself with the
   wrapping public key (OAEP, the same hash for the digest and MGF1, no label); RSA_AES_KEY_WRAP_SHA_1 /
   _256 encrypt a 256-bit AES key with that OAEP, then the material with AES key wrap with padding
   (RFC 5649), the two concatenated: the first modulus-length bytes are the wrapped AES key.
   RSAES_PKCS1_V1_5 has not been accepted since October 10, 2023; SM2PKE and the SM2 wrapping key spec
   exist in AWS's China Regions only.
2. An RSA private key can be imported only with an RSA_AES_KEY_WRAP algorithm (it is larger than OAEP can
   hold); RSAES_OAEP with an RSA_2048 wrapping key cannot wrap ECC_NIST_P521 material [M]. AWS documents
   RSA_AES_KEY_WRAP "for RSA and ECC key material"; kmscli accepts it for every key spec, since it is at
   least as strong as OAEP alone (docs/import.md).
3. Material [G]: a symmetric encryption key is 256 bits; an HMAC key as long as its spec (HMAC_224: 28
   bytes ... HMAC_512: 64); an asymmetric key is its private key as PKCS#8 DER. ML-DSA keys are not among
   the key types AWS lists for imported material (symmetric, HMAC, RSA, ECC, SM2): kmscli refuses them.
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import InvalidCiphertextException, UnsupportedOperationException, ValidationException
from . import asymmetric as A

#: Wrapping algorithm -> (OAEP hash, whether the material goes under an AES key wrap) (fact 1).
WRAPPING_ALGORITHMS: Final[dict[str, tuple[str, bool]]] = {
    "RSAES_OAEP_SHA_1": ("sha1", False),
    "RSAES_OAEP_SHA_256": ("sha256", False),
    "RSA_AES_KEY_WRAP_SHA_1": ("sha1", True),
    "RSA_AES_KEY_WRAP_SHA_256": ("sha256", True),
}
#: Wrapping algorithms AWS has that kmscli refuses, with the reason shown (fact 1).
REFUSED_WRAPPING_ALGORITHMS: Final[dict[str, str]] = {
    "RSAES_PKCS1_V1_5": "AWS KMS has not accepted RSAES_PKCS1_V1_5 since October 10, 2023 (PKCS #1 v1.5 "
                        "padding is open to padding-oracle attacks); use RSAES_OAEP_SHA_256 or "
                        "RSA_AES_KEY_WRAP_SHA_256",
    "SM2PKE": "SM2 wrapping exists only in AWS's China Regions; kmscli does not make SM2 keys",
}
WRAPPING_KEY_BITS: Final = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
REFUSED_WRAPPING_KEY_SPECS: Final[dict[str, str]] = {
    "SM2": "SM2 wrapping keys exist only in AWS's China Regions; kmscli does not make SM2 keys",
}
#: The AES key of the RSA_AES_KEY_WRAP algorithms: 256 bits (fact 1).
AES_WRAPPING_KEY_BYTES: Final = 32
#: Key specs whose material cannot be imported (fact 3), with the reason shown.
NOT_IMPORTABLE: Final[dict[str, str]] = {
    spec: "AWS KMS imports key material only for symmetric encryption, HMAC, RSA and elliptic curve keys, "
          "not for ML-DSA keys" for spec in ("ML_DSA_44", "ML_DSA_65", "ML_DSA_87")
}
#: The one message of every EncryptedKeyMaterial that does not unwrap: it never says which step failed
#: (an RSA padding error told apart from an AES unwrap error would be an oracle).
UNWRAP_FAILED: Final = (
    "the encrypted key material cannot be unwrapped: it was not encrypted with the wrapping public key of this "
    "import token using its wrapping algorithm ({algorithm}), or it was changed or truncated"
)


def check_wrapping(algorithm: object, wrapping_spec: object) -> tuple[str, str]:
    """(algorithm, wrapping key spec) of a GetParametersForImport request, or AWS's ValidationException for a
    name outside the enum, or the refusal (with its reason) of one kmscli does not use (fact 1)."""
    algorithm = A.check_enum(algorithm, "AlgorithmSpec", "wrappingAlgorithm")
    wrapping_spec = A.check_enum(wrapping_spec, "WrappingKeySpec", "wrappingKeySpec")
    if algorithm == "RSAES_PKCS1_V1_5":
        raise ValidationException(f"WrappingAlgorithm {algorithm} is not supported: "
                                  f"{REFUSED_WRAPPING_ALGORITHMS[algorithm]}")
    if algorithm in REFUSED_WRAPPING_ALGORITHMS:
        raise UnsupportedOperationException(f"WrappingAlgorithm {algorithm} is not supported: "
                                            f"{REFUSED_WRAPPING_ALGORITHMS[algorithm]}")
    if wrapping_spec in REFUSED_WRAPPING_KEY_SPECS:
        raise UnsupportedOperationException(f"WrappingKeySpec {wrapping_spec} is not supported: "
                                            f"{REFUSED_WRAPPING_KEY_SPECS[wrapping_spec]}")
    return algorithm, wrapping_spec


def check_wrapping_for_key(algorithm: str, wrapping_spec: str, key_spec: str) -> None:
    """ValidationException when ``algorithm`` with a ``wrapping_spec`` key cannot carry ``key_spec``'s
    material (fact 2), naming the combination that can."""
    if WRAPPING_ALGORITHMS[algorithm][1]:
        return
    if key_spec in ("RSA_2048", "RSA_3072", "RSA_4096"):
        raise ValidationException(
            f"WrappingAlgorithm {algorithm} cannot wrap {key_spec} key material: an RSA private key is "
            "imported with RSA_AES_KEY_WRAP_SHA_256 or RSA_AES_KEY_WRAP_SHA_1")
    if key_spec == "ECC_NIST_P521" and wrapping_spec == "RSA_2048":
        raise ValidationException(
            f"WrappingAlgorithm {algorithm} with WrappingKeySpec RSA_2048 cannot wrap ECC_NIST_P521 key "
            "material: use RSA_3072 or RSA_4096, or an RSA_AES_KEY_WRAP algorithm")


def check_importable(key_spec: str) -> None:
    """UnsupportedOperationException (exit 2) for a key spec whose material cannot be imported (fact 3)."""
    if key_spec in NOT_IMPORTABLE:
        raise UnsupportedOperationException(f"KeySpec {key_spec} cannot have Origin EXTERNAL: "
                                            f"{NOT_IMPORTABLE[key_spec]}")


def new_wrapping_key(wrapping_spec: str) -> tuple[bytes, bytes]:
    """A fresh RSA wrapping key pair: (private key as PKCS#8 DER, public key as SubjectPublicKeyInfo DER)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=WRAPPING_KEY_BITS[wrapping_spec])
    private = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    public = key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _oaep(hash_name: str) -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    h = hashes.SHA1 if hash_name == "sha1" else hashes.SHA256
    return padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None)


def unwrap(algorithm: str, private_der: bytes, wrapped: bytes) -> bytes:
    """The key material ``wrapped`` carries under the wrapping key ``private_der`` with ``algorithm``.

    Anything that does not unwrap (another public key, another algorithm, changed or cut bytes) is
    InvalidCiphertextException with one message, whatever step refused it.
    """
    from cryptography.hazmat.primitives import keywrap
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    hash_name, aes = WRAPPING_ALGORITHMS[algorithm]
    # Made by kmscli and kept under the vault's AEAD: OpenSSL's RSA check would only cost time here.
    key = load_der_private_key(private_der, None, unsafe_skip_rsa_key_validation=True)
    size = key.key_size // 8  # type: ignore[union-attr]
    failed = InvalidCiphertextException(UNWRAP_FAILED.format(algorithm=algorithm))
    head, tail = (wrapped[:size], wrapped[size:]) if aes else (wrapped, b"")
    if len(head) != size or (aes and not tail):
        raise failed
    try:
        opened = key.decrypt(head, _oaep(hash_name))  # type: ignore[union-attr]
    except ValueError:
        raise failed from None
    if not aes:
        return bytes(opened)
    if len(opened) != AES_WRAPPING_KEY_BYTES:
        raise failed
    try:
        return bytes(keywrap.aes_key_unwrap_with_padding(opened, tail))
    except (keywrap.InvalidUnwrap, ValueError):
        raise failed from None


def check_material(key_spec: str, material: bytes) -> bytes:
    """The material a key of ``key_spec`` keeps: ``material`` itself for symmetric and HMAC keys, of the
    spec's length; for RSA and ECC keys its private key re-encoded as canonical PKCS#8 DER (so that the same
    key imported again in another encoding is the same material). ValidationException otherwise, which
    never shows the material."""
    if key_spec == A.SYMMETRIC_DEFAULT or key_spec in A.HMAC_KEY_BYTES:
        wanted = 32 if key_spec == A.SYMMETRIC_DEFAULT else A.HMAC_KEY_BYTES[key_spec]
        if len(material) != wanted:
            raise ValidationException(
                f"the key material is {len(material)} bytes; a {key_spec} key takes exactly {wanted} bytes "
                f"({wanted * 8} bits) of raw binary key material, not hex or base64")
        return material
    A.check_private_material(key_spec, material)  # ValidationException unless a sound key of this spec
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    key = load_der_private_key(material, None, unsafe_skip_rsa_key_validation=True)  # checked just above
    return bytes(key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
