"""Keys and aliases through the real entry point: AWS semantics, limits and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S, Runner, fails, ok

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ARN = re.compile(r"^arn:aws:kms:local:\d{12}:key/[0-9a-f-]{36}$")
#: A --json timestamp, as the AWS CLI v2 prints it (kmscli keeps times to the second).
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
#: KeyMetadata's members for a kmscli key, exactly: no Tags and no rotation (those are
#: ListResourceTags' and GetKeyRotationStatus'), as in AWS.
METADATA_MEMBERS = {"AWSAccountId", "KeyId", "Arn", "CreationDate", "Enabled", "Description", "KeyUsage", "KeyState",
                    "Origin", "KeyManager", "CustomerMasterKeySpec", "KeySpec", "EncryptionAlgorithms", "MultiRegion",
                    "CurrentKeyMaterialId"}


def create(kms: Runner, *args: str) -> str:
    key_id = ok(kms("keys", "create", *args)).stdout.decode().strip()
    assert UUID.match(key_id), key_id
    return key_id


def describe(kms: Runner, key: str) -> dict:
    doc = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)
    assert set(doc) == {"KeyMetadata"}
    return doc["KeyMetadata"]


def tags(kms: Runner, key: str) -> list[dict]:
    doc = json.loads(ok(kms("keys", "tags", key, "--json")).stdout)
    assert set(doc) == {"Tags", "Truncated"} and doc["Truncated"] is False
    return doc["Tags"]


def test_create_prints_only_the_key_id(kms: Runner, vault: Path) -> None:
    r = ok(kms("keys", "create", "--description", "app secrets"))
    assert UUID.match(r.stdout.decode().strip())
    assert r.stdout.decode().count("\n") == 1


def test_describe_json_contract(kms: Runner, vault: Path) -> None:
    created = json.loads(ok(kms("keys", "create", "--description", "d1", "--tag", "team=core", "--tag", "env=prod",
                                "--json")).stdout)
    assert set(created) == {"KeyMetadata"}
    key_id = created["KeyMetadata"]["KeyId"]
    assert UUID.match(key_id)
    meta = describe(kms, key_id)
    assert created["KeyMetadata"] == meta  # CreateKey and DescribeKey answer the same KeyMetadata
    assert set(meta) == METADATA_MEMBERS
    assert meta["KeyId"] == key_id
    assert ARN.match(meta["Arn"]) and meta["Arn"].endswith(key_id)
    assert ISO.match(meta["CreationDate"])
    assert meta["Enabled"] is True
    assert meta["KeyState"] == "Enabled"
    assert meta["Description"] == "d1"
    assert meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert meta["Origin"] == "AWS_KMS"
    assert meta["KeyManager"] == "CUSTOMER" and meta["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT"
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"] and meta["MultiRegion"] is False
    # Tags are ListResourceTags' (keys tags), sorted by key.
    assert tags(kms, key_id) == [{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "core"}]
    assert "DeletionDate" not in meta
    assert re.match(r"^\d{12}$", meta["AWSAccountId"])


def test_list_json_contract_and_pending_hidden(kms: Runner, vault: Path) -> None:
    a = create(kms)
    b = create(kms)
    ok(kms("keys", "schedule-delete", b, "--days", "7"))
    listed = json.loads(ok(kms("keys", "list", "--json")).stdout)
    # ListKeys: {"Keys": [{"KeyId", "KeyArn"}], "Truncated": false}, nothing more.
    assert listed == {"Keys": [{"KeyId": a, "KeyArn": describe(kms, a)["Arn"]}], "Truncated": False}
    everything = json.loads(ok(kms("keys", "list", "--all", "--json")).stdout)
    assert set(everything) == {"Keys", "Truncated"} and everything["Truncated"] is False
    # Ordered by creation time to the second (ties by KeyId): a and b may share a second.
    assert sorted(everything["Keys"], key=lambda k: k["KeyId"]) == [
        {"KeyId": k, "KeyArn": describe(kms, k)["Arn"]} for k in sorted((a, b))]


def test_list_plain_for_pipes(kms: Runner, vault: Path) -> None:
    a = create(kms, "--alias", "alias/one", "--description", "first")
    lines = ok(kms("keys", "list")).stdout.decode().splitlines()
    assert len(lines) == 1
    cols = lines[0].split("\t")
    assert cols[0] == a and cols[1] == "Enabled" and cols[2] == "alias/one" and cols[4] == "first"


def test_every_key_form_resolves(kms: Runner, vault: Path) -> None:
    key_id = create(kms, "--alias", "alias/app")
    meta = describe(kms, key_id)
    account = meta["AWSAccountId"]
    for form in (key_id, "alias/app", meta["Arn"], f"arn:aws:kms:local:{account}:alias/app"):
        assert describe(kms, form)["KeyId"] == key_id


def test_enable_disable(kms: Runner, vault: Path) -> None:
    key_id = create(kms)
    ok(kms("keys", "disable", key_id))
    meta = describe(kms, key_id)
    assert (meta["KeyState"], meta["Enabled"]) == ("Disabled", False)
    ok(kms("keys", "disable", key_id))  # idempotent, as in AWS
    ok(kms("keys", "enable", key_id))
    assert describe(kms, key_id)["KeyState"] == "Enabled"


def test_schedule_and_cancel_delete(kms: Runner, vault: Path) -> None:
    key_id = create(kms)
    r = ok(kms("keys", "schedule-delete", key_id, "--json"))
    resp = json.loads(r.stdout)
    assert set(resp) == {"KeyId", "DeletionDate", "KeyState", "PendingWindowInDays"}
    assert resp["KeyState"] == "PendingDeletion" and resp["PendingWindowInDays"] == 30
    meta = describe(kms, key_id)
    assert resp["KeyId"] == meta["Arn"] and ISO.match(resp["DeletionDate"])
    assert meta["KeyState"] == "PendingDeletion" and ISO.match(meta["DeletionDate"])
    assert meta["DeletionDate"] == resp["DeletionDate"] and meta["PendingDeletionWindowInDays"] == 30
    assert set(meta) == METADATA_MEMBERS | {"DeletionDate", "PendingDeletionWindowInDays"}
    assert meta["Enabled"] is False
    fails(kms("keys", "enable", key_id), 4, "KMSInvalidStateException")
    fails(kms("keys", "schedule-delete", key_id), 4, "KMSInvalidStateException")
    fails(kms("keys", "tag", key_id, "a=b"), 4)
    fails(kms("keys", "set-description", key_id, "x"), 4)
    ok(kms("keys", "cancel-delete", key_id))
    meta = describe(kms, key_id)
    assert meta["KeyState"] == "Disabled"  # AWS: cancel returns the key Disabled
    assert set(meta) == METADATA_MEMBERS
    fails(kms("keys", "cancel-delete", key_id), 4, "KMSInvalidStateException")


@pytest.mark.parametrize(("days", "code"), [("6", 2), ("31", 2), ("seven", 2), ("0", 2), ("-1", 2)])
def test_deletion_window_bounds(kms: Runner, vault: Path, days: str, code: int) -> None:
    key_id = create(kms)
    before = vault.read_bytes()
    fails(kms("keys", "schedule-delete", key_id, "--days", days), code, "ValidationException")
    assert vault.read_bytes() == before
    assert describe(kms, key_id)["KeyState"] == "Enabled"


@pytest.mark.parametrize("days", ["7", "30"])
def test_deletion_window_edges(kms: Runner, vault: Path, days: str) -> None:
    key_id = create(kms)
    resp = json.loads(ok(kms("keys", "schedule-delete", key_id, "--days", days, "--json")).stdout)
    assert resp["PendingWindowInDays"] == int(days)


def test_tags(kms: Runner, vault: Path) -> None:
    key_id = create(kms, "--tag", "a=1")
    assert tags(kms, key_id) == [{"TagKey": "a", "TagValue": "1"}]
    ok(kms("keys", "tag", key_id, "b=2", "a=3", "empty="))
    assert tags(kms, key_id) == [{"TagKey": "a", "TagValue": "3"}, {"TagKey": "b", "TagValue": "2"},
                                 {"TagKey": "empty", "TagValue": ""}]
    ok(kms("keys", "untag", key_id, "a", "missing"))
    assert tags(kms, key_id) == [{"TagKey": "b", "TagValue": "2"}, {"TagKey": "empty", "TagValue": ""}]
    ok(kms("keys", "untag", key_id, "b", "empty"))
    assert tags(kms, key_id) == []
    # The table form: one tab-separated line per tag in a pipe.
    ok(kms("keys", "tag", key_id, "team=core"))
    assert ok(kms("keys", "tags", key_id)).stdout == b"team\tcore\n"


@pytest.mark.parametrize(
    ("tag", "exc"),
    [("=v", "ValidationException"), ("novalue", "ValidationException"), ("aws:x=1", "TagException"),
     ("k" * 129 + "=v", "ValidationException"), ("k=" + "v" * 257, "ValidationException")],
)
def test_bad_tags(kms: Runner, vault: Path, tag: str, exc: str) -> None:
    key_id = create(kms)
    before = vault.read_bytes()
    fails(kms("keys", "tag", key_id, tag), 2, exc)
    fails(kms("keys", "create", "--tag", tag), 2, exc)
    assert vault.read_bytes() == before


@pytest.mark.parametrize(("tag_key", "exc"), [("k" * 129, "ValidationException"), ("", "ValidationException")])
def test_bad_untag_keys(kms: Runner, vault: Path, tag_key: str, exc: str) -> None:
    """Tag key lengths are ValidationException in untag as in tag (the model's constraint)."""
    key_id = create(kms, "--tag", "a=1")
    before = vault.read_bytes()
    fails(kms("keys", "untag", key_id, tag_key), 2, exc)
    assert vault.read_bytes() == before
    assert tags(kms, key_id) == [{"TagKey": "a", "TagValue": "1"}]


def test_descriptions(kms: Runner, vault: Path) -> None:
    key_id = create(kms)
    ok(kms("keys", "set-description", key_id, "d" * 8192))
    assert describe(kms, key_id)["Description"] == "d" * 8192
    before = vault.read_bytes()
    line = fails(kms("keys", "set-description", key_id, "d" * 9000), 2, "ValidationException")
    assert "8192" in line
    fails(kms("keys", "create", "--description", "d" * 9000), 2)
    assert vault.read_bytes() == before


@pytest.mark.parametrize(
    ("key", "code", "exc"),
    [
        ("00000000-0000-4000-8000-000000000000", 3, "NotFoundException"),
        ("not-a-key", 3, "NotFoundException"),
        ("alias/missing", 3, "NotFoundException"),
        ("arn:aws:kms:local:000000000000:key/00000000-0000-4000-8000-000000000000", 3, "NotFoundException"),
        # Starts "arn:" but is no KMS key or alias ARN: InvalidArnException, as AWS.
        ("arn:aws:kms:bogus", 2, "InvalidArnException"),
    ],
)
def test_unknown_keys(kms: Runner, vault: Path, key: str, code: int, exc: str) -> None:
    for args in (["keys", "describe", key], ["keys", "enable", key], ["keys", "disable", key],
                 ["keys", "schedule-delete", key], ["keys", "tag", key, "a=b"], ["keys", "tags", key],
                 ["keys", "rotation", key]):
        fails(kms(*args), code, exc)


# -- aliases --------------------------------------------------------------
def aliases(kms: Runner, *args: str) -> list[dict]:
    return json.loads(ok(kms("alias", "list", "--json", *args)).stdout)["Aliases"]


def test_alias_lifecycle(kms: Runner, vault: Path) -> None:
    a = create(kms)
    b = create(kms)
    ok(kms("alias", "create", "alias/app", a))
    listed = aliases(kms)
    assert listed == [{"AliasName": "alias/app", "AliasArn": listed[0]["AliasArn"], "TargetKeyId": a,
                       "CreationDate": listed[0]["CreationDate"], "LastUpdatedDate": listed[0]["CreationDate"]}]
    assert listed[0]["AliasArn"] == describe(kms, a)["Arn"].rsplit(":", 1)[0] + ":alias/app"
    assert ISO.match(listed[0]["CreationDate"])
    ok(kms("alias", "update", "alias/app", b))
    (updated,) = aliases(kms)
    assert updated["TargetKeyId"] == b and updated["CreationDate"] == listed[0]["CreationDate"]
    assert ISO.match(updated["LastUpdatedDate"]) and updated["LastUpdatedDate"] >= updated["CreationDate"]
    ok(kms("alias", "create", "alias/other", "alias/app"))  # an alias as KEY resolves to its key
    assert [x["AliasName"] for x in aliases(kms, "--key", b)] == ["alias/app", "alias/other"]
    assert aliases(kms, "--key", a) == []
    ok(kms("alias", "delete", "alias/app"))
    assert [x["AliasName"] for x in aliases(kms)] == ["alias/other"]
    fails(kms("alias", "delete", "alias/app"), 3, "NotFoundException")
    fails(kms("alias", "update", "alias/app", a), 3)


def test_create_key_with_alias_is_one_change(kms: Runner, vault: Path) -> None:
    a = create(kms, "--alias", "alias/taken")
    before = vault.read_bytes()
    fails(kms("keys", "create", "--alias", "alias/taken"), 9, "AlreadyExistsException")
    fails(kms("keys", "create", "--alias", "no-prefix"), 2)
    assert vault.read_bytes() == before
    keys = json.loads(ok(kms("keys", "list", "--json")).stdout)["Keys"]
    assert [k["KeyId"] for k in keys] == [a]


@pytest.mark.parametrize(
    ("name", "code", "exc"),
    [
        ("app", 2, "ValidationException"),
        ("alias/with space", 2, "ValidationException"),
        ("alias/" + "a" * 251, 2, "ValidationException"),
        ("alias/aws/mine", 2, "NotAuthorizedException"),
        ("alias/", 2, "ValidationException"),
    ],
)
def test_bad_alias_names(kms: Runner, vault: Path, name: str, code: int, exc: str) -> None:
    key_id = create(kms)
    before = vault.read_bytes()
    fails(kms("alias", "create", name, key_id), code, exc)
    assert vault.read_bytes() == before


def test_duplicate_alias(kms: Runner, vault: Path) -> None:
    key_id = create(kms)
    ok(kms("alias", "create", "alias/dup", key_id))
    line = fails(kms("alias", "create", "alias/dup", key_id), 9, "AlreadyExistsException")
    assert "alias/dup" in line


def test_alias_to_pending_key_refused(kms: Runner, vault: Path) -> None:
    key_id = create(kms)
    ok(kms("keys", "schedule-delete", key_id))
    fails(kms("alias", "create", "alias/late", key_id), 4, "KMSInvalidStateException")


def test_usage_errors_are_one_line(kms: Runner, vault: Path) -> None:
    fails(kms("keys", "create", "--no-such-option"), 2, "ValidationException")
    fails(kms("keys", "describe"), 2)
    fails(kms("keys", "frobnicate"), 2)


def test_messages_on_stderr_only(kms: Runner, vault: Path) -> None:
    key_id = create(kms)
    for args in (["keys", "enable", key_id], ["keys", "disable", key_id], ["alias", "create", "alias/x", key_id],
                 ["keys", "schedule-delete", key_id], ["keys", "cancel-delete", key_id]):
        assert ok(kms(*args)).stdout == b""


def test_version(kms: Runner) -> None:
    from importlib.metadata import version

    # The installed package's version comes from kmscli/__init__.py (hatch dynamic version): one source.
    assert ok(kms("--version")).stdout.decode() == f"kmscli {version('kmscli')}\n"
    assert ok(kms("-V")).stdout == ok(kms("--version")).stdout
    changelog = (Path(__file__).parents[2] / "CHANGELOG.md").read_text()
    assert f"## [{version('kmscli')}] - " in changelog


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [("random", "16"), ("random", "16", "--format", "raw"), ("keys", "list"),
                                  ("keys", "list", "--json"), ("audit", "show")])
def test_full_stdout_is_exit_2(kms: Runner, vault: Path, env: dict[str, str], args: tuple[str, ...]) -> None:
    import subprocess

    from tests.conftest import kmscli_command

    ok(kms("keys", "create"))
    with open("/dev/full", "wb") as full:
        r = subprocess.run([*kmscli_command(), *args], stdout=full, stderr=subprocess.PIPE, env=env,
                           timeout=HANG_GUARD_S)
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().strip() == "kmscli: ValidationException: cannot write to standard output: the disk is full"


@pytest.mark.parametrize("args", [(), ("keys",), ("alias",), ("audit",), ("credentials",), ("policy",)])
def test_a_command_without_its_subcommand_prints_the_usage(kms: Runner, args: tuple[str, ...]) -> None:
    """Bare `kmscli` or `kmscli keys` prints the usage as a CLI does, not one squashed error line (issue 15)."""
    r = kms(*args)
    assert r.returncode == 2 and r.stdout == b""
    err = r.stderr.decode()
    lines = err.splitlines()
    assert lines[0] == f"Usage: {' '.join(('kmscli', *args))} [OPTIONS] COMMAND [ARGS]...", lines[0]
    assert "ValidationException" not in err and "Commands:" in lines
    commands = lines[lines.index("Commands:") + 1:]
    assert len(commands) >= 2 and all(c.startswith("  ") for c in commands), commands
