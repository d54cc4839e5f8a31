"""The console's reads (:mod:`gateway.console`): aggregates in the database, one short query each.

Every figure is computed by the database (``COUNT``, ``SUM``, ``GROUP BY``, an ordered
pick for a percentile); no Python loop ever walks usage rows. Sums over whole UTC days
(the usage page, today's totals) read the daily roll-up (:mod:`gateway.store.usage_daily`):
a few rows per day, key and model, however many requests they hold. Rolling windows (the
last hour, the last 24 hours) read the rows a time range selects through the index on
``usage(ts)`` (measured in ``tests/integration/test_console_speed.py``).

Latency percentiles are the nearest-rank kind (the value at rank ⌈q·n⌉ of the sorted
durations), the same on both databases: PostgreSQL's ``percentile_disc``, and on SQLite
(which has no percentile function) one ``ORDER BY ... LIMIT 1 OFFSET`` per percentile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, case, func, or_, select

from gateway.store import usage_daily
from gateway.store.keys import KeyRecord
from gateway.store.tables import api_keys, usage
from gateway.store.tables import usage_daily as daily
from gateway.store.usage_report import Totals, UsageFilter, UsageReport, utc_day

PERCENTILES = (0.5, 0.95)
TOP = 5
MAX_GROUPS = 20_000  # (day, key, model) groups read at most; past it the days are summed by a query of their own


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


@dataclass(frozen=True)
class Group:
    """Usage summed over one (UTC day, key, model), or over one day (``key`` and ``model`` ``None``)."""

    day: str
    key: str | None
    model: str | None
    requests: int
    errors: int
    total_tokens: int
    cost_usd: float | None

    def plus(self, other: Group) -> Group:
        cost = other.cost_usd if self.cost_usd is None else self.cost_usd + (other.cost_usd or 0.0)
        return Group(
            self.day,
            None,
            None,
            self.requests + other.requests,
            self.errors + other.errors,
            self.total_tokens + other.total_tokens,
            cost,
        )


@dataclass(frozen=True)
class Breakdown:
    """The usage page: per day (the chart), and per day, key and model (the table), busiest first."""

    days: list[Group]  # oldest first
    groups: list[Group]  # newest day first, then by requests; at most the ``rows`` asked for
    group_count: int  # groups in the range (at least len(groups); MAX_GROUPS + 1 means "more")

    @property
    def totals(self) -> Group:
        total = _ZERO
        for day in self.days:
            total = total.plus(day)
        return total


def _in_range(start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [usage.c.ts >= start, usage.c.ts < end]


def _group(row: Any, key: str | None, model: str | None) -> Group:
    day = row.day.isoformat() if hasattr(row.day, "isoformat") else str(row.day)
    return Group(day, key, model, int(row.requests), int(row.errors), int(row.total_tokens), _cost(row.cost_usd))


_ZERO = Group("", None, None, 0, 0, 0, None)


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

    def totals(self, where: UsageFilter) -> Totals:
        """What the rows ``where`` selects add up to: from the roll-up over whole days, else from ``usage``."""
        if not usage_daily.covers(where):
            return UsageReport(self.engine).totals(where)
        with self.engine.connect() as connection:
            return usage_daily.totals_of(connection.execute(select(*usage_daily.TOTALS).where(*usage_daily.conditions(where))).one())

    def breakdown(self, where: UsageFilter, *, rows: int) -> Breakdown:
        """Sums per day (the chart) and per day, key and model (the table's ``rows`` newest and
        busiest), from the roll-up over whole days, else one ``GROUP BY`` over ``usage``."""
        with self.engine.connect() as connection:
            if usage_daily.covers(where):
                return self._breakdown_daily(connection, where, rows)
            return self._breakdown_rows(connection, where, rows)

    @staticmethod
    def _breakdown_daily(connection: Connection, where: UsageFilter, rows: int) -> Breakdown:
        conditions = usage_daily.conditions(where)
        requests = func.sum(daily.c.requests).label("requests")
        sums = (
            requests,
            func.sum(daily.c.errors).label("errors"),
            func.sum(daily.c.total_tokens).label("total_tokens"),
            func.sum(daily.c.cost_usd).label("cost_usd"),
        )
        grouping = (daily.c.day, daily.c.key_id, daily.c.model, daily.c.has_model)
        model = case((daily.c.has_model, daily.c.model), else_=None).label("shown_model")
        table = (
            select(*grouping, model, *sums)
            .where(*conditions)
            .group_by(*grouping)
            .order_by(daily.c.day.desc(), requests.desc(), daily.c.key_id, daily.c.model, daily.c.has_model)
            .limit(rows)
        )
        found = [_group(row, row.key_id, row.shown_model) for row in connection.execute(table)]
        counted = select(*grouping).where(*conditions).group_by(*grouping).limit(MAX_GROUPS + 1).subquery()
        group_count = int(connection.execute(select(func.count()).select_from(counted)).scalar_one())
        by_day = select(daily.c.day, *sums).where(*conditions).group_by(daily.c.day).order_by(daily.c.day)
        days = [_group(row, None, None) for row in connection.execute(by_day)]
        return Breakdown(days, found, group_count)

    @staticmethod
    def _breakdown_rows(connection: Connection, where: UsageFilter, rows: int) -> Breakdown:
        """One ``GROUP BY`` day, key and model over the range (the database sums the rows); the
        days' sums are added up from those groups, or, past :data:`MAX_GROUPS`, asked for on their own."""
        day = utc_day(usage.c.ts).label("day")
        sums = (
            func.count().label("requests"),
            func.count().filter(usage.c.status >= 400).label("errors"),
            func.coalesce(func.sum(usage.c.total_tokens), 0).label("total_tokens"),
            func.sum(usage.c.cost_usd).label("cost_usd"),
        )
        query = (
            select(day, usage.c.key_id, usage.c.model, *sums).where(*where.conditions()).group_by(day, usage.c.key_id, usage.c.model)
        )
        found = [_group(row, row.key_id, row.model) for row in connection.execute(query.limit(MAX_GROUPS + 1))]
        if len(found) > MAX_GROUPS:
            by_day = select(day, *sums).where(*where.conditions()).group_by(day).order_by(day)
            days = [_group(row, None, None) for row in connection.execute(by_day)]
        else:
            summed: dict[str, Group] = {}
            for group in found:  # groups, not usage rows: at most MAX_GROUPS
                summed[group.day] = summed[group.day].plus(group) if group.day in summed else group.plus(_ZERO)
            days = [summed[name] for name in sorted(summed)]
        found.sort(key=lambda group: (group.day, group.requests), reverse=True)
        return Breakdown(days, found[:rows], len(found))

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
