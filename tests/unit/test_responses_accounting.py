"""The Responses API's usage (plain answers and ``response.completed`` events), its prompt
estimate, and its item ids as one upstream path segment (pure code)."""

from __future__ import annotations

import json

import pytest

from gateway.operations import BY_NAME, ITEM_ID_MAX, declared_routes, item_segment
from gateway.upstream.accounting import (
    StreamUsageTap,
    TokenUsage,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    usage_from_body,
    usage_of_answer,
)

USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 3},
    "output_tokens": 6,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 17,
}


def _event(kind: str, **fields: object) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), json.dumps({"type": kind, **fields}).encode())


def test_a_responses_answer_is_read_as_prompt_and_completion() -> None:
    assert usage_from_body({"object": "response", "usage": USAGE}) == TokenUsage(11, 6, 17, cached_tokens=3, reasoning_tokens=2)
    assert usage_from_body({"usage": {"input_tokens": 4, "output_tokens": 1}}) == TokenUsage(4, 1, 5)  # no total: the sum
    assert usage_from_body({"usage": {"input_tokens": "4", "output_tokens": 1}}) is None
    assert usage_from_body({"usage": None}) is None


def test_without_usage_a_responses_answer_is_estimated_from_its_output_text() -> None:
    answer = {"object": "response", "output": [{"type": "message", "content": [{"type": "output_text", "text": "x" * 20}]}]}
    assert estimate_completion_tokens(answer) == 5
    assert usage_of_answer(answer, prompt_estimate=3) == TokenUsage(3, 5, 8, estimated=True)


def test_the_prompt_estimate_reads_input_items_and_instructions() -> None:
    assert estimate_prompt_tokens({"input": "x" * 40}) == 10
    items = [
        {"role": "user", "content": "x" * 8},
        {"role": "user", "content": [{"type": "input_text", "text": "y" * 8}, {"type": "input_image", "image_url": "z" * 400}]},
    ]
    assert estimate_prompt_tokens({"input": items}) == 4  # text only, not the image's URL
    assert estimate_prompt_tokens({"input": "x" * 8, "instructions": "y" * 8}) == 4


def test_the_completed_event_carries_the_usage_and_stays_in_the_stream() -> None:
    stream = (
        _event("response.created", response={"id": "resp_1", "status": "in_progress", "usage": None})
        + _event("response.output_text.delta", delta="tok0 ")
        + _event("response.output_text.delta", delta="tok1 ")
        + _event("response.completed", response={"id": "resp_1", "status": "completed", "usage": USAGE})
    )
    # However the client asked: a Responses stream's usage is never removed.
    for strip in (True, False):
        tap = StreamUsageTap(strip_usage_chunk=strip)
        assert tap.feed(stream) == stream
        assert tap.result(prompt_estimate=1) == TokenUsage(11, 6, 17, cached_tokens=3, reasoning_tokens=2)


def test_an_incomplete_response_is_billed_too() -> None:
    tap = StreamUsageTap(strip_usage_chunk=False)
    tap.feed(_event("response.output_text.delta", delta="a"))
    cut_short = {**USAGE, "output_tokens": 1, "total_tokens": 12}
    tap.feed(_event("response.incomplete", response={"status": "incomplete", "usage": cut_short}))
    # reasoning tokens are part of the output: clamped to its 1
    assert tap.result(prompt_estimate=1) == TokenUsage(11, 1, 12, cached_tokens=3, reasoning_tokens=1)


@pytest.mark.parametrize(
    ("item_id", "segment"),
    [
        ("resp_abc123", "resp_abc123"),
        ("resp 1?x=#", "resp%201%3Fx%3D%23"),
        ("%2e%2e", "%252e%252e"),
        ("caf\u00e9", "caf%C3%A9"),
        ("x" * ITEM_ID_MAX, "x" * ITEM_ID_MAX),
    ],
)
def test_an_item_id_is_one_quoted_segment(item_id: str, segment: str) -> None:
    assert item_segment(item_id) == segment


@pytest.mark.parametrize("item_id", ["", ".", "..", "a/b", "../models", "a/", "x" * (ITEM_ID_MAX + 1), "a\nb", "a\x7f", "a\ud800"])
def test_anything_else_is_not_an_item_id(item_id: str) -> None:
    assert item_segment(item_id) is None


def test_the_responses_operation_declares_its_routes() -> None:
    op = BY_NAME["responses"]
    assert op.streams and op.stream_usage == "always" and op.relays_items and not BY_NAME["models"].relays_items
    assert set(op.routes()) == {
        ("/api/ai/responses", "POST"),
        ("/v1/responses", "POST"),
        ("/api/ai/responses/<path:item_id>", "GET"),
        ("/api/ai/responses/<path:item_id>", "DELETE"),
        ("/v1/responses/<path:item_id>", "GET"),
        ("/v1/responses/<path:item_id>", "DELETE"),
    }
    assert set(op.routes()) <= declared_routes()


def test_responses_usage_details_are_read_as_cached_and_reasoning_tokens() -> None:
    from gateway.upstream.accounting import usage_from_body

    usage = usage_from_body(
        {
            "usage": {
                "input_tokens": 10,
                "output_tokens": 7,
                "total_tokens": 17,
                "input_tokens_details": {"cached_tokens": 3},
                "output_tokens_details": {"reasoning_tokens": 2},
            }
        }
    )
    assert usage is not None and (usage.cached_tokens, usage.reasoning_tokens) == (3, 2)
