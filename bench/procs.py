"""Processes under test: start, wait for, stop; CPU time and memory from /proc.

A target is measured as its whole process tree (gunicorn's master and worker, a
uvicorn parent and its worker, node and its threads): CPU is utime+stime from
``/proc/<pid>/stat`` summed over the tree, memory is VmRSS from
``/proc/<pid>/status`` summed over the tree and sampled in a background thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after the last ')'
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if os.path.exists(f"/proc/{current}"):
            found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / CLOCK_TICKS


def core_busy_seconds() -> dict[int, float]:
    """Busy time of each CPU core since boot (user+nice+system+steal), in seconds.

    irq/softirq time is left out: the kernel's loopback traffic for our own processes
    lands there without being charged to them. steal is kept: it is time the
    hypervisor gave to someone else.
    Compared with a target's own CPU time, it shows load from other processes on the
    machine during a run (this machine may be shared with other work).
    """
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *fields = line.split()
                user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
                busy[int(name[3:])] = (user + nice + system + steal) / CLOCK_TICKS
    return busy


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class RssSampler:
    """Samples the summed VmRSS of a process tree every ``interval`` seconds."""

    def __init__(self, root_pid: int, interval: float = 0.1) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._pids = tree(root_pid)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        refresh = 0
        while not self._stop.wait(self.interval):
            refresh += 1
            if refresh % 20 == 0:  # pick up re-spawned workers every ~2 s
                self._pids = tree(self.root_pid)
            value = rss_bytes(self._pids)
            with self._lock:
                self.last = value
                self.peak = max(self.peak, value)

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = rss_bytes(self._pids)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Service:
    """A server process pinned to CPU cores, with its output sent to a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], cores: str, log: Path, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            ["taskset", "-c", cores, *argv],  # taskset execs the command: same pid
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log_file.close()


def wait_http(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    service: Service | None = None,
) -> None:
    """Wait until ``url`` answers 200, or raise with the service's log tail."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if service is not None and not service.alive():
            break
        try:
            request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            last_error = f"HTTP {error.code}: {error.read()[:300]!r}"
        except OSError as error:
            last_error = str(error)
        time.sleep(0.25)
    tail = ""
    if service is not None:
        tail = "\n".join(service.log.read_text(errors="replace").splitlines()[-30:])
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s ({last_error})\n{tail}")
