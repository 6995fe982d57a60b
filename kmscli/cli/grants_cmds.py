"""``kmscli grants ...``: hand a principal a few operations on one key, beside its policy (docs/grants.md)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .. import errors
from . import common, output

app = common.new_app("Grants: let one principal use one key for a few operations, without editing its policy.")

KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape.")]
PrincipalHelp = "a user of this vault: NAME or arn:aws:iam::ACCOUNT:user/NAME (or the account: ...:root)"


@app.command("create", cls=common.KeyCommand, help="Create a grant; print its id and token (tab-separated).")
def create(
    key: KeyArg,
    grantee: Annotated[str, typer.Option("--grantee", metavar="PRINCIPAL",
                       help=f"Who may use the grant: {PrincipalHelp}.")],
    operation: Annotated[list[str], typer.Option("--operation", "--op", metavar="OP",
                         help="An operation the grant allows (Encrypt, Decrypt, GenerateDataKey, ReEncryptFrom, "
                              "Sign, GenerateMac, DescribeKey, CreateGrant, RetireGrant, ...); repeatable, or "
                              "comma-separated.")],
    retiring: Annotated[str | None, typer.Option("--retiring", metavar="PRINCIPAL",
                        help=f"Who may retire the grant (as may callers the key policy allows kms:RetireGrant): "
                             f"{PrincipalHelp}.")] = None,
    name: Annotated[str | None, typer.Option("--name", metavar="NAME",
                    help="A name: the same name and arguments again return the same grant (safe retries).")] = None,
    context_equals: Annotated[list[str] | None, typer.Option(
        "--context-equals", metavar="K=V", help="Allow only requests whose encryption context is exactly these "
        "pairs; repeatable.")] = None,
    context_subset: Annotated[list[str] | None, typer.Option(
        "--context-subset", metavar="K=V", help="Allow only requests whose encryption context includes these "
        "pairs; repeatable.")] = None,
    json_: JsonOpt = False,
) -> None:
    operations = [op.strip() for item in operation for op in item.split(",") if op.strip()]
    constraints: dict[str, Any] = {}
    if context_equals:
        constraints["EncryptionContextEquals"] = common.pairs(context_equals, "context")
    if context_subset:
        constraints["EncryptionContextSubset"] = common.pairs(context_subset, "context")
    result = common.service().CreateGrant(KeyId=key, GranteePrincipal=grantee, Operations=operations,
                                          RetiringPrincipal=retiring, Constraints=constraints or None, Name=name)
    if json_:
        output.emit_aws("CreateGrant", result)
    elif output.is_tty(sys.stdout):
        output.fields([("GrantId", result["GrantId"]), ("GrantToken", result["GrantToken"])])
    else:
        output.emit_line(f"{result['GrantId']}\t{result['GrantToken']}")


@app.command("list", cls=common.KeyCommand, help="List a key's grants (ListGrants).")
def list_(key: KeyArg, json_: JsonOpt = False) -> None:
    svc = common.service()
    grants = common.all_pages(lambda m: svc.ListGrants(KeyId=key, Limit=100, Marker=m), "Grants")
    _show("ListGrants", grants, json_)


@app.command("list-retirable", cls=common.KmsCommand,
             help="List the grants a principal may retire, on every key (ListRetirableGrants).")
def list_retirable(
    principal: Annotated[str, typer.Argument(metavar="PRINCIPAL", help=PrincipalHelp[0].upper() + PrincipalHelp[1:]
                                                                       + ".")],
    json_: JsonOpt = False,
) -> None:
    svc = common.service()
    grants = common.all_pages(lambda m: svc.ListRetirableGrants(RetiringPrincipal=principal, Limit=100, Marker=m),
                              "Grants")
    _show("ListRetirableGrants", grants, json_)


def _show(operation: str, grants: list[dict[str, Any]], json_: bool) -> None:
    if json_:
        output.emit_aws(operation, {"Grants": grants, "Truncated": False})
        return

    def constraint(g: dict[str, Any]) -> str:
        c = g.get("Constraints") or {}
        for member, word in (("EncryptionContextEquals", "="), ("EncryptionContextSubset", "⊇")):
            if member in c:
                return f"context {word} " + ",".join(f"{k}={v}" for k, v in c[member].items())
        return ""

    def who(arn: str | None) -> str:
        return (arn or "").rsplit(":", 1)[-1]

    output.table("Grants", ["GrantId", "Key", "Name", "Grantee", "Operations", "Retiring", "Constraints", "Created"],
                 [(g["GrantId"], g["KeyId"].rsplit("/", 1)[-1], g.get("Name", ""), who(g["GranteePrincipal"]),
                   ",".join(g["Operations"]), who(g.get("RetiringPrincipal")), constraint(g),
                   output.when(g.get("CreationDate"))) for g in grants])


@app.command("retire", cls=common.KmsCommand, help="Retire a grant (by its token, or by key and grant id).")
def retire(
    token: Annotated[str | None, typer.Option("--token", metavar="TOKEN", help="The grant's token.")] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", metavar="KEY", help="The grant's key (with --grant-id).")
                   ] = None,
    grant_id: Annotated[str | None, typer.Option("--grant-id", metavar="ID", help="The grant's id (with --key).")
                        ] = None,
) -> None:
    if token is None and (key is None or grant_id is None):
        raise errors.UsageError("give --token TOKEN, or --key KEY and --grant-id ID")
    common.service().RetireGrant(GrantToken=token, KeyId=key, GrantId=grant_id)


@app.command("revoke", cls=common.KeyCommand, help="Revoke a grant as the key's administrator (RevokeGrant).")
def revoke(
    key: KeyArg,
    grant_id: Annotated[str, typer.Argument(metavar="GRANT_ID", help="The grant's id ('kmscli grants list KEY').")],
) -> None:
    common.service().RevokeGrant(KeyId=key, GrantId=grant_id)
