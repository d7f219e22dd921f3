"""Shared fixtures. Unit tests need no broker; integration tests share one embedded broker per run
(or the cluster at $TIDAL_TEST_BOOTSTRAP: `make test-cluster BOOTSTRAP=host:port`)."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

# Keep tidal's local state (broker.json, demo folders) out of the user's home.
# Under pytest-xdist each worker gets its own (and its own embedded broker, started by `broker`).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["TIDAL_HOME"] = tempfile.mkdtemp(prefix=f"tidal-test-home-{os.environ['PYTEST_XDIST_WORKER']}-")
os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-test-home-"))
os.environ.pop("TIDAL_BOOTSTRAP_SERVERS", None)
# Tests save models in their temporary folders: followers without a registry may load from there
# (tests of the trust model narrow it again).
os.environ.setdefault("TIDAL_MODEL_ROOTS", tempfile.gettempdir())
# `make test-cluster BOOTSTRAP=host:port`: the integration tests run against that cluster (Apache
# Kafka, Redpanda, ...) instead of starting the embedded broker; `embedded_only` tests skip.
TEST_BOOTSTRAP = os.environ.get("TIDAL_TEST_BOOTSTRAP", "").strip()
# The embedded broker forms a consumer group in half the session timeout: 3 s instead of
# tidal's 10 s default makes each of the suite's many group joins take ~1.5 s, not ~5 s. Every
# client the tests start (in process through `settings`, or a `tidal` subprocess) reads these.
# Apache Kafka refuses a session timeout under its group.min.session.timeout.ms (6 s by default).
os.environ.setdefault("TIDAL_KAFKA_SESSION_TIMEOUT_MS", "6000" if TEST_BOOTSTRAP else "3000")
os.environ.setdefault("TIDAL_KAFKA_HEARTBEAT_INTERVAL_MS", "1000" if TEST_BOOTSTRAP else "500")

REPO = Path(__file__).resolve().parents[1]

# Tests that need the embedded broker itself: they assert a Tansu quirk, or start, stop and
# restart an embedded broker of their own. Marked here (path under tests/, test name; "*": the
# whole file) so their files stay as they are; `@pytest.mark.embedded_only` works as well.
EMBEDDED_ONLY = {
    # asserts that read_committed readers see an aborted transaction's records (Tansu's quirk)
    ("integration/test_worker_failures.py", "test_an_aborted_transaction_rewinds_and_rolls_state_back"),
    # stops and restarts an EmbeddedBroker of its own, whose storage is in memory
    ("integration/test_worker_failures.py", "test_the_broker_going_away_mid_stream_loses_nothing_acknowledged"),
    # `tidal broker start/stop/status` and a restarted embedded broker
    ("integration/test_broker.py", "test_cli_broker_lifecycle"),
    ("integration/test_broker.py", "test_a_restarted_broker_keeps_its_port_and_gets_the_deployments_back"),
    # `tidal demo` starts its own embedded broker
    ("integration/test_demo.py", "*"),
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "embedded_only: needs tidal's embedded broker itself; skipped when TIDAL_TEST_BOOTSTRAP is set")


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    for item in items:
        try:
            where = Path(item.path).resolve().relative_to(tests).as_posix()
        except ValueError:
            continue
        test = getattr(item, "originalname", item.name)
        if (where, "*") in EMBEDDED_ONLY or (where, test) in EMBEDDED_ONLY:
            item.add_marker(pytest.mark.embedded_only)
        if TEST_BOOTSTRAP and item.get_closest_marker("embedded_only"):
            item.add_marker(pytest.mark.skip(reason=f"embedded_only: TIDAL_TEST_BOOTSTRAP={TEST_BOOTSTRAP} is set"))


@pytest.fixture(autouse=True)
def no_stray_processes():
    """Processes a test started with ``tidal_process`` do not outlive it, even when it fails."""
    yield
    from integration.kafka_helpers import STARTED  # tests/ is on sys.path: the package is `integration`

    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def broker():
    """One real embedded Tansu broker for the whole test run, or the cluster at
    ``$TIDAL_TEST_BOOTSTRAP`` (started by someone else, left as it is)."""
    if TEST_BOOTSTRAP:
        from types import SimpleNamespace

        from confluent_kafka.admin import AdminClient

        try:  # a clear error once, not a timeout in every test
            AdminClient({"bootstrap.servers": TEST_BOOTSTRAP, "log_level": 0}).list_topics(timeout=15)
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            pytest.exit(f"TIDAL_TEST_BOOTSTRAP={TEST_BOOTSTRAP}: no Kafka cluster answers there ({exc})", returncode=3)
        yield SimpleNamespace(bootstrap=TEST_BOOTSTRAP)
        return
    from tidal.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def settings(broker):
    from tidal.config import KafkaSettings, env_overrides

    return KafkaSettings(broker.bootstrap, env_overrides())


@pytest.fixture
def name() -> str:
    """A pipeline name no other test uses (topics are <name>.events, ...)."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    """A small LightGBM model on two features, x and y: positive when x + y > 1."""
    import lightgbm

    from tidal.models import save_model

    rng = np.random.default_rng(0)
    X = rng.random((2000, 2))
    y = (X.sum(axis=1) > 1).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=20, n_jobs=1, verbose=-1).fit(X, y)
    folder = tmp_path_factory.mktemp("models") / "toy-v1"
    save_model(model, folder, "toy", 1, ["x", "y"])
    return folder
