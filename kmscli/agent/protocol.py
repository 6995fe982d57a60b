"""The agent's wire format: one request and one reply per connection.

A message is ``MAGIC (4 bytes) | payload length (4 bytes, big-endian) | payload``;
the payload is a list of fields joined by NUL. Arguments, environment entries
and paths reach a process as C strings and cannot contain NUL, so the split
is lossless without any escaping. The thin client imports this module, so it
imports nothing.

Request fields: ``VERSION, op, ...``:

* ``run``: ``secret, stdio, argc, argv..., env "K=V"...``; with the caller's
  stdin, stdout, stderr and working directory as four SCM_RIGHTS descriptors.
* ``end-vault``: ``vault path``; ends the agent if it serves that vault.

Replies: ``exit, code`` | ``error, code, ExceptionName, message`` | ``ended`` | ``other``.
"""

from __future__ import annotations

REQUEST_MAGIC = b"KMq1"
REPLY_MAGIC = b"KMa1"
VERSION = b"1"
HEADER_SIZE = 8
#: Bounds on what a peer can make the agent buffer: a request carries argv and
#: a filtered environment, far below this; a reply is one line of text.
MAX_REQUEST_BYTES = 1 << 20
MAX_REPLY_BYTES = 1 << 16
MAX_FIELDS = 1 << 14
#: stdin, stdout, stderr and the working directory.
RUN_FDS = 4
SECRET_BYTES = 32

OP_RUN = b"run"
OP_END_VAULT = b"end-vault"
REPLY_EXIT = b"exit"
REPLY_ERROR = b"error"
REPLY_ENDED = b"ended"
REPLY_OTHER = b"other"

#: ``KMSCLI_SESSION`` is ``kms1:<socket path>:<secret hex>``.
SESSION_PREFIX = "kms1:"
#: What ``kmscli lock`` prints for ``eval`` (fish: ``| source``), as ``ssh-agent -k`` unsets its variables.
UNSET_LINES = {"fish": "set -e KMSCLI_SESSION;"}
UNSET_LINE = "unset KMSCLI_SESSION"


def unset_line(shell: str) -> str:
    return UNSET_LINES.get(shell, UNSET_LINE)


#: sun_path holds 108 bytes with the terminating NUL; longer paths go through /proc/self/fd.
MAX_SOCKET_PATH = 108


class ProtocolError(Exception):
    """A message that does not follow this format; the peer gets an error, never a crash."""


def frame(magic: bytes, fields: list[bytes]) -> bytes:
    payload = b"\0".join(fields)
    return magic + len(payload).to_bytes(4, "big") + payload


def payload_size(magic: bytes, header: bytes, limit: int) -> int:
    """Check a message header; return the payload size it announces."""
    if len(header) != HEADER_SIZE or header[:4] != magic:
        raise ProtocolError("not a kmscli agent message (bad magic)")
    size = int.from_bytes(header[4:], "big")
    if size > limit:
        raise ProtocolError(f"message of {size} bytes is larger than the {limit} allowed")
    return size


def fields(payload: bytes, minimum: int) -> list[bytes]:
    parts = payload.split(b"\0", MAX_FIELDS)
    if len(parts) > MAX_FIELDS or len(parts) < minimum:
        raise ProtocolError("wrong number of fields")
    return parts
