"""How kmscli speaks. Every command follows these rules:

1. stdout carries data only: key ids, plaintext, ciphertext, JSON, tables.
   Scripts can pipe it anywhere without filtering.
2. stderr carries everything meant for a person, each line prefixed ``kmscli:``.
   An error is exactly one line, ``kmscli: <ExceptionName>: <what happened and
   what to do>``; a hint, when there is one, is part of that line.
3. ``--json`` prints AWS KMS response shapes, indented, so AWS habits and jq
   filters carry over. Without it, a terminal gets a Rich table and a pipe gets
   tab-separated lines without a header, one record per line.
4. No colour when ``NO_COLOR`` is set or the stream is not a terminal; progress
   bars only on a terminal.
5. Nothing secret is ever printed to stderr: not passphrases, not key material,
   not plaintext.
6. Text that kmscli did not write itself (descriptions, tags, alias names,
   paths, audit records) never reaches a terminal as Rich markup or as control
   characters, which could redraw the screen, hide text or send the terminal
   escape sequences: every table cell, message and error line is escaped here,
   the one writer (``[/x]`` shows as itself, ESC as ``\\x1b``; JSON on a
   terminal as ``\\u001b``). In a pipe, every tab-separated field has
   backslash, tab, newline, CR and the other control characters written as
   ``\\\\``, ``\\t``, ``\\n``, ``\\r`` and ``\\xHH``, so one record stays one
   line with one field per column, and the escaping can be undone (as in
   PostgreSQL's COPY text format).
7. A reader that goes away (``kmscli keys list | head -1``) ends the command
   quietly with exit 141, as SIGPIPE ends ``cat``: see :func:`broken_pipe`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from typer import Exit

from .. import errors
from .pipes import EXIT_BROKEN_PIPE, silence_stdout

#: Never written raw into a table cell, a tab-separated field, a message, or
#: JSON on a terminal: C0 and C1 controls and DEL (ESC starts escape sequences;
#: U+009B is a one-character CSI to some terminals), the bidirectional marks,
#: overrides and isolates (they reorder what follows on the screen: "Trojan
#: Source"), and the line and paragraph separators (line breaks to some viewers).
_CONTROLS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL_RE = re.compile(f"[{_CONTROLS}]")
_CONTROL_OR_BACKSLASH_RE = re.compile(f"[{_CONTROLS}\\\\]")
#: JSON text keeps its layout (newlines, indentation); json.dumps has escaped
#: C0 controls inside strings already, but not DEL, C1 or the others above.
_JSON_CONTROL_RE = re.compile(f"(?![\\t\\n])[{_CONTROLS}]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


class OutputClosed(Exit):
    """The reader of our output went away; the command ends quietly with exit 141.

    Raised instead of the ``BrokenPipeError``: Typer's main turns an EPIPE
    OSError into exit 1 before ``app.run`` could see it, while an ``Exit`` is
    returned as its code (by ``app.run`` too, and by the session agent's worker).
    The name is what the audit log records when a call stops after its output began.
    """


def broken_pipe(stdout: bool = True) -> OutputClosed:
    """The exception for a closed pipe; stdout goes to /dev/null first, so the final flush stays quiet too."""
    if stdout:
        silence_stdout()
    return OutputClosed(EXIT_BROKEN_PIPE)


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: str, *, backslash: bool = True) -> str:
    """``text`` with every control character shown as an escape (``\\t``, ``\\n``, ``\\x1b``, ``\\u202e``).

    With ``backslash`` a backslash is doubled, so the escaping can be undone
    (tables, tab-separated fields); messages leave it alone, as prose quoting
    a path or an already escaped value reads better without.
    """
    return (_CONTROL_OR_BACKSLASH_RE if backslash else _CONTROL_RE).sub(_escape_char, text)


def _json_safe(text: str) -> str:
    """JSON text with the characters a terminal would act on written as ``\\uXXXX``: the same JSON value."""
    return _JSON_CONTROL_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def message(text: str) -> None:
    """A line for the person at the terminal, on stderr."""
    sys.stderr.write(f"kmscli: {printable(text, backslash=False)}\n")
    sys.stderr.flush()


def error_line(name: str, text: str) -> str:
    """``kmscli: Name: message`` on one line, with no control character left raw."""
    return f"kmscli: {printable(name, backslash=False)}: {printable(' '.join(text.split()), backslash=False)}"


def write_stdout(text: str) -> None:
    """Write data to stdout; a full disk or an I/O error is the documented exit 2, not a crash.

    On a terminal, the characters a terminal would act on are written as
    ``\\uXXXX`` (what is written here is JSON or kmscli's own text, for which
    that is the same value); a pipe gets the text unchanged. A broken pipe
    ends the command quietly (:func:`broken_pipe`).
    """
    _write(_json_safe(text) if is_tty(sys.stdout) else text)


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise broken_pipe() from None
    except OSError as e:
        raise errors.UsageError(f"cannot write to standard output: {stdout_reason(e)}") from None


def stdout_reason(e: OSError) -> str:
    import errno

    return "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)


def emit_json(obj: Any) -> None:
    # ensure_ascii=False keeps non-ASCII text readable; _json_safe still escapes
    # DEL, C1 and the other invisible controls, in a pipe as well: a jq or a
    # pager downstream may show them on a terminal.
    write_stdout(_json_safe(json.dumps(obj, indent=2, ensure_ascii=False)) + "\n")


def json_line(obj: Any) -> str:
    """One compact JSON line (JSON Lines), with the invisible controls escaped as in :func:`emit_json`."""
    return _json_safe(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def emit_aws(operation: str, doc: Any) -> None:
    """An AWS operation's response as ``--json`` prints it: the model's members, timestamps as the AWS CLI v2."""
    from .. import shapes

    emit_json(shapes.to_cli(operation, doc))


def emit_aws_pages(operation: str, member: str, pages: Iterable[list[Any]]) -> None:
    """A List* response of every page, ``{member: [...], "Truncated": false}``, streamed a page at a time.

    Byte for byte what :func:`emit_aws` prints for the whole list, in memory
    bounded by one page. The first page is fetched before anything is written,
    so a call that fails at once writes nothing to stdout.
    """
    from .. import shapes

    it = iter(pages)
    first_page = next(it, [])
    write_stdout("{\n  " + json.dumps(member) + ": [")
    empty = True
    for items in itertools.chain([first_page], it):
        chunk = []
        for item in shapes.to_cli(operation, {member: items, "Truncated": False})[member]:
            text = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n    ")
            chunk.append(("\n    " if empty else ",\n    ") + text)
            empty = False
        if chunk:
            write_stdout(_json_safe("".join(chunk)))
    write_stdout(("]" if empty else "\n  ]") + ',\n  "Truncated": false\n}\n')


def when(t: Any) -> str:
    """A timestamp for a table cell: ISO 8601 UTC to the second."""
    from ..model import iso

    return "" if t is None else iso(t)


def emit_line(text: str) -> None:
    write_stdout(text + "\n")


def _cell(value: Any) -> str:
    return "" if value is None else printable(str(value))


@dataclass(frozen=True)
class Column:
    """How a table column fits a terminal: a fixed ``width``, and whether it may wrap.

    ``no_wrap``: always one line, cut with an ellipsis when too long (an id,
    a name); otherwise wrapped at spaces, a long word folded. A plain string
    as a column is a wrapping column sized by Rich.
    """

    name: str
    width: int | None = None
    no_wrap: bool = False


#: Between two columns of a :func:`table` with ``compact``: one space of padding and the rule's blank.
COMPACT_GAP = 2


def terminal_width() -> int:
    """The width tables are drawn for: ``COLUMNS``, else the terminal's, else 80 (as Rich decides)."""
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True).width


def table(title: str | None, columns: Sequence[str | Column], rows: Sequence[Sequence[Any]], *,
          compact: bool = False) -> None:
    """A Rich table on a terminal; tab-separated lines (no header) in a pipe, fields escaped (rule 6).

    ``compact``: no frame, a rule under the header and ``COMPACT_GAP`` columns
    between cells, for tables that must fit 80 columns (the audit log).
    """
    if not is_tty(sys.stdout):
        write_stdout("".join("\t".join(_cell(v) for v in row) + "\n" for row in rows))
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # Text cells are never parsed as markup (a "[/x]" in a description once
    # crashed the table) nor given emoji or highlighting.
    style: dict[str, Any] = (
        {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False, "collapse_padding": True} if compact else {}
    )
    t = Table(title=Text(title) if title is not None else None, show_lines=False, header_style="bold", **style)
    for c in columns:
        if isinstance(c, Column):
            t.add_column(Text(c.name), width=c.width, no_wrap=c.no_wrap,
                         overflow="ellipsis" if c.no_wrap else "fold")
        else:
            t.add_column(Text(c), overflow="fold")
    for row in rows:
        t.add_row(*[Text(_cell(v)) for v in row])
    _print_rich(t)


def table_pages(title: str | None, columns: Sequence[str | Column], pages: Iterable[Sequence[Sequence[Any]]]) -> None:
    """:func:`table` for rows that come a page at a time: each page printed as it comes.

    In a pipe the lines are the same as one table's; on a terminal each page
    is a table of its own (the title on the first), so memory stays bounded.
    """
    for n, rows in enumerate(pages):
        table(title if n == 0 else None, columns, rows)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """A two-column view of one object: aligned on a terminal, tab-separated otherwise; escaped as tables are."""
    if not is_tty(sys.stdout):
        write_stdout("".join(f"{_cell(k)}\t{_cell(v)}\n" for k, v in pairs))
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in pairs:
        t.add_row(Text(_cell(k)), Text(_cell(v)))
    _print_rich(t)


def _print_rich(renderable: Any) -> None:
    """Render for this terminal, then write through :func:`_write`.

    Rendering into a string keeps one writer for stdout: Rich's own writer
    answers a broken pipe with exit 1, and an I/O error with a traceback.
    """
    import io

    from rich.console import Console

    # Rich sizes the table as before: COLUMNS, else the terminal on a standard stream.
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, no_color=bool(os.environ.get("NO_COLOR"))).print(renderable)
    _write(buffer.getvalue())
