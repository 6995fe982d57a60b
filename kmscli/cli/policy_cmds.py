"""``kmscli policy get|put``: the key policy document."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, output
from .key_cmds import KeyArg, _read_policy

app = common.new_app("Read and replace key policies (AWS IAM JSON grammar).")


@app.command("get", cls=common.KeyCommand, help="Print a key's policy document.")
def get(key: KeyArg, json_: Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape "
                                                                        "(the document as a string in Policy).")
                                       ] = False) -> None:
    result = common.service().GetKeyPolicy(KeyId=key)
    if json_:
        output.emit_aws("GetKeyPolicy", result)
        return
    output.emit_line(result["Policy"].rstrip("\n"))


@app.command("put", cls=common.KeyCommand, help="Replace a key's policy with FILE (or stdin).")
def put(
    key: KeyArg,
    file: Annotated[str, typer.Argument(metavar="[FILE|-]", help="Policy JSON file; '-' or nothing reads stdin.")
                    ] = "-",
    bypass: Annotated[bool, typer.Option("--bypass-policy-lockout-safety-check",
                      help="Accept a policy that would lock you out of changing it.")] = False,
) -> None:
    common.service().PutKeyPolicy(KeyId=key, Policy=_read_policy(file), BypassPolicyLockoutSafetyCheck=bypass)
