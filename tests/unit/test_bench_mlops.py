"""The suite's hot-swap and drift-detection-delay scenarios: rows with measured figures, never "pending".

The report and the scenario wiring are checked without a broker (the measurements replaced by
canned figures, or by a failure); one test runs both scenarios for real on tiny sizes through
``bench/run.py --smoke --only hotswap,drift`` (embedded broker; no timing is asserted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

SWAP = {"system": "tidal", "scenario": "hot_swap", "label": "hot-swap: promotion → 2 workers scoring v2",
        "events_per_s": None, "workers": 2, "offered_per_s": 5000, "max_batch": 2000, "max_wait_ms": 20,
        "promotion_to_first_worker_v2_ms": 159.0, "promotion_to_all_workers_v2_ms": 178.9,
        "promotion_to_first_v2_output_ms": 158.4, "promotion_to_last_v1_output_ms": 156.2,
        "events_per_s_before": 4974.0, "events_per_s_during": 4880.0, "during_window_ms": 200.0,
        "events_per_s_after": 5074.0, "min_100ms_bucket_around_swap": 3880}
DRIFT = {"system": "tidal", "scenario": "drift_delay", "label": "drift-detection delay: DriftStep defaults",
         "events_per_s": None, "offered_per_s": 5000, "events": 20000, "change_at": 10000, "error_rate": [0.1, 0.3],
         "data_shift": "6 of 10 numeric columns +0.5σ", "detector": "ADWIN", "concept_delay_events": 111,
         "concept_delay_s": 0.095, "concept_false_alarms_before": 0, "data_delay_events": 999, "data_delay_s": 0.257,
         "data_false_alarms_before": 1, "offline_seeds": 10, "offline_detected": 10,
         "offline_median_delay_events": 95.0, "stationary_false_alarms_per_100k": 0.0, "stationary_events": 600000}


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCH))
    yield BENCH
    sys.path.remove(str(BENCH))


def _doc(results: list[dict]) -> dict:
    return {"mode": "quick", "date": "2026-12-07", "events": 1000, "event_format": "JSON", "model": "LightGBM",
            "duration_s": 30.0, "floors": [], "results": results,
            "machine": {"cores": 2, "cpu": "cpu", "memory_gb": 4, "platform": "linux", "python": "3.11",
                        "librdkafka": "2.12", "broker": "Tansu", "load_average_at_start": [0.1, 0.1, 0.1]}}


def _section(text: str) -> str:
    return text.split("#### ML operations", 1)[1]


def test_report_shows_the_measured_figures_and_no_pending(tmp_path, bench_path):
    import report

    text = report.render(_doc([SWAP, DRIFT]), tmp_path / "2026-12-07-quick.json")
    assert "pending" not in text.lower()
    ops = _section(text)
    row = next(line for line in ops.splitlines() if line.startswith("| 2 |"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "2", "5,000/s", "159", "179", "158", "156", "4,974", "4,880 (200 ms)", "5,074", "3,880"]
    concept = next(line for line in ops.splitlines() if line.startswith("| concept drift (errors rose)"))
    data = next(line for line in ops.splitlines() if line.startswith("| data drift"))
    assert "| 111 | 0.095 | 0 |" in concept and "| 999 | 0.257 | 1 |" in data
    assert "median over 10 seeds (10 detected) | 95 |" in ops


def test_report_says_error_when_a_scenario_failed(tmp_path, bench_path):
    import report

    failed = [{**{k: SWAP[k] for k in ("system", "scenario", "label")}, "status": "error: RuntimeError: no join"},
              {**{k: DRIFT[k] for k in ("system", "scenario", "label")}, "status": "error: KeyError: 'at'"}]
    ops = _section(report.render(_doc(failed), tmp_path / "x.json"))
    assert "error: RuntimeError: no join" in ops and "error: KeyError: 'at'" in ops and "pending" not in ops.lower()


def test_report_without_the_rows_says_not_measured(tmp_path, bench_path):
    """An older results file (placeholder rows) with no hot-swap/drift files beside it: no "pending"."""
    import report

    old = [{**SWAP, "status": "pending: not measured by this suite yet"}, {**DRIFT, "status": "pending: ..."}]
    ops = _section(report.render(_doc(old), tmp_path / "old.json"))
    assert ops.count("not measured in this results file") == 2 and "pending" not in ops.lower()


def test_scenarios_add_rows_with_figures_or_errors(tmp_path, bench_path, monkeypatch):
    import drift_bench
    import hotswap_bench
    import run
    from benchlib.context import Ctx
    from scenarios import mlops

    from tidal.config import KafkaSettings

    assert {"hotswap", "drift"} <= set(run.ALL_KEYS)
    swap = {"offered_events_per_s": 2000, "workers": 2, "seconds": 2.0, "events_offered": 9000, "outputs": 9000,
            "max_batch": 2000, "max_wait_ms": 20, "promotion_to_applied_s": [0.1, 0.2],
            "promotion_to_first_v2_batch_s": [0.12, 0.25], "promotion_to_first_worker_v2_s": 0.12,
            "promotion_to_all_workers_v2_s": 0.25, "promotion_to_first_v2_output_s": 0.121,
            "promotion_to_last_v1_output_s": 0.2, "events_per_s_before": 2000.0, "events_per_s_during": 1500.0,
            "during_window_s": 0.25, "events_per_s_after": 2100.0, "events_per_s_100ms_buckets_around_swap": [2000],
            "min_bucket_around_swap": 2000, "topics": ["t"]}
    alarm = {"false_alarms_before_change": 0, "false_alarms_at_events": [], "detected": True, "delay_events": 111,
             "delay_s": 0.1, "delay_to_alert_produced_s": 0.1}
    drift = {"offered_events_per_s": 4000, "events": 9000, "events_in": 9000, "change_at": 6000,
             "error_rate": [0.1, 0.3], "data_shift": "6 of 10 numeric columns +0.5σ", "detector": "ADWIN",
             "max_batch": 5000, "max_wait_ms": 50, "alerts": 2, "topics": ["t"],
             "concept_drift": alarm, "data_drift": {**alarm, "delay_events": 999, "delay_s": 0.3}}
    monkeypatch.setattr(hotswap_bench, "measure", lambda *a, **k: dict(swap))
    monkeypatch.setattr(drift_bench, "measure_in_worker", lambda *a, **k: json.loads(json.dumps(drift)))
    monkeypatch.setattr(mlops, "delete_topics", lambda *a: None)
    ctx = Ctx(mode="smoke", sizes=run.MODES["smoke"], settings=KafkaSettings("127.0.0.1:1"), work=tmp_path,
              events=None, topic="", model={}, only={"hotswap", "drift"})
    mlops.run(ctx)
    by = {r["scenario"]: r for r in ctx.results}
    assert by["hot_swap"]["promotion_to_all_workers_v2_ms"] == 250.0 and by["hot_swap"]["events_per_s_during"] == 1500
    assert by["drift_delay"]["concept_delay_events"] == 111 and by["drift_delay"]["data_delay_events"] == 999
    assert by["drift_delay"]["offline_median_delay_events"] is not None and "status" not in by["drift_delay"]
    assert "250.0 ms" in run.mlops_text(by["hot_swap"]) and "111 events" in run.mlops_text(by["drift_delay"])

    def fail(*a, **k):
        raise RuntimeError("the worker got no partition")

    monkeypatch.setattr(hotswap_bench, "measure", fail)
    monkeypatch.setattr(drift_bench, "measure_in_worker", fail)
    ctx.results.clear()
    mlops.run(ctx)
    assert [r["status"] for r in ctx.results] == ["error: RuntimeError: the worker got no partition"] * 2


@pytest.mark.timeout(150)
def test_hotswap_and_drift_run_on_a_tiny_input(tmp_path):
    out = tmp_path / "mlops.json"
    env = {**os.environ, "TIDAL_HOME": str(tmp_path / "home")}
    env.pop("TIDAL_BOOTSTRAP_SERVERS", None)
    cmd = [sys.executable, str(BENCH / "run.py"), "--smoke", "--only", "hotswap,drift", "--out", str(out), "--no-report"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=140, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    by = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    assert set(by) == {"hot_swap", "drift_delay"}
    swap, drift = by["hot_swap"], by["drift_delay"]
    assert "status" not in swap, swap.get("status")
    assert 0 < swap["promotion_to_first_worker_v2_ms"] <= swap["promotion_to_all_workers_v2_ms"]
    assert swap["promotion_to_first_v2_output_ms"] is not None and swap["events_per_s_before"] > 0
    assert len(swap["promotion_to_first_v2_batch_ms"]) == 2
    assert "status" not in drift, drift.get("status")
    assert drift["events_in"] == drift["events"] and drift["concept_delay_events"] >= 0 and drift["concept_delay_s"] > 0
    assert drift["concept_false_alarms_before"] == 0
