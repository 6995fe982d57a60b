"""Check a wire JSON document against botocore's own KMS model: the "real thing" side.

This helper reads botocore's ``Shape`` objects (``botocore.session`` ->
``get_service_model('kms')``), never kmscli/aws_model.py or kmscli/shapes.py, so
the two can be held against each other. :func:`wire_errors` walks the raw JSON
as a strict client would read it (AWS omits absent members rather than sending
``null``; timestamps are JSON numbers; blobs strict standard base64), then
hands a clean document to botocore's JSON response parser and runs botocore's
``ParamValidator`` over what the parser made of it.

Lines read ``<member path>: <problem>``, paths in AWS member names
(``Keys[0].Arn``), the same convention as ``kmscli.shapes.shape_errors``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from functools import cache
from typing import Any

import pytest

pytest.importorskip("botocore")

import botocore  # noqa: E402
import botocore.parsers  # noqa: E402
import botocore.serialize  # noqa: E402
import botocore.session  # noqa: E402
import botocore.validate  # noqa: E402
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape  # noqa: E402

_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@cache
def service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("kms")


def wire_errors(operation: str, wire_doc: Any) -> list[str]:
    """Every way the JSON document ``wire_doc`` is not a response AWS KMS could send for ``operation``."""
    op = service_model().operation_model(operation)
    shape = op.output_shape
    problems: list[str] = []
    try:
        body = json.dumps(wire_doc, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        return [f"{operation}: not serialisable as JSON: {e}"]
    if shape is None:
        if wire_doc != {}:
            problems.append(f"{operation}: AWS answers {{}} for this operation, not {body.decode()[:200]}")
        return problems
    _walk(wire_doc, shape, "", problems)
    if not problems:
        # The document is clean by the walk: botocore must agree, by its own means.
        parser = botocore.parsers.create_parser(service_model().protocol)
        parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
        parsed.pop("ResponseMetadata", None)
        report = botocore.validate.ParamValidator().validate(parsed, shape)
        if report.has_errors():
            problems.append(f"{shape.name}: botocore's ParamValidator: {report.generate_report()}")
    return problems


def _utf16_len(text: str) -> int:
    # AWS (Java) counts a string's length in UTF-16 code units.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _walk(value: Any, shape: Shape, path: str, problems: list[str]) -> None:
    where = path or shape.name

    def add(problem: str) -> None:
        problems.append(f"{where}: {problem}")

    kind = shape.type_name
    if value is None:
        add("null (AWS omits a member that has no value)")
        return
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            add(f"expected a JSON object, got {type(value).__name__}")
            return
        for name, v in value.items():
            member_path = f"{path}.{name}" if path else name
            if name not in shape.members:
                problems.append(f"{member_path}: not a member of {shape.name}")
            else:
                _walk(v, shape.members[name], member_path, problems)
        for name in shape.required_members:
            if name not in value:
                problems.append(f"{path + '.' if path else ''}{name}: required member missing")
        return
    meta = shape.metadata
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            add(f"expected a JSON array, got {type(value).__name__}")
            return
        _length(len(value), meta, "", add)
        for i, v in enumerate(value):
            _walk(v, shape.member, f"{where}[{i}]", problems)
        return
    if isinstance(shape, MapShape):
        if not isinstance(value, dict):
            add(f"expected a JSON object, got {type(value).__name__}")
            return
        _length(len(value), meta, "", add)
        for k, v in value.items():
            item = f"{where}[{json.dumps(k)}]"
            _walk(k, shape.key, f"{item} (key)", problems)
            _walk(v, shape.value, item, problems)
        return
    if kind == "string":
        if not isinstance(value, str):
            add(f"expected a JSON string, got {type(value).__name__}")
            return
        _length(_utf16_len(value), meta, "", add)
        if shape.enum and value not in shape.enum:
            add(f"{value!r} is not one of {shape.name} {shape.enum}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"], value, re.ASCII):
            add(f"{value!r} does not match {meta['pattern']}")
    elif kind == "blob":
        if not isinstance(value, str):
            add(f"a blob must be a base64 JSON string, got {type(value).__name__}")
            return
        if not _B64.fullmatch(value):
            add("not strict standard base64 with padding")
            return
        data = binascii.a2b_base64(value)
        if base64.b64encode(data).decode() != value:
            add("base64 with bits set in its padding (Go's strict decoder refuses it)")
            return
        _length(len(data), meta, " bytes", add)
    elif kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            add(f"a timestamp must be a JSON number of epoch seconds, got {type(value).__name__}")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            add(f"expected a JSON integer, got {type(value).__name__}")
            return
        if "min" in meta and value < meta["min"]:
            add(f"{value} is less than {meta['min']}")
        if "max" in meta and value > meta["max"]:
            add(f"{value} is more than {meta['max']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            add(f"expected true or false, got {type(value).__name__}")
    elif kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            add(f"expected a JSON number, got {type(value).__name__}")
    else:  # pragma: no cover - a model with a type this helper does not know
        add(f"unknown shape type {kind}")


def _length(n: int, meta: dict[str, Any], unit: str, add: Any) -> None:
    if "min" in meta and n < meta["min"]:
        add(f"length {n}{unit} is less than {meta['min']}")
    if "max" in meta and n > meta["max"]:
        add(f"length {n}{unit} is more than {meta['max']}")


def paths(lines: list[str]) -> set[str]:
    """The member paths a list of problem lines names (the part before the first ': ')."""
    return {line.split(": ", 1)[0] for line in lines}
