"""Usage accounting: one row per AI request, written off the request's path.

:meth:`UsageWriter.record` only puts a :class:`UsageRecord` on a bounded in-memory
queue and returns; it never waits for the database, and it does not wake the
writer either (a wake-up per request would cost a thread switch per request). One
background thread per worker process (started on the first record, so after
gunicorn's fork) writes the queue in batches: every ``USAGE_BATCH_SECONDS`` (0.5),
or as soon as :data:`BATCH_SIZE` rows wait, one multi-row ``INSERT`` each. The queue holds
``USAGE_QUEUE_SIZE`` (10,000) records.

- A full queue drops the new record, counts it (:attr:`UsageWriter.dropped`) and
  logs the count at most once per :data:`DROP_LOG_INTERVAL_SECONDS`: never silently.
- A database outage keeps the batch and retries with exponential backoff (up to
  :data:`MAX_BACKOFF_SECONDS`); meanwhile the queue holds what arrives, up to its bound.
- A batch the database refuses (a row it cannot take: a number out of range, a value
  the driver cannot encode) is written again row by row, so one bad row never takes
  the others with it; a row refused again is dropped, counted and logged (its key,
  operation, status and request id: never its text). Text fields are made storable
  first (:func:`gateway.payload.storable_text`), so a NUL or lone surrogate that
  reached a record is replaced rather than refused.
- :meth:`UsageWriter.flush` writes everything queued (graceful stop: gunicorn's
  ``worker_exit`` hook and ``atexit`` call :func:`stop_all`); what cannot be written
  before its timeout is logged with its count.
- :meth:`UsageWriter.watch` lets metrics follow the queue's depth and drops.

The rows come from finished request records: :func:`gateway.usage.rows.usage_rows`
is one of the app's sinks (:mod:`gateway.exchange`), and
:func:`gateway.usage.rows.row_of` decides which record gets a row; the queue and its
thread are :mod:`gateway.usage.writer`. Token counts come from :mod:`gateway.upstream.accounting`;
each row's cost from the config file's prices, when the row is made (:mod:`gateway.usage.cost`).
"""

from __future__ import annotations

from flask import Flask

from gateway import extensions
from gateway.usage.rows import UsageRecord, usage_rows
from gateway.usage.writer import STOP_TIMEOUT_SECONDS, UsageWriter, stop_all

__all__ = ["STOP_TIMEOUT_SECONDS", "UsageRecord", "UsageWriter", "init_app", "stop_all", "usage_rows"]


def init_app(app: Flask) -> None:
    settings = app.config["GATEWAY"]
    app.extensions[extensions.USAGE] = UsageWriter(
        extensions.store(app).engine, queue_size=settings.usage_queue_size, interval=settings.usage_batch_seconds
    )
