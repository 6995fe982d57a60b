"""``kmscli init`` and ``kmscli passwd``."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import errors
from . import common, output, passphrase


def register(app: typer.Typer) -> None:
    common.command(app, "init", "Create a new vault (refuses to overwrite one).")(init)
    common.command(app, "passwd", "Change the vault passphrase without re-encrypting any key.")(passwd)


def init(
    kdf_memory: Annotated[int | None, typer.Option("--kdf-memory", metavar="MIB",
                          help="Argon2id memory in MiB (8..4096; default 512).")] = None,
    kdf_time: Annotated[int | None, typer.Option("--kdf-time", metavar="N",
                        help="Argon2id passes (1..16; default 2).")] = None,
    kdf_parallelism: Annotated[int | None, typer.Option("--kdf-parallelism", metavar="N",
                               help="Argon2id lanes (1..16; default 4).")] = None,
) -> None:
    from ..vault import format as F
    from ..vault.store import PassphraseKeySource

    _check("--kdf-memory", kdf_memory, F.MIN_MEMORY_KIB // 1024, F.MAX_MEMORY_KIB // 1024)
    _check("--kdf-time", kdf_time, F.MIN_TIME, F.MAX_TIME)
    _check("--kdf-parallelism", kdf_parallelism, F.MIN_PARALLELISM, F.MAX_PARALLELISM)
    kdf = F.KdfParams(
        memory_kib=kdf_memory * 1024 if kdf_memory is not None else F.DEFAULT_MEMORY_KIB,
        time_cost=kdf_time if kdf_time is not None else F.DEFAULT_TIME,
        parallelism=kdf_parallelism if kdf_parallelism is not None else F.DEFAULT_PARALLELISM,
    )
    path = common.vault_path()
    if path.exists():
        raise errors.AlreadyExistsException(f"a vault already exists at {path}; kmscli never overwrites one")
    secret = passphrase.new(common.STATE.passphrase_file, file_env="KMSCLI_PASSPHRASE_FILE",
                            env="KMSCLI_PASSPHRASE", label="new vault passphrase")
    result = common.service(PassphraseKeySource(lambda: secret)).CreateVault(kdf)
    output.message(f"created vault {result['VaultPath']} (account {result['Account']})")
    if kdf.is_weak():
        output.message(
            f"warning: Argon2id m={kdf.memory_kib // 1024} MiB t={kdf.time_cost} is below OWASP's minimum "
            "(19 MiB, t=2); use such settings for tests only"
        )


def passwd(
    new_passphrase_file: Annotated[str | None, typer.Option("--new-passphrase-file", metavar="PATH",
                                   help="Read the new passphrase from the first line of PATH "
                                        "[env: KMSCLI_NEW_PASSPHRASE_FILE; KMSCLI_NEW_PASSPHRASE holds "
                                        "the passphrase itself].")] = None,
) -> None:
    svc = common.service()
    svc.store.read_bytes()  # a missing vault fails before any prompt
    new = passphrase.new(new_passphrase_file, file_env="KMSCLI_NEW_PASSPHRASE_FILE",
                         env="KMSCLI_NEW_PASSPHRASE", label="new vault passphrase")
    svc.ChangePassphrase(new)
    output.message("passphrase changed; the keys and every ciphertext are unchanged")
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


def _check(option: str, value: int | None, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise errors.ValidationException(f"{option} must be between {lo} and {hi} (got {value})")
