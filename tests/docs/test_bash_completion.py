"""completions/kmscli.bash: what TAB offers, simulated the way bash calls it and typed on a real terminal."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import COMPLETIONS, HANG_GUARD_S, need, patient_shell_env, shell_env
from .shells import bash_complete, interactive_bash

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    for name in ("policy.json", "secret.kms", "notes.txt"):
        (d / name).write_text("x")
    (d / "sub").mkdir()
    return d


def complete(lines: list[str], tmp_path: Path, cwd: Path, **env: str) -> list[list[str]]:
    """What bash offers; a kmscli the completion runs may take as long as it needs (``patient_shell_env``)."""
    return bash_complete(lines, patient_shell_env(tmp_path, **env), cwd)


def test_registered_for_kmscli(tmp_path: Path) -> None:
    script = f"source {COMPLETIONS / 'kmscli.bash'}; complete -p kmscli"
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        env=shell_env(tmp_path),
        timeout=HANG_GUARD_S,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "complete -F _kmscli kmscli"


def test_commands_and_options_of_every_command_in_the_tree(root, tmp_path: Path, workdir: Path) -> None:
    lines, want = [], []
    for c in root.walk():
        prefix = " ".join(("kmscli", *c.path, ""))
        if c.commands:
            lines.append(prefix)
            want.append(sorted(s.path[-1] for s in c.commands))
        lines.append(prefix + "--")
        want.append(sorted(n for p in c.options for n in p.names if n.startswith("--")))
        lines.append(prefix + "-")
        want.append(sorted(n for p in c.options for n in p.names))
    got = complete(lines, tmp_path, workdir)
    for line, g, w in zip(lines, got, want, strict=True):
        assert sorted(g) == w, line


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("kmscli k", ["keys"]),
        ("kmscli keys cr", ["create"]),
        ("kmscli alias u", ["update"]),
        ("kmscli --vault x keys sch", ["schedule-delete"]),
        ("kmscli --vault=x --debug audit v", ["verify"]),
        ("kmscli datakey KEY --spec ", ["AES_256", "AES_128"]),
        ("kmscli datakey KEY --spec=", ["AES_256", "AES_128"]),
        ("kmscli datakey KEY --spec=AES_1", ["AES_128"]),
        ("kmscli datakey --spec AES_1", ["AES_128"]),
        ("kmscli random 8 --format ", ["base64", "hex", "raw"]),
        ("kmscli random 8 -f h", ["hex"]),
        ("kmscli random --format=r", ["raw"]),
        ("kmscli encrypt -i ", ["notes.txt", "policy.json", "secret.kms", "sub"]),
        ("kmscli encrypt --key k -o sec", ["secret.kms"]),
        ("kmscli decrypt --in=pol", ["policy.json"]),
        ("kmscli keys create --policy p", ["policy.json"]),
        ("kmscli policy put KEY p", ["policy.json"]),
        ("kmscli --vault s", ["secret.kms", "sub"]),
        ("kmscli passwd --new-passphrase-file n", ["notes.txt"]),
        ("kmscli encrypt --context env=prod --k", ["--key"]),  # 'env=prod' is one word, not three
        ("kmscli encrypt --armor --ar", []),  # given once already
        ("kmscli encrypt -a --ar", []),  # under its other name
        ("kmscli encrypt --context a=b --cont", ["--context"]),  # repeatable
        ("kmscli encrypt -- -", []),  # no options after --
        ("kmscli keys tag KEY a=b ", []),  # free text: nothing to offer, and no file names
        ("kmscli random 8 --f", ["--format"]),
        ("kmscli nosuch ", []),
        ("kmscli encrypt --key ", []),  # aliases only with a passphrase source: none here
    ],
)
def test_completes(line: str, want: list[str], tmp_path: Path, workdir: Path) -> None:
    assert sorted(complete([line], tmp_path, workdir)[0]) == sorted(want)


def test_without_equals_as_a_word_break(tmp_path: Path, workdir: Path) -> None:
    got = bash_complete(
        ["kmscli datakey k --spec=AES", "kmscli encrypt --in=pol"],
        shell_env(tmp_path),
        workdir,
        wordbreaks=" \t\n\"'><;|&(",
    )
    assert sorted(got[0]) == ["--spec=AES_128", "--spec=AES_256"]
    assert got[1] == ["--in=policy.json"]


# -- alias names from the vault ------------------------------------------------------


@pytest.fixture
def aliased(kms, vault: Path) -> Path:
    for name in ("alias/app", "alias/zeta"):
        r = kms("keys", "create", "--alias", name)
        assert r.returncode == 0, r.stderr
    return vault


ALIAS_LINES = [
    "kmscli encrypt --key ",
    "kmscli encrypt -k alias/z",
    "kmscli decrypt --key=alias/a",
    "kmscli keys describe ",
    "kmscli alias delete ",
    "kmscli alias update alias/app ",  # NAME, then KEY
    "kmscli alias create ",  # a new name: nothing to offer
    "kmscli alias create alias/new ",
    "kmscli datakey --context a=b ",  # KEY after an option and its K=V value
    "kmscli audit show --key ",
]
ALIASES_WANTED = [
    ["alias/app", "alias/zeta"],
    ["alias/zeta"],
    ["alias/app"],
    ["alias/app", "alias/zeta"],
    ["alias/app", "alias/zeta"],
    ["alias/app", "alias/zeta"],
    [],
    ["alias/app", "alias/zeta"],
    ["alias/app", "alias/zeta"],
    ["alias/app", "alias/zeta"],
]


def test_aliases_with_a_passphrase_in_the_environment(aliased: Path, tmp_path: Path, workdir: Path) -> None:
    from tests.conftest import PASSPHRASE

    got = complete(ALIAS_LINES, tmp_path, workdir, KMSCLI_VAULT=str(aliased), KMSCLI_PASSPHRASE=PASSPHRASE)
    assert [sorted(g) for g in got] == ALIASES_WANTED


def test_aliases_with_vault_and_passphrase_file_on_the_line(aliased: Path, tmp_path: Path, workdir: Path) -> None:
    from tests.conftest import PASSPHRASE

    pf = tmp_path / "pass"
    pf.write_text(PASSPHRASE + "\n")
    lines = [
        f"kmscli --vault {aliased} --passphrase-file {pf} encrypt --key ",
        f"kmscli encrypt --vault={aliased} --passphrase-file={pf} --key alias/a",
    ]
    got = complete(lines, tmp_path, workdir)
    assert [sorted(g) for g in got] == [["alias/app", "alias/zeta"], ["alias/app"]]


def test_no_aliases_and_no_noise_with_a_wrong_passphrase(aliased: Path, tmp_path: Path, workdir: Path) -> None:
    # bash_complete asserts that nothing reached stderr.
    got = complete(["kmscli encrypt --key "], tmp_path, workdir, KMSCLI_VAULT=str(aliased), KMSCLI_PASSPHRASE="wrong")
    assert got == [[]]


@pytest.fixture
def fake_kmscli(tmp_path: Path) -> tuple[Path, Path]:
    """A kmscli that records how it was called, first on PATH; the log file."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    script = bin_dir / "kmscli"
    script.write_text(f"""#!/bin/sh
echo "args: $*" >> {log}
echo "stdin: $(readlink /proc/self/fd/0)" >> {log}
[ -n "$KMSCLI_FAKE_SLEEP" ] && sleep "$KMSCLI_FAKE_SLEEP"
printf 'alias/fake\\tkeyid\\t2026-01-01T00:00:00Z\\n'
printf '%s\\tkeyid\\t2026-01-01T00:00:00Z\\n' 'alias/$(touch pwned)'
echo "a message" >&2
""")
    script.chmod(0o755)
    return bin_dir, log


def _env_with(bin_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = shell_env(tmp_path, **extra)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def test_kmscli_is_not_run_without_a_session_or_passphrase_source(fake_kmscli, tmp_path: Path, workdir) -> None:
    bin_dir, log = fake_kmscli
    got = bash_complete(["kmscli encrypt --key ", "kmscli alias delete "], _env_with(bin_dir, tmp_path), workdir)
    assert got == [[], []]
    assert not log.exists()


@pytest.mark.parametrize("source", ["KMSCLI_SESSION", "KMSCLI_PASSPHRASE_FILE", "KMSCLI_PASSPHRASE"])
def test_kmscli_alias_list_runs_with_stdin_closed_off(source: str, fake_kmscli, tmp_path: Path, workdir) -> None:
    bin_dir, log = fake_kmscli
    got = bash_complete(
        ["kmscli --vault /v.kms encrypt --key "], _env_with(bin_dir, tmp_path, **{source: "x"}), workdir
    )
    assert got == [["alias/fake", "alias/$(touch pwned)"]]  # offered as text, never run
    assert not (workdir / "pwned").exists()
    assert log.read_text().splitlines() == ["args: --vault /v.kms alias list", "stdin: /dev/null"]


@pytest.mark.slow
def test_a_slow_kmscli_cannot_hang_tab(fake_kmscli, tmp_path: Path, workdir) -> None:
    bin_dir, log = fake_kmscli
    # The fake would answer only after far longer than bash_complete's hang guard,
    # so TAB returning at all (with nothing offered) shows that it did not wait
    # for it: no measured time decides the outcome, however slow the machine.
    env = _env_with(bin_dir, tmp_path, KMSCLI_SESSION="x", KMSCLI_FAKE_SLEEP=str(10 * HANG_GUARD_S))
    assert bash_complete(["kmscli encrypt --key "], env, workdir) == [[]]
    assert log.read_text().startswith("args: alias list\n")  # it was asked, and given up on


# -- on a real terminal: readline splits words and inserts the completion ------------


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        ("kmscli keys cr\t", "kmscli keys create "),
        ("kmscli datakey k --spec=AES_1\t", "kmscli datakey k --spec=AES_128 "),
        ("kmscli encrypt --context env=prod --ar\t", "kmscli encrypt --context env=prod --armor "),
        ("kmscli decrypt -i pol\t", "kmscli decrypt -i policy.json "),
        ("kmscli decrypt -i s\tu\t", "kmscli decrypt -i sub/"),
    ],
)
def test_interactive_bash(typed: str, shown: str, tmp_path: Path, workdir: Path) -> None:
    need("bash", "bash")
    screen = interactive_bash(typed, shell_env(tmp_path), workdir, expect=shown)
    assert shown in screen
