"""Key ids, ARNs, alias names, K=V pairs, tags, durations, sizes and ciphertext headers from anyone.

Each parser either accepts or raises one of its documented errors (a
``KmsError`` subclass with a one-line message); no other exception, whatever
the text. Parsers of binary input hold a bounded amount of memory. The
ciphertext and armor parsers, policy documents and audit lines have their own
properties in test_stream_props.py, test_policy_props.py and
test_audit_props.py; this file covers the rest.
"""

from __future__ import annotations

import importlib
import io
import tracemalloc
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kmscli import errors, ids
from kmscli.crypto import stream

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KID = "1234abcd-12ab-34cd-56ef-1234567890ab"
ACCOUNT = "111122223333"

# Text as a shell hands it over: any Unicode, and lone surrogates from bytes that are not UTF-8.
argv_text = st.one_of(
    st.text(),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(alphabet="alias/arn:kmslocal0123456789abcdef-_=*?", max_size=80),
)
near_refs = st.one_of(
    st.builds(lambda a, k: f"arn:aws:kms:local:{a}:key/{k}", st.text("0123456789", max_size=14),
              st.sampled_from([KID, KID.upper(), "", "x", KID + "0"]) | st.text(max_size=40)),
    st.builds(lambda a, n: f"arn:aws:kms:local:{a}:alias/{n}", st.text("0123456789", max_size=14), argv_text),
    st.builds(lambda n: f"alias/{n}", argv_text),
    st.builds(lambda n: f"alias/aws/{n}", argv_text),
)


def one_line(e: errors.KmsError) -> None:
    """A documented error with a message (the CLI prints it on one line, white space folded)."""
    assert isinstance(e, errors.KmsError) and str(e).strip()


@SETTINGS
@given(argv_text | near_refs)
@example("x" * 100_000)
@example("arn:aws:kms:local:111122223333:alias/")
def test_key_refs(text: str) -> None:
    try:
        ref = ids.parse_key_ref(text)
    except errors.InvalidArnException as e:  # starts "arn:" but is no KMS key or alias ARN
        assert text.startswith("arn:")
        one_line(e)
        return
    except (errors.NotFoundException, errors.ValidationException) as e:  # Validation: not UTF-8 text
        one_line(e)
        return
    assert (ref.key_id is None) != (ref.alias is None)
    assert ref.key_id is None or ids.is_key_id(ref.key_id)
    assert ref.alias is None or ref.alias.startswith("alias/")
    assert ref.account is None or (len(ref.account) == 12 and ref.account.isdigit())


@SETTINGS
@given(argv_text | near_refs)
@example("alias/" + "a" * 300)
def test_alias_names(text: str) -> None:
    try:
        assert ids.validate_alias_name(text) == text
    except (errors.ValidationException, errors.NotAuthorizedException) as e:
        one_line(e)
        return
    assert text.startswith("alias/") and not text.startswith("alias/aws/") and len(text) <= ids.ALIAS_MAX
    assert text.isascii() and text.isprintable()


@SETTINGS
@given(argv_text, st.sampled_from(["tag", "context", "source context"]))
def test_key_value_pairs(text: str, what: str) -> None:
    try:
        k, v = ids.parse_pair(text, what)
    except errors.ValidationException as e:
        one_line(e)
        return
    assert k and f"{k}={v}" == text


@SETTINGS
@given(argv_text, argv_text)
def test_tags_and_descriptions(key: str, value: str) -> None:
    def utf8(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    try:
        ids.validate_tag(key, value)
    except errors.ValidationException as e:  # lengths: the model's constraints
        assert not 1 <= len(key) <= ids.TAG_KEY_MAX or len(value) > ids.TAG_VALUE_MAX
        one_line(e)
    except errors.TagException as e:  # the reserved prefix, or text that is not UTF-8
        assert key.lower().startswith("aws:") or not utf8(key) or not utf8(value)
        one_line(e)
    else:
        assert 1 <= len(key) <= ids.TAG_KEY_MAX and len(value) <= ids.TAG_VALUE_MAX
        assert not key.lower().startswith("aws:") and utf8(key) and utf8(value)
    try:
        ids.validate_description(value * 500)
    except errors.ValidationException as e:
        one_line(e)


def _parsers() -> list[tuple[str, object]]:
    """The duration and size parsers this tree has (some arrive with other changes)."""
    found = []
    for module, name in (("kmscli.cli.audit_cmds", "parse_since"), ("kmscli.agent.session", "parse_duration"),
                         ("kmscli.ids", "parse_size")):
        try:
            fn = getattr(importlib.import_module(module), name, None)
        except ImportError:
            fn = None
        if fn is not None:
            found.append((f"{module}.{name}", fn))
    return found


durations = st.one_of(
    argv_text,
    st.from_regex(r"\A(\d{1,25}[dhms]){1,4}\Z"),
    st.from_regex(r"\A\d{1,25}\s*([KMGTkmgt]i?B?)?\Z"),
    st.sampled_from(["0", "-1", "1e9", "nan", "inf", "0x10", "١٢m", "1h30m", "24h", "24h1s", "90", "2h", "15m",
                     "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-02-30T00:00:00Z",
                     "99999999999999999999d", "9999999999d"]),
)


def _call(name: str, fn, text: str) -> object:
    if name.endswith("parse_since"):
        return fn(text, datetime(2026, 11, 29, tzinfo=UTC))
    return fn(text, "--option")


@pytest.mark.parametrize(("name", "fn"), _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_durations_and_sizes(name: str, fn) -> None:
    @SETTINGS
    @given(durations)
    def check(text: str) -> None:
        try:
            _call(name, fn, text)
        except errors.ValidationException as e:
            one_line(e)

    check()


def test_the_since_parser_is_still_total_on_ordinary_input() -> None:
    """What test_durations_and_sizes cannot check while its overflow is open: no other failure."""
    from kmscli.cli.audit_cmds import parse_since

    now = datetime(2026, 11, 29, tzinfo=UTC)

    @SETTINGS
    @given(st.one_of(argv_text, st.from_regex(r"\A(\d{1,5}[dhms]){1,4}\Z")))  # 99999d: 270 years back
    def check(text: str) -> None:
        try:
            parse_since(text, now)
        except errors.ValidationException as e:
            one_line(e)

    check()


# -- ciphertext headers: bounded memory whatever they claim --------------------------------
@st.composite
def hostile_headers(draw: st.DrawFn) -> bytes:
    """A header that claims the largest chunk and context the format allows, then garbage or nothing."""
    context_length = draw(st.sampled_from([0, 1, 2, stream.CONTEXT_INLINE_MAX_BYTES + 1, stream.CONTEXT_MAX_BYTES,
                                           stream.CONTEXT_MAX_BYTES + 1, 0xFFFF]))
    version = draw(st.sampled_from([1, 2]))  # 2: above 1024 bytes only a digest follows
    head = (stream.MAGIC + bytes([version, draw(st.sampled_from([0, 12, 22, 23, 255]))]) + bytes(16)
            + draw(st.binary(min_size=4, max_size=4)) + bytes(64) + context_length.to_bytes(2, "big"))
    return head + draw(st.binary(max_size=2000)) + bytes(draw(st.sampled_from([0, 10_000, 100_000])))


@settings(SETTINGS, max_examples=60)
@given(hostile_headers())
def test_a_ciphertext_header_costs_bounded_memory(blob: bytes) -> None:
    src = io.BytesIO(blob)
    tracemalloc.start()
    try:
        stream.read_header(src)
    except errors.InvalidCiphertextException:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert src.tell() <= stream.HEADER_MAX_SIZE  # never reads past the largest header
    assert peak < 256 * 1024, peak
