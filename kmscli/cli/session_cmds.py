"""``kmscli unlock`` and ``kmscli lock``: sessions that skip the KDF (docs/session.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import errors
from . import common, output, passphrase


def register(app: typer.Typer) -> None:
    common.command(app, "unlock", "Unlock the vault for a while: prints 'export KMSCLI_SESSION=...' for eval; "
                                  "later calls skip the passphrase and the KDF.")(unlock)
    common.command(app, "lock", "End the session in KMSCLI_SESSION, or without one every session of this "
                                "vault.")(lock)


def unlock(
    ttl: Annotated[str, typer.Option("--ttl", metavar="DURATION",
                   help="How long the session lasts: 90, 90s, 15m, 2h, 1h30m (default 15m, at most 24h).")] = "15m",
    idle: Annotated[str | None, typer.Option("--idle", metavar="DURATION",
                    help="End the session after this long without a call (default: only --ttl).")] = None,
    shell: Annotated[str, typer.Option("--shell", metavar="sh|bash|zsh|fish",
                     help="Print for a POSIX shell (sh, bash, zsh; default) or fish.")] = "sh",
) -> None:
    from ..agent import session
    from ..vault.store import PassphraseKeySource

    ttl_s = session.parse_duration(ttl, "--ttl")
    idle_s = session.parse_duration(idle, "--idle") if idle is not None else 0
    if shell not in session.SHELLS:
        raise errors.ValidationException(f"--shell must be one of {', '.join(session.SHELLS)} (got '{shell}')")
    # Always a passphrase, even with KMSCLI_SESSION set: a session cannot
    # extend itself past its TTL by minting a new one.
    try:
        svc = common.service(PassphraseKeySource(passphrase.current(common.STATE.passphrase_file)))
        token = session.open_session(svc, ttl_s, idle_s)
    except errors.KmsError:
        # `eval "$(kmscli unlock)"` would run nothing and succeed: give the eval
        # something that fails, so `set -e` stops and `&&` chains stop.
        import sys

        if not output.is_tty(sys.stdout):
            output.emit_line("false")
        raise
    output.emit_line(session.export_line(token, shell))
    idle_text = f", or after {session.human_duration(idle_s)} unused" if idle_s else ""
    output.message(f"unlocked {svc.store.path} for {session.human_duration(ttl_s)}{idle_text}; "
                   "'kmscli lock' ends it sooner")


def lock() -> None:
    from ..agent import session

    if common.SESSION is not None:
        common.SESSION.end()
        output.message("session locked")
        return
    path = common.vault_path()
    ended = session.end_vault_sessions(path)
    output.message(f"ended {ended} session{'' if ended == 1 else 's'} of {path}")
