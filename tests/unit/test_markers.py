"""A quick local run can leave out the tests that need PostgreSQL, Redis or real gunicorn
(issue 12, item 13): markers in pytest.ini, applied in tests/conftest.py, and a missing
server named in one line with the way to skip it. `make test-fast` (issue 13) also leaves
out the tests marked slow, and must start no gunicorn and no make build: every test that
does lives in tests/e2e/ (marked e2e there) or is marked e2e itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _collected(*args: str) -> set[str]:
    done = _pytest("--collect-only", "-q", *args)
    return {line for line in done.stdout.splitlines() if "::" in line}


@pytest.mark.slow  # collects the suite in a fresh interpreter, several times
@pytest.mark.timeout(120)
def test_markers_select_the_tests_that_need_each_server() -> None:
    store = _collected("tests/unit/test_store.py")
    postgres = _collected("-m", "postgres", "tests/unit/test_store.py")
    assert postgres and all("[postgresql]" in name for name in postgres)
    assert {name for name in store if "[postgresql]" in name} == postgres
    redis = _collected("-m", "redis", "tests/integration/test_quotas_redis.py")
    assert "tests/integration/test_quotas_redis.py::test_two_instances_share_one_quota" in redis
    assert "tests/integration/test_quotas_redis.py::test_slot_expiry_is_the_safety_net" in redis
    assert (
        "tests/integration/test_quotas_redis.py::test_fixed_window_is_available_and_documented_as_bursty" not in redis
    )  # memory:// only
    assert _collected("-m", "e2e", "tests/e2e/test_e2e_http.py") == _collected("tests/e2e/test_e2e_http.py")
    assert not _collected("-m", "not postgres and not redis and not e2e", "tests/e2e/test_e2e_http.py")


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.timeout(120)
def test_a_missing_postgresql_is_one_line_saying_how_to_skip() -> None:
    done = _pytest(
        "-m", "postgres", "-x", "tests/unit/test_store.py", GATEWAY_TEST_POSTGRES_URL="postgresql://nobody@127.0.0.1:1/none"
    )
    assert done.returncode == 1
    assert "does not answer" in done.stdout and "-m 'not postgres'" in done.stdout
    assert "Traceback" not in done.stdout


# A command line that starts gunicorn or make: the program as a quoted argument (possibly a
# path ending in it), `-m gunicorn`, or the program looked up with shutil.which.
_STARTS_SERVER_OR_MAKE = re.compile(
    r"""(?<!["'])(["'])(?:[^"'\s]*/)?(?:gunicorn|make)\1"""
    r"""|["']-m["']\s*,\s*["']gunicorn["']"""
    r"""|which\(\s*["'](?:gunicorn|make)["']\s*\)"""
)
_STARTS_A_PROCESS = re.compile(r"\bsubprocess\.|\bos\.(?:exec|spawn|posix_spawn)")
# Test files outside tests/e2e/ that name gunicorn or make in a command yet start neither for real.
_NAMES_BUT_DOES_NOT_START = {
    "tests/unit/test_makefile.py": "make -n prints recipes; the one real make has a PATH of fake interpreters "
    "and stops at the Python check, before any build",
    "tests/unit/test_deploy_files.py": "writes a fake gunicorn executable for systemd-analyze verify to find",
}


def starts_gunicorn_or_make(source: str) -> bool:
    return bool(_STARTS_A_PROCESS.search(source) and _STARTS_SERVER_OR_MAKE.search(source))


def test_every_test_that_starts_gunicorn_or_make_is_marked_e2e() -> None:
    unmarked = []
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        name = path.relative_to(REPO_ROOT).as_posix()
        if name.startswith("tests/e2e/") or name in _NAMES_BUT_DOES_NOT_START:
            continue
        source = path.read_text(encoding="utf-8")
        if starts_gunicorn_or_make(source) and "pytest.mark.e2e" not in source:
            unmarked.append(name)
    assert not unmarked, f"these start gunicorn or make: move them to tests/e2e/ or mark them e2e: {unmarked}"
    for name in _NAMES_BUT_DOES_NOT_START:  # the exceptions still exist and still need the exception
        assert starts_gunicorn_or_make((REPO_ROOT / name).read_text(encoding="utf-8")), name


@pytest.mark.parametrize(
    ("source", "starts"),
    [
        ('subprocess.Popen([str(VENV / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"])', True),
        ('subprocess.run([sys.executable, "-m", "gunicorn", "wsgi:app"])', True),
        ('MAKE = shutil.which("make")\nsubprocess.run([MAKE, "test"])', True),
        ('subprocess.run(["make", "run"], cwd=ROOT)', True),
        ('subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"])', False),
        ('conf = runpy.run_path("gunicorn.conf.py")  # no process', False),
    ],
)
def test_the_check_sees_a_gunicorn_or_make_start(source: str, starts: bool) -> None:
    assert starts_gunicorn_or_make(source) is starts


def test_make_test_fast_leaves_out_every_marker_that_needs_a_server_a_process_or_time() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ntest-fast:", 1)[1].split("\n\n", 1)[0]
    for marker in ("postgres", "redis", "e2e", "docker", "slow"):
        assert f"not {marker}" in recipe, marker
        assert f"\n    {marker}: " in (REPO_ROOT / "pytest.ini").read_text(encoding="utf-8"), marker
