"""The service's shared machinery: open the vault, apply due events, authorize, record.

Every operation family (keys.py, aliases.py, ...) is a mixin over `Core`;
nothing here knows which operations exist."""

from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import io
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .. import errors, ids
from ..model import KEY_SPEC, KeyState, is_symmetric, iso, key_spec, key_usage, parse_iso, utcnow
from ..vault.state import Cursor, OpenVault
from ..vault.store import KeySource, PassphraseKeySource, VaultStore

# AWS KMS's limits, from botocore's service model and the KMS quotas page.
DELETION_WINDOW_MIN, DELETION_WINDOW_MAX, DELETION_WINDOW_DEFAULT = 7, 30, 30
ROTATION_PERIOD_MIN, ROTATION_PERIOD_MAX, ROTATION_PERIOD_DEFAULT = 90, 2560, 365
ON_DEMAND_ROTATIONS_MAX = 25
ALIASES_PER_KEY_MAX = 50
TAGS_PER_KEY_MAX = 50
RANDOM_BYTES_MIN, RANDOM_BYTES_MAX = 1, 1024
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
MATERIAL_SIZE = 32
#: Page sizes when a List* request gives no Limit, as AWS documents them.
LIST_LIMIT_DEFAULT = 100
ALIASES_LIMIT_DEFAULT = 50
TAGS_LIMIT_DEFAULT = 50

AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the local OS user as the process (or a socket peer) says,
    or, through `kmscli serve`, the user an access key belongs to."""

    user: str
    uid: int | None
    pid: int | None
    host: str
    #: Set for a request `kmscli serve` verified: the access key that signed it.
    access_key_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    #: The request id returned to the client (x-amzn-RequestId), kept in the record.
    request_id: str | None = None

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

    def identity(self, account: str | None) -> dict[str, Any]:
        """The record's ``userIdentity``, as CloudTrail names its members."""
        identity: dict[str, Any]
        if self.access_key_id is not None:
            identity = {"type": "IAMUser", "userName": self.user, "accessKeyId": self.access_key_id}
        else:
            identity = {"type": "LocalUser", "userName": self.user, "uid": self.uid, "pid": self.pid,
                        "host": self.host}
        if account is not None:
            identity.update(accountId=account, arn=self.arn(account))
        return identity


@dataclass
class Call:
    """One operation in flight: what the audit record will say about it."""

    event: str
    request: dict[str, Any]
    response: dict[str, Any] = field(default_factory=dict)
    resources: list[str] = field(default_factory=list)
    #: The alias the caller named the key by, for the kms:RequestAlias condition.
    alias: str | None = None
    #: Set once the call's record was appended ahead of its output (decrypt).
    event_id: str | None = None
    #: The grant that allowed the call, when the key policy alone did not (its record names it).
    grant_id: str | None = None



class Core:
    """The shared machinery of every operation: one vault, one caller, one region, one clock."""

    def __init__(
        self,
        vault_path: Path,
        keys: KeySource,
        *,
        caller: Caller | None = None,
        audit_path: Path | None = None,
        clock: Callable[[], datetime] = utcnow,
        audit_max_bytes: int | None = None,
        region: str = ids.DEFAULT_REGION,
        store: VaultStore | None = None,
    ) -> None:
        #: ``store``: one shared by the calls of a long-lived process (``serve``), which keeps what it opened.
        self.store = store if store is not None else VaultStore(vault_path)
        #: Keys and aliases belong to the region they were made in; another region's are not found (as in AWS).
        self.region = ids.validate_region(region)
        self.audit_max_bytes = audit_max_bytes
        self.keys = keys
        self.caller = caller or Caller.current()
        #: The log the caller named (--audit-log, KMSCLI_AUDIT_LOG): chooses where
        #: `init` puts it; afterwards it must be the vault's own (fixed at init).
        self.requested_audit_path = Path(os.path.abspath(audit_path)) if audit_path is not None else None
        #: Where the log is before the vault is unlocked: the one named, else beside the real vault.
        self.audit_path = self.requested_audit_path or self.store.path.with_name(AUDIT_FILE)
        self.clock = clock
        #: GrantTokens the request carried (``--grant-token``): each is checked against the key it is used with.
        self.grant_tokens: tuple[str, ...] = ()
        self._audit: Any = None
        self._audit_key: tuple[str, str] = ("", "")

    # =================================================================
    # Machinery (open, due events, authorize, record)
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
        with contextlib.suppress(errors.KmsError), contextlib.closing(self.store.open(self.keys)) as ov:
            self._record(ov, Call(event, {}), refusal)
        raise refusal

    def record_refusal(self, event: str, error: errors.KmsError, request: dict[str, Any] | None = None) -> None:
        """Record a request an adapter refused before any operation ran (the wire's own checks).

        Keyed like every record; best effort, since the refusal itself is what
        the caller must get.
        """
        with contextlib.suppress(errors.KmsError), self._refusing(event, request or {}):
            raise error

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
            call = Call(event, request)
            while True:
                try:
                    ov = self.store.open(self.keys)
                    break
                except errors.UnlockError as u:
                    with contextlib.suppress(errors.KmsError):
                        self._record(None, call, u)
                    if self._may_ask_again(u):
                        continue
                    raise e from None
                except errors.KmsError:
                    raise e from None  # no vault (or an unreadable one): nothing to record in
            with contextlib.closing(ov):
                self._record(ov, call, e)
            raise

    def _read(self, event: str, request: dict[str, Any],
              fn: Callable[[OpenVault, Call], dict[str, Any]]) -> dict[str, Any]:
        """Run an operation that changes nothing in the vault: no lock taken."""
        call = Call(event, request)
        ov = self._open_recording(call)
        try:
            if self._due_events(ov):
                # Something fell due: apply it under the lock and write it, then
                # answer without the lock, so a long stream never blocks writers.
                ov.close()
                with self.store.locked(), contextlib.closing(self._open_recording(call, write=True)) as w:
                    w.pending = []
                    if self._apply_due_events(w):
                        self._commit(w)
                    elif w.repaired:
                        self.store.write_vault(w)  # a stale schedule entry, mended: nothing to record
                    w.pending = None
                ov = self._open_recording(call)
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
        finally:
            ov.close()

    def _mutate(self, event: str, request: dict[str, Any],
                fn: Callable[[OpenVault, Call], dict[str, Any]]) -> dict[str, Any]:
        return self._mutate_call(Call(event, request), fn, write=True)

    def _mutate_call(self, call: Call, fn: Callable[[OpenVault, Call], dict[str, Any]],
                     write: bool = True) -> dict[str, Any]:
        """Read-modify-write under the vault's exclusive lock."""
        if isinstance(self.keys, PassphraseKeySource):
            # Derive the key before queueing for the lock, so writers wait for
            # milliseconds of AEAD work rather than for each other's Argon2 runs.
            # A session's key needs no derivation: it goes straight to the lock.
            self._open_recording(call).close()
        with self.store.locked():
            self.store.remove_stale_temps()
            with contextlib.closing(self._open_recording(call, write=True)) as ov:
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

    def _open_recording(self, call: Call, *, check_log: bool = True, write: bool = False) -> OpenVault:
        """Open the vault and check its log; a failed unlock is recorded without the key, then raised.

        The log check refuses (exit 8) a log cut back behind the vault's last
        write and a vault older than its log, and completes an append that a
        crash cut off between the vault's write and the log's. With ``write``
        (the vault lock held) the vault is opened for a change.
        """
        for _attempt in range(100):
            try:
                ov = self.store.open(self.keys, write=write)
            except errors.UnlockError as e:
                try:
                    self._record(None, call, e)
                except errors.AuditLogException as a:
                    # Nothing is released by a failed unlock: say it, not a log problem instead.
                    raise type(e)(f"{e.message} (the failed attempt could not be recorded: {a.message})") from None
                if self._may_ask_again(e):
                    continue  # each wrong passphrase is its own failed unlock, recorded above
                raise
            try:
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
                    ov.close()
                    continue
                raise errors.AuditLogException(problem)
            except BaseException:
                ov.close()
                raise
        raise errors.AuditLogException("the vault kept changing while this call read it (100 times); run it again")

    def _may_ask_again(self, e: errors.KmsError) -> bool:
        """After a wrong passphrase: whether the key source asks for another (a person at a terminal)."""
        another = getattr(self.keys, "another_try", None)
        return isinstance(e, errors.IncorrectPassphraseException) and another is not None and bool(another())

    def _check_audit_location(self, ov: OpenVault) -> None:
        """The log is the vault's own, fixed at init: naming another one is refused (exit 2)."""
        from ..vault.store import check_private_folder

        fixed = self._log_path(ov)
        if self.requested_audit_path is not None and os.path.realpath(self.requested_audit_path) != os.path.realpath(
            fixed
        ):
            raise errors.ValidationException(
                f"this vault's audit log is {fixed}, fixed when the vault was created; it cannot be sent to "
                f"{self.requested_audit_path} (drop --audit-log / KMSCLI_AUDIT_LOG)"
            )
        check_private_folder(fixed.parent, "the audit log")

    def _record_where_it_belongs(self, ov: OpenVault, call: Call, e: errors.KmsError) -> None:
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
        lines = (ov.audit_head or {}).get("lines")
        if not lines:
            return problem
        # Under the log's lock: either a crash kept these records out (they are
        # appended now), or their writer was still appending them a moment ago.
        log.complete(lines)
        return self._log_problem(ov, log.tail())

    def _log_problem(self, ov: OpenVault, tail: Any) -> str | None:
        from .. import audit

        head = ov.audit_head
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
        key = self._ring(ov).key_for(seq)
        sealed_here = tail.sealed_with is not None and hmac.compare_digest(tail.sealed_with, key)
        if not sealed_here and not audit.record_mac_ok(key, last):
            return (f"the last keyed record of the audit log {path} (record {seq}) was not written under this "
                    f"vault's key: the log was replaced{hint}")
        if seq < head["seq"] or (seq == head["seq"] and last[audit.MAC_FIELD] != head["mac"]):
            return (f"the audit log {path} was cut or rolled back: its last keyed record is record {seq}, "
                    f"but the vault's last write recorded record {head['seq']}{hint}")
        generation = (last.get("additionalEventData") or {}).get(audit.GENERATION_FIELD)
        if isinstance(generation, int) and generation > ov.generation:
            return (f"the vault is older than its audit log: the log records vault generation {generation}, "
                    f"the vault {self.store.path} is at generation {ov.generation}: the vault file "
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
        keys = chain_keys_of(ov)
        rekey = next((k for k in keys if k["from_seq"] is None), None)
        written = False

        def before_write(lines: list[str], heads: list[Any]) -> None:
            nonlocal written
            if rekey is not None:
                rekey["from_seq"] = heads[-1].seq  # this call's record is the first under the new key
            last = heads[-1]
            ov.audit_head = {"file_index": last.file_index, "seq": last.seq, "mac": last.mac, "lines": lines}
            self.store.write_vault(ov, create=create)
            written = True

        ov.generation = ov.generation + 1
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
        from .. import audit

        records = ov.pending or []
        ov.pending = None
        for r in records:  # no write after all: they saw the generation the vault keeps
            r.setdefault("additionalEventData", {})[audit.GENERATION_FIELD] = ov.generation
        if records:
            self._audit_log(ov).append_batch(records, self._ring(ov))

    def _preflight(self, ov: OpenVault, writer: Any) -> None:
        """Fail closed before output that cannot be taken back: when the log could not be appended to.

        Output kept in memory (a served request's answer, sent only after its
        record is on disk) can be taken back, so it needs no early check.
        """
        if not isinstance(writer, io.BytesIO):
            self._audit_log(ov).preflight()

    def _log_path(self, ov: OpenVault) -> Path:
        stored = ov.audit_log
        return Path(stored) if stored else self.store.path.with_name(AUDIT_FILE)

    def _ring(self, ov: OpenVault) -> Any:
        from .. import audit

        return audit.KeyRing(tuple((k["from_seq"], bytes.fromhex(k["key"])) for k in chain_keys_of(ov)
                                   if k["from_seq"] is not None))

    def _audit_log(self, ov: OpenVault | None) -> Any:

        if ov is None:
            path, chain_id = self.audit_path, ""
        else:
            path = self._log_path(ov)
            epoch = ov.audit_epoch
            # A restarted log is a new chain: its genesis names the epoch, so no
            # earlier log of the same vault can pass for it.
            chain_id = ov.vault_id if epoch == 0 else f"{ov.vault_id}:{epoch}"
        if self._audit is None or self._audit_key != (str(path), chain_id):
            self._audit = _shared_log(str(path), chain_id, self.audit_max_bytes)
            self._audit_key = (str(path), chain_id)
        return self._audit

    def _record(self, ov: OpenVault | None, call: Call, error: errors.KmsError | None = None,
                event_type: str = "AwsApiCall") -> Any:
        """Append the call's audit record (or queue it for the vault's write); fail closed.

        Returns the record's chain head when it was appended now.
        """
        from .. import audit

        if ov is None and not isinstance(error, errors.UnlockError):
            raise AssertionError("only a failed unlock is recorded without the key")
        record = self._make_record(ov, call, error, event_type)
        if ov is None:
            if not self.store.path.exists():
                return None  # no vault, so no log beside it to write to
            return self._audit_log(None).append(record, None)
        if ov.pending is not None:
            # Written with the vault, under the generation that write makes.
            record.setdefault("additionalEventData", {})[audit.GENERATION_FIELD] = ov.generation + 1
            ov.pending.append(record)
            return None
        record.setdefault("additionalEventData", {})[audit.GENERATION_FIELD] = ov.generation
        # Through the group commit: concurrent requests of a server share one write and fsync.
        return audit.GROUP_COMMIT.append(self._audit_log(ov), record, self._ring(ov),
                                         catch_up=lambda: self._lines_of_a_newer_write(ov),
                                         event_id=call.event_id or audit.new_event_id())

    def _lines_of_a_newer_write(self, ov: OpenVault) -> list[str] | None:
        """Under the log's lock: the records of a vault write made since ``ov`` was read, if any.

        A writer holds the log's lock from its vault's rename to its append, so
        a newer vault seen here is either fully logged already or its writer
        died in between: then its records go first, never forked from by ours.
        """
        return self.store.newer_lines(ov)

    def _make_record(self, ov: OpenVault | None, call: Call, error: errors.KmsError | None,
                     event_type: str) -> dict[str, Any]:
        account = ov.account if ov is not None else None
        record: dict[str, Any] = {
            "eventName": call.event,
            "eventType": event_type,
            "eventTime": iso(self.clock()),
            "userIdentity": self.caller.identity(account),
            "requestParameters": call.request,
            "responseElements": call.response if error is None else None,
            "readOnly": call.event.startswith(("Describe", "List", "Get")),
        }
        if self.caller.access_key_id is not None and event_type == "AwsApiCall":
            record.update(sourceIPAddress=self.caller.source_ip, userAgent=self.caller.user_agent,
                          requestID=self.caller.request_id)
        if call.resources:
            record["resources"] = [{"type": "AWS::KMS::Key", "ARN": arn} for arn in call.resources]
        if error is not None:
            record.update(errorCode=error.name, errorMessage=error.message)
        if call.grant_id is not None:
            record["additionalEventData"] = {"grantId": call.grant_id}
        return record

    def _record_before_release(self, ov: OpenVault, call: Call) -> None:
        """Append the call's (successful) record now, before its output is released."""
        from .. import audit

        call.event_id = audit.new_event_id()
        self._record(ov, call)

    def _record_outcome(self, ov: OpenVault, call: Call, error: errors.KmsError) -> None:
        """Record a failure; after an early record, as a second record that names the first."""
        if call.event_id is None:
            self._record(ov, call, error)
            return
        first, call.event_id = call.event_id, None
        call.request = {**call.request, "outcomeOf": first}
        self._record(ov, call, error)

    # -- keys, state and policy -------------------------------------------
    def _resolve(self, ov: OpenVault, call: Call, key_ref: str) -> dict[str, Any]:
        ref = ids.parse_key_ref(key_ref)
        account = ov.account
        if ref.account is not None and ref.account != account:
            raise errors.NotFoundException(f"'{key_ref}' names another account than this vault's ({account})")
        if ref.region is not None and ref.region != self.region:
            raise errors.NotFoundException(
                f"Invalid arn {key_ref}: it names region '{ref.region}', this call is in '{self.region}'"
            )
        key_id = ref.key_id
        if ref.alias is not None:
            alias = self._alias(ov, ref.alias)
            if alias is None:
                raise errors.NotFoundException(f"Alias {self._alias_arn(ov, ref.alias)} is not found",
                                               hint="see 'kmscli alias list'")
            key_id = alias["TargetKeyId"]
        key = self._region_key(ov, key_id)
        if key is None:
            raise errors.NotFoundException(f"Key '{self._key_arn(ov, key_id or '')}' does not exist",
                                           hint="see 'kmscli keys list --all'")
        call.response.setdefault("keyId", key["KeyId"])
        arn = self._key_arn(ov, key["KeyId"])
        if arn not in call.resources:
            call.resources.append(arn)
        if ref.alias is not None and call.alias is None:
            call.alias = ref.alias
        return key

    def _key(self, ov: OpenVault, call: Call, key_ref: str, action: str,
             conditions: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resolve a KEY argument and check the caller may do ``action`` with it."""
        key = self._resolve(ov, call, key_ref)
        self._authorize(ov, call, key, action, conditions)
        return key

    def _authorize(self, ov: OpenVault, call: Call, key: dict[str, Any], action: str,
                   conditions: dict[str, Any] | None = None, *, grants: bool = True) -> None:
        """Allow ``action`` on ``key`` when its policy does, or else (``grants``) when a grant does.

        An explicit Deny in the policy wins over every grant. A call allowed by a
        grant records it (``call.grant_id``). Grant tokens the request carries are
        checked first: one this vault did not issue, or one of another key, is
        InvalidGrantTokenException however the call would be decided.
        """
        from .. import policy as policy_mod

        for token in self.grant_tokens:
            from .grant_rules import parse_token

            token_key, _grant = parse_token(ov, token)
            # A call that uses two keys (ReEncrypt) takes the tokens of either: each is one of this call's keys.
            if token_key != key["KeyId"] and self._key_arn(ov, token_key) not in call.resources:
                raise errors.InvalidGrantTokenException(
                    f"a grant token of another key was given with {self._key_arn(ov, key['KeyId'])}")

        account = ov.account
        principal = self.caller.arn(account)
        context: dict[str, Any] = {
            "aws:CurrentTime": iso(self.clock()),
            "aws:PrincipalArn": principal,
            "aws:username": self.caller.user,
            "kms:CallerAccount": account,
            "kms:KeySpec": key_spec(key),
            "kms:KeyUsage": key_usage(key),
            "kms:KeyOrigin": key.get("Origin", "AWS_KMS"),
        }
        if call.alias is not None:
            context["kms:RequestAlias"] = call.alias
        context.update(conditions or {})
        request = policy_mod.Request(principal=principal, account=account, action=action,
                                     resource=self._key_arn(ov, key["KeyId"]), context=context)
        decision = policy_mod.evaluate(_stored_policy(key["Policy"]), request)
        if not decision.allowed and grants and not decision.denied:
            grant = self._granting(ov, key, action, principal, conditions or {})
            if grant is not None:
                call.grant_id = grant["GrantId"]
                return
        if not decision.allowed:
            why = ("an explicit deny in the key policy" if decision.denied
                   else "the key policy" + (" (and no grant allows it)" if grants else ""))
            raise errors.AccessDeniedException(
                f"User: {principal} is not authorized to perform: {action} on resource: "
                f"{self._key_arn(ov, key['KeyId'])} because of {why}"
            )

    def _granting(self, ov: OpenVault, key: dict[str, Any], action: str, principal: str,
                  conditions: dict[str, Any]) -> dict[str, Any] | None:
        """The grant on ``key`` that lets ``principal`` do ``action`` under the request's context, if any."""
        from .grant_rules import constraints_hold

        operation = action.removeprefix("kms:")
        prefix = "kms:EncryptionContext:"
        context = {k[len(prefix):]: v for k, v in conditions.items() if k.startswith(prefix)}
        # CreateGrant through a grant delegates that grant's operations: prefer one that has them all.
        delegated = set(conditions.get("kms:GrantOperations") or ()) if operation == "CreateGrant" else set()
        found = None
        for grantee in (principal, f"arn:aws:iam::{ov.account}:root"):
            for grant in ov.grantee_grants(key["KeyId"], grantee):
                if operation in grant["Operations"] and constraints_hold(grant, operation, context):
                    if delegated <= set(grant["Operations"]):
                        return grant
                    found = found or grant
        return found

    def _allowed(self, ov: OpenVault, call: Call, key: dict[str, Any], action: str) -> bool:
        """Whether the key policy lets the caller do ``action``: for views that show only what is allowed."""
        try:
            self._authorize(ov, call, key, action)
        except errors.AccessDeniedException:
            return False
        return True

    def _checked_policy(self, document: str | None, account: str, bypass: bool, key_id: str) -> str:
        from .. import policy as policy_mod

        if document is None:
            return policy_mod.default_policy(account)
        # A principal that can never match this vault (another partition or
        # account, a malformed ARN) is refused now, not silently never matched.
        parsed = policy_mod.parse(document, account=account)
        # With the key's ARN, a statement scoped to this very key counts as access, as in AWS.
        resource = ids.key_arn(account, key_id, region=self.region)
        if not bypass and policy_mod.would_lock_out(parsed, self.caller.arn(account), account, resource=resource):
            raise errors.MalformedPolicyDocumentException(
                "the new key policy will not allow you to update the key policy in the future; "
                "add a statement allowing kms:PutKeyPolicy, or pass --bypass-policy-lockout-safety-check"
            )
        return document

    def _ciphertext_key(self, ov: OpenVault, call: Call, header: Any, asserted: str | None, action: str,
                        context: dict[str, str], extra: dict[str, Any] | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The key and material a ciphertext names, after every check that applies."""
        key = self._region_key(ov, header.key_id)
        if key is None or not is_symmetric(key):
            # Destroyed, another region's or another vault's: indistinguishable from garbage. No envelope was
            # ever sealed under an asymmetric or HMAC key, so one that names such a key is garbage too.
            raise errors.InvalidCiphertextException()
        if asserted is not None:
            wanted = self._resolve(ov, call, asserted)
            if wanted["KeyId"] != key["KeyId"]:
                raise errors.IncorrectKeyException()
        arn = self._key_arn(ov, key["KeyId"])
        if arn not in call.resources:
            call.resources.append(arn)
        call.response["keyId"] = key["KeyId"]
        self._authorize(ov, call, key, action, {**context_conditions(context), **(extra or {})})
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
        if state == KeyState.PENDING_IMPORT:
            raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending import.")

    def _require_usage(self, ov: OpenVault, key: dict[str, Any], needed: str, operation: str) -> None:
        """InvalidKeyUsageException (exit 4), in AWS's words, unless the key's usage is ``needed``."""
        from ..crypto import asymmetric

        asymmetric.require_usage(key_spec(key), key_usage(key), needed, operation, self._arn(ov, key))

    def _require_symmetric(self, ov: OpenVault, key: dict[str, Any], operation: str) -> None:
        """InvalidKeyUsageException unless the key is a SYMMETRIC_DEFAULT key: envelope encryption and data keys."""
        self._require_usage(ov, key, "ENCRYPT_DECRYPT", operation)
        spec = key_spec(key)
        if spec != KEY_SPEC:
            raise errors.InvalidKeyUsageException(
                f"{self._arn(ov, key)} key spec is {spec}, which is not valid for {operation}: it needs a "
                f"{KEY_SPEC} key", hint=f"an {spec} key encrypts with --algorithm RSAES_OAEP_SHA_256 or "
                "RSAES_OAEP_SHA_1 (a small message, no envelope)" if operation in ("Encrypt", "ReEncrypt") else None)

    def _require_not_pending(self, ov: OpenVault, key: dict[str, Any]) -> None:
        if key["KeyState"] == KeyState.PENDING_DELETION:
            raise errors.KMSInvalidStateException(f"{self._arn(ov, key)} is pending deletion.")

    def _check_alias_quota(self, ov: OpenVault, key_id: str) -> None:
        if len(ov.key_aliases(key_id)) >= ALIASES_PER_KEY_MAX:
            raise errors.LimitExceededException(f"a key can have at most {ALIASES_PER_KEY_MAX} aliases")

    # -- regions ------------------------------------------------------------
    # A key records its region ("Region", absent in vaults from before regions:
    # the default). Aliases are named per region: the default region's under
    # their bare name, as vaults always stored them, another's as
    # "<region>:<name>" (no alias name contains a colon).
    def _in_region(self, key: dict[str, Any]) -> bool:
        return key.get("Region", ids.DEFAULT_REGION) == self.region

    def _region_key(self, ov: OpenVault, key_id: str | None) -> dict[str, Any] | None:
        key = ov.get_key(key_id) if key_id else None
        return key if key is not None and self._in_region(key) else None

    def _listed_keys(self, ov: OpenVault, include_pending_deletion: bool,
                     after: Cursor | None = None) -> Iterator[tuple[Cursor, dict[str, Any]]]:
        """This region's keys as List* shows them, from ``after`` on: those pending deletion only when asked."""
        for cursor, key in ov.iter_keys(after):
            if self._in_region(key) and (include_pending_deletion or key["KeyState"] != KeyState.PENDING_DELETION):
                yield cursor, key

    def _alias_slot(self, name: str) -> str:
        return alias_slot(self.region, name)

    def _alias(self, ov: OpenVault, name: str) -> dict[str, Any] | None:
        return ov.get_alias(self._alias_slot(name))

    def _alias_name(self, slot: str) -> str | None:
        """The alias name a slot holds when it is this region's, else None."""
        region, sep, name = slot.rpartition(":")
        return name if (region if sep else ids.DEFAULT_REGION) == self.region else None

    def _key_alias_names(self, ov: OpenVault, key_id: str) -> list[str]:
        """The names of this region's aliases of one key, sorted (from the key's own alias list)."""
        return sorted(n for n in (self._alias_name(s) for s in ov.key_aliases(key_id)) if n is not None)

    def _region_aliases(self, ov: OpenVault, after: Cursor | None = None
                        ) -> Iterator[tuple[Cursor, str, dict[str, Any]]]:
        """This region's aliases (cursor, name, entry), from ``after`` on."""
        for cursor, slot, alias in ov.iter_aliases(after):
            name = self._alias_name(slot)
            if name is not None:
                yield cursor, name, alias

    def _key_arn(self, ov: OpenVault, key_id: str) -> str:
        return ids.key_arn(ov.account, key_id, region=self.region)

    def _alias_arn(self, ov: OpenVault, name: str) -> str:
        return ids.alias_arn(ov.account, name, region=self.region)

    def _arn(self, ov: OpenVault, key: dict[str, Any]) -> str:
        return self._key_arn(ov, key["KeyId"])

    def _metadata(self, ov: OpenVault, key: dict[str, Any]) -> dict[str, Any]:
        from ..model import key_metadata

        return key_metadata(ov.account, key, region=self.region)

    # -- time-based events ------------------------------------------------
    def _due_events(self, ov: OpenVault) -> bool:
        return ov.has_due(self.clock())

    @staticmethod
    def _rotation_status(key: dict[str, Any]) -> tuple[bool, int, datetime | None]:
        """(automatic rotation on, period in days, next date) as GetKeyRotationStatus reports them:
        off for a key pending deletion, whatever its setting."""
        rot = key["Rotation"]
        enabled = bool(rot["Enabled"]) and key["KeyState"] != KeyState.PENDING_DELETION
        return enabled, rot["PeriodInDays"], parse_iso(rot["NextRotationDate"]) if enabled else None

    def _rotation_due(self, key: dict[str, Any], now: datetime) -> bool:
        rot = key["Rotation"]
        return (key["KeyState"] == KeyState.ENABLED and rot["Enabled"] and rot["NextRotationDate"] is not None
                and parse_iso(rot["NextRotationDate"]) <= now)

    def _apply_due_events(self, ov: OpenVault) -> bool:
        """Destroy keys past their window, rotate keys past their period; record each."""
        changed = False
        now = self.clock()
        for key in ov.due_keys(now):
            if key["KeyState"] == KeyState.PENDING_DELETION and parse_iso(key["DeletionDate"]) <= now:
                key_id = key["KeyId"]
                gone = ov.key_aliases(key_id)
                for slot in gone:
                    ov.delete_alias(slot)
                for grant in ov.key_grants(key_id):  # a key's grants go with it, as in AWS
                    ov.delete_grant(grant["GrantId"])
                ov.delete_key(key_id)
                call = Call("DeleteKey", {"keyId": key_id},
                             {"keyId": key_id, "deletionDate": key["DeletionDate"], "aliasesDeleted": gone},
                             [ids.key_arn(ov.account, key_id, region=key.get("Region", ids.DEFAULT_REGION))])
                self._record(ov, call, event_type="AwsServiceEvent")
                changed = True
            elif self._expire_if_due(ov, key, now) or self._rotate_if_due(ov, key):
                changed = True
        return changed

    def _expire_if_due(self, ov: OpenVault, key: dict[str, Any], now: datetime) -> bool:
        """Delete imported material whose ValidTo has passed, as AWS does (CloudTrail: DeleteExpiredKeyMaterial)."""
        valid_to = (key.get("Import") or {}).get("ValidTo")
        if valid_to is None or parse_iso(valid_to) > now:
            return False
        material = drop_imported_material(key)
        ov.put_key(key)
        call = Call("DeleteExpiredKeyMaterial", {"keyId": key["KeyId"]},
                    {"keyId": key["KeyId"], "keyMaterialId": material["KeyMaterialId"], "validTo": valid_to,
                     "keyState": key["KeyState"]},
                    [ids.key_arn(ov.account, key["KeyId"], region=key.get("Region", ids.DEFAULT_REGION))])
        self._record(ov, call, event_type="AwsServiceEvent")
        return True

    def _rotate_if_due(self, ov: OpenVault, key: dict[str, Any]) -> bool:
        now = self.clock()
        if not self._rotation_due(key, now):
            return False
        # However many periods were missed, a key rotates once (SPEC).
        material = self._add_material(key, "AUTOMATIC")
        key["Rotation"]["NextRotationDate"] = iso(now + timedelta(days=key["Rotation"]["PeriodInDays"]))
        ov.put_key(key)
        call = Call("RotateKey", {"keyId": key["KeyId"]},
                     {"keyId": key["KeyId"], "keyMaterialId": material["KeyMaterialId"]},
                     [ids.key_arn(ov.account, key["KeyId"], region=key.get("Region", ids.DEFAULT_REGION))])
        self._record(ov, call, event_type="AwsServiceEvent")
        return True

    def _add_material(self, key: dict[str, Any], rotation_type: str) -> dict[str, Any]:
        from ..crypto import primitives as P

        material = new_material(key["Materials"][-1]["Version"] + 1, iso(self.clock()), rotation_type,
                                 P.random_bytes(MATERIAL_SIZE))
        key["Materials"].append(material)
        return material


# -- helpers --------------------------------------------------------------
class RecordFirst:
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


@functools.lru_cache(maxsize=64)
def _shared_log(path: str, chain_id: str, max_bytes: int | None) -> Any:
    """One AuditLog object per log in a process, so that what it learns (where the
    log ends, which file is live) serves every call of a long-lived process."""
    from .. import audit

    return audit.AuditLog(path, vault_id=chain_id, **({"max_bytes": max_bytes} if max_bytes else {}))


@functools.lru_cache(maxsize=1024)
def _stored_policy(document: str) -> Any:
    """A stored key policy, parsed once per process (a server checks the same few on every request).

    Parsed policies are frozen; the document text is the key, so a changed
    policy is parsed anew.
    """
    from .. import policy as policy_mod

    return policy_mod.parse(document)


def alias_slot(region: str, name: str) -> str:
    """Where the vault body keeps an alias: the default region's under its name, another's as
    ``<region>:<name>`` (no alias name holds a colon), so vaults from before regions read unchanged."""
    return name if region == ids.DEFAULT_REGION else f"{region}:{name}"


def new_key(key_id: str, region: str, created: str, description: str, tags: dict[str, str], policy: str,
            material: bytes | None, spec: str = KEY_SPEC, usage: str = "ENCRYPT_DECRYPT",
            origin: str = "AWS_KMS") -> dict[str, Any]:
    """A key as the vault body stores it (docs/vault.md): Enabled, rotation off, one material version.

    ``KeySpec`` and ``KeyUsage`` are stored only for a key that is not SYMMETRIC_DEFAULT, so a symmetric key's
    record is what it always was; ``Origin`` only for one that is not AWS_KMS. An EXTERNAL key (``material``
    None) starts PendingImport with no material version.
    """
    key: dict[str, Any] = {
        "KeyId": key_id,
        "Region": region,
        "CreationDate": created,
        "Description": description,
        "KeyState": KeyState.ENABLED.value,
        "DeletionDate": None,
        "PendingDeletionWindowInDays": None,
        "Tags": tags,
        "Policy": policy,
        "Rotation": {"Enabled": False, "PeriodInDays": ROTATION_PERIOD_DEFAULT, "NextRotationDate": None,
                     "MinDecryptVersion": 1, "OnDemandCount": 0},
        "Materials": [new_material(1, created, None, material)] if material is not None else [],
    }
    if spec != KEY_SPEC:
        key.update(KeySpec=spec, KeyUsage=usage)
    if origin != "AWS_KMS":
        key.update(Origin=origin, KeyState=KeyState.PENDING_IMPORT.value)
    return key


def new_material(version: int, created: str, rotation_type: str | None, secret: bytes) -> dict[str, Any]:
    import hashlib

    return {
        "Version": version,
        # An identifier, not a secret: a hash of the material under a label.
        "KeyMaterialId": hashlib.sha256(b"kmscli key material id\x00" + secret).hexdigest(),
        "Material": base64.b64encode(secret).decode(),
        "CreationDate": created,
        "RotationType": rotation_type,
    }


def material_bytes(material: dict[str, Any]) -> bytes:
    if "Material" not in material:  # imported material deleted: callers check the key's state first
        raise errors.KMSInvalidStateException("the key material was deleted; import it again to use the key")
    return base64.b64decode(material["Material"])


def drop_imported_material(key: dict[str, Any]) -> dict[str, Any]:
    """Delete an EXTERNAL key's material (DeleteImportedKeyMaterial, expiry); the material version it was.

    Only the secret bytes go: the version and its KeyMaterialId stay, so the same material can be imported
    again (and nothing else can), and ciphertexts made before decrypt again then. The key becomes
    PendingImport, unless it is pending deletion (AWS leaves that state as it is).
    """
    material = key["Materials"][-1]
    material.pop("Material", None)
    key.pop("Import", None)
    if key["KeyState"] != KeyState.PENDING_DELETION:
        key["KeyState"] = KeyState.PENDING_IMPORT.value
    return material


def tag_dict(tags: list[dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        ids.validate_tag(t["TagKey"], t["TagValue"])
        out[t["TagKey"]] = t["TagValue"]
    if len(out) > TAGS_PER_KEY_MAX:
        raise errors.TagException(f"a key can have at most {TAGS_PER_KEY_MAX} tags (got {len(out)})")
    return out


def context_of(ec: dict[str, str] | None) -> dict[str, str]:
    from ..crypto import stream

    context = dict(ec or {})
    stream.encode_context(context)  # validates: local limits named in docs/format.md
    return context


def context_conditions(context: dict[str, str]) -> dict[str, Any]:
    cond: dict[str, Any] = {f"kms:EncryptionContext:{k}": v for k, v in context.items()}
    cond["kms:EncryptionContextKeys"] = sorted(context)
    return cond


def decode_marker(marker: str | None) -> list[str] | None:
    """The position a Marker names (None: from the start); one this service did not make is refused."""
    import json

    if marker is None:
        return None
    try:
        after = json.loads(base64.urlsafe_b64decode(marker.encode("ascii")))
        if not isinstance(after, list) or not after or not all(isinstance(part, str) for part in after):
            raise ValueError(marker)
    except (ValueError, UnicodeError, TypeError):
        raise errors.InvalidMarkerException(
            "the Marker is not one this operation returned as NextMarker; start again without it"
        ) from None
    return after


def encode_marker(cursor: list[str]) -> str:
    """An opaque Marker for a position (base64url JSON): a page stays right when items before it come or go."""
    import json

    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode("ascii")


def page_of(items: Iterator[tuple[list[str], Any]], limit: int | None, default_limit: int
            ) -> tuple[list[Any], str | None]:
    """The first page of ``items`` (each with its cursor, in order); the marker of the next page, if any.

    Reads one item past the page, to know whether another page follows, and
    never more: a listing of any size is read a page at a time.
    """
    n = default_limit if limit is None else limit
    check_range("Limit", n, 1, 1000)
    out: list[Any] = []
    last: list[str] | None = None
    for cursor, item in items:
        if len(out) == n:
            assert last is not None
            return out, encode_marker(last)
        out.append(item)
        last = cursor
    return out, None


def page(items: list[Any], sort_key: Callable[[Any], tuple[str, ...]], limit: int | None, marker: str | None,
         default_limit: int) -> tuple[list[Any], str | None]:
    """One page of a small list ``items`` (sorted by ``sort_key``) after ``marker``; the next page's marker."""
    after = decode_marker(marker)
    ordered = sorted(((list(sort_key(i)), i) for i in items), key=lambda e: e[0])
    return page_of(((c, i) for c, i in ordered if after is None or c > after), limit, default_limit)


def paging(limit: int | None, marker: str | None) -> dict[str, Any]:
    """A List* call's paging members for its audit record, those given only."""
    return {k: v for k, v in (("limit", limit), ("marker", marker)) if v is not None}


def paged(name: str, items: list[Any], next_marker: str | None) -> dict[str, Any]:
    """A List* answer as AWS shapes it: the items, ``Truncated``, and ``NextMarker`` when truncated."""
    out: dict[str, Any] = {name: items, "Truncated": next_marker is not None}
    if next_marker is not None:
        out["NextMarker"] = next_marker
    return out


def check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise errors.ValidationException(f"{name} must be between {lo} and {hi} (got {value})")


def check_policy_name(name: str) -> None:
    if name != "default":
        raise errors.ValidationException(f"the only key policy name is 'default' (got '{name}')")


def chain_key_hex(vault_key: bytes) -> str:
    from .. import audit

    return audit.chain_key(vault_key).hex()


def chain_keys_of(ov: OpenVault) -> list[dict[str, Any]]:
    """The vault's audit chain keys by first record; a vault from 0.1.0 has one, derived from its key."""
    keys = ov.chain_keys
    if not keys:
        keys = ov.chain_keys = [{"from_seq": 1, "key": chain_key_hex(ov.vault_key)}]
    return keys


def parse_witness(text: str) -> tuple[int, str]:
    import re

    m = re.fullmatch(r"([1-9][0-9]{0,17}):([0-9a-f]{64})", text)
    if not m:
        raise errors.ValidationException(f"--head takes SEQ:MAC as 'kmscli audit head' prints it (got '{text}')")
    return int(m.group(1)), m.group(2)


def chain_head(value: dict[str, Any] | None) -> Any:
    if value is None:
        return None
    from .. import audit

    return audit.ChainHead(file_index=value["file_index"], seq=value["seq"], mac=value["mac"])
