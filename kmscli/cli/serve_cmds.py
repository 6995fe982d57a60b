"""``kmscli serve``: the vault as an AWS KMS endpoint for SDKs and tools (AWS JSON 1.1, SigV4)."""

from __future__ import annotations

import os
import signal
from typing import Annotated, Any

import typer

from .. import errors
from . import common, output


def register(app: typer.Typer) -> None:
    common.command(app, "serve", "Serve the vault over AWS KMS's wire protocol: point AWS_ENDPOINT_URL_KMS at it "
                                 "and sign with a key from 'kmscli credentials create'.")(serve)


def serve(
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS",
                    help="Address to listen on (default 127.0.0.1; any other than loopback needs TLS).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="N", help="Port (0: any free one; default 8080).")] = 8080,
    tls_cert: Annotated[str | None, typer.Option("--tls-cert", metavar="FILE", help="TLS certificate (PEM).")
                        ] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", metavar="FILE", help="TLS private key (PEM).")
                       ] = None,
    ephemeral: Annotated[bool, typer.Option("--ephemeral",
                         help="For test suites: no vault, state in memory, any SigV4 credentials accepted.")
                         ] = False,
    account: Annotated[str | None, typer.Option("--account", metavar="12-DIGITS",
                       help="With --ephemeral: the account in ARNs (default 123456789012).")] = None,
    seed: Annotated[str | None, typer.Option("--seed", metavar="FILE",
                    help="With --ephemeral: keys, aliases, tags and policies to preload (YAML or JSON).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", metavar="N",
                       help="Processes serving the vault (default: one per CPU, at most 4; "
                            "1 with --ephemeral or through a session).")] = None,
) -> None:
    from ..ids import validate_account
    from ..server import run

    if (tls_cert is None) != (tls_key is None):
        raise errors.ValidationException("give --tls-cert and --tls-key together")
    if not run.is_loopback(host) and tls_cert is None:
        raise errors.ValidationException(
            f"--host {host} is not a loopback address: serving the vault beyond this machine needs TLS "
            "(--tls-cert FILE --tls-key FILE)"
        )
    if not 0 <= port <= 65535:
        raise errors.ValidationException(f"--port must be 0..65535 (got {port})")
    if not ephemeral and (account is not None or seed is not None):
        raise errors.ValidationException("--account and --seed go with --ephemeral (a vault has its own account)")
    if account is not None:
        validate_account(account)
    for path in (tls_cert, tls_key):
        if path is not None and not os.access(path, os.R_OK):
            raise errors.UsageError(f"cannot read {path}")
    through_session = common.SESSION is not None and not ephemeral
    workers = _workers(workers, ephemeral, through_session)
    backend = _backend(ephemeral, account, seed)
    sock = run.bind(host, port, share=workers > 1)
    from ..server.app import KmsApp

    url = run.url_of(sock, tls_cert is not None)
    parent = os.getpid()
    try:
        alive = common.SESSION.alive if through_session else (lambda: True)
        outcome = run.serve(lambda: KmsApp(backend), sock, workers=workers, tls_cert=tls_cert, tls_key=tls_key,
                            on_ready=lambda: output.message(f"serving on {url}"), alive=alive)
    finally:
        if os.getpid() == parent:
            backend.close()
    if outcome.worker_failed is not None:
        raise errors.KMSInternalException(
            f"a serving process ended unexpectedly (exit status {outcome.worker_failed}), so the server stopped; "
            "the others answered and recorded their requests in flight; see the lines above"
        )
    output.message("stopped: every request in flight was answered and recorded")
    if outcome.unlock_lost:
        raise typer.Exit(errors.EXIT_UNLOCK)  # the vault can no longer be unlocked with what it held
    if outcome.signal == signal.SIGINT:
        raise typer.Exit(130)  # as any command ends on Ctrl-C


#: The most processes `serve` starts by default: past that the audit log's lock, not the CPUs, sets the pace.
DEFAULT_WORKERS_MAX = 4


def _workers(given: int | None, ephemeral: bool, through_session: bool) -> int:
    """How many processes serve: one per CPU by default (at most 4); one where the state lives in one."""
    single = "--ephemeral keeps its state in one process" if ephemeral else (
        "a server running through a session lives in the session's process" if through_session else None)
    if given is None:
        return 1 if single else max(1, min(os.cpu_count() or 1, DEFAULT_WORKERS_MAX))
    if not 1 <= given <= 64:
        raise errors.ValidationException(f"--workers must be 1..64 (got {given})")
    if given > 1 and single:
        raise errors.ValidationException(f"--workers {given}: {single}; serve with --workers 1")
    return given


def _backend(ephemeral: bool, account: str | None, seed: str | None) -> Any:
    from ..server import app

    if ephemeral:
        seeder = None
        if seed is not None:
            from ..server.seed import load_seed

            seeder = load_seed(seed)
        return app.EphemeralBackend(account or app.EphemeralBackend.DEFAULT_ACCOUNT, seeder)
    svc = common.service()
    # Unlock now: a wrong passphrase is exit 5 before anything listens.
    while True:
        try:
            svc.store.open(svc.keys).close()
            break
        except errors.IncorrectPassphraseException:
            if not svc.keys.another_try():  # three tries at the terminal, as every prompt gives
                raise
    alive = common.SESSION.alive if common.SESSION is not None else None
    return app.VaultBackend(svc.store.path, svc.keys, audit_path=common.audit_path(), alive=alive)
