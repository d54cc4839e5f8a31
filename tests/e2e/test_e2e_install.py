"""deploy/install.sh run for real, into a temporary tree, then the installed unit run the
way systemd runs it (issue 12, item 8).

PREFIX, CONF_DIR and UNIT_DIR move the install under tmp_path; SERVICE_USER=root
(an existing user) keeps the test from adding a user to the machine; START=no leaves
systemctl alone. The unit it writes is verified by `systemd-analyze verify` (its paths
now exist), then its ExecStartPre= and ExecStart= run with its Environment= and
EnvironmentFile= applied in systemd's order, as the service's working directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import HOST, free_port, request
from tests.fakes.upstream import FakeUpstream
from tests.unit.test_env_example import systemd_environment_file

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="deploy/install.sh runs as root"),
    pytest.mark.skipif(not shutil.which("install") or not shutil.which("getent"), reason="not a Debian-like system"),
]


def _install(root: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PREFIX": str(root / "opt"),
        "CONF_DIR": str(root / "etc"),
        "UNIT_DIR": str(root / "units"),
        "SERVICE_USER": "root",
        "START": "no",
        "PYTHON": sys.executable,
    }
    return subprocess.run(["bash", str(REPO_ROOT / "deploy" / "install.sh")], env=env, capture_output=True, text=True, timeout=400)


def _unit_values(unit: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", unit, flags=re.MULTILINE)


@pytest.mark.timeout(600)
def test_install_sh_then_run_the_unit_as_systemd_would(tmp_path: Path, upstream: FakeUpstream) -> None:
    first = _install(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    env_file = tmp_path / "etc" / "ai-proxy.env"
    written = env_file.read_text()
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"
    assert (tmp_path / "opt" / "instance").is_dir() and (tmp_path / "opt" / ".venv" / "bin" / "gunicorn").exists()
    assert not (tmp_path / "opt" / ".venv" / "bin" / "pytest").exists()  # production requirements only

    again = _install(tmp_path)  # idempotent: the operator's settings are kept
    assert again.returncode == 0, again.stdout + again.stderr
    assert "keeping" in again.stdout and env_file.read_text() == written

    unit_path = tmp_path / "units" / "ai-proxy.service"
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr

    # The operator's edit: the upstream (and, for the test, loopback and a free port).
    port = free_port()
    edited = re.sub(r"^AI_API_URL=.*$", f"AI_API_URL={upstream.base_url}/completions", written, flags=re.MULTILINE)
    edited = re.sub(r"^AI_PROXY_HOST=.*$", f"AI_PROXY_HOST={HOST}", edited, flags=re.MULTILINE)
    edited = re.sub(r"^AI_PROXY_PORT=.*$", f"AI_PROXY_PORT={port}", edited, flags=re.MULTILINE)
    env_file.write_text(edited)

    unit = unit_path.read_text()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for line in _unit_values(unit, "Environment"):
        env.update(dict(item.split("=", 1) for item in shlex.split(line)))
    for path in _unit_values(unit, "EnvironmentFile"):
        env.update(systemd_environment_file(Path(path).read_text()))  # the file wins over Environment=
    assert env["NODE_ENV"] == "production"
    master_key = env["MASTER_API_KEY"]
    assert len(master_key) == 64
    workdir = _unit_values(unit, "WorkingDirectory")[0]

    (pre,) = _unit_values(unit, "ExecStartPre")
    upgraded = subprocess.run(shlex.split(pre), cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0 and "upgraded from empty" in upgraded.stdout, upgraded.stdout + upgraded.stderr

    (start,) = _unit_values(unit, "ExecStart")
    log = tmp_path / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            shlex.split(start),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if request(url, "GET", "/health", timeout=0.5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        status, _, body = request(
            url, "POST", "/api/ai/completion", {"model": "m", "prompt": "Hello", "max_tokens": 4}, headers={"X-API-Key": master_key}
        )
        assert status == 200, body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # systemd's KillMode=mixed: SIGTERM to the main process
        try:
            proc.wait(timeout=30)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text()
    assert "PRODUCTION mode" in text and master_key not in text
    assert json.loads(next(line for line in text.splitlines() if "PRODUCTION mode" in line))["level"] == "INFO"
