"""The daily roll-up of usage (table ``usage_daily``): written with the rows, read over whole days.

Writing: :func:`add` sums a batch of usage rows in Python per (UTC day, key, model,
operation) and adds each sum to its roll-up row with one upsert (``INSERT ... ON CONFLICT
DO UPDATE SET n = n + excluded.n``), on the connection, so in the transaction, that inserts
the rows themselves: a batch that is rolled back (or a row refused when written alone)
counts nowhere. Additions commute, so writers in several processes and hosts may add to
the same day at once; each takes its roll-up rows in one sorted order, so two batches
never wait on each other's rows in opposite orders (no deadlock on PostgreSQL).

Reading: a question over whole UTC days (:func:`covers`) is answered from the roll-up
(:func:`conditions` selects its rows), a few rows per day and key instead of one per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, Insert, func
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store.tables import usage_daily
from gateway.store.usage_report import Totals, UsageFilter

GROUPING = ("day", "key_id", "model", "has_model", "operation")  # the primary key
COUNTS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "estimated_requests",
    "unpriced_requests",
)


def sums_of(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The roll-up rows a batch of usage rows (as :meth:`UsageRecord.row` makes them) adds up to,
    in primary-key order. Pure: no database."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        model = row.get("model")
        day = row["ts"].astimezone(UTC).date()
        key = (day, row["key_id"], model or "", model is not None, row["operation"])
        sums = found.get(key)
        if sums is None:
            sums = found[key] = dict(zip(GROUPING, key, strict=True)) | dict.fromkeys(COUNTS, 0) | {"cost_usd": None}
        prompt, completion = row.get("prompt_tokens") or 0, row.get("completion_tokens") or 0
        cost: Decimal | None = row.get("cost_usd")
        sums["requests"] += 1
        sums["errors"] += row["status"] >= 400
        sums["prompt_tokens"] += prompt
        sums["completion_tokens"] += completion
        sums["total_tokens"] += row.get("total_tokens") or 0
        sums["reasoning_tokens"] += row.get("reasoning_tokens") or 0
        sums["cached_tokens"] += row.get("cached_tokens") or 0
        sums["estimated_requests"] += bool(row.get("tokens_estimated"))
        if cost is not None:
            sums["cost_usd"] = cost if sums["cost_usd"] is None else sums["cost_usd"] + cost
        elif prompt + completion > 0:
            sums["unpriced_requests"] += 1
    return [found[key] for key in sorted(found)]


def _upsert(dialect: str) -> Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(usage_daily)
    new, old = statement.excluded, usage_daily.c
    added: dict[str, Any] = {name: old[name] + new[name] for name in COUNTS}
    # SUM's meaning: NULL while no row had a cost, else the sum of those that had one.
    added["cost_usd"] = func.coalesce(old.cost_usd + new.cost_usd, old.cost_usd, new.cost_usd)
    return statement.on_conflict_do_update(index_elements=list(GROUPING), set_=added)


_UPSERTS = {name: _upsert(name) for name in ("postgresql", "sqlite")}  # built once, compiled once each


def add(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Add these usage rows (being inserted on ``connection``, in its transaction) to the roll-up."""
    sums = sums_of(rows)
    if sums:
        connection.execute(_UPSERTS[connection.dialect.name], sums)


def _midnight(moment: datetime | None) -> bool:
    return moment is None or (moment.tzinfo is not None and moment.astimezone(UTC).time() == time(0))


def covers(where: UsageFilter) -> bool:
    """Whether the roll-up answers ``where`` exactly: its range starts and ends at UTC midnights (or is open)."""
    return _midnight(where.start) and _midnight(where.end)


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def conditions(where: UsageFilter) -> list[ColumnElement[bool]]:
    """The roll-up rows holding the usage rows ``where`` selects (when :func:`covers` holds)."""
    found: list[ColumnElement[bool]] = []
    if where.key_id is not None:
        found.append(usage_daily.c.key_id == where.key_id)
    if where.model is not None:
        found += [usage_daily.c.model == where.model, usage_daily.c.has_model.is_(True)]
    if where.operation is not None:
        found.append(usage_daily.c.operation == where.operation)
    if where.start is not None:
        found.append(usage_daily.c.day >= _day(where.start))
    if where.end is not None:
        found.append(usage_daily.c.day < _day(where.end))
    return found


TOTALS = tuple(func.coalesce(func.sum(usage_daily.c[name]), 0).label(name) for name in COUNTS) + (
    func.sum(usage_daily.c.cost_usd).label("cost_usd"),
)


def totals_of(row: Any) -> Totals:
    """:class:`Totals` from a row of :data:`TOTALS` (PostgreSQL's sums of BIGINT are NUMERIC)."""
    cost = row.cost_usd
    return Totals(**{name: int(getattr(row, name)) for name in COUNTS}, cost_usd=None if cost is None else float(cost))
