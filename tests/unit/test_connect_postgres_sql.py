"""The PostgreSQL connectors' pure parts: polling queries, upsert SQL, row conversion, type guesses."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import orjson
import pytest

from tidal.connect.postgres_sink import _reason, delete_sql, infer_columns, upsert_sql
from tidal.connect.postgres_source import build_query, row_json


def text(q) -> str:
    return q.as_string(None)


def test_incrementing_starts_from_the_first_row_then_after_the_last_id():
    q, p = build_query("orders", "incrementing", "id", None, None, None, 100, 0)
    assert text(q) == 'SELECT * FROM "orders" ORDER BY "id" LIMIT 100' and p == {}
    q, p = build_query("s.orders", "incrementing", "id", None, None, {"id": 9}, 100, 0)
    assert text(q) == 'SELECT * FROM "s"."orders" WHERE "id" > %(id)s ORDER BY "id" LIMIT 100' and p == {"id": 9}


def test_timestamp_mode_orders_ties_and_bounds_by_the_delay():
    q, p = build_query("t", "timestamp", None, "ts", None, {"ts": "2024-01-01", "n": 3}, 50, 2.5)
    assert text(q) == ('SELECT * FROM "t" WHERE "ts" > %(ts)s AND "ts" < now() - %(delay)s * interval \'1 second\' '
                       'ORDER BY "ts", ctid LIMIT 50')
    assert p == {"delay": 2.5, "ts": "2024-01-01"}
    # the rest of one timestamp, no limit, ties ordered by the key column
    q, _ = build_query("t", "timestamp", None, "ts", "k", {"ts": "2024-01-01", "group": True}, None, 0)
    assert text(q).startswith('SELECT * FROM "t" WHERE "ts" = %(ts)s AND') and text(q).endswith('ORDER BY "ts", "k"')


def test_timestamp_incrementing_compares_the_pair():
    q, p = build_query("t", "timestamp+incrementing", "id", "ts", None, None, 10, 0)
    assert text(q) == ('SELECT * FROM "t" WHERE "ts" < now() - %(delay)s * interval \'1 second\' '
                       'ORDER BY "ts", "id" LIMIT 10')
    with pytest.raises(ValueError, match="mode must be"):
        build_query("t", "bulk", "id", "ts", None, None, 10, 0)


def test_identifiers_are_quoted():
    q, _ = build_query('we"ird', "incrementing", "my id", None, None, {"id": 1}, 1, 0)
    assert text(q) == 'SELECT * FROM "we""ird" WHERE "my id" > %(id)s ORDER BY "my id" LIMIT 1'


def test_rows_become_json_with_numbers_iso_strings_and_base64():
    u = uuid.UUID(int=1)
    row = (Decimal("3"), Decimal("2.50"), dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
           dt.date(2024, 1, 2), u, b"\xff", dt.timedelta(minutes=1), None, {"a": [1]})
    names = ["i", "d", "ts", "day", "u", "b", "iv", "n", "j"]
    assert orjson.loads(row_json(names, row)) == {
        "i": 3, "d": 2.5, "ts": "2024-01-02T03:04:05.000006+00:00", "day": "2024-01-02", "u": str(u),
        "b": "/w==", "iv": 60.0, "n": None, "j": {"a": [1]}}
    with pytest.raises(TypeError):
        row_json(["x"], (Decimal("NaN"),))
    with pytest.raises(TypeError):
        row_json(["x"], (object(),))


def test_upsert_updates_the_other_columns_or_does_nothing():
    assert text(upsert_sql("t", ["id"], "id", "st")).endswith('ON CONFLICT ("id") DO NOTHING')
    assert 'DO UPDATE SET "a" = EXCLUDED."a", "b" = EXCLUDED."b"' in text(upsert_sql("t", ["a", "id", "b"], "id", "st"))
    assert text(delete_sql("t", "id", "st")) == (
        'DELETE FROM "t" t USING (SELECT DISTINCT ON ("id") "id", tidal_del FROM "st" ORDER BY "id", tidal_seq DESC) s '
        'WHERE s.tidal_del AND t."id" = s."id"')


def test_column_types_are_guessed_from_all_the_values():
    assert infer_columns([{"a": None, "b": 1, "c": "x"}, {"a": None, "b": True, "c": 2}]) == [
        ("a", "text"), ("b", "jsonb"), ("c", "jsonb")]


def test_refusal_reasons_are_the_sqlstate_names():
    import psycopg

    assert _reason(psycopg.errors.CheckViolation()) == "check_violation"
    assert _reason(psycopg.errors.InvalidTextRepresentation()) == "invalid_text_representation"
