"""A backup archive (``kmscli vault backup``): the vault file and its audit log's files in one uncompressed tar.

docs/vault.md ("Backups") is the format; the constants are named after it.
Members, in this order: ``vault.kms`` (the vault, one complete file), the
log's files as ``log/NAME.000001``, ... and ``log/NAME`` (oldest first, the
live file last), then ``manifest.json``, which names every member with its
size and SHA-256. Nothing here unlocks anything: the service checks the
staged vault (it must open with the passphrase) and the staged log (its chain,
under the vault's keys) before anything is put in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import errors

#: ``manifest.json``'s ``format`` and the highest ``version`` this code reads.
ARCHIVE_FORMAT = "kmscli vault backup"
ARCHIVE_VERSION = 1
MANIFEST = "manifest.json"
VAULT_MEMBER = "vault.kms"
LOG_FOLDER = "log"
MAX_MANIFEST_BYTES = 1 << 20
#: Bound on the members an archive may hold (a log of 64 MiB files would be 6 TiB).
MAX_MEMBERS = 100_000
SEGMENT_RE = re.compile(r"\.[0-9]{6,}")
#: A log file's base name as the archive may carry it (no path, nothing hidden).
_LOG_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")
COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Source:
    """A member to write: its name in the archive, its length, and how to open it (a descriptor read by pread)."""

    name: str
    size: int
    open: Callable[[], contextlib.AbstractContextManager[int]]


def log_member(name: str) -> str:
    return f"{LOG_FOLDER}/{name}"


def write(writer: Any, sources: list[Source], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the archive to ``writer``: every source, then ``manifest`` with its ``members``; return that manifest."""
    import tarfile

    members = []
    now = int(time.time())
    out: Any = _Writer(writer)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for s in sources:
            with s.open() as fd:
                reader = _Range(fd, s.size, s.name)
                tar.addfile(_info(s.name, s.size, now), reader)
            members.append({"name": s.name, "size": s.size, "sha256": reader.digest()})
        doc = {**manifest, "format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "members": members}
        data = (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("ascii")
        tar.addfile(_info(MANIFEST, len(data), now), io.BytesIO(data))
    return doc


def stage(reader: Any, folder: Path, source: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read the archive ``reader`` into new private files in ``folder``; return its manifest and {member: file}.

    Each member must be a regular file with a name the format allows, none
    twice, the manifest last; each is written to a new file (``O_EXCL |
    O_NOFOLLOW``, 0600; never where the archive says) while its SHA-256 is
    computed, and the manifest must list exactly those members, sizes and
    hashes. Anything else is VaultCorruptException (exit 8) naming ``source``.
    """
    import tarfile

    def bad(what: str) -> errors.VaultCorruptException:
        return errors.VaultCorruptException(f"the backup {source} is damaged or not a kmscli backup: {what}")

    found: dict[str, tuple[Path, int, str]] = {}
    manifest: dict[str, Any] | None = None
    stream: Any = _Reader(reader, source)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                if manifest is not None:
                    raise bad(f"the member {m.name!r} follows the manifest")
                if not m.isreg():
                    raise bad(f"the member {m.name!r} is not a regular file")
                src = tar.extractfile(m)
                assert src is not None
                if m.name == MANIFEST:
                    if m.size > MAX_MANIFEST_BYTES:
                        raise bad("the manifest is larger than 1 MiB")
                    manifest = _parse_manifest(src.read(), bad)
                    continue
                if m.name in found:
                    raise bad(f"the member {m.name!r} appears twice")
                if len(found) >= MAX_MEMBERS:
                    raise bad(f"more than {MAX_MEMBERS} members")
                dest = _member_path(folder, m.name, bad)
                found[m.name] = (dest, m.size, _copy_out(src, dest, m.size))
    except (tarfile.TarError, EOFError) as e:
        raise bad(str(e) or type(e).__name__) from None
    if manifest is None:
        raise bad("it has no manifest.json at its end (cut short?)")
    listed = manifest["members"]
    if [m["name"] for m in listed] != list(found):
        raise bad("its members are not those its manifest lists")
    for m in listed:
        _path, size, digest = found[m["name"]]
        if size != m["size"] or digest != m["sha256"]:
            raise bad(f"the member {m['name']} does not match its SHA-256 in the manifest (altered or damaged)")
    return manifest, {name: entry[0] for name, entry in found.items()}


def log_files(manifest: dict[str, Any]) -> tuple[str, list[str]]:
    """The log's base name and its files' names, oldest first, the live file last, as the manifest lists them."""
    name = manifest["log"]["name"]
    files = [m["name"][len(LOG_FOLDER) + 1 :] for m in manifest["members"] if m["name"] != VAULT_MEMBER]
    return name, files


# -- writing ------------------------------------------------------------------------
class _Writer:
    """The destination for tarfile: every write written in full (a raw stdout may take part of one)."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def write(self, data: Any) -> int:
        from ..crypto.stream import write_all

        write_all(self._writer, data)
        return len(data)


class _Range:
    """The first ``size`` bytes of a descriptor, read with pread, hashed as tarfile reads them."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self._fd, self._left, self._pos, self._name = fd, size, 0, name
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        if n == 0:
            return b""
        try:
            data = os.pread(self._fd, n, self._pos)
        except OSError as e:
            raise errors.VaultFileError(f"cannot read {self._name} for the backup: {e.strerror}") from None
        if not data:
            raise errors.VaultFileError(f"{self._name} became shorter while it was copied; nothing was written")
        self._pos += len(data)
        self._left -= len(data)
        self._hash.update(data)
        return data

    def digest(self) -> str:
        return self._hash.hexdigest()


def _info(name: str, size: int, mtime: int) -> Any:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# -- reading ------------------------------------------------------------------------
class _Reader:
    """The archive's input for tarfile: a read error is the input being unreadable (exit 2), as for ``-i``."""

    def __init__(self, reader: Any, source: str) -> None:
        self._reader, self._source = reader, source

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._reader.read(n)
        except OSError as e:
            raise errors.UsageError(f"cannot read the backup {self._source}: {e.strerror}") from None
        return bytes(data or b"")


def _member_path(folder: Path, name: str, bad: Callable[[str], errors.KmsError]) -> Path:
    """Where a member is staged; only ``vault.kms`` and ``log/NAME[.NNNNNN]`` are members."""
    if name == VAULT_MEMBER:
        return folder / VAULT_MEMBER
    head, sep, base = name.partition("/")
    if head != LOG_FOLDER or not sep or not _LOG_NAME.fullmatch(base):
        raise bad(f"the member {name!r} is none the format has")
    logs = folder / LOG_FOLDER
    with contextlib.suppress(FileExistsError):
        os.mkdir(logs, 0o700)
    return logs / base


def _copy_out(src: Any, dest: Path, size: int) -> str:
    """Copy ``size`` bytes of ``src`` into the new file ``dest`` (0600, synced); return their SHA-256."""
    from .files import create_private

    digest = hashlib.sha256()
    try:
        fd = create_private(dest)
    except OSError as e:
        raise errors.VaultFileError(f"cannot stage the backup in {dest.parent}: {e.strerror}") from None
    try:
        left = size
        while left > 0:
            block = src.read(min(COPY_BLOCK, left))
            if not block:
                raise EOFError("the archive ends inside a member")
            digest.update(block)
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(block)
        os.fsync(fd)
    except OSError as e:
        raise errors.VaultFileError(f"cannot stage the backup in {dest.parent}: {e.strerror}") from None
    finally:
        os.close(fd)
    return digest.hexdigest()


def _parse_manifest(data: bytes, bad: Callable[[str], errors.KmsError]) -> dict[str, Any]:
    """The manifest, its shape checked (what it claims about the vault is checked against the vault itself)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise bad("its manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != ARCHIVE_FORMAT:
        raise bad("its manifest is not a kmscli backup manifest")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise bad("its manifest has no valid version")
    if version > ARCHIVE_VERSION:
        raise errors.VaultVersionException(
            f"the backup's format version {version} is newer than this kmscli understands ({ARCHIVE_VERSION}); "
            "upgrade kmscli")
    members = doc.get("members")
    vault, log = doc.get("vault"), doc.get("log")
    if not (isinstance(members, list) and isinstance(vault, dict) and isinstance(log, dict)):
        raise bad("its manifest lacks members, vault or log")
    for m in members:
        if not (isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("size"), int)
                and isinstance(m.get("sha256"), str)):
            raise bad("its manifest lists a member without name, size or sha256")
    if not members or members[0]["name"] != VAULT_MEMBER:
        raise bad("its first member is not the vault")
    name = log.get("name")
    if not isinstance(name, str) or not _LOG_NAME.fullmatch(name):
        raise bad("its manifest names no valid log file")
    for m in members[1:]:
        head, _, base = m["name"].partition("/")
        rest = base[len(name) :] if base.startswith(name) else None
        if head != LOG_FOLDER or rest is None or not (rest == "" or SEGMENT_RE.fullmatch(rest)):
            raise bad(f"its manifest lists {m['name']!r}, which is not a file of the log {name}")
    if members[-1]["name"] != log_member(name) and len(members) > 1:
        raise bad("the log's live file is not its last member")
    for key in ("id", "generation", "audit_epoch", "path", "format"):
        if key not in vault:
            raise bad(f"its manifest does not say the vault's {key}")
    return doc
