"""Pipelines in memory: defaults, step failures, empty batches, scoring end to end."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.broker.topics import COMPACTED, TopicSpec
from tidal.models import ScoreStep, load_model
from tidal.quality.schema import Schema
from tidal.stream.batch import Batch
from tidal.stream.pipeline import Pipeline, run_steps
from tidal.stream.step import FunctionStep, Step


class Recorder(Step):
    """Records the batches it is given and adds a column, so we can see whether it ran."""

    name = "recorder"

    def __init__(self):
        self.seen: list[list[float]] = []

    def process(self, batch: Batch) -> Batch:
        self.seen.append(batch.column("x").tolist())
        return batch.with_column("recorded", np.ones(len(batch), dtype=bool))


class Boom(Step):
    name = "boom"
    error_reason = "boom_failed"

    def process(self, batch: Batch) -> Batch:
        batch.with_column("half_done", np.zeros(len(batch)))  # mutate first, then fail
        raise RuntimeError("kaput")


SCHEMA = Schema.from_dict({"x": "float"})


def test_defaults_from_name():
    p = Pipeline("fraud")
    assert p.sources == ["fraud.events"]
    assert p.sink == "fraud.predictions"
    assert p.dlq == "fraud.dlq"
    assert p.group == "tidal.fraud"
    assert p.steps == [] and p.schema is None
    assert (p.max_batch, p.max_wait_ms, p.exactly_once, p.partitions) == (5000, 0, False, 4)


def test_explicit_topics_and_group_win():
    p = Pipeline("x", sources=["a", "b"], sink="out", dlq="dead", group="g")
    assert (p.sources, p.sink, p.dlq, p.group) == (["a", "b"], "out", "dead", "g")


def test_pipelines_do_not_share_steps():
    a, b = Pipeline("a"), Pipeline("b")
    a.then(lambda batch: batch)
    assert b.steps == []


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_wait_ms": -1}])
def test_invalid_batching_raises(kwargs):
    with pytest.raises(ValueError):
        Pipeline("p", **kwargs)


def test_then_wraps_functions_and_keeps_steps():
    rec = Recorder()

    def add_one(b):
        return b.with_column("y", b.column("x") + 1)

    p = Pipeline("p").then(add_one).then(rec).then(lambda b: b, name="ident")
    assert isinstance(p.steps[0], FunctionStep) and p.steps[0].name == "add_one"
    assert p.steps[1] is rec
    assert p.steps[2].name == "ident"


class Publishes(Step):
    """Declares side outputs (one per pipeline, one fixed) and state."""

    state_name = "publishes"
    side_outputs = ("{pipeline}.reports", "tidal.models")

    def process(self, batch):
        self.ctx.emit(f"{self.ctx.pipeline}.reports", {"n": len(batch)}, "k")
        return batch


def test_topic_specs_are_sources_sink_dlq_and_declared_side_outputs():
    p = Pipeline("p", sources=["s1", "s2"], partitions=6)
    specs = {s.name: s for s in p.topic_specs()}
    assert set(specs) == {"s1", "s2", "p.predictions", "p.dlq"}  # nothing the steps do not write
    assert specs["s1"].partitions == specs["s2"].partitions == specs["p.predictions"].partitions == 6
    assert specs["p.dlq"].partitions == 1
    specs = {s.name: s for s in Pipeline("p", steps=[Publishes()]).topic_specs()}
    assert {"p.reports", "tidal.models"} <= set(specs)
    assert specs["tidal.models"] == TopicSpec("tidal.models", 1, COMPACTED)
    assert dict(specs["tidal.models"].config)["cleanup.policy"] == "compact"


def test_side_outputs_are_declared_and_collected_by_test():
    side = []
    p = Pipeline("p", schema=SCHEMA, steps=[Publishes()])
    out, _ = p.test([b'{"x": 1}', b'{"x": 2}'], side=side)
    assert len(out) == 2 and [(r.topic, r.key, r.value) for r in side] == [("p.reports", b"k", b'{"n":2}')]

    class Undeclared(Step):
        def process(self, batch):
            self.ctx.emit("elsewhere", b"x")
            return batch

    _, dlq = Pipeline("q", schema=SCHEMA, steps=[Undeclared()]).test([b'{"x": 1}'])
    assert dlq[0].reason == "step_error" and "did not declare side output 'elsewhere'" in dlq[0].message


def test_state_names_are_unique_in_a_pipeline():
    from tidal.features import WindowAggregate

    with pytest.raises(ValueError, match="both declare state 'window'"):
        Pipeline("p", steps=[WindowAggregate("k", {"n": ["x", "count"]}, window_s=60),
                             WindowAggregate("k", {"m": ["x", "count"]}, window_s=60)])
    p = Pipeline("p", steps=[WindowAggregate("k", {"n": ["x", "count"]}, window_s=60)])
    with pytest.raises(ValueError, match="both declare state"):
        p.then(WindowAggregate("k", {"m": ["x", "count"]}, window_s=60))
    ok = Pipeline("p", steps=[WindowAggregate("k", {"n": ["x", "count"]}, window_s=60, name="w1"),
                              WindowAggregate("k", {"m": ["x", "count"]}, window_s=60, name="w2")])
    assert [ok.changelog(s) for s in ok.steps] == ["p.w1.changelog", "p.w2.changelog"]


def test_a_step_must_implement_process():
    class Nothing(Step):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Nothing()


def test_failing_step_sends_its_input_batch_to_dlq():
    before = Recorder()
    after = Recorder()

    def drop_negative(b):
        return b.reject(b.column("x") < 0, "negative", "x < 0", step="drop_negative")

    p = Pipeline("p", schema=SCHEMA).then(drop_negative).then(before).then(Boom()).then(after)
    values = [b'{"x": 1}', b'{"x": -1}', b"junk", b'{"x": 2}']
    out, dlq = p.test(values)  # returns normally
    assert out == []
    assert after.seen == []  # later steps never ran
    assert before.seen == [[1.0, 2.0]]
    by_offset = {r.offset: r for r in dlq}
    assert sorted(by_offset) == [0, 1, 2, 3]
    assert (by_offset[1].reason, by_offset[1].step) == ("negative", "drop_negative")
    assert (by_offset[2].reason, by_offset[2].step) == ("invalid_json", "decode")
    for off in (0, 3):
        r = by_offset[off]
        assert (r.reason, r.step) == ("boom_failed", "boom")
        assert "RuntimeError" in r.message and "kaput" in r.message
        assert r.value == values[off]  # the original bytes, ready to replay
        assert r.topic == "p.events"


def test_default_error_reason_of_a_function_step():
    def broken(b):
        raise KeyError("nope")

    out, dlq = Pipeline("p", schema=SCHEMA).then(broken).test([b'{"x": 1}'])
    assert out == []
    [r] = dlq
    assert (r.reason, r.step) == ("step_error", "broken")
    assert "KeyError" in r.message


def test_run_steps_continues_nothing_after_failure():
    rec = Recorder()
    out = run_steps([Boom(), rec], Batch.from_rows([{"x": 1.0}, {"x": 2.0}]))
    assert len(out) == 0 and len(out.rejected) == 2
    assert rec.seen == []


def test_later_steps_skipped_for_empty_batch():
    first, later = Recorder(), Recorder()

    def reject_all(b):
        return b.reject_all("nope", "all of them", "reject_all")

    p = Pipeline("p", schema=SCHEMA).then(first).then(reject_all).then(later)
    out, dlq = p.test([b'{"x": 1}', b'{"x": 2}'])
    assert out == []
    assert first.seen == [[1.0, 2.0]]
    assert later.seen == []
    assert [r.reason for r in dlq] == ["nope", "nope"]


def test_no_step_runs_when_every_record_fails_decoding():
    rec = Recorder()
    out, dlq = Pipeline("p", schema=SCHEMA).then(rec).test([b"bad", b'{"x": "no"}'])
    assert out == [] and rec.seen == []
    assert [r.reason for r in dlq] == ["invalid_json", "wrong_type"]


def test_outputs_carry_source_position():
    p = Pipeline("p", schema=SCHEMA).then(lambda b: b.with_column("y", b.column("x") * 2), name="double")
    out, dlq = p.test([b'{"x": 1, "keep": "me"}', b"bad", b'{"x": 3}'], topic="other")
    recs = [orjson.loads(o) for o in out]
    assert recs == [
        {"x": 1, "keep": "me", "y": 2.0, "source_topic": "other", "source_partition": 0, "source_offset": 0,
         "source_timestamp": 0},
        {"x": 3, "y": 6.0, "source_topic": "other", "source_partition": 0, "source_offset": 2,
         "source_timestamp": 0},
    ]
    assert [(r.topic, r.offset) for r in dlq] == [("other", 1)]


def test_no_schema_pipeline():
    p = Pipeline("p").then(lambda b: b.with_column("n", np.array([len(r) for r in b.rows])), name="count")
    out, dlq = p.test([b'{"a": 1, "b": 2}', b"[1]", b'{"c": 3}'])
    assert [orjson.loads(o)["n"] for o in out] == [2, 1]
    assert [r.offset for r in dlq] == [1]


# --- scoring end to end --------------------------------------------------------------------------

POINTS = [(0.05, 0.1), (0.95, 0.9), (0.3, 0.2), (0.8, 0.7), (0.5, 0.45), (0.6, 0.6)]


def _values(points):
    return [orjson.dumps({"id": i, "x": x, "y": y}) for i, (x, y) in enumerate(points)]


def test_score_pipeline_end_to_end(toy_model):
    model = load_model(toy_model)
    p = Pipeline("toy", schema=Schema.from_dict({"x": "float", "y": "float"})).then(ScoreStep(model))
    values = _values(POINTS)
    values.insert(3, b'{"x": "oops", "y": 1}')
    out, dlq = p.test(values)
    assert [(r.reason, r.offset) for r in dlq] == [("wrong_type", 3)]
    recs = [orjson.loads(o) for o in out]
    assert [r["id"] for r in recs] == list(range(len(POINTS)))
    assert [r["source_offset"] for r in recs] == [0, 1, 2, 4, 5, 6]
    threshold = model.card.threshold
    for r, (x, y) in zip(recs, POINTS):
        assert (r["x"], r["y"]) == (x, y)
        assert 0.0 <= r["score"] <= 1.0
        assert r["decision"] is (r["score"] >= threshold)
        assert r["model"] == "toy" and r["model_version"] == "1"
        assert r["source_topic"] == "toy.events"
        assert r["source_partition"] == 0 and r["source_timestamp"] == 0
    # The toy model learned x + y > 1: clear cases must come out right.
    assert recs[0]["decision"] is False and recs[2]["decision"] is False
    assert recs[1]["decision"] is True and recs[3]["decision"] is True
    assert recs[1]["score"] > 0.9 and recs[0]["score"] < 0.1
    # Scores equal the model's own batch prediction on the same rows.
    X = np.array(POINTS)
    np.testing.assert_allclose([r["score"] for r in recs], model.predict(X))


def test_score_threshold_override(toy_model):
    schema = Schema.from_dict({"x": "float", "y": "float"})
    values = _values(POINTS)
    default = [orjson.loads(o) for o in Pipeline("a", schema=schema).then(ScoreStep.from_path(str(toy_model)))
               .test(values)[0]]
    strict = [orjson.loads(o) for o in Pipeline("b", schema=schema).then(ScoreStep.from_path(str(toy_model),
                                                                                               threshold=1.01))
              .test(values)[0]]
    assert [r["score"] for r in default] == [r["score"] for r in strict]
    assert any(r["decision"] for r in default)
    assert not any(r["decision"] for r in strict)


def test_score_missing_optional_feature_is_nan_not_crash(toy_model):
    """A missing optional feature reaches the model as NaN (LightGBM handles missing values)."""
    schema = Schema.from_dict({"x": "float", "y": {"type": "float", "required": False}})
    out, dlq = Pipeline("p", schema=schema).then(ScoreStep(load_model(toy_model))).test([b'{"x": 0.9}'])
    assert dlq == []
    [rec] = [orjson.loads(o) for o in out]
    assert 0.0 <= rec["score"] <= 1.0
    assert "y" not in rec  # the input record is not rewritten


def test_step_returning_none_is_a_step_error_not_a_crash():
    from tidal.stream.batch import Batch
    from tidal.stream.pipeline import run_steps
    from tidal.stream.step import FunctionStep

    out = run_steps([FunctionStep(lambda b: None, name="forgetful")], Batch.from_rows([{"x": 1.0}, {"x": 2.0}]))
    assert len(out) == 0 and len(out.rejected) == 2
    assert out.rejected[0].reason == "step_error" and "not a Batch" in out.rejected[0].message
