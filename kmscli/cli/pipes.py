"""What every output path does once the reader of stdout has gone: a leaf module, imported by all of them."""

from __future__ import annotations

import os
import sys

#: The exit status once the reader of stdout has gone (``kmscli ... | head``):
#: what a shell reports for a process that SIGPIPE ended (128 + 13), as ``cat``
#: ends there; with no message. Every path ends so: here, and output.broken_pipe.
EXIT_BROKEN_PIPE = 141


def silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
