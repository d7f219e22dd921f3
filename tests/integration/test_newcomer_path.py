"""The first hour, as the README walks it, with a newcomer's own models and readings: register,
promote, check, run, produce, tail, canary, promote, rollback, replay a fixed dead letter.

Every command is the `tidal` CLI in a subprocess against the session's embedded broker, with a
registry in the test's own TIDAL_HOME; the worker is a real `tidal run` process throughout."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from .kafka_helpers import read_all, records, tidal_process

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FEATURES = ["temperature", "vibration", "humidity"]
FIX = "tests.integration.test_newcomer_path:fix"


def fix(value: bytes, headers: dict) -> bytes | None:
    """The newcomer's --fix: a humidity written as a word becomes the number it meant."""
    obj = orjson.loads(value)
    if obj.get("humidity") == "forty":
        obj["humidity"] = 40.0
        return orjson.dumps(obj)
    return None


def readings(start: int, n: int) -> list[dict]:
    rng = np.random.default_rng(start)
    return [{"id": start + i, "temperature": float(t), "vibration": float(v), "humidity": float(h)}
            for i, (t, v, h) in enumerate(zip(rng.normal(60, 10, n), rng.gamma(2, 1, n), rng.uniform(20, 80, n)))]


def test_the_newcomer_path_end_to_end(settings, name, tmp_path):
    from lightgbm import LGBMClassifier
    from sklearn.linear_model import LogisticRegression

    from tidal.models import save_model

    home, model = tmp_path / "home", f"sensor{name}"
    env = {"TIDAL_HOME": str(home), "COLUMNS": "200"}

    def tidal(*args: str, stdin: str | None = None, code: int | None = 0) -> str:
        proc = tidal_process(settings, *args, env=env, cwd=REPO, text=True, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(stdin, timeout=120)
        assert "Traceback" not in err, err
        if code is not None:
            assert proc.returncode == code, (args, out, err)
        return out + err

    # -- their own models, on their own readings ------------------------------------------
    rows = readings(0, 500)
    X = np.array([[r[f] for f in FEATURES] for r in rows])
    y = (X[:, 0] + 5 * X[:, 1] > 70).astype(int)
    save_model(LogisticRegression(max_iter=500).fit(X, y), tmp_path / "logreg", model, 1, FEATURES)
    save_model(LGBMClassifier(n_estimators=20, verbose=-1).fit(X, y), tmp_path / "lgbm", model, 2, FEATURES)
    assert "models:/" in tidal("models", "register", model, str(tmp_path / "logreg"))
    assert "version 1" in tidal("models", "promote", model, "1", "--reason", "first model")

    spec = tmp_path / "sensors.yaml"
    spec.write_text(yaml.safe_dump({"pipeline": name, "partitions": 1,
                                    "schema": {"id": "int", **dict.fromkeys(FEATURES, "float")},
                                    "steps": [{"deployed": {"model": model}}]}))
    assert f"ok: pipeline {name}" in tidal("check", str(spec))
    worker = tidal_process(settings, "run", str(spec), "--log-level", "WARNING", "--metrics-port", "0", env=env,
                           cwd=REPO, stderr=subprocess.PIPE, text=True)

    def predictions() -> list[dict]:
        return records(read_all(settings, f"{name}.predictions", 1))

    def wait_until(ok, what: str, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predictions()
            if ok(got):
                return got
            assert worker.poll() is None, worker.stderr.read()
            time.sleep(0.3)
        raise AssertionError(f"{what}: {len(predictions())} predictions")

    def produce(batch: list[dict]) -> None:
        lines = "\n".join(orjson.dumps(r).decode() for r in batch) + "\n"
        assert f"produced {len(batch)} record(s)" in tidal("produce", f"{name}.events", "-", "--key", "id", stdin=lines)

    # -- run, produce, tail ---------------------------------------------------------------
    bad = {"id": 999, "temperature": 61.0, "vibration": 1.5, "humidity": "forty"}
    produce(readings(1000, 20) + [bad])
    wait_until(lambda p: len(p) >= 20, "the first 20 readings scored")
    tail = [orjson.loads(line) for line in tidal("tail", name, "--json", "--last", "100").splitlines() if line]
    assert len(tail) == 20 and {r["value"]["model_version"] for r in tail} == {"1"}
    scores = {r["value"]["id"]: r["value"]["score"] for r in tail}
    expected = LogisticRegression(max_iter=500).fit(X, y).predict_proba(
        np.array([[r[f] for f in FEATURES] for r in readings(1000, 20)]))[:, 1]
    assert np.allclose([scores[1000 + i] for i in range(20)], expected)  # the newcomer's model, exactly
    dead = [orjson.loads(line) for line in tidal("tail", name, "--dlq", "--json").splitlines() if line]
    assert [d["headers"]["tidal.error.reason"] for d in dead] == ["wrong_type"]
    assert "humidity" in dead[0]["headers"]["tidal.error.message"]

    # -- canary: the second model on half the keys, checked against the pipeline -----------
    tidal("models", "register", model, str(tmp_path / "lgbm"))
    out = tidal("models", "deploy", model, "--mode", "canary", "--version", "2", "--share", "0.5",
                "--pipeline", str(spec), "--reason", "try lightgbm")
    assert "canary v1 + v2 50%" in out and "features not checked" not in out
    start = 2000
    while not any(p["model_version"] == "2" for p in predictions()):
        produce(readings(start, 20))
        start += 20
        wait_until(lambda p, n=start: any(r["id"] == n - 1 for r in p), "canary batch scored")
        assert start < 3000, "the canary never scored"
    produce(readings(5000, 200))
    got = wait_until(lambda p: sum(r["id"] >= 5000 for r in p) == 200, "canary readings scored")
    versions = [r["model_version"] for r in got if r["id"] >= 5000]
    assert {"1", "2"} == set(versions) and 40 < versions.count("2") < 160  # about half the keys

    # -- promote, then roll back ----------------------------------------------------------
    assert "version 2 (was 1)" in tidal("models", "promote", model, "2", "--pipeline", str(spec))
    assert "version 1 (was 2)" in tidal("models", "rollback", model, "--reason", "alerts at night")
    history = tidal("models", "history", model)
    assert "try lightgbm" in history and "alerts at night" in history and "canary v1 + v2 50%" in history
    start = 8000
    while True:  # the rollback reaches the worker: from then on version 1 only
        produce(readings(start, 20))
        start += 20
        got = wait_until(lambda p, n=start: any(r["id"] == n - 1 for r in p), "rollback batch scored")
        last = [r["model_version"] for r in got if start - 20 <= r["id"] < start]
        if set(last) == {"1"}:
            break
        assert start < 9000, "the rollback never reached the worker"

    # -- the dead letter, fixed and replayed once -----------------------------------------
    out = tidal("dlq", "replay", name, "--fix", FIX)
    assert "replayed 1 dead letter(s)" in out
    got = wait_until(lambda p: any(r["id"] == 999 for r in p), "the fixed reading scored")
    [fixed] = [r for r in got if r["id"] == 999]
    assert fixed["humidity"] == 40.0 and fixed["model_version"] == "1"
    assert "replayed 0 dead letter(s)" in tidal("dlq", "replay", name, "--fix", FIX)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
