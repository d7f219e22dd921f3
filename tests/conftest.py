"""Shared fixtures. Unit tests need no broker; integration tests share one embedded broker per run."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

# Keep tidal's local state (broker.json, demo folders) out of the user's home.
os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-test-home-"))
os.environ.pop("TIDAL_BOOTSTRAP_SERVERS", None)
# Tests save models in their temporary folders: followers without a registry may load from there
# (tests of the trust model narrow it again).
os.environ.setdefault("TIDAL_MODEL_ROOTS", tempfile.gettempdir())
# The embedded broker forms a consumer group in half the session timeout: 3 s instead of
# tidal's 10 s default makes each of the suite's many group joins take ~1.5 s, not ~5 s. Every
# client the tests start (in process through `settings`, or a `tidal` subprocess) reads these.
os.environ.setdefault("TIDAL_KAFKA_SESSION_TIMEOUT_MS", "3000")
os.environ.setdefault("TIDAL_KAFKA_HEARTBEAT_INTERVAL_MS", "500")

REPO = Path(__file__).resolve().parents[1]


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
    """One real embedded Tansu broker for the whole test run."""
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
