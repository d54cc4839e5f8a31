"""Under real gunicorn (3 workers, Redis quotas, PostgreSQL keys): one key whose counting
command Redis refuses must not put the quota store in outage mode for anyone else."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, update

from gateway.config import Settings
from gateway.store import database_url
from gateway.store.tables import api_keys
from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, request

ABSURD_LIMIT = "5 per 99999999999999 years"  # stored before limits had bounds
BODY = {"model": "m", "prompt": "hi"}


def _create_key(server, **fields) -> dict:
    status, _, body = request(server.url, "POST", "/admin/keys", {"name": "team", **fields}, headers=AUTH)
    assert status == 201, body
    return json.loads(body)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["open", "closed"])
def test_a_key_redis_refuses_leaves_every_other_key_exact(
    gateway_server,
    pg_url,
    redis_prefix,
    policy: str,
) -> None:
    server = gateway_server(
        DATABASE_URL=pg_url,
        RATE_LIMIT_STORAGE_URI=REDIS_URL,
        RATE_LIMIT_KEY_PREFIX=redis_prefix,
        GATEWAY_WORKERS="3",
        RATE_LIMIT_GENERAL="1000 per minute",
        RATE_LIMIT_ON_STORAGE_ERROR=policy,
    )
    # The admin API refuses the absurd limit now...
    status, _, _ = request(server.url, "POST", "/admin/keys", {"name": "x", "rate_limit_ai": ABSURD_LIMIT}, headers=AUTH)
    assert status == 400
    # ...but a row written before that may still hold one.
    poisoned, other = _create_key(server, rate_limit_ai="5 per minute"), _create_key(server, rate_limit_ai="5 per minute")
    engine = create_engine(database_url(Settings(database_url=pg_url)))
    with engine.begin() as connection:
        connection.execute(update(api_keys).where(api_keys.c.id == poisoned["id"]).values(rate_limit_ai=ABSURD_LIMIT))
    engine.dispose()
    # Each call on a new connection, so every worker gets some. Redis refuses the expiry after
    # the script has pushed the entry, so once 5 are in, Redis itself answers 429 for this key.
    # Before that: with open, the call is counted in the worker's memory and served; with
    # closed, it is a 503. Never a 500.
    refused = [request(server.url, "POST", "/v1/completions", BODY, headers={"X-API-Key": poisoned["secret"]})[0] for _ in range(9)]
    assert set(refused) <= {200 if policy == "open" else 503, 429}
    assert refused[0] == (200 if policy == "open" else 503)
    statuses = [request(server.url, "POST", "/v1/completions", BODY, headers={"X-API-Key": other["secret"]})[0] for _ in range(30)]
    assert statuses.count(200) == 5 and statuses.count(429) == 25
    log = server.log()
    assert "rate limit storage unreachable" not in log
    assert "rate limit storage refused a command (ResponseError)" in log
    assert "Traceback" not in log
