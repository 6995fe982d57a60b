"""Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant (docs/grants.md).

A grant lets one principal do a few operations on one key, under optional
encryption-context constraints, beside the key policy: a call is allowed when
the policy allows it or a grant covers it, and an explicit Deny in the policy
wins over any grant (``Core._authorize``). Grants live in the vault, so a
retired or revoked grant stops working at the next call, sessions included.

Grant tokens are what CreateGrant returns for the grantee to pass along. AWS
needs them because its grants take time to propagate; here a grant works the
moment its CreateGrant returns, so a token adds no permission: it is checked
(a token this vault did not issue, or one of another key, is
InvalidGrantTokenException) and names a grant for RetireGrant.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .. import errors
from ..model import is_symmetric, iso, key_usage, parse_iso
from ..vault.store import OpenVault
from ._core import Call, Core, check_range, page, paged, paging
from .grant_rules import SYMMETRIC_OPERATIONS as _SYMMETRIC
from .grant_rules import issue_token, parse_token

#: Grants per key. AWS allows 50,000; kmscli keeps 5,000 so that listing a key's grants and the index of
#: them stay small records (docs/grants.md).
GRANTS_PER_KEY_MAX = 5000
GRANTS_LIMIT_DEFAULT, GRANTS_LIMIT_MAX = 50, 100
#: AWS's bounds on a grant constraint's encryption context (the KMS developer guide, grant constraints).
CONSTRAINT_PAIRS_MAX, CONSTRAINT_CHARS_MAX = 8, 384
#: The operations a grant may allow, by the kind of key (AWS's "grant operations" table).
_COMMON = ("DescribeKey", "CreateGrant", "RetireGrant")
_BY_USAGE = {
    "ENCRYPT_DECRYPT": ("Decrypt", "Encrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey"),  # RSA
    "SIGN_VERIFY": ("Sign", "Verify", "GetPublicKey"),
    "GENERATE_VERIFY_MAC": ("GenerateMac", "VerifyMac"),
    "KEY_AGREEMENT": ("DeriveSharedSecret", "GetPublicKey"),
}
_NAME_RE = re.compile(r"[a-zA-Z0-9:/_-]{1,256}")
_GRANTEE_RE = re.compile(r"arn:aws:iam::([0-9]{12}):(root|user/[\w+=,.@-]{1,64})", re.ASCII)  # IAM names are ASCII
_USER_RE = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
#: How an AWS service principal ends (``kms.amazonaws.com``): a user name by its characters, but no caller of a vault.
_SERVICE_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")


def grant_operations(key: dict[str, Any]) -> tuple[str, ...]:
    """The operations a grant on ``key`` may allow (its spec and usage decide, as in AWS)."""
    extra = _SYMMETRIC if is_symmetric(key) else _BY_USAGE.get(key_usage(key), ())
    return extra + _COMMON


class GrantOps(Core):
    # -- CreateGrant -----------------------------------------------------------------
    def CreateGrant(self, KeyId: str, Operations: list[str], GranteePrincipal: str | None = None,
                    RetiringPrincipal: str | None = None, Constraints: dict[str, Any] | None = None,
                    Name: str | None = None) -> dict[str, Any]:
        """A new grant (or, for the same Name and arguments, the existing one with a new token)."""
        request: dict[str, Any] = {"keyId": KeyId, "granteePrincipal": GranteePrincipal,
                                   "operations": list(Operations or [])}
        for member, value in (("retiringPrincipal", RetiringPrincipal), ("constraints", Constraints),
                              ("name", Name)):
            if value is not None:
                request[member] = value
        with self._refusing("CreateGrant", request):
            operations = _check_operations(Operations)
            constraints = _check_constraints(Constraints)
            if Name is not None and not _NAME_RE.fullmatch(Name):
                raise errors.ValidationException(
                    "Name must be 1 to 256 characters of a-z, A-Z, 0-9, ':', '/', '_' and '-'")
            if GranteePrincipal is None:
                raise errors.ValidationException("GranteePrincipal is required: the principal the grant is for",
                                                 hint="kmscli has no AWS service principals")

        def create(ov: OpenVault, call: Call) -> dict[str, Any]:
            grantee = self._principal(ov, GranteePrincipal, "GranteePrincipal")
            retiring = (self._principal(ov, RetiringPrincipal, "RetiringPrincipal") if RetiringPrincipal is not None
                        else None)
            request.update(granteePrincipal=grantee, **({"retiringPrincipal": retiring} if retiring else {}))
            cond: dict[str, Any] = {"kms:GrantOperations": list(operations), "kms:GranteePrincipal": grantee,
                                    "kms:GrantIsForAWSResource": False}
            if retiring is not None:
                cond["kms:RetiringPrincipal"] = retiring
            if constraints:
                cond["kms:GrantConstraintType"] = sorted(constraints)
            key = self._key(ov, call, KeyId, "kms:CreateGrant", cond)
            self._require_enabled(ov, key)
            allowed = grant_operations(key)
            wrong = [op for op in operations if op not in allowed]
            if wrong:
                raise errors.ValidationException(
                    f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not a valid grant operation for "
                    f"{self._arn(ov, key)}: a grant on this key may allow {', '.join(allowed)}")
            if constraints and not is_symmetric(key):
                raise errors.ValidationException(
                    "grant constraints apply to encryption contexts, which only symmetric encryption keys take")
            if call.grant_id is not None:
                self._check_delegation(ov, call.grant_id, operations, constraints)
            entry: dict[str, Any] = {"KeyId": key["KeyId"], "GranteePrincipal": grantee,
                                     "Operations": list(operations),
                                     "IssuingAccount": f"arn:aws:iam::{ov.account}:root"}
            if retiring is not None:
                entry["RetiringPrincipal"] = retiring
            if constraints:
                entry["Constraints"] = constraints
            if Name is not None:
                entry["Name"] = Name
            same = next((g for g in ov.key_grants(key["KeyId"]) if Name is not None and _same_grant(g, entry)), None)
            if same is not None:
                grant_id = same["GrantId"]  # AWS: the same Name and arguments return the existing grant
            else:
                if len(ov.key_grants(key["KeyId"])) >= GRANTS_PER_KEY_MAX:
                    raise errors.LimitExceededException(
                        f"{self._arn(ov, key)} has {GRANTS_PER_KEY_MAX} grants, the most kmscli keeps per key; "
                        "retire or revoke some first")
                grant_id = os.urandom(32).hex()
                ov.put_grant({"GrantId": grant_id, **entry, "CreationDate": iso(self.clock())})
            call.response["grantId"] = grant_id
            return {"GrantToken": issue_token(ov, key["KeyId"], grant_id), "GrantId": grant_id}

        return self._mutate("CreateGrant", request, create)

    def _check_delegation(self, ov: OpenVault, parent_id: str, operations: tuple[str, ...],
                          constraints: dict[str, Any]) -> None:
        """A grantee creating a grant through its own grant gives no more than it has (AWS's rule)."""
        parent = ov.get_grant(parent_id)
        if parent is None:  # pragma: no cover - the grant was read by this very call
            raise errors.AccessDeniedException("the grant that allowed CreateGrant is gone")
        more = [op for op in operations if op not in parent["Operations"]]
        if more:
            raise errors.AccessDeniedException(
                f"a grant can delegate only its own operations; grant {parent_id} does not allow {', '.join(more)}")
        if parent.get("Constraints") and constraints != parent["Constraints"]:
            raise errors.AccessDeniedException(
                f"a grant made through grant {parent_id} must carry that grant's constraints")

    # -- listing -------------------------------------------------------------------------
    def ListGrants(self, KeyId: str, Limit: int | None = None, Marker: str | None = None,
                   GrantId: str | None = None, GranteePrincipal: str | None = None) -> dict[str, Any]:
        """A key's grants, oldest first, a page at a time (optionally one grant, or one grantee's)."""
        request: dict[str, Any] = {"keyId": KeyId}
        request.update(paging(Limit, Marker))
        request.update({k: v for k, v in (("grantId", GrantId), ("granteePrincipal", GranteePrincipal)) if v})
        with self._refusing("ListGrants", request):
            if Limit is not None:
                check_range("Limit", Limit, 1, GRANTS_LIMIT_MAX)

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:ListGrants")
            grants = ov.key_grants(key["KeyId"])
            if GrantId is not None:
                grants = [g for g in grants if g["GrantId"] == GrantId]
            if GranteePrincipal is not None:
                grantee = self._principal(ov, GranteePrincipal, "GranteePrincipal")
                grants = [g for g in grants if g["GranteePrincipal"] == grantee]
            shown, marker = page(grants, lambda g: (g["CreationDate"], g["GrantId"]), Limit, Marker,
                                 GRANTS_LIMIT_DEFAULT)
            return paged("Grants", [self._entry(ov, g) for g in shown], marker)

        return self._read("ListGrants", request, list_)

    def ListRetirableGrants(self, RetiringPrincipal: str | None = None, Limit: int | None = None,
                            Marker: str | None = None) -> dict[str, Any]:
        """The grants of this region's keys that ``RetiringPrincipal`` may retire.

        As in AWS (where IAM alone decides), no key policy is consulted: it lists
        grants, not keys, and every caller of a vault is of its account.
        """
        request: dict[str, Any] = {"retiringPrincipal": RetiringPrincipal}
        request.update(paging(Limit, Marker))
        with self._refusing("ListRetirableGrants", request):
            if RetiringPrincipal is None:
                raise errors.ValidationException("RetiringPrincipal is required")
            if Limit is not None:
                check_range("Limit", Limit, 1, GRANTS_LIMIT_MAX)

        def list_(ov: OpenVault, call: Call) -> dict[str, Any]:
            assert RetiringPrincipal is not None
            principal = self._principal(ov, RetiringPrincipal, "RetiringPrincipal")
            grants = [g for g in ov.retiring_grants(principal) if self._region_key(ov, g["KeyId"]) is not None]
            shown, marker = page(grants, lambda g: (g["CreationDate"], g["GrantId"]), Limit, Marker,
                                 GRANTS_LIMIT_DEFAULT)
            return paged("Grants", [self._entry(ov, g) for g in shown], marker)

        return self._read("ListRetirableGrants", request, list_)

    def _entry(self, ov: OpenVault, grant: dict[str, Any]) -> dict[str, Any]:
        """A GrantListEntry as AWS shapes it (the key named by its ARN)."""
        out = {"KeyId": self._key_arn(ov, grant["KeyId"]), "GrantId": grant["GrantId"]}
        if "Name" in grant:
            out["Name"] = grant["Name"]
        out.update(CreationDate=parse_iso(grant["CreationDate"]), GranteePrincipal=grant["GranteePrincipal"])
        if "RetiringPrincipal" in grant:
            out["RetiringPrincipal"] = grant["RetiringPrincipal"]
        out.update(IssuingAccount=grant["IssuingAccount"], Operations=list(grant["Operations"]))
        if grant.get("Constraints"):
            out["Constraints"] = grant["Constraints"]
        return out

    # -- RetireGrant and RevokeGrant -----------------------------------------------------------
    def RetireGrant(self, GrantToken: str | None = None, KeyId: str | None = None,
                    GrantId: str | None = None) -> dict[str, Any]:
        """Remove a grant as its retiring principal, as its grantee (when the grant allows RetireGrant), or as
        a caller the key policy allows kms:RetireGrant (standing for AWS's "the account that made it")."""
        request: dict[str, Any] = {k: v for k, v in (("keyId", KeyId), ("grantId", GrantId)) if v is not None}
        with self._refusing("RetireGrant", request):
            if GrantToken is None and (KeyId is None or GrantId is None):
                raise errors.ValidationException("give GrantToken, or KeyId and GrantId")

        def retire(ov: OpenVault, call: Call) -> dict[str, Any]:
            grant_id, token_key = GrantId, None
            if GrantToken is not None:
                token_key, grant_id = parse_token(ov, GrantToken)
                if GrantId is not None and GrantId != grant_id:
                    raise errors.ValidationException("GrantId is not the grant GrantToken names")
                call.request["grantId"] = grant_id
            assert grant_id is not None
            key = self._resolve(ov, call, KeyId) if KeyId is not None else self._region_key(ov, token_key)
            if key is None or (token_key is not None and key["KeyId"] != token_key):
                raise errors.InvalidGrantTokenException("the grant token is not one of this key's grants")
            grant = ov.get_grant(grant_id)
            if grant is None or grant["KeyId"] != key["KeyId"]:
                raise errors.NotFoundException(f"Grant ID {grant_id} not found for {self._arn(ov, key)}")
            arn = self._arn(ov, key)
            if arn not in call.resources:
                call.resources.append(arn)
            principal = self.caller.arn(ov.account)
            retiring = grant.get("RetiringPrincipal") in (principal, f"arn:aws:iam::{ov.account}:root")
            grantee = grant["GranteePrincipal"] == principal and "RetireGrant" in grant["Operations"]
            if not (retiring or grantee):
                self._authorize(ov, call, key, "kms:RetireGrant", grants=False)
            ov.delete_grant(grant_id)
            call.response.update(keyId=key["KeyId"], grantId=grant_id)
            return {}

        return self._mutate("RetireGrant", request, retire)

    def RevokeGrant(self, KeyId: str, GrantId: str) -> dict[str, Any]:
        """Remove a grant as the key's administrator (the key policy's kms:RevokeGrant; never a grant)."""
        request = {"keyId": KeyId, "grantId": GrantId}

        def revoke(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:RevokeGrant")
            grant = ov.get_grant(GrantId)
            if grant is None or grant["KeyId"] != key["KeyId"]:
                raise errors.NotFoundException(f"Grant ID {GrantId} not found for {self._arn(ov, key)}",
                                               hint="see 'kmscli grants list KEY'")
            ov.delete_grant(GrantId)
            call.response["grantId"] = GrantId
            return {}

        return self._mutate("RevokeGrant", request, revoke)

    # -- principals and tokens ------------------------------------------------------------------
    def _principal(self, ov: OpenVault, text: str | None, member: str) -> str:
        """A grantee or retiring principal as an ARN of this vault's account: a user or the account root.

        A bare user name (``alice``) is taken as that user of this vault, for the CLI's convenience.
        """
        if text is not None and text.endswith(_SERVICE_SUFFIXES):
            raise errors.ValidationException(f"{member} '{text}' is an AWS service principal, which could never "
                                             "call this vault: kmscli has no AWS services")
        if text is not None and _USER_RE.fullmatch(text):
            return f"arn:aws:iam::{ov.account}:user/{text}"
        m = _GRANTEE_RE.fullmatch(text or "")
        if m is None:
            raise errors.ValidationException(
                f"{member} must be a user of this vault (arn:aws:iam::{ov.account}:user/NAME, or NAME) or the "
                f"account (arn:aws:iam::{ov.account}:root); got '{text}'")
        if m.group(1) != ov.account:
            raise errors.ValidationException(
                f"{member} names account {m.group(1)}, but every caller of this vault is of account {ov.account}: "
                "such a grant could never be used")
        return m.group(0)


def _check_operations(operations: Any) -> tuple[str, ...]:
    from ..crypto import asymmetric as A

    if not isinstance(operations, list) or not operations:
        raise errors.ValidationException("Operations must name at least one operation the grant allows")
    checked = tuple(dict.fromkeys(A.check_enum(op, "GrantOperation", "operations") for op in operations))
    return checked


def _check_constraints(constraints: Any) -> dict[str, dict[str, str]]:
    if constraints is None:
        return {}
    if not isinstance(constraints, dict):
        raise errors.ValidationException("Constraints must be a structure")
    if constraints.get("SourceArn") is not None:
        raise errors.UnsupportedOperationException("kmscli grants take no SourceArn constraint (it is for AWS "
                                                   "services)")
    out: dict[str, dict[str, str]] = {}
    for member in ("EncryptionContextEquals", "EncryptionContextSubset"):
        pairs = constraints.get(member)
        if pairs is None:
            continue
        if not isinstance(pairs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in pairs.items()):
            raise errors.ValidationException(f"{member} must map strings to strings")
        if len(pairs) > CONSTRAINT_PAIRS_MAX or sum(len(k) + len(v) for k, v in pairs.items()) > CONSTRAINT_CHARS_MAX:
            raise errors.ValidationException(
                f"{member} holds at most {CONSTRAINT_PAIRS_MAX} pairs and {CONSTRAINT_CHARS_MAX} characters")
        out[member] = dict(sorted(pairs.items()))
    if len(out) > 1:
        raise errors.ValidationException("a grant takes EncryptionContextEquals or EncryptionContextSubset, not both")
    return out


def _same_grant(grant: dict[str, Any], entry: dict[str, Any]) -> bool:
    keys = ("KeyId", "GranteePrincipal", "RetiringPrincipal", "Constraints", "Name")
    return all(grant.get(k) == entry.get(k) for k in keys) and sorted(grant["Operations"]) == sorted(
        entry["Operations"])
