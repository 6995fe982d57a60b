"""Every key, alias, policy, grant and crypto command in remote mode, against moto's server and `kmscli serve`.

Each test runs the real ``kmscli`` with ``KMSCLI_ENDPOINT`` (tests/remote/conftest.py),
in a region of its own and an empty HOME that must still be empty afterwards.
Output is asserted exactly: a table (tab-separated, as in a pipe) line by
line, a ``--json`` document against botocore's model of the operation's
response and member by member. Where moto answers differently from AWS, the
test says so beside the assertion; where moto lacks a feature it is skipped on
moto with the gap named.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S, fails, kmscli_command, ok
from tests.remote.conftest import Remote, assert_empty, aws_json, lines, remote_env, run_in, when

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TABLE_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def key_id_of(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def quiet(r: subprocess.CompletedProcess) -> None:
    """Succeeded and said nothing on either stream (a command that only changes something, in a pipe)."""
    ok(r)
    assert (r.stdout, r.stderr) == (b"", b""), (r.stdout, r.stderr)


def near(timestamp: str, days: int) -> bool:
    """``timestamp`` is ``days`` from now, give or take a day (the clock, not the machine's speed)."""
    delta = datetime.fromisoformat(timestamp) - datetime.now(UTC)
    return timedelta(days=days - 1) < delta < timedelta(days=days + 1)


# -- keys -------------------------------------------------------------------------------------
def test_keys_create_describe_list_and_tags(remote: Remote) -> None:
    r = ok(remote.run("keys", "create", "--description", "payments key", "--tag", "team=core", "--tag", "env=prod",
                      "--alias", "alias/payments"))
    assert re.fullmatch(UUID + "\n", r.stdout.decode()) and r.stderr == b""  # the key id alone
    key_id = r.stdout.decode().strip()
    arn = remote.arn(key_id)
    rsa = remote.create_key_metadata("--spec", "RSA_2048", "--usage", "SIGN_VERIFY", "--description", "signer")
    assert (rsa["KeySpec"], rsa["KeyUsage"], rsa["KeyState"]) == ("RSA_2048", "SIGN_VERIFY", "Enabled")
    assert set(rsa["SigningAlgorithms"]) == {f"RSASSA_{p}_SHA_{n}" for p in ("PSS", "PKCS1_V1_5")
                                             for n in (256, 384, 512)}

    described, table, listing, listed = remote.run_all(
        ("keys", "describe", "alias/payments", "--json"), ("keys", "describe", key_id), ("keys", "list"),
        ("keys", "list", "--json"))
    meta = aws_json("DescribeKey", ok(described).stdout)["KeyMetadata"]
    assert {k: meta[k] for k in ("KeyId", "Arn", "AWSAccountId", "Description", "Enabled", "KeyState", "KeySpec",
                                 "Origin", "KeyManager", "EncryptionAlgorithms")} == {
        "KeyId": key_id, "Arn": arn, "AWSAccountId": remote.account, "Description": "payments key", "Enabled": True,
        "KeyState": "Enabled", "KeySpec": "SYMMETRIC_DEFAULT", "Origin": "AWS_KMS", "KeyManager": "CUSTOMER",
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"]}
    # moto sends KeyUsage null when CreateKey names none (AWS: ENCRYPT_DECRYPT), and no CurrentKeyMaterialId.
    usage = "" if remote.is_moto else "ENCRYPT_DECRYPT"
    assert meta.get("KeyUsage", "") == usage
    material = meta.get("CurrentKeyMaterialId", "(one, for the key's life: it never rotates)")
    rows = lines(ok(table))
    assert rows[:-1] == [
        f"KeyId\t{key_id}", f"Arn\t{arn}", "State\tEnabled", "Aliases\talias/payments", "Description\tpayments key",
        f"Created\t{when(meta['CreationDate'])}", "KeySpec\tSYMMETRIC_DEFAULT", f"KeyUsage\t{usage}",
        "Algorithms\tSYMMETRIC_DEFAULT", "Rotation\toff", f"KeyMaterialId\t{material}"]
    name, tags = rows[-1].split("\t")
    assert name == "Tags" and sorted(tags.split(", ")) == ["env=prod", "team=core"]  # in the KMS's order

    # ListKeys' order is the KMS's own: compare as sets.
    assert sorted(lines(ok(listing))) == sorted([
        f"{key_id}\tEnabled\talias/payments\t{when(meta['CreationDate'])}\tpayments key",
        f"{rsa['KeyId']}\tEnabled\t\t{when(rsa['CreationDate'])}\tsigner"])
    doc = aws_json("ListKeys", ok(listed).stdout)
    assert list(doc) == ["Keys", "Truncated"] and doc["Truncated"] is False
    assert sorted(doc["Keys"], key=lambda k: k["KeyId"]) == sorted(
        [{"KeyId": key_id, "KeyArn": arn}, {"KeyId": rsa["KeyId"], "KeyArn": rsa["Arn"]}], key=lambda k: k["KeyId"])

    quiet(remote.run("keys", "tag", key_id, "team=platform", "tier=1"))
    quiet(remote.run("keys", "untag", arn, "env"))
    # ListResourceTags takes a key id or ARN (AWS refuses an alias there).
    found = aws_json("ListResourceTags", ok(remote.run("keys", "tags", arn, "--json")).stdout)
    assert list(found) == ["Tags", "Truncated"] and found["Truncated"] is False
    assert sorted(found["Tags"], key=lambda t: t["TagKey"]) == [{"TagKey": "team", "TagValue": "platform"},
                                                                {"TagKey": "tier", "TagValue": "1"}]


def test_disable_enable_and_scheduled_deletion(remote: Remote) -> None:
    key_id = key_id_of(remote.create_key("--description", "lifecycle"))  # by id: see MOTO_KEY_ID_ONLY
    quiet(remote.run("keys", "disable", key_id))
    assert [row.split("\t")[:3] for row in lines(ok(remote.run("keys", "list")))] == [[key_id, "Disabled", ""]]

    scheduled = aws_json("ScheduleKeyDeletion",
                         ok(remote.run("keys", "schedule-delete", key_id, "--days", "7", "--json")).stdout)
    assert near(scheduled["DeletionDate"], 7)
    if remote.is_moto:  # moto answers the key id and leaves out the state and the window
        assert scheduled == {"KeyId": key_id, "DeletionDate": scheduled["DeletionDate"]}
    else:
        assert scheduled == {"KeyId": remote.arn(key_id), "DeletionDate": scheduled["DeletionDate"],
                             "KeyState": "PendingDeletion", "PendingWindowInDays": 7}
    hidden, shown = remote.run_all(("keys", "list"), ("keys", "list", "--all"))
    assert ok(hidden).stdout == b""  # without --all a key pending deletion is left out, as from the vault
    assert [row.split("\t")[:2] for row in lines(ok(shown))] == [[key_id, "PendingDeletion"]]

    r = ok(remote.run("keys", "cancel-delete", key_id))
    assert r.stdout == b""
    assert r.stderr == b"kmscli: deletion cancelled; the key is Disabled until you run 'kmscli keys enable'\n"
    quiet(remote.run("keys", "enable", key_id))
    assert [row.split("\t")[:2] for row in lines(ok(remote.run("keys", "list")))] == [[key_id, "Enabled"]]


def test_rotation(remote: Remote) -> None:
    arn = remote.create_key()
    key_id = key_id_of(arn)
    quiet(remote.run("keys", "rotation", arn, "--enable", "--days", "100"))
    status, rotated = remote.run_all(("keys", "rotation", arn, "--json"), ("keys", "rotate", key_id, "--json"))
    status_doc = aws_json("GetKeyRotationStatus", ok(status).stdout)
    if remote.is_moto:  # moto keeps no rotation period
        assert status_doc == {"KeyRotationEnabled": True}
    else:
        assert status_doc == {"KeyRotationEnabled": True, "KeyId": arn, "RotationPeriodInDays": 100,
                              "NextRotationDate": status_doc["NextRotationDate"]}
        assert near(status_doc["NextRotationDate"], 100)
    assert aws_json("RotateKeyOnDemand", ok(rotated).stdout) == {"KeyId": key_id}

    rotations = aws_json("ListKeyRotations", ok(remote.run("keys", "rotations", key_id, "--json")).stdout)
    assert list(rotations) == ["Rotations", "Truncated"] and rotations["Truncated"] is False
    found = rotations["Rotations"]
    if remote.is_moto:  # moto lists its on-demand rotations only, without material ids or states
        assert found == [{"KeyId": key_id, "RotationDate": found[0]["RotationDate"], "RotationType": "ON_DEMAND"}]
    else:  # IncludeKeyMaterial=ALL_KEY_MATERIAL: the original material, then the rotation
        first, second = found
        assert first == {"KeyId": key_id, "KeyMaterialId": first["KeyMaterialId"], "KeyMaterialState": "NON_CURRENT"}
        assert second == {"KeyId": key_id, "KeyMaterialId": second["KeyMaterialId"], "KeyMaterialState": "CURRENT",
                          "RotationDate": second["RotationDate"], "RotationType": "ON_DEMAND"}
        assert re.fullmatch("[0-9a-f]{64}", first["KeyMaterialId"])
        assert first["KeyMaterialId"] != second["KeyMaterialId"]

    status_table, rotations_table = remote.run_all(("keys", "rotation", arn), ("keys", "rotations", key_id))
    table = lines(ok(status_table))
    assert table[0] == "KeyRotationEnabled\ttrue"
    if not remote.is_moto:
        assert table[1:] == ["RotationPeriodInDays\t100", f"NextRotationDate\t{when(status_doc['NextRotationDate'])}"]
    quiet(remote.run("keys", "rotation", arn, "--disable"))
    assert lines(ok(remote.run("keys", "rotation", arn))) == ["KeyRotationEnabled\tfalse"]
    table = lines(ok(rotations_table))
    if not remote.is_moto:  # what the vault prints for a key rotated once: versions 1 and 2
        assert table == [f"1\t{first['KeyMaterialId']}\tNON_CURRENT\tORIGINAL\t\tyes",
                         f"2\t{second['KeyMaterialId']}\tCURRENT\tON_DEMAND\t{when(second['RotationDate'])}\tyes"]
    assert len(table) == len(found)


# -- aliases, policies, grants ------------------------------------------------------------------
def test_alias_create_update_delete_list(remote: Remote) -> None:
    first = key_id_of(remote.create_key("--alias", "alias/one"))
    second = key_id_of(remote.create_key())
    quiet(remote.run("alias", "create", "alias/two", first))
    doc = aws_json("ListAliases", ok(remote.run("alias", "list", "--key", first, "--json")).stdout)
    assert list(doc) == ["Aliases", "Truncated"] and doc["Truncated"] is False
    alias_arn = f"arn:aws:kms:{remote.region}:{remote.account}:alias/"
    assert sorted((a["AliasName"], a["AliasArn"], a["TargetKeyId"]) for a in doc["Aliases"]) == [
        ("alias/one", alias_arn + "one", first), ("alias/two", alias_arn + "two", first)]

    quiet(remote.run("alias", "update", "alias/two", second))
    quiet(remote.run("alias", "delete", "alias/one"))
    of_first, of_second = remote.run_all(("alias", "list", "--key", first, "--json"),
                                         ("alias", "list", "--key", second))
    assert aws_json("ListAliases", ok(of_first).stdout) == {"Aliases": [], "Truncated": False}
    # The table: name, target, creation (empty where a KMS sends none).
    assert re.fullmatch(f"alias/two\t{second}\t({TABLE_TIME})?\n", ok(of_second).stdout.decode())


class AwsListAliases(http.server.BaseHTTPRequestHandler):
    """Answers ListAliases as AWS KMS does in an account where AWS services made predefined aliases: one not yet
    associated with a key has no TargetKeyId and no dates (AWS's ListAliases reference says so)."""

    ANSWER = {"Aliases": [
        {"AliasArn": "arn:aws:kms:us-east-1:111122223333:alias/aws/s3", "AliasName": "alias/aws/s3"},
        {"AliasArn": "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs", "AliasName": "alias/aws/ebs",
         "TargetKeyId": "0987dcba-09fe-87dc-65ba-ab0987654321", "CreationDate": 1700000000,
         "LastUpdatedDate": 1700000000}], "Truncated": False}

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        assert self.headers.get("X-Amz-Target") == "TrentService.ListAliases"
        body = json.dumps(self.ANSWER).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-RequestId", "11111111-2222-3333-4444-555555555555")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_alias_list_with_predefined_aws_aliases(home: Path) -> None:
    """What ``kmscli --endpoint aws alias list`` meets in most AWS accounts (a canned AWS answer, on loopback)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AwsListAliases)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = remote_env(home, f"http://127.0.0.1:{server.server_address[1]}", AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
                         AWS_SECRET_ACCESS_KEY="secret")
        with ThreadPoolExecutor(max_workers=2) as pool:
            as_json, table = pool.map(lambda args: run_in(home, env, *args), [("alias", "list", "--json"),
                                                                                 ("alias", "list")])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=HANG_GUARD_S)
    assert [a["AliasName"] for a in aws_json("ListAliases", ok(as_json).stdout)["Aliases"]] == [
        "alias/aws/s3", "alias/aws/ebs"]
    # kmscli/cli/alias_cmds.py:44 indexes TargetKeyId and CreationDate: exit 1 (KeyError) today.
    assert [row.split("\t")[:2] for row in lines(ok(table))] == [
        ["alias/aws/s3", ""], ["alias/aws/ebs", "0987dcba-09fe-87dc-65ba-ab0987654321"]]


def test_policy_get_and_put(remote: Remote, tmp_path: Path) -> None:
    arn = remote.create_key()
    default = json.loads(ok(remote.run("policy", "get", arn)).stdout)
    assert default["Statement"] == [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                                     "Principal": {"AWS": f"arn:aws:iam::{remote.account}:root"},
                                     "Action": "kms:*", "Resource": "*"}]
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{remote.account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Bob encrypts", "Effect": "Allow", "Principal": {"AWS": remote.principal("bob")},
         "Action": "kms:Encrypt", "Resource": "*"}]}, indent=1)
    path = tmp_path / "policy.json"
    path.write_text(policy)
    quiet(remote.run("policy", "put", arn, str(path)))
    assert aws_json("GetKeyPolicy", ok(remote.run("policy", "get", arn, "--json")).stdout) == {
        "Policy": policy, "PolicyName": "default"}


def test_grants_create_list_retire_revoke(remote: Remote) -> None:
    arn = remote.create_key()
    key_id = key_id_of(arn)
    bob, alice = remote.principal("bob"), remote.principal("alice")
    made = remote.run_all(
        ("grants", "create", arn, "--grantee", bob, "--operation", "Encrypt,Decrypt", "--retiring", alice,
         "--name", "first"),
        ("grants", "create", arn, "--grantee", bob, "--operation", "GenerateDataKey", "--json"))
    assert ok(made[0]).stdout.count(b"\n") == 1 and made[0].stderr == b""
    first, token = made[0].stdout.decode().rstrip("\n").split("\t")  # id TAB token, for scripts
    second = aws_json("CreateGrant", ok(made[1]).stdout)
    assert set(second) == {"GrantId", "GrantToken"}

    listed = aws_json("ListGrants", ok(remote.run("grants", "list", arn, "--json")).stdout)
    assert list(listed) == ["Grants", "Truncated"] and listed["Truncated"] is False
    grants = {g["GrantId"]: g for g in listed["Grants"]}
    assert set(grants) == {first, second["GrantId"]}
    g = grants[first]
    assert g["KeyId"] == (key_id if remote.is_moto else arn)  # AWS names the key by its ARN; moto by its id
    assert (g["Name"], g["GranteePrincipal"], g["RetiringPrincipal"], g["Operations"]) == (
        "first", bob, alice, ["Encrypt", "Decrypt"])
    assert grants[second["GrantId"]]["Operations"] == ["GenerateDataKey"]

    quiet(remote.run("grants", "retire", "--token", token))
    quiet(remote.run("grants", "revoke", arn, second["GrantId"]))
    third = ok(remote.run("grants", "create", key_id, "--grantee", bob, "--operation", "Decrypt",
                          "--context-equals", "app=web")).stdout.decode().split("\t")[0]
    # Only the third is left: the first was retired, the second revoked.
    assert re.fullmatch(f"{third}\t{key_id}\t\tuser/bob\tDecrypt\t\tcontext = app=web\t({TABLE_TIME})?\n",
                        ok(remote.run("grants", "list", arn)).stdout.decode())


# -- crypto -----------------------------------------------------------------------------------
def test_datakey(remote: Remote) -> None:
    arn = remote.create_key()
    with_plaintext, without, piped = remote.run_all(
        ("datakey", arn, "--context", "purpose=test", "--json"), ("datakey", arn, "--no-plaintext", "--json"),
        ("datakey", key_id_of(arn), "--bytes", "16"))
    dk = aws_json("GenerateDataKey", ok(with_plaintext).stdout)
    assert dk["KeyId"] == arn and len(base64.b64decode(dk["Plaintext"])) == 32 and dk["CiphertextBlob"]
    assert set(dk) - {"KeyMaterialId"} == {"KeyId", "Plaintext", "CiphertextBlob"}
    bare = aws_json("GenerateDataKeyWithoutPlaintext", ok(without).stdout)
    assert bare["KeyId"] == arn and set(bare) - {"KeyMaterialId"} == {"KeyId", "CiphertextBlob"}
    plaintext, blob = ok(piped).stdout.decode().rstrip("\n").split("\t")  # a pipe gets plaintext TAB ciphertext
    assert len(base64.b64decode(plaintext, validate=True)) == 16 and base64.b64decode(blob, validate=True)
    assert piped.stderr == b""


def test_sign_verify_pubkey_and_a_bad_signature(remote: Remote, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    meta = remote.create_key_metadata("--spec", "ECC_NIST_P256", "--usage", "SIGN_VERIFY")
    assert (meta["KeySpec"], meta["KeyUsage"], meta["SigningAlgorithms"]) == (
        "ECC_NIST_P256", "SIGN_VERIFY", ["ECDSA_SHA_256"])
    arn = meta["Arn"]
    message, signature = tmp_path / "release.txt", tmp_path / "release.sig"
    message.write_bytes(b"release 1.2.3\n")

    pem, doc, signed = remote.run_all(
        ("pubkey", arn), ("pubkey", arn, "--json"),
        ("sign", "--key", arn, "-a", "ECDSA_SHA_256", "-i", str(message), "-o", str(signature)))
    pem_bytes = ok(pem).stdout
    assert pem_bytes.startswith(b"-----BEGIN PUBLIC KEY-----\n") and pem_bytes.endswith(b"-----END PUBLIC KEY-----\n")
    public = serialization.load_pem_public_key(pem_bytes)
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    found = aws_json("GetPublicKey", ok(doc).stdout)
    assert base64.b64decode(found["PublicKey"]) == public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert (found["KeyUsage"], found["SigningAlgorithms"]) == ("SIGN_VERIFY", ["ECDSA_SHA_256"])
    quiet(signed)
    # The KMS signed this message with the key whose public key kmscli printed: openssl's check, here.
    public.verify(signature.read_bytes(), message.read_bytes(), ec.ECDSA(hashes.SHA256()))

    verify = ("verify", "--key", arn, "-a", "ECDSA_SHA_256", "-s", str(signature))
    plain, as_json, bad = remote.run_all((*verify, "-i", str(message)), (*verify, "-i", str(message), "--json"),
                                         (*verify, "-i", str(tmp_path / "release.sig")))
    quiet(plain)
    assert aws_json("Verify", ok(as_json).stdout) == {"KeyId": arn, "SignatureValid": True,
                                                      "SigningAlgorithm": "ECDSA_SHA_256"}
    # Another message: exit 6, whether the KMS raises KMSInvalidSignatureException (AWS, kmscli serve) or answers
    # SignatureValid false (moto). A script's `kmscli verify ... && deploy` must never deploy.
    fails(bad, 6, "KMSInvalidSignatureException")
    assert bad.stdout == b""


def test_mac_and_verify_mac(remote: Remote, tmp_path: Path) -> None:
    meta = remote.create_key_metadata("--spec", "HMAC_256")  # GENERATE_VERIFY_MAC is implied
    assert (meta["KeySpec"], meta["KeyUsage"]) == ("HMAC_256", "GENERATE_VERIFY_MAC")
    if not remote.is_moto:  # moto sends no MacAlgorithms (and RSA's EncryptionAlgorithms instead)
        assert meta["MacAlgorithms"] == ["HMAC_SHA_256"]
    arn = meta["Arn"]
    message, other = tmp_path / "message", tmp_path / "other"
    message.write_bytes(b"hello\n")
    other.write_bytes(b"hello!\n")
    mac = ok(remote.run("mac", "--key", arn, "-a", "HMAC_SHA_256", "-f", "base64", "-i", str(message))).stdout
    assert re.fullmatch(rb"[A-Za-z0-9+/]{43}=\n", mac)  # 32 bytes, one base64 line
    (tmp_path / "mac").write_bytes(mac)
    verify = ("verify-mac", "--key", arn, "-a", "HMAC_SHA_256", "-m", str(tmp_path / "mac"))
    good, bad = remote.run_all((*verify, "-i", str(message), "--json"), (*verify, "-i", str(other)))
    assert aws_json("VerifyMac", ok(good).stdout) == {"KeyId": arn, "MacValid": True, "MacAlgorithm": "HMAC_SHA_256"}
    fails(bad, 6, "KMSInvalidMacException")


# -- remote mode itself -----------------------------------------------------------------------
def test_a_key_made_remotely_is_there_from_another_home(remote: Remote, tmp_path: Path) -> None:
    """The point of remote mode: another machine (another HOME, no vault anywhere) sees the same key."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    made = remote.create_key_metadata("--description", "shared", home=first)
    seen = aws_json("DescribeKey", ok(remote.run("keys", "describe", made["Arn"], "--json", home=second)).stdout)
    assert seen == {"KeyMetadata": made}
    assert_empty(first)
    assert_empty(second)


def test_endpoint_option_environment_and_a_stale_session(serve_remote: Remote) -> None:
    """``--endpoint`` before or after the command's name (``--endpoint=URL`` too) and KMSCLI_ENDPOINT work
    alike; with an endpoint KMSCLI_SESSION is never used (remote calls do not go to the session agent). There
    is no vault anywhere: every success here is the remote KMS answering."""
    remote = serve_remote
    empty = b'{\n  "Keys": [],\n  "Truncated": false\n}\n'  # a region of its own: no key yet
    url, no_env, garbage = remote.url, ("KMSCLI_ENDPOINT",), {"KMSCLI_SESSION": "garbage"}
    calls = [(("--endpoint", url, "keys", "list", "--json"), no_env, {}),
             (("keys", "list", "--json", "--endpoint", url), no_env, garbage),
             (("keys", "list", f"--endpoint={url}", "--json"), no_env, garbage),
             (("keys", "list", "--json"), (), garbage),
             # Without an endpoint the same session is used, and refused: the variable is live.
             (("keys", "list"), no_env, garbage)]
    remote.env()  # the HOME is known before the threads start
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        *answers, local = pool.map(lambda c: remote.run(*c[0], env_remove=c[1], env_update=c[2]), calls)
    assert [ok(r).stdout for r in answers] == [empty] * 4
    fails(local, 5, "InvalidSessionException")


def test_region_comes_from_kmscli_then_aws_then_us_east_1(serve_remote: Remote) -> None:
    remote = serve_remote

    def region_of(**env: str) -> str:
        r = ok(remote.run("keys", "create", "--json", env_remove=("KMSCLI_REGION",), env_update=env))
        return str(json.loads(r.stdout)["KeyMetadata"]["Arn"].split(":")[3])

    remote.env()  # the HOME is known before the threads start
    with ThreadPoolExecutor(max_workers=4) as pool:
        nothing, default, kmscli_first, aws_region = pool.map(lambda env: region_of(**env), (
            {}, {"AWS_DEFAULT_REGION": "eu-west-2"}, {"AWS_REGION": "eu-west-3", "KMSCLI_REGION": "ap-south-1"},
            {"AWS_REGION": "eu-west-3"}))
    assert nothing == "us-east-1"  # nothing configured: a non-AWS endpoint's fallback
    assert default == "eu-west-2"  # botocore's chain
    assert kmscli_first == "ap-south-1"
    # The SPEC ("AWS's usual ... region chain (AWS_PROFILE, AWS_REGION, ...)") and kmscli's own hint ("set
    # AWS_REGION") name AWS_REGION, which botocore's chain does not read (only AWS_DEFAULT_REGION).
    assert aws_region == "eu-west-3"


def test_random_needs_no_kms(home: Path, closed_endpoint: str) -> None:
    env = remote_env(home, closed_endpoint)
    r = ok(run_in(home, env, "random", "16"))
    assert r.stdout.endswith(b"\n") and len(base64.b64decode(r.stdout[:-1], validate=True)) == 16
    doc = aws_json("GenerateRandom", ok(run_in(home, env, "random", "24", "--json")).stdout)
    assert list(doc) == ["Plaintext"] and len(base64.b64decode(doc["Plaintext"])) == 24


VAULT_ONLY = "run it without --endpoint (unset KMSCLI_ENDPOINT)"


@pytest.mark.parametrize(("args", "line"), [
    (("audit", "verify"), "kmscli: ValidationException: 'kmscli audit' works on the local vault only: the audit "
     f"log is the vault's; a remote KMS keeps its own (AWS: CloudTrail); {VAULT_ONLY}"),
    (("credentials", "list"), "kmscli: ValidationException: 'kmscli credentials' works on the local vault only: "
     f"access keys are for the vault's 'kmscli serve'; run them on the serving host; {VAULT_ONLY}"),
    (("vault", "backup", "backup.kms"), "kmscli: ValidationException: 'kmscli vault' works on the local vault "
     f"only: backups are of the vault; {VAULT_ONLY}"),
    (("serve", "--port", "0"), "kmscli: ValidationException: 'kmscli serve' works on the local vault only: serve "
     f"serves the vault; {VAULT_ONLY}"),
    (("keys", "rotation", "1234abcd-12ab-34cd-56ef-1234567890ab", "--min-decrypt-version", "2"),
     "kmscli: UnsupportedOperationException: this works on the local vault only: --min-decrypt-version is "
     f"kmscli's own rule, not an AWS KMS operation; {VAULT_ONLY}"),
], ids=["audit", "credentials", "vault", "serve", "min-decrypt-version"])
def test_vault_only_commands_are_refused(home: Path, closed_endpoint: str, args: tuple[str, ...], line: str) -> None:
    """Refused with exit 2 and one line before anything is sent (the endpoint's port is closed: a request would
    be exit 10), and before anything is written (the HOME, which is the working directory, stays empty)."""
    r = run_in(home, remote_env(home, closed_endpoint), *args)
    assert fails(r, 2) == line
    assert r.stdout == b""


def test_local_mode_does_not_import_botocore(vault: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Remote mode costs the local CLI nothing: ``keys list`` on a vault never imports botocore or kmscli.remote."""

    def imported(run_env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
        r = subprocess.run([sys.executable, "-X", "importtime", *kmscli_command(), *args], input=b"",
                           capture_output=True, env=run_env, timeout=HANG_GUARD_S, start_new_session=True)
        names = {line.rsplit("|", 1)[1].strip() for line in r.stderr.decode().splitlines()
                 if line.startswith("import time:") and "|" in line}
        return r, names

    r, names = imported(env, "keys", "list")
    assert r.returncode == 0 and r.stdout == b"", r.stderr[-2000:]
    assert {"typer", "kmscli.cli.app", "kmscli.service"} <= names  # the measure sees the CLI's imports
    assert not {n for n in names if n.split(".")[0] == "botocore" or n.startswith("kmscli.remote")}
    # The same measure with an endpoint does see botocore (no credentials: nothing is sent).
    r, names = imported(remote_env(tmp_path, None), "--endpoint", "http://127.0.0.1:9", "keys", "list")
    assert r.returncode == 10 and {"botocore", "kmscli.remote.client"} <= names, r.stderr[-2000:]
