"""completions/kmscli.zsh and kmscli.fish: valid scripts, and what TAB offers in each shell."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import COMPLETIONS, HANG_GUARD_S, need, patient_shell_env, shell_env
from .shells import fish_complete, zsh_complete


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    for name in ("policy.json", "secret.kms"):
        (d / name).write_text("x")
    return d


@pytest.fixture
def aliased(kms, vault: Path) -> Path:
    for name in ("alias/app", "alias/zeta"):
        r = kms("keys", "create", "--alias", name)
        assert r.returncode == 0, r.stderr
    return vault


def _syntax(shell: str, package: str, path: Path) -> None:
    need(shell, package)
    r = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# -- zsh -----------------------------------------------------------------------


def test_zsh_script_parses() -> None:
    _syntax("zsh", "zsh", COMPLETIONS / "kmscli.zsh")


def test_zsh_script_is_an_autoloadable_compdef() -> None:
    text = (COMPLETIONS / "kmscli.zsh").read_text()
    assert text.startswith("#compdef kmscli\n")


def test_zsh_completes(root, tmp_path: Path, workdir: Path) -> None:
    need("zsh", "zsh")
    cases = {
        "kmscli ": sorted(c.path[-1] for c in root.commands),
        "kmscli keys cr": ["create"],
        "kmscli alias ": sorted(c.path[-1] for c in root.find(("alias",)).commands),
        "kmscli datakey KEY --spec ": ["AES_128", "AES_256"],
        "kmscli datakey KEY --spec=": ["AES_128", "AES_256"],
        "kmscli random 8 --format ": ["base64", "hex", "raw"],
        "kmscli encrypt -i ": ["policy.json", "secret.kms"],
        "kmscli policy put KEY ": ["policy.json", "secret.kms"],
        "kmscli keys create --po": ["--policy"],
        "kmscli encrypt --armor --ar": [],  # given once already
        "kmscli encrypt --key ": [],  # aliases only with a passphrase source
    }
    got = zsh_complete(list(cases), shell_env(tmp_path), workdir, tmp_path)
    for (line, want), g in zip(cases.items(), got, strict=True):
        assert sorted(g) == want, line


def test_zsh_completes_the_options_of_every_command(root, tmp_path: Path, workdir: Path) -> None:
    need("zsh", "zsh")
    leaves = [c for c in root.walk() if not c.commands]
    lines = [" ".join(("kmscli", *c.path, "--")) for c in leaves]
    got = zsh_complete(lines, shell_env(tmp_path), workdir, tmp_path)
    for c, line, g in zip(leaves, lines, got, strict=True):
        assert sorted(g) == sorted(n for p in c.options for n in p.names if n.startswith("--")), line


def test_zsh_completes_alias_names(aliased: Path, tmp_path: Path, workdir: Path) -> None:
    from tests.conftest import PASSPHRASE

    need("zsh", "zsh")
    pf = tmp_path / "pass"
    pf.write_text(PASSPHRASE + "\n")
    lines = [
        "kmscli encrypt --key ",
        "kmscli alias update alias/app ",
        "kmscli keys describe alias/z",
        f"kmscli --vault {aliased} --passphrase-file {pf} alias delete ",
    ]
    env = patient_shell_env(tmp_path, KMSCLI_VAULT=str(aliased), KMSCLI_PASSPHRASE=PASSPHRASE)
    got = zsh_complete(lines[:3], env, workdir, tmp_path)
    got += zsh_complete(lines[3:], patient_shell_env(tmp_path), workdir, tmp_path)
    assert [sorted(g) for g in got] == [
        ["alias/app", "alias/zeta"],
        ["alias/app", "alias/zeta"],
        ["alias/zeta"],
        ["alias/app", "alias/zeta"],
    ]


# -- fish ----------------------------------------------------------------------


def test_fish_script_parses() -> None:
    _syntax("fish", "fish", COMPLETIONS / "kmscli.fish")


def test_fish_completes(root, tmp_path: Path, workdir: Path) -> None:
    need("fish", "fish")
    cases = {
        "kmscli ": sorted(c.path[-1] for c in root.commands),
        "kmscli keys cr": ["create"],
        "kmscli -- keys ": sorted(c.path[-1] for c in root.find(("keys",)).commands),
        "kmscli datakey KEY --spec ": ["AES_128", "AES_256"],
        "kmscli random 8 -f ": ["base64", "hex", "raw"],
        "kmscli encrypt -i ": ["policy.json", "secret.kms"],
        "kmscli --vault ": ["policy.json", "secret.kms"],
        "kmscli policy put KEY ": ["policy.json", "secret.kms"],
        "kmscli keys create --po": ["--policy"],
        "kmscli keys tag KEY ": [],  # free text, no file names
        "kmscli encrypt --key ": [],  # aliases only with a passphrase source
    }
    got = fish_complete(list(cases), shell_env(tmp_path), workdir)
    for (line, want), g in zip(cases.items(), got, strict=True):
        assert sorted(g) == want, line


def test_fish_completes_the_options_of_every_command(root, tmp_path: Path, workdir: Path) -> None:
    need("fish", "fish")
    leaves = [c for c in root.walk() if not c.commands]
    lines = [" ".join(("kmscli", *c.path, "--")) for c in leaves]
    got = fish_complete(lines, shell_env(tmp_path), workdir)
    for c, line, g in zip(leaves, lines, got, strict=True):
        assert sorted(g) == sorted(n for p in c.options for n in p.names if n.startswith("--")), line


def test_fish_completes_alias_names(aliased: Path, tmp_path: Path, workdir: Path) -> None:
    from tests.conftest import PASSPHRASE

    need("fish", "fish")
    pf = tmp_path / "pass"
    pf.write_text(PASSPHRASE + "\n")
    env = patient_shell_env(tmp_path, KMSCLI_VAULT=str(aliased), KMSCLI_PASSPHRASE=PASSPHRASE)
    got = fish_complete(
        [
            "kmscli encrypt --key ",
            "kmscli alias update alias/app ",
            "kmscli alias create ",
            "kmscli keys describe alias/z",
        ],
        env,
        workdir,
    )
    got += fish_complete(
        [f"kmscli --vault {aliased} --passphrase-file {pf} alias delete "], patient_shell_env(tmp_path), workdir
    )
    assert [sorted(g) for g in got] == [
        ["alias/app", "alias/zeta"],
        ["alias/app", "alias/zeta"],
        [],
        ["alias/zeta"],
        ["alias/app", "alias/zeta"],
    ]
