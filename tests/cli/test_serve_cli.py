"""`kmscli serve`'s command line: what it refuses before anything listens (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Runner, fails


def test_an_address_beyond_loopback_needs_tls(kms: Runner, vault: Path) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        line = fails(kms("serve", "--host", host, "--port", "0"), 2, "ValidationException")
        assert "needs TLS" in line and host in line


def test_tls_files_go_together_and_must_be_readable(kms: Runner, vault: Path, tmp_path: Path) -> None:
    fails(kms("serve", "--port", "0", "--tls-cert", str(tmp_path / "c.pem")), 2, "ValidationException")
    line = fails(kms("serve", "--port", "0", "--tls-cert", str(tmp_path / "c.pem"), "--tls-key",
                     str(tmp_path / "k.pem")), 2)
    assert "c.pem" in line


def test_ephemeral_options_need_ephemeral(kms: Runner, vault: Path, tmp_path: Path) -> None:
    fails(kms("serve", "--port", "0", "--account", "123456789012"), 2, "ValidationException")
    fails(kms("serve", "--port", "0", "--seed", str(tmp_path / "seed.yaml")), 2, "ValidationException")
    fails(kms("serve", "--ephemeral", "--port", "0", "--account", "12345"), 2, "ValidationException")


def test_a_bad_seed_is_refused_before_listening(kms: Runner, tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text("Keys:\n  - KeyId: not-a-uuid\n")
    fails(kms("serve", "--ephemeral", "--port", "0", "--seed", str(seed)), 2, "ValidationException")
    seed.write_text("Keys: [unclosed\n")
    fails(kms("serve", "--ephemeral", "--port", "0", "--seed", str(seed)), 2, "ValidationException")
    fails(kms("serve", "--ephemeral", "--port", "0", "--seed", str(tmp_path / "missing.yaml")), 2)


def test_a_wrong_passphrase_is_exit_5_before_listening(kms: Runner, vault: Path) -> None:
    fails(kms("serve", "--port", "0", env_update={"KMSCLI_PASSPHRASE": "wrong"}), 5)


def test_a_port_out_of_range_is_refused(kms: Runner, vault: Path) -> None:
    fails(kms("serve", "--port", "70000"), 2, "ValidationException")
