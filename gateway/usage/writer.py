"""The usage writer: a bounded queue per process and one thread writing it in batches.

See :mod:`gateway.usage` for the contract (never waits for the database; drops are
counted and logged; outages retried; a refused batch written row by row). Each insert
also adds its rows to the daily roll-up, in its transaction (:mod:`gateway.store.usage_daily`):
the roll-up holds exactly the rows stored, a row refused and dropped included nowhere.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from gateway.payload import storable_text
from gateway.store import usage_daily
from gateway.store.tables import usage
from gateway.usage.rows import UsageRecord

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
BATCH_SIZE = 50  # an insert runs in the worker's thread: a bigger batch holds it longer (docs/benchmarks.md)
BATCH_INTERVAL_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
DROP_LOG_INTERVAL_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0

_INSERT_USAGE = insert(usage)


def _is_outage(error: Exception) -> bool:
    """Whether the database could not take a batch at all (unreachable, locked, restarting,
    missing a table), so it is retried as it is later. Anything else is about its rows:
    the database refused one (``IntegrityError``, ``DataError``) or the driver could not
    send one (a ``ValueError`` such as an ``OverflowError`` or ``UnicodeEncodeError``)."""
    return isinstance(error, DBAPIError) and not isinstance(error, IntegrityError | DataError)


class UsageWriter:
    """The per-process queue and writer thread for :class:`UsageRecord` rows."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
        interval: float = BATCH_INTERVAL_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.interval = interval
        self.max_backoff = max_backoff
        self.written = 0  # rows inserted by this process
        self.dropped = 0  # rows lost: queue full, or not written before a stop timed out
        self._watchers: list[Callable[[int, int], None]] = []
        self._reset()

    def _reset(self) -> None:
        """Fresh state for this process (a forked child must not write its parent's rows)."""
        self._pid = os.getpid()
        self._queue: deque[UsageRecord] = deque()  # bounded by record(), under the lock
        self._wakeup = threading.Event()  # a full batch waits, or flush/stop asks
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unwritten = 0  # accepted, not yet written or given up
        self._unreported_drops = 0
        self._last_drop_log = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- the request side ------------------------------------------------------------
    def record(self, item: UsageRecord) -> bool:
        """Queue one record without blocking; ``False`` (counted and logged) when full."""
        if self._pid != os.getpid():
            self._reset()
        if self._thread is None:
            self._start()
        with self._lock:
            accepted = len(self._queue) < self.queue_size
            if accepted:
                self._queue.append(item)
                self._unwritten += 1
                if len(self._queue) == self.batch_size:
                    self._wakeup.set()
            else:
                self.dropped += 1
                self._unreported_drops += 1
            self._changed(dropped=0 if accepted else 1)
        if not accepted:
            self._report_drops()
        return accepted

    def watch(self, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(depth, newly_dropped)`` after every change to the queue.

        It runs under the writer's lock (so calls arrive in order) and must be quick;
        an exception in it is logged, never passed on.
        """
        self._watchers.append(callback)

    def _changed(self, dropped: int) -> None:
        # Called with self._lock held.
        for callback in self._watchers:
            try:
                callback(self._unwritten, dropped)
            except Exception:
                log.exception("usage watcher failed")

    @property
    def depth(self) -> int:
        """Records waiting to be written (queued or in the batch being retried)."""
        return self._unwritten

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()
        _started.add(self)

    def _report_drops(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._unreported_drops or (not force and now - self._last_drop_log < DROP_LOG_INTERVAL_SECONDS):
                return
            count, self._unreported_drops, self._last_drop_log = self._unreported_drops, 0, now
        log.warning(
            "usage records dropped: the queue was full",
            extra={"fields": {"dropped": count, "dropped_total": self.dropped, "queue_size": self.queue_size}},
        )

    # --- the writer thread -----------------------------------------------------------
    def _collect(self) -> list[UsageRecord]:
        """The next batch: at once when a full one waits, else after the interval (or
        sooner when flush/stop wakes the writer), whatever has arrived by then."""
        if len(self._queue) < self.batch_size:
            self._wakeup.wait(self.interval)
        self._wakeup.clear()
        count = min(len(self._queue), self.batch_size)
        return [self._queue.popleft() for _ in range(count)]

    def _insert(self, batch: list[UsageRecord]) -> None:
        # executemany with one statement compiled once and cached (SQLAlchemy batches it
        # into multi-row INSERTs itself); .values([...]) would compile a new statement,
        # with a bind parameter per cell, for every batch. The daily roll-up is added to in
        # the same transaction: whatever is rolled back is counted nowhere.
        rows = [item.row() for item in batch]
        with self.engine.begin() as connection:
            connection.execute(_INSERT_USAGE, rows)
            usage_daily.add(connection, rows)

    def _write(self, batch: list[UsageRecord]) -> None:
        """Insert a batch, retrying through outages until it is written or the writer stops.

        A batch refused for its rows is written row by row (:meth:`_write_each`).
        """
        backoff = min(0.1, self.max_backoff)
        failures = 0
        pending = batch
        while True:
            try:
                self._insert(pending)
            except Exception as error:
                outage: Exception | None = error
                if not _is_outage(error):
                    pending, outage = self._write_each(pending, error)
                if outage is None:  # every row written or dropped
                    if failures:
                        log.info("usage writes resumed", extra={"fields": {"attempts": failures + 1}})
                    break
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "usage write failed (%s); retrying with backoff",
                        type(outage).__name__,
                        extra={"fields": {"attempt": failures, "queued": self._unwritten}},
                    )
                if self._stopping:
                    return  # stop() accounts for what is left
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if failures:  # said before settling, so whoever flush() woke sees it logged
                log.info("usage writes resumed", extra={"fields": {"attempts": failures + 1}})
            self._settle(len(pending), dropped=False)
            break

    def _write_each(self, rows: list[UsageRecord], refused: Exception) -> tuple[list[UsageRecord], Exception | None]:
        """Insert ``rows`` one at a time after the database refused them as one batch.

        A row refused again is dropped, counted and logged without its text; the others
        are written. An outage stops it.

        :returns: the rows not yet written when an outage stopped it, and its error;
            else no rows and ``None``.
        """
        log.warning(
            "usage batch refused by the database (%s); writing its rows one by one",
            type(refused).__name__,
            extra={"fields": {"rows": len(rows)}},
        )
        for index, item in enumerate(rows):
            try:
                self._insert([item])
            except Exception as error:
                if _is_outage(error):
                    return rows[index:], error
                log.error(
                    "usage record refused by the database (%s); it is dropped",
                    type(error).__name__,
                    extra={
                        "fields": {
                            "key_id": storable_text(item.key_id),
                            "operation": storable_text(item.operation),
                            "status": item.status,
                            "request_id": storable_text(item.request_id or ""),
                        }
                    },
                )
                self._settle(1, dropped=True)
            else:
                self._settle(1, dropped=False)
        return [], None

    def _settle(self, count: int, *, dropped: bool) -> None:
        with self._lock:
            self._unwritten = max(0, self._unwritten - count)  # stop() may have given these up already
            if dropped:
                self.dropped += count
            else:
                self.written += count
            self._changed(dropped=count if dropped else 0)
            self._idle.notify_all()

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch:
                try:
                    self._write(batch)
                except Exception:  # a bug, not an outage: lose this batch, loudly, and keep the thread
                    log.exception(
                        "usage batch could not be written; its records are dropped", extra={"fields": {"dropped": len(batch)}}
                    )
                    self._settle(len(batch), dropped=True)
            self._report_drops()
            if self._stopping:
                return  # stop() has flushed what it could and accounts for the rest

    # --- stopping ----------------------------------------------------------------------
    def _wake(self) -> None:
        self._wakeup.set()

    def flush(self, timeout: float) -> bool:
        """Write everything queued so far; ``True`` when done within ``timeout`` seconds."""
        if self._thread is None or self._pid != os.getpid():
            return True
        self._wake()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unwritten > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Flush, then end the thread. What is still unwritten is counted and logged."""
        if self._thread is None or self._pid != os.getpid():
            return
        flushed = self.flush(timeout)
        self._stopping = True
        self._wake()
        self._thread.join(timeout=max(self.interval * 2, 1.0))
        if not flushed:
            with self._lock:
                lost, self._unwritten = self._unwritten, 0
                self.dropped += lost
                self._changed(dropped=lost)
            log.error(
                "usage records lost at stop: the database did not take them in time",
                extra={"fields": {"lost": lost, "timeout_s": timeout}},
            )
        self._report_drops(force=True)
        self._thread = None
        _started.discard(self)


# Writers with a running thread in this process, for stop_all().
_started: weakref.WeakSet[UsageWriter] = weakref.WeakSet()


def stop_all(timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Flush and stop every writer of this process (gunicorn ``worker_exit``, ``atexit``)."""
    for writer in list(_started):
        writer.stop(timeout)


atexit.register(stop_all)
