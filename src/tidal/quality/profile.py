"""Rolling data profile per field, published to ``<pipeline>.quality`` and as metrics.

Per field, over the last ``window_s`` seconds (``buckets`` sub-windows, merged when read):
count, missing rate, min/max, mean/std, quantiles from a DDSketch-style sketch (1%
relative accuracy), top categories and a HyperLogLog distinct estimate. Every statistic is
mergeable, so profiles of several workers combine exactly (``tidal quality report``). Every
``publish_every_s`` the step sends one JSON record keyed by its worker to
``<pipeline>.quality``, with the worker's cumulative counts (events in/out, DLQ reasons,
quality violations and drops read from its metrics), and sets
``tidal_quality_field{pipeline, field, stat}``.

>>> from tidal.stream.batch import Batch
>>> p = ProfileStep()
>>> _ = p.process(Batch.from_rows([{"bytes": float(i), "proto": "tcp" if i % 4 else "udp"} for i in range(100)]
...                               + [{"bytes": None, "proto": None}], types={"bytes": "float", "proto": "str"}))
>>> s = p.profile()
>>> s["bytes"]["count"], s["bytes"]["missing_rate"], s["bytes"]["max"], round(s["bytes"]["p50"])
(101, 0.0099, 99.0, 49)
>>> s["proto"]["top"], s["proto"]["distinct"]
([['tcp', 75], ['udp', 25]], 2)
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any, Callable, Sequence

import numpy as np
import orjson

from tidal.quality.base import QualityBatch, QualityStep, missing_mask
from tidal.quality.stats import Distinct, Moments, QuantileSketch, TopK

__all__ = ["ProfileStep", "FieldProfile", "merge_profiles", "QUANTILES"]

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.9, 0.99)
_INTERNAL = {"quality_flags"}


class FieldProfile:
    """Mergeable statistics of one field."""

    def __init__(self, kind: str = "numeric", top_k: int = 10) -> None:
        self.kind = kind
        self.count = 0
        self.missing = 0
        self.moments = Moments()
        self.sketch = QuantileSketch()
        self.distinct = Distinct()
        self.top = TopK(top_k)

    def update(self, col: np.ndarray) -> None:
        miss = missing_mask(col)
        self.count += len(col)
        self.missing += int(miss.sum())
        if self.kind == "numeric":
            x = col[~miss].astype(np.float64)
            self.moments.update(x)
            self.sketch.update(x)
            self.distinct.add_numbers(x)
        else:
            vals = col[~miss].tolist()
            try:
                self.top.update(vals)
            except TypeError:  # unhashable values (objects, lists)
                vals = [orjson.dumps(v, default=str).decode() for v in vals]
                self.top.update(vals)
            self.distinct.add_values(vals)

    def merge(self, other: "FieldProfile") -> None:
        self.count += other.count
        self.missing += other.missing
        self.moments.merge(other.moments)
        self.sketch.merge(other.sketch)
        self.distinct.merge(other.distinct)
        self.top.merge(other.top)

    def summary(self) -> dict[str, Any]:
        m = self.moments
        out: dict[str, Any] = {"kind": self.kind, "count": self.count, "missing": self.missing,
                               "missing_rate": round(self.missing / self.count, 4) if self.count else 0.0,
                               "distinct": int(round(self.distinct.estimate()))}
        if self.kind == "numeric":
            finite = m.n > 0
            out.update({"min": m.min if finite else None, "max": m.max if finite else None,
                        "mean": m.mean if finite else None, "std": m.std if finite else None})
            for q in QUANTILES:
                v = self.sketch.quantile(q)
                out[f"p{round(q * 100):02d}"] = None if math.isnan(v) else v
        else:
            out["top"] = [[v, c] for v, c in self.top.top()]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Summary plus the mergeable state (sketch buckets, HLL registers, moments)."""
        return {**self.summary(), "state": {"moments": self.moments.as_list(), "sketch": self.sketch.to_dict(),
                                            "hll": self.distinct.to_str(), "top_counts": self.top.top(self.top.k * 2),
                                            "top_k": self.top.k}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FieldProfile":
        st = d["state"]
        f = cls(d["kind"], st.get("top_k", 10))
        f.count, f.missing = d["count"], d["missing"]
        f.moments = Moments.from_list(st["moments"])
        f.sketch = QuantileSketch.from_dict(st["sketch"])
        f.distinct = Distinct.from_str(st["hll"])
        f.top.counts.update({v: c for v, c in st["top_counts"]})
        return f


def merge_profiles(fields: Sequence[dict[str, FieldProfile]]) -> dict[str, FieldProfile]:
    out: dict[str, FieldProfile] = {}
    for profile in fields:
        for name, fp in profile.items():
            if name not in out:
                out[name] = FieldProfile(fp.kind, fp.top.k)
            out[name].merge(fp)
    return out


class ProfileStep(QualityStep):
    """Profile ``fields`` (default: every field of the schema, else every column) without changing the batch."""

    name = "profile"

    def __init__(self, fields: Sequence[str] | None = None, window_s: float = 300.0, buckets: int = 5,
                 publish_every_s: float = 10.0, topic: str | None = None, top_k: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.fields = list(fields) if fields else None
        self.window_s, self.n_buckets, self.publish_every_s = float(window_s), int(buckets), float(publish_every_s)
        self.topic, self.top_k, self.clock = topic, top_k, clock
        self.side_outputs = (topic or "{pipeline}.quality",)
        self.worker = f"{socket.gethostname()}-{os.getpid()}"
        self._buckets: list[tuple[float, dict[str, FieldProfile]]] = []
        self._published = 0.0
        self._registry = None

    # -- wiring ---------------------------------------------------------------------------
    def open(self, ctx: Any) -> None:
        super().open(ctx)
        self.topic = self.outputs(ctx.pipeline)[0]
        self._registry = ctx.registry
        self._published = time.monotonic()

    def close(self) -> None:
        if self.ctx is not None:
            self.publish()

    # -- work -----------------------------------------------------------------------------
    def apply(self, batch: QualityBatch) -> QualityBatch:
        now = self.clock()
        width = self.window_s / self.n_buckets
        start = now - now % width
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append((start, {}))
            self._buckets = [b for b in self._buckets if b[0] > now - self.window_s - width]
        current = self._buckets[-1][1]
        for name in self._names(batch):
            col = batch.column(name)
            fp = current.get(name)
            if fp is None:
                kind = "numeric" if col.dtype.kind in "fiub" else "categorical"
                fp = current[name] = FieldProfile(kind, self.top_k)
            if fp.kind == "numeric" and col.dtype.kind not in "fiub":
                col = _as_numbers(col)
            fp.update(col)
        if self.ctx is not None and time.monotonic() - self._published >= self.publish_every_s:
            self.publish()
        return batch

    def _names(self, batch: QualityBatch) -> list[str]:
        if self.fields is not None:
            return self.fields
        if batch.types:
            return list(batch.types)
        if batch.rows and isinstance(batch.rows[0], dict):
            return [k for k in batch.rows[0] if k not in _INTERNAL]
        return []

    def profiles(self) -> dict[str, FieldProfile]:
        """The merged profile of the current window."""
        now, width = self.clock(), self.window_s / self.n_buckets
        return merge_profiles([p for start, p in self._buckets if start + width > now - self.window_s])

    def profile(self) -> dict[str, dict[str, Any]]:
        """Summary per field of the current window."""
        return {name: fp.summary() for name, fp in self.profiles().items()}

    def record(self) -> dict[str, Any]:
        """What is published: the window's profile (with mergeable state) and the worker's counts."""
        fields = {name: fp.to_dict() for name, fp in self.profiles().items()}
        return {"pipeline": self.pipeline, "worker": self.worker, "time": time.time(), "window_s": self.window_s,
                "fields": fields, "counts": self._counts()}

    def publish(self) -> None:
        self._published = time.monotonic()
        rec = self.record()
        if self._metrics is not None:
            g = self._metrics.field
            for name, f in rec["fields"].items():
                for stat in ("count", "missing_rate", "min", "max", "mean", "std", "distinct", "p50", "p90", "p99"):
                    v = f.get(stat)
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        g.labels(self.pipeline, name, stat).set(v)
        if self.ctx is not None:
            self.ctx.emit(self.topic, orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY), self.worker)

    def _counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"events_in": 0, "events_out": 0, "dlq": {}, "violations": {}, "dropped": {}}
        if self._registry is None:
            return out
        for family in self._registry.collect():
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                lab = s.labels
                if s.name == "tidal_events_in_total":
                    out["events_in"] += int(s.value)
                elif s.name == "tidal_events_out_total":
                    out["events_out"] += int(s.value)
                elif s.name == "tidal_dlq_total":
                    out["dlq"][lab["reason"]] = int(s.value)
                elif s.name == "tidal_quality_violations_total":
                    out["violations"][f"{lab['step']}/{lab['field']}/{lab['rule']}/{lab['action']}"] = int(s.value)
                elif s.name == "tidal_quality_dropped_total":
                    out["dropped"][f"{lab['step']}/{lab['reason']}"] = int(s.value)
        return out


def _as_numbers(col: np.ndarray) -> np.ndarray:
    out = np.full(len(col), np.nan)
    for i, v in enumerate(col.tolist()):
        if type(v) in (int, float, bool):
            out[i] = v
    return out
