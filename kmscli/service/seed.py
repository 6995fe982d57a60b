"""Preloading a vault from a seed document: keys with fixed ids and material, aliases, tags, policies.

For `kmscli serve --ephemeral --seed FILE`, so a test suite starts from known
keys (local-kms and LocalStack users ask for exactly this). Recorded as one
``SeedVault`` call, like any change.
"""

from __future__ import annotations

from typing import Any

from .. import errors, ids
from ..model import KeyState, iso
from ..vault.store import OpenVault
from ._core import MATERIAL_SIZE, Call, Core, alias_slot, new_key, new_material, tag_dict


class SeedOps(Core):
    def SeedVault(self, Keys: list[dict[str, Any]], Aliases: list[dict[str, Any]]) -> dict[str, Any]:
        """Add seed keys and aliases (checked as CreateKey and CreateAlias check theirs); never overwrite a key.

        A key: ``KeyId`` (a UUID), ``Materials`` (one or more 32-byte secrets,
        oldest first: several make a rotated key), optional ``Region`` (the
        service's otherwise), ``Description``, ``Tags`` (a mapping), ``Policy``
        (a JSON string; AWS's default policy otherwise) and ``Enabled``.
        An alias: ``AliasName``, ``TargetKeyId``, optional ``Region``.
        """
        request = {"keyIds": [k.get("KeyId") for k in Keys], "aliasNames": [a.get("AliasName") for a in Aliases]}
        with self._refusing("SeedVault", request):
            for k in Keys:
                if not isinstance(k.get("KeyId"), str) or not ids.is_key_id(k["KeyId"]):
                    raise errors.ValidationException(f"seed key ids are lowercase UUIDs (got {k.get('KeyId')!r})")
                materials = k.get("Materials")
                if not materials or any(not isinstance(m, bytes) or len(m) != MATERIAL_SIZE for m in materials):
                    raise errors.ValidationException(
                        f"seed key {k['KeyId']}: give its material as one or more {MATERIAL_SIZE}-byte keys")
                ids.validate_region(k.get("Region", self.region))
                ids.validate_description(k.get("Description", ""))
            for a in Aliases:
                ids.validate_alias_name(a.get("AliasName", ""))
                ids.validate_region(a.get("Region", self.region))

        def seed(ov: OpenVault, call: Call) -> dict[str, Any]:
            from .. import policy as policy_mod

            account = ov.account
            now = iso(self.clock())
            for k in Keys:
                if ov.get_key(k["KeyId"]) is not None:
                    raise errors.AlreadyExistsException(f"the seed's key {k['KeyId']} already exists")
                policy = k.get("Policy")
                if policy is None:
                    policy = policy_mod.default_policy(account)
                else:
                    policy_mod.parse(policy, account=account)
                tags = tag_dict([{"TagKey": t, "TagValue": v} for t, v in (k.get("Tags") or {}).items()])
                key = new_key(k["KeyId"], k.get("Region", self.region), now, k.get("Description", ""), tags, policy,
                              k["Materials"][0])
                for version, secret in enumerate(k["Materials"][1:], start=2):
                    key["Materials"].append(new_material(version, now, "ON_DEMAND", secret))
                if k.get("Enabled") is False:
                    key["KeyState"] = KeyState.DISABLED.value
                ov.put_key(key)
            for a in Aliases:
                region = a.get("Region", self.region)
                target_id = a.get("TargetKeyId")
                target = ov.get_key(target_id) if isinstance(target_id, str) and target_id else None
                if target is None or target.get("Region", ids.DEFAULT_REGION) != region:
                    raise errors.NotFoundException(
                        f"the seed's alias {a['AliasName']} names no seed key of region {region}")
                slot = alias_slot(region, a["AliasName"])
                if ov.get_alias(slot) is not None:
                    raise errors.AlreadyExistsException(f"the seed's alias {a['AliasName']} already exists")
                ov.put_alias(slot, {"TargetKeyId": target["KeyId"], "CreationDate": now, "LastUpdatedDate": now})
            call.response = {"keys": len(Keys), "aliases": len(Aliases)}
            return {}

        return self._mutate("SeedVault", request, seed)
