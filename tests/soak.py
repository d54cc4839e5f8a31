"""Soak: mixed traffic against the gateway for a bounded time, watching each worker's memory and descriptors.

``make soak`` (``SOAK_SECONDS``, default 1200) runs ``python -m tests.soak``. It starts the
fake upstream and the gateway under gunicorn with the shipped gunicorn.conf.py: two workers
on Redis quotas (``--storage memory`` for one worker on ``memory://``), usage on a SQLite
file (``--database-url`` for another database), quotas made large (quotas are tested
elsewhere). Client threads then send, to 127.0.0.1 only, a mix of non-streamed AI calls,
streams read to their end, streams dropped after their first event, admin calls (create,
list, revoke keys; the usage report), each caller's usage, models, ``/``, ``/health`` and
``/openapi.json``; with the master key and with managed keys.

Every few seconds it samples each worker's resident memory (``VmRSS`` in
``/proc/<pid>/status``) and open descriptors (``/proc/<pid>/fd``). Traffic pauses at the
end of the warm-up and at the end (keep-alive connections close) for a quiet sample, the
baseline and the final one. It fails (exit 1) unless:

- the usage table holds one row per AI response the clients received, matched by the
  request id each AI call sends (read after a graceful stop, which flushes the usage
  queues); a 401 for a key another client thread has just revoked rightly has none;
- each worker's RSS grew by less than ``--rss-bound-mb`` (5 MB) between the two quiet samples;
- no worker holds more descriptors at the end than at the baseline;
- no worker was restarted (same pids from start to end), no request failed at the socket,
  and no answer was a 5xx.

It prints a table and writes ``--out`` (docs/soak.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PLENTY = "100000000 per minute"
REDIS_URL = "redis://127.0.0.1:6379/13"
KEY_CREATE_SECONDS = 2.0
# AI answers that rightly get no usage row: the caller was refused before the AI view took the
# request in (a key revoked by another client thread between choosing it and using it: 401).
NO_ROW_STATUSES = frozenset({401})


# Kept-alive upstream connections per worker (UPSTREAM_POOL_SIZE), and the most pooled
# connections of one kind a worker may hold at the quiet samples without counting as a leak.
UPSTREAM_POOL = 10
POOL_BOUND = UPSTREAM_POOL
POOLED_KINDS = ("tcp upstream", "tcp redis", "tcp postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(url_port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, url_port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                conn.close()
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"soak: nothing answers {path} on port {url_port} within {timeout:.0f}s")


# --- the processes ------------------------------------------------------------------------
def worker_pids(arbiter: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == arbiter:
            found.append(int(stat.parent.name))
    return sorted(found)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tcp_peers() -> dict[str, tuple[int, int]]:
    """socket inode -> (local port, remote port), for every TCP socket on the machine."""
    peers = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            peers[cols[9]] = (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16))
    return peers


def fd_kinds(pid: int, ports: dict[int, str]) -> Counter:
    """What a process's descriptors are: files, pipes, sockets by peer (``ports`` names them)."""
    peers = _tcp_peers()
    kinds: Counter = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            local, remote = peers.get(target[8:-1], (0, 0))
            kinds[f"tcp {ports.get(remote) or ports.get(local) or 'other'}" if local else "socket (unix/other)"] += 1
        elif target.startswith(("pipe:", "anon_inode:")):
            kinds[target.split(":")[0] + (":" + target.split(":", 1)[1] if target.startswith("anon") else "")] += 1
        else:
            kinds["file " + Path(target).suffix if Path(target).suffix else "file"] += 1
    return kinds


@dataclass
class Sample:
    at: float  # seconds since traffic started
    pid: int
    rss_kb: int
    fds: int
    quiet: str = ""  # "baseline" / "final" for the samples taken with traffic paused
    kinds: Counter | None = None  # what the descriptors are (quiet samples only)


# --- the clients ----------------------------------------------------------------------------
@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    kinds: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    ai_responses: int = 0  # AI requests that got a status line
    # request id -> (kind, status) of each AI answer: each should be one usage row, unless the
    # answer is a refusal that rightly gets none (see NO_ROW_STATUSES)
    ai_answers: dict[str, tuple[str, int]] = field(default_factory=dict)
    socket_errors: list[str] = field(default_factory=list)

    def count(self, kind: str, status: int, request_id: str | None = None) -> None:
        with self.lock:
            self.kinds[kind] += 1
            self.statuses[status] += 1
            if request_id is not None:
                self.ai_responses += 1
                self.ai_answers[request_id] = (kind, status)

    def expected_rows(self) -> set[str]:
        """The request ids that must each have one usage row."""
        return {rid for rid, (_, status) in self.ai_answers.items() if status not in NO_ROW_STATUSES}

    def failed(self, kind: str, error: BaseException) -> None:
        with self.lock:
            self.kinds[kind + " (socket error)"] += 1
            if len(self.socket_errors) < 20:
                self.socket_errors.append(f"{kind}: {type(error).__name__}: {error}")


class Traffic:
    """Client threads sending the mix until told to stop; they pause while ``running`` is clear."""

    def __init__(self, port: int, master_key: str, threads: int, seed: int, churn: bool = True) -> None:
        self.port = port
        self.churn = churn  # keys keep being created and revoked; else a fixed set of them
        self.master = {"X-API-Key": master_key}
        self.tally = Tally()
        self.running = threading.Event()
        self.stopping = threading.Event()
        self.idle = threading.Semaphore(0)
        self.keys: list[tuple[str, str]] = []  # (id, secret) of live managed keys
        self.keys_lock = threading.Lock()
        self.last_created = 0.0
        self.threads = [threading.Thread(target=self._loop, args=(random.Random(seed + i),), daemon=True) for i in range(threads)]

    # One request on a connection of its own (keep-alive is exercised by the pause/quiet logic
    # and by gunicorn's keep-alive timeout, not needed here).
    def _call(
        self, kind: str, method: str, path: str, body: object = None, headers: dict | None = None, ai: bool = False, stream: str = ""
    ) -> dict | None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        request_id = f"soak-{secrets.token_hex(8)}" if ai else None
        try:
            data = json.dumps(body).encode() if body is not None else None
            sent = dict(headers or {})
            if request_id is not None:
                sent["X-Request-ID"] = request_id  # the gateway keeps a safe id: it is the usage row's request_id
            if data is not None:
                sent["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            if stream == "drop":
                response.read1(1024)  # the first event, then hang up mid-stream
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                self.tally.count(kind, response.status, request_id)
                return None
            payload = response.read()
            self.tally.count(kind, response.status, request_id)
            if response.headers.get_content_type() == "application/json" and payload:
                return json.loads(payload)
            return None
        except (OSError, http.client.HTTPException) as error:
            self.tally.failed(kind, error)
            return None
        finally:
            conn.close()

    def _may_create_key(self) -> bool:
        """At most one new key per KEY_CREATE_SECONDS: keys come and go, but at an operator's pace."""
        with self.keys_lock:
            now = time.monotonic()
            if now - self.last_created < KEY_CREATE_SECONDS:
                return False
            self.last_created = now
            return True

    def _some_key(self, rng: random.Random) -> dict[str, str]:
        with self.keys_lock:
            if self.keys and rng.random() < 0.5:
                return {"X-API-Key": rng.choice(self.keys)[1]}
        return self.master

    def _admin(self, rng: random.Random) -> None:
        roll = rng.random()
        with self.keys_lock:
            live = len(self.keys)
        fixed = not self.churn and live >= 8  # without churn: eight keys, made first, kept
        if roll < 0.4 and live < 12 and not fixed and self._may_create_key():
            created = self._call(
                "admin create key",
                "POST",
                "/admin/keys",
                {
                    "name": f"soak-{secrets.token_hex(3)}",
                    "rate_limit_general": PLENTY,
                    "rate_limit_ai": PLENTY,
                    "metadata": {"soak": True},
                },
                self.master,
            )
            if created and "secret" in created:
                with self.keys_lock:
                    self.keys.append((created["id"], created["secret"]))
        elif roll < 0.6 and live > 4 and self.churn:
            with self.keys_lock:
                key_id, _ = self.keys.pop(0)
            self._call("admin revoke key", "DELETE", f"/admin/keys/{key_id}", headers=self.master)
        elif roll < 0.8:
            self._call("admin list keys", "GET", "/admin/keys", headers=self.master)
        else:
            self._call("admin usage report", "GET", "/admin/usage?group_by=key,operation", headers=self.master)

    def _one(self, rng: random.Random) -> None:
        roll = rng.random()
        messages = [{"role": "user", "content": "soak " * rng.randint(1, 40)}]
        if roll < 0.18:
            self._call(
                "chat",
                "POST",
                rng.choice(("/v1/chat/completions", "/api/ai/chat")),
                {"model": "fake-model", "messages": messages, "max_tokens": 32},
                self._some_key(rng),
                ai=True,
            )
        elif roll < 0.28:
            self._call(
                "completion", "POST", "/v1/completions", {"model": "fake-model", "prompt": "soak"}, self._some_key(rng), ai=True
            )
        elif roll < 0.36:
            self._call(
                "embeddings", "POST", "/v1/embeddings", {"model": "fake-model", "input": ["a", "b"]}, self._some_key(rng), ai=True
            )
        elif roll < 0.54:
            self._call(
                "stream read to the end",
                "POST",
                "/v1/chat/completions",
                {"model": "fake-model", "messages": messages, "stream": True},
                self._some_key(rng),
                ai=True,
                stream="read",
            )
        elif roll < 0.62:
            self._call(
                "stream dropped mid-way",
                "POST",
                "/v1/chat/completions",
                {"model": "fake-model", "messages": messages, "stream": True},
                self._some_key(rng),
                ai=True,
                stream="drop",
            )
        elif roll < 0.66:
            self._call("models", "GET", "/v1/models", headers=self._some_key(rng), ai=True)
        elif roll < 0.76:
            self._admin(rng)
        elif roll < 0.84:
            self._call("own usage", "GET", "/api/usage", headers=self._some_key(rng))
        else:
            path = rng.choice(("/", "/health", "/openapi.json", "/health/ready"))
            self._call(f"GET {path}", "GET", path)

    def _loop(self, rng: random.Random) -> None:
        while not self.stopping.is_set():
            if not self.running.is_set():
                self.idle.release()
                while not self.running.wait(0.2):
                    if self.stopping.is_set():
                        return
                continue
            self._one(rng)
            time.sleep(rng.uniform(0.0, 0.02))  # a bounded rate, on a shared machine

    def start(self) -> None:
        self.running.set()
        for thread in self.threads:
            thread.start()

    def pause(self) -> None:
        """Stop sending and wait until every thread has finished its request."""
        self.running.clear()
        for _ in self.threads:
            self.idle.acquire()

    def resume(self) -> None:
        self.running.set()

    def stop(self) -> None:
        self.stopping.set()
        self.running.set()
        for thread in self.threads:
            thread.join(timeout=40)


# --- the run ----------------------------------------------------------------------------------
def _engine(database_url: str) -> Engine:
    from sqlalchemy import create_engine

    from gateway.config import Settings
    from gateway.store import database_url as url_of

    return create_engine(url_of(Settings(database_url=database_url)))


def upgrade_schema(database_url: str) -> None:
    """``flask db upgrade`` for a database given on the command line (the default SQLite file upgrades itself)."""
    from gateway.store import schema

    engine = _engine(database_url)
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()


def usage_request_ids(database_url: str) -> Counter:
    """How many usage rows each request id has."""
    from sqlalchemy import select

    from gateway.store.tables import usage

    engine = _engine(database_url)
    try:
        with engine.connect() as conn:
            return Counter(rid for (rid,) in conn.execute(select(usage.c.request_id)))
    finally:
        engine.dispose()


def forget_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"LIMITS:LIMITER/{prefix}/*", f"{prefix}:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


def quiet_sample(traffic: Traffic, arbiter: int, started: float, label: str, settle: float, ports: dict[int, str]) -> list[Sample]:
    traffic.pause()
    time.sleep(settle)  # gunicorn's keep-alive (5 s) closes idle client connections
    samples = [
        Sample(time.monotonic() - started, pid, rss_kb(pid), open_fds(pid), label, fd_kinds(pid, ports))
        for pid in worker_pids(arbiter)
    ]
    traffic.resume()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "1200")))
    parser.add_argument(
        "--warmup", type=int, default=None, help="seconds of traffic before the baseline (default: a quarter of the run, 30 to 300)"
    )
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--rss-bound-mb", type=float, default=5.0)
    parser.add_argument("--storage", choices=("redis", "memory"), default="redis")
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temporary directory")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the result as Markdown (docs/soak.md)")
    parser.add_argument("--label", default="", help="a line about this run for the Markdown file")
    parser.add_argument("--no-key-churn", action="store_true", help="eight managed keys made first and kept (no create/revoke after)")
    parser.add_argument("--samples", type=Path, default=None, help="write every RSS/descriptor sample as JSON lines")
    args = parser.parse_args(argv)
    if args.seconds < 60:
        parser.error("--seconds must be at least 60")
    warmup = args.warmup if args.warmup is not None else min(300, max(30, args.seconds // 4))
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    workers = 2 if args.storage == "redis" else 1
    workdir = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'instance' / 'gateway.db'}"
    prefix = "aiproxy-soak-" + secrets.token_hex(4)
    master_key = "soak-master-" + secrets.token_hex(20)
    up_port, gw_port = free_port(), free_port()

    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.upstream", "--host", HOST, "--port", str(up_port), "--gap", "0.01"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    from gateway.config import Settings

    # None of the developer's settings: only the ones below.
    ours = {f.name.upper() for f in dataclasses.fields(Settings)} | {
        "NODE_ENV",
        "APP_ENV",
        "AI_PROXY_ENV_FILE",
        "GUNICORN_CMD_ARGS",
        "WEB_CONCURRENCY",
        "FLASK_DEBUG",
    }
    env = {name: value for name, value in os.environ.items() if name not in ours}
    env.update(
        {
            "AI_PROXY_HOST": HOST,
            "AI_PROXY_PORT": str(gw_port),
            "AI_PROXY_ENV_FILE": str(workdir / "none.env"),
            "MASTER_API_KEY": master_key,
            "JWT_SECRET": "soak-jwt-" + secrets.token_hex(20),
            "AI_API_KEY": "soak-upstream-key",
            "AI_API_URL": f"http://{HOST}:{up_port}/v1/completions",
            "INSTANCE_PATH": str(workdir / "instance"),
            "GATEWAY_WORKERS": str(workers),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "RATE_LIMIT_GENERAL": PLENTY,
            "RATE_LIMIT_AI": PLENTY,
            "RATE_LIMIT_AUTH_FAILURES": PLENTY,
            "RATE_LIMIT_STORAGE_URI": REDIS_URL if args.storage == "redis" else "memory://",
            "RATE_LIMIT_KEY_PREFIX": prefix.replace("-", "_"),
            "UPSTREAM_POOL_SIZE": str(UPSTREAM_POOL),
        }
    )
    if args.database_url:
        upgrade_schema(args.database_url)
        env["DATABASE_URL"] = args.database_url
    log_path = workdir / "gunicorn.log"
    with open(log_path, "wb") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(up_port, "/v1/models", 15)
        wait_for(gw_port, "/health", 30)
        deadline = time.monotonic() + 15
        while len(worker_pids(gateway.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = worker_pids(gateway.pid)
        print(
            f"soak: {args.seconds}s ({warmup}s warm-up), {workers} worker(s) {pids}, "
            f"{args.storage} quotas, {args.threads} client threads, seed {seed}",
            flush=True,
        )

        traffic = Traffic(gw_port, master_key, args.threads, seed, churn=not args.no_key_churn)
        ports = {up_port: "upstream", gw_port: "client", 6379: "redis", 5432: "postgres"}
        started = time.monotonic()
        samples: list[Sample] = []
        traffic.start()
        baseline_taken = False
        while (elapsed := time.monotonic() - started) < args.seconds:
            if not baseline_taken and elapsed >= warmup:
                samples += quiet_sample(traffic, gateway.pid, started, "baseline", 6.0, ports)
                baseline_taken = True
            for pid in worker_pids(gateway.pid):
                samples.append(Sample(elapsed, pid, rss_kb(pid), open_fds(pid)))
            time.sleep(args.interval)
        samples += quiet_sample(traffic, gateway.pid, started, "final", 6.0, ports)
        traffic.stop()
        pids_at_end = worker_pids(gateway.pid)

        gateway.send_signal(signal.SIGTERM)  # graceful: each worker flushes its usage queue
        gateway.wait(timeout=60)
        rows = usage_request_ids(database_url)
    finally:
        for proc in (gateway, upstream):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if args.storage == "redis":
            forget_redis_prefix(env["RATE_LIMIT_KEY_PREFIX"])

    if args.samples is not None:
        with args.samples.open("w") as out:
            for sample in samples:
                fields = {"at": round(sample.at, 1), "pid": sample.pid, "rss_kb": sample.rss_kb, "fds": sample.fds}
                out.write(json.dumps({**fields, "quiet": sample.quiet}) + "\n")
    result = report(args, warmup, workers, seed, pids, pids_at_end, samples, traffic.tally, rows, log_path.read_text(errors="replace"))
    if result == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"soak: the gateway's log and database are kept in {workdir}", flush=True)
    return result


def row_problems(tally: Tally, rows: Counter) -> list[str]:
    """One usage row per AI answer that must have one, matched by request id: what is missing,
    doubled or has no answer behind it (named by kind and status, so a miss can be traced in
    the gateway's log)."""
    expected = tally.expected_rows()
    missing = sorted(expected - rows.keys())
    doubled = sorted(rid for rid, n in rows.items() if n > 1)
    unknown = sorted(rid for rid in rows.keys() - expected if rid is None or not rid.startswith("soak-") or rid in tally.ai_answers)
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} AI answers have no usage row: "
            + ", ".join(f"{rid} ({tally.ai_answers[rid][0]}, {tally.ai_answers[rid][1]})" for rid in missing[:10])
        )
    if doubled:
        problems.append(f"{len(doubled)} requests have more than one usage row: {', '.join(map(str, doubled[:10]))}")
    if unknown:
        problems.append(f"{len(unknown)} usage rows match no AI answer that should have one: {', '.join(map(str, unknown[:10]))}")
    return problems


def report(
    args: argparse.Namespace,
    warmup: int,
    workers: int,
    seed: int,
    pids: list[int],
    pids_at_end: list[int],
    samples: list[Sample],
    tally: Tally,
    rows: Counter,
    log: str,
) -> int:
    lines: list[str] = []
    problems: list[str] = []
    bound_kb = args.rss_bound_mb * 1024
    lines.append("| worker | RSS at baseline | RSS at end | growth | RSS max (busy) | fds at baseline | fds at end | fds max (busy) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for pid in pids:
        mine = [s for s in samples if s.pid == pid]
        base = next((s for s in mine if s.quiet == "baseline"), None)
        final = next((s for s in mine if s.quiet == "final"), None)
        if base is None or final is None:
            problems.append(f"worker {pid}: missing a quiet sample (restarted?)")
            continue
        growth = final.rss_kb - base.rss_kb
        busy = [s for s in mine if not s.quiet and s.at >= base.at]
        lines.append(
            f"| {pid} | {base.rss_kb / 1024:.1f} MB | {final.rss_kb / 1024:.1f} MB | {growth / 1024:+.1f} MB | "
            f"{max(s.rss_kb for s in busy or [final]) / 1024:.1f} MB | {base.fds} | {final.fds} | "
            f"{max(s.fds for s in busy or [final])} |"
        )
        if growth >= bound_kb:
            problems.append(f"worker {pid}: RSS grew {growth / 1024:.1f} MB after warm-up (bound {args.rss_bound_mb} MB)")
        if final.fds > base.fds:
            grown = final.kinds - base.kinds if final.kinds and base.kinds else Counter()
            # Pooled connections (to the upstream, Redis, PostgreSQL) stay open between requests, and
            # how many a pool holds follows the load it last saw, up to the pool's bound: more of them
            # at the end is no leak while each stays within POOL_BOUND. Every other kind must not grow.
            ends = final.kinds or Counter()
            pooled = sum(grown.pop(kind, 0) for kind in POOLED_KINDS if ends.get(kind, 0) <= POOL_BOUND)
            if final.fds - base.fds > pooled:
                problems.append(
                    f"worker {pid}: {final.fds - base.fds} more open descriptors than at the baseline "
                    f"({', '.join(f'{kind} +{n}' for kind, n in sorted(grown.items()))})"
                )
    if pids_at_end != pids:
        problems.append(f"workers changed: {pids} at start, {pids_at_end} at the end (a restart)")
    if tally.socket_errors:
        problems.append(f"{len(tally.socket_errors)}+ requests failed at the socket: {tally.socket_errors[:3]}")
    server_errors = sum(n for status, n in tally.statuses.items() if status >= 500)
    if server_errors:
        problems.append(f"{server_errors} answers were 5xx")
    problems += row_problems(tally, rows)
    if "Traceback" in log:
        problems.append("the gateway logged a traceback")

    total = sum(tally.kinds.values())
    trend = []
    for pid in pids:
        busy = [s for s in samples if s.pid == pid and not s.quiet]
        if len(busy) >= 4:
            quarter = max(1, len(busy) // 4)
            first, last = busy[:quarter], busy[-quarter:]
            trend.append(
                f"worker {pid}: busy RSS median {statistics.median(s.rss_kb for s in first) / 1024:.1f} MB "
                f"(first quarter) -> {statistics.median(s.rss_kb for s in last) / 1024:.1f} MB (last quarter)"
            )
    for pid in pids:
        for sample in samples:
            if sample.pid == pid and sample.kinds is not None:
                trend.append(
                    f"worker {pid} descriptors ({sample.quiet}): "
                    + ", ".join(f"{kind} {n}" for kind, n in sorted(sample.kinds.items()))
                )
    verdict = "PASS" if not problems else "FAIL"
    summary = [
        f"Result: **{verdict}**" + ("" if not problems else ": " + "; ".join(problems)),
        "",
        f"- Run: {args.seconds} s of traffic ({warmup} s warm-up), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, seed {seed}",
        f"- Gateway: gunicorn with gunicorn.conf.py, {workers} worker(s), "
        f"{'Redis' if args.storage == 'redis' else 'memory://'} quotas, usage on "
        f"{'SQLite' if not args.database_url else args.database_url.split(':', 1)[0]}; the fake upstream on loopback",
        f"- Clients: {args.threads} threads, {total} requests ({total / args.seconds:.0f}/s), statuses "
        + ", ".join(f"{status}: {n}" for status, n in sorted(tally.statuses.items())),
        f"- Usage rows after the graceful stop: {rows.total()}; AI responses received: {tally.ai_responses}, "
        f"of which {len(tally.expected_rows())} must have a row (each matched by its request id)",
        f"- Bounds: RSS growth < {args.rss_bound_mb} MB per worker between the quiet samples after warm-up and "
        "at the end; no more open descriptors at the end than at the baseline; no worker restart",
        *(f"- {line}" for line in trend),
        "",
        "| request | count |",
        "|---|---|",
        *(f"| {kind} | {n} |" for kind, n in sorted(tally.kinds.items())),
        "",
        *lines,
    ]
    text = "\n".join(summary)
    print(text, flush=True)
    if args.out is not None:
        header = [
            "# Soak test",
            "",
            "`make soak` (`python -m tests.soak`, `SOAK_SECONDS`, default 1200): mixed traffic (non-streamed "
            "AI calls, streams read to the end and dropped mid-way, admin key create/list/revoke, usage "
            "reports, meta endpoints) with the master key and managed keys; each worker's RSS and open "
            "descriptors sampled from /proc. Figures depend on the machine; the bounds do not.",
            "",
        ]
        if args.label:
            header += [args.label, ""]
        args.out.write_text("\n".join([*header, text, ""]))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
