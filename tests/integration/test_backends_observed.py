"""What operators see of routing: metrics per backend, retries, the access log's attempts."""

from __future__ import annotations

import json
import logging

from tests.conftest import KEY_HEADERS
from tests.fakes.upstream import Behavior
from tests.integration.test_backends_routing import CHAT, PLENTY, two, write_config
from tests.integration.test_metrics import Watch

__all__ = ["two"]  # the fixture, shared

FALLBACK = """
  - name: shared
    deployments:
      - {backend: a, model: model-a}
      - {backend: b, model: model-b, priority: 1}
"""


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_fallback_is_counted_per_backend_and_logged_with_each_attempt(make_app, tmp_path, two) -> None:
    a, b = two
    client = make_app(**PLENTY, gateway_config=write_config(tmp_path, a, b, models=FALLBACK)).test_client()
    a.behavior = Behavior(mode="status", status=503)
    watch = Watch(client)
    body = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}
    lines = Lines()
    access = logging.getLogger("gateway.access")
    access.addHandler(lines)
    try:
        answer = client.post(CHAT, data=json.dumps(body), headers={**KEY_HEADERS, "Content-Type": "application/json"})
    finally:
        access.removeHandler(lines)
    assert answer.status_code == 200
    assert watch.delta("aiproxy_backend_attempts_total", backend="a", outcome="status_5xx") == 1
    assert watch.delta("aiproxy_backend_attempts_total", backend="b", outcome="ok") == 1
    assert watch.delta("aiproxy_retries_total", reason="status_5xx") == 1
    assert watch.delta("aiproxy_backend_duration_seconds_count", backend="b") == 1
    (line,) = [r for r in lines.records if r.name == "gateway.access" and r.fields.get("path") == CHAT]  # type: ignore[attr-defined]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["backend"] == "b" and fields["upstream_model"] == "model-b"
    assert fields["attempts"] == ["a:status_5xx", "b:ok"]


def test_an_exhausted_retry_budget_is_counted(make_app, tmp_path, two) -> None:
    a, b = two
    config = write_config(tmp_path, a, b, models=FALLBACK)
    with open(config) as file:
        text = file.read().replace("ratio: 1.0, window: 10, min_retries: 10", "ratio: 0, window: 10, min_retries: 0")
    with open(config, "w") as file:
        file.write(text)
    client = make_app(**PLENTY, gateway_config=config).test_client()
    a.behavior = Behavior(mode="status", status=503)
    watch = Watch(client)
    body = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}
    answer = client.post(CHAT, data=json.dumps(body), headers={**KEY_HEADERS, "Content-Type": "application/json"})
    assert answer.status_code == 502 and not b.requests  # no budget: no retry, a's failure answered
    assert watch.delta("aiproxy_retry_budget_exhausted_total") == 1
