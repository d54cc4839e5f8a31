"""The OpenAI Responses API through the gateway: ``POST /v1/responses`` (plain and streamed),
``GET`` and ``DELETE /v1/responses/<id>``, under the keys' models, token budgets and usage rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from gateway.store.tables import usage
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import RESPONSE_TEXT, Behavior, FakeUpstream

BODY = {"model": "gpt-test", "input": "Tell me a joke", "instructions": "Be brief."}


def _rows(app: Flask) -> list[dict]:
    assert app.extensions["gateway.usage"].flush(timeout=5)
    with app.extensions["gateway.store"].engine.connect() as connection:
        return [row._asdict() for row in connection.execute(select(usage).order_by(usage.c.id))]


def _key(app: Flask, **fields: object) -> tuple[str, dict[str, str]]:
    created = app.test_client().post("/admin/keys", json={"name": "responses", **fields}, headers=KEY_HEADERS)
    assert created.status_code == 201, created.get_json()
    return created.get_json()["id"], {"X-API-Key": created.get_json()["secret"]}


def _tokens(row: dict) -> tuple[int, int, int, bool]:
    return row["prompt_tokens"], row["completion_tokens"], row["total_tokens"], row["tokens_estimated"]


def test_create_retrieve_delete_each_get_one_usage_row(db_app: Flask, upstream: FakeUpstream) -> None:
    key_id, headers = _key(db_app)
    client = db_app.test_client()
    created = client.post("/v1/responses", json=BODY, headers=headers)
    assert created.status_code == 200, created.get_json()
    answer = created.get_json()
    assert answer["object"] == "response" and answer["output"][0]["content"][0]["text"] == RESPONSE_TEXT
    assert answer["usage"]["input_tokens"] == 11  # relayed as the upstream sent it
    assert upstream.requests[-1].path == "/v1/responses" and upstream.requests[-1].json() == BODY
    response_id = answer["id"]

    got = client.get(f"/v1/responses/{response_id}", headers=headers)
    assert got.status_code == 200 and got.get_json()["id"] == response_id
    assert (upstream.requests[-1].method, upstream.requests[-1].path, upstream.requests[-1].body) == (
        "GET",
        f"/v1/responses/{response_id}",
        b"",
    )
    deleted = client.delete(f"/api/ai/responses/{response_id}", headers=headers)
    assert deleted.get_json() == {"id": response_id, "object": "response", "deleted": True}
    assert upstream.requests[-1].method == "DELETE"
    gone = client.get(f"/v1/responses/{response_id}", headers=headers)
    assert gone.status_code == 404  # the upstream's own answer, passed through

    rows = _rows(db_app)
    assert [(r["operation"], r["status"], r["model"], r["key_id"]) for r in rows] == [
        ("responses", 200, "gpt-test", key_id),
        ("responses", 200, None, key_id),
        ("responses", 200, None, key_id),
        ("responses", 404, None, key_id),
    ]
    assert _tokens(rows[0]) == (11, 6, 17, False)  # input -> prompt, output -> completion
    # A retrieved response repeats the usage billed when it was made: not billed again.
    assert _tokens(rows[1]) == _tokens(rows[2]) == (0, 0, 0, False)


def test_a_stream_keeps_its_usage_event_and_is_billed_from_it(make_app, upstream: FakeUpstream) -> None:
    app = make_app()
    upstream.behavior = Behavior(chunks=4)
    response = app.test_client().post("/v1/responses", json={**BODY, "stream": True}, headers=KEY_HEADERS)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)
    events = [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")]
    assert events == ["response.created", *["response.output_text.delta"] * 4, "response.completed"]
    completed = json.loads(body.rstrip().splitlines()[-1].removeprefix("data: "))
    assert completed["response"]["usage"]["output_tokens"] == 4  # the client gets the usage too
    sent = upstream.requests[-1].json()
    assert "stream_options" not in sent  # not an option of the Responses API: never added
    (row,) = _rows(app)
    assert (row["operation"], row["status"]) == ("responses", 200)
    assert _tokens(row) == (11, 4, 15, False)


def test_a_token_budget_applies_with_max_output_tokens(make_app, upstream: FakeUpstream) -> None:
    app = make_app(key_cache_seconds=0)
    _, headers = _key(app, budget_tokens_day=100, max_tokens_cap=500)
    client = app.test_client()
    # Reserves the prompt's bound (31: 14 + 9 bytes + 8) plus max_output_tokens (60); settles to the 17 used.
    assert client.post("/v1/responses", json={**BODY, "max_output_tokens": 60}, headers=headers).status_code == 200
    refused = client.post("/v1/responses", json={**BODY, "max_output_tokens": 90}, headers=headers)  # 17 + 31 + 90 > 100
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "insufficient_quota" and int(refused.headers["Retry-After"]) >= 1
    over_cap = client.post("/v1/responses", json={**BODY, "max_output_tokens": 501}, headers=headers)
    assert over_cap.status_code == 400 and over_cap.get_json()["error"]["param"] == "max_output_tokens"
    bad = client.post("/v1/responses", json={**BODY, "max_output_tokens": 0}, headers=headers)
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_type"
    assert len(upstream.requests) == 1
    assert [(r["status"], r["total_tokens"]) for r in _rows(app)] == [(200, 17), (429, None), (400, None), (400, None)]


def test_a_keys_allowed_models_apply(make_app, upstream: FakeUpstream) -> None:
    app = make_app(key_cache_seconds=0)
    _, headers = _key(app, allowed_models=["gpt-4o*"])
    client = app.test_client()
    assert client.post("/v1/responses", json={**BODY, "model": "gpt-4o-mini"}, headers=headers).status_code == 200
    denied = client.post("/v1/responses", json={**BODY, "model": "o3"}, headers=headers)
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "model_not_allowed"
    nameless = client.post("/v1/responses", json={"input": "hi"}, headers=headers)
    assert nameless.status_code == 403
    assert len(upstream.requests) == 1


def test_authentication_and_the_ai_quota_apply_to_every_responses_route(make_app, upstream: FakeUpstream) -> None:
    client = make_app(rate_limit_ai="2 per minute").test_client()
    assert client.post("/v1/responses", json=BODY).status_code == 401
    assert client.get("/v1/responses/resp_x").status_code == 401
    assert client.delete("/v1/responses/resp_x").status_code == 401
    assert client.post("/v1/responses", json=BODY, headers=KEY_HEADERS).status_code == 200
    assert client.get("/v1/responses/resp_x", headers=KEY_HEADERS).status_code == 404  # unknown to the upstream
    limited = client.delete("/v1/responses/resp_x", headers=KEY_HEADERS)
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "gateway_rate_limited"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("path", ["a/b", "a/../../models", "x/", "..", "x" * 257, "a%2Fb"])
def test_an_id_that_is_not_one_segment_is_refused_before_any_upstream_call(make_app, upstream: FakeUpstream, path: str) -> None:
    app = make_app()
    for method in ("GET", "DELETE"):
        answer = app.test_client().open(f"/v1/responses/{path}", method=method, headers=KEY_HEADERS)
        assert answer.status_code == 400, (method, path)
        assert answer.get_json()["error"]["code"] == "invalid_item_id" and answer.get_json()["error"]["param"] == "id"
    assert upstream.requests == []
    assert [r["status"] for r in _rows(app)] == [400, 400]  # AI requests still: one row each


def test_an_id_is_percent_encoded_upstream(make_app, upstream: FakeUpstream) -> None:
    client = make_app().test_client()
    assert client.get("/v1/responses/resp%201%3Fx%3D1%23", headers=KEY_HEADERS).status_code == 404
    assert upstream.requests[-1].path == "/v1/responses/resp%201%3Fx%3D1%23"  # the id, still one segment, no query
    client.get("/v1/responses/resp_1?include[]=x&stream=true", headers=KEY_HEADERS)
    assert upstream.requests[-1].path == "/v1/responses/resp_1"  # query parameters are not relayed
    assert client.head("/v1/responses/resp_1", headers=KEY_HEADERS).status_code == 404
    assert upstream.requests[-1].method == "GET"  # HEAD is a GET upstream, its body dropped here


def _config(tmp_path: Path, fake: FakeUpstream, catch_all: bool) -> str:
    path = tmp_path / "gateway.yaml"
    models = "  - name: gpt-test\n    deployments:\n      - {backend: a}\n"
    if catch_all:
        models += '  - name: "*"\n    deployments:\n      - {backend: a}\n'
    path.write_text(f"backends:\n  - name: a\n    url: {fake.base_url}\nmodels:\n{models}")
    return str(path)


def test_with_a_config_file_a_call_by_id_goes_through_the_catch_all_route(make_app, upstream, tmp_path) -> None:
    client = make_app(gateway_config=_config(tmp_path, upstream, catch_all=True)).test_client()
    created = client.post("/v1/responses", json=BODY, headers=KEY_HEADERS).get_json()
    assert client.get(f"/v1/responses/{created['id']}", headers=KEY_HEADERS).get_json()["id"] == created["id"]
    assert client.delete(f"/v1/responses/{created['id']}", headers=KEY_HEADERS).get_json()["deleted"] is True


def test_without_a_catch_all_route_a_call_by_id_is_a_clear_404(make_app, upstream, tmp_path) -> None:
    app = make_app(gateway_config=_config(tmp_path, upstream, catch_all=False))
    client = app.test_client()
    assert client.post("/v1/responses", json=BODY, headers=KEY_HEADERS).status_code == 200
    answer = client.get("/v1/responses/resp_1", headers=KEY_HEADERS)
    assert answer.status_code == 404
    error = answer.get_json()["error"]
    assert error["code"] == "no_catch_all_route" and '("*")' in error["message"]
    assert [r.method for r in upstream.requests] == ["POST"]
    assert [(r["operation"], r["status"]) for r in _rows(app)] == [("responses", 200), ("responses", 404)]
