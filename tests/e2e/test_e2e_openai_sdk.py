"""The official openai SDK against the gateway under real gunicorn."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import AUTH, KEY, GatewayServer, request
from tests.fakes.upstream import Behavior

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(module_gateway_server) -> GatewayServer:
    return module_gateway_server(RATE_LIMIT_AI="1000 per minute", RATE_LIMIT_GENERAL="1000 per minute")


def _client(server: GatewayServer, api_key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=10)


@pytest.fixture
def sdk(server) -> Iterator[OpenAI]:
    client = _client(server)
    yield client
    client.close()


@pytest.mark.timeout(30)
def test_chat_completion(sdk, upstream) -> None:
    completion = sdk.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the fake upstream"
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    recorded = upstream.requests[-1]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.json()["messages"] == MESSAGES


@pytest.mark.timeout(30)
def test_chat_completion_stream(sdk, upstream) -> None:
    upstream.behavior = Behavior(chunks=6, gap=0.02)
    stream = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 6
    assert "".join(deltas) == "".join(f"tok{i} " for i in range(6))
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.timeout(30)
def test_text_completion(sdk, upstream) -> None:
    completion = sdk.completions.create(model="fake-model", prompt="hi")
    assert completion.choices[0].text == " fake completion"
    assert completion.usage is not None and completion.usage.total_tokens == 12


@pytest.mark.timeout(30)
def test_text_completion_stream(sdk, upstream) -> None:
    upstream.behavior = Behavior(chunks=4, gap=0.02)
    stream = sdk.completions.create(model="fake-model", prompt="hi", stream=True)
    texts = [c.choices[0].text for c in stream if c.choices]
    assert "".join(texts) == "".join(f"tok{i} " for i in range(4))
    assert len([t for t in texts if t]) >= 4


@pytest.mark.timeout(30)
def test_embeddings(sdk, upstream) -> None:
    result = sdk.embeddings.create(model="fake-model", input=["a", "b"])
    assert len(result.data) == 2
    assert [item.index for item in result.data] == [0, 1]
    assert all(len(item.embedding) == 3 for item in result.data)
    assert upstream.requests[-1].path == "/v1/embeddings"


@pytest.mark.timeout(30)
def test_models_list(sdk, upstream) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert "fake-model" in ids


@pytest.mark.timeout(30)
def test_wrong_api_key_is_an_authentication_error(server, upstream) -> None:
    client = _client(server, api_key="not-the-key")
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="fake-model", messages=MESSAGES)
    finally:
        client.close()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert upstream.requests == []


@pytest.mark.timeout(30)
def test_upstream_drop_mid_stream_raises(sdk, upstream) -> None:
    upstream.behavior = Behavior(mode="drop", drop_after=2)
    stream = sdk.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    # The SDK raises the plain APIError built from the gateway's "event: error".
    assert type(caught.value) is openai.APIError
    assert caught.value.code == "upstream_stream_error"
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_stream_error"
    assert len(received) == 2


@pytest.mark.timeout(40)
def test_exceeding_the_ai_quota_is_a_rate_limit_error(gateway_server, upstream) -> None:
    server = gateway_server(RATE_LIMIT_AI="2 per minute")
    client = _client(server)
    try:
        for _ in range(2):
            client.chat.completions.create(model="fake-model", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="fake-model", messages=MESSAGES)
    finally:
        client.close()
    assert caught.value.status_code == 429
    assert caught.value.code == "gateway_rate_limited"
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert len(upstream.requests) == 2


@pytest.mark.timeout(30)
def test_image_generation(sdk, upstream) -> None:
    result = sdk.images.generate(model="fake-model", prompt="a cat")
    assert result.data and (result.data[0].url or result.data[0].b64_json)
    assert upstream.requests[-1].path == "/v1/images/generations"


@pytest.mark.timeout(30)
def test_models_retrieve(sdk, upstream) -> None:
    model = sdk.models.retrieve("fake-model")
    assert (model.id, model.object, model.owned_by) == ("fake-model", "model", "fake")
    assert isinstance(model.created, int)
    assert upstream.requests[-1].path == "/v1/models"  # looked up in the upstream's list


@pytest.mark.timeout(30)
def test_models_retrieve_of_an_unknown_model_is_not_found(sdk) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("no-such-model")
    assert caught.value.status_code == 404 and caught.value.code == "model_not_found"


@pytest.mark.timeout(30)
def test_a_model_the_key_may_not_use_is_neither_listed_nor_retrievable(server, upstream) -> None:
    created = request(server.url, "POST", "/admin/keys", {"name": "sdk", "allowed_models": ["gpt-3.5-*"]}, headers=AUTH)
    assert created[0] == 201, created[2]
    client = _client(server, api_key=json.loads(created[2])["secret"])
    try:
        assert [model.id for model in client.models.list()] == ["gpt-3.5-turbo"]
        assert client.models.retrieve("gpt-3.5-turbo").id == "gpt-3.5-turbo"
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("fake-model")  # exists upstream, but not for this key
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(model="fake-model", messages=MESSAGES)
    finally:
        client.close()
    assert caught.value.code == "model_not_found" and "fake-model" in caught.value.message
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"


@pytest.mark.timeout(30)
def test_calls_the_gateway_does_not_serve_are_not_found(sdk, upstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.files.list()
    assert caught.value.code == "not_found" and "GET / lists every endpoint" in caught.value.message
    assert upstream.requests == []
