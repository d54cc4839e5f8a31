"""A budget in USD resets at its period's boundary, under real gunicorn.

A calendar day cannot be waited out, so the gateway runs under libfaketime (Debian's
``faketime`` package: ``make test`` installs it when missing) with its clock started a few
seconds before midnight UTC: the key's budget is spent before midnight (429, with
``Retry-After`` until the reset), and the first call after midnight is served again from
a fresh window. The test process keeps the real clock; the gateway's own ``Retry-After``
says how long to wait.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import AUTH, request
from tests.fakes.upstream import Behavior

LIBFAKETIME = next(
    (path for path in Path("/usr/lib").glob("*-linux-gnu/faketime/libfaketimeMT.so.1")),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
)
FAKE_START = "2026-12-01 23:59:30"  # UTC: 30 s before the day's budget resets
PRICES = "prices:\n  metered: {input: 100, output: 150}\n"  # a fake completion (5 + 7 tokens): $0.00155
BODY = {"model": "metered", "prompt": "hi", "max_tokens": 16}  # holds at most $0.0034


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_spent_daily_budget_is_served_again_after_midnight(gateway_server, tmp_path: Path, upstream) -> None:
    assert LIBFAKETIME.exists(), "libfaketime is missing: apt-get install faketime (make test installs it)"
    config = tmp_path / "gateway.yaml"
    config.write_text(PRICES)
    server = gateway_server(
        GATEWAY_CONFIG=str(config),
        RATE_LIMIT_GENERAL="10000 per minute",
        RATE_LIMIT_AI="10000 per minute",
        LD_PRELOAD=str(LIBFAKETIME),
        FAKETIME=f"@{FAKE_START}",
        TZ="UTC",
    )
    upstream.behavior = Behavior()
    status, _, body = request(
        server.url, "POST", "/admin/keys", {"name": "daily", "budget_usd": "0.01", "budget_period": "day"}, headers=AUTH
    )
    assert status == 201, body
    headers = {"X-API-Key": json.loads(body)["secret"]}
    statuses = []
    for _ in range(10):
        status, answer_headers, _ = request(server.url, "POST", "/v1/completions", BODY, headers=headers)
        statuses.append(status)
        if status == 429:
            break
    assert statuses[-1] == 429 and statuses[:-1] == [200] * (len(statuses) - 1) and len(statuses) > 1, statuses
    resets_in = int(answer_headers["Retry-After"])
    assert 1 <= resets_in <= 30  # the budget's window is the faked day, ending at midnight
    _, _, usage_body = request(server.url, "GET", "/api/usage", headers=headers)
    before = json.loads(usage_body)["remaining"]["budget"]
    assert before["resets_at"].startswith("2026-12-02T00:00:00") and before["limit_remaining"] < 0.0034

    time.sleep(resets_in + 1)  # past midnight on the gateway's clock
    status, _, body = request(server.url, "POST", "/v1/completions", BODY, headers=headers)
    assert status == 200, body
    _, _, usage_body = request(server.url, "GET", "/api/usage", headers=headers)
    after = json.loads(usage_body)["remaining"]["budget"]
    assert after["resets_at"].startswith("2026-12-03T00:00:00")
    assert after["usage"] == pytest.approx(0.00155)  # the new day's window holds only the call after midnight
