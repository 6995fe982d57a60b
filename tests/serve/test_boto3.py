"""boto3's KMS client, unmodified, against `kmscli serve`: every operation the service has.

Each test makes its own keys on one module-wide server. Where a test counts
keys or aliases it works in a region of its own: keys belong to the region of
the request's signature, so a region is a clean namespace.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import KEY_ARN, REGION, UUID, Served, error_of, ok

MAX_PLAINTEXT_MESSAGE = ("1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
                         "Member must have length less than or equal to 4096")


def new_key(served: Served, region: str = REGION, user: str = "alice", **kw: object) -> dict:
    return served.client(user, region).create_key(**kw)["KeyMetadata"]  # type: ignore[no-any-return]


def aware_now() -> datetime:
    return datetime.now().astimezone()


# -- CreateKey / DescribeKey ------------------------------------------------------------------
def test_create_key_with_description_tags_and_policy(served: Served) -> None:
    kms = served.client()
    policy = json.dumps({
        "Version": "2012-10-17",
        "Id": "custom",
        "Statement": [{"Sid": "Everyone here", "Effect": "Allow",
                       "Principal": {"AWS": f"arn:aws:iam::{served.account}:root"},
                       "Action": "kms:*", "Resource": "*"}],
    }, indent=1)
    before = aware_now().replace(microsecond=0)
    answer = kms.create_key(Description="payments", Policy=policy,
                            Tags=[{"TagKey": "team", "TagValue": "billing"}, {"TagKey": "env", "TagValue": "dev"}])
    md = answer["KeyMetadata"]
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert UUID.fullmatch(md["KeyId"])
    assert md["Arn"] == f"arn:aws:kms:{REGION}:{served.account}:key/{md['KeyId']}"
    assert md["AWSAccountId"] == served.account
    assert md["Description"] == "payments"
    assert md["Enabled"] is True and md["KeyState"] == "Enabled"
    assert md["KeyUsage"] == "ENCRYPT_DECRYPT" and md["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert md["Origin"] == "AWS_KMS" and md["KeyManager"] == "CUSTOMER" and md["MultiRegion"] is False
    assert isinstance(md["CreationDate"], datetime)
    assert before - timedelta(seconds=1) <= md["CreationDate"] <= aware_now() + timedelta(seconds=1)
    assert "DeletionDate" not in md
    # The policy is kept byte for byte, the tags as given.
    got = kms.get_key_policy(KeyId=md["KeyId"], PolicyName="default")
    assert got["Policy"] == policy and got["PolicyName"] == "default"
    tags = kms.list_resource_tags(KeyId=md["KeyId"])
    assert sorted(tags["Tags"], key=lambda t: t["TagKey"]) == [
        {"TagKey": "env", "TagValue": "dev"}, {"TagKey": "team", "TagValue": "billing"}]
    assert tags["Truncated"] is False


def test_describe_key_by_id_alias_key_arn_and_alias_arn(served: Served) -> None:
    kms = served.client()
    md = new_key(served, Description="four names")
    kms.create_alias(AliasName="alias/four-names", TargetKeyId=md["KeyId"])
    alias_arn = f"arn:aws:kms:{REGION}:{served.account}:alias/four-names"
    for name in (md["KeyId"], "alias/four-names", md["Arn"], alias_arn):
        got = kms.describe_key(KeyId=name)["KeyMetadata"]
        assert got == md, name
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId="alias/no-such-alias")
    error_of(e, "NotFoundException")
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId="00000000-0000-4000-8000-000000000000")
    error_of(e, "NotFoundException")


def test_list_keys_pages_with_limit_and_the_paginator_collects_all(served: Served) -> None:
    region = "ap-southeast-2"  # this test's own namespace
    kms = served.client(region=region)
    made = {new_key(served, region)["KeyId"] for _ in range(3)}
    first = kms.list_keys(Limit=1)
    assert len(first["Keys"]) == 1 and first["Truncated"] is True and first["NextMarker"]
    seen, page, pages = [], first, 1
    while True:  # bounded: one page per key and the assertion below
        seen += page["Keys"]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        assert pages < 10, "ListKeys never stops paging"
        page = kms.list_keys(Limit=1, Marker=page["NextMarker"])
        assert len(page["Keys"]) == 1
        pages += 1
    assert pages == 3
    assert {k["KeyId"] for k in seen} == made and len(seen) == 3
    for k in seen:
        assert k["KeyArn"] == f"arn:aws:kms:{region}:{served.account}:key/{k['KeyId']}"
        assert set(k) == {"KeyId", "KeyArn"}
    everything = kms.list_keys()
    assert everything["Truncated"] is False and {k["KeyId"] for k in everything["Keys"]} == made
    collected = [k for p in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1})
                 for k in p["Keys"]]
    assert sorted(k["KeyId"] for k in collected) == sorted(made)
    with pytest.raises(ClientError) as e:
        kms.list_keys(Limit=1, Marker="not-a-marker")
    error_of(e, "InvalidMarkerException")


# -- key state --------------------------------------------------------------------------------
def test_disable_and_enable_key(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"before")["CiphertextBlob"]
    assert kms.disable_key(KeyId=key)["ResponseMetadata"]["HTTPStatusCode"] == 200
    md = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert md["KeyState"] == "Disabled" and md["Enabled"] is False
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x")
    error_of(e, "DisabledException")
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob)
    error_of(e, "DisabledException")
    with pytest.raises(ClientError) as e:
        kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    error_of(e, "DisabledException")
    kms.enable_key(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"


def test_schedule_and_cancel_key_deletion(served: Served) -> None:
    kms = served.client()
    md = new_key(served)
    kms.create_alias(AliasName="alias/doomed", TargetKeyId=md["KeyId"])
    answer = kms.schedule_key_deletion(KeyId="alias/doomed", PendingWindowInDays=7)
    assert answer["KeyId"] == md["Arn"]  # the ARN, though the request named an alias
    assert answer["KeyState"] == "PendingDeletion" and answer["PendingWindowInDays"] == 7
    assert isinstance(answer["DeletionDate"], datetime)
    assert timedelta(days=7) - timedelta(hours=1) <= answer["DeletionDate"] - aware_now() <= timedelta(days=7)
    described = kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion" and described["Enabled"] is False
    assert described["DeletionDate"] == answer["DeletionDate"]
    assert described["PendingDeletionWindowInDays"] == 7
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=md["KeyId"], Plaintext=b"x")
    error_of(e, "KMSInvalidStateException")
    with pytest.raises(ClientError) as e:
        kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=3)
    error_of(e, "ValidationException")

    cancelled = kms.cancel_key_deletion(KeyId=md["KeyId"])
    assert cancelled["KeyId"] == md["Arn"]
    after = kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]
    assert after["KeyState"] == "Disabled"  # as AWS: a cancelled deletion leaves the key disabled
    assert "DeletionDate" not in after and "PendingDeletionWindowInDays" not in after
    kms.enable_key(KeyId=md["KeyId"])
    assert kms.encrypt(KeyId="alias/doomed", Plaintext=b"x")["KeyId"] == md["Arn"]


def test_update_key_description(served: Served) -> None:
    kms = served.client()
    key = new_key(served, Description="old")["KeyId"]
    kms.update_key_description(KeyId=key, Description="new words")
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "new words"


# -- tags, aliases, policies --------------------------------------------------------------------
def test_tag_untag_and_list_resource_tags(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    assert kms.list_resource_tags(KeyId=key)["Tags"] == []
    kms.tag_resource(KeyId=key, Tags=[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}])
    kms.tag_resource(KeyId=key, Tags=[{"TagKey": "a", "TagValue": "changed"}])
    got = kms.list_resource_tags(KeyId=key)
    assert sorted(got["Tags"], key=lambda t: t["TagKey"]) == [
        {"TagKey": "a", "TagValue": "changed"}, {"TagKey": "b", "TagValue": "2"}]
    assert got["Truncated"] is False and "NextMarker" not in got
    kms.untag_resource(KeyId=key, TagKeys=["a"])
    assert kms.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "b", "TagValue": "2"}]


def test_create_update_delete_and_list_aliases(served: Served) -> None:
    region = "ca-central-1"
    kms = served.client(region=region)
    one, two = new_key(served, region), new_key(served, region)
    kms.create_alias(AliasName="alias/app", TargetKeyId=one["KeyId"])
    with pytest.raises(ClientError) as e:
        kms.create_alias(AliasName="alias/app", TargetKeyId=two["KeyId"])
    error_of(e, "AlreadyExistsException")
    with pytest.raises(ClientError) as e:
        kms.create_alias(AliasName="alias/aws/reserved", TargetKeyId=two["KeyId"])
    error_of(e, "NotAuthorizedException")
    with pytest.raises(ClientError) as e:
        kms.create_alias(AliasName="alias/bad name", TargetKeyId=two["KeyId"])
    assert error_of(e, "ValidationException")["Error"]["Message"] == (
        "1 validation error detected: Value 'alias/bad name' at 'aliasName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$")
    aliases = kms.list_aliases()
    assert aliases["Truncated"] is False
    (app,) = [a for a in aliases["Aliases"] if a["AliasName"] == "alias/app"]
    assert app["AliasArn"] == f"arn:aws:kms:{region}:{served.account}:alias/app"
    assert app["TargetKeyId"] == one["KeyId"]
    assert isinstance(app["CreationDate"], datetime) and isinstance(app["LastUpdatedDate"], datetime)
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=one["KeyId"])["Aliases"]] == ["alias/app"]
    assert kms.list_aliases(KeyId=two["KeyId"])["Aliases"] == []

    kms.update_alias(AliasName="alias/app", TargetKeyId=two["KeyId"])
    assert kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == two["KeyId"]
    assert kms.list_aliases(KeyId=one["KeyId"])["Aliases"] == []
    kms.delete_alias(AliasName="alias/app")
    assert [a for a in kms.list_aliases()["Aliases"] if a["AliasName"] == "alias/app"] == []
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId="alias/app")
    error_of(e, "NotFoundException")
    with pytest.raises(ClientError) as e:
        kms.delete_alias(AliasName="alias/app")
    error_of(e, "NotFoundException")


def test_get_put_and_list_key_policies(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    default = kms.get_key_policy(KeyId=key)["Policy"]
    assert json.loads(default) == {
        "Version": "2012-10-17", "Id": "key-default-1",
        "Statement": [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                       "Principal": {"AWS": f"arn:aws:iam::{served.account}:root"},
                       "Action": "kms:*", "Resource": "*"}]}
    assert default.startswith('{\n  "Version" : "2012-10-17",')  # AWS's own layout, as GetKeyPolicy prints it
    listed = kms.list_key_policies(KeyId=key)
    assert listed["PolicyNames"] == ["default"] and listed["Truncated"] is False
    new = ('{"Version":"2012-10-17","Statement":[{"Sid":"Alice","Effect":"Allow",'
           f'"Principal":{{"AWS":"arn:aws:iam::{served.account}:user/alice"}},"Action":"kms:*","Resource":"*"}}]}}')
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=new)
    assert kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == new
    with pytest.raises(ClientError) as e:
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy='{"Statement": []}')
    error_of(e, "MalformedPolicyDocumentException")
    with pytest.raises(ClientError) as e:
        kms.get_key_policy(KeyId=key, PolicyName="other")
    assert e.value.response["Error"]["Code"] in ("ValidationException", "NotFoundException")


# -- rotation ---------------------------------------------------------------------------------
def test_key_rotation_status_enable_and_disable(served: Served) -> None:
    kms = served.client()
    md = new_key(served)
    status = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert status["KeyRotationEnabled"] is False and status["KeyId"] == md["Arn"]
    kms.enable_key_rotation(KeyId=md["KeyId"], RotationPeriodInDays=90)
    status = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 90  # Terraform drifts forever without it
    assert isinstance(status["NextRotationDate"], datetime)
    assert timedelta(days=89) <= status["NextRotationDate"] - aware_now() <= timedelta(days=90)
    kms.enable_key_rotation(KeyId=md["KeyId"])  # the default period
    assert kms.get_key_rotation_status(KeyId=md["KeyId"])["RotationPeriodInDays"] == 365
    with pytest.raises(ClientError) as e:
        kms.enable_key_rotation(KeyId=md["KeyId"], RotationPeriodInDays=2561)  # botocore checks only the minimum
    error_of(e, "ValidationException")
    kms.disable_key_rotation(KeyId=md["KeyId"])
    status = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert status["KeyRotationEnabled"] is False and "NextRotationDate" not in status


def test_rotate_key_on_demand_and_list_key_rotations(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    old = kms.encrypt(KeyId=key, Plaintext=b"made before the rotation")["CiphertextBlob"]
    answer = kms.rotate_key_on_demand(KeyId=key)
    assert answer["KeyId"] in (key, kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"])
    rotations = kms.list_key_rotations(KeyId=key)
    assert rotations["Truncated"] is False
    on_demand = [r for r in rotations["Rotations"] if r.get("RotationType") == "ON_DEMAND"]
    assert len(on_demand) == 1
    assert on_demand[0]["KeyId"] == key and isinstance(on_demand[0]["RotationDate"], datetime)
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"made before the rotation"
    new = kms.encrypt(KeyId=key, Plaintext=b"after")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=new)["Plaintext"] == b"after"


def test_list_key_rotations_lists_only_rotations_by_default(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    assert kms.list_key_rotations(KeyId=key)["Rotations"] == []
    kms.rotate_key_on_demand(KeyId=key)
    (only,) = kms.list_key_rotations(KeyId=key)["Rotations"]
    assert only["RotationType"] == "ON_DEMAND"


def test_list_key_rotations_takes_include_key_material(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    kms.rotate_key_on_demand(KeyId=key)
    assert len(kms.list_key_rotations(KeyId=key, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]) == 2
    assert len(kms.list_key_rotations(KeyId=key, IncludeKeyMaterial="ROTATIONS_ONLY")["Rotations"]) == 1


# -- cryptography -----------------------------------------------------------------------------
def test_encrypt_decrypt_with_and_without_context(served: Served) -> None:
    kms = served.client()
    md = new_key(served)
    kms.create_alias(AliasName="alias/crypto", TargetKeyId=md["KeyId"])
    plain = bytes(range(256)) * 4
    enc = kms.encrypt(KeyId="alias/crypto", Plaintext=plain)
    assert enc["KeyId"] == md["Arn"] and enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert plain not in enc["CiphertextBlob"]
    dec = kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])  # no KeyId: the blob names its key
    assert dec["Plaintext"] == plain and dec["KeyId"] == md["Arn"]
    assert dec["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert kms.decrypt(CiphertextBlob=enc["CiphertextBlob"], KeyId=md["Arn"])["Plaintext"] == plain
    assert kms.decrypt(CiphertextBlob=enc["CiphertextBlob"], KeyId="alias/crypto")["Plaintext"] == plain

    context = {"app": "billing", "env": "prod"}
    blob = kms.encrypt(KeyId=md["KeyId"], Plaintext=b"secret", EncryptionContext=context)["CiphertextBlob"]
    # Any order of the same pairs.
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"env": "prod", "app": "billing"})["Plaintext"] \
        == b"secret"
    for wrong in ({}, {"app": "billing"}, {"app": "billing", "env": "dev"},
                  {"app": "billing", "env": "prod", "x": "y"}):
        with pytest.raises(ClientError) as e:
            kms.decrypt(CiphertextBlob=blob, **({"EncryptionContext": wrong} if wrong else {}))
        error_of(e, "InvalidCiphertextException")
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob[:-1], EncryptionContext=context)
    error_of(e, "InvalidCiphertextException")
    tampered = bytearray(blob)
    tampered[-5] ^= 1
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=bytes(tampered), EncryptionContext=context)
    error_of(e, "InvalidCiphertextException")
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=b"\x00" * 64)
    error_of(e, "InvalidCiphertextException")


def test_decrypt_with_another_keys_id_is_incorrect_key(served: Served) -> None:
    kms = served.client()
    one, two = new_key(served)["KeyId"], new_key(served)["KeyId"]
    blob = kms.encrypt(KeyId=one, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, KeyId=two)
    error_of(e, "IncorrectKeyException")


def test_plaintext_over_4096_bytes_is_awss_validation_error(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    assert kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=key, Plaintext=b"x" * 4096)["CiphertextBlob"]
                       )["Plaintext"] == b"x" * 4096
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x" * 4097)
    response = error_of(e, "ValidationException")
    assert response["Error"]["Message"] == MAX_PLAINTEXT_MESSAGE


def test_re_encrypt_moves_a_ciphertext_to_another_key(served: Served) -> None:
    kms = served.client()
    src, dst = new_key(served), new_key(served)
    blob = kms.encrypt(KeyId=src["KeyId"], Plaintext=b"moving", EncryptionContext={"a": "1"})["CiphertextBlob"]
    moved = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"a": "1"},
                           DestinationKeyId=dst["KeyId"], DestinationEncryptionContext={"b": "2"})
    assert moved["SourceKeyId"] == src["Arn"] and moved["KeyId"] == dst["Arn"]
    assert moved["SourceEncryptionAlgorithm"] == moved["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    dec = kms.decrypt(CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"b": "2"})
    assert dec["Plaintext"] == b"moving" and dec["KeyId"] == dst["Arn"]
    with pytest.raises(ClientError) as e:
        kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=dst["KeyId"])  # source context missing
    error_of(e, "InvalidCiphertextException")


def test_generate_data_key_by_spec_and_by_size(served: Served) -> None:
    kms = served.client()
    md = new_key(served)
    for args, size in (({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16), ({"NumberOfBytes": 1}, 1),
                       ({"NumberOfBytes": 64}, 64), ({"NumberOfBytes": 1024}, 1024)):
        dk = kms.generate_data_key(KeyId=md["KeyId"], EncryptionContext={"f": "x"}, **args)
        assert len(dk["Plaintext"]) == size and dk["KeyId"] == md["Arn"]
        assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"f": "x"})["Plaintext"] \
            == dk["Plaintext"]
    for bad in ({}, {"KeySpec": "AES_256", "NumberOfBytes": 32}, {"NumberOfBytes": 1025}):
        with pytest.raises(ClientError) as e:
            kms.generate_data_key(KeyId=md["KeyId"], **bad)
        error_of(e, "ValidationException")


def test_generate_data_key_without_plaintext(served: Served) -> None:
    kms = served.client()
    md = new_key(served)
    dk = kms.generate_data_key_without_plaintext(KeyId=md["KeyId"], KeySpec="AES_256")
    assert "Plaintext" not in dk and dk["KeyId"] == md["Arn"]
    assert len(kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"]) == 32
    dk = kms.generate_data_key_without_plaintext(KeyId=md["KeyId"], NumberOfBytes=48)
    assert len(kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"]) == 48


def test_generate_random(served: Served) -> None:
    kms = served.client()
    one, two = kms.generate_random(NumberOfBytes=64)["Plaintext"], kms.generate_random(NumberOfBytes=64)["Plaintext"]
    assert len(one) == len(two) == 64 and one != two
    assert len(kms.generate_random(NumberOfBytes=1)["Plaintext"]) == 1
    assert len(kms.generate_random(NumberOfBytes=1024)["Plaintext"]) == 1024
    with pytest.raises(ClientError) as e:
        kms.generate_random(NumberOfBytes=1025)  # botocore checks only the minimum
    error_of(e, "ValidationException")


# -- regions ----------------------------------------------------------------------------------
def test_keys_belong_to_the_region_of_the_signature(served: Served) -> None:
    md = new_key(served, "us-east-1")
    assert KEY_ARN.fullmatch(md["Arn"]).group("region") == "us-east-1"  # type: ignore[union-attr]
    europe = served.client(region="eu-west-1")
    for name in (md["KeyId"], md["Arn"]):
        with pytest.raises(ClientError) as e:
            europe.describe_key(KeyId=name)
        error_of(e, "NotFoundException")
    with pytest.raises(ClientError) as e:
        europe.encrypt(KeyId=md["KeyId"], Plaintext=b"x")
    error_of(e, "NotFoundException")
    assert md["KeyId"] not in {k["KeyId"] for k in europe.list_keys()["Keys"]}
    # A ciphertext of a us-east-1 key does not decrypt in eu-west-1 either.
    blob = served.client(region="us-east-1").encrypt(KeyId=md["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        europe.decrypt(CiphertextBlob=blob)
    assert e.value.response["Error"]["Code"] in ("InvalidCiphertextException", "NotFoundException")
    # An alias is regional too.
    served.client(region="us-east-1").create_alias(AliasName="alias/regional", TargetKeyId=md["KeyId"])
    with pytest.raises(ClientError) as e:
        europe.describe_key(KeyId="alias/regional")
    error_of(e, "NotFoundException")
    # The region "local" (the CLI's default) works like any other.
    local = new_key(served, "local")
    assert local["Arn"] == f"arn:aws:kms:local:{served.account}:key/{local['KeyId']}"


# -- the audit record of each call -------------------------------------------------------------
def test_request_id_is_the_audit_records_request_id(served: Served) -> None:
    kms = served.client()
    created = kms.create_key(Description="audited")
    key = created["KeyMetadata"]["KeyId"]
    rec = served.record(created["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "CreateKey" and "errorCode" not in rec
    assert key in json.dumps(rec["responseElements"])
    enc = kms.encrypt(KeyId=key, Plaintext=b"top secret", EncryptionContext={"case": "42"})
    rec = served.record(enc["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "Encrypt"
    assert rec["requestParameters"]["encryptionContext"] == {"case": "42"}
    assert rec["sourceIPAddress"] == "127.0.0.1" and "Boto3/" in rec["userAgent"]
    assert rec["userIdentity"]["userName"] == "alice"
    assert rec["userIdentity"]["accessKeyId"] == served.creds["alice"].access_key_id
    assert rec["userIdentity"]["arn"] == served.principal("alice")
    line = next(x for x in served.audit_path.read_text().splitlines() if enc["ResponseMetadata"]["RequestId"] in x)
    assert "top secret" not in line and "CiphertextBlob" not in line
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId="alias/never-made")
    rec = served.record(error_of(e, "NotFoundException")["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "DescribeKey" and rec["errorCode"] == "NotFoundException"


def test_a_request_refused_before_the_service_is_still_recorded(served: Served) -> None:
    kms = served.client()
    key = new_key(served)["KeyId"]
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x" * 4097)
    rec = served.record(error_of(e, "ValidationException")["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "Encrypt" and rec["errorCode"] == "ValidationException"


def test_an_endpoint_url_with_a_path_works(served: Served) -> None:
    """botocore posts to the endpoint's path as given (moto and local-kms 404 there)."""
    for path in ("/kms", "/some/deeper/path"):
        kms = served.client(endpoint=served.url + path)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        assert kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=key, Plaintext=b"p")["CiphertextBlob"])["Plaintext"] \
            == b"p"


def test_the_endpoint_can_come_from_aws_endpoint_url_kms(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    cred = served.creds["alice"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", served.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cred.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", cred.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "local")
    kms = boto3.session.Session().client("kms")
    assert kms.meta.endpoint_url == served.url
    md = kms.create_key()["KeyMetadata"]
    assert md["Arn"].startswith(f"arn:aws:kms:local:{served.account}:key/")


def test_concurrent_clients(served: Served) -> None:
    """Eight clients at once, writing and reading: every call answered, each recorded exactly once."""
    import threading

    key = new_key(served)["KeyId"]
    request_ids: list[str] = []
    failures: list[BaseException] = []

    def work(n: int) -> None:
        kms = served.client("alice" if n % 2 else "bob")
        try:
            for i in range(9):
                if i % 3 == 0:
                    answer = kms.create_key(Description=f"concurrent {n}/{i}")
                    request_ids.append(answer["ResponseMetadata"]["RequestId"])
                else:
                    enc = kms.encrypt(KeyId=key, Plaintext=f"{n}/{i}".encode())
                    dec = kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])
                    assert dec["Plaintext"] == f"{n}/{i}".encode()
                    request_ids.extend(r["ResponseMetadata"]["RequestId"] for r in (enc, dec))
                    assert enc["ResponseMetadata"]["RetryAttempts"] == dec["ResponseMetadata"]["RetryAttempts"] == 0
        except BaseException as e:  # reported below, in the test's thread
            failures.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HANG_GUARD_S)
    assert not [t for t in threads if t.is_alive()]
    assert failures == []
    assert len(request_ids) == 8 * 15 and len(set(request_ids)) == len(request_ids)
    recorded = [r["requestID"] for r in served.audit() if r.get("requestID") in set(request_ids)]
    assert sorted(recorded) == sorted(request_ids)


def test_the_served_vault_is_the_cli_vault(served: Served, tmp_path: Path) -> None:
    """Keys, aliases and ciphertexts cross between the kmscli CLI and the wire (region "local", the CLI's)."""
    folder = tmp_path
    cli_key = ok(served.kms("keys", "create", "--description", "made by the CLI", "--alias", "alias/from-cli"))
    cli_key_id = cli_key.stdout.decode().strip()
    kms = served.client(region="local")
    md = kms.describe_key(KeyId="alias/from-cli")["KeyMetadata"]
    assert md["KeyId"] == cli_key_id and md["Description"] == "made by the CLI"
    # The wire's ciphertext decrypts with the CLI, and the CLI's with the wire.
    (folder / "wire.bin").write_bytes(kms.encrypt(KeyId=cli_key_id, Plaintext=b"from the wire",
                                                  EncryptionContext={"k": "v"})["CiphertextBlob"])
    r = ok(served.kms("decrypt", "--in", str(folder / "wire.bin"), "--context", "k=v"))
    assert r.stdout == b"from the wire"
    (folder / "plain.txt").write_bytes(b"from the CLI")
    ok(served.kms("encrypt", "--key", "alias/from-cli", "--in", str(folder / "plain.txt"),
                  "--out", str(folder / "cli.bin")))
    assert kms.decrypt(CiphertextBlob=(folder / "cli.bin").read_bytes())["Plaintext"] == b"from the CLI"
    # A key made on the wire in "local" is listed by the CLI.
    wire_key = kms.create_key(Description="made on the wire")["KeyMetadata"]["KeyId"]
    listed = json.loads(ok(served.kms("keys", "list", "--json")).stdout)
    assert wire_key in {k["KeyId"] for k in listed["Keys"]}


def test_a_client_cannot_name_its_own_source_address(served: Served) -> None:
    """The record's sourceIPAddress is the connection's peer. A proxy header (X-Forwarded-For, Forwarded,
    X-Real-IP) is the client's word, and every local client is on loopback, which uvicorn trusts for
    them by default: honoured, it would let any caller write another address into the audit log."""
    kms = served.client()
    key = new_key(served)["KeyId"]

    def forge(request: Any, **_: Any) -> None:
        request.headers["X-Forwarded-For"] = "203.0.113.9"
        request.headers["X-Real-IP"] = "203.0.113.10"
        request.headers["Forwarded"] = "for=203.0.113.11;proto=https"
        request.headers["X-Forwarded-Proto"] = "https"

    kms.meta.events.register("before-send.kms.*", forge)
    enc = kms.encrypt(KeyId=key, Plaintext=b"x")
    rec = served.record(enc["ResponseMetadata"]["RequestId"])
    assert rec["sourceIPAddress"] == "127.0.0.1"
