"""``GET /metrics``: who may read it, and that the counters follow what the gateway did.

Metric values live for the whole test process (they are per process, like in a
gunicorn worker), so each test compares two scrapes: before and after what it does.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import BoundedLabel
from tests.conftest import CANARIES, CANARY_MASTER_KEY, KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream

METRICS_TOKEN = "mt-canary-" + secrets.token_hex(20)
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
BODY = {"model": "m", "prompt": "hi"}
CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient, headers: dict[str, str] = KEY_HEADERS) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Watch:
    """Scrapes before and after; ``delta(name, **labels)`` is how much a sample moved."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.before = scrape(client)
        self.after: Samples = {}

    def delta(self, name: str, **labels: str) -> float:
        self.after = scrape(self.client)
        return value(self.after, name, **labels) - value(self.before, name, **labels)


def _error(response) -> dict:
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


def _managed_key(client: FlaskClient) -> tuple[str, str]:
    created = client.post("/admin/keys", json={"name": "metrics-test"}, headers=KEY_HEADERS)
    assert created.status_code == 201
    return created.get_json()["id"], created.get_json()["secret"]


def _token(client: FlaskClient, secret: str) -> dict[str, str]:
    response = client.post("/auth/token", json={"apiKey": secret})
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.get_json()['token']}"}


@pytest.fixture
def scraped_app(make_app) -> Flask:
    return make_app(metrics_token=METRICS_TOKEN)


# --- access -------------------------------------------------------------------------------
def test_metrics_need_the_master_key_or_the_metrics_token(scraped_app: Flask) -> None:
    client = scraped_app.test_client()
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert _error(missing)["code"] == "missing_credentials"

    _, secret = _managed_key(client)
    for headers in ({"X-API-Key": secret}, {"Authorization": f"Bearer {secret}"}, _token(client, secret)):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 403
        assert _error(refused) == {
            "message": _error(refused)["message"],
            "type": "permission_error",
            "code": "metrics_forbidden",
            "param": None,
        }

    master_token = _token(client, CANARY_MASTER_KEY)
    for headers in (SCRAPER, KEY_HEADERS, {"Authorization": f"Bearer {CANARY_MASTER_KEY}"}, master_token):
        allowed = client.get("/metrics", headers=headers)
        assert allowed.status_code == 200
        assert allowed.content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert "aiproxy_requests_total" in allowed.get_data(as_text=True)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"X-API-Key": METRICS_TOKEN},  # a scrape credential, not an API key
        {**SCRAPER, "X-API-Key": CANARY_MASTER_KEY},  # two credentials: each must be a valid key
    ],
    ids=["longer", "shorter", "basic", "as-api-key", "next-to-a-key"],
)
def test_anything_but_the_exact_metrics_token_is_refused(scraped_app: Flask, headers: dict[str, str]) -> None:
    response = scraped_app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 401
    assert _error(response)["type"] == "authentication_error"


def test_the_metrics_token_opens_nothing_else(scraped_app: Flask, upstream: FakeUpstream) -> None:
    client = scraped_app.test_client()
    for method, path in (
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/nope"),
    ):
        assert client.open(path, method=method, json=BODY, headers=SCRAPER).status_code == 401, path
    assert client.post("/auth/token", json={"apiKey": METRICS_TOKEN}).status_code == 401
    assert upstream.requests == []


def test_without_a_metrics_token_only_the_master_key_reads_metrics(client: FlaskClient) -> None:
    for headers in ({"Authorization": "Bearer "}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
        assert client.get("/metrics", headers=headers).status_code == 401
    assert client.get("/metrics", headers=KEY_HEADERS).status_code == 200


def test_openmetrics_when_the_scraper_asks_for_it(client: FlaskClient) -> None:
    response = client.get("/metrics", headers={**KEY_HEADERS, "Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert response.get_data(as_text=True).endswith("# EOF\n")


def test_the_readme_lists_every_metric(app: Flask) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("\n## Metrics\n") : readme.index("\n## Deployment\n")]
    listed = set(re.findall(r"^\| `(aiproxy_\w+)`", section, flags=re.M))
    defined = {
        family.name + ("_total" if family.type == "counter" else "")
        for metric in vars(app.extensions["gateway.metrics"]).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
    }
    assert listed == defined and len(defined) == 17


def test_metrics_use_no_quota_and_are_listed(make_app) -> None:
    client = make_app(metrics_token=METRICS_TOKEN, rate_limit_general="2 per minute").test_client()
    for _ in range(5):
        response = client.get("/metrics", headers=SCRAPER)
        assert response.status_code == 200
        assert "X-RateLimit-Remaining" not in response.headers and "RateLimit" not in response.headers
    for _ in range(5):
        assert client.get("/metrics", headers=KEY_HEADERS).status_code == 200
    # The master key's general quota is still whole.
    assert [client.get("/v1/models", headers=KEY_HEADERS).status_code for _ in range(3)] == [200, 200, 429]
    listed = {(e["method"], e["path"]): e for e in client.get("/").get_json()["endpoints"]}
    assert listed[("GET", "/metrics")]["rate_limits"] == []
    assert "METRICS_TOKEN" in listed[("GET", "/metrics")]["auth"]


# --- what is counted ---------------------------------------------------------------------------
def test_requests_are_counted_by_route_method_and_status(client: FlaskClient, upstream: FakeUpstream) -> None:
    watch = Watch(client)
    for path in ("/v1/completions", "/api/ai/completion", "/v1/completions"):
        assert client.post(path, json=BODY, headers=KEY_HEADERS).status_code == 200
    assert client.post("/v1/completions", data="{oops", content_type="application/json", headers=KEY_HEADERS).status_code == 400
    assert client.get("/nope-path-label", headers=KEY_HEADERS).status_code == 404
    assert client.open("/v1/models", method="BREW", headers=KEY_HEADERS).status_code == 405
    assert client.get("/v1/models").status_code == 401

    requests = "aiproxy_requests_total"
    assert watch.delta(requests, route="ai.completion", method="POST", status="200") == 3
    assert watch.delta(requests, route="ai.completion", method="POST", status="400") == 1
    assert watch.delta(requests, route="unmatched", method="GET", status="404") == 1
    assert watch.delta(requests, route="unmatched", method="other", status="405") == 1
    assert watch.delta(requests, route="ai.models", method="GET", status="401") == 1
    assert watch.delta("aiproxy_request_duration_seconds_count", route="ai.completion") == 4
    # Only the requests that reached the upstream have an upstream time and an overhead.
    assert watch.delta("aiproxy_upstream_duration_seconds_count", operation="completion") == 3
    assert watch.delta("aiproxy_gateway_overhead_seconds_count", operation="completion") == 3
    overhead = watch.delta("aiproxy_gateway_overhead_seconds_sum", operation="completion")
    upstream_time = watch.delta("aiproxy_upstream_duration_seconds_sum", operation="completion")
    total = watch.delta("aiproxy_request_duration_seconds_sum", route="ai.completion")
    assert 0 < overhead < total and 0 < upstream_time < total
    # Buckets are cumulative and the smallest is sub-millisecond.
    assert value(watch.after, "aiproxy_gateway_overhead_seconds_bucket", operation="completion", le="0.0001") >= 0
    assert value(watch.after, "aiproxy_request_duration_seconds_bucket", route="ai.completion", le="+Inf") == value(
        watch.after, "aiproxy_request_duration_seconds_count", route="ai.completion"
    )
    assert "/nope-path-label" not in client.get("/metrics", headers=KEY_HEADERS).get_data(as_text=True)


def test_tokens_are_counted_by_key_model_and_kind(client: FlaskClient, upstream: FakeUpstream) -> None:
    key_id, secret = _managed_key(client)
    watch = Watch(client)
    assert (
        client.post("/v1/completions", json={**BODY, "model": "tokens-model"}, headers={"X-API-Key": secret}).status_code == 200
    )  # the fake reports 5 + 7
    streamed = client.post(
        "/v1/chat/completions", json={**CHAT, "model": "tokens-model"}, headers={"X-API-Key": secret}
    )  # the fake reports 9 + 5 in its last chunk
    assert streamed.get_data().rstrip().endswith(b"data: [DONE]")
    assert watch.delta("aiproxy_tokens_total", key_id=key_id, model="tokens-model", kind="prompt") == 5 + 9
    assert watch.delta("aiproxy_tokens_total", key_id=key_id, model="tokens-model", kind="completion") == 7 + 5


def test_spend_is_counted_by_key_and_model_for_priced_models(make_app, upstream: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("prices:\n  spend-model: {input: 2.50, output: 10.00}\n")
    client = make_app(gateway_config=str(config)).test_client()
    watch = Watch(client)
    for model in ("spend-model", "unpriced-model"):  # the fake reports 5 prompt + 7 completion tokens
        assert client.post("/v1/completions", json={**BODY, "model": model}, headers=KEY_HEADERS).status_code == 200
    # 5 x 2.50 + 7 x 10 = 82.5 USD per million tokens, as the usage row's cost_usd.
    assert watch.delta("aiproxy_spend_usd_total", key_id="master", model="spend-model") == pytest.approx(0.0000825)
    spent = {dict(labels).get("model") for name, labels in watch.after if name == "aiproxy_spend_usd_total"}
    assert "spend-model" in spent and "unpriced-model" not in spent


def test_unusual_model_names_share_one_label(client: FlaskClient, upstream: FakeUpstream) -> None:
    watch = Watch(client)
    for model in ("write me a poem about", "x" * 150, "model\nwith-newline"):
        assert client.post("/v1/completions", json={**BODY, "model": model}, headers=KEY_HEADERS).status_code == 200
    assert watch.delta("aiproxy_tokens_total", key_id="master", model="other", kind="prompt") == 3 * 5


def test_model_labels_are_bounded_per_process() -> None:
    label = BoundedLabel(3)
    assert [label(name) for name in ("a", "b", "a", "c", "d", "e", "b")] == ["a", "b", "a", "c", "other", "other", "b"]
    assert label(None) == "none" and BoundedLabel(5)("has space") == "other"
    assert BoundedLabel(5)("llama3.1:8b") == "llama3.1:8b" and BoundedLabel(5)("meta-llama/Llama-3-8B") != "other"


def test_streams_in_flight_and_how_they_ended(client: FlaskClient, upstream: FakeUpstream) -> None:
    watch = Watch(client)
    in_flight = value(watch.before, "aiproxy_streams_in_flight", operation="chat")
    upstream.behavior = Behavior(chunks=3, gap=0.05)
    with client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False) as response:
        pieces = iter(response.response)
        assert next(pieces)
        assert value(scrape(client), "aiproxy_streams_in_flight", operation="chat") == in_flight + 1
        assert b"".join(pieces).rstrip().endswith(b"data: [DONE]")
    assert value(scrape(client), "aiproxy_streams_in_flight", operation="chat") == in_flight

    upstream.behavior = Behavior(chunks=20, gap=0.05)
    with client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False) as response:
        assert next(iter(response.response))
    # The client went away mid-stream (the response is closed).

    upstream.behavior = Behavior(mode="drop", drop_after=2)
    assert b"event: error" in client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS).get_data()

    assert watch.delta("aiproxy_streams_total", operation="chat", outcome="completed") == 1
    assert watch.delta("aiproxy_streams_total", operation="chat", outcome="client_disconnected") == 1
    assert watch.delta("aiproxy_streams_total", operation="chat", outcome="upstream_broke_off") == 1
    assert watch.delta("aiproxy_upstream_errors_total", kind="upstream_stream_error") == 1
    assert value(watch.after, "aiproxy_streams_in_flight", operation="chat") == in_flight
    assert watch.delta("aiproxy_requests_total", route="ai.chat", method="POST", status="200") == 3


@pytest.mark.parametrize(
    ("behavior", "status", "kind"),
    [
        (Behavior(mode="status", status=500), 502, "upstream_error"),
        (Behavior(mode="status", status=401), 502, "upstream_auth_failed"),
        (Behavior(mode="status", status=429), 429, "upstream_rate_limited"),
        (Behavior(mode="redirect"), 502, "upstream_redirect"),
        (Behavior(mode="raw", body=b"<html>", content_type="text/html"), 502, "upstream_invalid_response"),
        (Behavior(mode="hang", hang_seconds=3), 504, "upstream_timeout"),
    ],
    ids=lambda item: item if isinstance(item, str) else None,
)
def test_upstream_errors_are_counted_by_kind(make_app, upstream: FakeUpstream, behavior: Behavior, status: int, kind: str) -> None:
    client = make_app(upstream_read_timeout=0.3).test_client()
    watch = Watch(client)
    upstream.behavior = behavior
    assert client.post("/v1/completions", json=BODY, headers=KEY_HEADERS).status_code == status
    assert client.post("/v1/completions", json={"model": 1, "stream": "yes"}, headers=KEY_HEADERS).status_code == 400
    assert watch.delta("aiproxy_upstream_errors_total", kind=kind) == 1
    others = {
        labels: v - value(watch.before, name, **dict(labels))
        for (name, labels), v in watch.after.items()
        if name == "aiproxy_upstream_errors_total"
    }
    assert sum(others.values()) == 1  # the client's own 400 is not an upstream error


def test_an_unreachable_upstream_is_counted(make_app) -> None:
    client = make_app(ai_api_url="http://127.0.0.1:9/v1/completions").test_client()
    watch = Watch(client)
    assert client.post("/v1/completions", json=BODY, headers=KEY_HEADERS).status_code == 502
    assert watch.delta("aiproxy_upstream_errors_total", kind="upstream_unavailable") == 1


def test_quota_rejections_are_counted_by_kind(make_app, upstream: FakeUpstream) -> None:
    client = make_app(rate_limit_ai="1 per minute", rate_limit_auth_failures="1 per minute").test_client()
    watch = Watch(client)
    assert [client.post("/v1/completions", json=BODY, headers=KEY_HEADERS).status_code for _ in range(2)] == [200, 429]
    assert [client.post("/auth/token", json={"apiKey": "wrong"}).status_code for _ in range(2)] == [401, 429]
    assert watch.delta("aiproxy_quota_rejections_total", kind="ai") == 1
    assert watch.delta("aiproxy_quota_rejections_total", kind="auth-failures") == 1

    general = make_app(rate_limit_general="1 per minute").test_client()
    watch = Watch(general)
    assert [general.get("/").status_code for _ in range(2)] == [200, 429]
    assert watch.delta("aiproxy_quota_rejections_total", kind="general") == 1


def test_concurrency_rejections_are_counted(make_app, upstream: FakeUpstream) -> None:
    client = make_app(rate_limit_concurrent=1).test_client()
    watch = Watch(client)
    upstream.behavior = Behavior(chunks=20, gap=0.05)
    with client.post("/v1/chat/completions", json=CHAT, headers=KEY_HEADERS, buffered=False) as held:
        assert next(iter(held.response))
        refused = client.post("/v1/completions", json=BODY, headers=KEY_HEADERS)
    assert refused.status_code == 429 and _error(refused)["code"] == "concurrency_limit_exceeded"
    assert watch.delta("aiproxy_quota_rejections_total", kind="concurrency") == 1


def test_quota_store_outages_are_counted(make_app, upstream: FakeUpstream) -> None:
    client = make_app(
        rate_limit_storage_uri="redis://127.0.0.1:1/0", rate_limit_on_storage_error="closed", rate_limit_storage_timeout=0.2
    ).test_client()
    watch = Watch(client)  # /metrics needs no quota, so it answers while the store is down
    refused = client.post("/v1/completions", json=BODY, headers=KEY_HEADERS)
    assert refused.status_code == 503 and _error(refused)["code"] == "rate_limit_storage_unavailable"
    assert watch.delta("aiproxy_quota_rejections_total", kind="storage-unavailable") == 1
    assert upstream.requests == []


def test_usage_queue_depth_and_drops(make_app, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(usage_queue_size=2)
    client = app.test_client()
    writer = app.extensions["gateway.usage"]
    watch = Watch(client)
    monkeypatch.setattr(writer, "_start", lambda: None)  # no writer thread: the queue only fills
    for _ in range(5):
        assert client.get("/v1/models", headers=KEY_HEADERS).status_code == 200
    assert watch.delta("aiproxy_usage_records_dropped_total") == 3
    assert value(watch.after, "aiproxy_usage_queue_depth") == 2
    monkeypatch.undo()
    writer._start()
    assert writer.flush(timeout=5)
    assert value(scrape(client), "aiproxy_usage_queue_depth") == 0


def test_metrics_show_no_secret_and_no_prompt_text(scraped_app: Flask, upstream: FakeUpstream) -> None:
    client = scraped_app.test_client()
    _, secret = _managed_key(client)
    prompt = "prompt-canary-" + secrets.token_hex(8)
    for headers in (KEY_HEADERS, {"X-API-Key": secret}, _token(client, secret)):
        client.post("/v1/completions", json={"model": "m", "prompt": prompt}, headers=headers)
        client.post(
            "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": prompt}]}, headers=headers
        ).get_data()
    client.get(f"/v1/models/{prompt}", headers=KEY_HEADERS)
    client.get("/v1/models", headers={"X-API-Key": "aip_" + prompt})
    client.get("/v1/models", headers={"Authorization": f"Bearer {prompt}"})
    text = client.get("/metrics", headers=SCRAPER).get_data(as_text=True)
    for leaked in (*CANARIES, METRICS_TOKEN, secret, secret[4:20], prompt):
        assert leaked not in text
