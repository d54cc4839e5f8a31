"""Errors a person can act on: what went wrong, and where to look next."""

from __future__ import annotations

from tests.conftest import KEY_HEADERS


def test_unknown_path_with_credentials_points_at_the_index(client) -> None:
    response = client.get("/v1/no-such-thing", headers=KEY_HEADERS)
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error == {
        "message": "No endpoint at /v1/no-such-thing. GET / lists every endpoint with its method.",
        "type": "invalid_request_error",
        "code": "not_found",
        "param": None,
    }


def test_unknown_path_without_credentials_is_still_401(client) -> None:
    assert client.get("/v1/no-such-thing").status_code == 401


def test_wrong_method_points_at_the_index(client) -> None:
    response = client.get("/v1/chat/completions", headers=KEY_HEADERS)
    assert response.status_code == 405
    error = response.get_json()["error"]
    assert error["code"] == "method_not_allowed" and "GET / lists every endpoint" in error["message"]
    assert "POST" in response.headers["Allow"]


def test_413_names_the_limit_and_its_setting(make_app, upstream) -> None:
    client = make_app(max_request_bytes=1024).test_client()
    response = client.post("/v1/completions", json={"model": "m", "prompt": "x" * 2000}, headers=KEY_HEADERS)
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "request_too_large"
    assert "1024 bytes" in error["message"] and "MAX_REQUEST_BYTES" in error["message"]
    assert upstream.requests == []


def test_index_descriptions_are_plain_text(client) -> None:
    endpoints = client.get("/").get_json()["endpoints"]
    assert len(endpoints) > 20
    for entry in endpoints:
        description = entry["description"]
        assert description and description == description.strip(), entry
        for markup in (":raises", ":param", ":return", "``", "\n"):
            assert markup not in description, entry


def test_plain_summary_keeps_the_first_paragraph_only() -> None:
    from gateway.routes.meta import plain_summary

    assert plain_summary("Show one key. :raises 404: no such key.") == "Show one key."
    assert (
        plain_summary("""Issue a JWT for ``{"apiKey": "<key>"}``
        sent in the body.

        :raises 400: bad body.
        """)
        == 'Issue a JWT for {"apiKey": "<key>"} sent in the body.'
    )
    assert plain_summary(None) == ""
