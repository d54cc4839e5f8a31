"""The admin API for managed keys, on SQLite and on PostgreSQL (``db_client``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError

from tests.conftest import KEY_HEADERS

BODY = {"model": "m", "prompt": "hi"}


def _create(client: FlaskClient, **fields) -> dict:
    response = client.post("/admin/keys", json={"name": "web-app", **fields}, headers=KEY_HEADERS)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _key(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


def _token(client: FlaskClient, secret: str) -> dict[str, str]:
    response = client.post("/auth/token", json={"apiKey": secret})
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.get_json()['token']}"}


def _error(response) -> dict:
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


def test_create_shows_the_secret_once_and_the_key_works(db_client: FlaskClient, upstream) -> None:
    created = _create(
        db_client, metadata={"team": "web"}, rate_limit_ai="50 per 15 minutes", allowed_models=["gpt-4o*"], max_tokens_cap=512
    )
    secret = created["secret"]
    assert secret.startswith("aip_") and created["prefix"] == secret[:12]
    assert created["id"].startswith("key_") and created["status"] == "active"
    assert created["metadata"] == {"team": "web"} and created["rate_limit_ai"] == "50 per 15 minutes"
    assert created["tokens_per_day"] is None  # unset: the gateway's default
    allowed = {**BODY, "model": "gpt-4o-mini"}
    assert db_client.post("/v1/completions", json=allowed, headers=_key(secret)).status_code == 200
    assert db_client.post("/v1/completions", json=allowed, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    refused = db_client.post("/v1/completions", json=BODY, headers=_key(secret))  # model "m" is not allowed
    assert refused.status_code == 403 and _error(refused)["code"] == "model_not_allowed"
    assert db_client.get("/v1/models", headers=_token(db_client, secret)).status_code == 200
    assert len(upstream.requests) == 3


def test_listings_and_details_never_show_a_secret(db_client: FlaskClient) -> None:
    secrets = [_create(db_client, name=f"k{i}")["secret"] for i in range(3)]
    listing = db_client.get("/admin/keys", headers=KEY_HEADERS)
    assert listing.status_code == 200
    body = listing.get_json()
    assert body["object"] == "list" and [k["name"] for k in body["data"]] == ["k0", "k1", "k2"]
    shown = listing.get_data(as_text=True)
    for item in body["data"]:
        shown += db_client.get(f"/admin/keys/{item['id']}", headers=KEY_HEADERS).get_data(as_text=True)
        assert "secret" not in item and "secret_hash" not in item
    for secret in secrets:
        assert secret not in shown and secret[12:] not in shown and secret[-16:] not in shown
        assert secret[:12] in shown  # the prefix is how an operator tells keys apart


def test_patch_changes_only_the_named_fields(db_client: FlaskClient) -> None:
    created = _create(db_client, rate_limit_ai="5 per minute", tokens_per_day=100)
    changed = db_client.patch(f"/admin/keys/{created['id']}", json={"name": "renamed", "rate_limit_ai": None}, headers=KEY_HEADERS)
    assert changed.status_code == 200
    body = changed.get_json()
    assert body["name"] == "renamed" and body["rate_limit_ai"] is None and body["tokens_per_day"] == 100
    assert body["prefix"] == created["prefix"] and body["created_at"] == created["created_at"]
    assert db_client.get("/v1/models", headers=_key(created["secret"])).status_code == 200


def test_revoke_stops_the_key_and_its_tokens_and_keeps_the_row(db_client: FlaskClient) -> None:
    created = _create(db_client)
    token = _token(db_client, created["secret"])
    revoked = db_client.delete(f"/admin/keys/{created['id']}", headers=KEY_HEADERS)
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    for headers in (_key(created["secret"]), token):
        response = db_client.get("/v1/models", headers=headers)
        assert response.status_code == 401 and _error(response)["type"] == "authentication_error"
    assert db_client.post("/auth/token", json={"apiKey": created["secret"]}).status_code == 401
    again = db_client.delete(f"/admin/keys/{created['id']}", headers=KEY_HEADERS).get_json()
    assert again["revoked_at"] == revoked.get_json()["revoked_at"]
    assert [k["status"] for k in db_client.get("/admin/keys", headers=KEY_HEADERS).get_json()["data"]] == ["revoked"]


def test_rotate_issues_a_new_secret_for_the_same_key(db_client: FlaskClient) -> None:
    created = _create(db_client, tokens_per_minute=1000)
    token = _token(db_client, created["secret"])
    rotated = db_client.post(f"/admin/keys/{created['id']}/rotate", headers=KEY_HEADERS)
    assert rotated.status_code == 200
    body = rotated.get_json()
    assert body["id"] == created["id"] and body["tokens_per_minute"] == 1000
    assert body["secret"] != created["secret"] and body["prefix"] == body["secret"][:12]
    assert db_client.get("/v1/models", headers=_key(created["secret"])).status_code == 401
    assert db_client.get("/v1/models", headers=_key(body["secret"])).status_code == 200
    # A token names the key, not the secret: it survives a rotation (revoke to stop it).
    assert db_client.get("/v1/models", headers=token).status_code == 200


def test_expired_keys_and_their_tokens_are_refused(db_client: FlaskClient) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=10)
    created = _create(db_client, expires_at=expires.isoformat())
    token = _token(db_client, created["secret"])
    assert db_client.get("/v1/models", headers=token).status_code == 200
    with time_machine.travel(expires + timedelta(seconds=1)):
        assert db_client.get("/v1/models", headers=_key(created["secret"])).status_code == 401
        assert db_client.get("/v1/models", headers=token).status_code == 401
        shown = db_client.get(f"/admin/keys/{created['id']}", headers=KEY_HEADERS).get_json()
        assert shown["status"] == "expired"


def test_a_revocation_reaches_another_instance_within_the_cache_time(database_url: str, make_app) -> None:
    admin_instance = make_app(database_url=database_url, key_cache_seconds=5).test_client()
    other_app = make_app(database_url=database_url, key_cache_seconds=5)
    other = other_app.test_client()
    created = _create(admin_instance)
    token = _token(other, created["secret"])
    assert other.get("/v1/models", headers=_key(created["secret"])).status_code == 200
    assert other.get("/v1/models", headers=token).status_code == 200
    admin_instance.delete(f"/admin/keys/{created['id']}", headers=KEY_HEADERS)
    ring = other_app.extensions["gateway.keys"]
    start = ring.clock()
    ring.clock = lambda: start + 4.5  # still inside KEY_CACHE_SECONDS: the documented delay
    assert other.get("/v1/models", headers=_key(created["secret"])).status_code == 200
    ring.clock = lambda: start + 5.5
    assert other.get("/v1/models", headers=_key(created["secret"])).status_code == 401
    assert other.get("/v1/models", headers=token).status_code == 401


def _admin_routes(app: Flask):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("admin."):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                yield method, rule.rule.replace("<key_id>", "key_0000000000000000")


def test_only_the_master_key_may_administer(db_app: Flask) -> None:
    client = db_app.test_client()
    managed = _create(client)["secret"]
    routes = list(_admin_routes(db_app))
    assert len(routes) == 10  # the six key routes, GET /admin/usage, /admin/audit, /admin/backends and /admin/prices
    for headers in (_key(managed), _token(client, managed)):
        for method, path in routes:
            response = client.open(path, method=method, json={"name": "x"}, headers=headers)
            assert response.status_code == 403, (method, path)
            assert _error(response) == {
                "message": _error(response)["message"],
                "type": "permission_error",
                "code": "admin_only",
                "param": None,
            }
    master_token = _token(client, KEY_HEADERS["X-API-Key"])
    assert client.get("/admin/keys", headers=master_token).status_code == 200
    assert len(client.get("/admin/keys", headers=KEY_HEADERS).get_json()["data"]) == 1


def test_admin_routes_need_credentials(db_app: Flask) -> None:
    client = db_app.test_client()
    for method, path in _admin_routes(db_app):
        response = client.open(path, method=method, json={"name": "x"})
        assert response.status_code == 401 and _error(response)["code"] == "missing_credentials"


def test_unknown_keys_are_404(db_client: FlaskClient) -> None:
    for method, path in [
        ("GET", "/admin/keys/key_nope"),
        ("PATCH", "/admin/keys/key_nope"),
        ("DELETE", "/admin/keys/key_nope"),
        ("POST", "/admin/keys/key_nope/rotate"),
    ]:
        response = db_client.open(path, method=method, json={"name": "x"}, headers=KEY_HEADERS)
        assert response.status_code == 404 and _error(response)["code"] == "key_not_found"


def test_a_revoked_key_cannot_be_rotated(db_client: FlaskClient) -> None:
    created = _create(db_client)
    db_client.delete(f"/admin/keys/{created['id']}", headers=KEY_HEADERS)
    response = db_client.post(f"/admin/keys/{created['id']}/rotate", headers=KEY_HEADERS)
    assert response.status_code == 409 and _error(response)["code"] == "key_revoked"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": "x", "rate_limit_ai": "plenty"}, "rate_limit_ai"),
        ({"name": "x", "tokens_per_day": -1}, "tokens_per_day"),
        ({"name": "x", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "allowed_models": "gpt-4o"}, "allowed_models"),
        ({"name": "x", "secret": "aip_chosen-by-me"}, "secret"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(client: FlaskClient, body: dict, param: str) -> None:
    response = client.post("/admin/keys", json=body, headers=KEY_HEADERS)
    assert response.status_code == 400
    assert _error(response)["param"] == param and _error(response)["code"] == "invalid_field"
    assert client.get("/admin/keys", headers=KEY_HEADERS).get_json()["data"] == []


def test_bodies_must_be_json_objects(db_client: FlaskClient) -> None:
    created = _create(db_client)
    for kwargs, status in [
        ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"data": "[1]", "content_type": "application/json"}, 400),
        ({"data": '{"name": "a", "name": "b"}', "content_type": "application/json"}, 400),
    ]:
        assert db_client.post("/admin/keys", headers=KEY_HEADERS, **kwargs).status_code == status
        assert db_client.patch(f"/admin/keys/{created['id']}", headers=KEY_HEADERS, **kwargs).status_code == status


def test_a_database_outage_is_503_for_managed_keys_only(db_app: Flask, monkeypatch) -> None:
    client = db_app.test_client()
    secret = _create(client)["secret"]
    store = db_app.extensions["gateway.store"].keys

    def down(*_args, **_kwargs):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    for name in ("find_by_hash", "get", "list_all"):
        monkeypatch.setattr(store, name, down)
    response = client.get("/v1/models", headers=_key(secret))
    assert response.status_code == 503 and _error(response)["code"] == "store_unavailable"
    assert response.headers["Retry-After"]
    listing = client.get("/admin/keys", headers=KEY_HEADERS)
    assert listing.status_code == 503 and _error(listing)["code"] == "store_unavailable"
    assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 200


def test_secrets_are_never_logged(db_client: FlaskClient, capfd) -> None:
    created = _create(db_client)
    rotated = db_client.post(f"/admin/keys/{created['id']}/rotate", headers=KEY_HEADERS).get_json()
    secrets = [created["secret"], rotated["secret"]]
    for secret in secrets:
        db_client.get("/v1/models", headers=_key(secret))
        db_client.post("/auth/token", json={"apiKey": secret})
    db_client.delete(f"/admin/keys/{created['id']}", headers=KEY_HEADERS)
    logs = "".join(capfd.readouterr())
    assert '"msg": "key created"' in logs and '"msg": "key rotated"' in logs and created["id"] in logs
    for secret in secrets:
        for fragment in (secret, secret[:12], secret[12:], secret[-12:]):
            assert fragment not in logs
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every log line is still one JSON object
