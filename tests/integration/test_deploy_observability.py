"""The Grafana dashboard and the Prometheus alert rules under deploy/ (issue 18).

Both files are loaded as their tools load them (JSON; YAML rule groups), every PromQL
expression is parsed by a real PromQL parser (promql-parser, after Grafana's variables
are given values), and every metric an expression names, with every label it matches
on, is checked against a scrape of ``GET /metrics`` from a real app after traffic that
makes every metric the files use: a metric renamed in gateway/metrics.py (or a suffix
gone wrong: ``_total``, ``_bucket``, ``_sum``, ``_count``) fails here, not on a dashboard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior, FakeUpstream

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "ai-proxy-gateway.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "ai-proxy-alerts.yml"
# Grafana's variables, as Grafana replaces them before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "30s", "$job": ".*"}
# Labels Prometheus adds at scrape time; the gateway's samples do not carry them.
TARGET_LABELS = {"job", "instance"}
PLENTY = {"rate_limit_general": "10000 per minute", "rate_limit_ai": "10000 per minute"}
OPERATORS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _grafana_query(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard and every alert rule."""
    found = [
        (f"dashboard panel {panel['title']!r}", _grafana_query(target["expr"]))
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]
    found += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    return found


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every series selector of an expression: (metric name, [(label, operator, value)])."""
    found: list[tuple[str, list[tuple[str, str, str]]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            matchers = [(m.name, OPERATORS[str(m.op)], m.value) for m in node.matchers.matchers]
            found.append((node.name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


# --- the files ------------------------------------------------------------------------
def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    board = dashboard()
    assert board["uid"] == "ai-proxy-gateway" and board["title"] and board["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["includeAll"] and variables["job"]["allValue"] == ".*"
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${datasource}"
            assert 'job=~"$job"' in target["expr"], f"{panel['title']!r} ignores the job variable"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    named = {name for where, expr in expressions() if where.startswith("dashboard") for name, _ in selectors(expr)}
    asked = {
        "traffic": "aiproxy_requests_total",
        "errors by code": "aiproxy_upstream_errors_total",
        "latency quantiles": "aiproxy_request_duration_seconds_bucket",
        "tokens by key and model": "aiproxy_tokens_total",
        "quota rejections": "aiproxy_quota_rejections_total",
        "backends": "aiproxy_backend_attempts_total",
        "spend by key and model": "aiproxy_spend_usd_total",
    }
    assert {what for what, metric in asked.items() if metric not in named} == set()


def test_the_alert_rules_are_prometheus_rule_groups_with_the_asked_alerts() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
    by_metric = {name: rule["alert"] for rule in rules for name, _ in selectors(rule["expr"])}
    assert "aiproxy_upstream_errors_total" in by_metric  # upstream error ratio
    assert "aiproxy_usage_records_dropped_total" in by_metric  # usage records dropped
    outage = [rule for rule in rules if ("kind", "=", "storage-unavailable") in _matchers(rule["expr"])]
    assert outage and ("route", "=", "meta.ready") in _matchers(outage[0]["expr"])  # quota store outage, either policy


def _matchers(expr: str) -> set[tuple[str, str, str]]:
    return {matcher for _, matchers in selectors(expr) for matcher in matchers}


@pytest.mark.parametrize("broken", ["sum(rate(aiproxy_requests_total[5m])", "aiproxy_requests_total{route=}"])
def test_the_parser_refuses_broken_promql(broken: str) -> None:
    with pytest.raises(ValueError):
        promql_parser.parse(broken)


# --- the metrics they name ------------------------------------------------------------------
@pytest.fixture
def backends(tmp_path: Path) -> Iterator[tuple[str, FakeUpstream, FakeUpstream]]:
    """A backends file: model "shared" on a, then b (fallback); "dead" on a closed port."""
    a, b = FakeUpstream().start(), FakeUpstream().start()
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""
backends:
  - {{name: a, url: "{a.base_url}", timeouts: {{connect: 1, first_byte: 2, idle: 2, total: 5}}}}
  - {{name: b, url: "{b.base_url}", timeouts: {{connect: 1, first_byte: 2, idle: 2, total: 5}}}}
  - {{name: dead, url: "http://127.0.0.1:9/v1", timeouts: {{connect: 1, first_byte: 2, idle: 2, total: 5}}}}
models:
  - name: shared
    deployments: [{{backend: a}}, {{backend: b, priority: 1}}]
  - name: dead
    deployments: [{{backend: dead}}]
routing:
  max_attempts: 2
  retry_budget: {{ratio: 1.0, window: 10, min_retries: 10}}
  circuit_breaker: {{failures: 5, cooldown: 1}}
prices:
  shared: {{input: 2.50, output: 10.00}}
"""
    )
    yield str(path), a, b
    a.stop()
    b.stop()


def _traffic(app: Flask, quota_app: Flask, a: FakeUpstream, b: FakeUpstream) -> None:
    """Requests that make every metric the files name: answers, a stream, a retry, an
    upstream failure, a quota rejection (on an app with a small AI quota)."""
    client = app.test_client()

    def chat(model: str, stream: bool = False) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        response = client.post("/v1/chat/completions", json=body, headers=KEY_HEADERS)
        response.get_data()
        return response.status_code

    assert chat("shared") == 200
    assert chat("shared", stream=True) == 200
    a.script = [Behavior(mode="status", status=503)]
    assert chat("shared") == 200  # a failed, b answered: a retry
    assert chat("dead") == 502  # upstream_unavailable
    quota = quota_app.test_client()
    statuses = [quota.post("/v1/embeddings", json={"model": "m", "input": "x"}, headers=KEY_HEADERS).status_code for _ in range(2)]
    assert statuses == [200, 429]


def _matches(op: str, value: str, endpoint: str) -> bool:
    return re.fullmatch(value, endpoint) is not None if op == "=~" else value == endpoint


def exported(app: Flask) -> dict[str, set[str]]:
    """Sample name -> its label names, from a scrape of ``GET /metrics``."""
    response = app.test_client().get("/metrics", headers=KEY_HEADERS)
    assert response.status_code == 200
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_every_metric_and_label_the_files_name_is_exported(make_app, backends) -> None:
    config, a, b = backends
    app = make_app(**PLENTY, gateway_config=config)
    _traffic(app, make_app(rate_limit_ai="1 per minute"), a, b)
    samples = exported(app)
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    problems = []
    for where, expr in expressions():
        for name, matchers in selectors(expr):
            if name not in samples:
                problems.append(f"{where}: {name} is not exported")
                continue
            for label, op, value in matchers:
                if label not in samples[name] | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label!r}")
                elif label == "route" and op in ("=", "=~") and not any(_matches(op, value, endpoint) for endpoint in endpoints):
                    problems.append(f"{where}: no route {value!r}")
    assert problems == []
