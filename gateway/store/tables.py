"""The tables, as SQLAlchemy Core metadata (no ORM).

This is the schema the code expects; the migrations in ``migrations/versions`` are
what builds it in a database. A change here needs a new migration (``flask --app
wsgi db revision -m "..."`` writes one from the difference).

Timestamps are always timezone-aware UTC in Python (:class:`UtcDateTime`), whatever
the database keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
)
from sqlalchemy.types import TypeDecorator

# Constraint names follow one pattern, so later migrations can refer to them on any database.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

KEY_ID_LENGTH = 40
MODEL_LENGTH = 200
REQUEST_ID_LENGTH = 128
OPERATION_LENGTH = 40
BACKEND_LENGTH = 100
# cost_usd: exact decimals on PostgreSQL (numeric, exact sums); SQLite keeps a double.
# Read back as a float on both (asdecimal=False), written from an exact Decimal.
COST_PRECISION = 24
COST_SCALE = 12
ACTION_LENGTH = 20
ACTOR_LENGTH = 200
VIA_LENGTH = 20
ADDRESS_LENGTH = 100
# budget_usd: at most 10^9 with 6 decimal places (gateway.store.key_fields), 15 significant
# digits, so SQLite's double keeps it exact too; read back as an exact Decimal.
BUDGET_PRECISION = 16
BUDGET_SCALE = 6
BUDGET_CHOICE_LENGTH = 8


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite has no timezone type: without this, values would come back naive.
    Naive datetimes are refused on write, so local time never slips in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = value  # the column is a DateTime: the driver hands back a datetime
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(KEY_ID_LENGTH), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("allowed_models", JSON, nullable=True),  # null: every model
    Column("rate_limit_general", String(100), nullable=True),  # null: RATE_LIMIT_GENERAL
    Column("rate_limit_ai", String(100), nullable=True),  # null: RATE_LIMIT_AI
    Column("tokens_per_minute", BigInteger, nullable=True),  # null: the gateway's default
    Column("tokens_per_day", BigInteger, nullable=True),
    Column("budget_tokens_day", BigInteger, nullable=True),
    Column("budget_tokens_month", BigInteger, nullable=True),
    Column("max_tokens_cap", BigInteger, nullable=True),
    Column("budget_usd", Numeric(BUDGET_PRECISION, BUDGET_SCALE), nullable=True),  # null: no budget in currency
    Column("budget_period", String(BUDGET_CHOICE_LENGTH), nullable=True),  # day, week, month; null: month
    Column("budget_reset", String(BUDGET_CHOICE_LENGTH), nullable=True),  # calendar, rolling; null: calendar
    Index(None, "secret_hash", unique=True),
)

usage = Table(
    "usage",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime, nullable=False),
    Column("key_id", String(KEY_ID_LENGTH), nullable=False),
    Column("operation", String(OPERATION_LENGTH), nullable=False),
    Column("model", String(MODEL_LENGTH), nullable=True),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=True),
    Column("completion_tokens", BigInteger, nullable=True),
    Column("total_tokens", BigInteger, nullable=True),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("upstream_ms", Float, nullable=True),
    Column("request_id", String(REQUEST_ID_LENGTH), nullable=True),
    Column("backend", String(BACKEND_LENGTH), nullable=True),  # the backend that answered (the last attempt's)
    Column("upstream_model", String(MODEL_LENGTH), nullable=True),  # the model name it was sent
    Column("attempts", Integer, nullable=True),  # upstream attempts made (retries and fallbacks included)
    Column("reasoning_tokens", BigInteger, nullable=True),  # of completion_tokens; null: no usage (or a row before 0004)
    Column("cached_tokens", BigInteger, nullable=True),  # of prompt_tokens: read from the upstream's prompt cache
    Column("cost_usd", Numeric(COST_PRECISION, COST_SCALE, asdecimal=False), nullable=True),  # null: no price or no usage
    Index(None, "ts"),
    Index(None, "key_id", "ts"),
)

# Usage summed per UTC day, key, model and operation, kept by the usage writer in the same
# transaction as the rows it sums (gateway.store.usage_daily), so reads over whole days sum a
# few rows per day instead of every request. A request without a model is model '' with
# has_model false: a NULL in the primary key would never match itself, and '' is a model a
# client may send.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Date, primary_key=True),  # the UTC day of usage.ts
    Column("key_id", String(KEY_ID_LENGTH), primary_key=True),
    Column("model", String(MODEL_LENGTH), primary_key=True),
    Column("has_model", Boolean, primary_key=True),
    Column("operation", String(OPERATION_LENGTH), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),  # status >= 400
    Column("prompt_tokens", BigInteger, nullable=False),  # missing counts add 0, as in usage_report.Totals
    Column("completion_tokens", BigInteger, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("estimated_requests", BigInteger, nullable=False),
    Column("cost_usd", Numeric(COST_PRECISION, COST_SCALE, asdecimal=False), nullable=True),  # null: no row had a cost
    Column("unpriced_requests", BigInteger, nullable=False),  # rows with tokens but no cost
)

# One row per change to a managed key, written in the change's own transaction
# (gateway.store.audit); never updated or deleted by the gateway.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime, nullable=False),
    Column("action", String(ACTION_LENGTH), nullable=False),  # create, update, rotate, revoke
    Column("key_id", String(KEY_ID_LENGTH), nullable=False),
    Column("actor", String(ACTOR_LENGTH), nullable=False),  # "master", or the OS user of a `flask keys` command
    Column("via", String(VIA_LENGTH), nullable=False),  # api_key, jwt or cli
    Column("address", String(ADDRESS_LENGTH), nullable=False),  # the client address, or "cli"
    Column("request_id", String(REQUEST_ID_LENGTH), nullable=True),
    Column("before", JSON, nullable=True),  # the changed fields' values before (null: create, rotate)
    Column("after", JSON, nullable=True),  # and after (null: rotate)
    Index(None, "ts"),
    Index(None, "key_id", "id"),
)
