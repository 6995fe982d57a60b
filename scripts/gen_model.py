#!/usr/bin/env python3
"""Write kmscli/aws_model.py, the facts of AWS KMS's API, from botocore's KMS service model.

    .venv/bin/python scripts/gen_model.py           write kmscli/aws_model.py
    .venv/bin/python scripts/gen_model.py --check   write nothing; exit 1 if the committed file differs

kmscli never imports botocore at run time; ``kmscli/shapes.py`` checks requests
and responses against the table written here instead. The table keeps only what
a server must enforce or emit: each operation's input and output shape and its
errors, and for each shape its type, members (by shape name, never inlined),
required members, length or value bounds, enum values, pattern, and whether it
is sensitive, an exception or a fault. Documentation and deprecation notes are
dropped. The output is deterministic: operations and shapes in name order,
members in the model's order (AWS validates and documents them in that order).

A model feature this script does not know (a new shape type, a member trait
such as ``jsonvalue`` or ``timestampFormat``) stops it, rather than being left
out silently. ``tests/unit/test_aws_model_current.py`` fails while the committed
file differs from what this script makes from the installed botocore.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path("kmscli/aws_model.py")
REGENERATE = ".venv/bin/python scripts/gen_model.py"
SERVICE, API_VERSION = "kms", "2014-11-01"
WIDTH = 120

#: Shape types kmscli/shapes.py knows how to check and render.
TYPES = {"structure", "list", "map", "string", "blob", "integer", "long", "boolean", "timestamp", "double", "float"}
#: Shape keys kept, in the order they are written; the others are known and dropped.
KEPT = ("type", "members", "required", "member", "key", "value", "min", "max", "enum", "pattern", "sensitive",
        "exception", "fault")
DROPPED = {"documentation", "deprecated", "deprecatedMessage", "error"}
MEMBER_KEYS = {"shape", "documentation", "deprecated", "deprecatedMessage"}
OPERATION_KEYS = {"name", "http", "input", "output", "errors", "documentation", "deprecated", "deprecatedMessage",
                  "authtype", "auth"}


def load() -> tuple[str, dict[str, Any]]:
    """The installed botocore's version and its KMS model, read as data (the JSON, plain or gzipped)."""
    import botocore

    path = Path(botocore.__file__).parent / "data" / SERVICE / API_VERSION / "service-2.json"
    raw = path.read_bytes() if path.exists() else gzip.decompress(path.with_suffix(".json.gz").read_bytes())
    return botocore.__version__, json.loads(raw)


def facts(model: dict[str, Any]) -> tuple[dict[str, tuple[str, str | None, tuple[str, ...]]], dict[str, dict]]:
    """(operations, shapes): the model reduced to what kmscli/shapes.py uses."""
    operations: dict[str, tuple[str, str | None, tuple[str, ...]]] = {}
    for name in sorted(model["operations"]):
        op = model["operations"][name]
        unknown = set(op) - OPERATION_KEYS
        if unknown:
            raise SystemExit(f"operation {name}: unknown keys {sorted(unknown)}: teach scripts/gen_model.py")
        if op.get("http", {}).get("method", "POST") != "POST":
            raise SystemExit(f"operation {name}: not a POST")
        output = op["output"]["shape"] if "output" in op else None
        operations[name] = (op["input"]["shape"], output, tuple(e["shape"] for e in op.get("errors", ())))
    shapes: dict[str, dict] = {}
    for name in sorted(model["shapes"]):
        shape = model["shapes"][name]
        unknown = set(shape) - set(KEPT) - DROPPED
        if unknown:
            raise SystemExit(f"shape {name}: unknown keys {sorted(unknown)}: teach scripts/gen_model.py")
        if shape["type"] not in TYPES:
            raise SystemExit(f"shape {name}: unknown type {shape['type']}: teach kmscli/shapes.py")
        out: dict[str, Any] = {}
        for key in KEPT:
            if key not in shape:
                continue
            value = shape[key]
            if key == "members":
                for member, ref in value.items():
                    if set(ref) - MEMBER_KEYS:
                        raise SystemExit(f"shape {name}.{member}: unknown keys {sorted(set(ref) - MEMBER_KEYS)}")
                value = tuple((member, ref["shape"]) for member, ref in value.items())
            elif key in ("member", "key", "value"):
                value = value["shape"]
            elif key in ("required", "enum"):
                value = tuple(value)
            elif key == "pattern":
                _check_pattern(name, value)
            out[key] = value
        if shape["type"] == "structure":
            out.setdefault("members", ())
        shapes[name] = out
    for name, (inp, outp, errs) in operations.items():
        for ref in (inp, outp, *errs):
            if ref is not None and ref not in shapes:
                raise SystemExit(f"operation {name} names an unknown shape {ref}")
    return operations, shapes


def _check_pattern(shape: str, pattern: str) -> None:
    """Refuse a Java pattern that Python's re would read differently (kmscli/shapes.py translates only '.')."""
    for construct in (r"\p{", r"\P{", r"\Q", r"\G", r"\Z", r"\z", "*+", "++", "?+", "}+", "(?<"):
        if construct in pattern:
            raise SystemExit(f"shape {shape}: pattern {pattern!r} uses {construct!r}: teach kmscli/shapes.py")
    re.compile(pattern)


# -- rendering -------------------------------------------------------------------------


def _lines(prefix: str, value: Any, suffix: str, indent: int) -> list[str]:
    """``prefix + value + suffix`` on one line when it fits, else broken over lines, scalars packed."""
    pad = " " * indent
    one = f"{pad}{prefix}{_flat(value)}{suffix}"
    if len(one) <= WIDTH or not isinstance(value, (dict, tuple)) or not value:
        return [one]
    opener, closer = ("{", "}") if isinstance(value, dict) else ("(", ")")
    out = [f"{pad}{prefix}{opener}"]
    if isinstance(value, tuple) and not any(isinstance(v, (dict, tuple)) for v in value):
        line = ""
        for v in value:
            item = _flat(v) + ","
            if line and len(pad) + 4 + len(line) + 1 + len(item) > WIDTH:
                out.append(f"{pad}    {line}")
                line = ""
            line = f"{line} {item}" if line else item
        out.append(f"{pad}    {line}")
    else:
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for k, v in items:
            out += _lines("" if k is None else f"{_flat(k)}: ", v, ",", indent + 4)
    out.append(f"{pad}{closer}{suffix}")
    return out


def _flat(value: Any) -> str:
    """A Python literal for ``value``; strings double-quoted with JSON's escapes, which Python reads alike."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flat(k)}: {_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple):
        inner = ", ".join(_flat(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def render(version: str, model: dict[str, Any]) -> str:
    """The text of kmscli/aws_model.py for this model."""
    operations, shapes = facts(model)
    out = [
        f"# Generated by scripts/gen_model.py from botocore {version}'s KMS model ({SERVICE} {API_VERSION}):",
        "# do not edit. Regenerate with: " + REGENERATE,
        '"""The facts of the AWS KMS API that kmscli/shapes.py checks requests and responses against.',
        "",
        "OPERATIONS: operation -> (input shape, output shape or None, error shapes).",
        "SHAPES: shape -> its facts, each key present only when it applies: type; members, a",
        "tuple of (member name, shape name) in the model's order; required; member (a list's",
        "element shape); key and value (a map's); min and max (length, or value for numbers);",
        "enum; pattern (Java syntax, as AWS quotes it); sensitive; exception; fault.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        f"BOTOCORE_VERSION = {_flat(version)}",
        f"API_VERSION = {_flat(API_VERSION)}",
        f"TARGET_PREFIX = {_flat(model['metadata']['targetPrefix'])}",
        f"JSON_VERSION = {_flat(model['metadata']['jsonVersion'])}",
        "",
        "OPERATIONS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {",
    ]
    for name, value in operations.items():
        out += _lines(f"{_flat(name)}: ", value, ",", 4)
    out += ["}", "", "SHAPES: dict[str, dict[str, Any]] = {"]
    for name, value in shapes.items():
        out += _lines(f"{_flat(name)}: ", value, ",", 4)
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed file differs")
    args = parser.parse_args(argv)
    text = render(*load())
    path = ROOT / TARGET
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if current == text:
        return 0
    if args.check:
        print(f"stale: {TARGET}; regenerate with: {REGENERATE}", file=sys.stderr)
        return 1
    path.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
