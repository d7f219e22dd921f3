"""OnlineLearnStep: River's prequential protocol exactly, sklearn partial_fit per batch, publishing versions."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing, tree

from tidal.learn import DiscardStep, OnlineLearnStep, learn_pipeline
from tidal.registry import Registry
from tidal.stream.batch import Batch
from tidal.stream.decode import decode_values


def _values(data):
    return [orjson.dumps({**x, "event_id": f"e{i}", "label": y}) for i, (x, y) in enumerate(data)]


def _feed(step, values, size=256):
    for lo in range(0, len(values), size):
        batch = decode_values(values[lo:lo + size], topic="p.joined")
        batch.offsets = batch.offsets + lo  # as consumed from one partition
        step.process(batch)


@pytest.mark.parametrize("make", [lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
                                  lambda: tree.HoeffdingTreeClassifier()])
def test_prequential_accuracy_equals_rivers_progressive_val_score(make):
    data = list(datasets.Phishing().take(600))
    expected = evaluate.progressive_val_score(data, make(), metrics.Accuracy()).get()
    step = OnlineLearnStep(make(), list(data[0][0]), mode="one", window=100)
    _feed(step, _values(data))
    assert step.events == 600
    assert step.accuracy == pytest.approx(expected, abs=1e-12)  # None predictions are not scored, as in River
    assert 0 <= step.rolling <= 1 and step.ranges == {"p.joined": {"0": [0, 600]}}


def test_rolling_window_and_unlabelled_rows():
    step = OnlineLearnStep(linear_model.LogisticRegression(), ["x"], mode="one", window=50)
    rows = [{"x": float(i % 5), "label": (i % 5 > 2) if i % 10 else None} for i in range(400)]
    out = step.process(Batch.from_rows(rows))
    assert step.events == 360  # rows without a label pass through unlearned
    assert np.isnan(out.columns["learn_error"][0]) and out.columns["learn_prediction"][0] is None
    recent = out.columns["learn_error"][~np.isnan(out.columns["learn_error"])][-50:]
    assert step.rolling == pytest.approx(1 - recent.mean())
    assert out.outputs == []  # not written out unless output=True


def test_sklearn_partial_fit_per_batch():
    from sklearn.linear_model import SGDClassifier

    rng = np.random.default_rng(0)
    step = OnlineLearnStep(SGDClassifier(loss="log_loss", random_state=0), ["a", "b"])
    assert step.mode == "sklearn"
    for _ in range(10):
        X = rng.normal(size=(500, 2))
        step.process(Batch.from_rows([{"a": a, "b": b, "label": int(a + b > 0)} for a, b in X.tolist()]))
    assert step.events == 5000 and step.scored == 4500  # the first batch trains before anything is scored
    assert step.accuracy > 0.9


def test_regression_mae():
    step = OnlineLearnStep(linear_model.LinearRegression(), ["x"], task="regression", mode="one")
    step.process(Batch.from_rows([{"x": float(i % 10), "label": 2.0 * (i % 10)} for i in range(2000)]))
    assert step.mae < 1.0 and step.stats()["rolling_mae"] < 0.5


def test_publishes_versions_with_lineage_and_on_demand(tmp_path):
    registry = Registry(tmp_path / "registry")
    step = OnlineLearnStep(preprocessing.StandardScaler() | linear_model.LogisticRegression(), ["x1", "x2"],
                           model_name="online", registry=registry, publish_every=1000, mode="one")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2500, 2))
    values = [orjson.dumps({"x1": a, "x2": b, "label": bool(a > b)}) for a, b in X.tolist()]
    _feed(step, values, 500)
    assert [v.version for v in step.versions] == [1, 2]
    v2 = registry.get("online", 2)
    assert v2.flavor == "river" and v2.lineage["ranges"] == {"p.joined": {"0": [0, 2000]}}
    assert v2.metrics["learned_events"] == 2000 and v2.metrics["prequential_accuracy"] > 0.8
    assert v2.lineage["parent"] == "models:/online/1"
    assert registry.aliases("online") == {"champion": 2}
    step.request_publish()
    step.process(decode_values(values[:10], topic="p.joined"))
    assert registry.aliases("online") == {"champion": 3}
    loaded = registry.load("models:/online@champion")
    assert loaded.predict(np.array([[2.0, -2.0], [-2.0, 2.0]])).round().tolist() == [1.0, 0.0]
    step.close()  # nothing new since: no fourth version
    assert len(registry.versions("online")) == 3


def test_modes_and_pipeline_factory():
    with pytest.raises(ValueError):
        OnlineLearnStep(linear_model.LogisticRegression(), ["x"], mode="fast")
    with pytest.raises(TypeError):
        OnlineLearnStep(object(), ["x"])
    step = OnlineLearnStep(linear_model.LogisticRegression(), ["x"])
    try:
        import pandas  # noqa: F401
        assert step.mode == "many"
    except ImportError:
        assert step.mode == "one"
        with pytest.raises(ValueError, match="pandas"):
            OnlineLearnStep(linear_model.LogisticRegression(), ["x"], mode="many")
    p = learn_pipeline("fraud", step)
    assert p.sources == ["fraud.joined"] and p.group == "tidal.fraud.learn" and step.report_topic == "fraud.learning"
    assert isinstance(p.steps[-1], DiscardStep)
    assert len(DiscardStep().process(Batch.from_rows([{"x": 1.0}]))) == 0


def test_reports_go_to_emit():
    seen = []
    step = OnlineLearnStep(linear_model.LogisticRegression(), ["x"], mode="one", emit=seen.append, report_every_s=0)
    step.process(Batch.from_rows([{"x": 1.0, "label": True}, {"x": -1.0, "label": False}]))
    assert seen[-1]["events"] == 2 and seen[-1]["model"] == "online" and "accuracy" in seen[-1]


class _Frame:
    """Just enough of a pandas DataFrame/Series for the learn_many path: columns and .iloc slices."""

    def __init__(self, data):
        self.data = data

    @property
    def iloc(self):
        return self

    def __getitem__(self, sl):
        return _Frame({k: v[sl] for k, v in self.data.items()} if isinstance(self.data, dict) else self.data[sl])

    def __len__(self):
        return len(self.data) if not isinstance(self.data, dict) else len(next(iter(self.data.values())))


class _ManyModel:
    __module__ = "river.fake"

    def __init__(self):
        self.chunks = []

    def learn_one(self, x, y):
        raise AssertionError("learn_many expected")

    def learn_many(self, X, y):
        self.chunks.append(len(y))

    def predict_many(self, X):
        return [True] * len(X)


def test_learn_many_in_chunks(monkeypatch):
    import types

    from tidal.models.runtimes import river

    fake = types.SimpleNamespace(DataFrame=lambda d: _Frame({k: np.asarray(v) for k, v in d.items()}),
                                 Series=lambda values, name: _Frame(list(values)))
    monkeypatch.setattr(river, "_pandas", lambda: fake)
    model = _ManyModel()
    step = OnlineLearnStep(model, ["x"], chunk_size=100)
    assert step.mode == "many"
    step.process(Batch.from_rows([{"x": float(i), "label": i % 2 == 0} for i in range(250)]))
    assert model.chunks == [100, 100, 50] and step.events == 250 and step.accuracy == 0.5


def test_resume_from_the_registry(tmp_path):
    from tidal.learn import resume_model

    registry = Registry(tmp_path / "registry")
    assert resume_model(registry, "m") is None
    step = OnlineLearnStep(linear_model.LogisticRegression(), ["x"], model_name="m", registry=registry, mode="one")
    step.process(Batch.from_rows([{"x": float(i % 3) - 1, "label": i % 3 == 2} for i in range(300)]))
    step.publish()
    again = resume_model(registry, "m")  # champion: the version just published, weights and all
    assert again is not step.model and again.weights == step.model.weights
