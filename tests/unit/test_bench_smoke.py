"""The benchmark suite's code runs end to end on a tiny input; no timing is asserted.

It starts its own embedded broker (through ``tidal bench -- --smoke``, which runs ``bench/run.py``) and runs, on 3,000
events, the model-only limit, one tidal worker draining a backlog and one latency phase
(pacer, worker, tracker); the River step and River's loop run in memory, and the report and
charts are rendered from the smoke results. Every process that joins a consumer group takes
5-9 s to start on the embedded broker, so to stay well under 40 s the baseline apps
(passthrough, per-message loop, Quix Streams, Faust) are only compiled here; they run in
`make bench` and `make bench-quick`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCH))
    yield BENCH
    sys.path.remove(str(BENCH))


@pytest.mark.timeout(120)
def test_suite_runs_on_a_tiny_input(tmp_path, bench_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "TIDAL_HOME": str(tmp_path / "home")}
    env.pop("TIDAL_BOOTSTRAP_SERVERS", None)
    tidal = Path(sys.executable).with_name("tidal")  # `tidal bench` runs bench/run.py of this checkout
    cmd = [str(tidal), "bench", "--only", "model_only,tidal1,latency", "--out", str(out), "--", "--smoke", "--no-report"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["mode"] == "smoke" and doc["machine"]["cores"] and doc["results"]
    by = {(r["system"], r["scenario"]): r for r in doc["results"]}
    tidal = by["tidal", "throughput"]
    assert tidal["outputs"] == tidal["expected"] == doc["events"] and tidal["dlq"] == 0 and tidal["exit_code"] == 0
    assert tidal["events_per_s"] > 0 and tidal["peak_rss_mb_per_worker"]
    assert by["model-only", "throughput"]["events_per_s"] > 0
    lat = by["tidal", "latency"]
    assert lat["received"] == lat["events"] and lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert lat["p99_by_second_ms"] and max(lat["p99_by_second_ms"]) <= lat["max_ms"]
    assert lat["broker_cores_busy"] > 0 and lat["machine_cores_busy"] >= lat["broker_cores_busy"]
    assert {f["floor"].split(" ")[0] for f in doc["floors"]} == {"tidal", "default"}
    assert all(f["met"] is None for f in doc["floors"] if f["floor"].startswith("default"))  # no relay, no sweep in smoke

    import report

    text = report.render(doc, out)
    assert "Scoring throughput" in text and "Latency" in text
    readme = report.README.read_text()
    assert report.main([str(out)]) == text and report.README.read_text() == readme  # not a full run: untouched
    if importlib.util.find_spec("matplotlib"):
        import plot

        charts = plot.main([str(out)])
        assert {c.name for c in charts} >= {"smoke-throughput.png", "smoke-latency.png"}


@pytest.mark.timeout(120)
def test_suite_runs_on_an_external_cluster_and_deletes_its_topics(tmp_path, bench_path):
    """``--bootstrap``: no broker of its own; fresh topics on the given cluster, removed at the end."""
    from confluent_kafka.admin import AdminClient

    from tidal.broker import EmbeddedBroker

    out = tmp_path / "external.json"
    env = {**os.environ, "TIDAL_HOME": str(tmp_path / "home")}
    env.pop("TIDAL_BOOTSTRAP_SERVERS", None)
    tidal = Path(sys.executable).with_name("tidal")
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        def topics() -> set[str]:
            return set(AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics)

        before = topics()
        cmd = [str(tidal), "bench", "--bootstrap", broker.bootstrap, "--only", "tidal1", "--out", str(out),
               "--", "--smoke", "--no-report"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        left = topics() - before - {"tidal.models", "tidal.alerts", "__consumer_offsets"}
    doc = json.loads(out.read_text())
    assert doc["broker"] == f"external: {broker.bootstrap}"
    tidal_run = next(r for r in doc["results"] if r["system"] == "tidal")
    assert tidal_run["outputs"] == tidal_run["expected"] == doc["events"] and tidal_run["exit_code"] == 0
    assert "deleted" in run.stdout and not left, left


def test_river_step_and_loop_in_memory(bench_path):
    from benchlib.events import FEATURES, LABELLED_SCHEMA_DICT, make_events
    from scenarios.river_step import RiverLearnStep, river_loop
    from tidal.quality.schema import Schema
    from tidal.stream import Pipeline

    ev = make_events(300, with_label=True)
    pipeline = Pipeline("smoke", schema=Schema.from_dict(LABELLED_SCHEMA_DICT), steps=[RiverLearnStep()])
    outputs, rejects = pipeline.test(ev.values)
    assert len(outputs) == 300 and not rejects
    assert b'"score":' in outputs[0] and pipeline.steps[0].learned == 300
    records = [json.loads(v) for v in ev.values]
    assert river_loop([{f: r[f] for f in FEATURES} for r in records], [bool(r["label"]) for r in records]) == 300


@pytest.mark.timeout(90)
def test_broker_drift_runs_on_a_tiny_input(tmp_path, bench_path):
    out = tmp_path / "drift.json"
    env = {**os.environ, "TIDAL_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, str(BENCH / "broker_drift.py"), "--rate", "500", "--seconds", "2", "--fetch-wait", "20",
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=80, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (only,) = json.loads(out.read_text())["runs"]
    assert only["received"] == only["events"] == 1000 and only["fetch_wait_ms"] == 20
    assert [r["second"] for r in only["per_second"]][:2] == [0, 1] and len(only["per_second"]) <= 3
    assert all(r["p50_ms"] <= r["p99_ms"] for r in only["per_second"])


@pytest.mark.timeout(90)
def test_client_costs_runs_on_a_tiny_input(tmp_path):
    env = {**os.environ, "TIDAL_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, str(BENCH / "client_costs.py"), "--records", "2000", "--batch", "500", "--repeat", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=80, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("produce", "decode", "columns"))]
    assert len(rows) == 9, run.stdout  # six produce variants, two decoders, the columns
    assert "callbacks run 2,000" in run.stdout and "callbacks run 0" in run.stdout


def test_every_scenario_script_compiles():
    for script in sorted((BENCH / "scenarios").glob("*.py")) + [BENCH / "run.py", BENCH / "plot.py", BENCH / "report.py"]:
        py_compile.compile(str(script), doraise=True)


def test_partial_runs_get_their_own_results_file(bench_path):
    """--only and size overrides never overwrite the whole run's file the README is built from."""
    import run

    assert not run.is_partial(run.parse([])) and not run.is_partial(run.parse(["--quick"]))
    for argv in (["--only", "tidal1"], ["--skip", "faust"], ["--events", "1000"], ["--knobs", "wait5"],
                 ["--rates", "1000"], ["--phase-s", "1"], ["--pacer-linger", "5"]):
        assert run.is_partial(run.parse(argv)), argv


def test_latency_plan_runs_every_knob_then_compares_partitions_at_10k(bench_path):
    import run
    from scenarios.latency import RELAY_KNOBS, plan

    full = run.MODES["full"]
    runs = plan(full)
    main = [r for r in runs if r[2] == full.latency_partitions]
    assert [(r[1], r[3]) for r in main] == [(k, [rate]) for k in [*full.latency_configs, RELAY_KNOBS]
                                            for rate in full.latency_rates]  # each rate on a fresh broker
    more = [r for r in runs if r[2] == full.latency_compare_partitions]
    assert [(r[0], r[1], r[3]) for r in more] == [("tidal", full.latency_configs[0], [10_000]),
                                                  ("limit: relay", RELAY_KNOBS, [10_000])]
    quick = run.MODES["quick"]
    assert [(r[1], r[2], r[3]) for r in plan(quick)] == [(k, 1, quick.latency_rates)
                                                        for k in [*quick.latency_configs, RELAY_KNOBS]]


def test_report_and_chart_show_the_fetch_wait_the_worker_sets(bench_path):
    import plot
    import report

    from tidal.stream.worker import fetch_wait_ms

    knobs = {"max_batch": 5000, "max_wait_ms": 0, "linger_ms": 1}
    assert report._knobs(knobs) == f"5000 / 0 / 1 / {fetch_wait_ms(0)}"
    assert plot._knob_text(knobs).endswith(f"fetch.wait {fetch_wait_ms(0)} ms")
    assert report._knobs({**knobs, "fetch_wait_ms": 7}).endswith("/ 7")
