"""Access keys for `kmscli serve`: IAM's CreateAccessKey, ListAccessKeys, DeleteAccessKey.

A credential is an access key id and a secret for principal
``arn:aws:iam::<account>:user/<UserName>``; key policies match on that
principal for requests signed with it. The secret is kept in the vault body,
sealed with everything else, and shown once, when it is made.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from .. import errors
from ..model import iso
from ..vault.store import OpenVault
from ._core import Call, Core

#: IAM's user name rule (UserNameType): 1..64 of letters, digits and +=,.@_-
USER_NAME_RE = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
#: IAM allows two access keys per user; so does kmscli (rotate by making the second, then deleting the first).
ACCESS_KEYS_PER_USER_MAX = 2
#: AWS's shapes: AKIA + 16 characters of base32; a 40-character secret.
ACCESS_KEY_ID_RE = re.compile(r"AKIA[A-Z2-7]{16}")
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_SECRET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def new_access_key_id() -> str:
    return "AKIA" + "".join(secrets.choice(_BASE32) for _ in range(16))


def new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


def validate_user_name(name: str) -> str:
    if not USER_NAME_RE.fullmatch(name):
        raise errors.ValidationException(
            f"1 validation error detected: Value '{name[:64]}' at 'userName' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: [\\w+=,.@-]+ (1 to 64 characters)"
        )
    return name


class CredentialOps(Core):
    def CreateAccessKey(self, UserName: str) -> dict[str, Any]:
        """Make an access key for ``UserName``; the response is the only place its secret appears.

        Needs the passphrase, never a session: a credential outlives any session
        and acts as whichever user it names, so only the vault's owner makes one.
        """
        self._require_passphrase("credentials create", "CreateAccessKey")
        request = {"userName": UserName}
        with self._refusing("CreateAccessKey", request):
            validate_user_name(UserName)

        def create(ov: OpenVault, call: Call) -> dict[str, Any]:
            mine = ov.user_credentials(UserName)
            if len(mine) >= ACCESS_KEYS_PER_USER_MAX:
                raise errors.LimitExceededException(
                    f"user {UserName} already has {ACCESS_KEYS_PER_USER_MAX} access keys, the most IAM allows",
                    hint="delete one with 'kmscli credentials delete' first")
            access_key_id = new_access_key_id()
            while ov.get_credential(access_key_id) is not None:  # pragma: no cover - 80 random bits
                access_key_id = new_access_key_id()
            entry = {"UserName": UserName, "AccessKeyId": access_key_id, "Status": "Active",
                     "CreateDate": iso(self.clock()), "SecretAccessKey": new_secret()}
            ov.put_credential(entry)
            call.response = {"accessKey": {"accessKeyId": access_key_id, "userName": UserName, "status": "Active"}}
            return {"AccessKey": dict(entry)}

        return self._mutate("CreateAccessKey", request, create)

    def ListAccessKeys(self, UserName: str | None = None) -> dict[str, Any]:
        """Every access key (or one user's), oldest first, never with its secret."""
        request = {"userName": UserName} if UserName is not None else {}
        with self._refusing("ListAccessKeys", request):
            if UserName is not None:
                validate_user_name(UserName)

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            if UserName is not None:
                rows = sorted(ov.user_credentials(UserName), key=lambda c: (c["CreateDate"], c["AccessKeyId"]))
            else:
                rows = [c for _cursor, c in ov.iter_credentials()]
            return {"AccessKeyMetadata": [{k: c[k] for k in ("UserName", "AccessKeyId", "Status", "CreateDate")}
                                          for c in rows]}

        return self._read("ListAccessKeys", request, list_)

    def DeleteAccessKey(self, AccessKeyId: str) -> dict[str, Any]:
        request = {"accessKeyId": AccessKeyId}

        def delete(ov: OpenVault, call: Call) -> dict[str, Any]:
            entry = ov.delete_credential(AccessKeyId)
            if entry is None:
                raise errors.NotFoundException(f"The Access Key with id {AccessKeyId[:32]} cannot be found",
                                               hint="see 'kmscli credentials list'")
            call.response = {"userName": entry["UserName"]}
            return {}

        return self._mutate("DeleteAccessKey", request, delete)

    def _credential(self, ov: OpenVault, access_key_id: str) -> dict[str, Any] | None:
        """The stored credential for a request's access key id (the server's signature check)."""
        entry = ov.get_credential(access_key_id)
        return entry if entry is not None and entry["Status"] == "Active" else None
