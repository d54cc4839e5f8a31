"""Parsing an upstream answer's header block without the email package."""

from __future__ import annotations

import http.client
import io

import pytest

from gateway.upstream.connection import parse_head
from gateway.upstream.head import MAX_FIELDS, MAX_LINE, parse_fields


def test_fields_keep_order_case_and_repeats_and_drop_surrounding_whitespace() -> None:
    lines = [
        b"Content-Type: application/json\r\n",
        b"x-request-id:abc\r\n",
        b"Set-Cookie: a=1 \r\n",
        b"Set-Cookie:\tb=2\r\n",
        b"Empty:\r\n",
    ]
    assert parse_fields(lines) == [
        ("Content-Type", "application/json"),
        ("x-request-id", "abc"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Empty", ""),
    ]


def test_a_folded_line_continues_the_previous_value_with_one_space() -> None:
    assert parse_fields([b"X-Long: part one\r\n", b"   part two\r\n", b"\tpart three\r\n"]) == [
        ("X-Long", "part one part two part three")
    ]
    assert parse_fields([b"  folded before any field\r\n", b"A: b\r\n"]) == [("A", "b")]


@pytest.mark.parametrize("line", [b"no colon here\r\n", b"Content-Length : 5\r\n", b"Bad Name: x\r\n", b": no name\r\n"])
def test_a_line_that_is_not_a_field_is_ignored(line: bytes) -> None:
    assert parse_fields([b"A: 1\r\n", line, b"B: 2\r\n"]) == [("A", "1"), ("B", "2")]


def test_bytes_are_latin_1_like_http_client() -> None:
    assert parse_fields([b"X-Name: caf\xe9\r\n"]) == [("X-Name", "caf\xe9")]


BLOCKS = [
    b"Content-Type: application/json\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n",
    b"content-type: text/event-stream\r\ntransfer-encoding: chunked\r\nCache-Control: no-cache\r\n\r\n",
    b"Retry-After: 7\r\nX-RateLimit-Remaining: 0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nDate: Fri, 27 Nov 2026 10:00:00 GMT\r\n\r\n",
    b"Server: x\nContent-Length: 0\n\n",  # bare LF line ends
    b"\r\n",  # no fields at all
]


@pytest.mark.parametrize("block", BLOCKS)
def test_well_formed_blocks_parse_as_http_client_parses_them(block: bytes) -> None:
    ours, stdlib = parse_head(io.BytesIO(block + b"BODY")), http.client.parse_headers(io.BytesIO(block + b"BODY"))
    assert type(ours) is type(stdlib)
    assert ours.items() == stdlib.items()
    for name in ("content-length", "Transfer-Encoding", "connection", "missing"):
        assert ours.get(name) == stdlib.get(name)
    assert ours.get_all("set-cookie") == stdlib.get_all("set-cookie")


def test_the_body_is_not_read_as_part_of_the_head() -> None:
    fp = io.BytesIO(b"A: 1\r\n\r\nbody: not a header\r\n")
    assert parse_head(fp).items() == [("A", "1")]
    assert fp.read() == b"body: not a header\r\n"


def test_http_clients_limits_and_errors() -> None:
    with pytest.raises(http.client.LineTooLong):
        parse_head(io.BytesIO(b"X: " + b"a" * MAX_LINE + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        parse_head(io.BytesIO(b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_FIELDS + 1)) + b"\r\n"))
    assert len(parse_head(io.BytesIO(b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_FIELDS)) + b"\r\n"))) == MAX_FIELDS
