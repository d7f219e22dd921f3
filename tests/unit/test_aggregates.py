"""Distinct counts (DataSketches HLL) and user reducers: brute force, error bounds, changelog round trips."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.features import Agg, FunctionReducer, Reducer, SessionAggregate, SlidingAggregate, WindowAggregate
from tidal.features.aggregates import DISTINCT_BOUND_3SD, as_reducer
from tidal.stream.batch import Batch
from tidal.stream.state import StateStore, apply_record


class Quantile(Reducer):
    """The q-quantile of the values (keeps them all: a JSON list)."""

    def __init__(self, q=0.9):
        self.q = q

    def init(self):
        return []

    def update(self, state, values):
        return state + values[~np.isnan(values)].tolist()  # (JSON would turn NaN into null)

    def merge(self, a, b):
        return a + b

    def result(self, state):
        return float(np.quantile(state, self.q)) if state else float("nan")


class SumOfSquares:
    """Duck-typed (no base class), state kept as raw float64 bytes."""

    def init(self):
        return 0.0

    def update(self, state, values):
        return state + float(np.nansum(np.square(values)))

    def result(self, state):
        return state

    def to_bytes(self, state):
        return np.float64(state).tobytes()

    def from_bytes(self, data):
        return float(np.frombuffer(data, dtype=np.float64)[0])


def events(n=3000, seed=1, jitter=30_000, users=150):
    rng = np.random.default_rng(seed)
    t = np.maximum(0, np.sort(rng.integers(0, 900_000, n)) + rng.integers(-jitter, jitter, n))
    x = np.where(rng.random(n) < 0.03, np.nan, np.round(rng.normal(0, 1), 4))  # 3% missing
    return [{"k": f"k{rng.integers(0, 6)}", "x": float(xi), "u": f"user-{rng.integers(0, users)}", "t": int(v)}
            for xi, v in zip(x, t)]


def _present(s, v):
    return s + v[~np.isnan(v)].tolist()


AGGS = {"users": ("u", "distinct"), "p90": ("x", Quantile), "ss": ("x", SumOfSquares),
        "rng": ("x", (list, _present, lambda s: max(s) - min(s) if s else float("nan"))),
        "mean": ("x", "mean"), "n": ("x", "count"), "lo": ("x", "min")}


def brute_tumbling(rows, window_ms, lateness_ms):
    watermark, seen, out = -(1 << 62), [], []
    for r in rows:
        start = r["t"] - r["t"] % window_ms
        if start + window_ms + lateness_ms <= watermark:
            out.append(None)
            continue
        watermark = max(watermark, r["t"])
        seen.append((r["k"], start, r))
        mine = [e for k, s, e in seen if k == r["k"] and s == start]
        xs = np.array([e["x"] for e in mine if e["x"] == e["x"]])
        some = len(xs) > 0
        out.append({"users": len({e["u"] for e in mine}), "p90": float(np.quantile(xs, 0.9)) if some else np.nan,
                    "ss": float(np.square(xs).sum()), "rng": float(xs.max() - xs.min()) if some else np.nan,
                    "mean": xs.mean() if some else np.nan, "n": len(xs), "lo": xs.min() if some else np.nan})
    return out


def run(step, rows, batch=250):
    got = []
    for i in range(0, len(rows), batch):
        b = step.process(Batch.from_rows(rows[i:i + batch]))
        got.extend((i + o, {n: b.columns[n][j] for n in AGGS}) for j, o in enumerate(b.offsets.tolist()))
    return got


def test_distinct_and_reducers_in_tumbling_windows_match_brute_force():
    rows = events()
    step = WindowAggregate("k", AGGS, window_s=300, time_field="t", lateness_s=10, late="drop")
    want = brute_tumbling(rows, 300_000, 10_000)
    got = run(step, rows)
    assert [i for i, _ in got] == [i for i, w in enumerate(want) if w is not None]
    assert step.late_events == sum(w is None for w in want) > 0
    assert max(w["users"] for w in want if w) > 80  # the sketch's set mode, beyond its smallest (list) one
    for i, values in got:
        assert values["users"] == want[i]["users"]  # a few hundred values: exact in practice
        for name in ("p90", "ss", "rng", "mean", "n", "lo"):
            assert values[name] == pytest.approx(want[i][name], rel=1e-9, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("n_distinct", [2_000, 50_000])
def test_distinct_is_within_three_standard_deviations(n_distinct):
    rng = np.random.default_rng(n_distinct)
    values = rng.permutation(np.repeat(np.arange(n_distinct), 2))
    rows = [{"k": "a", "u": int(v), "t": 0} for v in values]
    tumbling = WindowAggregate("k", {"d": ("u", "distinct")}, time_field="t")
    est = tumbling.process(Batch.from_rows(rows)).columns["d"][-1]
    assert abs(est - n_distinct) / n_distinct <= DISTINCT_BOUND_3SD
    # two sessions of half the values each, then one event bridging them: a sketch union
    half = n_distinct // 2
    rows = ([{"k": "a", "u": int(v), "t": 0} for v in range(half)]
            + [{"k": "a", "u": int(v), "t": 100_000} for v in range(half, n_distinct)]
            + [{"k": "a", "u": 0, "t": 50_000}])
    session = SessionAggregate("k", {"d": ("u", "distinct")}, gap_s=60, lateness_s=100, time_field="t")
    est = session.process(Batch.from_rows(rows)).columns["d"][-1]
    assert abs(est - n_distinct) / n_distinct <= DISTINCT_BOUND_3SD


def test_missing_values_are_not_counted():
    b = WindowAggregate("k", {"d": ("u", "distinct")}, time_field="t").process(Batch.from_rows(
        [{"k": "a", "u": 1.0, "t": 0}, {"k": "a", "u": float("nan"), "t": 0}, {"k": "a", "u": 2.0, "t": 0}]))
    assert b.columns["d"].tolist() == [1.0, 1.0, 2.0]


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
@pytest.mark.parametrize("kind", ["window", "sliding", "session"])
def test_sketch_and_reducer_state_survive_the_changelog(kind, backend, tmp_path):
    def make():
        kw = dict(time_field="t", lateness_s=20, late="drop", state_backend=backend, state_path=str(tmp_path))
        aggs = dict(AGGS)
        if kind == "session":
            aggs.pop("rng")  # no merge
            aggs.pop("ss")
            return SessionAggregate("k", aggs, gap_s=15, **kw)
        return (WindowAggregate("k", aggs, window_s=60, **kw) if kind == "window"
                else SlidingAggregate("k", aggs, window_s=60, **kw))

    rows = events(n=1600)
    whole = make()
    expected = [whole.process(Batch.from_rows(rows[i:i + 200])).columns for i in range(0, 1600, 200)]
    step = make()
    log: dict[bytes, bytes] = {}  # the compacted changelog: the latest record per key
    got = []
    for i in range(0, 1600, 200):
        if i == 800:  # restart: a fresh step, its store rebuilt from the changelog alone
            step.state_store.close()
            step = make()
            step.state_store = StateStore(step.name)
            part = step.state_store.partition(0)
            for key, value in log.items():
                assert apply_record(part, key, value, 10**9)
            part.flush()
        got.append(step.process(Batch.from_rows(rows[i:i + 200])).columns)
        log.update((key, value) for _p, key, value in step.state_store.changelog_records({0: i + 200}))
    for e, g in zip(expected, got):
        for name in AGGS:
            if name in e:
                np.testing.assert_array_equal(g[name], e[name])


def test_reducer_forms():
    assert isinstance(as_reducer(Quantile), Quantile)
    assert isinstance(as_reducer((list, lambda s, v: s, len)), FunctionReducer)
    duck = as_reducer(SumOfSquares())
    assert duck.from_bytes(duck.to_bytes(2.5)) == 2.5  # the object's own serialisation
    named = as_reducer("tests.unit.test_aggregates:Quantile")
    assert named.from_bytes(named.to_bytes([1.0, 2.0])) == [1.0, 2.0]  # JSON by default
    assert orjson.loads(Quantile().to_bytes(np.array([1.0, 2.0]))) == [1.0, 2.0]
    with pytest.raises(TypeError, match="not a reducer"):
        as_reducer(42)
    with pytest.raises(ValueError, match="unknown aggregate"):
        Agg("x", "x", "median")
    with pytest.raises(ValueError, match="one of them"):
        Agg("x", "x")
