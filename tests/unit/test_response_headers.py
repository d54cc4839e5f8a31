import pytest
from werkzeug.datastructures import Headers

from gateway.response_headers import put


def test_put_appends_new_names_and_replaces_existing_ones_whatever_their_case() -> None:
    headers = Headers([("Content-Type", "application/json"), ("cache-control", "max-age=5"), ("Cache-Control", "private")])
    put(headers, [("Cache-Control", "no-store"), ("X-Request-ID", "abc"), ("Server-Timing", "gateway;dur=1")])
    assert headers.getlist("Cache-Control") == ["no-store"]
    assert list(headers.items()) == [
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
        ("X-Request-ID", "abc"),
        ("Server-Timing", "gateway;dur=1"),
    ]


def test_put_of_one_name_twice_keeps_the_last_value_like_setting_it_twice() -> None:
    headers = Headers([("Content-Type", "application/json")])
    put(headers, [("Retry-After", "5"), ("retry-after", "7")])
    assert headers.getlist("Retry-After") == ["7"]


def test_put_refuses_header_injection_like_werkzeug() -> None:
    headers = Headers()
    with pytest.raises(ValueError):
        put(headers, [("X-Request-ID", "a\r\nSet-Cookie: x=1")])
    assert not headers
