"""Storage for managed keys and usage: SQLAlchemy Core over SQLite or PostgreSQL.

``DATABASE_URL`` chooses the database:

- empty (the default): the SQLite file ``<INSTANCE_PATH>/gateway.db``, zero set-up;
- ``postgresql://user:password@host:5432/db`` (or ``postgres://``): PostgreSQL through
  psycopg 3 (the URL is rewritten to SQLAlchemy's ``postgresql+psycopg://``);
- ``sqlite:///path/to/file.db``: another SQLite file.

The schema is versioned by Alembic (:mod:`gateway.store.schema`). The default
SQLite file upgrades itself at start, in every mode (under a file lock, once, before
gunicorn forks): deploying means setting variables and starting gunicorn, nothing
more. A configured ``DATABASE_URL`` is upgraded by the operator on purpose (several
instances may share it, and a migration is a release step): the app refuses to run
against one that is behind, with one line that says to run
``flask --app wsgi db upgrade``, unless ``DATABASE_AUTO_UPGRADE=true`` (one instance).
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from typing import Any

import click
from flask import Flask
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from gateway import extensions
from gateway.config import Settings
from gateway.store import schema
from gateway.store.audit import AuditLog
from gateway.store.keys import WRITE_LOCK_OPTION, KeyStore
from gateway.store.schema import SchemaError
from gateway.store.usage_report import UsageReport

__all__ = ["KeyStore", "SchemaError", "Store", "database_url", "init_app"]

log = logging.getLogger(__name__)

DEFAULT_SQLITE_NAME = "gateway.db"
SQLITE_BUSY_TIMEOUT_SECONDS = 15
# SQLite's page cache is per connection, 2 MiB by default, and fills as the usage table grows:
# with the pool's connections in every worker, that was most of a worker's memory growth in a
# long soak (docs/soak.md). Reads here are indexed and small; the OS keeps the file cached anyway.
SQLITE_CACHE_KIB = 512
SQLITE_POOL_SIZE = 4
PG_CONNECT_TIMEOUT_SECONDS = 5


def database_url(settings: Settings) -> URL:
    """The SQLAlchemy URL for ``DATABASE_URL`` (see the module docstring)."""
    raw = settings.database_url
    if not raw:
        return URL.create("sqlite", database=str(Path(settings.instance_path) / DEFAULT_SQLITE_NAME))
    for plain in ("postgresql://", "postgres://"):
        if raw.startswith(plain):
            raw = "postgresql+psycopg://" + raw[len(plain) :]
    return make_url(raw)


def _sqlite_engine(url: URL) -> Engine:
    if url.database:
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # Store.prepare says so, in one line (or the first connection fails)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        pool_size=SQLITE_POOL_SIZE,  # one writer at a time anyway; overflow connections are closed after use
        max_overflow=8,
    )

    # The sqlite3 driver's legacy transaction mode does not BEGIN before DDL or
    # SELECT; take over BEGIN so migrations are atomic and reads are consistent
    # (SQLAlchemy's documented recipe for Python < 3.12).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer, so several workers can share the file.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # negative: KiB, not pages
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A transaction that reads and then writes takes the write lock at once (keys.WRITE_LOCK_OPTION).
        immediate = connection.get_execution_options().get(WRITE_LOCK_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgresql_engine(url: URL) -> Engine:
    return create_engine(
        url,
        pool_pre_ping=True,  # a restarted server costs one failed ping, not a failed request
        pool_size=5,
        max_overflow=10,
        pool_timeout=5,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS},
    )


def _forget_pool(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.dispose(close=False)


class Store:
    """One database per app: its engine, the key table's operations, the usage reports and the audit log.

    Engines are created in the process that uses them (gunicorn workers build the
    app after the fork), so no connection is shared across a fork.
    """

    def __init__(self, url: URL, *, auto_upgrade: bool, lock_file: Path | None = None) -> None:
        """:param lock_file: serialises automatic upgrades on this host; by default the
        SQLite file's own ``<file>.lock``."""
        self.url = url
        self.auto_upgrade = auto_upgrade
        self.lock_file = lock_file or Path(url.database or DEFAULT_SQLITE_NAME)
        self.engine = _sqlite_engine(url) if url.get_backend_name() == "sqlite" else _postgresql_engine(url)
        self.keys = KeyStore(self.engine)
        self.usage = UsageReport(self.engine)
        self.audit = AuditLog(self.engine)
        # A forked child (gunicorn with preload, or any fork) must open its own connections
        # and leave the parent's alone: SQLAlchemy's documented dispose(close=False).
        engine_ref = weakref.ref(self.engine)
        os.register_at_fork(after_in_child=lambda: _forget_pool(engine_ref))

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        # The zero-set-up default database upgrades itself; anything an operator
        # configured is upgraded by the operator, unless they opt in.
        url = database_url(settings)
        lock_file = None if url.get_backend_name() == "sqlite" else Path(settings.instance_path) / "database-upgrade"
        return cls(url, auto_upgrade=not settings.database_url or settings.database_auto_upgrade, lock_file=lock_file)

    @property
    def description(self) -> str:
        """The URL without its password, safe to log."""
        return self.url.render_as_string(hide_password=True)

    def prepare(self) -> None:
        """Make sure the schema is current: upgrade it (``auto_upgrade``), or refuse.

        :raises SchemaError: the database is behind (or ahead of) the code, unreachable,
            or (automatic upgrade) its folder cannot be written.
        """
        if self.auto_upgrade:
            try:
                upgraded = schema.upgrade_locked(self.engine, self.lock_file)
            except OSError as error:
                folder = self.lock_file.parent
                raise SchemaError(
                    f"cannot write to {folder} as uid {os.getuid()} ({error.strerror}): make it "
                    "writable by this user, or set INSTANCE_PATH or DATABASE_URL"
                ) from None
            if upgraded:
                log.info(
                    "database %s upgraded to schema %s automatically at start (the default SQLite file, "
                    "or DATABASE_AUTO_UPGRADE=true)",
                    self.description,
                    schema.head(),
                )
            return
        schema.require_current(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def init_app(app: Flask) -> None:
    """Create the app's :class:`Store`; check its schema unless a CLI command is loading the app.

    ``flask --app wsgi db upgrade`` must be able to load an app whose database is
    behind, so under the Flask CLI the check is left to the commands (every ``keys``
    command calls :meth:`Store.prepare` first).

    :raises SchemaError: outside the CLI, when the schema is not current.
    """
    store = Store.from_settings(app.config["GATEWAY"])
    app.extensions[extensions.STORE] = store
    if click.get_current_context(silent=True) is None:
        try:
            store.prepare()
        except SchemaError:
            store.dispose()
            raise
