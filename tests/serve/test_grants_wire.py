"""Grants on the wire: boto3, unmodified, against `kmscli serve` (issue 17).

alice owns each key, and its policy allows alice alone; bob (a credential of
his own, so a user of his own) gets in only through a grant. Every answer,
success or error, is checked as it arrives: a 200 against botocore's model
(``tests/aws/botocore_model.wire_errors``), an error as AWS's
``{"__type", "message"}`` on HTTP 400. The AWS CLI lists grants once.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import HANG_GUARD_S
from tests.serve.conftest import REGION, VENV_BIN, Served, WireLog, error_of

AWS = VENV_BIN / "aws"


@pytest.fixture(scope="module")
def wire() -> WireLog:
    return WireLog()


@pytest.fixture(autouse=True)
def _answers_are_awss(wire: WireLog) -> Iterator[None]:
    yield
    problems, wire.problems[:] = list(wire.problems), []
    assert problems == [], problems


@dataclass
class Users:
    served: Served
    wire: WireLog
    region: str = REGION
    clients: dict[str, Any] = field(default_factory=dict)

    def __call__(self, user: str) -> Any:
        if user not in self.clients:
            client = self.served.client(user, self.region)
            client.meta.events.register("after-call.kms", self.wire)
            self.clients[user] = client
        return self.clients[user]

    def arn(self, user: str) -> str:
        return self.served.principal(user)

    def alices_key(self, **kw: Any) -> str:
        policy = {"Version": "2012-10-17", "Statement": [
            {"Sid": "AliceOnly", "Effect": "Allow", "Principal": {"AWS": self.arn("alice")}, "Action": "kms:*",
             "Resource": "*"}]}
        return str(self("alice").create_key(Policy=json.dumps(policy), **kw)["KeyMetadata"]["KeyId"])


@pytest.fixture
def users(served: Served, wire: WireLog) -> Users:
    return Users(served, wire)


def fails(code: str, fn: Any, **kw: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as e:
        fn(**kw)
    return error_of(e, code)


def test_a_grant_lets_bob_use_alices_key(users: Users, served: Served) -> None:
    alice, bob = users("alice"), users("bob")
    key = users.alices_key()
    fails("AccessDeniedException", bob.encrypt, KeyId=key, Plaintext=b"x")
    made = alice.create_grant(KeyId=key, GranteePrincipal=users.arn("bob"), Name="bob-app",
                              Operations=["Encrypt", "Decrypt", "DescribeKey"])
    assert set(made) == {"GrantToken", "GrantId", "ResponseMetadata"}
    token = made["GrantToken"]
    ct = bob.encrypt(KeyId=key, Plaintext=b"for bob")["CiphertextBlob"]
    ct2 = bob.encrypt(KeyId=key, Plaintext=b"with the token", GrantTokens=[token])["CiphertextBlob"]
    assert bob.decrypt(CiphertextBlob=ct)["Plaintext"] == b"for bob"
    answer = bob.decrypt(CiphertextBlob=ct2, GrantTokens=[token])
    assert answer["Plaintext"] == b"with the token"
    record = served.record(answer["ResponseMetadata"]["RequestId"])
    assert record["eventName"] == "Decrypt" and record["userIdentity"]["userName"] == "bob"
    assert record["additionalEventData"]["grantId"] == made["GrantId"]
    own = served.record(alice.describe_key(KeyId=key)["ResponseMetadata"]["RequestId"])
    assert "grantId" not in own.get("additionalEventData", {})
    assert bob.describe_key(KeyId=key, GrantTokens=[token])["KeyMetadata"]["KeyId"] == key
    # Nothing beyond the grant.
    fails("AccessDeniedException", bob.generate_data_key, KeyId=key, KeySpec="AES_256")
    fails("AccessDeniedException", bob.list_grants, KeyId=key)
    fails("AccessDeniedException", bob.create_grant, KeyId=key, GranteePrincipal=users.arn("bob"),
          Operations=["GenerateDataKey"])
    fails("AccessDeniedException", bob.revoke_grant, KeyId=key, GrantId=made["GrantId"])
    fails("AccessDeniedException", bob.retire_grant, GrantToken=token)  # not retiring, no RetireGrant
    # The same name and arguments: the same grant, a new token; no token is ever in the audit log.
    again = alice.create_grant(KeyId=key, GranteePrincipal=users.arn("bob"), Name="bob-app",
                               Operations=["DescribeKey", "Decrypt", "Encrypt"])
    assert again["GrantId"] == made["GrantId"] and again["GrantToken"] != token
    log = served.audit_path.read_text()
    assert token not in log and again["GrantToken"] not in log
    alice.revoke_grant(KeyId=key, GrantId=made["GrantId"])
    fails("AccessDeniedException", bob.encrypt, KeyId=key, Plaintext=b"x")
    fails("AccessDeniedException", bob.decrypt, CiphertextBlob=ct)
    assert alice.decrypt(CiphertextBlob=ct)["Plaintext"] == b"for bob"
    fails("NotFoundException", alice.revoke_grant, KeyId=key, GrantId=made["GrantId"])


def test_constraints_on_the_wire(users: Users) -> None:
    alice, bob = users("alice"), users("bob")
    key = users.alices_key()
    alice.create_grant(KeyId=key, GranteePrincipal=users.arn("bob"), Operations=["Encrypt", "GenerateDataKey"],
                       Constraints={"EncryptionContextSubset": {"app": "x"}})
    bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"app": "x", "env": "prod"})
    bob.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext={"app": "x"})
    for context in ({}, {"app": "y"}, {"env": "prod"}):
        fails("AccessDeniedException", bob.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext=context)
    listed = alice.list_grants(KeyId=key)["Grants"]
    assert listed[0]["Constraints"] == {"EncryptionContextSubset": {"app": "x"}}


def test_list_grants_and_list_retirable_grants(served: Served, wire: WireLog) -> None:
    users = Users(served, wire, region="eu-west-3")  # a region of this test's own: ListRetirableGrants spans keys
    alice, bob = users("alice"), users("bob")
    k1, k2 = users.alices_key(), users.alices_key()
    made = [alice.create_grant(KeyId=k, GranteePrincipal=users.arn("bob"), Operations=ops,
                               RetiringPrincipal=users.arn("bob"))["GrantId"]
            for k, ops in ((k1, ["Encrypt"]), (k1, ["Decrypt"]), (k2, ["DescribeKey"]))]
    other = alice.create_grant(KeyId=k1, GranteePrincipal=users.arn("alice"), Operations=["Encrypt"])["GrantId"]
    everything = alice.list_grants(KeyId=k1)
    assert {g["GrantId"] for g in everything["Grants"]} == {made[0], made[1], other}
    assert everything["Truncated"] is False and "NextMarker" not in everything
    g = next(g for g in everything["Grants"] if g["GrantId"] == made[0])
    assert g["KeyId"] == f"arn:aws:kms:eu-west-3:{served.account}:key/{k1}"
    assert g["GranteePrincipal"] == g["RetiringPrincipal"] == users.arn("bob")
    assert g["IssuingAccount"] == f"arn:aws:iam::{served.account}:root" and g["Operations"] == ["Encrypt"]
    seen, marker = [], None
    while True:
        page = alice.list_grants(KeyId=k1, Limit=1, **({"Marker": marker} if marker else {}))
        assert len(page["Grants"]) == 1
        seen.append(page["Grants"][0]["GrantId"])
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert sorted(seen) == sorted(made[:2] + [other])
    assert [x["GrantId"] for x in alice.list_grants(KeyId=k1, GrantId=made[1])["Grants"]] == [made[1]]
    only_alice = alice.list_grants(KeyId=k1, GranteePrincipal=users.arn("alice"))["Grants"]
    assert [x["GrantId"] for x in only_alice] == [other]
    # ListRetirableGrants: every key's, no policy consulted; this region's only.
    retirable = bob.list_retirable_grants(RetiringPrincipal=users.arn("bob"))
    assert sorted(x["GrantId"] for x in retirable["Grants"]) == sorted(made)
    assert users("alice").list_retirable_grants(RetiringPrincipal=users.arn("alice"))["Grants"] == []
    elsewhere = served.client("bob", REGION).list_retirable_grants(RetiringPrincipal=users.arn("bob"))
    assert made[0] not in {x["GrantId"] for x in elsewhere["Grants"]}
    fails("ValidationException", alice.list_grants, KeyId=k1, GranteePrincipal="arn:aws:iam::000000000000:user/x")
    fails("InvalidMarkerException", alice.list_grants, KeyId=k1, Marker="bm90LWEtbWFya2Vy")


def test_retire_by_token_and_by_id_then_revoke(users: Users) -> None:
    alice, bob = users("alice"), users("bob")
    key = users.alices_key()
    by_token = alice.create_grant(KeyId=key, GranteePrincipal=users.arn("bob"),
                                  Operations=["Encrypt", "RetireGrant"])
    by_id = alice.create_grant(KeyId=key, GranteePrincipal=users.arn("alice"), Operations=["Encrypt"],
                               RetiringPrincipal=users.arn("bob"))
    revoked = alice.create_grant(KeyId=key, GranteePrincipal=users.arn("bob"), Operations=["Decrypt"])
    bob.encrypt(KeyId=key, Plaintext=b"x")
    assert set(bob.retire_grant(GrantToken=by_token["GrantToken"])) == {"ResponseMetadata"}
    fails("AccessDeniedException", bob.encrypt, KeyId=key, Plaintext=b"x")
    bob.retire_grant(KeyId=key, GrantId=by_id["GrantId"])  # bob is its retiring principal
    fails("AccessDeniedException", bob.retire_grant, KeyId=key, GrantId=revoked["GrantId"])
    alice.revoke_grant(KeyId=key, GrantId=revoked["GrantId"])
    assert alice.list_grants(KeyId=key)["Grants"] == []
    fails("NotFoundException", bob.retire_grant, KeyId=key, GrantId=by_id["GrantId"])
    fails("NotFoundException", alice.retire_grant, GrantToken=by_token["GrantToken"])


def test_bad_grant_tokens_and_bad_grants(users: Users) -> None:
    alice, bob = users("alice"), users("bob")
    key, other = users.alices_key(), users.alices_key()
    token = alice.create_grant(KeyId=key, GranteePrincipal=users.arn("bob"), Operations=["Encrypt"])["GrantToken"]
    other_token = alice.create_grant(KeyId=other, GranteePrincipal=users.arn("bob"),
                                     Operations=["Encrypt"])["GrantToken"]
    for bad in ("garbage", token[:-2], other_token):
        for who in (alice, bob):  # alice's policy would allow the call: the token is refused all the same
            error = fails("InvalidGrantTokenException", who.encrypt, KeyId=key, Plaintext=b"x", GrantTokens=[bad])
            assert error["Error"]["Message"]
    fails("InvalidGrantTokenException", alice.describe_key, KeyId=key, GrantTokens=["garbage"])
    fails("InvalidGrantTokenException", alice.create_grant, KeyId=key, GranteePrincipal=users.arn("bob"),
          Operations=["Decrypt"], GrantTokens=["garbage"])
    fails("InvalidGrantTokenException", bob.retire_grant, GrantToken="garbage")
    bob.encrypt(KeyId=key, Plaintext=b"x", GrantTokens=[token])
    # Grants the key cannot have, principals of no user of this vault.
    fails("ValidationException", alice.create_grant, KeyId=key, GranteePrincipal=users.arn("bob"),
          Operations=["Sign"])
    hmac_key = users.alices_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    fails("ValidationException", alice.create_grant, KeyId=hmac_key, GranteePrincipal=users.arn("bob"),
          Operations=["Encrypt"])
    fails("ValidationException", alice.create_grant, KeyId=key, GranteePrincipal="arn:aws:iam::000000000000:root",
          Operations=["Encrypt"])
    for service in ("kms.amazonaws.com", "kms.amazonaws.com/x"):  # no service principal calls a vault
        fails("ValidationException", alice.create_grant, KeyId=key, GranteePrincipal=service,
              Operations=["Encrypt"])
    fails("NotFoundException", alice.revoke_grant, KeyId=key, GrantId="0" * 64)
    alice.disable_key(KeyId=key)
    fails("DisabledException", alice.create_grant, KeyId=key, GranteePrincipal=users.arn("bob"),
          Operations=["Encrypt"])
    assert len(alice.list_grants(KeyId=key)["Grants"]) == 1  # listing works in any state


@pytest.mark.skipif(not AWS.exists(), reason="the AWS CLI is not installed beside this interpreter")
def test_the_aws_cli_lists_grants(users: Users, served: Served) -> None:
    key = users.alices_key()
    made = users("alice").create_grant(KeyId=key, GranteePrincipal=users.arn("bob"), Operations=["Encrypt"],
                                       Name="from-boto3")
    r = subprocess.run([str(AWS), "kms", "list-grants", "--key-id", key], capture_output=True,
                       env=served.aws_env(AWS_DEFAULT_REGION=REGION), timeout=HANG_GUARD_S,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [(g["GrantId"], g["Name"], g["Operations"]) for g in listed["Grants"]] == [
        (made["GrantId"], "from-boto3", ["Encrypt"])]
    assert isinstance(listed["Grants"][0]["CreationDate"], (int, float))  # CLI v1 prints the wire's epoch seconds
