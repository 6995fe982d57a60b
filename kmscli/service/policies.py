"""Key policies: get and put."""

from __future__ import annotations

from typing import Any

from ..vault.store import OpenVault
from ._core import (
    LIST_LIMIT_DEFAULT,
    Call,
    Core,
    check_policy_name,
    page,
    paged,
    paging,
)


class PolicyOps(Core):
    def GetKeyPolicy(self, KeyId: str, PolicyName: str = "default") -> dict[str, Any]:
        request = {"keyId": KeyId, "policyName": PolicyName}
        with self._refusing("GetKeyPolicy", request):
            check_policy_name(PolicyName)

        def get(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:GetKeyPolicy")
            return {"Policy": key["Policy"], "PolicyName": "default"}

        return self._read("GetKeyPolicy", request, get)

    def PutKeyPolicy(self, KeyId: str, Policy: str, PolicyName: str = "default",
                     BypassPolicyLockoutSafetyCheck: bool = False) -> dict[str, Any]:
        request = {"keyId": KeyId, "policyName": PolicyName, "policy": Policy,
                   "bypassPolicyLockoutSafetyCheck": BypassPolicyLockoutSafetyCheck}
        with self._refusing("PutKeyPolicy", request):
            check_policy_name(PolicyName)

        def put(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:PutKeyPolicy")
            key["Policy"] = self._checked_policy(Policy, ov.account, BypassPolicyLockoutSafetyCheck, key["KeyId"])
            ov.put_key(key)
            return {}

        return self._mutate("PutKeyPolicy", request, put)

    def ListKeyPolicies(self, KeyId: str, Limit: int | None = None, Marker: str | None = None) -> dict[str, Any]:
        """The names of a key's policies: always just ``default``, as in AWS."""
        request: dict[str, Any] = {"keyId": KeyId}
        request.update(paging(Limit, Marker))

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            self._key(ov, call, KeyId, "kms:ListKeyPolicies")
            names, marker = page(["default"], lambda n: (n,), Limit, Marker, LIST_LIMIT_DEFAULT)
            return paged("PolicyNames", names, marker)

        return self._read("ListKeyPolicies", request, list_)
