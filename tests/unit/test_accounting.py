"""Usage extraction, stream usage requests and the usage chunk tap (pure code)."""

from __future__ import annotations

import json

import pytest

from gateway.upstream import accounting
from gateway.upstream.accounting import (
    RELAYED_KEPT_BYTES,
    StreamUsageTap,
    TokenUsage,
    ask_for_stream_usage,
    client_asked_for_usage,
    estimate_prompt_tokens,
    relayed_text_chars,
    usage_from_body,
)
from gateway.upstream.sse import split_events


def _chunk(content: str | None = None, usage: dict | None = None, choices: list | None = None) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": choices if choices is not None else [{"index": 0, "delta": {"content": content}}],
    }
    if usage is not None or choices == []:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def test_usage_from_json_answers() -> None:
    assert usage_from_body(json.dumps({"usage": USAGE}).encode()) == TokenUsage(9, 3, 12)
    assert usage_from_body({"usage": {"prompt_tokens": 4, "total_tokens": 4}}) == TokenUsage(4, 0, 4)  # embeddings
    assert usage_from_body(b"{}") is None
    assert usage_from_body(b"not json") is None
    assert usage_from_body({"usage": {"prompt_tokens": "9"}}) is None


def test_reported_counts_are_whole_numbers_clamped_to_a_sane_range() -> None:
    most = accounting.MAX_REPORTED_TOKENS
    huge = {"prompt_tokens": 2**70, "completion_tokens": -5, "total_tokens": 2**70}
    assert usage_from_body({"usage": huge}) == TokenUsage(most, 0, most)
    assert usage_from_body({"usage": {"input_tokens": -1, "output_tokens": 3}}) == TokenUsage(0, 3, 3)  # Responses API
    assert usage_from_body({"usage": {"prompt_tokens": True, "completion_tokens": 1}}) is None
    assert usage_from_body({"usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": False}}) == TokenUsage(2, 1, 3)


def test_prompt_estimates() -> None:
    assert estimate_prompt_tokens({"prompt": "x" * 40}) == 10
    assert (
        estimate_prompt_tokens(
            {"messages": [{"role": "user", "content": "x" * 10}, {"role": "user", "content": [{"type": "text", "text": "y" * 6}]}]}
        )
        == 4
    )
    assert estimate_prompt_tokens({"input": ["aaaa", "bbbb"]}) == 2
    assert estimate_prompt_tokens({}) == 0


def test_asking_for_stream_usage_keeps_other_options() -> None:
    document = {"model": "m", "stream": True, "stream_options": {"other": 1}}
    assert not client_asked_for_usage(document)
    body = json.loads(ask_for_stream_usage(document))
    assert body["stream_options"] == {"other": 1, "include_usage": True}
    assert body["model"] == "m" and document["stream_options"] == {"other": 1}
    assert client_asked_for_usage(body)


def test_tap_strips_the_usage_chunk_for_clients_that_did_not_ask() -> None:
    stream = _chunk("a") + _chunk("b") + _chunk(choices=[], usage=USAGE) + b"data: [DONE]\n\n"
    expected = _chunk("a") + _chunk("b") + b"data: [DONE]\n\n"
    tap = StreamUsageTap(strip_usage_chunk=True)
    assert tap.feed(stream) == expected
    assert tap.result(prompt_estimate=1) == TokenUsage(9, 3, 12)


def test_tap_keeps_everything_for_clients_that_asked() -> None:
    stream = _chunk("a", usage=None) + _chunk(choices=[], usage=USAGE) + b"data: [DONE]\n\n"
    tap = StreamUsageTap(strip_usage_chunk=False)
    assert tap.feed(stream) == stream
    assert tap.result(prompt_estimate=1).estimated is False


def test_tap_estimates_when_the_upstream_reports_nothing() -> None:
    tap = StreamUsageTap(strip_usage_chunk=True)
    for piece in (_chunk("abcd"), _chunk("efgh") + _chunk("ij"), b"data: [DONE]\n\n"):
        tap.relayed(tap.feed(piece))
    # 10 characters of relayed text, four per token, rounded up
    assert tap.result(prompt_estimate=5) == TokenUsage(5, 3, 8, estimated=True)


def test_split_events_keeps_bytes() -> None:
    raw = b"data: a\n\ndata: b\r\n\r\ndata: c\n\n"
    assert split_events(raw) == [b"data: a\n\n", b"data: b\r\n\r\n", b"data: c\n\n"]
    assert b"".join(split_events(raw)) == raw


def test_the_prompt_bound_is_never_below_the_bytes_and_counts_each_message() -> None:
    from gateway.upstream.accounting import prompt_token_bound

    assert prompt_token_bound({"prompt": "Tell me a joke"}) == 14 + 8
    assert prompt_token_bound({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "héllo"}]}) == (
        2 + 6 + 2 * 4 + 8
    )
    assert prompt_token_bound({"input": [{"content": [{"text": "abc"}]}], "instructions": "be brief"}) == 3 + 8 + 8
    assert prompt_token_bound({"model": "m"}) == 8


def test_relayed_text_counts_generated_text_of_every_stream_shape() -> None:
    chat = _chunk("héllo")
    tool = _chunk(choices=[{"index": 0, "delta": {"tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}]}}])
    completion = b'data: {"choices": [{"text": "abc", "index": 0}]}\n\n'
    responses = b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": "xyz"}\n\n'
    noise = b"data: [DONE]\n\ndata: not json\n\n: comment\n\n"
    assert relayed_text_chars(chat) == 5
    assert relayed_text_chars(tool) == len('{"a":1}')  # arguments count; the function's name does not
    assert relayed_text_chars(completion + responses + noise) == 6


def test_tap_holds_a_bounded_amount_of_a_long_stream_and_still_counts_all_of_it() -> None:
    tap = StreamUsageTap(strip_usage_chunk=True)
    piece = _chunk("x" * 1000)
    for _ in range(200):  # about 200 kB of events, no usage chunk
        tap.relayed(tap.feed(piece))
        assert tap._kept_bytes <= RELAYED_KEPT_BYTES  # noqa: SLF001 - the bound under test
    assert tap.result(prompt_estimate=0).completion_tokens == 200 * 1000 // 4


def _openai_stream(usage_at: int | None, events: int = 6) -> list[bytes]:
    """Chunks as OpenAI and vLLM send them once usage is asked: ``"usage": null`` in each,
    the figures in the one at ``usage_at`` (the last is the usual usage-only chunk)."""
    chunks = []
    for index in range(events):
        if index == usage_at:
            chunks.append(_chunk(choices=[], usage=USAGE))
        else:
            chunks.append(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"ab"}}],"usage":null}\n\n')
    return [*chunks, b"data: [DONE]\n\n"]


@pytest.mark.parametrize("usage_at", [5, 2, None], ids=["last", "middle", "absent"])
@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "in-one-read"])
def test_stream_usage_is_exact_wherever_the_usage_chunk_is(usage_at: int | None, together: bool) -> None:
    chunks = _openai_stream(usage_at)
    reads = [b"".join(chunks)] if together else chunks
    for strip in (True, False):
        tap = StreamUsageTap(strip_usage_chunk=strip)
        out = b""
        for read in reads:
            sent = tap.feed(read)
            tap.relayed(sent)
            out += sent
        expected = [c for i, c in enumerate(chunks) if not (strip and i == usage_at)]
        assert out == b"".join(expected)
        if usage_at is None:  # five chunks of two characters relayed: estimated
            assert tap.result(prompt_estimate=1) == TokenUsage(1, 3, 4, estimated=True)
        else:
            assert tap.result(prompt_estimate=1) == TokenUsage(9, 3, 12)


def test_the_tap_keeps_the_model_the_usage_chunk_names() -> None:
    tap = StreamUsageTap(strip_usage_chunk=False)
    tap.feed(b'data: {"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n')
    assert tap.model == "gpt-4o-2024-08-06"
    responses = StreamUsageTap(strip_usage_chunk=False)  # the Responses API names it in its response object
    event = {"type": "response.completed", "response": {"model": "o3", "usage": {"input_tokens": 1, "output_tokens": 2}}}
    responses.feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    assert responses.model == "o3" and responses.usage == TokenUsage(1, 2, 3)


def test_only_the_chunk_with_the_figures_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = accounting.json.loads
    monkeypatch.setattr(accounting.json, "loads", lambda data, **kw: parsed.append(data) or real(data, **kw))
    tap = StreamUsageTap(strip_usage_chunk=False)
    chunks = _openai_stream(usage_at=100, events=101)
    for chunk in chunks:
        assert tap.feed(chunk) is chunk  # passed on as it is, not copied
    assert len(parsed) == 1 and b'"prompt_tokens"' in parsed[0]
    assert tap.usage == TokenUsage(9, 3, 12)


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices":[],"usage" :\t{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\n\n',
        b'data: {"choices":[],\ndata: "usage":\ndata: {"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\n\n',
    ],
    ids=["spaces", "split-over-data-lines"],
)
def test_usage_spelt_with_whitespace_is_still_found(event: bytes) -> None:
    tap = StreamUsageTap(strip_usage_chunk=True)
    assert tap.feed(event) == b""
    assert tap.usage == TokenUsage(9, 3, 12)


def test_the_word_usage_in_the_text_is_not_taken_for_figures() -> None:
    text = json.dumps({"choices": [{"index": 0, "delta": {"content": '"usage": {"prompt_tokens": 1} and "usage":null'}}]})
    event = b"data: " + text.encode() + b"\n\n"
    tap = StreamUsageTap(strip_usage_chunk=True)
    assert tap.feed(event) == event
    assert tap.usage is None
