"""Run the real CLI (``kmscli.cli.app.run``) inside the test process.

A subprocess costs an interpreter start-up (~150 ms); fault injection and
hostile-input tests need hundreds of calls with ``os`` functions patched, so
they call the entry point in process, with stdin, stdout and stderr replaced
by byte buffers that behave as a real process's streams would: stdout strict
UTF-8 (as under a UTF-8 locale such as en_US.UTF-8), stderr backslash-escaping
what it cannot encode (as Python always sets it up).
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


class _Buffer(io.BytesIO):
    def close(self) -> None:  # the CLI may close stdout's buffer; keep what it wrote
        pass


_COMMANDS: dict[int, tuple[object, object]] = {}


def _cached_get_command(real):
    """Typer rebuilds the whole command tree from signatures on every call (most of a call's
    time in process); the tree does not change, so build it once per app."""

    def get_command(app):
        cached = _COMMANDS.get(id(app))
        if cached is None or cached[0] is not app:
            cached = _COMMANDS[id(app)] = (app, real(app))
        return cached[1]

    get_command.cached = True  # type: ignore[attr-defined]
    return get_command


def run_cli(args: list[str], env: dict[str, str], stdin: bytes = b"") -> Result:
    """Run ``kmscli ARGS`` in process with exactly ``env``'s KMSCLI_* variables."""
    import typer.main

    from kmscli.cli.app import run

    if not getattr(typer.main.get_command, "cached", False):
        typer.main.get_command = _cached_get_command(typer.main.get_command)

    saved_env = {k: v for k, v in os.environ.items() if k.startswith("KMSCLI_")}
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    out, err = _Buffer(), _Buffer()
    for k in saved_env:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("KMSCLI_")})
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    try:
        rc = run(args)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        for k in [k for k in os.environ if k.startswith("KMSCLI_")]:
            del os.environ[k]
        os.environ.update(saved_env)
    return Result(rc, out.getvalue(), err.getvalue())


def one_error_line(r: Result, code: int) -> str:
    """Assert exit ``code`` with exactly one ``kmscli: Name: message`` line on stderr; return it."""
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.returncode == code, (r.returncode, r.err)
    assert len(lines) == 1 and lines[0].startswith("kmscli: ") and "Traceback" not in r.err, r.err
    return lines[0]
