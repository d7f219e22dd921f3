"""Parity: the accuracy tidal reports through Kafka equals River's own progressive_val_score.

The whole loop runs on the broker: events are produced, scored by a worker that follows the
model's deployments (the learner publishes a version every few hundred events, which is
promoted and hot-swapped in), labels are joined with the predictions by ``tidal monitor``'s
pipeline, and the learner learns test-then-train from ``<name>.joined`` and reports to
``<name>.learning``. One partition everywhere keeps the events in order, which is what makes
the comparison exact.
"""

from __future__ import annotations

import time

import orjson
import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing, tree
from river.datasets import synth

from tidal.broker import ensure_topics
from tidal.demos.maintenance import WorkerThread, unique_specs
from tidal.learn import OnlineLearnStep, learn_pipeline
from tidal.models.deployed import DeployedScoreStep
from tidal.monitor.model_quality import monitor_pipeline
from tidal.registry import KafkaPublisher, Registry
from tidal.stream import Pipeline

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration


def _named(x: dict) -> dict:
    return {(k if isinstance(k, str) else f"x{k}"): v for k, v in x.items()}


def _loop(settings, name, tmp_path, data, make_model):
    feats = list(data[0][0])
    registry = Registry(tmp_path / name, KafkaPublisher(settings))
    serving = Pipeline(name, steps=[DeployedScoreStep(name, registry=registry)], partitions=1, max_wait_ms=20)
    monitor = monitor_pipeline(name)
    monitor.partitions = 1
    learner = OnlineLearnStep(make_model(), feats, model_name=name, registry=registry, publish_every=400,
                              publish_initial=True, mode="one", report_every_s=0.2)
    learning = learn_pipeline(name, learner, max_wait_ms=20)
    ensure_topics(settings, unique_specs(serving, monitor, learning))
    workers = [WorkerThread(p, settings, p.name).start() for p in (learning, serving, monitor)]
    for w in workers:
        w.wait_assigned()
    scorer = serving.steps[0]
    for lo in range(0, len(data), 250):  # labels come after their predictions; each chunk waits for the learner
        chunk = range(lo, min(len(data), lo + 250))
        produce(settings, f"{name}.events", [orjson.dumps({"event_id": f"e{i}", **data[i][0]}) for i in chunk])
        produce(settings, f"{name}.labels", [orjson.dumps({"event_id": f"e{i}", "label": data[i][1]}) for i in chunk])
        deadline = time.monotonic() + 30
        while learner.events < chunk.stop and time.monotonic() < deadline:
            time.sleep(0.02)
        while (learner.versions and scorer.follower.routing.primary.version != str(learner.versions[-1].version)
               and time.monotonic() < deadline):
            time.sleep(0.02)  # the scorer hot-swaps the version the learner just promoted
    for w in workers:
        w.stop()
    reports = records(read_all(settings, f"{name}.learning", 1))
    predictions = records(read_all(settings, f"{name}.predictions", 1))
    joined = records(read_all(settings, f"{name}.joined", 1))
    return reports[-1], predictions, joined, registry


@pytest.mark.parametrize("dataset,make_model", [
    ("phishing", lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression()),
    ("sea_drift", lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression()),
    ("agrawal_drift", lambda: tree.HoeffdingTreeClassifier(grace_period=50)),
])
def test_accuracy_through_kafka_equals_progressive_val_score(settings, name, tmp_path, dataset, make_model):
    if dataset == "phishing":
        data = [(_named(x), y) for x, y in datasets.Phishing()]
    elif dataset == "sea_drift":
        stream = synth.ConceptDriftStream(synth.SEA(variant=0, seed=1), synth.SEA(variant=3, seed=2), position=1500,
                                          width=100, seed=3)
        data = [(_named(x), y) for x, y in stream.take(3000)]
    else:
        stream = synth.ConceptDriftStream(synth.Agrawal(classification_function=0, seed=1),
                                          synth.Agrawal(classification_function=4, seed=2), position=1500, width=100,
                                          seed=3)
        data = [(_named(x), y) for x, y in stream.take(3000)]
    river = evaluate.progressive_val_score(data, make_model(), metrics.Accuracy()).get()

    report, predictions, joined, registry = _loop(settings, name, tmp_path, data, make_model)

    assert report["events"] == len(data) and len(joined) == len(data)
    assert [r["event_id"] for r in joined] == [f"e{i}" for i in range(len(data))]  # same order as River's
    assert abs(report["accuracy"] - river) <= 0.005, (report["accuracy"], river)
    assert report["accuracy"] == pytest.approx(river, abs=1e-12)  # in fact exactly equal
    # The loop closed: versions published by the learner were deployed and served.
    served = {p["model_version"] for p in predictions}
    assert len(predictions) == len(data) and len(served) >= 2
    assert len(registry.versions(name)) >= len(data) // 400
