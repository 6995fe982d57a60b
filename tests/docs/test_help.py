"""Every command, option and argument of kmscli explains itself in --help (and so in the man page)."""

from __future__ import annotations

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
