"""Prometheus metrics at ``GET /metrics``, summed over every gunicorn worker.

prometheus-client runs in multiprocess mode: each process writes its values to
memory-mapped files in one directory, and a scrape, whichever worker serves it,
merges the files of all of them.

- The directory is ``PROMETHEUS_MULTIPROC_DIR`` when set; the gunicorn master wipes
  its stale files at start (``on_starting`` calls :func:`prepare_directory`). When it
  is unset, the gateway creates its own: one per gunicorn master, or one per process
  outside gunicorn (``flask run``, tests), removed when that process exits. Either
  way the variable is then set for the workers and for prometheus-client.
- When a worker exits, gunicorn's ``child_exit`` calls :func:`process_gone`, so its
  live gauges (streams in flight, usage queue) stop counting. Its counters stay:
  totals never go backwards when workers are recycled.
- Access: the master key (or a JWT minted from it), or ``Authorization: Bearer
  <METRICS_TOKEN>`` (see :mod:`gateway.auth`); any other key gets 403. No quota.

Label values are bounded: ``route`` is the Flask endpoint name (``unmatched`` when no
route matched), never the raw path; ``method`` is a standard method or ``other``;
``model`` and ``key_id`` are taken only from requests the upstream answered, and
only the first :data:`MODEL_LABELS` / :data:`KEY_LABELS` distinct values in a
process are kept, later ones count as ``other``. No label carries a secret, a
header value or prompt text.

The facts come from hooks: one ``after_request`` for every response, the relay
views' stream-end callback (:func:`on_stream_end`) and the usage writer's watcher.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from gateway import compat, limits
from gateway.auth import current_caller
from gateway.auth.keys import MASTER_KEY_ID
from gateway.config import Settings
from gateway.errors import Forbidden
from gateway.upstream.accounting import Usage
from gateway.upstream.relay import STREAM_ERROR_CODES

log = logging.getLogger(__name__)

ENV_NAME = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it from the environment
MODEL_LABELS = 100
KEY_LABELS = 1000
OTHER = "other"
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Sub-millisecond to minutes: a relayed answer can take as long as UPSTREAM_TOTAL_TIMEOUT.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The gateway's own share of a request: tenths of a millisecond up.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# error.code of responses the gateway refused for a quota -> the rejection's kind.
QUOTA_CODES = {"concurrency_limit_exceeded": "concurrency", "rate_limit_storage_unavailable": "storage-unavailable"}

blueprint = Blueprint("metrics", __name__)

_SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}")


class BoundedLabel:
    """Label values from an open set: the first ``limit`` distinct ones, then ``other``.

    A value outside ``[A-Za-z0-9._:/@+-]`` (up to 100 characters) is always ``other``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return "none"
        if value in self._kept:
            return value
        if not _SAFE_LABEL.fullmatch(value):
            return OTHER
        with self._lock:
            if len(self._kept) < self.limit:
                self._kept.add(value)
                return value
        return OTHER


class Instruments:
    """The gateway's metrics: one set per process (their values live in its files)."""

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=None)

        def histogram(name: str, doc: str, label: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, (label,), buckets=buckets, registry=None)

        self.requests = counter("aiproxy_requests", "Responses by route, method and status.",
                                ("route", "method", "status"))
        self.duration = histogram("aiproxy_request_duration_seconds",
                                  "Time until the response starts (a stream's first byte), by route.",
                                  "route", LATENCY_BUCKETS)
        self.upstream = histogram("aiproxy_upstream_duration_seconds",
                                  "Time in the upstream call until its answer (a stream's headers), by operation.",
                                  "operation", LATENCY_BUCKETS)
        self.overhead = histogram("aiproxy_gateway_overhead_seconds",
                                  "Request time minus upstream time, for requests that called the upstream.",
                                  "operation", OVERHEAD_BUCKETS)
        self.tokens = counter("aiproxy_tokens", "Tokens used, by key id, model and kind (prompt, completion).",
                              ("key_id", "model", "kind"))
        self.quota_rejections = counter("aiproxy_quota_rejections", "Requests refused by a quota, by kind.", ("kind",))
        self.upstream_errors = counter("aiproxy_upstream_errors", "Upstream failures, by the error.code reported.",
                                       ("kind",))
        self.streams = counter("aiproxy_streams", "Streams that ended, by operation and outcome.",
                               ("operation", "outcome"))
        self.streams_in_flight = Gauge("aiproxy_streams_in_flight", "Streams being relayed now, by operation.",
                                       ("operation",), multiprocess_mode="livesum", registry=None)
        self.usage_queue_depth = Gauge("aiproxy_usage_queue_depth", "Usage records waiting to be written.",
                                       multiprocess_mode="livesum", registry=None)
        self.usage_dropped = counter("aiproxy_usage_records_dropped",
                                     "Usage records lost (queue full, database refused, stop timed out).")
        self.models = BoundedLabel(MODEL_LABELS)
        self.keys = BoundedLabel(KEY_LABELS)
        # Label children, looked up once: labels() costs more than the increment itself.
        self._children: dict[tuple[object, ...], Counter | Histogram | Gauge] = {}

    def child(self, metric: Counter | Histogram | Gauge, *labels: str):  # noqa: ANN201
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_tokens(self, key_id: str, model: str | None, usage: Usage) -> None:
        if not (usage.prompt_tokens or usage.completion_tokens):
            return
        key, model_label = self.keys(key_id), self.models(model)
        if usage.prompt_tokens > 0:
            self.child(self.tokens, key, model_label, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens > 0:
            self.child(self.tokens, key, model_label, "completion").inc(usage.completion_tokens)

    def usage_changed(self, depth: int, dropped: int) -> None:
        """The usage writer's watcher (:meth:`gateway.usage.UsageWriter.watch`)."""
        self.usage_queue_depth.set(depth)
        if dropped:
            self.usage_dropped.inc(dropped)


# --- the directory --------------------------------------------------------------------
_directory: str | None = None  # where this process's values are written, once chosen
_owned: tuple[str, int] | None = None  # (directory, pid) when this process created it
_exported: str | None = None  # the gunicorn master's directory for its workers


def _create_own_directory() -> str:
    global _owned
    path = tempfile.mkdtemp(prefix="aiproxy-metrics-")
    _owned = (path, os.getpid())
    return path


def remove_own_directory() -> None:
    """Delete the directory this process created (at exit); never the operator's, nor a parent's."""
    global _owned
    if _owned is not None and _owned[1] == os.getpid():
        shutil.rmtree(_owned[0], ignore_errors=True)
        _owned = None


atexit.register(remove_own_directory)


def prepare_directory(settings: Settings) -> str:
    """For the gunicorn master, before any worker starts: a directory holding no stale
    values (``PROMETHEUS_MULTIPROC_DIR`` wiped, or a new one), exported to the workers."""
    global _exported
    if settings.prometheus_multiproc_dir:
        path = Path(settings.prometheus_multiproc_dir)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        log.info("metrics: values of every worker are kept in %s (stale files removed)", path)
        directory = str(path)
    else:
        directory = _create_own_directory()
        log.info("metrics: values of every worker are kept in %s (created; removed at exit)", directory)
    os.environ[ENV_NAME] = _exported = directory
    return directory


def process_gone(pid: int) -> None:
    """A worker has exited (gunicorn ``child_exit``): its live gauges no longer count."""
    if _exported is not None:
        multiprocess.mark_process_dead(pid, _exported)


def _write_values_to(settings: Settings) -> str:
    """Choose this process's directory (once) and have prometheus-client write there."""
    global _directory
    wanted = settings.prometheus_multiproc_dir
    if _directory is None:
        _directory = wanted or _create_own_directory()
        Path(_directory).mkdir(parents=True, exist_ok=True)
    elif wanted and wanted != _directory:
        log.warning("metrics: PROMETHEUS_MULTIPROC_DIR changed after this process started writing; keeping %s",
                    _directory)
    os.environ[ENV_NAME] = _directory
    # prometheus-client picks its value storage from the environment when it is first
    # imported, which may have been before the directory was known (the gunicorn master
    # imports this module while reading gunicorn.conf.py). Every metric made after this
    # line writes to the directory's files.
    compat.use_multiprocess_values(process_id)
    return _directory


class _ProcessId:
    """``os.getpid()`` remembered, and looked up again in every forked child.

    prometheus-client asks for the process id on every metric update, to notice a
    fork; ``os.getpid`` is a system call each time (glibc caches nothing), about ten
    per request here. Fork is the only way the answer changes, so it is refreshed there.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


process_id = _ProcessId()


_instruments: Instruments | None = None


def _process_instruments() -> Instruments:
    global _instruments
    if _instruments is None:
        _instruments = Instruments()
    return _instruments


# --- the hooks ------------------------------------------------------------------------
class _StreamWatch:
    """One stream: counted in flight from its response until its end."""

    __slots__ = ("operation", "key_id", "model", "open")

    def __init__(self, operation: str, key_id: str, model: str | None) -> None:
        self.operation = operation
        self.key_id = key_id
        self.model = model
        self.open = False


def on_stream_end(then: Callable[[str, Usage | None], None]) -> Callable[[str, Usage | None], None]:
    """Wrap a relay view's stream-end callback so the stream is counted: in flight while
    it runs, then how it ended, its tokens, and an upstream error if it broke off.

    Built during the request (the request context is gone when the stream ends).
    """
    instruments: Instruments = current_app.extensions["gateway.metrics"]
    caller = current_caller()
    watch = _StreamWatch(request.endpoint.rpartition(".")[2] if request.endpoint else UNMATCHED,
                         caller.id if caller else "unknown", g.get("model"))
    g.metrics_stream = watch

    def finished(outcome: str, usage: Usage | None = None) -> None:
        try:
            then(outcome, usage)
        finally:
            if watch.open:
                watch.open = False
                instruments.child(instruments.streams_in_flight, watch.operation).dec()
            instruments.child(instruments.streams, watch.operation, outcome).inc()
            code = STREAM_ERROR_CODES.get(outcome)
            if code is not None:
                instruments.child(instruments.upstream_errors, code).inc()
            if usage is not None:
                instruments.count_tokens(watch.key_id, watch.model, usage)

    return finished


def _count_refusal(instruments: Instruments, code: str) -> None:
    """An error response the gateway made itself (``g.error_code``)."""
    if code.startswith("upstream_"):
        instruments.child(instruments.upstream_errors, code).inc()
    elif code == "gateway_rate_limited":
        kind = limits.breached_policy() or OTHER
        instruments.child(instruments.quota_rejections, kind).inc()
    elif code in QUOTA_CODES:
        instruments.child(instruments.quota_rejections, QUOTA_CODES[code]).inc()


def _observe(response: Response) -> Response:
    instruments: Instruments = current_app.extensions["gateway.metrics"]
    ctx = g._get_current_object()  # one context lookup rather than one per attribute
    req = request._get_current_object()  # type: ignore[attr-defined]
    status = response.status_code
    rule = req.url_rule
    route = rule.endpoint if rule is not None else UNMATCHED
    method = req.method if req.method in METHODS else OTHER
    instruments.child(instruments.requests, route, method, str(status)).inc()
    started = ctx.get("started")
    upstream_ms = ctx.get("upstream_ms")
    if started is not None:
        elapsed = time.perf_counter() - started
        instruments.child(instruments.duration, route).observe(elapsed)
        if upstream_ms is not None:
            operation = route.rpartition(".")[2]
            upstream = upstream_ms / 1000
            instruments.child(instruments.upstream, operation).observe(upstream)
            instruments.child(instruments.overhead, operation).observe(max(0.0, elapsed - upstream))
    code = ctx.get("error_code")
    if code is not None:
        _count_refusal(instruments, code)
    elif status == 429 and upstream_ms is not None:
        # The upstream's own 429, passed through (its body may carry any code).
        instruments.child(instruments.upstream_errors, "upstream_rate_limited").inc()
    usage = ctx.get("usage")
    if usage is not None:
        caller = current_caller()
        instruments.count_tokens(caller.id if caller else "unknown", ctx.get("model"), usage)
    watch = ctx.get("metrics_stream")
    if watch is not None and response.is_streamed:
        watch.open = True
        instruments.child(instruments.streams_in_flight, watch.operation).inc()
    return response


# --- the endpoint -----------------------------------------------------------------------
@blueprint.get("/metrics")
def scrape() -> Response:
    """Prometheus metrics of every worker (master key, its JWT, or METRICS_TOKEN).

    :raises 403: the caller is a key other than the master key.
    """
    caller = current_caller()
    if caller is None or not (caller.id == MASTER_KEY_ID or caller.via == "metrics_token"):
        raise Forbidden("Only the master key (or a token minted from it) or METRICS_TOKEN can read metrics.",
                        error_code="metrics_forbidden")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=current_app.extensions["gateway.metrics.directory"])
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = Response(encode(registry), content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    settings: Settings = app.config["GATEWAY"]
    app.extensions["gateway.metrics.directory"] = _write_values_to(settings)
    instruments = app.extensions["gateway.metrics"] = _process_instruments()
    app.register_blueprint(blueprint)
    limits.exempt(app, scrape, "metrics.scrape")
    app.after_request(_observe)
    app.extensions["gateway.usage"].watch(instruments.usage_changed)
