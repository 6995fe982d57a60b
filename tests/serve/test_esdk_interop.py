"""kmscli's ESDK messages and the AWS Encryption SDK's CLI, through a ``kmscli serve`` standing in for AWS KMS.

kmscli in remote mode (``--endpoint``) writes what ``aws-encryption-cli``
decrypts, and decrypts what it writes: 0 bytes, 1 byte, frame boundaries
(kmscli's 1 MiB frames, the SDK's 4096-byte ones), 100 MB; with and without
encryption context; the signed and the unsigned committing suite. The SDK
reaches the server through ``AWS_ENDPOINT_URL_KMS`` and signs for the region
in the key ARN. Then the vault's own ``--format esdk`` (its data key wrapped by
a vault key the SDK unwraps through ``serve``), the move of vault ciphertexts to
a remote key and back (``reencrypt``), and bad input: each one line, its exit
code, and no output file left behind.

The SDK's CLI exits 0 even when it fails; its success is judged by its output
file, byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CHEAP_KDF, HANG_GUARD_S, PASSPHRASE, clean_env, kmscli_command
from tests.serve.conftest import VENV_BIN, Served, aws_free_env, ok

ESDK = VENV_BIN / "aws-encryption-cli"
POLICY = ("--commitment-policy", "require-encrypt-require-decrypt")
UNSIGNED_SUITE = "AES_256_GCM_HKDF_SHA512_COMMIT_KEY"
MIB = 1 << 20
SDK_FRAME = 4096

pytestmark = pytest.mark.skipif(not ESDK.exists(), reason="aws-encryption-cli is not installed")


def remote_env(served: Served, home: Path, **extra: str) -> dict[str, str]:
    """A kmscli environment in remote mode: an empty home, the endpoint and alice's credential, nothing else."""
    home.mkdir(exist_ok=True)
    env = served.aws_env(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_RUNTIME_DIR=str(home / "run"),
                         KMSCLI_ENDPOINT=served.url, **extra)
    env.pop("AWS_ENDPOINT_URL_KMS")  # kmscli needs only its own endpoint
    return env


def kmscli(env: dict[str, str], *args: str, input: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([*kmscli_command(), *args], input=input, capture_output=True, env=env,
                          timeout=HANG_GUARD_S, start_new_session=True)


def sdk(served: Served, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ESDK), *args, *POLICY, "-S"], capture_output=True, cwd=cwd, env=served.aws_env(),
                          timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL, start_new_session=True)


def one_error_line(r: subprocess.CompletedProcess, code: int, name: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, err)
    assert err.count("\n") == 1 and err.startswith(f"kmscli: {name}: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("remote-home")


@pytest.fixture(scope="module")
def key_arn(served: Served, home: Path) -> str:
    env = remote_env(served, home)
    key_id = ok(kmscli(env, "keys", "create", "--alias", "alias/team", "-d", "esdk interop")).stdout.decode().strip()
    meta = json.loads(ok(kmscli(env, "keys", "describe", key_id, "--json")).stdout)["KeyMetadata"]
    assert meta["Arn"].startswith(f"arn:aws:kms:us-east-1:{served.account}:key/")
    return str(meta["Arn"])


SIZES = [0, 1, SDK_FRAME - 1, SDK_FRAME, SDK_FRAME + 1, MIB - 1, MIB, MIB + 1, 2 * MIB + 7]
#: (signed, context): both suites, with and without context. The SDK's CLI takes a whole folder in one run
#: (it starts in seconds), so each case is one SDK run over every size.
CASES = [(True, {"purpose": "interop", "team": "web"}), (False, {}), (True, {}), (False, {"purpose": "interop"})]
CASE_IDS = ["signed-context", "unsigned-plain", "signed-plain", "unsigned-context"]


def context_args(flag: str, context: dict[str, str]) -> list[str]:
    """kmscli repeats its flag per pair; the SDK's CLI takes its flag once, then every pair."""
    pairs = [f"{k}={v}" for k, v in sorted(context.items())]
    if flag == "--encryption-context":
        return [flag, *pairs] if pairs else []
    return [a for pair in pairs for a in (flag, pair)]


@pytest.mark.parametrize(("signed", "context"), CASES, ids=CASE_IDS)
def test_the_sdk_decrypts_what_kmscli_writes(served: Served, home: Path, key_arn: str, tmp_path: Path,
                                            signed: bool, context: dict[str, str]) -> None:
    (tmp_path / "in").mkdir()
    data = {size: os.urandom(size) for size in SIZES}
    env = remote_env(served, home)
    for size, plain in data.items():
        enc = ok(kmscli(env, "encrypt", "-k", "alias/team", *context_args("-c", context),
                        *([] if signed else ["--unsigned"]), input=plain)).stdout
        assert enc[:3] == (b"\x02\x05\x78" if signed else b"\x02\x04\x78")  # version 2, a committing suite
        (tmp_path / "in" / f"{size}.esdk").write_bytes(enc)
    (tmp_path / "out").mkdir()
    ok(sdk(served, tmp_path, "--decrypt", "-i", "in", "-r", "-o", "out", "--suffix", ".plain",
           "--wrapping-keys", f"key={key_arn}", *context_args("--encryption-context", context)))
    for size, plain in data.items():
        assert (tmp_path / "out" / f"{size}.esdk.plain").read_bytes() == plain, size


@pytest.mark.parametrize(("signed", "context"), CASES, ids=CASE_IDS)
def test_kmscli_decrypts_what_the_sdk_writes(served: Served, home: Path, key_arn: str, tmp_path: Path,
                                            signed: bool, context: dict[str, str]) -> None:
    (tmp_path / "in").mkdir()
    sizes = [0, 1, SDK_FRAME - 1, SDK_FRAME, SDK_FRAME + 1, 3 * SDK_FRAME, MIB + 1]
    data = {size: os.urandom(size) for size in sizes}
    for size, plain in data.items():
        (tmp_path / "in" / str(size)).write_bytes(plain)
    (tmp_path / "out").mkdir()
    ok(sdk(served, tmp_path, "--encrypt", "-i", "in", "-r", "-o", "out", "--wrapping-keys", f"key={key_arn}",
           *context_args("--encryption-context", context),
           *([] if signed else ["--algorithm", UNSIGNED_SUITE])))
    env = remote_env(served, home)
    for size, plain in data.items():
        message = tmp_path / "out" / f"{size}.encrypted"
        assert ok(kmscli(env, "decrypt", "-i", str(message), *context_args("-c", context))).stdout == plain, size
    message = tmp_path / "out" / f"{SDK_FRAME}.encrypted"
    # --context lists pairs the message must carry, as the SDK's CLI: one it lacks is exit 6 and no file.
    r = kmscli(env, "decrypt", "-i", str(message), "-c", "purpose=other", "-o", str(tmp_path / "no"))
    one_error_line(r, 6, "InvalidCiphertextException")
    assert not (tmp_path / "no").exists()
    # inspect reads the header without a KMS and says which suite it is.
    doc = json.loads(ok(kmscli(clean_env(), "inspect", str(message), "--json")).stdout)
    assert doc["AlgorithmSuiteId"] == ("0x0578" if signed else "0x0478") and doc["Signed"] is signed
    assert doc["EncryptedDataKeys"][0]["ProviderInfo"] == key_arn and doc["PlaintextBytes"] == SDK_FRAME
    assert doc["FrameLength"] == SDK_FRAME and doc["Frames"] == 2


def test_a_hundred_megabytes_both_ways(served: Served, home: Path, key_arn: str, tmp_path: Path) -> None:
    data = os.urandom(100 * 1000 * 1000)
    (tmp_path / "big").write_bytes(data)
    env = remote_env(served, home)
    ok(kmscli(env, "encrypt", "-k", key_arn, "-c", "size=100MB", "-i", str(tmp_path / "big"), "-o",
              str(tmp_path / "big.kmscli.esdk")))
    ok(sdk(served, tmp_path, "--decrypt", "-i", "big.kmscli.esdk", "-o", "big.by-sdk", "--wrapping-keys",
           f"key={key_arn}"))
    assert (tmp_path / "big.by-sdk").read_bytes() == data
    (tmp_path / "big.by-sdk").unlink()
    ok(sdk(served, tmp_path, "--encrypt", "-i", "big", "-o", "big.sdk.esdk", "--wrapping-keys", f"key={key_arn}",
           "--encryption-context", "size=100MB"))
    ok(kmscli(env, "decrypt", "-c", "size=100MB", "-i", str(tmp_path / "big.sdk.esdk"), "-o",
              str(tmp_path / "big.by-kmscli")))
    assert (tmp_path / "big.by-kmscli").read_bytes() == data


def test_one_remote_call_per_message_and_nothing_written_locally(served: Served, tmp_path: Path,
                                                                 key_arn: str) -> None:
    home = tmp_path / "empty-home"
    env = remote_env(served, home)
    before = len(served.audit())
    enc = ok(kmscli(env, "encrypt", "-k", "alias/team", "-c", "calls=counted", input=os.urandom(3 * MIB))).stdout
    ok(kmscli(env, "decrypt", input=enc))
    calls = [r for r in served.audit()[before:] if r.get("requestParameters", {}).get(
        "encryptionContext", {}).get("calls") == "counted"]
    assert [r["eventName"] for r in calls] == ["GenerateDataKey", "Decrypt"]
    assert all(r["userIdentity"]["userName"] == "alice" for r in calls)
    # The message's context, public key included, is what the KMS bound the data key to.
    assert "aws-crypto-public-key" in calls[0]["requestParameters"]["encryptionContext"]
    assert sorted(p.name for p in home.rglob("*")) == []


def test_the_vaults_own_esdk_messages_open_with_the_sdk_through_serve(served: Served, tmp_path: Path) -> None:
    """--format esdk on the vault: its data key is wrapped by a vault key; the SDK unwraps it through serve."""
    local = {**served.env, "KMSCLI_REGION": "us-east-1"}  # the SDK signs for the ARN's region
    key = ok(kmscli(local, "keys", "create")).stdout.decode().strip()
    arn = json.loads(ok(kmscli(local, "keys", "describe", key, "--json")).stdout)["KeyMetadata"]["Arn"]
    data = os.urandom(MIB + 3)
    (tmp_path / "p").write_bytes(data)
    ok(kmscli(local, "encrypt", "-k", key, "--format", "esdk", "-c", "app=vault", "-i", str(tmp_path / "p"),
              "-o", str(tmp_path / "p.esdk")))
    ok(sdk(served, tmp_path, "--decrypt", "-i", "p.esdk", "-o", "p.out", "--wrapping-keys", f"key={arn}",
           "--encryption-context", "app=vault"))
    assert (tmp_path / "p.out").read_bytes() == data
    assert ok(kmscli(local, "decrypt", "-i", str(tmp_path / "p.esdk"), "-c", "app=vault")).stdout == data
    # The vault recorded what happened: a data key made, then unwrapped (by the SDK through serve, and by us).
    names = [r["eventName"] for r in served.audit() if r.get("requestParameters", {}).get(
        "encryptionContext", {}).get("app") == "vault"]
    assert names == ["GenerateDataKey", "Decrypt", "Decrypt"]


# -- moving a vault's ciphertexts to the shared KMS, and back -------------------------------------------
@pytest.fixture
def workstation(tmp_path: Path) -> dict[str, str]:
    """A developer's own vault (passphrase in the environment), in a folder of its own."""
    env = clean_env(KMSCLI_VAULT=str(tmp_path / "own" / "vault.kms"), KMSCLI_PASSPHRASE=PASSPHRASE)
    ok(kmscli(env, "init", *CHEAP_KDF))
    ok(kmscli(env, "keys", "create", "--alias", "alias/mine"))
    return env


def test_a_vault_ciphertext_moves_to_the_remote_key_and_back(served: Served, key_arn: str, tmp_path: Path,
                                                              workstation: dict[str, str]) -> None:
    data = os.urandom(2 * MIB + 11)
    own = ok(kmscli(workstation, "encrypt", "-k", "alias/mine", "-c", "f=db", input=data)).stdout
    (tmp_path / "db.kms").write_bytes(own)
    both = {**workstation, **remote_env(served, tmp_path / "h1")}
    both["KMSCLI_VAULT"] = workstation["KMSCLI_VAULT"]
    ok(kmscli(both, "reencrypt", "-k", "alias/team", "--source-context", "f=db", "-c", "f=db", "-i",
              str(tmp_path / "db.kms"), "-o", str(tmp_path / "db.esdk")))
    moved = (tmp_path / "db.esdk").read_bytes()
    assert moved[:1] == b"\x02"
    # Read back from another, empty home folder with only the endpoint and a credential...
    assert ok(kmscli(remote_env(served, tmp_path / "h2"), "decrypt", "-i", str(tmp_path / "db.esdk"))).stdout == data
    # ... and by the SDK.
    ok(sdk(served, tmp_path, "--decrypt", "-i", "db.esdk", "-o", "db.sdk", "--wrapping-keys", f"key={key_arn}"))
    assert (tmp_path / "db.sdk").read_bytes() == data
    # Back into the vault: kmscli's own format again, under the vault's key.
    ok(kmscli(both, "reencrypt", "--to-vault", "-k", "alias/mine", "-c", "f=db", "-i", str(tmp_path / "db.esdk"),
              "-o", str(tmp_path / "back.kms")))
    back = (tmp_path / "back.kms").read_bytes()
    assert back.startswith(b"\x89KMS")
    assert ok(kmscli(workstation, "decrypt", "-i", str(tmp_path / "back.kms"), "-c", "f=db")).stdout == data


def test_a_move_whose_source_fails_leaves_nothing(served: Served, tmp_path: Path, key_arn: str,
                                                   workstation: dict[str, str]) -> None:
    data = os.urandom(3 * MIB)
    own = ok(kmscli(workstation, "encrypt", "-k", "alias/mine", input=data)).stdout
    both = {**remote_env(served, tmp_path / "h"), "KMSCLI_VAULT": workstation["KMSCLI_VAULT"],
            "KMSCLI_PASSPHRASE": PASSPHRASE}
    cut = own[: len(own) - 40]  # the final chunk is gone
    (tmp_path / "cut.kms").write_bytes(cut)
    r = kmscli(both, "reencrypt", "-k", "alias/team", "-i", str(tmp_path / "cut.kms"), "-o", str(tmp_path / "out"))
    one_error_line(r, 6, "InvalidCiphertextException")
    assert not (tmp_path / "out").exists()
    # To stdout, what came out before the failure is no message at all: it does not decrypt.
    r = kmscli(both, "reencrypt", "-k", "alias/team", input=cut)
    assert r.returncode == 6
    assert kmscli(remote_env(served, tmp_path / "h"), "decrypt", input=r.stdout).returncode == 6
    # A wrong passphrase stops the vault's half: exit 5, no file, and nothing reached the remote key.
    r = kmscli({**both, "KMSCLI_PASSPHRASE": "wrong"}, "reencrypt", "-k", "alias/team", "-i",
               str(tmp_path / "cut.kms"), "-o", str(tmp_path / "out"))
    assert r.returncode == 5 and not (tmp_path / "out").exists()


def test_a_session_does_the_vaults_half(served: Served, tmp_path: Path, key_arn: str,
                                        workstation: dict[str, str]) -> None:
    data = os.urandom(MIB + 5)
    own = ok(kmscli(workstation, "encrypt", "-k", "alias/mine", input=data)).stdout
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unlocked = {**workstation, "KMSCLI_RUNTIME_DIR": str(runtime)}
    exports = ok(kmscli(unlocked, "unlock", "--ttl", "2m")).stdout.decode()
    token = exports.split("KMSCLI_SESSION=", 1)[1].split()[0].strip("'\";")
    try:
        env = {**remote_env(served, tmp_path / "h"), "KMSCLI_VAULT": workstation["KMSCLI_VAULT"],
               "KMSCLI_RUNTIME_DIR": str(runtime), "KMSCLI_SESSION": token}
        moved = ok(kmscli(env, "reencrypt", "-k", "alias/team", input=own)).stdout
        assert ok(kmscli(remote_env(served, tmp_path / "h2"), "decrypt", input=moved)).stdout == data
        back = ok(kmscli(env, "reencrypt", "--to-vault", "-k", "alias/mine", "--armor", "--format", "kmscli",
                         input=moved)).stdout
        assert back.startswith(b"-----BEGIN KMSCLI")
        assert ok(kmscli(workstation, "decrypt", input=back)).stdout == data
    finally:
        kmscli({**unlocked, "KMSCLI_SESSION": token}, "lock")


# -- bad input ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(served: Served, home: Path, key_arn: str) -> bytes:
    return bytes(ok(kmscli(remote_env(served, home), "encrypt", "-k", key_arn, "--unsigned",
                           input=os.urandom(MIB + 100))).stdout)


def test_an_unknown_suite_is_refused_naming_it(served: Served, home: Path, sample: bytes, tmp_path: Path) -> None:
    bad = sample[:1] + b"\x99\x99" + sample[3:]
    r = kmscli(remote_env(served, home), "decrypt", "-o", str(tmp_path / "o"), input=bad)
    assert "0x9999" in one_error_line(r, 6, "InvalidCiphertextException")
    assert not (tmp_path / "o").exists()


def test_a_non_committing_message_is_refused_as_the_sdk_default_policy(served: Served, home: Path, key_arn: str,
                                                                      tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"legacy")
    r = subprocess.run([str(ESDK), "--encrypt", "-i", "p", "-o", "p.v1", "--wrapping-keys", f"key={key_arn}",
                        "--commitment-policy", "forbid-encrypt-allow-decrypt", "-S"], capture_output=True,
                       cwd=tmp_path, env=served.aws_env(), timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    assert (tmp_path / "p.v1").read_bytes()[:1] == b"\x01", r.stderr  # message format version 1
    r = kmscli(remote_env(served, home), "decrypt", "-i", str(tmp_path / "p.v1"), "-o", str(tmp_path / "o"))
    err = one_error_line(r, 6, "InvalidCiphertextException")
    assert "0x0378" in err and "commit" in err
    assert not (tmp_path / "o").exists()


def test_a_truncated_frame_leaves_no_file(served: Served, home: Path, sample: bytes, tmp_path: Path) -> None:
    for cut in (len(sample) - 1, len(sample) - 200, MIB // 2, 300):
        r = kmscli(remote_env(served, home), "decrypt", "-o", str(tmp_path / "o"), input=sample[:cut])
        one_error_line(r, 6, "InvalidCiphertextException")
        assert not (tmp_path / "o").exists()


def test_a_data_key_for_another_provider_is_refused(served: Served, home: Path) -> None:
    from kmscli.crypto import esdk

    def raw_provider(context: dict[str, str]) -> tuple[bytes, list[esdk.EncryptedDataKey]]:
        return os.urandom(32), [esdk.EncryptedDataKey("raw-aes", "team-wrapping-key", os.urandom(60))]

    import io

    out = io.BytesIO()
    esdk.encrypt(io.BytesIO(b"not for kms"), out, context={}, get_data_key=raw_provider, suite=esdk.SUITE_COMMIT)
    r = kmscli(remote_env(served, home), "decrypt", input=out.getvalue())
    assert "raw-aes" in one_error_line(r, 6, "InvalidCiphertextException")


def test_a_vault_ciphertext_is_refused_in_remote_mode_with_the_way_out(served: Served, home: Path,
                                                                      workstation: dict[str, str]) -> None:
    own = ok(kmscli(workstation, "encrypt", "-k", "alias/mine", input=b"x")).stdout
    r = kmscli(remote_env(served, home), "decrypt", input=own)
    assert "reencrypt" in one_error_line(r, 2, "ValidationException")


def test_format_options_that_cannot_be_are_usage_errors(served: Served, home: Path) -> None:
    env = remote_env(served, home)
    for args in (["encrypt", "-k", "alias/team", "--format", "kmscli"], ["encrypt", "-k", "alias/team", "--armor"],
                 ["encrypt", "-k", "alias/team", "--format", "pgp"]):
        one_error_line(kmscli(env, *args, input=b"x"), 2, "ValidationException")
    local = aws_free_env(KMSCLI_VAULT=str(home / "none" / "vault.kms"))
    one_error_line(kmscli(local, "encrypt", "-k", "alias/x", "--unsigned", input=b"x"), 2, "ValidationException")


def test_edit_keeps_an_esdk_message_its_key_context_and_suite(served: Served, home: Path, key_arn: str,
                                                               tmp_path: Path) -> None:
    """kmscli edit in remote mode: the message is written again under its own key, context and suite."""
    env = remote_env(served, home)
    path = tmp_path / "app.env.esdk"
    for unsigned in ([], ["--unsigned"]):
        ok(kmscli(env, "encrypt", "-k", "alias/team", "-c", "app=web", *unsigned, "-o", str(path),
                  input=b"TOKEN=old\n"))
        before = json.loads(ok(kmscli(clean_env(), "inspect", str(path), "--json")).stdout)
        ok(kmscli({**env, "EDITOR": "sed -i s/old/new/"}, "edit", str(path)))
        after = json.loads(ok(kmscli(clean_env(), "inspect", str(path), "--json")).stdout)
        assert ok(kmscli(env, "decrypt", "-i", str(path), "-c", "app=web")).stdout == b"TOKEN=new\n"
        assert after["AlgorithmSuiteId"] == before["AlgorithmSuiteId"]
        assert after["MessageId"] != before["MessageId"]
        assert after["EncryptedDataKeys"][0]["ProviderInfo"] == key_arn
        assert {k: v for k, v in after["EncryptionContext"].items() if k != "aws-crypto-public-key"} == \
            {"app": "web"}
    one_error_line(kmscli({**env, "EDITOR": "true"}, "edit", "--armor", str(path)), 2, "ValidationException")
