"""kmscli's own model table and checks agree with botocore's model and botocore's own machinery.

Three holds: the generated table states the same facts as botocore's ``Shape``
objects; ``shapes.shape_errors`` on a Python response and the botocore-side
``wire_errors`` on its ``shapes.to_wire`` rendering condemn the same members of
the same documents; and a request botocore serialises is read back by
``shapes.validate_input`` as the values botocore was given.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmscli import aws_model, shapes
from tests.aws.botocore_model import botocore, paths, service_model, wire_errors
from tests.unit.shape_strategies import valid

ARN = "arn:aws:kms:local:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ID = ARN.rsplit("/", 1)[1]
T = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)

same_botocore = pytest.mark.skipif(
    botocore.__version__ != aws_model.BOTOCORE_VERSION,
    reason="kmscli/aws_model.py was made from another botocore (tests/unit/test_aws_model_current.py speaks for it)",
)


# -- the table -------------------------------------------------------------------------------
@same_botocore
def test_operations_match_botocore() -> None:
    model = service_model()
    assert set(aws_model.OPERATIONS) == set(model.operation_names)
    for name, (inp, out, errs) in aws_model.OPERATIONS.items():
        op = model.operation_model(name)
        assert inp == op.input_shape.name
        assert out == (op.output_shape.name if op.output_shape is not None else None)
        assert errs == tuple(e.name for e in op.error_shapes)


@same_botocore
def test_every_shape_states_botocore_facts() -> None:
    model = service_model()
    assert set(aws_model.SHAPES) == set(model.shape_names)
    for name in model.shape_names:
        theirs = model.shape_for(name)
        ours = aws_model.SHAPES[name]
        assert ours["type"] == theirs.type_name, name
        meta = theirs.metadata
        for key in ("min", "max", "pattern", "sensitive", "exception"):
            assert ours.get(key) == meta.get(key), (name, key)
        assert ours.get("fault") == theirs._shape_model.get("fault"), name  # not among botocore's metadata
        assert ours.get("enum") == (tuple(getattr(theirs, "enum", ())) or None), name
        if theirs.type_name == "structure":
            assert ours["members"] == tuple((m, s.name) for m, s in theirs.members.items()), name
            assert ours.get("required", ()) == tuple(theirs.required_members), name
        elif theirs.type_name == "list":
            assert ours["member"] == theirs.member.name
        elif theirs.type_name == "map":
            assert (ours["key"], ours["value"]) == (theirs.key.name, theirs.value.name)


# -- response checks: the same verdict, on the same members ----------------------------------
def meta(**extra: Any) -> dict[str, Any]:
    doc = {"AWSAccountId": "111122223333", "KeyId": KEY_ID, "Arn": ARN, "CreationDate": T, "Enabled": True,
           "Description": "d", "KeyUsage": "ENCRYPT_DECRYPT", "KeyState": "Enabled", "Origin": "AWS_KMS",
           "KeyManager": "CUSTOMER", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT", "KeySpec": "SYMMETRIC_DEFAULT",
           "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"], "MultiRegion": False, "CurrentKeyMaterialId": "a" * 64}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


GOOD = [
    ("DescribeKey", {"KeyMetadata": meta()}),
    ("CreateKey", {"KeyMetadata": meta(KeyState="PendingDeletion", Enabled=False, DeletionDate=T,
                                       PendingDeletionWindowInDays=7)}),
    ("ListKeys", {"Keys": [{"KeyId": KEY_ID, "KeyArn": ARN}], "Truncated": False}),
    ("ListKeys", {"Keys": [], "Truncated": True, "NextMarker": "m"}),
    ("ListAliases", {"Aliases": [{"AliasName": "alias/a", "AliasArn": ARN, "TargetKeyId": KEY_ID,
                                  "CreationDate": T, "LastUpdatedDate": T}], "Truncated": False}),
    ("Encrypt", {"CiphertextBlob": b"\x01" * 6144, "KeyId": ARN, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
    ("Decrypt", {"KeyId": ARN, "Plaintext": b"x" * 4096, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                 "KeyMaterialId": "a" * 64}),
    ("GenerateDataKey", {"CiphertextBlob": b"c", "Plaintext": b"p" * 32, "KeyId": ARN, "KeyMaterialId": "0" * 64}),
    ("GetKeyRotationStatus", {"KeyRotationEnabled": True, "KeyId": ARN, "RotationPeriodInDays": 365,
                              "NextRotationDate": T}),
    ("ListKeyRotations", {"Rotations": [{"KeyId": KEY_ID, "KeyMaterialId": "f" * 64, "RotationDate": T,
                                         "RotationType": "ON_DEMAND"}], "Truncated": False}),
    ("ScheduleKeyDeletion", {"KeyId": ARN, "DeletionDate": T, "KeyState": "PendingDeletion",
                             "PendingWindowInDays": 7}),
    ("GetKeyPolicy", {"Policy": '{"Version": "2012-10-17"}', "PolicyName": "default"}),
    ("ListResourceTags", {"Tags": [{"TagKey": "k", "TagValue": ""}], "Truncated": False}),
    ("GenerateRandom", {"Plaintext": b"\x00"}),
    ("EnableKey", {}),
]

#: (operation, document, the member paths both sides must name)
BAD = [
    ("ListKeys", {"Keys": [{"KeyId": KEY_ID, "KeyArn": ARN, "Arn": ARN}], "Truncated": False}, {"Keys[0].Arn"}),
    ("DescribeKey", {"KeyMetadata": meta(Tags=[], KeyRotationEnabled=False)},
     {"KeyMetadata.Tags", "KeyMetadata.KeyRotationEnabled"}),
    ("DescribeKey", {"KeyMetadata": meta(KeyId=None)}, {"KeyMetadata.KeyId"}),
    ("DescribeKey", {"KeyMetadata": meta(KeyState="Bogus")}, {"KeyMetadata.KeyState"}),
    ("DescribeKey", {"KeyMetadata": meta(CreationDate="2026-01-01T12:00:00Z")}, {"KeyMetadata.CreationDate"}),
    ("DescribeKey", {"KeyMetadata": meta(PendingDeletionWindowInDays=0)}, {"KeyMetadata.PendingDeletionWindowInDays"}),
    ("DescribeKey", {"KeyMetadata": meta(Description="d" * 8193)}, {"KeyMetadata.Description"}),
    ("DescribeKey", {"KeyMetadata": meta(Enabled="true")}, {"KeyMetadata.Enabled"}),
    ("DescribeKey", {"KeyMetadata": meta(EncryptionAlgorithms="SYMMETRIC_DEFAULT")},
     {"KeyMetadata.EncryptionAlgorithms"}),
    ("DescribeKey", {"KeyMetadata": meta(EncryptionAlgorithms=["AES"])}, {"KeyMetadata.EncryptionAlgorithms[0]"}),
    ("Encrypt", {"CiphertextBlob": b"\x01" * 6145, "KeyId": ARN, "KeyMaterialId": "m"},
     {"CiphertextBlob", "KeyMaterialId"}),
    ("Decrypt", {"Plaintext": b""}, {"Plaintext"}),
    ("GetKeyRotationStatus", {"KeyRotationEnabled": True, "KeyId": ARN, "MinDecryptVersion": 1,
                              "RotationPeriodInDays": 89}, {"MinDecryptVersion", "RotationPeriodInDays"}),
    ("ListAliases", {"Aliases": [{"AliasName": "alias/bad name"}], "Truncated": False}, {"Aliases[0].AliasName"}),
    ("ListKeys", {"Keys": {}, "Truncated": False}, {"Keys"}),
    ("ListKeys", {"Keys": [], "NextMarker": ""}, {"NextMarker"}),
    ("GenerateRandom", {"Plaintext": 5}, {"Plaintext"}),
    ("EnableKey", {"KeyId": ARN}, {"KeyId"}),
    ("CreateAlias", {"Created": True}, {"Created"}),
]


@pytest.mark.parametrize(("operation", "doc"), GOOD, ids=[f"{op}-{i}" for i, (op, _) in enumerate(GOOD)])
def test_good_documents_pass_both(operation: str, doc: dict[str, Any]) -> None:
    assert shapes.shape_errors(operation, doc) == []
    assert wire_errors(operation, shapes.to_wire(operation, doc)) == []


@pytest.mark.parametrize(("operation", "doc", "bad"), BAD, ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(BAD)])
def test_bad_documents_fail_both_on_the_same_members(operation: str, doc: dict[str, Any], bad: set[str]) -> None:
    ours = shapes.shape_errors(operation, doc)
    theirs = wire_errors(operation, shapes.to_wire(operation, doc))
    if operation in ("EnableKey", "CreateAlias"):  # no output shape: botocore only says "not {}"
        assert ours and theirs
        return
    assert paths(ours) == bad, ours
    assert paths(theirs) == bad, theirs


def test_where_the_python_contract_is_stricter_than_the_wire() -> None:
    # A blob handed over already in base64, or a naive datetime, renders to a valid wire document,
    # but the service contract (bytes, aware datetimes) is broken: only shape_errors sees it.
    doc = {"Plaintext": "aGk="}
    assert shapes.shape_errors("GenerateRandom", doc) == ["Plaintext: expected bytes, got str"]
    assert wire_errors("GenerateRandom", shapes.to_wire("GenerateRandom", doc)) == []
    doc2 = {"KeyMetadata": meta(CreationDate=datetime(2026, 1, 1))}
    assert paths(shapes.shape_errors("DescribeKey", doc2)) == {"KeyMetadata.CreationDate"}
    assert wire_errors("DescribeKey", shapes.to_wire("DescribeKey", doc2)) == []


def test_botocore_parses_timestamps_as_to_wire_and_to_cli_render_them() -> None:
    wire = shapes.to_wire("DescribeKey", {"KeyMetadata": meta()})
    body = json.dumps(wire).encode()
    parser = botocore.parsers.create_parser("json")
    shape = service_model().operation_model("DescribeKey").output_shape
    parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
    assert parsed["KeyMetadata"]["CreationDate"] == T
    # AWS CLI v2's iso8601 output is botocore's parse_timestamp(...).isoformat(), in UTC here.
    from botocore.utils import parse_timestamp

    cli = parse_timestamp(wire["KeyMetadata"]["CreationDate"]).astimezone(UTC).isoformat()
    assert cli == shapes.to_cli("DescribeKey", {"KeyMetadata": meta()})["KeyMetadata"]["CreationDate"]


# -- requests: what botocore sends, validate_input reads back ---------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_botocore_serialised_requests_read_back(data: st.DataObject) -> None:
    operation = data.draw(st.sampled_from(shapes.OPERATIONS))
    _, params = data.draw(valid(shapes.input_shape(operation)))
    op = service_model().operation_model(operation)
    report = botocore.validate.ParamValidator().validate(params, op.input_shape)
    assert not report.has_errors(), report.generate_report()
    request = botocore.serialize.create_serializer("json").serialize_to_request(params, op)
    assert request["headers"]["X-Amz-Target"] == f"{aws_model.TARGET_PREFIX}.{operation}"
    assert shapes.validate_input(operation, json.loads(request["body"] or b"{}")) == params
