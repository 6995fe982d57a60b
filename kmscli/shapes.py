"""AWS KMS request and response documents, checked and rendered as AWS KMS does.

Everything here is driven by ``kmscli/aws_model.py``, the facts of botocore's
KMS model (regenerate with ``scripts/gen_model.py``); botocore itself is never
imported at run time.

Requests. :func:`validate_input` takes a parsed JSON request body and answers
as AWS's JSON 1.1 front end does, in its two steps:

1. Deserialising: a member of the wrong JSON type (a number where a string
   belongs, an object where a list belongs, a blob that is not strict standard
   base64 with padding) is a :class:`~kmscli.errors.SerializationException`
   naming the first bad member in the body's order, worded as AWS's Java
   deserialiser words it (``NUMBER_VALUE cannot be converted to String``).
   Unknown members and ``null`` members are ignored, as AWS ignores them.
   Booleans also accept the strings ``"true"``/``"false"`` (any case) and
   integers accept a number with a fraction (truncated), as AWS does.
2. Validating: every constraint of the model (required, length, value range,
   enum, pattern) is checked, in the model's member order, and all failures
   are reported in one :class:`~kmscli.errors.ValidationException` in AWS's
   words: ``1 validation error detected: Value 'x' at 'keyId' failed to satisfy
   constraint: Member must have length less than or equal to 2048``. Member
   paths are lower camel case (``encryptionContext``, ``tags.1.member.tagKey``);
   the value is shown for strings and numbers, never for blobs or sensitive
   members (``Value at 'plaintext'``); a missing member shows ``Value null``.

It returns the request as Python values: AWS member names, ``bytes`` for
blobs, timezone-aware UTC ``datetime`` for timestamps.

Responses. A service returns a response document with AWS member names and
these Python values: ``str`` for strings, ``bytes`` for blobs, a timezone-aware
``datetime`` for timestamps (never an ISO string or an epoch number), ``int``,
``bool``, ``list`` and ``dict``; a member whose value is ``None`` is absent.
:func:`shape_errors` lists every way a document departs from the operation's
output shape (unknown members, missing required members, types, enums,
lengths, ranges, patterns); :func:`to_wire` renders it for the JSON wire (blobs
standard base64, timestamps epoch seconds to the millisecond, ``None`` members
dropped) and :func:`to_cli` for ``--json`` (the same, but timestamps in ISO 8601
UTC as the AWS CLI v2 prints them, ``2026-01-01T12:00:00.123000+00:00``).
Rendering does not check: a value of another type than the model's is copied
as it is, so the check that follows on the wire still sees it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from . import aws_model, errors

#: Every operation of the model, in name order.
OPERATIONS: tuple[str, ...] = tuple(aws_model.OPERATIONS)

_SHAPES = aws_model.SHAPES
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_SCALARS = {"string", "blob", "integer", "long", "boolean", "timestamp", "double", "float"}
#: The Java type AWS's deserialiser names in its messages.
_JAVA = {"string": "String", "integer": "Integer", "long": "Long", "boolean": "Boolean", "timestamp": "Date",
         "double": "Double", "float": "Float"}
_B64_ALPHABET = re.compile(r"[^A-Za-z0-9+/=]")
_B64_SHAPE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def input_shape(operation: str) -> str:
    return _operation(operation)[0]


def output_shape(operation: str) -> str | None:
    return _operation(operation)[1]


def error_names(operation: str) -> tuple[str, ...]:
    """The exceptions the model lists for ``operation``."""
    return _operation(operation)[2]


def _operation(operation: str) -> tuple[str, str | None, tuple[str, ...]]:
    try:
        return aws_model.OPERATIONS[operation]
    except KeyError:
        raise ValueError(f"{operation!r} is not an AWS KMS operation") from None


# =====================================================================
# Requests
# =====================================================================
def validate_input(operation: str, params: Any) -> dict[str, Any]:
    """The request ``params`` (a parsed JSON body) as Python values, or AWS's error for it.

    Raises SerializationException for a member of the wrong JSON type (the
    first one in the body's order) and ValidationException listing every
    constraint it fails. ``ValueError`` for an ``operation`` not in the model:
    routing is the caller's job (AWS answers UnknownOperationException).
    """
    shape = input_shape(operation)
    if isinstance(params, list):
        raise errors.SerializationException("Start of list found where not expected")
    if not isinstance(params, dict):
        raise errors.SerializationException("Unexpected field type")
    request = _read_structure(params, shape)
    problems: list[str] = []
    _check_structure(request, shape, "", problems)
    if problems:
        n = len(problems)
        lead = f"{n} validation error{'' if n == 1 else 's'} detected: "
        raise errors.ValidationException(lead + "; ".join(problems))
    return request


# -- step 1: deserialising (JSON types) -------------------------------------------------
def _token(value: Any) -> str:
    """The name AWS's JSON parser gives the token it found (Jackson's JsonToken)."""
    if value is True:
        return "TRUE_VALUE"
    if value is False:
        return "FALSE_VALUE"
    if isinstance(value, int):
        return "NUMBER_VALUE"
    if isinstance(value, float):
        return "DECIMAL_VALUE"
    return "STRING_VALUE"


def _container_problem(value: Any) -> str | None:
    """AWS's words for an object or an array where a scalar belongs."""
    if isinstance(value, dict):
        return "Start of structure or map found where not expected"
    if isinstance(value, list):
        return "Start of list found where not expected"
    return None


def _read(value: Any, shape_name: str, element: bool = False) -> Any:
    """``value`` (not None) converted to the Python type of ``shape_name``, or SerializationException."""
    shape = _SHAPES[shape_name]
    kind = shape["type"]
    if kind == "structure":
        if isinstance(value, dict):
            return _read_structure(value, shape_name)
        problem = _container_problem(value)
        # Inside a list or a map AWS words a scalar where an object belongs differently.
        raise errors.SerializationException(problem or ("Unexpected value type in payload" if element
                                                        else "Unexpected field type"))
    if kind == "list":
        if isinstance(value, list):
            return [None if v is None else _read(v, shape["member"], True) for v in value]
        raise errors.SerializationException(
            "Start of structure or map found where not expected" if isinstance(value, dict) else "Unexpected field type"
        )
    if kind == "map":
        if isinstance(value, dict):
            key_shape, value_shape = shape["key"], shape["value"]
            return {_read(k, key_shape): None if v is None else _read(v, value_shape, True) for k, v in value.items()}
        raise errors.SerializationException(
            "Start of list found where not expected" if isinstance(value, list) else "Unexpected field type"
        )
    problem = _container_problem(value)
    if problem is not None:
        raise errors.SerializationException(problem)
    return _read_scalar(value, kind)


def _read_structure(params: dict[str, Any], shape_name: str) -> dict[str, Any]:
    members = dict(_SHAPES[shape_name]["members"])
    out: dict[str, Any] = {}
    for name, value in params.items():  # body order: the first bad member is the one reported
        member_shape = members.get(name)
        if member_shape is None or value is None:
            continue  # unknown and null members are ignored, as AWS ignores them
        out[name] = _read(value, member_shape)
    return out


def _read_scalar(value: Any, kind: str) -> Any:
    if kind == "string":
        if isinstance(value, str):
            _check_surrogates(value)
            return value
    elif kind == "blob":
        if isinstance(value, str):
            return _b64decode(value)
        raise errors.SerializationException("only base-64-encoded strings are convertible to bytes")
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            if value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise errors.SerializationException("Unexpected token received from parser")
    elif kind in ("integer", "long"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return int(value)  # AWS truncates a number with a fraction
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind in ("double", "float") and math.isfinite(value):
            return float(value)
        if kind == "timestamp":
            try:
                return _EPOCH + timedelta(seconds=value)
            except (OverflowError, ValueError):
                pass  # an epoch no datetime can hold: the same answer as a wrong type
    raise errors.SerializationException(f"{_token(value)} cannot be converted to {_JAVA[kind]}")


def _check_surrogates(text: str) -> None:
    """A lone UTF-16 surrogate (``"\\ud800"`` in JSON) is not text: refuse it before it reaches a file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.SerializationException("Invalid UTF-16 surrogate in a string value") from None


def _b64decode(text: str) -> bytes:
    """Strict standard base64 with padding, as AWS (and Go's StdEncoding.Strict) decodes it."""
    if len(text) % 4:
        raise errors.SerializationException(
            f"Base64 encoded length is expected a multiple of 4 bytes but found: {len(text)}"
        )
    bad = _B64_ALPHABET.search(text)
    if bad is None and not _B64_SHAPE.fullmatch(text):
        bad = re.search("=", text)  # padding only at the end, and at most two
    if bad is not None:
        raise errors.SerializationException(f"Invalid Base64 character: '{bad.group()}'")
    data = binascii.a2b_base64(text)
    if base64.b64encode(data).decode("ascii") != text:  # bits set in the padding: not canonical
        raise errors.SerializationException("Invalid last non-pad Base64 character dectected")  # AWS's spelling
    return data


# -- step 2: validating (constraints) ---------------------------------------------------
def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _check_structure(doc: dict[str, Any], shape_name: str, path: str, problems: list[str]) -> None:
    shape = _SHAPES[shape_name]
    required = shape.get("required", ())
    for name, member_shape in shape["members"]:
        member_path = f"{path}.{_lower_camel(name)}" if path else _lower_camel(name)
        value = doc.get(name)
        if value is None:
            if name in required:
                problems.append(_problem(None, member_shape, member_path, "Member must not be null"))
            continue
        _check_value(value, member_shape, member_path, problems)


def _check_value(value: Any, shape_name: str, path: str, problems: list[str]) -> None:
    shape = _SHAPES[shape_name]
    kind = shape["type"]
    for constraint in _constraints(value, shape):
        problems.append(_problem(value, shape_name, path, constraint))
    if kind == "structure":
        _check_structure(value, shape_name, path, problems)
    elif kind == "list":
        _check_elements(value, shape["member"], path, problems, "Member must satisfy constraint")
    elif kind == "map":
        keys = [_constraints(k, _SHAPES[shape["key"]]) for k in value]
        if any(keys):
            problems.append(_problem(value, shape_name, path, "Map keys must satisfy constraint: " + _joined(keys)))
        _check_elements(list(value.values()), shape["value"], path, problems, "Map value must satisfy constraint",
                        list(value))


def _check_elements(values: list[Any], shape_name: str, path: str, problems: list[str], lead: str,
                    keys: list[str] | None = None) -> None:
    """The elements of a list (or a map's values): scalars as one constraint on the whole, others one by one."""
    shape = _SHAPES[shape_name]
    if shape["type"] in _SCALARS:
        found = [["Member must not be null"] if v is None else _constraints(v, shape) for v in values]
        if any(found):
            whole = values if keys is None else dict(zip(keys, values, strict=True))
            shown = "Value at" if shape.get("sensitive") else _shown(whole, "list" if keys is None else "map")
            problems.append(f"{shown} '{path}' failed to satisfy constraint: {lead}: {_joined(found)}")
        return
    for i, v in enumerate(values):
        element_path = f"{path}.{i + 1}.member" if keys is None else f"{path}.{keys[i]}"
        if v is None:
            problems.append(_problem(None, shape_name, element_path, "Member must not be null"))
        else:
            _check_value(v, shape_name, element_path, problems)


def _joined(found: list[list[str]]) -> str:
    """``[a, b]``: each distinct constraint once, in the order first met."""
    return "[" + ", ".join(dict.fromkeys(c for cs in found for c in cs)) + "]"


def _constraints(value: Any, shape: Mapping[str, Any]) -> list[str]:
    """The constraint messages ``value`` fails, AWS's words, in AWS's order (length, pattern, enum)."""
    kind = shape["type"]
    out: list[str] = []
    if kind in ("integer", "long", "double", "float"):
        if "min" in shape and value < shape["min"]:
            out.append(f"Member must have value greater than or equal to {shape['min']}")
        if "max" in shape and value > shape["max"]:
            out.append(f"Member must have value less than or equal to {shape['max']}")
        return out
    if kind in ("string", "blob", "list", "map"):
        n = _utf16_len(value) if kind == "string" else len(value)
        if "min" in shape and n < shape["min"]:
            out.append(f"Member must have length greater than or equal to {shape['min']}")
        if "max" in shape and n > shape["max"]:
            out.append(f"Member must have length less than or equal to {shape['max']}")
    if kind == "string":
        if "pattern" in shape and not _pattern(shape["pattern"]).fullmatch(value):
            out.append(f"Member must satisfy regular expression pattern: {shape['pattern']}")
        if "enum" in shape and value not in shape["enum"]:
            out.append(f"Member must satisfy enum value set: [{', '.join(shape['enum'])}]")
    return out


def _problem(value: Any, shape_name: str, path: str, constraint: str) -> str:
    shape = _SHAPES[shape_name]
    shown = "Value at" if shape.get("sensitive") else _shown(value, shape["type"])
    return f"{shown} '{path}' failed to satisfy constraint: {constraint}"


def _shown(value: Any, kind: str) -> str:
    """How AWS quotes a value in a validation message: Java's toString, never a blob's bytes."""
    if value is None:
        return "Value null at"
    if kind == "blob":
        return "Value at"
    return f"Value '{_java(value)}' at"


def _java(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_java(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_java(k)}={_java(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (bytes, bytearray)):
        return "java.nio.HeapByteBuffer"
    return str(value)


def _utf16_len(text: str) -> int:
    """AWS counts a string's length in UTF-16 code units, as Java does."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@cache
def _pattern(java: str) -> re.Pattern[str]:
    """A model pattern (Java syntax) for Python's re: '.' does not match Java's line terminators."""
    out, in_class, escaped = [], False, False
    for c in java:
        if escaped:
            out.append(c)
            escaped = False
        elif c == "\\":
            out.append(c)
            escaped = True
        elif c == "[":
            in_class = True
            out.append(c)
        elif c == "]":
            in_class = False
            out.append(c)
        elif c == "." and not in_class:
            out.append("[^\\n\\r\\u0085\\u2028\\u2029]")
        else:
            out.append(c)
    # ASCII: Java's \w, \d and \s are ASCII-only unless asked otherwise.
    return re.compile("".join(out), re.ASCII)


# =====================================================================
# Responses
# =====================================================================
def shape_errors(operation: str, output_doc: Any) -> list[str]:
    """Every way ``output_doc`` departs from the output shape of ``operation``, one line each.

    A line is ``<member path>: <problem>``, the path in AWS member names
    (``Keys[0].Arn``, ``KeyMetadata.Tags``). An empty list means the document
    renders to exactly what AWS KMS could answer.
    """
    shape = output_shape(operation)
    if shape is None:
        if output_doc is None or output_doc == {}:
            return []
        if not isinstance(output_doc, dict):
            return [f"{operation}: expected an empty dict (AWS answers {{}}), got {type(output_doc).__name__}"]
        return [f"{name}: {operation} answers no members" for name, v in output_doc.items() if v is not None]
    problems: list[str] = []
    _errors(output_doc, shape, "", problems)
    return problems


def _errors(value: Any, shape_name: str, path: str, problems: list[str]) -> None:
    shape = _SHAPES[shape_name]
    kind = shape["type"]
    where = path or shape_name

    def add(problem: str) -> None:
        problems.append(f"{where}: {problem}")

    expected = _PY_TYPES[kind]
    if not _is_type(value, kind):
        add(f"expected {expected}, got {type(value).__name__}")
        return
    if kind == "structure":
        members = dict(shape["members"])
        for name, v in value.items():
            if name not in members:
                if v is not None:
                    problems.append(f"{_join(path, name)}: not a member of {shape_name}")
                continue
            if v is not None:
                _errors(v, members[name], _join(path, name), problems)
        for name in shape.get("required", ()):
            if value.get(name) is None:
                problems.append(f"{_join(path, name)}: required member missing")
        return
    if kind in ("string", "blob", "list", "map"):
        n = _utf16_len(value) if kind == "string" else len(value)
        unit = " bytes" if kind == "blob" else ""
        if "min" in shape and n < shape["min"]:
            add(f"length {n}{unit} is less than {shape['min']}")
        if "max" in shape and n > shape["max"]:
            add(f"length {n}{unit} is more than {shape['max']}")
    if kind in ("integer", "long", "double", "float"):
        if "min" in shape and value < shape["min"]:
            add(f"{value} is less than {shape['min']}")
        if "max" in shape and value > shape["max"]:
            add(f"{value} is more than {shape['max']}")
    if kind == "string":
        shown = "the value" if shape.get("sensitive") else repr(value)
        if "enum" in shape and value not in shape["enum"]:
            add(f"{shown} is not one of {shape_name} [{', '.join(shape['enum'])}]")
        if "pattern" in shape and not _pattern(shape["pattern"]).fullmatch(value):
            add(f"{shown} does not match {shape['pattern']}")
    elif kind == "list":
        for i, v in enumerate(value):
            if v is None:
                problems.append(f"{where}[{i}]: null element")
            else:
                _errors(v, shape["member"], f"{where}[{i}]", problems)
    elif kind == "map":
        for k, v in value.items():
            item = f"{where}[{json.dumps(k)}]" if isinstance(k, str) else f"{where}[{k!r}]"
            _errors(k, shape["key"], f"{item} (key)", problems)
            if v is None:
                problems.append(f"{item}: null value")
            else:
                _errors(v, shape["value"], item, problems)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


#: The Python type each shape type takes in a response document.
_PY_TYPES = {"structure": "dict", "map": "dict", "list": "list", "string": "str", "blob": "bytes", "integer": "int",
             "long": "int", "boolean": "bool", "timestamp": "timezone-aware datetime", "double": "float",
             "float": "float"}


def _is_type(value: Any, kind: str) -> bool:
    if kind in ("structure", "map"):
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "string":
        return isinstance(value, str)
    if kind == "blob":
        return isinstance(value, (bytes, bytearray))
    if kind in ("integer", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "timestamp":
        return isinstance(value, datetime) and value.utcoffset() is not None
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # double, float


def to_wire(operation: str, output_doc: Any) -> Any:
    """``output_doc`` as the JSON wire carries it: base64 blobs, epoch-second timestamps, no ``None`` members.

    Epoch seconds are an integer for a whole second, else a number with the
    milliseconds AWS keeps (AWS writes ``1.700000000123E9``; JSON readers take
    ``1700000000.123`` as the same number).
    """
    return _render(output_doc, output_shape(operation), epoch_seconds)


def to_cli(operation: str, output_doc: Any) -> Any:
    """``output_doc`` as ``--json`` prints it: :func:`to_wire`, but timestamps as the AWS CLI v2 prints them."""
    return _render(output_doc, output_shape(operation), cli_timestamp)


def epoch_seconds(t: datetime) -> int | float:
    """AWS's wire form of a timestamp: epoch seconds, to the millisecond (a naive time counts as UTC)."""
    ms = (_aware(t) - _EPOCH) // _MS
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def cli_timestamp(t: datetime) -> str:
    """ISO 8601 in UTC, to the millisecond, as AWS CLI v2 prints a timestamp: ``...T12:00:00.123000+00:00``."""
    t = _aware(t).astimezone(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000).isoformat()


def _aware(t: datetime) -> datetime:
    return t if t.utcoffset() is not None else t.replace(tzinfo=UTC)


def _render(value: Any, shape_name: str | None, timestamp: Callable[[datetime], Any]) -> Any:
    if shape_name is None:
        return _render_any(value, timestamp)
    shape = _SHAPES[shape_name]
    kind = shape["type"]
    if kind == "structure" and isinstance(value, dict):
        members = dict(shape["members"])
        return {k: _render(v, members.get(k), timestamp) for k, v in value.items() if v is not None}
    if kind == "list" and isinstance(value, (list, tuple)):
        return [_render(v, shape["member"], timestamp) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _render(v, shape["value"], timestamp) for k, v in value.items()}
    return _render_any(value, timestamp)


def _render_any(value: Any, timestamp: Callable[[datetime], Any]) -> Any:
    """Render by Python type alone: for members the model does not have, so that they still reach JSON."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, dict):
        return {k: _render_any(v, timestamp) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_render_any(v, timestamp) for v in value]
    return value


def shape_names(shape_name: str) -> Iterator[str]:
    """``shape_name`` and every shape it reaches, each once (members, list elements, map keys and values)."""
    seen: set[str] = set()
    todo = [shape_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        yield name
        shape = _SHAPES[name]
        todo.extend(s for _, s in reversed(shape.get("members", ())))
        todo.extend(shape[k] for k in ("value", "key", "member") if k in shape)
