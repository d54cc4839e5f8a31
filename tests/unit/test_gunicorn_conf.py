"""Hooks of the shipped gunicorn.conf.py, run in a fresh interpreter (it patches with gevent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CHECK_FREEZE = """
import gc, runpy
conf = runpy.run_path("gunicorn.conf.py")
before = gc.get_freeze_count()
conf["post_worker_init"](None)
print(before, gc.get_freeze_count())
"""


def test_a_worker_freezes_what_it_loaded_out_of_the_garbage_collectors_walks(tmp_path: Path) -> None:
    env = {**os.environ, "AI_PROXY_ENV_FILE": "/dev/null", "NODE_ENV": "development",
           "MASTER_API_KEY": "m" * 40, "JWT_SECRET": "j" * 40, "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}"}
    done = subprocess.run([sys.executable, "-c", CHECK_FREEZE], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == 0 and after > 10_000
