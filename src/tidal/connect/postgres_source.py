"""PostgreSQL source: poll a table the way Kafka Connect's JDBC source connector does.

Three modes, each a query with ``LIMIT`` that one round trip answers:

- ``incrementing``: ``WHERE id > :last ORDER BY id``. Rows must get strictly increasing ids
  (a sequence or identity column) and are never updated. A row whose transaction commits
  after a row with a higher id was read is missed (the JDBC connector has the same limit).
- ``timestamp``: ``WHERE ts > :last AND ts < now() - delay ORDER BY ts``. Picks up inserts
  and updates (an ``updated_at`` column). A batch always ends on a whole timestamp, but a row
  committed *later* with the same timestamp as the last one read is missed (JDBC's caveat);
  ``timestamp_delay`` makes that unlikely, ``timestamp+incrementing`` rules it out for ids.
- ``timestamp+incrementing``: ``WHERE (ts, id) > (:last_ts, :last_id) AND ts < now() - delay
  ORDER BY ts, id``: exact, as long as a transaction commits within ``timestamp_delay`` of
  the timestamps it writes.

Each row becomes a JSON event (numeric → number, timestamps/dates/times/UUIDs → ISO
strings, bytea → base64, interval → seconds), keyed by ``key_column``. Its position is
``{"id": ...}``, ``{"ts": ..., "id": ...}`` or, in ``timestamp`` mode, ``{"ts": ..., "n": k}``
(the k-th row with that timestamp), unique per row as :class:`~tidal.connect.SourceRunner`
requires. A row that cannot be converted becomes a :class:`~tidal.connect.BadRecord`.

>>> print(build_query("orders", "incrementing", "id", None, None, {"id": 41}, 500, 0.0)[0].as_string(None))
SELECT * FROM "orders" WHERE "id" > %(id)s ORDER BY "id" LIMIT 500
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import time
import uuid
from decimal import Decimal
from typing import Any, Sequence

import orjson
import psycopg
from psycopg import sql
from psycopg.adapt import Loader

from tidal.connect.base import BadRecord, Source, SourceRecord, Unavailable

__all__ = ["PostgresSource", "MODES", "build_query", "row_json", "table_identifier", "DOWN_ERRORS"]

MODES = ("incrementing", "timestamp", "timestamp+incrementing")

# The server is down, restarting, or the connection broke: back off and reconnect.
DOWN_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)

_INT64 = 2 ** 63


def table_identifier(table: str) -> sql.Identifier:
    """``schema.table`` or ``table`` as a quoted identifier.

    >>> print(table_identifier("sales.orders").as_string(None))
    "sales"."orders"
    """
    return sql.Identifier(*table.split(".", 1))


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        if not o.is_finite():
            raise ValueError(f"numeric {o} has no JSON number")
        if o.as_tuple().exponent >= 0 and -_INT64 <= o < _INT64:
            return int(o)
        return float(o)
    if isinstance(o, (bytes, memoryview)):
        return base64.b64encode(o).decode()
    if isinstance(o, dt.timedelta):
        return o.total_seconds()
    if isinstance(o, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                      ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return str(o)
    raise TypeError(f"cannot convert {type(o).__name__} to JSON")


def row_json(names: Sequence[str], row: Sequence[Any]) -> bytes:
    """One row as a JSON object (raises for values that have no JSON form).

    >>> row_json(["id", "amount", "raw"], (7, Decimal("12.50"), b"\\x00\\x01"))
    b'{"id":7,"amount":12.5,"raw":"AAE="}'
    """
    return orjson.dumps(dict(zip(names, row)), default=_default)


def _jsonable(v: Any) -> Any:
    """A position value: what the row's column holds, as JSON (timestamps as ISO strings)."""
    if type(v) is int or type(v) is str:
        return v
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, Decimal):
        return _default(v)
    return v


class _JsonText(Loader):
    """json/jsonb columns stay the text the server sent: orjson writes it into the event as is."""

    def load(self, data: Any) -> orjson.Fragment:
        return orjson.Fragment(bytes(data))


def build_query(table: str, mode: str, id_column: str | None, ts_column: str | None, tiebreak: str | None,
                position: dict | None, limit: int | None, delay: float) -> tuple[sql.Composed, dict]:
    """The polling query for ``mode`` after ``position`` (None: from the first row) and its parameters.

    >>> q, p = build_query("t", "timestamp+incrementing", "id", "ts", None, {"ts": "2024-01-01T00:00:00", "id": 3}, 10, 5)
    >>> print(q.as_string(None))
    SELECT * FROM "t" WHERE ("ts", "id") > (%(ts)s, %(id)s) AND "ts" < now() - %(delay)s * interval '1 second' ORDER BY "ts", "id" LIMIT 10
    >>> p
    {'delay': 5, 'ts': '2024-01-01T00:00:00', 'id': 3}
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    where: list[sql.Composable] = []
    params: dict[str, Any] = {}
    idc = sql.Identifier(id_column) if id_column else None
    tsc = sql.Identifier(ts_column) if ts_column else None
    if mode == "incrementing":
        order = [idc]
        if position is not None:
            where.append(sql.SQL("{} > %(id)s").format(idc))
            params["id"] = position["id"]
    else:
        params["delay"] = delay
        if mode == "timestamp":
            order = [tsc, sql.Identifier(tiebreak) if tiebreak else sql.SQL("ctid")]
            if position is not None:
                op = "=" if position.get("group") else ">"
                where.append(sql.SQL("{} " + op + " %(ts)s").format(tsc))
                params["ts"] = position["ts"]
        else:
            order = [tsc, idc]
            if position is not None:
                where.append(sql.SQL("({}, {}) > (%(ts)s, %(id)s)").format(tsc, idc))
                params["ts"], params["id"] = position["ts"], position["id"]
        where.append(sql.SQL("{} < now() - %(delay)s * interval '1 second'").format(tsc))
    q = sql.SQL("SELECT * FROM {}").format(table_identifier(table))
    if where:
        q += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    q += sql.SQL(" ORDER BY ") + sql.SQL(", ").join(order)
    if limit is not None:
        q += sql.SQL(f" LIMIT {int(limit)}")
    return q, params


class PostgresSource(Source):
    """Poll ``table`` in ``mode`` (see the module) and produce each row keyed by ``key_column``.

    ``query_batch`` bounds the rows one query reads; a query that returned fewer waits
    ``poll_interval`` seconds before the next. ``timestamp_delay`` (seconds) leaves rows
    younger than that for a later poll, so transactions that commit late are not skipped.
    """

    kind = "postgres"

    def __init__(self, dsn: str, table: str, mode: str = "incrementing", *, id_column: str = "id",
                 timestamp_column: str = "updated_at", key_column: str | None = None, name: str | None = None,
                 query_batch: int = 1000, poll_interval: float = 1.0, timestamp_delay: float = 0.0,
                 connect_timeout: float = 5.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.dsn, self.table, self.mode = dsn, table, mode
        self.id_column = id_column if mode != "timestamp" else None
        self.timestamp_column = timestamp_column if mode != "incrementing" else None
        self.key_column = key_column
        self.name = name or f"pg-{table}"
        self.query_batch, self.poll_interval = query_batch, poll_interval
        self.timestamp_delay, self.connect_timeout = timestamp_delay, connect_timeout
        self._conn: psycopg.Connection | None = None
        self._position: dict | None = None
        self._next_query = 0.0

    def open(self, position: Any | None) -> None:
        self._position = position
        self._next_query = 0.0
        try:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                                         application_name=f"tidal {self.name}")
            for t in ("json", "jsonb"):
                self._conn.adapters.register_loader(t, _JsonText)
            cur = self._conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(table_identifier(self.table)))
        except DOWN_ERRORS as exc:
            self.close()
            raise Unavailable(str(exc).strip()) from exc
        names = [c.name for c in cur.description]
        for what, col in (("id", self.id_column), ("timestamp", self.timestamp_column), ("key", self.key_column)):
            if col is not None and col not in names:
                raise ValueError(f"{self.table} has no {what} column {col!r} (columns: {', '.join(names)})")

    def poll(self, max_records: int, timeout: float) -> list[SourceRecord | BadRecord]:
        wait = self._next_query - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            return []
        limit = max(1, min(self.query_batch, max_records))
        try:
            names, rows = self._fetch(self._position, limit)
            if self.mode == "timestamp" and len(rows) == limit:
                rows = self._whole_timestamps(names, rows)
        except DOWN_ERRORS as exc:
            self.close()
            raise Unavailable(str(exc).strip()) from exc
        if len(rows) < limit:
            self._next_query = time.monotonic() + self.poll_interval
        out = self._records(names, rows)
        if out:
            self._position = out[-1].position
        return out

    def _fetch(self, position: dict | None, limit: int | None) -> tuple[list[str], list[tuple]]:
        if self._conn is None:
            raise psycopg.OperationalError("not connected")
        q, params = build_query(self.table, self.mode, self.id_column, self.timestamp_column, self.key_column,
                                position, limit, self.timestamp_delay)
        cur = self._conn.execute(q, params)
        return [c.name for c in cur.description], cur.fetchall()

    def _whole_timestamps(self, names: list[str], rows: list[tuple]) -> list[tuple]:
        """A full batch in timestamp mode ends on a whole timestamp: drop the rows sharing the last
        one (the next query reads them), or read all of them when the batch is one timestamp."""
        ts = names.index(self.timestamp_column)
        last = rows[-1][ts]
        cut = len(rows)
        while cut and rows[cut - 1][ts] == last:
            cut -= 1
        if cut:
            return rows[:cut]
        return self._fetch({"ts": _jsonable(last), "group": True}, None)[1]

    def _records(self, names: list[str], rows: list[tuple]) -> list[SourceRecord | BadRecord]:
        idx = {n: i for i, n in enumerate(names)}
        ki = idx.get(self.key_column) if self.key_column else None
        ii = idx.get(self.id_column) if self.id_column else None
        ti = idx.get(self.timestamp_column) if self.timestamp_column else None
        out: list[SourceRecord | BadRecord] = []
        prev_ts, n = None, 0
        for row in rows:
            if ti is None:
                pos = {"id": _jsonable(row[ii])}
            elif ii is None:  # timestamp mode: the k-th row of its timestamp
                n = n + 1 if row[ti] == prev_ts else 1
                prev_ts = row[ti]
                pos = {"ts": _jsonable(row[ti]), "n": n}
            else:
                pos = {"ts": _jsonable(row[ti]), "id": _jsonable(row[ii])}
            key = None
            if ki is not None and row[ki] is not None:
                k = row[ki]
                key = bytes(k) if isinstance(k, (bytes, memoryview)) else str(_jsonable(k)).encode()
            try:
                out.append(SourceRecord(row_json(names, row), key, pos))
            except (TypeError, ValueError) as exc:  # orjson keeps _default's own error as the cause
                out.append(BadRecord(_raw(names, row), "unconvertible", f"{self.table}: {exc.__cause__ or exc}",
                                     key, pos))
        return out

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _raw(names: Sequence[str], row: Sequence[Any]) -> bytes:
    """The row as best it can be written, for the dead-letter topic."""
    plain = (str, bool, type(None), orjson.Fragment)
    return orjson.dumps({n: v if isinstance(v, plain) else str(v) for n, v in zip(names, row)})
