"""Prices: the ``prices:`` section of the config file, reasoning and cached tokens in upstream
usage, and the cost of a usage row (pure code, no server)."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.backends.config import ConfigFileError, GatewayConfig, Price, Routing, load_config
from gateway.config import Settings
from gateway.upstream.accounting import StreamUsageTap, TokenUsage, usage_from_body, usage_of_answer
from gateway.usage.cost import MAX_WARNED_MODELS, Pricer, cost_of
from tests.conftest import CANARY_AI_API_KEY

ROUTES = "backends: [{name: a, url: 'http://127.0.0.1:8000/v1'}]\nmodels: [{name: '*', deployments: [{backend: a}]}]\n"


def parse(text: str) -> GatewayConfig:
    settings = Settings(gateway_config="gateway.yaml", ai_api_url="http://127.0.0.1:9/v1", ai_api_key=CANARY_AI_API_KEY)
    return load_config(settings, text=text, environ={})


def prices(section: str) -> tuple[Price, ...]:
    return parse(ROUTES + "prices:\n" + section).prices


def price(model: str, input_: str, cached: str, output: str) -> Price:
    return Price(model, Decimal(input_), Decimal(cached), Decimal(output))


# --- the prices section -----------------------------------------------------------------
def test_prices_are_exact_decimals_per_million_tokens_and_cached_input_defaults_to_input() -> None:
    found = prices(
        """
  gpt-4o: {input: 2.50, cached_input: 1.25, output: 10, currency: USD}
  "llama-*": {input: 0.1, output: 0.3}
  free: {input: 0, output: 0}
"""
    )
    assert found == (
        price("gpt-4o", "2.5", "1.25", "10"),
        price("llama-*", "0.1", "0.1", "0.3"),  # 0.1 is exactly 0.1, not the nearest binary fraction
        price("free", "0", "0", "0"),
    )


def test_prices_match_exact_names_first_then_globs_in_file_order() -> None:
    table = "  'gpt-*': {input: 1, output: 1}\n  '*': {input: 9, output: 9}\n  gpt-4o: {input: 2, output: 2}\n"
    config = parse(ROUTES + "prices:\n" + table)
    assert config.price_for("gpt-4o") == price("gpt-4o", "2", "2", "2")  # exact, though written after the globs
    assert config.price_for("gpt-4o-mini") == price("gpt-*", "1", "1", "1")
    assert config.price_for("llama") == price("*", "9", "9", "9")
    assert config.price_for(None) == price("*", "9", "9", "9")  # no model: the empty name, as routes
    assert parse(ROUTES).price_for("gpt-4o") is None and parse(ROUTES).prices == ()
    assert parse(ROUTES + "prices:\n").prices == ()


def test_a_file_with_prices_alone_keeps_the_single_upstream() -> None:
    config = parse("prices:\n  m: {input: 1, output: 2}\n")
    assert config.prices == (price("m", "1", "1", "2"),)
    assert config.source is None and not config.from_file  # routes and GET /v1/models as without a file
    assert [backend.url for backend in config.backends] == ["http://127.0.0.1:9/v1"]
    assert [route.name for route in config.models] == ["*"]


FAULTS = {
    "unknown key": ("  m: {input: 1, output: 2, cache: 1}\n", "prices.m.cache: unknown key (known: input, cached_input, output,"),
    "negative": ("  m: {input: -1, output: 2}\n", "prices.m.input: must not be negative"),
    "negative cached": ("  m: {input: 1, cached_input: -0.5, output: 2}\n", "prices.m.cached_input: must not be negative"),
    "other currency": ("  m: {input: 1, output: 2, currency: EUR}\n", "prices.m.currency: must be one of USD"),
    "missing output": ("  m: {input: 1}\n", "prices.m.output: required"),
    "a string": ("  m: {input: '1', output: 2}\n", "prices.m.input: must be a number, not a string"),
    "not finite": ("  m: {input: .inf, output: 2}\n", "prices.m.input: must be a finite number"),
    "too large": ("  m: {input: 1000001, output: 2}\n", "prices.m.input: must be at most 1000000"),
    "not a mapping": ("  - m\n", "prices: must be a mapping of public model names (or globs) to prices"),
    "entry not a mapping": ("  m: 3\n", "prices.m: must be a mapping, not a number"),
    "a number as name": ("  4: {input: 1, output: 2}\n", "prices.(a key): must be a string, not a number"),
    "the same name twice": ("  m: {input: 1, output: 2}\n  ' m': {input: 1, output: 2}\n", "prices. m: the same model as another"),
}


@pytest.mark.parametrize(("section", "start"), FAULTS.values(), ids=FAULTS.keys())
def test_each_price_fault_is_one_line_naming_the_key_path(section: str, start: str) -> None:
    with pytest.raises(ConfigFileError) as raised:
        parse(ROUTES + "prices:\n" + section)
    message = str(raised.value)
    assert message.startswith(f"gateway.yaml: {start}"), message
    assert "\n" not in message


def test_the_readme_prices_example_is_a_valid_prices_only_file() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n### Prices and cost\n", 1)[1].split("\n## ", 1)[0]
    config = parse(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert config.price_for("gpt-4o-mini") == price("gpt-4o-mini", "0.15", "0.075", "0.60")
    assert config.price_for("llama-3.1-8b") == price("llama-*", "0", "0", "0") and config.source is None


def test_a_file_without_routes_needs_prices_alone() -> None:
    with pytest.raises(ConfigFileError, match=r"^gateway.yaml: backends: required \(or write prices alone"):
        parse("prices: {m: {input: 1, output: 2}}\nrouting: {max_attempts: 2}\n")
    with pytest.raises(ConfigFileError, match=r"^gateway.yaml: the file is empty; it needs backends and models \(or prices"):
        parse("# nothing\n")


# --- reasoning and cached tokens in upstream usage ---------------------------------------
DETAILED = {
    "prompt_tokens": 9,
    "completion_tokens": 6,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "accepted_prediction_tokens": 0},
}


def test_details_are_read_beside_the_totals_never_added_to_them() -> None:
    usage = usage_from_body({"usage": DETAILED})
    assert usage == TokenUsage(9, 6, 15, cached_tokens=4, reasoning_tokens=2)
    assert usage_from_body({"usage": {"prompt_tokens": 9, "completion_tokens": 6}}) == TokenUsage(9, 6, 15)  # none: 0


@pytest.mark.parametrize(
    ("details", "cached", "reasoning"),
    [
        ({"prompt_tokens_details": {"cached_tokens": 50}, "completion_tokens_details": {"reasoning_tokens": 99}}, 9, 6),
        ({"prompt_tokens_details": {"cached_tokens": -3}}, 0, 0),
        ({"prompt_tokens_details": None, "completion_tokens_details": []}, 0, 0),
        ({"prompt_tokens_details": {"cached_tokens": "4"}, "completion_tokens_details": {"reasoning_tokens": True}}, 0, 0),
    ],
    ids=["more than the total", "negative", "not objects", "not whole numbers"],
)
def test_odd_details_are_clamped_to_their_total_or_ignored(details: dict, cached: int, reasoning: int) -> None:
    usage = usage_from_body({"usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15, **details}})
    assert usage is not None and (usage.cached_tokens, usage.reasoning_tokens) == (cached, reasoning)


def test_the_streamed_usage_chunk_carries_the_details() -> None:
    tap = StreamUsageTap(strip_usage_chunk=True)
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": DETAILED}
    assert tap.feed(b"data: " + json.dumps(chunk).encode() + b"\n\n") == b""
    assert tap.result(prompt_estimate=1) == TokenUsage(9, 6, 15, cached_tokens=4, reasoning_tokens=2)


def test_estimated_usage_has_no_details() -> None:
    assert usage_of_answer({"choices": [{"text": "abcd"}]}, prompt_estimate=3) == TokenUsage(3, 1, 4, estimated=True)


# --- the cost of a row ------------------------------------------------------------------
GPT = price("gpt-4o", "2.50", "1.25", "10.00")


def test_cost_prices_every_token_once() -> None:
    # (9 - 4) x 2.50 + 4 x 1.25 + 6 x 10.00 = 77.5 per million; the 2 reasoning tokens are among the 6.
    assert cost_of(TokenUsage(9, 6, 15, cached_tokens=4, reasoning_tokens=2), GPT) == Decimal("0.0000775")
    assert cost_of(TokenUsage(1_000_000, 0, 1_000_000), GPT) == Decimal("2.5")
    assert cost_of(TokenUsage(0, 1_000_000, 1_000_000, reasoning_tokens=999_999), GPT) == Decimal("10")
    assert cost_of(TokenUsage(3, 1, 4, estimated=True), GPT) == Decimal("0.0000175")  # estimates are priced too
    # Rounded half-even at the column's 12 decimal places: 1 token at 0.0000005 per million.
    assert cost_of(TokenUsage(1, 0, 1), price("m", "0.0000005", "0", "0")) == Decimal("0")
    assert cost_of(TokenUsage(3, 0, 3), price("m", "0.0000005", "0", "0")) == Decimal("0.000000000002")


def _pricer(*table: Price) -> Pricer:
    return Pricer(GatewayConfig(None, (), (), Routing(), table))


def test_a_model_without_a_price_costs_null_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    pricer = _pricer(GPT)
    with caplog.at_level(logging.WARNING, logger="gateway.usage.cost"):
        assert pricer.cost("gpt-4o", TokenUsage(9, 6, 15)) == Decimal("0.0000825")
        assert pricer.cost("llama", TokenUsage(9, 6, 15)) is None
        assert pricer.cost("llama", TokenUsage(1, 1, 2)) is None
        assert pricer.cost("mistral", TokenUsage(1, 1, 2)) is None
        assert pricer.cost("embed", TokenUsage(0, 0, 0)) is None  # no tokens: nothing to price, nothing to say
        assert pricer.cost("gpt-4o", None) is None  # no usage at all (refused before an answer)
    assert caplog.messages == [
        "model 'llama' has no price in the config file's prices: its usage rows have no cost",
        "model 'mistral' has no price in the config file's prices: its usage rows have no cost",
    ]


def test_without_a_price_table_costs_are_null_and_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.usage.cost"):
        assert _pricer().cost("gpt-4o", TokenUsage(9, 6, 15)) is None
    assert caplog.messages == []


def test_warnings_are_bounded_since_model_names_come_from_clients(caplog: pytest.LogCaptureFixture) -> None:
    pricer = _pricer(GPT)
    with caplog.at_level(logging.WARNING, logger="gateway.usage.cost"):
        for index in range(MAX_WARNED_MODELS + 50):
            assert pricer.cost(f"model-{index}", TokenUsage(1, 1, 2)) is None
    assert len(caplog.messages) == MAX_WARNED_MODELS + 1
    assert caplog.messages[-1].startswith("more models have no price or cost; not logged")


def test_a_cost_too_large_for_its_column_is_null(caplog: pytest.LogCaptureFixture) -> None:
    pricer = _pricer(price("m", "1000000", "1000000", "1000000"))
    with caplog.at_level(logging.WARNING, logger="gateway.usage.cost"):
        assert pricer.cost("m", TokenUsage(10**12, 0, 10**12)) is None
        assert pricer.cost("m", TokenUsage(10**6, 0, 10**6)) == Decimal("1000000")
    assert caplog.messages == ["model 'm' used more tokens than a cost can record: the row has no cost"]
