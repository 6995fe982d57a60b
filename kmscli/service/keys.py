"""Keys: create, describe, list, enable and disable, schedule and cancel deletion, description and tags."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .. import errors, ids
from ..model import KeyState, is_symmetric, iso, parse_iso
from ..vault.store import OpenVault
from ._core import (
    DELETION_WINDOW_DEFAULT,
    DELETION_WINDOW_MAX,
    DELETION_WINDOW_MIN,
    LIST_LIMIT_DEFAULT,
    TAGS_LIMIT_DEFAULT,
    TAGS_PER_KEY_MAX,
    Call,
    Core,
    check_range,
    decode_marker,
    new_key,
    page,
    page_of,
    paged,
    paging,
    tag_dict,
)


class KeyOps(Core):
    def CreateKey(
        self,
        Description: str = "",
        Tags: list[dict[str, str]] | None = None,
        Policy: str | None = None,
        BypassPolicyLockoutSafetyCheck: bool = False,
        KeySpec: str = "SYMMETRIC_DEFAULT",
        KeyUsage: str | None = None,
        AliasName: str | None = None,
        Origin: str = "AWS_KMS",
    ) -> dict[str, Any]:
        """Create a key of any spec kmscli makes (and, beyond AWS, its first alias in the same write).

        ``KeyUsage`` may be omitted only for a SYMMETRIC_DEFAULT key (ENCRYPT_DECRYPT), as in AWS. The private
        half of an asymmetric key and an HMAC key's secret are made here and never leave the vault.
        ``Origin="EXTERNAL"`` makes a key without material, PendingImport (service/imports.py).
        """
        from ..crypto import asymmetric

        request = {"description": Description, "keySpec": KeySpec, "keyUsage": KeyUsage,
                   "tags": Tags or [], "bypassPolicyLockoutSafetyCheck": BypassPolicyLockoutSafetyCheck}
        if Policy is not None:
            request["policy"] = Policy
        if AliasName is not None:
            request["aliasName"] = AliasName
        if Origin != "AWS_KMS":
            request["origin"] = Origin
        with self._refusing("CreateKey", request):
            ids.validate_description(Description)
            usage = asymmetric.check_key_usage(KeySpec, KeyUsage)
            request["keyUsage"] = usage
            _check_origin(Origin, KeySpec)
            tags = tag_dict(Tags or [])
            if AliasName is not None:
                ids.validate_alias_name(AliasName)
        # Made before the vault is locked: an RSA_4096 key takes a second or more, and writers need not wait.
        secret = asymmetric.generate(KeySpec) if Origin == "AWS_KMS" else None

        def create(ov: OpenVault, call: Call) -> dict[str, Any]:
            account = ov.account
            key_id = ids.new_key_id()
            policy = self._checked_policy(Policy, account, BypassPolicyLockoutSafetyCheck, key_id)
            if AliasName is not None and self._alias(ov, AliasName) is not None:
                raise errors.AlreadyExistsException(
                    f"An alias with the name {self._alias_arn(ov, AliasName)} already exists"
                )
            now = iso(self.clock())
            key = new_key(key_id, self.region, now, Description, tags, policy, secret, KeySpec, usage, Origin)
            if AliasName is not None:
                # The alias is made by this call as if by CreateAlias: the new
                # key's own policy decides, an explicit Deny included.
                self._authorize(ov, call, key, "kms:CreateAlias")
            ov.put_key(key)
            if AliasName is not None:
                ov.put_alias(self._alias_slot(AliasName), {"TargetKeyId": key_id, "CreationDate": now,
                                                           "LastUpdatedDate": now})
            call.response = {"keyId": key_id, "keyState": key["KeyState"]}
            call.resources.append(self._key_arn(ov, key_id))
            return {"KeyMetadata": self._metadata(ov, key)}

        return self._mutate("CreateKey", request, create)

    def DescribeKey(self, KeyId: str) -> dict[str, Any]:
        def describe(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:DescribeKey")
            return {"KeyMetadata": self._metadata(ov, key)}

        return self._read("DescribeKey", {"keyId": KeyId}, describe)

    def ListKeys(self, Limit: int | None = None, Marker: str | None = None,
                 IncludePendingDeletion: bool = True) -> dict[str, Any]:
        """This region's keys, oldest first, as ``{"KeyId", "KeyArn"}``, a page at a time.

        ``IncludePendingDeletion=False`` (kmscli's, for ``keys list`` without
        ``--all``) leaves out keys pending deletion; AWS lists every key.
        """
        request: dict[str, Any] = {"includePendingDeletion": IncludePendingDeletion}
        request.update(paging(Limit, Marker))

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            after = decode_marker(Marker)
            keys, marker = page_of(self._listed_keys(ov, IncludePendingDeletion, after), Limit, LIST_LIMIT_DEFAULT)
            return paged("Keys", [{"KeyId": k["KeyId"], "KeyArn": self._arn(ov, k)} for k in keys], marker)

        return self._read("ListKeys", request, list_)

    def ListKeyDetails(self, IncludePendingDeletion: bool = True, Limit: int | None = None,
                       Marker: str | None = None) -> dict[str, Any]:
        """kmscli's view for the ``keys list`` table: keys with their metadata and aliases, a page at a time.

        Recorded as a ListKeys; a key's metadata is included only where its
        policy allows kms:DescribeKey (the others show their id and ARN only).
        Without ``Limit`` (and ``Marker``) every key, in one answer; with them a
        page of at most ``Limit`` keys and, when more follow, ``NextMarker``.
        """
        request: dict[str, Any] = {"includePendingDeletion": IncludePendingDeletion, "detail": True}
        request.update(paging(Limit, Marker))

        def entry(ov: OpenVault, call: Call, k: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"KeyId": k["KeyId"], "KeyArn": self._arn(ov, k),
                                   "Aliases": self._key_alias_names(ov, k["KeyId"])}
            if self._allowed(ov, call, k, "kms:DescribeKey"):
                out["KeyMetadata"] = self._metadata(ov, k)
            return out

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            call.resources.clear()  # one record for the listing, not a resource per key
            if Limit is None and Marker is None:
                return {"Keys": [entry(ov, call, k) for _cursor, k in self._listed_keys(ov, IncludePendingDeletion)]}
            after = decode_marker(Marker)
            keys, marker = page_of(self._listed_keys(ov, IncludePendingDeletion, after), Limit, LIST_LIMIT_DEFAULT)
            return paged("Keys", [entry(ov, call, k) for k in keys], marker)

        return self._read("ListKeys", request, list_)

    def DescribeKeyDetails(self, KeyId: str) -> dict[str, Any]:
        """kmscli's view for the ``keys describe`` table: DescribeKey plus aliases, tags and rotation, in one call.

        Needs kms:DescribeKey; tags and rotation are included only where the
        policy allows kms:ListResourceTags and kms:GetKeyRotationStatus.
        """

        def describe(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:DescribeKey")
            out: dict[str, Any] = {
                "KeyMetadata": self._metadata(ov, key),
                "Aliases": self._key_alias_names(ov, key["KeyId"]),
            }
            if self._allowed(ov, call, key, "kms:ListResourceTags"):
                out["Tags"] = [{"TagKey": k, "TagValue": v} for k, v in sorted(key["Tags"].items())]
            if is_symmetric(key) and self._allowed(ov, call, key, "kms:GetKeyRotationStatus"):
                # Only symmetric encryption keys rotate; the others have no rotation status (AWS: Unsupported).
                enabled, period, next_date = self._rotation_status(key)
                out["Rotation"] = {"Enabled": enabled, "PeriodInDays": period, "NextRotationDate": next_date,
                                   "MinDecryptVersion": key["Rotation"]["MinDecryptVersion"]}
            return out

        return self._read("DescribeKey", {"keyId": KeyId, "detail": True}, describe)

    def ListResourceTags(self, KeyId: str, Limit: int | None = None, Marker: str | None = None) -> dict[str, Any]:
        """A key's tags, sorted by tag key, a page at a time."""
        request: dict[str, Any] = {"keyId": KeyId}
        request.update(paging(Limit, Marker))

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:ListResourceTags")
            tags, marker = page(list(key["Tags"].items()), lambda kv: (kv[0],), Limit, Marker, TAGS_LIMIT_DEFAULT)
            return paged("Tags", [{"TagKey": k, "TagValue": v} for k, v in tags], marker)

        return self._read("ListResourceTags", request, list_)

    def EnableKey(self, KeyId: str) -> dict[str, Any]:
        return self._set_state("EnableKey", KeyId, KeyState.ENABLED)

    def DisableKey(self, KeyId: str) -> dict[str, Any]:
        return self._set_state("DisableKey", KeyId, KeyState.DISABLED)

    def _set_state(self, event: str, key_ref: str, state: KeyState) -> dict[str, Any]:
        def change(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, key_ref, "kms:" + event)
            self._require_not_pending(ov, key)
            if key["KeyState"] == KeyState.PENDING_IMPORT:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending import.")
            key["KeyState"] = state.value
            ov.put_key(key)
            if state is KeyState.ENABLED:
                # AWS rotates overdue material as soon as a key is enabled again.
                self._rotate_if_due(ov, key)
            call.response["keyState"] = state.value
            return {}

        return self._mutate(event, {"keyId": key_ref}, change)

    def ScheduleKeyDeletion(self, KeyId: str, PendingWindowInDays: int = DELETION_WINDOW_DEFAULT) -> dict[str, Any]:
        request = {"keyId": KeyId, "pendingWindowInDays": PendingWindowInDays}
        with self._refusing("ScheduleKeyDeletion", request):
            check_range("PendingWindowInDays (--days)", PendingWindowInDays, DELETION_WINDOW_MIN,
                         DELETION_WINDOW_MAX)

        def schedule(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:ScheduleKeyDeletion",
                            {"kms:ScheduleKeyDeletionPendingWindowInDays": PendingWindowInDays})
            if key["KeyState"] == KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")
            deletion = self.clock() + timedelta(days=PendingWindowInDays)
            when = iso(deletion)
            key.update(KeyState=KeyState.PENDING_DELETION.value, DeletionDate=when,
                       PendingDeletionWindowInDays=PendingWindowInDays)
            ov.put_key(key)
            call.response.update(keyState=key["KeyState"], deletionDate=when)
            return {"KeyId": self._arn(ov, key), "DeletionDate": parse_iso(when), "KeyState": key["KeyState"],
                    "PendingWindowInDays": PendingWindowInDays}

        return self._mutate("ScheduleKeyDeletion", request, schedule)

    def CancelKeyDeletion(self, KeyId: str) -> dict[str, Any]:
        def cancel(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:CancelKeyDeletion")
            if key["KeyState"] != KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is not pending deletion.")
            # As in AWS KMS, a cancelled key comes back Disabled, not Enabled (PendingImport without its material).
            material = key["Materials"] and "Material" in key["Materials"][-1]
            key.update(KeyState=(KeyState.DISABLED if material else KeyState.PENDING_IMPORT).value, DeletionDate=None,
                       PendingDeletionWindowInDays=None)
            ov.put_key(key)
            call.response["keyState"] = key["KeyState"]
            return {"KeyId": self._arn(ov, key)}

        return self._mutate("CancelKeyDeletion", {"keyId": KeyId}, cancel)

    def UpdateKeyDescription(self, KeyId: str, Description: str) -> dict[str, Any]:
        request = {"keyId": KeyId, "description": Description}
        with self._refusing("UpdateKeyDescription", request):
            ids.validate_description(Description)

        def update(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:UpdateKeyDescription")
            self._require_not_pending(ov, key)
            key["Description"] = Description
            ov.put_key(key)
            return {}

        return self._mutate("UpdateKeyDescription", request, update)

    def TagResource(self, KeyId: str, Tags: list[dict[str, str]]) -> dict[str, Any]:
        request = {"keyId": KeyId, "tags": Tags}
        with self._refusing("TagResource", request):
            new = tag_dict(Tags)
            if not new:
                raise errors.ValidationException("give at least one tag as KEY=VALUE")

        def tag(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:TagResource")
            self._require_not_pending(ov, key)
            merged = {**key["Tags"], **new}
            if len(merged) > TAGS_PER_KEY_MAX:
                raise errors.TagException(f"a key can have at most {TAGS_PER_KEY_MAX} tags (would have {len(merged)})")
            key["Tags"] = merged
            ov.put_key(key)
            return {}

        return self._mutate("TagResource", request, tag)

    def UntagResource(self, KeyId: str, TagKeys: list[str]) -> dict[str, Any]:
        request = {"keyId": KeyId, "tagKeys": TagKeys}
        with self._refusing("UntagResource", request):
            if not TagKeys:
                raise errors.ValidationException("give at least one tag key to remove")
            for k in TagKeys:
                ids.validate_tag(k, "")

        def untag(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:UntagResource")
            self._require_not_pending(ov, key)
            for k in TagKeys:  # removing a tag that is not there is a no-op, as in AWS
                key["Tags"].pop(k, None)
            ov.put_key(key)
            return {}

        return self._mutate("UntagResource", request, untag)


def _check_origin(origin: str, spec: str) -> None:
    """CreateKey's Origin: AWS_KMS or EXTERNAL (imported material, for the key specs AWS imports)."""
    from ..crypto import asymmetric, wrapping

    if origin in ("AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"):
        raise errors.UnsupportedOperationException(f"Origin {origin} is not supported: kmscli has no custom key "
                                                   "stores; it makes keys with Origin AWS_KMS or EXTERNAL")
    asymmetric.check_enum(origin, "OriginType", "origin")
    if origin == "EXTERNAL":
        wrapping.check_importable(spec)
