"""Hypothesis strategies built from kmscli/aws_model.py: valid requests, and requests wrong anywhere.

:func:`valid` draws ``(wire, python)`` pairs: a JSON value AWS KMS accepts for a
shape, and the Python value ``kmscli.shapes.validate_input`` must turn it into
(bytes for blobs, UTC datetimes for timestamps). :func:`fuzzy` draws JSON that
follows a shape's structure at some nodes and is arbitrary JSON at others, so
that every depth of every request shape meets every JSON type.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from hypothesis import strategies as st

from kmscli import aws_model, shapes

SHAPES = aws_model.SHAPES
#: Strings counted as AWS counts them (UTF-16 units): keep to the BMP, so a character is one unit.
BMP = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",))
#: A pattern that is one character class repeated (``^[a-f0-9]+$``): drawn as text over that class,
#: which meets length bounds that ``from_regex`` would rarely hit.
ONE_CLASS = re.compile(r"\^?(\[[^\]]*\])([+*])\$?")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: Python's json module reads them unless told not to
    | st.text()
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)  # lone surrogates
    | st.sampled_from(["", "QQ==", "QR==", "abc", "true", "FALSE", "1", "=", "AAAA=AAA", "2026-01-01T00:00:00Z"])
)
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                           max_size=4),
                    max_leaves=12)


def _cap(lo: int, hi: int | None, extra: int) -> int:
    return lo + extra if hi is None else min(hi, lo + extra)


@cache
def valid(shape_name: str) -> st.SearchStrategy[tuple[Any, Any]]:
    """``(wire JSON, expected Python value)`` for a value of ``shape_name`` that meets every constraint."""
    shape = SHAPES[shape_name]
    kind = shape["type"]
    lo, hi = shape.get("min", 0), shape.get("max")
    if kind == "structure":
        members = dict(shape["members"])
        required = {m: valid(members[m]) for m in shape.get("required", ())}
        optional = {m: valid(s) for m, s in members.items() if m not in required}
        return st.fixed_dictionaries(required, optional=optional).map(
            lambda d: ({k: w for k, (w, _) in d.items()}, {k: p for k, (_, p) in d.items()})
        )
    if kind == "list":
        return st.lists(valid(shape["member"]), min_size=lo, max_size=_cap(lo, hi, 3)).map(
            lambda items: ([w for w, _ in items], [p for _, p in items])
        )
    if kind == "map":
        return st.lists(st.tuples(valid(shape["key"]), valid(shape["value"])), min_size=lo, max_size=_cap(lo, hi, 3),
                        unique_by=lambda kv: kv[0][0]).map(
            lambda kvs: ({k[0]: v[0] for k, v in kvs}, {k[1]: v[1] for k, v in kvs})
        )
    if kind == "string":
        return _strings(shape).map(lambda s: (s, s))
    if kind == "blob":
        return st.binary(min_size=lo, max_size=_cap(lo, hi, 48)).map(lambda b: (base64.b64encode(b).decode(), b))
    if kind in ("integer", "long"):
        return st.integers(shape.get("min", -(2**31)), shape.get("max", 2**31 - 1)).map(lambda n: (n, n))
    if kind == "boolean":
        return st.booleans().map(lambda b: (b, b))
    if kind == "timestamp":
        return st.integers(0, 4_000_000_000).map(lambda n: (n, EPOCH + timedelta(seconds=n)))
    raise AssertionError(f"no strategy for {kind}")  # double/float: none in the KMS model


def _strings(shape: dict[str, Any]) -> st.SearchStrategy[str]:
    if "enum" in shape:
        return st.sampled_from(shape["enum"])
    lo, hi = shape.get("min", 0), shape.get("max")
    if "pattern" not in shape:
        return st.text(BMP, min_size=lo, max_size=_cap(lo, hi, 24))
    pattern = shape["pattern"]
    one = ONE_CLASS.fullmatch(pattern)
    if one is not None:
        alphabet = st.from_regex(shapes._pattern(one.group(1)), fullmatch=True)
        least = max(lo, 1 if one.group(2) == "+" else 0)
        return st.text(alphabet, min_size=least, max_size=_cap(least, hi, 24))
    return st.from_regex(shapes._pattern(pattern), fullmatch=True).filter(
        lambda s: lo <= len(s) and (hi is None or len(s) <= hi)
    )


@cache
def fuzzy(shape_name: str) -> st.SearchStrategy[Any]:
    """JSON shaped like ``shape_name`` at some nodes and arbitrary at others."""
    shape = SHAPES[shape_name]
    kind = shape["type"]
    if kind == "structure":
        members = {m: st.deferred(lambda s=s: fuzzy(s)) for m, s in shape["members"]}
        shaped = st.fixed_dictionaries({}, optional=members)
        return st.one_of(shaped, shaped, JSON, st.dictionaries(st.text(), JSON, max_size=3))
    if kind == "list":
        return st.one_of(st.lists(st.deferred(lambda: fuzzy(shape["member"])), max_size=4), JSON)
    if kind == "map":
        return st.one_of(st.dictionaries(st.text(max_size=4), st.deferred(lambda: fuzzy(shape["value"])), max_size=3),
                         JSON)
    return st.one_of(valid(shape_name).map(lambda pair: pair[0]), JSON)
