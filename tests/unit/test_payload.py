"""Strict JSON request bodies."""

from __future__ import annotations

import pytest

from gateway.payload import (
    MAX_DEPTH,
    InvalidField,
    PayloadError,
    check_ai_fields,
    is_json_content_type,
    is_storable_text,
    parse_object,
    storable_text,
)


def test_object_is_parsed() -> None:
    assert parse_object(b'{"model": "m", "prompt": "hi \xc3\xa9", "n": 1}') == {"model": "m", "prompt": "hi é", "n": 1}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"[]",
        b'"x"',
        b"1",
        b"null",
        b"{",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"model": "a", "model": "b"}',
        b'{"a": ' + b"1" * 5000 + b"}",
        b'{"a": "\xff\xfe"}',
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 100 + b"1" + b"}" * 100,
        b'{"a": [' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"]}",
    ],
    ids=[
        "empty",
        "blank",
        "array",
        "string",
        "number",
        "null",
        "truncated",
        "nan",
        "inf",
        "-inf",
        "duplicate-keys",
        "huge-int",
        "bad-utf8",
        "deep-array",
        "deep-object",
        "just-too-deep",
    ],
)
def test_bad_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_object(raw)


def test_nesting_up_to_the_limit_is_fine() -> None:
    raw = b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert parse_object(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("", False),
        (None, False),
        ("application/x-www-form-urlencoded", False),
    ],
)
def test_json_content_types(value: str | None, expected: bool) -> None:
    assert is_json_content_type(value) is expected


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "\\ud800"}',
        b'{"model": "a\\uDFFFb"}',
        b'{"\\ud800": 1}',
        b'{"m": [{"deep": ["x\\udbff"]}]}',
        b'{"m": "\\udc00\\ud800"}',
    ],
    ids=["value", "low-upper-case", "key", "nested", "reversed-pair"],
)
def test_lone_surrogates_are_refused_anywhere(raw: bytes) -> None:
    with pytest.raises(PayloadError, match="surrogate"):
        parse_object(raw)


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    assert parse_object(b'{"m": "\\ud83d\\ude00"}') == {"m": "\U0001f600"}
    assert parse_object(b'{"m": "\\\\ud800"}') == {"m": "\\ud800"}  # the six characters \ud800, not a surrogate
    assert parse_object(b'{"m": "a\\u0000b"}') == {"m": "a\x00b"}  # NUL is refused only where it is stored


@pytest.mark.parametrize(
    ("text", "storable", "made_storable"),
    [
        ("gpt-4o", True, "gpt-4o"),
        ("a\x00b", False, "a\ufffdb"),
        ("\ud800", False, "\ufffd"),
        ("x\udfffy\x00", False, "x\ufffdy\ufffd"),
        ("\U0001f600 \u00e9", True, "\U0001f600 \u00e9"),
    ],
)
def test_storable_text(text: str, storable: bool, made_storable: str) -> None:
    assert is_storable_text(text) is storable
    assert storable_text(text) == made_storable


@pytest.mark.parametrize(
    ("document", "param"),
    [
        ({"model": "a\x00b"}, "model"),
        ({"messages": 5}, "messages"),
        ({"messages": True}, "messages"),
        ({"messages": 1.5}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": {}}, "messages"),
    ],
)
def test_ai_fields_the_gateway_reads_are_checked(document: dict, param: str) -> None:
    with pytest.raises(InvalidField) as caught:
        check_ai_fields(document)
    assert caught.value.param == param and param in str(caught.value)


def test_ai_fields_left_to_the_upstream_pass() -> None:
    check_ai_fields({"model": "m", "messages": [{"role": "user", "content": "a\x00b"}]})
    check_ai_fields({"model": 5, "messages": None, "prompt": ["x", 1]})


def test_an_escaped_backslash_cannot_hide_a_lone_surrogate() -> None:
    # the text \\ud800 (a backslash, then "ud800") followed by a real, lone \udc00
    with pytest.raises(PayloadError, match="surrogate"):
        parse_object(b'{"apiKey": "\\\\ud800\\udc00"}')
