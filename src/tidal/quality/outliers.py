"""Outliers: robust z-score (median / MAD) or IQR fences on running statistics, per key or global.

Each field keeps a window of its last ``window`` values — per key (a field, or ``"$key"``)
or for the whole partition — in one :class:`OutlierState` per (topic, partition). A value is
judged against the statistics of the values *before* its batch, once at least ``min_count``
are known, then joins the window:

- ``mad``: ``|x - median| / (1.4826 · MAD) > threshold`` (default 3.5; falls back to the
  window's standard deviation when MAD is 0, e.g. mostly-constant values);
- ``iqr``: outside ``[Q1 - k·IQR, Q3 + k·IQR]`` (``threshold`` is k, default 1.5).

Policies: ``flag`` (``"<field>:outlier"`` in ``quality_flags``), ``clip`` (to the fence;
flagged ``"<field>:clipped"``), ``drop`` (counted, not output) or ``reject`` (DLQ, reason
``outlier``).

>>> import numpy as np
>>> from tidal.stream.batch import Batch
>>> step = OutlierStep({"bytes": {"method": "mad", "policy": "clip", "min_count": 10}})
>>> _ = step.process(Batch.from_rows([{"bytes": float(b)} for b in np.random.default_rng(0).normal(100, 5, 200)]))
>>> out = step.process(Batch.from_rows([{"bytes": 101.0}, {"bytes": 10000.0}]))
>>> out.columns["quality_flags"].tolist(), bool(110 < out.columns["bytes"][1] < 125)
([(), ('bytes:clipped',)], True)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tidal.quality.base import (PartitionedStep, PartitionStats, QualityBatch, add_flags, ensure_flags, key_values,
                                pack, take, partition_groups, unpack)
from tidal.quality.stats import Windows

__all__ = ["OutlierStep", "OutlierState", "METHODS"]

METHODS = {"mad": 3.5, "iqr": 1.5}
POLICIES = ("flag", "clip", "drop", "reject")


class OutlierState(PartitionStats):
    """Per field: windows of recent values per key."""

    def __init__(self) -> None:
        self.windows: dict[str, Windows] = {}

    def snapshot(self) -> bytes:
        meta, arrays = {"fields": {}}, {}
        for name, w in self.windows.items():
            wm, wa = w.snapshot()
            meta["fields"][name] = wm
            arrays.update({f"{name}/{k}": v for k, v in wa.items()})
        return pack(meta, arrays)

    def restore(self, data: bytes) -> None:
        meta, arrays = unpack(data)
        self.windows = {n: Windows.from_snapshot(wm, {"buf": arrays[f"{n}/buf"], "count": arrays[f"{n}/count"]})
                        for n, wm in meta["fields"].items()}


class OutlierStep(PartitionedStep):
    """``fields = {name: {method: mad|iqr, threshold:, key:, policy: flag|clip|drop|reject, window:, min_count:}}``."""

    name = "outliers"

    def __init__(self, fields: Mapping[str, Any], window: int = 512, min_count: int = 30,
                 max_keys: int = 50_000, flags: bool = True) -> None:
        super().__init__()
        self.fields: dict[str, dict[str, Any]] = {}
        for name, spec in fields.items():
            spec = {"method": spec} if isinstance(spec, str) else dict(spec or {})
            spec.setdefault("method", "mad")
            if spec["method"] not in METHODS:
                raise ValueError(f"outliers {name!r}: method {spec['method']!r}; use one of {sorted(METHODS)}")
            spec.setdefault("threshold", METHODS[spec["method"]])
            spec.setdefault("policy", "flag")
            if spec["policy"] not in POLICIES:
                raise ValueError(f"outliers {name!r}: policy {spec['policy']!r}; use one of {POLICIES}")
            spec.setdefault("window", window)
            spec.setdefault("min_count", min_count)
            self.fields[name] = spec
        self.max_keys, self.flags = max_keys, flags

    def new_state(self) -> OutlierState:
        return OutlierState()

    def apply(self, batch: QualityBatch) -> QualityBatch:
        if self.flags:
            ensure_flags(batch)
        for name, spec in self.fields.items():
            groups = list(partition_groups(batch))  # again for each field: a policy may have removed rows
            col = batch.column(name).astype(np.float64)
            lo = np.full(len(batch), -np.inf)
            hi = np.full(len(batch), np.inf)
            keys = key_values(batch, spec.get("key"))
            for tp, idx in groups:
                lo[idx], hi[idx] = self._fences(self.state(tp), name, spec, col[idx],
                                                None if keys is None else take(keys, idx))
            with np.errstate(invalid="ignore"):
                out = ~np.isnan(col) & ((col < lo) | (col > hi))
            policy = spec["policy"]
            if policy == "clip":
                self.count(name, "outlier", "fix", int(out.sum()))
                if out.any():
                    col = np.where(out, np.clip(col, lo, hi), col)
                    if batch.types.get(name) == "int":
                        col = np.where(out, np.round(col), col)
                    add_flags(batch, out, f"{name}:clipped")
                    batch.with_column(name, col, output=False)
                    batch.mark(name, out)
            else:
                batch = self.act(batch, out, name, "outlier", policy, "outlier",
                                 lambda i, c=col, lo=lo, hi=hi, n=name: f"{n}: {c[i]:.6g} outside [{lo[i]:.6g}, "
                                                                        f"{hi[i]:.6g}]")
        return batch

    def _fences(self, state: OutlierState, name: str, spec: dict, x: np.ndarray,
                keys: list | None) -> tuple[np.ndarray, np.ndarray]:
        """Fences for each value from the window before this batch; then the values join the window."""
        w = state.windows.get(name)
        if w is None:
            w = state.windows[name] = Windows(spec["window"], self.max_keys if keys is not None else 1)
        slots = w.slots(keys if keys is not None else ["*"])
        if keys is None:
            slots = np.full(len(x), slots[0], dtype=np.int64)
        uniq, inv = np.unique(slots, return_inverse=True)
        t = float(spec["threshold"])
        if spec["method"] == "mad":
            med, mad = w.median_mad(uniq)
            scale = 1.4826 * mad
            flat = ~(scale > 0)
            if flat.any():  # MAD of 0: fall back to the standard deviation of the window
                rows = w.buf[np.maximum(uniq[flat], 0)]
                with np.errstate(invalid="ignore"), _quiet():
                    scale[flat] = np.nanstd(rows, axis=1)
            lo_u, hi_u = med - t * scale, med + t * scale
        else:
            q1, q3 = w.quantiles(uniq, [0.25, 0.75])
            iqr = q3 - q1
            lo_u, hi_u = q1 - t * iqr, q3 + t * iqr
        enough = w.n(uniq) >= spec["min_count"]
        lo_u = np.where(enough & ~np.isnan(lo_u), lo_u, -np.inf)
        hi_u = np.where(enough & ~np.isnan(hi_u), hi_u, np.inf)
        w.push(slots, x)
        return lo_u[inv], hi_u[inv]


class _quiet:
    """Silence numpy's "mean of empty slice" warnings for windows that are still empty."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)
