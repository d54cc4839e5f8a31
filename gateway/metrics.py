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

The facts come from finished request records (:func:`gateway.request_metrics.request_metrics`
is one of the app's sinks, see :mod:`gateway.exchange`), the relay view's :func:`stream_opened` for
the live stream gauge, and the usage writer's watcher.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from gateway import compat, extensions
from gateway.auth import current_caller
from gateway.auth.keys import MASTER_KEY_ID
from gateway.config import Settings
from gateway.errors import Forbidden
from gateway.upstream.accounting import TokenUsage

log = logging.getLogger(__name__)

ENV_NAME = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it from the environment
MODEL_LABELS = 100
KEY_LABELS = 1000
OTHER = "other"
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Sub-millisecond to minutes: a relayed answer can take as long as UPSTREAM_TOTAL_TIMEOUT.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
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

        self.requests = counter("aiproxy_requests", "Responses by route, method and status.", ("route", "method", "status"))
        self.duration = histogram(
            "aiproxy_request_duration_seconds",
            "Time until the response starts (a stream's first byte), by route.",
            "route",
            LATENCY_BUCKETS,
        )
        self.upstream = histogram(
            "aiproxy_upstream_duration_seconds",
            "Time in the upstream call until its answer (a stream's headers), by operation.",
            "operation",
            LATENCY_BUCKETS,
        )
        self.overhead = histogram(
            "aiproxy_gateway_overhead_seconds",
            "Request time minus upstream time, for requests that called the upstream.",
            "operation",
            OVERHEAD_BUCKETS,
        )
        self.tokens = counter(
            "aiproxy_tokens", "Tokens used, by key id, model and kind (prompt, completion).", ("key_id", "model", "kind")
        )
        self.spend = counter("aiproxy_spend_usd", "USD spent, by key id and model (priced models only).", ("key_id", "model"))
        self.quota_rejections = counter("aiproxy_quota_rejections", "Requests refused by a quota, by kind.", ("kind",))
        self.upstream_errors = counter("aiproxy_upstream_errors", "Upstream failures, by the error.code reported.", ("kind",))
        self.streams = counter("aiproxy_streams", "Streams that ended, by operation and outcome.", ("operation", "outcome"))
        self.streams_in_flight = Gauge(
            "aiproxy_streams_in_flight",
            "Streams being relayed now, by operation.",
            ("operation",),
            multiprocess_mode="livesum",
            registry=None,
        )
        self.usage_queue_depth = Gauge(
            "aiproxy_usage_queue_depth", "Usage records waiting to be written.", multiprocess_mode="livesum", registry=None
        )
        self.usage_dropped = counter(
            "aiproxy_usage_records_dropped", "Usage records lost (queue full, database refused, stop timed out)."
        )
        self.backend_attempts = counter(
            "aiproxy_backend_attempts",
            "Attempts sent to a backend, by backend and outcome (ok, connect, timeout, status_5xx, status_429, broke_off, ...).",
            ("backend", "outcome"),
        )
        self.backend_duration = histogram(
            "aiproxy_backend_duration_seconds",
            "Time until a backend's answer (a stream's first event, when read before relaying), by backend.",
            "backend",
            LATENCY_BUCKETS,
        )
        self.circuit_state = Gauge(
            "aiproxy_backend_circuit_state",
            "A deployment's circuit after its last attempt in a worker: 0 closed, 1 half-open, 2 open (the worst worker's).",
            ("backend", "model"),
            multiprocess_mode="livemax",
            registry=None,
        )
        self.retries = counter("aiproxy_retries", "Attempts after a request's first, by the failure that caused them.", ("reason",))
        self.retry_budget_exhausted = counter(
            "aiproxy_retry_budget_exhausted", "Retries not made because the retry budget had none left."
        )
        self.models = BoundedLabel(MODEL_LABELS)
        self.keys = BoundedLabel(KEY_LABELS)
        # Label children, looked up once: labels() costs more than the increment itself.
        self._children: dict[tuple[object, ...], Counter | Histogram | Gauge] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: a labelled child is looked up once per process."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_tokens(self, key_id: str, model: str | None, usage: TokenUsage) -> None:
        if not (usage.prompt_tokens or usage.completion_tokens):
            return
        key, model_label = self.keys(key_id), self.models(model)
        if usage.prompt_tokens > 0:
            self.child(self.tokens, key, model_label, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens > 0:
            self.child(self.tokens, key, model_label, "completion").inc(usage.completion_tokens)

    def count_spend(self, key_id: str, model: str | None, cost_usd: float) -> None:
        if cost_usd > 0:
            self.child(self.spend, self.keys(key_id), self.models(model)).inc(cost_usd)

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
        multiprocess.mark_process_dead(pid, _exported)  # type: ignore[no-untyped-call]  # unannotated upstream


def _write_values_to(settings: Settings) -> str:
    """Choose this process's directory (once) and have prometheus-client write there."""
    global _directory
    wanted = settings.prometheus_multiproc_dir
    if _directory is None:
        _directory = wanted or _create_own_directory()
        Path(_directory).mkdir(parents=True, exist_ok=True)
    elif wanted and wanted != _directory:
        log.warning("metrics: PROMETHEUS_MULTIPROC_DIR changed after this process started writing; keeping %s", _directory)
    os.environ[ENV_NAME] = _directory
    # prometheus-client picks its value storage from the environment when it is first
    # imported, which may have been before the directory was known (the gunicorn master
    # imports this module while reading gunicorn.conf.py). Every metric made after this
    # line writes to the directory's files.
    compat.use_multiprocess_values(compat.process_id)
    return _directory


_instruments: Instruments | None = None


def _process_instruments() -> Instruments:
    global _instruments
    if _instruments is None:
        _instruments = Instruments()
    return _instruments


# --- the live stream gauge ------------------------------------------------------------------------
def stream_opened(operation: str) -> None:
    """A relayed stream starts: counted in flight until its record is finished (:mod:`gateway.request_metrics`)."""
    instruments = extensions.instruments()
    instruments.child(instruments.streams_in_flight, operation).inc()


# --- the endpoint -----------------------------------------------------------------------
@blueprint.get("/metrics")
def scrape() -> Response:
    """Prometheus metrics of every worker (master key, its JWT, or METRICS_TOKEN).

    :raises 403: the caller is a key other than the master key.
    """
    caller = current_caller()
    if caller is None or not (caller.id == MASTER_KEY_ID or caller.via == "metrics_token"):
        raise Forbidden(
            "Only the master key (or a token minted from it) or METRICS_TOKEN can read metrics.", error_code="metrics_forbidden"
        )
    registry = CollectorRegistry()
    # prometheus-client leaves the collector's __init__ unannotated.
    multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
        registry, path=extensions.metrics_directory()
    )
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = Response(encode(registry), content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    settings: Settings = app.config["GATEWAY"]
    app.extensions[extensions.METRICS_DIRECTORY] = _write_values_to(settings)
    instruments = app.extensions[extensions.INSTRUMENTS] = _process_instruments()
    app.register_blueprint(blueprint)
    extensions.usage_writer(app).watch(instruments.usage_changed)
