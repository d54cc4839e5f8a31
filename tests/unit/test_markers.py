"""A quick local run can leave out the tests that need PostgreSQL, Redis or real gunicorn
(issue 12, item 13): markers in pytest.ini, applied in tests/conftest.py, and a missing
server named in one line with the way to skip it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def _collected(*args: str) -> set[str]:
    done = _pytest("--collect-only", "-q", *args)
    return {line for line in done.stdout.splitlines() if "::" in line}


@pytest.mark.timeout(120)
def test_markers_select_the_tests_that_need_each_server() -> None:
    store = _collected("tests/unit/test_store.py")
    postgres = _collected("-m", "postgres", "tests/unit/test_store.py")
    assert postgres and all("[postgresql]" in name for name in postgres)
    assert {name for name in store if "[postgresql]" in name} == postgres
    redis = _collected("-m", "redis", "tests/integration/test_quotas_redis.py")
    assert "tests/integration/test_quotas_redis.py::test_two_instances_share_one_quota" in redis
    assert "tests/integration/test_quotas_redis.py::test_slot_expiry_is_the_safety_net" in redis
    assert "tests/integration/test_quotas_redis.py::test_fixed_window_is_available_and_documented_as_bursty" \
        not in redis  # memory:// only
    assert _collected("-m", "e2e", "tests/e2e/test_e2e_http.py") == _collected("tests/e2e/test_e2e_http.py")
    assert not _collected("-m", "not postgres and not redis and not e2e", "tests/e2e/test_e2e_http.py")


@pytest.mark.timeout(120)
def test_a_missing_postgresql_is_one_line_saying_how_to_skip() -> None:
    done = _pytest("-m", "postgres", "-x", "tests/unit/test_store.py",
                   GATEWAY_TEST_POSTGRES_URL="postgresql://nobody@127.0.0.1:1/none")
    assert done.returncode == 1
    assert "does not answer" in done.stdout and "-m 'not postgres'" in done.stdout
    assert "Traceback" not in done.stdout
