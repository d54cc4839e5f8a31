"""The Makefile finds a suitable Python and says what the first build is doing
(issue 12, item 13). Run with a PATH holding only fake interpreters, so the machine's
own Python cannot answer; `make -n` prints the recipe without building anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _fake(directory: Path, name: str, version_ok: bool) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\nexit {0 if version_ok else 1}\n")  # answers the version check only
    path.chmod(0o755)
    return path


def _make(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MAKE, "--no-print-directory", *args], cwd=REPO_ROOT, env={"PATH": str(path)}, capture_output=True, text=True, timeout=60
    )


def _dry_build(path: Path, *args: str) -> str:
    done = _make(path, "-n", "-W", "requirements.txt", ".venv/.installed", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_python3_11_is_preferred(tmp_path: Path) -> None:
    python311 = _fake(tmp_path, "python3.11", True)
    _fake(tmp_path, "python3", True)
    out = _dry_build(tmp_path)
    assert f"{python311} -m venv .venv" in out
    assert "first time takes a minute or two" in out


def test_python3_is_used_when_it_is_recent_enough(tmp_path: Path) -> None:
    python3 = _fake(tmp_path, "python3", True)
    assert f"{python3} -m venv .venv" in _dry_build(tmp_path)


def test_python_can_be_chosen(tmp_path: Path) -> None:
    _fake(tmp_path, "python3.11", True)
    chosen = _fake(tmp_path / "other", "python3.13", True)
    assert f"{chosen} -m venv .venv" in _dry_build(tmp_path, f"PYTHON={chosen}")


def test_no_suitable_python_is_one_clear_line(tmp_path: Path) -> None:
    _fake(tmp_path, "python3", False)  # an old python3 and no python3.11
    done = _make(tmp_path, "-W", "requirements.txt", ".venv/.installed")
    assert done.returncode != 0
    assert "no Python 3.11 or later found" in done.stdout and "PYTHON=" in done.stdout
