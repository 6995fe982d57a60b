"""``kmscli keys import-params|import|delete-material``: imported key material (bring your own key).

The material travels wrapped under a public key the vault hands out (written to
a folder as ``WrappingPublicKey.der`` and ``ImportToken.bin``, the names AWS's
guide uses), so ``openssl`` can wrap it: see docs/import.md.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import errors
from . import common, fileio, output

KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")]
PUBLIC_KEY_FILE = "WrappingPublicKey.der"
TOKEN_FILE = "ImportToken.bin"
#: More than any wrapped material or token is (AWS's limit for both is 6144 bytes).
MAX_FILE = 64 * 1024
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


def register(app: typer.Typer) -> None:
    app.command("import-params", cls=common.KmsCommand,
                help="Get a wrapping public key and an import token for a key of origin EXTERNAL "
                     "(GetParametersForImport); both are written into --out-dir and valid 24 hours.")(import_params)
    app.command("import", cls=common.KmsCommand,
                help="Import key material wrapped with the key's wrapping public key (ImportKeyMaterial); the "
                     "key becomes Enabled.")(import_material)
    app.command("delete-material", cls=common.KmsCommand,
                help="Delete a key's imported material (DeleteImportedKeyMaterial); the key becomes "
                     "PendingImport until the same material is imported again.")(delete_material)


def import_params(
    key: KeyArg,
    out_dir: Annotated[str, typer.Option("--out-dir", metavar="DIR",
                       help=f"Folder to write {PUBLIC_KEY_FILE} and {TOKEN_FILE} into (made if missing).")],
    algorithm: Annotated[str, typer.Option("--wrapping-algorithm", metavar="ALG",
                         help="RSAES_OAEP_SHA_256 (default), RSAES_OAEP_SHA_1, RSA_AES_KEY_WRAP_SHA_256 or "
                              "RSA_AES_KEY_WRAP_SHA_1 (needed for RSA key material).")] = "RSAES_OAEP_SHA_256",
    wrapping_spec: Annotated[str, typer.Option("--wrapping-spec", metavar="RSA_2048|RSA_3072|RSA_4096",
                             help="Size of the RSA wrapping key (default RSA_4096).")] = "RSA_4096",
    json_: Annotated[bool, typer.Option("--json", help="Also print the GetParametersForImport response.")] = False,
) -> None:
    folder = _folder(out_dir)
    result = common.service().GetParametersForImport(KeyId=key, WrappingAlgorithm=algorithm,
                                                     WrappingKeySpec=wrapping_spec)
    for name, data in ((PUBLIC_KEY_FILE, result["PublicKey"]), (TOKEN_FILE, result["ImportToken"])):
        with fileio.output(str(folder / name), binary=True) as out:
            out.stream.write(data)
    if json_:
        output.emit_aws("GetParametersForImport", result)
    output.message(f"wrote {folder / PUBLIC_KEY_FILE} and {folder / TOKEN_FILE}, valid until "
                   f"{output.when(result['ParametersValidTo'])}; wrap the material with the public key using "
                   f"{algorithm}, then run 'kmscli keys import'")


def import_material(
    key: KeyArg,
    material: Annotated[str, typer.Option("--material", metavar="FILE",
                        help="The key material wrapped with the public key (raw bytes, as openssl writes it).")],
    token: Annotated[str, typer.Option("--token", metavar="FILE",
                     help=f"The {TOKEN_FILE} that came with that public key.")],
    valid_to: Annotated[str | None, typer.Option("--valid-to", metavar="TIME",
                        help="Delete the material at TIME: ISO 8601, or a duration from now (30d, 12h); at most "
                             "365 days ahead.")] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="The material does not expire.")] = False,
) -> None:
    if valid_to is not None and no_expiry:
        raise errors.ValidationException("give --valid-to TIME or --no-expiry, not both")
    wrapped = _read(material, "--material")
    import_token = _read(token, "--token")
    common.service().ImportKeyMaterial(
        KeyId=key, ImportToken=import_token, EncryptedKeyMaterial=wrapped,
        ValidTo=parse_valid_to(valid_to) if valid_to is not None else None,
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE" if no_expiry else None)


def delete_material(key: KeyArg) -> None:
    common.service().DeleteImportedKeyMaterial(KeyId=key)


def parse_valid_to(text: str, now: datetime | None = None) -> datetime:
    """--valid-to: an ISO 8601 time (UTC unless it says otherwise) or a duration from now: 30d, 12h, 1h30m."""
    from ..model import parse_iso, utcnow

    m = _DURATION.fullmatch(text)  # the whole string: "2h\n" is not a duration
    if text and m and any(m.groups()):
        d, h, mi, s = (int(g or 0) for g in m.groups())
        try:
            return (now or utcnow()) + timedelta(days=d, hours=h, minutes=mi, seconds=s)
        except OverflowError:
            pass
    else:
        try:
            return parse_iso(text)
        except ValueError:
            pass
    raise errors.ValidationException(
        f"--valid-to takes an ISO 8601 time (2027-01-31T00:00:00Z) or a duration from now (30d, 12h); got '{text}'")


def _folder(path: str) -> Path:
    """--out-dir, made (0700) when missing; a file there is a usage error."""
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            raise errors.UsageError(f"--out-dir {path} is not a folder")
        try:
            folder.mkdir(mode=0o700, parents=True)
            os.chmod(folder, 0o700)  # whatever the umask
        except OSError as e:
            raise errors.UsageError(f"cannot make the folder {path}: {e.strerror}") from None
    return folder


def _read(path: str, option: str) -> bytes:
    reader: Any
    reader, _size = fileio.open_input(path)
    from ..crypto.stream import read_up_to

    data = read_up_to(reader, MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise errors.ValidationException(f"{option} {path} is over {MAX_FILE} bytes: not what 'kmscli keys "
                                         "import-params' and a wrapping tool make")
    return bytes(data)
