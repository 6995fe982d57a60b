"""What every command shares: global options, the service factory, key=value parsing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .. import errors


@dataclass
class Globals:
    vault: str | None = None
    audit_log: str | None = None
    passphrase_file: str | None = None
    region: str | None = None
    #: ``--endpoint``: a remote KMS instead of the vault (KMSCLI_ENDPOINT when not given).
    endpoint: str | None = None
    debug: bool = False
    #: ``--grant-token`` values (commands that use a key): checked with every authorization of the call.
    grant_tokens: tuple[str, ...] = ()


STATE = Globals()
#: The session this process serves: set only in a session agent's worker
#: (kmscli.agent.worker), where it holds the in-memory vault key and the
#: caller as the kernel identified it. None everywhere else.
SESSION: Any = None


def _store(ctx: Any, param: Any, value: Any) -> Any:
    if value is not None and value is not False:
        setattr(STATE, param.name, value)
    return value


ENDPOINT_HELP = ("Use the KMS at URL instead of the vault: another host's 'kmscli serve', or 'aws' for AWS KMS "
                 "(credentials and region from the AWS chain) [env: KMSCLI_ENDPOINT].")


def global_params() -> list[Any]:
    """Options every command accepts, before or after its name."""
    common: dict[str, Any] = {"expose_value": False, "callback": _store, "is_eager": True}
    return [
        TyperOption(param_decls=["--vault"], metavar="PATH", **common,
                    help="Vault file [env: KMSCLI_VAULT; default: the user data folder's kmscli/vault.kms]."),
        TyperOption(param_decls=["--audit-log"], metavar="PATH", **common,
                    help="Audit log: where init puts it, fixed for the vault's life after that "
                         "[env: KMSCLI_AUDIT_LOG; default: audit.jsonl beside the vault]."),
        TyperOption(param_decls=["--passphrase-file"], metavar="PATH", **common,
                    help="Read the vault passphrase from the first line of PATH [env: KMSCLI_PASSPHRASE_FILE]."),
        TyperOption(param_decls=["--region"], metavar="NAME", **common,
                    help="Region the keys live in [env: KMSCLI_REGION; default: local]."),
        TyperOption(param_decls=["--endpoint"], metavar="URL", **common, help=ENDPOINT_HELP),
        TyperOption(param_decls=["--debug"], is_flag=True, default=False, **common,
                    help="Show a traceback for unexpected errors."),
    ]


class KmsCommand(TyperCommand):
    """A command with the global options, whose help says each thing once.

    Defaults are written in the options' own words ("default 15m"), so
    Typer's "[default: 15m]" after them would say it twice: it is off for
    every parameter. The usage line shows arguments as their metavars
    (``KEY``, ``[FILE]``), not Typer's ``{KEY}``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(global_params())
        for param in self.params:
            if isinstance(param, (TyperOption, TyperArgument)):
                param.show_default = False

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                metavar = param.metavar or (param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(metavar if param.required or metavar.startswith("[") else f"[{metavar}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


def _store_tokens(ctx: Any, param: Any, value: Any) -> Any:
    if value:
        STATE.grant_tokens = (*STATE.grant_tokens, *value)
    return value


class KeyCommand(KmsCommand):
    """A command that uses a key: it also takes ``--grant-token`` (repeatable), as in AWS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(TyperOption(
            param_decls=["--grant-token"], metavar="TOKEN", multiple=True, expose_value=False,
            callback=_store_tokens, show_default=False,
            help="A grant token from 'kmscli grants create' (repeatable); checked against the key."))


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


def command(app: typer.Typer, name: str, help_text: str, *, keyed: bool = False) -> Any:
    return app.command(name, cls=KeyCommand if keyed else KmsCommand, help=help_text)


def vault_path() -> Path:
    from ..vault.store import resolve_vault_path

    return resolve_vault_path(STATE.vault)


def audit_path() -> Path | None:
    """The audit log the caller named, if any: it places a new vault's log at init and must match it later."""
    value = STATE.audit_log or os.environ.get("KMSCLI_AUDIT_LOG")
    return Path(value).expanduser() if value else None


def key_source(label: str = "vault passphrase") -> Any:
    """The vault key's source: a session if one is set (never falling back), else a passphrase.

    ``label`` names the passphrase at the terminal prompt (passwd asks for the current one).
    """
    if SESSION is not None:
        return SESSION.key_source(vault_path())
    if os.environ.get("KMSCLI_SESSION"):
        # The kmscli entry point hands every call with a session to its agent;
        # reaching here means the CLI was entered some other way. A session
        # that cannot be used is an error, never a reason to ask for a passphrase.
        raise errors.InvalidSessionException(
            "KMSCLI_SESSION is set, but this process is not running through the kmscli command that hands "
            "sessions to their agent; run kmscli itself, or unset KMSCLI_SESSION to use a passphrase"
        )
    from . import passphrase

    return passphrase.key_source(STATE.passphrase_file, label=label)


def endpoint() -> str | None:
    """The remote KMS this call uses (``--endpoint``, else ``KMSCLI_ENDPOINT``), checked; None for the vault."""
    if not os.environ.get("KMSCLI_ENDPOINT") and STATE.endpoint is None:
        return None  # the local CLI never imports the remote package
    from ..remote.client import endpoint_from

    return endpoint_from(STATE.endpoint)


def service(keys: Any = None) -> Any:
    """The KMS the commands talk to, chosen once: a remote one with an endpoint, else the vault's service.

    Both take AWS request members and return AWS response shapes (kmscli/remote/client.py). ``keys`` (a vault
    key source) asks for the vault's service explicitly: the commands that change the vault itself.
    """
    url = endpoint() if keys is None else None
    if url is not None:
        from ..remote.client import RemoteKms

        remote = RemoteKms(url, region=STATE.region or os.environ.get("KMSCLI_REGION") or None)
        remote.grant_tokens = STATE.grant_tokens
        return remote
    return vault_service(keys)


def plug_root_kms() -> None:
    """Give the vault its way to a KMS, for a vault whose root key a KMS holds (docs/root-key.md)."""
    from .. import vault

    vault.kms_connect = _root_kms


def _root_kms(region: str) -> Any:
    """AWS KMS of ``region`` as botocore finds it (``AWS_ENDPOINT_URL_KMS`` points it elsewhere)."""
    from ..remote.client import AWS, RemoteKms

    return RemoteKms(AWS, region=region)


def vault_service(keys: Any = None) -> Any:
    """The vault's own service, whatever the endpoint: the vault side of a cross-KMS reencrypt."""
    from ..service import Kms

    # In a session's worker the caller is the client as the kernel saw it (SO_PEERCRED), not this process.
    caller = SESSION.caller if SESSION is not None else None
    kms = Kms(vault_path(), keys if keys is not None else key_source(), caller=caller, audit_path=audit_path(),
              audit_max_bytes=audit_max_bytes(), region=region())
    kms.grant_tokens = STATE.grant_tokens
    return kms


def region() -> str:
    """``--region`` or ``KMSCLI_REGION``, else ``local``; AWS_REGION is not read (it is the AWS tools')."""
    from ..ids import DEFAULT_REGION

    return STATE.region or os.environ.get("KMSCLI_REGION") or DEFAULT_REGION


def audit_max_bytes() -> int | None:
    """``KMSCLI_AUDIT_MAX_SIZE``: how large the live audit file grows before the log continues in a new one."""
    text = os.environ.get("KMSCLI_AUDIT_MAX_SIZE")
    if not text:
        return None
    from ..ids import parse_size

    return parse_size(text, "KMSCLI_AUDIT_MAX_SIZE")


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


def pages(fetch: Any, member: str) -> Iterator[list[Any]]:
    """The pages of a paged List* answer one by one (``fetch(marker)`` returns one): bounded memory."""
    marker = None
    while True:
        page = fetch(marker)
        yield page[member]
        marker = page.get("NextMarker")
        if marker is None:
            return


def all_pages(fetch: Any, member: str) -> list[Any]:
    """Every item of a paged List* answer, as the AWS CLI pages: ``fetch(marker)`` returns one page."""
    items: list[Any] = []
    marker = None
    while True:
        page = fetch(marker)
        items += page[member]
        marker = page.get("NextMarker")
        if marker is None:
            return items
