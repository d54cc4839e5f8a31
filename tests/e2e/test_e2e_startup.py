"""Production refuses to start on weak or missing configuration: one line naming the
variable, never its value, and no traceback."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.conftest import GatewayServer

STRONG = "p" * 40


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "name", "value"),
    [
        ({"MASTER_API_KEY": "short-but-secret-value"}, "MASTER_API_KEY", "short-but-secret-value"),
        ({"MASTER_API_KEY": "", "JWT_SECRET": STRONG}, "MASTER_API_KEY", None),
        ({"JWT_SECRET": "tiny-jwt-secret-value"}, "JWT_SECRET", "tiny-jwt-secret-value"),
        ({"ALLOWED_ORIGINS": "*"}, "ALLOWED_ORIGINS", None),
        ({"RATE_LIMIT_AI": "plenty-per-whenever"}, "RATE_LIMIT_AI", "plenty-per-whenever"),
        ({"AI_API_URL": "gopher://upstream-host-value/v1"}, "AI_API_URL", "upstream-host-value"),
    ],
    ids=["short-key", "missing-key", "short-jwt-secret", "wildcard-origin", "bad-limit", "bad-url"],
)
def test_production_refuses_to_start(gateway_server, env, name, value) -> None:
    settings = {"NODE_ENV": "production", "MASTER_API_KEY": STRONG, "JWT_SECRET": "q" * 40, **env}
    server: GatewayServer = gateway_server(wait=False, **settings)
    try:
        returncode = server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the gateway started with {name}={env[name]!r} in production")
    output = server.log().strip()
    assert returncode != 0
    assert name in output
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    if value:
        assert value not in output
