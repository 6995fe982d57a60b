"""``encrypt``, ``decrypt``, ``reencrypt``, ``datakey`` and ``random``."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .. import errors
from . import common, fileio, output

KeyOpt = Annotated[str, typer.Option("--key", "-k", metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")]
ContextOpt = Annotated[list[str] | None, typer.Option("--context", "-c", metavar="K=V",
                       help="Encryption context pair; repeatable; must match exactly at decrypt.")]
InOpt = Annotated[str | None, typer.Option("--in", "-i", metavar="IN", help="Read from IN ('-' = stdin, default).")]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", metavar="OUT",
                   help="Write to OUT ('-' = stdout, default); replaced only on success, mode 0600.")]
ArmorOpt = Annotated[bool, typer.Option("--armor", "-a", help="Write ASCII armor instead of binary.")]
FormatOpt = Annotated[str | None, typer.Option(
    "--format", "-f", metavar="kmscli|esdk", help="Ciphertext format: kmscli's own (the vault's default) or the AWS "
    "Encryption SDK's message format, which aws-encryption-cli and the SDKs read (the default with --endpoint).")]
UnsignedOpt = Annotated[bool, typer.Option(
    "--unsigned", help="ESDK format: the committing suite without an ECDSA signature (smaller, faster; any holder "
    "of the key could have written it). Signed by default, as the SDK.")]
AlgorithmOpt = Annotated[str | None, typer.Option(
    "--algorithm", metavar="ALG", help="SYMMETRIC_DEFAULT (default: envelope encryption of any size), or "
    "RSAES_OAEP_SHA_256 / RSAES_OAEP_SHA_1 with an RSA ENCRYPT_DECRYPT key: a small message (up to 470 bytes for "
    "RSA_4096 with SHA-1), no envelope, as AWS.")]


def register(app: typer.Typer) -> None:
    common.command(app, "encrypt", "Envelope-encrypt any amount of data under a master key.", keyed=True)(encrypt)
    common.command(app, "decrypt", "Decrypt a kmscli ciphertext (binary or armored) or an AWS Encryption SDK "
                                   "message.", keyed=True)(decrypt)
    common.command(app, "reencrypt", "Move a ciphertext to another key or context without revealing the plaintext.",
                   keyed=True)(reencrypt)
    common.command(app, "datakey", "Make a data key: plaintext and a copy encrypted under KEY.", keyed=True)(datakey)
    common.command(app, "random", "Print N random bytes (1..1024); needs no vault.")(random)
    common.command(app, "inspect", "Show what a ciphertext says about itself (key, context, sizes); needs no "
                                   "vault and proves nothing.")(inspect)


def encrypt(key: KeyOpt, context: ContextOpt = None, in_: InOpt = None, out: OutOpt = None,
            armor: ArmorOpt = False, algorithm: AlgorithmOpt = None, format_: FormatOpt = None,
            unsigned: UnsignedOpt = False) -> None:
    ctx = common.pairs(context, "context")
    fmt = _format(format_, unsigned, armor)
    svc = common.service()
    reader, size = fileio.open_input(in_)
    progress = fileio.Progress(size, "encrypting")
    try:
        with fileio.output(out, binary=not armor) as dest:
            writer, finish = maybe_armor(dest.stream, armor)
            svc.Encrypt(KeyId=key, reader=reader, writer=writer, EncryptionContext=ctx, progress=progress,
                        **({"EncryptionAlgorithm": algorithm} if algorithm else {}), **fmt)
            finish()
    finally:
        progress.close()


def decrypt(
    key: Annotated[str | None, typer.Option("--key", "-k", metavar="KEY",
                   help="Assert the ciphertext was made under KEY (exit 6 otherwise).")] = None,
    context: ContextOpt = None, in_: InOpt = None, out: OutOpt = None,
    algorithm: Annotated[str | None, typer.Option(
        "--algorithm", metavar="ALG", help="RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1 to decrypt an RSA ciphertext "
        "(needs --key: it names no key); SYMMETRIC_DEFAULT (default) for kmscli's own.")] = None,
) -> None:
    ctx = common.pairs(context, "context")
    svc = common.service()
    reader, size = fileio.open_input(in_)
    progress = fileio.Progress(size, "decrypting")
    try:
        with fileio.output(out, binary=False) as dest:
            svc.Decrypt(reader=maybe_dearmor(reader), writer=dest.stream, EncryptionContext=ctx, KeyId=key,
                        progress=progress, **({"EncryptionAlgorithm": algorithm} if algorithm else {}))
    finally:
        progress.close()


def reencrypt(
    key: Annotated[str, typer.Option("--key", "-k", metavar="KEY", help="Destination key.")],
    context: Annotated[list[str] | None, typer.Option("--context", "-c", metavar="K=V",
                       help="Destination encryption context pair; repeatable.")] = None,
    source_context: Annotated[list[str] | None, typer.Option("--source-context", metavar="K=V",
                              help="The ciphertext's current encryption context pair; repeatable.")] = None,
    source_key: Annotated[str | None, typer.Option("--source-key", metavar="KEY",
                          help="Assert the ciphertext's current key.")] = None,
    in_: InOpt = None, out: OutOpt = None, armor: ArmorOpt = False, format_: FormatOpt = None,
    unsigned: UnsignedOpt = False,
    to_vault: Annotated[bool, typer.Option("--to-vault", help="With --endpoint: --key names a key of the local "
                                                              "vault, to bring a remote ciphertext back.")] = False,
) -> None:
    dst_ctx = common.pairs(context, "context")
    src_ctx = common.pairs(source_context, "source context")
    fmt = _format(format_, unsigned, armor, vault_default=to_vault or None)
    svc = common.service()
    if to_vault and common.endpoint() is None:
        raise errors.ValidationException("--to-vault goes with --endpoint: without one every key is the vault's")
    reader, _size = fileio.open_input(in_)
    with fileio.output(out, binary=not armor) as dest:
        writer, finish = maybe_armor(dest.stream, armor)
        request = {"reader": maybe_dearmor(reader), "writer": writer, "DestinationKeyId": key,
                   "SourceEncryptionContext": src_ctx, "DestinationEncryptionContext": dst_ctx,
                   "SourceKeyId": source_key, **fmt}
        if common.endpoint() is None:
            svc.ReEncrypt(**request)
        else:
            from . import vault_side

            vault_side.reencrypt(svc, to_vault=to_vault, **request)
        finish()


def _format(value: str | None, unsigned: bool, armor: bool, vault_default: bool | None = None) -> dict[str, Any]:
    """``--format`` and ``--unsigned`` as the service's ``Format`` and ``Signed`` (only what was asked for).

    Without ``--format`` a vault writes kmscli's format and a remote KMS the ESDK's (``vault_default``: whose
    default applies, when not the endpoint's).
    """
    if value is None and not unsigned and not armor:
        return {}  # each side's default, and the envelope module is not loaded for kmscli's own format
    from .. import envelope

    envelope.check_format(value)
    if vault_default is None:
        vault_default = common.endpoint() is None
    effective = value or (envelope.FORMAT_KMSCLI if vault_default else envelope.FORMAT_ESDK)
    out: dict[str, Any] = {}
    if value is not None:
        out["Format"] = value
    if unsigned:
        if effective == envelope.FORMAT_KMSCLI:
            raise errors.ValidationException("--unsigned goes with --format esdk: kmscli's own format has no "
                                             "signature to leave out")
        out["Signed"] = False
    if armor and effective == envelope.FORMAT_ESDK:
        raise errors.ValidationException("--armor is for kmscli's own format; an ESDK message is binary "
                                         "(base64 it if it must be text)")
    return out


def datakey(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")],
    spec: Annotated[str | None, typer.Option("--spec", metavar="AES_256|AES_128",
                    help="Data key spec (default AES_256 unless --bytes is given).")] = None,
    nbytes: Annotated[int | None, typer.Option("--bytes", metavar="N", help="Data key length in bytes (1..1024).")
                      ] = None,
    context: ContextOpt = None,
    no_plaintext: Annotated[bool, typer.Option("--no-plaintext", help="Return only the encrypted copy.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape.")] = False,
) -> None:
    if spec is None and nbytes is None:
        spec = "AES_256"
    ctx = common.pairs(context, "context")
    svc = common.service()
    if no_plaintext:
        result = svc.GenerateDataKeyWithoutPlaintext(KeyId=key, KeySpec=spec, NumberOfBytes=nbytes,
                                                     EncryptionContext=ctx)
    else:
        result = svc.GenerateDataKey(KeyId=key, KeySpec=spec, NumberOfBytes=nbytes, EncryptionContext=ctx)
    if json_:
        output.emit_aws("GenerateDataKeyWithoutPlaintext" if no_plaintext else "GenerateDataKey", result)
        return
    import base64

    shape = {k: base64.b64encode(result[k]).decode() if k != "KeyId" else result[k]
             for k in ("KeyId", "Plaintext", "CiphertextBlob") if k in result}
    if output.is_tty(sys.stdout):
        output.fields(list(shape.items()))
    else:
        output.emit_line("\t".join(shape[k] for k in ("Plaintext", "CiphertextBlob") if k in shape))


def random(
    n: Annotated[int, typer.Argument(metavar="N", help="How many bytes (1..1024).")],
    format_: Annotated[str, typer.Option("--format", "-f", metavar="base64|hex|raw",
                       help="Output encoding (default base64).")] = "base64",
    json_: Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape (GenerateRandom).")
                     ] = False,
) -> None:
    from ..service import Kms

    if format_ not in ("base64", "hex", "raw"):
        raise errors.ValidationException(f"--format must be base64, hex or raw (got '{format_}')")
    data = Kms.GenerateRandom(NumberOfBytes=n)
    if json_:
        output.emit_aws("GenerateRandom", {"Plaintext": data})
        return
    if format_ == "raw":
        with fileio.output(None, binary=True, what="random bytes", way_out="--format base64 or hex") as dest:
            _write_all(dest.stream, data)
        return
    import base64

    output.emit_line(base64.b64encode(data).decode() if format_ == "base64" else data.hex())


def _write_all(stream: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = stream.write(view)
        view = view[n or 0 :]


def maybe_armor(stream: Any, armor: bool) -> tuple[Any, Any]:
    if not armor:
        return stream, lambda: None
    from ..crypto import armor as A

    writer = A.ArmorWriter(stream)
    return writer, writer.close


def inspect(
    file: Annotated[str, typer.Argument(metavar="[FILE]", help="The ciphertext (binary or armored); '-' or "
                                                                "nothing reads stdin.")] = "-",
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON document (kmscli's own shape).")] = False,
) -> None:
    """Like age-inspect or gpg --list-packets: nothing is decrypted, nothing is authenticated, no vault is opened."""
    from ..crypto import armor as A
    from ..crypto import stream

    reader, _size = fileio.open_input(file)
    armored, reader = A.sniff(reader)
    if not armored:
        from .. import envelope

        kind, reader = envelope.sniff(reader)
        if kind == envelope.FORMAT_ESDK:
            _inspect_esdk(reader, json_)
            return
    found = stream.inspect(A.ArmorReader(reader) if armored else reader)
    h = found.header
    doc: dict[str, Any] = {
        "Format": h.format_version, "Armored": armored, "KeyId": h.key_id, "MaterialVersion": h.material_version,
        "EncryptionContext": h.context, "EncryptionContextBytes": h.context_length,
        "ChunkSize": h.chunk_size, "HeaderBytes": found.header_bytes, "BodyBytes": found.body_bytes,
        "Chunks": found.chunks, "PlaintextBytes": found.plaintext_bytes, "Authenticated": False,
    }
    if h.context_digest is not None:
        doc["EncryptionContextDigest"] = h.context_digest.hex()
    if json_:
        output.emit_json(doc)
        return
    if h.context is None:
        digest = h.context_digest.hex() if h.context_digest else ""
        context = f"(bound by its SHA-256, {h.context_length} encoded bytes: {digest})"
    else:
        context = ", ".join(f"{k}={v}" for k, v in sorted(h.context.items())) or "(none)"
    output.fields([
        ("Format", f"kmscli ciphertext, version {h.format_version}{' (armored)' if armored else ''}"),
        ("KeyId", h.key_id), ("MaterialVersion", h.material_version), ("EncryptionContext", context),
        ("ChunkSize", h.chunk_size), ("Sizes", f"header {found.header_bytes} B, body {found.body_bytes} B in "
                                               f"{found.chunks} chunk(s), plaintext {found.plaintext_bytes} B"),
        ("Authenticated", "no: only decrypt proves any of this"),
    ])


def _inspect_esdk(reader: Any, json_: bool) -> None:
    """``inspect`` of an AWS Encryption SDK message: its header and the shape of its body, nothing verified."""
    from ..crypto import esdk

    header, found = esdk.inspect(reader)
    doc: dict[str, Any] = {
        "Format": f"esdk-v{header.version}", "AlgorithmSuiteId": f"0x{header.suite_id:04X}",
        "AlgorithmSuite": header.suite_name, "Signed": header.signed, "MessageId": header.message_id.hex(),
        "EncryptionContext": header.context,
        "EncryptedDataKeys": [{"ProviderId": k.provider_id, "ProviderInfo": k.provider_info,
                               "Bytes": len(k.ciphertext)} for k in header.data_keys],
        "FrameLength": header.frame_length, "Frames": found["frames"], "HeaderBytes": found["header_bytes"],
        "BodyBytes": found["body_bytes"], "FooterBytes": found["footer_bytes"],
        "PlaintextBytes": found["plaintext_bytes"], "Authenticated": False,
    }
    if json_:
        output.emit_json(doc)
        return
    context = ", ".join(f"{k}={v}" for k, v in sorted(header.context.items())) or "(none)"
    keys = "; ".join(f"{k.provider_id} {k.provider_info}" for k in header.data_keys)
    output.fields([
        ("Format", f"AWS Encryption SDK message, version {header.version}"),
        ("AlgorithmSuite", f"{header.suite_name} (0x{header.suite_id:04X})"),
        ("MessageId", header.message_id.hex()), ("EncryptionContext", context), ("EncryptedDataKeys", keys),
        ("FrameLength", header.frame_length),
        ("Sizes", f"header {found['header_bytes']} B, body {found['body_bytes']} B in {found['frames']} frame(s)"
                  f", footer {found['footer_bytes']} B, plaintext {found['plaintext_bytes']} B"),
        ("Authenticated", "no: only decrypt proves any of this"),
    ])


def maybe_dearmor(reader: Any) -> Any:
    from ..crypto import armor as A

    armored, reader = A.sniff(reader)
    return A.ArmorReader(reader) if armored else reader
