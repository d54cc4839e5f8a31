"""Every CLI command fails in one line naming the variable (issue 12, item 3).

Docker's CMD and the systemd unit run ``flask --app wsgi db upgrade`` before gunicorn,
so a missing secret must read there as it does under gunicorn: one line, no traceback.
Run as an operator does: the real ``flask`` command in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STRONG = "p" * 40

pytestmark = pytest.mark.slow  # each test starts the real `flask` command in a fresh interpreter


def _flask(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    base.update(
        {"AI_PROXY_ENV_FILE": str(tmp_path / "none.env"), "INSTANCE_PATH": str(tmp_path / "instance"), "NODE_ENV": "production", **env}
    )
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=REPO_ROOT, env=base, capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "command", [("db", "upgrade"), ("db", "current"), ("keys", "list"), ("keys", "create", "--name", "web")], ids=" ".join
)
@pytest.mark.parametrize(
    ("env", "name", "value"),
    [
        ({"JWT_SECRET": STRONG}, "MASTER_API_KEY", None),
        ({"MASTER_API_KEY": "short-secret-value", "JWT_SECRET": STRONG}, "MASTER_API_KEY", "short-secret-value"),
        (
            {"MASTER_API_KEY": STRONG, "JWT_SECRET": "q" * 40, "RATE_LIMIT_AI": "lots-per-whenever"},
            "RATE_LIMIT_AI",
            "lots-per-whenever",
        ),
    ],
    ids=["missing-key", "short-key", "bad-limit"],
)
def test_a_configuration_error_is_one_line(
    tmp_path: Path, command: tuple[str, ...], env: dict[str, str], name: str, value: str | None
) -> None:
    done = _flask(tmp_path, env, *command)
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output
    assert output.splitlines() == [output] and output.startswith("configuration error: " + name), output
    if value:
        assert value not in output


@pytest.mark.timeout(60)
def test_the_docker_command_fails_in_one_line_too(tmp_path: Path) -> None:
    # The image's CMD, verbatim, with the secrets missing.
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    script = cmd.split('"sh", "-c", "', 1)[1].rsplit('"]', 1)[0]
    assert script.startswith("flask --app wsgi db upgrade && exec gunicorn")
    base = {name: value for name, value in os.environ.items() if name in ("HOME", "LANG")}
    base.update(
        {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "NODE_ENV": "production",
            "AI_PROXY_ENV_FILE": str(tmp_path / "none.env"),
            "INSTANCE_PATH": str(tmp_path / "instance"),
        }
    )
    done = subprocess.run(["sh", "-c", script], cwd=REPO_ROOT, env=base, capture_output=True, text=True, timeout=50)
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert output == "configuration error: MASTER_API_KEY is required in production", output
