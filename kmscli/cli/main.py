"""The ``kmscli`` entry point: answers what it can before importing the CLI framework.

Shell loops call kmscli thousands of times, so the cheapest answers
(``--version``, ``random N``) are given here, before Typer (~80 ms of imports)
is loaded. With ``KMSCLI_SESSION`` set, the call goes to the session's agent
through the thin client (``kmscli.agent.client``), which imports no framework
at all; the agent runs the same code as below, warm (docs/session.md).
"""

from __future__ import annotations

import os
import sys

from kmscli.cli.pipes import EXIT_BROKEN_PIPE, silence_stdout

#: Global options that take a value: skipped when looking for the command's name.
_VALUE_OPTIONS = frozenset(("--vault", "--audit-log", "--passphrase-file", "--region", "--endpoint"))
#: Commands run here even with a session. ``unlock`` always takes a passphrase:
#: a session that could mint sessions would outlive its TTL. ``init`` makes a
#: vault that no session can be for. ``edit`` runs the user's editor on the
#: user's terminal, so it runs here and sends only its Decrypt and Encrypt to
#: the agent (cli/edit_cmds.py).
_LOCAL_COMMANDS = frozenset(("unlock", "init", "edit"))
#: Commands about the vault itself, which a remote KMS has no counterpart of here: refused with an endpoint
#: rather than quietly answered from the local vault (docs/remote.md).
VAULT_COMMANDS = {
    "audit": "the audit log is the vault's; a remote KMS keeps its own (AWS: CloudTrail)",
    "credentials": "access keys are for the vault's 'kmscli serve'; run them on the serving host",
    "vault": "backups are of the vault",
    "serve": "serve serves the vault",
}
_RANDOM_FORMATS = ("base64", "hex", "raw")
_RANDOM_MAX = 1024


def main(argv: list[str] | None = None) -> int:
    no_core_files()
    args = sys.argv[1:] if argv is None else argv
    code = _fast(args)
    if code is not None:
        return code
    not_dumpable()
    token = os.environ.get("KMSCLI_SESSION")
    command = command_name(args)
    if command in VAULT_COMMANDS and remote(args) and not {"-h", "--help"} & set(args):
        sys.stderr.write(f"kmscli: ValidationException: 'kmscli {command}' works on the local vault only: "
                         f"{VAULT_COMMANDS[command]}; run it without --endpoint (unset KMSCLI_ENDPOINT)\n")
        return 2
    if token and command not in _LOCAL_COMMANDS and not remote(args):
        from kmscli.agent import client

        return client.run(token, args, command)
    from kmscli.cli import kdf_slots
    from kmscli.cli.pipes import interrupt_on_termination

    interrupt_on_termination()
    kdf_slots.install()
    from kmscli.cli.app import run

    return run(args)


def run_local(args: list[str]) -> int:
    """Run ``kmscli ARGS`` in this process (the agent's worker calls this)."""
    code = _fast(args)
    if code is not None:
        return code
    from kmscli.cli.app import run

    return run(args)


def remote(args: list[str]) -> bool:
    """Whether this call names a remote KMS: it then runs here, with this process's AWS credentials, not in
    the session's agent (which serves only the vault, and never sees the caller's cloud credentials)."""
    return bool(os.environ.get("KMSCLI_ENDPOINT")) or any(
        a == "--endpoint" or a.startswith("--endpoint=") for a in args)


def no_core_files() -> None:
    """No core file from this process or its children: it may hold a passphrase, a vault key, plaintext.

    RLIMIT_CORE 0, hard limit too, so nothing started later can raise it again.
    About 0.2 ms (the resource module), paid by every call, the fast ones too.
    """
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):
        pass  # not a Unix, or a sandbox that forbids it: nothing better to do


#: prctl(2) option: clear the "dumpable" flag.
_PR_SET_DUMPABLE = 4


def not_dumpable() -> None:
    """On Linux, clear the dumpable flag: no core dump even to a piped handler, no ptrace or /proc/PID/mem.

    RLIMIT_CORE 0 alone does not stop a core_pattern that is a pipe (apport
    and systemd-coredump decide for themselves), and it leaves the process's
    memory readable by the user's other processes. Importing ctypes costs
    about 3 ms, so ``--version`` and ``random`` (which never hold a passphrase,
    a session token or a vault key) skip it; every other call pays it: the
    CLI's imports alone take some 80 ms, the session client's round trip
    through its agent more. The flag resets at exec, so the ``$EDITOR`` that
    ``kmscli edit`` starts is an ordinary process again.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass  # no libc prctl (musl without it, a sandbox): RLIMIT_CORE still holds


def command_name(args: list[str]) -> str | None:
    i = 0
    while i < len(args):
        if args[i] in _VALUE_OPTIONS:
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return None


def _fast(args: list[str]) -> int | None:
    if args in (["--version"], ["-V"]):
        from kmscli import __version__

        return _answer(f"kmscli {__version__}\n")
    if args and args[0] == "random":
        return _random(args[1:])
    return None


def _random(args: list[str]) -> int | None:
    """``random N [--format F]`` in its plain spellings, exactly as crypto_cmds.random answers it.

    Anything else (a bad N or format, another option, ``-fhex``, binary to a
    terminal) returns None and goes to Typer, which owns the checks and the
    error messages; so only valid calls are answered here and none differs.
    """
    n, fmt = _random_args(args)
    if n is None or not (n.isascii() and n.isdigit() and n[0] != "0" and len(n) <= 4 and int(n) <= _RANDOM_MAX):
        return None
    if fmt not in _RANDOM_FORMATS or (fmt == "raw" and os.isatty(1)):
        return None
    data = os.urandom(int(n))
    if fmt == "raw":
        return _answer(data)
    import binascii

    return _answer((binascii.b2a_base64(data, newline=False).decode() if fmt == "base64" else data.hex()) + "\n")


def _answer(data: str | bytes) -> int:
    """Write a fast path's answer to stdout; return the exit code the Typer path gives for the same outcome."""
    try:
        if isinstance(data, bytes):
            _write_raw(data)
        else:
            sys.stdout.write(data)
            sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as e:
        return _stdout_error(e)
    return 0


def _random_args(args: list[str]) -> tuple[str | None, str | None]:
    n: str | None = None
    fmt: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--format", "-f") and fmt is None and i + 1 < len(args):
            fmt, i = args[i + 1], i + 2
        elif a.startswith("--format=") and fmt is None:
            fmt, i = a[len("--format="):], i + 1
        elif n is None and not a.startswith("-"):
            n, i = a, i + 1
        else:
            return None, None
    return n, fmt or "base64"


def _write_raw(data: bytes) -> None:
    # With PYTHONUNBUFFERED=1 sys.stdout.buffer is a raw file whose write() may be partial.
    out = sys.stdout.buffer
    view = memoryview(data)
    while view:
        view = view[out.write(view) or 0 :]
    out.flush()


def _stdout_error(e: OSError) -> int:
    """The error line the Typer path prints for an unwritable stdout (output.write_stdout)."""
    from kmscli.cli.output import stdout_reason

    sys.stderr.write(f"kmscli: ValidationException: cannot write to standard output: {stdout_reason(e)}\n")
    return 2
