"""gunicorn settings, from the same configuration the app reads (gateway.config).

Worker class: gevent by default. A stream holds its worker slot for its whole
life; gevent holds a thousand of them in one process where gthread needs a thread
each and the sync worker one process each (and kills any request longer than
``timeout``). Per non-streamed request gevent is also no dearer: the same Flask +
urllib3 relay costs about the same CPU under gevent as under a gthread worker with
a few dozen threads (which could hold only that many streams), and less than under
gthread with the thousand threads a thousand streams would need (``make bench-floor``;
figures in bench/results/profile.md). gunicorn's other gevent worker,
``gevent_pywsgi`` (gevent's own HTTP server), relays the same Flask app for somewhat
less CPU (bench/results/profile.md), but it has no keep-alive timeout (an idle client
holds its slot for ever) and it bypasses gunicorn's request handling, so
``max_requests`` and gunicorn's request line and header limits do not apply: not
worth it for a gateway facing clients.

Worker class: the gateway's own subclasses of gunicorn's (gateway.server.workers): gunicorn's
refusals of malformed requests answer in the gateway's JSON envelope; with gevent
also a deadline on request bodies (``REQUEST_BODY_TIMEOUT``), a cap on unauthenticated
connections per client address (``MAX_CONNECTIONS_PER_ADDRESS``) and a drain that cuts what is
still running shortly before the master's SIGKILL (gthread has none of these three).

Worker processes: with ``RATE_LIMIT_STORAGE_URI=memory://`` quotas live in the
process, so there is one worker and the gateway refuses more (see
gateway.config.validate). With a shared store (Redis) the default is one worker
per core, all counting against the same quotas.
"""

import os
from typing import Any

from dotenv import dotenv_values


def _early(name: str, default: str) -> str:
    # Read before gateway.config on purpose: gevent must patch the standard library
    # before Flask, urllib3 and PyJWT import ssl/threading names, or HTTPS to the
    # upstream would block the whole worker. gateway.config re-reads and validates it.
    env_file = os.environ.get("AI_PROXY_ENV_FILE") or ".env"
    from_file = dotenv_values(env_file).get(name) if os.path.isfile(env_file) else None
    return (os.environ.get(name) or from_file or default).strip()


if _early("GATEWAY_WORKER_CLASS", "gevent") == "gevent":
    from gevent import monkey

    monkey.patch_all()

import gunicorn.http.wsgi  # noqa: E402

from gateway.backends import snapshot  # noqa: E402
from gateway.config import ConfigError, load  # noqa: E402

try:
    _settings = load()
    # The backends file (GATEWAY_CONFIG), checked once here, so that an invalid one stops
    # the start in one line before gunicorn says anything. gunicorn re-executes this file
    # on every reload (SIGHUP): there on_reload decides, and a bad file never stops a
    # running gateway (see gateway.backends.snapshot).
    if not snapshot.started():
        snapshot.take(_settings)
except ConfigError as error:
    raise SystemExit(f"configuration error: {error}") from None

# Never advertise the server software or its version.
gunicorn.http.wsgi.SERVER = "ai-proxy"

bind = f"{_settings.ai_proxy_host}:{_settings.ai_proxy_port}"
worker_class = {"gevent": "gateway.server.workers.GeventWorker", "gthread": "gateway.server.workers.ThreadWorker"}[
    _settings.gateway_worker_class
]
workers = _settings.worker_processes
threads = _settings.gateway_threads
worker_connections = _settings.gateway_worker_connections

# For gevent/gthread the timeout is a heartbeat: long streams are not killed by it.
timeout = _settings.gateway_timeout
# On SIGTERM/SIGHUP, in-flight requests and streams get this long to finish (less the
# worker's margin: gateway.server.workers.drain_seconds), then the master kills the worker.
graceful_timeout = _settings.gateway_graceful_timeout
keepalive = 5
max_requests = _settings.gateway_max_requests
max_requests_jitter = _settings.gateway_max_requests_jitter

# The gateway writes its own structured line per request (gateway.observability).
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
# X-Forwarded-* is handled by ProxyFix (TRUSTED_PROXY_COUNT), never by gunicorn itself.
forwarded_allow_ips = ""
proxy_allow_ips = ""
# gunicorn's control socket is not used; several instances on one host would share its path.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Log the mode, the upstream and the backends file (checked already, above), then
    refuse to start, in one line, when the database schema is behind the code.

    With the default SQLite file (or DATABASE_AUTO_UPGRADE=true) this applies the
    migrations instead, once, before any worker starts (see gateway.store).

    Then give the workers one metrics directory without stale values from an earlier
    run (PROMETHEUS_MULTIPROC_DIR wiped, or a new one for this master, removed when it
    exits; see gateway.metrics).
    """
    from gateway import config, metrics
    from gateway.observability import configure_logging
    from gateway.store import SchemaError, Store

    configure_logging(_settings.log_level)  # so an automatic upgrade is logged
    config.log_startup(_settings)
    snapshot.log_taken(_settings)
    store = Store.from_settings(_settings)
    try:
        store.prepare()
    except SchemaError as error:
        raise SystemExit(f"database error: {error}") from None
    finally:
        store.dispose()  # no connection crosses the fork into the workers
    metrics.prepare_directory(_settings)


def on_reload(server: Any) -> None:
    """SIGHUP (systemctl reload): gunicorn calls this after re-reading this file and before
    it forks the new workers (gunicorn.arbiter.Arbiter.reload), so they build from the
    backends file accepted here; a file refused here is logged with its one-line reason
    and the new workers keep the previous one (gateway.backends.snapshot.reload)."""
    snapshot.reload(_settings)


def post_worker_init(worker: Any) -> None:
    """Once the worker has loaded the app: move everything alive now (the app, its
    modules, their caches) out of the garbage collector's sight. These objects live
    as long as the worker, but a full collection would walk them all every time, and
    the worker serves nothing while it runs: a visible latency tail (figures in
    bench/results/profile.md, "The latency tail")."""
    import gc

    gc.collect()
    gc.freeze()


def worker_exit(server: Any, worker: Any) -> None:
    """Graceful stop or reload: write the worker's queued usage records, then export its
    queued spans (tracing on), before it exits."""
    from gateway import tracing, usage

    usage.stop_all()
    tracing.stop_all()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, once a worker has exited (stopped, recycled or crashed): its live
    gauges (streams in flight, usage queue) stop counting; its counters stay."""
    from gateway import metrics

    metrics.process_gone(worker.pid)
