"""Strict JSON request bodies."""

from __future__ import annotations

import pytest

from gateway.payload import MAX_DEPTH, PayloadError, is_json_content_type, parse_object


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
    ids=["empty", "blank", "array", "string", "number", "null", "truncated", "nan", "inf", "-inf", "duplicate-keys",
         "huge-int", "bad-utf8", "deep-array", "deep-object", "just-too-deep"],
)
def test_bad_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_object(raw)


def test_nesting_up_to_the_limit_is_fine() -> None:
    raw = b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert parse_object(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("application/json", True), ("application/json; charset=utf-8", True), ("Application/JSON", True),
     ("application/merge-patch+json", True), ("text/plain", False), ("", False), (None, False),
     ("application/x-www-form-urlencoded", False)],
)
def test_json_content_types(value: str | None, expected: bool) -> None:
    assert is_json_content_type(value) is expected
