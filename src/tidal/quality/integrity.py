"""Integrity: duplicate event ids, per-key sequence gaps and disorder, cross-field rules.

- **Duplicates**: an ``id`` seen before within the horizon — the last ``horizon`` ids and,
  with ``horizon_s``, ids younger than that in event time (Kafka timestamp) — per partition
  (the same event, produced with the same key, lands on the same partition). Policy
  ``drop`` (default), ``flag`` or ``reject`` (reason ``duplicate``).
- **Sequences**: ``sequence: {key: host, field: seq}`` — per key, a ``seq`` more than one
  past the highest seen is a ``gap`` (flagged; the number of missing events is counted as
  ``<field>/gap_events``), one at or below it is ``out_of_order`` (``flag``, ``drop`` or
  ``reject``). ``ordering: {key:, field: ts}`` checks order only (timestamps have no gaps).
- **Cross-field rules**: ``rules: [{name: end_after_start, expr: "end >= start", policy: reject}]``
  — an expression over numeric fields (``+ - * / % **``, comparisons, ``and or not``,
  ``abs``, ``min``, ``max``); rows where a field it names is missing are not judged.

State (recent ids, highest sequence per key) lives in one :class:`IntegrityState` per
(topic, partition).

>>> from tidal.stream.batch import Batch
>>> step = IntegrityStep(id="id", sequence={"key": "host", "field": "seq"},
...                      rules=[{"name": "end_after_start", "expr": "end >= start", "policy": "flag"}])
>>> rows = [{"id": 1, "host": "a", "seq": 1, "start": 0, "end": 5}, {"id": 2, "host": "a", "seq": 4, "start": 9, "end": 5},
...         {"id": 1, "host": "a", "seq": 1, "start": 0, "end": 5}, {"id": 3, "host": "a", "seq": 3, "start": 1, "end": 2}]
>>> out = step.process(Batch.from_rows(rows))
>>> out.columns["id"].tolist(), out.columns["quality_flags"].tolist()
([1, 2, 3], [(), ('seq:gap', 'end_after_start:violated'), ('seq:out_of_order',)])
>>> step.dropped["duplicate"], step.counts[("seq", "gap_events", "count")]
(1, 2)
"""

from __future__ import annotations

import ast
import operator
from collections import deque
from itertools import islice, repeat
from typing import Any, Mapping, Sequence

import numpy as np

from tidal.quality.base import (PartitionedStep, PartitionStats, QualityBatch, ensure_flags, key_codes,
                                key_values, pack, partition_groups, take, unpack)

__all__ = ["IntegrityStep", "IntegrityState", "compile_rule"]


class IntegrityState(PartitionStats):
    """Recent ids (insertion-ordered, with event time) and the highest sequence value per key."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.highest: dict[str, dict[str, float]] = {}  # check name → key → highest value seen

    def snapshot(self) -> bytes:
        return pack({"ids": list(self.ids.items()), "highest": {k: list(v.items()) for k, v in self.highest.items()}})

    def restore(self, data: bytes) -> None:
        meta, _ = unpack(data)
        self.ids = {k: t for k, t in meta["ids"]}
        self.highest = {k: dict(map(tuple, v)) for k, v in meta["highest"].items()}


class IntegrityStep(PartitionedStep):
    """Duplicates by ``id``, sequence gaps/disorder per key, and cross-field ``rules``."""

    name = "integrity"

    def __init__(self, id: str | None = None, horizon: int = 100_000, horizon_s: float | None = None,
                 duplicates: str = "drop", sequence: Mapping[str, Any] | None = None,
                 ordering: Mapping[str, Any] | None = None, rules: Sequence[Mapping[str, Any]] = (),
                 max_keys: int = 100_000, flags: bool = True) -> None:
        super().__init__()
        if duplicates not in ("drop", "flag", "reject"):
            raise ValueError("duplicates: drop, flag or reject")
        self.id, self.horizon, self.horizon_s, self.duplicates = id, int(horizon), horizon_s, duplicates
        self.checks = []
        for spec, gaps in ((sequence, True), (ordering, False)):
            if spec:
                spec = dict(spec)
                spec.setdefault("policy", "flag")
                spec["gaps"] = gaps
                self.checks.append(spec)
        self.rules = [dict(r, fn=compile_rule(r["expr"])[0], fields=compile_rule(r["expr"])[1],
                           policy=r.get("policy", "reject"), name=r.get("name") or r["expr"]) for r in rules]
        self.max_keys, self.flags = max_keys, flags

    def new_state(self) -> IntegrityState:
        return IntegrityState()

    def apply(self, batch: QualityBatch) -> QualityBatch:
        if self.flags:
            ensure_flags(batch)
        if self.id is not None:
            dup = np.zeros(len(batch), dtype=bool)
            ids = batch.column(self.id).tolist()
            if float in set(map(type, ids)):  # 1.0 and 1 are different ids
                ids = [v if type(v) is not float else repr(v) for v in ids]
            for tp, idx in partition_groups(batch):
                dup[idx] = self._duplicates(self.state(tp), take(ids, idx), batch.timestamps[idx])
            batch = self.act(batch, dup, self.id, "duplicate", self.duplicates, "duplicate",
                             lambda i: f"{self.id}: duplicate within the horizon")
        for check in self.checks:
            batch = self._sequence(batch, check)
        for rule in self.rules:
            cols = {f: batch.column(f) for f in rule["fields"]}
            with np.errstate(all="ignore"):
                ok = np.asarray(rule["fn"](cols), dtype=bool)
                known = np.ones(len(batch), dtype=bool)
                for c in cols.values():
                    if c.dtype.kind == "f":
                        known &= ~np.isnan(c)
            batch = self.act(batch, known & ~ok, rule["name"], "violated", rule["policy"], "rule_violated",
                             f"{rule['name']}: {rule['expr']} is false")
        return batch

    def _duplicates(self, state: IntegrityState, ids: list, ts: np.ndarray) -> np.ndarray:
        seen = state.ids
        if self.horizon_s is not None and seen and len(ts):  # forget ids older than the horizon (event time)
            oldest = int(ts.max()) - int(self.horizon_s * 1000)
            stale = []
            for k, t in seen.items():
                if t >= oldest:
                    break
                stale.append(k)
            for k in stale:
                del seen[k]
        dup = np.fromiter(map(seen.__contains__, ids), bool, len(ids))
        first = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1)))  # id → first row in the batch
        repeat = np.ones(len(ids), dtype=bool)
        repeat[list(first.values())] = False
        dup |= repeat
        new = ~dup
        if new.any():
            seen.update(zip([ids[i] for i in np.flatnonzero(new).tolist()], ts[new].tolist()))
        excess = len(seen) - self.horizon
        if excess > 0:
            for k in list(islice(seen, excess)):
                del seen[k]
        return dup

    def _sequence(self, batch: QualityBatch, check: dict) -> QualityBatch:
        field, gaps = check["field"], check["gaps"]
        col = batch.column(field).astype(np.float64)
        keys = key_values(batch, check.get("key"))
        gap = np.zeros(len(batch), dtype=bool)
        disorder = np.zeros(len(batch), dtype=bool)
        missing_events = 0
        for tp, idx in partition_groups(batch):
            highest = self.state(tp).highest.setdefault(field, {})
            sub = take(keys, idx) if keys is not None else ["*"] * len(idx)
            g, d, n_missing = _check_order(col[idx], sub, highest, gaps, self.max_keys)
            gap[idx], disorder[idx] = g, d
            missing_events += n_missing
        if gaps:
            self.count(field, "gap_events", "count", missing_events)
            batch = self.act(batch, gap, field, "gap", "flag", "gap", "")
        return self.act(batch, disorder, field, "out_of_order", check["policy"], "out_of_order",
                        lambda i: f"{field}: {col[i]:.15g} at or below the highest seen for its key")


def _check_order(x: np.ndarray, keys: list, highest: dict, gaps: bool, max_keys: int
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per key, in batch order: gaps (x > previous max + 1) and disorder (x <= previous max)."""
    m = len(x)
    codes, distinct = key_codes(keys)
    prior_d = np.fromiter(map(highest.get, distinct, repeat(np.nan)), np.float64, len(distinct))
    order = np.lexsort((np.arange(m), codes))
    xs, cs = x[order], codes[order]
    # previous max per row = max(state's highest, values of the same key earlier in the batch):
    # a running max per key group; groups are lifted apart by an offset so one accumulate does all
    start = np.r_[True, cs[1:] != cs[:-1]] if m else np.zeros(0, bool)
    base = prior_d[cs]
    vals = np.where(np.isnan(xs), -np.inf, xs)
    finite = np.r_[vals[np.isfinite(vals)], base[np.isfinite(base)]]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 0.0)
    span = hi - lo + 1.0
    group = np.cumsum(start) - 1
    if span * (group[-1] + 1 if m else 1) < 2 ** 52 and span == span:
        lifted = np.where(np.isfinite(vals), vals - lo, -1.0) + group * (span + 1)
        cm = np.maximum.accumulate(lifted) - group * (span + 1)  # this row included, in lifted units
        before = np.where(start, -np.inf, np.r_[-np.inf, cm[:-1]])
        before = np.where(before >= 0, before + lo, -np.inf)
    else:  # values too far apart to lift exactly: one group at a time
        before = np.full(m, -np.inf)
        for g0, g1 in zip(np.flatnonzero(start), np.r_[np.flatnonzero(start)[1:], m]):
            run = np.maximum.accumulate(vals[g0:g1])
            before[g0 + 1:g1] = run[:-1]
    prev = np.fmax(before, np.where(np.isnan(base), -np.inf, base))
    valid = ~np.isnan(xs) & np.isfinite(prev)
    g_s = valid & (xs > prev + 1) if gaps else np.zeros(m, dtype=bool)
    d_s = valid & (xs <= prev)
    missing = int(np.sum(xs[g_s] - prev[g_s] - 1)) if gaps else 0
    g, d = np.empty(m, dtype=bool), np.empty(m, dtype=bool)
    g[order], d[order] = g_s, d_s
    # new highest per key (most recently seen keys last; the oldest are forgotten past max_keys)
    top = np.full(len(distinct), -np.inf)
    np.maximum.at(top, codes, np.where(np.isnan(x), -np.inf, x))
    top = np.fmax(top, prior_d)
    seen = np.isfinite(top)
    keep = [k for k, s_ in zip(distinct, seen.tolist()) if s_]
    deque(map(highest.pop, keep, repeat(None)), maxlen=0)
    highest.update(zip(keep, top[seen].tolist()))
    excess = len(highest) - max_keys
    if excess > 0:
        for k in list(islice(highest, excess)):
            del highest[k]
    return g, d, missing


# -- cross-field rules --------------------------------------------------------------------
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge}
_FN = {"abs": np.abs, "min": np.minimum, "max": np.maximum}


def compile_rule(expr: str) -> tuple[Any, list[str]]:
    """A vectorised function ``columns -> bool array`` from a small safe expression, and the fields it reads.

    >>> fn, fields = compile_rule("end >= start and abs(bytes) < 10")
    >>> fields, fn({"end": np.array([2, 1]), "start": np.array([1, 2]), "bytes": np.array([3, 3])}).tolist()
    (['end', 'start', 'bytes'], [True, False])
    """
    tree = ast.parse(expr, mode="eval").body
    names: list[str] = []

    def build(node: ast.AST):
        if isinstance(node, ast.Name):
            if node.id not in names:
                names.append(node.id)
            return lambda c, n=node.id: c[n]
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
            return lambda c, v=node.value: v
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            f, a, b = _BIN[type(node.op)], build(node.left), build(node.right)
            return lambda c: f(a(c), b(c))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            a = build(node.operand)
            return (lambda c: -a(c)) if isinstance(node.op, ast.USub) else (lambda c: ~np.asarray(a(c), dtype=bool))
        if isinstance(node, ast.Compare):
            parts = [build(node.left)] + [build(x) for x in node.comparators]
            ops = [_CMP[type(o)] for o in node.ops]

            def compare(c):
                vals = [p(c) for p in parts]
                out = True
                for op, x, y in zip(ops, vals, vals[1:]):
                    out = out & np.asarray(op(x, y), dtype=bool)
                return out
            return compare
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            join = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return lambda c: _reduce(join, [p(c) for p in parts])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FN and not node.keywords:
            f, args = _FN[node.func.id], [build(a) for a in node.args]
            return lambda c: f(*[a(c) for a in args])
        raise ValueError(f"unsupported expression {ast.unparse(node)!r} in rule {expr!r}")

    return build(tree), names


def _reduce(join, values):
    out = np.asarray(values[0], dtype=bool)
    for v in values[1:]:
        out = join(out, np.asarray(v, dtype=bool))
    return out
