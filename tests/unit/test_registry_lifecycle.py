"""The registry's aliases, promotion checks, rollback, archive and deployments (no broker)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from tidal import Schema
from tidal.config import KafkaSettings
from tidal.registry import (
    Deployment,
    KafkaPublisher,
    NotFound,
    PublishError,
    Registry,
    RegistryError,
    SignatureMismatch,
    Target,
)


def lgbm(seed: int, n_features: int = 2):
    import lightgbm

    rng = np.random.default_rng(seed)
    X = rng.random((300, n_features))
    y = (X.sum(axis=1) > n_features / 2).astype(int)
    return lightgbm.LGBMClassifier(n_estimators=3, n_jobs=1, verbose=-1, random_state=seed).fit(X, y)


class Recorder:
    """A publisher that keeps what it is given (and can be told to fail), to check the registry's calls."""

    def __init__(self) -> None:
        self.sent: list[Deployment] = []
        self.fail = False

    def __call__(self, deployment: Deployment) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(Deployment.from_json(deployment.to_json()))


@pytest.fixture
def sent() -> Recorder:
    return Recorder()


@pytest.fixture
def reg(tmp_path, sent) -> Registry:
    registry = Registry(tmp_path / "registry", publisher=sent)
    for seed in range(3):
        registry.register("fraud", lgbm(seed), features=["x", "y"])
    return registry


def published(reg: Registry, name: str) -> list[int]:
    with sqlite3.connect(reg.root / "registry.db") as conn:
        return [r[0] for r in conn.execute("SELECT published FROM deployments WHERE name = ? ORDER BY seq", (name,))]


def test_promotion_refuses_a_signature_mismatch_naming_the_features(tmp_path, sent):
    reg = Registry(tmp_path / "r", publisher=sent)
    reg.register("fraud", lgbm(1, 3), features={"amount": "float", "merchant": "str", "hour": "int"},
                 categories={"merchant": ["a", "b"]})
    with pytest.raises(SignatureMismatch) as info:
        reg.promote("fraud", 1, features=["amount", "merchant", "distance"])
    assert info.value.missing == ["hour"] and info.value.extra == ["distance"]
    assert "missing (the model needs them, the pipeline lacks them): hour" in str(info.value)
    assert "extra (the pipeline has them, the model does not take them): distance" in str(info.value)
    with pytest.raises(SignatureMismatch, match=r"wrong type: merchant \(model str, pipeline float\)"):
        reg.promote("fraud", 1, features={"amount": "float", "merchant": "float", "hour": "int"})
    with pytest.raises(SignatureMismatch, match="extra .*: event_id"):
        reg.promote("fraud", 1, features=Schema.from_dict({"amount": "float", "merchant": "str", "hour": "int",
                                                           "event_id": "str"}))
    assert reg.aliases("fraud") == {} and reg.alias_history("fraud") == [] and reg.deployment("fraud") is None
    assert sent.sent == []
    move = reg.promote("fraud", 1, features=["hour:float", "merchant:str", "amount"])  # order free, numerics mix
    assert move.new_version == 1 and reg.aliases("fraud") == {"champion": 1}


def test_rollback_returns_to_the_previous_version_and_history_records_every_move(reg, sent):
    reg.promote("fraud", 1, reason="first model")
    reg.promote("fraud", 2, reason="better recall")
    reg.promote("fraud", 3, reason="retrained")
    move = reg.rollback("fraud", reason="precision dropped")
    assert (move.old_version, move.new_version, move.action) == (3, 2, "rollback")
    assert reg.resolve("fraud@champion").version == 2
    history = [(m.alias, m.old_version, m.new_version, m.action, m.reason) for m in reg.alias_history("fraud")]
    assert history == [("champion", None, 1, "promote", "first model"),
                       ("champion", 1, 2, "promote", "better recall"),
                       ("champion", 2, 3, "promote", "retrained"),
                       ("champion", 3, 2, "rollback", "precision dropped")]
    times = [m.time for m in reg.alias_history("fraud")]
    assert times == sorted(times) and all(t > 0 for t in times)
    assert reg.rollback("fraud", reason="2 is bad too").new_version == 1  # a second rollback undoes one more move
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("fraud")
    # every champion move was deployed (single, the new champion) and handed to the publisher in seq order
    assert [(d.seq, d.mode, d.primary.version) for d in sent.sent] == [
        (1, "single", "1"), (2, "single", "2"), (3, "single", "3"), (4, "single", "2"), (5, "single", "1")]
    assert sent.sent == reg.deployments("fraud") and reg.deployment("fraud") == sent.sent[-1]
    assert sent.sent[3].reason == "precision dropped"
    assert sent.sent[0].primary == Target("1", str(reg.get("fraud", 1).path), reg.get("fraud", 1).sha256)


def test_other_aliases_move_without_deploying(reg, sent):
    reg.set_alias("fraud", "challenger", 2, reason="try it")
    reg.set_alias("fraud", "challenger", 3)
    assert reg.rollback("fraud", "challenger").new_version == 2
    assert reg.aliases("fraud") == {"challenger": 2}
    assert reg.remove_alias("fraud", "challenger", reason="done").old_version == 2
    assert reg.aliases("fraud") == {} and [m.action for m in reg.alias_history("fraud", "challenger")] == [
        "set", "set", "rollback", "remove"]
    assert sent.sent == [] and reg.deployment("fraud") is None
    with pytest.raises(NotFound):
        reg.rollback("fraud", "challenger")
    with pytest.raises(RegistryError, match="invalid alias"):
        reg.set_alias("fraud", "2", 1)
    reg.promote("fraud", 1)
    with pytest.raises(RegistryError, match="cannot be removed"):
        reg.remove_alias("fraud", "champion")
    same = reg.promote("fraud", 1, reason="again")  # already there: nothing recorded, nothing deployed
    assert same.old_version == same.new_version == 1 and len(reg.alias_history("fraud", "champion")) == 1
    assert len(sent.sent) == 1


def test_archived_versions_cannot_be_promoted_or_deployed(reg, sent):
    reg.promote("fraud", 1)
    with pytest.raises(RegistryError, match="fraud@champion"):
        reg.archive("fraud", 1)
    reg.deploy("fraud", "canary", 1, 2, share=0.2)
    with pytest.raises(RegistryError, match="deployed"):
        reg.archive("fraud", 2)
    assert reg.archive("fraud", 3).status == "archived"
    assert reg.get("fraud", 3).status == "archived" and reg.load("fraud/3").version == "3"  # still loadable
    with pytest.raises(RegistryError, match="archived"):
        reg.promote("fraud", 3)
    with pytest.raises(RegistryError, match="archived"):
        reg.deploy("fraud", "shadow", 1, 3)
    with pytest.raises(RegistryError, match="archived"):
        reg.set_alias("fraud", "old", 3)
    assert reg.resolve("fraud/latest").version == 2  # latest skips archived versions
    assert reg.versions("fraud")[2].status == "archived"


def test_deploy_builds_targets_and_a_per_model_sequence(reg, sent, tmp_path):
    reg.promote("fraud", 1)
    d = reg.deploy("fraud", "canary", "champion", 3, share=0.1, reason="canary 3")
    v1, v3 = reg.get("fraud", 1), reg.get("fraud", 3)
    assert d == Deployment("fraud", "canary", Target("1", str(v1.path), v1.sha256),
                           Target("3", str(v3.path), v3.sha256), share=0.1, seq=2, time=d.time, reason="canary 3")
    assert Deployment.from_json(d.to_json()) == d and sent.sent[-1] == d
    reg.register("other", lgbm(9), features=["x", "y"])
    assert reg.deploy("other", "single", 1).seq == 1  # seq counts per model
    assert reg.deploy("fraud", "ab", 1, 2, share=0.5).seq == 3
    with pytest.raises(RegistryError, match="needs a secondary"):
        reg.deploy("fraud", "shadow", 1)
    with pytest.raises(RegistryError, match="unknown deployment mode"):
        reg.deploy("fraud", "blue", 1, 2)
    with pytest.raises(RegistryError, match="share"):
        reg.deploy("fraud", "canary", 1, 2, share=1.5)
    with pytest.raises(RegistryError, match="no secondary"):
        reg.deploy("fraud", "single", 1, 2)
    assert [x.seq for x in reg.deployments("fraud")] == [1, 2, 3]  # refusals took no seq
    assert published(reg, "fraud") == [1, 1, 1]


def test_changes_are_recorded_without_a_publisher_and_when_publishing_fails(reg, sent):
    offline = Registry(reg.root)  # no publisher: recorded on disk only
    offline.promote("fraud", 1)
    assert reg.deployment("fraud").primary.version == "1" and sent.sent == []
    sent.fail = True
    with pytest.raises(PublishError, match="recorded in the registry but was not published: broker down"):
        reg.promote("fraud", 2)
    assert reg.resolve("fraud@champion").version == 2 and reg.deployment("fraud").seq == 2
    assert published(reg, "fraud") == [0, 0]
    sent.fail = False
    assert reg.republish("fraud").seq == 2 and sent.sent[-1].primary.version == "2"
    assert published(reg, "fraud") == [0, 1]
    with pytest.raises(RegistryError, match="no publisher"):
        offline.republish("fraud")


def test_kafka_publisher_raises_when_no_broker_acknowledges(reg):
    from tidal.broker.embedded import free_port

    publisher = KafkaPublisher(KafkaSettings(f"127.0.0.1:{free_port()}"), timeout=1.0)
    reg.publisher = publisher
    with pytest.raises(PublishError, match="tidal.models"):
        reg.promote("fraud", 1, reason="nobody listens")
    assert reg.resolve("fraud@champion").version == 1 and reg.alias_history("fraud")[-1].reason == "nobody listens"
    assert "127.0.0.1" in repr(publisher)
