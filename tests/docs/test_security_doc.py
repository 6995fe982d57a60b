"""docs/security.md: every threat names a test, and every test it names exists.

Security claims are tested claims: a renamed or deleted test must not leave
the document pointing at nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_test_named_in_security_md_exists() -> None:
    refs = REFERENCE.findall(DOC.read_text(encoding="utf-8"))
    assert len(refs) >= 60
    missing = [f"{f}::{name}" for f, name in refs if not (REPO / f).exists() or name not in _tests_in(REPO / f)]
    assert missing == []


def test_every_threat_row_names_at_least_one_test() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Threats and what answers them") : text.index("## What a failure")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| threat")]
    rows = [r for r in rows if not set(r) <= set("|- ")]
    assert len(rows) >= 30
    for row in rows:
        assert REFERENCE.search(row.split(" | ")[-1]), row
