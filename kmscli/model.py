"""Key states, times, and the AWS JSON shapes of what the vault stores.

The vault body keeps plain dicts (see docs/vault.md); this module is the one
place that knows how they look to a user or an AWS client.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from . import ids


class KeyState(StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    #: An EXTERNAL key without its material: never imported, deleted, or expired (docs/import.md).
    PENDING_IMPORT = "PendingImport"


KEY_SPEC = "SYMMETRIC_DEFAULT"
KEY_USAGE = "ENCRYPT_DECRYPT"
ORIGIN = "AWS_KMS"
ENCRYPTION_ALGORITHMS = ["SYMMETRIC_DEFAULT"]


def key_spec(key: dict[str, Any]) -> str:
    """A vault key's KeySpec: stored only for keys that are not SYMMETRIC_DEFAULT (older keys have none)."""
    return str(key.get("KeySpec", KEY_SPEC))


def key_usage(key: dict[str, Any]) -> str:
    """A vault key's KeyUsage: stored only beside a KeySpec (a symmetric key is ENCRYPT_DECRYPT)."""
    return str(key.get("KeyUsage", KEY_USAGE))


def key_origin(key: dict[str, Any]) -> str:
    """A vault key's Origin: stored only for keys that are not AWS_KMS (EXTERNAL: imported material)."""
    return str(key.get("Origin", ORIGIN))


def customer_master_key_spec(spec: str) -> dict[str, str]:
    """The deprecated ``CustomerMasterKeySpec`` member, which AWS still sends, but only for the specs its enum has
    (none of the ML-DSA specs): ``{}`` for the others."""
    if spec == KEY_SPEC:
        return {"CustomerMasterKeySpec": spec}  # without loading the model: DescribeKey's common case
    from .aws_model import SHAPES

    return {"CustomerMasterKeySpec": spec} if spec in SHAPES["CustomerMasterKeySpec"]["enum"] else {}


def is_symmetric(key: dict[str, Any]) -> bool:
    """Whether a vault key is a SYMMETRIC_DEFAULT key (what envelopes, data keys and rotation need)."""
    return key_spec(key) == KEY_SPEC


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    """ISO 8601 UTC with a ``Z``, to the second: how kmscli writes every time."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t


def key_metadata(account: str, key: dict[str, Any], *, region: str) -> dict[str, Any]:
    """The ``KeyMetadata`` of DescribeKey/CreateKey for one vault key: exactly AWS's members.

    Timestamps are aware datetimes (adapters render them: epoch seconds on the
    wire, ISO 8601 in the CLI). Tags and rotation are not key metadata in AWS:
    ListResourceTags and GetKeyRotationStatus answer them.
    """
    state = key["KeyState"]
    spec, usage = key_spec(key), key_usage(key)
    meta: dict[str, Any] = {
        "AWSAccountId": account,
        "KeyId": key["KeyId"],
        "Arn": ids.key_arn(account, key["KeyId"], region=region),
        "CreationDate": parse_iso(key["CreationDate"]),
        "Enabled": state == KeyState.ENABLED,
        "Description": key["Description"],
        "KeyUsage": usage,
        "KeyState": state,
        "Origin": key_origin(key),
        "KeyManager": "CUSTOMER",
        "KeySpec": spec,
    }
    meta.update(customer_master_key_spec(spec))
    if spec == KEY_SPEC:
        meta["EncryptionAlgorithms"] = list(ENCRYPTION_ALGORITHMS)
    else:
        # Only the member of the key's usage, in AWS's order (SigningAlgorithms, MacAlgorithms, ...).
        from .crypto.asymmetric import key_algorithms

        meta.update(key_algorithms(spec, usage))
    meta["MultiRegion"] = False
    if spec == KEY_SPEC and key["Materials"]:
        # AWS shows CurrentKeyMaterialId only for keys whose material rotates: symmetric encryption keys
        # (an EXTERNAL key once material was imported into it).
        meta["CurrentKeyMaterialId"] = key["Materials"][-1]["KeyMaterialId"]
    if state == KeyState.PENDING_DELETION:
        meta["DeletionDate"] = parse_iso(key["DeletionDate"])
        meta["PendingDeletionWindowInDays"] = key["PendingDeletionWindowInDays"]
    imported = key.get("Import")
    if imported:
        # While imported material is in place, as AWS shows it: ValidTo only for material that expires.
        meta["ExpirationModel"] = imported["ExpirationModel"]
        if imported.get("ValidTo"):
            meta["ValidTo"] = parse_iso(imported["ValidTo"])
    return meta


def tags_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """AWS's tag shape: a list of ``{"TagKey", "TagValue"}`` sorted by key."""
    return [{"TagKey": k, "TagValue": v} for k, v in sorted(tags.items())]


def alias_entry(account: str, name: str, alias: dict[str, Any], *, region: str) -> dict[str, Any]:
    return {
        "AliasName": name,
        "AliasArn": ids.alias_arn(account, name, region=region),
        "TargetKeyId": alias["TargetKeyId"],
        "CreationDate": parse_iso(alias["CreationDate"]),
        "LastUpdatedDate": parse_iso(alias["LastUpdatedDate"]),
    }
