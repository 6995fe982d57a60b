"""docs/policy.md's "decrypt only with the context app=billing" example, as printed, on a real key.

The example once conditioned kms:Decrypt alone: ReEncrypt moved a ciphertext
of another context to app=billing (ReEncryptFrom was not conditioned), and
decrypting it was then allowed. The policy is taken from the page itself, so
the page cannot drift from what is tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import Runner, fails, ok

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
#: The account the page's examples are written for; the test puts the vault's own in its place.
DOC_ACCOUNT = "111122223333"
SECRET = b"quarterly numbers"


def example_policy() -> str:
    """The first JSON block of section 9 of docs/policy.md, the billing example."""
    text = DOC.read_text()
    section = text.split("\n## 9. Examples", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert block is not None, "section 9 of docs/policy.md has no JSON block"
    document = block.group(1)
    parsed = json.loads(document)
    assert "billing" in document and any(s["Effect"] == "Deny" for s in parsed["Statement"])
    return document


@pytest.fixture
def key(kms: Runner, vault: Path) -> str:
    key_id = ok(kms("keys", "create")).stdout.decode().strip()
    account = json.loads(ok(kms("keys", "describe", key_id, "--json")).stdout)["KeyMetadata"]["AWSAccountId"]
    document = example_policy()
    assert DOC_ACCOUNT in document
    ok(kms("policy", "put", key_id, "-", input=document.replace(DOC_ACCOUNT, account).encode()))
    return key_id


def encrypt(kms: Runner, key: str, context: str) -> bytes:
    return ok(kms("encrypt", "--key", key, "--context", context, input=SECRET)).stdout


def test_the_intended_use_works(kms: Runner, key: str) -> None:
    ct = encrypt(kms, key, "app=billing")
    assert ok(kms("decrypt", "--context", "app=billing", input=ct)).stdout == SECRET
    # re-encrypting within app=billing (after a rotation, say) stays possible
    ok(kms("keys", "rotate", key))
    moved = ok(kms("reencrypt", "--key", key, "--source-context", "app=billing", "--context", "app=billing",
                   input=ct)).stdout
    assert ok(kms("decrypt", "--context", "app=billing", input=moved)).stdout == SECRET


def test_decrypt_with_another_context_or_none_is_denied(kms: Runner, key: str) -> None:
    billing = encrypt(kms, key, "app=billing")
    fails(kms("decrypt", "--context", "app=payroll", input=billing), 7, "AccessDeniedException")
    fails(kms("decrypt", input=billing), 7, "AccessDeniedException")
    payroll = encrypt(kms, key, "app=payroll")
    fails(kms("decrypt", "--context", "app=payroll", input=payroll), 7, "AccessDeniedException")


def test_reencrypt_cannot_move_another_context_into_billing(kms: Runner, key: str, tmp_path: Path) -> None:
    """The bypass: payroll data re-encrypted to app=billing on the same key, then decrypted."""
    payroll = encrypt(kms, key, "app=payroll")
    out = tmp_path / "moved.kms"
    fails(kms("reencrypt", "--key", key, "--source-context", "app=payroll", "--context", "app=billing",
              "-o", str(out), input=payroll), 7, "AccessDeniedException")
    assert not out.exists()
    fails(kms("reencrypt", "--key", key, "--context", "app=billing", input=payroll), 7, "AccessDeniedException")


def test_reencrypt_from_billing_to_another_context_then_decrypt_is_denied(kms: Runner, key: str,
                                                                          tmp_path: Path) -> None:
    billing = encrypt(kms, key, "app=billing")
    out = tmp_path / "moved.kms"
    fails(kms("reencrypt", "--key", key, "--source-context", "app=billing", "--context", "app=other",
              "-o", str(out), input=billing), 7, "AccessDeniedException")
    assert not out.exists()
    # and a ciphertext that is in that context already (made by encrypt) does not decrypt either
    other = encrypt(kms, key, "app=other")
    fails(kms("decrypt", "--context", "app=other", input=other), 7, "AccessDeniedException")
