"""The README's examples (the original document's curl lines among them) run as written
against the README's `make demo` set-up: MASTER_API_KEY=your-master-key in front of the
project's fake upstream. Only the port is changed, to a free one."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
DEMO = README[README.index("### Try it without an LLM"):README.index("## Endpoints")]


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
    result = subprocess.run([sys.executable, "-c", snippet.replace("http://localhost:8767", server.url)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Hello from the fake upstream" in result.stdout
    assert "tok0 tok1" in result.stdout
