"""Imported key material (bring your own key): GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial.

A key made with ``Origin="EXTERNAL"`` has no material and is PendingImport.
GetParametersForImport makes a fresh RSA wrapping key pair, keeps its private
half in the key's record (``ImportParameters``: the vault is encrypted, and it
never leaves it) and hands out the public half with an import token valid 24
hours. Only the latest parameters of a key are kept: a second call replaces the
first, whose token is then refused (docs/import.md). ImportKeyMaterial checks
the token (this key's, the latest, unused, unexpired), unwraps the material,
checks it against the key spec, and keeps it; the token is used up and the key
becomes Enabled. DeleteImportedKeyMaterial (or ``ValidTo`` passing, as a
time-based event: ``_core.Core._expire_if_due``) drops the secret bytes but
keeps the material version and its KeyMaterialId: the same material can be
imported again, and ciphertexts made before decrypt again; other material is
IncorrectKeyMaterialException.

Records name the key, the wrapping algorithm and spec, the expiration model and
ValidTo, never the material, the wrapped material, the token or a wrapping key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from datetime import datetime, timedelta
from typing import Any

from .. import errors
from ..model import KeyState, iso, key_origin, key_spec, parse_iso
from ..vault.store import OpenVault
from ._core import Call, Core, drop_imported_material

#: How long a wrapping key and its import token can be used (AWS: 24 hours).
PARAMETERS_LIFETIME = timedelta(hours=24)
#: The latest ValidTo an import may set, from the request's time (AWS: 365 days).
VALID_TO_MAX = timedelta(days=365)
EXPIRES, DOES_NOT_EXPIRE = "KEY_MATERIAL_EXPIRES", "KEY_MATERIAL_DOES_NOT_EXPIRE"
#: An import token: this magic and version, the key id's 16 bytes, a random 16-byte token id. It names what
#: it was issued for; what it allows (wrapping key, algorithm, expiry) is kept in the vault under its id.
TOKEN_MAGIC = b"KMIT\x01"
TOKEN_ID_BYTES = 16
TOKEN_SIZE = len(TOKEN_MAGIC) + 16 + TOKEN_ID_BYTES
#: The label of an imported material's id: HMAC-SHA-256 under a random salt kept with the key (never shown), so
#: the id that DescribeKey and the audit log show is no test of a guess at the material.
MATERIAL_ID_LABEL = b"kmscli imported key material id\x00"


class ImportOps(Core):
    def _require_external(self, ov: OpenVault, key: dict[str, Any]) -> None:
        """UnsupportedOperationException, in AWS's words, unless the key was made for imported material."""
        origin = key_origin(key)
        if origin != "EXTERNAL":
            raise errors.UnsupportedOperationException(
                f"{self._arn(ov, key)} origin is {origin} which is not valid for this operation.",
                hint="only keys made with 'kmscli keys create --origin EXTERNAL' take imported key material")

    def GetParametersForImport(self, KeyId: str, WrappingAlgorithm: str, WrappingKeySpec: str) -> dict[str, Any]:
        """A new wrapping public key and its import token for a key of origin EXTERNAL, valid 24 hours.

        Replaces the key's earlier parameters, if any: their token no longer imports.
        """
        from ..crypto import wrapping as W

        request = {"keyId": KeyId, "wrappingAlgorithm": WrappingAlgorithm, "wrappingKeySpec": WrappingKeySpec}
        with self._refusing("GetParametersForImport", request):
            algorithm, wrapping_spec = W.check_wrapping(WrappingAlgorithm, WrappingKeySpec)
        # Made before the vault is locked: an RSA_4096 key takes a second or more, and writers need not wait.
        private, public = W.new_wrapping_key(wrapping_spec)

        def get(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:GetParametersForImport",
                            {"kms:WrappingAlgorithm": algorithm, "kms:WrappingKeySpec": wrapping_spec})
            self._require_external(ov, key)
            self._require_not_pending(ov, key)
            W.check_wrapping_for_key(algorithm, wrapping_spec, key_spec(key))
            token_id = os.urandom(TOKEN_ID_BYTES)
            valid_to = iso(self.clock() + PARAMETERS_LIFETIME)
            key["ImportParameters"] = {"TokenId": token_id.hex(), "WrappingAlgorithm": algorithm,
                                       "WrappingKeySpec": wrapping_spec, "ParametersValidTo": valid_to,
                                       "PrivateKey": base64.b64encode(private).decode()}
            ov.put_key(key)
            call.response["parametersValidTo"] = valid_to
            token = TOKEN_MAGIC + uuid.UUID(key["KeyId"]).bytes + token_id
            return {"KeyId": self._arn(ov, key), "ImportToken": token, "PublicKey": public,
                    "ParametersValidTo": parse_iso(valid_to)}

        return self._mutate("GetParametersForImport", request, get)

    def ImportKeyMaterial(self, KeyId: str, ImportToken: bytes, EncryptedKeyMaterial: bytes,
                          ValidTo: datetime | None = None, ExpirationModel: str | None = None,
                          ImportType: str | None = None) -> dict[str, Any]:
        """Import (or import again) a key's material, wrapped under the public key its ImportToken came with.

        ``ExpirationModel`` defaults to KEY_MATERIAL_EXPIRES, which needs ``ValidTo``, as in AWS.
        """
        from ..crypto import asymmetric as A
        from ..crypto import wrapping as W

        model = ExpirationModel or EXPIRES
        request: dict[str, Any] = {"keyId": KeyId, "expirationModel": model}
        if isinstance(ValidTo, datetime):
            request["validTo"] = iso(ValidTo)
        if ImportType is not None:
            request["importType"] = ImportType
        with self._refusing("ImportKeyMaterial", request):
            A.check_enum(model, "ExpirationModelType", "expirationModel")
            if ImportType is not None:
                A.check_enum(ImportType, "ImportType", "importType")
            token = A.check_length(ImportToken, "importToken", A.MAX_BLOB)
            wrapped = A.check_length(EncryptedKeyMaterial, "encryptedKeyMaterial", A.MAX_BLOB)
            valid_to = _check_expiry(model, ValidTo, self.clock())
            token_key, token_id = _parse_token(token)

        def import_(ov: OpenVault, call: Call) -> dict[str, Any]:
            conditions: dict[str, Any] = {"kms:ExpirationModel": model}
            if valid_to is not None:
                conditions["kms:ValidTo"] = iso(valid_to)
            key = self._key(ov, call, KeyId, "kms:ImportKeyMaterial", conditions)
            self._require_external(ov, key)
            self._require_not_pending(ov, key)
            params = self._check_token(key, token_key, token_id)
            material = W.unwrap(params["WrappingAlgorithm"], base64.b64decode(params["PrivateKey"]), wrapped)
            material = W.check_material(key_spec(key), material)
            current = key["Materials"][-1] if key["Materials"] else None
            if ImportType == "NEW_KEY_MATERIAL" and current is not None:
                raise errors.UnsupportedOperationException(
                    f"{self._arn(ov, key)} already has imported key material: kmscli does not import new key "
                    "material into a key (AWS's on-demand rotation of imported keys)",
                    hint="import the same material again, or create a new EXTERNAL key and move its alias")
            if ImportType == "EXISTING_KEY_MATERIAL" and current is None:
                raise errors.ValidationException(
                    f"{self._arn(ov, key)} has never had key material: its first import is NEW_KEY_MATERIAL")
            if current is not None and not hmac.compare_digest(_material_id(current["IdSalt"], material),
                                                               current["KeyMaterialId"]):
                raise errors.IncorrectKeyMaterialException(
                    f"the key material is not the key material of {self._arn(ov, key)}: a key takes only the "
                    "material first imported into it")
            if current is None:
                salt = os.urandom(32).hex()
                current = {"Version": 1, "KeyMaterialId": _material_id(salt, material),
                           "CreationDate": iso(self.clock()), "RotationType": None, "IdSalt": salt}
                key["Materials"].append(current)
            current["Material"] = base64.b64encode(material).decode()
            key["Import"] = {"ExpirationModel": model, "ValidTo": iso(valid_to) if valid_to is not None else None}
            del key["ImportParameters"]  # the token is used up
            if key["KeyState"] == KeyState.PENDING_IMPORT:
                key["KeyState"] = KeyState.ENABLED.value
            ov.put_key(key)
            call.response.update(keyMaterialId=current["KeyMaterialId"], keyState=key["KeyState"])
            return {"KeyId": self._arn(ov, key), "KeyMaterialId": current["KeyMaterialId"]}

        return self._mutate("ImportKeyMaterial", request, import_)

    def _check_token(self, key: dict[str, Any], token_key: str, token_id: str) -> dict[str, Any]:
        """The key's import parameters the token names; InvalidImportTokenException or ExpiredImportTokenException."""
        if token_key != key["KeyId"]:
            raise errors.InvalidImportTokenException(
                f"this import token was issued for another key ({token_key}), not for {key['KeyId']}",
                hint="run 'kmscli keys import-params' for this key")
        params = key.get("ImportParameters")
        if params is None or not hmac.compare_digest(params["TokenId"], token_id):
            raise errors.InvalidImportTokenException(
                "this import token is not the latest unused one of this key: it was used already, or a later "
                "GetParametersForImport replaced it", hint="run 'kmscli keys import-params' again and wrap the "
                "material with the new public key")
        if self.clock() >= parse_iso(params["ParametersValidTo"]):
            raise errors.ExpiredImportTokenException(
                f"the import token expired at {params['ParametersValidTo']} (24 hours after it was issued)",
                hint="run 'kmscli keys import-params' again and wrap the material with the new public key")
        return params  # type: ignore[no-any-return]

    def DeleteImportedKeyMaterial(self, KeyId: str) -> dict[str, Any]:
        """Drop a key's imported material: the key becomes PendingImport (a key pending deletion stays so).

        A key whose material is already gone (or was never imported) is left as it is, as in AWS.
        """

        def delete(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:DeleteImportedKeyMaterial")
            self._require_external(ov, key)
            out: dict[str, Any] = {"KeyId": self._arn(ov, key)}
            if key["Materials"]:
                material = drop_imported_material(key)
                ov.put_key(key)
                out["KeyMaterialId"] = material["KeyMaterialId"]
                call.response["keyMaterialId"] = material["KeyMaterialId"]
            call.response["keyState"] = key["KeyState"]
            return out

        return self._mutate("DeleteImportedKeyMaterial", {"keyId": KeyId}, delete)


def _check_expiry(model: str, valid_to: datetime | None, now: datetime) -> datetime | None:
    """ImportKeyMaterial's ValidTo (to the second) under AWS's rules; ValidationException naming the rule."""
    if model == DOES_NOT_EXPIRE:
        if valid_to is not None:
            raise errors.ValidationException(
                "ValidTo is not valid when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE",
                hint="give --valid-to or --no-expiry, not both")
        return None
    if valid_to is None:
        raise errors.ValidationException(
            "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES (the default)",
            hint="give --valid-to TIME, or --no-expiry for material that does not expire")
    if not isinstance(valid_to, datetime) or valid_to.utcoffset() is None:
        raise errors.ValidationException("ValidTo must be a date and time with its time zone")
    when = parse_iso(iso(valid_to))
    if when <= now:
        raise errors.ValidationException(f"ValidTo must be in the future (got {iso(when)}, now {iso(now)})")
    if when > now + VALID_TO_MAX:
        raise errors.ValidationException(
            f"ValidTo must be at most 365 days from now (got {iso(when)}, the latest is {iso(now + VALID_TO_MAX)})")
    return when


def _parse_token(token: bytes) -> tuple[str, str]:
    """(key id, token id hex) an import token names; InvalidImportTokenException for anything else."""
    if len(token) != TOKEN_SIZE or not token.startswith(TOKEN_MAGIC):
        raise errors.InvalidImportTokenException(
            "the import token is not one GetParametersForImport issued (give ImportToken.bin as "
            "'kmscli keys import-params' wrote it)")
    body = token[len(TOKEN_MAGIC):]
    return str(uuid.UUID(bytes=body[:16])), body[16:].hex()


def _material_id(salt_hex: str, material: bytes) -> str:
    return hmac.new(bytes.fromhex(salt_hex), MATERIAL_ID_LABEL + material, hashlib.sha256).hexdigest()
