"""`kmscli credentials`: access keys for `kmscli serve`, IAM-shaped, their secret shown once."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import Runner, fails, ok

AKID = re.compile(r"AKIA[A-Z2-7]{16}")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_create_prints_the_pair_once_and_list_never_shows_the_secret(kms: Runner, vault: Path) -> None:
    r = ok(kms("credentials", "create", "alice"))
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 2
    akid = lines[0].removeprefix("AWS_ACCESS_KEY_ID=")
    secret = lines[1].removeprefix("AWS_SECRET_ACCESS_KEY=")
    assert AKID.fullmatch(akid) and len(secret) == 40
    assert b"only time" in r.stderr
    listing = ok(kms("credentials", "list", "--json")).stdout
    assert json.loads(listing) == {"AccessKeyMetadata": [
        {"UserName": "alice", "AccessKeyId": akid, "Status": "Active",
         "CreateDate": json.loads(listing)["AccessKeyMetadata"][0]["CreateDate"]}]}
    assert secret.encode() not in listing
    assert secret.encode() not in ok(kms("credentials", "list")).stdout
    # Nor in the audit log, nor in the vault file's clear bytes.
    log = (vault.parent / "audit.jsonl").read_bytes()
    assert akid.encode() in log and secret.encode() not in log
    assert secret.encode() not in vault.read_bytes()


def test_create_json_is_iams_create_access_key_shape(kms: Runner, vault: Path) -> None:
    key = json.loads(ok(kms("credentials", "create", "ci-bot", "--json")).stdout)
    assert list(key) == ["AccessKey"]
    ak = key["AccessKey"]
    assert set(ak) == {"UserName", "AccessKeyId", "Status", "SecretAccessKey", "CreateDate"}
    assert ak["UserName"] == "ci-bot" and ak["Status"] == "Active" and ISO.fullmatch(ak["CreateDate"])


def test_two_keys_per_user_as_iam_and_delete(kms: Runner, vault: Path) -> None:
    first = ok(kms("credentials", "create", "bob")).stdout.decode().split()[0].split("=")[1]
    ok(kms("credentials", "create", "bob"))
    fails(kms("credentials", "create", "bob"), 2, "LimitExceededException")
    ok(kms("credentials", "create", "carol"))  # per user, not per vault
    ok(kms("credentials", "delete", first))
    ok(kms("credentials", "create", "bob"))
    listed = json.loads(ok(kms("credentials", "list", "--json")).stdout)["AccessKeyMetadata"]
    assert first not in {c["AccessKeyId"] for c in listed} and len(listed) == 3
    fails(kms("credentials", "delete", first), 3, "NotFoundException")


def test_bad_user_names_are_refused(kms: Runner, vault: Path) -> None:
    for bad in ("has space", "", "x" * 65, "semi;colon"):
        fails(kms("credentials", "create", bad), 2, "ValidationException")


def test_a_session_cannot_make_credentials(kms: Runner, vault: Path) -> None:
    """A credential outlives any session and acts as the user it names: only the passphrase makes one."""
    line = ok(kms("unlock", "--ttl", "5m")).stdout.decode().strip()
    token = line.split("=", 1)[1].strip("'\"")
    try:
        r = kms("credentials", "create", "mallory", env_update={"KMSCLI_SESSION": token},
                env_remove=("KMSCLI_PASSPHRASE",))
        fails(r, 5)
        # The session still reads them: listing is not the secret.
        ok(kms("credentials", "list", env_update={"KMSCLI_SESSION": token}, env_remove=("KMSCLI_PASSPHRASE",)))
    finally:
        ok(kms("lock", env_update={"KMSCLI_SESSION": token}, env_remove=("KMSCLI_PASSPHRASE",)))
    assert b"mallory" not in ok(kms("credentials", "list")).stdout
