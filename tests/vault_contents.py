"""What a vault holds, read in process through the service's own accessors (either format).

Tests that look inside a vault (which keys and materials it keeps, its audit
anchors) read it here, never by the file's layout.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from kmscli.vault.store import KeySource, PassphraseKeySource, VaultStore


def contents(vault: Path, passphrase: str | bytes | None = None, *, keys: KeySource | None = None,
             store: VaultStore | None = None) -> tuple[dict[str, Any], bytes]:
    """(the vault as one document: its metadata, "keys", "aliases", "credentials"; its vault key)."""
    if keys is None:
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        assert secret is not None
        keys = PassphraseKeySource(lambda: secret)
    store = store or VaultStore(vault)
    with contextlib.closing(store.open(keys)) as ov:
        doc = {k: v for k, v in ov.meta.items() if k not in ("format", "keys", "aliases", "credentials")}
        doc["keys"] = {k["KeyId"]: k for _, k in ov.iter_keys()}
        doc["aliases"] = {slot: a for _, slot, a in ov.iter_aliases()}
        doc["credentials"] = {c["AccessKeyId"]: c for _, c in ov.iter_credentials()}
        return doc, ov.vault_key
