"""Sliding and session windows equal a brute-force computation over the same events.

Events arrive out of order (event times jittered) and some beyond the allowed lateness; the
brute force replays them one by one in arrival order with the definitions in the modules'
docstrings, keeping every accepted event, and recomputes each output from scratch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tidal.features import Reducer, SessionAggregate, SlidingAggregate
from tidal.stream.batch import Batch
from tidal.stream.state import DELETED, StateStore

NO_WM = -(1 << 62)


class Spread(Reducer):
    """max - min of the values present, with a JSON state [lo, hi] or None (merge for sessions)."""

    def init(self):
        return None

    def update(self, state, values):
        values = values[~np.isnan(values)]
        if not len(values):
            return state
        lo, hi = float(values.min()), float(values.max())
        return [lo, hi] if state is None else [min(state[0], lo), max(state[1], hi)]

    def merge(self, a, b):
        return a if b is None else b if a is None else [min(a[0], b[0]), max(a[1], b[1])]

    def result(self, state):
        return math.nan if state is None else state[1] - state[0]


AGGS = {"n": ("x", "count"), "s": ("x", "sum"), "m": ("x", "mean"), "sd": ("x", "std"), "lo": ("x", "min"),
        "hi": ("x", "max"), "last": ("x", "last"), "users": ("u", "distinct"), "spread": ("x", Spread),
        "visits": ("u", "count")}


def events(n=1200, seed=0, jitter=20_000, keys=8, span=600_000, grain=1):
    """``grain``: event times are multiples of it (coarse times hit window edges exactly)."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.integers(0, span, n))
    t = np.maximum(0, base + rng.integers(-jitter, jitter, n)) // grain * grain
    x = np.where(rng.random(n) < 0.05, np.nan, np.round(rng.normal(10, 3), 3))  # 5% missing
    u = [None if m else f"u{v}" for m, v in zip(rng.random(n) < 0.05, rng.integers(0, 40, n))]
    return [{"k": f"k{rng.integers(0, keys)}", "x": float(xi), "u": ui, "t": int(v)} for xi, ui, v in zip(x, u, t)]


def expected(xs, us):
    """Missing values (NaN, None) are skipped, as SQL aggregates skip NULL."""
    x = np.array([v for v in xs if not math.isnan(v)])
    us = [u for u in us if u is not None]
    if not len(x):
        return {"n": 0, "s": 0.0, "m": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan, "last": math.nan,
                "users": len(set(us)), "spread": math.nan, "visits": len(us)}
    return {"n": len(x), "s": x.sum(), "m": x.mean(), "sd": math.sqrt(max(0.0, np.mean(x * x) - x.mean() ** 2)),
            "lo": x.min(), "hi": x.max(), "last": x[-1], "users": len(set(us)), "spread": x.max() - x.min(),
            "visits": len(us)}


def brute_sliding(rows, window_ms, lateness_ms):
    watermark, accepted, out = NO_WM, [], []
    for r in rows:
        if r["t"] + lateness_ms < watermark:
            out.append(None)
            continue
        watermark = max(watermark, r["t"])
        accepted.append(r)
        mine = [a for a in accepted if a["k"] == r["k"] and r["t"] - window_ms < a["t"] <= r["t"]]
        out.append(expected([a["x"] for a in mine], [a["u"] for a in mine]))
    return out


def brute_sessions(rows, gap_ms, lateness_ms):
    """Sessions = runs of a key's open events less than ``gap`` apart; closed for good once the
    watermark reaches their last event + gap + lateness."""
    watermark, out = NO_WM, []
    open_: dict[str, list[dict]] = {}  # key → its events not in a closed session
    for r in rows:
        closed_by = watermark - gap_ms - lateness_ms
        evs = sorted(open_.get(r["k"], []), key=lambda e: e["t"])
        runs: list[list[dict]] = []
        for e in evs:
            if runs and e["t"] - runs[-1][-1]["t"] < gap_ms:
                runs[-1].append(e)
            else:
                runs.append([e])
        runs = [run for run in runs if run[-1]["t"] > closed_by]  # closed sessions never merge again
        near = [run for run in runs if run[0]["t"] - gap_ms < r["t"] < run[-1]["t"] + gap_ms]
        if not near and r["t"] <= closed_by:
            out.append(None)
            open_[r["k"]] = [e for run in runs for e in run]
            continue
        watermark = max(watermark, r["t"])
        open_[r["k"]] = [e for run in runs for e in run] + [r]
        mine = [e for run in near for e in run] + [r]  # not arrival order: `last` is checked only where
        # the event itself has a value (after a merge, `last` is the later session's until a value arrives)
        out.append(expected([e["x"] for e in mine], [e["u"] for e in mine]))
    return out


def run_step(step, rows, batch=97):
    step.state_store = StateStore(step.name)
    outs = []
    for i in range(0, len(rows), batch):  # several batches: state carries over
        b = step.process(Batch.from_rows(rows[i:i + batch]))
        offs = b.offsets.tolist()
        outs.extend((i + o, {name: b.columns[name][j] for name in AGGS}) for j, o in enumerate(offs))
    return outs


def check(step, rows, want, last_needs_value=False):
    got = run_step(step, rows)
    kept = [i for i, w in enumerate(want) if w is not None]
    assert [i for i, _ in got] == kept
    late = len(want) - len(kept)
    assert step.late_events == late and late > 0  # the jitter really produced late events
    for i, values in got:
        for name, v in values.items():
            if name == "last" and last_needs_value and math.isnan(rows[i]["x"]):
                continue
            assert v == pytest.approx(want[i][name], rel=1e-9, abs=1e-6, nan_ok=True), (i, name)


@pytest.mark.parametrize("window_s,lateness_s,jitter,grain", [(30, 0, 5_000, 1), (60, 15, 20_000, 1),
                                                               (120, 40, 60_000, 1), (30, 10, 20_000, 5_000)])
def test_sliding_matches_brute_force(window_s, lateness_s, jitter, grain):
    rows = events(jitter=jitter, grain=grain)
    step = SlidingAggregate("k", AGGS, window_s=window_s, time_field="t", lateness_s=lateness_s, late="drop")
    check(step, rows, brute_sliding(rows, window_s * 1000, lateness_s * 1000))


@pytest.mark.parametrize("gap_s,lateness_s,jitter,grain", [(5, 0, 5_000, 1), (10, 8, 20_000, 1), (30, 2, 60_000, 1),
                                                            (10, 5, 20_000, 5_000)])
def test_sessions_match_brute_force(gap_s, lateness_s, jitter, grain):
    rows = events(jitter=jitter, keys=12, grain=grain)
    step = SessionAggregate("k", AGGS, gap_s=gap_s, time_field="t", lateness_s=lateness_s, late="drop")
    want = brute_sessions(rows, gap_s * 1000, lateness_s * 1000)
    check(step, rows, want, last_needs_value=True)
    merged = sum(1 for i, w in enumerate(want) if w and w["n"] > 1)
    assert merged > 50  # sessions with several events, some bridged by out-of-order events


def test_a_late_event_bridging_two_sessions_merges_them():
    step = SessionAggregate("k", {"n": ("x", "count"), "s": ("x", "sum")}, gap_s=10, lateness_s=60,
                            time_field="t")
    b = step.process(Batch.from_rows([{"k": "a", "x": 1.0, "t": 0}, {"k": "a", "x": 2.0, "t": 15_000},
                                      {"k": "b", "x": 5.0, "t": 16_000}, {"k": "a", "x": 4.0, "t": 8_000}]))
    assert b.columns["n"].tolist() == [1, 1, 1, 3] and b.columns["s"].tolist() == [1, 2, 5, 7]
    sessions = step.state_store.partition(0).get("a")
    assert [(s[0], s[1]) for s in sessions] == [(0, 15_000)]


def test_late_events_go_to_the_dlq_and_are_counted():
    for cls, kw in ((SlidingAggregate, {"window_s": 10}), (SessionAggregate, {"gap_s": 10})):
        step = cls("k", {"n": ("x", "count")}, time_field="t", **kw)
        b = step.process(Batch.from_rows([{"k": "a", "x": 1.0, "t": 100_000}, {"k": "a", "x": 1.0, "t": 1_000},
                                          {"k": "a", "x": 1.0, "t": 100_500}]))
        assert b.columns["n"].tolist() == [1.0, 2.0]
        assert [(r.reason, r.offset) for r in b.rejected] == [("late_event", 1)] and step.late_events == 1


def test_closed_state_leaves_the_store_for_quiet_keys_too():
    for step in (SlidingAggregate("k", {"n": ("x", "count")}, window_s=10, time_field="t"),
                 SessionAggregate("k", {"n": ("x", "count")}, gap_s=10, time_field="t")):
        step.state_store = StateStore(step.name)
        step.process(Batch.from_rows([{"k": f"q{i}", "x": 1.0, "t": i} for i in range(500)]))
        part = step.state_store.partition(0)
        assert len(part) == 501  # 500 keys + the watermark
        step.state_store.take_changes()
        step.process(Batch.from_rows([{"k": "busy", "x": 1.0, "t": 60_000}]))  # only one key speaks
        assert sorted(k for k, _v in part.items()) == ["\x00watermark", "busy"]
        changes = {k: v for _p, k, v in step.state_store.take_changes()}
        assert sum(1 for v in changes.values() if v is DELETED) == 500  # tombstones in the changelog


def test_session_reducers_need_merge():
    with pytest.raises(ValueError, match="merge"):
        SessionAggregate("k", {"r": ("x", (list, lambda s, v: s + v.tolist(), len))}, gap_s=5)
    SlidingAggregate("k", {"r": ("x", (list, lambda s, v: s + v.tolist(), len))}, window_s=5)  # sliding: fine
