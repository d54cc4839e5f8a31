"""CORS, security headers, HTTPS policy, the error envelope and the meta routes."""

from __future__ import annotations

import pytest

from gateway import create_app
from gateway.operations import OPERATIONS
from tests.conftest import KEY_HEADERS, migrated, settings_for

ORIGIN = "https://app.example"
BODY = {"model": "m", "prompt": "hi"}


@pytest.fixture
def cors_client(make_app):
    return make_app(allowed_origins=(ORIGIN,)).test_client()


def test_preflight_is_answered_without_credentials(cors_client, upstream) -> None:
    response = cors_client.options(
        "/api/ai/completion",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-api-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    for name in ("authorization", "content-type", "x-api-key"):
        assert name in allowed
    assert upstream.requests == []


def test_vary_origin_when_several_origins_are_allowed(make_app) -> None:
    client = make_app(allowed_origins=(ORIGIN, "https://other.example")).test_client()
    response = client.get("/health", headers={"Origin": "https://other.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://other.example"
    assert "Origin" in response.headers["Vary"]


def test_private_network_preflight_is_not_granted(cors_client) -> None:
    response = cors_client.options(
        "/api/ai/completion",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"},
    )
    assert response.headers.get("Access-Control-Allow-Private-Network") != "true"


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "https://app.example.evil.com", "https://xapp.example", "http://app.example"]
)
def test_unknown_origins_get_no_allow_origin(cors_client, origin) -> None:
    response = cors_client.post("/api/ai/completion", json=BODY, headers={**KEY_HEADERS, "Origin": origin})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_allowed_origin_on_success_and_errors_with_exposed_headers(cors_client) -> None:
    ok = cors_client.post("/api/ai/completion", json=BODY, headers={**KEY_HEADERS, "Origin": ORIGIN})
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = ok.headers["Access-Control-Expose-Headers"]
    for name in ("X-RateLimit-Remaining", "Retry-After", "X-Request-ID", "X-Gateway-Max-Tokens-Clamped"):
        assert name in exposed
    denied = cors_client.post("/api/ai/completion", json=BODY, headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and denied.headers["Access-Control-Allow-Origin"] == ORIGIN
    bad = cors_client.post("/api/ai/completion", data="x", content_type="text/plain", headers={**KEY_HEADERS, "Origin": ORIGIN})
    assert bad.status_code == 415 and bad.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_no_origins_configured_means_no_cross_origin_access(client) -> None:
    response = client.post("/api/ai/completion", json=BODY, headers={**KEY_HEADERS, "Origin": ORIGIN})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options("/api/ai/completion", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code < 400
    assert not [name for name in preflight.headers.keys() if name.lower().startswith("access-control-")]


@pytest.mark.parametrize("path", ["/", "/health", "/api/ai/completion", "/nope"])
def test_security_headers_on_every_response(client, path) -> None:
    response = client.post(path, json=BODY, headers=KEY_HEADERS) if "ai" in path else client.get(path)
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "Strict-Transport-Security" not in headers  # plain HTTP, development


def test_hsts_only_on_https_in_production(make_app) -> None:
    app = make_app(node_env="production", master_api_key="m" * 40, jwt_secret="j" * 40)
    client = app.test_client()
    assert "Strict-Transport-Security" not in client.get("/health").headers
    secure = client.get("/health", base_url="https://gw.example")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    # the headers are remembered per endpoint and scheme: each scheme keeps its own
    forwarded = client.get("/", headers={"X-Forwarded-Proto": "https"})
    assert forwarded.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Strict-Transport-Security" not in client.get("/").headers
    assert "Strict-Transport-Security" not in client.get("/health").headers


def test_plain_http_is_served_by_default(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200


def test_force_https_redirects_reads_refuses_writes_and_spares_health(make_app) -> None:
    client = make_app(force_https=True).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code in (301, 302)
    write = client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS)
    assert write.status_code == 403 and write.get_json()["error"]["code"] == "https_required"
    secure = client.post("/api/ai/completion", json=BODY, headers=KEY_HEADERS, base_url="https://gw.example")
    assert secure.status_code == 200


def test_production_app_never_runs_debug(monkeypatch, upstream, tmp_path) -> None:
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app(migrated(settings_for(upstream, tmp_path, node_env="production", master_api_key="m" * 40, jwt_secret="j" * 40)))
    assert app.debug is False
    assert app.test_client().get("/console", headers={"X-API-Key": "m" * 40}).status_code == 404


def test_unexpected_exception_is_a_500_envelope_without_details(app, client) -> None:
    @app.get("/boom")
    def boom():
        raise RuntimeError("internal detail /etc/secret")

    response = client.get("/boom", headers=KEY_HEADERS)
    assert response.status_code == 500
    assert response.get_json() == {
        "error": {"message": "The gateway failed to handle the request.", "type": "api_error", "code": "internal_error", "param": None}
    }


def test_index_documents_every_route_and_operation(app, client) -> None:
    doc = client.get("/").get_json()
    listed = {(e["method"], e["path"]) for e in doc["endpoints"]}
    served = {
        (m, r.rule)
        for r in app.url_map.iter_rules()
        if r.endpoint != "static" and not r.endpoint.startswith("console.")  # the console's pages are for a browser
        for m in (r.methods or set()) - {"HEAD", "OPTIONS"}
    }
    assert listed == served
    for op in OPERATIONS:
        for path in op.gateway_paths:
            assert (op.method, path) in listed
    by_path = {(e["method"], e["path"]): e for e in doc["endpoints"]}
    assert by_path[("GET", "/health")]["auth"] == "none" and by_path[("GET", "/health")]["rate_limits"] == []
    completion = by_path[("POST", "/api/ai/completion")]
    assert completion["auth"] != "none" and completion["streaming"] is True
    assert any("20 per 15 minutes" in quota for quota in completion["rate_limits"])


def test_health_is_fast_json_and_uncached(client, upstream) -> None:
    response = client.get("/health")
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/admin/keys", "POST"),
        ("/admin/keys", "GET"),
        ("/admin/keys/key_0123456789abcdef", "PATCH"),
        ("/admin/keys/key_0123456789abcdef", "DELETE"),
        ("/admin/keys/key_0123456789abcdef/rotate", "POST"),
        ("/admin/usage", "GET"),
    ],
)
def test_admin_preflight_from_an_allowed_origin_gets_the_cors_answer(cors_client, path, method) -> None:
    response = cors_client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "x-api-key, content-type",
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert method in response.headers["Access-Control-Allow-Methods"]
    assert "x-api-key" in response.headers["Access-Control-Allow-Headers"].lower()


def test_admin_preflight_from_another_origin_gets_no_cors_headers(cors_client) -> None:
    response = cors_client.options("/admin/keys", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert response.status_code < 500
    assert not [name for name in response.headers.keys() if name.lower().startswith("access-control-allow")]


def test_admin_options_that_is_not_a_preflight_still_needs_the_master_key(cors_client) -> None:
    assert cors_client.options("/admin/keys", headers={"Origin": ORIGIN}).status_code == 401
