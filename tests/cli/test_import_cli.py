"""Imported key material through the real binary, with the material made and wrapped by ``openssl`` alone.

As AWS's guide does it: ``openssl rand`` makes the material; ``openssl pkeyutl
-encrypt`` (RSAES-OAEP, one hash for the digest and MGF1) wraps it with
``WrappingPublicKey.der``; for RSA_AES_KEY_WRAP, ``openssl enc
-id-aes256-wrap-pad`` (RFC 5649) wraps the material under a fresh AES key that
``pkeyutl`` wraps in turn, and the two are concatenated. What kmscli then does
with the material is checked with openssl too (a MAC, a signature). Every bad
input of issue 17 is refused with its exception and exit code, recorded as a
failure, and leaves the key as it was. Wrapping keys are RSA_2048.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.aws.test_cli_json import check
from tests.conftest import HANG_GUARD_S, Runner, fails, ok

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("xxd") is None,
                                reason="openssl and xxd are needed")
NEEDS_FAKETIME = pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
SHA = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256", "RSA_AES_KEY_WRAP_SHA_1": "sha1",
       "RSA_AES_KEY_WRAP_SHA_256": "sha256"}


# -- openssl, as the user runs it -------------------------------------------------------------
def sh(*args: str, cwd: Path) -> bytes:
    r = subprocess.run(args, cwd=cwd, capture_output=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0, (args, r.stderr.decode(errors="replace"))
    return r.stdout


def oaep_wrap(folder: Path, public: Path, src: str, dst: str, md: str) -> None:
    sh("openssl", "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", str(public),
       "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}", "-pkeyopt", f"rsa_mgf1_md:{md}",
       "-in", src, "-out", dst, cwd=folder)


def wrap(folder: Path, params: Path, algorithm: str, src: str, dst: str = "wrapped.bin") -> Path:
    """Wrap the file ``src`` (in ``folder``) for the parameters in ``params`` with openssl; the wrapped file."""
    public = params / "WrappingPublicKey.der"
    md = SHA[algorithm]
    if algorithm.startswith("RSAES_OAEP_"):
        oaep_wrap(folder, public, src, dst, md)
        return folder / dst
    # RSA_AES_KEY_WRAP: AWS's two steps, then the concatenation.
    sh("openssl", "rand", "-out", "aes.key", "32", cwd=folder)
    hexkey = sh("xxd", "-p", "-c", "64", "aes.key", cwd=folder).decode().strip()
    sh("openssl", "enc", "-id-aes256-wrap-pad", "-K", hexkey, "-iv", "A65959A6", "-in", src,
       "-out", "wrapped_material.bin", cwd=folder)
    oaep_wrap(folder, public, "aes.key", "aes_wrapped.bin", md)
    (folder / dst).write_bytes((folder / "aes_wrapped.bin").read_bytes()
                               + (folder / "wrapped_material.bin").read_bytes())
    return folder / dst


# -- kmscli -------------------------------------------------------------------------------------
def create(kms: Runner, *args: str) -> str:
    return ok(kms("keys", "create", "--origin", "EXTERNAL", *args)).stdout.decode().strip()


def params(kms: Runner, key: str, out: Path, algorithm: str = "RSAES_OAEP_SHA_256", *extra: str) -> Path:
    ok(kms("keys", "import-params", key, "--wrapping-algorithm", algorithm, "--wrapping-spec", "RSA_2048",
           "--out-dir", str(out), *extra))
    return out


def describe(kms: Runner, key: str, *prefix: str) -> dict[str, Any]:
    return json.loads(ok(kms("keys", "describe", key, "--json", prefix=prefix)).stdout)["KeyMetadata"]  # type: ignore[no-any-return]


def records(kms: Runner, operation: str) -> list[dict[str, Any]]:
    out = ok(kms("audit", "show", "--operation", operation, "--json")).stdout
    return [json.loads(line) for line in out.splitlines()]


def import_(kms: Runner, key: str, wrapped: Path, params_dir: Path, *extra: str) -> Any:
    return kms("keys", "import", key, "--material", str(wrapped), "--token", str(params_dir / "ImportToken.bin"),
               *(extra or ("--no-expiry",)))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    sh("openssl", "rand", "-out", "material.bin", "32", cwd=folder)
    return folder


# -- the round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"])
def test_openssl_oaep_wrapped_material_imports_and_encrypts(kms: Runner, vault: Path, work: Path,
                                                            algorithm: str) -> None:
    key = create(kms, "--alias", "alias/byok")
    out = params(kms, key, work / "params", algorithm)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("WrappingPublicKey.der", "ImportToken.bin"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    # The public key is one openssl reads: an RSA 2048-bit SubjectPublicKeyInfo.
    text = sh("openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(out / "WrappingPublicKey.der"),
              "-noout", "-text", cwd=work).decode()
    assert "Public-Key: (2048 bit)" in text
    wrapped = wrap(work, out, algorithm, "material.bin")
    ok(import_(kms, "alias/byok", wrapped, out))
    meta = describe(kms, key)
    assert (meta["KeyState"], meta["Enabled"], meta["Origin"]) == ("Enabled", True, "EXTERNAL")
    assert meta["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE" and "ValidTo" not in meta
    ciphertext = ok(kms("encrypt", "--key", "alias/byok", input=b"known plaintext")).stdout
    assert ok(kms("decrypt", input=ciphertext)).stdout == b"known plaintext"
    record = records(kms, "ImportKeyMaterial")[-1]
    assert "errorCode" not in record
    assert record["requestParameters"] == {"keyId": "alias/byok", "expirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}


def test_a_ciphertext_made_before_delete_material_decrypts_after_the_same_material_returns(
        kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    ok(import_(kms, key, wrap(work, params(kms, key, work / "p1"), "RSAES_OAEP_SHA_256", "material.bin"),
               work / "p1"))
    before = describe(kms, key)["CurrentKeyMaterialId"]
    ciphertext = ok(kms("encrypt", "--key", key, input=b"made before")).stdout
    ok(kms("keys", "delete-material", key))
    assert describe(kms, key)["KeyState"] == "PendingImport"
    line = fails(kms("decrypt", input=ciphertext), 4, "KMSInvalidStateException")
    assert line.endswith(f"{key} is pending import.")
    fails(kms("encrypt", "--key", key, input=b"x"), 4, "KMSInvalidStateException")
    # Again, with another wrapping algorithm this time: the same material brings the key back.
    p2 = params(kms, key, work / "p2", "RSA_AES_KEY_WRAP_SHA_1")
    ok(import_(kms, key, wrap(work, p2, "RSA_AES_KEY_WRAP_SHA_1", "material.bin", "again.bin"), p2,
               "--valid-to", "30d"))
    meta = describe(kms, key)
    assert (meta["KeyState"], meta["CurrentKeyMaterialId"]) == ("Enabled", before)
    assert meta["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert ok(kms("decrypt", input=ciphertext)).stdout == b"made before"
    deleted = records(kms, "DeleteImportedKeyMaterial")
    assert len(deleted) == 1 and deleted[0]["responseElements"]["keyState"] == "PendingImport"


def test_openssl_rsa_aes_key_wrap_of_symmetric_material(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    out = params(kms, key, work / "params", "RSA_AES_KEY_WRAP_SHA_256")
    ok(import_(kms, key, wrap(work, out, "RSA_AES_KEY_WRAP_SHA_256", "material.bin"), out))
    ciphertext = ok(kms("encrypt", "--key", key, "--armor", input=b"two-step")).stdout
    assert ok(kms("decrypt", input=ciphertext)).stdout == b"two-step"


def test_an_rsa_private_key_from_openssl_signs_what_openssl_verifies(kms: Runner, vault: Path, work: Path) -> None:
    sh("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER",
       "-out", "private.der", cwd=work)
    key = create(kms, "--spec", "RSA_2048", "--usage", "SIGN_VERIFY")
    fails(kms("keys", "import-params", key, "--wrapping-spec", "RSA_2048", "--out-dir", str(work / "no")), 2,
          "ValidationException")  # RSA material needs RSA_AES_KEY_WRAP
    out = params(kms, key, work / "params", "RSA_AES_KEY_WRAP_SHA_256")
    ok(import_(kms, key, wrap(work, out, "RSA_AES_KEY_WRAP_SHA_256", "private.der"), out))
    (work / "message.txt").write_bytes(b"release 1.0\n")
    ok(kms("sign", "--key", key, "--algorithm", "RSASSA_PSS_SHA_256", "-i", str(work / "message.txt"),
           "-o", str(work / "sig.bin")))
    sh("openssl", "pkey", "-inform", "DER", "-in", "private.der", "-pubout", "-out", "public.pem", cwd=work)
    assert ok(kms("pubkey", key)).stdout == (work / "public.pem").read_bytes()
    verified = sh("openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                  "-verify", "public.pem", "-signature", "sig.bin", "message.txt", cwd=work)
    assert verified.strip() == b"Verified OK"


def test_an_hmac_key_from_openssl_rand_makes_openssls_macs(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms, "--spec", "HMAC_256")
    out = params(kms, key, work / "params")
    ok(import_(kms, key, wrap(work, out, "RSAES_OAEP_SHA_256", "material.bin"), out))
    (work / "message.txt").write_bytes(b"message")
    mac = ok(kms("mac", "--key", key, "--algorithm", "HMAC_SHA_256", "-i", str(work / "message.txt"))).stdout
    hexkey = (work / "material.bin").read_bytes().hex()
    expected = sh("openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{hexkey}", "-binary",
                  "message.txt", cwd=work)
    assert mac == expected


# -- bad input: each its exception and exit code, recorded as a failure, the key unchanged ------------
def _refused(kms: Runner, key: str, r: Any, code: int, name: str, *prefix: str) -> str:
    before = describe(kms, key, *prefix)
    line = fails(r, code, name)
    record = records(kms, "ImportKeyMaterial")[-1]
    assert record["errorCode"] == name and record["responseElements"] is None
    assert describe(kms, key, *prefix) == before
    return line


def test_a_reused_token_is_invalid(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    out = params(kms, key, work / "params")
    wrapped = wrap(work, out, "RSAES_OAEP_SHA_256", "material.bin")
    ok(import_(kms, key, wrapped, out))
    _refused(kms, key, import_(kms, key, wrapped, out), 6, "InvalidImportTokenException")


def test_a_token_replaced_by_a_later_call_is_invalid(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    first = params(kms, key, work / "first")
    wrapped = wrap(work, first, "RSAES_OAEP_SHA_256", "material.bin")
    params(kms, key, work / "second")
    _refused(kms, key, import_(kms, key, wrapped, first), 6, "InvalidImportTokenException")


def test_a_token_of_another_key_is_invalid(kms: Runner, vault: Path, work: Path) -> None:
    mine, other = create(kms), create(kms)
    params(kms, mine, work / "mine")
    theirs = params(kms, other, work / "theirs")
    line = _refused(kms, mine, import_(kms, mine, wrap(work, theirs, "RSAES_OAEP_SHA_256", "material.bin"), theirs),
                    6, "InvalidImportTokenException")
    assert f"issued for another key ({other})" in line


def test_a_garbage_token_is_invalid(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    out = params(kms, key, work / "params")
    wrapped = wrap(work, out, "RSAES_OAEP_SHA_256", "material.bin")
    (out / "ImportToken.bin").write_bytes(b"not a token")
    _refused(kms, key, import_(kms, key, wrapped, out), 6, "InvalidImportTokenException")


def test_material_of_the_wrong_length_is_refused(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    out = params(kms, key, work / "params")
    sh("openssl", "rand", "-out", "short.bin", "16", cwd=work)
    line = _refused(kms, key, import_(kms, key, wrap(work, out, "RSAES_OAEP_SHA_256", "short.bin"), out), 2,
                    "ValidationException")
    assert "the key material is 16 bytes; a SYMMETRIC_DEFAULT key takes exactly 32 bytes" in line
    # Hex text of the right key is not the key either: 64 bytes.
    (work / "hex.txt").write_bytes((work / "material.bin").read_bytes().hex().encode())
    _refused(kms, key, import_(kms, key, wrap(work, out, "RSAES_OAEP_SHA_256", "hex.txt"), out), 2,
             "ValidationException")


@pytest.mark.parametrize(("asked", "used"), [("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"),
                                             ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"),
                                             ("RSA_AES_KEY_WRAP_SHA_256", "RSAES_OAEP_SHA_256")])
def test_material_wrapped_with_another_algorithm_is_invalid_ciphertext(kms: Runner, vault: Path, work: Path,
                                                                       asked: str, used: str) -> None:
    key = create(kms)
    out = params(kms, key, work / "params", asked)
    line = _refused(kms, key, import_(kms, key, wrap(work, out, used, "material.bin"), out), 6,
                    "InvalidCiphertextException")
    assert f"using its wrapping algorithm ({asked})" in line


def test_other_material_is_incorrect(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    ok(import_(kms, key, wrap(work, params(kms, key, work / "p1"), "RSAES_OAEP_SHA_256", "material.bin"),
               work / "p1"))
    ok(kms("keys", "delete-material", key))
    sh("openssl", "rand", "-out", "other.bin", "32", cwd=work)
    p2 = params(kms, key, work / "p2")
    _refused(kms, key, import_(kms, key, wrap(work, p2, "RSAES_OAEP_SHA_256", "other.bin"), p2), 6,
             "IncorrectKeyMaterialException")
    assert describe(kms, key)["KeyState"] == "PendingImport"


@NEEDS_FAKETIME
def test_an_expired_token_is_expired(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    out = params(kms, key, work / "params")
    wrapped = wrap(work, out, "RSAES_OAEP_SHA_256", "material.bin")
    later = ("faketime", "-f", "+2d")
    line = _refused(kms, key, kms("keys", "import", key, "--material", str(wrapped), "--token",
                                  str(out / "ImportToken.bin"), "--no-expiry", prefix=later),
                    4, "ExpiredImportTokenException", *later)
    assert "(24 hours after it was issued)" in line
    ok(kms("audit", "verify"))


def test_expiry_options_are_checked(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    out = params(kms, key, work / "params")
    wrapped = wrap(work, out, "RSAES_OAEP_SHA_256", "material.bin")
    line = _refused(kms, key, import_(kms, key, wrapped, out, "--valid-to", "366d"), 2, "ValidationException")
    assert "at most 365 days from now" in line
    _refused(kms, key, import_(kms, key, wrapped, out, "--valid-to", "2020-01-01T00:00:00Z"), 2,
             "ValidationException")
    line = fails(kms("keys", "import", key, "--material", str(wrapped), "--token", str(out / "ImportToken.bin")),
                 2, "ValidationException")
    assert "ValidTo is required" in line and "--no-expiry" in line
    fails(import_(kms, key, wrapped, out, "--valid-to", "1d", "--no-expiry"), 2, "ValidationException")
    fails(import_(kms, key, wrapped, out, "--valid-to", "tomorrow"), 2, "ValidationException")
    ok(import_(kms, key, wrapped, out, "--valid-to", "30d"))  # the token survived every refusal


def test_import_is_only_for_external_keys_and_they_do_not_rotate(kms: Runner, vault: Path, work: Path) -> None:
    generated = ok(kms("keys", "create")).stdout.decode().strip()
    line = fails(kms("keys", "import-params", generated, "--out-dir", str(work / "p")), 2,
                 "UnsupportedOperationException")
    assert "origin is AWS_KMS which is not valid for this operation." in line
    assert not (work / "p" / "ImportToken.bin").exists()
    fails(kms("keys", "delete-material", generated), 2, "UnsupportedOperationException")
    key = create(kms)
    fails(kms("keys", "enable", key), 4, "KMSInvalidStateException")
    fails(kms("keys", "rotation", key, "--enable"), 2, "UnsupportedOperationException")
    ok(import_(kms, key, wrap(work, params(kms, key, work / "params"), "RSAES_OAEP_SHA_256", "material.bin"),
               work / "params"))
    line = fails(kms("keys", "rotate", key), 2, "UnsupportedOperationException")
    assert "origin is EXTERNAL which is not valid for this operation." in line
    fails(kms("keys", "create", "--origin", "AWS_CLOUDHSM"), 2, "UnsupportedOperationException")
    fails(kms("keys", "create", "--origin", "EXTERNAL", "--spec", "ML_DSA_65", "--usage", "SIGN_VERIFY"), 2,
          "UnsupportedOperationException")


def test_json_documents_are_aws_responses(kms: Runner, vault: Path, work: Path) -> None:
    created = ok(kms("keys", "create", "--origin", "EXTERNAL", "--json")).stdout
    check("CreateKey", created)
    key = json.loads(created)["KeyMetadata"]["KeyId"]
    got = ok(kms("keys", "import-params", key, "--wrapping-spec", "RSA_2048", "--out-dir", str(work / "p"),
                 "--json"))
    check("GetParametersForImport", got.stdout)
    doc = json.loads(got.stdout)
    import base64

    assert base64.b64decode(doc["ImportToken"]) == (work / "p" / "ImportToken.bin").read_bytes()
    assert base64.b64decode(doc["PublicKey"]) == (work / "p" / "WrappingPublicKey.der").read_bytes()
    ok(import_(kms, key, wrap(work, work / "p", "RSAES_OAEP_SHA_256", "material.bin"), work / "p",
               "--valid-to", "2d"))
    described = ok(kms("keys", "describe", key, "--json")).stdout
    check("DescribeKey", described)
    assert json.loads(described)["KeyMetadata"]["ValidTo"].endswith("+00:00")
    check("ListKeyRotations", ok(kms("keys", "rotations", key, "--json")).stdout)


@NEEDS_FAKETIME
def test_material_expires_at_the_first_command_after_valid_to(kms: Runner, vault: Path, work: Path) -> None:
    key = create(kms)
    out = params(kms, key, work / "params")
    ok(import_(kms, key, wrap(work, out, "RSAES_OAEP_SHA_256", "material.bin"), out, "--valid-to", "1d"))
    ciphertext = ok(kms("encrypt", "--key", key, input=b"until tomorrow")).stdout
    assert describe(kms, key, "faketime", "-f", "+20h")["KeyState"] == "Enabled"
    assert records(kms, "DeleteExpiredKeyMaterial") == []
    # Two days on, the first command that opens the vault deletes the material, whatever it is about.
    ok(kms("keys", "list", prefix=("faketime", "-f", "+2d")))
    expired = records(kms, "DeleteExpiredKeyMaterial")
    assert len(expired) == 1
    assert expired[0]["eventType"] == "AwsServiceEvent"
    assert expired[0]["responseElements"]["keyId"] == key
    assert expired[0]["responseElements"]["keyState"] == "PendingImport"
    meta = describe(kms, key, "faketime", "-f", "+2d")
    assert meta["KeyState"] == "PendingImport" and "ValidTo" not in meta
    fails(kms("decrypt", input=ciphertext, prefix=("faketime", "-f", "+2d")), 4, "KMSInvalidStateException")
    ok(kms("audit", "verify"))
