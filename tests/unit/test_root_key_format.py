"""The vault header of a KMS root key (docs/root-key.md), and the service over an in-process fake KMS.

The fake answers GenerateDataKey and Decrypt as AWS KMS does for what the
vault asks (the encryption context and the KeyId must match the blob's), so
the service's flows (init, unlock, passwd both ways, a refused unwrap) run in
milliseconds here; tests/cli/test_root_key.py runs the same flows through the
real entry point against moto's server and a second ``kmscli serve``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from kmscli import errors
from kmscli.crypto import primitives as P
from kmscli.service import Caller, Kms
from kmscli.vault import format as F
from kmscli.vault import rootkey
from kmscli.vault.store import PassphraseKeySource
from tests.unit.conftest import CHEAP

ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ARN2 = "arn:aws:kms:eu-west-1:111122223333:key/00000000-1111-2222-3333-444444444444"
ALIAS_ARN = "arn:aws:kms:eu-west-1:111122223333:alias/vault-root"


def kms_header(arn: str = ARN, blob: bytes = b"B" * 180) -> tuple[F.Header, bytes, bytes]:
    root = F.RootKey(arn=arn, blob=blob, root_id=os.urandom(16))
    kek, vault_key = os.urandom(32), os.urandom(32)
    return F.build_kms_header(root, kek, vault_key, os.urandom(12)), kek, vault_key


def resum(unsummed: bytes) -> bytes:
    return unsummed + hashlib.sha256(unsummed).digest()


# -- the header ------------------------------------------------------------------------------
def test_the_layout_is_the_documented_one() -> None:
    header, kek, vault_key = kms_header()
    raw = header.raw
    assert raw[:8] == b"KMSVAULT" and struct.unpack(">H", raw[8:10]) == (2,) and raw[10] == F.KDF_KMS
    assert raw[11:23] == bytes(12)  # no KDF parameters
    assert raw[23:39] == header.salt == header.root_key.root_id  # type: ignore[union-attr]
    arn = ARN.encode()
    assert raw[39:41] == struct.pack(">H", len(arn)) and raw[41 : 41 + len(arn)] == arn
    off = 41 + len(arn)
    assert raw[off : off + 2] == struct.pack(">H", 180) and raw[off + 2 : off + 182] == b"B" * 180
    off += 182
    assert header.kdf_aad == raw[:off]
    assert raw[off : off + 12] == header.wrap_nonce and raw[off + 12 : off + 60] == header.wrapped_vault_key
    assert raw[off + 60 :] == hashlib.sha256(raw[: off + 60]).digest() and len(raw) == off + 92
    assert P.open_(kek, header.wrap_nonce, header.wrapped_vault_key, raw[:off]) == vault_key


def test_it_parses_back_and_unwraps() -> None:
    header, kek, vault_key = kms_header()
    parsed = F.parse_records_header(header.raw)
    assert parsed == header
    assert parsed.root_key == F.RootKey(ARN, b"B" * 180, header.salt)
    assert parsed.root_key.context == {"kmscli:vault": header.salt.hex()}
    assert F.unwrap_vault_key(parsed, kek) == vault_key


def test_another_kek_is_a_corrupt_vault_not_a_wrong_passphrase() -> None:
    header, _kek, _vault_key = kms_header()
    with pytest.raises(errors.VaultCorruptException, match="altered or swapped"):
        F.unwrap_vault_key(header, os.urandom(32))


@pytest.mark.parametrize("what", ["arn", "blob", "root id"])
def test_the_wrapped_key_aad_covers_the_arn_the_blob_and_the_root_id(what: str) -> None:
    """A header whose ARN, blob or root id is replaced (checksum recomputed) does not open, even with the KEK."""
    header, kek, _vault_key = kms_header()
    raw = header.raw[: -F.HEADER_CHECKSUM_SIZE]
    if what == "arn":
        raw = raw.replace(ARN.encode(), ARN2.encode())
    elif what == "blob":
        raw = raw.replace(b"B" * 180, b"C" * 180)
    else:
        raw = raw[:23] + os.urandom(16) + raw[39:]
    parsed = F.parse_records_header(resum(raw))
    with pytest.raises(errors.VaultCorruptException):
        F.unwrap_vault_key(parsed, kek)


def test_a_flipped_byte_is_caught_by_the_checksum() -> None:
    header, _kek, _vault_key = kms_header()
    for i in (10, 30, 45, len(header.raw) - 40):
        bad = bytearray(header.raw)
        bad[i] ^= 1
        with pytest.raises(errors.VaultCorruptException, match="checksum"):
            F.parse_records_header(bytes(bad))


def fields(arn: bytes, blob: bytes, *, kdf: tuple[int, int, int] = (0, 0, 0), tail: bytes = b"",
           version: int = 2) -> bytes:
    fixed = struct.pack(">8sHBIII16s", b"KMSVAULT", version, F.KDF_KMS, *kdf, os.urandom(16))
    body = fixed + struct.pack(">H", len(arn)) + arn + struct.pack(">H", len(blob)) + blob + tail
    return resum(body + os.urandom(12 + 48))


@pytest.mark.parametrize("raw, why", [
    (fields(b"", b"x"), "out of bounds"),
    (fields(b"a" * 2049, b"x"), "out of bounds"),
    (fields(b"arn", b""), "out of bounds"),
    (fields(b"arn", b"x" * 6145), "out of bounds"),
    (fields(b"a" * 2048, b"x" * 6144, tail=b"j"), "bytes long"),
    (fields(b"arn", b"x", tail=b"junk"), "bytes after"),
    (fields(b"arn", b"x", kdf=(8192, 1, 1)), "KDF parameters"),
    (fields("arn-é".encode(), b"x"), "ASCII"),
], ids=["empty arn", "arn too long", "empty blob", "blob too long", "header too long", "trailing bytes",
        "kdf params", "non-ascii"])
def test_a_malformed_root_key_header_is_corrupt(raw: bytes, why: str) -> None:
    with pytest.raises(errors.VaultCorruptException, match=why):
        F.parse_records_header(raw)


def test_a_length_that_runs_past_the_header_is_corrupt() -> None:
    raw = bytearray(fields(b"arn", b"x" * 10))
    raw[39:41] = struct.pack(">H", 2000)  # the ARN's length now runs over the blob and the wrap
    with pytest.raises(errors.VaultCorruptException, match="out of bounds|truncated"):
        F.parse_records_header(resum(bytes(raw[:-32])))


def test_format_1_has_no_kms_root_key() -> None:
    """The KMS KDF id exists in format 2 only: a format-1 header naming it is an unknown KDF."""
    raw = bytearray(F.build_header(CHEAP, os.urandom(16), os.urandom(32), os.urandom(32), os.urandom(12)).raw)
    raw[10] = F.KDF_KMS
    with pytest.raises(errors.VaultCorruptException, match="unknown KDF"):
        F.parse_header(resum(bytes(raw[:-32])) + os.urandom(40))


def test_a_passphrase_header_keeps_its_fixed_size() -> None:
    raw = F.build_header(CHEAP, os.urandom(16), os.urandom(32), os.urandom(32), os.urandom(12),
                         version=F.RECORDS_FORMAT_VERSION).raw
    assert F.parse_records_header(raw).root_key is None
    with pytest.raises(errors.VaultCorruptException, match="bytes long"):
        F.parse_records_header(resum(raw[:-32] + b"x"))


# -- the ARN -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arn, region", [
    (ARN, "eu-west-1"), (ALIAS_ARN, "eu-west-1"),
    ("arn:aws:kms:us-east-1:123456789012:key/mrk-1234567890abcdef1234567890abcdef", "us-east-1"),
    ("arn:aws-us-gov:kms:us-gov-west-1:123456789012:alias/a/b_c-d", "us-gov-west-1"),
    ("arn:aws:kms:local:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", "local"),
])
def test_key_and_alias_arns_are_taken(arn: str, region: str) -> None:
    assert rootkey.parse_arn(arn) == (arn, region)


@pytest.mark.parametrize("text", [
    "1234abcd-12ab-34cd-56ef-1234567890ab", "alias/vault", "", "arn:aws:kms:eu-west-1:1111:key/x",
    "arn:aws:kms::111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:s3:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms:eu-west-1:111122223333:key/1234ABCD-12AB-34CD-56EF-1234567890AB",
    ARN + " ", ARN + "/x", "arn:aws:kms:eu-west-1:111122223333:alias/", "arn:aws:kms:EU:111122223333:alias/a",
])
def test_anything_else_is_a_validation_error(text: str) -> None:
    with pytest.raises(errors.ValidationException, match="full KMS key ARN or alias ARN") as e:
        rootkey.parse_arn(text)
    assert e.value.exit_code == 2


# -- a fake KMS ------------------------------------------------------------------------------
class FakeKms:
    """GenerateDataKey and Decrypt as AWS answers them for one region; ``refuse`` makes Decrypt fail."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, tuple[bytes, dict[str, str], str]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse: errors.KmsError | None = None
        self.aliases = {ALIAS_ARN: ARN2}

    def factory(self, region: str) -> FakeKms:
        assert region == "eu-west-1"
        return self

    def GenerateDataKey(self, **req: Any) -> dict[str, Any]:
        self.calls.append(("GenerateDataKey", req))
        assert req["KeySpec"] == "AES_256" and set(req["EncryptionContext"]) == {"kmscli:vault"}
        key_arn = self.aliases.get(req["KeyId"], req["KeyId"])
        plain, blob = os.urandom(32), os.urandom(150)
        self.blobs[blob] = (plain, dict(req["EncryptionContext"]), key_arn)
        return {"Plaintext": plain, "CiphertextBlob": blob, "KeyId": key_arn}

    def Decrypt(self, reader: Any, writer: Any, **req: Any) -> dict[str, Any]:
        blob = reader.read()
        self.calls.append(("Decrypt", req))
        assert req["Esdk"] is False and req["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        if self.refuse is not None:
            raise self.refuse
        found = self.blobs.get(blob)
        if found is None or found[1] != req["EncryptionContext"]:
            raise errors.InvalidCiphertextException()
        if req["KeyId"] != found[2]:
            raise errors.IncorrectKeyException()
        writer.write(found[0])
        return {"KeyId": found[2]}

    def count(self, op: str) -> int:
        return sum(1 for name, _ in self.calls if name == op)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKms:
    kms = FakeKms()
    monkeypatch.setattr(rootkey, "_kms", kms.factory)
    return kms


def no_passphrase() -> bytes:
    raise AssertionError("a vault with a KMS root key asked for a passphrase")


def service(path: Path, getter: Any = no_passphrase) -> Kms:
    return Kms(path, PassphraseKeySource(getter), caller=Caller(user="alice", uid=1000, pid=1, host="test"))


@pytest.fixture
def vault(tmp_path: Path, fake: FakeKms) -> Path:
    path = tmp_path / "v" / "vault.kms"
    result = service(path).CreateVault(RootKeyArn=ARN)
    assert result["RootKeyArn"] == ARN
    return path


def enc(svc: Kms, key_id: str, data: bytes) -> bytes:
    out = io.BytesIO()
    svc.Encrypt(KeyId=key_id, reader=io.BytesIO(data), writer=out)
    return out.getvalue()


def dec(svc: Kms, ciphertext: bytes) -> bytes:
    out = io.BytesIO()
    svc.Decrypt(reader=io.BytesIO(ciphertext), writer=out)
    return out.getvalue()


def audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path.parent / "audit.jsonl").read_text().splitlines()]


def test_create_and_use_without_a_passphrase(vault: Path, fake: FakeKms) -> None:
    assert [c[0] for c in fake.calls] == ["GenerateDataKey"]
    svc = service(vault)
    key_id = svc.CreateKey()["KeyMetadata"]["KeyId"]
    assert fake.count("Decrypt") == 1  # before the lock and under it: one KMS call per process and header
    blob = enc(svc, key_id, b"hello")
    assert dec(service(vault), blob) == b"hello"
    assert fake.count("Decrypt") == 2
    first = audit(vault)[0]
    assert first["eventName"] == "CreateVault" and first["requestParameters"]["rootKeyArn"] == ARN
    assert "kdfMemoryKiB" not in first["requestParameters"]
    assert service(vault).VerifyAuditLog()["Records"] >= 4


def test_an_alias_arn_is_stored_as_its_key_arn(tmp_path: Path, fake: FakeKms) -> None:
    path = tmp_path / "v" / "vault.kms"
    assert service(path).CreateVault(RootKeyArn=ALIAS_ARN)["RootKeyArn"] == ARN2
    assert service(path).store.read_header().root_key.arn == ARN2  # type: ignore[union-attr]
    service(path).ListKeys()
    assert fake.calls[-1][1]["KeyId"] == ARN2


def test_init_with_kdf_settings_or_format_1_is_refused(tmp_path: Path, fake: FakeKms) -> None:
    with pytest.raises(errors.ValidationException, match="has none"):
        service(tmp_path / "a" / "vault.kms").CreateVault(CHEAP, RootKeyArn=ARN)
    svc = service(tmp_path / "b" / "vault.kms")
    svc.store.create_format = F.FORMAT_VERSION
    with pytest.raises(errors.ValidationException, match="needs vault format 2"):
        svc.CreateVault(RootKeyArn=ARN)
    assert fake.calls == [] and not (tmp_path / "a" / "vault.kms").exists()


def test_a_refused_unwrap_is_exit_5_and_recorded_without_the_key(vault: Path, fake: FakeKms) -> None:
    fake.refuse = errors.DisabledException(f"{ARN} is disabled.")
    with pytest.raises(errors.RootKeyUnavailableException) as e:
        service(vault).ListKeys()
    assert e.value.exit_code == 5 and e.value.remote == "DisabledException"
    assert "DisabledException" in e.value.message and ARN in e.value.message and "\n" not in e.value.message
    record = audit(vault)[-1]
    assert record["keyed"] is False and record["errorCode"] == "RootKeyUnavailableException"
    assert record["eventName"] == "ListKeys"
    fake.refuse = None
    verified = service(vault).VerifyAuditLog()
    assert len(verified["Unauthenticated"]) == 1


def test_an_unreachable_kms_is_exit_10_and_passes_through(vault: Path, fake: FakeKms) -> None:
    from kmscli.remote.client import RemoteError

    fake.refuse = RemoteError("EndpointConnectionError", "cannot reach AWS KMS", errors.EXIT_REMOTE)
    with pytest.raises(RemoteError) as e:
        service(vault).ListKeys()
    assert e.value.exit_code == 10 and e.value.name == "EndpointConnectionError"


def test_passwd_kms_to_kms_to_passphrase_and_back(vault: Path, fake: FakeKms) -> None:
    svc = service(vault)
    key_id = svc.CreateKey()["KeyMetadata"]["KeyId"]
    blob = enc(svc, key_id, b"old")
    before = svc.store.read_header()

    assert service(vault).ChangePassphrase(RootKeyArn=ARN2) == {"RootKeyArn": ARN2}
    after = service(vault).store.read_header()
    assert after.root_key is not None and after.root_key.arn == ARN2
    assert after.salt != before.salt and after.root_key.blob != before.root_key.blob  # type: ignore[union-attr]
    assert dec(service(vault), blob) == b"old"
    assert fake.calls[-1][1]["KeyId"] == ARN2

    service(vault).ChangePassphrase(b"new pass", CHEAP)
    header = service(vault).store.read_header()
    assert header.root_key is None and header.kdf == CHEAP
    decrypts = fake.count("Decrypt")
    assert dec(service(vault, lambda: b"new pass"), blob) == b"old"
    assert fake.count("Decrypt") == decrypts  # no KMS any more

    with pytest.raises(errors.IncorrectPassphraseException):
        service(vault, lambda: b"wrong").ChangePassphrase(RootKeyArn=ARN)
    assert service(vault, lambda: b"new pass").ChangePassphrase(RootKeyArn=ARN) == {"RootKeyArn": ARN}
    assert dec(service(vault), blob) == b"old"
    assert len(service(vault).VerifyAuditLog()["Unauthenticated"]) == 1  # the wrong passphrase


def test_passwd_back_to_a_passphrase_takes_the_default_kdf(vault: Path, fake: FakeKms,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A KMS header has no KDF settings to keep: without --kdf-* the defaults, never its zeros."""
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(P, "argon2id", lambda pw, salt, m, t, p: seen.append((m, t, p)) or b"k" * 32)
    service(vault).ChangePassphrase(b"new")
    default = F.KdfParams()
    assert seen == [(default.memory_kib, default.time_cost, default.parallelism)]


def test_passwd_root_key_with_passphrase_options_is_refused(vault: Path, fake: FakeKms) -> None:
    for args in ((b"x", None), (None, CHEAP)):
        with pytest.raises(errors.ValidationException, match="replaces the passphrase"):
            service(vault).ChangePassphrase(*args, RootKeyArn=ARN2)
    assert fake.count("GenerateDataKey") == 1


def test_a_failed_generate_data_key_in_passwd_is_recorded_and_changes_nothing(vault: Path, fake: FakeKms) -> None:
    header = service(vault).store.read_header()

    def refuse(**_: Any) -> Any:
        raise errors.AccessDeniedException("not allowed")

    fake.GenerateDataKey = refuse  # type: ignore[method-assign]
    with pytest.raises(errors.AccessDeniedException):
        service(vault).ChangePassphrase(RootKeyArn=ARN2)
    assert service(vault).store.read_header().raw == header.raw
    record = audit(vault)[-1]
    assert record["eventName"] == "ChangePassphrase" and record["errorCode"] == "AccessDeniedException"
    assert record["keyed"] is True and record["requestParameters"] == {"rootKeyArn": ARN2}


def test_the_kek_and_vault_key_are_nowhere_in_the_files(vault: Path, fake: FakeKms) -> None:
    svc = service(vault)
    svc.CreateKey()
    header = svc.store.read_header()
    assert header.root_key is not None
    kek = fake.blobs[header.root_key.blob][0]
    vault_key = F.unwrap_vault_key(header, kek)
    for f in vault.parent.iterdir():
        data = f.read_bytes()
        for secret in (kek, vault_key, kek.hex().encode(), vault_key.hex().encode()):
            assert secret not in data, f.name


def test_a_header_naming_no_arn_is_corrupt_before_any_kms_call(vault: Path, fake: FakeKms) -> None:
    root = F.RootKey(arn="not an arn", blob=b"b", root_id=os.urandom(16))
    with pytest.raises(errors.VaultCorruptException, match="names no KMS key ARN"):
        rootkey.unwrap(root)
    assert fake.count("Decrypt") == 0
