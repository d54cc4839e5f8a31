"""The benchmark: the bench upstream measured directly, then through the gateway (and peers).

    python -m bench.run                       # what `make bench` runs
    python -m bench.run --targets direct,gateway,gateway-2b,gateway-redis,litellm,portkey --repeats 1 \
        --out bench/results/peers.json        # what `make bench-peers` runs

Placement on the 2-core machine: the target (gateway or peer) is pinned to core 0;
the bench upstream, wrk, and this process (the stream client, the samplers) to core 1.
For "direct" nothing runs on core 0: wrk and the upstream share core 1.

"gateway-2b" is "gateway" with a backends file (``GATEWAY_CONFIG``): two backends serving the
bench's model, both the bench upstream (the same process, so the upstream's share of core 1
is the same as for "gateway"), with the default routing (weighted power of two choices,
circuit breakers, retry budget). Against "gateway" it gives what routing costs per request
over the one-backend path.

"gateway-redis" is "gateway" with its quotas in the machine's own Redis
(``redis://127.0.0.1:6379/12``, a key prefix of its own for each run, its keys deleted
when the target stops; never FLUSHDB). With a shared store gunicorn.conf.py starts one
worker per core the process may use (what users get): pinned to core 0 here, one. Redis is the machine's service,
not ours to pin: its CPU is measured on its own (``store_cpu_ms_per_request``) and is
not counted as other processes' load on either core.

For each target, in one process lifetime: a warm-up, then wrk at each connection
count (repeated), a Server-Timing sample (gateway targets only), sequential streams timed
event by event, and rounds of many concurrent slow streams. Everything is written
to one JSON file; bench/report.py renders it.

Slow streams: each round starts N streams (200, 500, 1000) spread evenly over
``--slow-ramp-s`` seconds (default 2: stream i connects i * 2 / N s into the round),
and each lasts ~5 s (10 events 500 ms apart), so all N are open together; every
round records that as ``peak_open``. Every target (direct, gateway, peers) gets the
same arrival pattern. Why not all N in one instant: a burst of N connects measures
the one-process stream client's connection storm, not the target holding N streams:
the bench upstream measured directly, with nothing in between, shows a TTFB p99 of
~250 ms for 1000 simultaneous connects on the 2-core bench machine.
``--slow-ramp-s 0`` gives that burst back.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import paced, procs, streams, wrkrun
from bench.streams import percentile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RAW = RESULTS / "raw"
GATEWAY_VENV = ROOT / ".venv"
PEERS = ROOT / "bench" / ".peers"

TARGET_CORE = "0"
LOAD_CORE = "1"
HOST = "127.0.0.1"
PORTS = {"upstream": 9100, "gateway": 9101, "litellm": 9102, "portkey": 9103, "floor": 9104}
PATH = "/v1/chat/completions"
MODEL = "bench-model"
# Quotas on, but far above anything a run can reach.
HIGH_LIMIT = "1000000 per second"  # never reached; a short window keeps the moving window's list short
# gateway-redis: the machine's Redis, a database of the bench's own (its keys are deleted after the run)
REDIS_URI = "redis://127.0.0.1:6379/12"

LOAD_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread_pct": (max(values) - min(values)) / median * 100 if median else None,
        "n": len(values),
    }


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) != 0


def choose_ports(base: int) -> None:
    """Use ports base..base+4, or the next block of ten whose ports are all free."""
    for start in range(base, base + 200, 10):
        if all(port_free(start + i) for i in range(len(PORTS))):
            if start != base:
                log(f"ports {base}-{base + len(PORTS) - 1} are in use here; using {start}-{start + len(PORTS) - 1}")
            for i, name in enumerate(PORTS):
                PORTS[name] = start + i
            return
    raise SystemExit(f"no free block of {len(PORTS)} ports from {base}")


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    label: str
    port: int
    headers: dict[str, str]
    service: procs.Service | None  # None: "direct" (the upstream itself is measured)
    settings: dict = field(default_factory=dict)
    # a store the target uses but does not own (Redis): its processes' CPU is measured on its own
    store_pids: Callable[[], list[int]] | None = None
    # run once the target has stopped (deletes what it left in the store); returns what it did
    cleanup: Callable[[], dict] | None = None

    def url(self, path: str = PATH) -> str:
        return f"http://{HOST}:{self.port}{path}"


def start_upstream() -> procs.Service:
    port = PORTS["upstream"]
    if not port_free(port):
        raise SystemExit(f"port {port} is taken: stop whatever listens there first")
    service = procs.Service(
        "upstream",
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--host", HOST, "--port", str(port), "--chunks", "10", "--gap-ms", "20"],
        cores=LOAD_CORE,
        log=RAW / "upstream.log",
    )
    procs.wait_http(f"http://{HOST}:{port}/health", service=service, timeout=15)
    return service


def gateway_env(name: str = "gateway") -> dict[str, str]:
    """The gateway's environment; ``name`` names its SQLite file in RAW (one per target)."""
    return {
        "NODE_ENV": "production",
        "MASTER_API_KEY": secrets.token_urlsafe(48),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "AI_API_URL": f"http://{HOST}:{PORTS['upstream']}/v1/completions",
        "AI_PROXY_HOST": HOST,
        "AI_PROXY_PORT": str(PORTS["gateway"]),
        "RATE_LIMIT_GENERAL": HIGH_LIMIT,
        "RATE_LIMIT_AI": HIGH_LIMIT,
        "LOG_LEVEL": "INFO",
        # Every benchmark client connects from 127.0.0.1, as clients behind one proxy would.
        "MAX_CONNECTIONS_PER_ADDRESS": "0",
        # Managed keys and usage accounting on: a fresh SQLite file, migrated before start.
        "DATABASE_URL": f"sqlite:///{RAW / f'{name}.db'}",
        # never pick up a developer's .env: /dev/null is not a regular file, so it is skipped
        "AI_PROXY_ENV_FILE": "/dev/null",
    }


def effective_gateway_settings(env: dict[str, str]) -> dict:
    """The settings the gateway resolves from ``env`` (secrets replaced by their length)."""
    code = (
        "import json; from gateway.config import load; s = load(); "
        "print(json.dumps({k: getattr(s, k) for k in ('node_env', 'production', 'gateway_worker_class', "
        "'gateway_workers', 'worker_processes', 'gateway_worker_connections', 'worker_concurrency', "
        "'upstream_pool_size', "
        "'rate_limit_general', 'rate_limit_ai', 'rate_limit_storage_uri', 'log_level', 'upstream_base_url', "
        "'trusted_proxy_count', 'force_https', 'allowed_origins')}, default=list))"
    )
    full = dict(os.environ)
    full.update(env)
    # pinned as the gateway will be: the worker count follows the cores the process may use
    out = subprocess.run(
        ["taskset", "-c", TARGET_CORE, str(GATEWAY_VENV / "bin" / "python"), "-c", code],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings = json.loads(out)
    settings["master_api_key"] = f"<random, {len(env['MASTER_API_KEY'])} chars>"
    settings["jwt_secret"] = f"<random, {len(env['JWT_SECRET'])} chars>"
    settings["auth"] = "on (X-API-Key with the master key)"
    settings["logs"] = "one JSON line per request, INFO, to bench/results/raw/gateway.log"
    settings["server"] = "gunicorn -c gunicorn.conf.py wsgi:app (the shipped config)"
    return settings


def start_gateway(
    name: str = "gateway", label: str = "this gateway", extra_env: dict[str, str] | None = None, ready_path: str = "/health"
) -> Target:
    if not (GATEWAY_VENV / "bin" / "gunicorn").exists():
        raise SystemExit("the gateway's .venv is missing: run `make .venv/.installed` (make bench does)")
    port = PORTS["gateway"]
    if not port_free(port):
        raise SystemExit(f"port {port} is taken")
    env = {**gateway_env(name), **(extra_env or {})}
    settings = effective_gateway_settings(env)
    key = prepare_database(env)
    settings["auth"] = "on (X-API-Key with a managed key; its usage recorded to SQLite)"
    settings["logs"] = f"one JSON line per request, INFO, to bench/results/raw/{name}.log"
    service = procs.Service(
        name,
        [str(GATEWAY_VENV / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cores=TARGET_CORE,
        log=RAW / f"{name}.log",
        env=env,
        cwd=str(ROOT),
    )
    try:
        procs.wait_http(f"http://{HOST}:{port}{ready_path}", service=service, timeout=30)
    except BaseException:
        service.stop()
        raise
    headers = {"X-API-Key": key}
    return Target(name, label, port, headers, service, settings)


def start_gateway_2b() -> Target:
    """The gateway as ``gateway``, its model routed to two backends, both the bench upstream."""
    config = RAW / "gateway-2b.yaml"
    url = f"http://{HOST}:{PORTS['upstream']}/v1"
    config.write_text(
        "backends:\n"
        f"  - {{name: upstream-a, url: '{url}'}}\n"
        f"  - {{name: upstream-b, url: '{url}'}}\n"
        "models:\n"
        f"  - {{name: {MODEL}, deployments: [{{backend: upstream-a}}, {{backend: upstream-b}}]}}\n"
    )
    target = start_gateway("gateway-2b", "this gateway, two backends", {"GATEWAY_CONFIG": str(config)})
    target.settings["backends"] = (
        f"GATEWAY_CONFIG={config.relative_to(ROOT)}: two backends (both the bench upstream) serving {MODEL}, "
        "default routing (weighted power of two choices, 3 attempts, circuit breakers, retry budget)"
    )
    return target


def start_gateway_redis() -> Target:
    """The gateway as ``gateway``, with its quotas in Redis (db 12, a key prefix of this run's own)."""
    info = _redis("info")  # fails here, before anything starts, when Redis does not answer
    prefix = "bench-" + secrets.token_hex(4)  # gateway.config: letters, digits, '-' and '_'
    target = start_gateway(
        "gateway-redis",
        "this gateway, quotas in Redis",
        {"RATE_LIMIT_STORAGE_URI": REDIS_URI, "RATE_LIMIT_KEY_PREFIX": prefix},
        ready_path="/health/ready",
    )  # 200 only while the quota store answers
    try:
        pids = redis_pids(info.get("process_id"))
        if not pids:
            raise SystemExit("no redis-server process found in /proc: its CPU could not be measured")
        workers = _wait_workers(target, target.settings["worker_processes"])
    except BaseException:
        target.service.stop()
        _clean_redis(prefix)
        raise
    target.settings.update(
        {
            "rate_limit_key_prefix": prefix,
            "gateway_worker_processes_running": workers,
            "quota_store": (
                f"the machine's Redis {info.get('redis_version', '?')} on 127.0.0.1:6379, db 12 "
                f"(pid {', '.join(map(str, pids))}, not pinned: cores "
                f"{_affinity(pids[0])}); keys of this run deleted after it, never FLUSHDB"
            ),
            "server": "gunicorn -c gunicorn.conf.py wsgi:app (the shipped config: with a shared store, one "
            "worker per core the process may use), pinned to core 0",
        }
    )
    target.store_pids = lambda: [p for pid in pids for p in procs.tree(pid)]
    target.cleanup = lambda: _clean_redis(prefix)
    return target


def _wait_workers(target: Target, expected: int, timeout: float = 15.0) -> int:
    """Wait until gunicorn's master has ``expected`` workers; returns how many it has."""
    deadline = time.monotonic() + timeout
    while True:
        workers = len(target.service.pids()) - 1  # the tree minus the master
        if workers >= expected or time.monotonic() > deadline:
            if workers != expected:
                log(f"{target.name}: {workers} worker processes running, {expected} expected")
            return workers
        time.sleep(0.2)


def _affinity(pid: int) -> str:
    try:
        return ",".join(map(str, sorted(os.sched_getaffinity(pid))))
    except OSError:
        return "?"


def redis_pids(listening_pid: int | None = None) -> list[int]:
    """The redis-server serving REDIS_URI: the pid its INFO reports if /proc shows it as
    redis-server, otherwise every redis-server process on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "redis-server":
            found.append(int(entry))
    if listening_pid in found:
        return [listening_pid]
    return sorted(found)


# Run with the gateway's venv: it has redis-py (bench/.venv does not). SCAN + DEL of this run's keys only:
# flask-limiter's "LIMITS:LIMITER/<prefix>/..." and the gateway's own "<prefix>:...".
_REDIS_HELPER = """
import json, sys
import redis
client = redis.Redis.from_url(sys.argv[1], socket_timeout=5, socket_connect_timeout=5)
if sys.argv[2] == "info":
    print(json.dumps(client.info("server")))
else:
    pattern = f"*{sys.argv[3]}[:/]*"  # LIMITS:LIMITER/<prefix>/... and <prefix>:...
    deleted = 0
    batch = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) == 500:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    left = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
    print(json.dumps({"deleted": deleted, "left": left}))
"""


def _redis(*args: str) -> dict:
    done = subprocess.run(
        [str(GATEWAY_VENV / "bin" / "python"), "-c", _REDIS_HELPER, REDIS_URI, *args], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"Redis at {REDIS_URI} ({args[0]}): {tail}")
    return json.loads(done.stdout)


def _clean_redis(prefix: str) -> dict:
    """Delete the keys with this run's prefix from db 12 (SCAN + DEL, never FLUSHDB)."""
    try:
        result = _redis("clean", prefix)
    except (SystemExit, subprocess.SubprocessError, ValueError) as error:
        log(f"gateway-redis: could not delete the keys with prefix {prefix!r} from {REDIS_URI}: {error}")
        return {"prefix": prefix, "error": str(error)}
    log(f"gateway-redis: deleted {result['deleted']} keys with prefix {prefix!r} from {REDIS_URI}, {result['left']} left")
    return {"prefix": prefix, **result}


def prepare_database(env: dict[str, str]) -> str:
    """Migrate a fresh database and create the managed key the load uses; returns its secret."""
    url = env["DATABASE_URL"]
    assert url.startswith("sqlite:///"), url
    Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    full = {**os.environ, **env}
    flask = [str(GATEWAY_VENV / "bin" / "python"), "-m", "flask", "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], env=full, cwd=ROOT, check=True, capture_output=True)
    created = subprocess.run(
        [*flask, "keys", "create", "--name", "bench", "--ai-limit", HIGH_LIMIT, "--general-limit", HIGH_LIMIT],
        env=full,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(created)["secret"]


def start_litellm() -> Target:
    binary = PEERS / "litellm" / "bin" / "litellm"
    if not binary.exists():
        raise SystemExit("LiteLLM is not installed: run bench/peers/install.sh (make bench-peers does)")
    port = PORTS["litellm"]
    master = "sk-" + secrets.token_urlsafe(32)
    config = RAW / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://{HOST}:{PORTS['upstream']}/v1\n"
        "      api_key: bench-not-used\n"
        "general_settings:\n"
        "  master_key: os.environ/BENCH_LITELLM_MASTER_KEY\n"
    )
    env = {
        "BENCH_LITELLM_MASTER_KEY": master,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    service = procs.Service(
        "litellm",
        [str(binary), "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"],
        cores=TARGET_CORE,
        log=RAW / "litellm.log",
        env=env,
        cwd=str(RAW),
    )
    headers = {"Authorization": f"Bearer {master}"}
    procs.wait_http(
        f"http://{HOST}:{port}{PATH}",
        method="POST",
        body=json.dumps(LOAD_BODY).encode(),
        headers={**headers, "Content-Type": "application/json"},
        timeout=240,
        service=service,
    )
    version = subprocess.run(
        [str(PEERS / "litellm" / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    settings = {
        "version": f"litellm {version}",
        "server": "litellm --config ... --num_workers 1",
        "auth": "on (master key, no database)",
        "logs": "defaults, to bench/results/raw/litellm.log",
    }
    return Target("litellm", f"LiteLLM proxy {version}", port, headers, service, settings)


def start_portkey() -> Target:
    package = PEERS / "portkey" / "node_modules" / "@portkey-ai" / "gateway"
    if not (package / "build" / "start-server.js").exists():
        raise SystemExit("Portkey's gateway is not installed: run bench/peers/install.sh (make bench-peers does)")
    port = PORTS["portkey"]
    service = procs.Service(
        "portkey",
        ["node", str(package / "build" / "start-server.js"), f"--port={port}", "--headless"],
        cores=TARGET_CORE,
        log=RAW / "portkey.log",
        env={"NODE_ENV": "production"},
        cwd=str(RAW),
    )
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://{HOST}:{PORTS['upstream']}/v1",
        "Authorization": "Bearer bench-not-used",
    }
    procs.wait_http(
        f"http://{HOST}:{port}{PATH}",
        method="POST",
        body=json.dumps(LOAD_BODY).encode(),
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
        service=service,
    )
    version = json.loads((package / "package.json").read_text())["version"]
    hono = json.loads((PEERS / "portkey" / "node_modules" / "@hono" / "node-server" / "package.json").read_text())
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    settings = {
        "version": f"@portkey-ai/gateway {version} (@hono/node-server {hono['version']}), node {node}",
        "server": "node build/start-server.js --headless, NODE_ENV=production",
        "auth": "none (the open-source gateway has no client auth; provider headers per request)",
        "logs": "defaults, to bench/results/raw/portkey.log",
    }
    return Target("portkey", f"Portkey gateway {version}", port, headers, service, settings)


STARTERS = {
    "gateway": start_gateway,
    "gateway-2b": start_gateway_2b,
    "gateway-redis": start_gateway_redis,
    "litellm": start_litellm,
    "portkey": start_portkey,
}


# --------------------------------------------------------------------------- measurements


def measured_pids(target: Target, upstream: procs.Service) -> list[int]:
    return (target.service or upstream).pids()


def store_pids(target: Target) -> list[int]:
    """The processes of the target's store (Redis for gateway-redis); none for the others."""
    return target.store_pids() if target.store_pids else []


def load_runs(target: Target, upstream: procs.Service, sampler: procs.RssSampler, args: argparse.Namespace, body_file: Path) -> dict:
    out: dict = {}
    for connections in args.conns:
        runs = []
        for repeat in range(args.repeats):
            figures = None
            for attempt in range(1 + args.retries):
                figures = one_load_run(target, upstream, sampler, connections, args, body_file)
                if figures["foreign"] <= args.max_foreign:
                    break
                core = TARGET_CORE if target.service else LOAD_CORE
                log(
                    f"  {target.name} c={connections} #{repeat + 1}: other processes used "
                    f"{figures['foreign']:.2f} of core {core} during the run; "
                    + ("measuring again" if attempt < args.retries else "keeping it, marked disturbed")
                )
            assert figures is not None
            figures["attempts"] = attempt + 1
            raw = figures.pop("raw")
            (RAW / f"wrk-{target.name}-c{connections}-r{repeat + 1}.txt").write_text(raw)
            runs.append(figures)
            store = (
                f", store cpu {figures['store_cpu_ms_per_request'] or 0:.3f} ms/req" if "store_cpu_ms_per_request" in figures else ""
            )
            log(
                f"  {target.name} c={connections} #{repeat + 1}: {figures['rps']:.0f} req/s, "
                f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
                f"cpu {figures['cpu_ms_per_request'] or 0:.3f} ms/req{store}, errors {figures['error_count']}"
            )
        keys = [
            "rps",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "cpu_ms_per_request",
            "rss_peak_mb",
            "cpu_utilisation",
            "upstream_cpu_utilisation",
            "foreign",
            "foreign_core0",
            "foreign_core1",
        ]
        if target.store_pids:
            keys += ["store_cpu_ms_per_request", "store_cpu_utilisation"]
        summary = {key: spread([run.get(key) for run in runs]) for key in keys}
        summary["disturbed_runs"] = sum(run["foreign"] > args.max_foreign for run in runs)
        summary["errors"] = sum(run["error_count"] for run in runs)
        summary["requests"] = sum(run["requests"] for run in runs)
        out[str(connections)] = {"runs": runs, "summary": summary}
    return out


def one_load_run(
    target: Target, upstream: procs.Service, sampler: procs.RssSampler, connections: int, args: argparse.Namespace, body_file: Path
) -> dict:
    """One wrk run with the target's CPU, memory, and the other load on core 0 during it.

    With a store (Redis for gateway-redis) its processes' CPU is measured too, apart from
    the target's: ``store_cpu_*``. The store is not pinned, so its CPU time is not counted
    as other processes' load on either core (it may have run on either).
    """
    pids = measured_pids(target, upstream)
    upstream_pids = upstream.pids()
    store = store_pids(target)
    cpu_before = procs.cpu_seconds(pids)
    upstream_before = procs.cpu_seconds(upstream_pids)
    store_before = procs.cpu_seconds(store)
    cores_before = procs.core_busy_seconds()
    ours_before = _own_and_children_cpu()
    sampler.reset_peak()
    figures = wrkrun.run(
        target.url(), connections=connections, duration_s=args.duration, body_file=body_file, headers=target.headers, core=LOAD_CORE
    )
    cores_after = procs.core_busy_seconds()
    ours = _own_and_children_cpu() - ours_before  # this process and wrk, both on core 1
    cpu = procs.cpu_seconds(pids) - cpu_before
    upstream_cpu = procs.cpu_seconds(upstream_pids) - upstream_before
    store_cpu = procs.cpu_seconds(store) - store_before
    elapsed = figures["elapsed_s"]
    core0 = (cores_after[int(TARGET_CORE)] - cores_before[int(TARGET_CORE)]) / elapsed
    figures["cpu_s"] = cpu
    figures["cpu_ms_per_request"] = cpu * 1000 / figures["requests"] if figures["requests"] else None
    figures["cpu_utilisation"] = cpu / elapsed
    figures["upstream_cpu_utilisation"] = upstream_cpu / elapsed
    if target.store_pids:
        figures["store_cpu_s"] = store_cpu
        figures["store_cpu_ms_per_request"] = store_cpu * 1000 / figures["requests"] if figures["requests"] else None
        figures["store_cpu_utilisation"] = store_cpu / elapsed
    figures["rss_peak_mb"] = sampler.peak / 2**20
    # the target is the only process of ours on core 0 (nothing of ours for "direct");
    # core 1 holds the upstream, wrk and this process
    core1 = (cores_after[int(LOAD_CORE)] - cores_before[int(LOAD_CORE)]) / elapsed
    figures["core0_busy"] = core0
    figures["core1_busy"] = core1
    store_share = store_cpu / elapsed  # 0 without a store
    figures["foreign_core0"] = max(0.0, core0 - (figures["cpu_utilisation"] if target.service else 0.0) - store_share)
    figures["foreign_core1"] = max(0.0, core1 - (upstream_cpu + ours) / elapsed - store_share)
    # the core that limits this run: the target's, or for "direct" the upstream's and wrk's
    figures["foreign"] = figures["foreign_core0"] if target.service else figures["foreign_core1"]
    return figures


def _own_and_children_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_TIMING = re.compile(r"(\w+);dur=([\d.]+)")


def server_timing(target: Target, args: argparse.Namespace) -> dict:
    """Median Server-Timing values over sequential requests, one sample per round."""
    body = json.dumps(LOAD_BODY).encode()
    headers = {**target.headers, "Content-Type": "application/json"}
    rounds = []
    for _ in range(args.repeats):
        conn = http.client.HTTPConnection(HOST, target.port, timeout=10)
        gateway, upstream, client = [], [], []
        for _ in range(args.timing_samples):
            started = time.perf_counter()
            conn.request("POST", PATH, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            client.append((time.perf_counter() - started) * 1000)
            values = dict(_TIMING.findall(response.getheader("Server-Timing", "")))
            if "gateway" in values:
                gateway.append(float(values["gateway"]))
            if "upstream" in values:
                upstream.append(float(values["upstream"]))
        conn.close()
        rounds.append(
            {
                "samples": len(gateway),
                "gateway_ms": statistics.median(gateway) if gateway else None,
                "upstream_ms": statistics.median(upstream) if upstream else None,
                "own_ms": statistics.median([g - u for g, u in zip(gateway, upstream, strict=False)]) if upstream else None,
                "client_ms": statistics.median(client),
            }
        )
    return {
        "rounds": rounds,
        "summary": {key: spread([r[key] for r in rounds]) for key in ("gateway_ms", "upstream_ms", "own_ms", "client_ms")},
    }


def stream_body(chunks: int, gap_ms: float) -> bytes:
    # the stream's shape travels in the message text: every gateway passes that on unchanged
    text = f"Count. bench_chunks={chunks} bench_gap_ms={gap_ms:g}"
    return json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}).encode()


def stream_latency(target: Target, args: argparse.Namespace) -> dict:
    """Sequential streams: time to first event and delivery delay of every event."""
    body = stream_body(args.stream_chunks, args.stream_gap_ms)
    rounds = []
    for _ in range(args.repeats):
        results = asyncio.run(streams.sequential(HOST, target.port, PATH, target.headers, body, args.stream_count))
        ttfb = [r.ttfb_ms for r in results if r.ttfb_ms is not None]
        delays = [d for r in results for d in r.delays_ms]
        failures = [r for r in results if not r.ok(args.stream_chunks)]
        rounds.append(
            {
                "streams": len(results),
                "errors": len(failures),
                "error_kinds": dict(Counter(_error_kind(r, args.stream_chunks) for r in failures).most_common(5)),
                "ttfb_p50_ms": percentile(ttfb, 50),
                "ttfb_p99_ms": percentile(ttfb, 99),
                "chunk_delay_p50_ms": percentile(delays, 50),
                "chunk_delay_p99_ms": percentile(delays, 99),
                "stamped_events": len(delays),
            }
        )
    summary = {
        key: spread([r[key] for r in rounds]) for key in ("ttfb_p50_ms", "ttfb_p99_ms", "chunk_delay_p50_ms", "chunk_delay_p99_ms")
    }
    summary["errors"] = sum(r["errors"] for r in rounds)
    log(
        f"  {target.name} streams: ttfb p50 {summary['ttfb_p50_ms']['median']}, chunk delay p50 "
        f"{summary['chunk_delay_p50_ms']['median']} ms, errors {summary['errors']}"
    )
    return {"chunks": args.stream_chunks, "gap_ms": args.stream_gap_ms, "rounds": rounds, "summary": summary}


def _error_kind(result: streams.StreamResult, expected: int) -> str:
    if result.error:
        return re.sub(r"\d+", "N", result.error)[:80]
    if result.status != 200:
        return f"HTTP {result.status}"
    if not result.done:
        return "no [DONE]"
    return f"{len(result.delays_ms)} of {expected} upstream events"


def slow_streams(target: Target, upstream: procs.Service, sampler: procs.RssSampler, args: argparse.Namespace) -> dict:
    """Many concurrent slow streams: errors, TTFB, peak open streams and memory, round after round.

    Each round starts its N streams spread evenly over ``args.slow_ramp_s`` (0: all at once);
    a stream lasts ~chunks x gap, longer than the ramp, so all N are open together.
    """
    body = stream_body(args.slow_chunks, args.slow_gap_ms)
    expected_s = args.slow_chunks * args.slow_gap_ms / 1000
    out: dict = {}
    for level in args.slow_levels:
        rounds = []
        for round_no in range(args.slow_rounds):
            pids = measured_pids(target, upstream)
            store = store_pids(target)
            rss_before = procs.rss_bytes(pids)
            sampler.reset_peak()
            cpu_before = procs.cpu_seconds(pids) if target.service else 0.0
            store_before = procs.cpu_seconds(store)
            cores_before = procs.core_busy_seconds()
            started = time.monotonic()
            results = asyncio.run(
                streams.concurrent(
                    HOST, target.port, PATH, target.headers, body, level, timeout_s=expected_s + 30, ramp_s=args.slow_ramp_s
                )
            )
            wall = time.monotonic() - started
            own = (procs.cpu_seconds(pids) - cpu_before) if target.service else 0.0
            store_cpu = procs.cpu_seconds(store) - store_before
            core0 = procs.core_busy_seconds()[int(TARGET_CORE)] - cores_before[int(TARGET_CORE)]
            peak = sampler.peak
            time.sleep(1.0)
            rss_after = procs.rss_bytes(measured_pids(target, upstream))
            ttfb = [r.ttfb_ms for r in results if r.ttfb_ms is not None]
            totals = [r.total_ms for r in results]
            failures = [r for r in results if not r.ok(args.slow_chunks)]
            round_result = {
                "streams": level,
                "peak_open": streams.peak_open(results),
                "errors": len(failures),
                "error_kinds": dict(Counter(_error_kind(r, args.slow_chunks) for r in failures).most_common(5)),
                "ttfb_p50_ms": percentile(ttfb, 50),
                "ttfb_p99_ms": percentile(ttfb, 99),
                "duration_p50_ms": percentile(totals, 50),
                "duration_max_ms": max(totals) if totals else None,
                "wall_s": wall,
                "target_cpu_s": own,
                "foreign_core0": max(0.0, core0 - own - store_cpu) / wall,
                "rss_before_mb": rss_before / 2**20,
                "rss_peak_mb": peak / 2**20,
                "rss_after_mb": rss_after / 2**20,
            }
            if target.store_pids:
                round_result["store_cpu_s"] = store_cpu
            rounds.append(round_result)
            log(
                f"  {target.name} {level} slow streams #{round_no + 1}: peak open {round_result['peak_open']}, "
                f"errors {len(failures)} "
                f"{round_result['error_kinds'] or ''} ttfb p50 {round_result['ttfb_p50_ms'] or 0:.1f} ms "
                f"p99 {round_result['ttfb_p99_ms'] or 0:.1f} ms, rss {rss_before / 2**20:.1f} -> "
                f"{peak / 2**20:.1f} -> {rss_after / 2**20:.1f} MB"
            )
        summary = {key: spread([r[key] for r in rounds]) for key in ("ttfb_p50_ms", "ttfb_p99_ms", "duration_p50_ms", "rss_peak_mb")}
        summary["errors"] = sum(r["errors"] for r in rounds)
        summary["peak_open"] = min(r["peak_open"] for r in rounds)
        summary["rss_after_first_mb"] = rounds[0]["rss_after_mb"]
        summary["rss_after_last_mb"] = rounds[-1]["rss_after_mb"]
        out[str(level)] = {"rounds": rounds, "summary": summary}
    return out


def measure(target: Target, upstream: procs.Service, args: argparse.Namespace, body_file: Path) -> dict:
    pids = measured_pids(target, upstream)
    result: dict = {
        "label": target.label,
        "settings": target.settings,
        "processes": len(pids),
        "rss_idle_mb": procs.rss_bytes(pids) / 2**20,
    }
    sampler = procs.RssSampler((target.service or upstream).pid)
    try:
        log(f"{target.name}: warm-up ({args.warmup} s)")
        wrkrun.run(target.url(), connections=16, duration_s=args.warmup, body_file=body_file, headers=target.headers, core=LOAD_CORE)
        result["rss_after_warmup_mb"] = procs.rss_bytes(measured_pids(target, upstream)) / 2**20
        log(f"{target.name}: load ({args.repeats} x {args.duration} s at {args.conns} connections)")
        result["load"] = load_runs(target, upstream, sampler, args, body_file)
        if target.name in ("gateway", "gateway-2b", "gateway-redis"):
            result["server_timing"] = server_timing(target, args)
            log(
                f"  server-timing: {result['server_timing']['summary']['gateway_ms']['median']} ms gateway, "
                f"{result['server_timing']['summary']['upstream_ms']['median']} ms upstream"
            )
        log(f"{target.name}: streams ({args.stream_count} sequential, {args.stream_chunks} events {args.stream_gap_ms} ms apart)")
        result["stream_latency"] = stream_latency(target, args)
        if args.slow_levels:
            log(
                f"{target.name}: concurrent slow streams {args.slow_levels} x {args.slow_rounds} rounds, "
                f"each level's streams started over {args.slow_ramp_s:g} s"
            )
            result["slow_streams"] = slow_streams(target, upstream, sampler, args)
        result["rss_end_mb"] = procs.rss_bytes(measured_pids(target, upstream)) / 2**20
    finally:
        sampler.stop()
    return result


# --------------------------------------------------------------------------- machine


def _first_line(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M).group(1))
    versions = subprocess.run(
        [
            str(GATEWAY_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json, platform; print(json.dumps({'python': platform.python_version(), "
            "**{n: m.version(n) for n in ('flask', 'werkzeug', 'gunicorn', 'gevent', 'requests', 'urllib3', "
            "'flask-limiter', 'flask-cors', 'flask-talisman', 'pyjwt')}}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway", "wsgi.py", "gunicorn.conf.py", "requirements.txt"],
            capture_output=True,
            text=True,
        ).stdout
    )
    return {
        "nproc": _first_line(["nproc"]),
        "cpu_model": model.group(1).strip() if model else "unknown",
        "cpu_mhz": mhz.group(1).strip() if mhz else "unknown",
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "gateway_versions": json.loads(versions),
        "wrk": wrkrun.wrk_version(),
        "bench_python": platform.python_version(),
        "commit": commit + ("+dirty" if dirty else ""),
        "placement": {
            "target": f"core {TARGET_CORE}",
            "upstream": f"core {LOAD_CORE}",
            "wrk": f"core {LOAD_CORE}",
            "stream client": f"core {LOAD_CORE}",
        },
    }


# --------------------------------------------------------------------------- paced streams

PACED_TARGETS = ("direct", "gateway", "portkey", "litellm")


def interleaved_short_calls(started: dict[str, Target], args: argparse.Namespace) -> dict:
    """Short non-streamed calls, this gateway and Portkey alternately, warm (after the paced
    streams), ``--guard-rounds`` wrk runs of ``--guard-seconds`` each at 16 connections: the
    req/s ratio of each pair, taken minutes apart at most, is the guard's figure."""
    names = [name for name in ("gateway", "portkey") if name in started]
    if len(names) < 2:
        return {}
    body_file = RAW / "body.json"
    rounds = []
    for round_no in range(args.guard_rounds):
        row = {}
        for name in names if round_no % 2 == 0 else names[::-1]:
            target = started[name]
            pids = target.service.pids()
            cpu_before = procs.cpu_seconds(pids)
            cores_before = procs.core_busy_seconds()
            figures = wrkrun.run(
                target.url(),
                connections=16,
                duration_s=args.guard_seconds,
                body_file=body_file,
                headers=target.headers,
                core=LOAD_CORE,
            )
            cpu = procs.cpu_seconds(pids) - cpu_before
            core0 = procs.core_busy_seconds()[int(TARGET_CORE)] - cores_before[int(TARGET_CORE)]
            row[name] = {
                "rps": figures["rps"],
                "p99_ms": figures["p99_ms"],
                "errors": figures["error_count"],
                "cpu_ms_per_request": cpu * 1000 / figures["requests"] if figures["requests"] else None,
                "foreign_core0": max(0.0, core0 - cpu) / figures["elapsed_s"],
            }
        row["ratio"] = row["gateway"]["rps"] / row["portkey"]["rps"] if row["portkey"]["rps"] else None
        rounds.append(row)
        log(
            f"short calls #{round_no + 1}: gateway {row['gateway']['rps']:.0f} req/s, portkey {row['portkey']['rps']:.0f} req/s "
            f"({row['ratio'] or 0:.2f}x), other load on core 0 "
            f"{row['gateway']['foreign_core0']:.2f}/{row['portkey']['foreign_core0']:.2f}"
        )
    ratios = sorted(r["ratio"] for r in rounds if r["ratio"])
    return {
        "connections": 16,
        "seconds": args.guard_seconds,
        "rounds": rounds,
        "ratio_median": statistics.median(ratios) if ratios else None,
    }


def paced_phases(names: list[str], upstream: procs.Service, phases: set[str], args: argparse.Namespace) -> dict:
    """The paced streams (bench/paced.py) of every target at once, then the hold."""
    chosen = [name for name in PACED_TARGETS if name in names]
    started: dict[str, Target] = {}
    out: dict = {}
    try:
        for name in chosen:
            if name == "direct":
                started[name] = Target("direct", "upstream direct", PORTS["upstream"], {}, None, {})
            else:
                log(f"paced: starting {name}")
                started[name] = STARTERS[name]()
        out["idle_rss_mb"] = {
            name: procs.rss_bytes(target.service.pids()) / 2**20 for name, target in started.items() if target.service
        }
        if "paced" in phases:
            elapsed = time.monotonic()
            out.update(paced.phase(started, upstream, args, log))
            out["elapsed_s"] = round(time.monotonic() - elapsed, 1)
            out["short_calls"] = interleaved_short_calls(started, args)
        if "hold" in phases and args.hold_streams:
            out["hold"] = {}
            for name in args.hold_targets.split(","):
                if name in started:
                    elapsed = time.monotonic()
                    out["hold"][name] = paced.hold(started[name], upstream, args, log)
                    out["hold"][name]["elapsed_s"] = round(time.monotonic() - elapsed, 1)
    finally:
        for target in started.values():
            if target.service is not None:
                target.service.stop()
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser = argparse.ArgumentParser(description="direct vs gateway (vs peers) benchmark")
    parser.add_argument(
        "--targets",
        default="direct,gateway,gateway-2b,gateway-redis",
        help="any of direct,gateway,gateway-2b,gateway-redis,litellm,portkey",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each figure")
    parser.add_argument("--conns", type=ints, default=[1, 16, 64], help="wrk connection counts")
    parser.add_argument("--timing-samples", type=int, default=200, help="requests per Server-Timing sample")
    parser.add_argument("--stream-count", type=int, default=30, help="sequential streams per round")
    parser.add_argument("--stream-chunks", type=int, default=10)
    parser.add_argument("--stream-gap-ms", type=float, default=20.0)
    parser.add_argument("--slow-levels", type=ints, default=[200, 500, 1000], help="concurrent slow streams")
    parser.add_argument("--slow-rounds", type=int, default=3)
    parser.add_argument("--slow-chunks", type=int, default=10)
    parser.add_argument("--slow-gap-ms", type=float, default=500.0)
    parser.add_argument(
        "--slow-ramp-s",
        type=float,
        default=2.0,
        help="spread each round's N slow-stream connects evenly over this many seconds (stream i "
        "at i * ramp / N s), for every target alike; keep it below the stream's length "
        "(chunks x gap, 5 s) so all N are open together. 0: all N connect in one instant, "
        "which measures the client's connection storm (the upstream alone shows ~250 ms "
        "TTFB p99 for 1000 simultaneous connects here) rather than the target",
    )
    parser.add_argument("--port-base", type=int, default=9100, help="first of five local ports")
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="other processes' use of the limiting core (in cores) above which a wrk run is repeated",
    )
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a disturbed wrk run")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep what --out holds and replace only the phases run now (e.g. --phases paced --merge)",
    )
    parser.add_argument(
        "--phases",
        default="load,paced,hold",
        help="any of load (each target alone: wrk, sequential and slow streams), paced (paced streams, "
        "direct, gateway, litellm, portkey interleaved), hold (1000 paced streams for a minute)",
    )
    paced.add_arguments(parser, ints)
    parser.add_argument("--guard-rounds", type=int, default=4, help="interleaved short-call runs per target after the paced streams")
    parser.add_argument("--guard-seconds", type=int, default=8)
    args = parser.parse_args(argv)
    if args.slow_ramp_s < 0:
        parser.error("--slow-ramp-s must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t != "direct" and t not in STARTERS]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}")
    wrkrun.wrk_path()
    if "gateway-redis" in targets:
        _redis("info")  # no Redis: stop now rather than after the targets before it
    choose_ports(args.port_base)
    machine = machine_info()  # before pinning this process: nproc reports the affinity mask
    # 1000 client sockets here, 2000 in the gateway (inherited by the services started below)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    RAW.mkdir(parents=True, exist_ok=True)  # files in it are overwritten run by run
    body_file = RAW / "body.json"
    body_file.write_text(json.dumps(LOAD_BODY))

    started = time.time()
    report: dict = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "config": {
            "targets": targets,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "connections": args.conns,
            "wrk": "wrk -t1 -c<N> -d<duration> --latency -s bench/wrk/post.lua",
            "request": {"method": "POST", "path": PATH, "body": LOAD_BODY},
            "timing_samples": args.timing_samples,
            "stream_latency": {"count": args.stream_count, "chunks": args.stream_chunks, "gap_ms": args.stream_gap_ms},
            "slow_streams": {
                "levels": args.slow_levels,
                "rounds": args.slow_rounds,
                "chunks": args.slow_chunks,
                "gap_ms": args.slow_gap_ms,
                "ramp_s": args.slow_ramp_s,
            },
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "max_foreign": args.max_foreign,
            "retries": args.retries,
        },
        "targets": {},
    }
    phases = set(args.phases.split(","))
    report["config"]["phases"] = sorted(phases)
    upstream = start_upstream()
    try:
        for name in targets if "load" in phases else []:
            if name == "direct":
                target = Target(
                    "direct", "upstream direct", PORTS["upstream"], {}, None, {"server": "bench/upstream.py (asyncio, one process)"}
                )
            else:
                log(f"{name}: starting")
                target = STARTERS[name]()
            try:
                report["targets"][name] = measure(target, upstream, args, body_file)
            finally:
                if target.service is not None:
                    target.service.stop()
                if target.cleanup is not None:  # after the stop: nothing writes to the store any more
                    cleaned = target.cleanup()
                    if name in report["targets"]:
                        report["targets"][name]["store_cleanup"] = cleaned
        if phases & {"paced", "hold"}:
            report["paced"] = paced_phases(targets, upstream, phases, args)
    finally:
        upstream.stop()
    report["elapsed_s"] = round(time.time() - started, 1)
    out = Path(args.out)
    if args.merge and out.exists():
        kept = json.loads(out.read_text())
        if "load" not in phases:
            report["targets"] = kept.get("targets", {})
            report["elapsed_s"] = kept.get("elapsed_s", report["elapsed_s"])
        if not phases & {"paced", "hold"}:
            report["paced"] = kept.get("paced")
        elif "paced" in report and "hold" not in phases and kept.get("paced", {}).get("hold"):
            report["paced"]["hold"] = kept["paced"]["hold"]
        report["merged"] = {"phases_run_now": sorted(phases), "generated_before": kept.get("generated")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} in {report['elapsed_s']} s")


if __name__ == "__main__":
    main()
