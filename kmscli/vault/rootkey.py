"""The vault's root key held by a remote KMS (docs/root-key.md).

``init --root-key ARN`` and ``passwd --root-key ARN`` ask the KMS for a data
key (GenerateDataKey, AES_256, under an encryption context naming this
wrapping); its plaintext is the KEK that wraps the vault key, exactly as a
passphrase's Argon2id KEK does, and its CiphertextBlob goes into the vault
header beside the key's ARN. Every unlock asks the KMS to Decrypt the blob
again (one call per process and header): a server unlocks with its machine
credentials, and revoking its access to the KMS key locks it out.

The KMS is reached through ``kmscli.vault.kms_connect`` (the CLI plugs in
:class:`kmscli.remote.client.RemoteKms`) with the endpoint ``aws``: botocore
resolves it for the ARN's region (honouring
``AWS_ENDPOINT_URL_KMS``, which points it at another KMS such as a
``kmscli serve``) and finds the credentials by its usual chain. Nothing here
imports botocore until a vault with a root key is created or opened.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from .. import errors
from .. import vault as package
from . import format as F

_PARTITION = r"aws(?:-cn|-us-gov|-iso|-iso-[a-z])?"
_REGION = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_KEY_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}"
_ARN = re.compile(rf"arn:{_PARTITION}:kms:(?P<region>{_REGION}):(?P<account>[0-9]{{12}}):"
                  rf"(?:key/(?:{_KEY_ID})|alias/[A-Za-z0-9/_-]{{1,250}})")
_KEY_ARN = re.compile(rf"arn:{_PARTITION}:kms:(?P<region>{_REGION}):(?P<account>[0-9]{{12}}):key/(?:{_KEY_ID})")
#: What the KMS answers when it will not unwrap the blob for these credentials: the vault stays
#: locked (exit 5), which is how revoking a server's access to the key locks it out.
REFUSALS = frozenset((
    "AccessDeniedException", "DisabledException", "NotFoundException", "KMSInvalidStateException",
    "InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException", "KeyUnavailableException",
))
#: The data key's spec: a 256-bit AES key, as the vault key is wrapped with AES-256-GCM.
KEY_SPEC = "AES_256"


@dataclass(frozen=True)
class NewRootKey:
    """A fresh wrapping from the KMS: where it lives (header fields) and its KEK (in memory only)."""

    root: F.RootKey
    kek: bytes


def parse_arn(text: str) -> tuple[str, str]:
    """(the ARN, its region) of a full key ARN or alias ARN; anything else is exit 2."""
    match = _ARN.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise errors.ValidationException(
            f"--root-key takes a full KMS key ARN or alias ARN, such as "
            f"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab or "
            f"arn:aws:kms:us-east-1:111122223333:alias/vault (got '{shown}'); the region comes from it")
    return text, match.group("region")


def _kms(region: str) -> Any:
    if package.kms_connect is None:
        raise errors.KMSInternalException("this vault's root key is held by a KMS, and this program has no KMS "
                                          "client; use the kmscli command")
    return package.kms_connect(region)


def generate(arn: str) -> NewRootKey:
    """A new data key under ``arn`` (GenerateDataKey): its blob and the key ARN for the header, its KEK.

    An alias ARN is resolved by the KMS: the header keeps the key ARN it
    answers with, so re-pointing the alias later does not lock the vault out.
    """
    from ..crypto import primitives as P

    arn, region = parse_arn(arn)
    root_id = P.random_bytes(F.SALT_SIZE)
    answer = _kms(region).GenerateDataKey(KeyId=arn, KeySpec=KEY_SPEC, EncryptionContext=F.root_context(root_id))
    kek, blob, key_arn = answer.get("Plaintext"), answer.get("CiphertextBlob"), answer.get("KeyId")
    if not isinstance(kek, bytes) or len(kek) != F.VAULT_KEY_SIZE or not isinstance(blob, bytes) or not blob:
        raise errors.KMSInternalException(f"the KMS answered GenerateDataKey for {arn} without a 256-bit data key")
    found = _KEY_ARN.fullmatch(key_arn) if isinstance(key_arn, str) else None
    if found is None or found.group("region") != region:
        key_arn = arn  # a KMS that does not name the key by its ARN: keep the one given
    if len(blob) > F.ROOT_BLOB_MAX:
        raise errors.KMSInternalException(f"the KMS's CiphertextBlob for {arn} is longer than {F.ROOT_BLOB_MAX} bytes")
    return NewRootKey(F.RootKey(arn=key_arn, blob=blob, root_id=root_id), kek)


def unwrap(root: F.RootKey) -> bytes:
    """The KEK of ``root``: one Decrypt of its blob, under its ARN and encryption context.

    A KMS that refuses (access revoked, key disabled or deleted, blob not its
    own) is RootKeyUnavailableException, exit 5, naming the KMS's exception
    and the key; a KMS that cannot be reached or refuses the credentials is
    exit 10, as every remote call (RemoteKms's translate).
    """
    match = _ARN.fullmatch(root.arn)
    if match is None:  # init and passwd store only ARNs that parse: the header was altered
        raise errors.VaultCorruptException("the vault header's root key names no KMS key ARN; restore the vault "
                                           "from a backup")
    region = match.group("region")
    out = io.BytesIO()
    try:
        _kms(region).Decrypt(reader=io.BytesIO(root.blob), writer=out, EncryptionContext=root.context,
                             KeyId=root.arn, EncryptionAlgorithm="SYMMETRIC_DEFAULT", Esdk=False)
    except errors.KmsError as e:
        if e.name in REFUSALS:
            raise errors.RootKeyUnavailableException(
                f"the KMS refused to unwrap this vault's root key ({e.name}: {_one_line(e.message)}); key "
                f"{root.arn}; the vault stays locked until these credentials may decrypt with that key",
                remote=e.name) from None
        raise
    kek = out.getvalue()
    if len(kek) != F.VAULT_KEY_SIZE:
        raise errors.VaultCorruptException(
            f"the KMS unwrapped this vault's root key ({root.arn}) into {len(kek)} bytes, not 32: the vault "
            "header's root key was altered; restore the vault from a backup")
    return kek


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:197] + "..."
