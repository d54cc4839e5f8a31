"""The audit log: a row for every change made through ``/admin/keys`` or ``flask keys``,
in the change's own transaction, read through ``GET /admin/audit``; SQLite and PostgreSQL.

The flows are those of test_admin_keys.py and test_cli.py, with the audit rows asserted.
"""

from __future__ import annotations

import os
import pwd
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.store import audit
from tests.conftest import KEY_HEADERS

PEPPER = "pepper-canary-" + secrets.token_hex(16)


@pytest.fixture
def audit_app(database_url: str, make_app) -> Flask:
    return make_app(database_url=database_url, key_cache_seconds=0, key_hash_pepper=PEPPER)


def _create(client: FlaskClient, headers: dict[str, str] = KEY_HEADERS, **fields) -> dict:
    response = client.post("/admin/keys", json={"name": "web-app", **fields}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _entries(client: FlaskClient, **params) -> list[dict]:
    response = client.get("/admin/audit", query_string=params, headers=KEY_HEADERS)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["object"] == "list" and body["has_more"] is False and body["next_after"] is None
    return body["data"]


def _cli(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_admin_action_is_one_row_with_who_where_when_and_the_changed_fields(audit_app: Flask) -> None:
    client = audit_app.test_client()
    started = datetime.now(UTC)
    created = _create(client, metadata={"team": "web"}, rate_limit_ai="50 per 15 minutes", tokens_per_day=100, max_tokens_cap=512)
    key_id = created["id"]
    patched = client.patch(
        f"/admin/keys/{key_id}",
        json={"name": "renamed", "rate_limit_ai": None, "tokens_per_day": 100, "budget_tokens_day": 5000},
        headers={**KEY_HEADERS, "X-Request-ID": "req-patch-1"},
    )
    assert patched.status_code == 200
    assert client.post(f"/admin/keys/{key_id}/rotate", headers=KEY_HEADERS).status_code == 200
    revoked = client.delete(f"/admin/keys/{key_id}", headers=KEY_HEADERS).get_json()
    assert client.delete(f"/admin/keys/{key_id}", headers=KEY_HEADERS).status_code == 200  # again: nothing changes

    entries = _entries(client)
    assert [e["action"] for e in entries] == ["create", "update", "rotate", "revoke", "revoke"]
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    for entry in entries:
        assert entry["object"] == "audit.entry" and entry["key_id"] == key_id
        assert (entry["actor"], entry["via"], entry["address"]) == ("master", "api_key", "127.0.0.1")
        stamp = datetime.fromisoformat(entry["ts"])
        assert stamp.utcoffset() == timedelta(0) and started <= stamp <= datetime.now(UTC)
        assert entry["request_id"]
    create, update, rotate, revoke, again = entries
    assert create["before"] is None
    assert create["after"] == {
        "name": "web-app",
        "metadata": {"team": "web"},
        "rate_limit_ai": "50 per 15 minutes",
        "tokens_per_day": 100,
        "max_tokens_cap": 512,
    }
    # Only what changed: tokens_per_day was given with the value it already had.
    assert update["before"] == {"name": "web-app", "rate_limit_ai": "50 per 15 minutes", "budget_tokens_day": None}
    assert update["after"] == {"name": "renamed", "rate_limit_ai": None, "budget_tokens_day": 5000}
    assert update["request_id"] == "req-patch-1" == patched.headers["X-Request-ID"]
    assert rotate["before"] is None and rotate["after"] is None
    assert revoke["before"] == {"revoked_at": None} and revoke["after"] == {"revoked_at": revoked["revoked_at"]}
    assert again["before"] == {} and again["after"] == {}


def test_a_change_made_with_the_master_keys_jwt_says_so(audit_app: Flask) -> None:
    client = audit_app.test_client()
    token = client.post("/auth/token", json={"apiKey": KEY_HEADERS["X-API-Key"]}).get_json()["token"]
    created = _create(client, headers={"Authorization": f"Bearer {token}"})
    assert [(e["action"], e["actor"], e["via"]) for e in _entries(client, key=created["id"])] == [("create", "master", "jwt")]


@pytest.mark.parametrize(("trusted", "expected"), [(0, "127.0.0.1"), (1, "203.0.113.9")])
def test_the_address_is_the_client_as_proxyfix_sees_it(make_app, trusted: int, expected: str) -> None:
    client = make_app(trusted_proxy_count=trusted).test_client()
    _create(client, headers={**KEY_HEADERS, "X-Forwarded-For": "203.0.113.9"})
    assert [e["address"] for e in _entries(client)] == [expected]


def test_the_command_line_is_audited_as_the_os_user_from_cli(audit_app: Flask) -> None:
    import json

    key_id = json.loads(_cli(audit_app, "keys", "create", "--name", "batch", "--budget-day", "9000"))["id"]
    _cli(audit_app, "keys", "update", key_id, "--budget-day", "100", "--budget-month", "2000", "--clear", "metadata")
    _cli(audit_app, "keys", "rotate", key_id)
    _cli(audit_app, "keys", "revoke", key_id)
    _cli(audit_app, "keys", "show", key_id)  # reads are not audited
    _cli(audit_app, "keys", "list")
    entries = _entries(audit_app.test_client())
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert [(e["action"], e["actor"], e["via"], e["address"], e["request_id"]) for e in entries] == [
        (action, user, "cli", "cli", None) for action in ("create", "update", "rotate", "revoke")
    ]
    assert entries[0]["after"] == {"name": "batch", "budget_tokens_day": 9000, "metadata": {}}
    # --clear metadata sets {} again: unchanged, so not listed.
    assert entries[1]["before"] == {"budget_tokens_day": 9000, "budget_tokens_month": None}
    assert entries[1]["after"] == {"budget_tokens_day": 100, "budget_tokens_month": 2000}


def test_refused_actions_and_reads_write_no_row(audit_app: Flask) -> None:
    client = audit_app.test_client()
    key_id = _create(client)["id"]
    client.delete(f"/admin/keys/{key_id}", headers=KEY_HEADERS)
    refused = [
        client.post("/admin/keys", json={"name": "x", "tokens_per_day": -1}, headers=KEY_HEADERS),
        client.patch(f"/admin/keys/{key_id}", json={"rate_limit_ai": "plenty"}, headers=KEY_HEADERS),
        client.patch("/admin/keys/key_nope", json={"name": "x"}, headers=KEY_HEADERS),
        client.delete("/admin/keys/key_nope", headers=KEY_HEADERS),
        client.post(f"/admin/keys/{key_id}/rotate", headers=KEY_HEADERS),  # revoked: 409
        client.post("/admin/keys/key_nope/rotate", headers=KEY_HEADERS),
    ]
    assert [r.status_code for r in refused] == [400, 400, 404, 404, 409, 404]
    client.get("/admin/keys", headers=KEY_HEADERS)
    client.get(f"/admin/keys/{key_id}", headers=KEY_HEADERS)
    assert [e["action"] for e in _entries(client)] == ["create", "revoke"]


def test_no_secret_hash_or_pepper_is_ever_in_the_log(audit_app: Flask) -> None:
    client = audit_app.test_client()
    created = _create(client, metadata={"note": "hello"})
    rotated = client.post(f"/admin/keys/{created['id']}/rotate", headers=KEY_HEADERS).get_json()
    client.patch(f"/admin/keys/{created['id']}", json={"name": "b"}, headers=KEY_HEADERS)
    client.delete(f"/admin/keys/{created['id']}", headers=KEY_HEADERS)
    secret_hash = audit_app.extensions["gateway.store"].keys.get(created["id"]).secret_hash
    shown = client.get("/admin/audit", headers=KEY_HEADERS).get_data(as_text=True)
    engine = audit_app.extensions["gateway.store"].engine
    with engine.connect() as connection:
        stored = repr(connection.execute(text("SELECT * FROM audit_log")).all())
    for everything in (shown, stored):
        for secret in (created["secret"], rotated["secret"]):
            for fragment in (secret, secret[:12], secret[12:]):
                assert fragment not in everything
        assert secret_hash not in everything and PEPPER not in everything and KEY_HEADERS["X-API-Key"] not in everything


def _action(client: FlaskClient, action: str, key_id: str):
    if action == "create":
        return client.post("/admin/keys", json={"name": "new"}, headers=KEY_HEADERS)
    if action == "update":
        return client.patch(f"/admin/keys/{key_id}", json={"name": "changed", "tokens_per_day": 7}, headers=KEY_HEADERS)
    if action == "rotate":
        return client.post(f"/admin/keys/{key_id}/rotate", headers=KEY_HEADERS)
    return client.delete(f"/admin/keys/{key_id}", headers=KEY_HEADERS)


def _state(client: FlaskClient, secret: str) -> tuple:
    keys = client.get("/admin/keys", headers=KEY_HEADERS).get_json()["data"]
    works = client.get("/v1/models", headers={"X-API-Key": secret}).status_code
    return [(k["id"], k["name"], k["tokens_per_day"], k["status"], k["prefix"]) for k in keys], works


@pytest.mark.parametrize("action", audit.ACTIONS)
def test_a_failed_audit_insert_rolls_the_change_back(audit_app: Flask, action: str) -> None:
    client = audit_app.test_client()
    created = _create(client)
    before = _state(client, created["secret"])
    engine = audit_app.extensions["gateway.store"].engine
    with engine.begin() as connection:  # the audit insert now fails in the database itself
        connection.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
    try:
        response = _action(client, action, created["id"])
        assert response.status_code == 503 and response.get_json()["error"]["code"] == "store_unavailable"
        assert _state(client, created["secret"]) == before
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
    assert [e["action"] for e in _entries(client)] == ["create"]


@pytest.mark.parametrize("action", audit.ACTIONS)
def test_an_audit_row_is_rolled_back_with_a_change_that_fails(audit_app: Flask, action: str, monkeypatch) -> None:
    client = audit_app.test_client()
    created = _create(client)
    before = _state(client, created["secret"])
    written = audit.record

    def then_fail(connection, **row) -> None:  # the row is inserted, then the transaction fails
        written(connection, **row)
        assert connection.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 2
        raise OperationalError("COMMIT", {}, Exception("connection lost"))

    monkeypatch.setattr(audit, "record", then_fail)
    assert _action(client, action, created["id"]).status_code == 503
    monkeypatch.undo()
    assert _state(client, created["secret"]) == before
    assert [e["action"] for e in _entries(client)] == ["create"]


def test_the_command_line_change_rolls_back_with_its_audit_row(audit_app: Flask) -> None:
    import json

    key_id = json.loads(_cli(audit_app, "keys", "create", "--name", "a"))["id"]
    engine = audit_app.extensions["gateway.store"].engine
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
    try:
        result = audit_app.test_cli_runner().invoke(args=["keys", "update", key_id, "--name", "b"])
        assert result.exit_code == 1 and "database unavailable" in result.output
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
    assert json.loads(_cli(audit_app, "keys", "show", key_id))["name"] == "a"


# --- GET /admin/audit: filters, paging, read-only ----------------------------------------
def _page(client: FlaskClient, **params) -> dict:
    response = client.get("/admin/audit", query_string=params, headers=KEY_HEADERS)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    return response.get_json()


def test_filters_and_cursor_paging(audit_app: Flask) -> None:
    client = audit_app.test_client()
    first, second = _create(client)["id"], _create(client)["id"]
    for n in range(3):
        client.patch(f"/admin/keys/{first}", json={"tokens_per_day": n + 1}, headers=KEY_HEADERS)
    client.delete(f"/admin/keys/{second}", headers=KEY_HEADERS)
    _cli(audit_app, "keys", "rotate", first)
    everything = _entries(client)
    assert len(everything) == 7
    ids = [e["id"] for e in everything]
    assert [e["id"] for e in _entries(client, key=first)] == [e["id"] for e in everything if e["key_id"] == first]
    assert [e["action"] for e in _entries(client, action="update")] == ["update"] * 3
    assert [e["action"] for e in _entries(client, via="cli")] == ["rotate"]
    assert [e["via"] for e in _entries(client, actor="master")] == ["api_key"] * 6
    assert [e["key_id"] for e in _entries(client, key=second, action="revoke")] == [second]
    stamp = everything[0]["ts"]
    assert _entries(client, to=stamp) == [] and len(_entries(client, **{"from": stamp})) == 7
    assert _entries(client, **{"from": "2999-01-01T00:00:00Z"}) == []

    pages, after = [], None
    while True:
        page = _page(client, limit=3, **({"after": after} if after is not None else {}))
        pages.append([e["id"] for e in page["data"]])
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
        assert after == page["data"][-1]["id"]
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    newest = _page(client, order="desc", limit=4)
    assert [e["id"] for e in newest["data"]] == ids[::-1][:4] and newest["has_more"] is True
    older = _page(client, order="desc", limit=4, after=newest["next_after"])
    assert [e["id"] for e in older["data"]] == ids[::-1][4:] and older["has_more"] is False


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after": "-1"}, "after"),
        ({"after": "1e3"}, "after"),
        ({"action": "delete"}, "action"),
        ({"via": "ssh"}, "via"),
        ({"order": "newest"}, "order"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-12-02", "to": "2026-12-01"}, "from"),
        ({"key": "k" * 41}, "key"),
        ({"key_id": "key_x"}, "key_id"),
        ({"actor": "a\x00b"}, "actor"),
    ],
)
def test_bad_parameters_are_400_naming_them(client: FlaskClient, params: dict, param: str) -> None:
    response = client.get("/admin/audit", query_string=params, headers=KEY_HEADERS)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param and response.get_json()["error"]["code"] == "invalid_parameter"


def test_no_route_edits_or_deletes_the_log(db_client: FlaskClient) -> None:
    _create(db_client)
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        response = db_client.open("/admin/audit", method=method, json={}, headers=KEY_HEADERS)
        assert response.status_code == 405, method
        assert response.headers["Allow"] and "GET" in response.headers["Allow"]
    assert db_client.delete("/admin/audit/1", headers=KEY_HEADERS).status_code == 404
    assert len(_entries(db_client)) == 1
    assert db_client.get("/admin/audit").status_code == 401
    managed = _create(db_client)["secret"]
    assert db_client.get("/admin/audit", headers={"X-API-Key": managed}).status_code == 403


def test_a_budget_change_is_audited_with_its_amounts(db_app) -> None:
    client = db_app.test_client()
    created = client.post("/admin/keys", json={"name": "spender", "budget_usd": "0.5"}, headers=KEY_HEADERS)
    assert created.status_code == 201
    key_id = created.get_json()["id"]
    assert client.patch(f"/admin/keys/{key_id}", json={"budget_usd": 2.25}, headers=KEY_HEADERS).status_code == 200
    entries = client.get(f"/admin/audit?key={key_id}", headers=KEY_HEADERS).get_json()["data"]
    update = next(entry for entry in entries if entry["action"] == "update")
    assert (update["before"], update["after"]) == ({"budget_usd": 0.5}, {"budget_usd": 2.25})
