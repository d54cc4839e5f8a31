"""``GET /openapi.json``: the OpenAPI 3.1 description follows the served routes and the validators' tables."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway import openapi, openapi_schemas, operations
from gateway.store import key_fields
from gateway.store.key_fields import FieldError, parse_changes
from tests.conftest import CANARY_MASTER_KEY

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def served_pairs(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every rule, worked out here independently of gateway.openapi."""
    pairs = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):  # the console's pages are for a browser
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            pairs.add((path, method.lower()))
    return pairs


def described_pairs(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}


def test_every_served_route_is_described_and_nothing_else(make_app) -> None:
    app = make_app(metrics_token="m" * 40)
    document = openapi.build(app)
    served, described = served_pairs(app), described_pairs(document)
    assert served - described == set(), "served but not described"
    assert described - served == set(), "described but not served"
    # Every AI operation, both of its paths.
    for op in operations.OPERATIONS:
        for path in op.gateway_paths:
            assert (path, op.method.lower()) in described


def test_a_route_added_later_is_described_with_its_path_parameters(make_app) -> None:
    app = make_app()
    extra = Blueprint("extra", __name__)

    @extra.get("/v1/models/<model_id>")
    def model(model_id: str) -> Any:
        """One model."""
        return jsonify(id=model_id)

    @extra.post("/things/<int:number>/parts/<path:rest>")
    def part(number: int, rest: str) -> Any:
        """A part of a thing."""
        return jsonify(number=number)

    app.register_blueprint(extra)
    document = openapi.build(app)
    assert described_pairs(document) == served_pairs(app)
    get_model = document["paths"]["/v1/models/{model_id}"]["get"]
    assert get_model["parameters"] == [
        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}}
    ]
    assert get_model["security"], "a new route needs credentials, like every route not made public"
    assert {"401", "404", "429"} <= set(get_model["responses"])
    post_part = document["paths"]["/things/{number}/parts/{rest}"]["post"]
    assert [(p["name"], p["schema"]["type"]) for p in post_part["parameters"]] == [("number", "integer"), ("rest", "string")]
    validate(document)


@pytest.mark.parametrize("overrides", [{}, {"metrics_token": "m" * 40, "force_https": True}])
def test_the_document_is_valid_openapi_3_1(make_app, overrides) -> None:
    app = make_app(**overrides)
    document = openapi.build(app)
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises on any error
    schemes = document["components"]["securitySchemes"]
    assert ("MetricsToken" in schemes) == bool(overrides.get("metrics_token"))
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key: the master key or a managed key.",
    }
    # FORCE_HTTPS refuses a plain-HTTP write with a 403, even on a public endpoint.
    assert ("403" in document["paths"]["/auth/token"]["post"]["responses"]) == bool(overrides.get("force_https"))


def test_served_at_openapi_json_without_credentials_and_listed_by_the_index(make_app) -> None:
    app = make_app()
    client = app.test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == json.loads(json.dumps(openapi.build(app)))
    assert client.head("/openapi.json").status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # the edge's headers, as on GET /
    index = client.get("/").get_json()
    assert index["openapi"] == "/openapi.json"
    entry = next(e for e in index["endpoints"] if e["path"] == "/openapi.json")
    assert entry["auth"] == "none" and entry["method"] == "GET"
    assert entry["rate_limits"] == next(e for e in index["endpoints"] if e["path"] == "/")["rate_limits"]


def test_openapi_json_counts_against_the_general_quota_like_the_index(make_app) -> None:
    client = make_app(rate_limit_general="2 per minute").test_client()
    assert [client.get(path).status_code for path in ("/openapi.json", "/", "/openapi.json")] == [200, 200, 429]


def test_security_follows_the_auth_tables(make_app) -> None:
    document = openapi.build(make_app())
    paths = document["paths"]
    assert paths["/"]["get"]["security"] == []
    assert paths["/openapi.json"]["get"]["security"] == []
    assert paths["/auth/token"]["post"]["security"] == []
    assert paths["/v1/chat/completions"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert paths["/admin/keys"]["get"]["security"] == [{"MasterKey": []}, {"MasterBearer": []}]
    for path, item in paths.items():
        for method, operation in item.items():
            if path != "/auth/token":  # its 401 is a wrong key in the body
                assert ("401" in operation["responses"]) == bool(operation["security"]), (method, path)


def test_every_error_status_has_the_envelope(make_app) -> None:
    document = openapi.build(make_app())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    schema = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                    assert schema in ("Error", "RelayedError", "NotReady"), (method, path, status)
                    assert status in openapi.STATUS_TEXT
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["message", "type", "code", "param"]


def test_query_parameters_follow_the_usage_views(make_app) -> None:
    paths = openapi.build(make_app())["paths"]
    own = [p["name"] for p in paths["/api/usage"]["get"]["parameters"]]
    admin = [p["name"] for p in paths["/admin/usage"]["get"]["parameters"]]
    assert own == ["model", "operation", "from", "to"]
    assert admin == ["key", "model", "operation", "from", "to", "group_by", "format"]
    audit = [p["name"] for p in paths["/admin/audit"]["get"]["parameters"]]
    assert audit == ["key", "action", "actor", "via", "from", "to", "limit", "after", "order"]
    assert set(paths["/admin/usage"]["get"]["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert set(paths["/admin/audit"]) == {"get"}  # no route edits or deletes the audit log
    operation_param = next(p for p in paths["/api/usage"]["get"]["parameters"] if p["name"] == "operation")
    assert operation_param["schema"]["enum"] == [op.name for op in operations.OPERATIONS]


def test_stream_is_a_boolean_only_where_the_operation_streams(make_app) -> None:
    paths = openapi.build(make_app())["paths"]
    for op in operations.OPERATIONS:
        operation = paths[op.gateway_paths[1]][op.method.lower()]
        if not op.has_body:
            assert "requestBody" not in operation
            continue
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["additionalProperties"] is True
        assert body["properties"]["stream"] == ({"type": "boolean"} if op.streams else {"const": False})
        assert ("text/event-stream" in operation["responses"]["2XX"]["content"]) == op.streams


# --- the admin key bodies follow key_fields ------------------------------------------------
KM = key_fields
SAMPLES: list[dict[str, Any]] = [
    {"name": "team"},
    {"name": "x" * KM.NAME_MAX},
    {"name": "x" * (KM.NAME_MAX + 1)},
    {"name": ""},
    {"name": "   "},
    {"name": "a\x01b"},
    {"name": None},
    {"name": 5},
    {"name": "t", "surprise": 1},
    {"name": "t", "metadata": {"team": "a"}},
    {"name": "t", "metadata": None},
    {"name": "t", "metadata": []},
    {"name": "t", "expires_at": None},
    {"name": "t", "expires_at": 5},
    {"name": "t", "allowed_models": None},
    {"name": "t", "allowed_models": ["gpt-4o*"]},
    {"name": "t", "allowed_models": []},
    {"name": "t", "allowed_models": ["m"] * (KM.MODELS_MAX + 1)},
    {"name": "t", "allowed_models": ["m" * (KM.MODEL_PATTERN_MAX + 1)]},
    {"name": "t", "allowed_models": [""]},
    {"name": "t", "allowed_models": [3]},
    {"name": "t", "rate_limit_general": "50 per 15 minutes"},
    {"name": "t", "rate_limit_ai": "5/second; 100 per day"},
    {"name": "t", "rate_limit_ai": "often"},
    {"name": "t", "rate_limit_ai": "1 per second" + " " * KM.LIMIT_STRING_MAX},
    {"name": "t", "rate_limit_general": None},
    *(
        {"name": "t", field: value}
        for field in KM.TOKEN_FIELDS
        for value in (None, 1, KM.TOKEN_COUNT_MAX, 0, KM.TOKEN_COUNT_MAX + 1, 1.5, True, "5")
    ),
]


@pytest.mark.parametrize("creating", [True, False])
def test_key_bodies_accept_what_the_validator_accepts(creating: bool) -> None:
    """The schema is built from key_fields' tables and limits: on these samples, it and
    ``parse_changes`` agree on what is valid (the validator may refuse more, never less)."""
    schema = openapi_schemas.key_fields_schema(creating=creating)
    assert list(schema["properties"]) == list(KM.SETTABLE_FIELDS)
    assert schema["additionalProperties"] is False
    assert schema.get("required", []) == (["name"] if creating else [])
    validator = Draft202012Validator(schema)
    samples = SAMPLES if creating else [*SAMPLES, {}, {"rate_limit_ai": "5/second"}]
    for sample in samples:
        try:
            parse_changes(sample, creating=creating, now=NOW)
            accepted = True
        except FieldError:
            accepted = False
        assert validator.is_valid(sample) == accepted, sample


def test_a_settable_field_without_a_schema_fails_the_build(monkeypatch) -> None:
    monkeypatch.setattr(key_fields, "SETTABLE_FIELDS", (*key_fields.SETTABLE_FIELDS, "new_field"))
    with pytest.raises(KeyError, match="new_field"):
        openapi_schemas.key_fields_schema(creating=True)


def test_the_documented_token_request_is_what_auth_token_takes(make_app) -> None:
    client = make_app().test_client()
    schema = Draft202012Validator(openapi_schemas.TOKEN_REQUEST)
    good, bad = {"apiKey": CANARY_MASTER_KEY}, {"api_key": CANARY_MASTER_KEY}
    assert schema.is_valid(good) and client.post("/auth/token", json=good).status_code == 200
    assert not schema.is_valid(bad) and client.post("/auth/token", json=bad).status_code == 400


def test_the_responses_api_is_described_with_its_items(make_app) -> None:
    paths = openapi.build(make_app())["paths"]
    create = paths["/v1/responses"]["post"]
    assert create["x-streaming"] is True and "text/event-stream" in create["responses"]["2XX"]["content"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["max_output_tokens"] == {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}
    assert "instructions" in body["properties"]
    op = operations.BY_NAME["responses"]
    for path in ("/v1/responses/{item_id}", "/api/ai/responses/{item_id}"):
        assert set(paths[path]) == {"get", "delete"}
        for method in ("get", "delete"):
            item = paths[path][method]
            assert "requestBody" not in item and item["x-streaming"] is False
            assert item["summary"] == op.item_summary
            assert set(item["responses"]["2XX"]["content"]) == {"application/json"}
            assert [p["name"] for p in item["parameters"]] == ["item_id"]
            assert {"401", "4XX", "502", "504"} <= set(item["responses"])
    # The index (GET /) says the same.
    index = make_app().test_client().get("/").get_json()["endpoints"]
    entries = [e for e in index if e["path"].startswith("/v1/responses")]
    assert sorted((e["method"], e["path"], e["streaming"]) for e in entries) == [
        ("DELETE", "/v1/responses/<path:item_id>", False),
        ("GET", "/v1/responses/<path:item_id>", False),
        ("POST", "/v1/responses", True),
    ]
