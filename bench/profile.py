"""Profile the gateway worker under 16-connection load with py-spy; write bench/results/profile.md.

    python -m bench.profile            # what `make bench-profile` runs

Same setup as bench/run.py (bench upstream on core 1, gateway with the shipped
gunicorn.conf.py in production mode on core 0, wrk on core 1). While wrk runs,
py-spy samples the worker twice: once as collapsed stacks (``--format raw``,
analysed here) and once as a flame graph (bench/results/profile.svg).

The tables in profile.md are regenerated on every run; everything after the
``<!-- notes -->`` line (the hand-written reading of the profile) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

from bench import procs, profile_streams, run, wrkrun

ROOT = run.ROOT
OUT = ROOT / "bench" / "results"
PY_SPY = ROOT / "bench" / ".venv" / "bin" / "py-spy"
NOTES_MARK = "<!-- notes -->"

# (component, prefixes of the frame's file as py-spy prints it: relative to
# site-packages or the stdlib, e.g. "flask/app.py:1479", "typing.py:1911"); first match wins.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("our code (gateway/)", ("gateway/",)),
    ("flask-limiter / limits", ("flask_limiter/", "limits/")),
    ("flask-cors", ("flask_cors/",)),
    ("talisman", ("flask_talisman/",)),
    ("Flask", ("flask/",)),
    ("Werkzeug (routing, request/response, headers)", ("werkzeug/",)),
    ("requests", ("requests/",)),
    ("urllib3", ("urllib3/",)),
    ("http.client / email (upstream header parsing)", ("http/", "email/")),
    ("urllib.parse (URL parsing, mostly for requests)", ("urllib/",)),
    ("gunicorn", ("gunicorn/",)),
    ("gevent (sockets, hub, timers)", ("gevent/", "greenlet/")),
    ("JSON", ("json/",)),
    ("logging", ("logging/",)),
    ("PyJWT", ("jwt/",)),
]


STDLIB = "stdlib other (typing, inspect, threading, uuid, ...)"
NATIVE = "native / unknown"


def location(frame: str) -> str:
    return frame[frame.rfind("(") + 1 :].rstrip(")") if "(" in frame else ""


def component(frame: str) -> str:
    path = location(frame)
    for name, prefixes in COMPONENTS:
        if path.startswith(prefixes):
            return name
    return STDLIB if path else NATIVE


def is_idle(frames: list[str]) -> bool:
    """gevent's thread-pool thread waiting for work: an idle OS thread py-spy cannot tell apart."""
    return bool(frames) and frames[-1].startswith("acquire_with_timeout") and any("gevent/threadpool.py" in f for f in frames)


def short(frame: str) -> str:
    """``function (path:line)`` with the path cut to the package."""
    if "(" not in frame:
        return frame
    func, _, location = frame.partition(" (")
    location = location.rstrip(")")
    return f"{func} ({location})"


def parse_collapsed(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        # py-spy puts "process ..." / "thread ..." pseudo frames first when asked; drop them
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if frames and not is_idle(frames):
            stacks.append((frames, int(count)))
    return stacks


def analyse(stacks: list[tuple[list[str], int]]) -> dict:
    total = sum(count for _, count in stacks)
    own: Counter = Counter()
    cumulative: Counter = Counter()
    own_component: Counter = Counter()
    charged_component: Counter = Counter()
    stdlib_callers: Counter = Counter()
    cumulative_component: Counter = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        leaf = frames[-1]
        own[leaf] += count
        own_component[component(leaf)] += count
        # charge stdlib leaves (typing, inspect, abc, uuid, ...) to the nearest library frame that called them
        caller = next((f for f in reversed(frames) if component(f) not in (STDLIB, NATIVE)), leaf)
        charged_component[component(caller)] += count
        if component(leaf) == STDLIB:
            stdlib_callers[(caller.partition(" (")[0], leaf.partition(" (")[0])] += count
        for frame in set(frames):
            cumulative[frame] += count
        for name in {component(f) for f in frames}:
            cumulative_component[name] += count
    return {
        "total": total,
        "own": own,
        "cumulative": cumulative,
        "own_component": own_component,
        "charged_component": charged_component,
        "stdlib_callers": stdlib_callers,
        "cumulative_component": cumulative_component,
    }


def _matches(frame: str, function: str | None, path_prefix: str) -> bool:
    name, _, _ = frame.partition(" (")
    return location(frame).startswith(path_prefix) and (function is None or name == function)


def focus(stacks: list[tuple[list[str], int]], spots: dict[str, tuple[str | None, str]]) -> dict[str, int]:
    """Inclusive samples of named spots: a sample counts once if any of its frames is the spot."""
    return {
        label: sum(count for frames, count in stacks if any(_matches(f, function, prefix) for f in frames))
        for label, (function, prefix) in spots.items()
    }


# label: (function as py-spy names it, or None for the whole file/package; file prefix)
FOCUS: dict[str, tuple[str | None, str]] = {
    "gunicorn: parse the request (Parser.__next__)": ("Parser.__next__", "gunicorn/http/parser.py"),
    "gunicorn: build the WSGI environ (create)": ("create", "gunicorn/http/wsgi.py"),
    "gunicorn: write the response (Response.write)": ("Response.write", "gunicorn/http/wsgi.py"),
    "Flask.wsgi_app (everything inside the app)": ("Flask.wsgi_app", "flask/app.py"),
    "Flask: request context push (routing, session)": ("RequestContext.push", "flask/ctx.py"),
    "Werkzeug URL routing (MapAdapter.match)": ("MapAdapter.match", "werkzeug/routing/map.py"),
    "Flask: null session (open_session)": ("SecureCookieSessionInterface.open_session", "flask/sessions.py"),
    "flask-limiter: request check (_check_request_limit)": ("Limiter._check_request_limit", "flask_limiter/"),
    "flask-limiter / limits: all": (None, "flask_limiter/"),
    "limits: storage and windows": (None, "limits/"),
    "our _rate_limit_headers (window reads)": ("_rate_limit_headers", "gateway/limits.py"),
    "flask-cors: all": (None, "flask_cors/"),
    "talisman: all": (None, "flask_talisman/"),
    "our auth hook (require_credentials)": ("require_credentials", "gateway/auth/__init__.py"),
    "our body check (payload.parse_object)": ("parse_object", "gateway/payload.py"),
    "our upstream call (UpstreamClient.send)": ("UpstreamClient.send", "gateway/upstream/client.py"),
    "requests Session.request": ("Session.request", "requests/sessions.py"),
    "requests Session.prepare_request": ("Session.prepare_request", "requests/sessions.py"),
    "requests Session.merge_environment_settings": ("Session.merge_environment_settings", "requests/sessions.py"),
    "requests Session.send (adapter + response)": ("Session.send", "requests/sessions.py"),
    "urllib3 HTTPConnectionPool.urlopen": ("HTTPConnectionPool.urlopen", "urllib3/connectionpool.py"),
    "http.client: upstream response head (HTTPResponse.begin)": ("HTTPResponse.begin", "http/client.py"),
    "our relay.to_response (read + validate the upstream body)": ("to_response", "gateway/upstream/relay.py"),
    "JSON decode (json.loads, all callers)": ("loads", "json/__init__.py"),
    "our access log (observability._finish)": ("_finish", "gateway/observability.py"),
    "logging: all": (None, "logging/"),
    "uuid4 request id": ("uuid4", "uuid.py"),
}


def record(pid: int, seconds: int, rate: int, fmt: str, out: Path) -> None:
    argv = [
        str(PY_SPY),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(rate),
        "--format",
        fmt,
        "--output",
        str(out),
        "--function",
    ]
    subprocess.run(["taskset", "-c", run.LOAD_CORE, *argv], check=True, capture_output=True, text=True)


def markdown(result: dict, stats: dict, focus_counts: dict[str, int], notes: str) -> str:
    total = stats["total"] or 1

    def pct(n: int) -> str:
        return f"{n / total * 100:.1f} %"

    def ms(n: int) -> str:
        return f"{n / total * result['cpu_ms_per_request']:.3f}"

    lines = [
        "# Profile of the gateway worker",
        "",
        *profile_streams.block(),
        "## Short calls: py-spy under load",
        "",
        f"`make bench-profile` ({result['generated']}, commit `{result['commit']}`): py-spy {result['py_spy']} "
        f"sampling the gunicorn worker (pid {result['worker_pid']}) at {result['rate']} Hz for "
        f"{result['seconds']} s while `wrk -c16` drives `POST /v1/chat/completions` (non-streamed) through it; "
        "same placement and settings as `make bench`. Flame graph: [profile.svg](profile.svg).",
        "",
        f"Under the profiler: {result['rps']:.0f} req/s, **{result['cpu_ms_per_request']:.3f} ms CPU per request** "
        f"(gateway processes' utime+stime / requests; without the profiler see docs/benchmarks.md). "
        f'{stats["total"]} samples. The "ms/request" columns spread that CPU time over the samples, so they '
        "show what each part costs per request.",
        "",
        "## By component",
        "",
        "Own time: samples whose innermost frame is in the component. Charged: the same, but time in small "
        "stdlib helpers (typing's protocol checks, inspect, abc, uuid, ...) is charged to the library frame "
        "that called them. Inclusive: samples with the component anywhere on the stack (these overlap: Flask "
        "includes our code, which includes requests, ...).",
        "",
        "| component | own | charged | charged ms/request | inclusive |",
        "|---|---|---|---|---|",
    ]
    names = sorted(set(stats["own_component"]) | set(stats["charged_component"]), key=lambda n: -stats["charged_component"][n])
    for name in names:
        charged = stats["charged_component"][name]
        lines.append(
            f"| {name} | {pct(stats['own_component'][name])} | {pct(charged)} | {ms(charged)} | "
            f"{pct(stats['cumulative_component'][name])} |"
        )
    lines += ["", "Who calls the stdlib helpers (top 8):", "", "| caller | stdlib function | share |", "|---|---|---|"]
    for (caller, helper), count in stats["stdlib_callers"].most_common(8):
        lines.append(f"| `{caller}` | `{helper}` | {pct(count)} |")
    lines += ["", "## Where the time goes (inclusive)", "", "| spot | share | ms/request |", "|---|---|---|"]
    for label, count in focus_counts.items():
        lines.append(f"| {label} | {pct(count)} | {ms(count)} |")
    lines += ["", "## Top 15 functions by own time", "", "| # | function | component | own | ms/request |", "|---|---|---|---|---|"]
    for i, (frame, count) in enumerate(stats["own"].most_common(15), 1):
        lines.append(f"| {i} | `{short(frame)}` | {component(frame)} | {pct(count)} | {ms(count)} |")
    lines += [
        "",
        "## Top 15 functions by cumulative time",
        "",
        "(entry points above the request - gevent's greenlet run, gunicorn's handle - are left out)",
        "",
        "| # | function | component | cumulative | ms/request |",
        "|---|---|---|---|---|",
    ]
    shown = 0
    for frame, count in stats["cumulative"].most_common():
        if count / total > 0.97:  # the outer frames every sample passes through
            continue
        lines.append(f"| {shown + 1} | `{short(frame)}` | {component(frame)} | {pct(count)} | {ms(count)} |")
        shown += 1
        if shown == 15:
            break
    lines += floor_section(result)
    lines += ["", NOTES_MARK, notes.strip() or "(no notes yet)", ""]
    return "\n".join(lines)


def floor_section(result: dict) -> list[str]:
    """The serving stack's own cost (bench/floor.py), when it has been measured."""
    path = OUT / "floor.json"
    if not path.exists():
        return []
    floor = json.loads(path.read_text())
    lines = [
        "",
        "## The floor: the serving stack without gateway logic",
        "",
        f"`make bench-floor` ({floor['generated']}): minimal apps (bench/floor_apps.py) under the same gunicorn "
        f"gevent worker on core 0 (the last rows: gthread workers instead), relaying the same request to the "
        f"same upstream, wrk at "
        f"{floor['connections']} connections, {floor['repeats']} × {floor['duration_s']} s, median (min–max). "
        "No auth, quotas, security headers or logging.",
        "",
        "| app | req/s | CPU ms / request |",
        "|---|---|---|",
    ]
    for app in floor["apps"].values():
        rps, cpu = app["rps"], app["cpu_ms_per_request"]
        lines.append(
            f"| {app['label']} | {rps['median']:,.0f} ({rps['min']:,.0f}–{rps['max']:,.0f}) | "
            f"{cpu['median']:.3f} ({cpu['min']:.3f}–{cpu['max']:.3f}) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--reanalyse", action="store_true", help="only re-render profile.md from the last run (raw/profile.collapsed, profile.json)"
    )
    args = parser.parse_args()
    profile_md = OUT / "profile.md"
    notes = ""
    if profile_md.exists() and NOTES_MARK in profile_md.read_text():
        notes = profile_md.read_text().split(NOTES_MARK, 1)[1]
    if not args.reanalyse:
        result = measure(args)
        (OUT / "profile.json").write_text(json.dumps(result, indent=1) + "\n")
    result = json.loads((OUT / "profile.json").read_text())
    stacks = parse_collapsed(run.RAW / "profile.collapsed")
    profile_md.write_text(markdown(result, analyse(stacks), focus(stacks, FOCUS), notes))
    run.log(
        f"wrote {profile_md.relative_to(ROOT)} ({result['rps']:.0f} req/s, "
        f"{result['cpu_ms_per_request']:.3f} ms CPU/request under py-spy)"
    )


def measure(args: argparse.Namespace) -> dict:
    """Run the gateway under load and record it; returns the run's figures."""
    run.choose_ports(9100)
    os.sched_setaffinity(0, {int(run.LOAD_CORE)})
    run.RAW.mkdir(parents=True, exist_ok=True)
    body_file = run.RAW / "body.json"
    body_file.write_text(json.dumps(run.LOAD_BODY))
    upstream = run.start_upstream()
    gateway = None
    try:
        gateway = run.start_gateway()
        assert gateway.service is not None
        workers = [pid for pid in gateway.service.pids() if pid != gateway.service.pid]
        if len(workers) != 1:
            raise SystemExit(f"expected one worker, found {workers}")
        worker = workers[0]
        run.log(f"profile: warm-up, then {args.seconds} s raw + {args.seconds} s flame graph of worker {worker}")
        wrkrun.run(
            gateway.url(), connections=args.connections, duration_s=3, body_file=body_file, headers=gateway.headers, core=run.LOAD_CORE
        )
        load = subprocess.Popen(
            [
                "taskset",
                "-c",
                run.LOAD_CORE,
                wrkrun.wrk_path(),
                "-t1",
                f"-c{args.connections}",
                f"-d{args.seconds * 2 + 6}s",
                "--latency",
                "-s",
                str(wrkrun.LUA),
                gateway.url(),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "BENCH_BODY_FILE": str(body_file),
                "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in gateway.headers.items()),
            },
        )
        time.sleep(1)
        pids = gateway.service.pids()
        cpu_before = procs.cpu_seconds(pids)
        started = time.monotonic()
        raw = run.RAW / "profile.collapsed"
        record(worker, args.seconds, args.rate, "raw", raw)
        cpu_window = procs.cpu_seconds(pids) - cpu_before
        window = time.monotonic() - started
        record(worker, args.seconds, args.rate, "flamegraph", OUT / "profile.svg")
        output, _ = load.communicate(timeout=args.seconds * 2 + 60)
        figures = wrkrun.parse(output)
    finally:
        if gateway is not None and gateway.service is not None:
            gateway.service.stop()
        upstream.stop()
    # requests during the raw window, estimated from wrk's overall rate
    requests_in_window = figures["rps"] * window
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": run._first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "py_spy": run._first_line([str(PY_SPY), "--version"]).split()[-1],
        "worker_pid": worker,
        "rate": args.rate,
        "seconds": args.seconds,
        "rps": figures["rps"],
        "cpu_ms_per_request": cpu_window * 1000 / requests_in_window,
    }


if __name__ == "__main__":
    main()
