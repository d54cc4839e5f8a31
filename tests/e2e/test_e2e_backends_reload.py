"""The backends file (GATEWAY_CONFIG) under real gunicorn with the shipped gunicorn.conf.py:
an invalid file stops the start in one line; on SIGHUP an invalid file is refused (logged,
the previous one kept, the gateway serving on) and a valid changed one is accepted.

gunicorn re-executes gunicorn.conf.py on every SIGHUP: a refused file there must neither stop
the master nor reach the new workers (they build from the master's snapshot, or they would
fail to boot and gunicorn would stop)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CANARIES
from tests.e2e.conftest import JSON_AUTH, GatewayServer, request

SECRET = "sk-backend-canary-90d1e7"


def config_text(upstream_url: str, model: str) -> str:
    return (
        f"backends:\n  - {{name: local, url: '{upstream_url}', api_key_env: LOCAL_KEY}}\n"
        f"models:\n  - {{name: {model}, deployments: [{{backend: local}}]}}\n"
    )


def json_lines(server: GatewayServer) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def served(server: GatewayServer, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    status, _, _ = request(server.url, "POST", "/v1/chat/completions", body, headers=JSON_AUTH, timeout=10)
    return status == 200 and request(server.url, "GET", "/health", timeout=5)[0] == 200


@pytest.mark.timeout(60)
def test_gunicorn_refuses_to_start_on_an_invalid_file_in_one_line(gateway_server, upstream, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(upstream.base_url, "m").replace("api_key_env: LOCAL_KEY", f"api_key: {SECRET}"))
    server: GatewayServer = gateway_server(wait=False, GATEWAY_CONFIG=str(path), LOCAL_KEY=SECRET)
    try:
        returncode = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn started with an invalid backends file:\n{server.log()}")
    output = server.log().strip()
    assert returncode != 0
    assert output == f"configuration error: {path}: backends[0].api_key: a secret written inline: " + (
        "write ${VARIABLE} (or api_key_env: VARIABLE), never the key itself"
    ), output
    assert SECRET not in output


@pytest.mark.timeout(90)
def test_sighup_refuses_an_invalid_file_keeps_serving_then_accepts_a_valid_one(gateway_server, upstream, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(upstream.base_url, "first-model"))
    server: GatewayServer = gateway_server(GATEWAY_CONFIG=str(path), LOCAL_KEY=SECRET)
    assert any(line["msg"] == f"backends configuration from {path}: 1 backends, 1 model routes" for line in json_lines(server))
    assert served(server, "first-model")

    # An invalid file: refused, the old snapshot kept, new workers boot from it and serve.
    path.write_text(config_text(upstream.base_url, "second-model").replace("url:", "URL:"))
    server.signal(signal.SIGHUP)
    assert server.wait_for_log(lambda log: "configuration file refused on reload" in log, timeout=20), server.log()
    (refused,) = [line for line in json_lines(server) if "refused" in line["msg"]]
    assert refused["level"] == "ERROR" and refused["logger"] == "gateway.backends"
    assert refused["msg"] == (
        f"configuration file refused on reload, keeping the previous one: {path}: backends[0].URL: unknown key "
        "(known: name, url, dialect, api_key, api_key_env, api_version, timeouts, max_concurrent, weight, headers)"
    )
    assert server.wait_for_log(lambda log: log.count("Booting worker with pid") >= 2, timeout=20), server.log()
    assert server.wait_for_log(lambda log: "Worker exiting" in log, timeout=20), server.log()
    assert served(server, "first-model") and server.proc.poll() is None, server.log()  # the previous file still routes

    # A valid changed file: accepted before the new workers are forked.
    path.write_text(config_text(upstream.base_url, "third-model"))
    server.signal(signal.SIGHUP)
    assert server.wait_for_log(lambda log: "backends configuration reloaded from" in log, timeout=20), server.log()
    assert server.wait_for_log(lambda log: log.count("Booting worker with pid") >= 3, timeout=20), server.log()
    messages = [line["msg"] for line in json_lines(server)]
    assert f"backends configuration reloaded from {path}: 1 backends, 1 model routes" in messages
    # on_reload ran before gunicorn forked the new worker (gunicorn.arbiter.Arbiter.reload).
    log = server.log()
    boots = [index for index, line in enumerate(log.splitlines()) if "Booting worker with pid" in line]
    reloaded = next(index for index, line in enumerate(log.splitlines()) if "backends configuration reloaded from" in line)
    assert boots[1] < reloaded < boots[2], log
    # The previous worker (first-model) accepts until it exits: ask once only the new one is left.
    assert server.wait_for_log(lambda log: log.count("Worker exiting") >= 2, timeout=20), server.log()
    assert served(server, "third-model") and server.proc.poll() is None, server.log()
    log = server.log()
    assert "Traceback" not in log
    assert not [secret for secret in (SECRET, *CANARIES) if secret in log]
