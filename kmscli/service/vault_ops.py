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
    def CreateVault(self, kdf: F.KdfParams | None = None, Account: str | None = None) -> dict[str, Any]:
        """Make a new vault with a random vault key and account (or ``Account``); never overwrite one."""
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
        passphrase = self.keys.passphrase()
        salt, vault_key = P.random_bytes(F.SALT_SIZE), P.random_bytes(F.VAULT_KEY_SIZE)
        header = F.build_header(
            kdf, salt, P.argon2id(passphrase, salt, kdf.memory_kib, kdf.time_cost, kdf.parallelism),
            vault_key, P.random_bytes(P.NONCE_SIZE), version=self.store.create_format,
        )
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
        call = Call("CreateVault", {"kdfMemoryKiB": kdf.memory_kib, "kdfTime": kdf.time_cost,
                                     "kdfParallelism": kdf.parallelism, "auditLog": str(self.audit_path)})
        with self.store.locked():
            call.response = {"vaultId": ov.vault_id, "account": ov.account}
            self._record(ov, call)
            # The vault is linked into place carrying its first record; the log
            # gets the record right after (or from the next command, after a crash).
            self._commit(ov, create=True)
        ov.close()
        return {"VaultPath": str(self.store.path), "Account": ov.account, "VaultId": ov.vault_id,
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

        def unlock(ov: OpenVault, call: Call) -> dict[str, Any]:
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
        from ..crypto import primitives as P

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
            self._open_recording(Call("ChangePassphrase", request)).close()  # the current passphrase, checked first
            new_passphrase = new_passphrase()
        with self._refusing("ChangePassphrase", request):
            if not new_passphrase:
                raise errors.ValidationException("the new passphrase must not be empty")
        new_secret: bytes = new_passphrase

        def change(ov: OpenVault, call: Call) -> dict[str, Any]:
            params = kdf or ov.header.kdf
            chain_keys = chain_keys_of(ov)  # before the key changes: a 0.1.0 vault derives its first from it
            salt = P.random_bytes(F.SALT_SIZE)
            kek = P.argon2id(new_secret, salt, params.memory_kib, params.time_cost, params.parallelism)
            new_key = P.random_bytes(F.VAULT_KEY_SIZE)
            ov.header = F.build_header(params, salt, kek, new_key, P.random_bytes(P.NONCE_SIZE),
                                       version=ov.format_version)
            ov.vault_key = new_key
            # from_seq is filled in by _commit with this call's record: the first under the new key.
            chain_keys.append({"from_seq": None, "key": chain_key_hex(new_key)})
            call.response.update(kdfMemoryKiB=params.memory_kib, kdfTime=params.time_cost,
                                 kdfParallelism=params.parallelism)
            return {}

        return self._mutate("ChangePassphrase", request, change)
