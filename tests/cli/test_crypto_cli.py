"""encrypt, decrypt, reencrypt, datakey and random through the real entry point."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from kmscli.errors import INVALID_CIPHERTEXT_MESSAGE
from tests.conftest import Runner, fails, ok

CHUNK = 256 * 1024


def new_key(kms: Runner, *args: str) -> str:
    return ok(kms("keys", "create", *args)).stdout.decode().strip()


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    return new_key(kms, "--alias", "alias/app")


@pytest.mark.parametrize("size", [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17])
def test_round_trip_sizes(kms: Runner, key: str, size: int) -> None:
    data = os.urandom(size)
    ct = ok(kms("encrypt", "--key", "alias/app", input=data)).stdout
    assert size < 16 or data not in ct
    assert ok(kms("decrypt", input=ct)).stdout == data


def test_context_must_match_exactly(kms: Runner, key: str) -> None:
    ct = ok(kms("encrypt", "--key", key, "-c", "app=web", "-c", "env=prod", input=b"s3cret")).stdout
    assert ok(kms("decrypt", "-c", "env=prod", "-c", "app=web", input=ct)).stdout == b"s3cret"  # order free
    for ctx in ([], ["-c", "app=web"], ["-c", "app=web", "-c", "env=dev"],
                ["-c", "app=web", "-c", "env=prod", "-c", "x=y"], ["-c", "APP=web", "-c", "env=prod"]):
        line = fails(kms("decrypt", *ctx, input=ct), 6, "InvalidCiphertextException")
        assert "context" in line


@pytest.mark.parametrize("pair", ["novalue", "=v"])
def test_bad_context_pairs(kms: Runner, key: str, pair: str) -> None:
    fails(kms("encrypt", "--key", key, "--context", pair, input=b"x"), 2, "ValidationException")


def test_context_size_limit(kms: Runner, key: str) -> None:
    fails(kms("encrypt", "--key", key, "-c", "k=" + "v" * 9000, input=b"x"), 2, "ValidationException")


def test_decrypt_key_assertion(kms: Runner, key: str) -> None:
    other = new_key(kms)
    ct = ok(kms("encrypt", "--key", key, input=b"data")).stdout
    assert ok(kms("decrypt", "--key", "alias/app", input=ct)).stdout == b"data"
    fails(kms("decrypt", "--key", other, input=ct), 6, "IncorrectKeyException")
    fails(kms("decrypt", "--key", "alias/missing", input=ct), 3)


def test_disabled_and_pending_keys_exit_4(kms: Runner, key: str) -> None:
    ct = ok(kms("encrypt", "--key", key, input=b"data")).stdout
    ok(kms("keys", "disable", key))
    fails(kms("encrypt", "--key", key, input=b"x"), 4, "DisabledException")
    fails(kms("decrypt", input=ct), 4, "DisabledException")
    fails(kms("datakey", key), 4)
    fails(kms("reencrypt", "--key", key, input=ct), 4)
    ok(kms("keys", "schedule-delete", key))
    line = fails(kms("encrypt", "--key", key, input=b"x"), 4, "KMSInvalidStateException")
    assert "pending deletion" in line
    fails(kms("decrypt", input=ct), 4, "KMSInvalidStateException")


def test_ciphertext_of_another_vault(kms: Runner, key: str, tmp_path: Path) -> None:
    ct = ok(kms("encrypt", "--key", key, input=b"data")).stdout
    other = tmp_path / "other.kms"
    ok(kms("init", "--kdf-memory", "8", "--kdf-time", "1", "--vault", str(other)))
    fails(kms("decrypt", "--vault", str(other), input=ct), 6, "InvalidCiphertextException")


@pytest.mark.parametrize("garbage", [b"", b"x", b"\x89KMS\r\n\x1a\n", os.urandom(4096)])
def test_garbage_is_invalid_ciphertext(kms: Runner, key: str, garbage: bytes) -> None:
    fails(kms("decrypt", input=garbage), 6, "InvalidCiphertextException")


def test_every_byte_flip_of_a_small_ciphertext(kms: Runner, key: str) -> None:
    """Through the CLI for a sample of positions; the unit tests flip every byte."""
    ct = ok(kms("encrypt", "--key", key, "-c", "a=b", input=b"hello")).stdout
    for i in list(range(0, len(ct), max(1, len(ct) // 12))) + [len(ct) - 1]:
        bad = bytearray(ct)
        bad[i] ^= 0x40
        fails(kms("decrypt", "-c", "a=b", input=bytes(bad)), 6, "InvalidCiphertextException")


def test_truncated_and_concatenated(kms: Runner, key: str) -> None:
    data = os.urandom(2 * CHUNK + 5)
    ct = ok(kms("encrypt", "--key", key, input=data)).stdout
    for cut in (len(ct) - 1, len(ct) - 17, len(ct) // 2, 200):
        fails(kms("decrypt", input=ct[:cut]), 6)
    fails(kms("decrypt", input=ct + ct), 6)


# -- files ------------------------------------------------------------------
def test_in_out_files(kms: Runner, key: str, tmp_path: Path) -> None:
    src = tmp_path / "plain.txt"
    src.write_bytes(b"file contents\n" * 1000)
    enc, dec = tmp_path / "c.kms", tmp_path / "p.txt"
    ok(kms("encrypt", "--key", key, "-i", str(src), "-o", str(enc)))
    ok(kms("decrypt", "-i", str(enc), "-o", str(dec)))
    assert dec.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(enc.stat().st_mode) == 0o600
    assert stat.S_IMODE(dec.stat().st_mode) == 0o600
    assert ok(kms("decrypt", "-i", "-", "-o", "-", input=enc.read_bytes())).stdout == src.read_bytes()


def test_failed_decrypt_leaves_nothing(kms: Runner, key: str, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK)
    ct = bytearray(ok(kms("encrypt", "--key", key, input=data)).stdout)
    ct[-3] ^= 1  # the last chunk fails after earlier chunks authenticated
    out = tmp_path / "out.bin"
    fails(kms("decrypt", "-o", str(out), input=bytes(ct)), 6)
    assert list(tmp_path.iterdir()) == [tmp_path / "kms"]
    out.write_bytes(b"previous contents")
    fails(kms("decrypt", "-o", str(out), input=bytes(ct)), 6)
    assert out.read_bytes() == b"previous contents"


def test_unreadable_input_unwritable_output(kms: Runner, key: str, tmp_path: Path) -> None:
    fails(kms("encrypt", "--key", key, "-i", str(tmp_path / "missing")), 2)
    fails(kms("encrypt", "--key", key, "-o", str(tmp_path / "no" / "such" / "dir" / "x"), input=b"x"), 2)


# -- armor ------------------------------------------------------------------
def test_armor_round_trip_and_shape(kms: Runner, key: str) -> None:
    data = os.urandom(5000)
    text = ok(kms("encrypt", "--key", key, "--armor", input=data)).stdout
    lines = text.decode("ascii").splitlines()
    assert lines[0].startswith("-----BEGIN ") and lines[-1].startswith("-----END ")
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert all(len(line) == 64 for line in lines[1:-2])
    assert ok(kms("decrypt", input=text)).stdout == data


@pytest.mark.parametrize("defect", ["broken line", "missing end", "trailing garbage", "bad char"])
def test_armor_defects(kms: Runner, key: str, defect: str) -> None:
    text = ok(kms("encrypt", "--key", key, "--armor", input=os.urandom(300))).stdout.decode()
    lines = text.splitlines()
    if defect == "broken line":
        lines[1] = lines[1][:40]
    elif defect == "missing end":
        lines = lines[:-1]
    elif defect == "trailing garbage":
        lines.append("garbage")
    elif defect == "bad char":
        lines[1] = "!" + lines[1][1:]
    fails(kms("decrypt", input=("\n".join(lines) + "\n").encode()), 6, "InvalidCiphertextException")


def test_armor_trailing_whitespace_is_fine(kms: Runner, key: str) -> None:
    text = ok(kms("encrypt", "--key", key, "--armor", input=b"ws")).stdout
    assert ok(kms("decrypt", input=text + b"\n  \n")).stdout == b"ws"


# -- reencrypt --------------------------------------------------------------
def test_reencrypt_to_other_key_and_context(kms: Runner, key: str) -> None:
    other = new_key(kms)
    ct = ok(kms("encrypt", "--key", key, "-c", "a=1", input=b"moving")).stdout
    moved = ok(kms("reencrypt", "--key", other, "--source-context", "a=1", "-c", "b=2", input=ct)).stdout
    assert ok(kms("decrypt", "--key", other, "-c", "b=2", input=moved)).stdout == b"moving"
    fails(kms("decrypt", "-c", "a=1", input=moved), 6)
    fails(kms("reencrypt", "--key", other, input=ct), 6)  # wrong source context
    armored = ok(kms("reencrypt", "--key", key, "--source-context", "a=1", "--armor", input=ct)).stdout
    assert armored.startswith(b"-----BEGIN")
    assert ok(kms("decrypt", input=armored)).stdout == b"moving"


def test_reencrypt_moves_to_current_material(kms: Runner, key: str) -> None:
    ct = ok(kms("encrypt", "--key", key, input=b"old material")).stdout
    ok(kms("keys", "rotate", key))
    moved = ok(kms("reencrypt", "--key", key, input=ct)).stdout
    ok(kms("keys", "rotation", key, "--min-decrypt-version", "2"))
    line = fails(kms("decrypt", input=ct), 4)
    assert "reencrypt" in line
    assert ok(kms("decrypt", input=moved)).stdout == b"old material"
    ok(kms("keys", "rotation", key, "--min-decrypt-version", "1"))
    assert ok(kms("decrypt", input=ct)).stdout == b"old material"


# -- datakey and random -----------------------------------------------------
def key_metadata(kms: Runner, key: str) -> dict:
    return json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]


@pytest.mark.parametrize(("args", "size"), [([], 32), (["--spec", "AES_128"], 16), (["--bytes", "7"], 7),
                                            (["--bytes", "1024"], 1024)])
def test_datakey(kms: Runner, key: str, args: list[str], size: int) -> None:
    # The whole GenerateDataKey response: KeyId is the key's ARN, blobs are base64.
    resp = json.loads(ok(kms("datakey", key, *args, "-c", "purpose=test", "--json")).stdout)
    assert set(resp) == {"KeyId", "KeyMaterialId", "Plaintext", "CiphertextBlob"}
    meta = key_metadata(kms, key)
    assert resp["KeyId"] == meta["Arn"] and resp["KeyId"].endswith(f":key/{key}")
    assert resp["KeyMaterialId"] == meta["CurrentKeyMaterialId"]
    plain = base64.b64decode(resp["Plaintext"], validate=True)
    assert len(plain) == size
    blob = base64.b64decode(resp["CiphertextBlob"], validate=True)
    assert ok(kms("decrypt", "-c", "purpose=test", input=blob)).stdout == plain


def test_datakey_without_plaintext(kms: Runner, key: str) -> None:
    resp = json.loads(ok(kms("datakey", key, "--no-plaintext", "--json")).stdout)
    assert set(resp) == {"KeyId", "KeyMaterialId", "CiphertextBlob"}
    meta = key_metadata(kms, key)
    assert resp["KeyId"] == meta["Arn"] and resp["KeyMaterialId"] == meta["CurrentKeyMaterialId"]
    assert len(ok(kms("decrypt", input=base64.b64decode(resp["CiphertextBlob"], validate=True))).stdout) == 32


@pytest.mark.parametrize("args", [["--bytes", "0"], ["--bytes", "1025"], ["--spec", "AES_512"],
                                  ["--spec", "AES_256", "--bytes", "16"]])
def test_datakey_bad_sizes(kms: Runner, key: str, args: list[str]) -> None:
    fails(kms("datakey", key, *args), 2, "ValidationException")


@pytest.mark.parametrize(("fmt", "decode"), [("base64", base64.b64decode), ("hex", bytes.fromhex), ("raw", None)])
def test_random(kms: Runner, fmt: str, decode) -> None:  # noqa: ANN001
    out = ok(kms("random", "32", "--format", fmt, env_remove=("KMSCLI_VAULT", "KMSCLI_PASSPHRASE"))).stdout
    data = out if decode is None else decode(out.decode().strip())
    assert len(data) == 32


@pytest.mark.parametrize("n", ["0", "1025", "x"])
def test_random_bounds(kms: Runner, n: str) -> None:
    fails(kms("random", n), 2)


def test_output_naming_a_folder_is_refused(kms: Runner, key: str, tmp_path: Path) -> None:
    for target in (f"{tmp_path}/newdir/", f"{tmp_path}/"):
        fails(kms("encrypt", "--key", key, "-o", target, input=b"x"), 2, "ValidationException")
    assert not (tmp_path / "newdir").exists()


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="pipe sizes are a Linux feature")
def test_pipes_are_enlarged_for_throughput(kms: Runner, key: str, env: dict[str, str]) -> None:
    """256 KiB chunks move through 1 MiB pipes in one read each (3x the throughput of 64 KiB pipes here)."""
    import fcntl
    import subprocess

    from tests.conftest import kmscli_command

    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    proc = subprocess.Popen([*kmscli_command(), "encrypt", "--key", key], stdin=r_in, stdout=w_out, env=env)
    os.close(r_in)
    os.close(w_out)
    os.write(w_in, b"x" * 1000)
    os.close(w_in)
    with os.fdopen(r_out, "rb") as out:
        ct = out.read()
        assert proc.wait(30) == 0
        get_size = getattr(fcntl, "F_GETPIPE_SZ", 1032)
        assert fcntl.fcntl(out.fileno(), get_size) == 1 << 20
    assert len(ct) > 1000


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_termination_mid_decrypt_leaves_no_plaintext_behind(kms: Runner, key: str, tmp_path: Path, env: dict,
                                                            sig: str) -> None:
    """`timeout` or `kill` during `decrypt -o FILE` used to leave `.FILE.<hex>.tmp` holding the plaintext
    written so far (issue 15): SIGTERM and SIGHUP now unwind as Ctrl-C does, then end the process by the
    signal, as a shell expects."""
    import signal
    import subprocess
    import time

    from tests.conftest import HANG_GUARD_S, default_signals, kmscli_command

    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(6 << 20))
    ok(kms("encrypt", "--key", key, "-i", str(plain), "-o", str(tmp_path / "c.kms")))
    blob = (tmp_path / "c.kms").read_bytes()
    out = tmp_path / "out" / "restored"
    out.parent.mkdir()
    proc = subprocess.Popen([*kmscli_command(), "decrypt", "-o", str(out)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True, preexec_fn=default_signals)
    assert proc.stdin is not None
    proc.stdin.write(blob[: len(blob) // 2])  # half: three chunks, two of them released; the rest never comes
    proc.stdin.flush()
    deadline = time.monotonic() + HANG_GUARD_S  # a guard only: the loop ends once plaintext is on disk
    while not any(p.stat().st_size for p in out.parent.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.name.startswith(".restored.") for p in out.parent.iterdir()] == [True]
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == -getattr(signal, sig), (proc.returncode, err)
    assert err.decode().strip().splitlines()[-1] == "kmscli: terminated"
    assert list(out.parent.iterdir()) == []  # neither the target nor the temporary file


def test_decrypt_says_what_is_public_and_keeps_one_message_for_the_rest(kms: Runner, key: str) -> None:
    """Issue 15: what anyone can read from the input (not a ciphertext, empty, cut in its header, the
    context keys the header holds in the clear) is said plainly; what needs the key (a tag, the wrapped
    data key, another key) keeps the one message that tells nothing apart."""
    ct = ok(kms("encrypt", "--key", key, "-c", "app=web", "-c", "env=prod", input=b"s3cret")).stdout
    plain_ct = ok(kms("encrypt", "--key", key, input=b"s3cret")).stdout
    cases = {
        b"hello\n": "the input is not a kmscli ciphertext: it begins neither with kmscli's magic bytes nor with "
                    "'-----BEGIN KMSCLI ENCRYPTED MESSAGE-----'",
        b"": "the input is empty: there is no ciphertext in it",
        ct[:40]: "the ciphertext is truncated: it ends inside its header",
    }
    for data, message in cases.items():
        assert fails(kms("decrypt", input=data), 6, "InvalidCiphertextException") == \
            f"kmscli: InvalidCiphertextException: {message}"
    line = fails(kms("decrypt", "-c", "app=web", input=ct), 6, "InvalidCiphertextException")
    assert line == ("kmscli: InvalidCiphertextException: the encryption context differs from the one the ciphertext "
                    "was made with, which has the key(s) app, env; give exactly the same pairs with --context")
    assert "prod" not in line and "web" not in line.split("which has")[1]  # keys named, values not
    line = fails(kms("decrypt", "-c", "a=b", input=plain_ct), 6, "InvalidCiphertextException")
    assert line.endswith("the ciphertext was made without an encryption context; decrypt it without --context")
    tampered = bytearray(ct)
    tampered[-1] ^= 1  # the body's last tag: only the key can tell
    assert fails(kms("decrypt", "-c", "app=web", "-c", "env=prod", input=bytes(tampered)), 6) == \
        "kmscli: InvalidCiphertextException: " + INVALID_CIPHERTEXT_MESSAGE


def test_inspect_reads_a_ciphertext_without_the_vault(kms: Runner, key: str, tmp_path: Path) -> None:
    """`kmscli inspect` (issue 15): key id, material version, context, chunk size and sizes, binary or
    armored, with no vault at all; the numbers are the ciphertext's own, measured, not trusted."""
    data = os.urandom((1 << 20) * 2 + 5)  # two full chunks and a short one
    ct = ok(kms("encrypt", "--key", key, "-c", "app=web", "-c", "env=prod", input=data)).stdout
    armored = ok(kms("encrypt", "--key", key, "--armor", input=b"hi")).stdout
    (tmp_path / "c.kms").write_bytes(ct)
    no_vault = {"KMSCLI_VAULT": str(tmp_path / "nowhere" / "vault.kms")}
    doc = json.loads(ok(kms("inspect", str(tmp_path / "c.kms"), "--json", env_update=no_vault)).stdout)
    header = doc["HeaderBytes"]
    assert doc == {"Format": 2, "Armored": False, "KeyId": key, "MaterialVersion": 1,
                   "EncryptionContext": {"app": "web", "env": "prod"}, "EncryptionContextBytes": 23,
                   "ChunkSize": 1 << 20, "HeaderBytes": header, "BodyBytes": len(ct) - header, "Chunks": 3,
                   "PlaintextBytes": len(data), "Authenticated": False}
    lines = ok(kms("inspect", env_update=no_vault, input=armored)).stdout.decode().splitlines()
    assert lines[0] == "Format\tkmscli ciphertext, version 2 (armored)" and lines[1] == f"KeyId\t{key}"
    assert "EncryptionContext\t(none)" in lines and lines[-1] == "Authenticated\tno: only decrypt proves any of this"
    big = ok(kms("encrypt", "--key", key, "-c", "k=" + "v" * 2000, input=b"x")).stdout  # context bound by digest
    doc = json.loads(ok(kms("inspect", "--json", input=big, env_update=no_vault)).stdout)
    assert doc["EncryptionContext"] is None and len(doc["EncryptionContextDigest"]) == 64
    fails(kms("inspect", input=b"hello\n", env_update=no_vault), 6, "InvalidCiphertextException")
    line = fails(kms("inspect", input=ct[: len(ct) - 7], env_update=no_vault), 6, "InvalidCiphertextException")
    assert "cut short or padded" in line
