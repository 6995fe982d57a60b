"""Every command, option and argument of kmscli explains itself in --help (and so in the man page)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from _walk(sub, (*path, name))


def missing_help() -> list[str]:
    import typer.main

    from kmscli.cli.app import app

    gaps = []
    for path, cmd in _walk(typer.main.get_command(app)):
        name = " ".join(("kmscli", *path))
        if not (cmd.help or "").strip():
            gaps.append(f"command '{name}'")
        ctx = cmd.context_class(cmd, info_name=path[-1] if path else "kmscli")
        for param in cmd.get_params(ctx):
            if not (getattr(param, "help", None) or "").strip():
                what = (
                    "option " + "/".join(param.opts)
                    if param.param_type_name == "option"
                    else (f"argument {param.metavar or param.name.upper()}")
                )
                gaps.append(f"{what} of '{name}'")
    return gaps


def test_every_command_option_and_argument_has_help() -> None:
    gaps = missing_help()
    assert not gaps, "no help text: " + "; ".join(gaps)


def test_the_walk_sees_the_whole_tree() -> None:
    import typer.main

    from kmscli.cli.app import app

    paths = {" ".join(p) for p, _ in _walk(typer.main.get_command(app))}
    assert {"", "keys", "keys create", "alias update", "policy put", "audit verify", "random"} <= paths


@functools.cache
def _helps() -> list[tuple[str, str, Any]]:
    """(command line, the text its --help prints, the command) for kmscli and every command under it."""
    import typer.main
    from typer.testing import CliRunner

    from kmscli.cli.app import app

    runner = CliRunner()
    helps = []
    for path, cmd in _walk(typer.main.get_command(app)):
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"}, terminal_width=100, prog_name="kmscli")
        assert r.exit_code == 0, (path, r.output)
        helps.append((" ".join(("kmscli", *path)), r.output, cmd))
    return helps


def test_help_says_each_thing_once() -> None:
    """Issue 15: usage lines showed `{KEY}`, and defaults were said twice ("(default 15m) [default: 15m]")."""
    problems = []
    for name, text, _cmd in _helps():
        usage = text.split("\n", 1)[0]
        if "{" in usage or "}" in usage:
            problems.append(f"{name}: braces in '{usage}'")
        if "[default:" in " ".join(text.split()):
            problems.append(f"{name}: Typer's [default: ...] marker (defaults are said in the option's help)")
    assert not problems, "\n".join(problems)
    usage = {name: text.split("\n", 1)[0] for name, text, _ in _helps()}
    assert usage["kmscli keys set-description"] == "Usage: kmscli keys set-description [OPTIONS] KEY TEXT"
    assert usage["kmscli keys tag"] == "Usage: kmscli keys tag [OPTIONS] KEY K=V..."
    assert usage["kmscli inspect"] == "Usage: kmscli inspect [OPTIONS] [FILE]"
    assert usage["kmscli policy put"] == "Usage: kmscli policy put [OPTIONS] KEY [FILE|-]"


def test_every_default_is_said_in_the_options_help() -> None:
    """With Typer's marker off, an option with a default must name it in its own words."""
    silent = []
    for name, _text, cmd in _helps():
        ctx = cmd.context_class(cmd, info_name=name)
        for p in cmd.get_params(ctx):
            if p.param_type_name != "option" or getattr(p, "is_flag", False) or p.default in (None, "", [], ()):
                continue
            if "default" not in (p.help or ""):
                silent.append(f"{'/'.join(p.opts)} of '{name}' (default {p.default!r})")
    assert not silent, "; ".join(silent)
