"""Every AI route is metered and budgeted, and no other route reaches a backend.

Walks the app's whole route table (``app.url_map``), so a route added later cannot bypass
the metering: one added to the AI blueprint outside :data:`gateway.operations.OPERATIONS`
fails the first test; an AI route that skips the relay view's accounting fails the next
two (every call gets one usage row; with the key's token budget spent, every call that
uses tokens is refused with ``429 insufficient_quota`` before reaching the backend); and
a route elsewhere that calls a backend (so is neither metered nor budgeted) fails the last.
"""

from __future__ import annotations

import re

import pytest
from flask import Flask
from sqlalchemy import select

from gateway.operations import BY_NAME, OPERATIONS, Operation, declared_routes
from gateway.store.tables import usage
from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import FakeUpstream

# A request body per operation that takes one; a test fails when an operation has none here.
BODIES: dict[str, dict[str, object]] = {
    "completion": {"model": "fake-model", "prompt": "hi"},
    "chat": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
    "embeddings": {"model": "fake-model", "input": "hi"},
    "images": {"model": "fake-model", "prompt": "a cat"},
    "responses": {"model": "fake-model", "input": "hi"},
}
# The item each item route is called with: a model the fake lists, a response it stores.
ITEMS = {"models": "fake-model", "responses": "resp_route_table"}
_PLACEHOLDER = re.compile(r"<(?:([^:<>]+):)?([^<>]+)>")


def ai_routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("ai.")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


def _operation(app: Flask, rule: str) -> Operation:
    endpoint = next(r.endpoint for r in app.url_map.iter_rules() if r.rule == rule)
    return BY_NAME[endpoint.removeprefix("ai.")]


def _path(rule: str, item: str) -> str:
    return _PLACEHOLDER.sub(item, rule)


def _rows(app: Flask) -> list[dict]:
    assert app.extensions["gateway.usage"].flush(timeout=5)
    with app.extensions["gateway.store"].engine.connect() as connection:
        return [row._asdict() for row in connection.execute(select(usage).order_by(usage.c.id))]


def _call(app: Flask, upstream: FakeUpstream, rule: str, method: str, headers: dict[str, str]) -> tuple[Operation, int, dict]:
    op = _operation(app, rule)
    upstream.stored_responses["resp_route_table"] = {"id": "resp_route_table", "object": "response", "usage": {"input_tokens": 5}}
    body = BODIES[op.name] if method == "POST" else None
    answer = app.test_client().open(_path(rule, ITEMS.get(op.name, "x")), method=method, json=body, headers=headers)
    return op, answer.status_code, answer.get_json()


def _key(app: Flask, **fields: object) -> dict[str, str]:
    created = app.test_client().post("/admin/keys", json={"name": "route-table", **fields}, headers=KEY_HEADERS)
    assert created.status_code == 201, created.get_json()
    return {"X-API-Key": created.get_json()["secret"]}


def test_the_ai_blueprint_serves_exactly_what_the_operations_table_declares(app: Flask) -> None:
    assert ai_routes(app) == declared_routes()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("ai."):
            assert rule.endpoint.removeprefix("ai.") in BY_NAME, rule.rule
    assert {op.name for op in OPERATIONS if op.has_body} == set(BODIES)  # a new operation needs a body here


def test_every_ai_route_gets_one_usage_row(make_app, upstream: FakeUpstream) -> None:
    app = make_app(key_cache_seconds=0, rate_limit_ai="1000 per minute", rate_limit_general="1000 per minute")
    headers = _key(app, budget_tokens_day=1_000_000)
    expected = []
    for rule, method in sorted(ai_routes(app)):
        op, status, answer = _call(app, upstream, rule, method, headers)
        assert status == 200, (method, rule, answer)
        expected.append((op.name, 200))
    rows = _rows(app)
    assert [(r["operation"], r["status"]) for r in rows] == expected
    for row, (rule, method) in zip(rows, sorted(ai_routes(app)), strict=True):
        assert row["total_tokens"] is not None, (method, rule)  # counted: the upstream's figures, an estimate, or none used
        if method == "POST":
            assert row["total_tokens"] > 0, (method, rule)


def test_with_its_token_budget_spent_a_key_is_refused_on_every_ai_route_that_uses_tokens(make_app, upstream: FakeUpstream) -> None:
    app = make_app(key_cache_seconds=0, rate_limit_ai="1000 per minute", rate_limit_general="1000 per minute")
    headers = _key(app, budget_tokens_day=9)
    # Holds exactly the budget (no prompt text: the bound's 8, and max_tokens 1) and settles to the
    # 12 tokens the fake reports.
    spend = app.test_client().post("/v1/completions", json={"model": "fake-model", "max_tokens": 1}, headers=headers)
    assert spend.status_code == 200
    upstream.reset()
    relayed_without_tokens = []
    for rule, method in sorted(ai_routes(app)):
        op, status, answer = _call(app, upstream, rule, method, headers)
        if method == "POST":
            assert status == 429, (method, rule, answer)
            assert answer["error"]["code"] == "insufficient_quota"
        else:  # no body, no model: a listing or a stored item, which uses no tokens
            assert status == 200, (method, rule, answer)
            relayed_without_tokens.append(f"{method} {upstream.requests[-1].path}")
    assert all(not r.method == "POST" for r in upstream.requests), "a refused call reached the backend"
    rows = _rows(app)[1:]
    assert all(r["total_tokens"] == 0 for r in rows if r["status"] == 200)
    assert len(rows) == len(ai_routes(app))
    assert relayed_without_tokens  # the walk did call them


@pytest.fixture
def master_only(make_app) -> Flask:
    return make_app(rate_limit_ai="1000 per minute", rate_limit_general="1000 per minute", metrics_token="m" * 40)


def test_no_route_outside_the_ai_blueprint_reaches_a_backend(master_only: Flask, upstream: FakeUpstream) -> None:
    client = master_only.test_client()
    walked = 0
    for rule in master_only.url_map.iter_rules():
        if rule.endpoint.startswith("ai.") or rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            path = _PLACEHOLDER.sub(lambda m: "1" if m[1] == "int" else "x", rule.rule)
            body = {} if method in ("POST", "PUT", "PATCH") else None
            client.open(path, method=method, json=body, headers=KEY_HEADERS)
            walked += 1
            assert upstream.requests == [], f"{method} {rule.rule} reached the backend outside the AI blueprint"
    assert walked >= 10
    assert _rows(master_only) == []  # and none of them is an AI request
