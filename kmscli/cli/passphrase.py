"""Where the passphrase comes from, first match wins (SPEC "Passphrase and unlocking").

1. ``KMSCLI_SESSION``: a session from ``kmscli unlock``; never falls back.
2. ``--passphrase-file PATH`` or ``KMSCLI_PASSPHRASE_FILE``: the file's first line.
3. ``KMSCLI_PASSPHRASE``: the passphrase itself.
4. A prompt on ``/dev/tty`` without echo, so stdin stays free for data.

With none of them and no terminal, fail at once (exit 5) naming the options.
A passphrase is never accepted as a command-line value and never printed.

A person at the terminal gets three tries at every prompt, as sudo and ssh
give: a wrong passphrase is asked for again (each wrong one is recorded as
a failed unlock), and so is a new passphrase whose confirmation differs. A
file or a variable would give the same answer again, so it gets one try.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from .. import errors

SOURCES_HINT = (
    "give --passphrase-file PATH, set KMSCLI_PASSPHRASE_FILE or KMSCLI_PASSPHRASE, "
    "run 'eval \"$(kmscli unlock)\"' for a session, or run kmscli from a terminal"
)
MAX_PASSPHRASE_BYTES = 64 * 1024
#: Tries at each terminal prompt, as sudo and ssh give.
TRIES = 3


def read_passphrase_file(path: str, what: str = "passphrase", *, warn_readable: bool = False) -> bytes:
    """The first line of ``path``, without its line ending, once the file is known to be the user's alone.

    Whoever can write the file chooses the passphrase (a new vault's, at
    ``init`` and ``passwd``) or swaps it for one they know; so a file another
    user owns, or that group or others may write, is refused (exit 2), as is
    anything but a regular file: a FIFO or a device could feed anything, or
    make kmscli wait forever. The checks are made with fstat on the open
    descriptor, so the file checked is the file read. A symlink is followed:
    the file it leads to is what gets checked, and a link to the user's own
    private file is as good as the file (a planted link to someone else's file
    fails the owner check). The one exception to "regular file" is a pipe the
    shell opened for this process, ``--passphrase-file <(pass show kms)``
    (/dev/fd/N): nobody else can write into it, and it is how password
    managers hand over a secret without a file. With ``warn_readable``, a file
    that group or others may read is used, with a warning (one line).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to would otherwise wait forever.
        fd = os.open(path, flags)
    except OSError as e:
        raise errors.UsageError(f"cannot read the {what} file {path}: {e.strerror}") from None
    try:
        mode = _check_passphrase_file(fd, path, what)
        if warn_readable:
            _warn_if_readable(mode, path, what)
        os.set_blocking(fd, True)  # a pipe's writer may not have written yet
        data = b""
        while len(data) <= MAX_PASSPHRASE_BYTES:
            chunk = os.read(fd, MAX_PASSPHRASE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise errors.UsageError(f"cannot read the {what} file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PASSPHRASE_BYTES:
        raise errors.UsageError(f"the {what} file {path} is larger than 64 KiB; it should hold one line")
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def _check_passphrase_file(fd: int, path: str, what: str) -> int:
    """Refuse a file someone else could change (see read_passphrase_file); return its mode."""
    import stat

    st = os.fstat(fd)
    if stat.S_ISFIFO(st.st_mode) and _names_own_descriptor(path):
        pass  # <(command): checked below like a file (a pipe is the caller's, mode 0600)
    elif not stat.S_ISREG(st.st_mode):
        from .fileio import kind_of

        raise errors.UsageError(
            f"the {what} file {path} is {kind_of(st.st_mode)}, not a regular file; "
            f"put the {what} in a file only you can read and write (chmod 600)"
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise errors.UsageError(
            f"the {what} file {path} belongs to another user (uid {st.st_uid}), who could change it; "
            f"use a file of your own, readable and writable by you alone (chmod 600)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        raise errors.UsageError(
            f"the {what} file {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o}), who could change "
            f"the {what}; run chmod 600 {path}"
        )
    return st.st_mode


def _warn_if_readable(mode: int, path: str, what: str) -> None:
    """Whoever can read the file knows the passphrase: say so in one line, and use it all the same."""
    import stat

    if mode & (stat.S_IRGRP | stat.S_IROTH):
        from . import output

        who = "others" if mode & stat.S_IROTH else "its group"
        output.message(f"warning: the {what} file {path} is readable by {who} (mode {stat.S_IMODE(mode):o}), "
                       f"who can read the {what}; run chmod 600 {path}")


def _names_own_descriptor(path: str) -> bool:
    from .fileio import names_descriptor

    return names_descriptor(path) is not None


def _tty_prompt(prompt: str, note: str | None = None) -> bytes:
    """Ask on the controlling terminal with echo off; raise if there is none.

    ``note``, a line said on the terminal before the prompt, tells why it asks again.
    """
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
            tty.write((f"kmscli: {note}\n" if note else "").encode() + prompt.encode())
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


class Current:
    """The passphrase that unlocks an existing vault (sources 2-4), asked for only when called.

    ``another_try`` says whether a wrong one may be asked for again: only an
    answer typed at the terminal, and at most ``TRIES`` in all.
    """

    def __init__(self, passphrase_file: str | None, *, label: str = "vault passphrase",
                 warn_readable: bool = False) -> None:
        self.passphrase_file = passphrase_file
        self.label = label
        self.warn_readable = warn_readable
        #: Answers typed at the terminal so far.
        self.asked = 0

    def __call__(self) -> bytes:
        path = self.passphrase_file or os.environ.get("KMSCLI_PASSPHRASE_FILE")
        if path:
            return read_passphrase_file(path, warn_readable=self.warn_readable)
        env = os.environ.get("KMSCLI_PASSPHRASE")
        if env is not None:
            return env.encode()
        note = f"that passphrase does not unlock this vault; try again ({self.asked + 1} of {TRIES})"
        answer = _tty_prompt(f"kmscli: {self.label}: ", note if self.asked else None)
        self.asked += 1
        return answer

    def another_try(self) -> bool:
        return 0 < self.asked < TRIES


def key_source(passphrase_file: str | None, *, label: str = "vault passphrase", warn_readable: bool = False) -> Any:
    """The vault key from the passphrase (sources 2-4): asked when first needed, three tries at the terminal."""
    from ..vault.store import PassphraseKeySource

    getter = Current(passphrase_file, label=label, warn_readable=warn_readable)
    return PassphraseKeySource(getter, may_retry=getter.another_try)


def new(passphrase_file: str | None, *, file_env: str, env: str, label: str) -> bytes:
    """A new passphrase (init, passwd): file, then environment, then asked twice (three tries)."""
    path = passphrase_file or os.environ.get(file_env)
    if path:
        value = read_passphrase_file(path)
    elif os.environ.get(env) is not None:
        value = os.environ[env].encode()
    else:
        value = _ask_new(label, env)
    if not value:
        raise errors.ValidationException("the passphrase must not be empty")
    return value


def _ask_new(label: str, env: str) -> bytes:
    """Ask for a new passphrase and its confirmation; an empty one or a mismatch asks again, TRIES in all."""
    note = None
    for attempt in range(1, TRIES + 1):
        try:
            value = _tty_prompt(f"kmscli: {label}: ", note)
        except errors.PassphraseRequiredException:
            raise errors.PassphraseRequiredException(
                f"no {label} and no terminal to ask on: give --{'new-' if 'NEW' in env else ''}passphrase-file PATH "
                f"or set {env}"
            ) from None
        if not value:
            if attempt == TRIES:
                raise errors.ValidationException(f"the passphrase must not be empty ({TRIES} tries); "
                                                 "nothing was changed")
            note = f"the passphrase must not be empty; try again ({attempt + 1} of {TRIES})"
            continue
        if value == _tty_prompt(f"kmscli: {label} again: "):
            return value
        note = f"the two passphrases differ; try again ({attempt + 1} of {TRIES})"
    raise errors.ValidationException(f"the two passphrases differed {TRIES} times; nothing was changed")
