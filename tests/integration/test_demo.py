"""`tidal demo fraud` end to end, as a user runs it (small, on its own embedded broker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_fraud_demo_accounts_for_every_event(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}, "TIDAL_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "tidal", "demo", "fraud", "--events", "60000", "--json"],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["accounted"] is True
    assert summary["predictions"] + summary["dlq"] == summary["events"]
    assert summary["duplicates"] == 0
    assert summary["dlq"] > 0 and set(summary["dlq_by_reason"]) <= {"invalid_json", "missing_field", "wrong_type"}
    assert summary["roc_auc"] >= 0.9
    for key in ("events_per_s", "p50_ms", "p99_ms"):
        assert summary[key] is not None and summary[key] > 0
    assert summary["worker_exit_codes"] == [0]


def test_churn_demo_trains_on_a_replay_and_scores_live(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}, "TIDAL_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "tidal", "demo", "churn", "--users", "400", "--json"],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["predictions"] + summary["dlq"] == summary["events"]
    assert summary["users_scored"] >= 0.95 * 400
    assert summary["roc_auc"] >= 0.85
