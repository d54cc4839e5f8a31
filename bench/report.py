"""Render bench/results/latest.json (and peers.json, when present) as docs/benchmarks.md + .png.

python -m bench.report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import report_paced

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"


def fmt(spread: dict | None, digits: int = 2, unit: str = "") -> str:
    """``median (min–max)`` of a repeated figure."""
    if not spread or spread.get("median") is None:
        return "–"
    median, low, high = spread["median"], spread["min"], spread["max"]
    if spread.get("n", 1) <= 1 or low == high:
        return f"{median:,.{digits}f}{unit}"
    return f"{median:,.{digits}f}{unit} ({low:,.{digits}f}–{high:,.{digits}f})"


def med(spread: dict | None) -> float | None:
    return None if not spread else spread.get("median")


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def gateways(data: dict) -> list[str]:
    """The gateway targets in a results file: "gateway", and "gateway-2b" and "gateway-redis" when
    they were measured (files from before those targets have only "gateway")."""
    return [n for n in ("gateway", "gateway-2b", "gateway-redis") if n in data["targets"]]


def store_cpu(summary: dict, digits: int = 3) -> str:
    """The quota store's (Redis's) CPU per request, for targets that have one."""
    return fmt(summary.get("store_cpu_ms_per_request"), digits)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def machine_section(data: dict) -> list[str]:
    m = data["machine"]
    v = m["gateway_versions"]
    rows = [
        ["`nproc`", m["nproc"]],
        ["CPU (/proc/cpuinfo)", f"{m['cpu_model']}, {m['cpu_mhz']} MHz"],
        ["memory", f"{m['memory_gib']} GiB"],
        ["OS / kernel", f"{m['os']} / {m['kernel']}"],
        ["gateway Python", v["python"]],
        ["gunicorn / gevent", f"{v['gunicorn']} / {v['gevent']}"],
        ["Flask / Werkzeug", f"{v['flask']} / {v['werkzeug']}"],
        ["requests / urllib3", f"{v['requests']} / {v['urllib3']}"],
        [
            "flask-limiter / flask-cors / flask-talisman / PyJWT",
            f"{v['flask-limiter']} / {v['flask-cors']} / {v['flask-talisman']} / {v['pyjwt']}",
        ],
        ["load generator", m["wrk"]],
        ["gateway commit", f"`{m['commit']}`"],
        ["run", f"{data['generated']}, {data['elapsed_s'] / 60:.1f} min"],
    ]
    return table(["", ""], rows)


def settings_section(data: dict) -> list[str]:
    names = gateways(data)
    per_name = [data["targets"][n].get("settings", {}) for n in names]
    keys = list(dict.fromkeys(k for settings in per_name for k in settings))

    def cell(settings: dict, key: str) -> str:
        if key not in settings:
            return "–"
        value = settings[key]
        return f"`{value}`" if not isinstance(value, str) or not value.startswith("<") else value

    rows = [[f"`{k}`"] + [cell(settings, k) for settings in per_name] for k in keys]
    return table(["setting"] + (names if len(names) > 1 else ["value"]), rows)


def load_section(data: dict) -> list[str]:
    direct = data["targets"]["direct"]["load"]
    names = gateways(data)
    rows = []
    for conns in data["config"]["connections"]:
        for name in ["direct", *names]:
            s = data["targets"][name]["load"][str(conns)]["summary"]
            rows.append(
                [str(conns), name, fmt(s["rps"], 0), fmt(s["p50_ms"], 3), fmt(s["p90_ms"], 3), fmt(s["p99_ms"], 3), str(s["errors"])]
            )
    lines = table(["connections", "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"], rows)
    lines += ["", "The gateway's added latency (median of medians):", ""]
    rows = []
    for conns in data["config"]["connections"]:
        d = direct[str(conns)]["summary"]
        for name in names:
            g = data["targets"][name]["load"][str(conns)]["summary"]
            row = [str(conns), name]
            for key in ("p50_ms", "p90_ms", "p99_ms"):
                dm, gm = med(d[key]), med(g[key])
                row.append(f"+{gm - dm:,.2f} ms (×{gm / dm:,.0f})" if dm and gm else "–")
            row.append(f"{med(g['rps']) / med(d['rps']) * 100:.1f} %" if med(d["rps"]) else "–")
            rows.append(row)
    lines += table(["connections", "target", "added p50", "added p90", "added p99", "req/s as % of direct"], rows)
    return lines


def cost_section(data: dict) -> list[str]:
    direct = data["targets"]["direct"]
    names = gateways(data)
    redis = "gateway-redis" in names  # the Redis columns only when it was measured
    rows = []
    for conns in data["config"]["connections"]:
        d = direct["load"][str(conns)]["summary"]
        for name in names:
            g = data["targets"][name]["load"][str(conns)]["summary"]
            rows.append(
                [
                    str(conns),
                    name,
                    fmt(g["cpu_ms_per_request"], 3),
                    *([store_cpu(g)] if redis else []),
                    fmt(g["cpu_utilisation"], 2),
                    *([fmt(g.get("store_cpu_utilisation"), 2)] if redis else []),
                    fmt(g["upstream_cpu_utilisation"], 2),
                    fmt(g["rss_peak_mb"], 1),
                    fmt(d["cpu_ms_per_request"], 4),
                    fmt(g.get("foreign"), 2),
                    fmt(d.get("foreign"), 2),
                ]
            )
    lines = table(
        [
            "connections",
            "target",
            "gateway CPU ms / request",
            *(["Redis CPU ms / request"] if redis else []),
            "gateway CPU use (cores)",
            *(["Redis CPU use (cores)"] if redis else []),
            "upstream CPU use during the run (cores)",
            "gateway peak RSS MB",
            "upstream CPU ms / request (direct)",
            "other processes on core 0, gateway runs (cores)",
            "other processes on core 1, direct runs (cores)",
        ],
        rows,
    )
    if redis:
        lines += [
            "",
            "gateway-redis: *gateway CPU* is the gateway's processes only (gunicorn master and its "
            "workers, all on core 0); *Redis CPU* is the machine's redis-server during the same run "
            "(not pinned, so it may share either core; it is not counted as other processes' load).",
        ]
    return lines


def timing_section(data: dict) -> list[str]:
    names = [n for n in gateways(data) if data["targets"][n].get("server_timing")]
    if not names:
        return ["(not measured)"]
    summaries = [data["targets"][n]["server_timing"]["summary"] for n in names]
    rows = [
        [title] + [fmt(s[key], 3) for s in summaries]
        for key, title in (
            ("gateway_ms", "`gateway;dur` (request start to response built)"),
            ("upstream_ms", "`upstream;dur` (upstream call, as the gateway sees it)"),
            ("own_ms", "gateway's own share (`gateway - upstream`, per request)"),
            ("client_ms", "client-measured round trip (same requests)"),
        )
    ]
    units = [f"{n} ms" for n in names] if len(names) > 1 else ["ms"]
    return table([f"median over {data['config']['timing_samples']} sequential requests, per round", *units], rows)


def stream_section(data: dict) -> list[str]:
    cfg = data["config"]["stream_latency"]
    direct = data["targets"]["direct"]["stream_latency"]["summary"]
    rows = []
    for name in ["direct", *gateways(data)]:
        s = data["targets"][name]["stream_latency"]["summary"]
        rows.append(
            [
                name,
                fmt(s["ttfb_p50_ms"]),
                fmt(s["ttfb_p99_ms"]),
                fmt(s["chunk_delay_p50_ms"], 3),
                fmt(s["chunk_delay_p99_ms"], 3),
                str(s["errors"]),
            ]
        )
    extra = [""]
    for name in gateways(data):
        gateway = data["targets"][name]["stream_latency"]["summary"]
        who = "the gateway" if name == "gateway" else f"{name}"
        extra.append(
            f"Added by {who}: time to first event **+{num(_diff(gateway, direct, 'ttfb_p50_ms'))} ms** (p50), "
            f"per chunk **+{num(_diff(gateway, direct, 'chunk_delay_p50_ms'), 3)} ms** (p50) and "
            f"+{num(_diff(gateway, direct, 'chunk_delay_p99_ms'), 3)} ms (p99)."
        )
    head = (
        f"{cfg['count']} sequential streams per round, {cfg['chunks']} events {cfg['gap_ms']:g} ms apart; "
        "chunk delay = arrival time − the upstream's write time stamped in the event"
    )
    return (
        [head, ""]
        + table(["target", "TTFB p50 ms", "TTFB p99 ms", "chunk delay p50 ms", "chunk delay p99 ms", "failed streams"], rows)
        + extra
    )


def _diff(a: dict, b: dict, key: str) -> float | None:
    x, y = med(a.get(key)), med(b.get(key))
    return None if x is None or y is None else x - y


def slow_ramp(cfg: dict) -> float:
    """Seconds over which a round's slow streams were started; 0 (all at once) for files from before the ramp."""
    return cfg.get("ramp_s") or 0.0


def slow_arrival(cfg: dict) -> str:
    ramp = slow_ramp(cfg)
    return f"started over {ramp:g} s" if ramp else "started all at once"


def _peak_open(summary: dict) -> str:
    return "–" if summary.get("peak_open") is None else str(summary["peak_open"])


def slow_section(data: dict) -> list[str]:
    cfg = data["config"]["slow_streams"]
    ramp = slow_ramp(cfg)
    length_s = cfg["chunks"] * cfg["gap_ms"] / 1000
    if ramp:
        start = (
            f"Each round starts N streams spread evenly over {ramp:g} s (stream i connects i × {ramp:g}/N s "
            "into the round; TTFB is timed from its own connect)"
        )
    else:
        start = "Each round opens N streams all at once"
    lines = [
        f"{start}; each stream is {cfg['chunks']} events {cfg['gap_ms']:g} ms apart (~{length_s:g} s). "
        "*Peak open* is the most streams open at the same time (connect to end), the lowest over the rounds. "
        "RSS is the sum over the gateway's processes "
        "(gunicorn master + worker): before the round, peak during it, 1 s after it.",
        "",
    ]
    rows = []
    for name in ["direct", *gateways(data)]:
        slow = data["targets"][name].get("slow_streams", {})
        for level in cfg["levels"]:
            entry = slow.get(str(level))
            if not entry:
                continue
            s = entry["summary"]
            rss = " · ".join(f"{r['rss_before_mb']:.0f}→{r['rss_peak_mb']:.0f}→{r['rss_after_mb']:.0f}" for r in entry["rounds"])
            kinds = {}
            for r in entry["rounds"]:
                for kind, count in r["error_kinds"].items():
                    kinds[kind] = kinds.get(kind, 0) + count
            errors = str(s["errors"]) + (f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())})" if kinds else "")
            rows.append(
                [
                    name,
                    str(level),
                    _peak_open(s),
                    errors,
                    fmt(s["ttfb_p50_ms"], 1),
                    fmt(s["ttfb_p99_ms"], 1),
                    fmt(s["duration_p50_ms"], 0),
                    "(upstream) " + rss if name == "direct" else rss,
                ]
            )
    return lines + table(
        [
            "target",
            "concurrent streams",
            "peak open",
            "failed streams (all rounds)",
            "TTFB p50 ms",
            "TTFB p99 ms",
            "stream duration p50 ms",
            "RSS MB per round: before→peak→after",
        ],
        rows,
    )


def peers_section(peers: dict) -> list[str]:
    names = [n for n in PEER_NAMES if n in peers["targets"]]
    labels = {n: peers["targets"][n]["label"] for n in names}
    lines = [
        f"One run (`make bench-peers`, {peers['generated']}, {peers['config']['repeats']} repeat(s) of "
        f"{peers['config']['duration_s']} s per figure), the same upstream, wrk script and placement "
        "(each gateway alone on core 0). Requests: `POST /v1/chat/completions`, non-streamed.",
        "",
    ]
    header = ["figure"] + [labels[n] for n in names]
    rows = []
    for conns in peers["config"]["connections"]:
        for key, title, digits in (("rps", "req/s", 0), ("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2)):
            rows.append(
                [f"{title} @ {conns} conn"] + [fmt(peers["targets"][n]["load"][str(conns)]["summary"][key], digits) for n in names]
            )
    conns = 16 if 16 in peers["config"]["connections"] else peers["config"]["connections"][0]
    rows.append(
        [f"CPU ms / request @ {conns} conn"]
        + [fmt(peers["targets"][n]["load"][str(conns)]["summary"]["cpu_ms_per_request"], 3) for n in names]
    )
    if "gateway-redis" in names:
        rows.append(
            [f"Redis CPU ms / request @ {conns} conn"] + [store_cpu(peers["targets"][n]["load"][str(conns)]["summary"]) for n in names]
        )
    rows.append(
        ["peak RSS MB (load)"]
        + [
            num(
                max(peers["targets"][n]["load"][str(c)]["summary"]["rss_peak_mb"]["median"] for c in peers["config"]["connections"]), 0
            )
            for n in names
        ]
    )
    rows.append(
        ["other processes on the limiting core (cores, worst run)"]
        + [
            num(
                max(
                    peers["targets"][n]["load"][str(c)]["summary"].get("foreign", {}).get("max") or 0
                    for c in peers["config"]["connections"]
                ),
                2,
            )
            for n in names
        ]
    )
    rows.append(
        ["errors (load)"]
        + [str(sum(peers["targets"][n]["load"][str(c)]["summary"]["errors"] for c in peers["config"]["connections"])) for n in names]
    )
    rows.append(["stream TTFB p50 ms"] + [fmt(peers["targets"][n]["stream_latency"]["summary"]["ttfb_p50_ms"]) for n in names])
    rows.append(
        ["stream chunk delay p50 ms"] + [fmt(peers["targets"][n]["stream_latency"]["summary"]["chunk_delay_p50_ms"], 3) for n in names]
    )
    rows.append(["failed streams (latency test)"] + [str(peers["targets"][n]["stream_latency"]["summary"]["errors"]) for n in names])
    for level in peers["config"]["slow_streams"]["levels"]:
        cells = []
        for n in names:
            entry = peers["targets"][n].get("slow_streams", {}).get(str(level))
            if not entry:
                cells.append("–")
                continue
            s = entry["summary"]
            cells.append(
                f"{s['errors']} failed, "
                + (f"peak open {s['peak_open']}, " if s.get("peak_open") is not None else "")
                + f"TTFB p99 {num(med(s['ttfb_p99_ms']), 0)} ms, "
                f"stream p50 {num(med(s['duration_p50_ms']) / 1000, 1)} s, "
                f"peak {num(med(s['rss_peak_mb']), 0)} MB"
            )
        rows.append([f"{level} concurrent slow streams ({slow_arrival(peers['config']['slow_streams'])})"] + cells)
    lines += table(header, rows)
    lines += ["", "Settings:", ""]
    for n in names:
        settings = peers["targets"][n].get("settings", {})
        brief = "; ".join(
            f"{k}: {v}"
            for k, v in settings.items()
            if k
            in ("version", "server", "auth", "logs", "gateway_worker_class", "worker_processes", "rate_limit_general", "quota_store")
        )
        lines.append(f"- **{labels[n]}**: {brief or 'see bench/results/peers.json'}")
    return lines


def summary_section(data: dict) -> list[str]:
    """The headline figures, each a median over the repeats."""
    d, g = data["targets"]["direct"], data["targets"]["gateway"]
    conns = [str(c) for c in data["config"]["connections"]]
    one = "1" if "1" in conns else conns[0]
    busiest = max(conns, key=lambda c: med(g["load"][c]["summary"]["rps"]))
    gl, dl = g["load"][one]["summary"], d["load"][one]["summary"]
    cpu = [med(g["load"][c]["summary"]["cpu_ms_per_request"]) for c in conns]
    ds, gs = d["stream_latency"]["summary"], g["stream_latency"]["summary"]
    lines = [
        f"- Throughput: **{med(g['load'][busiest]['summary']['rps']):,.0f} req/s** through the gateway at "
        f"{busiest} connections (best level), against {med(d['load'][busiest]['summary']['rps']):,.0f} req/s "
        "from the upstream alone: the upstream is never the bottleneck.",
        f"- CPU: **{min(cpu):.2f}–{max(cpu):.2f} ms per non-streamed request** (all gateway processes); "
        f"the gateway's core is {med(gl['cpu_utilisation']) * 100:.0f} % busy even at {one} connection.",
        f"- Added latency at {one} connection: **+{med(gl['p50_ms']) - med(dl['p50_ms']):.2f} ms** p50, "
        f"+{med(gl['p99_ms']) - med(dl['p99_ms']):.2f} ms p99.",
        f"- Streams: time to first event +{_diff(gs, ds, 'ttfb_p50_ms'):.2f} ms, each event "
        f"+{_diff(gs, ds, 'chunk_delay_p50_ms'):.3f} ms (p50).",
    ]
    redis = data["targets"].get("gateway-redis")
    if redis:
        rbusiest = max(conns, key=lambda c: med(redis["load"][c]["summary"]["rps"]))
        rcpu = [med(redis["load"][c]["summary"]["cpu_ms_per_request"]) for c in conns]
        scpu = [med(redis["load"][c]["summary"].get("store_cpu_ms_per_request")) for c in conns]
        scpu = [x for x in scpu if x is not None]
        workers = redis.get("settings", {}).get("worker_processes")
        errors = sum(redis["load"][c]["summary"]["errors"] for c in conns)
        lines.append(
            "- With its quotas in Redis (`gateway-redis`"
            + (f", {workers} worker{'s' if workers != 1 else ''}" if workers else "")
            + "): "
            f"**{med(redis['load'][rbusiest]['summary']['rps']):,.0f} req/s** at {rbusiest} connections, "
            f"{_span(rcpu)} ms CPU per request in the gateway's processes"
            + (f" plus {_span(scpu)} ms in Redis" if scpu else "")
            + f", {errors} errors."
        )
    two = data["targets"].get("gateway-2b")
    if two:
        added = [
            med(two["load"][c]["summary"]["cpu_ms_per_request"]) - med(g["load"][c]["summary"]["cpu_ms_per_request"]) for c in conns
        ]
        lines.append(
            "- Routing to two backends (`gateway-2b`, both the bench upstream) against one (`gateway`): "
            f"**{min(added):+.3f} to {max(added):+.3f} ms CPU per request** ({', '.join(f'{c} conn.' for c in conns)}; "
            "medians, so within the runs' spread a difference near 0 is noise), "
            f"{sum(two['load'][c]['summary']['errors'] for c in conns)} errors."
        )
    extra_targets = [t for t in (redis, two) if t]
    disturbed = sum(t["load"][c]["summary"].get("disturbed_runs", 0) for t in (d, g, *extra_targets) for c in conns)
    lines.append(
        f"- Quiet machine check: a wrk run during which other processes used more than "
        f"{data['config'].get('max_foreign', 0.1):.2f} of the limiting core (core 0 for the gateway, core 1 "
        "for direct runs) is measured again (up to "
        f"{data['config'].get('retries', 0)} times); {disturbed} run(s) stayed disturbed."
    )
    slow = g.get("slow_streams", {})
    if slow:
        top = max(slow, key=int)
        s = slow[top]["summary"]
        rounds = slow[top]["rounds"]
        peak = s.get("peak_open")
        lines.append(
            f"- Concurrent slow streams ({slow_arrival(data['config']['slow_streams'])}): {', '.join(slow)} held "
            f"with **{sum(slow[k]['summary']['errors'] for k in slow)} failed streams**; at {top}"
            + (f" ({peak} open at once)" if peak is not None else "")
            + ": TTFB p50 "
            f"{med(s['ttfb_p50_ms']):,.0f} ms / p99 {med(s['ttfb_p99_ms']):,.0f} ms, gateway RSS after each round "
            + " → ".join(f"{r['rss_after_mb']:.0f}" for r in rounds)
            + " MB."
        )
    return lines


def _span(values: list[float]) -> str:
    """``low–high`` of medians over the connection counts, or one value when they agree."""
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low}–{high}"


def slow_notes(data: dict) -> list[str]:
    """How to read the slow-stream table: depends on whether the streams were started over a ramp."""
    cfg = data["config"]["slow_streams"]
    ramp = slow_ramp(cfg)
    if not ramp:
        return [
            "All N requests arrive at once, and the gateway spends about its CPU-per-request figure starting each "
            "stream, so the last stream starts roughly N × that later: TTFB under a burst follows the CPU cost. It "
            "also includes queueing in the stream client itself (one Python process opening every connection on "
            "core 1); the *direct* rows show that floor. Stream durations above the nominal length come from the "
            "same queueing. RSS that returns to the same level round after round means no growth per stream."
        ]
    top = max(cfg["levels"])
    length_s = cfg["chunks"] * cfg["gap_ms"] / 1000
    overlap = (
        f"each stream (~{length_s:g} s) lasts longer than the ramp, so all N are open together (*peak open*)"
        if ramp < length_s
        else f"the ramp is no shorter than a stream (~{length_s:g} s), so not all N overlap (*peak open*)"
    )
    return [
        f"The N connects are spread over {ramp:g} s ({ramp * 1000 / top:g} ms apart at {top}), direct and through "
        f"the gateway alike; {overlap}. Started all in one instant instead (`--slow-ramp-s 0`), TTFB measures "
        "mostly the connection storm in the one-process stream client on core 1: even the upstream alone, with "
        "nothing in between, then shows a TTFB p99 of a few hundred ms at 1000 streams. The *direct* rows are the "
        "floor of this client and upstream. Stream durations above the nominal length come from queueing. RSS "
        "that returns to the same level round after round means no growth per stream."
    ]


PEER_NOTES = [
    "Reading the comparison:",
    "",
    "- The gateways do different work per request. This gateway checks a managed API key, counts two quotas, "
    "adds security and rate-limit headers, writes a JSON log line, updates its Prometheus metrics and queues a "
    "usage row for SQLite. LiteLLM checks its master key (no database) "
    "and re-serialises every answer and event through its own types. Portkey's open-source gateway has no "
    "client authentication and no quotas.",
    "- Portkey's time to first event is about 30 ms whatever the upstream's pace: checked by hand at 20 and "
    "200 ms between events, its first event arrived 27–30 ms after the upstream wrote it and later ones "
    "within a few ms.",
    "- LiteLLM adds one empty event of its own to each stream; streams are counted complete by the upstream's "
    "time-stamped events. At 10–20 ms of CPU per request it cannot start 250–500 streams a second, so its "
    "streams queue for seconds; a stream counts as failed only if it has not ended within its length + 30 s.",
    "- One run each on a shared virtual machine: differences under about 20 % are within run-to-run noise "
    "(compare the ranges in the tables above). The machine's speed also drifts between runs: compare targets "
    "within one run, not this table with the main tables above (taken in another run).",
]


def load_targets(source: str, data: dict, peers: dict | None) -> dict | None:
    """The short-call figures of the same results file as the paced streams."""
    chosen = peers if source.endswith("peers.json") else data
    return chosen.get("targets") if chosen else None


def paced_source(data: dict, peers: dict | None) -> tuple[dict, str] | None:
    """The paced-stream figures: from the peers' run when it has them (all four targets), else ``make bench``'s."""
    for source, path in ((peers, "bench/results/peers.json"), (data, "bench/results/latest.json")):
        if source and source.get("paced", {}).get("summary"):
            return source["paced"], path
    return None


def render_markdown(data: dict, peers: dict | None) -> str:
    cfg = data["config"]
    paced = paced_source(data, peers)
    counts_path = RESULTS / "stream_instructions.json"
    counts = json.loads(counts_path.read_text()) if counts_path.exists() else None
    out = [
        "# Benchmarks",
        "",
        "Reproduce with `make bench` (about "
        f"{data['elapsed_s'] / 60:.0f} minutes; installs wrk and the bench venv when missing). "
        "Peers: `make bench-peers`. Raw figures: [bench/results/latest.json](../bench/results/latest.json); "
        "profile of the gateway worker: [bench/results/profile.md](../bench/results/profile.md).",
        "",
        *(report_paced.section(paced[0], counts, paced[1], load_targets(paced[1], data, peers)) + [""] if paced else []),
        "## Summary of the short calls",
        "",
        *summary_section(data),
        "",
        "![req/s, latency, stream TTFB and memory](benchmarks.png)",
        "",
        "## What is measured",
        "",
        "- **Upstream**: `bench/upstream.py`, an asyncio OpenAI-compatible server with fixed answers "
        "(JSON, or SSE with a configurable number of events and gap). It is measured **direct** first, so the "
        "gateway's figures can be read against what the upstream alone gives on the same machine.",
        "- **Gateway**: started by the harness with the shipped `gunicorn.conf.py` (gevent, one worker, 1000 "
        "connections) in production mode: strong random `MASTER_API_KEY`/`JWT_SECRET`, auth on (`X-API-Key`), "
        "quotas on with limits no run can reach, one JSON log line per request written to a file.",
        *(
            [
                "- **gateway-redis**: the same gateway with its quotas in the machine's Redis "
                "(`RATE_LIMIT_STORAGE_URI=redis://127.0.0.1:6379/12`, a key prefix of each run's own, its keys "
                "deleted afterwards). With a shared store the shipped config starts one worker per core the "
                f"process may use ({data['targets'].get('gateway-redis', {}).get('settings', {}).get('worker_processes', '?')} "
                "here), pinned to core 0. Redis is not pinned; its CPU is reported apart from the gateway's."
            ]
            if "gateway-redis" in data["targets"]
            else []
        ),
        f"- **Load**: `wrk -t1 -c<N> -d{cfg['duration_s']}s --latency` with `bench/wrk/post.lua` "
        f"(`POST {cfg['request']['path']}` with `{json.dumps(cfg['request']['body'])}`), at "
        f"{', '.join(map(str, cfg['connections']))} connections, after a {cfg['warmup_s']} s warm-up. "
        f"Each figure is repeated {cfg['repeats']}×: shown as median (min–max).",
        "- **Placement** (`taskset`): the gateway on **core 0**; the upstream, wrk and the Python stream client "
        "on **core 1**. For *direct* runs nothing runs on core 0, and wrk shares core 1 with the upstream.",
        "- **Streams**: a small asyncio client (`bench/streams.py`) opens one connection per stream and notes "
        "when each event arrives; the upstream writes its own clock (`time.monotonic_ns()`, one clock for every "
        "process on the machine) into each event's text, so the delay of every event is measured, direct and "
        "through the gateway. A stream *fails* on a non-200 status, an error event, a missing upstream event, no "
        "`[DONE]`, or not ending within its length + 30 s.",
        "- **Other load**: this machine may run other work. Busy time per core from `/proc/stat` "
        "(user+nice+system+steal) minus our own processes' CPU time gives what other processes took from each "
        "core during each run; runs above the limit are measured again, and the figure is kept in the JSON and "
        "below.",
        "- **CPU per request**: utime+stime from `/proc/<pid>/stat` of every gateway process, before and after "
        "each run, divided by wrk's request count. **RSS**: `VmRSS` summed over the processes, sampled every 100 ms.",
        "",
        "## Machine",
        "",
        *machine_section(data),
        "",
        "## Gateway settings",
        "",
        *settings_section(data),
        "",
        "## Non-streamed requests: direct vs through the gateway",
        "",
        *load_section(data),
        "",
        "Read the added latency together with the gateway's CPU use below: once the gateway's core is busy "
        "(CPU use near 1.0), more connections only wait in line, so the added latency grows with the connection "
        "count and req/s is the figure that matters. At 1 connection it is the gateway's work on one request.",
        "",
        "### Cost per request",
        "",
        *cost_section(data),
        "",
        "### Server-Timing",
        "",
        "Every gateway response carries `Server-Timing: gateway;dur=…, upstream;dur=…`; medians from sequential requests:",
        "",
        *timing_section(data),
        "",
        "`gateway;dur` is taken in `after_request`: it leaves out the WSGI server's parsing and writing, which the "
        "client-measured round trip includes.",
        "",
        "## Streaming",
        "",
        *stream_section(data),
        "",
        "### Many concurrent slow streams",
        "",
        *slow_section(data),
        "",
        *slow_notes(data),
    ]
    if peers and peers.get("targets"):
        out += [
            "",
            "## Peers: LiteLLM proxy and Portkey gateway",
            "",
            *peers_section(peers),
            "",
            *PEER_NOTES,
            "",
            "![peers: req/s and latency](benchmarks-peers.png)",
        ]
    limiter_path = RESULTS / "limiter.json"
    if limiter_path.exists():
        out += ["", *limiter_section(json.loads(limiter_path.read_text()))]
    out.append("")
    return "\n".join(out)


def limiter_section(data: dict) -> list[str]:
    """bench/results/limiter.json (make bench-limiter): what the quotas cost per request."""
    rows = [
        [
            r["label"],
            f"{r['cpu_ms_median']:.3f} ({r['cpu_ms_min']:.3f}–{r['cpu_ms_max']:.3f})",
            "—" if r["label"] == "limiter off" else f"{r['limiter_ms']:+.3f}",
        ]
        for r in data["results"]
    ]
    return [
        "## What the quotas cost",
        "",
        f"`make bench-limiter` ({data['when']}): the gateway app called in-process (no gunicorn), relaying to the "
        f"bench upstream; CPU time per request, median (min–max) of {data['repeats']} × {data['requests']} "
        "requests. The limiter's cost is the difference from the run with flask-limiter switched off. Redis is "
        "the machine's own, on loopback; a 1-second window keeps the moving window's per-caller list as short "
        "as real per-key quotas keep it (its memory cost grows with requests per window per caller).",
        "",
        *table(["configuration", "CPU ms/request", "limiter ms/request"], rows),
    ]


COLORS = {
    "direct": "#7f7f7f",
    "gateway": "#1f77b4",
    "gateway-2b": "#17becf",
    "gateway-redis": "#9467bd",
    "litellm": "#d62728",
    "portkey": "#2ca02c",
}
PEER_NAMES = ("direct", "gateway", "gateway-redis", "litellm", "portkey")


def _bars(ax, source: dict, names: list[str], key: str, title: str, ylabel: str) -> None:
    """Grouped bars per connection count: median with a min–max error bar."""
    conns = source["config"]["connections"]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        meds, lows, highs = [], [], []
        for c in conns:
            s = source["targets"][name]["load"][str(c)]["summary"][key]
            meds.append(s["median"])
            lows.append(s["median"] - s["min"])
            highs.append(s["max"] - s["median"])
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(conns))]
        ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=source["targets"][name]["label"], color=COLORS.get(name))
    ax.set_xticks(range(len(conns)), [f"{c} conn" for c in conns])
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")


def render_peers_chart(peers: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PEER_NAMES if n in peers["targets"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    _bars(axes[0], peers, names, "rps", "Throughput (req/s, log scale)", "req/s")
    _bars(axes[1], peers, names, "p50_ms", "Latency p50 (ms, log scale)", "ms")
    fig.suptitle(f"Gateways side by side, one run, {peers['generated']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_chart(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))

    names = ["direct", *gateways(data)]
    _bars(axes[0][0], data, names, "rps", "Throughput (req/s, log scale)", "req/s")
    _bars(axes[0][1], data, names, "p50_ms", "Latency p50 (ms, log scale)", "ms")

    ax = axes[1][0]
    levels = data["config"]["slow_streams"]["levels"]
    for name in names:
        slow = data["targets"][name].get("slow_streams", {})
        for key, style in (("ttfb_p50_ms", "-o"), ("ttfb_p99_ms", "--s")):
            ys = [med(slow[str(level)]["summary"][key]) if str(level) in slow else None for level in levels]
            ax.plot(levels, ys, style, color=COLORS[name], label=f"{name} {key[5:8]}")
    ax.set_title(f"Concurrent slow streams ({slow_arrival(data['config']['slow_streams'])}): time to first event")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1][1]
    slow = data["targets"]["gateway"].get("slow_streams", {})
    x = 0
    ticks, labels = [], []
    for level in levels:
        entry = slow.get(str(level))
        if not entry:
            continue
        for i, r in enumerate(entry["rounds"]):
            ax.bar(x, r["rss_peak_mb"], color="#aec7e8", label="peak" if x == 0 else None)
            ax.plot([x - 0.4, x + 0.4], [r["rss_before_mb"]] * 2, color="black", label="before" if x == 0 else None)
            ax.plot([x - 0.4, x + 0.4], [r["rss_after_mb"]] * 2, color="#d62728", linestyle="--", label="after" if x == 0 else None)
            ticks.append(x)
            labels.append(f"{level}\n#{i + 1}")
            x += 1
        x += 0.5
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_title("Gateway RSS per slow-stream round (MB)")
    ax.set_ylabel("MB")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    machine = data["machine"]
    fig.suptitle(f"AI proxy gateway benchmark — {machine['cpu_model']}, nproc {machine['nproc']}, {data['generated']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", default=str(RESULTS / "latest.json"))
    parser.add_argument("--peers", default=str(RESULTS / "peers.json"))
    parser.add_argument("--markdown", default=str(DOCS / "benchmarks.md"))
    parser.add_argument("--chart", default=str(DOCS / "benchmarks.png"))
    args = parser.parse_args()
    data = json.loads(Path(args.results).read_text())
    peers_path = Path(args.peers)
    peers = json.loads(peers_path.read_text()) if peers_path.exists() else None
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(render_markdown(data, peers))
    render_chart(data, Path(args.chart))
    paced = paced_source(data, peers)
    if paced:
        report_paced.render_chart(paced[0], Path(args.chart).with_name("benchmarks-streams.png"))
    if peers and peers.get("targets"):
        render_peers_chart(peers, Path(args.chart).with_name("benchmarks-peers.png"))
    print(f"wrote {args.markdown} and {args.chart}")


if __name__ == "__main__":
    main()
