"""The floor: CPU per request of the serving stack with no gateway logic (bench/floor_apps.py).

    python -m bench.floor              # what `make bench-floor` runs; writes bench/results/floor.json

Each app runs under the gateway's gunicorn with a gevent worker (1 worker, 1000
connections), pinned to core 0 like the gateway, relaying to the bench upstream on
core 1; wrk drives it at 16 connections. The Flask relay also runs under gthread
workers (32 and 1000 threads), the alternative for long streams: the figures behind
gunicorn.conf.py's choice of gevent. bench/profile.py shows the table in
bench/results/profile.md, next to the gateway's own figure.
"""

from __future__ import annotations

import argparse
import json
import os

from bench import procs, run, wrkrun

# The same Flask + urllib3 relay under the other worker classes gunicorn offers for a
# gateway that must hold long streams: why gunicorn.conf.py picks gevent.
WORKER_VARIANTS = {
    "flask_urllib3@gthread-32": (
        "flask_urllib3",
        ["-k", "gthread", "--threads", "32"],
        "Flask route + urllib3 relay, gthread worker, 32 threads",
    ),
    "flask_urllib3@gthread-1000": (
        "flask_urllib3",
        ["-k", "gthread", "--threads", "1000"],
        "Flask route + urllib3 relay, gthread worker, 1000 threads",
    ),
}

APPS = {
    "static": "raw WSGI, fixed answer (no upstream call)",
    "urllib3_app": "raw WSGI + urllib3 pool relay",
    "requests_app": "raw WSGI + requests.Session relay",
    "flask_static": "Flask route, fixed answer (no upstream call)",
    "flask_urllib3": "Flask route + urllib3 pool relay",
    "flask_requests": "Flask route + requests.Session relay",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run.choose_ports(9100)
    port = run.PORTS["floor"]
    os.sched_setaffinity(0, {int(run.LOAD_CORE)})
    run.RAW.mkdir(parents=True, exist_ok=True)
    body_file = run.RAW / "body.json"
    body_file.write_text(json.dumps(run.LOAD_BODY))
    results = {}
    upstream = run.start_upstream()
    try:
        gevent = ["-k", "gevent", "--worker-connections", "1000"]
        variants = {app: (app, gevent, label) for app, label in APPS.items()} | WORKER_VARIANTS
        for name, (app, worker, label) in variants.items():
            service = procs.Service(
                f"floor-{name}",
                [
                    str(run.GATEWAY_VENV / "bin" / "gunicorn"),
                    *worker,
                    "-w",
                    "1",
                    "-b",
                    f"{run.HOST}:{port}",
                    f"bench.floor_apps:{app}",
                ],
                cores=run.TARGET_CORE,
                log=run.RAW / f"floor-{name}.log",
                cwd=str(run.ROOT),
                env={"FLOOR_UPSTREAM": f"http://{run.HOST}:{run.PORTS['upstream']}"},
            )
            try:
                url = f"http://{run.HOST}:{port}{run.PATH}"
                procs.wait_http(
                    url,
                    method="POST",
                    body=body_file.read_bytes(),
                    headers={"Content-Type": "application/json"},
                    service=service,
                    timeout=30,
                )
                wrkrun.run(url, connections=16, duration_s=2, body_file=body_file, headers={}, core=run.LOAD_CORE)
                runs = []
                for _ in range(args.repeats):
                    pids = service.pids()
                    before = procs.cpu_seconds(pids)
                    figures = wrkrun.run(
                        url, connections=16, duration_s=args.duration, body_file=body_file, headers={}, core=run.LOAD_CORE
                    )
                    cpu = procs.cpu_seconds(pids) - before
                    runs.append(
                        {
                            "rps": figures["rps"],
                            "cpu_ms_per_request": cpu * 1000 / figures["requests"],
                            "errors": figures["error_count"],
                        }
                    )
                results[name] = {
                    "label": label,
                    "worker": " ".join(worker),
                    "rps": run.spread([r["rps"] for r in runs]),
                    "cpu_ms_per_request": run.spread([r["cpu_ms_per_request"] for r in runs]),
                    "errors": sum(r["errors"] for r in runs),
                }
                run.log(
                    f"floor {name}: {results[name]['rps']['median']:.0f} req/s, "
                    f"{results[name]['cpu_ms_per_request']['median']:.3f} ms CPU/request"
                )
            finally:
                service.stop()
    finally:
        upstream.stop()
    out = run.RESULTS / "floor.json"
    out.write_text(
        json.dumps(
            {
                "generated": run.datetime.now(run.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "connections": 16,
                "duration_s": args.duration,
                "repeats": args.repeats,
                "apps": results,
            },
            indent=1,
        )
        + "\n"
    )
    run.log(f"wrote {out.relative_to(run.ROOT)}")


if __name__ == "__main__":
    main()
