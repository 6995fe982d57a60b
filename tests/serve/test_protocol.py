"""AWS JSON 1.1 on the wire, byte by byte: raw HTTP requests signed with botocore's SigV4Auth."""

from __future__ import annotations

import base64
import json
import re

import pytest

from tests.serve.conftest import (
    CONTENT_TYPE,
    KEY_ARN,
    UUID,
    Response,
    Served,
    assert_aws_error,
    assert_no_nulls,
    b64,
    body_of,
    op,
    send,
    sign,
)

B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def assert_ok(r: Response) -> dict:
    """A success answer as AWS sends it: 200, its content type, a request id, a JSON object without nulls."""
    assert r.status == 200, (r.status, r.body)
    assert r.headers.get("content-type") == CONTENT_TYPE, r.headers
    assert UUID.fullmatch(r.request_id), r.headers
    assert "x-amzn-errortype" not in r.headers
    assert b"null" not in r.body, r.body
    doc = r.json()
    assert isinstance(doc, dict)
    assert_no_nulls(doc)
    return doc  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def key(served: Served) -> dict:
    return assert_ok(served.post(op("CreateKey"), body_of({"Description": "protocol"})))["KeyMetadata"]


def test_every_answer_has_a_request_id_and_the_json_content_type(served: Served, key: dict) -> None:
    answers = [
        served.post(op("ListKeys")),
        served.post(op("DescribeKey"), body_of({"KeyId": "alias/missing"})),
        served.post(op("NoSuchThing")),
        served.post(op("ListKeys"), b"{"),
        send(served.url, {"X-Amz-Target": op("ListKeys"), "Content-Type": CONTENT_TYPE}, b"{}"),
    ]
    ids = [r.request_id for r in answers]
    assert all(UUID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
    assert all(r.headers.get("content-type") == CONTENT_TYPE for r in answers)
    assert all(r.status in (200, 400) for r in answers)


def test_an_unknown_operation(served: Served) -> None:
    for target in (op("NoSuchOperation"), "TrentService.", "OtherService.ListKeys", "ListKeys", None):
        assert_aws_error(served.post(target), "UnknownOperationException")


def test_an_operation_kmscli_lacks_is_unsupported_not_unknown(served: Served, key: dict) -> None:
    r = served.post(op("ReplicateKey"), body_of({"KeyId": key["KeyId"], "ReplicaRegion": "eu-west-1"}))
    assert_aws_error(r, "UnsupportedOperationException")
    assert_aws_error(served.post(op("DescribeCustomKeyStores"), body_of({})), "UnsupportedOperationException")


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"KeyId": "x",}', b'{"KeyId": NaN}', b'"a string"', b"[]",
                                  b"42", b"\xef\xbb\xbf{}"])
def test_a_body_that_is_not_a_json_object_is_a_serialization_error(served: Served, body: bytes) -> None:
    assert_aws_error(served.post(op("DescribeKey"), body), "SerializationException")


@pytest.mark.parametrize("doc", [
    {"KeyId": 5},
    {"KeyId": ["a"]},
    {"KeyId": {"a": "b"}},
    {"KeyId": True},
])
def test_a_member_of_the_wrong_type_is_a_serialization_error(served: Served, doc: dict) -> None:
    assert_aws_error(served.post(op("DescribeKey"), body_of(doc)), "SerializationException")


def test_wrong_types_in_nested_and_numeric_members(served: Served, key: dict) -> None:
    assert_aws_error(served.post(op("ListKeys"), body_of({"Limit": "1"})), "SerializationException")
    assert_aws_error(served.post(op("Encrypt"), body_of({"KeyId": key["KeyId"], "Plaintext": b64(b"x"),
                                                          "EncryptionContext": {"a": 1}})), "SerializationException")
    assert_aws_error(served.post(op("TagResource"), body_of({"KeyId": key["KeyId"], "Tags": {"TagKey": "a"}})),
                     "SerializationException")


@pytest.mark.parametrize("plaintext", ["!!!!", "abc", "YWJjZA=", "é", "YW=j"])
def test_plaintext_that_is_not_base64_is_a_serialization_error(served: Served, key: dict, plaintext: str) -> None:
    r = served.post(op("Encrypt"), body_of({"KeyId": key["KeyId"], "Plaintext": plaintext}))
    assert_aws_error(r, "SerializationException")


def test_any_path_works(served: Served) -> None:
    for path in ("/", "/kms", "/anything", "/a/b/c/", "/moto-api/reset"):
        doc = assert_ok(served.post(op("ListKeys"), path=path))
        assert doc["Truncated"] is False, path


def test_an_empty_body_is_an_empty_request(served: Served) -> None:
    assert assert_ok(served.post(op("ListKeys"), b""))["Truncated"] is False
    assert_aws_error(served.post(op("DescribeKey"), b""), "ValidationException")  # KeyId is required


def test_success_bodies_have_no_null_and_timestamps_are_numbers(served: Served) -> None:
    created = assert_ok(served.post(op("CreateKey"), body_of({})))["KeyMetadata"]
    key_id, arn = created["KeyId"], created["Arn"]
    assert KEY_ARN.fullmatch(arn)
    assert isinstance(created["CreationDate"], (int, float)) and not isinstance(created["CreationDate"], bool)
    assert "Description" not in created or created["Description"] == ""

    described = assert_ok(served.post(op("DescribeKey"), body_of({"KeyId": key_id})))["KeyMetadata"]
    assert described["CreationDate"] == created["CreationDate"]

    enc = assert_ok(served.post(op("Encrypt"), body_of({"KeyId": key_id, "Plaintext": b64(b"wire")})))
    assert enc["KeyId"] == arn
    assert B64.fullmatch(enc["CiphertextBlob"]) and "\n" not in enc["CiphertextBlob"]
    dec = assert_ok(served.post(op("Decrypt"), body_of({"CiphertextBlob": enc["CiphertextBlob"]})))
    assert base64.b64decode(dec["Plaintext"]) == b"wire" and dec["KeyId"] == arn
    assert B64.fullmatch(dec["Plaintext"])

    assert_ok(served.post(op("CreateAlias"), body_of({"AliasName": "alias/wire", "TargetKeyId": key_id})))
    aliases = assert_ok(served.post(op("ListAliases"), body_of({"KeyId": key_id})))["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/wire"]
    assert all(isinstance(a["CreationDate"], (int, float)) for a in aliases)

    assert_ok(served.post(op("EnableKeyRotation"), body_of({"KeyId": key_id, "RotationPeriodInDays": 100})))
    status = assert_ok(served.post(op("GetKeyRotationStatus"), body_of({"KeyId": key_id})))
    assert isinstance(status["NextRotationDate"], (int, float))
    assert status["NextRotationDate"] - created["CreationDate"] >= 99 * 86400
    assert_ok(served.post(op("RotateKeyOnDemand"), body_of({"KeyId": key_id})))
    rotations = assert_ok(served.post(op("ListKeyRotations"), body_of({"KeyId": key_id})))["Rotations"]
    assert all(isinstance(r["RotationDate"], (int, float)) for r in rotations if "RotationDate" in r)
    assert any("RotationDate" in r for r in rotations)

    scheduled = assert_ok(served.post(op("ScheduleKeyDeletion"), body_of({"KeyId": "alias/wire"})))
    assert scheduled["KeyId"] == arn and scheduled["PendingWindowInDays"] == 30
    assert isinstance(scheduled["DeletionDate"], (int, float))
    assert abs(scheduled["DeletionDate"] - created["CreationDate"] - 30 * 86400) < 3600

    for target, doc in (("ListKeys", {}), ("ListAliases", {}), ("ListResourceTags", {"KeyId": key_id}),
                        ("ListKeyPolicies", {"KeyId": key_id}), ("GetKeyPolicy", {"KeyId": key_id}),
                        ("GenerateRandom", {"NumberOfBytes": 8}), ("CancelKeyDeletion", {"KeyId": key_id}),
                        ("EnableKey", {"KeyId": key_id}),
                        ("GenerateDataKey", {"KeyId": key_id, "KeySpec": "AES_256"}),
                        ("GenerateDataKeyWithoutPlaintext", {"KeyId": key_id, "NumberOfBytes": 16})):
        assert_ok(served.post(op(target), body_of(doc)))


def test_empty_answers_are_empty_objects(served: Served, key: dict) -> None:
    r = served.post(op("UpdateKeyDescription"), body_of({"KeyId": key["KeyId"], "Description": "x"}))
    assert assert_ok(r) == {}
    assert r.body == b"{}"


def test_list_keys_always_says_whether_it_is_truncated(served: Served) -> None:
    doc = assert_ok(served.post(op("ListKeys"), body_of({}), region="sa-east-1"))
    assert doc == {"Keys": [], "Truncated": False}
    assert_ok(served.post(op("CreateKey"), body_of({}), region="sa-east-1"))
    assert_ok(served.post(op("CreateKey"), body_of({}), region="sa-east-1"))
    first = assert_ok(served.post(op("ListKeys"), body_of({"Limit": 1}), region="sa-east-1"))
    assert first["Truncated"] is True and isinstance(first["NextMarker"], str)
    rest = assert_ok(served.post(op("ListKeys"), body_of({"Limit": 1, "Marker": first["NextMarker"]}),
                                 region="sa-east-1"))
    assert rest["Truncated"] is False and "NextMarker" not in rest
    assert rest["Keys"][0]["KeyId"] != first["Keys"][0]["KeyId"]


def test_validation_errors_use_awss_wording(served: Served, key: dict) -> None:
    doc = assert_aws_error(served.post(op("Encrypt"), body_of({"KeyId": key["KeyId"], "Plaintext": b64(b"x" * 4097)})),
                           "ValidationException")
    assert doc["message"] == ("1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
                              "Member must have length less than or equal to 4096")
    doc = assert_aws_error(served.post(op("ListKeys"), body_of({"Limit": 0})), "ValidationException")
    assert doc["message"].startswith("1 validation error detected: Value '0' at 'limit' failed to satisfy "
                                     "constraint: "), doc
    doc = assert_aws_error(served.post(op("Encrypt"), body_of({"Plaintext": b64(b"x")})), "ValidationException")
    assert "'keyId'" in doc["message"], doc


def test_a_ciphertext_blob_over_6144_bytes_is_refused(served: Served, key: dict) -> None:
    r = served.post(op("Decrypt"), body_of({"CiphertextBlob": b64(b"\x01" * 6145)}))
    assert_aws_error(r, "ValidationException")


def test_client_errors_are_never_500(served: Served, key: dict) -> None:
    """A spread of bad requests: each is a 400 with an error name (clients retry 5xx)."""
    bad = [
        ("Decrypt", {"CiphertextBlob": b64(b"\x00" * 200)}),
        ("Decrypt", {"CiphertextBlob": b64(b"")}),
        ("Encrypt", {"KeyId": "arn:aws:kms:us-east-1:000000000000:key/" + "0" * 36, "Plaintext": b64(b"x")}),
        ("Encrypt", {"KeyId": "alias/", "Plaintext": b64(b"x")}),
        ("Encrypt", {"KeyId": key["KeyId"], "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        ("Encrypt", {"KeyId": key["KeyId"], "Plaintext": b64(b"")}),
        ("CreateKey", {"KeySpec": "NOT_A_SPEC"}),
        ("CreateKey", {"Policy": "{"}),
        ("CreateKey", {"Tags": [{"TagKey": "", "TagValue": "x"}]}),
        ("TagResource", {"KeyId": key["KeyId"], "Tags": []}),
        ("ScheduleKeyDeletion", {"KeyId": key["KeyId"], "PendingWindowInDays": 400}),
        ("CreateAlias", {"AliasName": "no-prefix", "TargetKeyId": key["KeyId"]}),
        ("ListKeys", {"Marker": "\u0000"}),
        ("GenerateRandom", {"NumberOfBytes": -1}),
        ("PutKeyPolicy", {"KeyId": key["KeyId"], "Policy": "x" * 40000}),
        ("ReEncrypt", {"CiphertextBlob": b64(b"\x01" * 10), "DestinationKeyId": key["KeyId"]}),
        ("GetKeyPolicy", {"KeyId": key["KeyId"], "PolicyName": "x" * 200}),
        ("DescribeKey", {"KeyId": "x" * 5000}),
    ]
    for target, doc in bad:
        r = served.post(op(target), body_of(doc))
        assert r.status == 400, (target, doc, r.status, r.body)
        name = assert_aws_error(r, r.headers.get("x-amzn-errortype", ""))["__type"]
        assert name != "KMSInternalException", (target, doc, r.body)


def test_on_a_vault_server_the_reset_paths_are_ordinary_paths(served: Served, key: dict) -> None:
    for path in ("/moto-api/reset", "/_kmscli/reset"):
        r = send(served.url, {}, b"", path=path)
        assert_aws_error(r, "MissingAuthenticationTokenException")
    described = assert_ok(served.post(op("DescribeKey"), body_of({"KeyId": key["KeyId"]})))
    assert described["KeyMetadata"]["KeyId"] == key["KeyId"]


def test_only_post_is_an_operation(served: Served) -> None:
    assert_aws_error(send(served.url, {}, b"", method="GET"), "MissingAuthenticationTokenException")
    cred = served.creds["alice"]
    for method in ("GET", "PUT", "DELETE"):
        headers = sign(served.url, op("ListKeys"), b"{}", cred.access_key_id, cred.secret, method=method)
        assert_aws_error(send(served.url, headers, b"{}", method=method), "UnknownOperationException")
    # A POST signature does not sign a PUT.
    headers = sign(served.url, op("ListKeys"), b"{}", cred.access_key_id, cred.secret)
    assert_aws_error(send(served.url, headers, b"{}", method="PUT"), "InvalidSignatureException")


def test_the_request_id_names_the_audit_record(served: Served, key: dict) -> None:
    r = served.post(op("Encrypt"), body_of({"KeyId": key["KeyId"], "Plaintext": b64(b"id")}))
    assert_ok(r)
    rec = served.record(r.request_id)
    assert rec["eventName"] == "Encrypt"
    assert rec["sourceIPAddress"] == "127.0.0.1"


def test_json_with_extra_whitespace_and_unicode_escapes_is_read(served: Served, key: dict) -> None:
    body = ('\n {\t"KeyId" :  "' + key["KeyId"] + '" , "Description": "caf\\u00e9 \\ud83d\\ude00" }\n ').encode()
    assert assert_ok(served.post(op("UpdateKeyDescription"), body)) == {}
    got = assert_ok(served.post(op("DescribeKey"), body_of({"KeyId": key["KeyId"]})))["KeyMetadata"]
    assert got["Description"] == "caf\u00e9 \U0001f600"
    assert json.loads(served.post(op("DescribeKey"), body_of({"KeyId": key["KeyId"]})).body)["KeyMetadata"][
        "Description"] == "caf\u00e9 \U0001f600"


def test_errors_answer_in_awss_words_without_the_clis_hints(served: Served) -> None:
    """An SDK user gets AWS's message; what to run next is for the CLI's line (and its record)."""
    doc = assert_aws_error(served.post(op("DescribeKey"), body_of({"KeyId": "alias/missing"})), "NotFoundException")
    assert doc["message"] == f"Alias arn:aws:kms:us-east-1:{served.account}:alias/missing is not found"
    missing = "1234abcd-12ab-34cd-56ef-1234567890ab"
    doc = assert_aws_error(served.post(op("DescribeKey"), body_of({"KeyId": missing})), "NotFoundException")
    assert doc["message"] == f"Key 'arn:aws:kms:us-east-1:{served.account}:key/{missing}' does not exist"
    assert "kmscli" not in doc["message"]
    r = served.kms("--region", "us-east-1", "keys", "describe", missing)
    assert r.returncode == 3
    assert r.stderr.decode().strip() == (f"kmscli: NotFoundException: Key 'arn:aws:kms:us-east-1:{served.account}:"
                                         f"key/{missing}' does not exist; see 'kmscli keys list --all'")
