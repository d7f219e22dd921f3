"""Profiles, sketches, the report; anomaly detectors; wire formats; YAML step types."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.quality import Schema
from tidal.quality.anomaly import AnomalyStep
from tidal.quality.profile import FieldProfile, ProfileStep
from tidal.quality.report import combine, write_html, write_png
from tidal.quality.stats import Distinct, QuantileSketch, Windows
from tidal.stream.batch import Batch
from tidal.stream.decode import decode_values
from tidal.stream.spec import from_dict


# -- sketches ---------------------------------------------------------------------------------
def test_quantile_sketch_relative_accuracy_and_merge():
    x = np.random.default_rng(0).lognormal(2, 1.5, 50_000)
    a, b = QuantileSketch(), QuantileSketch()
    a.update(x[:20_000])
    b.update(x[20_000:])
    a.merge(b)
    for q in (0.01, 0.5, 0.9, 0.99):
        assert abs(a.quantile(q) / np.quantile(x, q) - 1) < 0.03
    assert QuantileSketch.from_dict(a.to_dict()).quantile(0.5) == a.quantile(0.5)


@pytest.mark.parametrize("n", [50, 5_000, 200_000])
def test_distinct_estimate_and_merge(n):
    a, b = Distinct(), Distinct()
    a.add_values([f"id-{i}" for i in range(n)])
    b.add_numbers(np.arange(n, dtype=float))
    assert abs(a.estimate() / n - 1) < 0.08 and abs(b.estimate() / n - 1) < 0.08
    c = Distinct.from_str(a.to_str())
    c.merge(a)  # merging the same values changes nothing
    assert c.estimate() == a.estimate()


def test_windows_evict_least_recently_used_keys():
    w = Windows(size=4, max_keys=2)
    w.push(w.slots(["a", "a"]), np.array([1.0, 2.0]))
    w.push(w.slots(["b"]), np.array([5.0]))
    w.push(w.slots(["c"]), np.array([9.0]))  # evicts a
    assert set(w.index) == {"b", "c"}
    assert w.quantiles(w.slots(["c", "b"]), [0.5])[0].tolist() == [9.0, 5.0]


# -- profile + report -------------------------------------------------------------------------
def rows(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": float(v) if i % 10 else None, "c": ["a", "b", "c"][i % 3]} for i, v in enumerate(rng.normal(50, 5, n))]


def test_profile_fields_and_rolling_window():
    clock = [1000.0]
    p = ProfileStep(window_s=60, buckets=6, clock=lambda: clock[0])
    p.process(Batch.from_rows(rows(1000, 1), types={"x": "float", "c": "str"}))
    s = p.profile()
    assert s["x"]["count"] == 1000 and s["x"]["missing_rate"] == 0.1 and abs(s["x"]["mean"] - 50) < 1
    assert s["c"]["top"][0][1] == 334 and s["c"]["distinct"] == 3
    clock[0] += 70  # the first bucket has left the window
    p.process(Batch.from_rows(rows(10, 2), types={"x": "float", "c": "str"}))
    assert p.profile()["x"]["count"] == 10


def test_report_merges_workers_exactly(tmp_path):
    a, b, both = ProfileStep(), ProfileStep(), ProfileStep()
    ra, rb = rows(500, 1), rows(700, 2)
    a.process(Batch.from_rows(ra, types={"x": "float", "c": "str"}))
    b.process(Batch.from_rows(rb, types={"x": "float", "c": "str"}))
    both.process(Batch.from_rows(ra + rb, types={"x": "float", "c": "str"}))
    recs = [orjson.loads(orjson.dumps({**s.record(), "worker": w})) for s, w in ((a, "w1"), (b, "w2"))]
    rep = combine(recs)
    want = both.profile()
    for k in ("count", "missing", "min", "max", "p50", "distinct"):
        assert rep["fields"]["x"][k] == pytest.approx(want["x"][k])
    assert rep["fields"]["x"]["std"] == pytest.approx(want["x"]["std"])
    assert rep["fields"]["c"]["top"] == want["c"]["top"] and rep["workers"] == ["w1", "w2"]
    pytest.importorskip("matplotlib")
    png = write_png(rep, tmp_path / "r.png")
    page = write_html(rep, tmp_path / "r.html", png)
    assert png.read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64" in page.read_text()


def test_field_profile_round_trip_with_empty_numeric():
    f = FieldProfile("numeric")
    f.update(np.array([np.nan, np.nan]))
    g = FieldProfile.from_dict(orjson.loads(orjson.dumps(f.to_dict())))
    assert g.summary() == f.summary() and g.summary()["min"] is None


# -- anomaly detection ------------------------------------------------------------------------
def blobs(seed, n, outliers=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n, 3))
    X[:outliers] += 8
    return X


@pytest.mark.parametrize("detector", ["iforest", "robust", "hst"])
def test_detectors_find_obvious_anomalies(detector):
    step = AnomalyStep(["a", "b", "c"], detector=detector, alert_rate=0.02, seed=1, warmup=200,
                       **({"window_size": 100} if detector == "hst" else
                          {"n_estimators": 50} if detector == "iforest" else {}))
    step.fit(blobs(0, 1500))
    X = blobs(1, 300, outliers=10)
    out = step.process(Batch.from_rows([dict(zip("abc", map(float, r))) for r in X]))
    flags = out.columns["anomaly"]
    assert flags[:10].mean() >= 0.9 and flags[10:].mean() < 0.1
    assert "anomaly_score" in out.outputs and "anomaly" in out.outputs


def test_iforest_fits_itself_after_warmup_and_threshold_follows_alert_rate():
    step = AnomalyStep(["a", "b", "c"], detector="iforest", alert_rate=0.05, warmup=1000, seed=0, n_estimators=50)
    X = blobs(0, 3000)
    out = [step.process(Batch.from_rows([dict(zip("abc", map(float, r))) for r in X[i:i + 500]]))
           for i in range(0, 3000, 500)]
    assert step.model is not None and step.threshold is not None
    rate = np.mean(np.concatenate([o.columns["anomaly"] for o in out[2:]]))
    assert 0.02 < rate < 0.1


def test_hour_of_day_context_feature():
    step = AnomalyStep(["x"], detector="robust", hour_of="ts")
    m = step.matrix(Batch.from_rows([{"x": 1.0, "ts": 6 * 3_600_000}], types={"x": "float", "ts": "int"}))
    assert m.shape == (1, 3) and m[0, 1] == pytest.approx(1.0)  # sin(6 h) = 1


# -- wire formats -----------------------------------------------------------------------------
AVRO = {"type": "record", "name": "Flow", "fields": [
    {"name": "id", "type": "string"}, {"name": "bytes", "type": "double"},
    {"name": "proto", "type": ["null", "string"], "default": None}]}


def test_plain_avro_through_decode_and_validate(tmp_path):
    pytest.importorskip("fastavro")
    from tidal.quality.rules import ValidateStep
    from tidal.quality.serdes import avro_schema

    path = tmp_path / "flow.avsc"
    path.write_text(orjson.dumps(AVRO).decode())
    schema = avro_schema(path, bytes={"min": 0, "policy": {"range": "fix"}})
    good = schema.wire.encode({"id": "f1", "bytes": -3.0, "proto": "tcp"})
    batch = decode_values([good, b"\x02garbage", schema.wire.encode({"id": "f2", "bytes": 1.0, "proto": None})], schema)
    out = ValidateStep().process(batch)
    assert [orjson.loads(v) for v in out.values] == [{"id": "f1", "bytes": 0.0, "proto": "tcp"},
                                                     {"id": "f2", "bytes": 1.0, "proto": None}]
    assert out.originals[0] == good  # the DLQ would get the Avro bytes
    assert [r.reason for r in out.rejected] == ["invalid_payload"]


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_confluent_wire_format_with_mock_registry(fmt):
    for module in ("fastavro", "httpx", "cachetools", "attrs", "jsonschema"):
        pytest.importorskip(module)
    from tidal.quality.serdes import RegistryWire, avro_schema, json_schema

    url = f"mock://unit-{fmt}"
    if fmt == "avro":
        schema = avro_schema(AVRO, registry=url, topic="t.events")
    else:
        doc = {"type": "object", "properties": {"id": {"type": "string"}, "bytes": {"type": "number"}},
               "required": ["id", "bytes"]}
        schema = json_schema(doc, registry=url, topic="t.events")
    producer_side = RegistryWire(url, fmt, schema.wire.schema_str, "t.events")
    value = producer_side.encode({"id": "f1", "bytes": 2.5, **({"proto": "udp"} if fmt == "avro" else {})})
    assert value[0] == 0  # magic byte
    assert schema.decode_one(value)["bytes"] == 2.5
    batch = decode_values([value, b"\x00\x00\x00\x00\x63garbage"], schema)
    assert len(batch) == 1 and batch.rejected[0].reason == "invalid_payload"


# -- YAML -------------------------------------------------------------------------------------
def test_yaml_step_types():
    p = from_dict({"pipeline": "t", "schema": {"x": {"type": "float", "min": 0, "policy": {"range": "fix"}}, "k": "str"},
                   "steps": [{"validate": {}}, {"impute": {"x": "median"}}, {"outliers": {"x": {"key": "k"}}},
                             {"integrity": {"id": "k"}}, {"profile": {"publish_every_s": 5}},
                             {"normalize": {"k": {"type": "str", "case": "lower"}}},
                             {"quality": {"validate": {}, "impute": {"x": "mean"}}},
                             {"anomaly": {"features": ["x"], "detector": "robust"}}]})
    assert [s.name for s in p.steps] == ["validate", "impute", "outliers", "integrity", "profile", "normalize",
                                         "quality", "anomaly"]
    out, rejects = p.test([b'{"x": -1, "k": "A"}', b'{"x": 1, "k": "A"}'])
    assert orjson.loads(out[0])["x"] == 0.0 and len(out) == 1  # second one: duplicate id, dropped
    with pytest.raises(ValueError):
        from_dict({"pipeline": "t", "steps": [{"quality": {"clean": {}}}]})


def test_public_names():
    import tidal.quality as q

    for name in q.__all__:
        assert getattr(q, name) is not None
    assert Schema is q.Schema
