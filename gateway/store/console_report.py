"""The console's reads (:mod:`gateway.console`): aggregates in the database, one short query each.

Every figure is computed by the database (``COUNT``, ``SUM``, ``GROUP BY``, an ordered
pick for a percentile) over the rows a time range selects through the index on
``usage(ts)``; no Python loop ever walks usage rows, so a page costs the same with a
hundred rows or a hundred thousand in its range (measured in
``tests/integration/test_console_speed.py``).

Latency percentiles are the nearest-rank kind (the value at rank ⌈q·n⌉ of the sorted
durations), the same on both databases: PostgreSQL's ``percentile_disc``, and on SQLite
(which has no percentile function) one ``ORDER BY ... LIMIT 1 OFFSET`` per percentile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, or_, select

from gateway.store.keys import KeyRecord
from gateway.store.tables import api_keys, usage

PERCENTILES = (0.5, 0.95)
TOP = 5


@dataclass(frozen=True)
class WindowStats:
    """Requests in a time range: how many, how many failed, and the latency percentiles (ms)."""

    requests: int
    errors: int
    p50_ms: float | None  # None: no request in the range
    p95_ms: float | None

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Ranked:
    """One key or model among the busiest in a range."""

    name: str | None
    requests: int
    errors: int
    total_tokens: int
    cost_usd: float | None


@dataclass(frozen=True)
class KeyPage:
    records: list[KeyRecord]
    total: int  # keys matching the search, over every page


def _in_range(start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [usage.c.ts >= start, usage.c.ts < end]


def _cost(value: Any) -> float | None:
    """A sum of ``cost_usd`` (exact numeric on PostgreSQL) as a float; ``None``: no row had a cost."""
    return None if value is None else float(value)


class ConsoleReport:
    """:raises sqlalchemy.exc.SQLAlchemyError: when the database fails."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def window(self, start: datetime, end: datetime) -> WindowStats:
        """Requests, errors (status >= 400) and p50/p95 of ``duration_ms`` from ``start`` (inclusive) to ``end``."""
        where = _in_range(start, end)
        counts = select(func.count().label("n"), func.count().filter(usage.c.status >= 400).label("errors")).where(*where)
        with self.engine.connect() as connection:
            row = connection.execute(counts).one()
            n, errors = int(row.n), int(row.errors)
            if n == 0:
                return WindowStats(0, 0, None, None)
            if connection.dialect.name == "postgresql":
                picks = [func.percentile_disc(q).within_group(usage.c.duration_ms) for q in PERCENTILES]
                found = list(connection.execute(select(*picks).where(*where)).one())
            else:
                found = []
                for q in PERCENTILES:
                    rank = max(1, math.ceil(q * n))
                    query = select(usage.c.duration_ms).where(*where).order_by(usage.c.duration_ms).limit(1).offset(rank - 1)
                    found.append(connection.execute(query).scalar())
        p50, p95 = (float(value) if value is not None else None for value in found)
        return WindowStats(n, errors, p50, p95)

    def top(self, grouping: str, start: datetime, end: datetime, *, limit: int = TOP) -> list[Ranked]:
        """The ``limit`` busiest keys (``grouping="key"``) or models (``"model"``) in the range, by requests."""
        column: Any = {"key": usage.c.key_id, "model": usage.c.model}[grouping]
        requests = func.count().label("requests")
        query = (
            select(
                column.label("name"),
                requests,
                func.count().filter(usage.c.status >= 400).label("errors"),
                func.coalesce(func.sum(usage.c.total_tokens), 0).label("total_tokens"),
                func.sum(usage.c.cost_usd).label("cost_usd"),
            )
            .where(*_in_range(start, end))
            .group_by(column)
            .order_by(requests.desc(), column.asc().nulls_last())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            Ranked(
                row.name,
                int(row.requests),
                int(row.errors),
                int(row.total_tokens),
                None if row.cost_usd is None else float(row.cost_usd),
            )
            for row in rows
        ]

    def keys(self, search: str, *, offset: int, limit: int) -> KeyPage:
        """Managed keys whose name, id or prefix contains ``search`` (any case), newest first."""
        conditions: list[ColumnElement[bool]] = []
        if search:
            needle = search.lower()
            conditions.append(
                or_(
                    func.lower(api_keys.c.name).contains(needle, autoescape=True),
                    func.lower(api_keys.c.id).contains(needle, autoescape=True),
                    func.lower(api_keys.c.prefix).contains(needle, autoescape=True),
                )
            )
        query = select(api_keys).where(*conditions).order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc())
        with self.engine.connect() as connection:
            total = int(connection.execute(select(func.count()).select_from(api_keys).where(*conditions)).scalar_one())
            rows = connection.execute(query.offset(offset).limit(limit)).all()
        return KeyPage([KeyRecord.from_row(row) for row in rows], total)

    def key_names(self, key_ids: list[str]) -> dict[str, str]:
        """The names of these keys (for showing ids), one indexed query."""
        if not key_ids:
            return {}
        with self.engine.connect() as connection:
            rows = connection.execute(select(api_keys.c.id, api_keys.c.name).where(api_keys.c.id.in_(key_ids))).all()
        return {row.id: row.name for row in rows}
