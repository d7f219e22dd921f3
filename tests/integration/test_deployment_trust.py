"""Deployment records on ``tidal.models`` cannot load foreign code (on the real broker).

The forged model file here is a pickle whose loading would create a file: the tests check the
follower refuses each forged record (and says why) and that the file never appears.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from sklearn.linear_model import LogisticRegression

from tidal.broker.topics import MODELS_TOPIC
from tidal.models.artifact import CARD, save_model
from tidal.models.deployment import Deployment, Target
from tidal.models.follower import DeploymentFollower
from tidal.models.trust import ENV_KEY, ENV_ROOTS, sign_headers
from tidal.registry import KafkaPublisher, Registry

pytestmark = pytest.mark.integration


class Payload:
    """Unpickling this runs ``open(marker, "w")``: what a hostile model file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def forged_folder(tmp_path: Path, name: str, marker: Path) -> tuple[Path, str]:
    """A model folder outside any registry whose card checksum matches its (hostile) file."""
    import joblib

    folder = tmp_path / "elsewhere"
    X = np.random.default_rng(0).random((50, 2))
    save_model(LogisticRegression().fit(X, X[:, 0] > 0.5), folder, name, 99, ["x", "y"])
    card = json.loads((folder / CARD).read_text())
    joblib.dump(Payload(marker), folder / card["file"])
    sha = hashlib.sha256((folder / card["file"]).read_bytes()).hexdigest()
    (folder / CARD).write_text(json.dumps({**card, "sha256": sha}))
    return folder, sha


def produce(settings, name: str, d: Deployment, headers=None) -> None:
    p = Producer(settings.client_config({"log_level": 3}))
    p.produce(MODELS_TOPIC, d.to_json(), name.encode(), headers=headers)
    assert p.flush(10) == 0


def wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def deployed(settings, name, tmp_path, monkeypatch):
    """A registry with v1 of ``name`` deployed, and the trusted roots narrowed to it."""
    monkeypatch.setenv(ENV_ROOTS, str(tmp_path / "registry"))
    reg = Registry(tmp_path / "registry", KafkaPublisher(settings))
    X = np.random.default_rng(1).random((80, 2))
    reg.register(name, LogisticRegression().fit(X, X[:, 1] > 0.5), features=["x", "y"])
    reg.promote(name, 1)
    return reg


@pytest.mark.parametrize("with_registry", [True, False], ids=["registry", "trusted-roots"])
def test_a_forged_record_pointing_outside_the_registry_runs_no_code(settings, name, tmp_path, deployed,
                                                                    with_registry):
    marker = tmp_path / "pwned"
    folder, sha = forged_folder(tmp_path, name, marker)
    follower = DeploymentFollower(settings, name, registry=deployed if with_registry else None).start()
    try:
        assert follower.wait_ready(20).deployment.primary.version == "1"
        produce(settings, name, Deployment(name, "single", Target("99", str(folder), sha), seq=50))
        wait(lambda: follower.refused)
        assert not marker.exists()  # no byte of the forged file was unpickled
        assert follower.routing.deployment.primary.version == "1"  # still serving the registry's v1
        assert ("outside the trusted model folders" in follower.refused[0]) != with_registry
    finally:
        follower.stop()


def test_a_registered_folder_with_a_swapped_file_is_refused_before_it_is_read(settings, name, tmp_path, deployed):
    import joblib

    marker = tmp_path / "pwned"
    mv = deployed.resolve(f"{name}/1")
    card = json.loads((mv.path / CARD).read_text())
    joblib.dump(Payload(marker), mv.path / card["file"])  # the registry's own folder, tampered
    follower = DeploymentFollower(settings, name, registry=deployed).start()
    try:
        wait(lambda: follower.refused)
        assert "refused before reading it" in follower.refused[0] and not marker.exists()
    finally:
        follower.stop()


def test_with_a_key_unsigned_and_replayed_records_are_refused(settings, name, tmp_path, deployed, monkeypatch):
    monkeypatch.setenv(ENV_KEY, "correct horse")
    X = np.random.default_rng(2).random((80, 2))
    deployed.register(name, LogisticRegression().fit(X, X[:, 0] > 0.3), features=["x", "y"])
    deployed.promote(name, 2)  # signed by the registry's publisher
    follower = DeploymentFollower(settings, name, registry=deployed).start()
    try:
        wait(lambda: follower.routing is not None and follower.routing.deployment.primary.version == "2")
        v1 = deployed.resolve(f"{name}/1").target()
        unsigned = Deployment(name, "single", v1, seq=10)
        produce(settings, name, unsigned)
        wait(lambda: len(follower.refused) >= 1)
        assert "signature" in follower.refused[-1]
        old = Deployment(name, "single", v1, seq=1, time=1.0)  # a replay of an old (signed) record
        produce(settings, name, old, sign_headers(old.to_json(), b"correct horse"))
        wait(lambda: len(follower.refused) >= 2)
        assert "not newer" in follower.refused[-1]
        assert follower.routing.deployment.primary.version == "2"
    finally:
        follower.stop()
