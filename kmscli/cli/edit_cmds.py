"""``kmscli edit FILE``: decrypt into a private in-memory file, run the user's editor, encrypt the result.

As ``sops FILE`` and ``ansible-vault edit`` do, with what docs/edit.md lays out:

- the plaintext exists only in a private folder (0700, the file 0600) on a
  memory file system, removed on success, on error, on Ctrl-C, SIGTERM and
  SIGHUP, and by the next ``edit`` after a SIGKILL; with no memory file
  system at hand ``edit`` refuses (exit 2) rather than put plaintext on disk;
- the vault is used through the service, as ``decrypt`` and ``encrypt`` use it:
  one Decrypt and one Encrypt record, policies and key states apply; with a
  session both calls run in its agent, while the editor runs here, on the
  user's terminal;
- FILE is replaced (temporary file beside it, 0600, renamed, never through a
  link: the ``-o`` machinery of fileio) only once the new ciphertext is
  complete, and not at all when the content did not change or the editor failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from .. import errors
from . import common, crypto_cmds, fileio, memfs, output, vault_side

#: Extensions of ciphertext names that the plaintext's name drops, so that the
#: editor picks its syntax from the rest (``app.yaml.kms`` is edited as ``app.yaml``).
CIPHERTEXT_SUFFIXES = (".kms", ".asc")
#: The editor when neither VISUAL nor EDITOR names one, as git, crontab and sops choose.
DEFAULT_EDITOR = "vi"
#: vim and neovim would put swap, backup, undo and viminfo/shada files with
#: copies of the text in folders of their own (often on disk, from the
#: user's vimrc); these options keep every copy out. Given first, before the
#: user's own, so that the user's ``-c`` commands still run after them.
VIM_PRIVATE_OPTIONS = ("-n", "-i", "NONE", "-c", "set nobackup nowritebackup noundofile")
_VIM_NAME = re.compile(r"[gmn]?vim(x|[.-][\w.-]+)?")
#: Not for the editor and what it starts (its shell commands, plugins): secrets of kmscli's own.
EDITOR_HIDDEN_ENV = frozenset(("KMSCLI_PASSPHRASE", "KMSCLI_NEW_PASSPHRASE", "KMSCLI_SESSION"))
#: After a SIGTERM or SIGHUP reached kmscli, how long the editor has to end on its own SIGTERM before SIGKILL.
EDITOR_GRACE_S = 10.0


def register(app: typer.Typer) -> None:
    common.command(app, "edit", "Edit a ciphertext in place: decrypt it into a private in-memory file, run "
                                "$VISUAL or $EDITOR on it, and encrypt the result again (same key and context "
                                "unless given); the plaintext never touches the disk.", keyed=True)(edit)


def edit(
    file: Annotated[str, typer.Argument(metavar="FILE", help="The kmscli ciphertext to edit (binary or armored); "
                                                             "a new file needs --key.")],
    key: Annotated[str | None, typer.Option("--key", "-k", metavar="KEY",
                   help="Encrypt the result under KEY instead of the file's own key; required for a new file.")
                   ] = None,
    context: Annotated[list[str] | None, typer.Option("--context", "-c", metavar="K=V",
                       help="Encrypt the result with this encryption context instead of the file's own; "
                            "repeatable. Required when the file holds only its context's digest.")] = None,
    armor: Annotated[bool, typer.Option("--armor", "-a", help="Write ASCII armor (a binary file becomes armored); "
                                                               "otherwise the file keeps its form and a new file "
                                                               "is binary.")] = False,
) -> None:
    if common.SESSION is not None:
        raise errors.UsageError("kmscli edit runs your editor in your own process, never in a session's agent; "
                                "run it through the kmscli command")
    if file == "-" or fileio.names_descriptor(file) is not None:
        raise errors.UsageError(f"kmscli edit replaces a file in place: give its name, not '{file}'")
    given = common.pairs(context, "context") if context else None
    with contextlib.ExitStack() as stack:
        source = read_source(file)
        if source is not None:
            stack.callback(source.stream.close)
        plan = Plan.of(file, source, key, given, armor)
        editor = Editor.from_environment()
        vault = Vault.for_this_call()
        base = memfs.memory_base()
        dest = fileio.Output(file, binary=not plan.armored)  # now: an unwritable folder stops us before any typing
        stack.callback(dest.abort)  # after a commit, nothing left to remove
        folder = stack.enter_context(memfs.private_folder(base))
        plain = folder / plaintext_name(file)
        with memfs.create_private(plain) as f:
            if source is not None and plan.decrypt_context is not None:
                vault.decrypt(source.stream, fileio._Sink(f, f"the plaintext copy {plain}"), plan.decrypt_context)
        if plan.check_target:
            vault.check_encrypt(plan.key, plan.context)
        before = _digest(plain)
        editor.run(plain, folder, file)
        edited = stack.enter_context(_open_edited(plain, editor, file))
        if _digest_of(edited) == before:
            output.message(_unchanged(file, source is None, plan))
            return
        edited.seek(0)
        vault.encrypt(edited, dest.stream, plan.key, plan.context, plan.armored, plan.written_as)
        dest.commit()


# -- what FILE holds and what to make of it ----------------------------------
@dataclass
class Source:
    """An existing FILE, open, and what its header says (nothing of it is authenticated yet)."""

    stream: BinaryIO
    key_id: str
    #: None when the header holds only the context's digest (version 2, over 1024 encoded bytes).
    context: dict[str, str] | None
    armored: bool
    #: The service's ``Format``/``Signed`` that write FILE's kind again: {} for kmscli's own format, else the
    #: AWS Encryption SDK's with the message's own suite.
    written_as: dict[str, Any] = field(default_factory=dict)


def read_source(file: str) -> Source | None:
    """FILE open for reading and its header, or None when there is no FILE (a new one).

    A symbolic link is refused, not followed: FILE is replaced by a new file,
    as ``-o`` replaces a link, and editing through the link would silently
    turn it into a regular file while its target kept the old text.
    """
    from ..crypto import armor as A
    from ..crypto import stream as S

    try:
        st = os.lstat(file)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise errors.UsageError(f"cannot read {file}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise errors.UsageError(f"{file} is a symbolic link, and kmscli edit replaces FILE instead of writing "
                                f"through a link; edit the file it leads to ({os.path.realpath(file)})")
    if not stat.S_ISREG(st.st_mode):
        raise errors.UsageError(f"{file} is {fileio.kind_of(st.st_mode)}, not a regular file; kmscli edit "
                                "replaces a ciphertext file in place")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise errors.UsageError(f"cannot read {file}: {e.strerror}") from None
    f = open(fd, "rb")  # noqa: SIM115 - the caller closes it
    try:
        armored, reader = A.sniff(f)
        if not armored:
            esdk, reader = _esdk_source(f, reader)
            if esdk is not None:
                return esdk
        header = S.read_header(A.ArmorReader(reader) if armored else reader)
    except errors.InvalidCiphertextException as e:
        f.close()
        raise errors.InvalidCiphertextException(
            f"{file}: {e.message}",
            hint="kmscli edit opens a kmscli ciphertext: make one with 'kmscli encrypt --key KEY -i FILE -o "
                 "FILE.kms', or name a new FILE with --key to start from nothing",
        ) from None
    except BaseException:
        f.close()
        raise
    return Source(stream=f, key_id=header.key_id, context=header.context, armored=armored)


def _esdk_source(f: BinaryIO, reader: BinaryIO) -> tuple[Source | None, BinaryIO]:
    """An AWS Encryption SDK message's key (its first aws-kms data key's ARN) and context, or None for another
    kind of file, and ``reader`` with what was peeked at put back. An ESDK message is written back in the same
    format and suite; its signing key's public half is not context."""
    from .. import envelope
    from ..crypto import esdk

    kind, reader = envelope.sniff(reader)
    if kind != envelope.FORMAT_ESDK:
        return None, reader
    header = esdk.read_header(reader)
    keys = [k.provider_info for k in header.data_keys if k.provider_id == esdk.PROVIDER_AWS_KMS]
    if not keys:
        raise errors.InvalidCiphertextException(hint="its data keys are for other key providers than aws-kms")
    context = {k: v for k, v in header.context.items() if k != esdk.PUBLIC_KEY_CONTEXT_KEY}
    return Source(stream=f, key_id=keys[0], context=context, armored=False,
                  written_as={"Format": envelope.FORMAT_ESDK, "Signed": header.signed}), reader


@dataclass(frozen=True)
class Plan:
    """What to decrypt with and what to encrypt under."""

    #: The context to decrypt FILE with; None for a new file.
    decrypt_context: dict[str, str] | None
    key: str
    context: dict[str, str]
    armored: bool
    #: The key or context to encrypt under is not the one the Decrypt proved
    #: (a new file, --key, --context): it is tried before the editor opens.
    check_target: bool
    #: ``Format``/``Signed`` for the new text: FILE's own kind (Source.written_as).
    written_as: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, file: str, source: Source | None, key: str | None, given: dict[str, str] | None,
           armor: bool) -> Plan:
        if source is None:
            if key is None:
                raise errors.UsageError(f"{file} does not exist; give --key KEY to create it "
                                        "(and --context K=V for its encryption context)")
            return cls(None, key, given or {}, armor, True)
        if source.context is None and given is None:
            raise errors.UsageError(
                f"{file} holds only a digest of its encryption context (it is too large to store); give the "
                "context with --context K=V..., which decrypts it and is kept for the new text"
            )
        decrypt_context = source.context if source.context is not None else given
        assert decrypt_context is not None
        context = given if given is not None else decrypt_context
        if armor and source.written_as:
            raise errors.UsageError(f"{file} is an AWS Encryption SDK message, which has no armored form")
        return cls(decrypt_context, key or source.key_id, context, armor or source.armored,
                   key is not None or context != decrypt_context, source.written_as)


def plaintext_name(file: str) -> str:
    """The name the editor sees: FILE's own, less a ciphertext extension (``app.yaml.kms`` -> ``app.yaml``)."""
    name = os.path.basename(file.rstrip(os.sep)) or "plaintext"
    for suffix in CIPHERTEXT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _unchanged(file: str, new: bool, plan: Plan) -> str:
    if new:
        return f"nothing was saved, so {file} was not created"
    if plan.check_target:
        return (f"{file} is unchanged: nothing was written, under no key or context (kmscli reencrypt moves a "
                "ciphertext to another key or context without editing it)")
    return f"{file} is unchanged: nothing was written"


# -- the vault: here with a passphrase, or in the session's agent ----------------
class Vault:
    """The two calls edit makes, and the check before the editor opens for a new key or context."""

    @staticmethod
    def for_this_call() -> Vault:
        token = os.environ.get("KMSCLI_SESSION")
        # With an endpoint the remote KMS does the two calls, here: common.service() is that KMS.
        return SessionVault(token) if token and common.endpoint() is None else LocalVault()

    def decrypt(self, source: BinaryIO, plain: Any, context: dict[str, str]) -> None:
        raise NotImplementedError

    def encrypt(self, plain: BinaryIO, dest: Any, key: str, context: dict[str, str], armor: bool,
                written_as: dict[str, Any]) -> None:
        raise NotImplementedError

    def check_encrypt(self, key: str, context: dict[str, str]) -> None:
        """Encrypt nothing under ``key`` and ``context``: a wrong passphrase, an unknown, disabled or denied
        key stops the edit before anything is typed, not after (an Encrypt record of 0 bytes)."""
        raise NotImplementedError


class LocalVault(Vault):
    """The vault opened here: one unlock serves every call, so a prompt asks once, before the editor opens."""

    def __init__(self) -> None:
        self._svc = common.service()

    def decrypt(self, source: BinaryIO, plain: Any, context: dict[str, str]) -> None:
        source.seek(0)
        self._svc.Decrypt(reader=crypto_cmds.maybe_dearmor(source), writer=plain, EncryptionContext=context)

    def encrypt(self, plain: BinaryIO, dest: Any, key: str, context: dict[str, str], armor: bool,
                written_as: dict[str, Any]) -> None:
        writer, finish = crypto_cmds.maybe_armor(dest, armor)
        self._svc.Encrypt(KeyId=key, reader=plain, writer=writer, EncryptionContext=context, **written_as)
        finish()

    def check_encrypt(self, key: str, context: dict[str, str]) -> None:
        self._svc.Encrypt(KeyId=key, reader=io.BytesIO(), writer=io.BytesIO(), EncryptionContext=context)


class SessionVault(Vault):
    """``KMSCLI_SESSION``: each call is ``kmscli decrypt`` or ``encrypt`` run by the session's agent, on
    descriptors handed to it (the ciphertext, the plaintext file, the new ciphertext's temporary file)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _run(self, args: list[str], stdin: int, stdout: int) -> None:
        from ..agent import client

        code = client.call(self._token, [*vault_side.global_options(), *args], stdin, stdout)
        if code != 0:
            raise typer.Exit(code)  # the agent said why, on our stderr

    def decrypt(self, source: BinaryIO, plain: Any, context: dict[str, str]) -> None:
        source.seek(0)
        self._run(["decrypt", *vault_side.context_options(context)], source.fileno(), plain.fileno())

    def encrypt(self, plain: BinaryIO, dest: Any, key: str, context: dict[str, str], armor: bool,
                written_as: dict[str, Any]) -> None:
        kind = [f"--format={written_as['Format']}", *([] if written_as["Signed"] else ["--unsigned"])] \
            if written_as else []
        self._run(["encrypt", f"--key={key}", *vault_side.context_options(context), *kind,
                   *(["--armor"] if armor else [])],
                  plain.fileno(), dest.fileno())

    def check_encrypt(self, key: str, context: dict[str, str]) -> None:
        with open(os.devnull, "r+b") as null:
            self._run(["encrypt", f"--key={key}", *vault_side.context_options(context)], null.fileno(), null.fileno())


# -- the editor ----------------------------------------------------------------
@dataclass(frozen=True)
class Editor:
    """The user's editor: $VISUAL, else $EDITOR, else vi, split as a shell splits words (``code --wait``)."""

    argv: tuple[str, ...]
    #: Where it came from, for messages: "'vim' ($EDITOR)".
    shown: str

    @classmethod
    def from_environment(cls) -> Editor:
        import shlex
        import shutil

        for name in ("VISUAL", "EDITOR"):
            value = os.environ.get(name, "")
            if not value.strip():
                continue
            try:
                argv = shlex.split(value)
            except ValueError as e:
                raise errors.UsageError(f"cannot split ${name} into words ({e}); quote it as a shell "
                                        "would, e.g. EDITOR='code --wait'") from None
            source = f"${name}"
            break
        else:
            argv, source = [DEFAULT_EDITOR], "the default; set VISUAL or EDITOR to choose"
        shown = f"'{argv[0]}' ({source})"
        program = shutil.which(argv[0])
        if program is None:
            raise errors.UsageError(f"cannot find the editor {shown}; set VISUAL or EDITOR to an editor on "
                                    "your PATH")
        extra = VIM_PRIVATE_OPTIONS if _VIM_NAME.fullmatch(os.path.basename(os.path.realpath(program))) else ()
        return cls((argv[0], *extra, *argv[1:]), shown)

    def run(self, plain: Path, folder: Path, file: str) -> None:
        """Run the editor on ``plain`` and wait for it; raise EditorException unless it exits 0.

        Ctrl-C and Ctrl-\\ reach the editor (same terminal, same process group),
        which handles them; kmscli ignores them meanwhile, as git does, rather
        than remove the file under the editor. SIGTERM and SIGHUP sent to kmscli
        end the editor first, then the cleanup removes the folder.
        """
        import signal
        import subprocess

        env = {k: v for k, v in os.environ.items() if k not in EDITOR_HIDDEN_ENV}
        env["TMPDIR"] = str(folder)  # the editor's own temporary files land beside the plaintext
        # A Python handler, not SIG_IGN: exec resets it, so the editor starts with the default.
        ignored = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGQUIT)}
        try:
            try:
                proc = subprocess.Popen([*self.argv, str(plain)], env=env)
            except OSError as e:
                raise errors.UsageError(f"cannot start the editor {self.shown}: {e.strerror}") from None
            try:
                code = proc.wait()
            except BaseException:  # SIGTERM or SIGHUP (pipes.Terminated): its file is about to go
                _stop(proc)
                raise
        finally:
            for sig, handler in ignored.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if code > 0:
            raise errors.EditorException(f"the editor {self.shown} exited with status {code}; {file} was not "
                                         "changed")
        if code < 0:
            raise errors.EditorException(f"the editor {self.shown} was ended by {signal.Signals(-code).name}; "
                                         f"{file} was not changed")


def _ignore(signum: int, frame: object) -> None:
    pass


def _stop(proc: Any) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=EDITOR_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _open_edited(plain: Path, editor: Editor, file: str) -> Iterator[BinaryIO]:
    """The file as the editor left it (it may have replaced it by renaming); never through a link."""
    try:
        fd = os.open(plain, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise errors.EditorException(f"the editor {editor.shown} left nothing to encrypt at {plain} "
                                     f"({e.strerror}); {file} was not changed") from None
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise errors.EditorException(f"the editor {editor.shown} left {plain} as {fileio.kind_of(mode)}; "
                                         f"{file} was not changed")
        yield f


def _digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return _digest_of(f)


def _digest_of(f: Any) -> bytes:
    return hashlib.file_digest(f, "sha256").digest()
