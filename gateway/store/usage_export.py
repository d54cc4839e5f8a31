"""The raw ``usage`` rows as CSV, streamed: what ``GET /admin/usage?format=csv`` sends.

Contract:

- One line per usage row matching a :class:`~gateway.store.usage_report.UsageFilter`,
  ordered by time then id, after a header line naming every column of the ``usage``
  table in its order (:data:`COLUMNS`: a column added by a migration is exported too).
- Memory stays bounded whatever the number of rows: the rows are read in chunks of
  :data:`CHUNK_ROWS` (a server-side cursor on PostgreSQL; SQLite's cursor steps through
  the result as it is read) and each chunk is encoded and handed on before the next is read.
- RFC 4180 (comma, double quotes, CRLF), UTF-8. Times are ISO 8601 in UTC; booleans
  ``true``/``false``; a null is an empty cell.
- Safe to open in a spreadsheet: a text cell starting with ``=``, ``+``, ``-``, ``@``, a
  tab or a carriage return (a model name is whatever a client sent) gets a leading ``'``,
  so it is shown as text, never run as a formula (OWASP's CSV injection advice). Numbers
  are written as they are.

:func:`csv_lines` is pure; :func:`read_chunks` is the only database access.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from gateway.store.tables import usage
from gateway.store.usage_report import UsageFilter

COLUMNS: tuple[str, ...] = tuple(column.name for column in usage.columns)
CHUNK_ROWS = 500  # rows per read: few round trips, and only one chunk in memory at a time
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """One value as a CSV cell (see the module): text made formula-safe, numbers as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_lines(rows: Iterable[Sequence[Any]]) -> str:
    """``rows`` (values in :data:`COLUMNS` order) as CSV lines, each ending in CRLF."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows([cell(value) for value in row] for row in rows)
    return buffer.getvalue()


def header_line() -> str:
    return csv_lines([COLUMNS])


Chunks = Generator[Sequence[Sequence[Any]], None, None]


def read_chunks(engine: Engine, where: UsageFilter, *, chunk_rows: int = CHUNK_ROWS) -> Chunks:
    """The matching rows, ``chunk_rows`` at a time, on one connection held until the
    generator ends or is closed (a client that goes away closes it).

    :raises sqlalchemy.exc.SQLAlchemyError: when the database fails (at the first
        ``next()`` for a connection or query error).
    """
    query = select(*(usage.c[name] for name in COLUMNS)).where(*where.conditions()).order_by(usage.c.ts, usage.c.id)
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(query)
        try:
            yield from result.partitions()
        finally:
            result.close()


def encoded(first: Sequence[Sequence[Any]] | None, rest: Chunks) -> Iterator[bytes]:
    """The header and every chunk of rows as UTF-8 CSV, one ``bytes`` per chunk.

    ``first`` is the chunk already read (so a database error came before any byte was
    sent), ``None`` when there were no rows; ``rest`` is closed when this generator is.
    """
    try:
        yield header_line().encode()
        if first is not None:
            yield csv_lines(first).encode()
        for chunk in rest:
            yield csv_lines(chunk).encode()
    finally:
        rest.close()
