"""Aliases: create, update, delete, list."""

from __future__ import annotations

from typing import Any

from .. import errors, ids
from ..model import KeyState, iso, key_spec, key_usage
from ..vault.store import OpenVault
from ._core import (
    ALIASES_LIMIT_DEFAULT,
    Call,
    Core,
    decode_marker,
    page,
    page_of,
    paged,
)


class AliasOps(Core):
    def CreateAlias(self, AliasName: str, TargetKeyId: str) -> dict[str, Any]:
        request = {"aliasName": AliasName, "targetKeyId": TargetKeyId}
        with self._refusing("CreateAlias", request):
            ids.validate_alias_name(AliasName)

        def create(ov: OpenVault, call: Call) -> dict[str, Any]:
            if self._alias(ov, AliasName) is not None:
                raise errors.AlreadyExistsException(
                    f"An alias with the name {self._alias_arn(ov, AliasName)} already exists"
                )
            key = self._key(ov, call, TargetKeyId, "kms:CreateAlias")
            if key["KeyState"] == KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")
            self._check_alias_quota(ov, key["KeyId"])
            now = iso(self.clock())
            ov.put_alias(self._alias_slot(AliasName), {"TargetKeyId": key["KeyId"], "CreationDate": now,
                                                       "LastUpdatedDate": now})
            return {}

        return self._mutate("CreateAlias", request, create)

    def UpdateAlias(self, AliasName: str, TargetKeyId: str) -> dict[str, Any]:
        request = {"aliasName": AliasName, "targetKeyId": TargetKeyId}
        with self._refusing("UpdateAlias", request):
            ids.validate_alias_name(AliasName)

        def update(ov: OpenVault, call: Call) -> dict[str, Any]:
            alias = self._existing_alias(ov, call, AliasName, "kms:UpdateAlias")
            key = self._key(ov, call, TargetKeyId, "kms:UpdateAlias")
            if key["KeyState"] == KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")
            if key["KeyId"] != alias["TargetKeyId"]:
                self._check_alias_quota(ov, key["KeyId"])
                self._check_same_kind(ov, alias["TargetKeyId"], key)
            ov.put_alias(self._alias_slot(AliasName),
                         {**alias, "TargetKeyId": key["KeyId"], "LastUpdatedDate": iso(self.clock())})
            return {}

        return self._mutate("UpdateAlias", request, update)

    def _check_same_kind(self, ov: OpenVault, old_id: str, new: dict[str, Any]) -> None:
        """As AWS: an alias moves only to a key of the same type (symmetric, asymmetric, HMAC) and usage, so code
        that signs or encrypts through an alias never finds a key that cannot do it."""
        old = ov.get_key(old_id)
        if old is None:
            return  # the alias named a key destroyed since: any key will do

        def kind(key: dict[str, Any]) -> tuple[str, str]:
            spec = key_spec(key)
            family = ("SYMMETRIC_DEFAULT" if spec == "SYMMETRIC_DEFAULT"
                      else "HMAC" if spec.startswith("HMAC_") else "asymmetric")
            return family, key_usage(key)

        if kind(old) != kind(new):
            raise errors.ValidationException(
                f"alias target {self._arn(ov, new)} ({key_spec(new)}, {key_usage(new)}) is not the same type of key "
                f"as the current one ({key_spec(old)}, {key_usage(old)}): an alias moves only to a key of the "
                "same type and key usage")

    def DeleteAlias(self, AliasName: str) -> dict[str, Any]:
        with self._refusing("DeleteAlias", {"aliasName": AliasName}):
            ids.validate_alias_name(AliasName)

        def delete(ov: OpenVault, call: Call) -> dict[str, Any]:
            alias = self._existing_alias(ov, call, AliasName, "kms:DeleteAlias")
            ov.delete_alias(self._alias_slot(AliasName))
            call.response["keyId"] = alias["TargetKeyId"]
            return {}

        return self._mutate("DeleteAlias", {"aliasName": AliasName}, delete)

    def ListAliases(self, KeyId: str | None = None, Limit: int | None = None,
                    Marker: str | None = None) -> dict[str, Any]:
        """This region's aliases (or one key's), by name, a page at a time.

        As in AWS, no key policy is consulted (AWS asks IAM for kms:ListAliases,
        and kmscli has no IAM): a policy that allows only DescribeKey does not
        hide a key's aliases from ``keys describe``.
        """
        from ..model import alias_entry

        request: dict[str, Any] = {k: v for k, v in (("keyId", KeyId), ("limit", Limit), ("marker", Marker))
                                   if v is not None}

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            target = self._resolve(ov, call, KeyId)["KeyId"] if KeyId is not None else None
            account = ov.account
            if target is not None:
                # One key's aliases (at most 50), from the key's own list, by name.
                mine = [(name, ov.get_alias(self._alias_slot(name))) for name in self._key_alias_names(ov, target)]
                entries, marker = page([(n, a) for n, a in mine if a is not None], lambda e: (e[0],), Limit, Marker,
                                       ALIASES_LIMIT_DEFAULT)
            else:
                after = decode_marker(Marker)
                entries, marker = page_of(((c, (n, a)) for c, n, a in self._region_aliases(ov, after)), Limit,
                                          ALIASES_LIMIT_DEFAULT)
            return paged("Aliases", [alias_entry(account, name, a, region=self.region) for name, a in entries],
                         marker)

        return self._read("ListAliases", request, list_)

    def _existing_alias(self, ov: OpenVault, call: Call, name: str, action: str) -> dict[str, Any]:
        """An alias that must exist, once the policy of the key it names now allows ``action``."""
        alias = self._alias(ov, name)
        if alias is None:
            raise errors.NotFoundException(f"Alias {self._alias_arn(ov, name)} is not found.")
        key = ov.get_key(alias["TargetKeyId"])
        if key is not None:
            self._authorize(ov, call, key, action)
        return alias
