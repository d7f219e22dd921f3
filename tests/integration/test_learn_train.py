"""`tidal train`: a replayed window of a topic, exact offset lineage, held-out time slice, registered."""

from __future__ import annotations

import json
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from tidal.broker import TopicSpec, ensure_topics
from tidal.learn import train_from_topic
from tidal.registry import Registry

pytestmark = pytest.mark.integration


def _produce(settings, topic, rows, timestamps=None, partitions=2):
    p = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    for i, r in enumerate(rows):
        kw = {"timestamp": int(timestamps[i])} if timestamps is not None else {}
        p.produce(topic, orjson.dumps(r), partition=i % partitions, **kw)
    assert p.flush(30) == 0


def _rows(rng, n, start=0):
    X = rng.normal(size=(n, 2))
    cats = rng.choice(["web", "app", "pos"], n)
    y = ((X[:, 0] + (cats == "web") * 1.5) > 0.5).astype(int)
    return [{"event_id": f"e{start + i}", "a": a, "b": b, "channel": c, "label": int(t)}
            for i, ((a, b), c, t) in enumerate(zip(X.tolist(), cats.tolist(), y.tolist()))]


def test_train_from_joined_topic_by_offsets(settings, name, tmp_path):
    rng = np.random.default_rng(0)
    topic = f"{name}.joined"
    ensure_topics(settings, [TopicSpec(topic, 2)])
    _produce(settings, topic, _rows(rng, 3000))
    registry = Registry(tmp_path / "reg")
    result = train_from_topic(settings, topic, ["a", "b", "channel"], name=name, categorical=["channel"],
                              start={0: 100, 1: 0}, end={0: 1400, 1: 1500}, registry=registry, promote=True,
                              kind="lightgbm")
    mv = result.version
    assert mv.version == 1 and registry.aliases(name) == {"champion": 1}
    assert mv.lineage["topic"] == topic and mv.lineage["ranges"] == {"0": [100, 1400], "1": [0, 1500]}
    assert mv.lineage["rows"] == 2800 and mv.metrics["train_rows"] == 2240
    assert mv.metrics["holdout_accuracy"] > 0.9 and mv.signature == {"a": "float", "b": "float", "channel": "str"}
    loaded = registry.load(f"models:/{name}@champion")
    assert loaded.card.categories == {"channel": ["app", "pos", "web"]}


def test_train_events_with_labels_by_time_window_and_cli(settings, name, tmp_path):
    rng = np.random.default_rng(1)
    ensure_topics(settings, [TopicSpec(f"{name}.events", 2), TopicSpec(f"{name}.labels", 2)])
    rows = _rows(rng, 2000)
    base = int(time.time() * 1000) - 3_600_000
    ts = base + np.arange(2000) * 1000  # one event per second
    _produce(settings, f"{name}.events", [{k: v for k, v in r.items() if k != "label"} for r in rows], ts)
    _produce(settings, f"{name}.labels", [{"event_id": r["event_id"], "label": r["label"]} for r in rows[:1800]])
    registry = Registry(tmp_path / "reg")
    result = train_from_topic(settings, f"{name}.events", ["a", "b", "channel"], name=name, categorical=["channel"],
                              labels_topic=f"{name}.labels", since_ms=int(ts[500]), until_ms=int(ts[1900]),
                              registry=registry, kind="logistic", holdout=0.25)
    lin = result.version.lineage
    assert lin["rows"] == 1300 and lin["time_ms"] == [int(ts[500]), int(ts[1799])]  # unlabelled rows left out
    assert lin["ranges"] == {"0": [250, 900], "1": [250, 900]} and lin["labels_topic"] == f"{name}.labels"
    assert result.metrics["unlabelled_rows"] == 100 and lin["holdout_from_ms"] == int(ts[1475])
    assert registry.aliases(name) == {}

    from tidal.cli.main import app

    out = CliRunner().invoke(app, ["train", name, "--name", name, "--source", "events", "--from", "0:0,1:0",
                                   "--to", "0:500,1:500", "--model", "logistic", "--categorical", "channel",
                                   "--features", "a,b,channel", "--promote", "--json", "--registry",
                                   str(tmp_path / "reg"), "--bootstrap", settings.bootstrap])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["model"] == f"models:/{name}/2" and summary["promoted"]
    assert summary["lineage"]["ranges"] == {"0": [0, 500], "1": [0, 500]}
