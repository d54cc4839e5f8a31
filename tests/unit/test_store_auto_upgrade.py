"""The default database upgrades itself at start in production too (issue 12, item 2):
deploying the original contract (set the variables, start gunicorn) must give a gateway."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from gateway import create_app
from gateway.config import Settings
from gateway.store import SchemaError, Store, schema
from tests.conftest import settings_for

PRODUCTION = {"node_env": "production", "master_api_key": "m" * 40, "jwt_secret": "j" * 40}


def test_production_upgrades_the_default_sqlite_file_and_says_so(upstream, tmp_path, capsys) -> None:
    app = create_app(settings_for(upstream, tmp_path, **PRODUCTION))
    store = app.extensions["gateway.store"]
    assert schema.current(store.engine) == schema.head()
    store.dispose()
    assert (tmp_path / "instance" / "gateway.db").exists()
    logged = capsys.readouterr().err  # the gateway's JSON log lines
    assert "upgraded to schema" in logged and "automatically" in logged


def test_a_configured_database_upgrades_itself_only_when_asked(upstream, tmp_path, database_url: str, capsys) -> None:
    with pytest.raises(schema.SchemaError, match="db upgrade"):
        create_app(settings_for(upstream, tmp_path, database_url=database_url, **PRODUCTION))
    capsys.readouterr()
    app = create_app(settings_for(upstream, tmp_path, database_url=database_url, database_auto_upgrade=True, **PRODUCTION))
    store = app.extensions["gateway.store"]
    assert schema.current(store.engine) == schema.head()
    store.dispose()
    assert "upgraded to schema" in capsys.readouterr().err


def test_database_auto_upgrade_is_read_from_the_environment(tmp_path) -> None:
    from gateway.config import load

    settings = load(
        environ={"DATABASE_AUTO_UPGRADE": "true"}, env_file=str(tmp_path / "none"), overrides={"instance_path": str(tmp_path)}
    )
    assert settings.database_auto_upgrade is True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a check as another user")
@pytest.mark.parametrize("case", ["root-owned-folder", "unreachable-parent"])
def test_an_instance_folder_the_user_cannot_write_is_one_clear_line(tmp_path, case: str) -> None:
    # The Docker case: a host folder bind-mounted at /app/instance, owned by root, while the
    # gateway runs as uid 10001. Here: a folder owned by root, the check run by a forked
    # child that has become nobody (root itself may write anywhere). tmp_path is root's own
    # (mode 0700): nobody cannot even look into it.
    if case == "root-owned-folder":
        base = Path(tempfile.mkdtemp(prefix="instance-", dir="/tmp"))
        base.chmod(0o755)
        instance = base / "instance"
    else:
        base, instance = tmp_path, tmp_path / "instance"
    instance.mkdir(mode=0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        message = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            store = Store.from_settings(Settings(node_env="production", instance_path=str(instance)))
            try:
                store.prepare()
            except SchemaError as error:
                message = str(error)
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            message = f"unexpected {type(error).__name__}: {error}"
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    if case == "root-owned-folder":
        shutil.rmtree(base)
    assert message.startswith(f"cannot write to {instance} as uid 65534"), message
    assert "\n" not in message and "INSTANCE_PATH" in message
