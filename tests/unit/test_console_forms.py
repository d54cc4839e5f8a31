"""The console's pure parts: a key form as the admin API's document, and the SVG chart."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.console.chart import Bar, bar_chart
from gateway.console.forms import form_values, key_document
from gateway.store.key_fields import FieldError, parse_changes

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def test_a_new_keys_form_leaves_empty_fields_out() -> None:
    form = {
        "name": " web ",
        "rate_limit_ai": "",
        "tokens_per_day": "1000",
        "allowed_models": "gpt-4o*, llama-*\nx",
        "budget_period": "",
    }
    assert key_document(form, creating=True) == {"name": "web", "tokens_per_day": 1000, "allowed_models": ["gpt-4o*", "llama-*", "x"]}


def test_an_edit_form_resets_empty_fields_to_the_default() -> None:
    form = {"name": "web", "rate_limit_ai": "", "metadata": "", "expires_at": "2030-01-31T00:00", "budget_usd": "2.50"}
    document = key_document(form, creating=False)
    assert document == {"name": "web", "rate_limit_ai": None, "metadata": {}, "expires_at": "2030-01-31T00:00Z", "budget_usd": "2.50"}
    parse_changes(document, creating=False, now=NOW)  # the admin API's own validation takes it


def test_what_the_form_cannot_read_is_left_for_the_validator_to_name() -> None:
    document = key_document({"name": "web", "tokens_per_day": "12abc"}, creating=True)
    with pytest.raises(FieldError) as refused:
        parse_changes(document, creating=True, now=NOW)
    assert refused.value.param == "tokens_per_day"
    with pytest.raises(FieldError) as bad_json:
        key_document({"name": "web", "metadata": "{team: web}"}, creating=True)
    assert bad_json.value.param == "metadata"


def test_form_values_show_a_key_as_the_form_takes_it_back() -> None:
    shown = {"name": "web", "allowed_models": ["a", "b*"], "metadata": {"team": "web"}, "expires_at": "2030-01-31T00:00:00+00:00"}
    values = form_values({**shown, "budget_usd": 2.5, "tokens_per_day": 10})
    assert values["allowed_models"] == "a, b*" and values["expires_at"] == "2030-01-31T00:00:00" and values["budget_usd"] == "2.5"
    assert key_document(values, creating=False)["metadata"] == {"team": "web"}


def test_the_chart_is_plain_svg_with_escaped_labels() -> None:
    svg = bar_chart([Bar("2026-11-29", 10, 2), Bar("2026-11-30<script>", 3, 0)], title='per day "&" <more>')
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<script" not in svg and "&lt;script&gt;" in svg and "&lt;more&gt;" in svg
    assert " style=" not in svg and svg.count('class="bar"') == 2 and svg.count('class="bar-failed"') == 1
    assert "No requests" in bar_chart([], title="empty")
