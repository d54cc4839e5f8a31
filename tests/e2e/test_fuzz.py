"""Schemathesis against the live gateway: property-based requests generated from ``GET /openapi.json``.

The gateway runs under real gunicorn with the shipped gunicorn.conf.py, two workers, Redis
quotas (made large: quotas are tested elsewhere, and would turn every answer into a 429)
and a PostgreSQL schema of its own, in front of the fake upstream. Schemathesis's CLI runs
every phase (examples, coverage, fuzzing, stateful) on every route and method, three times:
with the master key, with a managed key, and with a wrong key. Each run must find no 5xx
and no answer the description does not allow (status, content type, body, headers), and
no gunicorn worker may have been restarted.

Bounded for ``make test`` (about three minutes); ``make fuzz`` runs it longer:

- ``FUZZ_SECONDS``: the master-key run's time budget (the others get half and a quarter);
- ``FUZZ_MAX_EXAMPLES``: test cases per operation and phase pass;
- ``FUZZ_SEED``: replay a run (each run prints its seed).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, GatewayServer, request

FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "80"))
FUZZ_MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "15"))
FUZZ_SEED = os.environ.get("FUZZ_SEED", "")
WORKERS = 2
PLENTY = "1000000 per minute"

# Invalid input may also be refused before the app sees it: an over-long request line (414)
# or header block (431) by the HTTP layer, an over-long body (413). schemathesis's default list
# for this check, with those three added (and without its 5xx, which the gateway never owes).
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422", "428", "429", "431"]
"""

CHECKS_EXCLUDED = (
    # Valid data may still be refused: an expires_at in the past, a limit string the limits
    # library reads differently, a model a key may not use.
    "positive_data_acceptance",
    # Revoking a key keeps its row (GET shows it as "revoked"): by design, not a use after free.
    "use_after_free",
)


def schemathesis_command() -> list[str]:
    beside = Path(sys.executable).with_name("st")
    found = str(beside) if beside.exists() else shutil.which("st")
    assert found, "schemathesis is not installed (requirements-dev.txt)"
    return [found]


def worker_pids(server: GatewayServer) -> set[int]:
    """The arbiter's child processes, from /proc."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server.proc.pid:
            children.add(int(stat.parent.name))
    return children


@dataclass(frozen=True)
class Failure:
    """One failed check on one generated request."""

    operation: str  # "POST /admin/keys"
    title: str  # schemathesis's failure title, e.g. "Server error"
    status: int | None
    message: str
    case: str  # the request, abridged

    def __str__(self) -> str:
        return f"{self.operation} -> {self.status}: {self.title}: {self.message[:300]}\n    {self.case[:600]}"


def read_failures(ndjson: Path) -> list[Failure]:
    """Every failed check in schemathesis's event stream, with the status that failed it."""
    found: dict[tuple[str, str, int | None], Failure] = {}
    with ndjson.open() as events:
        for line in events:
            if '"ScenarioFinished"' not in line[:40]:
                continue
            recorder = json.loads(line)["ScenarioFinished"]["recorder"]
            for case_id, checks in recorder.get("checks", {}).items():
                for check in checks:
                    if check["status"] != "failure":
                        continue
                    failure = check["failure_info"]["failure"]
                    response = (recorder.get("interactions", {}).get(case_id) or {}).get("response") or {}
                    case = recorder.get("cases", {}).get(case_id, {}).get("value", {})
                    abridged = {k: case[k] for k in ("method", "path", "path_parameters", "query", "body") if k in case}
                    item = Failure(
                        failure.get("operation") or recorder["label"],
                        failure["title"],
                        response.get("status_code"),
                        failure.get("message") or "",
                        json.dumps(abridged, ensure_ascii=True),
                    )
                    found.setdefault((item.operation, item.title, item.status), item)
    return list(found.values())


@dataclass
class FuzzRun:
    name: str
    seed: str
    failures: list[Failure]
    output: str


def run_schemathesis(
    server: GatewayServer, workdir: Path, name: str, headers: dict[str, str], seconds: int, exclude: tuple[str, ...] = ()
) -> FuzzRun:
    report_dir = workdir / f"report-{name}"
    config = workdir / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        *schemathesis_command(),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join((*CHECKS_EXCLUDED, *exclude)),
        # Our credentials on every request: no generated Authorization next to them (a second,
        # invalid credential makes any request a 401, and the test would reach nothing).
        "--generation-with-security-parameters",
        "false",
        "--max-examples",
        str(FUZZ_MAX_EXAMPLES),
        "--max-time",
        str(seconds),
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--report",
        "json,ndjson",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]
    for header, value in headers.items():
        command += ["--header", f"{header}: {value}"]
    if FUZZ_SEED:
        command += ["--seed", FUZZ_SEED]
    completed = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=seconds * 3 + 120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output = completed.stdout + completed.stderr
    reports, events = sorted(report_dir.glob("*.json")), sorted(report_dir.glob("*.ndjson"))
    assert reports and events, f"schemathesis wrote no report (exit {completed.returncode}):\n{output[-5000:]}"
    report = json.loads(reports[-1].read_text())
    assert report["errors"] == [], f"{name}: schemathesis could not run everything:\n{output[-5000:]}"
    assert report["operations"]["tested"] == report["operations"]["total"] > 0, output[-3000:]
    failures = read_failures(events[-1])
    assert bool(failures) == bool(report["failures"]), f"{name}: the event stream and the report disagree"
    return FuzzRun(name, str(report["seed"]), failures, output)


@pytest.mark.fuzz
@pytest.mark.timeout(FUZZ_SECONDS * 6 + 300)
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_description(
    gateway_server, pg_url, redis_prefix, tmp_path
) -> None:
    server = gateway_server(
        GATEWAY_WORKERS=str(WORKERS),
        DATABASE_URL=pg_url,
        RATE_LIMIT_STORAGE_URI=REDIS_URL,
        RATE_LIMIT_KEY_PREFIX=redis_prefix,
        RATE_LIMIT_GENERAL=PLENTY,
        RATE_LIMIT_AI=PLENTY,
        RATE_LIMIT_AUTH_FAILURES=PLENTY,
        METRICS_TOKEN="metrics-" + secrets.token_hex(20),
    )
    assert server.wait_for_log(lambda log: log.count("Booting worker") >= WORKERS, timeout=15), server.log()
    workers_before = worker_pids(server)
    assert len(workers_before) == WORKERS

    master_run = run_schemathesis(server, tmp_path, "master-key", AUTH, FUZZ_SECONDS)
    # The managed key is made after the master-key run: that run may revoke or rotate any key it
    # learns the id of (GET /admin/keys, GET /admin/audit), which would make every request of
    # the managed-key run a 401.
    status, _, body = request(
        server.url,
        "POST",
        "/admin/keys",
        {
            "name": "fuzz-managed",
            "rate_limit_general": PLENTY,
            "rate_limit_ai": PLENTY,
            "tokens_per_minute": 10**12,
            "max_tokens_cap": 10**6,
        },
        headers=AUTH,
    )
    assert status == 201, body
    managed_secret = json.loads(body)["secret"]

    runs = [
        master_run,
        run_schemathesis(server, tmp_path, "managed-key", {"X-API-Key": managed_secret}, max(10, FUZZ_SECONDS // 2)),
        # Deny by default answers a wrong key before routing: a method a path does not serve is then
        # a 401, not a 405 (as an unknown path is: test_unknown_path_without_credentials_is_401_not_404).
        run_schemathesis(
            server,
            tmp_path,
            "wrong-key",
            {"X-API-Key": "aip_" + secrets.token_urlsafe(24)},
            max(10, FUZZ_SECONDS // 4),
            exclude=("unsupported_method",),
        ),
    ]

    found = [f"[{run.name}, seed {run.seed}] {failure}" for run in runs for failure in run.failures]
    assert not found, "schemathesis found:\n" + "\n".join(found)

    log = server.log()
    assert server.proc.poll() is None, log[-3000:]
    assert log.count("Booting worker") == WORKERS, "a worker was restarted:\n" + log[-3000:]
    assert worker_pids(server) == workers_before, "a worker was restarted:\n" + log[-3000:]
    assert "WORKER TIMEOUT" not in log
