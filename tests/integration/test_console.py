"""The operator's console (gateway/console) through Flask's test client: sign-in, session, CSRF,
headers, and key changes made through KeyAdmin (so audited). The browser flow under gunicorn is
tests/e2e/test_e2e_console.py; page speed with 100,000 usage rows is test_console_speed.py."""

from __future__ import annotations

import re
import time

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.config import ConfigError, load
from gateway.store.tables import audit_log
from tests.conftest import CANARY_MASTER_KEY, KEY_HEADERS, REDIS_URL

UI = "/admin/ui"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
PAGES = ("/", "/keys", "/keys/new", "/usage", "/audit", "/backends")


def csrf_of(client: FlaskClient, path: str = "/sign-in") -> str:
    page = client.get(UI + path, headers=HTML)
    assert page.status_code == 200, page.status_code
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert found is not None
    return found.group(1)


def sign_in(client: FlaskClient, key: str = CANARY_MASTER_KEY):
    return client.post(UI + "/sign-in", data={"key": key, "csrf_token": csrf_of(client)}, headers=HTML)


def signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    answer = sign_in(client)
    assert answer.status_code == 303 and answer.headers["Location"] == UI + "/"
    return client


def create_key(client: FlaskClient, **fields: str) -> tuple[str, str]:
    answer = client.post(UI + "/keys", data={"csrf_token": csrf_of(client, "/keys/new"), "name": "web", **fields}, headers=HTML)
    assert answer.status_code == 201, answer.get_data(as_text=True)
    text = answer.get_data(as_text=True)
    secret = re.search(r'id="secret" type="text" readonly value="(aip_[^"]+)"', text)
    key_id = re.search(r"key_[0-9a-f]{16}", text)
    assert secret and key_id and answer.headers["Cache-Control"] == "no-store"
    return key_id.group(0), secret.group(1)


def test_pages_need_a_session_and_a_browser_is_sent_to_sign_in(app: Flask) -> None:
    client = app.test_client()
    for path in PAGES:
        answer = client.get(UI + path, headers=HTML)
        assert answer.status_code == 303 and answer.headers["Location"].startswith(UI + "/sign-in"), path
        api = client.get(UI + path)  # any other client: the API's JSON 401
        assert api.status_code == 401 and api.get_json()["error"]["code"] == "missing_credentials"


def test_the_prefix_without_its_slash_leads_to_the_console(app: Flask) -> None:
    assert app.test_client().get(UI, headers=HTML).headers["Location"].startswith(UI + "/sign-in")
    assert signed_in(app).get(UI, headers=HTML).headers["Location"] == UI + "/"


def test_sign_in_sets_a_strict_cookie_and_every_page_renders_under_a_strict_csp(app: Flask) -> None:
    client = app.test_client()
    answer = sign_in(client)
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"Path={UI}" in cookie and "Expires=" in cookie
    assert "Secure" not in cookie  # development, plain HTTP
    for path in PAGES:
        page = client.get(UI + path, headers=HTML)
        assert page.status_code == 200, path
        assert page.headers["Cache-Control"] == "no-store"
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, csp
        assert "<script>" not in page.get_data(as_text=True) and " style=" not in page.get_data(as_text=True)
        assert CANARY_MASTER_KEY not in page.get_data(as_text=True)
    assert client.get(UI + "/static/console.js").status_code == 200


def test_the_cookie_is_secure_in_production(make_app) -> None:
    app = make_app(node_env="production")
    assert "Secure" in sign_in(app.test_client()).headers["Set-Cookie"]


def test_a_wrong_key_or_a_managed_key_does_not_sign_in(app: Flask) -> None:
    client = signed_in(app)
    _, managed = create_key(client)
    for key in ("wrong", managed, CANARY_MASTER_KEY + "x"):
        other = app.test_client()
        answer = sign_in(other, key)
        assert answer.status_code == 401 and "not the master key" in answer.get_data(as_text=True)
        assert other.get(UI + "/keys", headers=HTML).status_code == 303


def test_a_token_minted_from_the_master_key_signs_in_and_a_managed_keys_does_not(app: Flask) -> None:
    client = signed_in(app)
    _, managed = create_key(client)
    master_token = app.test_client().post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).get_json()["token"]
    managed_token = app.test_client().post("/auth/token", json={"apiKey": managed}).get_json()["token"]
    assert sign_in(app.test_client(), master_token).status_code == 303
    assert sign_in(app.test_client(), managed_token).status_code == 401


def test_a_post_without_its_csrf_token_is_refused(app: Flask) -> None:
    client = signed_in(app)
    for token in (None, "forged"):
        data = {"name": "no-token"} if token is None else {"name": "no-token", "csrf_token": token}
        answer = client.post(UI + "/keys", data=data, headers=HTML)
        assert answer.status_code == 400 and "did not come from this console" in answer.get_data(as_text=True)
    assert client.post(UI + "/sign-out", headers=HTML).status_code == 400
    assert "no-token" not in client.get(UI + "/keys", headers=HTML).get_data(as_text=True)
    assert app.test_client().post(UI + "/sign-in", data={"key": CANARY_MASTER_KEY}).status_code == 400


def test_an_expired_session_is_refused(make_app) -> None:
    app = make_app(admin_ui_session_seconds=60)
    with time_machine.travel(time.time(), tick=False) as clock:
        client = signed_in(app)
        assert client.get(UI + "/keys", headers=HTML).status_code == 200
        clock.shift(61)
        answer = client.get(UI + "/keys", headers=HTML)
        assert answer.status_code == 303 and answer.headers["Location"].startswith(UI + "/sign-in")


def test_a_new_master_key_ends_the_sessions_of_the_old_one(make_app) -> None:
    first = make_app()
    client = signed_in(first)
    cookie = client.get_cookie("gateway_console", path=UI)
    assert cookie is not None
    second = make_app(master_api_key="mk-another-" + "0" * 40)
    other = second.test_client()
    other.set_cookie("gateway_console", cookie.value, path=UI)
    assert other.get(UI + "/keys", headers=HTML).status_code == 303


def test_sign_out_ends_the_session(app: Flask) -> None:
    client = signed_in(app)
    token = csrf_of(client, "/")
    assert client.post(UI + "/sign-out", data={"csrf_token": token}, headers=HTML).status_code == 303
    assert client.get(UI + "/", headers=HTML).status_code == 303


def test_failed_sign_ins_count_against_the_auth_token_limit_per_address(make_app) -> None:
    app = make_app(rate_limit_auth_failures="2 per minute")
    for _ in range(2):
        assert sign_in(app.test_client(), "wrong").status_code == 401
    assert app.test_client().post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).status_code == 429
    refused = sign_in(app.test_client())  # the right key too, until the window ends
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0

    other = make_app(rate_limit_auth_failures="2 per minute")
    for _ in range(2):
        assert other.test_client().post("/auth/token", json={"apiKey": "wrong"}).status_code == 401
    assert sign_in(other.test_client()).status_code == 429


def test_the_shared_counter_holds_on_redis_too(make_app, redis_prefix: str) -> None:
    app = make_app(rate_limit_auth_failures="2 per minute", rate_limit_storage_uri=REDIS_URL, rate_limit_key_prefix=redis_prefix)
    assert sign_in(app.test_client(), "wrong").status_code == 401
    assert app.test_client().post("/auth/token", json={"apiKey": "wrong"}).status_code == 401
    assert sign_in(app.test_client()).status_code == 429
    assert app.test_client().post("/auth/token", json={"apiKey": CANARY_MASTER_KEY}).status_code == 429


def test_key_changes_go_through_key_admin_and_the_audit_log(db_app: Flask) -> None:
    app = db_app  # on SQLite and PostgreSQL
    client = signed_in(app)
    key_id, secret = create_key(client, rate_limit_ai="5 per minute", allowed_models="gpt-4o*, llama-*", budget_usd="2.5")
    shown = app.test_client().get(f"/admin/keys/{key_id}", headers=KEY_HEADERS).get_json()
    assert (
        shown["rate_limit_ai"] == "5 per minute" and shown["allowed_models"] == ["gpt-4o*", "llama-*"] and shown["budget_usd"] == 2.5
    )
    assert app.test_client().get("/v1/models", headers={"X-API-Key": secret}).status_code == 200

    token = csrf_of(client, f"/keys/{key_id}")
    refused = client.post(
        f"{UI}/keys/{key_id}", data={"csrf_token": token, "name": "web", "rate_limit_ai": "5 per fortnight"}, headers=HTML
    )
    assert refused.status_code == 400 and "rate_limit_ai" in refused.get_data(as_text=True)
    changed = client.post(
        f"{UI}/keys/{key_id}", data={"csrf_token": token, "name": "web", "rate_limit_ai": "9 per minute"}, headers=HTML
    )
    assert changed.status_code == 303
    assert app.test_client().get(f"/admin/keys/{key_id}", headers=KEY_HEADERS).get_json()["rate_limit_ai"] == "9 per minute"

    page = client.get(f"{UI}/keys/{key_id}", headers=HTML).get_data(as_text=True)
    assert secret not in page and secret not in client.get(UI + "/keys", headers=HTML).get_data(as_text=True)
    assert client.post(f"{UI}/keys/{key_id}/revoke", data={"csrf_token": token}, headers=HTML).status_code == 303
    assert app.test_client().get("/v1/models", headers={"X-API-Key": secret}).status_code == 401

    with app.extensions["gateway.store"].engine.connect() as connection:
        rows = connection.execute(select(audit_log).where(audit_log.c.key_id == key_id).order_by(audit_log.c.id)).all()
    assert [(row.action, row.actor, row.via) for row in rows] == [
        ("create", "master", "console"),
        ("update", "master", "console"),
        ("revoke", "master", "console"),
    ]
    assert rows[1].before == {"rate_limit_ai": "5 per minute"} and rows[1].after == {"rate_limit_ai": "9 per minute"}


def test_rotate_shows_the_new_secret_once_and_the_old_one_stops(app: Flask) -> None:
    client = signed_in(app)
    key_id, old = create_key(client)
    assert "Rotate key" in client.get(f"{UI}/keys/{key_id}/rotate", headers=HTML).get_data(as_text=True)
    answer = client.post(f"{UI}/keys/{key_id}/rotate", data={"csrf_token": csrf_of(client, "/")}, headers=HTML)
    new = re.search(r'value="(aip_[^"]+)"', answer.get_data(as_text=True))
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store" and new and new.group(1) != old
    assert app.test_client().get("/v1/models", headers={"X-API-Key": old}).status_code == 401
    assert app.test_client().get("/v1/models", headers={"X-API-Key": new.group(1)}).status_code == 200


def test_keys_are_searched_and_paged(db_app: Flask) -> None:
    app = db_app  # on SQLite and PostgreSQL
    client = signed_in(app)
    for index in range(55):
        app.test_client().post("/admin/keys", json={"name": f"team-{index:02d}"}, headers=KEY_HEADERS)
    first = client.get(UI + "/keys", headers=HTML).get_data(as_text=True)
    assert "55 keys" in first and "Page 1 of 2" in first and "team-54" in first and "team-00" not in first
    assert "team-00" in client.get(UI + "/keys?page=2", headers=HTML).get_data(as_text=True)
    found = client.get(UI + "/keys?q=TEAM-1", headers=HTML).get_data(as_text=True)
    assert "10 keys" in found and "team-19" in found and "team-20" not in found
    assert "0 keys" in client.get(UI + "/keys?q=%25", headers=HTML).get_data(as_text=True)  # LIKE wildcards are literal


def test_usage_page_and_csv_show_the_calls(db_app: Flask, upstream) -> None:
    app = db_app  # on SQLite and PostgreSQL
    client = signed_in(app)
    key_id, secret = create_key(client)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    assert app.test_client().post("/v1/chat/completions", json=body, headers={"X-API-Key": secret}).status_code == 200
    assert app.extensions["gateway.usage"].flush(timeout=5)
    page = client.get(f"{UI}/usage?key={key_id}", headers=HTML).get_data(as_text=True)
    assert "<svg" in page and "1 requests, 0 failed" in page and "fake-model" in page
    csv = client.get(f"{UI}/usage.csv?key={key_id}", headers=HTML)
    assert csv.status_code == 200 and csv.mimetype == "text/csv" and csv.get_data(as_text=True).count(key_id) == 1
    bad = client.get(f"{UI}/usage?from=yesterday", headers=HTML)
    assert bad.status_code == 400 and "from" in bad.get_data(as_text=True)
    overview = client.get(UI + "/", headers=HTML).get_data(as_text=True)
    assert "Traffic" in overview
    top_keys = overview[overview.index('id="top-keys"') : overview.index('id="top-models"')]
    assert f'href="{UI}/keys/{key_id}">web</a></th><td>1</td><td>0</td>' in top_keys  # the key, by name, linked
    assert '<th scope="row">fake-model</th><td>1</td>' in overview[overview.index('id="top-models"') :]


@pytest.mark.parametrize("prefix", ["/admin", "/admin/keys", "/v1", "/v1/console", "admin", "/admin/ui/", "/a b"])
def test_a_prefix_that_would_shadow_the_api_or_is_not_a_path_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="ADMIN_UI_PREFIX"):
        load(environ={"ADMIN_UI_PREFIX": prefix}, env_file="/nonexistent")


def test_another_prefix_moves_the_console(make_app) -> None:
    app = make_app(admin_ui_prefix="/ops/console")
    client = app.test_client()
    answer = client.post("/ops/console/sign-in", data={"key": CANARY_MASTER_KEY, "csrf_token": _token(client, "/ops/console/sign-in")})
    assert answer.status_code == 303 and answer.headers["Location"] == "/ops/console/"
    assert "Path=/ops/console" in answer.headers["Set-Cookie"]
    assert client.get("/ops/console/keys", headers=HTML).status_code == 200


def _token(client: FlaskClient, path: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path, headers=HTML).get_data(as_text=True))
    assert found is not None
    return found.group(1)


def test_admin_ui_false_serves_no_console(make_app) -> None:
    app = make_app(admin_ui=False)
    assert not [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("console.")]
    assert app.test_client().get(UI + "/sign-in", headers=KEY_HEADERS).status_code == 404


def test_the_api_never_reads_the_console_cookie(app: Flask) -> None:
    client = signed_in(app)
    cookie = client.get_cookie("gateway_console", path=UI)
    assert cookie is not None
    other = app.test_client()
    other.set_cookie("gateway_console", cookie.value, path="/")
    assert other.get("/admin/keys").status_code == 401  # a session is a credential on console pages only


def test_the_pages_pay_no_request_quota_but_the_sign_in_page_does(make_app) -> None:
    app = make_app(rate_limit_general="3 per minute")
    client = app.test_client()
    assert client.get(UI + "/sign-in", headers=HTML).status_code == 200  # 1 of 3 for this address
    assert sign_in(client).status_code == 303  # 2 and 3 (its page, then the POST)
    assert [client.get(UI + "/keys", headers=HTML).status_code for _ in range(5)] == [200] * 5
    assert client.get("/admin/keys", headers=KEY_HEADERS).status_code == 200  # the master key's own quota: untouched
    assert client.get(UI + "/sign-in", headers=HTML).status_code == 429
