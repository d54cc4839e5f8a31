"""Reading the ``usage`` table: totals and groups, one aggregate query each.

The same question gives the same answer on SQLite and PostgreSQL. The only
dialect-specific piece is the UTC calendar day of a timestamp (:class:`utc_day`):
SQLite keeps ``ts`` as UTC text, so ``date(ts)`` is already the UTC day; PostgreSQL
keeps a ``timestamptz`` and would cut days at the *session's* time zone, so the
value is first turned into UTC wall time.

Filters use the indexes on ``usage(ts)`` and ``usage(key_id, ts)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Date, Engine, Select, func, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from gateway.store.tables import COST_SCALE, usage

MAX_GROUPS = 1000

# What a caller may group by, and the column (or expression) behind each name.
GROUPINGS = ("day", "key", "model", "operation")


class utc_day(FunctionElement[date]):  # noqa: N801 (a SQL function, named like one)
    """The UTC calendar day of a ``usage.ts``-like timestamp column."""

    type = Date()
    name = "utc_day"
    inherit_cache = True


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(timezone('UTC', {compiler.process(element.clauses, **kw)}) AS DATE)"


def _grouping_column(name: str) -> ColumnElement[Any]:
    if name == "day":
        return utc_day(usage.c.ts)
    if name == "key":
        return usage.c.key_id
    if name == "model":
        return usage.c.model
    if name == "operation":
        return usage.c.operation
    raise ValueError(f"unknown grouping {name!r}")


@dataclass(frozen=True)
class UsageFilter:
    """Which rows count. ``None`` means no condition; ``start`` is inclusive, ``end`` exclusive."""

    key_id: str | None = None
    model: str | None = None
    operation: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if self.key_id is not None:
            conditions.append(usage.c.key_id == self.key_id)
        if self.model is not None:
            conditions.append(usage.c.model == self.model)
        if self.operation is not None:
            conditions.append(usage.c.operation == self.operation)
        if self.start is not None:
            conditions.append(usage.c.ts >= self.start)
        if self.end is not None:
            conditions.append(usage.c.ts < self.end)
        return conditions


@dataclass(frozen=True)
class Totals:
    """What a set of usage rows adds up to. Missing token counts count as 0.

    ``cost_usd`` sums the rows that have a cost; it is ``None`` when none has one (no
    price table, or no price for these models), never a made-up 0. ``unpriced_requests``
    counts the rows that used tokens but have no cost, so a partial sum is visible.
    """

    requests: int = 0
    errors: int = 0  # status >= 400
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens
    cached_tokens: int = 0  # of prompt_tokens
    estimated_requests: int = 0  # rows whose tokens were estimated, not reported by the upstream
    cost_usd: float | None = None
    unpriced_requests: int = 0  # rows with tokens but no cost

    def __add__(self, other: Totals) -> Totals:
        added: dict[str, Any] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            added[f.name] = theirs if mine is None else mine if theirs is None else mine + theirs
        return Totals(**added)

    def as_dict(self) -> dict[str, int | float | None]:
        shown: dict[str, int | float | None] = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.cost_usd is not None:  # the rows' scale: groups added as floats carry binary noise below it
            shown["cost_usd"] = round(self.cost_usd, COST_SCALE)
        return shown


_UNPRICED = usage.c.cost_usd.is_(None) & (func.coalesce(usage.c.prompt_tokens, 0) + func.coalesce(usage.c.completion_tokens, 0) > 0)
_TOTALS = (
    func.count().label("requests"),
    func.count().filter(usage.c.status >= 400).label("errors"),
    func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
    func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
    func.coalesce(func.sum(usage.c.total_tokens), 0).label("total_tokens"),
    func.coalesce(func.sum(usage.c.reasoning_tokens), 0).label("reasoning_tokens"),
    func.coalesce(func.sum(usage.c.cached_tokens), 0).label("cached_tokens"),
    func.count().filter(usage.c.tokens_estimated == true()).label("estimated_requests"),
    func.sum(usage.c.cost_usd).label("cost_usd"),  # NULL when no row has a cost
    func.count().filter(_UNPRICED).label("unpriced_requests"),
)


def _totals_of(row: Any) -> Totals:
    # PostgreSQL's SUM over BIGINT is NUMERIC (a Decimal in Python): make every count an int.
    # Its SUM over cost_usd is exact (numeric); the float comes last, for JSON.
    cost = row.cost_usd
    counts = {f.name: int(getattr(row, f.name) or 0) for f in fields(Totals) if f.name != "cost_usd"}
    return Totals(**counts, cost_usd=float(cost) if cost is not None else None)


def _value_of(value: Any) -> str | None:
    """A group's value as JSON shows it: days as ``YYYY-MM-DD`` on both databases."""
    if isinstance(value, date):
        return value.isoformat()
    grouped: str | None = value  # every other grouping column is a string column (or NULL)
    return grouped


@dataclass(frozen=True)
class UsageGroup:
    values: dict[str, str | None]  # grouping name -> value (``None``: e.g. a request without a model)
    totals: Totals

    def as_dict(self) -> dict[str, Any]:
        return {**self.values, **self.totals.as_dict()}


@dataclass(frozen=True)
class GroupedUsage:
    groups: list[UsageGroup]
    totals: Totals  # over every matching row, including groups cut off by the bound
    truncated: bool  # more than ``max_groups`` groups matched; only the first are in ``groups``


class UsageReport:
    """Aggregate queries on ``usage``. Each method is one short read.

    :raises sqlalchemy.exc.SQLAlchemyError: when the database fails.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _select(self, where: UsageFilter, *columns: ColumnElement[Any]) -> Select[Any]:
        return select(*columns, *_TOTALS).select_from(usage).where(*where.conditions())

    def totals(self, where: UsageFilter) -> Totals:
        with self.engine.connect() as connection:
            return _totals_of(connection.execute(self._select(where)).one())

    def grouped(self, where: UsageFilter, group_by: Sequence[str], *, max_groups: int = MAX_GROUPS) -> GroupedUsage:
        """One ``GROUP BY`` over ``group_by`` (names from :data:`GROUPINGS`), in order of the group
        values (nulls last), at most ``max_groups`` groups."""
        if not group_by:
            raise ValueError("group_by is empty; use totals()")
        columns = [_grouping_column(name).label(name) for name in group_by]
        query = (
            self._select(where, *columns)
            .group_by(*columns)
            .order_by(*(column.asc().nulls_last() for column in columns))
            .limit(max_groups + 1)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        truncated = len(rows) > max_groups
        groups = [UsageGroup({name: _value_of(getattr(row, name)) for name in group_by}, _totals_of(row)) for row in rows[:max_groups]]
        if truncated:
            totals = self.totals(where)
        else:
            totals = sum((group.totals for group in groups), Totals())
        return GroupedUsage(groups, totals, truncated)
