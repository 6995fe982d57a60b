"""``kmscli credentials ...``: access keys that sign requests to ``kmscli serve``."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, output

app = common.new_app("Access keys for AWS SDKs and tools that call 'kmscli serve' (IAM's access keys).")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print IAM's JSON response shape.")]


@app.command("create", cls=common.KmsCommand,
             help="Make an access key for principal arn:aws:iam::<account>:user/USER; the secret is shown once. "
                  "Needs the passphrase, never a session.")
def create(
    user: Annotated[str, typer.Argument(metavar="USER", help="IAM user name the key acts as (letters, digits, "
                                        "+=,.@_-; up to 64).")],
    json_: JsonOpt = False,
) -> None:
    key = common.service().CreateAccessKey(UserName=user)["AccessKey"]
    if json_:
        output.emit_json({"AccessKey": key})
    else:
        # Lines for `eval` or an env file, as AWS's own variables name them.
        output.emit_line(f"AWS_ACCESS_KEY_ID={key['AccessKeyId']}")
        output.emit_line(f"AWS_SECRET_ACCESS_KEY={key['SecretAccessKey']}")
    output.message("this is the only time the secret is shown; keep it where your AWS tools read credentials "
                   "(~/.aws/credentials or the environment)")


@app.command("list", cls=common.KmsCommand, help="List access keys (never their secrets).")
def list_(json_: JsonOpt = False) -> None:
    rows = common.service().ListAccessKeys()["AccessKeyMetadata"]
    if json_:
        output.emit_json({"AccessKeyMetadata": rows})
        return
    output.table("Access keys", ["AccessKeyId", "UserName", "Status", "Created"],
                 [(r["AccessKeyId"], r["UserName"], r["Status"], r["CreateDate"]) for r in rows])


@app.command("delete", cls=common.KmsCommand, help="Delete an access key: requests signed with it are refused.")
def delete(access_key_id: Annotated[str, typer.Argument(metavar="ACCESS_KEY_ID", help="The key to delete.")]
           ) -> None:
    common.service().DeleteAccessKey(AccessKeyId=access_key_id)
