"""``kmscli keys ...``: the key lifecycle, rotation and metadata."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .. import errors
from . import common, output

app = common.new_app("Create, inspect, enable, disable, rotate and delete keys.")

KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape.")]


@app.command("create", cls=common.KmsCommand, help="Create a symmetric key and print its key id.")
def create(
    description: Annotated[str, typer.Option("--description", "-d", help="Description (up to 8192 characters).")] = "",
    alias: Annotated[str | None, typer.Option("--alias", metavar="NAME", help="Also create alias NAME (alias/...).")
                     ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", metavar="K=V", help="Tag the key; repeatable.")] = None,
    policy: Annotated[str | None, typer.Option("--policy", metavar="FILE",
                      help="Key policy JSON file ('-' for stdin); default: AWS's default policy.")] = None,
    bypass: Annotated[bool, typer.Option("--bypass-policy-lockout-safety-check",
                      help="Accept a policy that would lock you out of changing it.")] = False,
    json_: JsonOpt = False,
) -> None:
    document = _read_policy(policy) if policy is not None else None
    tags = [{"TagKey": k, "TagValue": v} for k, v in common.pairs(tag, "tag").items()]
    result = common.service().CreateKey(Description=description, Tags=tags, Policy=document,
                                        BypassPolicyLockoutSafetyCheck=bypass, AliasName=alias)
    if json_:
        output.emit_json(result)
    else:
        output.emit_line(result["KeyMetadata"]["KeyId"])


@app.command("list", cls=common.KmsCommand, help="List keys (with --all, also those pending deletion).")
def list_(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include keys pending deletion.")] = False,
    json_: JsonOpt = False,
) -> None:
    svc = common.service()
    result = svc.ListKeys(IncludePendingDeletion=all_)
    if json_:
        output.emit_json({"Keys": result["Keys"]})
        return
    aliases: dict[str, list[str]] = {}
    for a in svc.ListAliases()["Aliases"]:
        aliases.setdefault(a["TargetKeyId"], []).append(a["AliasName"])
    rows = [(k["KeyId"], k["KeyState"], ",".join(aliases.get(k["KeyId"], [])), k["CreationDate"], k["Description"])
            for k in result["Keys"]]
    output.table("Keys", ["KeyId", "State", "Aliases", "Created", "Description"], rows)


@app.command("describe", cls=common.KmsCommand, help="Show one key's metadata.")
def describe(key: KeyArg, json_: JsonOpt = False) -> None:
    svc = common.service()
    meta = svc.DescribeKey(KeyId=key)["KeyMetadata"]
    if json_:
        output.emit_json({"KeyMetadata": meta})
        return
    aliases = [a["AliasName"] for a in svc.ListAliases(KeyId=meta["KeyId"])["Aliases"]]
    rotation = "off"
    if meta["KeyRotationEnabled"]:
        rotation = f"every {meta['RotationPeriodInDays']} days, next {meta['NextRotationDate']}"
    rows: list[tuple[str, Any]] = [
        ("KeyId", meta["KeyId"]), ("Arn", meta["Arn"]), ("State", meta["KeyState"]),
        ("Aliases", ", ".join(aliases)), ("Description", meta["Description"]),
        ("Created", meta["CreationDate"]), ("KeySpec", meta["KeySpec"]), ("KeyUsage", meta["KeyUsage"]),
        ("Rotation", rotation), ("KeyMaterialId", meta["CurrentKeyMaterialId"]),
        ("Tags", ", ".join(f"{t['TagKey']}={t['TagValue']}" for t in meta["Tags"])),
    ]
    if "DeletionDate" in meta:
        rows.insert(3, ("DeletionDate", meta["DeletionDate"]))
    output.fields(rows)


@app.command("enable", cls=common.KmsCommand, help="Allow cryptographic use of a key.")
def enable(key: KeyArg) -> None:
    common.service().EnableKey(KeyId=key)


@app.command("disable", cls=common.KmsCommand, help="Forbid cryptographic use of a key (reversible).")
def disable(key: KeyArg) -> None:
    common.service().DisableKey(KeyId=key)


@app.command("schedule-delete", cls=common.KmsCommand,
             help="Schedule a key's destruction after a waiting period (7..30 days, default 30).")
def schedule_delete(
    key: KeyArg,
    days: Annotated[int, typer.Option("--days", metavar="N", help="Waiting period in days (7..30).")] = 30,
    json_: JsonOpt = False,
) -> None:
    result = common.service().ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=days)
    if json_:
        output.emit_json(result)
    else:
        output.message(f"key {result['KeyId']} will be destroyed on {result['DeletionDate']} "
                       "unless you run 'kmscli keys cancel-delete'")


@app.command("cancel-delete", cls=common.KmsCommand,
             help="Cancel a scheduled deletion; the key comes back Disabled, as in AWS KMS.")
def cancel_delete(key: KeyArg) -> None:
    common.service().CancelKeyDeletion(KeyId=key)
    output.message("deletion cancelled; the key is Disabled until you run 'kmscli keys enable'")


@app.command("set-description", cls=common.KmsCommand, help="Replace a key's description.")
def set_description(key: KeyArg, text: Annotated[str, typer.Argument(metavar="TEXT", help="New description.")]
                    ) -> None:
    common.service().UpdateKeyDescription(KeyId=key, Description=text)


@app.command("tag", cls=common.KmsCommand, help="Add or replace tags on a key.")
def tag(key: KeyArg, tags: Annotated[list[str], typer.Argument(metavar="K=V...", help="Tags to set.")]) -> None:
    pairs = common.pairs(tags, "tag")
    common.service().TagResource(KeyId=key, Tags=[{"TagKey": k, "TagValue": v} for k, v in pairs.items()])


@app.command("untag", cls=common.KmsCommand, help="Remove tags from a key.")
def untag(key: KeyArg, keys: Annotated[list[str], typer.Argument(metavar="K...", help="Tag keys to remove.")]
          ) -> None:
    common.service().UntagResource(KeyId=key, TagKeys=keys)


@app.command("rotate", cls=common.KmsCommand, help="Give a key new material now; old ciphertexts still decrypt.")
def rotate(key: KeyArg) -> None:
    common.service().RotateKeyOnDemand(KeyId=key)


@app.command("rotation", cls=common.KmsCommand, help="Turn automatic rotation on or off, or retire old material.")
def rotation(
    key: KeyArg,
    enable: Annotated[bool, typer.Option("--enable", help="Rotate automatically every --days days.")] = False,
    disable: Annotated[bool, typer.Option("--disable", help="Stop rotating automatically.")] = False,
    days: Annotated[int | None, typer.Option("--days", metavar="N", help="Rotation period (90..2560, default 365).")
                    ] = None,
    min_decrypt_version: Annotated[int | None, typer.Option("--min-decrypt-version", metavar="N",
                                   help="Refuse to decrypt ciphertexts sealed with material older than "
                                        "version N.")] = None,
) -> None:
    if enable and disable:
        raise errors.ValidationException("give --enable or --disable, not both")
    if not (enable or disable or min_decrypt_version is not None):
        raise errors.ValidationException("give --enable [--days N], --disable, or --min-decrypt-version N")
    if days is not None and not enable:
        raise errors.ValidationException("--days goes with --enable")
    svc = common.service()
    if enable:
        svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=days if days is not None else 365)
    elif disable:
        svc.DisableKeyRotation(KeyId=key)
    if min_decrypt_version is not None:
        svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=min_decrypt_version)


@app.command("rotations", cls=common.KmsCommand, help="List every material version of a key.")
def rotations(key: KeyArg, json_: JsonOpt = False) -> None:
    result = common.service().ListKeyRotations(KeyId=key)
    if json_:
        output.emit_json({"Rotations": result["Rotations"]})
        return
    rows = [(n, r["KeyMaterialId"][:16] + "…", r["KeyMaterialState"], r.get("RotationType", "ORIGINAL"),
             r.get("RotationDate", "")) for n, r in enumerate(result["Rotations"], 1)]
    output.table("Key material", ["Version", "KeyMaterialId", "State", "Type", "RotationDate"], rows)


def _read_policy(path: str) -> str:
    import sys

    try:
        if path == "-":
            data = sys.stdin.buffer.read(1 << 20)
        else:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
    except OSError as e:
        raise errors.UsageError(f"cannot read the policy file {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.MalformedPolicyDocumentException("the policy document is not UTF-8 text") from None
