"""``kmscli init``, ``kmscli passwd`` and ``kmscli vault backup|restore``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .. import errors
from . import common, output, passphrase


def register(app: typer.Typer) -> None:
    common.command(app, "init", "Create a new vault (refuses to overwrite one).")(init)
    common.command(app, "passwd", "Change the passphrase (and KDF settings), or the KMS root key, and rotate the "
                   "vault key; needs the current passphrase (or root key), never a session.")(passwd)
    app.add_typer(vault_app, name="vault")


vault_app = common.new_app("Back up the vault and its audit log, and restore them.")


_MEMORY = typer.Option("--kdf-memory", metavar="MIB", help="Argon2id memory in MiB (8..1024; default 512).")
_TIME = typer.Option("--kdf-time", metavar="N", help="Argon2id passes (1..8; default 2; memory x passes <= 2048).")
_LANES = typer.Option("--kdf-parallelism", metavar="N", help="Argon2id lanes (1..8; default 4).")
_ROOT_KEY_HELP = ("wrapped by a data key of this KMS key instead of a passphrase (a full key ARN or alias ARN; "
                  "the KMS of its region, AWS_ENDPOINT_URL_KMS honoured, with the AWS credential chain): the "
                  "vault unlocks unattended, and revoking access to the key locks it")


def _kdf(memory: int | None, time_cost: int | None, lanes: int | None, base: Any = None) -> Any:
    """KDF parameters from the options, the rest from ``base`` (the defaults when None); checked."""
    from ..vault import format as F

    base = base or F.KdfParams()
    kdf = F.KdfParams(
        memory_kib=memory * 1024 if memory is not None else base.memory_kib,
        time_cost=time_cost if time_cost is not None else base.time_cost,
        parallelism=lanes if lanes is not None else base.parallelism,
    )
    why = kdf.bounds_error()
    if why is not None:
        raise errors.ValidationException(why)
    return kdf


def _warn_if_weak(kdf: Any) -> None:
    if kdf.is_weak():
        output.message(
            f"warning: Argon2id m={kdf.memory_kib // 1024} MiB t={kdf.time_cost} is below OWASP's minimum "
            "(19 MiB, t=2); use such settings for tests only"
        )


def init(
    kdf_memory: Annotated[int | None, _MEMORY] = None,
    kdf_time: Annotated[int | None, _TIME] = None,
    kdf_parallelism: Annotated[int | None, _LANES] = None,
    account: Annotated[str | None, typer.Option("--account", metavar="12-DIGITS",
                       help="The vault's AWS account id, in every ARN (default: random).")] = None,
    root_key: Annotated[str | None, typer.Option("--root-key", metavar="KEY_ARN",
                        help=f"The vault key is {_ROOT_KEY_HELP}.")] = None,
) -> None:
    from ..ids import validate_account
    from ..vault.store import PassphraseKeySource

    given = (kdf_memory, kdf_time, kdf_parallelism)
    if root_key is not None:
        from ..vault import rootkey

        rootkey.parse_arn(root_key)
        if any(v is not None for v in given):
            raise errors.ValidationException("--kdf-memory, --kdf-time and --kdf-parallelism set a passphrase's "
                                             "KDF; a vault with --root-key has none")
    kdf = _kdf(*given)
    if account is not None:
        validate_account(account)
    path = common.vault_path()
    if path.exists():
        raise errors.AlreadyExistsException(f"a vault already exists at {path}; kmscli never overwrites one")
    if root_key is not None:
        def no_passphrase() -> bytes:
            raise errors.KMSInternalException("a vault with a KMS root key has no passphrase")

        result = common.service(PassphraseKeySource(no_passphrase)).CreateVault(Account=account, RootKeyArn=root_key)
        output.message(f"created vault {result['VaultPath']} (account {result['Account']}; audit log "
                       f"{result['AuditLog']}); its key is wrapped by the KMS key {result['RootKeyArn']}")
        return
    secret = passphrase.new(common.STATE.passphrase_file, file_env="KMSCLI_PASSPHRASE_FILE",
                            env="KMSCLI_PASSPHRASE", label="new vault passphrase")
    result = common.service(PassphraseKeySource(lambda: secret)).CreateVault(kdf, Account=account)
    output.message(f"created vault {result['VaultPath']} (account {result['Account']}; "
                   f"audit log {result['AuditLog']})")
    _warn_if_weak(kdf)


def passwd(
    new_passphrase_file: Annotated[str | None, typer.Option("--new-passphrase-file", metavar="PATH",
                                   help="Read the new passphrase from the first line of PATH "
                                        "[env: KMSCLI_NEW_PASSPHRASE_FILE; KMSCLI_NEW_PASSPHRASE holds "
                                        "the passphrase itself].")] = None,
    kdf_memory: Annotated[int | None, _MEMORY] = None,
    kdf_time: Annotated[int | None, _TIME] = None,
    kdf_parallelism: Annotated[int | None, _LANES] = None,
    root_key: Annotated[str | None, typer.Option("--root-key", metavar="KEY_ARN",
                        help=f"From now on the vault key is {_ROOT_KEY_HELP}; without it, a vault that has a KMS "
                             "root key gets a passphrase again.")] = None,
) -> None:
    given = (kdf_memory, kdf_time, kdf_parallelism)
    if root_key is not None:
        from ..vault import rootkey

        rootkey.parse_arn(root_key)
        if any(v is not None for v in given) or new_passphrase_file is not None:
            raise errors.ValidationException("--root-key replaces the passphrase: give no --new-passphrase-file "
                                             "and no --kdf-* option with it")
    # The current passphrase first, then the new one twice, as passwd, ssh-keygen -p and gpg ask.
    svc = common.service(common.key_source(label="current vault passphrase"))
    header = svc.store.read_header()  # a missing vault fails before any prompt
    # A vault with a KMS root key has no KDF settings to start from: the defaults.
    base = header.kdf if header.root_key is None else None
    kdf = _kdf(*given, base=base) if any(v is not None for v in given) else None

    if root_key is not None:
        result = svc.ChangePassphrase(None, None, RootKeyArn=root_key)
        output.message(f"the vault key is now wrapped by the KMS key {result['RootKeyArn']}, and was rotated: an "
                       "old copy of the vault opens nothing written from now on; keys and ciphertexts are unchanged")
        _end_sessions()
        return

    def ask_new() -> bytes:
        return passphrase.new(new_passphrase_file, file_env="KMSCLI_NEW_PASSPHRASE_FILE",
                              env="KMSCLI_NEW_PASSPHRASE", label="new vault passphrase")

    svc.ChangePassphrase(ask_new, kdf)
    output.message("passphrase changed and vault key rotated: an old copy of the vault opens nothing written "
                   "from now on; keys and ciphertexts are unchanged")
    if kdf is not None:
        _warn_if_weak(kdf)
    _end_sessions()


def _end_sessions() -> None:
    """A session holds the vault key the old passphrase opened: end them all, this one included.

    Sessions this cannot reach (another runtime folder) fail anyway: each
    checks that the vault header is still the one it unlocked.
    """
    from ..agent import session

    try:
        ended = session.end_vault_sessions(common.vault_path())
    except errors.KmsError as e:
        output.message(f"warning: could not end the sessions of this vault ({e.message}); they fail from now on")
        return
    if ended:
        output.message(f"ended {ended} session{'' if ended == 1 else 's'} of this vault")


@vault_app.command("backup", cls=common.KmsCommand,
                   help="Write a consistent, still-encrypted copy of the vault and its audit log to OUT (a tar "
                        "archive; '-' = stdout), taken under the lock; a session suffices.")
def backup(
    out: Annotated[str, typer.Argument(metavar="OUT", help="The archive to write ('-' = stdout); replaced only "
                                                           "on success, mode 0600.")],
) -> None:
    from . import fileio

    svc = common.service()
    with fileio.output(out, binary=True) as dest:
        result = svc.BackupVault(dest.stream, Output=out)
    where = "standard output" if dest.path is None else str(dest.path)
    output.message(f"backed up the vault {result['VaultPath']} (generation {result['Generation']}) and its audit "
                   f"log ({result['LogRecords']} records in {result['LogFiles']} file(s)) to {where}")


@vault_app.command("restore", cls=common.KmsCommand,
                   help="Put a backup's vault and audit log in place of the vault's; needs the passphrase the "
                        "backup opens with, never a session. What is replaced is kept aside.")
def restore(
    in_: Annotated[str, typer.Argument(metavar="IN", help="The archive 'kmscli vault backup' wrote ('-' = stdin).")],
    force: Annotated[bool, typer.Option("--force", help="Restore even over a vault or log that may be newer "
                                                        "than the backup (a rollback).")] = False,
) -> None:
    from . import fileio

    svc = common.service()
    reader, _size = fileio.open_input(in_)
    result = svc.RestoreVault(reader, Input=in_, Force=force)
    kept = [p for p in (result["ReplacedVault"], *result["ReplacedLogFiles"]) if p]
    aside = f"; what was in place is kept as {', '.join(kept)}" if kept else ""
    moved = f" (its log now at {result['AuditLog']})" if result["LogMoved"] else ""
    output.message(f"restored the vault {result['VaultPath']} (generation {result['BackupGeneration']} of the "
                   f"backup) and its audit log{moved}{aside}")
    _end_sessions()
