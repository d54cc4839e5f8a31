"""What each backend is sent: OpenAI-compatible (Bearer key, the /v1 base) or Azure OpenAI
(the deployment in the path, api-version, the api-key header); the operator's static headers;
never a host or path of the client's choosing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import FakeUpstream
from tests.integration.test_backends_routing import CHAT, PLENTY

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def config(tmp_path: Path, fake: FakeUpstream) -> str:
    root = fake.base_url.removesuffix("/v1")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""
backends:
  - name: azure
    dialect: azure
    url: {root}
    api_version: "2024-10-21"
    api_key_env: TEST_AZURE_KEY
  - name: openai
    url: {fake.base_url}
    api_key: ${{TEST_OPENAI_KEY}}
    headers: {{OpenAI-Organization: org-test}}
models:
  - name: gpt-4o
    deployments: [{{backend: azure, model: gpt4o-prod}}]
  - name: "azure-*"
    deployments: [{{backend: azure}}]
  - name: mini
    deployments: [{{backend: openai, model: gpt-4o-mini}}]
"""
    )
    return str(path)


def post(client, body: dict):  # type: ignore[no-untyped-def]
    return client.post(CHAT, data=json.dumps(body), headers={**KEY_HEADERS, "Content-Type": "application/json"})


def test_azure_gets_the_deployment_in_the_path_and_its_key_in_api_key(make_app, tmp_path, upstream, monkeypatch) -> None:
    monkeypatch.setenv("TEST_AZURE_KEY", "azure-secret-1")
    monkeypatch.setenv("TEST_OPENAI_KEY", "openai-secret-2")
    client = make_app(**PLENTY, gateway_config=config(tmp_path, upstream)).test_client()
    post(client, BODY)
    (sent,) = upstream.requests
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == "azure-secret-1" and "authorization" not in sent.headers


def test_an_openai_backend_gets_the_bearer_key_its_headers_and_its_model_name(make_app, tmp_path, upstream, monkeypatch) -> None:
    monkeypatch.setenv("TEST_AZURE_KEY", "azure-secret-1")
    monkeypatch.setenv("TEST_OPENAI_KEY", "openai-secret-2")
    client = make_app(**PLENTY, gateway_config=config(tmp_path, upstream)).test_client()
    assert post(client, {**BODY, "model": "mini"}).status_code == 200
    (sent,) = upstream.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer openai-secret-2" and "api-key" not in sent.headers
    assert sent.headers["openai-organization"] == "org-test"
    assert sent.json()["model"] == "gpt-4o-mini"


def test_a_client_model_name_cannot_change_an_azure_path(make_app, tmp_path, upstream, monkeypatch) -> None:
    monkeypatch.setenv("TEST_AZURE_KEY", "azure-secret-1")
    monkeypatch.setenv("TEST_OPENAI_KEY", "openai-secret-2")
    client = make_app(**PLENTY, gateway_config=config(tmp_path, upstream)).test_client()
    for model in ("azure-x/../../admin", "azure-a?api-version=1", "azure-a#b", "azure-a b"):
        answer = post(client, {**BODY, "model": model})
        assert answer.status_code == 400, model
        assert answer.get_json()["error"]["code"] == "model_not_found"
    assert not upstream.requests
    assert post(client, {**BODY, "model": "azure-prod-1"}).status_code in (200, 404)
    assert [r.path.split("?")[0] for r in upstream.requests] == ["/openai/deployments/azure-prod-1/chat/completions"]
