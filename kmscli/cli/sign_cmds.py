"""``sign``, ``verify``, ``pubkey``, ``mac``, ``verify-mac``, ``datakey-pair`` and ``derive-secret``.

Signing takes input of any size: a message of 1 to 4096 bytes goes to Sign as
it is (MessageType RAW); anything else is hashed here as it streams by, with
the algorithm's own hash (DIGEST) or, for ML-DSA, into FIPS 204's external mu
(EXTERNAL_MU). Either way the signature is the one a RAW signature of the whole
input would be, so ``openssl dgst -verify`` checks it against the file itself.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from .. import errors
from . import common, fileio, output

#: Largest Message of Sign, Verify, GenerateMac and VerifyMac (botocore's model).
MAX_MESSAGE = 4096
#: Largest signature or MAC file read (the model's 6144-byte blob, in base64 with line breaks).
MAX_SIGNATURE_FILE = 16384

KeyOpt = Annotated[str, typer.Option("--key", "-k", metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")]
InOpt = Annotated[str | None, typer.Option("--in", "-i", metavar="IN", help="Read from IN ('-' = stdin, default).")]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", metavar="OUT",
                   help="Write to OUT ('-' = stdout, default); replaced only on success, mode 0600.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", metavar="raw|base64",
                      help="Output encoding: raw bytes (default) or one base64 line.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape.")]
SigningAlgorithmOpt = Annotated[str, typer.Option(
    "--algorithm", "-a", metavar="ALG", help="Signing algorithm as AWS names it: RSASSA_PSS_SHA_256|384|512, "
    "RSASSA_PKCS1_V1_5_SHA_256|384|512, ECDSA_SHA_256|384|512, ML_DSA_SHAKE_256.")]
DigestOpt = Annotated[bool, typer.Option(
    "--digest", help="The input is already the message's digest (ML-DSA: its 64-byte external mu).")]
MacAlgorithmOpt = Annotated[str, typer.Option("--algorithm", "-a", metavar="ALG",
                            help="HMAC_SHA_224|256|384|512, the one of the key's spec.")]


def register(app: typer.Typer) -> None:
    common.command(app, "sign", "Sign input of any size with an asymmetric key; the private key never leaves "
                                "the vault.", keyed=True)(sign)
    common.command(app, "verify", "Verify a signature: exit 0 when valid, 6 when not.", keyed=True)(verify)
    common.command(app, "pubkey", "Print an asymmetric key's public key (PEM or DER), usable by openssl as is.",
                   keyed=True)(pubkey)
    common.command(app, "mac", "Make the HMAC of a message (up to 4096 bytes) with an HMAC key.", keyed=True)(mac)
    common.command(app, "verify-mac", "Verify an HMAC: exit 0 when valid, 6 when not.", keyed=True)(verify_mac)
    common.command(app, "datakey-pair", "Make a key pair: its public key, its private key encrypted under KEY and, "
                                        "unless --no-plaintext, in plaintext.", keyed=True)(datakey_pair)
    common.command(app, "derive-secret", "Agree a shared secret (ECDH) between a KEY_AGREEMENT key and a peer's "
                                         "public key.", keyed=True)(derive_secret)


# -- sign and verify ------------------------------------------------------------------------
def sign(key: KeyOpt, algorithm: SigningAlgorithmOpt, digest: DigestOpt = False, in_: InOpt = None,
         out: OutOpt = None, format_: FormatOpt = "raw", json_: JsonOpt = False) -> None:
    _check_format(format_)
    svc = common.service()
    message, message_type = _message(svc, key, algorithm, digest, in_)
    with _answer(out, format_, json_, "signature") as emit:
        emit("Sign", svc.Sign(KeyId=key, Message=message, SigningAlgorithm=algorithm, MessageType=message_type),
             "Signature")


def verify(
    key: KeyOpt, algorithm: SigningAlgorithmOpt,
    signature: Annotated[str, typer.Option("--signature", "-s", metavar="FILE",
                         help="The signature, raw or base64 ('-' = stdin, when the message comes from -i FILE).")],
    digest: DigestOpt = False, in_: InOpt = None, json_: JsonOpt = False,
) -> None:
    sig = _read_blob(signature, in_, "signature")
    svc = common.service()
    message, message_type = _message(svc, key, algorithm, digest, in_)
    result = svc.Verify(KeyId=key, Message=message, Signature=sig, SigningAlgorithm=algorithm,
                        MessageType=message_type)
    if json_:
        output.emit_aws("Verify", result)
    elif output.is_tty(sys.stderr):
        output.message("kmscli: the signature is valid")


def _message(svc: Any, key: str, algorithm: str, digest: bool, in_: str | None) -> tuple[bytes, str]:
    """What Sign or Verify takes for the input: (Message, MessageType)."""
    reader, _size = fileio.open_input(in_)
    head = _read_up_to(reader, MAX_MESSAGE + 1)
    ml_dsa = algorithm == "ML_DSA_SHAKE_256"
    if digest:
        if len(head) > MAX_MESSAGE:
            raise errors.ValidationException(
                f"--digest takes the digest itself (32 to 64 bytes); the input is over {MAX_MESSAGE} bytes")
        return head, "EXTERNAL_MU" if ml_dsa else "DIGEST"
    if 0 < len(head) <= MAX_MESSAGE:
        return head, "RAW"
    from ..crypto import asymmetric as A

    # Empty or over 4096 bytes: Sign would refuse the message itself, so it gets its digest (or mu) instead.
    public = svc.GetPublicKey(KeyId=key)["PublicKey"] if ml_dsa else None
    hasher, message_type = A.message_hasher(algorithm, public)
    hasher.update(head)
    while True:
        chunk = reader.read(1 << 20)
        if not chunk:
            break
        hasher.update(chunk)
    return hasher.finish(), message_type


# -- public keys ------------------------------------------------------------------------------
def pubkey(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")],
    format_: Annotated[str, typer.Option("--format", "-f", metavar="pem|der",
                       help="PEM (default) or DER SubjectPublicKeyInfo.")] = "pem",
    out: OutOpt = None, json_: JsonOpt = False,
) -> None:
    if format_ not in ("pem", "der"):
        raise errors.ValidationException(f"--format must be pem or der (got '{format_}')")
    with _answer(out, "raw" if format_ == "der" else "pem", json_, "DER public key", "--format pem") as emit:
        emit("GetPublicKey", common.service().GetPublicKey(KeyId=key), "PublicKey")


# -- MACs ----------------------------------------------------------------------------------------
def mac(key: KeyOpt, algorithm: MacAlgorithmOpt, in_: InOpt = None, out: OutOpt = None,
        format_: FormatOpt = "raw", json_: JsonOpt = False) -> None:
    _check_format(format_)
    svc = common.service()
    message = _small_message(in_)
    with _answer(out, format_, json_, "MAC") as emit:
        emit("GenerateMac", svc.GenerateMac(KeyId=key, Message=message, MacAlgorithm=algorithm), "Mac")


def verify_mac(
    key: KeyOpt, algorithm: MacAlgorithmOpt,
    mac_file: Annotated[str, typer.Option("--mac", "-m", metavar="FILE",
                        help="The MAC, raw or base64 ('-' = stdin, when the message comes from -i FILE).")],
    in_: InOpt = None, json_: JsonOpt = False,
) -> None:
    tag = _read_blob(mac_file, in_, "MAC")
    svc = common.service()
    result = svc.VerifyMac(KeyId=key, Message=_small_message(in_), MacAlgorithm=algorithm, Mac=tag)
    if json_:
        output.emit_aws("VerifyMac", result)
    elif output.is_tty(sys.stderr):
        output.message("kmscli: the MAC is valid")


def _small_message(in_: str | None) -> bytes:
    """A MAC's message: 1 to 4096 bytes, as AWS takes it (a larger one is refused, never hashed first)."""
    reader, _size = fileio.open_input(in_)
    message = _read_up_to(reader, MAX_MESSAGE + 1)
    if not message or len(message) > MAX_MESSAGE:
        raise errors.ValidationException(
            f"an HMAC message is 1 to {MAX_MESSAGE} bytes, as in AWS KMS (got "
            f"{'none' if not message else f'more than {MAX_MESSAGE}'})",
            hint="for a larger input, MAC its SHA-256 digest")
    return message


# -- data key pairs and key agreement ----------------------------------------------------------------
def datakey_pair(
    key: Annotated[str, typer.Argument(metavar="KEY", help="The symmetric key that encrypts the private key.")],
    spec: Annotated[str, typer.Option("--spec", metavar="SPEC",
                    help="RSA_2048|3072|4096, ECC_NIST_P256|P384|P521, ECC_SECG_P256K1, ECC_NIST_EDWARDS25519, "
                         "ML_KEM_768|1024.")],
    context: Annotated[list[str] | None, typer.Option("--context", "-c", metavar="K=V",
                       help="Encryption context pair of the encrypted private key; repeatable.")] = None,
    no_plaintext: Annotated[bool, typer.Option("--no-plaintext", help="Leave the plaintext private key out.")
                            ] = False,
    json_: JsonOpt = False,
) -> None:
    """Without --json: base64 fields on a terminal; otherwise one line, tab-separated base64 DER: the private
    key (PKCS#8, unless --no-plaintext), the encrypted private key (a kmscli ciphertext), the public key."""
    ctx = common.pairs(context, "context")
    svc = common.service()
    if no_plaintext:
        operation = "GenerateDataKeyPairWithoutPlaintext"
        result = svc.GenerateDataKeyPairWithoutPlaintext(KeyId=key, KeyPairSpec=spec, EncryptionContext=ctx)
    else:
        operation = "GenerateDataKeyPair"
        result = svc.GenerateDataKeyPair(KeyId=key, KeyPairSpec=spec, EncryptionContext=ctx)
    if json_:
        output.emit_aws(operation, result)
        return
    import base64

    shown = [(k, base64.b64encode(result[k]).decode()) for k in
             ("PrivateKeyPlaintext", "PrivateKeyCiphertextBlob", "PublicKey") if k in result]
    if output.is_tty(sys.stdout):
        output.fields([("KeyId", result["KeyId"]), ("KeyPairSpec", result["KeyPairSpec"]), *shown])
    else:
        output.emit_line("\t".join(v for _k, v in shown))


def derive_secret(
    key: KeyOpt,
    public_key: Annotated[str, typer.Option("--public-key", "-p", metavar="FILE",
                          help="The peer's public key: PEM or DER SubjectPublicKeyInfo on the key's curve.")],
    out: OutOpt = None, format_: FormatOpt = "raw", json_: JsonOpt = False,
) -> None:
    _check_format(format_)
    peer = _read_file(public_key, "public key", 8192 * 2)
    with _answer(out, format_, json_, "shared secret") as emit:
        emit("DeriveSharedSecret",
             common.service().DeriveSharedSecret(KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=peer),
             "SharedSecret")


# -- helpers --------------------------------------------------------------------------------------
def _check_format(format_: str) -> None:
    if format_ not in ("raw", "base64"):
        raise errors.ValidationException(f"--format must be raw or base64 (got '{format_}')")


def _read_up_to(reader: Any, limit: int) -> bytes:
    from ..crypto.stream import read_up_to  # loaded on use: every CLI call imports this module

    return read_up_to(reader, limit)


def _write_all(stream: Any, data: bytes) -> None:
    from ..crypto.stream import write_all

    write_all(stream, data)


def _read_file(path: str, what: str, limit: int) -> bytes:
    reader, _size = fileio.open_input(path)
    data = _read_up_to(reader, limit + 1)
    if len(data) > limit:
        raise errors.ValidationException(f"the {what} file {path} is over {limit} bytes: not a {what}")
    return data


def _read_blob(path: str, message_in: str | None, what: str) -> bytes:
    """A signature or MAC from FILE: raw, or base64 (as ``--format base64`` writes it)."""
    if path == "-" and message_in in (None, "-"):
        raise errors.UsageError(f"the {what} and the message cannot both come from stdin; give one of them as a file")
    data = _read_file(path, what, MAX_SIGNATURE_FILE)
    import base64
    import binascii
    import re

    text = data.strip()
    if text and re.fullmatch(rb"[A-Za-z0-9+/\r\n]+={0,2}", text):
        try:
            return base64.b64decode(re.sub(rb"\s+", b"", text), validate=True)
        except (binascii.Error, ValueError):
            pass  # not base64 after all: raw bytes that happen to be printable
    return data


@contextlib.contextmanager
def _answer(out: str | None, format_: str, json_: bool, what: str, way_out: str = "--format base64"
            ) -> Iterator[Callable[[str, dict[str, Any], str], None]]:
    """Where the answer goes, opened before the operation runs (as ``encrypt`` opens its output): raw bytes
    bound for a terminal and an unwritable -o are refused before anything is signed, made or recorded as done,
    and an -o file appears only on success. ``emit(operation, result, member)`` writes the answer: the AWS
    JSON shape (--json), or ``result[member]`` raw, as one base64 line or (a public key) as PEM."""
    if json_:
        yield lambda operation, result, _member: output.emit_aws(operation, result)
        return
    with fileio.output(out, binary=format_ == "raw", what=what, way_out=way_out) as dest:

        def emit(_operation: str, result: dict[str, Any], member: str) -> None:
            data = result[member]
            if format_ == "base64":
                import base64

                data = base64.b64encode(data) + b"\n"
            elif format_ == "pem":
                from ..crypto import asymmetric as A

                data = A.spki_to_pem(data)
            _write_all(dest.stream, data)

        yield emit
