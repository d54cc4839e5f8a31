"""Run wrk (pinned to a core) with bench/wrk/post.lua and parse its ``--latency`` output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

LUA = Path(__file__).with_name("wrk") / "post.lua"

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^([\d.]+)(us|ms|s|m|h)$")


class WrkError(RuntimeError):
    pass


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed: apt-get update && apt-get install -y wrk (make bench does it as root)")
    return path


def wrk_version() -> str:
    result = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True)
    return (result.stdout + result.stderr).splitlines()[0].split(" Copyright")[0].strip()


def _ms(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise WrkError(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> dict:
    """Requests/s, latency percentiles (ms), request and error counts from wrk's text output."""
    result: dict = {"errors": {"non_2xx_3xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}}
    percentiles = {}
    for line in output.splitlines():
        line = line.strip()
        m = re.match(r"^(50|75|90|99)%\s+(\S+)$", line)
        if m:
            percentiles[f"p{m.group(1)}_ms"] = _ms(m.group(2))
            continue
        m = re.match(r"^(\d+) requests in ([\d.]+)(us|ms|s|m|h),", line)
        if m:
            result["requests"] = int(m.group(1))
            result["elapsed_s"] = _ms(m.group(2) + m.group(3)) / 1000.0
            continue
        m = re.match(r"^Requests/sec:\s+([\d.]+)", line)
        if m:
            result["rps"] = float(m.group(1))
            continue
        m = re.match(r"^Latency\s+(\S+)\s+(\S+)\s+(\S+)", line)
        if m:
            result["mean_ms"] = _ms(m.group(1))
            result["max_ms"] = _ms(m.group(3))
            continue
        m = re.match(r"^Non-2xx or 3xx responses:\s+(\d+)", line)
        if m:
            result["errors"]["non_2xx_3xx"] = int(m.group(1))
            continue
        m = re.match(r"^Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", line)
        if m:
            for key, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=False):
                result["errors"][key] = int(value)
    result.update(percentiles)
    missing = [k for k in ("rps", "requests", "p50_ms", "p90_ms", "p99_ms") if k not in result]
    if missing:
        raise WrkError(f"wrk output lacks {missing}:\n{output}")
    result["error_count"] = sum(result["errors"].values())
    return result


def run(
    url: str, *, connections: int, duration_s: int, body_file: Path, headers: Mapping[str, str], core: str, timeout_s: int = 10
) -> dict:
    """One wrk run; returns the parsed figures plus the raw output."""
    env = dict(os.environ)
    env["BENCH_BODY_FILE"] = str(body_file)
    env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
    argv = [
        "taskset",
        "-c",
        core,
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration_s + timeout_s + 30)
    if completed.returncode != 0:
        raise WrkError(f"wrk failed ({completed.returncode}): {completed.stderr}\n{completed.stdout}")
    figures = parse(completed.stdout)
    figures["raw"] = completed.stdout
    return figures
