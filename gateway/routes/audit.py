"""The answer to ``GET /admin/audit``: the audit log (:mod:`gateway.store.audit`), read-only.

Query parameters are checked as strictly as the usage reports' (an unknown, repeated,
empty or malformed one is a 400 naming it). Paging is by cursor, in a stable order by
id (the order rows were written in): ``order=asc`` (the default, oldest first) or
``desc``; ``after`` is the last id of the previous page, and ``next_after`` in the
answer is the value to pass for the next one (``null`` on the last page).

Only ``GET`` is served: no route edits or deletes an entry (any other method is a 405).
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Response, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import MultiDict

from gateway import extensions
from gateway.errors import ServiceUnavailable
from gateway.routes.usage import checked_params, invalid_parameter, parse_time
from gateway.store.audit import ACTIONS, MAX_PAGE, VIAS, AuditFilter, AuditLog
from gateway.store.tables import ACTOR_LENGTH, KEY_ID_LENGTH

AUDIT_PARAMS = ("key", "action", "actor", "via", "from", "to", "limit", "after", "order")
ORDERS = ("asc", "desc")
DEFAULT_PAGE = 100
CURSOR_MAX = 2**63 - 1  # the largest row id (a 64-bit identity)


def _one_of(params: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = params.get(name)
    if value is not None and value not in allowed:
        raise invalid_parameter(name, f"'{name}' must be one of: {', '.join(allowed)}.")
    return value


def _bounded_text(params: Mapping[str, str], name: str, max_length: int) -> str | None:
    value = params.get(name)
    if value is not None and len(value) > max_length:
        raise invalid_parameter(name, f"'{name}' must be at most {max_length} characters.")
    return value


def _integer(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise invalid_parameter(name, f"'{name}' must be an integer from {low} to {high}.")
    return int(raw)


def parse_audit_filter(params: Mapping[str, str]) -> AuditFilter:
    """:raises 400: a bad value, or ``from`` after ``to``."""
    start = parse_time("from", params["from"]) if "from" in params else None
    end = parse_time("to", params["to"]) if "to" in params else None
    if start is not None and end is not None and start > end:
        raise invalid_parameter("from", "'from' must not be after 'to' ('to' is exclusive).")
    return AuditFilter(
        key_id=_bounded_text(params, "key", KEY_ID_LENGTH),
        action=_one_of(params, "action", ACTIONS),
        actor=_bounded_text(params, "actor", ACTOR_LENGTH),
        via=_one_of(params, "via", VIAS),
        start=start,
        end=end,
    )


def audit_listing(args: MultiDict[str, str]) -> Response:
    """One page of the audit log. :raises 400: a bad parameter. :raises 503: the database does not answer."""
    params = checked_params(args, AUDIT_PARAMS)
    where = parse_audit_filter(params)
    limit = _integer(params, "limit", 1, MAX_PAGE) or DEFAULT_PAGE
    after = _integer(params, "after", 0, CURSOR_MAX)
    descending = _one_of(params, "order", ORDERS) == "desc"
    log: AuditLog = extensions.store().audit
    try:
        page = log.page(where, limit=limit, after=after, descending=descending)
    except SQLAlchemyError:
        raise ServiceUnavailable("The key database is unavailable; retry shortly.", headers={"Retry-After": "5"}) from None
    next_after = page.entries[-1]["id"] if page.has_more else None
    response = jsonify(object="list", data=page.entries, has_more=page.has_more, next_after=next_after)
    response.headers["Cache-Control"] = "no-store"
    return response
