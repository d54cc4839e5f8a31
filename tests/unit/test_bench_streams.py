"""The paced-stream benchmark's own logic: the upstream's OpenAI shape, streams per core."""

from __future__ import annotations

import json

from bench.paced import streams_per_core
from bench.upstream import StreamShape


def _data(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[6:-2])


def test_with_usage_asked_every_chunk_says_null_and_the_last_carries_the_figures() -> None:
    shape = StreamShape("/v1/chat/completions", tokens=3, usage=True, events=4)
    first, later = _data(shape.event(0)), _data(shape.event(1))
    assert first["usage"] is None and later["usage"] is None
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert later["choices"][0]["delta"]["content"].startswith("t=")
    assert later["choices"][0]["delta"]["content"].count("tok") == 2  # three tokens: the stamp and two more
    end = [_data(e + b"\n\n") for e in shape.end.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert end[0]["choices"][0]["finish_reason"] == "stop" and end[0]["usage"] is None
    assert end[1]["choices"] == [] and end[1]["usage"]["completion_tokens"] == 12
    assert shape.end.endswith(b"data: [DONE]\n\n")


def test_without_usage_asked_no_chunk_has_a_usage_field() -> None:
    shape = StreamShape("/v1/chat/completions", tokens=1, usage=False, events=2)
    assert b'"usage"' not in shape.event(0) + shape.event(1) + shape.end


def test_streams_per_core_is_interpolated_where_the_added_delay_passes_the_limit() -> None:
    levels = {"16": {"added_delay_p99_ms": 2.0}, "64": {"added_delay_p99_ms": 30.0}, "128": {"added_delay_p99_ms": 130.0}}
    assert streams_per_core(levels, 50.0) == {"value": 77, "under_at": 64, "over_at": 128}
    assert streams_per_core({"16": {"added_delay_p99_ms": 80.0}}, 50.0)["value"] is None
    assert "every level" in streams_per_core({"16": {"added_delay_p99_ms": 1.0}}, 50.0)["note"]
