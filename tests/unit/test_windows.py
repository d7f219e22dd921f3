"""Window aggregates equal a brute-force computation over the same events, late and out of order included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tidal.features.windows import WindowAggregate
from tidal.stream.batch import Batch
from tidal.stream.state import StateStore

AGGS = {"n": ("x", "count"), "s": ("x", "sum"), "m": ("x", "mean"), "sd": ("x", "std"), "lo": ("x", "min"),
        "hi": ("x", "max"), "last": ("x", "last")}


def events(n=1500, seed=0, jitter=20_000):
    rng = np.random.default_rng(seed)
    base = np.sort(rng.integers(0, 600_000, n))
    t = base + rng.integers(-jitter, jitter, n)  # out of order
    return [{"k": f"k{rng.integers(0, 20)}", "x": float(rng.normal(10, 3)), "t": int(max(0, v))} for v in t]


def brute(rows, window_ms, hop_ms, lateness_ms):
    """Arrival order; a window accepts an event while watermark < start + w + lateness."""
    def starts(t):
        if window_ms is None:
            return [0]
        if hop_ms is None:
            return [t - t % window_ms]
        return [s for s in range(t - t % hop_ms - window_ms, t + 1, hop_ms) if s <= t < s + window_ms]

    accepted = []  # (key, start, x) in arrival order
    watermark = -(1 << 62)
    results = []
    for r in rows:
        ss = starts(r["t"])
        open_ = [s for s in ss if window_ms is None or s + window_ms + lateness_ms > watermark]
        if not open_:
            results.append(None)
            continue
        watermark = max(watermark, r["t"])
        accepted.extend((r["k"], s, r["x"]) for s in open_)
        first = open_[0]
        xs = [x for k, s, x in accepted if k == r["k"] and s == first]
        results.append(xs)
    return results


@pytest.mark.parametrize("window_s,hop_s,lateness_s,jitter", [(None, None, 0, 20_000), (60, None, 0, 20_000),
                                                              (60, None, 15, 20_000), (120, 30, 10, 200_000)])
def test_window_matches_brute_force(window_s, hop_s, lateness_s, jitter):
    rows = events(jitter=jitter)
    step = WindowAggregate("k", AGGS, window_s=window_s, hop_s=hop_s, time_field="t", lateness_s=lateness_s,
                           late="drop")
    step.state_store = StateStore("w")
    outs = []
    for i in range(0, len(rows), 97):  # several batches: state carries over
        b = step.process(Batch.from_rows(rows[i:i + 97]))
        outs.extend(zip(b.offsets.tolist(), *(b.columns[name].tolist() for name in AGGS)))
    expected = brute(rows, None if window_s is None else window_s * 1000, None if hop_s is None else hop_s * 1000,
                     lateness_s * 1000)
    # Batch.from_rows numbers offsets per batch: rebuild the global index of kept events
    idx = []
    for i in range(0, len(rows), 97):
        n_batch = len(rows[i:i + 97])
        kept = [e for e in range(n_batch) if expected[i + e] is not None]
        idx.extend(i + e for e in kept)
    assert len(outs) == len(idx)
    late = sum(e is None for e in expected)
    assert step.late_events == late
    if window_s is not None:
        assert late > 0  # the jitter really produced late events
    for (_off, n, s, m, sd, lo, hi, last), i in zip(outs, idx):
        xs = expected[i]
        assert n == len(xs) and s == pytest.approx(sum(xs)) and m == pytest.approx(sum(xs) / len(xs))
        assert sd == pytest.approx(math.sqrt(max(0.0, np.mean(np.square(xs)) - np.mean(xs) ** 2)), abs=1e-6)
        assert lo == min(xs) and hi == max(xs) and last == xs[-1]


def test_late_events_go_to_the_dlq():
    step = WindowAggregate("k", {"n": ("x", "count")}, window_s=10, time_field="t")
    step.state_store = StateStore("w")
    b = step.process(Batch.from_rows([{"k": "a", "x": 1.0, "t": 25_000}, {"k": "a", "x": 1.0, "t": 1_000},
                                      {"k": "a", "x": 1.0, "t": 26_000}]))
    assert b.columns["n"].tolist() == [1.0, 2.0]
    assert [(r.reason, r.offset) for r in b.rejected] == [("late_event", 1)]


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown aggregate"):
        WindowAggregate("k", {"x": ("x", "median")})
    with pytest.raises(ValueError, match="hop_s"):
        WindowAggregate("k", {"x": ("x", "sum")}, hop_s=5)


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_running_aggregates_forget_a_key_idle_for_idle_ttl_s_whatever_the_batching(batch_size):
    from tidal.features import WindowAggregate
    from tidal.stream.batch import Batch
    from tidal.stream.state import StateStore

    rows = [{"k": "a", "x": 1.0, "ts": 0}, {"k": "b", "x": 1.0, "ts": 1000}, {"k": "a", "x": 1.0, "ts": 5000},
            {"k": "c", "x": 1.0, "ts": 12_000}, {"k": "b", "x": 1.0, "ts": 12_500},
            {"k": "a", "x": 1.0, "ts": 13_000}, {"k": "c", "x": 1.0, "ts": 40_000}]
    step = WindowAggregate("k", {"n": ("x", "count")}, time_field="ts", idle_ttl_s=10, max_future_s=None)
    step.state_store = StateStore("w")
    got = []
    for i in range(0, len(rows), batch_size):
        got += step.process(Batch.from_rows(rows[i:i + batch_size])).columns["n"].tolist()
    assert got == [1, 1, 2, 1, 1, 3, 1]  # b (11.5 s idle) and c (28 s) start again; a (8 s) does not
    assert sorted(k for k in step.state_store.partition(0).data if not k.startswith("\x00")) == ["c"]


def test_an_index_prepared_on_restore_prunes_as_one_built_in_the_first_batch():
    """``on_restored`` builds the expiry index off the worker's thread; ``on_assign`` takes it, and
    the windows it holds close exactly as with the index the first batch would build."""
    rows = [{"k": f"k{i % 7}", "x": float(i), "t": i * 1000} for i in range(60)]
    later = [{"k": f"k{i % 7}", "x": 1.0, "t": 200_000 + i} for i in range(7)]

    def run(prepare: bool):
        first = WindowAggregate("k", AGGS, window_s=30, time_field="t", max_future_s=None)
        first.state_store = StateStore("w")
        first.process(Batch.from_rows(rows))
        restored = WindowAggregate("k", AGGS, window_s=30, time_field="t", max_future_s=None)
        restored.state_store = first.state_store  # the state as a restore leaves it
        if prepare:
            restored.on_restored(0, first.state_store.partition(0))
            assert 0 in restored._ready
        restored.on_assign([("memory", 0)])
        assert (0 in restored._indexes) == prepare and not restored._ready
        out = restored.process(Batch.from_rows(later))
        return {c: out.columns[c].tolist() for c in AGGS}, sorted(restored.state_store.partition(0).data)

    assert run(prepare=True) == run(prepare=False)
