"""``kmscli alias ...``: friendly names for keys."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, output

app = common.new_app("Create, repoint, delete and list aliases (names start with alias/).")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Alias name, alias/...")]
KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")]


@app.command("create", cls=common.KeyCommand, help="Create alias NAME for KEY.")
def create(name: NameArg, key: KeyArg) -> None:
    common.service().CreateAlias(AliasName=name, TargetKeyId=key)


@app.command("update", cls=common.KeyCommand, help="Point alias NAME at another KEY.")
def update(name: NameArg, key: KeyArg) -> None:
    common.service().UpdateAlias(AliasName=name, TargetKeyId=key)


@app.command("delete", cls=common.KmsCommand, help="Delete alias NAME (the key is untouched).")
def delete(name: NameArg) -> None:
    common.service().DeleteAlias(AliasName=name)


@app.command("list", cls=common.KmsCommand, help="List aliases, or only those of --key KEY.")
def list_(
    key: Annotated[str | None, typer.Option("--key", "-k", metavar="KEY", help="Only aliases of this key.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape.")] = False,
) -> None:
    svc = common.service()
    # Every page (as the AWS CLI pages), streamed a page at a time.
    found = common.pages(lambda m: svc.ListAliases(KeyId=key, Limit=100, Marker=m), "Aliases")
    if json_:
        output.emit_aws_pages("ListAliases", "Aliases", found)
        return
    output.table_pages("Aliases", ["AliasName", "TargetKeyId", "Created"],
                       ([(a["AliasName"], a.get("TargetKeyId", ""), output.when(a.get("CreationDate"))) for a in page]
                        for page in found))
