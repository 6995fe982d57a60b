"""The committed completions and man page are what the generator makes from the code now.

When one of these fails after a change to the CLI, regenerate and commit:
``.venv/bin/python scripts/gen_docs.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HANG_GUARD_S, REPO

REGENERATE = "run .venv/bin/python scripts/gen_docs.py and commit the result"


def test_committed_files_equal_generator_output(gen, root) -> None:
    stale = [
        str(rel)
        for rel, text in gen.outputs(root).items()
        if not (REPO / rel).exists() or (REPO / rel).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"stale generated files {stale}: {REGENERATE}"


def test_check_mode_exits_0_when_current_and_1_when_stale(tmp_path: Path) -> None:
    script = REPO / "scripts" / "gen_docs.py"
    for seed in ("1", "2"):  # set order must not leak into the files
        r = subprocess.run(
            [sys.executable, str(script), "--check"],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert r.returncode == 0, r.stderr
    # A copy of the script in a scratch tree (with no committed files) finds them all stale and writes nothing.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "gen_docs.py").write_text(script.read_text())
    r = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 1, r.stderr
    assert "completions/kmscli.bash" in r.stderr and "man/kmscli.1" in r.stderr
    assert not (tmp_path / "completions").exists() and not (tmp_path / "man").exists()


def _kmscli_env_names() -> set[str]:
    """Every KMSCLI_* name in the package source, as ``grep -rho 'KMSCLI_[A-Z_]*' kmscli/`` finds them."""
    names = set()
    for path in (REPO / "kmscli").rglob("*.py"):
        names.update(re.findall(r"KMSCLI_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    return names


def test_every_environment_variable_the_code_reads_is_documented(gen) -> None:
    in_code = _kmscli_env_names()
    documented = {name for name in gen.ENVIRONMENT if name.startswith("KMSCLI_")}
    assert in_code, "the grep found nothing: has the package moved?"
    missing = sorted(in_code - documented)
    assert not missing, f"add {missing} to ENVIRONMENT in scripts/gen_docs.py, then {REGENERATE}"
    gone = sorted(documented - in_code)
    assert not gone, f"kmscli/ no longer mentions {gone}: drop them from ENVIRONMENT in scripts/gen_docs.py"


def test_environment_variables_of_options_are_documented(gen, root) -> None:
    envvars = {v for c in root.walk() for p in c.params for v in p.envvar}
    assert envvars <= set(gen.ENVIRONMENT), sorted(envvars - set(gen.ENVIRONMENT))


def test_exit_status_covers_every_exit_code_in_errors(gen) -> None:
    from kmscli import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert set(gen.EXIT_MEANINGS) == codes
    assert set(gen.exit_codes()) == codes
    # Every exception the code can report is named under its code.
    named = {n for names in gen.exit_codes().values() for n in names}
    assert set(errors.EXIT_CODES) <= named


def test_spec_exit_table_matches(gen) -> None:
    spec = REPO.parent / "shared" / "SPEC.md"
    if not spec.exists():
        pytest.skip("no shared/SPEC.md beside the repository")
    rows = re.findall(r"^\| (\d+) \| ", spec.read_text(encoding="utf-8"), re.M)
    assert {int(r) for r in rows} == set(gen.EXIT_MEANINGS)


def test_examples_use_real_commands_and_options(gen, root) -> None:
    for _what, lines in gen.EXAMPLES:
        for line in gen.example_commands(lines):
            problems = [p for p in gen.example_problems(root, line) if not p.endswith(gen.NO_COMMAND)]
            assert not problems, (line, problems)
    shown = gen.examples_for(root)
    assert len(shown) >= len(gen.EXAMPLES) - 1, "more than the session example is hidden: a command was renamed?"


def test_value_kinds_are_read_from_the_tree(root) -> None:
    def param(path: str, label: str):  # noqa: ANN202
        cmd = root.find(tuple(path.split()))
        return next(p for p in cmd.params if label in (p.names or (p.metavar,)))

    assert param("datakey", "--spec").choices == ("AES_256", "AES_128")
    assert param("random", "--format").choices == ("base64", "hex", "raw")
    assert param("encrypt", "--in").kind == "file"
    assert param("keys create", "--policy").kind == "file"
    assert param("policy put", "[FILE|-]").kind == "file"
    assert param("encrypt", "--key").kind == "alias"
    assert param("alias delete", "NAME").kind == "alias"
    assert param("alias create", "NAME").kind == "none"  # a new name: nothing to offer
    assert param("encrypt", "--context").repeatable
    assert param("encrypt", "--vault").is_global
