"""PostgreSQL sink: upsert a topic's records into a table by key, exactly once.

Each batch is one transaction:

1. ``COPY`` the rows into a temporary staging table (no constraints, the target's types);
2. delete the keys whose last record in the batch is a tombstone (value ``null``);
3. ``INSERT INTO target SELECT DISTINCT ON (key) ... ON CONFLICT (key) DO UPDATE``: the last
   record of each key wins;
4. store the next offset of every partition in ``tidal_sink_offsets(connector, topic,
   partition, next_offset)``, then commit.

:meth:`PostgresSink.stored_offsets` gives the runner those offsets, so after a crash
anywhere (even between the database's commit and Kafka's) it resumes exactly after the
last committed row. A write retried after a lost connection skips the records the table
already holds (its offsets say so), so an ambiguous commit is not applied twice.

When the batch fails for a row's content (a check constraint, a value of the wrong type:
``DataError`` / ``IntegrityError``) it is tried again row by row inside savepoints to find the
rows at fault; nothing is committed, and they are reported as
:class:`~tidal.connect.RecordsRejected` (the runner sends them to the dead-letter topic and
writes the rest).

Columns are the table's own (or those listed); record fields without a column are dropped,
or kept as one jsonb object in ``extra_column``; a column without a field gets NULL.

>>> print(upsert_sql("preds", ["id", "score"], "id", "tidal_stage").as_string(None))
INSERT INTO "preds" ("id", "score") SELECT "id", "score" FROM (SELECT DISTINCT ON ("id") * FROM "tidal_stage" ORDER BY "id", tidal_seq DESC) s WHERE NOT s.tidal_del ON CONFLICT ("id") DO UPDATE SET "score" = EXCLUDED."score"
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps

from tidal.connect.base import RecordsRejected, Sink, SinkRecord, Unavailable
from tidal.connect.postgres_source import DOWN_ERRORS, table_identifier

__all__ = ["PostgresSink", "OFFSETS_TABLE", "upsert_sql", "infer_columns"]

OFFSETS_TABLE = "tidal_sink_offsets"
STAGE = "tidal_stage"
REFUSED = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
_JSON_TYPES = ("json", "jsonb")


def upsert_sql(table: str, columns: Sequence[str], key: str, stage: str) -> sql.Composed:
    """INSERT the last staged row of each key that is not a tombstone, updating existing keys."""
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    k = sql.Identifier(key)
    others = [c for c in columns if c != key]
    action = (sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others)) if others else sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM (SELECT DISTINCT ON ({k}) * FROM {s} "
                   "ORDER BY {k}, tidal_seq DESC) s WHERE NOT s.tidal_del ON CONFLICT ({k}) {action}").format(
        t=table_identifier(table), cols=cols, k=k, s=sql.Identifier(stage), action=action)


def delete_sql(table: str, key: str, stage: str) -> sql.Composed:
    return sql.SQL("DELETE FROM {t} t USING (SELECT DISTINCT ON ({k}) {k}, tidal_del FROM {s} "
                   "ORDER BY {k}, tidal_seq DESC) s WHERE s.tidal_del AND t.{k} = s.{k}").format(
        t=table_identifier(table), k=sql.Identifier(key), s=sql.Identifier(stage))


def infer_columns(values: Sequence[dict]) -> list[tuple[str, str]]:
    """Column names and types for a new table, from the fields of some records.

    >>> infer_columns([{"id": 1, "score": 0, "ok": True}, {"id": 2, "score": 0.5, "tags": ["a"]}])
    [('id', 'bigint'), ('score', 'double precision'), ('ok', 'boolean'), ('tags', 'jsonb')]
    """
    seen: dict[str, set[type]] = {}
    for v in values:
        for f, x in v.items():
            seen.setdefault(f, set())
            if x is not None:
                seen[f].add(type(x))
    out = []
    for f, types in seen.items():
        if types == {bool}:
            t = "boolean"
        elif types == {int}:
            t = "bigint"
        elif types and types <= {int, float}:
            t = "double precision"
        elif types <= {str}:
            t = "text"
        else:
            t = "jsonb"
        out.append((f, t))
    return out


def _reason(exc: Exception) -> str:
    """``CheckViolation`` → ``check_violation``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _message(exc: psycopg.Error) -> str:
    d = exc.diag
    return " ".join(x for x in (d.message_primary or str(exc).strip(), d.message_detail) if x)


class PostgresSink(Sink):
    """Upsert records into ``table`` by ``key_field`` (a unique column ``key_column``), exactly once.

    ``columns``: the columns to write (default: all the table's, less generated ones).
    ``extra_column``: a json/jsonb column for the fields that have no column of their own.
    ``create_table``: create the table when it is missing, with types guessed from the
    first batch (bigint, double precision, boolean, text, jsonb) and the key as primary key.
    """

    kind = "postgres"

    def __init__(self, dsn: str, table: str, key_field: str = "id", *, key_column: str | None = None,
                 columns: Sequence[str] | None = None, extra_column: str | None = None,
                 create_table: bool = False, name: str | None = None, connect_timeout: float = 5.0) -> None:
        self.dsn, self.table, self.key_field = dsn, table, key_field
        self.key_column = key_column or key_field
        self.wanted = list(columns) if columns else None
        self.extra_column, self.create_table = extra_column, create_table
        self.name = name or f"pg-{table}"
        self.connect_timeout = connect_timeout
        self.columns: list[str] | None = None  # known once the table exists
        self._json: set[str] = set()
        self._conn: psycopg.Connection | None = None
        self._pending: list[tuple[str, str]] | None = None  # columns of a table still to create

    # -- connection -------------------------------------------------------------------------
    def open(self) -> None:
        self._connection()

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                                         application_name=f"tidal {self.name}")
            set_json_dumps(orjson.dumps, self._conn)
            try:
                self._conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (connector text NOT NULL, topic text NOT NULL, partition integer "
                    "NOT NULL, next_offset bigint NOT NULL, PRIMARY KEY (connector, topic, partition))").format(
                    sql.Identifier(OFFSETS_TABLE)))
            except psycopg.errors.UniqueViolation:  # another worker created it at the same moment
                pass
            self._load_columns(self._conn)
        except DOWN_ERRORS as exc:
            self._drop()
            raise Unavailable(str(exc).strip()) from exc
        return self._conn

    def _load_columns(self, conn: psycopg.Connection) -> None:
        found = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), EXISTS (SELECT 1 FROM pg_index i WHERE "
            "i.indrelid = a.attrelid AND i.indisunique AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum) "
            "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "AND a.attgenerated = '' ORDER BY a.attnum",
            (table_identifier(self.table).as_string(conn),)).fetchall()
        if not found:
            if not self.create_table:
                raise ValueError(f"table {self.table} does not exist (give --create-table to create it)")
            self.columns = None
            return
        types = {n: t for n, t, _ in found}
        unique = {n for n, _, u in found if u}
        cols = self.wanted or [n for n, _, _ in found]
        missing = [c for c in {*cols, self.key_column, *([self.extra_column] if self.extra_column else [])}
                   if c not in types]
        if missing:
            raise ValueError(f"table {self.table} has no column {', '.join(sorted(missing))}")
        if self.key_column not in unique:
            raise ValueError(f"{self.table}.{self.key_column} needs a primary key or unique index to upsert by")
        if self.extra_column and types[self.extra_column] not in _JSON_TYPES:
            raise ValueError(f"{self.table}.{self.extra_column} must be json or jsonb to hold the extra fields")
        if self.key_column not in cols:
            cols = [self.key_column, *cols]
        if self.extra_column and self.extra_column not in cols:
            cols.append(self.extra_column)
        self.columns = cols
        self._json = {c for c in cols if types[c] in _JSON_TYPES}
        col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{s}").format(s=sql.Identifier(STAGE)))
        conn.execute(sql.SQL("CREATE TEMP TABLE {s} ON COMMIT DELETE ROWS AS SELECT {c}, false AS tidal_del "
                             "FROM {t} WITH NO DATA").format(s=sql.Identifier(STAGE), c=col_list,
                                                             t=table_identifier(self.table)))
        conn.execute(sql.SQL("ALTER TABLE {s} ADD COLUMN tidal_seq bigserial").format(s=sql.Identifier(STAGE)))
        self._copy = sql.SQL("COPY {s} ({c}, tidal_del) FROM STDIN").format(s=sql.Identifier(STAGE), c=col_list)
        self._upsert = upsert_sql(self.table, cols, self.key_column, STAGE)
        self._delete = delete_sql(self.table, self.key_column, STAGE)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # -- offsets ----------------------------------------------------------------------------
    def stored_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        try:
            stored = self._stored(self._connection())
        except DOWN_ERRORS as exc:
            self._drop()
            raise Unavailable(str(exc).strip()) from exc
        return {tp: o for tp, o in stored.items() if tp in set(partitions)} or None

    def _stored(self, conn: psycopg.Connection, lock: bool = False) -> dict[tuple[str, int], int]:
        q = sql.SQL("SELECT topic, partition, next_offset FROM {} WHERE connector = %s").format(
            sql.Identifier(OFFSETS_TABLE))
        if lock:
            q += sql.SQL(" FOR UPDATE")
        return {(t, p): o for t, p, o in conn.execute(q, (self.name,)).fetchall()}

    # -- rows -------------------------------------------------------------------------------
    def prepare(self, records: Sequence[SinkRecord]) -> tuple[list[Any], list[tuple[SinkRecord, str, str]]]:
        """Rows are ``(copy_tuple, topic, partition, offset)``; the tuple ends with the tombstone flag."""
        if self.columns is None and self._pending is None:
            objects = [r.value for r in records if isinstance(r.value, dict)]
            if objects:
                self._pending = self._layout(objects)
        cols = self.columns or [c for c, _ in (self._pending or [])]
        json_cols = self._json if self.columns else {c for c, t in (self._pending or []) if t == "jsonb"}
        if not cols:  # no table yet, and nothing to create it from: tombstones have nothing to delete
            return [], [(r, "no_columns", "no record with fields yet to create the table from") for r in records
                        if r.value is not None]
        ki = cols.index(self.key_column)
        fields = [self.key_field if c == self.key_column else c for c in cols]
        known = set(fields)
        jidx = [i for i, c in enumerate(cols) if c in json_cols and c != self.extra_column]
        xidx = cols.index(self.extra_column) if self.extra_column else None
        rows, refused = [], []
        for r in records:
            v = r.value
            if v is None:  # a tombstone: delete the key
                if r.key is None:
                    refused.append((r, "missing_key", "a tombstone without a key"))
                    continue
                vals = [None] * len(cols)
                vals[ki] = r.key.decode("utf-8", "replace")
                rows.append(((*vals, True), r.topic, r.partition, r.offset))
                continue
            if not isinstance(v, dict):
                refused.append((r, "not_an_object", f"the value is a JSON {type(v).__name__}, not an object"))
                continue
            if v.get(self.key_field) is None:
                refused.append((r, "missing_key", f"no key field {self.key_field!r}"))
                continue
            vals = [v.get(f) for f in fields]
            for i in jidx:
                if vals[i] is not None:
                    vals[i] = Jsonb(vals[i])
            if xidx is not None:
                extra = {f: x for f, x in v.items() if f not in known}
                vals[xidx] = Jsonb(extra) if extra else None
            bad = [cols[i] for i, x in enumerate(vals) if type(x) is dict or type(x) is list and dict in map(type, x)]
            if bad:
                refused.append((r, "bad_type", f"column {bad[0]} cannot hold a JSON object"))
                continue
            rows.append(((*vals, False), r.topic, r.partition, r.offset))
        return rows, refused

    def _layout(self, objects: list[dict]) -> list[tuple[str, str]]:
        """Columns and types of the table to create, in the order the rows will have."""
        types = {self.key_column if f == self.key_field else f: t for f, t in infer_columns(objects)}
        names = list(self.wanted) if self.wanted else [c for c in types if c != self.extra_column]
        if self.key_column not in names:
            names.insert(0, self.key_column)
        layout = [(c, types.get(c, "text")) for c in names]
        if self.extra_column:
            layout.append((self.extra_column, "jsonb"))
        return layout

    # -- write ------------------------------------------------------------------------------
    def write(self, rows: Sequence[Any], offsets: dict[tuple[str, int], int]) -> None:
        try:
            conn = self._connection()
            if self.columns is None and self._pending:
                self._create(conn)
            try:
                with conn.transaction():
                    self._apply(conn, self._unwritten(conn, rows))
                    self._store(conn, offsets)
                return
            except REFUSED:
                pass
            rejected = self._find_rejected(conn, rows, offsets)
        except DOWN_ERRORS as exc:
            self._drop()
            raise Unavailable(str(exc).strip()) from exc
        if rejected:
            raise RecordsRejected(rejected)

    def _create(self, conn: psycopg.Connection) -> None:
        defs = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(sql.Identifier(c), sql.SQL(t),
                                      sql.SQL(" PRIMARY KEY" if c == self.key_column else ""))
            for c, t in self._pending)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table_identifier(self.table), defs))
        self.wanted, self._pending = [c for c, _ in self._pending], None  # the rows' layout
        self._load_columns(conn)

    def _unwritten(self, conn: psycopg.Connection, rows: Sequence[Any]) -> list[tuple[int, Any]]:
        """(index, row) of the rows the table does not hold yet (its stored offsets say which); locks them."""
        stored = self._stored(conn, lock=True)
        if not stored:
            return list(enumerate(rows))
        return [(i, r) for i, r in enumerate(rows) if r[3] >= stored.get((r[1], r[2]), 0)]

    def _apply(self, conn: psycopg.Connection, rows: list[tuple[int, Any]]) -> None:
        if not rows:
            return
        with conn.cursor() as cur:
            with cur.copy(self._copy) as cp:
                for _, r in rows:
                    cp.write_row(r[0])
            if any(r[0][-1] for _, r in rows):
                cur.execute(self._delete)
            cur.execute(self._upsert)

    def _store(self, conn: psycopg.Connection, offsets: dict[tuple[str, int], int]) -> None:
        with conn.cursor() as cur:
            cur.executemany(sql.SQL(
                "INSERT INTO {o} VALUES (%s, %s, %s, %s) ON CONFLICT (connector, topic, partition) "
                "DO UPDATE SET next_offset = GREATEST({o}.next_offset, EXCLUDED.next_offset)").format(
                o=sql.Identifier(OFFSETS_TABLE)), [(self.name, t, p, o) for (t, p), o in offsets.items()])

    def _find_rejected(self, conn: psycopg.Connection, rows: Sequence[Any],
                       offsets: dict[tuple[str, int], int]) -> list[tuple[int, str, str]]:
        """Apply the rows one by one inside savepoints; roll all back if any was refused."""
        rejected: list[tuple[int, str, str]] = []
        with conn.transaction():
            for i, r in self._unwritten(conn, rows):
                try:
                    with conn.transaction():
                        self._apply(conn, [(i, r)])
                        conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(STAGE)))
                except REFUSED as exc:
                    rejected.append((i, _reason(exc), _message(exc)))
            if rejected:
                raise psycopg.Rollback()
            self._store(conn, offsets)  # the batch failed as a whole but every row went in alone
        return rejected

    def close(self) -> None:
        self._drop()
