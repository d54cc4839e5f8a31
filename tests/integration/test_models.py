"""GET /v1/models/{id}: one model of the upstream's list, as OpenAI's models.retrieve expects."""

from __future__ import annotations

import pytest

from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior


@pytest.mark.parametrize("path", ["/v1/models/fake-model", "/api/ai/models/fake-model"])
def test_both_path_families_answer_a_model_object(client, upstream, path) -> None:
    response = client.get(path, headers=KEY_HEADERS)
    assert response.status_code == 200
    assert response.get_json() == {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}
    assert [r.path for r in upstream.requests] == ["/v1/models"]


def test_an_id_with_a_slash_is_one_id(client) -> None:
    response = client.get("/v1/models/org/some-model", headers=KEY_HEADERS)
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "'org/some-model'" in error["message"]


def test_a_list_without_data_is_an_upstream_error(client, upstream) -> None:
    upstream.behavior = Behavior(mode="raw", body=b'{"object": "list"}')
    response = client.get("/v1/models/fake-model", headers=KEY_HEADERS)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_invalid_response"


def test_retrieving_a_model_uses_the_ai_quota(make_app) -> None:
    client = make_app(rate_limit_ai="2 per minute").test_client()
    statuses = [client.get("/v1/models/fake-model", headers=KEY_HEADERS).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
