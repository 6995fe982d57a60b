"""The KMS service: one method per AWS KMS operation, named as AWS names it.

Every rule lives here or below: key state, key policy, limits, the audit
record. The CLI (and a later HTTP adapter) only parse input, call one method
and render its answer. Methods take AWS request field names as keyword
arguments and return AWS response shapes as plain dicts; streaming operations
take a reader and a writer instead of blobs, since kmscli has no 4 KiB limit.

Each call opens the vault, applies the time-based events that have fallen due
(keys destroyed at the end of their deletion window, automatic rotations),
checks the key's policy, does the work, appends the audit record and, for a
change, writes the vault, in that order, so that nothing happens without its
record on disk.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from . import errors, ids
from .model import KeyState, iso, parse_iso, utcnow
from .vault import format as F
from .vault.store import KeySource, OpenVault, PassphraseKeySource, VaultStore

# AWS KMS's limits, from botocore's service model and the KMS quotas page.
DELETION_WINDOW_MIN, DELETION_WINDOW_MAX, DELETION_WINDOW_DEFAULT = 7, 30, 30
ROTATION_PERIOD_MIN, ROTATION_PERIOD_MAX, ROTATION_PERIOD_DEFAULT = 90, 2560, 365
ON_DEMAND_ROTATIONS_MAX = 25
ALIASES_PER_KEY_MAX = 50
TAGS_PER_KEY_MAX = 50
RANDOM_BYTES_MIN, RANDOM_BYTES_MAX = 1, 1024
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
MATERIAL_SIZE = 32

AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the local OS user, as the process (or a socket peer) says."""

    user: str
    uid: int
    pid: int
    host: str

    @classmethod
    def current(cls) -> Caller:
        # The name comes from the account database, not $USER/$LOGNAME (which
        # getpass would trust): policies match on it, and the environment is
        # the caller's to set. Inside the agent it comes from SO_PEERCRED's uid.
        uid = os.getuid()
        try:
            import pwd

            user = pwd.getpwuid(uid).pw_name
        except (ImportError, KeyError):  # no passwd entry (containers): fall back to the uid
            user = str(uid)
        return cls(user=user, uid=uid, pid=os.getpid(), host=socket.gethostname())

    def arn(self, account: str) -> str:
        return f"arn:aws:iam::{account}:user/{self.user}"


@dataclass
class _Call:
    """One operation in flight: what the audit record will say about it."""

    event: str
    request: dict[str, Any]
    response: dict[str, Any] = field(default_factory=dict)
    resources: list[str] = field(default_factory=list)
    #: The alias the caller named the key by, for the kms:RequestAlias condition.
    alias: str | None = None
    #: Set once the call's record was appended ahead of its output (decrypt).
    event_id: str | None = None


class Kms:
    """The local KMS, bound to one vault, one caller and one clock."""

    def __init__(
        self,
        vault_path: Path,
        keys: KeySource,
        *,
        caller: Caller | None = None,
        audit_path: Path | None = None,
        clock: Callable[[], datetime] = utcnow,
        audit_max_bytes: int | None = None,
    ) -> None:
        self.store = VaultStore(vault_path)
        self.audit_max_bytes = audit_max_bytes
        self.keys = keys
        self.caller = caller or Caller.current()
        #: The log the caller named (--audit-log, KMSCLI_AUDIT_LOG): chooses where
        #: `init` puts it; afterwards it must be the vault's own (fixed at init).
        self.requested_audit_path = Path(os.path.abspath(audit_path)) if audit_path is not None else None
        #: Where the log is before the vault is unlocked: the one named, else beside the real vault.
        self.audit_path = self.requested_audit_path or self.store.path.with_name(AUDIT_FILE)
        self.clock = clock
        self._audit: Any = None
        self._audit_key: tuple[str, str] = ("", "")

    # =================================================================
    # Vault lifecycle (local operations)
    # =================================================================
    def CreateVault(self, kdf: F.KdfParams | None = None) -> dict[str, Any]:
        """Make a new vault with a random vault key and account; never overwrite one."""
        kdf = kdf or F.KdfParams()
        why = kdf.bounds_error()
        if why is not None:
            raise errors.ValidationException(why)
        # Fixed for the vault's life, by its real folder: no later symlink can move it.
        self.audit_path = Path(os.path.realpath(self.audit_path.parent)) / self.audit_path.name
        if self.store.path.exists():
            raise errors.AlreadyExistsException(
                f"a vault already exists at {self.store.path}; kmscli never overwrites one"
            )
        self._require_passphrase("init", "CreateVault")
        from .vault.store import check_private_folder

        check_private_folder(self.audit_path.parent, "the audit log")
        if self._audit_log(None).exists():
            # A new vault's chain starts at its own genesis: appending it to another
            # vault's log would make that log fail verification forever.
            raise errors.AlreadyExistsException(
                f"an audit log already exists at {self.audit_path} with no vault beside it; "
                "move it (and its numbered older files) away to keep it, then run init again"
            )
        from .crypto import primitives as P

        assert isinstance(self.keys, PassphraseKeySource)
        passphrase = self.keys.passphrase()
        salt, vault_key = P.random_bytes(F.SALT_SIZE), P.random_bytes(F.VAULT_KEY_SIZE)
        header = F.build_header(
            kdf, salt, P.argon2id(passphrase, salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism),
            vault_key, P.random_bytes(P.NONCE_SIZE),
        )
        now = iso(self.clock())
        body: dict[str, Any] = {
            "format": F.FORMAT_VERSION,
            "vault_id": P.random_bytes(16).hex(),
            "account": "".join(str(b % 10) for b in P.random_bytes(12)),
            "created": now,
            "generation": 0,
            "audit_head": None,
            "audit_log": str(self.audit_path),
            "audit_epoch": 0,
            "chain_keys": [{"from_seq": 1, "key": _chain_key_hex(vault_key)}],
            "keys": {},
            "aliases": {},
        }
        ov = OpenVault(header=header, vault_key=vault_key, body=body, pending=[])
        call = _Call("CreateVault", {"kdfMemoryKiB": kdf.memory_kib, "kdfTime": kdf.time_cost,
                                     "kdfParallelism": kdf.parallelism, "auditLog": str(self.audit_path)})
        with self.store.locked():
            call.response = {"vaultId": body["vault_id"], "account": body["account"]}
            self._record(ov, call)
            # The vault is linked into place carrying its first record; the log
            # gets the record right after (or from the next command, after a crash).
            self._commit(ov, create=True)
        return {"VaultPath": str(self.store.path), "Account": body["account"], "VaultId": body["vault_id"],
                "AuditLog": str(self.audit_path)}

    def Unlock(self, TtlSeconds: int, IdleSeconds: int | None,
               start_session: Callable[[bytes, bytes], str]) -> dict[str, Any]:
        """Unlock the vault once and hand its key to ``start_session`` (the agent starter).

        ``start_session(vault_key, header_bytes)`` returns the session id. It runs
        inside the audited call, so a wrong passphrase or an agent that fails to
        start is recorded as a failed Unlock, and a session is never started
        without its record. Not an AWS operation: sessions are local.
        """
        # A session must not mint a longer-lived session of itself.
        self._require_passphrase("unlock", "Unlock")

        def unlock(ov: OpenVault, call: _Call) -> dict[str, Any]:
            session_id = start_session(ov.vault_key, ov.header.raw)
            call.response["sessionId"] = session_id
            return {"SessionId": session_id}

        return self._read("Unlock", {"ttlSeconds": TtlSeconds, "idleSeconds": IdleSeconds}, unlock)

    def ChangePassphrase(self, new_passphrase: bytes | Callable[[], bytes],
                         kdf: F.KdfParams | None = None) -> dict[str, Any]:
        """Rotate the vault key under a new passphrase (and KDF settings).

        The body is sealed under a new random vault key, so an old copy of the
        vault and the old passphrase open nothing written from now on; the audit
        chain continues under a chain key derived from the new vault key, from
        this call's own record on. Never through a session: a session must not
        outlive its TTL by changing the passphrase under its owner. A callable
        ``new_passphrase`` is asked only once the current passphrase opened the
        vault, as passwd, ssh-keygen and gpg ask.
        """
        from .crypto import primitives as P

        self._require_passphrase("passwd", "ChangePassphrase")
        request: dict[str, Any] = {}
        if kdf is not None:
            request.update(kdfMemoryKiB=kdf.memory_kib, kdfTime=kdf.time_cost, kdfParallelism=kdf.parallelism)
        with self._refusing("ChangePassphrase", request):
            if kdf is not None:
                why = kdf.bounds_error()
                if why is not None:
                    raise errors.ValidationException(why)
        if callable(new_passphrase):
            self._open_recording(_Call("ChangePassphrase", request))  # the current passphrase, checked first
            new_passphrase = new_passphrase()
        with self._refusing("ChangePassphrase", request):
            if not new_passphrase:
                raise errors.ValidationException("the new passphrase must not be empty")
        new_secret: bytes = new_passphrase

        def change(ov: OpenVault, call: _Call) -> dict[str, Any]:
            params = kdf or ov.header.kdf
            chain_keys = _chain_keys(ov)  # before the key changes: a 0.1.0 vault derives its first from it
            salt = P.random_bytes(F.SALT_SIZE)
            kek = P.argon2id(new_secret, salt, params.memory_kib, params.time_cost, params.parallelism)
            new_key = P.random_bytes(F.VAULT_KEY_SIZE)
            ov.header = F.build_header(params, salt, kek, new_key, P.random_bytes(P.NONCE_SIZE))
            ov.vault_key = new_key
            # from_seq is filled in by _commit with this call's record: the first under the new key.
            chain_keys.append({"from_seq": None, "key": _chain_key_hex(new_key)})
            call.response.update(kdfMemoryKiB=params.memory_kib, kdfTime=params.time_cost,
                                 kdfParallelism=params.parallelism)
            return {}

        return self._mutate("ChangePassphrase", request, change)

    # =================================================================
    # Keys
    # =================================================================
    def CreateKey(
        self,
        Description: str = "",
        Tags: list[dict[str, str]] | None = None,
        Policy: str | None = None,
        BypassPolicyLockoutSafetyCheck: bool = False,
        KeySpec: str = "SYMMETRIC_DEFAULT",
        KeyUsage: str = "ENCRYPT_DECRYPT",
        AliasName: str | None = None,
    ) -> dict[str, Any]:
        """Create a symmetric key (and, beyond AWS, its first alias in the same write)."""
        request = {"description": Description, "keySpec": KeySpec, "keyUsage": KeyUsage,
                   "tags": Tags or [], "bypassPolicyLockoutSafetyCheck": BypassPolicyLockoutSafetyCheck}
        if Policy is not None:
            request["policy"] = Policy
        if AliasName is not None:
            request["aliasName"] = AliasName
        with self._refusing("CreateKey", request):
            ids.validate_description(Description)
            if KeySpec != "SYMMETRIC_DEFAULT" or KeyUsage != "ENCRYPT_DECRYPT":
                raise errors.ValidationException("kmscli makes SYMMETRIC_DEFAULT keys for ENCRYPT_DECRYPT only")
            tags = _tag_dict(Tags or [])
            if AliasName is not None:
                ids.validate_alias_name(AliasName)

        def create(ov: OpenVault, call: _Call) -> dict[str, Any]:
            from .crypto import primitives as P

            account = ov.body["account"]
            key_id = ids.new_key_id()
            policy = self._checked_policy(Policy, account, BypassPolicyLockoutSafetyCheck, key_id)
            if AliasName is not None and AliasName in ov.body["aliases"]:
                raise errors.AlreadyExistsException(
                    f"An alias with the name {ids.alias_arn(account, AliasName)} already exists"
                )
            now = iso(self.clock())
            key = {
                "KeyId": key_id,
                "CreationDate": now,
                "Description": Description,
                "KeyState": KeyState.ENABLED.value,
                "DeletionDate": None,
                "PendingDeletionWindowInDays": None,
                "Tags": tags,
                "Policy": policy,
                "Rotation": {"Enabled": False, "PeriodInDays": ROTATION_PERIOD_DEFAULT, "NextRotationDate": None,
                             "MinDecryptVersion": 1, "OnDemandCount": 0},
                "Materials": [_new_material(1, now, None, P.random_bytes(MATERIAL_SIZE))],
            }
            if AliasName is not None:
                # The alias is made by this call as if by CreateAlias: the new
                # key's own policy decides, an explicit Deny included.
                self._authorize(ov, call, key, "kms:CreateAlias")
            ov.body["keys"][key_id] = key
            if AliasName is not None:
                ov.body["aliases"][AliasName] = {"TargetKeyId": key_id, "CreationDate": now, "LastUpdatedDate": now}
            call.response = {"keyId": key_id, "keyState": key["KeyState"]}
            call.resources.append(ids.key_arn(account, key_id))
            return {"KeyMetadata": self._metadata(ov, key)}

        return self._mutate("CreateKey", request, create)

    def DescribeKey(self, KeyId: str) -> dict[str, Any]:
        def describe(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:DescribeKey")
            return {"KeyMetadata": self._metadata(ov, key)}

        return self._read("DescribeKey", {"keyId": KeyId}, describe)

    def ListKeys(self, IncludePendingDeletion: bool = True) -> dict[str, Any]:
        """Every key's metadata, oldest first (AWS lists ids only; the SPEC asks for metadata)."""

        def list_(ov: OpenVault, call: _Call) -> dict[str, Any]:
            keys = sorted(ov.body["keys"].values(), key=lambda k: (k["CreationDate"], k["KeyId"]))
            if not IncludePendingDeletion:
                keys = [k for k in keys if k["KeyState"] != KeyState.PENDING_DELETION]
            return {"Keys": [self._metadata(ov, k) for k in keys], "Truncated": False}

        return self._read("ListKeys", {"includePendingDeletion": IncludePendingDeletion}, list_)

    def EnableKey(self, KeyId: str) -> dict[str, Any]:
        return self._set_state("EnableKey", KeyId, KeyState.ENABLED)

    def DisableKey(self, KeyId: str) -> dict[str, Any]:
        return self._set_state("DisableKey", KeyId, KeyState.DISABLED)

    def _set_state(self, event: str, key_ref: str, state: KeyState) -> dict[str, Any]:
        def change(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, key_ref, "kms:" + event)
            self._require_not_pending(ov, key)
            key["KeyState"] = state.value
            if state is KeyState.ENABLED:
                # AWS rotates overdue material as soon as a key is enabled again.
                self._rotate_if_due(ov, key)
            call.response["keyState"] = state.value
            return {}

        return self._mutate(event, {"keyId": key_ref}, change)

    def ScheduleKeyDeletion(self, KeyId: str, PendingWindowInDays: int = DELETION_WINDOW_DEFAULT) -> dict[str, Any]:
        request = {"keyId": KeyId, "pendingWindowInDays": PendingWindowInDays}
        with self._refusing("ScheduleKeyDeletion", request):
            _check_range("PendingWindowInDays (--days)", PendingWindowInDays, DELETION_WINDOW_MIN,
                         DELETION_WINDOW_MAX)

        def schedule(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:ScheduleKeyDeletion",
                            {"kms:ScheduleKeyDeletionPendingWindowInDays": PendingWindowInDays})
            if key["KeyState"] == KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")
            when = iso(self.clock() + timedelta(days=PendingWindowInDays))
            key.update(KeyState=KeyState.PENDING_DELETION.value, DeletionDate=when,
                       PendingDeletionWindowInDays=PendingWindowInDays)
            call.response.update(keyState=key["KeyState"], deletionDate=when)
            return {"KeyId": self._arn(ov, key), "DeletionDate": when, "KeyState": key["KeyState"],
                    "PendingWindowInDays": PendingWindowInDays}

        return self._mutate("ScheduleKeyDeletion", request, schedule)

    def CancelKeyDeletion(self, KeyId: str) -> dict[str, Any]:
        def cancel(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:CancelKeyDeletion")
            if key["KeyState"] != KeyState.PENDING_DELETION:
                raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is not pending deletion.")
            # As in AWS KMS, a cancelled key comes back Disabled, not Enabled.
            key.update(KeyState=KeyState.DISABLED.value, DeletionDate=None, PendingDeletionWindowInDays=None)
            call.response["keyState"] = key["KeyState"]
            return {"KeyId": self._arn(ov, key)}

        return self._mutate("CancelKeyDeletion", {"keyId": KeyId}, cancel)

    def UpdateKeyDescription(self, KeyId: str, Description: str) -> dict[str, Any]:
        request = {"keyId": KeyId, "description": Description}
        with self._refusing("UpdateKeyDescription", request):
            ids.validate_description(Description)

        def update(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:UpdateKeyDescription")
            self._require_not_pending(ov, key)
            key["Description"] = Description
            return {}

        return self._mutate("UpdateKeyDescription", request, update)

    def TagResource(self, KeyId: str, Tags: list[dict[str, str]]) -> dict[str, Any]:
        request = {"keyId": KeyId, "tags": Tags}
        with self._refusing("TagResource", request):
            new = _tag_dict(Tags)
            if not new:
                raise errors.ValidationException("give at least one tag as KEY=VALUE")

        def tag(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:TagResource")
            self._require_not_pending(ov, key)
            merged = {**key["Tags"], **new}
            if len(merged) > TAGS_PER_KEY_MAX:
                raise errors.TagException(f"a key can have at most {TAGS_PER_KEY_MAX} tags (would have {len(merged)})")
            key["Tags"] = merged
            return {}

        return self._mutate("TagResource", request, tag)

    def UntagResource(self, KeyId: str, TagKeys: list[str]) -> dict[str, Any]:
        request = {"keyId": KeyId, "tagKeys": TagKeys}
        with self._refusing("UntagResource", request):
            if not TagKeys:
                raise errors.ValidationException("give at least one tag key to remove")
            for k in TagKeys:
                ids.validate_tag(k, "")

        def untag(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:UntagResource")
            self._require_not_pending(ov, key)
            for k in TagKeys:  # removing a tag that is not there is a no-op, as in AWS
                key["Tags"].pop(k, None)
            return {}

        return self._mutate("UntagResource", request, untag)

    # =================================================================
    # Aliases
    # =================================================================
    def CreateAlias(self, AliasName: str, TargetKeyId: str) -> dict[str, Any]:
        request = {"aliasName": AliasName, "targetKeyId": TargetKeyId}
        with self._refusing("CreateAlias", request):
            ids.validate_alias_name(AliasName)

        def create(ov: OpenVault, call: _Call) -> dict[str, Any]:
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

        def update(ov: OpenVault, call: _Call) -> dict[str, Any]:
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

        def delete(ov: OpenVault, call: _Call) -> dict[str, Any]:
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
        from .model import alias_entry

        def list_(ov: OpenVault, call: _Call) -> dict[str, Any]:
            target = None
            if KeyId is not None:
                target = self._key(ov, call, KeyId, "kms:ListAliases")["KeyId"]
            account = ov.body["account"]
            out = [alias_entry(account, name, a) for name, a in sorted(ov.body["aliases"].items())
                   if target is None or a["TargetKeyId"] == target]
            return {"Aliases": out, "Truncated": False}

        return self._read("ListAliases", {"keyId": KeyId} if KeyId else {}, list_)

    # =================================================================
    # Key policies
    # =================================================================
    def GetKeyPolicy(self, KeyId: str, PolicyName: str = "default") -> dict[str, Any]:
        request = {"keyId": KeyId, "policyName": PolicyName}
        with self._refusing("GetKeyPolicy", request):
            _check_policy_name(PolicyName)

        def get(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:GetKeyPolicy")
            return {"Policy": key["Policy"], "PolicyName": "default"}

        return self._read("GetKeyPolicy", request, get)

    def PutKeyPolicy(self, KeyId: str, Policy: str, PolicyName: str = "default",
                     BypassPolicyLockoutSafetyCheck: bool = False) -> dict[str, Any]:
        request = {"keyId": KeyId, "policyName": PolicyName, "policy": Policy,
                   "bypassPolicyLockoutSafetyCheck": BypassPolicyLockoutSafetyCheck}
        with self._refusing("PutKeyPolicy", request):
            _check_policy_name(PolicyName)

        def put(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:PutKeyPolicy")
            key["Policy"] = self._checked_policy(Policy, ov.body["account"], BypassPolicyLockoutSafetyCheck,
                                                 key["KeyId"])
            return {}

        return self._mutate("PutKeyPolicy", request, put)

    # =================================================================
    # Rotation
    # =================================================================
    def EnableKeyRotation(self, KeyId: str, RotationPeriodInDays: int = ROTATION_PERIOD_DEFAULT) -> dict[str, Any]:
        request = {"keyId": KeyId, "rotationPeriodInDays": RotationPeriodInDays}
        with self._refusing("EnableKeyRotation", request):
            _check_range("RotationPeriodInDays (--days)", RotationPeriodInDays, ROTATION_PERIOD_MIN,
                         ROTATION_PERIOD_MAX)

        def enable(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:EnableKeyRotation",
                            {"kms:RotationPeriodInDays": RotationPeriodInDays})
            self._require_enabled(ov, key)
            rot = key["Rotation"]
            rot.update(Enabled=True, PeriodInDays=RotationPeriodInDays,
                       NextRotationDate=iso(self.clock() + timedelta(days=RotationPeriodInDays)))
            return {}

        return self._mutate("EnableKeyRotation", request, enable)

    def DisableKeyRotation(self, KeyId: str) -> dict[str, Any]:
        def disable(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:DisableKeyRotation")
            self._require_enabled(ov, key)
            key["Rotation"].update(Enabled=False, NextRotationDate=None)
            return {}

        return self._mutate("DisableKeyRotation", {"keyId": KeyId}, disable)

    def SetMinDecryptVersion(self, KeyId: str, MinDecryptVersion: int) -> dict[str, Any]:
        """Beyond AWS (Vault's min_decryption_version): refuse ciphertexts under older material."""

        def set_min(ov: OpenVault, call: _Call) -> dict[str, Any]:
            # No AWS action covers this extension; it is rotation configuration,
            # so it needs the permission that turns rotation on.
            key = self._key(ov, call, KeyId, "kms:EnableKeyRotation")
            self._require_not_pending(ov, key)
            latest = key["Materials"][-1]["Version"]
            _check_range("--min-decrypt-version", MinDecryptVersion, 1, latest)
            key["Rotation"]["MinDecryptVersion"] = MinDecryptVersion
            return {}

        return self._mutate("SetMinDecryptVersion", {"keyId": KeyId, "minDecryptVersion": MinDecryptVersion},
                            set_min)

    def GetKeyRotationStatus(self, KeyId: str) -> dict[str, Any]:
        def status(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:GetKeyRotationStatus")
            rot = key["Rotation"]
            enabled = rot["Enabled"] and key["KeyState"] != KeyState.PENDING_DELETION
            out: dict[str, Any] = {"KeyId": self._arn(ov, key), "KeyRotationEnabled": enabled,
                                   "MinDecryptVersion": rot["MinDecryptVersion"]}
            if enabled:
                out.update(RotationPeriodInDays=rot["PeriodInDays"], NextRotationDate=rot["NextRotationDate"])
            return out

        return self._read("GetKeyRotationStatus", {"keyId": KeyId}, status)

    def RotateKeyOnDemand(self, KeyId: str) -> dict[str, Any]:
        def rotate(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:RotateKeyOnDemand")
            self._require_enabled(ov, key)
            if key["Rotation"]["OnDemandCount"] >= ON_DEMAND_ROTATIONS_MAX:
                raise errors.LimitExceededException(
                    f"{self._arn(ov, key)} has been rotated on demand {ON_DEMAND_ROTATIONS_MAX} times, "
                    "the most AWS KMS allows"
                )
            key["Rotation"]["OnDemandCount"] += 1
            material = self._add_material(key, "ON_DEMAND")
            call.response["keyMaterialId"] = material["KeyMaterialId"]
            return {"KeyId": key["KeyId"]}

        return self._mutate("RotateKeyOnDemand", {"keyId": KeyId}, rotate)

    def ListKeyRotations(self, KeyId: str) -> dict[str, Any]:
        def list_(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:ListKeyRotations")
            current = key["Materials"][-1]["Version"]
            out = []
            for m in key["Materials"]:
                entry: dict[str, Any] = {
                    "KeyId": key["KeyId"],
                    "KeyMaterialId": m["KeyMaterialId"],
                    "KeyMaterialState": "CURRENT" if m["Version"] == current else "NON_CURRENT",
                }
                if m["RotationType"] is not None:  # the original material was not a rotation
                    entry.update(RotationDate=m["CreationDate"], RotationType=m["RotationType"])
                out.append(entry)
            return {"Rotations": out, "Truncated": False}

        return self._read("ListKeyRotations", {"keyId": KeyId}, list_)

    # =================================================================
    # Cryptographic operations
    # =================================================================
    def Encrypt(self, KeyId: str, reader: BinaryIO, writer: BinaryIO,
                EncryptionContext: dict[str, str] | None = None, progress: Any = None) -> dict[str, Any]:
        """Envelope-encrypt everything ``reader`` yields onto ``writer``."""
        from .crypto import stream

        request = {"keyId": KeyId, "encryptionContext": dict(EncryptionContext or {})}
        with self._refusing("Encrypt", request):
            context = _context(EncryptionContext)

        def encrypt(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:Encrypt", _context_conditions(context))
            self._require_enabled(ov, key)
            material = key["Materials"][-1]
            self._audit_log(ov).preflight()  # fail closed before output that cannot be taken back
            n = stream.encrypt_stream(reader, writer, master_key=_material(material), key_id=key["KeyId"],
                                      material_version=material["Version"], context=context, progress=progress)
            call.request["inputBytes"] = n
            call.response["keyMaterialId"] = material["KeyMaterialId"]
            return {"KeyId": self._arn(ov, key), "KeyMaterialId": material["KeyMaterialId"],
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

        return self._read("Encrypt", request, encrypt)

    def Decrypt(self, reader: BinaryIO, writer: BinaryIO, EncryptionContext: dict[str, str] | None = None,
                KeyId: str | None = None, progress: Any = None) -> dict[str, Any]:
        """Decrypt a kmscli ciphertext; the key comes from the ciphertext, ``KeyId`` only asserts it."""
        from .crypto import stream

        request: dict[str, Any] = {"encryptionContext": dict(EncryptionContext or {})}
        if KeyId is not None:
            request["keyId"] = KeyId
        with self._refusing("Decrypt", request):
            context = _context(EncryptionContext)

        def decrypt(ov: OpenVault, call: _Call) -> dict[str, Any]:
            header = stream.read_header(reader)
            key, material = self._ciphertext_key(ov, call, header, KeyId, "kms:Decrypt", context)
            call.response["keyMaterialId"] = material["KeyMaterialId"]
            self._audit_log(ov).preflight()
            # The record that releases plaintext is on disk before its first byte
            # leaves (after the header and first chunk authenticated, so a wrong
            # context is one failed record): a call stopped half-way has it.
            gated = _RecordFirst(writer, lambda: self._record_before_release(ov, call))
            n = stream.decrypt_stream(header, reader, gated, master_key=_material(material), context=context,
                                      progress=progress)
            call.response["outputBytes"] = n
            return {"KeyId": self._arn(ov, key), "KeyMaterialId": material["KeyMaterialId"],
                    "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

        return self._read("Decrypt", request, decrypt)

    def ReEncrypt(self, reader: BinaryIO, writer: BinaryIO, DestinationKeyId: str,
                  SourceEncryptionContext: dict[str, str] | None = None,
                  DestinationEncryptionContext: dict[str, str] | None = None,
                  SourceKeyId: str | None = None) -> dict[str, Any]:
        """Move a ciphertext to another key, material or context without releasing its plaintext."""
        from .crypto import stream

        request: dict[str, Any] = {"destinationKeyId": DestinationKeyId,
                                   "sourceEncryptionContext": dict(SourceEncryptionContext or {}),
                                   "destinationEncryptionContext": dict(DestinationEncryptionContext or {})}
        if SourceKeyId is not None:
            request["sourceKeyId"] = SourceKeyId
        with self._refusing("ReEncrypt", request):
            src_ctx, dst_ctx = _context(SourceEncryptionContext), _context(DestinationEncryptionContext)

        def reencrypt(ov: OpenVault, call: _Call) -> dict[str, Any]:
            header = stream.read_header(reader)
            dst = self._resolve(ov, call, DestinationKeyId)
            # kms:RequestAlias is per key: the destination's alias must not
            # stand for the source key in its ReEncryptFrom check, nor the reverse.
            dst_alias, call.alias = call.alias, None
            same = dst["KeyId"] == header.key_id
            src, src_material = self._ciphertext_key(ov, call, header, SourceKeyId, "kms:ReEncryptFrom", src_ctx,
                                                     {"kms:ReEncryptOnSameKey": same})
            call.alias = dst_alias
            self._authorize(ov, call, dst, "kms:ReEncryptTo",
                            {**_context_conditions(dst_ctx), "kms:ReEncryptOnSameKey": same})
            self._require_enabled(ov, dst)
            dst_material = dst["Materials"][-1]
            self._audit_log(ov).preflight()
            stream.rewrap_stream(header, reader, writer, old_master_key=_material(src_material), context=src_ctx,
                                 new_master_key=_material(dst_material), new_key_id=dst["KeyId"],
                                 new_material_version=dst_material["Version"], new_context=dst_ctx)
            call.response.update(keyId=dst["KeyId"], sourceKeyId=src["KeyId"])
            return {"KeyId": self._arn(ov, dst), "SourceKeyId": self._arn(ov, src),
                    "SourceKeyMaterialId": src_material["KeyMaterialId"],
                    "DestinationKeyMaterialId": dst_material["KeyMaterialId"],
                    "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                    "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

        return self._read("ReEncrypt", request, reencrypt)

    def GenerateDataKey(self, KeyId: str, KeySpec: str | None = None, NumberOfBytes: int | None = None,
                        EncryptionContext: dict[str, str] | None = None) -> dict[str, Any]:
        return self._data_key("GenerateDataKey", KeyId, KeySpec, NumberOfBytes, EncryptionContext, True)

    def GenerateDataKeyWithoutPlaintext(self, KeyId: str, KeySpec: str | None = None,
                                        NumberOfBytes: int | None = None,
                                        EncryptionContext: dict[str, str] | None = None) -> dict[str, Any]:
        return self._data_key("GenerateDataKeyWithoutPlaintext", KeyId, KeySpec, NumberOfBytes,
                              EncryptionContext, False)

    def _data_key(self, event: str, key_ref: str, spec: str | None, nbytes: int | None,
                  ec: dict[str, str] | None, with_plaintext: bool) -> dict[str, Any]:
        from .crypto import primitives as P
        from .crypto import stream

        request: dict[str, Any] = {"keyId": key_ref, "encryptionContext": dict(ec or {})}
        request.update({"keySpec": spec} if spec else {"numberOfBytes": nbytes})
        with self._refusing(event, request):
            if (spec is None) == (nbytes is None):
                raise errors.ValidationException("give exactly one of --spec (KeySpec) or --bytes (NumberOfBytes)")
            if spec is not None and spec not in DATA_KEY_SPECS:
                raise errors.ValidationException(f"KeySpec must be AES_256 or AES_128 (got '{spec}')")
            if nbytes is not None:
                _check_range("NumberOfBytes (--bytes)", nbytes, RANDOM_BYTES_MIN, RANDOM_BYTES_MAX)
            context = _context(ec)
        size = DATA_KEY_SPECS[spec] if spec is not None else nbytes
        assert size is not None

        def generate(ov: OpenVault, call: _Call) -> dict[str, Any]:
            key = self._key(ov, call, key_ref, "kms:" + event, _context_conditions(context))
            self._require_enabled(ov, key)
            material = key["Materials"][-1]
            plaintext = P.random_bytes(size)
            blob = stream.encrypt_bytes(plaintext, master_key=_material(material), key_id=key["KeyId"],
                                        material_version=material["Version"], context=context)
            out = {"KeyId": self._arn(ov, key), "KeyMaterialId": material["KeyMaterialId"],
                   "CiphertextBlob": base64.b64encode(blob).decode()}
            if with_plaintext:
                out["Plaintext"] = base64.b64encode(plaintext).decode()
            return out

        return self._read(event, request, generate)

    @staticmethod
    def GenerateRandom(NumberOfBytes: int) -> bytes:
        """Random bytes from the OS CSPRNG; needs no vault and is not audited (SPEC)."""
        _check_range("NumberOfBytes", NumberOfBytes, RANDOM_BYTES_MIN, RANDOM_BYTES_MAX)
        return os.urandom(NumberOfBytes)

    # =================================================================
    # Audit log
    # =================================================================
    def VerifyAuditLog(self, Strict: bool = False, Witness: str | None = None) -> dict[str, Any]:
        """Check the whole log against the vault's chain keys, its last head and an optional witness."""
        request: dict[str, Any] = {"strict": Strict}
        if Witness is not None:
            request["head"] = Witness
        with self._refusing("VerifyAuditLog", request):
            witness = _parse_witness(Witness) if Witness is not None else None
        call = _Call("VerifyAuditLog", request)
        # Opened without the quick tail check: verify reads every line and says
        # more precisely where the log went wrong.
        ov = self._open_recording(call, check_log=False)
        log = self._audit_log(ov)
        try:
            lines = (ov.body.get("audit_head") or {}).get("lines")
            if lines:
                log.complete(lines)  # what a crash kept out of the log, the vault still holds
            report = log.verify(self._ring(ov), _head(ov.body.get("audit_head")), witness=witness, strict=Strict)
            problem = self._log_problem(ov, log.tail())
            if problem is not None:
                raise errors.AuditVerificationException(problem)
        except errors.KmsError as e:
            # A damaged log may refuse the record too; the verdict matters more than its record.
            # A missing one is not started afresh by it: that would only hide what happened.
            if log.exists():
                with contextlib.suppress(errors.KmsError):
                    self._record(ov, call, e)
            raise
        call.response.update(records=report.records, files=report.files, unauthenticated=report.unkeyed)
        self._record(ov, call)
        return {"Records": report.records, "Files": report.files, "Keyed": report.keyed,
                "Unkeyed": report.unkeyed, "Unauthenticated": list(report.unauthenticated)}

    def GetAuditHead(self) -> dict[str, Any]:
        """Record this call and return its own chain head, as ``SEQ:MAC`` for a witness to keep."""
        call = _Call("GetAuditHead", {})
        ov = self._open_recording(call)
        head = self._record(ov, call)
        assert head is not None
        return {"Head": f"{head.seq}:{head.mac}", "Seq": head.seq, "Mac": head.mac}

    def RestartAuditLog(self) -> dict[str, Any]:
        """After a log was lost or damaged: move its files aside and start a new chain that says so.

        Needs the passphrase (never a session): it is the one act that accepts
        a log the vault cannot vouch for, so it must be the owner's. The new
        log's first record is keyed and names the vault's last known head.
        """
        self._require_passphrase("audit restart", "RestartAuditLog")
        call = _Call("RestartAuditLog", {})
        self._open_recording(call, check_log=False)  # the KDF runs before the lock
        with self.store.locked():
            self.store.remove_stale_temps()
            ov = self._open_recording(call, check_log=False)
            log = self._audit_log(ov)
            head = ov.body.get("audit_head") or {}
            stamp = self.clock().strftime("%Y%m%dT%H%M%SZ")
            moved = log.retire(f".retired-{stamp}-{os.urandom(3).hex()}")
            epoch = int(ov.body.get("audit_epoch", 0)) + 1
            ring = self._ring(ov)
            ov.body.update(audit_epoch=epoch, audit_head=None,
                           chain_keys=[{"from_seq": 1, "key": ring.current.hex()}])
            call.request.update(
                previousHead=({"seq": head["seq"], "mac": head["mac"], "fileIndex": head["file_index"]}
                              if head else None),
                previousVaultGeneration=ov.body.get("generation", 0), retiredFiles=moved, epoch=epoch)
            ov.pending = []
            self._record(ov, call)
            self._commit(ov)
        return {"RetiredFiles": moved, "Epoch": epoch}

    def ReadAuditLog(self, KeyId: str | None = None, Operation: str | None = None,
                     Since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """The audit records, oldest first, filtered; reading needs no passphrase."""

        log = self._audit_log(None)
        return log.read(key_id=KeyId, operation=Operation, since=Since)

    # =================================================================
    # Machinery
    # =================================================================
    def _require_passphrase(self, command: str, event: str) -> None:
        """Refuse (and record, when the session opens the vault) a call only the passphrase may make."""
        if isinstance(self.keys, PassphraseKeySource):
            return
        refusal = errors.InvalidSessionException(
            f"'{command}' needs the vault's passphrase and never runs through a session; "
            "run it without KMSCLI_SESSION (the passphrase comes from --passphrase-file, "
            "KMSCLI_PASSPHRASE or the terminal)"
        )
        with contextlib.suppress(errors.KmsError):
            self._record(self.store.open(self.keys), _Call(event, {}), refusal)
        raise refusal

    @contextlib.contextmanager
    def _refusing(self, event: str, request: dict[str, Any]) -> Iterator[None]:
        """Record a request refused by validation, before anything else happens.

        Validation comes first, so nothing is done for a bad request; its record
        is keyed like every other (only a failed unlock may be unkeyed), so the
        vault is opened for it. When it cannot be unlocked, the failed unlock is
        what gets recorded; the caller still sees the validation error.
        """
        try:
            yield
        except errors.KmsError as e:
            call = _Call(event, request)
            try:
                ov = self.store.open(self.keys)
            except errors.UnlockError as u:
                with contextlib.suppress(errors.KmsError):
                    self._record(None, call, u)
                raise e from None
            except errors.KmsError:
                raise e from None  # no vault (or an unreadable one): nothing to record in
            self._record(ov, call, e)
            raise

    def _read(self, event: str, request: dict[str, Any],
              fn: Callable[[OpenVault, _Call], dict[str, Any]]) -> dict[str, Any]:
        """Run an operation that changes nothing in the vault: no lock taken."""
        call = _Call(event, request)
        ov = self._open_recording(call)
        if self._due_events(ov):
            # Something fell due: apply it under the lock and write it, then
            # answer without the lock, so a long stream never blocks writers.
            with self.store.locked():
                ov = self._open_recording(call)
                ov.pending = []
                if self._apply_due_events(ov):
                    self._commit(ov)
                ov.pending = None
        try:
            result = fn(ov, call)
        except errors.KmsError as e:
            self._record_outcome(ov, call, e)
            raise
        except BaseException as e:
            if call.event_id is not None:  # released output, then died: say so after its record
                with contextlib.suppress(BaseException):
                    self._record_outcome(ov, call, errors.KMSInternalException(
                        f"the call stopped after its output began ({type(e).__name__})"))
            raise
        if call.event_id is None:
            self._record(ov, call)
        return result

    def _mutate(self, event: str, request: dict[str, Any],
                fn: Callable[[OpenVault, _Call], dict[str, Any]]) -> dict[str, Any]:
        return self._mutate_call(_Call(event, request), fn, write=True)

    def _mutate_call(self, call: _Call, fn: Callable[[OpenVault, _Call], dict[str, Any]],
                     write: bool = True) -> dict[str, Any]:
        """Read-modify-write under the vault's exclusive lock."""
        # Derive the key before queueing for the lock, so writers wait for
        # milliseconds of AEAD work rather than for each other's Argon2 runs.
        self._open_recording(call)
        with self.store.locked():
            self.store.remove_stale_temps()
            ov = self._open_recording(call)
            ov.pending = []
            events_changed = self._apply_due_events(ov)
            try:
                result = fn(ov, call)
            except errors.KmsError as e:
                self._record(ov, call, e)
                if events_changed:
                    self._commit(ov)
                else:
                    self._flush(ov)
                raise
            self._record(ov, call)
            if write or events_changed:
                self._commit(ov)
            else:
                self._flush(ov)
        return result

    def _open_recording(self, call: _Call, *, check_log: bool = True) -> OpenVault:
        """Open the vault and check its log; a failed unlock is recorded without the key, then raised.

        The log check refuses (exit 8) a log cut back behind the vault's last
        write and a vault older than its log, and completes an append that a
        crash cut off between the vault's write and the log's.
        """
        for _attempt in range(100):
            try:
                ov = self.store.open(self.keys)
            except errors.UnlockError as e:
                try:
                    self._record(None, call, e)
                except errors.AuditLogException as a:
                    # Nothing is released by a failed unlock: say it, not a log problem instead.
                    raise type(e)(f"{e.message} (the failed attempt could not be recorded: {a.message})") from None
                raise
            try:
                self._check_audit_location(ov)
            except errors.KmsError as e:
                self._record_where_it_belongs(ov, call, e)
                raise
            if not check_log:
                return ov
            problem = self._check_log(ov)
            if problem is None:
                return ov
            if problem.startswith("the vault is older") and self.store.changed_since(ov):
                # Writers replace the vault before they append its records: a
                # log newer than the vault we read is a rollback only if that
                # vault is still the one on disk. Otherwise read the new one.
                continue
            raise errors.AuditLogException(problem)
        raise errors.AuditLogException("the vault kept changing while this call read it (100 times); run it again")

    def _check_audit_location(self, ov: OpenVault) -> None:
        """The log is the vault's own, fixed at init: naming another one is refused (exit 2)."""
        from .vault.store import check_private_folder

        fixed = self._log_path(ov)
        if self.requested_audit_path is not None and os.path.realpath(self.requested_audit_path) != os.path.realpath(
            fixed
        ):
            raise errors.ValidationException(
                f"this vault's audit log is {fixed}, fixed when the vault was created; it cannot be sent to "
                f"{self.requested_audit_path} (drop --audit-log / KMSCLI_AUDIT_LOG)"
            )
        check_private_folder(fixed.parent, "the audit log")

    def _record_where_it_belongs(self, ov: OpenVault, call: _Call, e: errors.KmsError) -> None:
        """Record a refusal in the vault's own log (never in the one the caller named)."""
        saved, self.requested_audit_path = self.requested_audit_path, None
        try:
            with contextlib.suppress(errors.KmsError):
                self._record(ov, call, e)
        finally:
            self.requested_audit_path = saved

    def _check_log(self, ov: OpenVault) -> str | None:
        """What is wrong between the vault and its log (None: nothing), after completing a cut-off append."""
        log = self._audit_log(ov)
        problem = self._log_problem(ov, log.tail())
        if problem is None:
            return None
        lines = (ov.body.get("audit_head") or {}).get("lines")
        if not lines:
            return problem
        # Under the log's lock: either a crash kept these records out (they are
        # appended now), or their writer was still appending them a moment ago.
        log.complete(lines)
        return self._log_problem(ov, log.tail())

    def _log_problem(self, ov: OpenVault, tail: Any) -> str | None:
        from . import audit

        head = ov.body.get("audit_head")
        if not head:
            return None
        path = self._log_path(ov)
        hint = ("; if you cannot restore the files, 'kmscli audit restart' starts a new log that records this "
                "(it needs the passphrase)")
        last = tail.last_keyed
        if last is None:
            return (f"the audit log {path} is missing or holds no record written with the key, but the vault's "
                    f"last write recorded record {head['seq']}: the log was deleted, cut or replaced{hint}")
        seq = last[audit.SEQ_FIELD]
        if not audit.record_mac_ok(self._ring(ov).key_for(seq), last):
            return (f"the last keyed record of the audit log {path} (record {seq}) was not written under this "
                    f"vault's key: the log was replaced{hint}")
        if seq < head["seq"] or (seq == head["seq"] and last[audit.MAC_FIELD] != head["mac"]):
            return (f"the audit log {path} was cut or rolled back: its last keyed record is record {seq}, "
                    f"but the vault's last write recorded record {head['seq']}{hint}")
        generation = (last.get("additionalEventData") or {}).get(audit.GENERATION_FIELD)
        if isinstance(generation, int) and generation > ov.body.get("generation", 0):
            return (f"the vault is older than its audit log: the log records vault generation {generation}, "
                    f"the vault {self.store.path} is at generation {ov.body.get('generation', 0)}: the vault file "
                    "was rolled back (restored from an older copy); restore the newest copy of the vault")
        return None

    def _commit(self, ov: OpenVault, create: bool = False) -> None:
        """Write the vault and append its pending records as one unit (call with the lock held).

        Under the log's lock the records are sealed, the vault is written
        carrying their lines and its new head, then the lines are appended: a
        crash in between leaves a vault whose records the next command appends.
        """
        records = ov.pending or []
        ov.pending = None
        keys = _chain_keys(ov)
        rekey = next((k for k in keys if k["from_seq"] is None), None)
        written = False

        def before_write(lines: list[str], heads: list[Any]) -> None:
            nonlocal written
            if rekey is not None:
                rekey["from_seq"] = heads[-1].seq  # this call's record is the first under the new key
            last = heads[-1]
            ov.body["audit_head"] = {"file_index": last.file_index, "seq": last.seq, "mac": last.mac,
                                     "lines": lines}
            self.store.write(F.seal_body(ov.header, ov.vault_key, ov.body), create=create)
            written = True

        ov.body["generation"] = ov.body.get("generation", 0) + 1
        try:
            self._audit_log(ov).append_batch(
                records, self._ring(ov), before_write=before_write,
                next_key=bytes.fromhex(rekey["key"]) if rekey is not None else None,
                switch_at=len(records) - 1 if rekey is not None else None,
            )
        except errors.AuditLogException as e:
            if not written:
                raise
            raise errors.AuditLogException(
                f"the vault was written (the change is in place, and the vault holds its audit record), but "
                f"appending the record to the log failed ({e.message}); the next command appends it"
            ) from None

    def _flush(self, ov: OpenVault) -> None:
        """Append pending records that need no vault write (a refused change)."""
        from . import audit

        records = ov.pending or []
        ov.pending = None
        for r in records:  # no write after all: they saw the generation the vault keeps
            r["additionalEventData"] = {audit.GENERATION_FIELD: ov.body.get("generation", 0)}
        if records:
            self._audit_log(ov).append_batch(records, self._ring(ov))

    def _log_path(self, ov: OpenVault) -> Path:
        stored = ov.body.get("audit_log")
        return Path(stored) if stored else self.store.path.with_name(AUDIT_FILE)

    def _ring(self, ov: OpenVault) -> Any:
        from . import audit

        return audit.KeyRing(tuple((k["from_seq"], bytes.fromhex(k["key"])) for k in _chain_keys(ov)
                                   if k["from_seq"] is not None))

    def _audit_log(self, ov: OpenVault | None) -> Any:
        from . import audit

        if ov is None:
            path, chain_id = self.audit_path, ""
        else:
            path = self._log_path(ov)
            epoch = int(ov.body.get("audit_epoch", 0))
            # A restarted log is a new chain: its genesis names the epoch, so no
            # earlier log of the same vault can pass for it.
            chain_id = ov.body["vault_id"] if epoch == 0 else f"{ov.body['vault_id']}:{epoch}"
        if self._audit is None or self._audit_key != (str(path), chain_id):
            size = {"max_bytes": self.audit_max_bytes} if self.audit_max_bytes else {}
            self._audit = audit.AuditLog(path, vault_id=chain_id, **size)
            self._audit_key = (str(path), chain_id)
        return self._audit

    def _record(self, ov: OpenVault | None, call: _Call, error: errors.KmsError | None = None,
                event_type: str = "AwsApiCall") -> Any:
        """Append the call's audit record (or queue it for the vault's write); fail closed.

        Returns the record's chain head when it was appended now.
        """
        from . import audit

        if ov is None and not isinstance(error, errors.UnlockError):
            raise AssertionError("only a failed unlock is recorded without the key")
        record = self._make_record(ov, call, error, event_type)
        if ov is None:
            if not self.store.path.exists():
                return None  # no vault, so no log beside it to write to
            return self._audit_log(None).append(record, None)
        if ov.pending is not None:
            # Written with the vault, under the generation that write makes.
            record["additionalEventData"] = {audit.GENERATION_FIELD: ov.body.get("generation", 0) + 1}
            ov.pending.append(record)
            return None
        record["additionalEventData"] = {audit.GENERATION_FIELD: ov.body.get("generation", 0)}
        return self._audit_log(ov).append_batch(
            [record], self._ring(ov), catch_up=lambda: self._lines_of_a_newer_write(ov),
            event_ids=[call.event_id or audit.new_event_id()])[-1]

    def _lines_of_a_newer_write(self, ov: OpenVault) -> list[str] | None:
        """Under the log's lock: the records of a vault write made since ``ov`` was read, if any.

        A writer holds the log's lock from its vault's rename to its append, so
        a newer vault seen here is either fully logged already or its writer
        died in between: then its records go first, never forked from by ours.
        """
        if not self.store.changed_since(ov):
            return None
        from .vault.store import FixedKeySource

        try:
            newer = self.store.open(FixedKeySource(ov.vault_key))
        except errors.KmsError:
            return None  # rewritten under another key (passwd): the append refuses a stale key itself
        return (newer.body.get("audit_head") or {}).get("lines")

    def _make_record(self, ov: OpenVault | None, call: _Call, error: errors.KmsError | None,
                     event_type: str) -> dict[str, Any]:
        account = ov.body["account"] if ov is not None else None
        identity: dict[str, Any] = {"type": "LocalUser", "userName": self.caller.user, "uid": self.caller.uid,
                                    "pid": self.caller.pid, "host": self.caller.host}
        if account is not None:
            identity.update(accountId=account, arn=self.caller.arn(account))
        record: dict[str, Any] = {
            "eventName": call.event,
            "eventType": event_type,
            "eventTime": iso(self.clock()),
            "userIdentity": identity,
            "requestParameters": call.request,
            "responseElements": call.response if error is None else None,
            "readOnly": call.event.startswith(("Describe", "List", "Get")),
        }
        if call.resources:
            record["resources"] = [{"type": "AWS::KMS::Key", "ARN": arn} for arn in call.resources]
        if error is not None:
            record.update(errorCode=error.name, errorMessage=error.message)
        return record

    def _record_before_release(self, ov: OpenVault, call: _Call) -> None:
        """Append the call's (successful) record now, before its output is released."""
        from . import audit

        call.event_id = audit.new_event_id()
        self._record(ov, call)

    def _record_outcome(self, ov: OpenVault, call: _Call, error: errors.KmsError) -> None:
        """Record a failure; after an early record, as a second record that names the first."""
        if call.event_id is None:
            self._record(ov, call, error)
            return
        first, call.event_id = call.event_id, None
        call.request = {**call.request, "outcomeOf": first}
        self._record(ov, call, error)

    # -- keys, state and policy -------------------------------------------
    def _resolve(self, ov: OpenVault, call: _Call, key_ref: str) -> dict[str, Any]:
        ref = ids.parse_key_ref(key_ref)
        account = ov.body["account"]
        if ref.account is not None and ref.account != account:
            raise errors.NotFoundException(f"'{key_ref}' names another account than this vault's ({account})")
        key_id = ref.key_id
        if ref.alias is not None:
            alias = ov.body["aliases"].get(ref.alias)
            if alias is None:
                raise errors.NotFoundException(
                    f"Alias {ids.alias_arn(account, ref.alias)} is not found; see 'kmscli alias list'"
                )
            key_id = alias["TargetKeyId"]
        key = ov.body["keys"].get(key_id)
        if key is None:
            raise errors.NotFoundException(
                f"Key '{ids.key_arn(account, key_id or '')}' does not exist; see 'kmscli keys list --all'"
            )
        call.response.setdefault("keyId", key["KeyId"])
        arn = ids.key_arn(account, key["KeyId"])
        if arn not in call.resources:
            call.resources.append(arn)
        if ref.alias is not None and call.alias is None:
            call.alias = ref.alias
        return key

    def _key(self, ov: OpenVault, call: _Call, key_ref: str, action: str,
             conditions: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resolve a KEY argument and check the caller may do ``action`` with it."""
        key = self._resolve(ov, call, key_ref)
        self._authorize(ov, call, key, action, conditions)
        return key

    def _authorize(self, ov: OpenVault, call: _Call, key: dict[str, Any], action: str,
                   conditions: dict[str, Any] | None = None) -> None:
        from . import policy as policy_mod

        account = ov.body["account"]
        principal = self.caller.arn(account)
        context: dict[str, Any] = {
            "aws:CurrentTime": iso(self.clock()),
            "aws:PrincipalArn": principal,
            "aws:username": self.caller.user,
            "kms:CallerAccount": account,
            "kms:KeySpec": "SYMMETRIC_DEFAULT",
            "kms:KeyUsage": "ENCRYPT_DECRYPT",
            "kms:KeyOrigin": "AWS_KMS",
        }
        if call.alias is not None:
            context["kms:RequestAlias"] = call.alias
        context.update(conditions or {})
        request = policy_mod.Request(principal=principal, account=account, action=action,
                                     resource=ids.key_arn(account, key["KeyId"]), context=context)
        decision = policy_mod.evaluate(policy_mod.parse(key["Policy"]), request)
        if not decision.allowed:
            raise errors.AccessDeniedException(
                f"User: {principal} is not authorized to perform: {action} on resource: "
                f"{ids.key_arn(account, key['KeyId'])} because of the key policy"
            )

    def _checked_policy(self, document: str | None, account: str, bypass: bool, key_id: str) -> str:
        from . import policy as policy_mod

        if document is None:
            return policy_mod.default_policy(account)
        # A principal that can never match this vault (another partition or
        # account, a malformed ARN) is refused now, not silently never matched.
        parsed = policy_mod.parse(document, account=account)
        # With the key's ARN, a statement scoped to this very key counts as access, as in AWS.
        resource = ids.key_arn(account, key_id)
        if not bypass and policy_mod.would_lock_out(parsed, self.caller.arn(account), account, resource=resource):
            raise errors.MalformedPolicyDocumentException(
                "the new key policy will not allow you to update the key policy in the future; "
                "add a statement allowing kms:PutKeyPolicy, or pass --bypass-policy-lockout-safety-check"
            )
        return document

    def _ciphertext_key(self, ov: OpenVault, call: _Call, header: Any, asserted: str | None, action: str,
                        context: dict[str, str], extra: dict[str, Any] | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The key and material a ciphertext names, after every check that applies."""
        key = ov.body["keys"].get(header.key_id)
        if key is None:  # destroyed, or another vault's: indistinguishable from garbage
            raise errors.InvalidCiphertextException()
        if asserted is not None:
            wanted = self._resolve(ov, call, asserted)
            if wanted["KeyId"] != key["KeyId"]:
                raise errors.IncorrectKeyException()
        arn = ids.key_arn(ov.body["account"], key["KeyId"])
        if arn not in call.resources:
            call.resources.append(arn)
        call.response["keyId"] = key["KeyId"]
        self._authorize(ov, call, key, action, {**_context_conditions(context), **(extra or {})})
        self._require_enabled(ov, key)
        material = next((m for m in key["Materials"] if m["Version"] == header.material_version), None)
        if material is None:
            raise errors.InvalidCiphertextException()
        if material["Version"] < key["Rotation"]["MinDecryptVersion"]:
            raise errors.KMSInvalidStateException(
                f"{arn} no longer decrypts ciphertexts sealed with key material version {material['Version']} "
                f"(minimum {key['Rotation']['MinDecryptVersion']}); reencrypt them with a lower minimum first"
            )
        return key, material

    def _require_enabled(self, ov: OpenVault, key: dict[str, Any]) -> None:
        state = key["KeyState"]
        if state == KeyState.DISABLED:
            raise errors.DisabledException(f"{self._arn(ov, key)} is disabled.")
        if state == KeyState.PENDING_DELETION:
            raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")

    def _require_not_pending(self, ov: OpenVault, key: dict[str, Any]) -> None:
        if key["KeyState"] == KeyState.PENDING_DELETION:
            raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")

    def _check_alias_quota(self, ov: OpenVault, key_id: str) -> None:
        count = sum(1 for a in ov.body["aliases"].values() if a["TargetKeyId"] == key_id)
        if count >= ALIASES_PER_KEY_MAX:
            raise errors.LimitExceededException(f"a key can have at most {ALIASES_PER_KEY_MAX} aliases")

    def _arn(self, ov: OpenVault, key: dict[str, Any]) -> str:
        return ids.key_arn(ov.body["account"], key["KeyId"])

    def _metadata(self, ov: OpenVault, key: dict[str, Any]) -> dict[str, Any]:
        from .model import key_metadata

        return key_metadata(ov.body["account"], key)

    # -- time-based events ------------------------------------------------
    def _due_events(self, ov: OpenVault) -> bool:
        now = self.clock()
        for key in ov.body["keys"].values():
            if key["KeyState"] == KeyState.PENDING_DELETION and parse_iso(key["DeletionDate"]) <= now:
                return True
            if self._rotation_due(key, now):
                return True
        return False

    def _rotation_due(self, key: dict[str, Any], now: datetime) -> bool:
        rot = key["Rotation"]
        return (key["KeyState"] == KeyState.ENABLED and rot["Enabled"] and rot["NextRotationDate"] is not None
                and parse_iso(rot["NextRotationDate"]) <= now)

    def _apply_due_events(self, ov: OpenVault) -> bool:
        """Destroy keys past their window, rotate keys past their period; record each."""
        changed = False
        now = self.clock()
        for key in list(ov.body["keys"].values()):
            if key["KeyState"] == KeyState.PENDING_DELETION and parse_iso(key["DeletionDate"]) <= now:
                key_id = key["KeyId"]
                del ov.body["keys"][key_id]
                gone = sorted(n for n, a in ov.body["aliases"].items() if a["TargetKeyId"] == key_id)
                for name in gone:
                    del ov.body["aliases"][name]
                call = _Call("DeleteKey", {"keyId": key_id},
                             {"keyId": key_id, "deletionDate": key["DeletionDate"], "aliasesDeleted": gone},
                             [ids.key_arn(ov.body["account"], key_id)])
                self._record(ov, call, event_type="AwsServiceEvent")
                changed = True
            elif self._rotate_if_due(ov, key):
                changed = True
        return changed

    def _rotate_if_due(self, ov: OpenVault, key: dict[str, Any]) -> bool:
        now = self.clock()
        if not self._rotation_due(key, now):
            return False
        # However many periods were missed, a key rotates once (SPEC).
        material = self._add_material(key, "AUTOMATIC")
        key["Rotation"]["NextRotationDate"] = iso(now + timedelta(days=key["Rotation"]["PeriodInDays"]))
        call = _Call("RotateKey", {"keyId": key["KeyId"]},
                     {"keyId": key["KeyId"], "keyMaterialId": material["KeyMaterialId"]},
                     [ids.key_arn(ov.body["account"], key["KeyId"])])
        self._record(ov, call, event_type="AwsServiceEvent")
        return True

    def _add_material(self, key: dict[str, Any], rotation_type: str) -> dict[str, Any]:
        from .crypto import primitives as P

        material = _new_material(key["Materials"][-1]["Version"] + 1, iso(self.clock()), rotation_type,
                                 P.random_bytes(MATERIAL_SIZE))
        key["Materials"].append(material)
        return material


# -- helpers --------------------------------------------------------------
class _RecordFirst:
    """A writer that runs ``before`` (the call's audit record) just before the first byte passes through."""

    def __init__(self, writer: Any, before: Callable[[], None]) -> None:
        self._writer = writer
        self._before: Callable[[], None] | None = before

    def write(self, data: Any) -> Any:
        if self._before is not None:
            before, self._before = self._before, None
            before()
        return self._writer.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def _new_material(version: int, created: str, rotation_type: str | None, secret: bytes) -> dict[str, Any]:
    import hashlib

    return {
        "Version": version,
        # An identifier, not a secret: a hash of the material under a label.
        "KeyMaterialId": hashlib.sha256(b"kmscli key material id\x00" + secret).hexdigest(),
        "Material": base64.b64encode(secret).decode(),
        "CreationDate": created,
        "RotationType": rotation_type,
    }


def _material(material: dict[str, Any]) -> bytes:
    return base64.b64decode(material["Material"])


def _tag_dict(tags: list[dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        ids.validate_tag(t["TagKey"], t["TagValue"])
        out[t["TagKey"]] = t["TagValue"]
    if len(out) > TAGS_PER_KEY_MAX:
        raise errors.TagException(f"a key can have at most {TAGS_PER_KEY_MAX} tags (got {len(out)})")
    return out


def _context(ec: dict[str, str] | None) -> dict[str, str]:
    from .crypto import stream

    context = dict(ec or {})
    stream.encode_context(context)  # validates: local limits named in docs/format.md
    return context


def _context_conditions(context: dict[str, str]) -> dict[str, Any]:
    cond: dict[str, Any] = {f"kms:EncryptionContext:{k}": v for k, v in context.items()}
    cond["kms:EncryptionContextKeys"] = sorted(context)
    return cond


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise errors.ValidationException(f"{name} must be between {lo} and {hi} (got {value})")


def _check_policy_name(name: str) -> None:
    if name != "default":
        raise errors.ValidationException(f"the only key policy name is 'default' (got '{name}')")


def _chain_key_hex(vault_key: bytes) -> str:
    from . import audit

    return audit.chain_key(vault_key).hex()


def _chain_keys(ov: OpenVault) -> list[dict[str, Any]]:
    """The vault's audit chain keys by first record; a vault from 0.1.0 has one, derived from its key."""
    keys = ov.body.get("chain_keys")
    if not keys:
        keys = ov.body["chain_keys"] = [{"from_seq": 1, "key": _chain_key_hex(ov.vault_key)}]
    return keys  # type: ignore[no-any-return]


def _parse_witness(text: str) -> tuple[int, str]:
    import re

    m = re.fullmatch(r"([1-9][0-9]{0,17}):([0-9a-f]{64})", text)
    if not m:
        raise errors.ValidationException(f"--head takes SEQ:MAC as 'kmscli audit head' prints it (got '{text}')")
    return int(m.group(1)), m.group(2)


def _head(value: dict[str, Any] | None) -> Any:
    if value is None:
        return None
    from . import audit

    return audit.ChainHead(file_index=value["file_index"], seq=value["seq"], mac=value["mac"])
