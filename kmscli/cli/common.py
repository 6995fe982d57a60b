"""What every command shares: global options, the service factory, key=value parsing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from .. import errors


@dataclass
class Globals:
    vault: str | None = None
    audit_log: str | None = None
    passphrase_file: str | None = None
    debug: bool = False


STATE = Globals()


def _store(ctx: Any, param: Any, value: Any) -> Any:
    if value is not None and value is not False:
        setattr(STATE, param.name, value)
    return value


def global_params() -> list[Any]:
    """Options every command accepts, before or after its name."""
    common: dict[str, Any] = {"expose_value": False, "callback": _store, "is_eager": True}
    return [
        TyperOption(param_decls=["--vault"], metavar="PATH", **common,
                    help="Vault file [env: KMSCLI_VAULT; default: the user data folder's kmscli/vault.kms]."),
        TyperOption(param_decls=["--audit-log"], metavar="PATH", **common,
                    help="Audit log [env: KMSCLI_AUDIT_LOG; default: audit.jsonl beside the vault]."),
        TyperOption(param_decls=["--passphrase-file"], metavar="PATH", **common,
                    help="Read the vault passphrase from the first line of PATH [env: KMSCLI_PASSPHRASE_FILE]."),
        TyperOption(param_decls=["--debug"], is_flag=True, default=False, **common,
                    help="Show a traceback for unexpected errors."),
    ]


class KmsCommand(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(global_params())


class KmsGroup(TyperGroup):
    pass


def new_app(help_text: str) -> typer.Typer:
    return typer.Typer(
        cls=KmsGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def command(app: typer.Typer, name: str, help_text: str) -> Any:
    return app.command(name, cls=KmsCommand, help=help_text)


def vault_path() -> Path:
    from ..vault.store import resolve_vault_path

    return resolve_vault_path(STATE.vault)


def audit_path() -> Path:
    value = STATE.audit_log or os.environ.get("KMSCLI_AUDIT_LOG")
    if value:
        return Path(value).expanduser()
    from ..service import AUDIT_FILE

    return vault_path().with_name(AUDIT_FILE)


def key_source() -> Any:
    """The vault key's source: a session if one is set (never falling back), else a passphrase."""
    if os.environ.get("KMSCLI_SESSION"):
        raise errors.InvalidSessionException(
            "KMSCLI_SESSION is set but this kmscli has no session agent yet; unset it to use a passphrase"
        )
    from ..vault.store import PassphraseKeySource
    from . import passphrase

    return PassphraseKeySource(passphrase.current(STATE.passphrase_file))


def service(keys: Any = None) -> Any:
    from ..service import Kms

    return Kms(vault_path(), keys if keys is not None else key_source(), audit_path=audit_path())


def pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """``K=V`` options into a dict; naming one key twice is an error, not a silent choice."""
    from ..ids import parse_pair

    out: dict[str, str] = {}
    for v in values or []:
        k, val = parse_pair(v, what)
        if k in out and out[k] != val:
            raise errors.ValidationException(f"{what} key '{k}' is given twice with different values")
        out[k] = val
    return out
