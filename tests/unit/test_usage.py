"""The usage writer: batches, never blocks, survives outages, counts drops, flushes on stop.

On a SQLite file and on a PostgreSQL schema (``database_url``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import make_url

from gateway import store as gateway_store
from gateway import usage as usage_module
from gateway.config import ConfigError, Settings, load
from gateway.store import Store, schema
from gateway.store.tables import usage
from gateway.usage import UsageRecord, UsageWriter
from gateway.usage import writer as usage_writer
from tests.conftest import POSTGRES_URL


def _record(i: int = 0, **changes) -> UsageRecord:
    values = dict(
        ts=datetime.now(UTC),
        key_id="key_0000000000000001",
        operation="chat",
        model="m",
        status=200,
        duration_ms=12.5,
        upstream_ms=10.25,
        request_id=f"req-{i}",
    )
    values.update(changes)
    return UsageRecord(**values)


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(usage)).scalar_one()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    store = Store(gateway_store.database_url(Settings(database_url=database_url)), auto_upgrade=False)
    schema.upgrade(store.engine)
    yield store.engine
    store.dispose()


@pytest.fixture
def writers() -> Iterator[list[UsageWriter]]:
    made: list[UsageWriter] = []
    yield made
    for writer in made:
        writer.stop(timeout=2)


def test_recorded_rows_are_written_with_every_field(engine: Engine, writers) -> None:
    writer = UsageWriter(engine, interval=0.05)
    writers.append(writer)
    long_model = "m" * 300
    writer.record(_record(1, model=long_model, prompt_tokens=3, completion_tokens=4, total_tokens=7, tokens_estimated=True))
    writer.record(_record(2, model=None, status=502, upstream_ms=None))
    assert writer.flush(timeout=5)
    with engine.connect() as connection:
        rows = [row._asdict() for row in connection.execute(select(usage).order_by(usage.c.id))]
    assert [row["request_id"] for row in rows] == ["req-1", "req-2"]
    first, second = rows
    assert first["model"] == "m" * 200 and first["total_tokens"] == 7 and first["tokens_estimated"] is True
    assert first["duration_ms"] == 12.5 and first["upstream_ms"] == 10.25 and first["ts"].tzinfo is not None
    assert second["model"] is None and second["status"] == 502 and second["prompt_tokens"] is None
    assert writer.written == 2 and writer.dropped == 0


def test_rows_are_written_without_a_flush_after_the_interval(engine: Engine, writers) -> None:
    writer = UsageWriter(engine, interval=0.05)
    writers.append(writer)
    writer.record(_record())
    deadline = time.monotonic() + 5
    while _count(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _count(engine) == 1


def test_rows_are_inserted_in_batches(engine: Engine, writers, monkeypatch) -> None:
    writer = UsageWriter(engine, interval=0.5, batch_size=50)
    writers.append(writer)
    sizes: list[int] = []
    real = writer._insert
    monkeypatch.setattr(writer, "_insert", lambda batch: sizes.append(len(batch)) or real(batch))
    for i in range(120):
        writer.record(_record(i))
    assert writer.flush(timeout=5)
    assert sum(sizes) == 120 and max(sizes) <= 50 and len(sizes) <= 10  # 3 unless the machine is very busy
    assert _count(engine) == 120


def test_record_never_waits_for_the_database(engine: Engine, writers, monkeypatch) -> None:
    writer = UsageWriter(engine, interval=0.01)
    writers.append(writer)
    release = threading.Event()
    real = writer._insert
    monkeypatch.setattr(writer, "_insert", lambda batch: release.wait(10) and real(batch))
    started = time.perf_counter()
    for i in range(200):
        assert writer.record(_record(i))
    assert time.perf_counter() - started < 0.5
    release.set()
    assert writer.flush(timeout=5) and _count(engine) == 200


def test_a_full_queue_counts_and_logs_its_drops(engine: Engine, writers, monkeypatch, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway")
    writer = UsageWriter(engine, queue_size=5, batch_size=1, interval=0.01)
    writers.append(writer)
    inserting, release = threading.Event(), threading.Event()
    real = writer._insert

    def held(batch):
        inserting.set()
        release.wait(10)
        real(batch)

    monkeypatch.setattr(writer, "_insert", held)
    assert writer.record(_record(0))
    assert inserting.wait(5)  # the writer holds record 0; the queue is empty again
    accepted = [writer.record(_record(i)) for i in range(1, 20)]
    assert accepted == [True] * 5 + [False] * 14
    assert writer.dropped == 14
    assert "usage records dropped" in caplog.text
    dropped_logs = [r for r in caplog.records if r.getMessage().startswith("usage records dropped")]
    assert len(dropped_logs) == 1 and dropped_logs[0].fields["dropped"] == 1  # logged once per interval
    release.set()
    writer.stop(timeout=5)
    assert _count(engine) == 6
    final = [r for r in caplog.records if r.getMessage().startswith("usage records dropped")]
    assert sum(r.fields["dropped"] for r in final) == 14 and final[-1].fields["dropped_total"] == 14


def test_a_watcher_follows_depth_and_drops_in_order(engine: Engine, writers, monkeypatch) -> None:
    writer = UsageWriter(engine, queue_size=2, batch_size=10, interval=0.01)
    writers.append(writer)
    seen: list[tuple[int, int]] = []
    writer.watch(lambda depth, dropped: seen.append((depth, dropped)))
    writer.watch(lambda depth, dropped: 1 / 0)  # a broken watcher is logged, never passed on
    monkeypatch.setattr(writer, "_start", lambda: None)  # no writer thread yet: the queue only fills
    assert [writer.record(_record(i)) for i in range(3)] == [True, True, False]
    assert seen == [(1, 0), (2, 0), (2, 1)]
    monkeypatch.undo()
    writer._start()
    assert writer.flush(timeout=5)
    assert seen[-1] == (0, 0) and sum(dropped for _, dropped in seen) == writer.dropped == 1


def test_stop_flushes_everything_queued(engine: Engine) -> None:
    writer = UsageWriter(engine, interval=30)  # batches would wait 30 s: only the stop writes them
    for i in range(25):
        writer.record(_record(i))
    usage_module.stop_all(timeout=5)
    assert _count(engine) == 25 and writer.written == 25
    assert writer not in usage_writer._started


def test_a_database_outage_is_retried_without_losing_rows(writers, caplog, tmp_path) -> None:
    """Another connection holds SQLite's write lock: inserts fail ("database is locked") until it lets go."""
    caplog.set_level(logging.INFO, logger="gateway")
    path = tmp_path / "gateway.db"
    store = Store(make_url(f"sqlite:///{path}"), auto_upgrade=False)
    schema.upgrade(store.engine)
    impatient = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.01})
    writer = UsageWriter(impatient, interval=0.01, max_backoff=0.2)
    writers.append(writer)
    blocker = store.engine.raw_connection()
    blocker.execute("BEGIN EXCLUSIVE")
    for i in range(30):
        writer.record(_record(i))
    deadline = time.monotonic() + 5
    while "usage write failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "usage write failed (OperationalError)" in caplog.text
    assert writer.written == 0 and writer.depth == 30
    blocker.rollback()
    blocker.close()
    assert writer.flush(timeout=5)
    assert _count(store.engine) == 30 and writer.dropped == 0
    assert "usage writes resumed" in caplog.text
    impatient.dispose()
    store.dispose()


@pytest.mark.timeout(60)
def test_a_postgresql_database_that_disappears_and_returns_loses_nothing_queued(writers, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    name = "gw_outage_" + str(time.time_ns())
    admin = psycopg.connect(POSTGRES_URL, autocommit=True)
    base = make_url(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    url = base.set(database=name)

    def create_database() -> None:
        admin.execute(f'CREATE DATABASE "{name}"')
        store = Store(url, auto_upgrade=False)
        schema.upgrade(store.engine)
        store.dispose()

    create_database()
    engine = Store(url, auto_upgrade=False).engine
    writer = UsageWriter(engine, interval=0.01, max_backoff=0.2)
    writers.append(writer)
    try:
        writer.record(_record(0))
        assert writer.flush(timeout=5) and writer.written == 1
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # the outage: connections cut, database gone
        for i in range(1, 11):
            writer.record(_record(i))
        deadline = time.monotonic() + 5
        while "usage write failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "usage write failed" in caplog.text and writer.depth == 10
        create_database()  # back, empty (as after a restore)
        assert writer.flush(timeout=10)
        with engine.connect() as connection:
            written = connection.execute(select(usage.c.request_id).order_by(usage.c.id)).scalars().all()
        assert written == [f"req-{i}" for i in range(1, 11)]
    finally:
        writer.stop(timeout=1)
        engine.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_a_bad_record_is_dropped_loudly_and_the_writer_goes_on(engine: Engine, writers, caplog) -> None:
    writer = UsageWriter(engine, interval=0.01)
    writers.append(writer)
    writer.record(_record(0, ts=datetime.now()))  # naive: refused before it reaches the database
    assert writer.flush(timeout=5)
    bad = [r for r in caplog.records if "it is dropped" in r.getMessage()]
    assert writer.dropped == 1 and len(bad) == 1 and bad[0].fields["request_id"] == "req-0"
    writer.record(_record(1))
    assert writer.flush(timeout=5) and _count(engine) == 1


def _one_batch_of_41(engine: Engine, writers, monkeypatch, poisoned: dict) -> tuple[UsageWriter, list[int]]:
    """41 records, the 21st poisoned, written as one batch (held until the flush)."""
    writer = UsageWriter(engine, interval=30, batch_size=50)
    writers.append(writer)
    sizes: list[int] = []
    real = writer._insert
    monkeypatch.setattr(writer, "_insert", lambda batch: sizes.append(len(batch)) or real(batch))
    for i in range(41):
        assert writer.record(_record(i, **(poisoned if i == 20 else {})))
    assert writer.flush(timeout=10)
    assert sizes[0] == 41  # the poisoned row was in the batch with everyone else's
    return writer, sizes


@pytest.mark.parametrize("model", ["a\x00b", "\ud800", "x\udc00y\x00"], ids=["nul", "surrogate", "both"])
def test_text_a_database_cannot_store_is_replaced_and_no_row_is_lost(engine: Engine, writers, monkeypatch, model: str) -> None:
    writer, _ = _one_batch_of_41(engine, writers, monkeypatch, {"model": model, "request_id": "req-\x00" + model})
    assert writer.written == 41 and writer.dropped == 0
    with engine.connect() as connection:
        rows = connection.execute(select(usage.c.model, usage.c.request_id).order_by(usage.c.id)).all()
    assert len(rows) == 41
    assert rows[20] == (
        model.replace("\x00", "\ufffd").replace("\ud800", "\ufffd").replace("\udc00", "\ufffd"),
        "req-\ufffd" + rows[20][0],
    )


def test_a_row_the_database_refuses_is_dropped_alone_and_logged_without_its_text(engine: Engine, writers, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    writer, sizes = _one_batch_of_41(engine, writers, monkeypatch, {"prompt_tokens": 2**70, "model": "prompt-like-text-never-logged"})
    assert writer.written == 40 and writer.dropped == 1
    with engine.connect() as connection:
        written = connection.execute(select(usage.c.request_id).order_by(usage.c.id)).scalars().all()
    assert written == [f"req-{i}" for i in range(41) if i != 20]
    assert sizes == [41] + [1] * 41  # the batch, then each row on its own
    refused = [r for r in caplog.records if r.getMessage().startswith("usage record refused by the database")]
    assert len(refused) == 1 and refused[0].levelname == "ERROR" and refused[0].fields["request_id"] == "req-20"
    assert "prompt-like-text-never-logged" not in caplog.text and str(2**70) not in caplog.text
    writer.record(_record(99))  # and the writer goes on
    assert writer.flush(timeout=5) and _count(engine) == 41


def test_an_outage_while_writing_row_by_row_keeps_the_rest_for_later(engine: Engine, writers, monkeypatch) -> None:
    from sqlalchemy.exc import OperationalError

    writer = UsageWriter(engine, interval=30, batch_size=50, max_backoff=0.05)
    writers.append(writer)
    real = writer._insert
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 4:  # the batch, two rows one by one, then the database goes away once
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(batch)

    monkeypatch.setattr(writer, "_insert", flaky)
    for i in range(5):
        writer.record(_record(i, **({"prompt_tokens": 2**70} if i == 0 else {})))
    assert writer.flush(timeout=10)
    assert writer.written == 4 and writer.dropped == 1 and _count(engine) == 4


def test_a_stop_during_an_outage_reports_what_it_lost(writers, caplog, tmp_path) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    engine = create_engine(f"sqlite:///{tmp_path}/missing/nothing-here.db")  # never migrated: no usage table
    writer = UsageWriter(engine, interval=0.01, max_backoff=0.05)
    for i in range(7):
        writer.record(_record(i))
    writer.stop(timeout=0.3)
    assert writer.dropped == 7 and writer.written == 0
    lost = [r for r in caplog.records if r.getMessage().startswith("usage records lost at stop")]
    assert len(lost) == 1 and lost[0].fields["lost"] == 7
    engine.dispose()


def test_a_forked_child_does_not_write_its_parents_queue(engine: Engine, monkeypatch) -> None:
    writer = UsageWriter(engine, batch_size=1, interval=0.01)
    parent = os.getpid()
    inserting, release = threading.Event(), threading.Event()
    real = writer._insert

    def held(batch):
        if os.getpid() == parent:
            inserting.set()
            release.wait(10)
        real(batch)

    monkeypatch.setattr(writer, "_insert", held)
    writer.record(_record(0))
    assert inserting.wait(5)
    writer.record(_record(1))
    writer.record(_record(2))  # records 1 and 2 are in the queue when the process forks
    child = os.fork()
    if child == 0:  # the child writes only what it recorded itself
        try:
            writer.record(_record(3))
            os._exit(0 if writer.flush(timeout=5) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    release.set()
    writer.stop(timeout=5)
    with engine.connect() as connection:
        written = connection.execute(select(usage.c.request_id)).scalars().all()
    assert sorted(written) == ["req-0", "req-1", "req-2", "req-3"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("USAGE_QUEUE_SIZE", "0"), ("USAGE_QUEUE_SIZE", "lots"), ("USAGE_BATCH_SECONDS", "0"), ("USAGE_BATCH_SECONDS", "61")],
)
def test_bad_usage_settings_are_refused(name: str, value: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match=name):
        load(environ={name: value}, env_file="/nonexistent", overrides={"instance_path": str(tmp_path)})
