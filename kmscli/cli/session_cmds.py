"""``kmscli unlock`` and ``kmscli lock``: sessions that skip the KDF (docs/session.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .. import errors
from . import common, output, passphrase


def register(app: typer.Typer) -> None:
    common.command(app, "unlock", "Unlock the vault for a while: prints 'export KMSCLI_SESSION=...' for eval; "
                                  "later calls skip the passphrase and the KDF.")(unlock)
    common.command(app, "lock", "End the session in KMSCLI_SESSION, or without one every session of this "
                                "vault; prints 'unset KMSCLI_SESSION' for eval.")(lock)


_SHELL_HELP = "Print for a POSIX shell (sh, bash, zsh; default) or fish."


def unlock(
    ttl: Annotated[str, typer.Option("--ttl", metavar="DURATION",
                   help="How long the session lasts: 90, 90s, 15m, 2h, 1h30m (default 15m, at most 24h).")] = "15m",
    idle: Annotated[str | None, typer.Option("--idle", metavar="DURATION",
                    help="End the session after this long without a call (default: only --ttl).")] = None,
    shell: Annotated[str, typer.Option("--shell", metavar="sh|bash|zsh|fish", help=_SHELL_HELP)] = "sh",
) -> None:
    import sys

    from ..agent import session

    ttl_s = session.parse_duration(ttl, "--ttl")
    idle_s = session.parse_duration(idle, "--idle") if idle is not None else 0
    _check_shell(shell)
    if output.is_tty(sys.stdout):
        # The line is for the shell to run: on the screen it would start an
        # agent (holding the vault key) that nothing can use, and stay running.
        raise errors.UsageError(
            "unlock prints a line for your shell to run, not for the screen; nothing was unlocked: run "
            + ("'kmscli unlock --shell fish | source'" if shell == "fish" else "'eval \"$(kmscli unlock)\"'")
        )
    previous = os.environ.get("KMSCLI_SESSION")
    # Always a passphrase, even with KMSCLI_SESSION set: a session cannot
    # extend itself past its TTL by minting a new one.
    try:
        svc = common.service(passphrase.key_source(common.STATE.passphrase_file, warn_readable=True))
        token = session.open_session(svc, ttl_s, idle_s)
    except errors.KmsError:
        # `eval "$(kmscli unlock)"` would run nothing and succeed: give the eval
        # something that fails, so `set -e` stops and `&&` chains stop.
        output.emit_line("false")
        raise
    output.emit_line(session.export_line(token, shell))
    idle_text = f", or after {session.human_duration(idle_s)} unused" if idle_s else ""
    lock_hint = "kmscli lock --shell fish | source" if shell == "fish" else 'eval "$(kmscli lock)"'
    output.message(f"unlocked {svc.store.path} for {session.human_duration(ttl_s)}{idle_text}; "
                   f"{lock_hint} ends it sooner")
    if previous:
        _replace(previous, svc.store.path)


def _replace(previous: str, vault: Path) -> None:
    """The shell's session before this unlock: ended if it is of this vault, now that the new one is ready.

    Each session is an agent holding the vault key: three unlocks in one
    shell would leave three, two of them unreachable once eval replaced the
    variable. One of another vault is left alone (it lasts until its TTL).
    """
    from ..agent import session

    try:
        ended = session.end_session(previous, vault)
    except errors.KmsError:
        ended = None  # the folder is unusable: the new session works regardless
    if ended is True:
        output.message("ended the session KMSCLI_SESSION held before: the new one replaces it")
    elif ended is False:
        output.message("the session KMSCLI_SESSION held before is of another vault: it runs on until it expires "
                       "or 'kmscli lock' is run for that vault")


def _check_shell(shell: str) -> None:
    from ..agent import session

    if shell not in session.SHELLS:
        raise errors.ValidationException(f"--shell must be one of {', '.join(session.SHELLS)} (got '{shell}')")


def lock(
    shell: Annotated[str, typer.Option("--shell", metavar="sh|bash|zsh|fish", help=_SHELL_HELP)] = "sh",
) -> None:
    """End the session(s); print the line that unsets KMSCLI_SESSION, as ``ssh-agent -k`` does for its variables."""
    from ..agent import protocol, session

    _check_shell(shell)
    if common.SESSION is not None:
        common.SESSION.end()
        output.message("session locked")
    else:
        path = common.vault_path()
        ended = session.end_vault_sessions(path)
        output.message(f"ended {ended} session{'' if ended == 1 else 's'} of {path}")
    output.emit_line(protocol.unset_line(shell))
