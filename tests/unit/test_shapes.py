"""kmscli/shapes.py: requests answered in AWS's words, responses checked and rendered by the KMS model.

The expected messages are AWS's as reported by users and by emulators whose
tests were checked against AWS (cited beside each); where AWS's wording for
KMS is not known, the case says so.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli import aws_model, errors, shapes
from tests.unit.shape_strategies import JSON, fuzzy, valid

B64 = base64.b64encode
ARN = "arn:aws:kms:local:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def validation(operation: str, params: Any) -> str:
    with pytest.raises(errors.ValidationException) as e:
        shapes.validate_input(operation, params)
    assert type(e.value) is errors.ValidationException and e.value.exit_code == 2
    return e.value.message


def serialization(operation: str, params: Any) -> str:
    with pytest.raises(errors.SerializationException) as e:
        shapes.validate_input(operation, params)
    assert e.value.name == "SerializationException" and e.value.exit_code == 2
    return e.value.message


# -- ValidationException: AWS's exact words ------------------------------------------------
def test_sensitive_blob_too_long_hides_its_value() -> None:
    # The upstream test (aws-wire.md) and AWS's answer quoted in many issues.
    big = B64(b"x" * 4097).decode()
    assert validation("Encrypt", {"KeyId": "k", "Plaintext": big}) == (
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
        "Member must have length less than or equal to 4096"
    )


def test_empty_blob_and_empty_key_id() -> None:
    # moto's aws_verified test: Plaintext="" -> "Value at 'plaintext' ... greater than or equal to 1";
    # stelligent/mu#382 (real AWS): "Value '' at 'keyId' ... greater than or equal to 1".
    assert validation("Encrypt", {"KeyId": "", "Plaintext": ""}) == (
        "2 validation errors detected: "
        "Value '' at 'keyId' failed to satisfy constraint: Member must have length greater than or equal to 1; "
        "Value at 'plaintext' failed to satisfy constraint: Member must have length greater than or equal to 1"
    )


def test_missing_required_members() -> None:
    # "Value null at 'keyId' ... Member must not be null" (AWS, quoted in many projects); a missing
    # sensitive member shows no "null" ("Value at 'plaintext'", floci's AWS-checked KMS tests).
    assert validation("Encrypt", {}) == (
        "2 validation errors detected: "
        "Value null at 'keyId' failed to satisfy constraint: Member must not be null; "
        "Value at 'plaintext' failed to satisfy constraint: Member must not be null"
    )
    assert validation("ReEncrypt", {"CiphertextBlob": "QQ=="}) == (
        "1 validation error detected: Value null at 'destinationKeyId' failed to satisfy constraint: "
        "Member must not be null"
    )
    # AWS answers "Value null at 'ciphertextBlob'" for Decrypt {} (floci), but botocore's model no longer
    # marks CiphertextBlob required: the model decides here, and the service must refuse it.
    assert shapes.validate_input("Decrypt", {}) == {}
    assert validation("DescribeKey", {"KeyId": None}).startswith("1 validation error detected: Value null at 'keyId'")


def test_non_sensitive_blob_value_is_never_shown() -> None:
    assert validation("Decrypt", {"CiphertextBlob": B64(bytes(6145)).decode()}) == (
        "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy constraint: "
        "Member must have length less than or equal to 6144"
    )


def test_numbers_in_range() -> None:
    # floci's AWS-checked tests: "Value '0' at 'numberOfBytes' ... greater than or equal to 1".
    assert validation("GenerateDataKey", {"KeyId": "k", "NumberOfBytes": 0}) == (
        "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy constraint: "
        "Member must have value greater than or equal to 1"
    )
    assert validation("GenerateRandom", {"NumberOfBytes": 1025}) == (
        "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: "
        "Member must have value less than or equal to 1024"
    )
    assert validation("ScheduleKeyDeletion", {"KeyId": "k", "PendingWindowInDays": 366}).endswith(
        "Value '366' at 'pendingWindowInDays' failed to satisfy constraint: "
        "Member must have value less than or equal to 365"
    )


def test_enum() -> None:
    # MessageType's enum as AWS lists it (floci): the model's order.
    assert validation("Sign", {"KeyId": "k", "Message": "QQ==", "SigningAlgorithm": "ECDSA_SHA_256",
                               "MessageType": "FOO"}) == (
        "1 validation error detected: Value 'FOO' at 'messageType' failed to satisfy constraint: "
        "Member must satisfy enum value set: [RAW, DIGEST, EXTERNAL_MU]"
    )
    assert validation("GenerateDataKey", {"KeyId": "k", "KeySpec": "AES_512"}) == (
        "1 validation error detected: Value 'AES_512' at 'keySpec' failed to satisfy constraint: "
        "Member must satisfy enum value set: [AES_256, AES_128]"
    )


def test_pattern_quoted_as_the_model_writes_it() -> None:
    assert validation("GetKeyPolicy", {"KeyId": "k", "PolicyName": "default!"}) == (
        "1 validation error detected: Value 'default!' at 'policyName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [\\w]+"
    )
    # Java's \w is ASCII, and a pattern must match the whole value.
    assert "policyName" in validation("GetKeyPolicy", {"KeyId": "k", "PolicyName": "défault"})
    shapes.validate_input("GetKeyPolicy", {"KeyId": "k", "PolicyName": "default"})


def test_length_before_pattern_for_one_member() -> None:
    # floci (AWS-checked): GetPublicKey KeyId "" -> length, then pattern, for one member.
    msg = validation("CreateAlias", {"AliasName": "", "TargetKeyId": "k"})
    assert msg == (
        "2 validation errors detected: "
        "Value '' at 'aliasName' failed to satisfy constraint: Member must have length greater than or equal to 1; "
        "Value '' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: "
        "^[a-zA-Z0-9:/_-]+$"
    )


def test_nested_members_use_aws_paths() -> None:
    # AWS: "Value at 'tags.1.member.value' ..." (SES, floci), 1-based list index then ".member".
    msg = validation("TagResource", {"KeyId": "k", "Tags": [{"TagKey": "", "TagValue": "v"}, {"TagKey": "k"}]})
    assert msg == (
        "2 validation errors detected: "
        "Value '' at 'tags.1.member.tagKey' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1; "
        "Value null at 'tags.2.member.tagValue' failed to satisfy constraint: Member must not be null"
    )


def test_list_of_strings_reports_on_the_list() -> None:
    # AWS Config (moto, from AWS): "Value '[...]' at '...resourceTypes' failed to satisfy constraint:
    # Member must satisfy constraint: [Member must satisfy enum value set: [...]]".
    msg = validation("UntagResource", {"KeyId": "k", "TagKeys": ["a", "", "x" * 129]})
    assert msg == (
        "1 validation error detected: Value '[a, , " + "x" * 129 + "]' at 'tagKeys' failed to satisfy constraint: "
        "Member must satisfy constraint: [Member must have length greater than or equal to 1, "
        "Member must have length less than or equal to 128]"
    )
    msg = validation("Encrypt", {"KeyId": "k", "Plaintext": "QQ==", "GrantTokens": ["t"] * 11})
    assert msg == (
        "1 validation error detected: Value '[t, t, t, t, t, t, t, t, t, t, t]' at 'grantTokens' failed to satisfy "
        "constraint: Member must have length less than or equal to 10"
    )


def test_every_failure_is_listed_in_model_order() -> None:
    msg = validation("ListAliases", {"Marker": "", "Limit": 0, "KeyId": ""})
    assert msg.startswith("3 validation errors detected: Value '' at 'keyId'")
    assert msg.index("'limit'") < msg.index("'marker'")


def test_utf16_length() -> None:
    # AWS counts UTF-16 code units (Java's String.length): one emoji is 2.
    shapes.validate_input("CreateKey", {"Description": "é" * 8192})
    assert "'description'" in validation("CreateKey", {"Description": "\U0001f600" * 4097})


# -- SerializationException: the wrong JSON type -------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        # AWS's Coral deserialiser, as DynamoDB answers (dynalite, floci): the KMS front end is the same kind.
        ({"KeyId": 5}, "NUMBER_VALUE cannot be converted to String"),
        ({"KeyId": 5.5}, "DECIMAL_VALUE cannot be converted to String"),
        ({"KeyId": 1e3}, "DECIMAL_VALUE cannot be converted to String"),
        ({"KeyId": True}, "TRUE_VALUE cannot be converted to String"),
        ({"KeyId": False}, "FALSE_VALUE cannot be converted to String"),
        ({"KeyId": {}}, "Start of structure or map found where not expected"),
        # Not known for AWS (DynamoDB has said "UnknownError" and "Unrecognized collection type ..."):
        ({"KeyId": []}, "Start of list found where not expected"),
        ({"KeyId": "k", "GrantTokens": "t"}, "Unexpected field type"),
        ({"KeyId": "k", "GrantTokens": {}}, "Start of structure or map found where not expected"),
        ({"KeyId": "k", "GrantTokens": [5]}, "NUMBER_VALUE cannot be converted to String"),
    ],
)
def test_wrong_json_type_for_strings_and_lists(params: dict, message: str) -> None:
    assert serialization("DescribeKey", params) == message


@pytest.mark.parametrize(
    ("operation", "params", "message"),
    [
        ("GenerateRandom", {"NumberOfBytes": "5"}, "STRING_VALUE cannot be converted to Integer"),
        ("GenerateRandom", {"NumberOfBytes": False}, "FALSE_VALUE cannot be converted to Integer"),
        ("GenerateRandom", {"NumberOfBytes": float("inf")}, "DECIMAL_VALUE cannot be converted to Integer"),
        ("CreateKey", {"MultiRegion": 0}, "NUMBER_VALUE cannot be converted to Boolean"),
        ("CreateKey", {"MultiRegion": 0.5}, "DECIMAL_VALUE cannot be converted to Boolean"),
        ("CreateKey", {"MultiRegion": "yes"}, "Unexpected token received from parser"),
        ("CreateKey", {"Tags": ["x"]}, "Unexpected value type in payload"),
        ("CreateKey", {"Tags": "x"}, "Unexpected field type"),
        ("Encrypt", {"KeyId": "k", "Plaintext": 5}, "only base-64-encoded strings are convertible to bytes"),
        ("Encrypt", {"KeyId": "k", "Plaintext": True}, "only base-64-encoded strings are convertible to bytes"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "23456"},
         "Base64 encoded length is expected a multiple of 4 bytes but found: 5"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "+/+="}, "Invalid last non-pad Base64 character dectected"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "QR=="}, "Invalid last non-pad Base64 character dectected"),
        # Not known for AWS: a character outside the alphabet, or padding before the end.
        ("Encrypt", {"KeyId": "k", "Plaintext": "aGk-"}, "Invalid Base64 character: '-'"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "aGk\n"}, "Invalid Base64 character: '\n'"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "=+/="}, "Invalid Base64 character: '='"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "QQ==QQ=="}, "Invalid Base64 character: '='"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "QQ", "EncryptionContext": {"a": 1}},
         "Base64 encoded length is expected a multiple of 4 bytes but found: 2"),
        ("Encrypt", {"KeyId": "k", "EncryptionContext": {"a": 1}, "Plaintext": "QQ"},
         "NUMBER_VALUE cannot be converted to String"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "QQ==", "EncryptionContext": ["a"]},
         "Start of list found where not expected"),
        ("Encrypt", {"KeyId": "k", "Plaintext": "QQ==", "EncryptionContext": "a"}, "Unexpected field type"),
        ("ImportKeyMaterial", {"ValidTo": "2026-01-01T00:00:00Z"}, "STRING_VALUE cannot be converted to Date"),
        ("ImportKeyMaterial", {"ValidTo": True}, "TRUE_VALUE cannot be converted to Date"),
        ("ImportKeyMaterial", {"ValidTo": 1e300}, "DECIMAL_VALUE cannot be converted to Date"),
        ("DescribeKey", {"KeyId": "\ud800"}, "Invalid UTF-16 surrogate in a string value"),
        ("DescribeKey", [], "Start of list found where not expected"),
        ("DescribeKey", "KeyId", "Unexpected field type"),
    ],
)
def test_wrong_json_type(operation: str, params: Any, message: str) -> None:
    assert serialization(operation, params) == message


def test_first_bad_member_in_body_order_wins() -> None:
    assert serialization("ListAliases", {"Limit": "5", "Marker": 5}) == "STRING_VALUE cannot be converted to Integer"
    assert serialization("ListAliases", {"Marker": 5, "Limit": "5"}) == "NUMBER_VALUE cannot be converted to String"


def test_type_errors_come_before_constraints() -> None:
    assert serialization("Encrypt", {"KeyId": "", "Plaintext": 5}).startswith("only base-64")


def test_unknown_and_null_members_are_ignored() -> None:
    out = shapes.validate_input("DescribeKey", {"KeyId": "k", "Unknown": {"x": [1]}, "GrantTokens": None,
                                                "keyid": 5})
    assert out == {"KeyId": "k"}


def test_what_aws_accepts_beyond_the_strict_type() -> None:
    out = shapes.validate_input("CreateKey", {"MultiRegion": "TRUE", "BypassPolicyLockoutSafetyCheck": "false"})
    assert out == {"MultiRegion": True, "BypassPolicyLockoutSafetyCheck": False}
    assert shapes.validate_input("GenerateRandom", {"NumberOfBytes": 32.9}) == {"NumberOfBytes": 32}


def test_values_come_back_as_python_values() -> None:
    out = shapes.validate_input("Encrypt", {"KeyId": "alias/x", "Plaintext": "aGVsbG8=",
                                            "EncryptionContext": {"a": "b"}, "GrantTokens": []})
    assert out == {"KeyId": "alias/x", "Plaintext": b"hello", "EncryptionContext": {"a": "b"}, "GrantTokens": []}
    out = shapes.validate_input("ImportKeyMaterial", {"KeyId": "k", "ImportToken": "AAAA",
                                                      "EncryptedKeyMaterial": "QQ==", "ValidTo": 1700000000.5})
    assert out["ValidTo"] == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert out["ImportToken"] == b"\0\0\0"


def test_unknown_operation_is_the_callers_error() -> None:
    with pytest.raises(ValueError, match="not an AWS KMS operation"):
        shapes.validate_input("CreateVault", {})


# -- properties over every operation of the model ----------------------------------------
OPS = st.sampled_from(shapes.OPERATIONS)


@settings(max_examples=400, deadline=None)
@given(OPS, JSON)
def test_any_json_gives_a_request_or_a_typed_error(operation: str, params: Any) -> None:
    try:
        out = shapes.validate_input(operation, params)
    except (errors.ValidationException, errors.SerializationException) as e:
        assert e.message and "\n" not in e.message.split(": ", 1)[0]
    else:
        assert isinstance(out, dict)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_json_shaped_like_each_request_gives_a_request_or_a_typed_error(data: st.DataObject) -> None:
    operation = data.draw(OPS)
    params = data.draw(fuzzy(shapes.input_shape(operation)))
    try:
        out = shapes.validate_input(operation, params)
    except (errors.ValidationException, errors.SerializationException) as e:
        assert e.message
    else:
        assert isinstance(out, dict)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_every_valid_request_passes_and_decodes(data: st.DataObject) -> None:
    operation = data.draw(OPS)
    wire, expected = data.draw(valid(shapes.input_shape(operation)))
    # Through JSON, as a server receives it.
    assert shapes.validate_input(operation, json.loads(json.dumps(wire))) == expected


@pytest.mark.parametrize("operation", shapes.OPERATIONS)
def test_each_operation_has_a_valid_request(operation: str) -> None:
    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
    @given(valid(shapes.input_shape(operation)))
    def check(pair: tuple[Any, Any]) -> None:
        assert shapes.validate_input(operation, pair[0]) == pair[1]

    check()


# -- responses -----------------------------------------------------------------------------
T = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def key_metadata(**extra: Any) -> dict[str, Any]:
    return {"AWSAccountId": "111122223333", "KeyId": ARN.rsplit("/", 1)[1], "Arn": ARN, "CreationDate": T,
            "Enabled": True, "Description": "", "KeyUsage": "ENCRYPT_DECRYPT", "KeyState": "Enabled",
            "Origin": "AWS_KMS", "KeyManager": "CUSTOMER", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT", "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"], "MultiRegion": False,
            **extra}


def test_a_conforming_response_has_no_errors() -> None:
    assert shapes.shape_errors("DescribeKey", {"KeyMetadata": key_metadata(DeletionDate=None)}) == []
    assert shapes.shape_errors("ListKeys", {"Keys": [{"KeyId": "k", "KeyArn": ARN}], "Truncated": False}) == []
    assert shapes.shape_errors("EnableKey", {}) == []
    assert shapes.shape_errors("EnableKey", None) == []


def test_each_kind_of_departure_is_named_by_its_path() -> None:
    doc = {"Keys": [{"KeyId": "k", "KeyArn": ARN, "Arn": ARN}], "Truncated": "false", "NextMarker": ""}
    assert shapes.shape_errors("ListKeys", doc) == [
        "Keys[0].Arn: not a member of KeyListEntry",
        "Truncated: expected bool, got str",
        "NextMarker: length 0 is less than 1",
    ]
    meta = key_metadata(KeyState="Bogus", Tags=[], CreationDate="2026-01-01T12:00:00Z",
                        PendingDeletionWindowInDays=0, KeyId=None)
    assert shapes.shape_errors("DescribeKey", {"KeyMetadata": meta}) == [
        "KeyMetadata.CreationDate: expected timezone-aware datetime, got str",
        "KeyMetadata.KeyState: 'Bogus' is not one of KeyState [Creating, Enabled, Disabled, PendingDeletion, "
        "PendingImport, PendingReplicaDeletion, Unavailable, Updating]",
        "KeyMetadata.Tags: not a member of KeyMetadata",
        "KeyMetadata.PendingDeletionWindowInDays: 0 is less than 1",
        "KeyMetadata.KeyId: required member missing",
    ]
    assert shapes.shape_errors("GenerateDataKey", {"CiphertextBlob": b"x" * 6145, "Plaintext": "aGk="}) == [
        "CiphertextBlob: length 6145 bytes is more than 6144",
        "Plaintext: expected bytes, got str",
    ]
    assert shapes.shape_errors("DescribeKey", {"KeyMetadata": key_metadata(CreationDate=datetime(2026, 1, 1))}) == [
        "KeyMetadata.CreationDate: expected timezone-aware datetime, got datetime"
    ]
    assert shapes.shape_errors("EnableKey", {"KeyId": "k"}) == ["KeyId: EnableKey answers no members"]
    assert shapes.shape_errors("ListKeys", []) == ["ListKeysResponse: expected dict, got list"]
    assert shapes.shape_errors("ListAliases", {"Aliases": [None]}) == ["Aliases[0]: null element"]


def test_sensitive_values_stay_out_of_the_problems() -> None:
    problems = shapes.shape_errors("Decrypt", {"Plaintext": b""})
    assert problems == ["Plaintext: length 0 bytes is less than 1"]


def test_to_wire_renders_blobs_timestamps_and_drops_none() -> None:
    doc = {"KeyMetadata": key_metadata(DeletionDate=None, ValidTo=datetime(2026, 1, 2, tzinfo=UTC),
                                       Tags=[{"TagKey": "a", "TagValue": "b"}])}
    wire = shapes.to_wire("DescribeKey", doc)
    meta = wire["KeyMetadata"]
    assert meta["CreationDate"] == 1767268800.123 and isinstance(meta["CreationDate"], float)
    assert meta["ValidTo"] == 1767312000 and isinstance(meta["ValidTo"], int)
    assert "DeletionDate" not in meta
    assert meta["Tags"] == [{"TagKey": "a", "TagValue": "b"}]  # unknown members are copied: the check sees them
    assert shapes.to_wire("GenerateRandom", {"Plaintext": b"\xff\x00"}) == {"Plaintext": "/wA="}
    assert shapes.to_wire("EnableKey", {}) == {}
    assert json.loads(json.dumps(wire)) == wire


def test_to_cli_prints_timestamps_as_aws_cli_v2() -> None:
    # AWS CLI v2 prints parse_timestamp(epoch).isoformat(): microseconds only when there are any,
    # and the wire carries milliseconds.
    doc = {"KeyMetadata": key_metadata(DeletionDate=T.replace(microsecond=0))}
    meta = shapes.to_cli("DescribeKey", doc)["KeyMetadata"]
    assert meta["CreationDate"] == "2026-01-01T12:00:00.123000+00:00"
    assert meta["DeletionDate"] == "2026-01-01T12:00:00+00:00"
    other = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert shapes.cli_timestamp(other) == "2026-01-01T12:00:00+00:00"
    assert shapes.to_cli("Encrypt", {"CiphertextBlob": b"hi"}) == {"CiphertextBlob": "aGk="}


def test_epoch_seconds_to_the_millisecond() -> None:
    assert shapes.epoch_seconds(datetime(1970, 1, 1, 0, 0, 1, 999999, tzinfo=UTC)) == 1.999
    assert shapes.epoch_seconds(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert shapes.epoch_seconds(datetime(1970, 1, 1)) == 0  # naive counts as UTC


def test_model_module_is_data_only() -> None:
    assert aws_model.TARGET_PREFIX == "TrentService" and aws_model.JSON_VERSION == "1.1"
    assert shapes.output_shape("EnableKey") is None and shapes.input_shape("Encrypt") == "EncryptRequest"
    assert "NotFoundException" in shapes.error_names("Encrypt")
    assert set(shapes.shape_names("ListKeysResponse")) == {"ListKeysResponse", "KeyList", "KeyListEntry",
                                                           "KeyIdType", "ArnType", "MarkerType", "BooleanType"}


def test_runtime_never_imports_botocore() -> None:
    import subprocess
    import sys

    code = ("import sys, kmscli.shapes as s; s.validate_input('Encrypt', {'KeyId': 'k', 'Plaintext': 'QQ=='}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"
