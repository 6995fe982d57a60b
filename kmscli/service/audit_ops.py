"""The audit log: verify it, print its head, restart it after a loss, read it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from .. import errors
from ._core import (
    Call,
    Core,
    chain_head,
    parse_witness,
)


class AuditOps(Core):
    def VerifyAuditLog(self, Strict: bool = False, Witness: str | None = None) -> dict[str, Any]:
        """Check the whole log against the vault's chain keys, its last head and an optional witness."""
        request: dict[str, Any] = {"strict": Strict}
        if Witness is not None:
            request["head"] = Witness
        with self._refusing("VerifyAuditLog", request):
            witness = parse_witness(Witness) if Witness is not None else None
        call = Call("VerifyAuditLog", request)
        # Opened without the quick tail check: verify reads every line and says
        # more precisely where the log went wrong.
        ov = self._open_recording(call, check_log=False)
        ov.close()  # what follows needs only the metadata read
        log = self._audit_log(ov)
        try:
            lines = (ov.audit_head or {}).get("lines")
            if lines:
                log.complete(lines)  # what a crash kept out of the log, the vault still holds
            report = log.verify(self._ring(ov), chain_head(ov.audit_head), witness=witness, strict=Strict)
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
        call = Call("GetAuditHead", {})
        with contextlib.closing(self._open_recording(call)) as ov:
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
        call = Call("RestartAuditLog", {})
        self._open_recording(call, check_log=False).close()  # the KDF runs before the lock
        with self.store.locked():
            self.store.remove_stale_temps()
            with contextlib.closing(self._open_recording(call, check_log=False, write=True)) as ov:
                log = self._audit_log(ov)
                head = ov.audit_head or {}
                stamp = self.clock().strftime("%Y%m%dT%H%M%SZ")
                moved = log.retire(f".retired-{stamp}-{os.urandom(3).hex()}")
                epoch = ov.audit_epoch + 1
                ring = self._ring(ov)
                ov.audit_epoch = epoch
                ov.audit_head = None
                ov.chain_keys = [{"from_seq": 1, "key": ring.current.hex()}]
                call.request.update(
                    previousHead=({"seq": head["seq"], "mac": head["mac"], "fileIndex": head["file_index"]}
                                  if head else None),
                    previousVaultGeneration=ov.generation, retiredFiles=moved, epoch=epoch)
                ov.pending = []
                self._record(ov, call)
                self._commit(ov)
        return {"RetiredFiles": moved, "Epoch": epoch}

    def ReadAuditLog(self, KeyId: str | None = None, Operation: str | None = None,
                     Since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """The audit records, oldest first, filtered; reading needs no passphrase.

        ``Operation`` must be an operation kmscli records (an AWS KMS operation
        or one of kmscli's own events): a misspelt name is a ValidationException
        rather than an empty answer.
        """
        if Operation is not None:
            from .. import aws_model

            known = {*aws_model.OPERATIONS, *OWN_EVENTS}
            match = {name.casefold(): name for name in known}.get(Operation.casefold())
            if match is None:
                raise errors.ValidationException(
                    f"--operation {Operation!r} is no operation kmscli records; give an AWS KMS operation name "
                    "(Encrypt, CreateKey, ScheduleKeyDeletion, ...) or one of kmscli's own events "
                    f"({', '.join(sorted(OWN_EVENTS))})"
                )
        log = self._audit_log(None)
        return log.read(key_id=KeyId, operation=Operation, since=Since)


#: Events kmscli records that are not AWS KMS operations (docs/audit.md).
OWN_EVENTS = frozenset({
    "BackupVault", "ChangePassphrase", "CreateAccessKey", "CreateVault", "DeleteAccessKey", "DeleteKey",
    "DeleteExpiredKeyMaterial", "GetAuditHead", "ListAccessKeys",
    "RestartAuditLog", "RestoreVault", "RotateKey", "SeedVault", "SetMinDecryptVersion", "UnknownOperation",
    "Unlock", "VerifyAuditLog",
})
