"""Token usage from upstream answers. Pure code: bytes and dicts, no Flask, no requests.

- Non-streamed answers carry OpenAI's ``usage`` object: :func:`usage_from_body`. Two
  shapes: ``prompt_tokens``/``completion_tokens`` (completions, chat, embeddings) and
  ``input_tokens``/``output_tokens`` (the Responses API), read as prompt and completion.
- Streams carry it only when asked (``stream_options.include_usage``), in one last
  chunk with empty ``choices``. :func:`ask_for_stream_usage` adds the option when the
  client did not ask, and :class:`StreamUsageTap` reads that chunk and, for such a
  client, removes it, so the client's stream is byte for byte what it would have
  been without the option.
- A Responses API stream always carries it, in its ``response.completed`` (or
  ``response.incomplete``, ``response.failed``) event's ``response.usage``: the tap reads
  it there and leaves it in the client's stream.
- When the upstream reports nothing (or a client's disconnect cut the stream before
  its usage chunk), tokens are estimated and marked so: about four characters per
  token of the prompt, and of the completion text the client was sent (a stream's
  ``delta.content``, ``text``, tool-call ``arguments``, a Responses ``delta``).
- Details, as OpenAI reports them: ``prompt_tokens_details.cached_tokens`` (prompt tokens
  read from the upstream's cache) is part of ``prompt_tokens``, and
  ``completion_tokens_details.reasoning_tokens`` is part of ``completion_tokens``. They are
  kept beside the totals, never added to them (each clamped to its total).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gateway.upstream.sse import split_events

CHARS_PER_TOKEN = 4
# A stream's relayed events are kept (references, no copy) until its end, when they are
# counted only if the upstream reported no usage; past this many bytes they are counted
# at once and let go, so a long stream holds at most this much.
RELAYED_KEPT_BYTES = 64 * 1024
# A ``"usage"`` key whose value is not ``null``. OpenAI and vLLM put ``"usage": null`` in
# every chunk of a stream that asked for usage, and the figures in one chunk only: found
# by bytes, so only that chunk is parsed. Anything this matches is parsed as JSON (and
# judged there), so a false match costs one parse and a missed one cannot happen: a
# usage object, or any value but ``null``, starts with a byte other than ``n``.
_REPORTED_USAGE = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*[^ \t\r\nn]')


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False
    cached_tokens: int = 0  # of prompt_tokens: read from the upstream's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens: the model's hidden reasoning


# The most tokens one answer's usage may report: far above any model's context, and far inside
# the BIGINT columns and their daily sums. A negative count, or an absurd one from a faulty
# upstream, would otherwise credit a key's counters or overflow the roll-up's sums.
MAX_REPORTED_TOKENS = 10**12
MODEL_NAME_KEPT = 200  # characters of a model name an answer reports, at most


def _detail(value: Any, details: str, name: str, most: int) -> int:
    """``value[details][name]`` when it is a whole number, clamped to 0..``most``; else 0."""
    found = value.get(details)
    count = found.get(name) if isinstance(found, dict) else None
    if not isinstance(count, int) or isinstance(count, bool):
        return 0
    return max(0, min(count, most))


NO_TOKENS = TokenUsage(0, 0, 0)  # a call that uses none (retrieving or deleting a stored response)


def _whole(count: Any) -> int | None:
    """A token count as the upstream reported it: a whole number (not a bool), clamped to
    0..:data:`MAX_REPORTED_TOKENS`; ``None`` when it is not one."""
    if not isinstance(count, int) or isinstance(count, bool):
        return None
    return max(0, min(count, MAX_REPORTED_TOKENS))


def _as_usage(value: Any) -> TokenUsage | None:
    if not isinstance(value, dict):
        return None
    if "prompt_tokens" in value:
        prompt, completion = _whole(value.get("prompt_tokens")), _whole(value.get("completion_tokens", 0))
        prompt_details, completion_details = "prompt_tokens_details", "completion_tokens_details"
    else:  # the Responses API's names
        prompt, completion = _whole(value.get("input_tokens")), _whole(value.get("output_tokens", 0))
        prompt_details, completion_details = "input_tokens_details", "output_tokens_details"
    if prompt is None or completion is None:
        return None
    total = _whole(value.get("total_tokens"))
    if total is None:
        total = prompt + completion
    cached = _detail(value, prompt_details, "cached_tokens", prompt)
    reasoning = _detail(value, completion_details, "reasoning_tokens", completion)
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
    """A rough prompt size in tokens from ``prompt``, ``messages``, ``input`` (a string or a
    list of items) and ``instructions`` (the Responses API's system prompt)."""
    chars = _text_length(document.get("prompt")) + _text_length(document.get("input")) + _text_length(document.get("instructions"))
    for message in document.get("messages") or ():
        if isinstance(message, dict):
            chars += _text_length(message.get("content"))
    return max(1, -(-chars // CHARS_PER_TOKEN)) if chars else 0


# A bound on a prompt's tokens, never below what a BPE tokenizer counts: each token holds
# at least one byte of text, plus each chat message's framing and the reply's priming
# (OpenAI counts 3 to 4 per message and 3 for the reply).
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 8


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        return sum(_text_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_text_bytes(item) for key, item in value.items() if key in ("content", "text", "instructions"))
    return 0


def prompt_token_bound(document: dict[str, Any]) -> int:
    """An upper bound on the prompt's tokens, for reservations that must never be passed:
    the UTF-8 bytes of ``prompt``, ``input``, ``instructions`` and the messages' text, plus
    :data:`MESSAGE_OVERHEAD_TOKENS` per message and :data:`REQUEST_OVERHEAD_TOKENS`."""
    size = _text_bytes(document.get("prompt")) + _text_bytes(document.get("input")) + _text_bytes(document.get("instructions"))
    messages = document.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                size += _text_bytes(message.get("content")) + MESSAGE_OVERHEAD_TOKENS
    return size + REQUEST_OVERHEAD_TOKENS


def estimate_completion_tokens(answer: dict[str, Any]) -> int:
    """A rough completion size in tokens from the choices (or the Responses API's ``output``) of a JSON answer.

    An answer off OpenAI's schema (``choices`` not a list, a ``message`` not an object)
    counts what has the right shape, and nothing else: it is the upstream's answer,
    relayed as sent, and must never fail the request that carries it.
    """
    chars = _text_length(answer.get("output"))  # a Responses API answer's output items
    choices = answer.get("choices")
    if not isinstance(choices, list):
        return -(-chars // CHARS_PER_TOKEN)
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
        self.model: str | None = None  # the model the chunk with the usage figures names (the answering model)
        self._kept: list[bytes] = []  # relayed events not yet counted
        self._kept_bytes = 0
        self._chars = 0  # completion text counted so far

    def feed(self, events: bytes) -> bytes:
        """Take complete events; return what the client should get (``events`` itself,
        not a copy, unless the usage chunk is removed). Once that has reached the client
        (its write succeeded), :meth:`relayed` counts it.

        Only an event with a ``"usage"`` other than ``null`` in it is parsed
        (:data:`_REPORTED_USAGE`): the chunks before the usage chunk cost two byte counts
        (every ``"usage"`` is a ``"usage":null``, as OpenAI and vLLM spell it), or with
        other spacing one regular-expression search."""
        keys = events.count(b'"usage"')
        if not keys or keys == events.count(b'"usage":null') or _REPORTED_USAGE.search(events) is None:
            return events
        kept = []
        removed = False
        for event in split_events(events):
            if _REPORTED_USAGE.search(event) is None:
                kept.append(event)
                continue
            usage, usage_only, model = self._inspect(event)
            if usage is not None:
                self.usage, self.model = usage, model
            if usage_only and self.strip:
                removed = True
                continue
            kept.append(event)
        return b"".join(kept) if removed else events

    def relayed(self, events: bytes) -> None:
        """``events`` (as :meth:`feed` returned them) went to the client: its text is billed
        when the upstream reports no usage. Events read but not sent (the client went away
        while they were being written) are not."""
        if self.usage is not None:
            return  # the upstream's figures will be used: nothing to count
        self._kept.append(events)
        self._kept_bytes += len(events)
        if self._kept_bytes > RELAYED_KEPT_BYTES:
            self._count_kept()

    def _count_kept(self) -> None:
        for events in self._kept:
            self._chars += relayed_text_chars(events)
        self._kept.clear()
        self._kept_bytes = 0

    @property
    def relayed_completion_tokens(self) -> int:
        """The completion tokens of the text relayed so far, counted as an estimate."""
        self._count_kept()
        return -(-self._chars // CHARS_PER_TOKEN)

    @staticmethod
    def _inspect(event: bytes) -> tuple[TokenUsage | None, bool, str | None]:
        """The event's usage figures, whether it is a usage-only chunk, and the model it names."""
        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            return None, False, None
        try:
            chunk = json.loads(data)
        except ValueError:
            return None, False, None
        if not isinstance(chunk, dict):
            return None, False, None
        usage = _as_usage(chunk.get("usage"))
        usage_only = usage is not None and chunk.get("choices") == []
        answer = chunk.get("response")
        if usage is None and isinstance(answer, dict):  # a Responses API event: never removed
            usage, chunk = _as_usage(answer.get("usage")), answer
        model = chunk.get("model")
        return usage, usage_only, model[:MODEL_NAME_KEPT] if isinstance(model, str) and model else None

    def result(self, prompt_estimate: int) -> TokenUsage:
        """What the stream used: the upstream's figures, else an estimate."""
        if self.usage is not None:
            return self.usage
        completion = self.relayed_completion_tokens
        return TokenUsage(prompt_estimate, completion, prompt_estimate + completion, estimated=True)


_TEXT_KEYS = ("content", "text", "arguments", "refusal")


def _delta_chars(value: Any) -> int:
    """Characters of generated text in a stream chunk's choice (or any part of it)."""
    if isinstance(value, str):
        return 0
    if isinstance(value, list):
        return sum(_delta_chars(item) for item in value)
    if isinstance(value, dict):
        total = 0
        for key, item in value.items():
            if key in _TEXT_KEYS and isinstance(item, str):
                total += len(item)
            elif isinstance(item, dict | list):
                total += _delta_chars(item)
        return total
    return 0


def relayed_text_chars(events: bytes) -> int:
    """Characters of generated text in whole SSE events: chat ``choices[].delta``, completion
    ``choices[].text``, Responses ``response.output_text.delta`` (its ``delta``)."""
    chars = 0
    for event in split_events(events):
        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("choices"), list):
            chars += _delta_chars(chunk["choices"])
        elif chunk.get("type") == "response.output_text.delta" and isinstance(chunk.get("delta"), str):
            chars += len(chunk["delta"])
    return chars
