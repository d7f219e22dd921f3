"""Pipelines declared in YAML."""

from __future__ import annotations

import shutil
import textwrap
import uuid

import orjson
import pytest

from tidal.models.score import ScoreStep
from tidal.stream.schema import Schema
from tidal.stream.spec import from_dict, load_pipeline
from tidal.stream.step import FunctionStep, Step


@pytest.fixture
def project(tmp_path, toy_model):
    """A project folder with the toy model copied under models/toy-v1."""
    shutil.copytree(toy_model, tmp_path / "models" / "toy-v1")
    return tmp_path


@pytest.fixture
def step_module(tmp_path, monkeypatch):
    """A fresh, uniquely named module on sys.path holding a step class, a function and a factory."""
    name = f"tidal_test_steps_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "pkgs"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent("""
        import numpy as np
        from tidal.stream.step import Step

        def flag_large(batch):
            return batch.with_column("large", batch.column("x") > 10)

        def make_flag(limit):
            def flag(batch):
                return batch.with_column("over", batch.column("x") > limit)
            return flag

        class Scale(Step):
            name = "scale"

            def __init__(self, factor=1.0):
                self.factor = factor

            def process(self, batch):
                return batch.with_column("scaled", batch.column("x") * self.factor)

        READY = Scale(factor=-1.0)
    """))
    monkeypatch.syspath_prepend(str(folder))
    return name


def test_yaml_with_relative_model_path(project, tmp_path, monkeypatch):
    spec = project / "pipeline.yaml"
    spec.write_text(textwrap.dedent("""
        pipeline: toy
        schema:
          x: float
          y: {type: float, required: true}
          note: {type: str, required: false}
        steps:
          - score: {model: models/toy-v1, threshold: 0.7}
        batch: {max_batch: 123, max_wait_ms: 7}
        partitions: 2
        exactly_once: true
        kafka:
          consumer: {fetch.min.bytes: 1}
          producer: {linger.ms: 3}
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the model path is relative to the file, not to the cwd
    p = load_pipeline(spec)
    assert p.name == "toy"
    assert p.schema.names == ["x", "y", "note"]
    assert [f.required for f in p.schema.fields] == [True, True, False]
    assert (p.max_batch, p.max_wait_ms, p.partitions, p.exactly_once) == (123, 7, 2, True)
    assert p.consumer_config == {"fetch.min.bytes": 1}
    assert p.producer_config == {"linger.ms": 3}
    assert (p.sources, p.sink, p.dlq, p.group) == (["toy.events"], "toy.predictions", "toy.dlq", "tidal.toy")
    [step] = p.steps
    assert isinstance(step, ScoreStep)
    assert step.threshold == 0.7
    assert step.model.name == "toy"
    out, dlq = p.test([b'{"x": 0.9, "y": 0.9}', b'{"x": 0.1, "y": 0.0}'])
    assert dlq == []
    recs = [orjson.loads(o) for o in out]
    assert [r["decision"] for r in recs] == [r["score"] >= 0.7 for r in recs]
    assert recs[0]["decision"] is True and recs[1]["decision"] is False


def test_yaml_with_absolute_model_path(tmp_path, toy_model):
    spec = tmp_path / "p.yaml"
    spec.write_text(f"pipeline: abs\nsteps:\n  - score: {{model: '{toy_model}'}}\n")
    [step] = load_pipeline(spec).steps
    assert isinstance(step, ScoreStep)
    assert step.threshold == 0.5  # the card's default


def test_topics_and_name_aliases():
    p = from_dict({"name": "n", "source": "in", "sink": "out", "dlq": "dead", "group": "g"})
    assert (p.name, p.sources, p.sink, p.dlq, p.group) == ("n", ["in"], "out", "dead", "g")
    p = from_dict({"pipeline": "n", "sources": ["a", "b"]})
    assert p.sources == ["a", "b"]


def test_python_step_function(step_module):
    p = from_dict({"pipeline": "p", "schema": {"x": "float"}, "steps": [{"python": f"{step_module}:flag_large"}]})
    [step] = p.steps
    assert isinstance(step, FunctionStep) and step.name == "flag_large"
    out, _ = p.test([b'{"x": 5}', b'{"x": 50}'])
    assert [orjson.loads(o)["large"] for o in out] == [False, True]


def test_python_step_class_with_args(step_module):
    p = from_dict({"pipeline": "p", "schema": {"x": "float"},
                   "steps": [{"python": f"{step_module}:Scale", "args": {"factor": 3}}]})
    [step] = p.steps
    assert isinstance(step, Step) and step.name == "scale" and step.factor == 3
    out, _ = p.test([b'{"x": 2}'])
    assert orjson.loads(out[0])["scaled"] == 6.0


def test_python_step_factory_with_args(step_module):
    p = from_dict({"pipeline": "p", "schema": {"x": "float"},
                   "steps": [{"python": f"{step_module}:make_flag", "args": {"limit": 1}}]})
    out, _ = p.test([b'{"x": 0}', b'{"x": 2}'])
    assert [orjson.loads(o)["over"] for o in out] == [False, True]


def test_python_step_instance(step_module):
    p = from_dict({"pipeline": "p", "steps": [{"python": f"{step_module}:READY"}]})
    [step] = p.steps
    assert isinstance(step, Step) and not isinstance(step, FunctionStep)
    assert step.factor == -1.0


def test_python_step_from_yaml_file(tmp_path, step_module):
    spec = tmp_path / "p.yaml"
    spec.write_text(f"pipeline: p\nschema: {{x: float}}\nsteps:\n  - python: {step_module}:Scale\n"
                    "    args: {factor: 0.5}\n")
    out, _ = load_pipeline(spec).test([b'{"x": 4}'])
    assert orjson.loads(out[0])["scaled"] == 2.0


def test_python_step_without_attribute_raises():
    with pytest.raises(ValueError, match="module:attr"):
        from_dict({"pipeline": "p", "steps": [{"python": "os.path"}]})


def test_python_step_missing_module_raises():
    with pytest.raises(ImportError):
        from_dict({"pipeline": "p", "steps": [{"python": "no_such_module_xyz_123:thing"}]})


def test_unknown_top_level_key_is_named():
    with pytest.raises(ValueError) as info:
        from_dict({"pipeline": "p", "shcema": {"x": "float"}})
    assert "shcema" in str(info.value)


def test_unknown_top_level_key_in_file(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("pipeline: p\nbatch_size: 10\n")
    with pytest.raises(ValueError, match="batch_size"):
        load_pipeline(spec)


@pytest.mark.parametrize("entry", [{"transform": {}}, {"score": {"model": "m"}, "extra": 1}, {}])
def test_unknown_step_raises(entry):
    with pytest.raises(ValueError, match="unknown step"):
        from_dict({"pipeline": "p", "steps": [entry]})


def test_missing_name_raises():
    with pytest.raises(ValueError, match="name"):
        from_dict({"schema": {"x": "float"}})


def test_non_mapping_yaml_raises(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_pipeline(spec)


def test_missing_model_folder_raises(tmp_path):
    from tidal.models import ArtifactError

    spec = tmp_path / "p.yaml"
    spec.write_text("pipeline: p\nsteps:\n  - score: {model: models/nope}\n")
    with pytest.raises(ArtifactError):
        load_pipeline(spec)


def test_window_steps_and_state_backend_from_yaml(tmp_path):
    from tidal.features import SessionAggregate, SlidingAggregate, WindowAggregate

    (tmp_path / "p.yaml").write_text(textwrap.dedent("""
        pipeline: feats
        schema: {user: str, page: str, amount: float, ts: int}
        state: {backend: rocksdb, path: state}
        steps:
          - window: {key: user, time_field: ts, window_s: 60, hop_s: 30, aggs: {spend: [amount, sum]}}
          - sliding: {key: user, time_field: ts, window_s: 600, aggs: {pages_10m: [page, distinct, {lg_k: 10}]}}
          - session: {key: user, time_field: ts, gap_s: 1800, lateness_s: 60, late: drop, state_backend: memory,
                      aggs: {clicks: [page, count],
                             p90: {field: amount, reducer: "tests.unit.test_aggregates:Quantile"}}}
    """))
    p = load_pipeline(tmp_path / "p.yaml")
    window, sliding, session = p.steps
    assert isinstance(window, WindowAggregate) and isinstance(sliding, SlidingAggregate)
    assert isinstance(session, SessionAggregate) and session.gap_ms == 1_800_000 and session.late == "drop"
    assert sliding.aggs[0].lg_k == 10 and session.aggs[1].reducer.q == 0.9
    assert window.state_backend == sliding.state_backend == "rocksdb"
    assert window.state_path == str(tmp_path / "state") and session.backend == "memory"  # its own choice
    out, dlq = p.test([orjson.dumps({"user": "u", "page": pg, "amount": a, "ts": t})
                       for pg, a, t in (("home", 1.0, 0), ("cart", 3.0, 1000), ("home", 2.0, 2000))])
    assert dlq == [] and [orjson.loads(o)["pages_10m"] for o in out] == [1.0, 2.0, 2.0]
    assert [orjson.loads(o)["clicks"] for o in out] == [1.0, 2.0, 3.0]


def test_bad_state_section_is_refused():
    with pytest.raises(ValueError, match="unknown state backend"):
        from_dict({"pipeline": "t", "state": {"backend": "leveldb"}})
    with pytest.raises(ValueError, match="unknown state keys"):
        from_dict({"pipeline": "t", "state": {"folder": "x"}})


def test_state_dir_makes_rocksdb_state_persistent(tmp_path):
    p = from_dict({"pipeline": "t", "state": {"backend": "rocksdb", "dir": "warm"},
                   "steps": [{"window": {"key": "k", "aggs": {"n": ["x", "count"]}, "window_s": 60}}]}, base=tmp_path)
    assert p.steps[0].state_dir == str(tmp_path / "warm") and p.steps[0].state_backend == "rocksdb"


def test_misspelt_options_are_named_with_what_was_meant():
    with pytest.raises(ValueError, match=r"unknown batch keys \['max_bach'\]"):
        from_dict({"pipeline": "t", "batch": {"max_bach": 10}})
    with pytest.raises(ValueError, match=r"step `anomaly`: unknown option 'treshold' \(did you mean 'threshold'\?\)"):
        from_dict({"pipeline": "t", "steps": [{"anomaly": {"field": "a", "treshold": 0.3}}]})


def test_a_yaml_mistake_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "p.yaml"
    bad.write_text("pipeline: x\nbatch: {max_bach: 10}\n")
    r = subprocess.run([sys.executable, "-m", "tidal", "run", str(bad), "--bootstrap", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {bad}: unknown batch keys ['max_bach'] (did you mean "
                                             "'max_batch'?); known: ['max_batch', 'max_wait_ms']"]


def test_a_model_feature_the_schema_lacks_is_refused_before_the_run(tmp_path):
    """The silent-NaN case: a model on temperature, vibration, humidity; events without humidity."""
    import subprocess
    import sys

    import lightgbm
    import numpy as np

    from tidal.models import save_model

    X = np.random.default_rng(0).random((300, 3))
    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, X[:, 0] > 0.5)
    save_model(model, tmp_path / "m", "m", 1, ["temperature", "vibration", "humidity"])
    spec = {"pipeline": "t", "schema": {"temperature": "float", "vibration": "float", "humidty": "float"},
            "steps": [{"score": {"model": str(tmp_path / "m")}}]}
    with pytest.raises(ValueError, match=r"step 'score' reads 'humidity'.*did you mean 'humidty'\?"):
        from_dict(spec).check()
    spec["schema"]["humidity"] = "float"
    from_dict(spec).check()  # with the field: fine
    bad = tmp_path / "p.yaml"
    bad.write_text(f"pipeline: t\nschema: {{temperature: float, vibration: float}}\n"
                   f"steps: [{{score: {{model: {tmp_path / 'm'}}}}}]\n")
    r = subprocess.run([sys.executable, "-m", "tidal", "run", str(bad), "--bootstrap", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'humidity'" in r.stderr


@pytest.mark.parametrize("value", ["false", "no", 0, 1, "true"])
def test_exactly_once_is_a_yaml_boolean_not_a_truthy_string(value):
    with pytest.raises(ValueError, match="exactly_once must be true or false"):
        from_dict({"pipeline": "t", "exactly_once": value})
    assert from_dict({"pipeline": "t", "exactly_once": False}).exactly_once is False
    assert from_dict({"pipeline": "t", "exactly_once": True}).exactly_once is True


def test_a_state_dir_alone_means_rocksdb_and_is_refused_with_memory(tmp_path):
    window = {"window": {"key": "k", "aggs": {"n": ["x", "count"]}, "window_s": 60}}
    p = from_dict({"pipeline": "t", "state": {"dir": "warm"}, "steps": [window]}, base=tmp_path)
    assert p.steps[0].state_backend == "rocksdb" and p.steps[0].state_dir == str(tmp_path / "warm")
    with pytest.raises(ValueError, match="state.dir keeps RocksDB databases"):
        from_dict({"pipeline": "t", "state": {"backend": "memory", "dir": "warm"}, "steps": [window]}, base=tmp_path)


def test_quality_parts_take_their_step_options_and_refuse_unknown_ones():
    p = from_dict({"pipeline": "t", "schema": {"x": "float"}, "steps": [
        {"validate": True},
        {"impute": {"fields": {"x": "median"}, "window": 64, "max_keys": 10}},
        {"outliers": {"fields": {"x": "mad"}, "window": 99, "flags": False}}]})
    _, impute, outliers = p.steps
    assert (impute.window, impute.max_keys) == (64, 10)
    assert outliers.fields["x"]["window"] == 99 and outliers.flags is False
    for step in ({"impute": {"fields": {"x": "median"}, "windw": 64}}, {"validate": {"flag": False}}):
        with pytest.raises(ValueError, match="unknown option"):
            from_dict({"pipeline": "t", "schema": {"x": "float"}, "steps": [step]})
    with pytest.raises(ValueError, match="options must be a mapping"):
        from_dict({"pipeline": "t", "steps": [{"window": "yes"}]})
    with pytest.raises(ValueError, match="unknown key 'arg' \\(did you mean 'args'\\?\\)"):
        from_dict({"pipeline": "t", "steps": [{"python": "os:getcwd", "arg": {}}]})


def test_a_window_steps_own_state_folders_are_relative_to_the_yaml_file(tmp_path):
    window = {"key": "k", "aggs": {"n": ["x", "count"]}, "window_s": 60, "state_backend": "rocksdb",
              "state_path": "scratch", "state_dir": "warm"}
    (step,) = from_dict({"pipeline": "t", "steps": [{"window": window}]}, base=tmp_path).steps
    assert (step.state_path, step.state_dir) == (str(tmp_path / "scratch"), str(tmp_path / "warm"))
    (step,) = from_dict({"pipeline": "t", "steps": [{"window": {**window, "state_dir": "/abs/warm"}}]},
                        base=tmp_path).steps
    assert step.state_dir == "/abs/warm"


def test_a_field_named_properties_is_a_field_not_a_json_schema():
    s = Schema.from_dict({"properties": "str", "price": "float"})
    assert s.names == ["properties", "price"]
    s = Schema.from_dict({"properties": {"type": "str", "required": False}})
    assert s.names == ["properties"] and s.fields[0].required is False
    js = Schema.from_dict({"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]})
    assert js.names == ["price"] and js.fields[0].type == "float"
