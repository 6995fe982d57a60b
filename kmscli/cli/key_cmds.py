"""``kmscli keys ...``: the key lifecycle, rotation and metadata."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .. import errors
from . import common, output

app = common.new_app("Create, inspect, enable, disable, rotate and delete keys.")

KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Key id, alias/NAME, key ARN or alias ARN.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the AWS KMS JSON response shape.")]


@app.command("create", cls=common.KmsCommand, help="Create a key (symmetric unless --spec says otherwise) and "
                                                    "print its key id.")
def create(
    spec: Annotated[str, typer.Option("--spec", metavar="SPEC",
                    help="Key spec: SYMMETRIC_DEFAULT (default), RSA_2048|3072|4096, ECC_NIST_P256|P384|P521, "
                         "ECC_SECG_P256K1, ML_DSA_44|65|87, HMAC_224|256|384|512.")] = "SYMMETRIC_DEFAULT",
    usage: Annotated[str | None, typer.Option("--usage", metavar="USAGE",
                     help="Key usage: ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC or KEY_AGREEMENT; needed "
                          "for every spec but SYMMETRIC_DEFAULT (HMAC keys: GENERATE_VERIFY_MAC, implied).")] = None,
    description: Annotated[str, typer.Option("--description", "-d", help="Description (up to 8192 characters).")] = "",
    alias: Annotated[str | None, typer.Option("--alias", metavar="NAME", help="Also create alias NAME (alias/...).")
                     ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", metavar="K=V", help="Tag the key; repeatable.")] = None,
    policy: Annotated[str | None, typer.Option("--policy", metavar="FILE",
                      help="Key policy JSON file ('-' for stdin); default: AWS's default policy.")] = None,
    bypass: Annotated[bool, typer.Option("--bypass-policy-lockout-safety-check",
                      help="Accept a policy that would lock you out of changing it.")] = False,
    origin: Annotated[str, typer.Option("--origin", metavar="AWS_KMS|EXTERNAL",
                      help="Where the key material comes from: AWS_KMS (default, made here) or EXTERNAL (none "
                           "until you import yours: see 'kmscli keys import-params').")] = "AWS_KMS",
    json_: JsonOpt = False,
) -> None:
    document = _read_policy(policy) if policy is not None else None
    tags = [{"TagKey": k, "TagValue": v} for k, v in common.pairs(tag, "tag").items()]
    if usage is None and spec.startswith("HMAC_"):
        usage = "GENERATE_VERIFY_MAC"  # the only usage an HMAC key has: asking for it would be ceremony
    result = common.service().CreateKey(Description=description, Tags=tags, Policy=document,
                                        BypassPolicyLockoutSafetyCheck=bypass, AliasName=alias, KeySpec=spec,
                                        KeyUsage=usage, Origin=origin)
    if json_:
        output.emit_aws("CreateKey", result)
    else:
        output.emit_line(result["KeyMetadata"]["KeyId"])


@app.command("list", cls=common.KmsCommand, help="List keys (with --all, also those pending deletion).")
def list_(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include keys pending deletion.")] = False,
    json_: JsonOpt = False,
) -> None:
    svc = common.service()
    if json_:
        # ListKeys, every page (as the AWS CLI pages), printed as one response, streamed a page at a time.
        output.emit_aws_pages("ListKeys", "Keys", common.pages(
            lambda m: svc.ListKeys(Limit=1000, Marker=m, IncludePendingDeletion=all_), "Keys"))
        return

    def rows(keys: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for k in keys:
            meta = k.get("KeyMetadata")
            if meta is None:  # the policy does not let this caller describe it
                out.append((k["KeyId"], "(not allowed)", ",".join(k["Aliases"]), "", ""))
            else:
                out.append((k["KeyId"], meta["KeyState"], ",".join(k["Aliases"]), output.when(meta["CreationDate"]),
                            meta["Description"]))
        return out

    found = common.pages(lambda m: svc.ListKeyDetails(IncludePendingDeletion=all_, Limit=1000, Marker=m), "Keys")
    output.table_pages("Keys", ["KeyId", "State", "Aliases", "Created", "Description"], (rows(p) for p in found))


@app.command("describe", cls=common.KeyCommand, help="Show one key's metadata.")
def describe(key: KeyArg, json_: JsonOpt = False) -> None:
    svc = common.service()
    if json_:
        output.emit_aws("DescribeKey", svc.DescribeKey(KeyId=key))
        return
    detail = svc.DescribeKeyDetails(KeyId=key)
    meta = detail["KeyMetadata"]
    rot = detail.get("Rotation")
    if meta.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
        rotation = "not supported for this key spec"
    elif meta.get("Origin") == "EXTERNAL":
        rotation = "not supported for imported key material"
    elif rot is None:
        rotation = "(not allowed to see)"
    elif rot["Enabled"]:
        rotation = f"every {rot['PeriodInDays']} days, next {output.when(rot['NextRotationDate'])}"
    else:
        rotation = "off"
    tags = detail.get("Tags")
    rows: list[tuple[str, Any]] = [
        ("KeyId", meta["KeyId"]), ("Arn", meta["Arn"]), ("State", meta["KeyState"]),
        ("Aliases", ", ".join(detail["Aliases"])), ("Description", meta["Description"]),
        ("Created", output.when(meta["CreationDate"])), ("KeySpec", meta["KeySpec"]),
        ("KeyUsage", meta.get("KeyUsage", "")), ("Algorithms", ", ".join(_algorithms(meta))), ("Rotation", rotation),
        ("KeyMaterialId", meta.get("CurrentKeyMaterialId", "(one, for the key's life: it never rotates)")),
        ("Tags", "(not allowed to see)" if tags is None else ", ".join(f"{t['TagKey']}={t['TagValue']}"
                                                                          for t in tags)),
    ]
    if rot is not None and rot["MinDecryptVersion"] > 1:
        rows.insert(10, ("MinDecryptVersion", rot["MinDecryptVersion"]))
    if "DeletionDate" in meta:
        rows.insert(3, ("DeletionDate", output.when(meta["DeletionDate"])))
    if meta["Origin"] == "EXTERNAL":
        rows += [("Origin", "EXTERNAL (imported key material)"),
                 ("Material", "not in place: import it ('kmscli keys import')" if "ExpirationModel" not in meta
                  else f"imported, expires {output.when(meta['ValidTo'])}" if "ValidTo" in meta
                  else "imported, does not expire")]
        if "CurrentKeyMaterialId" not in meta and meta["KeySpec"] == "SYMMETRIC_DEFAULT":
            rows = [r for r in rows if r[0] != "KeyMaterialId"]
    output.fields(rows)


def _algorithms(meta: dict[str, Any]) -> list[str]:
    """The key's algorithms, whichever member its usage has (EncryptionAlgorithms, SigningAlgorithms, ...)."""
    for member in ("EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms", "KeyAgreementAlgorithms"):
        if meta.get(member):  # some KMSes (moto) send the other members empty
            return list(meta[member])
    return []


@app.command("tags", cls=common.KeyCommand, help="List a key's tags (ListResourceTags).")
def tags(key: KeyArg, json_: JsonOpt = False) -> None:
    svc = common.service()
    found = common.all_pages(lambda m: svc.ListResourceTags(KeyId=key, Limit=50, Marker=m), "Tags")
    if json_:
        output.emit_aws("ListResourceTags", {"Tags": found, "Truncated": False})
        return
    output.table("Tags", ["TagKey", "TagValue"], [(t["TagKey"], t["TagValue"]) for t in found])


@app.command("enable", cls=common.KeyCommand, help="Allow cryptographic use of a key.")
def enable(key: KeyArg) -> None:
    common.service().EnableKey(KeyId=key)


@app.command("disable", cls=common.KeyCommand, help="Forbid cryptographic use of a key (reversible).")
def disable(key: KeyArg) -> None:
    common.service().DisableKey(KeyId=key)


@app.command("schedule-delete", cls=common.KeyCommand,
             help="Schedule a key's destruction after a waiting period (--days).")
def schedule_delete(
    key: KeyArg,
    days: Annotated[int, typer.Option("--days", metavar="N", help="Waiting period in days (7..30; default 30).")] = 30,
    json_: JsonOpt = False,
) -> None:
    result = common.service().ScheduleKeyDeletion(KeyId=key, PendingWindowInDays=days)
    if json_:
        output.emit_aws("ScheduleKeyDeletion", result)
    else:
        output.message(f"key {result['KeyId']} will be destroyed on {output.when(result['DeletionDate'])} "
                       "unless you run 'kmscli keys cancel-delete'")


@app.command("cancel-delete", cls=common.KeyCommand,
             help="Cancel a scheduled deletion; the key comes back Disabled, as in AWS KMS.")
def cancel_delete(key: KeyArg, json_: JsonOpt = False) -> None:
    result = common.service().CancelKeyDeletion(KeyId=key)
    if json_:
        output.emit_aws("CancelKeyDeletion", result)
    output.message("deletion cancelled; the key is Disabled until you run 'kmscli keys enable'")


@app.command("set-description", cls=common.KeyCommand, help="Replace a key's description.")
def set_description(key: KeyArg, text: Annotated[str, typer.Argument(metavar="TEXT", help="New description.")]
                    ) -> None:
    common.service().UpdateKeyDescription(KeyId=key, Description=text)


@app.command("tag", cls=common.KeyCommand, help="Add or replace tags on a key.")
def tag(key: KeyArg, tags: Annotated[list[str], typer.Argument(metavar="K=V...", help="Tags to set.")]) -> None:
    pairs = common.pairs(tags, "tag")
    common.service().TagResource(KeyId=key, Tags=[{"TagKey": k, "TagValue": v} for k, v in pairs.items()])


@app.command("untag", cls=common.KeyCommand, help="Remove tags from a key.")
def untag(key: KeyArg, keys: Annotated[list[str], typer.Argument(metavar="K...", help="Tag keys to remove.")]
          ) -> None:
    common.service().UntagResource(KeyId=key, TagKeys=keys)


@app.command("rotate", cls=common.KeyCommand, help="Give a key new material now; old ciphertexts still decrypt.")
def rotate(key: KeyArg, json_: JsonOpt = False) -> None:
    result = common.service().RotateKeyOnDemand(KeyId=key)
    if json_:
        output.emit_aws("RotateKeyOnDemand", result)


@app.command("rotation", cls=common.KeyCommand,
             help="Show automatic rotation (GetKeyRotationStatus), turn it on or off, or retire old material.")
def rotation(
    key: KeyArg,
    enable: Annotated[bool, typer.Option("--enable", help="Rotate automatically every --days days.")] = False,
    disable: Annotated[bool, typer.Option("--disable", help="Stop rotating automatically.")] = False,
    days: Annotated[int | None, typer.Option("--days", metavar="N", help="Rotation period (90..2560, default 365).")
                    ] = None,
    min_decrypt_version: Annotated[int | None, typer.Option("--min-decrypt-version", metavar="N",
                                   help="Refuse to decrypt ciphertexts sealed with material older than "
                                        "version N.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the GetKeyRotationStatus response (status only).")
                     ] = False,
) -> None:
    if enable and disable:
        raise errors.ValidationException("give --enable or --disable, not both")
    if days is not None and not enable:
        raise errors.ValidationException("--days goes with --enable")
    changing = enable or disable or min_decrypt_version is not None
    if json_ and changing:
        raise errors.ValidationException("--json goes with the status form (no --enable, --disable or "
                                         "--min-decrypt-version)")
    svc = common.service()
    if not changing:
        status = svc.GetKeyRotationStatus(KeyId=key)
        if json_:
            output.emit_aws("GetKeyRotationStatus", status)
        elif status["KeyRotationEnabled"]:
            # Optional in AWS's model: another KMS (moto) may leave them out.
            output.fields([("KeyRotationEnabled", "true"),
                           ("RotationPeriodInDays", status.get("RotationPeriodInDays", "")),
                           ("NextRotationDate", output.when(status.get("NextRotationDate")))])
        else:
            output.fields([("KeyRotationEnabled", "false")])
        return
    if enable:
        svc.EnableKeyRotation(KeyId=key, RotationPeriodInDays=days if days is not None else 365)
    elif disable:
        svc.DisableKeyRotation(KeyId=key)
    if min_decrypt_version is not None:
        svc.SetMinDecryptVersion(KeyId=key, MinDecryptVersion=min_decrypt_version)


@app.command("rotations", cls=common.KeyCommand, help="List every material version of a key.")
def rotations(key: KeyArg, json_: JsonOpt = False) -> None:
    svc = common.service()
    found = common.all_pages(lambda m: svc.ListKeyRotations(KeyId=key, Limit=1000, Marker=m,
                                                              IncludeKeyMaterial="ALL_KEY_MATERIAL",
                                                              Detail=not json_), "Rotations")
    if json_:
        output.emit_aws("ListKeyRotations", {"Rotations": found, "Truncated": False})
        return
    # Shortened to fit a terminal only: a script reading the lines gets every id whole.
    short = output.is_tty(sys.stdout)
    rows = [(r["Version"], _material_id(r, short), r.get("KeyMaterialState", ""),
             r.get("RotationType", "ORIGINAL"), output.when(r.get("RotationDate")),
             "yes" if r["Decrypts"] else "no (below --min-decrypt-version)") for r in found]
    output.table("Key material", ["Version", "KeyMaterialId", "State", "Type", "RotationDate", "Decrypts"], rows)


def _material_id(rotation: dict[str, Any], short: bool) -> str:
    found = str(rotation.get("KeyMaterialId", ""))  # optional in AWS's model
    return found[:16] + "…" if short and len(found) > 16 else found


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
