"""Tracing's set-up (issue 18): off by default and then free, its variables, its resource,
its flush at worker exit. The spans of real requests: tests/integration/test_tracing.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import exchange, tracing
from gateway.config import ConfigError, Settings, load
from gateway.tracing import spans

REPO_ROOT = Path(__file__).resolve().parents[2]

# create_app and one relayed request (to an upstream that refuses it: the relay path and
# its error path run), then: which modules did the process import?
_OFF_PROBE = """
import json, sys
from gateway import create_app
app = create_app()
response = app.test_client().post(
    "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    headers={"X-API-Key": "m" * 40},
)
print(json.dumps({"status": response.status_code, "request_id": response.headers["X-Request-ID"],
                  "modules": sorted(name for name in sys.modules if name.startswith(TRACING_MODULES))}))
"""
# What tracing would import: its own spans module, the SDK's tracing, the propagator, the
# exporter. (redis-py 8 imports the SDK's *metrics* package on its own when it is installed,
# for its optional observability, which stays off: not the gateway's doing, and no tracing.)
TRACING_MODULES = (
    "gateway.tracing.spans",
    "opentelemetry.sdk.trace",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.exporter",
)


def test_off_by_default_tracing_is_never_imported(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "MASTER_API_KEY": "m" * 40,
        "JWT_SECRET": "j" * 40,
        "AI_API_URL": "http://127.0.0.1:9/v1/completions",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "AI_PROXY_ENV_FILE": str(tmp_path / "none.env"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # an OTEL_* variable alone turns nothing on
    }
    probe = f"TRACING_MODULES = {TRACING_MODULES!r}\n{_OFF_PROBE}"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 502 and len(result["request_id"]) == 32  # the relay ran; a plain request id
    assert result["modules"] == []


def test_the_exporter_variable_is_checked_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^OTEL_TRACES_EXPORTER must be one of none, otlp, console"):
        load(environ={"OTEL_TRACES_EXPORTER": "jaeger"}, env_file=str(tmp_path / "none"))
    assert load(environ={"OTEL_TRACES_EXPORTER": "otlp"}, env_file=str(tmp_path / "none")).otel_traces_exporter == "otlp"


@pytest.mark.parametrize(
    ("exporter", "disabled", "on"),
    [("none", False, False), ("otlp", False, True), ("console", False, True), ("otlp", True, False)],
)
def test_on_only_with_an_exporter_and_the_sdk_not_disabled(exporter: str, disabled: bool, on: bool) -> None:
    assert tracing.enabled(Settings(otel_traces_exporter=exporter, otel_sdk_disabled=disabled)) is on


def test_the_service_name_defaults_to_the_gateways_and_the_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert spans._resource().attributes["service.name"] == "ai-proxy-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    assert spans._resource().attributes["service.name"] == "gateway-eu"


def test_otel_variables_of_the_env_file_reach_the_sdk_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env_file = tmp_path / "gateway.env"
    env_file.write_text("OTEL_SERVICE_NAME=from-file\nOTEL_TRACES_SAMPLER=always_off\nOTEL_EXPORTER_OTLP_PROTOCOL=grpc\n")
    monkeypatch.setenv("AI_PROXY_ENV_FILE", str(env_file))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    for name in ("OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.setenv(name, "placeholder")  # so that monkeypatch restores the variable's absence
        monkeypatch.delenv(name)
    monkeypatch.setattr(logging.getLogger("gateway"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="gateway.tracing.spans"):
        spans._use_env_file_variables()
    assert os.environ["OTEL_SERVICE_NAME"] == "from-file"
    assert os.environ["OTEL_TRACES_SAMPLER"] == "always_on"
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported" in caplog.text


def _traced_app(monkeypatch: pytest.MonkeyPatch) -> tuple[Flask, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(spans, "exporter_for", lambda name: exporter)
    app = Flask(__name__)
    app.config["GATEWAY"] = Settings(otel_traces_exporter="otlp")
    exchange.init_app(app)
    tracing.init_app(app)
    return app, exporter


def test_stop_all_exports_the_queued_spans_at_worker_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    app, exporter = _traced_app(monkeypatch)
    found = tracing.tracing_of(app)
    assert found is not None
    found.tracer.start_span("last request").end()
    assert exporter.get_finished_spans() == ()  # queued in the batch processor (5 s schedule)
    tracing.stop_all()
    assert [span.name for span in exporter.get_finished_spans()] == ["last request"]
    found.tracer.start_span("after the stop").end()  # a stopped processor takes nothing more
    assert len(exporter.get_finished_spans()) == 1


def test_its_hooks_come_right_after_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = _traced_app(monkeypatch)
    assert [hook.__name__ for hook in app.before_request_funcs[None]] == ["begin", "begin_request"]
    assert [getattr(sink, "__name__", "") for sink in app.extensions["gateway.sinks"]] == ["end_request"]
    found = tracing.tracing_of(app)
    assert found is not None
    found.stop()
