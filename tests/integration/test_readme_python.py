"""The README's Python example runs as written: it scores on the test broker, serves /metrics,
and SIGTERM drains, commits and exits 0 (as ``tidal run`` does)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import lightgbm
import numpy as np
import orjson
import pytest

from tidal.models import save_model

from .kafka_helpers import produce, read_all
from .test_worker_failures import committed

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    text = README.read_text()
    block = re.search(r"## Pipelines\n\nPython:\n\n```python\n(.*?)```", text, re.S)
    assert block, "the README's Python example moved"
    return block.group(1)


def test_the_readme_python_worker_scores_serves_metrics_and_drains_on_sigterm(settings, tmp_path):
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.random(400) * 2000, rng.integers(0, 3, 400)])
    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, X[:, 0] > 1000)
    save_model(model, tmp_path / "models" / "fraud-v1", "fraud", 1, ["amount", "merchant_category"],
               categories={"merchant_category": ["fuel", "food", "travel"]})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = example().replace("9400", str(port))
    assert 'Pipeline(\n    "fraud"' in code
    from tidal.broker import ensure_topics
    from tidal.stream.pipeline import Pipeline

    ensure_topics(settings, Pipeline("fraud").topic_specs())
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "TIDAL_BOOTSTRAP_SERVERS": settings.bootstrap})
    try:
        deadline = time.monotonic() + 60
        while True:  # /metrics answers once the worker runs
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no /metrics"
            time.sleep(0.2)
        before = len(read_all(settings, "fraud.predictions", 4))
        produce(settings, "fraud.events", [orjson.dumps({"amount": 1500.0, "merchant_category": "fuel", "id": i})
                                           for i in range(20)])
        while len(read_all(settings, "fraud.predictions", 4)) < before + 20:
            assert time.monotonic() < deadline + 60, "no predictions"
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    offsets = committed(settings, "tidal.fraud", "fraud.events", 4)
    assert sum(o for o in offsets.values() if o > 0) >= 20  # committed before it exited
    outs = [orjson.loads(m.value()) for m in read_all(settings, "fraud.predictions", 4)][before:]
    assert all(r["big"] and r["decision"] in (True, False) for r in outs)
