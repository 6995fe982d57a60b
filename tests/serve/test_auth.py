"""Who may call `kmscli serve`: SigV4 as AWS checks it, and key policies per credential."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError

from tests.serve.conftest import (
    REGION,
    Served,
    assert_aws_error,
    body_of,
    error_of,
    make_client,
    ok,
    op,
    send,
    sign,
    signed_post,
)

MSG_UNKNOWN_KEY = "The security token included in the request is invalid."
MSG_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS "
                "Secret Access Key and signing method. Consult the service documentation for details.")


# -- key policies per credential ---------------------------------------------------------------
def alice_all_bob_no_decrypt(account: str) -> str:
    alice, bob = f"arn:aws:iam::{account}:user/alice", f"arn:aws:iam::{account}:user/bob"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AliceEverything", "Effect": "Allow", "Principal": {"AWS": alice}, "Action": "kms:*",
             "Resource": "*"},
            {"Sid": "BobUses", "Effect": "Allow", "Principal": {"AWS": bob},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*"},
            {"Sid": "BobNeverDecrypts", "Effect": "Deny", "Principal": {"AWS": bob}, "Action": "kms:Decrypt",
             "Resource": "*"},
        ],
    })


def test_a_key_policy_tells_credentials_apart(served: Served) -> None:
    alice, bob = served.client("alice"), served.client("bob")
    md = alice.create_key(Policy=alice_all_bob_no_decrypt(served.account))["KeyMetadata"]
    key = md["KeyId"]
    blob = bob.encrypt(KeyId=key, Plaintext=b"for alice only")["CiphertextBlob"]
    assert bob.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == md["Arn"]

    with pytest.raises(ClientError) as e:
        bob.decrypt(CiphertextBlob=blob)
    response = error_of(e, "AccessDeniedException")
    message = response["Error"]["Message"]
    assert served.principal("bob") in message, message
    assert "kms:Decrypt" in message, message

    assert alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"for alice only"
    # Nothing allows bob what the policy does not list.
    with pytest.raises(ClientError) as e:
        bob.get_key_policy(KeyId=key)
    error_of(e, "AccessDeniedException")
    with pytest.raises(ClientError) as e:
        bob.schedule_key_deletion(KeyId=key)
    error_of(e, "AccessDeniedException")

    # The refused call's record: who, from where, with what, and why it failed.
    rec = served.record(response["ResponseMetadata"]["RequestId"])
    assert rec["eventName"] == "Decrypt"
    assert rec["errorCode"] == "AccessDeniedException"
    assert rec["userIdentity"]["userName"] == "bob"
    assert rec["userIdentity"]["accessKeyId"] == served.creds["bob"].access_key_id
    assert rec["userIdentity"]["arn"] == served.principal("bob")
    assert rec["sourceIPAddress"] == "127.0.0.1"
    assert "Boto3" in rec["userAgent"]
    assert "for alice only" not in json.dumps(rec)


def test_put_key_policy_has_the_lockout_check_and_its_bypass(served: Served) -> None:
    alice, bob = served.client("alice"), served.client("bob")
    key = alice.create_key()["KeyMetadata"]["KeyId"]
    bob_only = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "BobOnly", "Effect": "Allow", "Principal": {"AWS": served.principal("bob")}, "Action": "kms:*",
         "Resource": "*"}]})
    with pytest.raises(ClientError) as e:
        alice.put_key_policy(KeyId=key, PolicyName="default", Policy=bob_only)
    error_of(e, "MalformedPolicyDocumentException")
    alice.put_key_policy(KeyId=key, PolicyName="default", Policy=bob_only, BypassPolicyLockoutSafetyCheck=True)
    with pytest.raises(ClientError) as e:
        alice.get_key_policy(KeyId=key, PolicyName="default")
    error_of(e, "AccessDeniedException")
    assert bob.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == bob_only
    # A principal of another account can never match a caller of this vault: refused when stored.
    other = bob_only.replace(served.account, "999999999999")
    with pytest.raises(ClientError) as e:
        bob.put_key_policy(KeyId=key, PolicyName="default", Policy=other, BypassPolicyLockoutSafetyCheck=True)
    error_of(e, "MalformedPolicyDocumentException")


# -- authentication ----------------------------------------------------------------------------
def test_an_unknown_access_key_is_unrecognized(served: Served) -> None:
    kms = make_client(served.url, "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    with pytest.raises(ClientError) as e:
        kms.list_keys()
    assert error_of(e, "UnrecognizedClientException")["Error"]["Message"] == MSG_UNKNOWN_KEY


def test_a_wrong_secret_is_an_invalid_signature(served: Served) -> None:
    kms = make_client(served.url, served.creds["alice"].access_key_id, served.creds["bob"].secret)
    with pytest.raises(ClientError) as e:
        kms.list_keys()
    assert error_of(e, "InvalidSignatureException")["Error"]["Message"] == MSG_MISMATCH


def test_an_unsigned_request_is_missing_its_token(served: Served) -> None:
    r = send(served.url, {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": op("ListKeys")}, b"{}")
    assert assert_aws_error(r, "MissingAuthenticationTokenException")["message"] == \
        "Request is missing Authentication Token"
    # Another scheme than SigV4 is no token either.
    r = send(served.url, {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": op("ListKeys"),
                          "Authorization": "Basic YWxpY2U6c2VjcmV0"}, b"{}")
    assert_aws_error(r, "MissingAuthenticationTokenException")


@pytest.mark.parametrize("minutes", [-6, 6, -60 * 24])
def test_more_than_five_minutes_of_clock_skew_is_an_invalid_signature(served: Served, minutes: int) -> None:
    cred = served.creds["alice"]
    r = signed_post(served.url, op("ListKeys"), b"{}", cred.access_key_id, cred.secret,
                    skew=timedelta(minutes=minutes))
    message = assert_aws_error(r, "InvalidSignatureException")["message"]
    assert message.startswith("Signature expired" if minutes < 0 else "Signature not yet current"), message


@pytest.mark.parametrize("minutes", [-4, 4])
def test_less_than_five_minutes_of_skew_is_accepted(served: Served, minutes: int) -> None:
    cred = served.creds["alice"]
    r = signed_post(served.url, op("ListKeys"), b"{}", cred.access_key_id, cred.secret,
                    skew=timedelta(minutes=minutes))
    assert r.status == 200, r.body


def test_boto3_signing_with_a_slow_clock_is_refused_without_retries(served: Served) -> None:
    from datetime import UTC, datetime
    from unittest import mock

    kms = served.client()
    past = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=6)
    with mock.patch("botocore.auth.get_current_datetime", lambda *a, **k: past), pytest.raises(ClientError) as e:
        kms.list_keys()
    error_of(e, "InvalidSignatureException")


def test_what_was_signed_is_what_counts(served: Served) -> None:
    cred = served.creds["alice"]
    body = body_of({"Limit": 1})
    headers = sign(served.url, op("ListKeys"), body, cred.access_key_id, cred.secret)
    assert send(served.url, headers, body).status == 200
    # Another body, target or region than the signed ones.
    assert_aws_error(send(served.url, headers, body_of({"Limit": 2})), "InvalidSignatureException")
    assert_aws_error(send(served.url, {**headers, "X-Amz-Target": op("ListAliases")}, body),
                     "InvalidSignatureException")
    forged = {**headers, "Authorization": headers["Authorization"].replace(f"/{REGION}/", "/eu-west-1/")}
    assert_aws_error(send(served.url, forged, body), "InvalidSignatureException")
    # A path other than the signed one.
    assert_aws_error(send(served.url, headers, body, path="/kms"), "InvalidSignatureException")


def test_the_operation_must_be_signed(served: Served) -> None:
    """An unsigned X-Amz-Target would let a captured request run as another operation with the same body."""
    cred = served.creds["alice"]
    body = body_of({})
    headers = sign(served.url, None, body, cred.access_key_id, cred.secret)  # signed without a target
    r = send(served.url, {**headers, "X-Amz-Target": op("ListKeys")}, body)
    assert "target" in assert_aws_error(r, "InvalidSignatureException")["message"].lower()


def test_a_deleted_credential_is_refused_at_once_while_the_server_runs(served: Served) -> None:
    carol = served.add_credential("carol")  # made while the server runs: it works without a restart
    kms = make_client(served.url, carol.access_key_id, carol.secret)
    assert kms.list_keys()["ResponseMetadata"]["HTTPStatusCode"] == 200
    ok(served.kms("credentials", "delete", carol.access_key_id))
    with pytest.raises(ClientError) as e:
        kms.list_keys()
    error_of(e, "UnrecognizedClientException")
    assert served.server.alive()
    assert served.client("alice").list_keys()["ResponseMetadata"]["HTTPStatusCode"] == 200
