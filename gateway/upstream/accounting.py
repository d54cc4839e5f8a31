"""Token usage from upstream answers. Pure code: bytes and dicts, no Flask, no requests.

- Non-streamed answers carry OpenAI's ``usage`` object: :func:`usage_from_body`.
- Streams carry it only when asked (``stream_options.include_usage``), in one last
  chunk with empty ``choices``. :func:`ask_for_stream_usage` adds the option when the
  client did not ask, and :class:`StreamUsageTap` reads that chunk and, for such a
  client, removes it, so the client's stream is byte for byte what it would have
  been without the option.
- When the upstream reports nothing, tokens are estimated (about four characters
  per token for the prompt, one token per content chunk of a stream) and marked so.
- Details, as OpenAI reports them: ``prompt_tokens_details.cached_tokens`` (prompt tokens
  read from the upstream's cache) is part of ``prompt_tokens``, and
  ``completion_tokens_details.reasoning_tokens`` is part of ``completion_tokens``. They are
  kept beside the totals, never added to them (each clamped to its total).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.upstream.sse import split_events

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False
    cached_tokens: int = 0  # of prompt_tokens: read from the upstream's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens: the model's hidden reasoning


def _detail(value: Any, details: str, name: str, most: int) -> int:
    """``value[details][name]`` when it is a whole number, clamped to 0..``most``; else 0."""
    found = value.get(details)
    count = found.get(name) if isinstance(found, dict) else None
    if not isinstance(count, int) or isinstance(count, bool):
        return 0
    return max(0, min(count, most))


def _as_usage(value: Any) -> TokenUsage | None:
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens", 0)
    total = value.get("total_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if not isinstance(total, int):
        total = prompt + completion
    cached = _detail(value, "prompt_tokens_details", "cached_tokens", prompt)
    reasoning = _detail(value, "completion_tokens_details", "reasoning_tokens", completion)
    return TokenUsage(prompt, completion, total, cached_tokens=cached, reasoning_tokens=reasoning)


def usage_from_body(body: bytes | dict[str, Any]) -> TokenUsage | None:
    """The ``usage`` an upstream reported in a JSON answer, if any."""
    if isinstance(body, bytes | bytearray):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    return _as_usage(body.get("usage")) if isinstance(body, dict) else None


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(item) for item in value)
    if isinstance(value, dict):
        return sum(_text_length(item) for key, item in value.items() if key in ("content", "text"))
    return 0


def estimate_prompt_tokens(document: dict[str, Any]) -> int:
    """A rough prompt size in tokens from ``prompt``, ``messages`` or ``input``."""
    chars = _text_length(document.get("prompt")) + _text_length(document.get("input"))
    for message in document.get("messages") or ():
        if isinstance(message, dict):
            chars += _text_length(message.get("content"))
    return max(1, -(-chars // CHARS_PER_TOKEN)) if chars else 0


def estimate_completion_tokens(answer: dict[str, Any]) -> int:
    """A rough completion size in tokens from the choices of a JSON answer.

    An answer off OpenAI's schema (``choices`` not a list, a ``message`` not an object)
    counts what has the right shape, and nothing else: it is the upstream's answer,
    relayed as sent, and must never fail the request that carries it.
    """
    choices = answer.get("choices")
    if not isinstance(choices, list):
        return 0
    chars = 0
    for choice in choices:
        if isinstance(choice, dict):
            message = choice.get("message")
            chars += _text_length(choice.get("text"))
            if isinstance(message, dict):
                chars += _text_length(message.get("content"))
    return -(-chars // CHARS_PER_TOKEN)


def usage_of_answer(answer: dict[str, Any] | None, prompt_estimate: int) -> TokenUsage:
    """What a non-streamed call used: the upstream's figures, else an estimate."""
    reported = usage_from_body(answer) if answer is not None else None
    if reported is not None:
        return reported
    completion = estimate_completion_tokens(answer) if answer is not None else 0
    return TokenUsage(prompt_estimate, completion, prompt_estimate + completion, estimated=True)


def client_asked_for_usage(document: dict[str, Any]) -> bool:
    options = document.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def ask_for_stream_usage(document: dict[str, Any]) -> bytes:
    """The request body with ``stream_options.include_usage`` set, re-encoded."""
    options = document.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return json.dumps({**document, "stream_options": options}, separators=(",", ":")).encode()


class StreamUsageTap:
    """Watches whole SSE events on their way to the client.

    :param strip_usage_chunk: remove the usage-only chunk (the client did not ask for it).
    """

    def __init__(self, strip_usage_chunk: bool) -> None:
        self.strip = strip_usage_chunk
        self.usage: TokenUsage | None = None
        self.content_events = 0

    def feed(self, events: bytes) -> bytes:
        """Take complete events; return what the client should get."""
        if b'"usage"' not in events:
            self.content_events += events.count(b"data:") - events.count(b"data: [DONE]")
            return events
        kept = []
        for event in split_events(events):
            usage, usage_only = self._inspect(event)
            if usage is not None:
                self.usage = usage
            if usage_only and self.strip:
                continue
            if not usage_only and b"data:" in event and b"[DONE]" not in event:
                self.content_events += 1
            kept.append(event)
        return b"".join(kept)

    @staticmethod
    def _inspect(event: bytes) -> tuple[TokenUsage | None, bool]:
        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            return None, False
        try:
            chunk = json.loads(data)
        except ValueError:
            return None, False
        if not isinstance(chunk, dict):
            return None, False
        usage = _as_usage(chunk.get("usage"))
        usage_only = usage is not None and chunk.get("choices") == []
        return usage, usage_only

    def result(self, prompt_estimate: int) -> TokenUsage:
        """What the stream used: the upstream's figures, else an estimate."""
        if self.usage is not None:
            return self.usage
        completion = self.content_events
        return TokenUsage(prompt_estimate, completion, prompt_estimate + completion, estimated=True)
