"""The KMS service: one method per AWS KMS operation, named as AWS names it.

Every rule lives here or below: key state, key policy, limits, the audit
record. The CLI (and the HTTP adapter of `kmscli serve`) only parse input,
call one method and render its answer. Methods take AWS request field names as
keyword arguments and return AWS response shapes as plain dicts; streaming
operations take a reader and a writer instead of blobs, since kmscli has no
4 KiB limit.

Each call opens the vault, applies the time-based events that have fallen due
(keys destroyed at the end of their deletion window, automatic rotations),
checks the key's policy, does the work, appends the audit record and, for a
change, writes the vault, in that order, so that nothing happens without its
record on disk.

The operations are grouped by AWS's families, one mixin module each, over the
shared machinery in `_core` (open, due events, authorize, record).
"""

from __future__ import annotations

from ._core import AUDIT_FILE, Caller
from .aliases import AliasOps
from .asymmetric_ops import AsymmetricOps
from .audit_ops import AuditOps
from .backup import BackupOps
from .credentials import CredentialOps
from .crypto import CryptoOps
from .grants import GrantOps
from .imports import ImportOps
from .keys import KeyOps
from .policies import PolicyOps
from .rotation import RotationOps
from .seed import SeedOps
from .vault_ops import VaultOps

__all__ = ["AUDIT_FILE", "Caller", "Kms"]


class Kms(VaultOps, KeyOps, AliasOps, PolicyOps, RotationOps, CryptoOps, AsymmetricOps, GrantOps, ImportOps,
          AuditOps, CredentialOps, SeedOps, BackupOps):
    """The local KMS, bound to one vault, one caller and one clock."""
