"""Python function calls per relayed stream event, by function: the frames of the per-event path.

    python -m bench.stream_calls            # prints a table; --json for the raw counts

The real app from ``create_app`` (gevent-patched, production settings, a managed key,
usage rows), called as a WSGI app in this process with a streamed chat request to the
bench upstream (OpenAI-shaped chunks, usage asked); the response body is iterated as
gunicorn's loop does, without its write. ``sys.setprofile`` counts every Python call
(and every call of a C function from Python) while the body is iterated, for a stream
of ``--short`` events and one of ``--long``: the difference divided by the extra events
is what one event costs in calls, request handling excluded. gunicorn's own write per
item is not in it (one ``Response.write``, ``util.write``, ``write_chunk``, a
``sendall``); bench/stream_instructions.py counts the whole server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench import instructions, paced

ROOT = Path(__file__).resolve().parent.parent


def inner(short: int, long: int, gap_ms: float, usage: bool) -> None:
    from gevent import monkey

    monkey.patch_all()
    import io

    from werkzeug.test import EnvironBuilder

    from gateway import create_app

    app = create_app()

    def one(events: int) -> Counter:
        body = paced.body(events, gap_ms, 1, usage)
        environ = EnvironBuilder(
            path="/v1/chat/completions",
            method="POST",
            data=body,
            content_type="application/json",
            headers=[("X-API-Key", os.environ["BENCH_KEY"])],
        ).get_environ()
        environ["wsgi.input"] = io.BytesIO(body)
        answer = app(environ, lambda status, headers, exc_info=None: None)
        calls: Counter = Counter()

        def profile(frame, event, arg):  # noqa: ANN001, ANN202
            if event == "call":
                code = frame.f_code
                calls[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
            elif event == "c_call":
                calls[f"C:{getattr(arg, '__qualname__', getattr(arg, '__name__', '?'))}"] += 1

        items = 0
        iterator = iter(answer)
        sys.setprofile(profile)
        try:
            for _item in iterator:
                items += 1
        finally:
            sys.setprofile(None)
            close = getattr(answer, "close", None)
            if close is not None:
                close()
        calls["(items written)"] = items
        return calls

    one(5)  # warm
    a, b = one(short), one(long)
    extra = long - short
    per_event = {name: (b[name] - a[name]) / extra for name in set(a) | set(b)}
    print(json.dumps({k: v for k, v in per_event.items() if abs(v) >= 0.05}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=220)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--no-usage", action="store_true", help="the client does not ask for usage")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.short, args.long, args.gap_ms, not args.no_usage)
        return
    with tempfile.TemporaryDirectory(prefix="bench-stream-calls-") as tmp:
        port = instructions._free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert upstream.stdout is not None
            upstream.stdout.readline()
            env = {**os.environ, **instructions._environment(port, Path(tmp))}
            env["BENCH_KEY"] = instructions._prepare(env)
            argv = [str(instructions.PYTHON), "-m", "bench.stream_calls", "--inner", "--short", str(args.short)]
            argv += ["--long", str(args.long), "--gap-ms", str(args.gap_ms)] + (["--no-usage"] if args.no_usage else [])
            out = subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        finally:
            upstream.terminate()
            upstream.wait(10)
    counts = json.loads(out.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(counts, indent=1))
        return
    python = sum(v for k, v in counts.items() if not k.startswith(("C:", "(")))
    native = sum(v for k, v in counts.items() if k.startswith("C:"))
    print(f"per event: {python:.1f} Python calls, {native:.1f} calls of C functions from Python")
    for name, value in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"{value:7.2f}  {name}")


if __name__ == "__main__":
    main()
