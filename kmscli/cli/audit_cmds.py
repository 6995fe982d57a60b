"""``kmscli audit show|verify|head|restart``: read, check and restart the audit log."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Annotated, Any

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
    _table(records)


#: ``eventTime`` as the log writes it, ISO 8601 UTC to the second: never cut or wrapped.
_TIME_WIDTH = len("2026-12-01T10:00:00Z")
#: The part of an error message the table shows: what happened (before "; what to do"), this long at most.
_MESSAGE_CHARS = 80


def _table(records: Iterable[dict[str, Any]]) -> None:
    """The records as a table that reads on an 80-column terminal (``--json`` and pipes get every field).

    The time is never cut; a failed call shows its errorCode and what
    happened; ids and names give way (cut with an ellipsis) before the
    result does, and the User column appears only when the records name
    more than one user (the title names the one).
    """
    rows = []
    for r in records:
        req = r.get("requestParameters") or {}
        resp = r.get("responseElements") or {}
        rows.append([str(v) for v in (
            r.get("eventTime", ""), r.get("eventName", ""), (r.get("userIdentity") or {}).get("userName", ""),
            resp.get("keyId") or req.get("keyId") or req.get("aliasName") or "", _result(r))])
    users = {row[2] for row in rows}
    title = "Audit log"
    if len(users) == 1:
        title += f" of {next(iter(users))}" if next(iter(users)) else ""
        rows = [[t, op, key, res] for t, op, _user, key, res in rows]
        names = ["Time", "Operation", "Key", "Result"]
    else:
        names = ["Time", "Operation", "User", "Key", "Result"]
    widths = _widths(output.terminal_width(), names, rows)
    columns = [output.Column(name, width=widths.get(name) if widths else None, no_wrap=name != "Result")
               for name in names]
    columns[0] = output.Column("Time", width=_TIME_WIDTH, no_wrap=True)
    output.table(output.printable(title, backslash=False), columns, rows, compact=True)


def _result(record: dict[str, Any]) -> str:
    code = record.get("errorCode")
    if not code:
        return "ok"
    message = str(record.get("errorMessage") or "").split("; ", 1)[0]
    if len(message) > _MESSAGE_CHARS:
        message = message[: _MESSAGE_CHARS - 1] + "\u2026"
    return f"{code}: {message}" if message else str(code)


def _widths(total: int, names: list[str], rows: list[list[str]]) -> dict[str, int] | None:
    """Each column's width on a ``total``-column terminal; None below about 50 columns (Rich decides then).

    Every column starts at its least useful width (an id's first 8 characters
    and an ellipsis; a result as wide as its error code), then grows in this
    order: the operation, the result up to a few words, the key, the user, and
    the result takes what is left. A terminal too narrow for that (under 76
    columns with four columns) gets smaller least widths, the result growing first.
    """
    from rich.cells import cell_len

    natural = {n: max([cell_len(n)] + [cell_len(output.printable(row[i])) for row in rows])
               for i, n in enumerate(names)}
    codes = [cell_len(row[-1].split(": ", 1)[0]) + 1 for row in rows]
    room = total - output.COMPACT_GAP * (len(names) - 1) - _TIME_WIDTH
    growth = [("Operation", 24), ("Result", 32), ("Key", natural["Key"]), ("User", 16), ("Result", natural["Result"])]
    for least in ({"Operation": 11, "User": 4, "Key": 9, "Result": min(max([20, *codes]), 30)},
                  {"Operation": 8, "User": 3, "Key": 3, "Result": 10}):
        width = {n: min(natural[n], least[n]) for n in names[1:]}
        left = room - sum(width.values())
        if left >= 0:
            break
        growth = [("Result", 32), *growth]  # narrower still: the result first
    else:
        return None
    for name, target in growth:
        if name in width:
            grow = max(0, min(left, min(target, natural[name]) - width[name]))
            width[name] += grow
            left -= grow
    return width


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
