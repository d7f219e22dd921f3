"""SQL over the micro-batch (DuckDB over Arrow), with ML functions — ksqlDB-style UDFs in Python.

The batch is the table ``batch``; its fields are columns. Functions available in the query:

- ``predict('<model>', col, ...)``: the model's score, one vectorised call per batch;
- ``anomaly_score('<detector>', col, ...)``: a detector's score (any object with
  ``score_samples(X)``, e.g. scikit-learn's IsolationForest; higher = more anomalous);
- ``explain('<model>', col, ...)``: the top-3 feature contributions as JSON text.

Arguments are passed in the model's feature order. The result keeps a row's identity through
the hidden column ``__row`` (``SELECT *`` carries it), so filtering with ``WHERE`` drops rows
and new columns become output fields.

>>> import numpy as np, tempfile
>>> from sklearn.linear_model import LogisticRegression
>>> from tidal.models import load_model, save_model
>>> from tidal.stream.batch import Batch
>>> folder = tempfile.mkdtemp()
>>> _ = save_model(LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1]), folder, "toy", 1, ["x"])
>>> step = SqlStep("SELECT *, predict('toy', x) AS p FROM batch WHERE x >= 1", models={"toy": load_model(folder)})
>>> out = step.process(Batch.from_rows([{"x": 0.0}, {"x": 3.0}], types={"x": "float"}))
>>> out.column("x").tolist(), bool(out.columns["p"][0] > 0.5)
([3.0], True)
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from tidal.models.artifact import LoadedModel, load_model
from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["SqlStep"]

_CALL = re.compile(r"\b(predict|anomaly_score|explain)\s*\(\s*'([A-Za-z0-9_.\-]+)'\s*,")
_SQL_TYPES = {"float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN", "str": "VARCHAR"}


def _ident(kind: str, name: str) -> str:
    return f"__{kind}__" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _arity(fn: Any, n: int) -> Any:
    """``fn(*cols)`` as a function of exactly ``n`` parameters (DuckDB counts them)."""
    params = ", ".join(f"a{i}" for i in range(n))
    scope: dict[str, Any] = {"fn": fn}
    exec(f"def wrapped({params}):\n    return fn({params})", scope)  # noqa: S102 - fixed, generated source
    return scope["wrapped"]


class SqlStep(Step):
    """Run ``query`` on each batch; ``models``/``detectors`` map names used in the query to objects."""

    name = "sql"

    def __init__(self, query: str, models: Mapping[str, LoadedModel | str] | None = None,
                 detectors: Mapping[str, Any] | None = None, name: str = "sql") -> None:
        import duckdb

        self.name = name
        self.models = {k: (load_model(v) if isinstance(v, str) else v) for k, v in (models or {}).items()}
        self.detectors = dict(detectors or {})
        self.con = duckdb.connect()
        self.query = _CALL.sub(lambda m: f"{_ident(m.group(1), m.group(2))}(", query)
        for kind, target in {(m.group(1), m.group(2)) for m in _CALL.finditer(query)}:
            self._register(kind, target)

    def _register(self, kind: str, target: str) -> None:
        import pyarrow as pa

        if kind == "anomaly_score":
            detector = self.detectors.get(target)
            if detector is None:
                raise ValueError(f"anomaly_score('{target}'): no such detector; give detectors={{'{target}': ...}}")
            n_args = int(getattr(detector, "n_features_in_", 0)) or 1

            def fn(*cols: Any) -> Any:
                X = np.column_stack([c.to_numpy(zero_copy_only=False) for c in cols]).astype(np.float64)
                return pa.array(-detector.score_samples(X))

            self.con.create_function(_ident(kind, target), _arity(fn, n_args), ["DOUBLE"] * n_args, "DOUBLE",
                                     type="arrow")
            return
        model = self.models.get(target)
        if model is None:
            raise ValueError(f"{kind}('{target}'): no such model; give models={{'{target}': ...}}")
        features = model.card.features
        types = ["VARCHAR" if f in model.card.categories else "DOUBLE" for f in features]

        def matrix(cols: tuple) -> np.ndarray:
            arrays = {f: c.to_numpy(zero_copy_only=False) for f, c in zip(features, cols)}
            return model.features_matrix(arrays.__getitem__)

        if kind == "predict":
            def fn(*cols: Any) -> Any:
                return pa.array(np.asarray(model.predict(matrix(cols)), dtype=np.float64))

            self.con.create_function(_ident(kind, target), _arity(fn, len(types)), types, "DOUBLE", type="arrow")
        else:
            from tidal.models.explain import contributions, top_k

            def fn(*cols: Any) -> Any:
                import orjson

                contrib, _bias = contributions(model, matrix(cols))
                return pa.array([orjson.dumps(e).decode() for e in top_k(contrib, features, 3)])

            self.con.create_function(_ident(kind, target), _arity(fn, len(types)), types, "VARCHAR", type="arrow")

    def _table(self, batch: Batch) -> Any:
        import pyarrow as pa

        names = list(batch.types) or (list(batch.rows[0]) if batch.rows and isinstance(batch.rows[0], dict) else [])
        names += [c for c in batch.columns if c not in names]
        data = {n: batch.column(n) for n in names}
        data["__row"] = np.arange(len(batch))
        return pa.table({n: (pa.array(v.tolist()) if v.dtype == object else v) for n, v in data.items()})

    def process(self, batch: Batch) -> Batch:
        if not len(batch):  # nothing to query (DuckDB cannot type an empty table's columns)
            return batch
        table = self._table(batch)
        self.con.register("batch", table)
        try:
            cursor = self.con.execute(self.query)
            result = cursor.to_arrow_table() if hasattr(cursor, "to_arrow_table") else cursor.fetch_arrow_table()
        finally:
            self.con.unregister("batch")
        if "__row" not in result.column_names:
            raise ValueError("the query must keep __row (use SELECT *, ...) so results map back to events")
        rows = result.column("__row").to_numpy()
        mask = np.zeros(len(batch), dtype=bool)
        mask[rows] = True
        if not np.array_equal(rows, np.flatnonzero(mask)):
            raise ValueError("the query may filter rows but not reorder or repeat them")
        out = batch.select(mask)
        known = set(table.column_names)
        for name in result.column_names:
            if name == "__row":
                continue
            values = result.column(name).to_numpy(zero_copy_only=False)
            if name not in known or not np.array_equal(values, table.column(name).to_numpy(zero_copy_only=False)[rows]):
                out.with_column(name, values)  # new (or changed) by the query: an output field
        return out
