"""Text from outside kmscli reaches a terminal escaped, and a pipe as one intact tab-separated record.

Descriptions, alias names and KEY arguments (which the audit log quotes) are
chosen by whoever can call kmscli; on a terminal they must show as text, never
act as Rich markup (``[/x]`` used to crash every table with exit 1) or as
escape sequences (ESC, C1 controls, bidirectional overrides), and in a pipe a
tab or newline must not split the record (output.py, rule 6).
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kmscli.cli import output
from tests.conftest import HANG_GUARD_S, Runner, fails, kmscli_command, ok

#: A description with everything a terminal or a TSV reader could trip on.
HOSTILE = "a[/x]b[bold]c\x1b[31mRED\x1b[2J\x07\x08\x9b31m\u202eevil\u2028\tT\nN\rR\\z"
#: What must never reach a terminal raw (Rich itself writes only bold and italic: ESC [ 1 m, ESC [ 3 m, ESC [ 0 m).
RAW = [b"\x1b[31m", b"\x1b[2J", b"\x07", b"\x08", "\x9b".encode(), "\u202e".encode(), "\u2028".encode()]


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


class _Stdout(io.TextIOWrapper):
    """stdout as a program sees it, over a byte buffer that stays readable after the wrapper is gone."""

    def __init__(self, raw: io.BytesIO) -> None:
        super().__init__(raw, encoding="utf-8", write_through=True)
        self.raw_bytes = raw

    def close(self) -> None:  # keep the buffer for the test to read
        self.flush()


def redirect_stdout(monkeypatch: pytest.MonkeyPatch, *, terminal: bool) -> io.BytesIO:
    """Point sys.stdout at a buffer (a terminal if asked) for the rest of the test; return the buffer."""
    raw = _Terminal() if terminal else io.BytesIO()
    monkeypatch.setattr("sys.stdout", _Stdout(raw))
    monkeypatch.setenv("COLUMNS", "300")
    return raw


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Callable[[], io.BytesIO]:
    """Call it in the test (pytest swaps sys.stdout back between setup and call) to get a terminal's bytes."""
    return lambda: redirect_stdout(monkeypatch, terminal=True)


def assert_escaped(data: bytes) -> None:
    for raw in RAW:
        assert raw not in data, (raw, data)
    for text in (b"a[/x]b[bold]c", b"\\x1b[31mRED", b"\\x1b[2J", b"\\x07", b"\\x9b31m", b"\\u202eevil", b"\\t",
                 b"\\n", b"\\r"):
        assert text in data, (text, data)


def test_table_cells_are_text_never_markup_or_escape_sequences(terminal: Callable[[], io.BytesIO]) -> None:
    screen = terminal()
    output.table("Keys", ["KeyId", "Description"], [("k1", HOSTILE), ("[/y]", None)])
    assert_escaped(screen.getvalue())
    assert b"[/y]" in screen.getvalue() and b"\r" not in screen.getvalue()


def test_fields_are_escaped_too(terminal: Callable[[], io.BytesIO]) -> None:
    screen = terminal()
    output.fields([("Description", HOSTILE), ("Tags", "k=[/x]")])
    assert_escaped(screen.getvalue())
    assert b"k=[/x]" in screen.getvalue() and b"\r" not in screen.getvalue()


def test_messages_and_error_lines_carry_no_raw_control_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    output.message(f"key {HOSTILE} will be destroyed")
    line = output.error_line("NotFoundException", f"Invalid keyId '{HOSTILE}'")
    for text in (err.getvalue().rstrip("\n"), line):
        assert "\n" not in text and "\r" not in text
        assert not any(c in text for c in "\x1b\x07\x08\x9b\u202e\u2028"), repr(text)
        assert "\\x1b[31mRED" in text and "[/x]" in text
    assert err.getvalue().count("\n") == 1


def test_json_on_a_terminal_escapes_what_json_dumps_leaves_raw(terminal: Callable[[], io.BytesIO]) -> None:
    screen = terminal()
    doc = {"Description": HOSTILE}
    output.emit_json(doc)
    data = screen.getvalue()
    for raw in [*RAW, b"\r"]:
        assert raw not in data
    assert json.loads(data) == doc  # the same JSON value


def test_tsv_fields_escape_tabs_newlines_and_backslashes(monkeypatch: pytest.MonkeyPatch) -> None:
    out = redirect_stdout(monkeypatch, terminal=False)
    output.table(None, ["A", "B", "C"], [("1", "x\ty\nz\\w", "\x1b"), ("2", None, "ok")])
    output.fields([("Description", "p\tq\nr")])
    assert out.getvalue() == b"1\tx\\ty\\nz\\\\w\t\\x1b\n2\t\tok\nDescription\tp\\tq\\nr\n"


# -- through the real binary ---------------------------------------------------------------
def on_terminal(args: list[str], env: dict[str, str], guard_s: float = HANG_GUARD_S,
                columns: int = 300) -> tuple[int, bytes, bytes]:
    """Run kmscli with stdout on a ``columns``-wide pseudo-terminal; return the exit code, the screen and stderr.

    The screen is read until the terminal reports that nothing holds it any
    more (EIO), which comes only after its last bytes: no clock decides when
    the output is complete. ``guard_s`` is a hang guard: a child still running
    then is killed and the test fails, showing the screen.
    """
    master, slave = pty.openpty()
    proc = subprocess.Popen([*kmscli_command(), *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env={**env, "COLUMNS": str(columns)})
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + guard_s
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"kmscli {' '.join(args)} still running after {guard_s:.0f} s; screen: {bytes(screen)!r}"
            if select.select([master], [], [], min(left, 1.0))[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal, all output read
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break  # kmscli is gone, yet something it left behind holds the terminal, quietly
    except BaseException:
        proc.kill()  # hung, or the test is torn down: never leave the child behind
        proc.communicate()
        raise
    finally:
        os.close(master)
    _, err = proc.communicate(timeout=guard_s)
    return proc.returncode, bytes(screen), err


@pytest.fixture
def hostile_key(kms: Runner, vault: Path) -> str:
    return ok(kms("keys", "create", "--description", HOSTILE, "--alias", "alias/app")).stdout.decode().strip()


def test_keys_list_and_describe_on_a_terminal(kms: Runner, env: dict[str, str], hostile_key: str) -> None:
    for args in (["keys", "list"], ["keys", "describe", hostile_key]):
        code, screen, err = on_terminal(args, env)
        assert code == 0 and err == b"", (args, code, err)
        assert hostile_key[:8].encode() in screen
        assert_escaped(screen.replace(b"\r\n", b"\n"))


def test_describe_json_on_a_terminal(kms: Runner, env: dict[str, str], hostile_key: str) -> None:
    code, screen, err = on_terminal(["keys", "describe", hostile_key, "--json"], env)
    assert code == 0, err
    for raw in RAW:
        assert raw not in screen
    assert json.loads(screen.replace(b"\r\n", b"\n"))["KeyMetadata"]["Description"] == HOSTILE


def test_audit_show_on_a_terminal_quotes_hostile_key_arguments(kms: Runner, env: dict[str, str],
                                                               vault: Path) -> None:
    # The audit log records KEY as given, even when it names nothing.
    fails(kms("keys", "describe", "alias/[/x]\x1b[31mRED"), 3, "NotFoundException")
    code, screen, err = on_terminal(["audit", "show"], env)
    assert code == 0 and err == b"", (code, err)
    assert b"alias/[/x]\\x1b[31mRED" in screen and b"\x1b[31m" not in screen


def test_error_line_of_a_hostile_argument_is_escaped(kms: Runner, vault: Path) -> None:
    line = fails(kms("keys", "describe", "\x1b[2J\x1b]0;owned\x07\u202e"), 3, "NotFoundException")
    assert not any(c in line for c in "\x1b\x07\u202e"), repr(line)
    assert "\\x1b[2J" in line


def test_keys_list_in_a_pipe_keeps_one_record_per_line(kms: Runner, hostile_key: str) -> None:
    other = ok(kms("keys", "create", "--description", "plain")).stdout.decode().strip()
    lines = ok(kms("keys", "list")).stdout.decode().split("\n")
    assert lines[-1] == ""
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[:-1]}
    assert set(rows) == {hostile_key, other}
    assert all(len(fields) == 5 for fields in rows.values()), rows
    assert rows[hostile_key][2] == "alias/app"
    assert rows[hostile_key][4] == ("a[/x]b[bold]c\\x1b[31mRED\\x1b[2J\\x07\\x08\\x9b31m\\u202eevil\\u2028"
                                   "\\tT\\nN\\rR\\\\z")
    assert rows[other][4] == "plain"
