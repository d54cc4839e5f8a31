"""What the quotas cost per request: the limiter off, on with memory://, on with Redis.

    python -m bench.limiter_cost      # `make bench-limiter`; writes bench/results/limiter.json

The gateway app is called in-process (no gunicorn, no sockets on the client side),
relaying to the bench upstream, so the difference between runs is the limiter's own
work: flask-limiter's checks, the storage round trips, the rate-limit headers and the
token-quota machinery. CPU time of this process (all threads) per request, median and
spread of 5 runs of 2,000 requests after a warm-up. Redis is the machine's own
(``redis://127.0.0.1:6379/13``, a key prefix of its own, deleted afterwards).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import run

REDIS_URL = "redis://127.0.0.1:6379/13"
REQUESTS = 2000
REPEATS = 5


def _environ(body: bytes, key: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/chat/completions",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_API_KEY": key,
        "HTTP_HOST": "127.0.0.1",
    }


def measure(label: str, overrides: dict[str, Any], limiter_on: bool) -> dict[str, Any]:
    from gateway import create_app

    key = secrets.token_urlsafe(40)
    settings = {
        "node_env": "production",
        "master_api_key": key,
        "jwt_secret": secrets.token_urlsafe(40),
        "ai_api_url": f"http://{run.HOST}:{run.PORTS['upstream']}/v1/completions",
        "database_url": overrides.pop("database_url"),
        "log_level": "WARNING",
        **overrides,
    }
    app = create_app(settings)
    app.extensions["gateway.limiter"].enabled = limiter_on  # off: no quota is counted (gateway.limits honours it too)
    body = json.dumps(run.LOAD_BODY).encode()

    def one() -> None:
        status: list[str] = []
        out = app(_environ(body, key), lambda s, h, e=None: status.append(s))
        for _ in out:
            pass
        out.close()
        assert status[0].startswith("200"), status

    for _ in range(300):
        one()
    samples = []
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(REQUESTS):
            one()
        samples.append((time.process_time() - started) / REQUESTS * 1000)
    app.extensions["gateway.usage"].stop(timeout=5)
    return {
        "label": label,
        "cpu_ms_median": round(statistics.median(samples), 3),
        "cpu_ms_min": round(min(samples), 3),
        "cpu_ms_max": round(max(samples), 3),
    }


def main() -> None:
    os.environ["AI_PROXY_ENV_FILE"] = "/dev/null"
    run.choose_ports(9100)
    upstream = run.start_upstream()
    prefix = "bench-" + secrets.token_hex(4)
    results = []
    try:
        from sqlalchemy import create_engine

        from gateway.store import schema

        database = f"sqlite:///{Path(tempfile.mkdtemp()) / 'gateway.db'}"
        engine = create_engine(database)
        schema.upgrade(engine)
        engine.dispose()
        # One caller at hundreds of requests per second: a 1-second window keeps the
        # moving window's per-caller list short, as real per-key quotas are.
        limits = {"rate_limit_general": "1000000 per second", "rate_limit_ai": "1000000 per second"}
        configs = [
            ("limiter off", {}, False),
            ("memory://, moving-window (default)", {}, True),
            ("memory://, fixed-window", {"rate_limit_strategy": "fixed-window"}, True),
            # each strategy its own prefix: the same key cannot hold a moving window's list and a fixed window's count
            ("redis, moving-window (default)", {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": f"{prefix}-mw"}, True),
            (
                "redis, fixed-window",
                {"rate_limit_storage_uri": REDIS_URL, "rate_limit_key_prefix": f"{prefix}-fw", "rate_limit_strategy": "fixed-window"},
                True,
            ),
        ]
        for label, extra, on in configs:
            result = measure(label, {"database_url": database, **limits, **extra}, on)
            print(
                f"{label:40s} {result['cpu_ms_median']:.3f} ms CPU/request ({result['cpu_ms_min']:.3f}-{result['cpu_ms_max']:.3f})",
                flush=True,
            )
            results.append(result)
    finally:
        upstream.stop()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for pattern in (f"LIMITS:LIMITER/{prefix}-*", f"{prefix}-*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    base = results[0]["cpu_ms_median"]
    for result in results:
        result["limiter_ms"] = round(result["cpu_ms_median"] - base, 3)
    out = run.RESULTS / "limiter.json"
    out.write_text(
        json.dumps(
            {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "requests": REQUESTS, "repeats": REPEATS, "results": results},
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
