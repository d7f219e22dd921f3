"""`tidal demo ...` end to end, as a user runs them (small, each on its own embedded broker): fraud and
churn in detail, and every demo twice in a row with the same TIDAL_HOME."""

from __future__ import annotations

import json
import os
import re
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


# Each demo at about its smallest size that still gives a successful run (exit code 0: every event
# accounted for; the maintenance demo's exit code also says the retrained model was promoted and
# served in time to recover, which needs ~20,000 readings), and a line of its printed summary.
DEMOS = {
    "fraud": (["--events", "20000"], "fraud demo"),
    "churn": (["--users", "200"], "churn: ROC-AUC"),
    "maintenance": (["--events", "20000"], "maintenance demo"),
    "sentiment": (["--events", "2000"], "sentiment demo"),
    "network": (["--events", "10000"], "network demo"),
}
LIBRDKAFKA_LOG = re.compile(r"^%\d\|\d+\.\d+\|", re.M)  # %3|1796635540.018|FAIL|rdkafka#producer-8| ...


@pytest.fixture(scope="module")
def one_home(tmp_path_factory):
    """One TIDAL_HOME for every demo's runs, as a user's ~/.tidal."""
    return tmp_path_factory.mktemp("tidal-home")


@pytest.mark.parametrize("demo", list(DEMOS))
def test_every_demo_runs_twice_in_a_row_with_the_same_home(demo, one_home):
    """A second run meets the first one's folder (models, registry with versions and aliases) in
    TIDAL_HOME and succeeds all the same, with the same summary; neither run prints librdkafka's
    logs (a client left alive when the demo's broker stops logs "Connection refused")."""
    args, title = DEMOS[demo]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    # the suite's quicker group joins (tests/conftest.py), and the shared home
    env.update({k: v for k, v in os.environ.items() if k.startswith("TIDAL_KAFKA_") and k.endswith("_MS")})
    env["TIDAL_HOME"] = str(one_home)
    summaries = []
    for run in (1, 2):
        result = subprocess.run([sys.executable, "-m", "tidal", "demo", demo, *args, "--json"],
                                env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"run {run}:\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr and not re.search(r"\w+Error: ", result.stderr), \
            f"run {run}:\n{result.stderr[-3000:]}"
        assert title in result.stderr, f"run {run}: no summary\n{result.stderr[-3000:]}"
        assert not LIBRDKAFKA_LOG.search(result.stderr) and "Connection refused" not in result.stderr, \
            f"run {run}: librdkafka logged\n{result.stderr[-3000:]}"
        summaries.append(json.loads(result.stdout.strip().splitlines()[-1]))
    first, second = summaries
    assert set(first) == set(second)  # the same kind of summary, with the same counts
    for key in ("events", "predictions", "dlq", "versions_published"):  # (sentiment: a version published each time)
        assert first.get(key) == second.get(key), (key, first.get(key), second.get(key))
