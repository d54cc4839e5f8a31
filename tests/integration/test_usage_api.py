"""The usage API: ``GET /admin/usage`` and ``GET /api/usage``, on SQLite and on PostgreSQL.

Rows go in through the app's real :class:`~gateway.usage.UsageWriter` (or real requests
through the fake upstream), then the writer is flushed. On PostgreSQL the app's
sessions run in a time zone 14 hours ahead of UTC, so a day cut at the session's
midnight instead of UTC's would put rows on the wrong day.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError

from gateway.store.usage_report import MAX_GROUPS, Totals, UsageFilter
from gateway.usage import UsageRecord
from tests.conftest import KEY_HEADERS

ZERO = Totals().as_dict()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def usage_app(database_url: str, make_app) -> Flask:
    if database_url.startswith("postgresql"):
        database_url += "%20-cTimeZone%3DPacific/Kiritimati"  # UTC+14
    return make_app(database_url=database_url, key_cache_seconds=0)


def _create_key(client: FlaskClient, **fields) -> tuple[str, dict[str, str]]:
    response = client.post("/admin/keys", json={"name": "k", **fields}, headers=KEY_HEADERS)
    assert response.status_code == 201
    created = response.get_json()
    return created["id"], {"X-API-Key": created["secret"]}


def _write(app: Flask, *records: UsageRecord) -> None:
    writer = app.extensions["gateway.usage"]
    for record in records:
        assert writer.record(record)
    assert writer.flush(timeout=5)


def _row(
    ts: str,
    key_id: str,
    operation: str = "chat",
    model: str | None = "m1",
    status: int = 200,
    tokens: tuple[int, int] | None = None,
    estimated: bool = False,
) -> UsageRecord:
    counts = {}
    if tokens is not None:
        counts = {
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
            "total_tokens": sum(tokens),
            "tokens_estimated": estimated,
        }
    return UsageRecord(
        ts=_at(ts),
        key_id=key_id,
        operation=operation,
        model=model,
        status=status,
        duration_ms=10.0,
        upstream_ms=8.0,
        request_id=None,
        **counts,
    )


@pytest.fixture
def seeded(usage_app: Flask) -> dict:
    """Two managed keys ``a`` and ``b`` and five rows around the March/April 2030 boundary."""
    client = usage_app.test_client()
    a, a_headers = _create_key(client, rate_limit_ai="5 per minute", tokens_per_day=1000, allowed_models=["m1", "gpt-4o*"])
    b, b_headers = _create_key(client)
    _write(
        usage_app,
        _row("2030-03-30T23:59:59.999999", a, model="m1", tokens=(10, 5)),
        _row("2030-03-31T00:00:00", a, operation="completion", model="m2", tokens=(3, 4), estimated=True),
        _row("2030-03-31T12:00:00", b, model="m1", status=502),
        _row("2030-04-01T00:00:00", "master", operation="embeddings", model="m1", tokens=(8, 0)),
        _row("2030-04-01T01:00:00", b, model=None, status=400),
    )
    return {"client": client, "a": a, "b": b, "a_headers": a_headers, "b_headers": b_headers}


def _totals(requests: int, errors: int = 0, prompt: int = 0, completion: int = 0, estimated: int = 0) -> dict:
    return {
        "requests": requests,
        "errors": errors,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "reasoning_tokens": 0,
        "cached_tokens": 0,
        "estimated_requests": estimated,
        # No price table here (costs: tests/integration/test_usage_cost.py): every row that used
        # tokens (here: every row but the errors) is unpriced, and the sum is null, not 0.
        "cost_usd": None,
        "unpriced_requests": requests - errors,
    }


def _admin(client: FlaskClient, query: str = "", headers: dict | None = None):
    return client.get(f"/admin/usage{query}", headers=headers or KEY_HEADERS)


def _ok(response) -> dict:
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"
    return response.get_json()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


# --- GET /admin/usage -------------------------------------------------------------------
def test_totals_of_every_row_without_grouping(seeded: dict) -> None:
    body = _ok(_admin(seeded["client"]))
    assert body["totals"] == _totals(5, errors=2, prompt=21, completion=9, estimated=1)
    assert body["groups"] is None and body["group_by"] == [] and body["truncated"] is False
    assert body["filters"] == {"key": None, "model": None, "operation": None, "from": None, "to": None}
    assert body["max_groups"] == MAX_GROUPS


def test_grouped_by_utc_day(seeded: dict) -> None:
    body = _ok(_admin(seeded["client"], "?group_by=day"))
    assert body["groups"] == [
        {"day": "2030-03-30", **_totals(1, prompt=10, completion=5)},
        {"day": "2030-03-31", **_totals(2, errors=1, prompt=3, completion=4, estimated=1)},
        {"day": "2030-04-01", **_totals(2, errors=1, prompt=8)},
    ]
    assert body["totals"] == _totals(5, errors=2, prompt=21, completion=9, estimated=1)


def test_grouped_by_key(seeded: dict) -> None:
    groups = _ok(_admin(seeded["client"], "?group_by=key"))["groups"]
    by_key = {group.pop("key"): group for group in groups}
    assert by_key == {
        seeded["a"]: _totals(2, prompt=13, completion=9, estimated=1),
        seeded["b"]: _totals(2, errors=2),
        "master": _totals(1, prompt=8),
    }


def test_grouped_by_model_puts_requests_without_a_model_last(seeded: dict) -> None:
    groups = _ok(_admin(seeded["client"], "?group_by=model"))["groups"]
    assert groups == [
        {"model": "m1", **_totals(3, errors=1, prompt=18, completion=5)},
        {"model": "m2", **_totals(1, prompt=3, completion=4, estimated=1)},
        {"model": None, **_totals(1, errors=1)},
    ]


def test_grouped_by_operation_and_by_two_dimensions(seeded: dict) -> None:
    groups = _ok(_admin(seeded["client"], "?group_by=operation"))["groups"]
    assert [(g["operation"], g["requests"]) for g in groups] == [("chat", 3), ("completion", 1), ("embeddings", 1)]
    body = _ok(_admin(seeded["client"], "?group_by=day,model"))
    assert body["group_by"] == ["day", "model"]
    assert [(g["day"], g["model"], g["requests"]) for g in body["groups"]] == [
        ("2030-03-30", "m1", 1),
        ("2030-03-31", "m1", 1),
        ("2030-03-31", "m2", 1),
        ("2030-04-01", "m1", 1),
        ("2030-04-01", None, 1),
    ]


def test_filters_by_key_model_and_operation(seeded: dict) -> None:
    client = seeded["client"]
    assert _ok(_admin(client, f"?key={seeded['a']}"))["totals"] == _totals(2, prompt=13, completion=9, estimated=1)
    assert _ok(_admin(client, "?key=master"))["totals"] == _totals(1, prompt=8)
    assert _ok(_admin(client, "?key=key_nobody"))["totals"] == ZERO
    assert _ok(_admin(client, "?model=m1"))["totals"] == _totals(3, errors=1, prompt=18, completion=5)
    assert _ok(_admin(client, "?operation=chat"))["totals"] == _totals(3, errors=2, prompt=10, completion=5)
    body = _ok(_admin(client, f"?key={seeded['b']}&model=m1&group_by=day"))
    assert body["filters"]["key"] == seeded["b"] and body["filters"]["model"] == "m1"
    assert body["groups"] == [{"day": "2030-03-31", **_totals(1, errors=1)}]


@pytest.mark.parametrize(
    ("query", "requests"),
    [
        ("?from=2030-03-31&to=2030-04-01", 2),  # from is inclusive (00:00:00 counts), to exclusive
        ("?from=2030-03-31T00:00:00Z&to=2030-04-01T00:00:00Z", 2),
        ("?from=2030-03-31T02:00:00%2B02:00&to=2030-03-31T19:00:00-05:00", 2),  # offsets: the same instants
        ("?from=2030-03-31T00:00:00.000001", 3),  # no offset: UTC; the row at 00:00:00 is before it
        ("?from=2030-03-30T23:59:59.999999&to=2030-03-31", 1),
        ("?to=2030-03-30T23:59:59.999999", 0),
        ("?from=2030-04-01T01:00:00", 1),
        ("?from=2030-04-01T01:00:00.000001", 0),
        ("?from=2030-03-31&to=2030-03-31", 0),  # an empty range
    ],
)
def test_time_range_edges(seeded: dict, query: str, requests: int) -> None:
    assert _ok(_admin(seeded["client"], query))["totals"]["requests"] == requests


def test_the_range_is_echoed_in_utc(seeded: dict) -> None:
    body = _ok(_admin(seeded["client"], "?from=2030-03-31T02:00:00%2B02:00&to=2030-04-01"))
    assert body["filters"]["from"] == "2030-03-31T00:00:00+00:00"
    assert body["filters"]["to"] == "2030-04-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?from=yesterday", "from"),
        ("?to=2030-13-01", "to"),
        ("?from=2030-03-31T02:00:00+02:00", "from"),  # an unencoded '+' arrives as a space
        ("?from=2030-04-02&to=2030-04-01", "from"),
        ("?group_by=week", "group_by"),
        ("?group_by=day,day", "group_by"),
        ("?group_by=", "group_by"),
        ("?grup_by=day", "grup_by"),
        ("?model=a&model=b", "model"),
        ("?model=", "model"),
        ("?operation=dance", "operation"),
        ("?key=" + "k" * 41, "key"),
        ("?model=" + "m" * 201, "model"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(usage_app: Flask, query: str, param: str) -> None:
    error = _error(_admin(usage_app.test_client(), query), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_parameter"


def test_admin_usage_is_for_the_master_key_only(seeded: dict) -> None:
    client = seeded["client"]
    assert _error(client.get("/admin/usage"), 401)["code"] == "missing_credentials"
    managed_token = client.post("/auth/token", json={"apiKey": seeded["a_headers"]["X-API-Key"]}).get_json()["token"]
    for headers in (seeded["a_headers"], {"Authorization": f"Bearer {managed_token}"}):
        assert _error(_admin(client, headers=headers), 403)["code"] == "admin_only"
    master_token = client.post("/auth/token", json={"apiKey": KEY_HEADERS["X-API-Key"]}).get_json()["token"]
    assert _ok(_admin(client, headers={"Authorization": f"Bearer {master_token}"}))["totals"]["requests"] == 5


def test_groups_are_bounded_and_the_answer_says_so(usage_app: Flask) -> None:
    _write(usage_app, *(_row("2030-03-01T00:00:00", "master", model=f"m{i:04d}", tokens=(1, 1)) for i in range(MAX_GROUPS + 1)))
    body = _ok(_admin(usage_app.test_client(), "?group_by=model"))
    assert body["truncated"] is True and len(body["groups"]) == MAX_GROUPS
    assert body["groups"][-1]["model"] == f"m{MAX_GROUPS - 1:04d}"
    assert body["totals"] == _totals(MAX_GROUPS + 1, prompt=MAX_GROUPS + 1, completion=MAX_GROUPS + 1)
    assert _ok(_admin(usage_app.test_client(), "?group_by=model&to=2030-03-01"))["truncated"] is False


def test_the_report_bound_is_a_parameter_of_the_query(seeded: dict, usage_app: Flask) -> None:
    report = usage_app.extensions["gateway.store"].usage
    grouped = report.grouped(UsageFilter(), ("day",), max_groups=2)
    assert grouped.truncated and [g.values["day"] for g in grouped.groups] == ["2030-03-30", "2030-03-31"]
    assert grouped.totals.requests == 5


# --- GET /api/usage ---------------------------------------------------------------------
def _own(client: FlaskClient, headers: dict, query: str = ""):
    return client.get(f"/api/usage{query}", headers=headers)


def test_a_managed_key_sees_this_month_and_today_by_default(seeded: dict) -> None:
    with time_machine.travel(_at("2030-03-31T15:00:00"), tick=False):
        body = _ok(_own(seeded["client"], seeded["a_headers"]))
    assert body["key"] == seeded["a"]
    assert body["filters"] == {
        "model": None,
        "operation": None,
        "from": "2030-03-01T00:00:00+00:00",
        "to": "2030-04-01T00:00:00+00:00",
    }
    assert body["by_day"] == [
        {"day": "2030-03-30", **_totals(1, prompt=10, completion=5)},
        {"day": "2030-03-31", **_totals(1, prompt=3, completion=4, estimated=1)},
    ]
    assert body["totals"] == body["this_month"] == _totals(2, prompt=13, completion=9, estimated=1)
    assert body["today"] == _totals(1, prompt=3, completion=4, estimated=1)
    assert body["truncated"] is False
    assert set(body["remaining"]) == {"requests", "tokens", "budget"} and body["remaining"]["budget"] is None


def test_each_caller_sees_only_its_own_rows(seeded: dict) -> None:
    client = seeded["client"]
    with time_machine.travel(_at("2030-04-01T12:00:00"), tick=False):
        b_april = _ok(_own(client, seeded["b_headers"]))
        master = _ok(_own(client, KEY_HEADERS))
        a_april = _ok(_own(client, seeded["a_headers"]))
    assert b_april["key"] == seeded["b"] and b_april["totals"] == b_april["today"] == _totals(1, errors=1)
    assert master["key"] == "master" and master["by_day"] == [{"day": "2030-04-01", **_totals(1, prompt=8)}]
    assert a_april["totals"] == a_april["today"] == ZERO and a_april["by_day"] == []
    with time_machine.travel(_at("2030-04-01T12:00:00"), tick=False):  # a token minted from a key is that key
        token = client.post("/auth/token", json={"apiKey": seeded["b_headers"]["X-API-Key"]}).get_json()["token"]
        assert _ok(_own(client, {"Authorization": f"Bearer {token}"}))["totals"] == b_april["totals"]


def test_an_explicit_range_and_filters(seeded: dict) -> None:
    with time_machine.travel(_at("2030-04-01T12:00:00"), tick=False):
        body = _ok(_own(seeded["client"], seeded["b_headers"], "?from=2030-03-01&to=2030-05-01"))
        chat = _ok(_own(seeded["client"], seeded["b_headers"], "?from=2030-03-01&model=m1&operation=chat"))
    assert body["totals"] == _totals(2, errors=2)
    assert [(d["day"], d["requests"]) for d in body["by_day"]] == [("2030-03-31", 1), ("2030-04-01", 1)]
    assert body["today"] == body["this_month"] == _totals(1, errors=1)  # still the current day and month
    assert chat["filters"] == {"model": "m1", "operation": "chat", "from": "2030-03-01T00:00:00+00:00", "to": None}
    assert chat["totals"] == _totals(1, errors=1) and chat["today"] == ZERO


def test_limits_are_the_keys_own_or_the_gateways_defaults(seeded: dict) -> None:
    limits = _ok(_own(seeded["client"], seeded["a_headers"]))["limits"]
    assert limits == {
        "rate_limit_general": "100 per 15 minutes",
        "rate_limit_ai": "5 per minute",
        "tokens_per_minute": None,
        "tokens_per_day": 1000,
        "budget_tokens_day": None,
        "budget_tokens_month": None,
        "max_tokens_cap": None,
        "budget_usd": None,
        "budget_period": None,
        "budget_reset": None,
        "allowed_models": ["m1", "gpt-4o*"],
    }
    defaults = _ok(_own(seeded["client"], KEY_HEADERS))["limits"]
    assert defaults["rate_limit_ai"] == "20 per 15 minutes" and defaults["allowed_models"] is None
    assert defaults["tokens_per_day"] is None


@pytest.mark.parametrize(
    ("query", "param"),
    [("?key=master", "key"), ("?group_by=day", "group_by"), ("?from=soon", "from"), ("?operation=dance", "operation")],
)
def test_api_usage_refuses_what_it_does_not_accept(seeded: dict, query: str, param: str) -> None:
    error = _error(_own(seeded["client"], seeded["a_headers"], query), 400)
    assert error["param"] == param and error["code"] == "invalid_parameter"


def test_api_usage_needs_credentials(usage_app: Flask) -> None:
    client = usage_app.test_client()
    assert _error(client.get("/api/usage"), 401)["code"] == "missing_credentials"
    assert _error(client.get("/api/usage", headers={"X-API-Key": "aip_not-a-key"}), 401)["code"] == "invalid_api_key"


def test_real_requests_show_up_with_the_upstreams_token_counts(usage_app: Flask, upstream) -> None:
    client = usage_app.test_client()
    key_id, headers = _create_key(client)
    for _ in range(2):
        assert client.post("/v1/completions", json={"model": "gpt-test", "prompt": "hi"}, headers=headers).status_code == 200
    assert client.post("/api/ai/chat", json={"model": "gpt-test", "messages": []}, headers=KEY_HEADERS).status_code == 200
    assert usage_app.extensions["gateway.usage"].flush(timeout=5)
    own = _ok(_own(client, headers))
    assert own["today"] == own["this_month"] == _totals(2, prompt=10, completion=14)  # the fake reports 5 + 7
    by_key = {g["key"]: g for g in _ok(_admin(client, "?group_by=key,model"))["groups"]}
    assert by_key[key_id]["model"] == "gpt-test" and by_key[key_id]["requests"] == 2
    assert by_key["master"]["requests"] == 1


# --- both -------------------------------------------------------------------------------
def test_a_database_outage_is_503(seeded: dict, usage_app: Flask, monkeypatch) -> None:
    report = usage_app.extensions["gateway.store"].usage

    def down(*_args, **_kwargs):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(report, "totals", down)
    monkeypatch.setattr(report, "grouped", down)
    for response in (_admin(seeded["client"]), _own(seeded["client"], seeded["a_headers"])):
        assert _error(response, 503)["code"] == "store_unavailable" and response.headers["Retry-After"]


def test_both_endpoints_are_documented_in_the_index(usage_app: Flask) -> None:
    endpoints = {(e["method"], e["path"]): e for e in usage_app.test_client().get("/").get_json()["endpoints"]}
    admin, own = endpoints[("GET", "/admin/usage")], endpoints[("GET", "/api/usage")]
    assert "master key" in admin["auth"] and admin["description"].startswith("Usage of every key")
    assert "master key" not in own["auth"] and own["description"].startswith("Your own usage")


def test_remaining_shows_request_quotas_and_token_counters(db_client: FlaskClient, upstream) -> None:
    _, headers = _create_key(db_client, rate_limit_ai="5 per minute", tokens_per_day=1000)
    for _ in range(2):  # each settles to the fake's 12 tokens
        assert db_client.post("/v1/completions", json={"model": "m", "prompt": "hi"}, headers=headers).status_code == 200
    remaining = _ok(_own(db_client, headers))["remaining"]
    assert remaining["requests"]["ai"]["limit"] == 5 and remaining["requests"]["ai"]["remaining"] == 3
    assert 0 < remaining["requests"]["ai"]["resets_in"] <= 60
    assert remaining["requests"]["general"]["limit"] == 100
    day = remaining["tokens"]["tokens_per_day"]
    assert day["limit"] == 1000 and day["remaining"] == 1000 - 24 and 0 < day["resets_in"] <= 86400
