"""Property tests: whatever arrives — any JSON value in any field, wrong types, NaN/Inf, huge
strings, deep nesting, broken bytes — the quality steps do not crash and every record is
accounted for: outputs + DLQ + dropped by policy = records in."""

from __future__ import annotations

import json

import orjson
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tidal.quality import Schema  # noqa: E402
from tidal.quality.anomaly import AnomalyStep  # noqa: E402
from tidal.quality.chain import QualityChain  # noqa: E402
from tidal.quality.profile import ProfileStep  # noqa: E402
from tidal.stream.pipeline import Pipeline  # noqa: E402

SCHEMA = {
    "id": {"type": "str", "pattern": "e[0-9]+", "policy": {"pattern": "flag"}},
    "ts": {"type": "int", "timestamp": True, "policy": {"type": "fix"}},
    "k": {"type": "str", "required": False, "trim": True, "case": "lower"},
    "x": {"type": "float", "required": False, "min": -1e6, "max": 1e6, "unit": "s", "unit_field": "u",
          "policy": {"range": "fix", "type": "flag"}},
    "u": {"type": "str", "required": False},
    "n": {"type": "int", "coerce": True, "min": 0, "policy": {"type": "fix", "missing": "fix", "range": "reject"}},
    "p": {"type": "str", "enum": ["tcp", "udp"], "required": False, "policy": "fix"},
    "s": {"type": "int", "required": False},
    "b": {"type": "bool", "required": False, "coerce": True, "policy": {"type": "flag"}},
}
CHAIN = {"validate": {}, "impute": {"x": "median", "n": "mean", "p": "most_frequent", "k": {"strategy": "last", "key": "k"}},
         "outliers": {"x": {"method": "mad", "policy": "drop", "key": "k", "min_count": 3},
                      "n": {"method": "iqr", "policy": "clip", "min_count": 3}},
         "integrity": {"id": "id", "duplicates": "drop", "sequence": {"key": "k", "field": "s", "policy": "reject"},
                       "rules": [{"name": "r", "expr": "x <= n * 10 + 5", "policy": "flag"}]}}

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["1e3", " 42 ", "2024-01-01T00:00:00Z", "NaN", "inf", "-0", "12 KB", "TCP ",
                                     "1 day", "true"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=8)
fields = st.sampled_from(list(SCHEMA) + ["extra"])
records = st.dictionaries(fields, json_values, max_size=len(SCHEMA) + 1)


BASE = {"id": "e1", "ts": 1704067200000, "k": "h1", "x": 1.5, "u": "s", "n": 3, "p": "tcp", "s": 1, "b": True}
# mostly-valid records: a good one with a few fields replaced by anything (or removed)
near_valid = st.tuples(st.dictionaries(fields, json_values, max_size=3), st.lists(fields, max_size=2),
                       st.integers(0, 10 ** 6)).map(
    lambda t: {**{k: v for k, v in BASE.items() if k not in t[1]}, "id": f"e{t[2]}", "s": t[2] % 7, **t[0]})


def encode(rec) -> bytes:
    # json allows NaN/Infinity literals (invalid JSON: they must reach the DLQ, not crash anything)
    return json.dumps(rec, allow_nan=True, default=str).encode()


weird = st.one_of(
    records.map(encode),
    near_valid.map(encode), near_valid.map(encode),
    st.binary(max_size=40),
    st.integers(min_value=1, max_value=100_000).map(lambda n: b'{"id": "e1", "k": "' + b"x" * n + b'"}'),
    st.integers(min_value=100, max_value=5000).map(lambda d: b'{"id": "e1", "x": ' + b"[" * d + b"]" * d + b"}"),
    st.integers(min_value=100, max_value=5000).map(lambda d: b'{"id": "e2", "zz": ' + b'{"a":' * d + b"1" + b"}" * d
                                                   + b"}"),
    st.just(b"null"), st.just(b"[]"), st.just(b'{"n": 1e999}'),
)


def run(values, steps):
    chain = steps[0]
    p = Pipeline("prop", schema=Schema.from_dict(SCHEMA), steps=steps)
    out, rejects = p.test(values)
    dropped = sum(chain.summary()["dropped"].values()) if isinstance(chain, QualityChain) else 0
    assert len(out) + len(rejects) + dropped == len(values)
    assert not [r for r in rejects if r.reason == "step_error"], [r.message for r in rejects][:3]
    for v in out:
        orjson.loads(v)  # every output is valid JSON
    return out, rejects


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(weird, min_size=1, max_size=30))
def test_chain_accounts_for_every_record(values):
    run(values, [QualityChain.from_dict(CHAIN), ProfileStep(),
                 AnomalyStep(["x", "n"], detector="robust", warmup=5)])


def test_near_valid_records_mostly_get_through():
    import random

    rnd = random.Random(3)
    values = [encode({**BASE, "id": f"e{i}", "s": i, **({"x": rnd.choice(["9 ms", None, "x", 1e9, -5])}
                                                       if i % 3 == 0 else {})}) for i in range(60)]
    out, rejects = run(values, [QualityChain.from_dict(CHAIN)])
    assert len(out) > 30


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(records, near_valid).map(encode), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=5))
def test_batches_split_any_way_give_the_same_accounting(values, parts):
    chain = QualityChain.from_dict(CHAIN)
    total = 0
    size = max(1, len(values) // parts)
    for i in range(0, len(values), size):
        p = Pipeline("prop", schema=Schema.from_dict(SCHEMA), steps=[chain])
        out, rejects = p.test(values[i:i + size])
        total += len(out) + len(rejects)
    assert total + sum(chain.summary()["dropped"].values()) == len(values)
