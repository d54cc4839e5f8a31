"""Input the gateway stores or keys on, on SQLite and PostgreSQL: 400s naming the field, never a 500 or 503.

The rule (:mod:`gateway.payload`): a lone UTF-16 surrogate is refused anywhere in a JSON
body; a NUL is refused in what is stored or used as a key (a request's ``model``, a
key's fields, usage filters). One such request used to fail the usage batch it landed
in, erasing other callers' rows.
"""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.store.tables import usage
from tests.conftest import KEY_HEADERS

JSON_KEY = {**KEY_HEADERS, "Content-Type": "application/json"}
POISONED_MODELS = {"NUL": "a\u0000b", "lone surrogate": "\ud800", "lone low surrogate": "x\udc00y"}


@pytest.fixture
def roomy_app(database_url: str, make_app) -> Flask:
    """An app on each database whose quotas leave room for 41 requests."""
    return make_app(database_url=database_url, rate_limit_ai="1000 per minute", rate_limit_general="1000 per minute")


def _error(response) -> dict:
    document = response.get_json()
    assert set(document) == {"error"} and set(document["error"]) == {"message", "type", "code", "param"}
    return document["error"]


def _usage_rows(app: Flask) -> list[dict]:
    assert app.extensions["gateway.usage"].flush(timeout=10)
    with app.extensions["gateway.store"].engine.connect() as connection:
        return [row._asdict() for row in connection.execute(select(usage).order_by(usage.c.id))]


@pytest.mark.parametrize("poison", POISONED_MODELS, ids=list(POISONED_MODELS))
def test_a_poisoned_model_is_a_400_and_never_costs_other_callers_their_usage_rows(roomy_app: Flask, upstream, poison: str) -> None:
    db_app, db_client = roomy_app, roomy_app.test_client()
    db_app.extensions["gateway.usage"].interval = 5.0  # one batch: the 41 rows wait for the flush together
    statuses = []
    for i in range(41):
        model = POISONED_MODELS[poison] if i == 20 else f"m{i}"
        # json.dumps writes \u0000 and \ud800 escapes: the bytes a client sends
        response = db_client.post(
            "/v1/chat/completions",
            headers=JSON_KEY,
            data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        statuses.append(response.status_code)
        if i == 20:
            error = _error(response)
            assert response.status_code == 400 and error["param"] in ("model", None), error
    assert statuses.count(200) == 40
    rows = _usage_rows(db_app)
    assert len(rows) == 41  # the refused request is recorded too (status 400, no model)
    assert [row["status"] for row in rows].count(400) == 1
    assert {row["model"] for row in rows} == {f"m{i}" for i in range(41) if i != 20} | {None}
    assert len(upstream.requests) == 40


@pytest.mark.parametrize("messages", [5, True, 1.5, "hi", {"role": "user"}])
def test_messages_of_the_wrong_type_are_a_400_naming_it(client: FlaskClient, upstream, messages) -> None:
    response = client.post("/v1/chat/completions", json={"model": "x", "messages": messages}, headers=KEY_HEADERS)
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == "messages" and error["type"] == "invalid_request_error"
    assert upstream.requests == []


def test_a_lone_surrogate_api_key_for_a_token_is_a_400(client: FlaskClient) -> None:
    response = client.post("/auth/token", data='{"apiKey": "aip_\\ud800"}', content_type="application/json")
    assert response.status_code == 400 and _error(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "document",
    [
        {"name": "a\ud800b"},
        {"name": "\udfff"},
        {"name": "ok", "metadata": {"\ud800": 1}},
        {"name": "ok", "metadata": {"team": ["a\u0000"]}},
        {"name": "ok", "allowed_models": ["gpt\u0000"]},
    ],
    ids=["name", "low-surrogate-name", "metadata-key", "metadata-nul", "model-pattern-nul"],
)
def test_key_fields_that_cannot_be_stored_are_a_400_on_create_and_update(db_client: FlaskClient, document) -> None:
    created = db_client.post("/admin/keys", data=json.dumps(document), headers=JSON_KEY)
    assert created.status_code == 400, created.get_json()
    assert _error(created)["type"] == "invalid_request_error"
    key = db_client.post("/admin/keys", json={"name": "fine"}, headers=KEY_HEADERS).get_json()
    updated = db_client.patch(f"/admin/keys/{key['id']}", data=json.dumps(document), headers=JSON_KEY)
    assert updated.status_code == 400, updated.get_json()
    assert db_client.get(f"/admin/keys/{key['id']}", headers=KEY_HEADERS).get_json()["name"] == "fine"
    listing = db_client.get("/admin/keys", headers=KEY_HEADERS)
    assert listing.status_code == 200 and [k["name"] for k in listing.get_json()["data"]] == ["fine"]


@pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00"])
def test_an_expiry_out_of_range_is_a_400(db_client: FlaskClient, expires_at: str) -> None:
    response = db_client.post("/admin/keys", json={"name": "k", "expires_at": expires_at}, headers=KEY_HEADERS)
    assert response.status_code == 400 and _error(response)["param"] == "expires_at"
    key = db_client.post("/admin/keys", json={"name": "k"}, headers=KEY_HEADERS).get_json()
    response = db_client.patch(f"/admin/keys/{key['id']}", json={"expires_at": expires_at}, headers=KEY_HEADERS)
    assert response.status_code == 400 and _error(response)["param"] == "expires_at"


FILTERS = ["model=%00", "model=a%00b", "operation=%00", "from=2026-01-01%00"]


@pytest.mark.parametrize(
    ("path", "query"), [("/api/usage", query) for query in FILTERS] + [("/admin/usage", query) for query in [*FILTERS, "key=key_%00"]]
)
def test_usage_filters_holding_a_nul_are_a_400_not_a_store_outage(db_client: FlaskClient, path: str, query: str) -> None:
    response = db_client.get(f"{path}?{query}", headers=KEY_HEADERS)
    assert response.status_code == 400, response.get_json()
    assert _error(response)["param"] == query.split("=")[0]


@pytest.mark.parametrize("key_id", ["key_%00", "%00"])
def test_a_key_id_holding_a_nul_is_unknown_not_a_store_outage(db_client: FlaskClient, key_id: str) -> None:
    path = f"/admin/keys/{key_id}"
    answers = [
        db_client.get(path, headers=KEY_HEADERS),
        db_client.patch(path, json={"name": "x"}, headers=KEY_HEADERS),
        db_client.delete(path, headers=KEY_HEADERS),
        db_client.post(f"{path}/rotate", headers=KEY_HEADERS),
    ]
    assert [(a.status_code, _error(a)["code"]) for a in answers] == [(404, "key_not_found")] * 4
