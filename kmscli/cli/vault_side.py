"""``reencrypt`` with ``--endpoint``: ciphertexts moved between the local vault and a remote KMS, streaming.

The side that made the ciphertext reads it: a vault ciphertext (kmscli's
format) the vault, with its usual passphrase sources or the session in
``KMSCLI_SESSION`` (whose agent then runs the vault's half on descriptors
handed to it); anything else the remote KMS. ``--to-vault`` makes ``--key``
a vault key; otherwise it names a remote one. The plaintext passes between
the two through a pipe (kmscli/envelope.py), never through a file.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import typer

from . import common


def reencrypt(remote: Any, *, to_vault: bool, reader: BinaryIO, writer: BinaryIO, DestinationKeyId: str,
              SourceEncryptionContext: dict[str, str], DestinationEncryptionContext: dict[str, str],
              SourceKeyId: str | None, Format: str | None = None, Signed: bool = True) -> dict[str, Any]:
    from .. import envelope

    kind, reader = envelope.sniff(reader)
    if kind != envelope.FORMAT_KMSCLI and not to_vault:  # remote to remote: the remote KMS's own business
        return dict(remote.ReEncrypt(reader=reader, writer=writer, DestinationKeyId=DestinationKeyId,
                                     SourceEncryptionContext=SourceEncryptionContext,
                                     DestinationEncryptionContext=DestinationEncryptionContext,
                                     SourceKeyId=SourceKeyId, Format=Format, Signed=Signed))
    vault = VaultSide.for_this_call()
    if kind == envelope.FORMAT_KMSCLI:
        def source(out: BinaryIO) -> Any:
            return vault.decrypt(reader, out, SourceEncryptionContext, SourceKeyId)
    else:
        def source(out: BinaryIO) -> Any:
            return remote.Decrypt(reader=reader, writer=out, EncryptionContext=SourceEncryptionContext,
                                  KeyId=SourceKeyId)
    if to_vault:
        def destination(plain: BinaryIO) -> Any:
            return vault.encrypt(plain, writer, DestinationKeyId, DestinationEncryptionContext,
                                 Format or envelope.FORMAT_KMSCLI, Signed)
    else:
        def destination(plain: BinaryIO) -> Any:
            return remote.Encrypt(KeyId=DestinationKeyId, reader=plain, writer=writer,
                                  EncryptionContext=DestinationEncryptionContext, Format=Format, Signed=Signed)
    src, dst = envelope.pipe_through(source, destination)
    return {"KeyId": (dst or {}).get("KeyId"), "SourceKeyId": (src or {}).get("KeyId")}


class VaultSide:
    """The vault's half: its service here, or the session's agent."""

    @staticmethod
    def for_this_call() -> VaultSide:
        token = os.environ.get("KMSCLI_SESSION")
        return AgentVault(token) if token else LocalVault()

    def decrypt(self, reader: BinaryIO, writer: BinaryIO, context: dict[str, str], key: str | None) -> Any:
        raise NotImplementedError

    def encrypt(self, reader: BinaryIO, writer: BinaryIO, key: str, context: dict[str, str], fmt: str,
                signed: bool) -> Any:
        raise NotImplementedError


class LocalVault(VaultSide):
    def __init__(self) -> None:
        self._svc = common.vault_service()

    def decrypt(self, reader: BinaryIO, writer: BinaryIO, context: dict[str, str], key: str | None) -> Any:
        return self._svc.Decrypt(reader=reader, writer=writer, EncryptionContext=context, KeyId=key)

    def encrypt(self, reader: BinaryIO, writer: BinaryIO, key: str, context: dict[str, str], fmt: str,
                signed: bool) -> Any:
        return self._svc.Encrypt(KeyId=key, reader=reader, writer=writer, EncryptionContext=context, Format=fmt,
                                 Signed=signed)


class AgentVault(VaultSide):
    """``kmscli decrypt`` or ``encrypt`` run by the session's agent on pipes this process feeds and drains."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _run(self, args: list[str], reader: BinaryIO, writer: BinaryIO) -> None:
        from ..agent import client

        with _Feed(reader) as stdin, _Drain(writer) as stdout:
            code = client.call(self._token, [*global_options(), *args], stdin.fd, stdout.fd)
        if code != 0:
            raise typer.Exit(code)  # the agent said why, on our stderr

    def decrypt(self, reader: BinaryIO, writer: BinaryIO, context: dict[str, str], key: str | None) -> Any:
        self._run(["decrypt", *context_options(context), *([f"--key={key}"] if key else [])], reader, writer)
        return {}

    def encrypt(self, reader: BinaryIO, writer: BinaryIO, key: str, context: dict[str, str], fmt: str,
                signed: bool) -> Any:
        self._run(["encrypt", f"--key={key}", *context_options(context), f"--format={fmt}",
                   *([] if signed else ["--unsigned"])], reader, writer)
        return {}


class _Pump:
    """A pipe: one end (``fd``) for the agent, the other copied by a thread until the agent is done."""

    fd: int

    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._thread = _thread(self._run)

    def _run(self) -> None:
        try:
            self._copy()
        except BaseException as e:  # raised in the caller's thread, when the agent succeeded
            self._error = e

    def _copy(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Pump:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


class _Feed(_Pump):
    """The agent's stdin: everything ``reader`` yields."""

    def __init__(self, reader: BinaryIO) -> None:
        self._reader = reader
        self.fd, self._w = os.pipe()
        super().__init__()

    def _copy(self) -> None:
        try:
            with open(self._w, "wb") as out:
                while chunk := self._reader.read(1 << 20):
                    out.write(chunk)
        except BrokenPipeError:
            pass  # the agent stopped reading: it reports why


class _Drain(_Pump):
    """The agent's stdout: what it writes lands in ``writer``."""

    def __init__(self, writer: BinaryIO) -> None:
        self._writer = writer
        self._r, self.fd = os.pipe()
        super().__init__()

    def _copy(self) -> None:
        with open(self._r, "rb") as source:
            while chunk := source.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[self._writer.write(view) or 0:]
        self._writer.flush()


def context_options(context: dict[str, str]) -> list[str]:
    return [f"--context={k}={v}" for k, v in sorted(context.items())]


def global_options() -> list[str]:
    """This call's vault options, for the agent's ``decrypt`` and ``encrypt`` (the environment goes too)."""
    state = common.STATE
    out = [f"--{name.replace('_', '-')}={value}" for name, value in
           (("vault", state.vault), ("audit_log", state.audit_log), ("region", state.region)) if value is not None]
    return [*out, "--debug"] if state.debug else out


def _thread(target: Any) -> Any:
    import threading

    return threading.Thread(target=target, daemon=True)
