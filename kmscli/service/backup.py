"""Backups: a consistent, still-encrypted copy of the vault and its log, and putting one back (docs/vault.md)."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, errors
from ..vault import archive
from ..vault.state import OpenVault
from ..vault.store import PassphraseKeySource, VaultStore
from ._core import AUDIT_FILE, Call, Core, chain_head


@dataclass(frozen=True)
class _Backup:
    """What a staged backup holds, once its vault opened and its log verified under the vault's keys."""

    vault_file: Path
    vault_id: str
    generation: int
    epoch: int
    #: The log's path as the vault names it (None: a vault from before the name was kept: beside the vault).
    audit_log: str | None
    #: Where the backed-up vault was (the manifest says; it only decides whether the log moves with it).
    vault_path: str
    #: The log's base name and its files, oldest first, the live file last.
    log_name: str
    log_files: list[Path]
    head_seq: int
    head_mac: str


class BackupOps(Core):
    def BackupVault(self, writer: Any, Output: str | None = None) -> dict[str, Any]:
        """Write the vault and its log, as they are at one moment, to ``writer`` (a tar archive).

        Everything stays encrypted as it is on disk, so a session suffices.
        Under the vault's lock (no vault write) and the log's readers' lock (no
        append) the vault is copied through SQLite's online backup and the
        log's files and lengths are noted; then both locks are let go and the
        archive is written from those copies. The call's record is appended
        first, so the archive holds the record of its own making.
        """
        request: dict[str, Any] = {"output": Output} if Output else {}
        call = Call("BackupVault", request)
        if isinstance(self.keys, PassphraseKeySource):
            self._open_recording(call).close()  # the KDF runs before the lock, as for every writer
        with contextlib.ExitStack() as stack:
            with self.store.locked(), contextlib.closing(self._open_recording(call)) as ov:
                try:
                    self._check_backup_output(Output, self._log_path(ov))
                except errors.KmsError as e:
                    self._record(ov, call, e)
                    raise
                call.response.update(generation=ov.generation)
                self._record_before_release(ov, call)
                try:
                    copy: dict[str, int] = {}

                    def copy_vault() -> None:
                        copy["fd"], copy["generation"] = self.store.copy(ov.vault_key)
                        stack.callback(os.close, copy["fd"])

                    frozen = stack.enter_context(self._audit_log(ov).frozen(first=copy_vault))
                    if copy["generation"] != ov.generation:
                        raise errors.KMSInternalException(
                            f"the vault's copy is at generation {copy['generation']}, not {ov.generation}")
                except errors.KmsError as e:
                    self._record_outcome(ov, call, e)
                    raise
            # Both locks are let go: what the archive holds is fixed, and writers go on meanwhile.
            try:
                return self._write_backup(writer, ov, copy["fd"], frozen)
            except errors.KmsError as e:
                self._record_outcome(ov, call, e)
                raise
            except BaseException as e:
                with contextlib.suppress(BaseException):
                    self._record_outcome(ov, call, errors.KMSInternalException(
                        f"the backup stopped while it was written ({type(e).__name__})"))
                raise

    def _write_backup(self, writer: Any, ov: OpenVault, vault_fd: int, frozen: Any) -> dict[str, Any]:
        size = os.fstat(vault_fd).st_size
        sources = [archive.Source(archive.VAULT_MEMBER, size, lambda: contextlib.nullcontext(vault_fd))]
        for i, (name, length) in enumerate(frozen.files):
            sources.append(archive.Source(archive.log_member(name), length, functools.partial(frozen.open, i)))
        head = frozen.head
        log_path = self._log_path(ov)
        doc = archive.write(writer, sources, {
            "kmscli": __version__,
            "created": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vault": {"path": str(self.store.path), "format": ov.format_version, "id": ov.vault_id,
                      "generation": ov.generation, "audit_epoch": ov.audit_epoch},
            "log": {"path": str(log_path), "name": log_path.name,
                    "head": None if head is None else {"file_index": head.file_index, "seq": head.seq,
                                                       "mac": head.mac}},
        })
        return {"VaultPath": str(self.store.path), "Generation": ov.generation, "LogFiles": len(frozen.files),
                "LogRecords": 0 if head is None else head.seq, "Members": doc["members"]}

    def _check_backup_output(self, output: str | None, log_path: Path) -> None:
        """Refuse to write the archive over the vault (or its lock or WAL) or a file of its log."""
        if output in (None, "-"):
            return
        target = Path(os.path.realpath(output))
        vault = self.store.path
        own = {vault, self.store.lock_path, Path(f"{vault}-wal"), Path(f"{vault}-shm"), log_path,
               log_path.with_name(log_path.name + ".lock")}
        if target in own or (target.parent == log_path.parent and target.name.startswith(log_path.name)
                             and archive.SEGMENT_RE.fullmatch(target.name[len(log_path.name):])):
            raise errors.ValidationException(
                f"the backup cannot be written to {output}: that is a file of the vault or of its audit log; "
                "write it elsewhere")

    def RestoreVault(self, reader: Any, Input: str | None = None, Force: bool = False) -> dict[str, Any]:
        """Put a backup's vault and log in place of the vault's (docs/vault.md, "Backups").

        Needs the passphrase, never a session: the archive's vault must open
        with it. Nothing is changed until every member matched the manifest,
        the vault opened, its log verified under its keys and agreed with it,
        and (without ``Force``) what is in place proved to be no newer: a
        vault of another id, a later generation or audit epoch, one that does
        not open with this passphrase, or a log that goes further than the
        backup's is refused (exit 8), unchanged and unrecorded. Then, under the
        vault's lock and the log's, the files in place are kept aside as
        NAME.replaced-<time>-<hex>, the log's files are renamed in and the
        vault last; the restore is recorded as a vault write in the restored log.
        """
        self._require_passphrase("vault restore", "RestoreVault")
        source = Input if Input not in (None, "-") else "from standard input"
        with self.store.staging() as folder:
            manifest, staged = archive.stage(reader, folder, source)
            backup = self._open_backup(manifest, staged, source)
            log_path, relocated = self._restored_log_path(backup)
            with self.store.locked():
                if not Force:
                    problem = self._newer_in_place(backup, log_path)
                    if problem is not None:
                        raise errors.VaultRollbackException(
                            f"{problem}: restoring the backup would roll it back; nothing was changed. Add --force "
                            "to restore it anyway (what is in place is then kept as NAME.replaced-...)")
                return self._put_in_place(backup, log_path, relocated, folder, Input, Force)

    def _open_backup(self, manifest: dict[str, Any], staged: dict[str, Path], source: str) -> _Backup:
        """Open the staged vault with the passphrase and verify the staged log under its keys; check the manifest."""
        from .. import audit

        def bad(what: str) -> errors.VaultCorruptException:
            return errors.VaultCorruptException(f"the backup {source} is not intact: {what}")

        vault_file = staged[archive.VAULT_MEMBER]
        store = VaultStore(vault_file, migrate=False)
        try:
            try:
                ov = store.open(self.keys)
            except errors.UnlockError as e:
                raise type(e)(f"{e.message} (the vault in the backup {source})") from None
            except errors.KmsError as e:
                raise bad(f"its vault does not open: {e.message}") from None
            with contextlib.closing(ov):
                claimed = manifest["vault"]
                facts = {"id": ov.vault_id, "generation": ov.generation, "audit_epoch": ov.audit_epoch}
                wrong = [k for k, v in facts.items() if claimed.get(k) != v]
                if wrong:
                    raise bad(f"its manifest's vault {', '.join(wrong)} differ from its vault's own")
                name, names = archive.log_files(manifest)
                if name != (Path(ov.audit_log).name if ov.audit_log else AUDIT_FILE):
                    raise bad(f"its log is named {name}, but its vault names its log {ov.audit_log}")
                if not names:
                    raise bad("it holds no audit log")
                epoch = ov.audit_epoch
                log = audit.AuditLog(staged[archive.log_member(name)],
                                     vault_id=ov.vault_id if epoch == 0 else f"{ov.vault_id}:{epoch}")
                try:
                    report = log.verify(self._ring(ov), chain_head(ov.audit_head))
                    problem = self._log_problem(ov, log.tail())
                except errors.KmsError as e:
                    raise bad(f"its audit log fails verification: {e.message}") from None
                if problem is not None:
                    raise bad(f"its vault and its log disagree: {problem}")
                head = report.last_head
                claimed_head = manifest["log"].get("head") or {}
                if head is None or (claimed_head.get("seq"), claimed_head.get("mac")) != (head.seq, head.mac):
                    raise bad("its manifest's log head is not the log's last record")
                return _Backup(vault_file=vault_file, vault_id=ov.vault_id, generation=ov.generation, epoch=epoch,
                               audit_log=ov.audit_log, vault_path=str(claimed.get("path")), log_name=name,
                               log_files=[staged[archive.log_member(n)] for n in names],
                               head_seq=head.seq, head_mac=head.mac)
        finally:
            store.close()

    def _restored_log_path(self, backup: _Backup) -> tuple[Path, bool]:
        """Where the restored log goes, and whether that is not where the vault names it.

        As init places a log: where --audit-log / KMSCLI_AUDIT_LOG says, if
        given. Else a log that was the default one beside the backed-up vault
        goes beside the restored vault (a backup restored elsewhere takes its
        log along, never over the original's); else where the vault names it.
        """
        here = self.store.path.with_name(AUDIT_FILE)
        if backup.audit_log is None:
            return here, False
        named = Path(backup.audit_log)
        if self.requested_audit_path is not None:
            wanted = Path(os.path.realpath(self.requested_audit_path.parent)) / self.requested_audit_path.name
        elif named == Path(backup.vault_path).with_name(AUDIT_FILE):
            wanted = here
        else:
            wanted = named
        return wanted, wanted != named

    def _newer_in_place(self, backup: _Backup, log_path: Path) -> str | None:
        """Why what is in place may be newer than the backup (None: it is the backup's past, or nothing)."""
        from .. import audit

        path = self.store.path
        same_chain = True
        if os.path.lexists(path):
            try:
                ov = VaultStore(path, migrate=False).open(self.keys)
            except errors.UnlockError:
                return (f"the vault {path} does not open with this passphrase: its passphrase was changed after "
                        "the backup was made, or it is another vault")
            except errors.KmsError as e:
                return f"the vault {path} cannot be read ({e.message})"
            with contextlib.closing(ov):
                if ov.vault_id != backup.vault_id:
                    return f"the vault {path} is another vault than the backup's"
                if (ov.audit_epoch, ov.generation) > (backup.epoch, backup.generation):
                    return (f"the vault {path} is newer than the backup (generation {ov.generation}, "
                            f"audit epoch {ov.audit_epoch}; the backup's: {backup.generation}, {backup.epoch})")
                same_chain = ov.audit_epoch == backup.epoch
        try:
            head = audit.AuditLog(log_path, vault_id="").head()
        except errors.KmsError as e:
            return f"the audit log {log_path} cannot be read ({e.message})"
        if head is not None and same_chain:
            if head.seq > backup.head_seq:
                return (f"the audit log {log_path} goes further than the backup's (to record {head.seq}; "
                        f"the backup's ends at record {backup.head_seq})")
            if head.seq == backup.head_seq and head.mac != backup.head_mac:
                return f"the audit log {log_path} holds another record {head.seq} than the backup's"
        return None

    def _put_in_place(self, backup: _Backup, log_path: Path, relocated: bool, folder: Path,
                      source: str | None, force: bool) -> dict[str, Any]:
        """With the vault's lock held: keep what is in place aside, rename the backup in, record the restore."""
        from .. import audit
        from ..vault.store import check_private_folder, ensure_private_dir

        ensure_private_dir(log_path.parent)
        check_private_folder(log_path.parent, "the audit log")
        suffix = f".replaced-{self.clock().strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(3).hex()}"
        path = self.store.path
        kept = path.with_name(path.name + suffix) if os.path.lexists(path) else None
        renames = [(p, log_path.name + p.name[len(backup.log_name):]) for p in backup.log_files]
        copies = _onto_file_system_of(log_path.parent, renames, folder)
        staged_inode = os.stat(backup.vault_file).st_ino

        def put_vault() -> None:
            try:
                self.store.install(backup.vault_file, kept)
            except errors.KmsError:
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino == staged_inode:
                        return  # renamed in, only a sync after it failed: undoing the log would split the pair
                raise

        try:
            moved = audit.AuditLog(log_path, vault_id="").replace(copies, suffix, then=put_vault)
        finally:
            for (copy, _), (staged, _) in zip(copies, renames, strict=True):
                if copy != staged:  # copied onto the log's file system; still there if not renamed in
                    with contextlib.suppress(OSError):
                        os.unlink(copy)
        # The restored pair is in place. Its record is a vault write in the restored log, so a later
        # restore of the same backup (which lacks it) is refused as a rollback without --force.
        call = Call("RestoreVault", {"input": source or "-", "force": force})
        call.response = {"generation": backup.generation, "auditLog": str(log_path),
                         "replacedVault": kept.name if kept is not None else None, "replacedLogFiles": moved}
        try:
            with contextlib.closing(self.store.open(self.keys, write=True)) as ov:
                if relocated:
                    ov.meta["audit_log"] = str(log_path)
                self._check_audit_location(ov)
                problem = self._check_log(ov)
                if problem is not None:
                    raise errors.AuditLogException(problem)
                ov.pending = []
                self._record(ov, call)
                self._commit(ov)
                generation = ov.generation
        except errors.KmsError as e:
            aside = ", ".join(str(p) for p in (kept, *moved) if p) or "nothing was there"
            raise type(e)(f"the backup was put in place (kept aside: {aside}), but recording the restore failed: "
                          f"{e.message}") from None
        return {"VaultPath": str(path), "AuditLog": str(log_path), "Generation": generation,
                "BackupGeneration": backup.generation, "ReplacedVault": str(kept) if kept is not None else None,
                "ReplacedLogFiles": [str(log_path.with_name(n)) for n in moved], "LogMoved": relocated}


def _onto_file_system_of(folder: Path, renames: list[tuple[Path, str]], staging: Path) -> list[tuple[Path, str]]:
    """The staged files, copied (synced, 0600) into ``folder`` first when it is on another file system."""
    import shutil

    from ..vault.files import create_private

    if os.stat(folder).st_dev == os.stat(staging).st_dev:
        return renames
    out = []
    try:
        for path, name in renames:
            tmp = folder / f".{name}.{os.urandom(6).hex()}.restore"
            fd = create_private(tmp)
            out.append((tmp, name))
            with open(fd, "wb") as dst, open(path, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
    except OSError as e:
        for tmp, _ in out:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise errors.AuditLogException(f"cannot copy the restored log into {folder}: {e.strerror}") from None
    return out
