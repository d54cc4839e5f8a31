"""The OpenAI Responses API through the official openai SDK, against the gateway under real
gunicorn: ``client.responses.create`` (plain and streamed), ``retrieve`` and ``delete``, each
with its usage row, and a key's token budget and allowed models applied."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import AUTH, GatewayServer, request
from tests.fakes.upstream import RESPONSE_TEXT, Behavior


@pytest.fixture(scope="module")
def server(module_gateway_server) -> GatewayServer:
    # One worker: without Redis, token budgets are counted per worker process.
    return module_gateway_server(
        RATE_LIMIT_AI="1000 per minute", RATE_LIMIT_GENERAL="1000 per minute", GATEWAY_WORKERS="1", USAGE_BATCH_SECONDS="0.2"
    )


def _key(server: GatewayServer, **fields: Any) -> dict[str, Any]:
    status, _, body = request(server.url, "POST", "/admin/keys", {"name": "responses-sdk", **fields}, headers=AUTH)
    assert status == 201, body
    return dict(json.loads(body))


@pytest.fixture
def sdk_for(server) -> Iterator[Any]:
    clients: list[OpenAI] = []

    def make(key: dict[str, Any]) -> OpenAI:
        client = OpenAI(base_url=f"{server.url}/v1", api_key=key["secret"], max_retries=0, timeout=10)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _usage_of(server: GatewayServer, key: dict[str, Any], requests: int) -> dict[str, Any]:
    """The key's usage totals once ``requests`` rows are written (the writer works in batches)."""
    deadline = time.monotonic() + 10
    while True:
        status, _, body = request(server.url, "GET", f"/admin/usage?key={key['id']}&operation=responses", headers=AUTH)
        assert status == 200, body
        totals: dict[str, Any] = json.loads(body)["totals"]
        if totals["requests"] >= requests or time.monotonic() > deadline:
            return totals
        time.sleep(0.2)


@pytest.mark.timeout(60)
def test_create_retrieve_and_delete(server, sdk_for, upstream) -> None:
    key = _key(server)
    sdk = sdk_for(key)
    response = sdk.responses.create(model="fake-model", input="Tell me a joke", instructions="Be brief.")
    assert response.output_text == RESPONSE_TEXT
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (11, 6)
    assert response.usage.input_tokens_details.cached_tokens == 3
    assert response.usage.output_tokens_details.reasoning_tokens == 2
    assert sdk.responses.retrieve(response.id).id == response.id
    sdk.responses.delete(response.id)
    assert [(r.method, r.path) for r in upstream.requests] == [
        ("POST", "/v1/responses"),
        ("GET", f"/v1/responses/{response.id}"),
        ("DELETE", f"/v1/responses/{response.id}"),
    ]
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    totals = _usage_of(server, key, requests=4)
    assert totals["requests"] == 4 and totals["errors"] == 1
    # The create call's tokens only: retrieving and deleting use none.
    assert (totals["prompt_tokens"], totals["completion_tokens"], totals["estimated_requests"]) == (11, 6, 0)


@pytest.mark.timeout(60)
def test_a_stream_is_billed_from_its_completed_event(server, sdk_for, upstream) -> None:
    key = _key(server)
    upstream.behavior = Behavior(chunks=5, gap=0.01)
    events = list(sdk_for(key).responses.create(model="fake-model", input="hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds == ["response.created", *["response.output_text.delta"] * 5, "response.completed"]
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == "".join(
        f"tok{i} " for i in range(5)
    )
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    assert completed.response.usage.output_tokens == 5  # the client gets the usage as the upstream sent it
    totals = _usage_of(server, key, requests=1)
    assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"], totals["estimated_requests"]) == (1, 11, 5, 0)


@pytest.mark.timeout(60)
def test_a_token_budget_refuses_what_would_pass_it(server, sdk_for, upstream) -> None:
    key = _key(server, budget_tokens_day=100)
    sdk = sdk_for(key)
    # 1 (prompt estimate) + 80 fits; the answer uses 17.
    sdk.responses.create(model="fake-model", input="hi", max_output_tokens=80)
    for stream in (False, True):  # 17 + 1 + 90 would pass 100: refused before any upstream call
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.responses.create(model="fake-model", input="hi", max_output_tokens=90, stream=stream)
        assert refused.value.code == "insufficient_quota"
        assert int(refused.value.response.headers["Retry-After"]) >= 1
    assert len(upstream.requests) == 1
    totals = _usage_of(server, key, requests=3)
    assert (totals["requests"], totals["errors"], totals["total_tokens"]) == (3, 2, 17)


@pytest.mark.timeout(60)
def test_a_keys_allowed_models_apply(server, sdk_for, upstream) -> None:
    key = _key(server, allowed_models=["gpt-3.5-*"])
    sdk = sdk_for(key)
    assert sdk.responses.create(model="gpt-3.5-turbo", input="hi").output_text == RESPONSE_TEXT
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk.responses.create(model="fake-model", input="hi", stream=True)
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"
    assert [r.json()["model"] for r in upstream.requests] == ["gpt-3.5-turbo"]
