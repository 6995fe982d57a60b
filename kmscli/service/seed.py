"""Preloading a vault from a seed document: keys with fixed ids and material, aliases, tags, policies.

For `kmscli serve --ephemeral --seed FILE`, so a test suite starts from known
keys (local-kms and LocalStack users ask for exactly this). Recorded as one
``SeedVault`` call, like any change.
"""

from __future__ import annotations

from typing import Any

from .. import errors, ids
from ..model import KEY_SPEC as SYMMETRIC
from ..model import KeyState, iso
from ..vault.store import OpenVault
from ._core import MATERIAL_SIZE, Call, Core, alias_slot, new_key, new_material, tag_dict


class SeedOps(Core):
    def SeedVault(self, Keys: list[dict[str, Any]], Aliases: list[dict[str, Any]]) -> dict[str, Any]:
        """Add seed keys and aliases (checked as CreateKey and CreateAlias check theirs); never overwrite a key.

        A key: ``KeyId`` (a UUID), ``KeySpec`` and ``KeyUsage`` (as CreateKey takes them; a symmetric key by
        default), ``Materials`` (for a symmetric key one or more 32-byte secrets, oldest first: several make a
        rotated key; for an HMAC key one secret of its spec's length; for an asymmetric key one PKCS#8 DER
        private key of its spec; new material when absent), optional ``Region`` (the service's otherwise),
        ``Description``, ``Tags`` (a mapping), ``Policy`` (a JSON string; AWS's default policy otherwise) and
        ``Enabled``.
        An alias: ``AliasName``, ``TargetKeyId``, optional ``Region``.
        """
        from ..crypto import asymmetric as A

        request = {"keyIds": [k.get("KeyId") for k in Keys], "aliasNames": [a.get("AliasName") for a in Aliases]}
        keys: list[dict[str, Any]] = []  # Keys, with new material where a key had none
        usages: dict[str, str] = {}
        with self._refusing("SeedVault", request):
            for k in Keys:
                if not isinstance(k.get("KeyId"), str) or not ids.is_key_id(k["KeyId"]):
                    raise errors.ValidationException(f"seed key ids are lowercase UUIDs (got {k.get('KeyId')!r})")
                ids.validate_region(k.get("Region", self.region))
                ids.validate_description(k.get("Description", ""))
                spec = k.get("KeySpec", SYMMETRIC)
                usages[k["KeyId"]] = A.check_key_usage(spec, k.get("KeyUsage"))
                if k.get("Materials") is None:
                    keys.append({**k, "Materials": [A.generate(spec)]})
                else:
                    _check_seed_material(k["KeyId"], spec, k["Materials"])
                    keys.append(k)
            for a in Aliases:
                ids.validate_alias_name(a.get("AliasName", ""))
                ids.validate_region(a.get("Region", self.region))

        def seed(ov: OpenVault, call: Call) -> dict[str, Any]:
            from .. import policy as policy_mod

            account = ov.account
            now = iso(self.clock())
            for k in keys:
                if ov.get_key(k["KeyId"]) is not None:
                    raise errors.AlreadyExistsException(f"the seed's key {k['KeyId']} already exists")
                policy = k.get("Policy")
                if policy is None:
                    policy = policy_mod.default_policy(account)
                else:
                    policy_mod.parse(policy, account=account)
                tags = tag_dict([{"TagKey": t, "TagValue": v} for t, v in (k.get("Tags") or {}).items()])
                key = new_key(k["KeyId"], k.get("Region", self.region), now, k.get("Description", ""), tags, policy,
                              k["Materials"][0], k.get("KeySpec", SYMMETRIC), usages[k["KeyId"]])
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
            call.response = {"keys": len(keys), "aliases": len(Aliases)}
            return {}

        return self._mutate("SeedVault", request, seed)


def _check_seed_material(key_id: str, spec: str, materials: Any) -> None:
    """A seed key's material fits its spec: 32-byte secrets (one or more) for a symmetric key, one secret of the
    spec's length for an HMAC key, one sound PKCS#8 private key of the spec for an asymmetric key."""
    from ..crypto import asymmetric as A

    if not isinstance(materials, list) or not materials or not all(isinstance(m, bytes) for m in materials):
        raise errors.ValidationException(f"seed key {key_id}: give its material as a list of byte strings")
    if spec == SYMMETRIC:
        if any(len(m) != MATERIAL_SIZE for m in materials):
            raise errors.ValidationException(
                f"seed key {key_id}: give its material as one or more {MATERIAL_SIZE}-byte keys")
        return
    if len(materials) != 1:
        raise errors.ValidationException(
            f"seed key {key_id}: {spec} keys have one material (only symmetric keys rotate)")
    if spec in A.HMAC_KEY_BYTES:
        if len(materials[0]) != A.HMAC_KEY_BYTES[spec]:
            raise errors.ValidationException(
                f"seed key {key_id}: the material of a {spec} key is {A.HMAC_KEY_BYTES[spec]} bytes")
        return
    A.check_private_material(spec, materials[0])
