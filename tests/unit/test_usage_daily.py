"""The daily roll-up (``usage_daily``) always equals a GROUP BY over the ``usage`` rows stored.

After mixed batches, after a batch refused and written row by row, with writers in
several "processes" (engines) at once, and after migration 0006 backfills a database that
already holds rows; and the console's whole-day sums read from it equal those read from
the rows. On a SQLite file and on a PostgreSQL schema (``database_url``); PostgreSQL's
sessions run at UTC+14, so a day cut at the session's time zone would show.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import Engine, event, insert, select

from gateway import store as gateway_store
from gateway.config import Settings
from gateway.store import Store, schema, usage_daily
from gateway.store.console_report import ConsoleReport
from gateway.store.tables import usage
from gateway.store.tables import usage_daily as daily
from gateway.store.usage_report import Totals, UsageFilter, UsageReport
from gateway.usage import UsageRecord, UsageWriter

MIDNIGHT = datetime(2026, 11, 28, tzinfo=UTC)
KEYS = ("key_000000000000000a", "key_000000000000000b", "key_000000000000000c")
MODELS = ("gpt-4o", "", None, "llama-3")  # a request without a model, and one naming the empty model
OPERATIONS = ("chat", "embeddings")


def _record(rnd: random.Random, i: int) -> UsageRecord:
    """A record within two minutes of a UTC midnight (either side), some in another time zone."""
    ts = MIDNIGHT + timedelta(days=rnd.randrange(3), seconds=rnd.uniform(-120, 120))
    if i % 3 == 0:
        ts = ts.astimezone(timezone(timedelta(hours=-5)))
    priced = rnd.random() < 0.6
    failed = rnd.random() < 0.2
    tokens = None if failed or rnd.random() < 0.1 else rnd.randrange(1, 500)
    return UsageRecord(
        ts=ts,
        key_id=rnd.choice(KEYS),
        operation=rnd.choice(OPERATIONS),
        model=rnd.choice(MODELS),
        status=rnd.choice((429, 502)) if failed else 200,
        duration_ms=rnd.uniform(1, 900),
        upstream_ms=None,
        request_id=f"req-{i}",
        prompt_tokens=tokens,
        completion_tokens=None if tokens is None else tokens // 2,
        total_tokens=None if tokens is None else tokens + tokens // 2,
        tokens_estimated=rnd.random() < 0.3,
        reasoning_tokens=None if tokens is None else tokens // 7,
        cached_tokens=None if tokens is None else tokens // 5,
        cost_usd=Decimal(rnd.randrange(1, 10**9)).scaleb(-12) if priced and tokens else None,
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    store = Store(gateway_store.database_url(Settings(database_url=database_url)), auto_upgrade=False)
    if store.engine.dialect.name == "postgresql":
        event.listen(store.engine, "connect", _far_time_zone)
    yield store.engine
    store.dispose()


def _far_time_zone(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("SET TIME ZONE 'Pacific/Kiritimati'")  # UTC+14
    cursor.close()
    connection.commit()


def _from_rows(engine: Engine) -> dict[tuple, Totals]:
    """A GROUP BY day, key, model and operation over ``usage`` (NULL and '' models apart)."""
    grouped = UsageReport(engine).grouped(UsageFilter(), ["day", "key", "model", "operation"], max_groups=10_000)
    assert not grouped.truncated
    return {tuple(group.values.values()): group.totals for group in grouped.groups}


def _from_rollup(engine: Engine) -> dict[tuple, Totals]:
    with engine.connect() as connection:
        rows = connection.execute(select(daily)).all()
    return {
        (row.day.isoformat(), row.key_id, row.model if row.has_model else None, row.operation): usage_daily.totals_of(row)
        for row in rows
    }


def _assert_consistent(engine: Engine, requests: int) -> None:
    expected, found = _from_rows(engine), _from_rollup(engine)
    assert sum(totals.requests for totals in expected.values()) == requests
    assert found.keys() == expected.keys()
    for group, totals in expected.items():
        # SQLite keeps costs as doubles, summed in another order: equal to far below a cent.
        assert found[group].as_dict() | {"cost_usd": None} == totals.as_dict() | {"cost_usd": None}, group
        assert found[group].cost_usd == pytest.approx(totals.cost_usd, abs=1e-12), group


def _write(engine: Engine, records: list[UsageRecord], **options) -> UsageWriter:
    writer = UsageWriter(engine, interval=0.01, **options)
    try:
        for record in records:
            assert writer.record(record)
        assert writer.flush(timeout=30)
    finally:
        writer.stop(timeout=5)
    return writer


def test_sums_of_a_batch_keep_a_missing_model_apart_from_the_empty_one() -> None:
    late = datetime(2026, 11, 28, 20, tzinfo=timezone(timedelta(hours=-5)))  # 01:00 UTC the next day
    rows = [
        {"ts": late, "key_id": "k", "operation": "chat", "model": None, "status": 200, "prompt_tokens": 3, "cost_usd": None},
        {"ts": late, "key_id": "k", "operation": "chat", "model": "", "status": 502},
        {"ts": late, "key_id": "k", "operation": "chat", "model": None, "status": 200, "cost_usd": Decimal("0.5")},
    ]
    sums = usage_daily.sums_of(rows)
    assert [(s["day"].isoformat(), s["model"], s["has_model"], s["requests"]) for s in sums] == [
        ("2026-11-29", "", False, 2),
        ("2026-11-29", "", True, 1),
    ]
    assert sums[0]["unpriced_requests"] == 1 and sums[0]["cost_usd"] == Decimal("0.5") and sums[1]["errors"] == 1
    assert sums[1]["cost_usd"] is None and sums[1]["unpriced_requests"] == 0


def test_the_rollup_equals_the_rows_after_mixed_batches(engine: Engine) -> None:
    schema.upgrade(engine)
    rnd = random.Random(6)
    records = [_record(rnd, i) for i in range(700)]
    writer = _write(engine, records, batch_size=37)
    assert writer.written == 700
    _assert_consistent(engine, 700)


def test_a_refused_batch_written_row_by_row_counts_only_the_rows_stored(engine: Engine) -> None:
    schema.upgrade(engine)
    rnd = random.Random(7)
    records = [_record(rnd, i) for i in range(60)]
    records[13] = UsageRecord(**{**records[13].__dict__, "prompt_tokens": 2**70})  # no BIGINT holds it
    records[40] = UsageRecord(**{**records[40].__dict__, "total_tokens": -(2**70)})
    writer = _write(engine, records, batch_size=60)
    assert writer.written == 58 and writer.dropped == 2
    _assert_consistent(engine, 58)


def test_writers_in_several_processes_add_to_the_same_days_at_once(database_url: str, engine: Engine) -> None:
    """Four engines (as four workers or hosts would have), each writing the same few groups
    in small batches, all at once: no addition is lost and no transaction deadlocks."""
    schema.upgrade(engine)
    url = gateway_store.database_url(Settings(database_url=database_url))
    stores = [Store(url, auto_upgrade=False) for _ in range(4)]
    rnd = random.Random(8)
    shares = [[_record(rnd, n * 1000 + i) for i in range(400)] for n in range(len(stores))]
    start = threading.Barrier(len(stores))
    written: list[int] = []

    def run(store: Store, records: list[UsageRecord]) -> None:
        start.wait()
        written.append(_write(store.engine, records, batch_size=10).written)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(stores, shares, strict=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for store in stores:
            store.dispose()
    assert written == [400] * 4
    _assert_consistent(engine, 1600)


def test_migration_0006_backfills_the_rows_already_stored(engine: Engine) -> None:
    with engine.begin() as connection:
        config = schema.alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
    rnd = random.Random(9)
    rows = [_record(rnd, i).row() for i in range(500)]
    with engine.begin() as connection:
        connection.execute(insert(usage), rows)
    assert schema.upgrade(engine) == ("0005", schema.head())
    _assert_consistent(engine, 500)
    _write(engine, [_record(rnd, 500 + i) for i in range(100)], batch_size=25)  # and the writer adds to it
    _assert_consistent(engine, 600)


def test_the_console_reads_the_same_sums_from_the_rollup_as_from_the_rows(engine: Engine) -> None:
    schema.upgrade(engine)
    rnd = random.Random(10)
    _write(engine, [_record(rnd, i) for i in range(400)], batch_size=50)
    console, report = ConsoleReport(engine), UsageReport(engine)
    ranges = [
        UsageFilter(start=MIDNIGHT, end=MIDNIGHT + timedelta(days=2)),
        UsageFilter(start=MIDNIGHT + timedelta(days=1)),
        UsageFilter(key_id=KEYS[1], model="", end=MIDNIGHT + timedelta(days=3)),
        UsageFilter(model="gpt-4o", operation="chat", start=MIDNIGHT - timedelta(days=1), end=MIDNIGHT + timedelta(days=5)),
    ]
    for where in ranges:
        assert usage_daily.covers(where)
        totals = console.totals(where)
        assert totals.as_dict() | {"cost_usd": None} == report.totals(where).as_dict() | {"cost_usd": None}
        assert totals.cost_usd == pytest.approx(report.totals(where).cost_usd, abs=1e-12)
        with engine.connect() as connection:
            rolled, counted = console._breakdown_daily(connection, where, 10_000), console._breakdown_rows(connection, where, 10_000)
        assert rolled.group_count == counted.group_count and len(rolled.groups) == len(counted.groups)
        assert _shown(rolled.days) == _shown(counted.days)
        assert sorted(_shown(rolled.groups), key=repr) == sorted(_shown(counted.groups), key=repr)
        table = console.breakdown(where, rows=5)
        assert [(g.day, g.requests) for g in table.groups] == sorted(((g.day, g.requests) for g in counted.groups), reverse=True)[:5]
    assert not usage_daily.covers(UsageFilter(start=MIDNIGHT + timedelta(hours=1)))


def _shown(groups) -> list[tuple]:
    return [(g.day, g.key, g.model, g.requests, g.errors, g.total_tokens, round(g.cost_usd or 0, 9)) for g in groups]
