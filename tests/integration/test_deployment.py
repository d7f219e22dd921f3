"""Deployments over tidal.models: hot-swap under load, two workers, canary, shadow, auto-rollback."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import lightgbm
import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from sklearn.linear_model import LinearRegression

from tidal.broker import ensure_topics
from tidal.broker.topics import ALERTS_TOPIC, MODELS_TOPIC
from tidal.models import load_model, save_model
from tidal.models.deployed import DeployedScoreStep
from tidal.quality import Schema
from tidal.registry.deployment import Deployment, Target
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration

SCHEMA = Schema.from_dict({"id": "int", "x": "float", "y": "float"})


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Three artifacts of one model: v1 (x + y > 1), v2 (x > 0.5), v3 (broken: scores outside [0, 1])."""
    rng = np.random.default_rng(1)
    X = rng.random((2000, 2))
    root = tmp_path_factory.mktemp("deployments")
    m1 = lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(X, (X.sum(1) > 1).astype(int))
    m2 = lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(X, (X[:, 0] > 0.5).astype(int))
    m3 = LinearRegression().fit(X, X.sum(1) * 100)
    out = {}
    for v, m in ((1, m1), (2, m2), (3, m3)):
        card = save_model(m, root / f"v{v}", "m", v, ["x", "y"], flavor="sklearn" if v == 3 else None)
        out[v] = Target(str(v), str(root / f"v{v}"), card.sha256)
    return out


def publish(settings, model: str, mode: str, primary: Target, secondary: Target | None = None, share=0.0,
            seq=1) -> float:
    ensure_topics(settings, [MODELS_TOPIC])
    p = Producer(settings.client_config({"log_level": 3}))
    t = time.time()
    p.produce(MODELS_TOPIC, Deployment(model, mode, primary, secondary, share, seq).to_json(), model.encode())
    assert p.flush(10) == 0
    return t


def events(n: int, start: int = 0) -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(start)
    xy = rng.random((n, 2))
    values = [orjson.dumps({"id": start + i, "x": float(a), "y": float(b)}) for i, (a, b) in enumerate(xy.tolist())]
    return values, [b"key-%d" % (start + i) for i in range(n)]


def start_worker(settings, name: str, model: str, wid: str = "0") -> tuple[Worker, threading.Thread]:
    p = Pipeline(name, schema=SCHEMA, steps=[DeployedScoreStep(model, wait_s=20)], max_batch=500, max_wait_ms=20)
    ensure_topics(settings, p.topic_specs())
    w = Worker(p, settings, wid)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    return w, t


def wait_outputs(settings, topic: str, n: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = records(read_all(settings, topic, 4))
        if len(out) >= n:
            return out
        time.sleep(0.3)
    raise AssertionError(f"{len(out)} of {n} outputs within {timeout}s")


def stop(*workers: tuple[Worker, threading.Thread]) -> None:
    for w, _ in workers:
        w.stop()
    for _, t in workers:
        t.join(20)


def test_hot_swap_under_steady_load_is_clean(settings, name, versions):
    model = f"m-{name}"
    publish(settings, model, "single", versions[1])
    worker = start_worker(settings, name, model)
    values, keys = events(4000)
    produce(settings, f"{name}.events", values[:200], keys[:200])
    wait_outputs(settings, f"{name}.predictions", 200)  # running on v1 before the load starts
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    swap_at = None
    for i in range(200, 4000, 200):  # ~2,000 events/s for 2 s, promoting v2 half-way
        for v, k in zip(values[i:i + 200], keys[i:i + 200]):
            producer.produce(f"{name}.events", v, k)
        producer.flush()
        if i == 2000:
            swap_at = publish(settings, model, "single", versions[2], seq=2)
        time.sleep(0.1)
    out = wait_outputs(settings, f"{name}.predictions", 4000)
    stop(worker)

    assert sorted(r["id"] for r in out) == list(range(4000))  # in = out, no duplicates
    by_partition = defaultdict(list)
    for r in sorted(out, key=lambda r: (r["source_partition"], r["source_offset"])):
        by_partition[r["source_partition"]].append(r["model_version"])
    for seq in by_partition.values():  # one clean switch per partition: 1…1 2…2
        assert seq == sorted(seq) and seq[0] == "1" and seq[-1] == "2"
    swapped = worker[0].pipeline.steps[0].follower.routing.applied_at
    assert swapped - swap_at < 2.0
    # every event scored by v2 got v2's score, every other one v1's
    m1, m2 = load_model(versions[1].path), load_model(versions[2].path)
    X = np.array([[r["x"], r["y"]] for r in out])
    expected = np.where([r["model_version"] == "2" for r in out], m2.predict(X), m1.predict(X))
    assert np.allclose([r["score"] for r in out], expected)


def test_two_workers_both_switch_within_two_seconds(settings, name, versions):
    model = f"m-{name}"
    publish(settings, model, "single", versions[1])
    a = start_worker(settings, name, model, "a")
    b = start_worker(settings, name, model, "b")
    values, keys = events(2000)
    produce(settings, f"{name}.events", values, keys)
    wait_outputs(settings, f"{name}.predictions", 2000)
    t = publish(settings, model, "single", versions[2], seq=2)
    deadline = time.monotonic() + 5
    followers = [w.pipeline.steps[0].follower for w, _ in (a, b)]
    while time.monotonic() < deadline and any(f.routing.primary.version != "2" for f in followers):
        time.sleep(0.05)
    stop(a, b)
    assert all(f.routing.primary.version == "2" for f in followers)
    assert max(f.routing.applied_at for f in followers) - t < 2.0


def test_canary_share_is_by_key_and_stable(settings, name, versions):
    model = f"m-{name}"
    publish(settings, model, "canary", versions[1], versions[2], share=0.1)
    values, keys = events(10_000)
    produce(settings, f"{name}.events", values, keys)
    first = start_worker(settings, name, model)
    out = wait_outputs(settings, f"{name}.predictions", 10_000)
    stop(first)
    canary_ids = {r["id"] for r in out if r["model_version"] == "2"}
    assert 0.08 <= len(canary_ids) / 10_000 <= 0.12

    # The same keys through a second pipeline land on the same versions.
    other = f"{name}b"
    ensure_topics(settings, Pipeline(other).topic_specs())
    produce(settings, f"{other}.events", values, keys)
    second = start_worker(settings, other, model)
    again = wait_outputs(settings, f"{other}.predictions", 10_000)
    stop(second)
    assert {r["id"] for r in again if r["model_version"] == "2"} == canary_ids


def test_shadow_scores_match_the_challenger_offline(settings, name, versions):
    model = f"m-{name}"
    publish(settings, model, "shadow", versions[1], versions[2])
    values, keys = events(1000)
    produce(settings, f"{name}.events", values, keys)
    worker = start_worker(settings, name, model)
    out = wait_outputs(settings, f"{name}.predictions", 1000)
    stop(worker)
    X = np.array([[r["x"], r["y"]] for r in out])
    assert np.allclose([r["shadow_score"] for r in out], load_model(versions[2].path).predict(X), atol=1e-12)
    assert np.allclose([r["score"] for r in out], load_model(versions[1].path).predict(X), atol=1e-12)
    assert {r["model_version"] for r in out} == {"1"} and {r["shadow_version"] for r in out} == {"2"}


def test_bad_canary_is_rolled_back_with_an_alert(settings, name, versions):
    model = f"m-{name}"
    publish(settings, model, "canary", versions[1], versions[3], share=0.5, seq=5)
    values, keys = events(3000)
    produce(settings, f"{name}.events", values, keys)
    worker = start_worker(settings, name, model)
    out = wait_outputs(settings, f"{name}.predictions", 3000)
    deadline = time.monotonic() + 10
    follower = worker[0].pipeline.steps[0].follower
    while time.monotonic() < deadline and follower.routing.deployment.mode != "single":
        time.sleep(0.1)
    stop(worker)

    assert sorted(r["id"] for r in out) == list(range(3000))  # nothing lost to the bad canary
    assert {r["model_version"] for r in out} == {"1"}  # its rows were scored by the primary
    assert follower.routing.deployment.mode == "single" and follower.routing.primary.version == "1"
    assert "auto-rollback" in follower.routing.deployment.reason
    alerts = [orjson.loads(m.value()) for m in read_all(settings, ALERTS_TOPIC, 1)
              if orjson.loads(m.value()).get("model") == model]
    assert alerts and alerts[0]["type"] == "model_rollback" and alerts[0]["version"] == "3"
    assert "outside [0, 1]" in alerts[0]["reason"]


def test_registry_promotion_and_auto_rollback_end_to_end(settings, name, versions, tmp_path):
    from tidal.registry import KafkaPublisher, Registry

    model = f"m-{name}"
    registry = Registry(tmp_path / "registry", publisher=KafkaPublisher(settings))
    for v in (1, 2, 3):
        registry.register(model, folder=versions[v].path)
    registry.promote(model, 1, reason="first")
    p = Pipeline(name, schema=SCHEMA, max_batch=200, max_wait_ms=20,
                 steps=[DeployedScoreStep(model, wait_s=20, registry=Registry(tmp_path / "registry"))])
    ensure_topics(settings, p.topic_specs())
    w = Worker(p, settings)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    values, keys = events(3000)
    produce(settings, f"{name}.events", values[:1000], keys[:1000])
    wait_outputs(settings, f"{name}.predictions", 1000)
    registry.promote(model, 2, reason="better")
    follower = p.steps[0].follower
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and follower.routing.primary.version != "2":
        time.sleep(0.05)
    produce(settings, f"{name}.events", values[1000:2000], keys[1000:2000])
    wait_outputs(settings, f"{name}.predictions", 2000)
    registry.deploy(model, "canary", 2, 3, share=0.5, reason="try v3")  # v3 emits invalid scores
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and follower.routing.deployment.mode != "canary":
        time.sleep(0.05)
    produce(settings, f"{name}.events", values[2000:], keys[2000:])
    out = wait_outputs(settings, f"{name}.predictions", 3000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and registry.deployment(model).mode != "single":
        time.sleep(0.1)
    stop((w, t))

    assert sorted(r["id"] for r in out) == list(range(3000))
    by_id = {r["id"]: r["model_version"] for r in out}
    assert {by_id[i] for i in range(1000)} == {"1"} and {by_id[i] for i in range(1000, 2000)} == {"2"}
    assert "3" not in set(by_id.values())
    last = registry.deployment(model)
    assert last.mode == "single" and last.primary.version == "2" and "auto-rollback" in last.reason
    assert [a.new_version for a in registry.alias_history(model, "champion")] == [1, 2]
