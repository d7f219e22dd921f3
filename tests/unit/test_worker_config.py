"""The worker's consumer settings: tidal's tuning defaults, the cluster's settings over them."""

from __future__ import annotations

from tidal.config import KafkaSettings
from tidal.stream import Pipeline
from tidal.stream.worker import Worker


def _conf(extra: dict, **pipeline) -> dict:
    return Worker(Pipeline("cfg", **pipeline), KafkaSettings("127.0.0.1:1", extra))._consumer_config()


def test_defaults_follow_the_batch_knobs():
    conf = _conf({}, max_wait_ms=20)
    assert conf["session.timeout.ms"] == 10000
    assert conf["fetch.wait.max.ms"] == 20
    assert conf["group.id"] == "tidal.cfg"
    # max_wait_ms 0 (take what has arrived) still lets the broker wait 5 ms: shorter costs it CPU
    assert _conf({}, max_wait_ms=0)["fetch.wait.max.ms"] == 5


def test_cluster_settings_override_the_tuning_but_not_the_delivery_contract():
    conf = _conf({"session.timeout.ms": 3000, "fetch.wait.max.ms": 7, "enable.auto.commit": True,
                  "group.id": "theirs"})
    assert conf["session.timeout.ms"] == 3000
    assert conf["fetch.wait.max.ms"] == 7
    assert conf["enable.auto.commit"] is False  # offsets are committed only after delivery
    assert conf["group.id"] == "tidal.cfg"


def test_the_pipelines_own_consumer_settings_come_last():
    conf = _conf({"fetch.wait.max.ms": 7}, consumer_config={"fetch.wait.max.ms": 2})
    assert conf["fetch.wait.max.ms"] == 2
