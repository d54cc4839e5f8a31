"""Storage: DATABASE_URL, migrations from empty, idempotent upgrades, the start-up check.

Each test runs on a fresh SQLite file and on a fresh schema in the real PostgreSQL
(the ``database_url`` fixture).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from gateway import create_app
from gateway.config import ConfigError, Settings, load
from gateway.store import Store, database_url, schema
from gateway.store.audit import Actor
from gateway.store.tables import api_keys, audit_log, metadata, usage
from tests.conftest import settings_for


def _key_row(key_id: str = "key_0000000000000001") -> dict:
    return {
        "id": key_id,
        "name": "n",
        "prefix": "aip_abcdefgh",
        "secret_hash": key_id.ljust(64, "0"),
        "metadata": {"team": "web"},
        "created_at": datetime.now(UTC),
    }


@pytest.fixture
def store(database_url: str):
    store = Store(database_url_for(database_url), auto_upgrade=False)
    yield store
    store.dispose()


def database_url_for(raw: str):
    return database_url(Settings(database_url=raw))


def test_upgrade_from_empty_creates_the_tables_and_is_idempotent(store: Store) -> None:
    assert schema.current(store.engine) is None
    assert schema.upgrade(store.engine) == (None, schema.head())
    tables = set(inspect(store.engine).get_table_names())
    assert {"api_keys", "usage", "alembic_version"} <= tables
    with store.engine.begin() as connection:
        connection.execute(insert(api_keys).values(_key_row()))
    assert schema.upgrade(store.engine) == (schema.head(), schema.head())
    with store.engine.connect() as connection:
        rows = connection.execute(select(api_keys.c.id, api_keys.c["metadata"])).all()
    assert [tuple(row) for row in rows] == [("key_0000000000000001", {"team": "web"})]


def test_the_migrations_build_exactly_the_declared_tables(store: Store) -> None:
    schema.upgrade(store.engine)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_secret_hashes_are_unique(store: Store) -> None:
    schema.upgrade(store.engine)
    with store.engine.begin() as connection:
        connection.execute(insert(api_keys).values(_key_row("key_a")))
    duplicate = {**_key_row("key_b"), "secret_hash": _key_row("key_a")["secret_hash"]}
    with pytest.raises(Exception, match="(?i)unique|duplicate"), store.engine.begin() as connection:
        connection.execute(insert(api_keys).values(duplicate))


def test_a_key_change_survives_a_commit_by_another_connection_in_its_middle(store: Store) -> None:
    """A change reads the key, then writes it and its audit row; the usage writer commits all
    the time. On SQLite a deferred transaction that read before another commit could no longer
    write ("database is locked"), so it takes the write lock at BEGIN; PostgreSQL locks the row."""
    schema.upgrade(store.engine)
    with store.engine.begin() as connection:
        connection.execute(insert(api_keys).values(_key_row()))
    sqlite = store.url.get_backend_name() == "sqlite"
    other = create_engine(store.url, connect_args={"timeout": 0} if sqlite else {})  # another process, no waiting
    outcomes: list[str] = []

    def commit_elsewhere(connection, cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM api_keys" in statement and not outcomes:
            try:
                with other.begin() as elsewhere:
                    elsewhere.execute(
                        insert(usage).values(
                            ts=datetime.now(UTC), key_id="k", operation="chat", status=200, tokens_estimated=False, duration_ms=1.0
                        )
                    )
                outcomes.append("committed")
            except OperationalError:
                outcomes.append("waits for the change")  # SQLite: the change holds the write lock

    event.listen(store.engine, "after_cursor_execute", commit_elsewhere)
    try:
        actor = Actor(name="master", via="api_key", address="127.0.0.1")
        changed = store.keys.update("key_0000000000000001", {"name": "changed"}, actor=actor, now=datetime.now(UTC))
    finally:
        event.remove(store.engine, "after_cursor_execute", commit_elsewhere)
        other.dispose()
    assert outcomes == ["waits for the change" if sqlite else "committed"]
    assert changed is not None and changed.name == "changed"
    with store.engine.connect() as connection:
        assert connection.execute(select(audit_log.c.action, audit_log.c.after)).all() == [("update", {"name": "changed"})]


def test_times_come_back_aware_utc(store: Store) -> None:
    schema.upgrade(store.engine)
    created = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    with store.engine.begin() as connection:
        connection.execute(insert(api_keys).values({**_key_row(), "created_at": created}))
        stored = connection.execute(select(api_keys.c.created_at)).scalar_one()
    assert stored == created and stored.tzinfo is not None and stored.utcoffset() == timedelta(0)


def test_naive_times_are_refused(store: Store) -> None:
    schema.upgrade(store.engine)
    with pytest.raises(Exception, match="naive"), store.engine.begin() as connection:
        connection.execute(
            insert(usage).values(ts=datetime.now(), key_id="k", operation="chat", status=200, tokens_estimated=False, duration_ms=1.0)
        )


def test_an_empty_database_is_refused_with_the_upgrade_command(store: Store) -> None:
    with pytest.raises(schema.SchemaError) as caught:
        store.prepare()
    message = str(caught.value)
    assert "flask --app wsgi db upgrade" in message and "\n" not in message


def test_a_database_newer_than_the_code_is_refused(store: Store) -> None:
    schema.upgrade(store.engine)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(schema.SchemaError, match="newer than this gateway"):
        store.prepare()


def test_an_upgrade_never_touches_a_database_from_a_newer_gateway(store: Store) -> None:
    schema.upgrade(store.engine)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(schema.SchemaError, match="newer than this gateway"):
        schema.upgrade(store.engine)
    assert schema.current(store.engine) == "9999_future"


def test_the_app_refuses_to_start_on_a_database_that_is_behind(upstream, tmp_path, database_url: str) -> None:
    with pytest.raises(schema.SchemaError, match="db upgrade"):
        create_app(settings_for(upstream, tmp_path, database_url=database_url))


def test_production_never_upgrades_a_configured_database_itself(upstream, tmp_path) -> None:
    with pytest.raises(schema.SchemaError, match="db upgrade"):
        create_app(
            settings_for(
                upstream,
                tmp_path,
                node_env="production",
                master_api_key="m" * 40,
                jwt_secret="j" * 40,
                database_url=f"sqlite:///{tmp_path}/configured.db",
            )
        )


def test_development_upgrades_the_default_sqlite_file_on_first_start(upstream, tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger="gateway")
    app = create_app(settings_for(upstream, tmp_path))
    path = tmp_path / "instance" / "gateway.db"
    assert path.exists()
    assert schema.current(app.extensions["gateway.store"].engine) == schema.head()
    app.extensions["gateway.store"].dispose()
    assert "upgraded to schema" in caplog.text
    caplog.clear()
    again = create_app(settings_for(upstream, tmp_path))  # the second start changes nothing
    again.extensions["gateway.store"].dispose()
    assert "upgraded" not in caplog.text


def test_workers_starting_together_upgrade_the_file_once(tmp_path) -> None:
    path = tmp_path / "gateway.db"
    stores = [Store(make_url(f"sqlite:///{path}"), auto_upgrade=True) for _ in range(8)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda s=s: results.append(schema.upgrade_locked(s.engine, path))) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    for store in stores:
        store.dispose()


def test_an_unreachable_database_is_one_clear_line() -> None:
    store = Store(database_url_for("postgresql://nobody:hunter2-secret@127.0.0.1:1/none"), auto_upgrade=False)
    with pytest.raises(schema.SchemaError) as caught:
        store.prepare()
    assert "hunter2-secret" not in str(caught.value) and "\n" not in str(caught.value)
    assert "hunter2-secret" not in store.description


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgresql://u:p@db:5432/gw", "postgresql+psycopg://u:***@db:5432/gw"),
        ("postgres://u@db/gw", "postgresql+psycopg://u@db/gw"),
        ("postgresql+psycopg://u@db/gw", "postgresql+psycopg://u@db/gw"),
        ("sqlite:////var/lib/gw.db", "sqlite:////var/lib/gw.db"),
    ],
)
def test_database_url_names_the_driver(raw: str, expected: str) -> None:
    assert database_url_for(raw).render_as_string(hide_password=True) == expected


def test_the_default_database_is_a_file_in_the_instance_folder(tmp_path) -> None:
    url = database_url(Settings(instance_path=str(tmp_path)))
    assert url.get_backend_name() == "sqlite" and url.database == str(tmp_path / "gateway.db")


@pytest.mark.parametrize("raw", ["mysql://u:secret-pw@h/db", "redis://h", "/tmp/file.db"])
def test_other_database_urls_are_refused_without_showing_them(raw: str, tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={"DATABASE_URL": raw}, env_file="/nonexistent", overrides={"instance_path": str(tmp_path)})
    assert "DATABASE_URL" in str(caught.value) and raw not in str(caught.value)


@pytest.mark.parametrize(("name", "value"), [("KEY_CACHE_SECONDS", "-1"), ("KEY_CACHE_SECONDS", "301"), ("KEY_CACHE_SECONDS", "soon")])
def test_bad_key_cache_seconds_is_refused(name: str, value: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match=name):
        load(environ={name: value}, env_file="/nonexistent", overrides={"instance_path": str(tmp_path)})


def test_a_short_pepper_is_refused_in_production(tmp_path) -> None:
    environ = {"NODE_ENV": "production", "MASTER_API_KEY": "m" * 40, "JWT_SECRET": "j" * 40, "KEY_HASH_PEPPER": "short-pepper-value"}
    with pytest.raises(ConfigError) as caught:
        load(environ=environ, env_file="/nonexistent", overrides={"instance_path": str(tmp_path)})
    assert "KEY_HASH_PEPPER" in str(caught.value) and "short-pepper-value" not in str(caught.value)


def test_sqlite_connections_keep_a_small_page_cache(tmp_path) -> None:
    """A worker's memory must not grow with the usage table (SQLite's default is 2 MiB per connection)."""
    from gateway.store import SQLITE_CACHE_KIB

    store = Store(database_url_for(f"sqlite:///{tmp_path}/g.db"), auto_upgrade=False)
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert SQLITE_CACHE_KIB <= 1024
    finally:
        store.dispose()
