"""The registry on a real broker: deployments published to the compacted tidal.models topic, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from tidal.broker.topics import MODELS_TOPIC
from tidal.models import save_model
from tidal.registry import Deployment, KafkaPublisher, Registry

from .kafka_helpers import read_all

pytestmark = pytest.mark.integration


def lgbm(seed: int):
    import lightgbm

    rng = np.random.default_rng(seed)
    X = rng.random((300, 2))
    return lightgbm.LGBMClassifier(n_estimators=3, n_jobs=1, verbose=-1, random_state=seed).fit(X, X.sum(axis=1) > 1)


def deployments_on_topic(settings, model: str) -> list[Deployment]:
    """Every record of ``model`` on tidal.models (shared by the whole test run: filter by key)."""
    return [Deployment.from_json(m.value()) for m in read_all(settings, MODELS_TOPIC, 1)
            if m.key() == model.encode()]


def test_promote_deploy_rollback_are_published_to_tidal_models(settings, tmp_path):
    model = f"m{uuid.uuid4().hex[:10]}"
    publisher = KafkaPublisher(settings)
    reg = Registry(tmp_path / "registry", publisher=publisher)
    v1 = reg.register(model, lgbm(1), features=["x", "y"])
    v2 = reg.register(model, lgbm(2), features=["x", "y"])
    reg.promote(model, 1, reason="first")
    reg.deploy(model, "canary", "champion", 2, share=0.1, reason="try 2")
    reg.promote(model, 2, reason="canary went well")
    reg.rollback(model, reason="late labels disagree")
    publisher.close()

    got = deployments_on_topic(settings, model)
    assert got == reg.deployments(model)  # exactly what the registry recorded, in order
    assert [(d.seq, d.mode, d.primary.version, d.secondary and d.secondary.version, d.share) for d in got] == [
        (1, "single", "1", None, 0.0), (2, "canary", "1", "2", 0.1), (3, "single", "2", None, 0.0),
        (4, "single", "1", None, 0.0)]
    assert got[1].primary.path == str(v1.path) and got[1].secondary.path == str(v2.path)
    assert got[1].secondary.sha256 == v2.sha256 and got[3].reason == "late labels disagree"
    admin = AdminClient(settings.client_config())
    [future] = admin.describe_configs([ConfigResource("topic", MODELS_TOPIC)]).values()
    assert future.result()["cleanup.policy"].value == "compact"
    assert len(admin.list_topics(timeout=10).topics[MODELS_TOPIC].partitions) == 1


def tidal(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidal", "models", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cli_round_trip_publishes_to_the_broker(settings, tmp_path):
    model = f"m{uuid.uuid4().hex[:10]}"
    for seed in (3, 4):
        save_model(lgbm(seed), tmp_path / f"v{seed}", "x", 1, ["x", "y"], metrics={"auc": seed / 10})
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    env.update(TIDAL_HOME=str(tmp_path / "home"), TIDAL_REGISTRY=str(tmp_path / "registry"),
               TIDAL_BOOTSTRAP_SERVERS=settings.bootstrap)
    for seed in (3, 4):
        done = tidal("register", model, str(tmp_path / f"v{seed}"), "--tag", "by=cli", env=env)
        assert done.returncode == 0, done.stderr
    done = tidal("promote", model, "2", "--reason", "cli test", env=env)
    assert done.returncode == 0, done.stderr
    assert "published to tidal.models" in done.stdout
    done = tidal("list", "--json", env=env)
    assert done.returncode == 0, done.stderr
    [listed] = [m for m in json.loads(done.stdout) if m["name"] == model]
    assert listed["aliases"] == {"champion": 2} and listed["deployment"]["seq"] == 1

    [published] = deployments_on_topic(settings, model)
    v2 = Registry(tmp_path / "registry").get(model, 2)
    assert (published.mode, published.primary.version, published.primary.path) == ("single", "2", str(v2.path))
    assert published.reason == "cli test" and published.seq == 1

    from tidal.broker.embedded import free_port

    env["TIDAL_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"  # configured but down: refuse, change nothing
    done = tidal("promote", model, "1", env=env)
    assert done.returncode == 2 and "--no-publish" in done.stderr
    assert Registry(tmp_path / "registry").aliases(model) == {"champion": 2}
