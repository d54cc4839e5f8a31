"""The paced-streams part of docs/benchmarks.md and its chart (docs/benchmarks-streams.png).

Read by bench/report.py from the results file that has a ``paced`` section (bench/paced.py),
with the instruction counts of bench/stream_instructions.py when they are there.
"""

from __future__ import annotations

from pathlib import Path

NAMES = ("direct", "gateway", "portkey", "litellm")
COLORS = {"direct": "#7f7f7f", "gateway": "#1f77b4", "litellm": "#d62728", "portkey": "#2ca02c"}
HEADLINE = 64  # the concurrency the first-byte target is stated at


def _num(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _names(paced: dict) -> list[str]:
    return [name for name in NAMES if name in paced["summary"]]


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}×"


def _round_ratios(paced: dict, level: str, key: str = "cpu_us_per_event") -> list[float]:
    """gateway / portkey of ``key`` at ``level``, round by round (each pair measured minutes apart at most)."""
    out = []
    for rows in paced["rounds"]:
        gateway, portkey = rows.get("gateway", {}).get(level), rows.get("portkey", {}).get(level)
        if gateway and portkey and gateway.get(key) and portkey.get(key):
            out.append(gateway[key] / portkey[key])
    return out


def headline(paced: dict) -> list[str]:
    """The figures the issue's targets are stated in, at the headline concurrency."""
    names = _names(paced)
    level = str(HEADLINE) if str(HEADLINE) in paced["summary"]["gateway"]["levels"] else None
    if level is None:
        return []
    portkey = paced["summary"].get("portkey", {}).get("levels", {}).get(level, {})
    rows = []
    for name in names:
        row = paced["summary"][name]["levels"].get(level)
        per_core = paced["summary"][name].get("streams_per_core") or {}
        if not row:
            over = per_core.get("over_at")
            rows.append(
                [paced["labels"].get(name, name), *(["–"] * 7), f"{per_core.get('value') or '–'} (past the limit at {over})", "–"]
            )
            continue
        rows.append(
            [
                paced["labels"].get(name, name),
                _num(row["cpu_us_per_event"], 0),
                _num(row["cpu_ms_per_stream"], 1),
                _ratio(row["cpu_us_per_event"], portkey.get("cpu_us_per_event")) if name != "direct" else "–",
                _num(row["added_ttfb_p50_ms"], 1, sign=True) if name != "direct" else _num(row["ttfb_p50_ms"], 1),
                _num(row["added_delay_p50_ms"], 2, sign=True) if name != "direct" else _num(row["delay_p50_ms"], 2),
                _num(row["added_delay_p99_ms"], 1, sign=True) if name != "direct" else _num(row["delay_p99_ms"], 1),
                _num(row["rss_peak_mb"], 0),
                str(per_core.get("value") or per_core.get("note", "–")) if name != "direct" else "–",
                str(row["errors"]),
            ]
        )
    header = [
        f"at {level} streams",
        "CPU µs / event",
        "CPU ms / stream",
        "CPU vs Portkey",
        "added TTFB p50 ms",
        "added delay p50 ms",
        "added delay p99 ms",
        "peak RSS MB",
        "streams per core",
        "errors",
    ]
    return _table(header, rows)


def levels_table(paced: dict) -> list[str]:
    rows = []
    for name in _names(paced):
        for level, row in sorted(paced["summary"][name]["levels"].items(), key=lambda item: int(item[0])):
            rows.append(
                [
                    name,
                    level,
                    _num(row["cpu_us_per_event"], 0),
                    _num(row["ttfb_p50_ms"], 1),
                    _num(row["delay_p50_ms"], 2),
                    _num(row["delay_p99_ms"], 1),
                    _num(row["added_delay_p99_ms"], 1, sign=True) if name != "direct" else "–",
                    _num(row["rss_peak_mb"], 0),
                    str(row["errors"]),
                    _num(row["foreign_core0"], 2),
                    str(row["runs"]),
                ]
            )
    header = [
        "target",
        "streams",
        "CPU µs / event",
        "TTFB p50 ms",
        "delay p50 ms",
        "delay p99 ms",
        "added p99 ms",
        "peak RSS MB",
        "errors",
        "other load core 0",
        "runs",
    ]
    return _table(header, rows)


def hold_table(paced: dict) -> list[str]:
    rows = []
    for name, hold in paced.get("hold", {}).items():
        for i, row in enumerate(hold["rounds"]):
            rows.append(
                [
                    name,
                    f"#{i + 1}",
                    str(row["peak_open"]),
                    str(row["errors"]),
                    _num(row["wall_s"], 0),
                    _num(row["cpu_us_per_event"], 0),
                    _num(row["delay_p99_ms"], 1),
                    _num(row["rss_before_mb"], 0),
                    _num(row["rss_peak_mb"], 0),
                    _num(row["rss_after_mb"], 0),
                ]
            )
    header = ["target", "round", "open at once", "errors", "s", "CPU µs / event", "delay p99 ms", "RSS before", "peak", "after (MB)"]
    return _table(header, rows) if rows else []


def instructions_table(counts: dict) -> list[str]:
    rows = [
        [
            row["code"],
            row["variant"] + (" (V8 under valgrind: not comparable)" if row["variant"].startswith("portkey") else ""),
            f"{row['instructions_per_event']:,}",
            f"{row['switches_per_event']:.2f}",
            f"{row['instructions_per_stream_besides_events']:,}",
        ]
        for row in counts.get("servers", [])
    ]
    header = ["code", "server", "instructions / event", "greenlet switches / event", "instructions / stream, besides its events"]
    return _table(header, rows)


def _short_call_guard(load: dict | None) -> str:
    """This gateway's req/s against Portkey's on short non-streamed calls, from the same results file."""
    if not load or "gateway" not in load or "portkey" not in load:
        return "short calls: not measured in this run (`make bench-peers` measures them)"
    parts = []
    for conns in sorted(load["gateway"]["load"], key=int):
        ours = load["gateway"]["load"][conns]["summary"]["rps"]["median"]
        theirs = load["portkey"]["load"].get(conns, {}).get("summary", {}).get("rps", {}).get("median")
        if ours and theirs:
            parts.append(f"{ours / theirs:.2f}× at {conns} connection(s)")
    return "short calls, this gateway's req/s over Portkey's: " + ", ".join(parts)


def targets(paced: dict, load: dict | None) -> list[str]:
    """The issue's targets against this run's figures (medians over the rounds)."""
    summary = paced["summary"]
    level = str(HEADLINE)
    gateway = summary.get("gateway", {}).get("levels", {})
    portkey = summary.get("portkey", {}).get("levels", {})
    lines = []
    row, peer = gateway.get(level), portkey.get(level)
    if row and peer and peer.get("cpu_us_per_event"):
        ratio = row["cpu_us_per_event"] / peer["cpu_us_per_event"]
        verdict = "met" if ratio <= 0.9 else "not met"
        lines.append(
            f"- CPU per relayed event at {level} streams, this gateway / Portkey: **{ratio:.2f}×** "
            f"(target at most 0.9×, aim 0.8×: {verdict})."
        )
    ratios = []
    for key in sorted(set(gateway) & set(portkey), key=int):
        if gateway[key].get("cpu_us_per_event") and portkey[key].get("cpu_us_per_event"):
            ratios.append(f"{gateway[key]['cpu_us_per_event'] / portkey[key]['cpu_us_per_event']:.2f}× at {key}")
    if ratios:
        lines.append(f"  At every level both reached: {', '.join(ratios)}.")
    if row:
        added = row.get("added_ttfb_p50_ms")
        verdict = "met" if added is not None and added <= 2 else "not met"
        lines.append(
            f"- Added first-byte latency p50 at {level} streams: **{_num(added, 1, sign=True)} ms** (target at most 2 ms: {verdict})."
        )
    # The core's use while all of a level's streams run: events per second x CPU per event.
    rate = 1000 / paced["config"]["gap_ms"]
    use = {k: int(k) * rate * (gateway[k]["cpu_us_per_event"] or 0) / 1e6 for k in gateway}
    below = sorted((k for k in gateway if use[k] < 0.9), key=int)
    worst = max((gateway[k]["added_delay_p99_ms"] or 0 for k in below), default=None)
    if worst is not None:
        verdict = "met" if worst < 5 else "not met"
        lines.append(
            f"- Added per-event delay p99 below saturation (levels whose streams keep the gateway's core under 90 % busy: "
            f"up to {below[-1]} streams): worst **{worst:+.1f} ms** (target under 5 ms: {verdict}). By level: "
            + ", ".join(
                f"{k}: {gateway[k]['added_delay_p99_ms']:+.1f} ms ({use[k]:.0%} of the core)" for k in sorted(gateway, key=int)
            )
            + "."
        )
    for name, hold in paced.get("hold", {}).items():
        after = hold["rss_after_mb"]
        lines.append(
            f"- Hold, {name}: {hold['config']['streams']} paced streams for about "
            f"{hold['config']['events'] * hold['config']['gap_ms'] / 1000:.0f} s, {len(after)} rounds: **{hold['errors']} errors**, "
            f"RSS after each round {' → '.join(f'{v:.0f}' for v in after)} MB."
        )
    guard = paced.get("short_calls") or {}
    if guard.get("rounds"):
        ratios = ", ".join(f"{r['ratio']:.2f}×" for r in guard["rounds"] if r.get("ratio"))
        lines.append(
            f"- Guard, short non-streamed calls at {guard['connections']} connections, this gateway's req/s over Portkey's, "
            f"interleaved and warm ({len(guard['rounds'])} pairs of {guard['seconds']} s wrk runs after the paced streams): "
            f"**{guard['ratio_median']:.2f}×** median ({ratios}) (target at least 0.8×). The short-call tables further down "
            "measure each target alone, minutes apart: read their ratios with the other load beside them."
        )
    else:
        lines.append(f"- Guard, {_short_call_guard(load)} (target at least 0.8×).")
    return lines


def section(paced: dict, counts: dict | None, source: str, load: dict | None = None) -> list[str]:
    cfg = paced["config"]
    ratios = _round_ratios(paced, str(HEADLINE))
    lines = [
        "## Streams: paced like an LLM's, every gateway in one run",
        "",
        f"Each stream: **{cfg['events']} events {cfg['gap_ms']:g} ms apart** ({cfg['tokens']} token of text each), "
        'chunks shaped as OpenAI\'s with usage asked (`stream_options.include_usage`: `"usage": null` in every '
        'chunk, the figures in a last chunk with `"choices": []`). Concurrency '
        f"{', '.join(map(str, cfg['levels']))}, connects spread over {cfg['ramp_s']:g} s; {cfg['rounds']} rounds, the "
        "targets interleaved (all running, each pinned to core 0, measured in turn in a rotating order, after "
        f"{cfg['warmup_streams']} warm-up streams each); medians over the rounds. *Added* = through the target less "
        "direct, same level, same round. *Streams per core*: the concurrency at which the added per-event delay p99 "
        f"passes {cfg['limit_ms']:g} ms (interpolated). Raw figures: [{source}](../{source}).",
        "",
        "![paced streams: CPU per event and added delay](benchmarks-streams.png)",
        "",
        *headline(paced),
        "",
        "Against the issue's targets (issue 16):",
        "",
        *targets(paced, load),
        "",
    ]
    if ratios:
        lines += [
            f"CPU per event, this gateway / Portkey at {HEADLINE} streams, round by round: "
            + ", ".join(f"{r:.2f}×" for r in ratios)
            + ".",
            "",
        ]
    lines += [
        "All levels (a target past saturation is not driven to higher levels in that round). *direct*'s own delays at "
        "the top levels show the load core (the upstream and this client, core 1) nearing its limit: a target whose "
        "added delay stays under the limit there holds at least that many streams, and the figure is a floor.",
        "",
        *levels_table(paced),
    ]
    hold = hold_table(paced)
    if hold:
        config = next(iter(paced["hold"].values()))["config"]
        lines += [
            "",
            f"### The hold: {config['streams']} paced streams at once for about "
            f"{config['events'] * config['gap_ms'] / 1000:.0f} s, {config['rounds']} rounds",
            "",
            f"{config['events']} events {config['gap_ms']:g} ms apart, connects spread over {config['ramp_s']:g} s.",
            "",
            *hold,
        ]
    if counts:
        lines += [
            "",
            "### Instructions per relayed event (callgrind, the real server)",
            "",
            "`python -m bench.stream_instructions`: the count does not move with the machine's load, unlike the CPU "
            "times above. Breakdown and method: [bench/results/profile.md](../bench/results/profile.md).",
            "",
            *instructions_table(counts),
        ]
    return lines


def render_chart(paced: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in _names(paced):
        levels = sorted(paced["summary"][name]["levels"].items(), key=lambda item: int(item[0]))
        xs = [int(level) for level, _ in levels]
        label = paced["labels"].get(name, name)
        axes[0].plot(xs, [row["cpu_us_per_event"] for _, row in levels], "-o", color=COLORS[name], label=label)
        if name != "direct":
            ys = [max(row["added_delay_p99_ms"] or 0.01, 0.01) for _, row in levels]
            axes[1].plot(xs, ys, "-o", color=COLORS[name], label=label)
    axes[0].set_yscale("log")
    axes[0].set_title("CPU per relayed event (µs, log scale; direct: the upstream's own)")
    axes[0].set_xlabel("concurrent paced streams")
    axes[0].set_ylabel("µs")
    axes[1].axhline(paced["config"]["limit_ms"], color="black", linestyle=":", label=f"{paced['config']['limit_ms']:g} ms")
    axes[1].set_yscale("log")
    axes[1].set_title("Added per-event delay p99 (ms, log scale)")
    axes[1].set_xlabel("concurrent paced streams")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    cfg = paced["config"]
    fig.suptitle(f"Paced streams: {cfg['events']} events {cfg['gap_ms']:g} ms apart, one core", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
