"""man/kmscli.1 renders without a warning and documents every command, option and variable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import HANG_GUARD_S, need

SECTIONS = [
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "GLOBAL OPTIONS",
    "COMMANDS",
    "ENVIRONMENT",
    "FILES",
    "EXIT STATUS",
    "EXAMPLES",
    "SEE ALSO",
]


def roff_text(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


@pytest.fixture(scope="module")
def page(gen, root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The man page the generator makes now (test_current checks that man/kmscli.1 is the same)."""
    path = tmp_path_factory.mktemp("man") / "kmscli.1"
    path.write_text(gen.man(root), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def source(page: Path) -> str:
    return page.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def rendered(page: Path) -> str:
    need("man", "man-db")
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LANG": "C.UTF-8"}
    r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True, env=env,
                       timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"man --warnings complains:\n{r.stderr}"
    return re.sub(r".\x08", "", r.stdout)  # no overstrike, should a pager setting ask for it


def test_man_renders_without_warnings(rendered: str) -> None:
    assert "kmscli" in rendered


def test_groff_finds_nothing_to_warn_about(page: Path) -> None:
    need("groff", "groff-base")
    r = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_fits_80_columns(rendered: str) -> None:
    wide = [line for line in rendered.splitlines() if len(line) > 80]
    assert not wide, wide


def test_sections_in_order(source: str) -> None:
    found = [m.strip('"') for m in re.findall(r"^\.SH (.+)$", source, re.M)]
    assert found == SECTIONS


def test_every_command_option_and_argument_is_documented(root, source: str) -> None:
    headings = re.findall(r'^\.SS "(.+)"$', source, re.M)
    assert headings == [roff_text(c.name) for c in root.walk() if c.path]
    for c in root.walk():
        section = source if not c.path else source.split(f'.SS "{roff_text(c.name)}"\n', 1)[1].split("\n.S", 1)[0]
        for p in c.params:
            if p.is_global or p.is_help:  # the help option is described once, in its own words
                continue
            label = (
                " ".join(f"\\fB{roff_text(n)}\\fR," for n in p.names).rstrip(",")
                if p.is_option
                else (f"\\fI{roff_text(p.metavar)}\\fR")
            )
            assert label in section, (c.name, p.label)
            assert roff_text(p.help) in section, (c.name, p.label)


def test_every_environment_variable_is_documented(gen, source: str) -> None:
    env = source.split(".SH ENVIRONMENT\n", 1)[1].split(".SH ", 1)[0]
    assert re.findall(r"^\\fB(\S+)\\fR$", env, re.M) == list(gen.ENVIRONMENT)


def test_exit_status_lists_every_code(gen, rendered: str) -> None:
    section = rendered.split("EXIT STATUS", 1)[1].split("EXAMPLES", 1)[0]
    codes = [int(m) for m in re.findall(r"^ {7}(\d+)\s", section, re.M)]
    assert codes == [*gen.EXIT_MEANINGS, *gen.EXIT_OTHER]
    for names in gen.exit_codes().values():
        for name in names:
            assert name in section


def test_hyphens_and_backslashes_are_escaped(source: str) -> None:
    for n, line in enumerate(source.splitlines(), 1):
        if line.startswith('.\\"'):
            continue
        bare = re.sub(r"\\[-e&]|\\f[BIR]|\\\(dq|\\\[u[0-9A-F]{4}\]", "", line)
        assert "\\" not in bare, f"line {n}: a backslash that is no known escape: {line}"
        if not line.startswith("."):
            assert "-" not in bare, f"line {n}: an unescaped hyphen: {line}"
    assert all(ord(c) < 128 for c in source)


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed (optional second linter)")
def test_mandoc_lint(page: Path) -> None:
    r = subprocess.run(["mandoc", "-Tlint", "-Wwarning", str(page)], capture_output=True, text=True,
                       timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stdout + r.stderr
