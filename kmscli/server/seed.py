"""Read a `serve --ephemeral --seed FILE` document (YAML or JSON) into the service's SeedVault call.

Two forms are read. kmscli's own::

    Keys:
      - KeyId: 6c8a9c4e-...           # a lowercase UUID
        Material: <64 hex digits>     # or Materials: [..] oldest first (a rotated key); random when absent
        Region: us-east-1             # default us-east-1, the region most test suites sign for
        Description: ...
        Tags: {team: core}
        Policy: {...}                 # a JSON document (or its text); AWS's default policy otherwise
        Enabled: true
    Aliases:
      - AliasName: alias/app
        TargetKeyId: 6c8a9c4e-...
        Region: us-east-1

and local-kms's (``Keys: {Symmetric: {Aes: [{Metadata: {KeyId, Description}, BackingKeys: [hex, ...]}]}}``,
``Aliases: [{AliasName, TargetKeyId}]``), so seeds written for it load unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .. import errors

#: The region a seed key lives in when the seed names none.
SEED_REGION = "us-east-1"
MAX_SEED_BYTES = 16 << 20


def load_seed(path: str) -> Callable[[Any], None]:
    """Parse the seed now (a bad file is exit 2 before anything listens); return what applies it to a backend."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SEED_BYTES + 1)
    except OSError as e:
        raise errors.UsageError(f"cannot read the seed file {path}: {e.strerror}") from None
    if len(data) > MAX_SEED_BYTES:
        raise errors.ValidationException(f"the seed file {path} is over 16 MiB")
    document = _parse(data, path)
    keys, aliases = _normalise(document, path)

    def apply(backend: Any) -> None:  # an EphemeralBackend's _Seeding: the service on the state being built
        backend.service().SeedVault(Keys=keys, Aliases=aliases)

    return apply


def _parse(data: bytes, path: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        pass
    import yaml

    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise errors.ValidationException(f"the seed file {path} is neither JSON nor YAML: {e}") from None


def _normalise(document: Any, path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(document, dict):
        raise errors.ValidationException(f"the seed file {path} must hold a mapping with Keys and Aliases")
    raw_keys = document.get("Keys") or []
    if isinstance(raw_keys, dict):  # local-kms: Keys: {Symmetric: {Aes: [...]}}
        aes = ((raw_keys.get("Symmetric") or {}).get("Aes")) or []
        raw_keys = [{**(k.get("Metadata") or {}), "Materials": k.get("BackingKeys")} for k in aes]
    if not isinstance(raw_keys, list):
        raise errors.ValidationException(f"the seed file {path}: Keys must be a list")
    keys = []
    for k in raw_keys:
        if not isinstance(k, dict):
            raise errors.ValidationException(f"the seed file {path}: each key is a mapping")
        materials = k.get("Materials")
        if materials is None and "Material" in k:
            materials = [k["Material"]]
        if materials is None:
            materials = [os.urandom(32).hex()]
        entry: dict[str, Any] = {
            "KeyId": k.get("KeyId"),
            "Materials": [_secret(m, path) for m in materials],
            "Region": k.get("Region", SEED_REGION),
            "Description": k.get("Description", ""),
            "Tags": {str(t): str(v) for t, v in (k.get("Tags") or {}).items()},
            "Enabled": k.get("Enabled", True) is not False,
        }
        policy = k.get("Policy")
        if policy is not None:
            entry["Policy"] = policy if isinstance(policy, str) else json.dumps(policy)
        keys.append(entry)
    aliases = []
    for a in document.get("Aliases") or []:
        if not isinstance(a, dict):
            raise errors.ValidationException(f"the seed file {path}: each alias is a mapping")
        aliases.append({"AliasName": a.get("AliasName", ""), "TargetKeyId": a.get("TargetKeyId"),
                        "Region": a.get("Region", SEED_REGION)})
    return keys, aliases


def _secret(value: Any, path: str) -> bytes:
    """Key material written as 64 hex digits (local-kms's form) or standard base64."""
    import base64
    import binascii

    if isinstance(value, str):
        text = value.strip()
        try:
            return bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            pass
    raise errors.ValidationException(f"the seed file {path}: key material is 32 bytes as 64 hex digits or base64")
