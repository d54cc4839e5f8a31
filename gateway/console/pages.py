"""The console's read-only pages: overview, usage (chart, table, CSV), audit log, backends.

Every figure comes from an aggregate query (:mod:`gateway.store.console_report`,
:class:`gateway.store.usage_report.UsageReport`): the database counts and sums, the page
only lays the answer out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta

from flask import Response, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from gateway import extensions
from gateway.auth.keys import utcnow
from gateway.console.blueprint import blueprint, page, report
from gateway.console.chart import Bar, bar_chart
from gateway.routes.usage import csv_export, invalid_parameter, parse_time
from gateway.store.audit import AuditFilter
from gateway.store.tables import KEY_ID_LENGTH, MODEL_LENGTH
from gateway.store.usage_report import UsageFilter

USAGE_DAYS = 7  # the usage page's default range, in UTC days up to today
TABLE_ROWS = 200  # the table's rows: the newest days' busiest keys and models
AUDIT_PAGE = 50
CHART_DAYS_MAX = 400

Page = tuple[str, int]


def _day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


@blueprint.get("/")
def overview() -> Page:
    """Requests, errors and latency over the last hour and day; tokens and spend today; top keys and models; backends."""
    now = utcnow()
    console = report()
    day_ago = now - timedelta(days=1)
    top_keys = console.top("key", day_ago, now)
    return page(
        "overview.html",
        hour=console.window(now - timedelta(hours=1), now),
        day=console.window(day_ago, now),
        today=console.totals(UsageFilter(start=_day_start(now))),
        top_keys=top_keys,
        names=console.key_names([str(ranked.name) for ranked in top_keys]),
        top_models=console.top("model", day_ago, now),
        backends=extensions.router().snapshot(),
    )


@blueprint.get("")
def entry() -> BaseResponse:
    """The console's address without its trailing slash: on to the overview."""
    return redirect(url_for("console.overview"), code=303)


def _text(params: Mapping[str, str], name: str, max_length: int) -> str | None:
    value = params.get(name, "").strip()
    if len(value) > max_length:
        raise invalid_parameter(name, f"'{name}' must be at most {max_length} characters.")
    return value or None


def usage_filter(params: Mapping[str, str]) -> UsageFilter:
    """The usage page's rows: ``key``, ``model``, ``from`` and ``to`` (UTC days, ``to``
    included); without a range, the last :data:`USAGE_DAYS` days. :raises 400: a bad value."""
    today = _day_start(utcnow())
    start = parse_time("from", params["from"]) if params.get("from") else today - timedelta(days=USAGE_DAYS - 1)
    last = parse_time("to", params["to"]) if params.get("to") else today
    if start > last:
        raise invalid_parameter("from", "'from' must not be after 'to'.")
    key_id, model = _text(params, "key", KEY_ID_LENGTH), _text(params, "model", MODEL_LENGTH)
    return UsageFilter(key_id=key_id, model=model, start=start, end=last + timedelta(days=1))


def _every_day(where: UsageFilter, bars: list[Bar]) -> list[Bar]:
    """One bar per day of the range, days without requests included (at zero), so the chart's
    axis is the calendar; a range longer than :data:`CHART_DAYS_MAX` shows its busy days only."""
    if where.start is None or where.end is None or (where.end - where.start).days > CHART_DAYS_MAX:
        return bars
    found = {bar.label: bar for bar in bars}
    days = ((where.start + timedelta(days=n)).date().isoformat() for n in range((where.end - where.start).days))
    return [found.get(day, Bar(day, 0, 0)) for day in days]


@blueprint.get("/usage")
def usage() -> Page:
    """Requests per UTC day as a chart, and a table per day, key and model; filters: key, model, from, to."""
    where = usage_filter(request.args)
    found = report().breakdown(where, rows=TABLE_ROWS)
    chosen = {"key": where.key_id or "", "model": where.model or ""}
    chosen["from"] = where.start.date().isoformat() if where.start else ""
    chosen["to"] = (where.end - timedelta(days=1)).date().isoformat() if where.end else ""
    bars = _every_day(where, [Bar(day.day, day.requests, day.errors) for day in found.days])
    return page(
        "usage.html",
        chart=bar_chart(bars, title=f"Requests per day (UTC), {chosen['from']} to {chosen['to']}; failed ones in red"),
        groups=found.groups,
        group_count=found.group_count,
        totals=found.totals,
        chosen=chosen,
        csv_url=url_for("console.usage_csv", **{name: value for name, value in chosen.items() if value}),  # type: ignore[arg-type]
    )


@blueprint.get("/usage.csv")
def usage_csv() -> Response:
    """The usage page's rows as CSV: every raw row, as ``GET /admin/usage?format=csv`` sends them."""
    return csv_export(usage_filter(request.args))


@blueprint.get("/audit")
def audit() -> Page:
    """The audit log, newest first; ``key`` filters; ``after`` pages back."""
    key_id = _text(request.args, "key", KEY_ID_LENGTH)
    raw = request.args.get("after", "")
    after = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None
    found = extensions.store().audit.page(AuditFilter(key_id=key_id), limit=AUDIT_PAGE, after=after, descending=True)
    older = found.entries[-1]["id"] if found.has_more else None
    return page("audit.html", entries=found.entries, key=key_id or "", older=older)


@blueprint.get("/backends")
def backends() -> Page:
    """Each backend deployment's live state in the worker that answers: circuit, load, errors, latency."""
    router = extensions.router()
    return page(
        "backends.html",
        backends=router.snapshot(),
        budget=router.budget.snapshot(),
        source=router.config.source or "environment",
        pid=os.getpid(),
    )
