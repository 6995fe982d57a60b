"""Where the passphrase comes from, first match wins (SPEC "Passphrase and unlocking").

1. ``KMSCLI_SESSION``: a session from ``kmscli unlock``; never falls back.
2. ``--passphrase-file PATH`` or ``KMSCLI_PASSPHRASE_FILE``: the file's first line.
3. ``KMSCLI_PASSPHRASE``: the passphrase itself.
4. A prompt on ``/dev/tty`` without echo, so stdin stays free for data.

With none of them and no terminal, fail at once (exit 5) naming the options.
A passphrase is never accepted as a command-line value and never printed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from .. import errors

SOURCES_HINT = (
    "give --passphrase-file PATH, set KMSCLI_PASSPHRASE_FILE or KMSCLI_PASSPHRASE, "
    "run 'eval \"$(kmscli unlock)\"' for a session, or run kmscli from a terminal"
)
MAX_PASSPHRASE_BYTES = 64 * 1024


def read_passphrase_file(path: str, what: str = "passphrase") -> bytes:
    """The first line of ``path``, without its line ending."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSPHRASE_BYTES + 1)
    except OSError as e:
        raise errors.UsageError(f"cannot read the {what} file {path}: {e.strerror}") from None
    if len(data) > MAX_PASSPHRASE_BYTES:
        raise errors.UsageError(f"the {what} file {path} is larger than 64 KiB; it should hold one line")
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def _tty_prompt(prompt: str) -> bytes:
    """Ask on the controlling terminal with echo off; raise if there is none."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | getattr(os, "O_NOCTTY", 0))
    except OSError:
        raise errors.PassphraseRequiredException(f"no passphrase and no terminal to ask on: {SOURCES_HINT}") from None
    import termios

    with os.fdopen(fd, "r+b", buffering=0) as tty:
        old = termios.tcgetattr(fd)
        new = termios.tcgetattr(fd)
        new[3] &= ~termios.ECHO
        try:
            # Echo off first, then the prompt: TCSAFLUSH discards typeahead, and
            # after the prompt it would discard an answer typed as soon as it showed.
            termios.tcsetattr(fd, termios.TCSAFLUSH, new)
            tty.write(prompt.encode())
            line = b""
            while not line.endswith(b"\n"):
                chunk = tty.read(1)
                if not chunk:
                    break
                line += chunk
                if len(line) > MAX_PASSPHRASE_BYTES:
                    break
        finally:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSAFLUSH, old)
            with contextlib.suppress(OSError):
                tty.write(b"\n")
    return line.rstrip(b"\r\n")


def current(passphrase_file: str | None) -> Callable[[], bytes]:
    """A lazy getter for the passphrase that unlocks an existing vault (sources 2-4)."""

    def get() -> bytes:
        path = passphrase_file or os.environ.get("KMSCLI_PASSPHRASE_FILE")
        if path:
            return read_passphrase_file(path)
        env = os.environ.get("KMSCLI_PASSPHRASE")
        if env is not None:
            return env.encode()
        return _tty_prompt("kmscli: vault passphrase: ")

    return get


def new(passphrase_file: str | None, *, file_env: str, env: str, label: str) -> bytes:
    """A new passphrase (init, passwd): file, then environment, then asked twice."""
    path = passphrase_file or os.environ.get(file_env)
    if path:
        value = read_passphrase_file(path)
    elif os.environ.get(env) is not None:
        value = os.environ[env].encode()
    else:
        try:
            value = _tty_prompt(f"kmscli: {label}: ")
        except errors.PassphraseRequiredException:
            raise errors.PassphraseRequiredException(
                f"no {label} and no terminal to ask on: give --{'new-' if 'NEW' in env else ''}passphrase-file PATH "
                f"or set {env}"
            ) from None
        again = _tty_prompt(f"kmscli: {label} again: ")
        if value != again:
            raise errors.ValidationException("the two passphrases differ; nothing was changed")
    if not value:
        raise errors.ValidationException("the passphrase must not be empty")
    return value
