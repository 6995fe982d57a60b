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
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .. import errors


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def message(text: str) -> None:
    """A line for the person at the terminal, on stderr."""
    sys.stderr.write(f"kmscli: {text}\n")
    sys.stderr.flush()


def error_line(name: str, text: str) -> str:
    return f"kmscli: {name}: {' '.join(text.split())}"


def write_stdout(text: str) -> None:
    """Write data to stdout; a full disk or an I/O error is the documented exit 2, not a crash.

    A broken pipe is left to propagate: the CLI then exits quietly, as ``head`` expects.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise errors.UsageError(f"cannot write to standard output: {stdout_reason(e)}") from None


def stdout_reason(e: OSError) -> str:
    import errno

    return "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)


def emit_json(obj: Any) -> None:
    write_stdout(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def emit_line(text: str) -> None:
    write_stdout(text + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Rich table on a terminal; tab-separated lines (no header) in a pipe."""
    if not is_tty(sys.stdout):
        write_stdout("".join("\t".join("" if v is None else str(v) for v in row) + "\n" for row in rows))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    Console(no_color=bool(os.environ.get("NO_COLOR"))).print(t)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """A two-column view of one object: aligned on a terminal, tab-separated otherwise."""
    if not is_tty(sys.stdout):
        write_stdout("".join(f"{k}\t{'' if v is None else v}\n" for k, v in pairs))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in pairs:
        t.add_row(k, "" if v is None else str(v))
    Console(no_color=bool(os.environ.get("NO_COLOR"))).print(t)
