"""Operator commands through Flask's CLI: ``flask --app wsgi keys ...`` and ``db ...``.

``keys`` runs the same actions as ``/admin/keys`` (:class:`gateway.auth.management.KeyAdmin`)
on the database the app is configured with; each command first makes sure the schema
is current; a change is audited as made by the OS user the command runs as, from ``cli``.
``db upgrade`` applies migrations, ``db current`` shows the schema version.

Output is JSON (``keys list`` prints a table unless ``--json``). A secret is printed
once, by ``keys create`` and ``keys rotate``, on standard output only.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy.exc import SQLAlchemyError

from gateway import extensions
from gateway.auth.keys import MASTER_KEY_ID, utcnow
from gateway.auth.management import KeyAdmin, KeyNotFound, KeyRevoked
from gateway.store import Store, schema
from gateway.store.audit import Actor
from gateway.store.key_fields import BUDGET_FIELDS, BUDGET_PERIODS, BUDGET_RESETS, LIMIT_FIELDS, TOKEN_FIELDS, FieldError
from gateway.store.keys import KeyRecord

keys_cli = AppGroup("keys", help="Manage API keys (the same actions as /admin/keys).")
db_cli = AppGroup("db", help="The database schema: upgrade, current, revision.")

# field name -> command-line option, for the options shared by create and update
OPTIONS: dict[str, str] = {
    "name": "--name",
    "metadata": "--metadata",
    "expires_at": "--expires-at",
    "allowed_models": "--allowed-model",
    "rate_limit_general": "--general-limit",
    "rate_limit_ai": "--ai-limit",
    "tokens_per_minute": "--tokens-per-minute",
    "tokens_per_day": "--tokens-per-day",
    "budget_tokens_day": "--budget-day",
    "budget_tokens_month": "--budget-month",
    "max_tokens_cap": "--max-tokens",
    "budget_usd": "--budget-usd",
    "budget_period": "--budget-period",
    "budget_reset": "--budget-reset",
}
CLEARABLE = ("expires_at", "allowed_models", *LIMIT_FIELDS, *TOKEN_FIELDS, *BUDGET_FIELDS, "metadata")
CLI_ADDRESS = "cli"  # where a change made by a command comes from, in the audit log


def cli_actor() -> Actor:
    """The audit log's "who" for a command: the OS user it runs as (by uid, not ``$USER``)."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (a container's arbitrary uid)
        name = f"uid {os.geteuid()}"
    return Actor(name=name, via="cli", address=CLI_ADDRESS)


def _store() -> Store:
    store: Store = extensions.store()
    return store


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


@contextmanager
def _key_admin() -> Iterator[KeyAdmin]:
    """The app's :class:`KeyAdmin`, with database and field errors turned into CLI errors."""
    try:
        _store().prepare()
    except schema.SchemaError as error:
        raise click.ClickException(str(error)) from None
    try:
        admin: KeyAdmin = extensions.key_admin()
        yield admin
    except FieldError as error:
        raise click.BadParameter(str(error), param_hint=OPTIONS.get(error.param, error.param)) from None
    except KeyNotFound as error:
        raise click.ClickException(f"no API key has the id {error}") from None
    except KeyRevoked as error:
        raise click.ClickException(f"{error} is revoked; create a new key instead") from None
    except SQLAlchemyError as error:
        raise click.ClickException(f"database unavailable ({type(error).__name__})") from None


def _shown(record: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    shown = record.public(utcnow())
    if secret is not None:
        shown["secret"] = secret
    return shown


def _key_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The settable fields as options (see :mod:`gateway.store.key_fields` for what is valid)."""
    decorators = [
        click.option("--metadata", help='Free-form JSON object, e.g. \'{"team": "web"}\'.'),
        click.option("--expires-at", help="ISO 8601 time with a timezone, e.g. 2030-01-31T00:00:00Z."),
        click.option(
            "--allowed-model", "allowed_models", multiple=True, help="A model name or glob pattern (repeatable). Default: every model."
        ),
        click.option("--general-limit", "rate_limit_general", help="General quota, e.g. '100 per 15 minutes'."),
        click.option("--ai-limit", "rate_limit_ai", help="AI quota, e.g. '50 per 15 minutes'."),
        click.option("--tokens-per-minute", type=int),
        click.option("--tokens-per-day", type=int),
        click.option("--budget-day", "budget_tokens_day", type=int, help="Token budget per day."),
        click.option("--budget-month", "budget_tokens_month", type=int, help="Token budget per month."),
        click.option("--max-tokens", "max_tokens_cap", type=int, help="Cap on a request's max_tokens."),
        click.option("--budget-usd", help="Budget in USD per period, e.g. 0.01 or 25.50."),
        click.option("--budget-period", type=click.Choice(BUDGET_PERIODS), help="The budget's period (default: month)."),
        click.option(
            "--budget-reset",
            type=click.Choice(BUDGET_RESETS),
            help="calendar: UTC days, weeks from Monday, months from the 1st (default); rolling: from the key's creation.",
        ),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def _document(options: dict[str, Any]) -> dict[str, Any]:
    """The options that were given, as the admin API's JSON fields."""
    document: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or value == ():
            continue
        if name == "metadata":
            try:
                value = json.loads(value)
            except ValueError:
                raise click.BadParameter("not valid JSON", param_hint="--metadata") from None
        elif name == "allowed_models":
            value = list(value)
        document[name] = value
    return document


@keys_cli.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. web-app.")
@_key_options
def create_key(**options: Any) -> None:
    """Create an API key and print it with its secret (shown this once)."""
    with _key_admin() as admin:
        record, secret = admin.create(_document(options), actor=cli_actor())
    _echo_json(_shown(record, secret))
    click.echo("The secret is shown only this once: store it now.", err=True)


@keys_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_keys(as_json: bool) -> None:
    """List API keys (never their secrets)."""
    with _key_admin() as admin:
        records = admin.list()
    shown = [_shown(record) for record in records]
    if as_json:
        _echo_json(shown)
        return
    columns = ("id", "name", "prefix", "status", "created_at", "expires_at")
    rows = [columns, *[tuple(str(item[c] or "-") for c in columns) for item in shown]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@keys_cli.command("show")
@click.argument("key_id")
def show_key(key_id: str) -> None:
    """Show one API key."""
    with _key_admin() as admin:
        _echo_json(_shown(admin.get(key_id)))


@keys_cli.command("update")
@click.argument("key_id")
@click.option("--name", help="A new name.")
@_key_options
@click.option("--clear", multiple=True, type=click.Choice(CLEARABLE), help="Reset a field to the gateway's default (repeatable).")
def update_key(key_id: str, clear: tuple[str, ...], **options: Any) -> None:
    """Change an API key's fields; --clear FIELD resets one to the default."""
    document = _document(options)
    for name in clear:
        if name in document:
            raise click.UsageError(f"{OPTIONS[name]} and --clear {name} contradict each other")
        document[name] = None
    if not document:
        raise click.UsageError("nothing to change: give at least one option")
    with _key_admin() as admin:
        _echo_json(_shown(admin.update(key_id, document, actor=cli_actor())))


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke an API key (it stops working within KEY_CACHE_SECONDS everywhere)."""
    if key_id == MASTER_KEY_ID:
        raise click.UsageError("the master key is configuration (MASTER_API_KEY), not a managed key")
    with _key_admin() as admin:
        _echo_json(_shown(admin.revoke(key_id, actor=cli_actor())))


@keys_cli.command("rotate")
@click.argument("key_id")
def rotate_key(key_id: str) -> None:
    """Give an API key a new secret (same id and settings) and print it once."""
    with _key_admin() as admin:
        record, secret = admin.rotate(key_id, actor=cli_actor())
    _echo_json(_shown(record, secret))
    click.echo("The old secret stops working within KEY_CACHE_SECONDS; the new one is shown only this once.", err=True)


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (safe to repeat; migrations never drop keys or usage)."""
    store = _store()
    try:
        before, after = schema.upgrade(store.engine)
    except schema.SchemaError as error:
        raise click.ClickException(str(error)) from None
    if before == after:
        click.echo(f"{store.description}: already at {after}")
    else:
        click.echo(f"{store.description}: upgraded from {before or 'empty'} to {after}")


@db_cli.command("current")
@click.option("--check", is_flag=True, help="Exit with status 1 unless the schema is current.")
def db_current(check: bool) -> None:
    """Show the database's schema version and the one this code expects."""
    store = _store()
    try:
        found = schema.current(store.engine)
    except schema.SchemaError as error:
        raise click.ClickException(str(error)) from None
    expected = schema.head()
    state = "current" if found == expected else "NOT current: run `flask --app wsgi db upgrade`"
    click.echo(f"{store.description}: at {found or 'empty'}, code expects {expected} ({state})")
    if check and found != expected:
        sys.exit(1)


@db_cli.command("revision")
@click.option("-m", "--message", required=True, help="What the migration does.")
@click.option("--empty", is_flag=True, help="Write an empty migration instead of comparing the tables.")
def db_revision(message: str, empty: bool) -> None:
    """(Developers) write a new migration from the difference between tables.py and the database."""
    from alembic import command

    store = _store()
    with store.engine.begin() as connection:
        config = schema.alembic_config()
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=not empty)


def init_app(app: Flask) -> None:
    app.cli.add_command(keys_cli)
    app.cli.add_command(db_cli)
