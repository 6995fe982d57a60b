"""``kmscli audit show|verify|head|restart``: read, check and restart the audit log."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta
from typing import Annotated

import typer

from .. import errors
from . import common, output

app = common.new_app("Read the audit log and prove it has not been tampered with.")

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


def parse_since(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration ago: 90s, 15m, 2h, 7d, 1h30m."""
    m = _DURATION.fullmatch(text)  # the whole string: "2h\n" is not a duration
    if text and m and any(m.groups()):
        d, h, mi, s = (int(g or 0) for g in m.groups())
        try:
            return now - timedelta(days=d, hours=h, minutes=mi, seconds=s)
        except OverflowError:
            raise errors.ValidationException(
                f"--since goes back further than the calendar does (got '{text}')"
            ) from None
    try:
        from ..model import parse_iso

        return parse_iso(text)
    except ValueError:
        raise errors.ValidationException(
            f"--since takes an ISO 8601 time (2026-11-28T10:00:00Z) or a duration ago (15m, 2h, 7d); got '{text}'"
        ) from None


@app.command("show", cls=common.KmsCommand, help="Show audit records: a table on a terminal, JSON lines otherwise.")
def show(
    key: Annotated[str | None, typer.Option("--key", "-k", metavar="KEY", help="Only records about this key.")
                   ] = None,
    operation: Annotated[str | None, typer.Option("--operation", metavar="OP",
                         help="Only this operation (Encrypt, CreateKey, ...).")] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="TIME",
                     help="Only records at or after TIME (ISO 8601, or a duration ago such as 2h).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON lines even on a terminal.")] = False,
) -> None:
    from ..model import utcnow

    when = parse_since(since, utcnow()) if since else None
    records = common.service(keys=_NoKeys()).ReadAuditLog(KeyId=key, Operation=operation, Since=when)
    if json_ or not output.is_tty(sys.stdout):
        for r in records:
            # backslashreplace: a record may quote bytes that were never text (a KEY from argv).
            line = output.json_line(r)
            output.write_stdout(line.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")
        return
    rows = []
    for r in records:
        req = r.get("requestParameters") or {}
        resp = r.get("responseElements") or {}
        rows.append((r.get("eventTime", ""), r.get("eventName", ""), (r.get("userIdentity") or {}).get("userName", ""),
                     resp.get("keyId") or req.get("keyId") or req.get("aliasName") or "",
                     r.get("errorCode") or "ok"))
    output.table("Audit log", ["Time", "Operation", "User", "Key", "Result"], rows)


@app.command("verify", cls=common.KmsCommand, help="Check the log for edits, deletions, reordering and insertions.")
def verify(
    strict: Annotated[bool, typer.Option("--strict", help="Also fail on records written without the vault key "
                                                          "(failed unlocks, which anyone could have written).")
                      ] = False,
    head: Annotated[str | None, typer.Option("--head", metavar="SEQ:MAC",
                    help="Also prove the log still holds the record 'kmscli audit head' printed earlier.")] = None,
) -> None:
    result = common.service().VerifyAuditLog(Strict=strict, Witness=head)
    unkeyed = result["Unauthenticated"]
    if unkeyed:
        shown = ", ".join(unkeyed[:5]) + (f" and {len(unkeyed) - 5} more" if len(unkeyed) > 5 else "")
        tail = (f"; {len(unkeyed)} failed unlock(s) written without the vault key, unauthenticated "
                f"(anyone could have written them): {shown}")
    else:
        tail = "; every record written with the vault key"
    witness = f"; record {head.split(':')[0]} from 'audit head' is in it" if head else ""
    output.message(f"audit log intact: {result['Records']} records in {result['Files']} file(s){witness}{tail}")


@app.command("head", cls=common.KmsCommand,
             help="Print the chain head SEQ:MAC: keep it where only you can write, then check with verify --head.")
def head() -> None:
    result = common.service().GetAuditHead()
    output.write_stdout(result["Head"] + "\n")


@app.command("restart", cls=common.KmsCommand,
             help="After a log was lost or damaged: move its files aside and start a new log that says so "
                  "(needs the passphrase, never a session).")
def restart() -> None:
    result = common.service().RestartAuditLog()
    moved = result["RetiredFiles"]
    where = f"moved aside: {', '.join(moved)}" if moved else "there was no log to move aside"
    output.message(f"started a new audit log (epoch {result['Epoch']}); {where}; "
                   "its first record names the vault's last known head")


class _NoKeys:
    """Reading the log needs no passphrase; anything that tries to unlock is a bug."""

    def vault_key(self, header: object) -> bytes:  # pragma: no cover
        raise errors.KMSInternalException("reading the audit log does not unlock the vault")
