"""Imputation: fill missing cells from statistics learned online, per partition; mark what was filled.

Strategies per field: ``mean``, ``median`` (over a window of the last values: a streaming
estimate), ``most_frequent``, ``constant`` (``value``), ``last`` (the last value seen for the
same ``key``: a field, or ``"$key"`` for the Kafka message key). Statistics learn from every
present value before the batch's gaps are filled, and live in one :class:`ImputeState` per
(topic, partition), so a restart restores them (see :class:`~tidal.quality.base.PartitionedStep`).

A filled cell is written into the record and ``"<field>:imputed"`` is added to the row's
``quality_flags``. A cell with no statistic yet (nothing learned) stays null and is counted
as ``<field>/imputed/unavailable``.

>>> from tidal.stream.batch import Batch
>>> step = ImputeStep({"bytes": "median", "proto": "most_frequent", "port": {"strategy": "last", "key": "host"}})
>>> rows = [{"host": "a", "bytes": 10.0, "proto": "tcp", "port": 22}, {"host": "a", "bytes": 30.0, "proto": "tcp", "port": None},
...         {"host": "b", "bytes": None, "proto": None, "port": None}]
>>> out = step.process(Batch.from_rows(rows, types={"bytes": "float", "port": "int"}))
>>> for v in out.values[1:]: print(v.decode())
{"host":"a","bytes":30.0,"proto":"tcp","port":22,"quality_flags":["port:imputed"]}
{"host":"b","bytes":20.0,"proto":"tcp","port":null,"quality_flags":["bytes:imputed","proto:imputed"]}
>>> out.columns["quality_flags"].tolist()
[(), ('port:imputed',), ('bytes:imputed', 'proto:imputed')]
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tidal.quality.base import (PartitionedStep, PartitionStats, QualityBatch, add_flags, ensure_flags, key_codes,
                                key_values, missing_mask, pack, partition_groups, take, unpack)
from tidal.quality.stats import Moments, TopK, Windows

__all__ = ["ImputeStep", "ImputeState", "STRATEGIES"]

STRATEGIES = ("mean", "median", "most_frequent", "constant", "last")


class ImputeState(PartitionStats):
    """Per field: running moments, a window for the median, top values, last value per key."""

    def __init__(self, window: int = 1024, max_keys: int = 100_000) -> None:
        self.window, self.max_keys = window, max_keys
        self.moments: dict[str, Moments] = {}
        self.windows: dict[str, Windows] = {}
        self.top: dict[str, TopK] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def snapshot(self) -> bytes:
        meta = {"window": self.window, "max_keys": self.max_keys,
                "moments": {k: m.as_list() for k, m in self.moments.items()},
                "top": {k: t.top(t.k * 2) for k, t in self.top.items()},
                "last": {k: list(d.items()) for k, d in self.last.items()}, "windows": {}}
        arrays = {}
        for name, w in self.windows.items():
            wm, wa = w.snapshot()
            meta["windows"][name] = wm
            arrays.update({f"{name}/{k}": v for k, v in wa.items()})
        return pack(meta, arrays)

    def restore(self, data: bytes) -> None:
        meta, arrays = unpack(data)
        self.window, self.max_keys = meta["window"], meta["max_keys"]
        self.moments = {k: Moments.from_list(v) for k, v in meta["moments"].items()}
        self.top = {}
        for k, items in meta["top"].items():
            t = self.top[k] = TopK()
            t.counts.update({v: c for v, c in items})
        self.last = {k: dict(map(tuple, items)) for k, items in meta["last"].items()}
        self.windows = {name: Windows.from_snapshot(wm, {"buf": arrays[f"{name}/buf"], "count": arrays[f"{name}/count"]})
                        for name, wm in meta["windows"].items()}


class ImputeStep(PartitionedStep):
    """Fill missing values: ``fields = {name: strategy or {strategy:, value:, key:}}``."""

    name = "impute"

    def __init__(self, fields: Mapping[str, Any], window: int = 1024, max_keys: int = 100_000,
                 flags: bool = True) -> None:
        super().__init__()
        self.fields: dict[str, dict[str, Any]] = {}
        for name, spec in fields.items():
            spec = {"strategy": spec} if isinstance(spec, str) else dict(spec)
            if spec.get("strategy") not in STRATEGIES:
                raise ValueError(f"impute {name!r}: strategy {spec.get('strategy')!r}; use one of {STRATEGIES}")
            if spec["strategy"] == "constant" and "value" not in spec:
                raise ValueError(f"impute {name!r}: the constant strategy needs a value")
            self.fields[name] = spec
        self.window, self.max_keys, self.flags = window, max_keys, flags

    def new_state(self) -> ImputeState:
        return ImputeState(self.window, self.max_keys)

    def apply(self, batch: QualityBatch) -> QualityBatch:
        if self.flags:
            ensure_flags(batch)
        groups = list(partition_groups(batch))
        for name, spec in self.fields.items():
            col = batch.column(name)
            numeric = col.dtype.kind in "fiub"
            col = col.astype(np.float64) if numeric else col.copy()
            miss = missing_mask(col)
            keys = key_values(batch, spec.get("key")) if spec["strategy"] == "last" else None
            filled = np.zeros(len(batch), dtype=bool)
            for tp, idx in groups:
                state = self.state(tp)
                filled[idx] = self._fill(state, name, spec, col, idx, miss[idx], numeric, keys)
            unavailable = int(np.count_nonzero(miss & ~filled))
            self.count(name, "imputed", spec["strategy"], int(np.count_nonzero(filled)))
            self.count(name, "imputed", "unavailable", unavailable)
            if filled.any():
                if self.flags:
                    add_flags(batch, filled, f"{name}:imputed")
                if numeric and batch.types.get(name) == "int" and not np.isnan(col).any():
                    col = col.astype(np.int64)
                batch.with_column(name, col, output=False)
                batch.mark(name, filled)
        return batch

    def _fill(self, state: ImputeState, name: str, spec: dict, col: np.ndarray, idx: np.ndarray,
              miss: np.ndarray, numeric: bool, keys: list | None) -> np.ndarray:
        """Learn from the present values of rows ``idx``, fill their gaps in ``col``; returns the filled mask."""
        strategy = spec["strategy"]
        vals = col[idx]
        present = vals[~miss]
        done = np.zeros(len(idx), dtype=bool)
        value: Any = None
        if strategy == "mean":
            m = state.moments.setdefault(name, Moments())
            m.update(present.astype(np.float64))
            value = m.mean if m.n else None
        elif strategy == "median":
            w = state.windows.get(name) or state.windows.setdefault(name, Windows(self.window, 1))
            slot = w.slots(["*"])
            w.push(np.zeros(len(present), dtype=np.int64) + slot[0], present.astype(np.float64))
            med = w.median_mad(slot)[0][0]
            value = None if np.isnan(med) else float(med)
        elif strategy == "most_frequent":
            t = state.top.setdefault(name, TopK())
            t.update(present.tolist())
            value = t.most_frequent()
        elif strategy == "constant":
            value = spec["value"]
        else:
            return self._fill_last(state, name, col, idx, miss, keys)
        if value is not None and miss.any():
            col[idx[miss]] = value
            done[miss] = True
        return done

    def _fill_last(self, state: ImputeState, name: str, col: np.ndarray, idx: np.ndarray, miss: np.ndarray,
                   keys: list | None) -> np.ndarray:
        """Forward fill per key: the last present value of the same key earlier in the batch, else from state."""
        last = state.last.setdefault(name, {})
        sub_keys = take(keys, idx) if keys is not None else ["*"] * len(idx)
        codes, distinct = key_codes(sub_keys)
        m = len(idx)
        vals = col[idx]
        done = np.zeros(m, dtype=bool)
        if miss.any():
            order = np.lexsort((np.arange(m), codes))
            c, p = codes[order], ~miss[order]
            pos = np.arange(m)
            start = np.r_[True, c[1:] != c[:-1]] if m else np.zeros(0, bool)
            last_valid = np.maximum.accumulate(np.where(p, pos, -1))
            group_start = np.maximum.accumulate(np.where(start, pos, 0))
            inside = (last_valid >= group_start) & ~p
            src = np.empty(m, dtype=np.int64)
            src[order] = np.where(inside, order[np.maximum(last_valid, 0)], -1)
            for j in np.flatnonzero(miss).tolist():
                if src[j] >= 0:
                    vals[j] = vals[src[j]]
                    done[j] = True
                else:
                    v = last.get(sub_keys[j])
                    if v is not None:
                        vals[j] = v
                        done[j] = True
            col[idx] = vals
        present = ~miss
        if present.any():  # remember the last present value per key (newest last, oldest evicted)
            rows = np.flatnonzero(present).tolist()
            newest = dict(zip([sub_keys[j] for j in rows], vals[present].tolist()))
            for k in newest:
                last.pop(k, None)
            last.update(newest)
            while len(last) > self.max_keys:
                del last[next(iter(last))]
        return done
