"""``flask keys ...`` and ``flask db ...``, on SQLite and PostgreSQL.

Most tests drive the commands through ``app.test_cli_runner()``; the last ones run the
real ``flask --app wsgi`` in a subprocess, the way an operator does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.cli import FlaskGroup

from gateway import create_app
from gateway.store import schema
from tests.conftest import CANARY_JWT_SECRET, CANARY_MASTER_KEY, postgres_schema, settings_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(app: Flask, *args: str):
    result = app.test_cli_runner().invoke(args=list(args))
    return result


def _json(result) -> dict | list:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_create_use_and_revoke_a_key_from_the_command_line(db_app: Flask) -> None:
    created = _json(
        _run(
            db_app,
            "keys",
            "create",
            "--name",
            "web-app",
            "--ai-limit",
            "50 per 15 minutes",
            "--allowed-model",
            "gpt-4o*",
            "--allowed-model",
            "llama3",
            "--metadata",
            '{"team": "web"}',
            "--tokens-per-day",
            "100000",
            "--max-tokens",
            "1024",
        )
    )
    assert created["name"] == "web-app" and created["rate_limit_ai"] == "50 per 15 minutes"
    assert created["allowed_models"] == ["gpt-4o*", "llama3"] and created["metadata"] == {"team": "web"}
    assert created["tokens_per_day"] == 100000 and created["max_tokens_cap"] == 1024
    client = db_app.test_client()
    assert client.get("/v1/models", headers={"X-API-Key": created["secret"]}).status_code == 200

    revoked = _json(_run(db_app, "keys", "revoke", created["id"]))
    assert revoked["status"] == "revoked"
    assert client.get("/v1/models", headers={"X-API-Key": created["secret"]}).status_code == 401


def test_list_and_show_never_print_a_secret(db_app: Flask) -> None:
    secrets = [_json(_run(db_app, "keys", "create", "--name", f"k{i}"))["secret"] for i in range(2)]
    table = _run(db_app, "keys", "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "prefix", "status", "created_at", "expires_at"]
    assert len(lines) == 3 and all("active" in line for line in lines[1:])
    listed = _json(_run(db_app, "keys", "list", "--json"))
    shown = table.stdout + json.dumps(listed) + _run(db_app, "keys", "show", listed[0]["id"]).stdout
    for secret in secrets:
        assert secret not in shown and secret[12:] not in shown


def test_update_sets_and_clears_fields(db_app: Flask) -> None:
    key_id = _json(_run(db_app, "keys", "create", "--name", "a", "--ai-limit", "5 per minute"))["id"]
    updated = _json(_run(db_app, "keys", "update", key_id, "--name", "b", "--budget-month", "9000", "--clear", "rate_limit_ai"))
    assert updated["name"] == "b" and updated["budget_tokens_month"] == 9000 and updated["rate_limit_ai"] is None
    assert _json(_run(db_app, "keys", "show", key_id)) == updated


def test_rotate_prints_a_new_secret_that_works(db_app: Flask) -> None:
    created = _json(_run(db_app, "keys", "create", "--name", "a"))
    rotated = _json(_run(db_app, "keys", "rotate", created["id"]))
    assert rotated["id"] == created["id"] and rotated["secret"] != created["secret"]
    client = db_app.test_client()
    assert client.get("/v1/models", headers={"X-API-Key": created["secret"]}).status_code == 401
    assert client.get("/v1/models", headers={"X-API-Key": rotated["secret"]}).status_code == 200


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["keys", "create", "--name", "a", "--ai-limit", "lots"], 2, "--ai-limit"),
        (["keys", "create", "--name", "a", "--tokens-per-day", "0"], 2, "--tokens-per-day"),
        (["keys", "create", "--name", "a", "--metadata", "{not json"], 2, "--metadata"),
        (["keys", "create", "--name", "a", "--expires-at", "2001-01-01T00:00:00Z"], 2, "--expires-at"),
        (["keys", "create", "--name", "a", "--expires-at", "9999-12-31T23:59:59-14:00"], 2, "--expires-at"),
        (["keys", "create", "--name", "a", "--expires-at", "0001-01-01T00:00:00+01:00"], 2, "--expires-at"),
        (["keys", "create", "--name", "a", "--ai-limit", "5 per 99999999999999 years"], 2, "--ai-limit"),
        (["keys", "create", "--name", "a", "--general-limit", "2000000000 per minute"], 2, "--general-limit"),
        (["keys", "create", "--name", "a\udcff"], 2, "--name"),  # argv that is not UTF-8 decodes to lone surrogates
        (["keys", "create", "--name", "a", "--metadata", '{"team": "a\\u0000b"}'], 2, "--metadata"),
        (["keys", "create"], 2, "--name"),
        (["keys", "show", "key_nope"], 1, "no API key has the id key_nope"),
        (["keys", "revoke", "key_nope"], 1, "no API key"),
        (["keys", "revoke", "master"], 2, "MASTER_API_KEY"),
        (["keys", "update", "key_nope"], 2, "nothing to change"),
        (["keys", "update", "key_nope", "--ai-limit", "1 per second", "--clear", "rate_limit_ai"], 2, "contradict"),
    ],
)
def test_bad_commands_fail_clearly(app: Flask, args: list[str], exit_code: int, message: str) -> None:
    result = _run(app, *args)
    assert result.exit_code == exit_code
    assert message in result.output


def test_rotating_a_revoked_key_fails(db_app: Flask) -> None:
    key_id = _json(_run(db_app, "keys", "create", "--name", "a"))["id"]
    _run(db_app, "keys", "revoke", key_id)
    result = _run(db_app, "keys", "rotate", key_id)
    assert result.exit_code == 1 and "revoked" in result.output


def test_db_upgrade_brings_an_empty_database_to_the_current_schema(upstream, tmp_path, database_url: str) -> None:
    settings = settings_for(upstream, tmp_path, database_url=database_url)
    built: list[Flask] = []

    def build() -> Flask:  # inside the command line, as `flask --app wsgi` builds it
        if not built:
            built.append(create_app(settings))
        return built[0]

    runner, cli = CliRunner(), FlaskGroup(create_app=build)
    behind = runner.invoke(cli, ["db", "current", "--check"])
    assert behind.exit_code == 1 and "at empty" in behind.output and "NOT current" in behind.output
    refused = runner.invoke(cli, ["keys", "list"])
    assert refused.exit_code == 1 and "flask --app wsgi db upgrade" in refused.output

    upgraded = runner.invoke(cli, ["db", "upgrade"])
    assert upgraded.exit_code == 0 and f"upgraded from empty to {schema.head()}" in upgraded.output
    again = runner.invoke(cli, ["db", "upgrade"])
    assert again.exit_code == 0 and f"already at {schema.head()}" in again.output
    current = runner.invoke(cli, ["db", "current", "--check"])
    assert current.exit_code == 0 and "(current)" in current.output
    assert runner.invoke(cli, ["keys", "list"]).exit_code == 0
    built[0].extensions["gateway.store"].dispose()
    app = create_app(settings)  # and now the app starts
    app.extensions["gateway.store"].dispose()


def _operator_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_", "KEY_", "NODE_", "MASTER_", "JWT_", "FLASK_"))
    }
    env.update(
        {
            "AI_PROXY_ENV_FILE": str(tmp_path / "none.env"),
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "MASTER_API_KEY": CANARY_MASTER_KEY,
            "JWT_SECRET": CANARY_JWT_SECRET,
            **extra,
        }
    )
    return env


def _flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(120)
def test_the_operator_walkthrough_with_the_real_flask_command(tmp_path: Path) -> None:
    with postgres_schema() as database_url:  # PostgreSQL only: the in-process tests cover both databases
        _walkthrough(
            _operator_env(tmp_path, DATABASE_URL=database_url, NODE_ENV="production", MASTER_API_KEY="m" * 40, JWT_SECRET="j" * 40)
        )


def _walkthrough(env: dict[str, str]) -> None:
    # (That the app refuses to start on this database is tested in test_store and, under gunicorn, in e2e.)
    upgraded = _flask(env, "db", "upgrade")
    assert upgraded.returncode == 0 and "upgraded from empty to" in upgraded.stdout, upgraded.stderr
    created = _flask(env, "keys", "create", "--name", "web-app", "--ai-limit", "50 per 15 minutes")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["secret"]
    assert secret.startswith("aip_") and "shown only this once" in created.stderr and secret not in created.stderr
