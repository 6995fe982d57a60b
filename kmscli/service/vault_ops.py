"""The vault's own life: create it, unlock it into a session, change its passphrase (local operations)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import errors, ids
from ..model import iso
from ..vault import format as F
from ..vault.store import OpenVault, PassphraseKeySource
from ._core import (
    Call,
    Core,
    chain_key_hex,
    chain_keys_of,
)


class VaultOps(Core):
    def CreateVault(self, kdf: F.KdfParams | None = None, Account: str | None = None,
                    RootKeyArn: str | None = None) -> dict[str, Any]:
        """Make a new vault with a random vault key and account (or ``Account``); never overwrite one.

        With ``RootKeyArn`` the vault key is wrapped by a data key of that remote KMS key instead of a
        passphrase (docs/root-key.md): no passphrase is read, and ``kdf`` must not be given.
        """
        if RootKeyArn is not None:
            from ..vault import rootkey

            rootkey.parse_arn(RootKeyArn)
            if kdf is not None:
                raise errors.ValidationException("--kdf-memory, --kdf-time and --kdf-parallelism set a passphrase's "
                                                 "KDF; a vault with --root-key has none")
            if self.store.create_format != F.RECORDS_FORMAT_VERSION:
                raise errors.ValidationException(
                    f"a KMS root key needs vault format {F.RECORDS_FORMAT_VERSION} (the record store); "
                    f"format {self.store.create_format} keeps only a passphrase")
        kdf = kdf or F.KdfParams()
        if Account is not None:
            ids.validate_account(Account)
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
        from ..vault.store import check_private_folder

        check_private_folder(self.audit_path.parent, "the audit log")
        if self._audit_log(None).exists():
            # A new vault's chain starts at its own genesis: appending it to another
            # vault's log would make that log fail verification forever.
            raise errors.AlreadyExistsException(
                f"an audit log already exists at {self.audit_path} with no vault beside it; "
                "move it (and its numbered older files) away to keep it, then run init again"
            )
        from ..crypto import primitives as P

        assert isinstance(self.keys, PassphraseKeySource)
        vault_key = P.random_bytes(F.VAULT_KEY_SIZE)
        request: dict[str, Any]
        if RootKeyArn is not None:
            from ..vault import rootkey

            new_root = rootkey.generate(RootKeyArn)  # no vault yet, so no log: a refusal is only reported
            header = F.build_kms_header(new_root.root, new_root.kek, vault_key, P.random_bytes(P.NONCE_SIZE))
            request = {"rootKeyArn": new_root.root.arn}
        else:
            passphrase = self.keys.passphrase()
            salt = P.random_bytes(F.SALT_SIZE)
            header = F.build_header(
                kdf, salt, P.argon2id(passphrase, salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism),
                vault_key, P.random_bytes(P.NONCE_SIZE), version=self.store.create_format,
            )
            request = {"kdfMemoryKiB": kdf.memory_kib, "kdfTime": kdf.time_cost, "kdfParallelism": kdf.parallelism}
        now = iso(self.clock())
        meta: dict[str, Any] = {
            "vault_id": P.random_bytes(16).hex(),
            "account": Account if Account is not None else "".join(str(b % 10) for b in P.random_bytes(12)),
            "created": now,
            "generation": 0,
            "audit_head": None,
            "audit_log": str(self.audit_path),
            "audit_epoch": 0,
            "chain_keys": [{"from_seq": 1, "key": chain_key_hex(vault_key)}],
        }
        ov = self.store.new_vault(header, vault_key, meta)
        ov.pending = []
        call = Call("CreateVault", {**request, "auditLog": str(self.audit_path)})
        with self.store.locked():
            call.response = {"vaultId": ov.vault_id, "account": ov.account}
            self._record(ov, call)
            # The vault is linked into place carrying its first record; the log
            # gets the record right after (or from the next command, after a crash).
            self._commit(ov, create=True)
        ov.close()
        result = {"VaultPath": str(self.store.path), "Account": ov.account, "VaultId": ov.vault_id,
                  "AuditLog": str(self.audit_path)}
        if header.root_key is not None:
            result["RootKeyArn"] = header.root_key.arn
        return result

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

        def unlock(ov: OpenVault, call: Call) -> dict[str, Any]:
            session_id = start_session(ov.vault_key, ov.header.raw)
            call.response["sessionId"] = session_id
            return {"SessionId": session_id}

        return self._read("Unlock", {"ttlSeconds": TtlSeconds, "idleSeconds": IdleSeconds}, unlock)

    def ChangePassphrase(self, new_passphrase: bytes | Callable[[], bytes] | None = None,
                         kdf: F.KdfParams | None = None, RootKeyArn: str | None = None) -> dict[str, Any]:
        """Rotate the vault key under a new passphrase (and KDF settings), or under a KMS root key.

        The body is sealed under a new random vault key, so an old copy of the
        vault and the old passphrase open nothing written from now on; the audit
        chain continues under a chain key derived from the new vault key, from
        this call's own record on. Never through a session: a session must not
        outlive its TTL by changing the passphrase under its owner. A callable
        ``new_passphrase`` is asked only once the current passphrase opened the
        vault, as passwd, ssh-keygen and gpg ask.

        With ``RootKeyArn`` the new vault key is wrapped by a new data key of
        that remote KMS key (docs/root-key.md): from a passphrase, or from
        another (or the same) KMS key; without it a vault with a KMS root key
        gets a passphrase again (default KDF settings unless ``kdf``).
        """
        from ..crypto import primitives as P

        self._require_passphrase("passwd", "ChangePassphrase")
        request: dict[str, Any] = {}
        if kdf is not None:
            request.update(kdfMemoryKiB=kdf.memory_kib, kdfTime=kdf.time_cost, kdfParallelism=kdf.parallelism)
        if RootKeyArn is not None:
            request.update(rootKeyArn=RootKeyArn)
        with self._refusing("ChangePassphrase", request):
            if RootKeyArn is not None:
                from ..vault import rootkey

                rootkey.parse_arn(RootKeyArn)
                if kdf is not None or new_passphrase is not None:
                    raise errors.ValidationException("--root-key replaces the passphrase: give no new passphrase "
                                                     "and no --kdf-* option with it")
            if kdf is not None:
                why = kdf.bounds_error()
                if why is not None:
                    raise errors.ValidationException(why)
        new_root: Any = None
        new_secret = b""
        if RootKeyArn is not None:
            self._open_recording(Call("ChangePassphrase", request)).close()  # the current root, checked first
            with self._refusing("ChangePassphrase", request):
                new_root = rootkey.generate(RootKeyArn)  # the KMS call before the lock, never under it
        else:
            if callable(new_passphrase):
                self._open_recording(Call("ChangePassphrase", request)).close()  # the current root, checked first
                new_passphrase = new_passphrase()
            with self._refusing("ChangePassphrase", request):
                if not new_passphrase:
                    raise errors.ValidationException("the new passphrase must not be empty")
            assert isinstance(new_passphrase, bytes)
            new_secret = new_passphrase

        def change(ov: OpenVault, call: Call) -> dict[str, Any]:
            chain_keys = chain_keys_of(ov)  # before the key changes: a 0.1.0 vault derives its first from it
            new_key = P.random_bytes(F.VAULT_KEY_SIZE)
            if new_root is not None:
                if ov.format_version != F.RECORDS_FORMAT_VERSION:
                    raise errors.ValidationException(
                        f"a KMS root key needs vault format {F.RECORDS_FORMAT_VERSION}; open the vault with its "
                        "passphrase once to upgrade it")
                ov.header = F.build_kms_header(new_root.root, new_root.kek, new_key, P.random_bytes(P.NONCE_SIZE))
                call.response.update(rootKeyArn=new_root.root.arn)
            else:
                # Back from a KMS root key, whose header has no KDF settings: the defaults, unless given.
                params = kdf or (ov.header.kdf if ov.header.root_key is None else F.KdfParams())
                salt = P.random_bytes(F.SALT_SIZE)
                kek = P.argon2id(new_secret, salt, params.memory_kib, params.time_cost, params.parallelism)
                ov.header = F.build_header(params, salt, kek, new_key, P.random_bytes(P.NONCE_SIZE),
                                           version=ov.format_version)
                call.response.update(kdfMemoryKiB=params.memory_kib, kdfTime=params.time_cost,
                                     kdfParallelism=params.parallelism)
            ov.vault_key = new_key
            # from_seq is filled in by _commit with this call's record: the first under the new key.
            chain_keys.append({"from_seq": None, "key": chain_key_hex(new_key)})
            return {"RootKeyArn": new_root.root.arn} if new_root is not None else {}

        return self._mutate("ChangePassphrase", request, change)
