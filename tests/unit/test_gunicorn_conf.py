"""Hooks of the shipped gunicorn.conf.py, run in a fresh interpreter (it patches with gevent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

CHECK_FREEZE = """
import gc, runpy
conf = runpy.run_path("gunicorn.conf.py")
before = gc.get_freeze_count()
conf["post_worker_init"](None)
print(before, gc.get_freeze_count())
"""


@pytest.mark.slow  # a fresh interpreter
def test_a_worker_freezes_what_it_loaded_out_of_the_garbage_collectors_walks(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AI_PROXY_ENV_FILE": "/dev/null",
        "NODE_ENV": "development",
        "MASTER_API_KEY": "m" * 40,
        "JWT_SECRET": "j" * 40,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
    }
    done = subprocess.run([sys.executable, "-c", CHECK_FREEZE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == 0 and after > 10_000


CHECK_WORKER_CLASS = """
import runpy
from gunicorn.config import Config
conf = runpy.run_path("gunicorn.conf.py")
config = Config()
config.set("worker_class", conf["worker_class"])
config.set("threads", conf["threads"])
worker = config.worker_class
print(worker.__module__ + "." + worker.__qualname__)
"""


def _worker_class(tmp_path: Path, **env: str) -> str:
    environ = {
        **os.environ,
        "AI_PROXY_ENV_FILE": "/dev/null",
        "NODE_ENV": "development",
        "MASTER_API_KEY": "m" * 40,
        "JWT_SECRET": "j" * 40,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", CHECK_WORKER_CLASS], cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[0]


@pytest.mark.slow  # two fresh interpreters
def test_gunicorn_runs_the_gateways_worker_classes(tmp_path: Path) -> None:
    assert _worker_class(tmp_path) == "gateway.server.workers.GeventWorker"
    assert _worker_class(tmp_path, GATEWAY_WORKER_CLASS="gthread") == "gateway.server.workers.ThreadWorker"


def test_systemd_waits_longer_than_a_stop_right_after_a_reload() -> None:
    """gunicorn's master drains the old workers inside its reload (up to the graceful
    timeout) before it reads a SIGTERM, then drains the new ones: up to twice the
    graceful timeout, plus a worker's boot (tests/e2e/test_e2e_drain.py measures it)."""
    from gateway.config import Settings

    unit = (REPO_ROOT / "deploy" / "ai-proxy.service").read_text()
    stop = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    assert len(stop) == 1
    assert int(stop[0]) >= 2 * Settings().gateway_graceful_timeout + 10
