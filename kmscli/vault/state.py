"""What the service sees of an unlocked vault: accessors, whatever the file's format.

The service never handles the vault as one document: it asks for one key,
one alias, one credential, the aliases of one key, a page of a listing, the
keys whose time-based event fell due, and the vault's metadata (account, vault
id, generation, audit anchors). Format 1 (docs/vault.md: one sealed body)
answers from its body; format 2 (docs/vault-v2.md: sealed records) reads and
writes only the records asked for, so no single-key call touches the others.

Values handed out are plain dicts owned by the caller's open vault: changing
one and writing it back with the matching ``put_*`` is how a change is made
(a key changed in place is written too, when the vault is committed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Self

from ..model import KeyState, parse_iso
from . import format as F

#: A position in a listing, as the service encodes it into an opaque marker.
Cursor = list[str]


def due_time(key: dict[str, Any]) -> str | None:
    """When the key's next time-based event falls due (ISO 8601), or None when it has none.

    A key pending deletion is destroyed at its deletion date; an enabled key
    with automatic rotation on rotates at its next rotation date; disabled keys
    do not rotate (enabling one rotates it at once when it is overdue).
    Imported material that expires is deleted at its ``ValidTo``, whatever
    the key's state, when that comes first.
    """
    when: str | None = None
    rot = key["Rotation"]
    if key["KeyState"] == KeyState.PENDING_DELETION:
        when = key["DeletionDate"]
    elif key["KeyState"] == KeyState.ENABLED and rot["Enabled"] and rot["NextRotationDate"] is not None:
        when = rot["NextRotationDate"]
    expires = (key.get("Import") or {}).get("ValidTo")
    if expires is not None and (when is None or parse_iso(expires) < parse_iso(when)):
        when = expires
    return when


def grant_order(grant: dict[str, Any]) -> tuple[str, str]:
    """How grants are listed: oldest first, then by id."""
    return grant["CreationDate"], grant["GrantId"]


def grantee_slot(key_id: str, grantee: str) -> str:
    """The name of the index of one grantee's grants on one key (a key id holds no space)."""
    return f"{key_id} {grantee}"


def iso_day(when: datetime) -> str:
    """The day (UTC) a due time falls on, as "due" records are named."""
    from datetime import UTC

    return when.astimezone(UTC).strftime("%Y-%m-%d")


#: What stands for a derivable field in a stored key record (format 2): the account's default
#: policy, or a material id that is the hash of its material. Restored exactly when read.
DERIVED = 0


def material_id(material_b64: str) -> str:
    """A material's id (new_material's): a hash of its secret under a label, not a secret."""
    import base64
    import hashlib

    return hashlib.sha256(b"kmscli key material id\x00" + base64.b64decode(material_b64)).hexdigest()


def pack_key(key: dict[str, Any], account: str) -> dict[str, Any]:
    """A key as format 2 stores it: the default policy and derivable material ids left out (DERIVED).

    Half the record of a typical key: a smaller record fits its page, where a
    larger one would take an overflow page of its own.
    """
    from ..policy import default_policy

    rec = dict(key)
    if rec.get("Policy") == default_policy(account):
        rec["Policy"] = DERIVED
    materials = rec.get("Materials")
    if isinstance(materials, list):
        rec["Materials"] = [
            {**m, "KeyMaterialId": DERIVED}
            if isinstance(m, dict) and isinstance(m.get("Material"), str)
            and m.get("KeyMaterialId") == material_id(m["Material"]) else m
            for m in materials]
    return rec


def unpack_key(rec: dict[str, Any], account: str) -> dict[str, Any]:
    from ..policy import default_policy

    key = dict(rec)
    if key.get("Policy") == DERIVED:
        key["Policy"] = default_policy(account)
    materials = key.get("Materials")
    if isinstance(materials, list):
        key["Materials"] = [{**m, "KeyMaterialId": material_id(m["Material"])}
                            if isinstance(m, dict) and m.get("KeyMaterialId") == DERIVED else m for m in materials]
    return key


def listing_order(key: dict[str, Any]) -> tuple[str, str]:
    """Format 1 lists keys oldest first, ties by id."""
    return key["CreationDate"], key["KeyId"]


class OpenVault:
    """An unlocked vault: its header and key, its metadata, and accessors for what it holds."""

    #: The file format this was read from (1: one sealed body; 2: sealed records).
    format_version = 0

    def __init__(self, header: F.Header, vault_key: bytes, meta: dict[str, Any]) -> None:
        self.header = header
        self.vault_key = vault_key
        #: The vault's metadata: vault_id, account, created, generation, audit anchors.
        self.meta = meta
        #: Audit records that go to the log with the next write (None: records are appended at once).
        self.pending: list[dict[str, Any]] | None = None
        #: Which file this was read from (format 1: see store.file_id), to notice a write since.
        self.file_id: tuple[int, ...] | None = None
        #: Set when reading found (and mended) an index that disagreed with the records it indexes.
        self.repaired = False

    # -- the context-manager shape ---------------------------------------------
    def close(self) -> None:
        """Let go of what reading needs (a format-2 read transaction); idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------
    @property
    def account(self) -> str:
        return str(self.meta["account"])

    @property
    def vault_id(self) -> str:
        return str(self.meta["vault_id"])

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation", 0))

    @generation.setter
    def generation(self, value: int) -> None:
        self.meta["generation"] = value

    @property
    def audit_head(self) -> dict[str, Any] | None:
        return self.meta.get("audit_head")

    @audit_head.setter
    def audit_head(self, value: dict[str, Any] | None) -> None:
        self.meta["audit_head"] = value

    @property
    def audit_log(self) -> str | None:
        return self.meta.get("audit_log")

    @property
    def audit_epoch(self) -> int:
        return int(self.meta.get("audit_epoch", 0))

    @audit_epoch.setter
    def audit_epoch(self, value: int) -> None:
        self.meta["audit_epoch"] = value

    @property
    def chain_keys(self) -> list[dict[str, Any]] | None:
        return self.meta.get("chain_keys")

    @chain_keys.setter
    def chain_keys(self, value: list[dict[str, Any]]) -> None:
        self.meta["chain_keys"] = value

    # -- keys (by key id) ------------------------------------------------------------
    def get_key(self, key_id: str) -> dict[str, Any] | None:
        raise NotImplementedError  # pragma: no cover - interface

    def put_key(self, key: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def delete_key(self, key_id: str) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def iter_keys(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, dict[str, Any]]]:
        """Every key after the cursor ``after``, in the listing's order, each with its own cursor."""
        raise NotImplementedError  # pragma: no cover - interface

    # -- aliases (by slot: the name, or "<region>:<name>" outside the default region) ---
    def get_alias(self, slot: str) -> dict[str, Any] | None:
        raise NotImplementedError  # pragma: no cover - interface

    def put_alias(self, slot: str, alias: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def delete_alias(self, slot: str) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def key_aliases(self, key_id: str) -> list[str]:
        """The slots of the aliases that name ``key_id``, sorted."""
        raise NotImplementedError  # pragma: no cover - interface

    def iter_aliases(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, str, dict[str, Any]]]:
        """Every alias (slot and entry) after the cursor ``after``, each with its own cursor."""
        raise NotImplementedError  # pragma: no cover - interface

    # -- credentials (by access key id) --------------------------------------------
    def get_credential(self, access_key_id: str) -> dict[str, Any] | None:
        raise NotImplementedError  # pragma: no cover - interface

    def put_credential(self, entry: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def delete_credential(self, access_key_id: str) -> dict[str, Any] | None:
        """Remove a credential; the entry removed, or None when there was none."""
        raise NotImplementedError  # pragma: no cover - interface

    def user_credentials(self, user: str) -> list[dict[str, Any]]:
        """The credentials of one user (at most a few)."""
        raise NotImplementedError  # pragma: no cover - interface

    def iter_credentials(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, dict[str, Any]]]:
        raise NotImplementedError  # pragma: no cover - interface

    # -- grants (by grant id; listed by key, by grantee on a key, by retiring principal) ---
    def get_grant(self, grant_id: str) -> dict[str, Any] | None:
        raise NotImplementedError  # pragma: no cover - interface

    def put_grant(self, grant: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def delete_grant(self, grant_id: str) -> dict[str, Any] | None:
        """Remove a grant; the grant removed, or None when there was none."""
        raise NotImplementedError  # pragma: no cover - interface

    def key_grants(self, key_id: str) -> list[dict[str, Any]]:
        """The grants of one key, oldest first."""
        raise NotImplementedError  # pragma: no cover - interface

    def grantee_grants(self, key_id: str, grantee: str) -> list[dict[str, Any]]:
        """The grants of one key to one grantee principal: what an authorization reads."""
        raise NotImplementedError  # pragma: no cover - interface

    def retiring_grants(self, principal: str) -> list[dict[str, Any]]:
        """The grants, of every key, that ``principal`` may retire, oldest first."""
        raise NotImplementedError  # pragma: no cover - interface

    # -- time-based events -------------------------------------------------------------
    def has_due(self, now: datetime) -> bool:
        """Whether some key's event (deletion, rotation) is due at ``now``."""
        raise NotImplementedError  # pragma: no cover - interface

    def due_keys(self, now: datetime) -> list[dict[str, Any]]:
        """The keys whose event is due at ``now``, earliest first."""
        raise NotImplementedError  # pragma: no cover - interface


class BodyVault(OpenVault):
    """Format 1: everything in one decrypted body, changed in place and sealed whole."""

    format_version = F.FORMAT_VERSION

    def __init__(self, header: F.Header, vault_key: bytes, body: dict[str, Any]) -> None:
        super().__init__(header, vault_key, body)
        self.body = body
        self._by_key: dict[str, list[str]] | None = None

    # -- keys ---------------------------------------------------------------------
    def get_key(self, key_id: str) -> dict[str, Any] | None:
        return self.body["keys"].get(key_id)  # type: ignore[no-any-return]

    def put_key(self, key: dict[str, Any]) -> None:
        self.body["keys"][key["KeyId"]] = key

    def delete_key(self, key_id: str) -> None:
        self.body["keys"].pop(key_id, None)

    def iter_keys(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, dict[str, Any]]]:
        start = tuple(after) if after is not None else None
        for key in sorted(self.body["keys"].values(), key=listing_order):
            cursor = listing_order(key)
            if start is None or cursor > start:
                yield list(cursor), key

    # -- aliases ------------------------------------------------------------------
    def get_alias(self, slot: str) -> dict[str, Any] | None:
        return self.body["aliases"].get(slot)  # type: ignore[no-any-return]

    def put_alias(self, slot: str, alias: dict[str, Any]) -> None:
        self.body["aliases"][slot] = alias
        self._by_key = None

    def delete_alias(self, slot: str) -> None:
        self.body["aliases"].pop(slot, None)
        self._by_key = None

    def key_aliases(self, key_id: str) -> list[str]:
        if self._by_key is None:  # built once per body, not once per key listed
            by_key: dict[str, list[str]] = {}
            for slot, alias in sorted(self.body["aliases"].items()):
                by_key.setdefault(alias["TargetKeyId"], []).append(slot)
            self._by_key = by_key
        return list(self._by_key.get(key_id, ()))

    def iter_aliases(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, str, dict[str, Any]]]:
        for slot in sorted(self.body["aliases"]):
            if after is None or [slot] > after:
                yield [slot], slot, self.body["aliases"][slot]

    # -- credentials ----------------------------------------------------------------
    def _credentials(self) -> dict[str, dict[str, Any]]:
        return self.body.get("credentials") or {}  # type: ignore[no-any-return]

    def get_credential(self, access_key_id: str) -> dict[str, Any] | None:
        return self._credentials().get(access_key_id)

    def put_credential(self, entry: dict[str, Any]) -> None:
        self.body.setdefault("credentials", {})[entry["AccessKeyId"]] = entry

    def delete_credential(self, access_key_id: str) -> dict[str, Any] | None:
        return self._credentials().pop(access_key_id, None)

    def user_credentials(self, user: str) -> list[dict[str, Any]]:
        return [c for c in self._credentials().values() if c["UserName"] == user]

    def iter_credentials(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, dict[str, Any]]]:
        for c in sorted(self._credentials().values(), key=lambda c: (c["CreateDate"], c["AccessKeyId"])):
            cursor = [c["CreateDate"], c["AccessKeyId"]]
            if after is None or cursor > after:
                yield cursor, c

    # -- grants ------------------------------------------------------------------------
    def _grants(self) -> dict[str, dict[str, Any]]:
        return self.body.get("grants") or {}  # type: ignore[no-any-return]

    def get_grant(self, grant_id: str) -> dict[str, Any] | None:
        return self._grants().get(grant_id)

    def put_grant(self, grant: dict[str, Any]) -> None:
        self.body.setdefault("grants", {})[grant["GrantId"]] = grant

    def delete_grant(self, grant_id: str) -> dict[str, Any] | None:
        return self._grants().pop(grant_id, None)

    def key_grants(self, key_id: str) -> list[dict[str, Any]]:
        return sorted((g for g in self._grants().values() if g["KeyId"] == key_id), key=grant_order)

    def grantee_grants(self, key_id: str, grantee: str) -> list[dict[str, Any]]:
        return [g for g in self.key_grants(key_id) if g["GranteePrincipal"] == grantee]

    def retiring_grants(self, principal: str) -> list[dict[str, Any]]:
        return sorted((g for g in self._grants().values() if g.get("RetiringPrincipal") == principal),
                      key=grant_order)

    # -- time-based events ----------------------------------------------------------
    def _due(self, now: datetime) -> list[tuple[datetime, str]]:
        due = []
        for key_id, key in self.body["keys"].items():
            when = due_time(key)
            if when is not None and parse_iso(when) <= now:
                due.append((parse_iso(when), key_id))
        return sorted(due)

    def has_due(self, now: datetime) -> bool:
        return any(
            (when := due_time(key)) is not None and parse_iso(when) <= now for key in self.body["keys"].values()
        )

    def due_keys(self, now: datetime) -> list[dict[str, Any]]:
        return [self.body["keys"][key_id] for _, key_id in self._due(now)]

    def sealed(self) -> bytes:
        """The whole file: header, then the body sealed under the vault key."""
        return F.seal_body(self.header, self.vault_key, self.body)


def dumps(value: Any) -> str:
    """Canonical JSON: how a value is compared with what was read."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- format 2 ------------------------------------------------------------------------
#: Record kinds (docs/vault.md, "Format 2"): what the service stores, and the indexes kept beside it.
KEY, ALIAS, CREDENTIAL = "key", "alias", "credential"
KEY_ALIASES = "key-aliases"  # key id -> {"slots": [...]}: the aliases naming a key
USER_CREDENTIALS = "user-credentials"  # user name -> {"ids": [...]}: a user's access keys
GRANT = "grant"
KEY_GRANTS = "key-grants"  # key id -> {"ids": [...]}: a key's grants
GRANTEE_GRANTS = "grantee-grants"  # "<key id> <grantee>" -> {"ids": [...]}: what an authorization reads
RETIRING_GRANTS = "retiring-grants"  # retiring principal -> {"ids": [...]}: ListRetirableGrants
DUE = "due"  # day (YYYY-MM-DD) -> {"keys": {key id: due time}}: the time-based events of that day
SCHEDULE = "schedule"  # "days" -> {"days": [day, ...]}: the days that have a "due" record, sorted
SCHEDULE_DAYS = "days"
#: Records a listing reads per query: bounded memory whatever the vault holds (the first query reads fewer).
SCAN_PAGE = 100
SCAN_FIRST = 16
#: Records a read-only vault keeps decoded for a call (a call reads a handful).
READ_CACHE = 64


class RecordVault(OpenVault):
    """Format 2: sealed records read one at a time from a view (or changed in a write transaction).

    Reads go through a small cache so that one call sees one object per
    record; a write transaction writes, at commit, exactly the records put or
    deleted, the keys changed in place, and the indexes those changes move
    (a key's aliases, a user's credentials, the schedule of due events).
    """

    format_version = F.RECORDS_FORMAT_VERSION

    def __init__(self, header: F.Header, vault_key: bytes, view: Any, *, release: Any = None) -> None:
        super().__init__(header, vault_key, view.meta)
        #: The header of the file this was read from (``passwd`` replaces ``header`` to rekey).
        self.opened_header = header
        self._view = view
        self._writable = hasattr(view, "put")
        self._release = release
        #: (kind, name) -> the value now (None: absent), and its JSON as stored (None: absent).
        self._cache: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._stored: dict[tuple[str, str], str | None] = {}
        self._dirty: set[tuple[str, str]] = set()

    def close(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            view.close()
            if self._release is not None:
                self._release()

    @property
    def view(self) -> Any:
        if self._view is None:
            from .. import errors

            raise errors.KMSInternalException("this vault was closed")
        return self._view

    # -- records --------------------------------------------------------------------
    def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        k = (kind, name)
        if k in self._cache:
            return self._cache[k]
        value = self.view.get(kind, name)
        if kind == KEY and value is not None:
            value = unpack_key(value, self.account)
        if self._writable:
            self._cache[k] = value
            self._stored[k] = dumps(value) if value is not None else None  # what a change moves (_before)
        elif len(self._cache) < READ_CACHE:
            self._cache[k] = value
        return value

    def _put(self, kind: str, name: str, value: dict[str, Any] | None) -> None:
        if not self._writable:
            from .. import errors

            raise errors.KMSInternalException("a change was made to a vault opened for reading")
        self._get(kind, name)  # what is stored, to know what the change moves
        self._cache[(kind, name)] = value
        self._dirty.add((kind, name))

    def _before(self, kind: str, name: str) -> dict[str, Any] | None:
        stored = self._stored.get((kind, name))
        return json.loads(stored) if stored is not None else None

    def _scan(self, kind: str, after: Cursor | None) -> Iterator[tuple[str, dict[str, Any]]]:
        from .. import errors

        name: str | None = None
        if after is not None:
            if len(after) != 1:
                raise errors.InvalidMarkerException(
                    "the Marker is not one this operation returned as NextMarker; start again without it")
            name = after[0]
        size = SCAN_FIRST  # a page of 10 reads about 16 records, not SCAN_PAGE: pages read what they show
        while True:
            try:
                batch = self.view.scan(kind, name, size)
            except errors.ValidationException:  # a name no record can have
                raise errors.InvalidMarkerException(
                    "the Marker is not one this operation returned as NextMarker; start again without it"
                ) from None
            yield from batch
            if len(batch) < size:
                return
            name = batch[-1][0]
            size = min(2 * size, SCAN_PAGE)

    # -- keys ---------------------------------------------------------------------
    def get_key(self, key_id: str) -> dict[str, Any] | None:
        return self._get(KEY, key_id)

    def put_key(self, key: dict[str, Any]) -> None:
        self._put(KEY, key["KeyId"], key)

    def delete_key(self, key_id: str) -> None:
        self._put(KEY, key_id, None)

    def iter_keys(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, dict[str, Any]]]:
        account = self.account
        for name, value in self._scan(KEY, after):
            yield [name], unpack_key(value, account)

    # -- aliases ------------------------------------------------------------------
    def get_alias(self, slot: str) -> dict[str, Any] | None:
        return self._get(ALIAS, slot)

    def put_alias(self, slot: str, alias: dict[str, Any]) -> None:
        old = self._get(ALIAS, slot)
        if old is not None and old["TargetKeyId"] != alias["TargetKeyId"]:
            self._index_remove(KEY_ALIASES, old["TargetKeyId"], "slots", slot)
        if old is None or old["TargetKeyId"] != alias["TargetKeyId"]:
            self._index_add(KEY_ALIASES, alias["TargetKeyId"], "slots", slot)
        self._put(ALIAS, slot, alias)

    def delete_alias(self, slot: str) -> None:
        old = self._get(ALIAS, slot)
        if old is not None:
            self._index_remove(KEY_ALIASES, old["TargetKeyId"], "slots", slot)
            self._put(ALIAS, slot, None)

    def key_aliases(self, key_id: str) -> list[str]:
        index = self._get(KEY_ALIASES, key_id)
        return sorted(index["slots"]) if index else []

    def iter_aliases(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, str, dict[str, Any]]]:
        for name, value in self._scan(ALIAS, after):
            yield [name], name, value

    # -- credentials ----------------------------------------------------------------
    def get_credential(self, access_key_id: str) -> dict[str, Any] | None:
        return self._get(CREDENTIAL, access_key_id)

    def put_credential(self, entry: dict[str, Any]) -> None:
        old = self._get(CREDENTIAL, entry["AccessKeyId"])
        if old is not None and old["UserName"] != entry["UserName"]:
            self._index_remove(USER_CREDENTIALS, old["UserName"], "ids", entry["AccessKeyId"])
        if old is None or old["UserName"] != entry["UserName"]:
            self._index_add(USER_CREDENTIALS, entry["UserName"], "ids", entry["AccessKeyId"])
        self._put(CREDENTIAL, entry["AccessKeyId"], entry)

    def delete_credential(self, access_key_id: str) -> dict[str, Any] | None:
        old = self._get(CREDENTIAL, access_key_id)
        if old is not None:
            self._index_remove(USER_CREDENTIALS, old["UserName"], "ids", access_key_id)
            self._put(CREDENTIAL, access_key_id, None)
        return old

    def user_credentials(self, user: str) -> list[dict[str, Any]]:
        index = self._get(USER_CREDENTIALS, user)
        found = (self.get_credential(i) for i in sorted(index["ids"])) if index else ()
        return [c for c in found if c is not None]

    def iter_credentials(self, after: Cursor | None = None) -> Iterator[tuple[Cursor, dict[str, Any]]]:
        for name, value in self._scan(CREDENTIAL, after):
            yield [name], value

    # -- grants ------------------------------------------------------------------------
    def get_grant(self, grant_id: str) -> dict[str, Any] | None:
        return self._get(GRANT, grant_id)

    def put_grant(self, grant: dict[str, Any]) -> None:
        old = self._get(GRANT, grant["GrantId"])
        if old is not None:
            self._unindex_grant(old)
        self._index_add(KEY_GRANTS, grant["KeyId"], "ids", grant["GrantId"])
        self._index_add(GRANTEE_GRANTS, grantee_slot(grant["KeyId"], grant["GranteePrincipal"]), "ids",
                        grant["GrantId"])
        if grant.get("RetiringPrincipal"):
            self._index_add(RETIRING_GRANTS, grant["RetiringPrincipal"], "ids", grant["GrantId"])
        self._put(GRANT, grant["GrantId"], grant)

    def delete_grant(self, grant_id: str) -> dict[str, Any] | None:
        old = self._get(GRANT, grant_id)
        if old is not None:
            self._unindex_grant(old)
            self._put(GRANT, grant_id, None)
        return old

    def _unindex_grant(self, grant: dict[str, Any]) -> None:
        self._index_remove(KEY_GRANTS, grant["KeyId"], "ids", grant["GrantId"])
        self._index_remove(GRANTEE_GRANTS, grantee_slot(grant["KeyId"], grant["GranteePrincipal"]), "ids",
                           grant["GrantId"])
        if grant.get("RetiringPrincipal"):
            self._index_remove(RETIRING_GRANTS, grant["RetiringPrincipal"], "ids", grant["GrantId"])

    def _grants_of(self, kind: str, name: str) -> list[dict[str, Any]]:
        index = self._get(kind, name)
        found = (self.get_grant(i) for i in index["ids"]) if index else ()
        return sorted((g for g in found if g is not None), key=grant_order)

    def key_grants(self, key_id: str) -> list[dict[str, Any]]:
        return self._grants_of(KEY_GRANTS, key_id)

    def grantee_grants(self, key_id: str, grantee: str) -> list[dict[str, Any]]:
        return self._grants_of(GRANTEE_GRANTS, grantee_slot(key_id, grantee))

    def retiring_grants(self, principal: str) -> list[dict[str, Any]]:
        return self._grants_of(RETIRING_GRANTS, principal)

    # -- indexes ----------------------------------------------------------------------
    def _index_add(self, kind: str, name: str, field: str, member: str) -> None:
        index = self._get(kind, name)
        members = list(index[field]) if index else []
        if member not in members:
            self._put(kind, name, {field: sorted([*members, member])})

    def _index_remove(self, kind: str, name: str, field: str, member: str) -> None:
        index = self._get(kind, name)
        members = [m for m in (index[field] if index else []) if m != member]
        self._put(kind, name, {field: members} if members else None)

    # -- time-based events ----------------------------------------------------------
    def has_due(self, now: datetime) -> bool:
        nxt = self.meta.get("next_due")
        return nxt is not None and parse_iso(nxt) <= now

    def due_keys(self, now: datetime) -> list[dict[str, Any]]:
        if not self.has_due(now):
            return []
        schedule = self._get(SCHEDULE, SCHEDULE_DAYS)
        today = iso_day(now)
        due: list[tuple[datetime, str, str]] = []
        for day in schedule["days"] if schedule else []:
            if day > today:
                break
            for key_id, when in (self._get(DUE, day) or {"keys": {}})["keys"].items():
                if parse_iso(when) <= now:
                    due.append((parse_iso(when), key_id, when))
        keys = []
        for _, key_id, when in sorted(due):
            key = self.get_key(key_id)
            actual = due_time(key) if key is not None else None
            if key is not None and actual is not None and parse_iso(actual) <= now:
                keys.append(key)
            if actual != when and self._writable:
                # The schedule names a key that is gone or due at another time: mend it,
                # or every call would queue for the lock to find nothing to do.
                self._reschedule(key_id, when, actual)
                self.repaired = True
        if self._writable and not keys:
            self.meta["next_due"] = self._next_due()
            self.repaired = True
        return keys

    def _reschedule(self, key_id: str, old: str | None, new: str | None) -> None:
        if old == new:
            return
        if old is not None:
            day = iso_day(parse_iso(old))
            entry = self._get(DUE, day)
            if entry is not None and key_id in entry["keys"]:
                keys = {k: v for k, v in entry["keys"].items() if k != key_id}
                self._put(DUE, day, {"keys": keys} if keys else None)
                if not keys:
                    self._index_remove(SCHEDULE, SCHEDULE_DAYS, "days", day)
        if new is not None:
            day = iso_day(parse_iso(new))
            entry = self._get(DUE, day)
            keys = dict(entry["keys"]) if entry else {}
            keys[key_id] = new
            self._put(DUE, day, {"keys": keys})
            if entry is None:
                self._index_add(SCHEDULE, SCHEDULE_DAYS, "days", day)

    def _next_due(self) -> str | None:
        """The earliest due time: the first scheduled day's earliest event."""
        schedule = self._get(SCHEDULE, SCHEDULE_DAYS)
        if not schedule or not schedule["days"]:
            return None
        entry = self._get(DUE, schedule["days"][0])
        if not entry or not entry["keys"]:
            return None
        return min(entry["keys"].values(), key=parse_iso)

    # -- writing ----------------------------------------------------------------------
    def flush(self) -> None:
        """Hand every change to the write transaction: changed keys, their schedule, the indexes."""
        rescheduled = False
        for (kind, name), value in list(self._cache.items()):
            if kind != KEY:
                continue
            if (kind, name) not in self._dirty:
                if value is None or dumps(value) == self._stored.get((kind, name)):
                    continue
                self._dirty.add((kind, name))  # changed in place
            before = self._before(kind, name)
            old = due_time(before) if before is not None else None
            new = due_time(value) if value is not None else None
            if old != new:
                self._reschedule(name, old, new)
                rescheduled = True
        if rescheduled:
            self.meta["next_due"] = self._next_due()
        writer = self.view
        for kind, name in sorted(self._dirty):
            value = self._cache[(kind, name)]
            if value is None:
                writer.delete(kind, name)
            else:
                writer.put(kind, name, pack_key(value, self.account) if kind == KEY else value)
            self._stored[(kind, name)] = dumps(value) if value is not None else None
        self._dirty.clear()

    def commit(self) -> None:
        """Flush, then commit the transaction (generation + 1, durable)."""
        self.flush()
        self.view.commit()
