"""The README's examples run as written. The demo's (the original document's curl lines
among them) against the README's `make demo` set-up: MASTER_API_KEY=your-master-key in
front of the project's fake upstream. The admin, command-line, database and usage
examples in a directory laid out like a clone after `make run`: no key set, so the
gateway generated `instance/secrets.json`, and `.venv/bin/...` is the project's venv.
Only the port is changed, to a free one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import _GATEWAY_VARIABLES, REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
DEMO = README[README.index("### Try it without an LLM") : README.index("## Endpoints")]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DEMO, flags=re.S)


def _curl_commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        current = ""
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                commands.append(current.strip())
                current = ""
    return commands


def test_readme_has_the_original_examples() -> None:
    commands = _curl_commands()
    assert len(commands) == 4
    assert '"apiKey": "your-master-key"' in commands[0]
    assert "Authorization: Bearer <token>" in commands[1]
    assert "X-API-Key: your-master-key" in commands[2]
    assert '"stream": true' in commands[3]


@pytest.mark.timeout(60)
def test_readme_examples_run_as_written(gateway_server) -> None:
    server = gateway_server(MASTER_API_KEY="your-master-key")
    outputs = []
    token = None
    for command in _curl_commands():
        command = command.replace("http://localhost:8767", server.url)
        if token is not None:
            command = command.replace("<token>", token)
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
        if token is None:
            token = json.loads(result.stdout)["token"]
    for completion in outputs[1:3]:
        body = json.loads(completion)
        assert body["object"] == "text_completion" and body["choices"][0]["text"]
    events = [e for e in outputs[3].split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]" and len(events) > 2


@pytest.mark.timeout(60)
def test_readme_sdk_example_runs(gateway_server) -> None:
    server = gateway_server(MASTER_API_KEY="your-master-key")
    (snippet,) = _blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", snippet.replace("http://localhost:8767", server.url)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "Hello from the fake upstream" in result.stdout
    assert "tok0 tok1" in result.stdout


# The README's shell examples an operator runs after `make run`, by section (start, end).
OPERATOR_SECTIONS = {
    "admin-curl": ("### With curl\n", "The application then uses its secret"),
    "admin-cli": ("### From the command line\n", "Every option matches a field above"),
    "database": ("## Database\n", "The default SQLite file **upgrades itself at start**"),
    "usage": ("## Usage API\n", "`GET /admin/usage?group_by=model"),
    "usage-csv": ("### CSV export\n", "## Quotas\n"),
    "audit": ("## Audit log\n", "`has_more` says whether"),
}
BLOCK_END = "README-BLOCK-DONE"


def _operator_blocks() -> dict[str, str]:
    found = {}
    for name, (start, end) in OPERATOR_SECTIONS.items():
        section = README[README.index(start) : README.index(end)]
        (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
        found[name] = block
    return found


def test_operator_examples_use_the_projects_venv_and_no_unset_variable() -> None:
    blocks = _operator_blocks()
    for name, block in blocks.items():
        commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
        assert commands, name
        for line in commands:
            assert not re.match(r"\s*(flask|python3?|pip) ", line), (name, line)  # never a global one
            assert "key_3f9c0a7d1e2b4c56" not in line and "aip_..." not in line, (name, line)  # no made-up id
    assert "instance/secrets.json" in blocks["admin-curl"] and "instance/secrets.json" in blocks["usage"]


@pytest.mark.timeout(180)
def test_readme_operator_examples_run_as_written_after_make_run(gateway_server) -> None:
    server = gateway_server(MASTER_API_KEY="", JWT_SECRET="")  # like `make run`: secrets generated
    clone = server.workdir  # the gateway's INSTANCE_PATH is clone/instance
    for name in (".venv", "gateway", "wsgi.py"):
        (clone / name).symlink_to(REPO_ROOT / name)
    assert (clone / "instance" / "secrets.json").is_file()
    blocks = _operator_blocks()
    script = "set -euo pipefail\n" + "".join(f"{block}\necho {BLOCK_END}\n" for block in blocks.values()).replace(
        "http://localhost:8767", server.url
    )
    # The operator's shell: none of the gateway's variables set; settings come from ./instance.
    env = {name: value for name, value in os.environ.items() if name not in _GATEWAY_VARIABLES}
    result = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = dict(zip(blocks, result.stdout.split(BLOCK_END + "\n"), strict=False))
    assert len(outputs) == len(blocks) and not result.stdout.split(BLOCK_END + "\n")[-1].strip()
    for name, output in outputs.items():
        assert '"error"' not in output, (name, output)
    admin = outputs["admin-curl"]
    assert '"name": "web-app"' in admin.replace('":"', '": "') or '"name":"web-app"' in admin
    assert '"status":"revoked"' in admin.replace(" ", "") and '"object":"list"' in admin.replace(" ", "")
    cli = outputs["admin-cli"]
    assert "batch-job" in cli and '"max_tokens_cap": 1024' in cli and '"status": "revoked"' in cli
    assert "expects" in outputs["database"]
    usage = outputs["usage"]
    assert usage.count('"object":"usage.report"') + usage.count('"object": "usage.report"') == 3
    assert usage.count('"key":"master"') + usage.count('"key": "master"') >= 2
    assert outputs["usage-csv"].startswith("id,ts,key_id,") and (clone / "usage-2026-11.csv").is_file()
    audit = outputs["audit"].replace(" ", "")
    assert '"object":"audit.entry"' in audit and '"action":"update"' in audit and '"via":"api_key"' in audit
