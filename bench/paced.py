"""Paced streams: LLM-shaped streams at rising concurrency, every target in one run.

A model emits one SSE event per token, tens of them a second, for seconds: what limits
how many users one gateway core serves is the CPU per relayed event. This phase sends
streams shaped as OpenAI's (bench/upstream.py: ``"usage": null`` in every chunk, the
figures in a last chunk with ``"choices": []``, as the client asks with
``stream_options.include_usage``), ``--paced-events`` events ``--paced-gap-ms`` apart,
``--paced-tokens`` tokens of text each, at each concurrency of ``--paced-levels``.

All the targets run at once, each pinned to core 0 (the upstream, this client: core 1),
and are measured in turn, interleaved: round by round, level by level, the targets in
an order that rotates, so a drift of the machine's speed falls on all of them alike
and every figure is taken warm (each target first gets ``--paced-warmup`` streams).
A target whose added per-event delay p99 passed ``--paced-stop-ms`` at one level is
not driven to the higher levels of that round (it is past saturation already). A run
during which other processes took more than ``--paced-max-foreign`` of core 0 is
measured again (``--paced-retries`` times at most), and the least disturbed one kept.

Per target and level: CPU of its process tree per stream and per relayed event,
first-byte latency and per-event delivery delay (p50, p99) and what they add over
"direct" at the same level in the same round, peak memory, other processes' load on
core 0. "Streams per core": the concurrency at which the added per-event delay p99
passes ``--paced-limit-ms`` (50 ms), interpolated between the levels around it.

The hold (``--hold-streams``, default 1000): that many paced streams open together for
about ``--hold-events`` x ``--hold-gap-ms`` (60 s) through each of ``--hold-targets``,
``--hold-rounds`` rounds: errors and memory after each round (flat, or growing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable

from bench import procs, streams
from bench.streams import percentile

MODEL = "bench-model"


def body(events: int, gap_ms: float, tokens: int, usage: bool = True) -> bytes:
    """A streamed chat request; the stream's shape travels in the message text."""
    text = f"Count. bench_chunks={events} bench_gap_ms={gap_ms:g} bench_tokens={tokens}"
    document: dict = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
    if usage:
        document["stream_options"] = {"include_usage": True}
    return json.dumps(document).encode()


def add_arguments(parser: argparse.ArgumentParser, ints: Callable[[str], list[int]]) -> None:
    group = parser.add_argument_group("paced streams (bench/paced.py)")
    group.add_argument("--paced-levels", type=ints, default=[16, 32, 64, 96, 128, 192, 256, 320, 384], help="concurrent paced streams")
    group.add_argument("--paced-rounds", type=int, default=2)
    group.add_argument("--paced-events", type=int, default=200, help="events per paced stream")
    group.add_argument("--paced-gap-ms", type=float, default=15.0, help="ms between a paced stream's events")
    group.add_argument("--paced-tokens", type=int, default=1, help="tokens of text per event")
    group.add_argument("--paced-ramp-s", type=float, default=1.0, help="each level's connects spread over this long")
    group.add_argument("--paced-warmup", type=int, default=64, help="streams of warm-up per target (at once, 100 events)")
    group.add_argument("--paced-limit-ms", type=float, default=50.0, help="added delay p99 that defines streams per core")
    group.add_argument("--paced-max-foreign", type=float, default=0.25, help="other load on core 0 above which a run is repeated")
    group.add_argument("--paced-retries", type=int, default=2, help="extra attempts for a disturbed paced run")
    group.add_argument("--paced-stop-ms", type=float, default=500.0, help="added delay p99 past which higher levels are skipped")
    group.add_argument("--hold-streams", type=int, default=1000, help="streams of the hold (0: no hold)")
    group.add_argument("--hold-events", type=int, default=200)
    group.add_argument("--hold-gap-ms", type=float, default=300.0)
    group.add_argument("--hold-rounds", type=int, default=3)
    group.add_argument("--hold-ramp-s", type=float, default=5.0)
    group.add_argument("--hold-targets", default="gateway", help="targets held (comma-separated)")


def _median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _error_kind(result: streams.StreamResult, expected: int) -> str:
    if result.error:
        return "".join("N" if c.isdigit() else c for c in result.error)[:80]
    if result.status != 200:
        return f"HTTP {result.status}"
    if not result.done:
        return "no [DONE]"
    return f"{len(result.delays_ms)} of {expected} upstream events"


def one_level(target, upstream: procs.Service, count: int, events: int, gap_ms: float, tokens: int, ramp_s: float) -> dict:  # noqa: ANN001
    """``count`` paced streams through ``target``: its CPU, memory and what the client saw."""
    pids = (target.service or upstream).pids()
    sampler = procs.RssSampler((target.service or upstream).pid, interval=0.1)
    try:
        cpu_before = procs.cpu_seconds(pids)
        cores_before = procs.core_busy_seconds()
        started = time.monotonic()
        results = asyncio.run(
            streams.concurrent(
                "127.0.0.1",
                target.port,
                "/v1/chat/completions",
                target.headers,
                body(events, gap_ms, tokens),
                count,
                timeout_s=events * gap_ms / 1000 + 60,
                ramp_s=ramp_s,
            )
        )
        wall = time.monotonic() - started
        cpu = procs.cpu_seconds(pids) - cpu_before
        core0 = procs.core_busy_seconds()[0] - cores_before[0]
        peak = sampler.peak
    finally:
        sampler.stop()
    ttfb = [r.ttfb_ms for r in results if r.ttfb_ms is not None]
    delays = [d for r in results for d in r.delays_ms]
    failures = [r for r in results if not r.ok(events)]
    relayed = len(delays)
    own = cpu if target.service else 0.0
    return {
        "streams": count,
        "errors": len(failures),
        "error_kinds": dict(Counter(_error_kind(r, events) for r in failures).most_common(3)),
        "events": relayed,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_stream": cpu * 1000 / count,
        "cpu_us_per_event": cpu * 1e6 / relayed if relayed else None,
        "ttfb_p50_ms": percentile(ttfb, 50),
        "ttfb_p99_ms": percentile(ttfb, 99),
        "delay_p50_ms": percentile(delays, 50),
        "delay_p99_ms": percentile(delays, 99),
        "rss_peak_mb": peak / 2**20,
        "foreign_core0": max(0.0, core0 - own) / wall,
        "peak_open": streams.peak_open(results),
    }


def _added(row: dict, direct: dict | None, key: str) -> float | None:
    if direct is None or row.get(key) is None or direct.get(key) is None:
        return None
    return row[key] - direct[key]


def phase(targets: dict, upstream: procs.Service, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """The interleaved paced-stream runs of every target; see the module docstring."""
    names = list(targets)
    for name in names:
        if targets[name].service is None:
            continue
        log(f"paced: warm-up of {name} ({args.paced_warmup} streams of 100 events)")
        one_level(targets[name], upstream, args.paced_warmup, 100, args.paced_gap_ms, args.paced_tokens, args.paced_ramp_s)
    rounds: list[dict] = []
    for round_no in range(args.paced_rounds):
        saturated: set[str] = set()
        rows: dict[str, dict[str, dict]] = {name: {} for name in names}
        for index, level in enumerate(args.paced_levels):
            shift = (round_no + index) % len(names)
            order = names[shift:] + names[:shift]
            if "direct" in order:  # the baseline first: the others' added figures are against it
                order.remove("direct")
                order.insert(0, "direct")
            for name in order:
                if name in saturated:
                    continue
                shape = (args.paced_events, args.paced_gap_ms, args.paced_tokens, args.paced_ramp_s)
                row = one_level(targets[name], upstream, level, *shape)
                for _ in range(args.paced_retries):  # other work took core 0 from it: measure it again
                    if row["foreign_core0"] <= args.paced_max_foreign:
                        break
                    log(f"paced #{round_no + 1} {name} x{level}: other load on core 0 {row['foreign_core0']:.2f}; measuring again")
                    again = one_level(targets[name], upstream, level, *shape)
                    row = min((row, again), key=lambda r: r["foreign_core0"])
                direct = rows.get("direct", {}).get(str(level))
                row["added_ttfb_p50_ms"] = _added(row, direct, "ttfb_p50_ms")
                row["added_delay_p50_ms"] = _added(row, direct, "delay_p50_ms")
                row["added_delay_p99_ms"] = _added(row, direct, "delay_p99_ms")
                rows[name][str(level)] = row
                log(
                    f"paced #{round_no + 1} {name} x{level}: cpu {row['cpu_us_per_event'] or 0:.0f} us/event "
                    f"({row['cpu_ms_per_stream']:.1f} ms/stream), ttfb p50 {row['ttfb_p50_ms'] or 0:.1f} ms, "
                    f"delay p50/p99 {row['delay_p50_ms'] or 0:.1f}/{row['delay_p99_ms'] or 0:.1f} ms, "
                    f"rss {row['rss_peak_mb']:.0f} MB, errors {row['errors']} {row['error_kinds'] or ''}, "
                    f"other load on core 0 {row['foreign_core0']:.2f}"
                )
                added = row["added_delay_p99_ms"] if name != "direct" else None
                if row["errors"] > level // 2 or (added is not None and added > args.paced_stop_ms):
                    saturated.add(name)
        rounds.append(rows)
    return {
        "config": {
            "levels": args.paced_levels,
            "rounds": args.paced_rounds,
            "events": args.paced_events,
            "gap_ms": args.paced_gap_ms,
            "tokens": args.paced_tokens,
            "ramp_s": args.paced_ramp_s,
            "warmup_streams": args.paced_warmup,
            "limit_ms": args.paced_limit_ms,
            "stop_ms": args.paced_stop_ms,
            "max_foreign": args.paced_max_foreign,
            "retries": args.paced_retries,
            "usage": 'asked (stream_options.include_usage): every chunk carries "usage": null',
        },
        "labels": {name: targets[name].label for name in names},
        "rounds": rounds,
        "summary": summarise(rounds, names, args),
    }


SUMMARY_KEYS = (
    "cpu_ms_per_stream",
    "cpu_us_per_event",
    "ttfb_p50_ms",
    "added_ttfb_p50_ms",
    "delay_p50_ms",
    "delay_p99_ms",
    "added_delay_p50_ms",
    "added_delay_p99_ms",
    "rss_peak_mb",
    "foreign_core0",
)


def summarise(rounds: list[dict], names: list[str], args: argparse.Namespace) -> dict:
    """Per target and level the median over rounds (errors summed); streams per core."""
    out: dict = {}
    for name in names:
        levels: dict = {}
        for level in args.paced_levels:
            runs = [r[name][str(level)] for r in rounds if str(level) in r[name]]
            if not runs:
                continue
            levels[str(level)] = {key: _median([run.get(key) for run in runs]) for key in SUMMARY_KEYS}
            levels[str(level)]["errors"] = sum(run["errors"] for run in runs)
            levels[str(level)]["runs"] = len(runs)
        out[name] = {"levels": levels, "streams_per_core": streams_per_core(levels, args.paced_limit_ms) if name != "direct" else None}
    return out


def streams_per_core(levels: dict, limit_ms: float) -> dict:
    """The concurrency at which the added delay p99 passes ``limit_ms``, interpolated
    linearly between the last level under it and the first over it."""
    below = None
    for level in sorted(levels, key=int):
        added = levels[level].get("added_delay_p99_ms")
        if added is None:
            continue
        if added > limit_ms:
            if below is None:
                return {"value": None, "note": f"over {limit_ms:g} ms already at {level} streams", "over_at": int(level)}
            low, low_added = below
            value = low + (int(level) - low) * (limit_ms - low_added) / (added - low_added)
            return {"value": round(value), "under_at": low, "over_at": int(level)}
        below = (int(level), added)
    if below is None:
        return {"value": None, "note": "no level measured"}
    return {"value": None, "note": f"under {limit_ms:g} ms at every level, up to {below[0]} streams", "under_at": below[0]}


def hold(target, upstream: procs.Service, args: argparse.Namespace, log: Callable[[str], None]) -> dict:  # noqa: ANN001
    """``--hold-streams`` paced streams open together for about a minute, ``--hold-rounds`` times."""
    rounds = []
    pids = (target.service or upstream).pids
    for round_no in range(args.hold_rounds):
        rss_before = procs.rss_bytes(pids())
        row = one_level(target, upstream, args.hold_streams, args.hold_events, args.hold_gap_ms, args.paced_tokens, args.hold_ramp_s)
        time.sleep(2.0)
        row["rss_before_mb"] = rss_before / 2**20
        row["rss_after_mb"] = procs.rss_bytes(pids()) / 2**20
        rounds.append(row)
        log(
            f"hold #{round_no + 1} {target.name} {args.hold_streams} streams: peak open {row['peak_open']}, errors {row['errors']} "
            f"{row['error_kinds'] or ''}, {row['wall_s']:.0f} s, cpu {row['cpu_us_per_event'] or 0:.0f} us/event, "
            f"delay p99 {row['delay_p99_ms'] or 0:.1f} ms, rss {row['rss_before_mb']:.0f} -> {row['rss_peak_mb']:.0f} -> "
            f"{row['rss_after_mb']:.0f} MB"
        )
    return {
        "config": {
            "streams": args.hold_streams,
            "events": args.hold_events,
            "gap_ms": args.hold_gap_ms,
            "rounds": args.hold_rounds,
            "ramp_s": args.hold_ramp_s,
        },
        "rounds": rounds,
        "errors": sum(r["errors"] for r in rounds),
        "rss_after_mb": [r["rss_after_mb"] for r in rounds],
    }
