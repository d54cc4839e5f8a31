"""Instructions per relayed stream event, counted by callgrind in the real server.

    python -m bench.stream_instructions                  # this tree, and the floor
    python -m bench.stream_instructions --base 0edd8f2   # ... and the gateway at that commit

Wall-clock CPU time on a shared 2-core VM drifts by tens of percent between minutes (and
other work may hold either core); the instructions a process executes per event barely
move, so the per-event path is compared with them.

Each server runs as it does in production, under ``valgrind --tool=callgrind``: gunicorn
with the gevent worker (the gateway with its gunicorn.conf.py, a managed key, usage rows
to SQLite, access log; the floor with ``-k gevent``), relaying the bench upstream's
OpenAI-shaped streams to an asyncio client. In the worker, counting is zeroed and dumped
around each phase with ``callgrind_control``: ``--streams`` streams of ``--short``
events, then of ``--long`` events, ``--gap-ms`` apart (the streams offset by half a gap,
so that no two events arrive together and every event is one read and one write). The
difference of the two phases, less what the idle worker executes in the extra time,
divided by the extra events, is the cost of one relayed event, the request's own work
excluded. Greenlet switches per event are counted the same way (calls of greenlet's
``g_switch``).

Variants: the gateway with the client asking for usage (every chunk carries
``"usage": null``, the figures come in a last chunk) and not asking (the gateway asks,
and removes the usage chunk); the floor: one Flask route relaying the stream with
requests' ``iter_content`` or with urllib3's ``read1`` (bench/floor_apps.py), nothing else.

Components: the gateway's own per-event functions alone (framer, usage tap), in one
process under callgrind, each run N times between two ``os.getppid()`` markers
(``--dump-before=getppid``; bench/stream_components.py), for each tree counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import instructions, paced, procs, profile_streams, streams

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
PATH = "/v1/chat/completions"


def _dump(pid: int, folder: Path) -> Path:
    before = set(folder.glob(f"cg.{pid}.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=120)
    for _ in range(600):
        new = set(folder.glob(f"cg.{pid}.*")) - before
        if new:
            path = new.pop()
            time.sleep(0.5)  # written in one go, but give it a moment
            return path
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump for {pid}")


def _zero(pid: int) -> None:
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True, timeout=120)


_SWITCH = re.compile(r"g_switch\b")


def _read(dump: Path) -> dict[str, int]:
    """Total instructions and greenlet switches (calls of ``g_switch``) in one dump."""
    text = dump.read_text(errors="replace")
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    assert match, f"no totals in {dump}"
    switches = 0
    callee = ""
    for line in text.splitlines():
        if line.startswith("cfn="):
            callee = line
        elif line.startswith("calls=") and _SWITCH.search(callee):
            switches += int(line[6:].split()[0])
    return {"instructions": int(match.group(1)), "switches": switches}


def _streams(port: int, headers: dict[str, str], count: int, events: int, gap_ms: float, usage: bool) -> float:
    started = time.monotonic()
    results = asyncio.run(
        streams.concurrent(
            "127.0.0.1",
            port,
            PATH,
            headers,
            paced.body(events, gap_ms, 1, usage),
            count,
            timeout_s=events * gap_ms / 1000 + 120,
            ramp_s=gap_ms / 1000 / 2,
        )
    )
    bad = [r for r in results if not r.ok(events)]
    if bad:
        raise RuntimeError(f"{len(bad)} of {count} streams failed: {bad[0].error or bad[0].status}")
    return time.monotonic() - started


def _wait(port: int, server: subprocess.Popen, timeout: float = 300.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server under callgrind exited")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(1.0)
    raise RuntimeError("the server under callgrind did not answer")


def measure(variant: str, args: argparse.Namespace, upstream_port: int, folder: Path, tree: Path) -> dict[str, Any]:
    """One server under callgrind: the instructions and switches of one relayed event."""
    port = instructions._free_port()
    env = dict(os.environ)
    headers: dict[str, str] = {}
    usage = variant.endswith("usage asked")
    if variant.startswith("gateway"):
        env.update(instructions._environment(upstream_port, folder))
        env.update({"AI_PROXY_HOST": "127.0.0.1", "AI_PROXY_PORT": str(port), "GATEWAY_TIMEOUT": "300"})
        headers["X-API-Key"] = _prepare(env, tree)
        argv = [str(PYTHON), str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"]
        cwd = tree
    elif variant.startswith("portkey"):
        # Node under valgrind: V8 writes and rewrites its machine code, which callgrind must re-read.
        package = ROOT / "bench" / ".peers" / "portkey" / "node_modules" / "@portkey-ai" / "gateway"
        argv = ["--smc-check=all", "node", str(package / "build" / "start-server.js"), f"--port={port}", "--headless"]
        env["NODE_ENV"] = "production"
        headers = {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1",
            "Authorization": "Bearer bench-not-used",
        }
        cwd = folder
    else:
        env["FLOOR_UPSTREAM"] = f"http://127.0.0.1:{upstream_port}"
        app = {"floor: Flask + requests iter_content": "flask_stream_requests", "floor: Flask + urllib3 read1": "flask_stream_urllib3"}
        argv = [str(PYTHON), str(GUNICORN), "-k", "gevent", "--worker-connections", "1000", "-w", "1", "-t", "300"]
        argv += ["-b", f"127.0.0.1:{port}", f"bench.floor_apps:{app[variant.split(', ')[0]]}"]
        cwd = ROOT
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--trace-children=yes", "--compress-strings=no", f"--callgrind-out-file={folder}/cg.%p"]
        + argv,
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(port, server)
        if variant.startswith("portkey"):
            worker = server.pid  # one process (its threads are counted with it)
            warm = (args.portkey_warmup, 50)  # V8 compiles the hot path after many events
        else:
            workers = [pid for pid in procs.tree(server.pid) if pid != server.pid]
            assert len(workers) == 1, f"expected one worker, found {workers}"
            worker = workers[0]
            warm = (2, 10)  # pools, caches, the first stream's imports
        for _ in range(warm[0]):
            _streams(port, headers, args.streams, warm[1], args.gap_ms, usage)
        _zero(worker)
        time.sleep(args.idle_s)
        idle = _read(_dump(worker, folder))
        idle_per_s = idle["instructions"] / args.idle_s
        phases = {}
        for events in (args.short, args.long):
            _zero(worker)
            wall = _streams(port, headers, args.streams, events, args.gap_ms, usage)
            phases[events] = {**_read(_dump(worker, folder)), "wall_s": wall}
    finally:
        os.killpg(server.pid, 15)
        server.wait(60)
        log.close()
    short, long = phases[args.short], phases[args.long]
    extra_events = args.streams * (args.long - args.short)
    idle_extra = idle_per_s * (long["wall_s"] - short["wall_s"])
    per_event = (long["instructions"] - short["instructions"] - idle_extra) / extra_events
    per_stream = (short["instructions"] - idle_per_s * short["wall_s"]) / args.streams - per_event * args.short
    return {
        "variant": variant,
        "instructions_per_event": round(per_event),
        "switches_per_event": round((long["switches"] - short["switches"]) / extra_events, 2),
        "instructions_per_stream_besides_events": round(per_stream),
        "idle_instructions_per_s": round(idle_per_s),
        "phases": {str(k): v for k, v in phases.items()},
    }


def _prepare(env: dict[str, str], tree: Path) -> str:
    """Migrate the tree's database and create the managed key; returns its secret."""
    HIGH = instructions.HIGH_LIMIT  # noqa: N806
    flask = [str(PYTHON), "-m", "flask", "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], env=env, cwd=tree, check=True, capture_output=True)
    created = subprocess.run(
        [*flask, "keys", "create", "--name", "bench", "--ai-limit", HIGH, "--general-limit", HIGH],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(created)["secret"])


# --------------------------------------------------------------------------- components

COMPONENTS = ("empty loop", "EventFramer.feed", "StreamUsageTap.feed", "StreamUsageTap.relayed", "json.loads of the chunk")
COMPONENT_ITERATIONS = 2000  # as in bench/stream_components.py


def measure_components(tree: Path, folder: Path) -> dict[str, int]:
    out = folder / "components.out"
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the gateway package of that tree
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={out}"]
        + [str(PYTHON), str(ROOT / "bench" / "stream_components.py")],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
    )
    counts = [_read(Path(f"{out}.{part}"))["instructions"] for part in range(2, 2 + len(COMPONENTS))]
    empty = counts[0]
    net = [counts[0], *(count - empty for count in counts[1:])]
    return {name: round(count / COMPONENT_ITERATIONS) for name, count in zip(COMPONENTS, net, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=120)
    parser.add_argument("--gap-ms", type=float, default=25.0)
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--base", help="also count the gateway at this commit (git archive into a temporary folder)")
    parser.add_argument("--variants", default="all", help="names' beginnings, ';'-separated (e.g. 'gateway;portkey')")
    parser.add_argument("--portkey-warmup", type=int, default=12, help="warm-up rounds for Portkey (JIT)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream_instructions.json"))
    args = parser.parse_args()
    variants = [
        "gateway, usage asked",
        "gateway, usage not asked",
        "floor: Flask + requests iter_content, usage asked",
        "floor: Flask + urllib3 read1, usage asked",
        "portkey (node, under callgrind), usage asked",
    ]
    if args.variants != "all":
        variants = [v for v in variants if any(v.startswith(w) for w in args.variants.split(";"))]
    results: dict[str, Any] = {"config": {k: getattr(args, k) for k in ("streams", "short", "long", "gap_ms", "idle_s", "base")}}
    with tempfile.TemporaryDirectory(prefix="bench-stream-instructions-") as tmp:
        scratch = Path(tmp)
        trees = {"this tree": ROOT}
        if args.base:
            base = scratch / "base"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            trees[f"at {args.base}"] = base
        upstream_port = instructions._free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(upstream_port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert upstream.stdout is not None
            upstream.stdout.readline()
            results["servers"] = []
            results["components"] = {}
            for label, tree in trees.items():
                folder = scratch / label.replace(" ", "-")
                folder.mkdir()
                results["components"][label] = measure_components(tree, folder)
                print(json.dumps({label: results["components"][label]}), flush=True)
                for variant in variants:
                    if tree is not ROOT and not variant.startswith("gateway"):
                        continue
                    run_folder = folder / re.sub(r"\W+", "-", variant)
                    run_folder.mkdir()
                    row = {"code": label, **measure(variant, args, upstream_port, run_folder, tree)}
                    results["servers"].append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "phases"}), flush=True)
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)
    results["calls_per_event"] = json.loads(
        subprocess.run(
            [sys.executable, "-m", "bench.stream_calls", "--json"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    )
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if Path(args.out) == profile_streams.SOURCE:
        profile_streams.update_profile_md()


if __name__ == "__main__":
    main()
