"""``/metrics`` under real gunicorn: every worker's values in one scrape, the master's
directory handling (``on_starting``, ``on_exit``) and a dead worker's gauges (``child_exit``)."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REDIS_URL
from tests.e2e.conftest import AUTH, EventStream, request
from tests.fakes.upstream import Behavior

CALLS = 40
COMPLETIONS = ("aiproxy_requests_total", (("method", "POST"), ("route", "ai.completion"), ("status", "200")))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def _scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = request(server.url, "GET", "/metrics", headers=AUTH)
    assert status == 200, body
    return _samples(body.decode())


def _completions_per_process(directory: Path) -> dict[str, float]:
    """What each process's own counter file says (the file names carry the pid)."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(path)])
        counts[path.stem.split("_")[1]] = sum(
            s.value for metric in merged for s in metric.samples if (s.name, tuple(sorted(s.labels.items()))) == COMPLETIONS
        )
    return counts


def _stale_counter(directory: Path) -> None:
    """A counter file left by an earlier run, as a crashed master would leave it."""
    directory.mkdir(parents=True)
    stale = MmapedDict(str(directory / "counter_999999.db"))
    stale.write_value(
        mmap_key(
            "aiproxy_requests",
            "aiproxy_requests_total",
            ["route", "method", "status"],
            ["ai.completion", "POST", "200"],
            "Responses by route, method and status.",
        ),
        1000.0,
        0.0,
    )
    stale.close()


@pytest.mark.timeout(90)
def test_requests_served_by_both_workers_are_summed(gateway_server, upstream, redis_prefix, tmp_path) -> None:
    directory = tmp_path / "metrics"
    _stale_counter(directory)
    # One connection at a time per worker: a worker holding a request does not accept, so
    # requests sent in parallel must be shared (the kernel alone often gives one worker all).
    server = gateway_server(
        RATE_LIMIT_STORAGE_URI=REDIS_URL,
        RATE_LIMIT_KEY_PREFIX=redis_prefix,
        GATEWAY_WORKERS="2",
        GATEWAY_WORKER_CONNECTIONS="1",
        RATE_LIMIT_AI="1000 per minute",
        RATE_LIMIT_GENERAL="1000 per minute",
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )
    assert not (directory / "counter_999999.db").exists()  # wiped by the master at start
    # Each worker opens its own file when its app is built: wait until both can answer.
    deadline = time.monotonic() + 10
    while len(list(directory.glob("counter_*.db"))) < 2:
        assert time.monotonic() < deadline, list(directory.iterdir())
        time.sleep(0.05)

    def call(_: int) -> int:  # each on a fresh connection, so either worker may take it
        return request(server.url, "POST", "/api/ai/completion", {"model": "m", "prompt": "hi"}, headers=AUTH)[0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(call, range(CALLS))) == [200] * CALLS
    per_process = _completions_per_process(directory)
    served = {pid for pid, count in per_process.items() if count}
    assert len(served) == 2, per_process  # both workers answered some of them
    samples = _scrape(server)
    assert samples[COMPLETIONS] == CALLS
    assert samples[("aiproxy_request_duration_seconds_count", (("route", "ai.completion"),))] == CALLS
    assert samples[("aiproxy_tokens_total", (("key_id", "master"), ("kind", "prompt"), ("model", "m")))] == 5 * CALLS


@pytest.mark.timeout(60)
def test_a_dead_workers_gauges_stop_counting_and_its_counters_stay(gateway_server, upstream) -> None:
    server = gateway_server()
    match = re.search(r"metrics: values of every worker are kept in (\S+) \(created; removed at exit\)", server.log())
    assert match, server.log()
    directory = Path(match.group(1))
    assert directory.is_dir()
    assert request(server.url, "POST", "/v1/completions", {"model": "m", "prompt": "hi"}, headers=AUTH)[0] == 200

    upstream.behavior = Behavior(chunks=200, gap=0.05)
    stream = EventStream(
        server.url, "/v1/chat/completions", {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    try:
        assert stream.status == 200 and stream.next_events()
        in_flight = ("aiproxy_streams_in_flight", (("operation", "chat"),))
        assert _scrape(server)[in_flight] == 1
        (worker,) = set(re.findall(r"Booting worker with pid: (\d+)", server.log()))
        os.kill(int(worker), signal.SIGKILL)  # a crash: no worker_exit, no cleanup of its own
        assert server.wait_for_log(lambda log: len(re.findall(r"Booting worker with pid: (\d+)", log)) == 2, 10)
        deadline = time.monotonic() + 10
        while True:
            try:
                samples = _scrape(server)
                break
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        stream.close()
    assert samples.get(in_flight, 0) == 0  # child_exit: the dead worker's live gauge is gone
    assert samples[COMPLETIONS] == 1  # its counters are not
    server.stop()
    assert not directory.exists()  # the master created it, the master removed it
