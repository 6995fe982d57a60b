"""Aliases: create, update, delete, list."""

from __future__ import annotations

from typing import Any

from .. import errors, ids
from ..model import KeyState, iso
from ..vault.store import OpenVault
from ._core import (
    Call,
    Core,
)


class AliasOps(Core):
    def CreateAlias(self, AliasName: str, TargetKeyId: str) -> dict[str, Any]:
        request = {"aliasName": AliasName, "targetKeyId": TargetKeyId}
        with self._refusing("CreateAlias", request):
            ids.validate_alias_name(AliasName)

        def create(ov: OpenVault, call: Call) -> dict[str, Any]:
            account = ov.body["account"]
            if AliasName in ov.body["aliases"]:
                raise errors.AlreadyExistsException(
                    f"An alias with the name {ids.alias_arn(account, AliasName)} already exists"
                )
            key = self._key(ov, call, TargetKeyId, "kms:CreateAlias")
            if key["KeyState"] == KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")
            self._check_alias_quota(ov, key["KeyId"])
            now = iso(self.clock())
            ov.body["aliases"][AliasName] = {"TargetKeyId": key["KeyId"], "CreationDate": now, "LastUpdatedDate": now}
            return {}

        return self._mutate("CreateAlias", request, create)

    def UpdateAlias(self, AliasName: str, TargetKeyId: str) -> dict[str, Any]:
        request = {"aliasName": AliasName, "targetKeyId": TargetKeyId}
        with self._refusing("UpdateAlias", request):
            ids.validate_alias_name(AliasName)

        def update(ov: OpenVault, call: Call) -> dict[str, Any]:
            alias = ov.body["aliases"].get(AliasName)
            if alias is None:
                raise errors.NotFoundException(f"Alias {ids.alias_arn(ov.body['account'], AliasName)} is not found.")
            old = ov.body["keys"].get(alias["TargetKeyId"])
            if old is not None:
                self._authorize(ov, call, old, "kms:UpdateAlias")
            key = self._key(ov, call, TargetKeyId, "kms:UpdateAlias")
            if key["KeyState"] == KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")
            if key["KeyId"] != alias["TargetKeyId"]:
                self._check_alias_quota(ov, key["KeyId"])
            alias.update(TargetKeyId=key["KeyId"], LastUpdatedDate=iso(self.clock()))
            return {}

        return self._mutate("UpdateAlias", request, update)

    def DeleteAlias(self, AliasName: str) -> dict[str, Any]:
        with self._refusing("DeleteAlias", {"aliasName": AliasName}):
            ids.validate_alias_name(AliasName)

        def delete(ov: OpenVault, call: Call) -> dict[str, Any]:
            alias = ov.body["aliases"].get(AliasName)
            if alias is None:
                raise errors.NotFoundException(f"Alias {ids.alias_arn(ov.body['account'], AliasName)} is not found.")
            key = ov.body["keys"].get(alias["TargetKeyId"])
            if key is not None:
                self._authorize(ov, call, key, "kms:DeleteAlias")
            del ov.body["aliases"][AliasName]
            call.response["keyId"] = alias["TargetKeyId"]
            return {}

        return self._mutate("DeleteAlias", {"aliasName": AliasName}, delete)

    def ListAliases(self, KeyId: str | None = None) -> dict[str, Any]:
        from ..model import alias_entry

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            target = None
            if KeyId is not None:
                target = self._key(ov, call, KeyId, "kms:ListAliases")["KeyId"]
            account = ov.body["account"]
            out = [alias_entry(account, name, a) for name, a in sorted(ov.body["aliases"].items())
                   if target is None or a["TargetKeyId"] == target]
            return {"Aliases": out, "Truncated": False}

        return self._read("ListAliases", {"keyId": KeyId} if KeyId else {}, list_)
