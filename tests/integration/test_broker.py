"""The embedded broker, topic creation, and the `tidal broker` / `tidal topics` commands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from tidal.broker import TopicSpec, ensure_topics
from tidal.broker.topics import COMPACTED

pytestmark = pytest.mark.integration


def tidal(*args: str, home, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    env.update({"TIDAL_HOME": str(home), **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "tidal", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_ensure_topics_is_idempotent_and_sets_config(settings, name):
    specs = [TopicSpec(f"{name}.events", 3), TopicSpec(f"{name}.state.changelog", 2, COMPACTED)]
    assert sorted(ensure_topics(settings, specs)) == sorted(s.name for s in specs)
    assert ensure_topics(settings, specs) == []  # second time: nothing to do, no error
    admin = AdminClient(settings.client_config())
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[f"{name}.events"].partitions) == 3
    [future] = admin.describe_configs([ConfigResource("topic", f"{name}.state.changelog")]).values()
    assert future.result()["cleanup.policy"].value == "compact"


def test_cli_broker_lifecycle(tmp_path, name):
    started = tidal("broker", "start", home=tmp_path)
    assert started.returncode == 0, started.stderr
    assert "in memory" in started.stdout
    try:
        status = tidal("broker", "status", home=tmp_path)
        assert status.returncode == 0 and "running" in status.stdout
        again = tidal("broker", "start", home=tmp_path)
        assert "already running" in again.stdout
        created = tidal("topics", "create", name, "--partitions", "2", home=tmp_path)
        assert created.returncode == 0, created.stderr
        assert f"{name}.events" in created.stdout
    finally:
        stopped = tidal("broker", "stop", home=tmp_path)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    status = tidal("broker", "status", home=tmp_path)
    assert status.returncode == 1 and "tidal broker start" in status.stdout


def test_no_broker_error_says_how_to_start_one(tmp_path):
    result = tidal("topics", "create", "x", home=tmp_path)
    assert result.returncode == 2
    assert "tidal broker start" in result.stderr and "--bootstrap" in result.stderr


def test_unreachable_bootstrap_is_a_clear_error(tmp_path):
    from tidal.broker.embedded import free_port

    result = tidal("topics", "create", "x", "--bootstrap", f"127.0.0.1:{free_port()}", home=tmp_path)
    assert result.returncode == 2
    assert "No Kafka broker answered" in result.stderr


def test_status_reports_group_lag(settings, name):
    import json

    import orjson
    from confluent_kafka import Consumer, TopicPartition

    from .kafka_helpers import produce

    ensure_topics(settings, [TopicSpec(f"{name}.events", 2)])
    produce(settings, f"{name}.events", [orjson.dumps({"i": i}) for i in range(3000)])  # keys spread
    c = Consumer(settings.client_config({"group.id": f"g-{name}", "log_level": 3}))
    c.commit(offsets=[TopicPartition(f"{name}.events", 0, 10), TopicPartition(f"{name}.events", 1, 20)],
             asynchronous=False)
    c.close()
    other = Consumer(settings.client_config({"group.id": f"g2-{name}", "log_level": 3}))  # a second group, same topic
    other.commit(offsets=[TopicPartition(f"{name}.events", 0, 5)], asynchronous=False)
    other.close()
    result = subprocess.run([sys.executable, "-m", "tidal", "status", "--json", "--bootstrap", settings.bootstrap],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    [group] = [g for g in status["groups"] if g["group"] == f"g-{name}"]
    assert group["lag"] == 3000 - 30, group  # exact: ends come from fetch responses
    assert {p["partition"]: p["committed"] for p in group["partitions"]} == {0: 10, 1: 20}
    [second] = [g for g in status["groups"] if g["group"] == f"g2-{name}"]
    assert second["lag"] == group["partitions"][0]["end"] - 5
    assert status["topics"][f"{name}.events"] == 2
    table = subprocess.run([sys.executable, "-m", "tidal", "status", "--bootstrap", settings.bootstrap],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0 and f"g-{name}" in table.stdout


def test_status_scopes_to_a_pipeline_hides_reader_groups_and_never_cuts_names(settings, name):
    import json

    import orjson
    from confluent_kafka import Consumer, TopicPartition

    from .kafka_helpers import produce

    long_topic = f"{name}.events-of-a-pipeline-with-a-rather-long-name-for-a-terminal-of-eighty-columns"
    ensure_topics(settings, [TopicSpec(f"{name}.events", 1), TopicSpec(long_topic, 1), TopicSpec(f"other-{name}.events", 1)])
    produce(settings, f"{name}.events", [orjson.dumps({"i": i}) for i in range(10)])
    produce(settings, long_topic, [orjson.dumps({"i": i}) for i in range(10)])
    for group, topic in ((f"tidal.{name}", f"{name}.events"), (f"tidal.trace.{name}", f"{name}.events"),
                         (f"g-long-{name}", long_topic), (f"tidal.other-{name}", f"other-{name}.events")):
        c = Consumer(settings.client_config({"group.id": group, "log_level": 3}))
        c.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
        c.close()

    def status(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "tidal", "status", "--json", "--bootstrap", settings.bootstrap, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    scoped = status("--pipeline", name)
    groups = {g["group"] for g in scoped["groups"]}
    assert groups == {f"tidal.{name}", f"g-long-{name}"}  # its own and a group reading its topics
    assert scoped["hidden_groups"] >= 1  # the trace reader
    assert set(scoped["topics"]) == {f"{name}.events", long_topic}
    assert f"tidal.trace.{name}" in {g["group"] for g in status("--pipeline", name, "--all")["groups"]}
    table = subprocess.run([sys.executable, "-m", "tidal", "status", "-p", name, "--bootstrap", settings.bootstrap],
                           capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                                            if k != "COLUMNS"})
    assert table.returncode == 0 and long_topic in table.stdout  # piped: the whole name, not cut at 80
    assert "not shown: --all" in table.stdout and f"other-{name}" not in table.stdout


def test_a_restarted_broker_keeps_its_port_and_gets_the_deployments_back(tmp_path, name):
    """Its storage is in memory: `broker start` republishes the registry's current deployments."""
    import numpy as np
    import orjson
    from confluent_kafka import Consumer, TopicPartition
    from sklearn.linear_model import LogisticRegression

    from tidal.config import KafkaSettings
    from tidal.registry import Registry

    X = np.random.default_rng(0).random((60, 2))
    reg = Registry(tmp_path / "registry")  # the default registry of this TIDAL_HOME, no publisher yet
    reg.register(name, LogisticRegression().fit(X, X[:, 0] > 0.5), features=["x", "y"])
    reg.deploy(name, "single", 1, reason="test")
    first = tidal("broker", "start", home=tmp_path)
    assert first.returncode == 0, first.stderr
    try:
        port = first.stdout.split("127.0.0.1:")[1].split()[0]
        assert f"republished the registry's deployments of {name}" in first.stdout
        assert tidal("broker", "stop", home=tmp_path).returncode == 0
        second = tidal("broker", "start", home=tmp_path)
        assert second.returncode == 0 and f"127.0.0.1:{port} " in second.stdout  # same port: workers reconnect
        c = Consumer(KafkaSettings(f"127.0.0.1:{port}").client_config({"group.id": "t", "log_level": 3,
                                                                       "enable.partition.eof": True}))
        c.assign([TopicPartition("tidal.models", 0, 0)])
        got = [m for m in c.consume(10, 10) if not m.error()]
        c.close()
        assert [orjson.loads(m.value())["model"] for m in got] == [name]  # tidal.models is not empty
    finally:
        tidal("broker", "stop", home=tmp_path)
