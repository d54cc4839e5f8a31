"""The request record and each of its sinks, tested alone with hand-built records."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask

from gateway import metrics, observability
from gateway.auth import Caller
from gateway.backends.model import GatewayConfig, Price, Routing
from gateway.exchange import Exchange, Sink, UpstreamAttempt
from gateway.request_metrics import request_metrics
from gateway.upstream.accounting import TokenUsage
from gateway.usage.rows import UsageRecord, row_of, usage_rows

TS = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def record(sinks: list[Sink] | None = None, **fields: Any) -> Exchange:
    exchange = Exchange(
        request_id="req-1",
        started=100.0,
        method="POST",
        path="/v1/chat/completions",
        endpoint="ai.chat",
        sinks=sinks if sinks is not None else [],
    )
    for name, value in fields.items():
        setattr(exchange, name, value)
    return exchange


def ai_record(**fields: Any) -> Exchange:
    values: dict[str, Any] = {
        "caller": Caller("k1", "api_key"),
        "operation": "chat",
        "accounted_at": TS,
        "model": "m",
        "status": 200,
        "response_ms": 12.5,
        "duration_ms": 12.5,
        "upstream": UpstreamAttempt(started=100.001, duration_ms=10.0),
        "usage": TokenUsage(9, 3, 12),
    }
    values.update(fields)
    return record(**values)


def test_finish_hands_the_record_to_every_sink_exactly_once() -> None:
    seen: list[tuple[str, Exchange]] = []
    exchange = record([lambda e: seen.append(("a", e)), lambda e: seen.append(("b", e))])
    exchange.finish("completed", TokenUsage(1, 2, 3))
    exchange.finish("client_disconnected")
    assert seen == [("a", exchange), ("b", exchange)]
    assert exchange.finished and exchange.outcome == "completed" and exchange.usage == TokenUsage(1, 2, 3)
    assert exchange.duration_ms is not None and exchange.ended is not None


def test_a_failing_sink_does_not_cost_the_others_their_record(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Exchange] = []

    def broken(_exchange: Exchange) -> None:
        raise RuntimeError("boom")

    exchange = record([broken, seen.append])
    with caplog.at_level(logging.ERROR, logger="gateway.exchange"):
        exchange.finish()
    assert seen == [exchange]
    assert "request sink" in caplog.text


def test_access_log_sink_writes_one_line_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    exchange = ai_record(stream=True, outcome="completed", error_code=None)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        observability.access_log(exchange)
    (line,) = [r for r in caplog.records if r.name == "gateway.access"]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields == {
        "request_id": "req-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 12.5,
        "upstream_ms": 10.0,
        "caller": "k1",
        "model": "m",
        "error": None,
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "tokens_estimated": False,
        "stream": "completed",
    }


def test_access_log_of_a_plain_request_has_no_stream_or_token_fields(caplog: pytest.LogCaptureFixture) -> None:
    exchange = record(status=404, duration_ms=1.234, error_code="not_found")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        observability.access_log(exchange)
    (line,) = [r for r in caplog.records if r.name == "gateway.access"]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["status"] == 404 and fields["error"] == "not_found" and fields["caller"] is None
    assert "stream" not in fields and "prompt_tokens" not in fields and fields["upstream_ms"] is None


def test_usage_row_of_an_ai_request() -> None:
    assert row_of(ai_record()) == UsageRecord(
        ts=TS,
        key_id="k1",
        operation="chat",
        model="m",
        status=200,
        duration_ms=12.5,
        upstream_ms=10.0,
        request_id="req-1",
        prompt_tokens=9,
        completion_tokens=3,
        total_tokens=12,
        tokens_estimated=False,
        reasoning_tokens=0,
        cached_tokens=0,
        cost_usd=None,  # no pricer: no price table
    )


def test_usage_row_of_a_stream_counts_upstream_time_to_its_end() -> None:
    row = row_of(ai_record(stream=True, ended=100.501))
    assert row is not None and row.upstream_ms == 500.0


def test_no_usage_row_for_a_request_that_is_not_ai_or_was_refused_by_a_request_quota() -> None:
    assert row_of(record(status=200)) is None
    assert row_of(ai_record(status=429, quota_refused="general")) is None
    refused_early = row_of(ai_record(status=403, upstream=None, usage=None, error_code="model_not_allowed"))
    assert refused_early is not None and refused_early.upstream_ms is None and refused_early.total_tokens is None


def test_usage_sink_queues_the_row_on_the_writer() -> None:
    class Writer:
        def __init__(self) -> None:
            self.rows: list[UsageRecord] = []

        def record(self, item: UsageRecord) -> bool:
            self.rows.append(item)
            return True

    app = Flask(__name__)
    writer = app.extensions["gateway.usage"] = Writer()
    prices = (Price("m", Decimal(1), Decimal(1), Decimal(2)),)
    app.extensions["gateway.backends_config"] = GatewayConfig(None, (), (), Routing(), prices)
    sink = usage_rows(app)
    sink(ai_record())
    sink(record(status=200))
    assert [row.request_id for row in writer.rows] == ["req-1"]
    assert writer.rows[0].cost_usd == Decimal("0.000015")  # priced with the app's table: (9 x 1 + 3 x 2) / 1e6


def _sample(instruments: metrics.Instruments, metric: Any, name: str, **labels: str) -> float:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_metrics_sink_counts_the_response_the_refusal_and_the_stream() -> None:
    instruments = metrics.Instruments()  # its own, not the process's (which the app tests read)
    app = Flask(__name__)
    app.extensions["gateway.metrics"] = instruments
    app.extensions["gateway.backends_config"] = GatewayConfig(None, (), (), Routing())  # no prices: no spend
    sink = request_metrics(app)

    def requests(status: str) -> float:
        return _sample(instruments, instruments.requests, "aiproxy_requests_total", route="ai.chat", method="POST", status=status)

    def rejected(kind: str) -> float:
        return _sample(instruments, instruments.quota_rejections, "aiproxy_quota_rejections_total", kind=kind)

    def ended(outcome: str) -> float:
        return _sample(instruments, instruments.streams, "aiproxy_streams_total", operation="chat", outcome=outcome)

    # Make the labelled children first: in multiprocess mode (after any app was built) they
    # start from the value this process already wrote for them.
    for status in ("200", "429"):
        instruments.child(instruments.requests, "ai.chat", "POST", status)
    instruments.child(instruments.quota_rejections, "ai")
    instruments.child(instruments.streams, "chat", "upstream_broke_off")
    before = requests("200"), requests("429"), rejected("ai"), ended("upstream_broke_off")
    sink(ai_record())
    sink(ai_record(status=429, error_code="gateway_rate_limited", quota_refused="ai", upstream=None, usage=None))
    instruments.child(instruments.streams_in_flight, "chat").inc()  # what metrics.stream_opened does
    sink(ai_record(stream=True, outcome="upstream_broke_off", usage=None))
    after = requests("200"), requests("429"), rejected("ai"), ended("upstream_broke_off")
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 1, 1, 1]
