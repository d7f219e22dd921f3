"""Imputation, outliers, integrity — and the per-partition state contract every stateful step obeys."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.quality.base import PartitionedStep
from tidal.quality.impute import ImputeStep
from tidal.quality.integrity import IntegrityStep, compile_rule
from tidal.quality.outliers import OutlierStep
from tidal.stream.batch import Batch


def batch(rows, partition=0, types=None, start=0):
    b = Batch.from_rows(rows, topic="t.events", types=types)
    b.partitions[:] = partition
    b.offsets += start
    b.timestamps = 1_000_000 + b.offsets * 10
    return b


def recs(b):
    return [orjson.loads(v) for v in b.values]


# -- imputation -------------------------------------------------------------------------------
def test_impute_strategies_and_marks():
    step = ImputeStep({"a": "mean", "b": "median", "c": "most_frequent", "d": {"strategy": "constant", "value": -1}})
    rows = [{"a": 1.0, "b": 1.0, "c": "x", "d": 5.0}, {"a": 3.0, "b": 100.0, "c": "x", "d": 6.0},
            {"a": 2.0, "b": 2.0, "c": "y", "d": 7.0}, {"a": None, "b": None, "c": None, "d": None}]
    out = step.process(batch(rows, types={"a": "float", "b": "float", "d": "float"}))
    assert recs(out)[3] == {"a": 2.0, "b": 2.0, "c": "x", "d": -1.0,
                            "quality_flags": ["a:imputed", "b:imputed", "c:imputed", "d:imputed"]}
    assert step.counts[("b", "imputed", "median")] == 1


def test_impute_last_value_per_key_across_batches_and_unavailable():
    step = ImputeStep({"port": {"strategy": "last", "key": "host"}})
    step.process(batch([{"host": "a", "port": 22}, {"host": "b", "port": 80}], types={"port": "int"}))
    out = step.process(batch([{"host": "b", "port": None}, {"host": "a", "port": None}, {"host": "a", "port": 25},
                              {"host": "a", "port": None}, {"host": "c", "port": None}], types={"port": "int"}))
    assert [r["port"] for r in recs(out)] == [80, 22, 25, 25, None]
    assert step.counts[("port", "imputed", "unavailable")] == 1


def test_impute_state_is_per_partition():
    step = ImputeStep({"x": "mean"})
    step.process(batch([{"x": 10.0}], partition=0, types={"x": "float"}))
    step.process(batch([{"x": 1000.0}], partition=1, types={"x": "float"}))
    out = step.process(batch([{"x": None}], partition=0, types={"x": "float"}))
    assert recs(out)[0]["x"] == 10.0
    step.on_revoke([("t.events", 0)])
    assert ("t.events", 0) not in step.states and ("t.events", 1) in step.states


def test_impute_rejects_bad_configuration():
    with pytest.raises(ValueError):
        ImputeStep({"x": "mode"})
    with pytest.raises(ValueError):
        ImputeStep({"x": {"strategy": "constant"}})


# -- outliers ---------------------------------------------------------------------------------
@pytest.fixture
def normal_rows():
    rng = np.random.default_rng(1)
    return [{"host": f"h{i % 2}", "x": float(v) * (1 if i % 2 else 100)} for i, v in enumerate(rng.normal(10, 1, 400))]


@pytest.mark.parametrize("method", ["mad", "iqr"])
def test_outliers_flag(normal_rows, method):
    step = OutlierStep({"x": {"method": method, "policy": "flag"}})
    step.process(batch(normal_rows))
    out = step.process(batch([{"host": "h1", "x": 10.5}, {"host": "h1", "x": 1e6}, {"host": "h1", "x": None}]))
    assert [r.get("quality_flags") for r in recs(out)] == [None, ["x:outlier"], None]


def test_outliers_per_key_baselines(normal_rows):
    glob = OutlierStep({"x": {"method": "mad", "policy": "flag"}})
    per_key = OutlierStep({"x": {"method": "mad", "policy": "flag", "key": "host"}})
    for s in (glob, per_key):
        s.process(batch(normal_rows))
    probe = [{"host": "h1", "x": 30.0}, {"host": "h0", "x": 1000.0}]  # unusual for h1, normal for h0
    assert [r.get("quality_flags") for r in recs(per_key.process(batch(probe)))] == [["x:outlier"], None]
    assert recs(glob.process(batch(probe)))[0].get("quality_flags") is None


@pytest.mark.parametrize("policy", ["clip", "drop", "reject"])
def test_outlier_policies(normal_rows, policy):
    step = OutlierStep({"x": {"method": "iqr", "policy": policy, "key": "host"}})
    step.process(batch(normal_rows))
    out = step.process(batch([{"host": "h1", "x": 10.0}, {"host": "h1", "x": 500.0}]))
    if policy == "clip":
        r = recs(out)[1]
        assert 10 < r["x"] < 20 and r["quality_flags"] == ["x:clipped"]
        assert step.counts[("x", "outlier", "fix")] == 1
    elif policy == "drop":
        assert len(out) == 1 and step.dropped["outlier"] == 1
    else:
        assert len(out) == 1 and out.rejected[0].reason == "outlier" and "outside" in out.rejected[0].message


def test_mad_of_zero_falls_back_to_std():
    step = OutlierStep({"x": {"method": "mad", "policy": "flag", "min_count": 5}})
    step.process(batch([{"x": 1.0}] * 90 + [{"x": 2.0}] * 10))
    out = step.process(batch([{"x": 1.0}, {"x": 2.0}, {"x": 50.0}]))
    assert [r.get("quality_flags") for r in recs(out)] == [None, None, ["x:outlier"]]


# -- integrity --------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["drop", "flag", "reject"])
def test_duplicates(policy):
    step = IntegrityStep(id="id", duplicates=policy)
    step.process(batch([{"id": "a"}, {"id": "b"}]))
    out = step.process(batch([{"id": "b"}, {"id": "c"}, {"id": "c"}], start=2))
    assert step.counts[("id", "duplicate", policy)] == 2
    if policy == "drop":
        assert [r["id"] for r in recs(out)] == ["c"] and step.dropped["duplicate"] == 2
    elif policy == "flag":
        assert [r.get("quality_flags") for r in recs(out)] == [["id:duplicate"], None, ["id:duplicate"]]
    else:
        assert [r.reason for r in out.rejected] == ["duplicate", "duplicate"]


def test_duplicate_horizon_by_count_and_time():
    step = IntegrityStep(id="id", horizon=2)
    step.process(batch([{"id": 1}, {"id": 2}, {"id": 3}]))
    assert len(step.process(batch([{"id": 1}]))) == 1  # forgotten: beyond the last 2 ids
    timed = IntegrityStep(id="id", horizon_s=1.0)
    b = batch([{"id": 1}])
    b.timestamps[:] = 0
    timed.process(b)
    late = batch([{"id": 2}, {"id": 1}])
    late.timestamps[:] = 5000  # 5 s later in event time
    assert len(timed.process(late)) == 2


def test_sequences_gaps_and_disorder_per_key():
    step = IntegrityStep(sequence={"key": "k", "field": "s", "policy": "drop"})
    step.process(batch([{"k": "a", "s": 1}, {"k": "b", "s": 10}]))
    out = step.process(batch([{"k": "a", "s": 2}, {"k": "b", "s": 14}, {"k": "a", "s": 5}, {"k": "a", "s": 3},
                              {"k": "b", "s": 14}, {"k": "c", "s": 7}]))
    assert [(r["k"], r["s"], r.get("quality_flags")) for r in recs(out)] == [
        ("a", 2, None), ("b", 14, ["s:gap"]), ("a", 5, ["s:gap"]), ("c", 7, None)]
    assert step.counts[("s", "gap_events", "count")] == 3 + 2 and step.dropped["out_of_order"] == 2


def test_ordering_by_timestamp_has_no_gaps():
    step = IntegrityStep(ordering={"key": "k", "field": "ts", "policy": "flag"})
    out = step.process(batch([{"k": "a", "ts": 100}, {"k": "a", "ts": 500}, {"k": "a", "ts": 300}]))
    assert [r.get("quality_flags") for r in recs(out)] == [None, None, ["ts:out_of_order"]]


@pytest.mark.parametrize("policy", ["reject", "flag", "drop"])
def test_cross_field_rules(policy):
    step = IntegrityStep(rules=[{"name": "end_after_start", "expr": "end >= start", "policy": policy}])
    out = step.process(batch([{"start": 1, "end": 2}, {"start": 5, "end": 2}, {"start": 5, "end": None}],
                             types={"start": "float", "end": "float"}))
    assert step.counts[("end_after_start", "violated", policy)] == 1  # a missing operand is not judged
    if policy == "reject":
        assert out.rejected[0].reason == "rule_violated" and "end >= start" in out.rejected[0].message


def test_rule_expressions_are_safe():
    fn, fields = compile_rule("(a + b) * 2 <= max(c, 1) or not a > 0")
    cols = {"a": np.array([1.0, -1.0]), "b": np.array([1.0, 0.0]), "c": np.array([3.0, 0.0])}
    assert fields == ["a", "b", "c"] and fn(cols).tolist() == [False, True]
    for bad in ("__import__('os').system('x')", "a.real > 0", "[a][0] > 1", "lambda: 1"):
        with pytest.raises((ValueError, SyntaxError)):
            compile_rule(bad)


# -- the state contract, for every stateful step ---------------------------------------------
STEPS = [
    lambda: ImputeStep({"x": "median", "c": "most_frequent", "y": "mean", "p": {"strategy": "last", "key": "k"}}),
    lambda: OutlierStep({"x": {"method": "mad", "key": "k"}, "y": {"method": "iqr"}}),
    lambda: IntegrityStep(id="id", sequence={"key": "k", "field": "s"}),
]


def stream(seed, n, start=0):
    rng = np.random.default_rng(seed)
    rows = [{"id": f"e{start + i}", "k": f"k{i % 7}", "s": start // 7 + i // 7 + int(rng.random() < 0.05),
             "x": float(rng.normal()) if rng.random() > 0.1 else None, "y": float(rng.exponential()),
             "c": str(rng.choice(["a", "b"])) if rng.random() > 0.1 else None,
             "p": int(rng.integers(0, 5)) if rng.random() > 0.2 else None} for i in range(n)]
    return batch(rows, types={"x": "float", "y": "float", "p": "int", "s": "int"}, start=start)


@pytest.mark.parametrize("make", STEPS, ids=["impute", "outliers", "integrity"])
def test_snapshot_restore_continues_identically(make):
    tp = ("t.events", 0)
    a = make()
    a.on_assign([tp])
    a.process(stream(1, 300))
    data = a.snapshot(tp)
    assert isinstance(data, bytes)
    b = make()
    b.restore(tp, data)
    nxt = stream(2, 200, start=300)
    out_a, out_b = a.process(nxt), b.process(stream(2, 200, start=300))
    assert out_a.values == out_b.values and a.snapshot(tp) == b.snapshot(tp)
    fresh = make()
    assert fresh.process(stream(2, 200, start=300)).values != out_a.values  # the state mattered


@pytest.mark.parametrize("make", STEPS, ids=["impute", "outliers", "integrity"])
def test_assign_creates_and_revoke_drops_partition_state(make):
    step = make()
    assert isinstance(step, PartitionedStep)
    step.on_assign([("t.events", 0), ("t.events", 3)])
    assert set(step.states) == {("t.events", 0), ("t.events", 3)}
    step.on_revoke([("t.events", 3)])
    assert set(step.states) == {("t.events", 0)}


@pytest.mark.parametrize("seed", range(5))
def test_sequence_check_matches_a_plain_loop(seed):
    from tidal.quality.integrity import _check_order

    rng = np.random.default_rng(seed)
    n = 300
    keys = [f"k{v}" for v in rng.integers(0, 12, n)]
    x = rng.integers(0, 60, n).astype(float) * (1e9 if seed == 4 else 1)  # seed 4: values too far apart to lift
    x[rng.random(n) < 0.05] = np.nan
    highest = {"k1": 20.0 * (1e9 if seed == 4 else 1), "k3": 5.0}
    want_h, want_g, want_d, want_missing = dict(highest), [], [], 0
    for k, v in zip(keys, x.tolist()):
        prev = want_h.get(k)
        gap = prev is not None and v == v and v > prev + 1
        want_g.append(gap)
        want_d.append(prev is not None and v == v and v <= prev)
        want_missing += int(v - prev - 1) if gap else 0
        if v == v:
            want_h[k] = v if prev is None else max(prev, v)
    g, d, missing = _check_order(x, keys, highest, True, 1000)
    assert g.tolist() == want_g and d.tolist() == want_d and missing == want_missing and highest == want_h
