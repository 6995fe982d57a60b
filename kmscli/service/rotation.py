"""Rotation: automatic rotation settings, on-demand rotation, rotation history."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .. import errors
from ..model import is_symmetric, iso, key_origin, key_spec, parse_iso
from ..vault.store import OpenVault
from ._core import (
    LIST_LIMIT_DEFAULT,
    ON_DEMAND_ROTATIONS_MAX,
    ROTATION_PERIOD_DEFAULT,
    ROTATION_PERIOD_MAX,
    ROTATION_PERIOD_MIN,
    Call,
    Core,
    check_range,
    page,
    paged,
    paging,
)


class RotationOps(Core):
    def _require_rotatable(self, ov: OpenVault, key: dict[str, Any], operation: str) -> None:
        """UnsupportedOperationException (exit 2) for a key whose material never rotates: asymmetric and HMAC
        keys, as in AWS (a key pair's public half is out in the world; a new one would be a new key)."""
        if not is_symmetric(key):
            raise errors.UnsupportedOperationException(
                f"{self._arn(ov, key)} key spec is {key_spec(key)}: {operation} is supported only for "
                "symmetric encryption keys (SYMMETRIC_DEFAULT)",
                hint="to replace an asymmetric or HMAC key, create a new key and move its alias to it")

    def _require_generated(self, ov: OpenVault, key: dict[str, Any]) -> None:
        """UnsupportedOperationException, in AWS's words, for a key of imported material (origin EXTERNAL): it
        never rotates automatically, and kmscli does not import new material to rotate it on demand."""
        origin = key_origin(key)
        if origin != "AWS_KMS":
            raise errors.UnsupportedOperationException(
                f"{self._arn(ov, key)} origin is {origin} which is not valid for this operation.",
                hint="imported key material does not rotate in kmscli: create a new EXTERNAL key, import new "
                     "material into it and move the alias (docs/import.md)")

    def EnableKeyRotation(self, KeyId: str, RotationPeriodInDays: int = ROTATION_PERIOD_DEFAULT) -> dict[str, Any]:
        request = {"keyId": KeyId, "rotationPeriodInDays": RotationPeriodInDays}
        with self._refusing("EnableKeyRotation", request):
            check_range("RotationPeriodInDays (--days)", RotationPeriodInDays, ROTATION_PERIOD_MIN,
                         ROTATION_PERIOD_MAX)

        def enable(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:EnableKeyRotation",
                            {"kms:RotationPeriodInDays": RotationPeriodInDays})
            self._require_rotatable(ov, key, "EnableKeyRotation")
            self._require_generated(ov, key)
            self._require_enabled(ov, key)
            rot = key["Rotation"]
            rot.update(Enabled=True, PeriodInDays=RotationPeriodInDays,
                       NextRotationDate=iso(self.clock() + timedelta(days=RotationPeriodInDays)))
            ov.put_key(key)
            return {}

        return self._mutate("EnableKeyRotation", request, enable)

    def DisableKeyRotation(self, KeyId: str) -> dict[str, Any]:
        def disable(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:DisableKeyRotation")
            self._require_rotatable(ov, key, "DisableKeyRotation")
            self._require_generated(ov, key)
            self._require_enabled(ov, key)
            key["Rotation"].update(Enabled=False, NextRotationDate=None)
            ov.put_key(key)
            return {}

        return self._mutate("DisableKeyRotation", {"keyId": KeyId}, disable)

    def SetMinDecryptVersion(self, KeyId: str, MinDecryptVersion: int) -> dict[str, Any]:
        """Beyond AWS (Vault's min_decryption_version): refuse ciphertexts under older material."""

        def set_min(ov: OpenVault, call: Call) -> dict[str, Any]:
            # No AWS action covers this extension; it is rotation configuration,
            # so it needs the permission that turns rotation on.
            key = self._key(ov, call, KeyId, "kms:EnableKeyRotation")
            self._require_rotatable(ov, key, "SetMinDecryptVersion")
            self._require_generated(ov, key)
            self._require_not_pending(ov, key)
            latest = key["Materials"][-1]["Version"]
            check_range("--min-decrypt-version", MinDecryptVersion, 1, latest)
            key["Rotation"]["MinDecryptVersion"] = MinDecryptVersion
            ov.put_key(key)
            return {}

        return self._mutate("SetMinDecryptVersion", {"keyId": KeyId, "minDecryptVersion": MinDecryptVersion},
                            set_min)

    def GetKeyRotationStatus(self, KeyId: str) -> dict[str, Any]:
        def status(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:GetKeyRotationStatus")
            self._require_rotatable(ov, key, "GetKeyRotationStatus")
            enabled, period, next_date = self._rotation_status(key)
            out: dict[str, Any] = {"KeyId": self._arn(ov, key), "KeyRotationEnabled": enabled}
            if enabled:
                out.update(RotationPeriodInDays=period, NextRotationDate=next_date)
            return out

        return self._read("GetKeyRotationStatus", {"keyId": KeyId}, status)

    def RotateKeyOnDemand(self, KeyId: str) -> dict[str, Any]:
        def rotate(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:RotateKeyOnDemand")
            self._require_rotatable(ov, key, "RotateKeyOnDemand")
            self._require_generated(ov, key)
            self._require_enabled(ov, key)
            if key["Rotation"]["OnDemandCount"] >= ON_DEMAND_ROTATIONS_MAX:
                raise errors.LimitExceededException(
                    f"{self._arn(ov, key)} has been rotated on demand {ON_DEMAND_ROTATIONS_MAX} times, "
                    "the most AWS KMS allows"
                )
            key["Rotation"]["OnDemandCount"] += 1
            material = self._add_material(key, "ON_DEMAND")
            ov.put_key(key)
            call.response["keyMaterialId"] = material["KeyMaterialId"]
            return {"KeyId": key["KeyId"]}

        return self._mutate("RotateKeyOnDemand", {"keyId": KeyId}, rotate)

    def ListKeyRotations(self, KeyId: str, Limit: int | None = None, Marker: str | None = None,
                         IncludeKeyMaterial: str = "ROTATIONS_ONLY", Detail: bool = False) -> dict[str, Any]:
        """A key's material versions, oldest first: the rotations only (AWS's default) or, with
        ``IncludeKeyMaterial="ALL_KEY_MATERIAL"``, the original material too (``keys rotations``).

        ``Detail`` (kmscli's, never on the wire) adds what AWS has no member for,
        for the ``keys rotations`` table: each entry's ``Version`` and whether it
        still ``Decrypts`` (not below ``keys rotation --min-decrypt-version``),
        and the key's ``MinDecryptVersion``."""
        request: dict[str, Any] = {"keyId": KeyId, "includeKeyMaterial": IncludeKeyMaterial}
        request.update(paging(Limit, Marker))
        with self._refusing("ListKeyRotations", request):
            if IncludeKeyMaterial not in ("ROTATIONS_ONLY", "ALL_KEY_MATERIAL"):
                raise errors.ValidationException(
                    f"IncludeKeyMaterial must be ROTATIONS_ONLY or ALL_KEY_MATERIAL (got '{IncludeKeyMaterial}')")

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:ListKeyRotations")
            self._require_rotatable(ov, key, "ListKeyRotations")
            current = key["Materials"][-1]["Version"] if key["Materials"] else 0  # none yet: EXTERNAL
            shown = [m for m in key["Materials"]
                     if IncludeKeyMaterial == "ALL_KEY_MATERIAL" or m["RotationType"] is not None]
            materials, marker = page(shown, lambda m: (f"{m['Version']:010d}",), Limit, Marker,
                                     LIST_LIMIT_DEFAULT)
            out = []
            for m in materials:
                entry: dict[str, Any] = {
                    "KeyId": key["KeyId"],
                    "KeyMaterialId": m["KeyMaterialId"],
                    "KeyMaterialState": "CURRENT" if m["Version"] == current else "NON_CURRENT",
                }
                if key_origin(key) == "EXTERNAL":  # imported material: whether it is in place, and until when
                    imported = "Material" in m
                    entry["ImportState"] = "IMPORTED" if imported else "PENDING_IMPORT"
                    if imported and key.get("Import"):
                        entry["ExpirationModel"] = key["Import"]["ExpirationModel"]
                        if key["Import"]["ValidTo"]:
                            entry["ValidTo"] = parse_iso(key["Import"]["ValidTo"])
                if m["RotationType"] is not None:  # the original material was not a rotation
                    entry.update(RotationDate=parse_iso(m["CreationDate"]), RotationType=m["RotationType"])
                if Detail:
                    entry.update(Version=m["Version"], Decrypts=m["Version"] >= key["Rotation"]["MinDecryptVersion"])
                out.append(entry)
            result = paged("Rotations", out, marker)
            if Detail:
                result["MinDecryptVersion"] = key["Rotation"]["MinDecryptVersion"]
            return result

        return self._read("ListKeyRotations", request, list_)
