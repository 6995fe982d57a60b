"""``init --root-key`` and ``passwd --root-key``: the vault key wrapped by a key of a real remote KMS.

Two real KMSs, both on loopback: moto's server (started once for the module)
and a second ``kmscli serve`` (tests/serve/conftest.py's ``serving``), which
answers AWS's state and policy rules (a disabled key, a revoked grant of
access), which moto does not check on Decrypt. kmscli reaches either as AWS
KMS itself, through botocore's endpoint resolution: ``AWS_ENDPOINT_URL_KMS``.
No passphrase is in the environment of a root-key vault's commands.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, clean_env, fails, kmscli_command, ok

boto3 = pytest.importorskip("boto3")

from tests.serve.conftest import Served, ServerProcess, aws_free_env, create_credential, serving  # noqa: E402

REGION = "us-east-1"
MOTO_SERVER = Path(sys.executable).with_name("moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Moto:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                            region_name=REGION).client("kms", endpoint_url=url)

    def new_key(self) -> str:
        return str(self.client.create_key()["KeyMetadata"]["Arn"])


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    if not MOTO_SERVER.exists():
        pytest.skip("moto's server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=aws_free_env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S  # a hang guard: the loop ends once the port answers
        while not listening(port):
            assert proc.poll() is None, f"moto_server exited {proc.returncode}"
            assert time.monotonic() < deadline, "moto_server never listened"
            time.sleep(0.05)
        yield Moto(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=HANG_GUARD_S)


def vault_env(folder: Path, url: str, **extra: str) -> dict[str, str]:
    """kmscli's environment for a root-key vault: no passphrase source, the KMS at ``url`` as AWS KMS."""
    env = aws_free_env(KMSCLI_VAULT=str(folder / "vault.kms"), KMSCLI_RUNTIME_DIR=str(folder / "run"),
                       AWS_ENDPOINT_URL_KMS=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, input: bytes = b"", **changes: str | None) -> subprocess.CompletedProcess:
    e = dict(env)
    for k, v in changes.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return subprocess.run([*kmscli_command(), *args], input=input, capture_output=True, env=e,
                          timeout=HANG_GUARD_S, start_new_session=True)


def header_of(vault: Path) -> bytes:
    with sqlite3.connect(f"file:{vault}?mode=ro", uri=True) as conn:
        return bytes(conn.execute("SELECT raw FROM header").fetchone()[0])


def set_header(vault: Path, raw: bytes) -> None:
    conn = sqlite3.connect(str(vault))
    try:
        conn.execute("UPDATE header SET raw = ? WHERE id = 1", (raw,))
        conn.commit()
    finally:
        conn.close()


def audit(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]


@pytest.fixture
def rooted(tmp_path: Path, moto: Moto) -> tuple[dict[str, str], str, str]:
    """A vault whose root key is a moto key, with a key ``alias/app``: (env, root ARN, app key id)."""
    arn = moto.new_key()
    env = vault_env(tmp_path, moto.url)
    ok(run(env, "init", "--root-key", arn))
    key_id = ok(run(env, "keys", "create", "--alias", "alias/app")).stdout.decode().strip()
    return env, arn, key_id


# -- init, use, what the file holds -----------------------------------------------------------
def test_init_and_use_with_no_passphrase_anywhere(tmp_path: Path, moto: Moto) -> None:
    arn = moto.new_key()
    env = vault_env(tmp_path, moto.url)
    assert not any(k.startswith("KMSCLI_PASS") or k.startswith("KMSCLI_NEW") for k in env)
    r = ok(run(env, "init", "--root-key", arn))
    assert r.stderr.decode().endswith(f"its key is wrapped by the KMS key {arn}\n")
    key_id = ok(run(env, "keys", "create", "--alias", "alias/app")).stdout.decode().strip()
    ct = ok(run(env, "encrypt", "--key", "alias/app", input=b"secret data")).stdout
    assert ok(run(env, "decrypt", input=ct)).stdout == b"secret data"
    # A passphrase in the environment is ignored, never asked for or checked.
    assert ok(run(env, "decrypt", input=ct, KMSCLI_PASSPHRASE="anything at all")).stdout == b"secret data"
    records = audit(tmp_path)
    assert records[0]["eventName"] == "CreateVault" and records[0]["requestParameters"]["rootKeyArn"] == arn
    assert [r["eventName"] for r in records[1:]] == ["CreateKey", "Encrypt", "Decrypt", "Decrypt"]
    assert all(r["keyed"] for r in records)
    assert ok(run(env, "keys", "describe", key_id, "--json")).stdout
    ok(run(env, "audit", "verify"))


def test_the_header_names_the_key_and_the_files_never_hold_the_kek(tmp_path: Path, moto: Moto) -> None:
    from kmscli.vault import format as F

    arn = moto.new_key()
    env = vault_env(tmp_path, moto.url)
    ok(run(env, "init", "--root-key", arn))
    ok(run(env, "keys", "create"))
    raw = header_of(tmp_path / "vault.kms")
    header = F.parse_records_header(raw)
    assert raw[10] == F.KDF_KMS and header.root_key is not None and header.root_key.arn == arn
    assert header.root_key.context == {"kmscli:vault": raw[23:39].hex()}
    # The KEK, as the KMS gives it back for the blob and context the header holds:
    kek = moto.client.decrypt(CiphertextBlob=header.root_key.blob, EncryptionContext=header.root_key.context,
                              KeyId=arn)["Plaintext"]
    vault_key = F.unwrap_vault_key(header, kek)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"vault.kms", "audit.jsonl"}
    for p in files:
        data = p.read_bytes()
        for secret in (kek, vault_key, kek.hex().encode(), vault_key.hex().encode()):
            assert secret not in data, p


def test_unlock_gives_a_session_that_needs_no_kms(rooted: tuple[dict[str, str], str, str]) -> None:
    env, _arn, _key = rooted
    ct = ok(run(env, "encrypt", "--key", "alias/app", input=b"x")).stdout
    export = ok(run(env, "unlock", "--ttl", "5m")).stdout.decode().strip()
    assert export.startswith("export KMSCLI_SESSION=")
    session = export.split("=", 1)[1]
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        # The session holds the vault key: the KMS may be gone.
        assert ok(run(env, "decrypt", input=ct, KMSCLI_SESSION=session, AWS_ENDPOINT_URL_KMS=dead)).stdout == b"x"
        # ... and a session never changes the root key.
        line = fails(run(env, "passwd", "--root-key", _arn, KMSCLI_SESSION=session), 5, "InvalidSessionException")
        assert "never runs through a session" in line
    finally:
        ok(run(env, "lock", KMSCLI_SESSION=session))


# -- failures ------------------------------------------------------------------------------
def test_an_unreachable_kms_is_exit_10(rooted: tuple[dict[str, str], str, str]) -> None:
    env, _arn, _key = rooted
    dead = f"http://127.0.0.1:{free_port()}"
    line = fails(run(env, "keys", "list", AWS_ENDPOINT_URL_KMS=dead, AWS_MAX_ATTEMPTS="1"), 10,
                 "EndpointConnectionError")
    assert "cannot reach AWS KMS" in line


def test_absent_credentials_are_exit_10(rooted: tuple[dict[str, str], str, str]) -> None:
    env, _arn, _key = rooted
    line = fails(run(env, "keys", "list", AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None), 10,
                 "NoCredentialsError")
    assert "no usable AWS credentials" in line


def test_a_tampered_blob_is_exit_5_and_recorded(rooted: tuple[dict[str, str], str, str], tmp_path: Path) -> None:
    from kmscli.vault import format as F

    env, arn, _key = rooted
    vault = tmp_path / "vault.kms"
    good = header_of(vault)
    root = F.parse_records_header(good).root_key
    assert root is not None
    flipped = bytearray(root.blob)
    flipped[-1] ^= 1
    set_header(vault, _rebuilt(good, arn, bytes(flipped)))
    line = fails(run(env, "keys", "list"), 5, "RootKeyUnavailableException")
    assert "InvalidCiphertextException" in line and arn in line
    set_header(vault, good)
    report = ok(run(env, "audit", "verify")).stderr.decode()
    assert "1 written without the key" in report or "unauthenticated" in report, report
    failed = [r for r in audit(tmp_path) if not r["keyed"]]
    assert [(r["eventName"], r["errorCode"]) for r in failed] == [("ListKeys", "RootKeyUnavailableException")]


def _rebuilt(raw: bytes, arn: str, blob: bytes, *, root_id: bytes | None = None, wrap: bytes | None = None) -> bytes:
    """``raw`` with another ARN, blob, root id or wrap (nonce and wrapped key), its checksum recomputed."""
    import hashlib
    import struct

    fixed = raw[:39] if root_id is None else raw[:23] + root_id
    a = arn.encode()
    tail = raw[-92:-32] if wrap is None else wrap
    body = fixed + struct.pack(">H", len(a)) + a + struct.pack(">H", len(blob)) + blob + tail
    return body + hashlib.sha256(body).digest()


def test_a_swapped_root_key_fails_closed(tmp_path: Path, moto: Moto) -> None:
    """Another vault's ARN and blob, with or without its root id or wrapped key: never opens (exit 5 or 8)."""
    from kmscli.vault import format as F

    envs, headers = [], []
    for name in ("a", "b"):
        env = vault_env(tmp_path / name, moto.url)
        ok(run(env, "init", "--root-key", moto.new_key()))
        ok(run(env, "keys", "create", "--alias", "alias/app"))
        envs.append(env)
        headers.append(header_of(tmp_path / name / "vault.kms"))
    a, b = (F.parse_records_header(h) for h in headers)
    assert a.root_key is not None and b.root_key is not None
    vault = tmp_path / "a" / "vault.kms"
    swaps = {
        "b's ARN and blob": _rebuilt(headers[0], b.root_key.arn, b.root_key.blob),
        "b's ARN only": _rebuilt(headers[0], b.root_key.arn, a.root_key.blob),
        "b's blob only": _rebuilt(headers[0], a.root_key.arn, b.root_key.blob),
        "b's ARN, blob and root id": _rebuilt(headers[0], b.root_key.arn, b.root_key.blob, root_id=b.salt),
        "b's whole header": headers[1],
    }
    for what, raw in swaps.items():
        set_header(vault, raw)
        r = run(envs[0], "keys", "list")
        assert r.returncode in (5, 8), (what, r.returncode, r.stderr)
        assert r.stdout == b"", what
        err = r.stderr.decode()
        assert ("RootKeyUnavailableException" in err) == (r.returncode == 5), (what, err)
        assert "VaultCorruptException" in err or r.returncode == 5, (what, err)
    set_header(vault, headers[0])
    assert ok(run(envs[0], "keys", "list")).stdout.count(b"alias/app") == 1


BAD_ARNS = ("1234abcd-12ab-34cd-56ef-1234567890ab", "alias/vault", "arn:aws:kms:us-east-1:123:key/x",
            "arn:aws:iam::123456789012:user/alice", "arn:aws:kms:us-east-1:123456789012:key/not-a-key-id")


def test_a_bad_arn_is_exit_2_before_anything(tmp_path: Path) -> None:
    env = vault_env(tmp_path, f"http://127.0.0.1:{free_port()}")
    for arn in BAD_ARNS:
        line = fails(run(env, "init", "--root-key", arn), 2, "ValidationException")
        assert "full KMS key ARN or alias ARN" in line and arn in line
        assert not (tmp_path / "vault.kms").exists()
    ok(run(env, "init", *CHEAP_KDF, KMSCLI_PASSPHRASE=PASSPHRASE))
    before = header_of(tmp_path / "vault.kms")
    line = fails(run(env, "passwd", "--root-key", BAD_ARNS[1], KMSCLI_PASSPHRASE=PASSPHRASE), 2,
                 "ValidationException")
    assert "full KMS key ARN or alias ARN" in line
    assert header_of(tmp_path / "vault.kms") == before


def test_passphrase_options_with_root_key_are_exit_2(tmp_path: Path, moto: Moto) -> None:
    arn = moto.new_key()
    env = vault_env(tmp_path, moto.url)
    fails(run(env, "init", "--root-key", arn, "--kdf-memory", "8"), 2, "ValidationException")
    assert not (tmp_path / "vault.kms").exists()
    ok(run(env, "init", "--root-key", arn))
    line = fails(run(env, "passwd", "--root-key", arn, "--kdf-time", "1"), 2, "ValidationException")
    assert "replaces the passphrase" in line
    (tmp_path / "new").write_text("x\n")
    os.chmod(tmp_path / "new", 0o600)
    fails(run(env, "passwd", "--root-key", arn, "--new-passphrase-file", str(tmp_path / "new")), 2)


# -- passwd ------------------------------------------------------------------------------------
def test_passwd_every_way_keeps_old_ciphertexts(tmp_path: Path, moto: Moto) -> None:
    env = vault_env(tmp_path, moto.url)
    vault = tmp_path / "vault.kms"
    # A passphrase vault first.
    ok(run(env, "init", *CHEAP_KDF, KMSCLI_PASSPHRASE=PASSPHRASE))
    ok(run(env, "keys", "create", "--alias", "alias/app", KMSCLI_PASSPHRASE=PASSPHRASE))
    ct = ok(run(env, "encrypt", "--key", "alias/app", input=b"v1", KMSCLI_PASSPHRASE=PASSPHRASE)).stdout

    # passphrase -> KMS: needs the current passphrase.
    first = moto.new_key()
    fails(run(env, "passwd", "--root-key", first), 5, "PassphraseRequiredException")
    fails(run(env, "passwd", "--root-key", first, KMSCLI_PASSPHRASE="wrong"), 5, "IncorrectPassphraseException")
    r = ok(run(env, "passwd", "--root-key", first, KMSCLI_PASSPHRASE=PASSPHRASE))
    assert f"now wrapped by the KMS key {first}" in r.stderr.decode()
    assert ok(run(env, "decrypt", input=ct)).stdout == b"v1"
    ct2 = ok(run(env, "encrypt", "--key", "alias/app", input=b"v2")).stdout

    # KMS -> another KMS key, named by an alias ARN: the header keeps the key ARN.
    second = moto.new_key()
    moto.client.create_alias(AliasName="alias/rk-second", TargetKeyId=second.rsplit("/", 1)[1])
    alias_arn = second.rsplit(":", 1)[0] + ":alias/rk-second"
    before = header_of(vault)
    ok(run(env, "passwd", "--root-key", alias_arn))
    after = header_of(vault)
    assert second.encode() in after and first.encode() not in after and before[23:39] != after[23:39]
    for c, want in ((ct, b"v1"), (ct2, b"v2")):
        assert ok(run(env, "decrypt", input=c)).stdout == want

    # KMS -> a passphrase again.
    ok(run(env, "passwd", *CHEAP_KDF, KMSCLI_NEW_PASSPHRASE="back again"))
    assert second.encode() not in header_of(vault)
    fails(run(env, "decrypt", input=ct), 5, "PassphraseRequiredException")
    for c, want in ((ct, b"v1"), (ct2, b"v2")):
        assert ok(run(env, "decrypt", input=c, KMSCLI_PASSPHRASE="back again")).stdout == want
    events = [(r["eventName"], r.get("errorCode"), (r["responseElements"] or {}).get("rootKeyArn"))
              for r in audit(tmp_path) if r["eventName"] == "ChangePassphrase"]
    assert events == [("ChangePassphrase", "PassphraseRequiredException", None),
                      ("ChangePassphrase", "IncorrectPassphraseException", None),
                      ("ChangePassphrase", None, first), ("ChangePassphrase", None, second),
                      ("ChangePassphrase", None, None)]
    ok(run(env, "audit", "verify", KMSCLI_PASSPHRASE="back again"))


def test_passwd_to_a_key_the_kms_refuses_changes_nothing(rooted: tuple[dict[str, str], str, str],
                                                        tmp_path: Path, moto: Moto) -> None:
    env, arn, _key = rooted
    before = header_of(tmp_path / "vault.kms")
    missing = arn.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    r = run(env, "passwd", "--root-key", missing)
    assert r.returncode == 3 and b"NotFoundException" in r.stderr, r.stderr
    assert header_of(tmp_path / "vault.kms") == before
    record = audit(tmp_path)[-1]
    assert (record["eventName"], record["errorCode"], record["keyed"]) == ("ChangePassphrase", "NotFoundException",
                                                                             True)


def test_a_passphrase_vault_never_imports_botocore(tmp_path: Path) -> None:
    env = clean_env(KMSCLI_VAULT=str(tmp_path / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE)
    ok(run(env, "init", *CHEAP_KDF))
    code = ("import sys; from kmscli.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3')), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, "keys", "list"], capture_output=True, env=env,
                       timeout=HANG_GUARD_S, start_new_session=True)
    assert r.returncode == 0 and r.stderr.decode().strip().splitlines()[-1] == "[]", r.stderr


# -- a second kmscli serve as the KMS: AWS's state and policy rules, serve unattended -----------
def test_against_kmscli_serve(tmp_path: Path) -> None:
    with serving(tmp_path / "kms", users=("alice", "bob")) as kms:
        _against(kms, tmp_path / "vault")


def _against(kms: Served, folder: Path) -> None:
    client = kms.client("alice")
    root = client.create_key()["KeyMetadata"]["Arn"]
    alice = kms.creds["alice"]
    env = vault_env(folder, kms.url, AWS_ACCESS_KEY_ID=alice.access_key_id, AWS_SECRET_ACCESS_KEY=alice.secret)

    def decrypts_of_the_root_key() -> int:
        return sum(1 for r in kms.audit() if r["eventName"] == "Decrypt" and not r.get("errorCode")
                   and "kmscli:vault" in (r["requestParameters"].get("encryptionContext") or {}))

    ok(run(env, "init", "--root-key", root))
    n = decrypts_of_the_root_key()
    ok(run(env, "keys", "create", "--alias", "alias/app"))  # a write: opened twice, one KMS call
    assert decrypts_of_the_root_key() == n + 1
    ct = ok(run(env, "encrypt", "--key", "alias/app", input=b"served")).stdout
    assert decrypts_of_the_root_key() == n + 2

    # Credentials the KMS does not know, or a wrong secret: exit 10, naming its exception.
    fails(run(env, "keys", "list", AWS_ACCESS_KEY_ID="AKIAUNKNOWNUNKNOWN00"), 10, "UnrecognizedClientException")
    fails(run(env, "keys", "list", AWS_SECRET_ACCESS_KEY="wrong" * 8), 10, "InvalidSignatureException")

    # The root key disabled: exit 5, naming DisabledException and the key; enabled again: it opens.
    client.disable_key(KeyId=root)
    line = fails(run(env, "decrypt", input=ct), 5, "RootKeyUnavailableException")
    assert "DisabledException" in line and root in line
    client.enable_key(KeyId=root)
    assert ok(run(env, "decrypt", input=ct)).stdout == b"served"

    # Access revoked: a key policy that lets alice alone use the key locks bob's machine out.
    account = kms.account
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*",
                                                      "Principal": {"AWS": f"arn:aws:iam::{account}:user/alice"}}]}
    bob = kms.creds["bob"]
    as_bob = {"AWS_ACCESS_KEY_ID": bob.access_key_id, "AWS_SECRET_ACCESS_KEY": bob.secret}
    assert ok(run(env, "decrypt", input=ct, **as_bob)).stdout == b"served"
    client.put_key_policy(KeyId=root, PolicyName="default", Policy=json.dumps(policy),
                          BypassPolicyLockoutSafetyCheck=True)
    line = fails(run(env, "decrypt", input=ct, **as_bob), 5, "RootKeyUnavailableException")
    assert "AccessDeniedException" in line and root in line
    unkeyed = [r for r in audit(folder) if not r["keyed"]]
    assert [(r["eventName"], r["errorCode"]) for r in unkeyed] == [("Decrypt", "RootKeyUnavailableException")] * 2

    # kmscli serve over the root-key vault starts unattended: no passphrase, no terminal.
    cred = create_credential(env, "carol")
    server = ServerProcess(["--port", "0", "--workers", "1"], env)
    try:
        from tests.serve.conftest import make_client

        served = make_client(server.url, cred.access_key_id, cred.secret, region="local")
        blob = served.encrypt(KeyId="alias/app", Plaintext=b"over the wire")["CiphertextBlob"]
        assert served.decrypt(CiphertextBlob=blob)["Plaintext"] == b"over the wire"
    finally:
        server.assert_clean_stop()
    ok(run(env, "audit", "verify"))
