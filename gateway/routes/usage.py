"""The usage API: ``GET /api/usage`` (the caller's own) and the report behind ``GET /admin/usage``.

Both read the ``usage`` table through :class:`gateway.store.usage_report.UsageReport`
and answer JSON with ``Cache-Control: no-store``; ``GET /admin/usage`` also answers the
raw rows as streamed CSV (``format=csv``, or ``Accept: text/csv``; see :func:`wants_csv`
and :mod:`gateway.store.usage_export`). Query parameters are checked
strictly: an unknown, repeated, empty or malformed one is a 400 whose ``param``
names it, so a typo never silently widens a report. So is one holding a NUL
(``?model=%00``), which PostgreSQL would refuse, not a database outage.

Times are ISO 8601 (``2026-11-01``, ``2026-11-01T08:00:00Z``, ``...+02:00``); one
without an offset is UTC. ``from`` is inclusive, ``to`` exclusive. Days are UTC days.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import MultiDict

from gateway import extensions, operations, payload, quotas
from gateway.auth import current_caller
from gateway.auth.keys import MASTER_KEY_ID, utcnow
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.quotas.policy import CallerPolicy
from gateway.store import Store, usage_export
from gateway.store.key_fields import BUDGET_FIELDS, LIMIT_FIELDS, TOKEN_FIELDS
from gateway.store.tables import KEY_ID_LENGTH, MODEL_LENGTH
from gateway.store.usage_report import GROUPINGS, MAX_GROUPS, Totals, UsageFilter, UsageReport

log = logging.getLogger(__name__)

blueprint = Blueprint("usage_api", __name__)

ADMIN_PARAMS = ("key", "model", "operation", "from", "to", "group_by", "format")
FORMATS = ("json", "csv")
CSV_MIMETYPE = "text/csv"
OWN_PARAMS = ("model", "operation", "from", "to")
_TIME_HINT = "an ISO 8601 time such as 2026-11-01 or 2026-11-01T08:00:00Z (UTC without an offset; in a URL, write '+' as %2B)"

# Settings that give the default for a key's unset limit. Token limits have no
# gateway-wide default yet: unset stays null ("no limit").
DEFAULT_LIMIT_SETTINGS = {"rate_limit_general": "rate_limit_general", "rate_limit_ai": "rate_limit_ai"}


def _report() -> UsageReport:
    store: Store = extensions.store()
    return store.usage


def invalid_parameter(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, error_code="invalid_parameter")


# --- query parameters -------------------------------------------------------------------
def checked_params(args: MultiDict[str, str], allowed: Iterable[str]) -> dict[str, str]:
    """Each parameter at most once, none empty, none unknown, each storable text. :raises 400: otherwise."""
    allowed = tuple(allowed)
    values: dict[str, str] = {}
    for name in args:
        if name not in allowed:
            raise invalid_parameter(name, f"Unknown parameter '{name}'. Accepted: {', '.join(allowed)}.")
        given = args.getlist(name)
        if len(given) > 1:
            raise invalid_parameter(name, f"'{name}' may be given once.")
        if not given[0].strip():
            raise invalid_parameter(name, f"'{name}' must not be empty.")
        if not payload.is_storable_text(given[0]):
            raise invalid_parameter(name, f"'{name}' {payload.UNSTORABLE_HINT}.")
        values[name] = given[0].strip()
    return values


def parse_time(param: str, raw: str) -> datetime:
    """An ISO 8601 date or time as aware UTC; UTC when it has no offset. :raises 400: otherwise."""
    try:
        parsed = datetime.fromisoformat(raw)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid_parameter(param, f"'{param}' must be {_TIME_HINT}.") from None


def _text(params: Mapping[str, str], name: str, max_length: int) -> str | None:
    value = params.get(name)
    if value is not None and len(value) > max_length:
        raise invalid_parameter(name, f"'{name}' must be at most {max_length} characters.")
    return value


def _operation(params: Mapping[str, str]) -> str | None:
    value = params.get("operation")
    if value is not None and value not in operations.BY_NAME:
        raise invalid_parameter("operation", f"'operation' must be one of: {', '.join(operations.BY_NAME)}.")
    return value


def parse_filter(params: Mapping[str, str]) -> UsageFilter:
    """The row filter from checked parameters. :raises 400: a bad value, or ``from`` after ``to``."""
    start = parse_time("from", params["from"]) if "from" in params else None
    end = parse_time("to", params["to"]) if "to" in params else None
    if start is not None and end is not None and start > end:
        raise invalid_parameter("from", "'from' must not be after 'to' ('to' is exclusive).")
    return UsageFilter(
        key_id=_text(params, "key", KEY_ID_LENGTH),
        model=_text(params, "model", MODEL_LENGTH),
        operation=_operation(params),
        start=start,
        end=end,
    )


def parse_group_by(raw: str | None) -> tuple[str, ...]:
    """``day``, ``key``, ``model``, ``operation`` or a comma-separated combination. :raises 400: otherwise."""
    if raw is None:
        return ()
    names = tuple(part.strip() for part in raw.split(","))
    if any(name not in GROUPINGS for name in names) or len(set(names)) != len(names):
        raise invalid_parameter(
            "group_by", f"'group_by' must be one or more of {', '.join(GROUPINGS)}, separated by commas, each once."
        )
    return names


# --- answers ----------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _no_store(body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _database_unavailable(error: SQLAlchemyError) -> ServiceUnavailable:
    log.warning("usage report failed: database unavailable (%s)", type(error).__name__)
    return ServiceUnavailable("The usage database is unavailable; retry shortly.", headers={"Retry-After": "5"})


def wants_csv(params: Mapping[str, str]) -> bool:
    """``format=csv``, or no ``format`` and an ``Accept`` that prefers ``text/csv`` to JSON. :raises 400: another format."""
    chosen = params.get("format")
    if chosen is None:
        return request.accept_mimetypes.best_match(("application/json", CSV_MIMETYPE)) == CSV_MIMETYPE
    if chosen not in FORMATS:
        raise invalid_parameter("format", f"'format' must be one of: {', '.join(FORMATS)}.")
    return chosen == "csv"


def csv_export(where: UsageFilter) -> Response:
    """The raw usage rows matching ``where`` as CSV, streamed (:mod:`gateway.store.usage_export`).

    The query runs before the answer starts, so a database that does not answer is a 503,
    not a cut-off file. :raises 503: the database does not answer.
    """
    chunks = usage_export.read_chunks(_report().engine, where)
    try:
        first = next(chunks, None)
    except SQLAlchemyError as error:
        raise _database_unavailable(error) from None
    response = Response(usage_export.encoded(first, chunks), mimetype=CSV_MIMETYPE, direct_passthrough=True)
    response.headers["Content-Disposition"] = 'attachment; filename="usage.csv"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy passes chunks on as they come
    return response


def admin_report(args: MultiDict[str, str]) -> Response:
    """The answer to ``GET /admin/usage`` (the admin blueprint has checked the caller):
    JSON totals or groups, or the raw rows as CSV (:func:`wants_csv`).

    :raises 400: a bad parameter (``group_by`` with CSV: the CSV is the raw rows).
    :raises 503: the database does not answer.
    """
    params = checked_params(args, ADMIN_PARAMS)
    where = parse_filter(params)
    group_by = parse_group_by(params.get("group_by"))
    if wants_csv(params):
        if group_by:
            raise invalid_parameter(
                "group_by", "'group_by' is for JSON reports; the CSV export lists the raw rows (group them where you open it)."
            )
        response = csv_export(where)
        response.vary.add("Accept")
        return response
    report = _report()
    try:
        if group_by:
            grouped = report.grouped(where, group_by)
            totals, groups, truncated = grouped.totals, [g.as_dict() for g in grouped.groups], grouped.truncated
        else:
            totals, groups, truncated = report.totals(where), None, False
    except SQLAlchemyError as error:
        raise _database_unavailable(error) from None
    response = _no_store(
        {
            "object": "usage.report",
            "filters": {
                "key": where.key_id,
                "model": where.model,
                "operation": where.operation,
                "from": _iso(where.start),
                "to": _iso(where.end),
            },
            "group_by": list(group_by),
            "totals": totals.as_dict(),
            "groups": groups,
            "truncated": truncated,
            "max_groups": MAX_GROUPS,
        }
    )
    response.vary.add("Accept")
    return response


def _month_start(day: datetime) -> datetime:
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def limits_of_policy(policy: CallerPolicy) -> dict[str, Any]:
    """The limits a caller is held to, in :func:`limits_of`'s shape, from its policy.

    For callers whose policy is not a stored key's (an identity provider's caller mapped by
    ``GATEWAY_CONFIG``'s ``identity:`` section): what is enforced, defaults filled in.
    """
    counters = dict(policy.token_limits)
    budget = policy.budget
    limits: dict[str, Any] = {"rate_limit_general": policy.rate_limit_general, "rate_limit_ai": policy.rate_limit_ai}
    for name in TOKEN_FIELDS:
        limits[name] = policy.max_tokens_cap if name == "max_tokens_cap" else counters.get(name)
    limits["budget_usd"] = float(budget.usd) if budget is not None else None
    limits["budget_period"] = budget.period if budget is not None else None
    limits["budget_reset"] = budget.reset if budget is not None else None
    limits["allowed_models"] = list(policy.allowed_models) if policy.allowed_models is not None else None
    return limits


def limits_of(key_id: str) -> dict[str, Any]:
    """A key's limits as stored, each unset one replaced by the gateway's default.

    ``null`` means no limit (or, for ``allowed_models``, every model). The master key
    has no stored limits: it is held to the defaults.
    """
    settings = current_app.config["GATEWAY"]
    record = None if key_id == MASTER_KEY_ID else extensions.store().keys.get(key_id)
    limits: dict[str, Any] = {}
    for name in (*LIMIT_FIELDS, *TOKEN_FIELDS, *BUDGET_FIELDS):
        value = getattr(record, name) if record is not None else None
        if name == "budget_usd" and value is not None:
            value = float(value)  # a JSON number, exact (15 digits at most)
        if value is None and name in DEFAULT_LIMIT_SETTINGS:
            value = getattr(settings, DEFAULT_LIMIT_SETTINGS[name])
        limits[name] = value
    limits["allowed_models"] = record.allowed_models if record is not None else None
    return limits


@blueprint.get("/api/usage")
def own_usage() -> Response:
    """Your own usage (totals, by UTC day, today, this month) and limits; filters: model, operation, from, to.

    Without ``from`` and ``to`` the range is the current UTC month.

    :raises 400: a bad or unknown parameter (``key`` included: a caller sees only its own rows).
    :raises 503: the database does not answer.
    """
    caller = current_caller()
    assert caller is not None  # the auth hook refused anonymous callers
    params = checked_params(request.args, OWN_PARAMS)
    asked = parse_filter(params)
    now = utcnow()
    month = _month_start(now)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ranged = "from" in params or "to" in params
    where = UsageFilter(
        key_id=caller.id,
        model=asked.model,
        operation=asked.operation,
        start=asked.start if ranged else month,
        end=asked.end if ranged else _next_month(month),
    )
    report = _report()
    try:
        daily = report.grouped(where, ("day",))
        if ranged:
            this_month = report.totals(dataclasses.replace(where, start=month, end=_next_month(month)))
            today_totals = report.totals(dataclasses.replace(where, start=today, end=today + timedelta(days=1)))
        else:
            this_month = daily.totals
            today_totals = next((g.totals for g in daily.groups if g.values["day"] == today.date().isoformat()), Totals())
        limits = limits_of_policy(caller.policy) if caller.policy is not None else limits_of(caller.id)
    except SQLAlchemyError as error:
        raise _database_unavailable(error) from None
    return _no_store(
        {
            "object": "usage",
            "key": caller.id,
            "filters": {"model": where.model, "operation": where.operation, "from": _iso(where.start), "to": _iso(where.end)},
            "totals": daily.totals.as_dict(),
            "by_day": [g.as_dict() for g in daily.groups],
            "truncated": daily.truncated,
            "today": today_totals.as_dict(),
            "this_month": this_month.as_dict(),
            "limits": limits,
            "remaining": quotas.remaining_for_caller(),
        }
    )
