"""Key ids, ARNs, alias names, tags: AWS KMS's naming rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmscli import errors, ids

KID = "1234abcd-12ab-34cd-56ef-1234567890ab"
ACCOUNT = "111122223333"


def test_new_key_ids_are_uuid4() -> None:
    import uuid

    k = ids.new_key_id()
    assert ids.is_key_id(k)
    assert uuid.UUID(k).version == 4


@pytest.mark.parametrize(
    ("text", "key_id", "alias", "account", "region"),
    [
        (KID, KID, None, None, None),
        ("alias/app", None, "alias/app", None, None),
        (f"arn:aws:kms:local:{ACCOUNT}:key/{KID}", KID, None, ACCOUNT, "local"),
        (f"arn:aws:kms:local:{ACCOUNT}:alias/app/prod", None, "alias/app/prod", ACCOUNT, "local"),
        (f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{KID}", KID, None, ACCOUNT, "us-east-1"),
        (f"arn:aws:kms:eu-west-2:{ACCOUNT}:alias/app", None, "alias/app", ACCOUNT, "eu-west-2"),
    ],
)
def test_key_refs(text: str, key_id: str | None, alias: str | None, account: str | None,
                  region: str | None) -> None:
    ref = ids.parse_key_ref(text)
    assert (ref.key_id, ref.alias, ref.account, ref.region) == (key_id, alias, account, region)


@pytest.mark.parametrize(
    "text",
    ["", "nope", "1234", KID.upper(), KID + "0",
     f"arn:aws:kms:local:{ACCOUNT}:key/not-a-uuid", "x" * 3000],
)
def test_malformed_key_refs_are_not_found(text: str) -> None:
    with pytest.raises(errors.NotFoundException):
        ids.parse_key_ref(text)


@pytest.mark.parametrize(
    "text",
    ["arn:aws:kms:local:1:key/x", f"arn:aws:kms:local:{ACCOUNT}:thing/{KID}",
     f"arn:aws:s3:local:{ACCOUNT}:key/{KID}", f"arn:aws:kms:local:{ACCOUNT}", "arn:"],
)
def test_malformed_arns_are_invalid_arn(text: str) -> None:
    # Starts "arn:" but is no KMS key or alias ARN: InvalidArnException (exit 2), as AWS.
    with pytest.raises(errors.InvalidArnException) as e:
        ids.parse_key_ref(text)
    assert e.value.exit_code == errors.EXIT_USAGE
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["alias/a", "alias/app/prod-1_x", "alias/" + "a" * 250])
def test_valid_alias_names(name: str) -> None:
    assert ids.validate_alias_name(name) == name


@pytest.mark.parametrize(
    ("name", "exc"),
    [
        ("app", errors.ValidationException),
        ("alias/", errors.ValidationException),
        ("alias/has space", errors.ValidationException),
        ("alias/colon:x", errors.ValidationException),
        ("alias/" + "a" * 251, errors.ValidationException),
        ("alias/aws/thing", errors.NotAuthorizedException),
    ],
)
def test_invalid_alias_names(name: str, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        ids.validate_alias_name(name)


def test_tag_rules() -> None:
    ids.validate_tag("k", "")
    ids.validate_tag("k" * 128, "v" * 256)
    # Lengths are the model's constraints: ValidationException.
    for key, value in [("", "v"), ("k" * 129, "v"), ("k", "v" * 257)]:
        with pytest.raises(errors.ValidationException):
            ids.validate_tag(key, value)
    # The reserved prefix is TagException, as in AWS.
    for key, value in [("aws:x", "v"), ("AWS:x", "v")]:
        with pytest.raises(errors.TagException):
            ids.validate_tag(key, value)


def test_description_limit() -> None:
    ids.validate_description("d" * 8192)
    with pytest.raises(errors.ValidationException, match="8192"):
        ids.validate_description("d" * 8193)


@pytest.mark.parametrize(("text", "pair"), [("a=b", ("a", "b")), ("a=", ("a", "")), ("a=b=c", ("a", "b=c"))])
def test_pairs(text: str, pair: tuple[str, str]) -> None:
    assert ids.parse_pair(text) == pair


@pytest.mark.parametrize("text", ["=v", "novalue", ""])
def test_bad_pairs(text: str) -> None:
    with pytest.raises(errors.ValidationException):
        ids.parse_pair(text)


@given(st.one_of(st.text(max_size=300), st.text(max_size=300).map(lambda t: "arn:" + t),
                 st.text(max_size=300).map(lambda t: f"arn:aws:kms:local:{ACCOUNT}:" + t)))
def test_key_ref_parser_only_raises_not_found(text: str) -> None:
    try:
        ref = ids.parse_key_ref(text)
    except errors.InvalidArnException as e:
        assert text.startswith("arn:")
        assert "\n" not in str(e)
        return
    except errors.NotFoundException as e:
        assert "\n" not in str(e)
        return
    assert (ref.key_id is None) != (ref.alias is None)


@given(st.text(max_size=300))
def test_alias_validator_only_raises_documented_errors(text: str) -> None:
    try:
        ids.validate_alias_name(text)
    except (errors.ValidationException, errors.NotAuthorizedException):
        return
    assert text.startswith("alias/") and len(text) <= 256
