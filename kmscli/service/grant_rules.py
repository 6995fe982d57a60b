"""What an authorization needs to know of grants, apart from the grant operations themselves.

Kept out of ``grants.py`` so that ``_core`` (every authorization) and
``grants`` (the operations, built on ``_core``) import it without importing
each other: grant tokens (issued and checked) and constraints (checked).
"""

from __future__ import annotations

import base64
import hmac
import os
from typing import Any

from .. import errors
from ..vault.state import OpenVault

#: The operations of a symmetric key a grant may allow besides DescribeKey, CreateGrant and RetireGrant.
SYMMETRIC_OPERATIONS = ("Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
                        "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext")
#: Operations whose requests carry an encryption context: the only ones a grant's constraints apply to.
CONTEXT_OPERATIONS = frozenset(SYMMETRIC_OPERATIONS)
#: A grant token: version, key id (16 bytes), grant id (32), nonce (16), then a MAC (16) under the vault's
#: grant-token key, all base64url. A token names its grant; only this vault can make one.
_TOKEN_VERSION = 1
_TOKEN_BODY, _TOKEN_MAC = 1 + 16 + 32 + 16, 16


def issue_token(ov: OpenVault, key_id: str, grant_id: str) -> str:
    """A new grant token for a grant: it names key and grant, and only this vault can make one."""
    import uuid

    body = bytes([_TOKEN_VERSION]) + uuid.UUID(key_id).bytes + bytes.fromhex(grant_id) + os.urandom(16)
    return _b64(body + _token_mac(ov, body, create=True))


def parse_token(ov: OpenVault, token: str) -> tuple[str, str]:
    """(key id, grant id) of a token this vault issued; InvalidGrantTokenException for anything else."""
    import uuid

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) if isinstance(token, str) else b""
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != _TOKEN_BODY + _TOKEN_MAC or raw[0] != _TOKEN_VERSION:
        raise errors.InvalidGrantTokenException("the grant token is not one kmscli issued")
    body, mac = raw[:_TOKEN_BODY], raw[_TOKEN_BODY:]
    if not hmac.compare_digest(mac, _token_mac(ov, body)):
        raise errors.InvalidGrantTokenException("the grant token was not issued by this vault")
    return str(uuid.UUID(bytes=body[1:17])), body[17:49].hex()


def _token_mac(ov: OpenVault, body: bytes, *, create: bool = False) -> bytes:
    """The token's MAC under the vault's grant-token key (made at the first grant, kept across passwd)."""
    secret = ov.meta.get("grant_token_key")
    if secret is None:
        if not create:
            raise errors.InvalidGrantTokenException("the grant token was not issued by this vault")
        secret = ov.meta["grant_token_key"] = os.urandom(32).hex()
    return hmac.digest(bytes.fromhex(secret), b"kmscli grant token\x00" + body, "sha256")[:_TOKEN_MAC]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def constraints_hold(grant: dict[str, Any], operation: str, context: dict[str, str]) -> bool:
    """Whether a grant's constraints let ``operation`` run with the request's encryption ``context``.

    Constraints apply only to operations that carry an encryption context; for
    the others (DescribeKey, Sign, ...) a grant's constraints do not apply, as in AWS.
    """
    constraints = grant.get("Constraints") or {}
    if not constraints or operation not in CONTEXT_OPERATIONS:
        return True
    if "EncryptionContextEquals" in constraints:
        return context == constraints["EncryptionContextEquals"]
    subset = constraints.get("EncryptionContextSubset") or {}
    return all(context.get(k) == v for k, v in subset.items())
