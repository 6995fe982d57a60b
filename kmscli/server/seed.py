"""Read a `serve --ephemeral --seed FILE` document (YAML or JSON) into the service's SeedVault call.

Two forms are read. kmscli's own::

    Keys:
      - KeyId: 6c8a9c4e-...           # a lowercase UUID
        KeySpec: SYMMETRIC_DEFAULT    # or RSA_2048, ECC_NIST_P256, ML_DSA_65, HMAC_256, ... (then KeyUsage too)
        KeyUsage: ENCRYPT_DECRYPT     # SIGN_VERIFY, GENERATE_VERIFY_MAC, KEY_AGREEMENT, as AWS allows for the spec
        Material: <64 hex digits>     # or Materials: [..] oldest first (a rotated key); new material when absent;
                                      # an HMAC key's bytes in hex, an asymmetric key as a PEM private key
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
        entry: dict[str, Any] = {
            "KeyId": k.get("KeyId"),
            "Region": k.get("Region", SEED_REGION),
            "Description": k.get("Description", ""),
            "Tags": {str(t): str(v) for t, v in (k.get("Tags") or {}).items()},
            "Enabled": k.get("Enabled", True) is not False,
        }
        if materials is not None:  # else the service makes new material of the key's spec
            if not isinstance(materials, list):
                raise errors.ValidationException(f"the seed file {path}: Materials must be a list")
            entry["Materials"] = [_secret(m, path) for m in materials]
        for member in ("KeySpec", "KeyUsage"):
            if member in k:
                entry[member] = k[member]
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
    """Key material as written in a seed: a PEM private key (asymmetric keys; PKCS#8 DER is kept), hex digits
    (local-kms's form: 64 for a symmetric key; an HMAC key's length otherwise) or standard base64.

    Which length and kind a key needs is the service's check (SeedVault), which knows the key's spec.
    """
    import base64
    import binascii
    import string

    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-----BEGIN"):
            return _pem_private_key(text, path)
        try:
            if len(text) % 2 == 0 and len(text) in (56, 64, 96, 128) and all(c in string.hexdigits for c in text):
                return bytes.fromhex(text)
            return base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            pass
    raise errors.ValidationException(
        f"the seed file {path}: key material is hex digits, base64 or (for an asymmetric key) a PEM private key")


def _pem_private_key(text: str, path: str) -> bytes:
    """A PEM private key (PKCS#8 or the traditional RSA / EC forms) as PKCS#8 DER, what the vault keeps."""
    from cryptography.hazmat.primitives import serialization as ser

    try:
        key = ser.load_pem_private_key(text.encode("ascii"), password=None)
        return key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    except (ValueError, TypeError, UnicodeError):
        raise errors.ValidationException(
            f"the seed file {path}: a PEM key material is an unencrypted private key (BEGIN PRIVATE KEY)") from None
