"""The root command and the one place where errors become exit codes."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.exceptions import Abort, Exit

from .. import __version__, errors
from . import common
from .output import error_line

app = common.new_app(
    "kmscli: AWS KMS on your own machine. Master keys live in a passphrase-locked vault "
    "and never leave it; every call is checked against key policies and audited."
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"kmscli {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    vault: Annotated[str | None, typer.Option("--vault", metavar="PATH",
                     help="Vault file [env: KMSCLI_VAULT; default: the user data folder's kmscli/vault.kms].")] = None,
    audit_log: Annotated[str | None, typer.Option("--audit-log", metavar="PATH",
                         help="Audit log: where init puts it, fixed for the vault's life after that "
                              "[env: KMSCLI_AUDIT_LOG; default: audit.jsonl beside the vault].")] = None,
    passphrase_file: Annotated[str | None, typer.Option("--passphrase-file", metavar="PATH",
                               help="Read the vault passphrase from the first line of PATH "
                                    "[env: KMSCLI_PASSPHRASE_FILE].")] = None,
    region: Annotated[str | None, typer.Option("--region", metavar="NAME",
                      help="Region the keys live in [env: KMSCLI_REGION; default: local].")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", metavar="URL", help=common.ENDPOINT_HELP)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show a traceback for unexpected errors.")] = False,
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    for name, value in (("vault", vault), ("audit_log", audit_log), ("passphrase_file", passphrase_file),
                        ("region", region), ("endpoint", endpoint)):
        if value is not None and getattr(common.STATE, name) is None:
            setattr(common.STATE, name, value)
    common.STATE.debug = common.STATE.debug or debug


def _register() -> None:
    from . import (
        alias_cmds,
        audit_cmds,
        credentials_cmds,
        crypto_cmds,
        edit_cmds,
        grants_cmds,
        import_cmds,
        key_cmds,
        policy_cmds,
        serve_cmds,
        session_cmds,
        sign_cmds,
        vault_cmds,
    )

    vault_cmds.register(app)
    session_cmds.register(app)
    import_cmds.register(key_cmds.app)  # keys import-params, import, delete-material
    app.add_typer(key_cmds.app, name="keys")
    app.add_typer(alias_cmds.app, name="alias")
    app.add_typer(policy_cmds.app, name="policy")
    app.add_typer(grants_cmds.app, name="grants")
    crypto_cmds.register(app)
    sign_cmds.register(app)
    edit_cmds.register(app)
    app.add_typer(audit_cmds.app, name="audit")
    app.add_typer(credentials_cmds.app, name="credentials")
    serve_cmds.register(app)


_register()
_COMMAND: Any = None


def click_command() -> Any:
    """The click command tree, built once: the session agent builds it before forking workers."""
    global _COMMAND
    if _COMMAND is None:
        _COMMAND = typer.main.get_command(app)
    return _COMMAND


def run(args: list[str]) -> int:
    """Run the CLI on ``args``; return the exit code. Never lets a traceback out unasked.

    After SIGTERM or SIGHUP (which interrupt it as Ctrl-C does, see
    pipes.Terminated) it ends by that signal once everything is cleaned up.
    """
    code = _run(args)
    from . import pipes

    if pipes.TERMINATED_BY is not None:
        sys.stderr.write("kmscli: terminated\n")
        sys.stderr.flush()
        pipes.end_by(pipes.TERMINATED_BY)
        return 128 + pipes.TERMINATED_BY
    return code


def _run(args: list[str]) -> int:
    common.STATE = common.Globals()
    common.plug_root_kms()
    try:
        rv = click_command().main(args=args, prog_name="kmscli", standalone_mode=False)
    except errors.KmsError as e:
        sys.stderr.write(error_line(e.name, e.message) + "\n")
        return e.exit_code
    except NoArgsIsHelpError as e:  # bare `kmscli` or `kmscli keys`: the usage, as a CLI prints it
        sys.stderr.write(e.format_message().rstrip("\n") + "\n")
        return errors.EXIT_USAGE
    except UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        sys.stderr.write(error_line("ValidationException", e.format_message() + hint) + "\n")
        return errors.EXIT_USAGE
    except Exit as e:
        return int(e.exit_code or 0)
    except (Abort, KeyboardInterrupt):
        sys.stderr.write("kmscli: interrupted\n")
        return 130
    except BrokenPipeError:
        from .pipes import EXIT_BROKEN_PIPE, silence_stdout

        silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:  # the last line of defence: one line, exit 1
        if common.STATE.debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(error_line("KMSInternalException",
                                    f"unexpected {type(e).__name__}: {e}; rerun with --debug for a traceback "
                                    "and report it") + "\n")
        return errors.EXIT_INTERNAL
    return rv if isinstance(rv, int) else 0


def typer_main(*_: Any) -> None:  # pragma: no cover - convenience for `python -m kmscli.cli.app`
    raise SystemExit(run(sys.argv[1:]))
