"""The step contract, checked over every registered YAML step type (River's ``checks`` idea).

A new step type is checked by registering it: every ``tidal.steps`` entry point must appear
in CASES (how to build one on the contract's data) or in NEEDS_CLUSTER (checked by the
integration tests instead), else this suite fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from tidal.learn.labels import LabelJoinStep
from tidal.stream.batch import Batch
from tidal.stream.context import SideOutputs, StepContext
from tidal.stream.encode import encode_outputs
from tidal.stream.spec import step_types
from tidal.stream.state import StateStore, apply_record
from tidal.stream.step import Step

#: type -> YAML args (model paths are filled in from the toy model)
CASES: dict[str, dict] = {
    "score": {"model": "MODEL"},
    "explain": {"sample": 1.0, "k": 2},
    "quality": {"impute": {"x": "median"}, "outliers": {"y": {"method": "mad", "policy": "flag"}},
                "integrity": {"id": "id"}, "profile": {"publish_every_s": 0}},
    "validate": {"schema": {"id": "int", "k": "str", "x": {"type": "float", "min": -2.0, "max": 2.0,
                                                         "policy": {"range": "reject"}}}},
    "normalize": {},
    "impute": {"x": "median", "c": "most_frequent"},
    "outliers": {"y": {"method": "iqr", "policy": "clip"}},
    "integrity": {"id": "id", "rules": [{"name": "pos", "expr": "id >= 0", "policy": "reject"}]},
    "profile": {"publish_every_s": 0},
    "anomaly": {"features": ["x", "y"], "detector": "robust", "warmup": 50},
    "anomaly#series": {"field": "x", "key": "k", "time_field": "ts", "snapshot_every": 16},
    "anomaly#series-change": {"field": "y", "key": "k", "detector": "knn", "change": True, "snapshot_every": 25},
    "window": {"key": "k", "time_field": "ts", "window_s": 60, "aggs": {"n": ["x", "count"], "s": ["x", "sum"]}},
    "sliding": {"key": "k", "time_field": "ts", "window_s": 60, "aggs": {"m": ["x", "mean"]}},
    "session": {"key": "k", "time_field": "ts", "gap_s": 30, "aggs": {"n": ["x", "count"]}},
    "sql": {"query": "SELECT *, x * 2 AS x2 FROM batch"},
}
NEEDS_CLUSTER = {"deployed": "follows tidal.models", "remote": "calls a model server",
                 "enrich": "follows a table topic"}
#: steps that may drop rows without rejecting them (joins, filters)
DROPS = {"label_join"}


def rows(n: int, start: int = 0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed + start)
    return [{"id": start + i, "event_id": f"e{start + i}", "k": f"k{(start + i) % 5}", "ts": 1_700_000_000_000 +
             (start + i) * 1000, "x": float(rng.normal()), "y": float(rng.normal()), "c": "abc"[(start + i) % 3]}
            for i in range(n)]


def batch(n: int, start: int = 0) -> Batch:
    b = Batch.from_rows(rows(n, start), topic="t.events")
    b.offsets = np.arange(start, start + n, dtype=np.int64)
    return b


def build(kind: str, toy_model: Path) -> list[Step]:
    """The step under test (and what it needs before it), fresh."""
    args = orjson.loads(orjson.dumps(CASES[kind]))
    if "model" in args:
        args["model"] = str(toy_model)
    types = step_types()
    previous: list[Step] = []
    if kind == "explain":
        previous = [types["score"].load()({"model": str(toy_model)}, base=".", kind="score", previous=[])]
    kind = kind.partition("#")[0]  # several cases of one type: "type#case"
    step = types[kind].load()(args, base=".", kind=kind, previous=previous)
    return [*previous, step]


def opened(steps: list[Step], store_for: dict | None = None) -> tuple[list[Step], SideOutputs]:
    sink = SideOutputs()
    for s in steps:
        store = None
        if s.state_name:
            store = (store_for or {}).get(s.state_name) or StateStore(s.state_name)
            if hasattr(s, "snapshot_every_s"):
                s.snapshot_every_s = 0.0  # snapshot every batch: the contract compares restores exactly
        ctx = StepContext("t", step=s.name, topics=s.outputs("t"), sink=sink, store=store)
        s.bind(ctx)
        s.open(ctx)
        s.on_assign([("t.events", 0)])
    return steps, sink


def run(steps: list[Step], b: Batch) -> Batch:
    for s in steps:
        out = s.process(b)
        assert isinstance(out, Batch), f"{s!r} returned {type(out).__name__}"
        b = out
    return b


ALL = sorted(CASES)


def test_every_registered_step_type_is_checked():
    missing = set(step_types()) - {c.partition("#")[0] for c in CASES} - set(NEEDS_CLUSTER)
    assert not missing, f"register a contract case for {sorted(missing)}"


@pytest.fixture(params=ALL)
def kind(request) -> str:
    return request.param


def test_empty_batch_gives_a_batch(kind, toy_model):
    steps, _ = opened(build(kind, toy_model))
    out = run(steps, batch(0))
    assert len(out) == 0 and out.rejected == []


def test_rejected_rows_travel_on(kind, toy_model):
    steps, _ = opened(build(kind, toy_model))
    b = batch(20)
    b = b.reject(np.ones(20, bool), "upstream", "rejected before", step="before")
    out = run(steps, b)
    assert len(out) == 0 and [r.reason for r in out.rejected] == ["upstream"] * 20


def test_accounting_every_row_is_out_rejected_or_dropped(kind, toy_model):
    steps, _ = opened(build(kind, toy_model))
    for start in (0, 200):
        b = batch(200, start)
        out = run(steps, b)
        assert len(out) + len(out.rejected) <= 200
        if steps[-1].name not in DROPS:
            assert len(out) + len(out.rejected) == 200, (len(out), len(out.rejected))


def test_deterministic(kind, toy_model):
    a, _ = opened(build(kind, toy_model))
    b, _ = opened(build(kind, toy_model))
    for start in (0, 150, 300):
        assert encode_outputs(run(a, batch(150, start))) == encode_outputs(run(b, batch(150, start)))


def test_snapshot_then_restore_gives_the_same_outputs(kind, toy_model):
    first, _ = opened(build(kind, toy_model))
    run(first, batch(300))
    stateful = [s for s in first if s.state_name]
    restored: dict[str, StateStore] = {}
    for s in stateful:  # the changelog the worker would have produced, applied to a fresh store
        store = StateStore(s.state_name)
        for p, k, v in s.state_store.changelog_records({0: 300}):
            apply_record(store.partition(p), k, v, committed=300)
        restored[s.state_name] = store
    second, _ = opened(build(kind, toy_model), restored)
    if not stateful:  # a stateless step: a fresh one continues the same way
        second, _ = opened(build(kind, toy_model))
        first, _ = opened(build(kind, toy_model))
    for start in (300, 450):
        assert encode_outputs(run(first, batch(150, start))) == encode_outputs(run(second, batch(150, start)))


def test_side_outputs_only_to_declared_topics(kind, toy_model):
    steps, sink = opened(build(kind, toy_model))
    run(steps, batch(200))
    for s in steps:
        s.close()
    declared = {t for s in steps for t in s.outputs("t")}
    assert {r.topic for r in sink.take()} <= declared


def test_label_join_contract():
    """A step that is not a YAML type: joins drop rows until their pair arrives, and restore."""
    steps, _ = opened([LabelJoinStep("t.labels")])
    preds = batch(50)
    assert len(run(steps, preds)) == 0  # waiting
    labels = Batch.from_rows([{"event_id": f"e{i}", "label": i % 2} for i in range(50)], topic="t.labels")
    out = run(steps, labels)
    assert sorted(r["event_id"] for r in out.rows) == sorted(f"e{i}" for i in range(50))
    assert len(steps[0].state_store.partition(0)) == 0  # nothing left waiting
