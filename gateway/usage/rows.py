"""The usage sink: which finished request record gets a usage row, and what the row holds.

This is where "one usage row per AI request" holds (:func:`row_of`); :func:`usage_rows`
is the sink :func:`gateway.create_app` registers (see :mod:`gateway.exchange`). A row's
``cost_usd`` is computed here, when it is made, with the price then in force
(:mod:`gateway.usage.cost`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import Flask

from gateway import extensions
from gateway.exchange import Exchange
from gateway.payload import storable_text
from gateway.store.tables import MODEL_LENGTH, OPERATION_LENGTH, REQUEST_ID_LENGTH
from gateway.upstream.accounting import TokenUsage
from gateway.usage.cost import Pricer


@dataclass
class UsageRecord:
    """One AI request. Token counts are ``None`` until the upstream's usage is read.

    Treated as immutable once made (:func:`dataclasses.replace` makes changed copies);
    not ``frozen``, whose ``__init__`` costs a ``object.__setattr__`` call per field."""

    ts: datetime  # when the request started, aware UTC
    key_id: str
    operation: str
    model: str | None
    status: int
    duration_ms: float
    upstream_ms: float | None
    request_id: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    tokens_estimated: bool = False
    backend: str | None = None
    upstream_model: str | None = None
    attempts: int | None = None
    reasoning_tokens: int | None = None  # of completion_tokens
    cached_tokens: int | None = None  # of prompt_tokens
    cost_usd: Decimal | None = None  # None: no usage, or no price for the model

    def row(self) -> dict[str, object]:
        values = dict(self.__dict__)  # flat and immutable: no need for asdict's deep copy
        # Column widths and storable text (no NUL, no lone surrogate) are enforced here, so a
        # long or odd model name cannot fail a batch.
        values["key_id"] = storable_text(self.key_id)
        values["operation"] = storable_text(self.operation[:OPERATION_LENGTH])
        values["model"] = storable_text(self.model[:MODEL_LENGTH]) if self.model is not None else None
        values["request_id"] = storable_text(self.request_id[:REQUEST_ID_LENGTH]) if self.request_id is not None else None
        if self.upstream_model is not None:
            values["upstream_model"] = storable_text(self.upstream_model[:MODEL_LENGTH])
        return values


def _token_fields(usage: TokenUsage | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "tokens_estimated": usage.estimated,
        "reasoning_tokens": usage.reasoning_tokens,
        "cached_tokens": usage.cached_tokens,
    }


def row_of(exchange: Exchange, pricer: Pricer | None = None) -> UsageRecord | None:
    """The usage row of a finished record, or ``None`` when it gets none; priced by ``pricer``
    (its cost is ``None`` without one).

    This is where "one usage row per AI request" holds: a record gets a row when the
    relay view took it in as an AI operation (:attr:`Exchange.operation`, errors
    included) and no request quota refused it (such a refusal, as on any endpoint,
    leaves no row). A record is finished once, so it gives at most one row.
    ``upstream_ms`` of a stream runs until the stream's end, not its first byte.
    """
    if exchange.operation is None or exchange.quota_refused is not None:
        return None
    caller = exchange.caller
    attempt = exchange.upstream
    if attempt is None:
        upstream_ms = None
    elif exchange.stream and exchange.ended is not None:
        upstream_ms = round((exchange.ended - attempt.started) * 1000, 2)
    else:
        upstream_ms = round(attempt.duration_ms, 2) if attempt.duration_ms is not None else None
    return UsageRecord(
        ts=exchange.accounted_at or datetime.now(UTC),
        key_id=caller.id if caller else "unknown",
        operation=exchange.operation,
        model=exchange.model,
        status=exchange.status,
        duration_ms=round(exchange.duration_ms or 0.0, 2),
        upstream_ms=upstream_ms,
        request_id=exchange.request_id,
        backend=(attempt.backend or None) if attempt is not None else None,
        upstream_model=attempt.model if attempt is not None else None,
        attempts=len(exchange.attempts) if exchange.attempts else None,
        cost_usd=pricer.cost(exchange.model, exchange.usage) if pricer is not None else None,
        **_token_fields(exchange.usage),
    )


def usage_rows(app: Flask) -> Callable[[Exchange], None]:
    """Sink: queue the record's usage row (if it gets one) on ``app``'s writer, priced with
    ``app``'s configuration (a changed file arrives with new worker processes)."""
    writer = extensions.usage_writer(app)
    pricer = Pricer(extensions.backends_config(app))

    def record_usage(exchange: Exchange) -> None:
        row = row_of(exchange, pricer)
        if row is not None:
            writer.record(row)

    return record_usage
