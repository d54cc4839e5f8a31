"""Instructions per relayed request, counted by callgrind on the app called in-process.

    python -m bench.instructions                      # the code as it is
    python -m bench.instructions --variant talisman   # with one library reach swapped
                                                      # for its public-API equivalent
    python -m bench.instructions --two-backends       # the model routed to two backends

Wall-clock CPU time on a shared VM drifts by tens of percent between minutes; the
number of instructions the app executes per request barely moves, so small changes
are compared with it. The driver starts the bench upstream (bench/upstream.py) on
loopback, migrates a fresh SQLite database and creates a managed key (outside
valgrind), then runs this module twice under ``valgrind --tool=callgrind``: once
sending 100 requests, once 400. The difference of the two totals divided by 300 is
the cost of one request, start-up excluded.

Inside valgrind: gevent-patched as the worker is, the real app from ``create_app``
(production mode, quotas, security headers, access log, usage rows and metrics
on), and ``POST /v1/chat/completions`` called as a WSGI call with a prebuilt
environ, so no test client's work is counted. The garbage collector is frozen after
start-up, as gunicorn.conf.py does in the worker.

Variants (``--variant``): each replaces one reach kept in :mod:`gateway.compat` by
what the public API offers, so its cost can be measured (bench/results/profile.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
PATH = "/v1/chat/completions"
BODY = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}).encode()
HIGH_LIMIT = "1000000 per second"
VARIANTS = ("none", "talisman", "begin", "pool", "getpid")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment(port: int, folder: Path) -> dict[str, str]:
    return {
        "NODE_ENV": "production",
        "MASTER_API_KEY": "m" * 48,
        "JWT_SECRET": "j" * 48,
        "AI_API_URL": f"http://127.0.0.1:{port}/v1/completions",
        "RATE_LIMIT_GENERAL": HIGH_LIMIT,
        "RATE_LIMIT_AI": HIGH_LIMIT,
        "LOG_LEVEL": "INFO",
        "MAX_CONNECTIONS_PER_ADDRESS": "0",
        "DATABASE_URL": f"sqlite:///{folder / 'gateway.db'}",
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        "AI_PROXY_ENV_FILE": "/dev/null",
    }


def _prepare(env: dict[str, str]) -> str:
    """Migrate the database and create the managed key; returns its secret."""
    flask = [str(PYTHON), "-m", "flask", "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
    created = subprocess.run(
        [*flask, "keys", "create", "--name", "bench", "--ai-limit", HIGH_LIMIT, "--general-limit", HIGH_LIMIT],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(created)["secret"])


def _count(requests: int, variant: str, env: dict[str, str], out: Path) -> int:
    """Total instructions (callgrind's ``Ir``) of one run sending ``requests`` requests."""
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            str(PYTHON),
            "-m",
            "bench.instructions",
            "--inner",
            str(requests),
            "--variant",
            variant,
        ],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    match = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
    assert match, f"no totals in {out}"
    return int(match.group(1))


def _two_backends(port: int, folder: Path) -> Path:
    """A backends file routing the bench's model to two backends, both the bench upstream (as
    bench/run.py's gateway-2b target): what routing costs over the one-backend path."""
    url = f"http://127.0.0.1:{port}/v1"
    config = folder / "gateway-2b.yaml"
    config.write_text(
        "backends:\n"
        f"  - {{name: upstream-a, url: '{url}'}}\n"
        f"  - {{name: upstream-b, url: '{url}'}}\n"
        "models:\n"
        "  - {name: bench-model, deployments: [{backend: upstream-a}, {backend: upstream-b}]}\n"
    )
    return config


def measure(variant: str, two_backends: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        folder = Path(tmp)
        port = _free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert upstream.stdout is not None
            upstream.stdout.readline()  # "bench upstream on ...": it listens
            totals = {}
            for requests in (100, 400):
                run_folder = folder / str(requests)
                run_folder.mkdir()
                env = {**os.environ, **_environment(port, run_folder)}
                if two_backends:
                    env["GATEWAY_CONFIG"] = str(_two_backends(port, run_folder))
                env["BENCH_KEY"] = _prepare(env)
                totals[requests] = _count(requests, variant, env, run_folder / "callgrind.out")
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)
    return {
        "variant": variant,
        "backends": 2 if two_backends else 1,
        "instructions_100": totals[100],
        "instructions_400": totals[400],
        "per_request": (totals[400] - totals[100]) // 300,
    }


def _apply(variant: str) -> None:
    """Swap one kept reach for the public-API way of doing the same."""
    if variant == "talisman":  # flask-talisman's own hooks, headers rebuilt on every response
        import flask_talisman

        from gateway import compat

        compat.RememberingTalisman = flask_talisman.Talisman  # type: ignore[misc]  # the plain class
    elif variant == "begin":  # http.client's begin(): the email package parses the head
        import http.client

        from gateway.upstream import connection

        connection._stdlib_begin = http.client.HTTPResponse.begin
    elif variant == "pool":  # requests' Session.request for every call
        from gateway.upstream import client

        def send(
            self: Any, method: str, path: str, body: bytes | None, request_id: str, stream: bool, deadline: float | None = None
        ) -> Any:
            session = self._current_route().session
            headers = dict(self._static_headers)
            headers["X-Request-ID"] = request_id
            headers["Accept"] = "text/event-stream" if stream else "application/json"
            if body is not None:
                headers["Content-Type"] = "application/json"
            answer = session.request(
                method,
                self.config.base_url + path,
                data=body,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(self.config.connect_timeout, self.config.read_timeout),
            )
            return client.UpstreamResponse(answer.raw)

        client.UpstreamClient.send = send  # type: ignore[method-assign]  # the variant replaces the method
    elif variant == "getpid":  # prometheus-client's default process identifier
        from gateway import metrics

        metrics.process_id = os.getpid  # type: ignore[assignment]  # the variant uses the plain function


def inner(requests: int, variant: str) -> None:
    from gevent import monkey

    monkey.patch_all()
    import gc
    import io

    from werkzeug.test import EnvironBuilder

    _apply(variant)
    from gateway import create_app

    app = create_app()
    environ = EnvironBuilder(
        path=PATH, method="POST", data=BODY, content_type="application/json", headers=[("X-API-Key", os.environ["BENCH_KEY"])]
    ).get_environ()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    gc.collect()
    gc.freeze()
    for _ in range(requests):
        call = dict(environ)
        call["wsgi.input"] = io.BytesIO(BODY)
        answer = app(call, start_response)
        try:
            for _chunk in answer:
                pass
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()
    failed = [status for status in statuses if not status.startswith("200")]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {failed[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default="none")
    parser.add_argument("--two-backends", action="store_true", help="route the model to two backends (GATEWAY_CONFIG)")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.variant)
        return
    print(json.dumps(measure(args.variant, args.two_backends)), flush=True)


if __name__ == "__main__":
    main()
