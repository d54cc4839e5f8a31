"""The settable fields of a managed key: what is accepted, normalised and refused."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.store.key_fields import SETTABLE_FIELDS, FieldError, parse_changes

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_a_full_valid_document_is_normalised() -> None:
    changes = parse_changes(
        {
            "name": "  web-app ",
            "metadata": {"team": "web", "tags": [1, 2]},
            "expires_at": "2031-06-01T12:00:00+02:00",
            "allowed_models": ["gpt-4o*", "llama3", "gpt-4o*"],
            "rate_limit_general": "100 per 15 minutes",
            "rate_limit_ai": "50 per 15 minutes; 5 per second",
            "tokens_per_minute": 10_000,
            "tokens_per_day": 1_000_000,
            "budget_tokens_day": 500_000,
            "budget_tokens_month": 10_000_000,
            "max_tokens_cap": 4096,
            "budget_usd": 0.01,
            "budget_period": "week",
            "budget_reset": "rolling",
        },
        creating=True,
        now=NOW,
    )
    assert changes["name"] == "web-app"
    assert changes["expires_at"] == datetime(2031, 6, 1, 10, 0, tzinfo=UTC)
    assert changes["allowed_models"] == ["gpt-4o*", "llama3"]
    assert changes["budget_usd"] == Decimal("0.01") and changes["budget_period"] == "week"
    assert set(changes) == set(SETTABLE_FIELDS)


def test_creating_needs_only_a_name() -> None:
    assert parse_changes({"name": "x"}, creating=True, now=NOW) == {"name": "x", "metadata": {}}


def test_null_resets_a_field_to_the_default() -> None:
    changes = parse_changes(
        {"rate_limit_ai": None, "allowed_models": None, "expires_at": None, "metadata": None, "max_tokens_cap": None},
        creating=False,
        now=NOW,
    )
    assert changes == {"rate_limit_ai": None, "allowed_models": None, "expires_at": None, "metadata": {}, "max_tokens_cap": None}


def test_a_patch_may_change_nothing_but_what_it_names() -> None:
    assert parse_changes({"tokens_per_day": 5}, creating=False, now=NOW) == {"tokens_per_day": 5}


@pytest.mark.parametrize(
    ("document", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": None}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"name": "x", "secret": "aip_mine"}, "secret"),
        ({"name": "x", "id": "key_mine"}, "id"),
        ({"name": "x", "revoked_at": None}, "revoked_at"),
        ({"name": "x", "metadata": []}, "metadata"),
        ({"name": "x", "metadata": {"big": "x" * 5000}}, "metadata"),
        ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "x", "expires_at": "2031-01-01T00:00:00"}, "expires_at"),
        ({"name": "x", "expires_at": "2029-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "expires_at": 1900000000}, "expires_at"),
        ({"name": "x", "allowed_models": "gpt-4o"}, "allowed_models"),
        ({"name": "x", "allowed_models": []}, "allowed_models"),
        ({"name": "x", "allowed_models": ["ok", ""]}, "allowed_models"),
        ({"name": "x", "allowed_models": [1]}, "allowed_models"),
        ({"name": "x", "allowed_models": ["m"] * 101}, "allowed_models"),
        ({"name": "x", "rate_limit_ai": "lots"}, "rate_limit_ai"),
        ({"name": "x", "rate_limit_general": 100}, "rate_limit_general"),
        ({"name": "x", "rate_limit_general": ""}, "rate_limit_general"),
        ({"name": "x", "tokens_per_day": 0}, "tokens_per_day"),
        ({"name": "x", "tokens_per_day": -5}, "tokens_per_day"),
        ({"name": "x", "tokens_per_day": 1.5}, "tokens_per_day"),
        ({"name": "x", "tokens_per_day": "100"}, "tokens_per_day"),
        ({"name": "x", "max_tokens_cap": True}, "max_tokens_cap"),
        ({"name": "x", "budget_tokens_month": 10**16}, "budget_tokens_month"),
        ({"name": "a\ud800b"}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "x", "metadata": {"team": "a\x00"}}, "metadata"),
        ({"name": "x", "metadata": {"a\udcff": 1}}, "metadata"),
        ({"name": "x", "metadata": {"tags": [{"deep": "\ud800"}]}}, "metadata"),
        ({"name": "x", "allowed_models": ["gpt\x00"]}, "allowed_models"),
        ({"name": "x", "expires_at": "9999-12-31T23:59:59-14:00"}, "expires_at"),
        ({"name": "x", "expires_at": "0001-01-01T00:00:00+01:00"}, "expires_at"),
        ({"name": "x", "rate_limit_ai": "5 per 99999999999999 years"}, "rate_limit_ai"),
        ({"name": "x", "rate_limit_ai": "5 per 367 days"}, "rate_limit_ai"),
        ({"name": "x", "rate_limit_ai": "1000000001 per minute"}, "rate_limit_ai"),
        ({"name": "x", "rate_limit_general": "0 per minute"}, "rate_limit_general"),
        ({"name": "x", "rate_limit_general": "10 per minute; 5 per 99999 years"}, "rate_limit_general"),
        ({"name": "x", "budget_usd": 0}, "budget_usd"),
        ({"name": "x", "budget_usd": -1}, "budget_usd"),
        ({"name": "x", "budget_usd": "0.0000001"}, "budget_usd"),  # below a millionth of a dollar
        ({"name": "x", "budget_usd": 1e-7}, "budget_usd"),
        ({"name": "x", "budget_usd": 1_000_000_001}, "budget_usd"),
        ({"name": "x", "budget_usd": "lots"}, "budget_usd"),
        ({"name": "x", "budget_usd": "NaN"}, "budget_usd"),
        ({"name": "x", "budget_usd": "Infinity"}, "budget_usd"),
        ({"name": "x", "budget_usd": float("inf")}, "budget_usd"),
        ({"name": "x", "budget_usd": True}, "budget_usd"),
        ({"name": "x", "budget_usd": [1]}, "budget_usd"),
        ({"name": "x", "budget_period": "year"}, "budget_period"),
        ({"name": "x", "budget_period": "Day"}, "budget_period"),
        ({"name": "x", "budget_reset": "sliding"}, "budget_reset"),
        ({"name": "x", "budget_reset": 1}, "budget_reset"),
    ],
)
def test_invalid_fields_are_refused_by_name(document: dict, param: str) -> None:
    with pytest.raises(FieldError) as caught:
        parse_changes(document, creating=True, now=NOW)
    assert caught.value.param == param
    assert param in str(caught.value)


@pytest.mark.parametrize("limit", ["1 per year", "1000000000 per 366 days", "1 per second", "5/minute;10/hour"])
def test_rate_limits_at_the_bounds_are_accepted(limit: str) -> None:
    assert parse_changes({"rate_limit_ai": limit}, creating=False, now=NOW) == {"rate_limit_ai": limit}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (0.01, Decimal("0.01")),  # a float by its shortest repr, never 0.01000000000000000020816...
        ("0.01", Decimal("0.01")),
        (" 25.50 ", Decimal("25.50")),
        (5, Decimal(5)),
        ("0.000001", Decimal("0.000001")),
        ("1.500000000", Decimal("1.500000000")),  # trailing zeros are not decimal places
        (1_000_000_000, Decimal(1_000_000_000)),
        ("1E+3", Decimal(1000)),
    ],
)
def test_budget_usd_is_an_exact_decimal(given: object, stored: Decimal) -> None:
    assert parse_changes({"budget_usd": given}, creating=False, now=NOW) == {"budget_usd": stored}


def test_budget_period_and_reset_may_be_reset_to_their_defaults() -> None:
    changes = parse_changes({"budget_usd": None, "budget_period": None, "budget_reset": None}, creating=False, now=NOW)
    assert changes == {"budget_usd": None, "budget_period": None, "budget_reset": None}
