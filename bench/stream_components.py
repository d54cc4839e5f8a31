"""Run under callgrind by bench/stream_instructions.py: the gateway's per-event functions alone.

Each runs ``ITERATIONS`` times between two ``os.getppid()`` calls, which callgrind is told to
dump before (``--dump-before=getppid``): dump 2 holds the empty loop, 3 the framer, 4 the
tap's feed, 5 its relayed, 6 one ``json.loads`` of the chunk (what a parse per chunk costs).
Run by path with ``PYTHONPATH`` set to the tree whose ``gateway`` is counted.
"""

from __future__ import annotations

import json
import os

from gateway.upstream.accounting import StreamUsageTap
from gateway.upstream.sse import EventFramer

ITERATIONS = 2000
CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model",'
    b'"system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{"content":"t=1234567890123 "},"logprobs":null,'
    b'"finish_reason":null}],"usage":null}\n\n'
)


def main() -> None:
    n = ITERATIONS
    framer, tap = EventFramer(), StreamUsageTap(strip_usage_chunk=False)
    data = CHUNK[6:-2]

    def empty() -> None:
        for _ in range(n):
            pass

    def frame() -> None:
        for _ in range(n):
            framer.feed(CHUNK)

    def tap_feed() -> None:
        for _ in range(n):
            tap.feed(CHUNK)

    def tap_relayed() -> None:
        for _ in range(n):
            tap.relayed(CHUNK)
            tap._kept.clear()  # noqa: SLF001 - keep the list short, as its counting would
            tap._kept_bytes = 0  # noqa: SLF001

    def parse() -> None:
        for _ in range(n):
            json.loads(data)

    for part in (empty, frame, tap_feed, tap_relayed, parse):
        os.getppid()
        part()
    os.getppid()


if __name__ == "__main__":
    main()
