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


#: The signal (SIGTERM, SIGHUP) that interrupted this process, once one has.
TERMINATED_BY: int | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the process is, as Ctrl-C raises KeyboardInterrupt.

    By default these signals end the process on the spot, leaving behind what
    only a clean exit removes: the temporary file of a ``-o`` output, holding
    the plaintext written so far. Raised as an interrupt, they unwind through
    the same cleanup as Ctrl-C; the process then ends by the signal itself.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP interrupt this process as Ctrl-C does (see Terminated)."""
    import signal

    def raise_terminated(signum: int, frame: object) -> None:
        global TERMINATED_BY
        TERMINATED_BY = signum  # the framework may swallow the exception (Typer returns 130): remember it
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:  # one ignored (nohup) stays ignored
            signal.signal(sig, raise_terminated)


def end_by(signum: int) -> None:
    """End the process by ``signum`` with its default action, as a shell expects of a terminated command."""
    import signal

    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
