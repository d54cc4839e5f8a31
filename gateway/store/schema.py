"""Schema versions: Alembic, configured in code.

There is no ``alembic.ini``: the database URL comes from :mod:`gateway.config` (the
only reader of the environment), and the migrations run on a connection the
gateway opened, passed to ``migrations/env.py`` through ``Config.attributes``.
Operators use ``flask --app wsgi db upgrade`` / ``db current``; developers write
new revisions with ``flask --app wsgi db revision -m "..."``.

Upgrades run in one transaction (PostgreSQL's DDL is transactional, and the SQLite
engine emits its own ``BEGIN``), so a failed upgrade leaves the previous schema.
"""

from __future__ import annotations

import fcntl
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported where it is used: importing the gateway (gunicorn.conf.py does,
# in the master) stays light, and the scripts are read once per process.

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
UPGRADE_HINT = "run `flask --app wsgi db upgrade`"


class SchemaError(RuntimeError):
    """The database cannot be used as it is; the message is one line, without secrets."""


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The revision the code expects."""
    heads = _scripts().get_heads()
    if len(heads) != 1:
        raise SchemaError(f"the migrations have {len(heads)} heads; merge them")
    return heads[0]


def current(engine: Engine) -> str | None:
    """The database's revision, or ``None`` when it has never been migrated.

    :raises SchemaError: the database cannot be reached.
    """
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
    except SQLAlchemyError as error:
        raise SchemaError(f"cannot read the database schema version ({type(error).__name__})") from None
    return heads[0] if heads else None


def _refuse_unknown(found: str | None, expected: str) -> None:
    """:raises SchemaError: ``found`` is a revision these migrations do not know (a newer gateway's)."""
    if found is not None and found not in {script.revision for script in _scripts().walk_revisions()}:
        raise SchemaError(
            f"the database schema {found} is newer than this gateway knows (it expects {expected}); deploy the newer gateway"
        )


def require_current(engine: Engine) -> None:
    """:raises SchemaError: unless the database is exactly at :func:`head`."""
    expected = head()
    found = current(engine)
    if found == expected:
        return
    if found is None:
        raise SchemaError(f"the database has no schema yet (needs {expected}): {UPGRADE_HINT}")
    _refuse_unknown(found, expected)
    raise SchemaError(f"the database schema is behind (at {found}, needs {expected}): {UPGRADE_HINT}")


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply every pending migration; return the revisions before and after.

    Idempotent: at the head it changes nothing. Migrations only add: none drops a
    table or a column holding keys or usage.

    :raises SchemaError: the database cannot be reached or a migration failed.
    """
    from alembic import command

    before = current(engine)
    _refuse_unknown(before, head())
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as error:
        raise SchemaError(f"the upgrade failed and was rolled back ({type(error).__name__})") from None
    return before, current(engine) or ""


def upgrade_locked(engine: Engine, database_file: Path) -> bool:
    """Upgrade a SQLite file once even when several processes start together.

    An exclusive lock on ``<file>.lock`` serialises them, and the version is read
    only under it: a fresh file being created and switched to WAL by one process
    cannot be read by another. Returns whether this process applied a migration.
    """
    database_file.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database_file}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if current(engine) == head():
                return False
            upgrade(engine)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
