"""Quality steps on a worker with the real broker: every record reaches the right place (output,
DLQ or dropped by policy) with the right annotation, every rule hit is counted, and
events in = outputs + DLQ + dropped, in the worker's stats and in its metrics."""

from __future__ import annotations


import orjson
import pytest
from typer.testing import CliRunner

from tidal.broker import ensure_topics
from tidal.quality import Schema
from tidal.quality.chain import QualityChain
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce, read_all, run_until

pytestmark = pytest.mark.integration

SCHEMA = {
    "id": {"type": "str", "pattern": r"e\d+", "policy": {"pattern": "flag"}},
    "ts": {"type": "int", "timestamp": True},
    "x": {"type": "float", "min": 0, "max": 100},                                    # range: reject
    "y": {"type": "float", "min": 0, "max": 100, "policy": {"range": "fix"}},        # range: fix (clip)
    "z": {"type": "float", "min": 0, "max": 100, "policy": {"range": "flag"}},
    "p": {"type": "str", "enum": ["tcp", "udp"], "trim": True, "case": "lower"},      # enum: reject
    "q": {"type": "str", "enum": ["a", "b"], "default": "a", "policy": {"enum": "fix"}},
    "r": {"type": "str", "enum": ["a", "b"], "policy": {"enum": "flag"}},
    "n": {"type": "int", "coerce": True, "policy": {"type": "fix"}},
    "m": {"type": "int", "coerce": True},                                            # type: reject
    "o": {"type": "int", "coerce": True, "policy": {"type": "flag"}},
    "v": {"type": "float", "default": 0.0, "policy": {"null": "fix", "missing": "fix"}},
    "w": {"type": "float", "policy": {"null": "flag", "missing": "flag"}},
    "b": {"type": "float", "required": False, "unit": "B", "unit_field": "bu"},
    "bu": {"type": "str", "required": False},
}
BASE = {"ts": 1704067200000, "x": 1.0, "y": 1.0, "z": 1.0, "p": "tcp", "q": "a", "r": "a", "n": 1, "m": 1, "o": 1,
        "v": 1.0, "w": 1.0}
# (change, where it must go, DLQ reason or the annotation/fixed values it must carry)
CASES = [
    ({}, "out", {}),
    ({"x": 101}, "dlq", "out_of_range"),
    ({"y": -5}, "out", {"y": 0.0}),
    ({"z": 500}, "out", {"z": 500, "quality_flags": ["z:range"]}),
    ({"p": " UDP "}, "out", {"p": "udp"}),
    ({"p": "gre"}, "dlq", "not_in_enum"),
    ({"q": "c"}, "out", {"q": "a"}),
    ({"r": "c"}, "out", {"r": "c", "quality_flags": ["r:enum"]}),
    ({"n": "12"}, "out", {"n": 12}),
    ({"n": "twelve"}, "out", {"n": None}),
    ({"m": "many"}, "dlq", "wrong_type"),
    ({"o": [1]}, "out", {"o": [1], "quality_flags": ["o:type"]}),
    ({"v": None}, "out", {"v": 0.0}),
    ({"v": "DROP"}, "out", {"v": 0.0}),  # "DROP" → delete the field: missing, fixed
    ({"w": None}, "out", {"w": None, "quality_flags": ["w:null"]}),
    ({"ts": "2024-01-01T01:00:00+01:00"}, "out", {"ts": 1704067200000}),
    ({"ts": 1704067200}, "out", {"ts": 1704067200000}),
    ({"b": 2, "bu": "KB"}, "out", {"b": 2000.0, "bu": "B"}),
    ({"b": "3 MiB"}, "out", {"b": 3 * 1024.0 ** 2}),
    ({"id": "weird"}, "out", {"quality_flags": ["id:pattern"]}),
    ({"x": 101, "z": 500}, "dlq", "out_of_range"),
]


def sample(registry, name: str, **labels) -> float:
    return sum(s.value for f in registry.collect() for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_each_rule_and_policy_through_the_broker(settings, name):
    p = Pipeline(name, schema=Schema.from_dict(SCHEMA), steps=[QualityChain.from_dict({"validate": {}})])
    ensure_topics(settings, p.topic_specs())
    values, expect = [], {}
    for i, (change, where, what) in enumerate(CASES * 3):
        rec = {**BASE, **{k: v for k, v in change.items() if v != "DROP"}}
        for k in [k for k, v in change.items() if v == "DROP"]:
            del rec[k]
        rid = rec.get("id", f"e{i}") if "id" in change else f"e{i}"
        rec = {"id": rid, **{k: v for k, v in rec.items() if k != "id"}, "seq": i}
        values.append(orjson.dumps(rec))
        expect[i] = (where, what, values[-1])
    produce(settings, p.sources[0], values)
    worker = Worker(p, settings)
    run_until(worker, len(values))

    out = {orjson.loads(m.value())["seq"]: orjson.loads(m.value()) for m in read_all(settings, p.sink, 4)}
    dlq = {orjson.loads(m.value())["seq"]: m for m in read_all(settings, p.dlq, 1)}
    assert len(out) + len(dlq) == len(values)
    for i, (where, what, raw) in expect.items():
        if where == "dlq":
            assert i in dlq, (i, what)
            h = dict(dlq[i].headers())
            assert h["tidal.error.reason"].decode() == what and h["tidal.error.step"] == b"validate"
            assert dlq[i].value() == raw  # as it arrived
        else:
            rec = out[i]
            for k, v in what.items():
                assert rec.get(k) == v, (i, k, rec)
            if "quality_flags" not in what:
                assert "quality_flags" not in rec
    chain = p.steps[0]
    counts = chain.summary()["violations"]
    assert counts["validate/x/range/reject"] == 6 and counts["validate/y/range/fix"] == 3
    assert counts["validate/v/missing/fix"] == 3 and counts["validate/w/null/flag"] == 3
    reg = worker.registry
    assert sample(reg, "tidal_quality_violations_total", field="z", rule="range", action="flag") == 6
    assert sample(reg, "tidal_dlq_total", reason="out_of_range") == 6
    assert sample(reg, "tidal_events_in_total") == len(values) == \
        sample(reg, "tidal_events_out_total") + sample(reg, "tidal_dlq_total") + \
        sample(reg, "tidal_quality_dropped_total")


CHAIN = {
    "impute": {"bytes": "median", "proto": "most_frequent", "port": {"strategy": "last", "key": "host"}},
    "outliers": {"bytes": {"method": "mad", "policy": "flag", "min_count": 50},
                 "dur": {"method": "iqr", "policy": "clip", "threshold": 3, "min_count": 50},
                 "pkts": {"method": "mad", "policy": "drop", "min_count": 50, "threshold": 6},
                 "rtt": {"method": "mad", "policy": "reject", "min_count": 50, "threshold": 6}},
    "integrity": {"id": "id", "sequence": {"key": "host", "field": "seq", "policy": "reject"},
                  "rules": [{"name": "end_after_start", "expr": "end >= start", "policy": "flag"}]},
    "profile": {"publish_every_s": 0.2},
}
FLOW = {"id": "str", "host": "str", "seq": "int", "bytes": "float?", "proto": "str?", "port": "int?", "dur": "float",
        "pkts": "float", "rtt": "float", "start": "int", "end": "int"}


def test_impute_outliers_integrity_profile_and_report(settings, name, tmp_path):
    chain = QualityChain.from_dict(CHAIN)
    p = Pipeline(name, schema=Schema.from_dict(FLOW), steps=[chain], max_batch=50)
    ensure_topics(settings, p.topic_specs())
    rows = [{"id": f"f{i}", "host": "h1", "seq": i, "bytes": 1000.0 + i % 17, "proto": "tcp", "port": 443,
             "dur": 1.0 + (i % 10) / 10, "pkts": 10.0 + i % 5, "rtt": 20.0 + i % 7, "start": i, "end": i + 1}
            for i in range(400)]
    specials = [
        ({"bytes": None, "proto": None, "port": None}, "out", ["bytes:imputed", "proto:imputed", "port:imputed"]),
        ({"bytes": 1e7}, "out", ["bytes:outlier"]),
        ({"dur": 500.0}, "out", ["dur:clipped"]),
        ({"pkts": 1e6}, "dropped", "outlier"),
        ({"rtt": 9e5}, "dlq", "outlier"),
        ({"end": -1}, "out", ["end_after_start:violated"]),
        ({"seq": 10}, "dlq", "out_of_order"),
        ({"seq": 900}, "out", ["seq:gap"]),
    ]
    seq = 400
    expect = {}
    for change, where, what in specials:
        rec = {**rows[0], "id": f"s{seq}", "seq": seq, "start": 0, "end": 1, **change}
        rows.append(rec)
        expect[rec["id"]] = (where, what)
        seq = rec["seq"] + 1
    rows.append(dict(rows[3]))  # a duplicate: dropped
    values = [orjson.dumps(r) for r in rows]
    produce(settings, p.sources[0], values, keys=[b"h1"] * len(values))  # one key: one partition, in order
    worker = Worker(p, settings)
    run_until(worker, len(values))

    out = {orjson.loads(m.value())["id"]: orjson.loads(m.value()) for m in read_all(settings, p.sink, 4)}
    dlq = {orjson.loads(m.value())["id"]: dict(m.headers()) for m in read_all(settings, p.dlq, 1)}
    s = chain.summary()
    assert s["dropped"] == {"integrity/duplicate": 1, "outliers/outlier": 1}
    assert len(out) + len(dlq) + 2 == len(values) == worker.stats.events_in
    for rid, (where, what) in expect.items():
        if where == "out":  # (rows an earlier part dropped or rejected leave sequence gaps too)
            assert set(what) <= set(out[rid]["quality_flags"]), (rid, out[rid])
        elif where == "dlq":
            assert dlq[rid]["tidal.error.reason"].decode() == what
        else:
            assert rid not in out and rid not in dlq
    imputed = out[next(r for r, (_, w) in expect.items() if "bytes:imputed" in w)]
    assert imputed["proto"] == "tcp" and imputed["port"] == 443 and 1000 <= imputed["bytes"] <= 1016
    assert 1.0 <= out[next(r for r, (_, w) in expect.items() if w == ["dur:clipped"])]["dur"] < 5
    # 403 (dropped) and 404 (rejected) before integrity saw them, then 406..899
    assert s["violations"]["integrity/seq/gap_events/count"] == 2 + (900 - 405 - 1)
    reg = worker.registry
    assert sample(reg, "tidal_quality_dropped_total", step="integrity", reason="duplicate") == 1
    assert sample(reg, "tidal_quality_field", field="bytes", stat="count") > 0

    from tidal.cli.main import app

    result = CliRunner().invoke(app, ["quality", "report", name, "--out", str(tmp_path), "--json",
                                      "--bootstrap", settings.bootstrap])
    assert result.exit_code == 0, result.output
    rep = orjson.loads(result.output.strip().splitlines()[-1])
    assert rep["fields"]["bytes"]["count"] == len(out) and rep["counts"]["dropped"]["integrity/duplicate"] == 1
    assert (tmp_path / f"{name}-quality.html").exists()
    assert rep["png"] is None or (tmp_path / f"{name}-quality.png").exists()
    text = CliRunner().invoke(app, ["quality", "report", name, "--out", str(tmp_path), "--bootstrap",
                                    settings.bootstrap])
    assert text.exit_code == 0 and "bytes" in text.output and "quality rules" in text.output


def test_confluent_avro_through_the_broker(settings, name):
    for module in ("fastavro", "httpx", "cachetools", "attrs"):
        pytest.importorskip(module)
    from tidal.quality.serdes import RegistryWire, avro_schema

    avro = {"type": "record", "name": "Flow", "fields": [{"name": "id", "type": "string"},
                                                         {"name": "bytes", "type": "double"}]}
    url = f"mock://{name}"
    schema = avro_schema(avro, registry=url, bytes={"min": 0, "policy": {"range": "fix"}})
    p = Pipeline(name, schema=schema, steps=[QualityChain.from_dict({"validate": {}})])
    ensure_topics(settings, p.topic_specs())
    producer_side = RegistryWire(url, "avro", orjson.dumps(avro).decode())
    good = [producer_side.encode({"id": f"a{i}", "bytes": float(i - 5)}, p.sources[0]) for i in range(20)]
    bad = b"\x00\x00\x00\x00\x01\x99"
    produce(settings, p.sources[0], good + [bad])
    worker = Worker(p, settings)
    run_until(worker, 21)
    out = sorted((orjson.loads(m.value()) for m in read_all(settings, p.sink, 4)), key=lambda r: int(r["id"][1:]))
    assert [r["bytes"] for r in out] == [0.0] * 6 + [float(i) for i in range(1, 15)]
    dlq = read_all(settings, p.dlq, 1)
    assert [m.value() for m in dlq] == [bad] and dict(dlq[0].headers())["tidal.error.reason"] == b"invalid_payload"
