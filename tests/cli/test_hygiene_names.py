"""Name rules match the whole name: "$" in a pattern also matches before a trailing newline.

``alias create $'alias/app\\n'`` used to store an alias no later command could
name in a shell script, and a key ARN with a newline after it resolved to the
key as if it were not there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmscli import errors, ids
from tests.conftest import Runner, fails, ok

UUID = "0f18e31b-adc8-4830-849c-3cffe49ba77b"


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n"])
def test_alias_names_with_a_trailing_newline_are_refused(kms: Runner, vault: Path, suffix: str) -> None:
    key = ok(kms("keys", "create")).stdout.decode().strip()
    for args in (["alias", "create", "alias/app" + suffix, key], ["keys", "create", "--alias", "alias/app" + suffix]):
        line = fails(kms(*args), 2, "ValidationException")
        assert "alias/app\\n" in line or "alias/app\\r\\n" in line  # the newline shown, not printed
    ok(kms("alias", "create", "alias/app", key))
    fails(kms("alias", "update", "alias/app\n", key), 2, "ValidationException")
    aliases = json.loads(ok(kms("alias", "list", "--json")).stdout)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/app"]


def test_key_ids_and_arns_with_a_trailing_newline_name_no_key(kms: Runner, vault: Path) -> None:
    key = ok(kms("keys", "create", "--alias", "alias/app")).stdout.decode().strip()
    arn = json.loads(ok(kms("keys", "describe", key, "--json")).stdout)["KeyMetadata"]["Arn"]
    alias_arn = arn.rsplit(":", 1)[0] + ":alias/app"
    ok(kms("keys", "describe", arn))
    ok(kms("keys", "describe", alias_arn))
    for given in (key + "\n", "alias/app\n"):
        fails(kms("keys", "describe", given), 3, "NotFoundException")
        fails(kms("encrypt", "--key", given, input=b"x"), 3, "NotFoundException")
    # An ARN with a newline after it is no KMS ARN at all: InvalidArnException (exit 2), naming no key.
    for given in (arn + "\n", alias_arn + "\n"):
        for args in (["keys", "describe", given], ["encrypt", "--key", given]):
            r = kms(*args, input=b"x")
            line = fails(r, 2, "InvalidArnException")
            assert given[:-1] + "\\n" in line  # the newline shown, not printed
            assert r.stdout == b""


def test_parsers_match_whole_strings() -> None:
    assert ids.is_key_id(UUID) and not ids.is_key_id(UUID + "\n")
    assert ids.validate_alias_name("alias/app") == "alias/app"
    for bad in ("alias/app\n", "alias/\n", "alias/a\nb"):
        with pytest.raises(errors.ValidationException):
            ids.validate_alias_name(bad)
    arn = f"arn:aws:kms:local:123456789012:key/{UUID}"
    assert ids.parse_key_ref(arn).key_id == UUID
    with pytest.raises(errors.NotFoundException):
        ids.parse_key_ref(UUID + "\n")
    for bad in (arn + "\n", "arn:aws:kms:local:123456789012:alias/app\n"):
        with pytest.raises(errors.InvalidArnException):
            ids.parse_key_ref(bad)
    # A newline inside a size is not part of a size (the surrounding white space of an
    # environment variable's value is still forgiven).
    assert ids.parse_size(" 64M\n", "KMSCLI_AUDIT_MAX_SIZE") == 64 << 20
    with pytest.raises(errors.ValidationException):
        ids.parse_size("64\nM", "KMSCLI_AUDIT_MAX_SIZE")


def test_audit_since_and_json_lines_match_whole_strings_and_escape_controls(kms: Runner, vault: Path) -> None:
    fails(kms("audit", "show", "--since", "2h\n"), 2, "ValidationException")
    fails(kms("keys", "describe", "alias/x\x7f\x9b"), 3)
    out = ok(kms("audit", "show", "--operation", "DescribeKey")).stdout
    assert b"\x7f" not in out and "\x9b".encode() not in out
    assert b"\\u007f" in out and b"\\u009b" in out
