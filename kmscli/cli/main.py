"""The ``kmscli`` entry point: answers what it can before importing the CLI framework.

Shell loops call kmscli thousands of times, so the cheapest answers
(``--version``) are given here, before Typer (~80 ms of imports) is loaded.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        from kmscli import __version__

        sys.stdout.write(f"kmscli {__version__}\n")
        return 0
    from kmscli.cli.app import run

    return run(args)
