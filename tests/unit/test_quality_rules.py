"""Schema rules and policies, in memory: where each record goes, its annotation, the counts."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.quality import Field, Schema
from tidal.quality.rules import REASONS, ValidateStep
from tidal.stream.decode import decode_values
from tidal.stream.pipeline import Pipeline


def run(spec: dict, records: list, **kw):
    schema = Schema.from_dict(spec)
    step = ValidateStep(schema, **kw)
    values = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
    batch = decode_values(values, schema)
    decode_rejects = list(batch.rejected)
    out = step.process(batch)
    return step, out, [orjson.loads(v) for v in out.values], out.rejected[len(decode_rejects):], decode_rejects


# -- schema ---------------------------------------------------------------------------------
def test_field_declares_rules_policies_and_normalisation():
    f = Field("bytes", min=0, policy={"range": "fix"}, unit="B", unit_field="u")
    assert f.policy_for("range") == "fix" and f.policy_for("enum") == "reject"
    assert f.lenient and f.has_rules
    assert Field("x", "float?").allow_null and Field("x", "float?").type == "float"
    assert Field("x", policy="flag").policies == dict.fromkeys(REASONS, "flag")
    with pytest.raises(ValueError):
        Field("x", policy={"range": "explode"})
    with pytest.raises(ValueError):
        Field("x", policy={"size": "fix"})
    with pytest.raises(ValueError):
        Field("x", "str", timestamp=True)


def test_to_dict_round_trips():
    s = Schema.from_dict({"a": "int", "b": {"type": "str", "enum": ["x", "y"], "policy": {"enum": "flag"}},
                          "c": {"type": "float", "min": 0, "unit": "s", "units": {"tick": 0.01}}})
    assert Schema.from_dict(s.to_dict()) == s


def test_json_schema_import():
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "required": ["id", "n"],
           "properties": {"id": {"type": "string", "pattern": "^f-[0-9]+$"}, "n": {"type": "integer", "minimum": 1},
                          "x": {"type": ["number", "null"], "maximum": 10}, "proto": {"enum": ["tcp", "udp"],
                                                                                        "type": "string"},
                          "at": {"type": "string", "format": "date-time"}, "tags": {"type": "array"}}}
    s = Schema.from_dict(doc)
    assert s.names == ["id", "n", "x", "proto", "at"]  # arrays/objects pass through untouched
    assert s.field("id").pattern == "^f-[0-9]+$" and s.field("n").min == 1 and s.field("n").required
    assert s.field("x").allow_null and not s.field("x").required and s.field("x").max == 10
    assert s.field("proto").enum == ("tcp", "udp") and s.field("at").timestamp


def test_strict_fields_still_rejected_at_decode():
    schema = Schema.from_dict({"n": {"type": "int", "min": 0}})
    batch = decode_values([b'{"n": "3"}', b'{"n": 3}'], schema)
    assert [r.reason for r in batch.rejected] == ["wrong_type"] and len(batch) == 1


# -- each rule × policy -----------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["reject", "fix", "flag"])
def test_range(policy):
    step, out, recs, rejects, _ = run({"x": {"type": "float", "min": 0, "max": 10, "policy": {"range": policy}}},
                                      [{"x": 5}, {"x": -1}, {"x": 11.5}])
    assert step.counts[("x", "range", policy)] == 2
    if policy == "reject":
        assert recs == [{"x": 5}] and [r.reason for r in rejects] == ["out_of_range"] * 2
        assert rejects[0].message == "x: -1 < min 0" and rejects[0].value == b'{"x":-1}'
    elif policy == "fix":
        assert [r["x"] for r in recs] == [5, 0.0, 10.0] and "quality_flags" not in recs[1]
        assert out.columns["x"].tolist() == [5.0, 0.0, 10.0]
    else:
        assert [r["x"] for r in recs] == [5, -1, 11.5]
        assert [r.get("quality_flags") for r in recs] == [None, ["x:range"], ["x:range"]]


@pytest.mark.parametrize("policy", ["reject", "fix", "flag"])
def test_enum_with_case_folding(policy):
    step, out, recs, rejects, _ = run({"p": {"type": "str", "enum": ["tcp", "udp"], "case": "lower", "trim": True,
                                             "default": "other", "policy": {"enum": policy}}},
                                      [{"p": " TCP"}, {"p": "gre"}])
    assert recs[0]["p"] == "tcp"  # normalised before the check, written into the record
    assert step.counts[("p", "enum", policy)] == 1
    if policy == "reject":
        assert len(recs) == 1 and rejects[0].reason == "not_in_enum" and rejects[0].value == b'{"p":"gre"}'
    elif policy == "fix":
        assert recs[1]["p"] == "other"
    else:
        assert recs[1] == {"p": "gre", "quality_flags": ["p:enum"]}


@pytest.mark.parametrize("policy", ["reject", "fix", "flag"])
def test_pattern(policy):
    step, _, recs, rejects, _ = run({"id": {"type": "str", "pattern": r"f-\d+", "policy": {"pattern": policy}}},
                                    [{"id": "f-12"}, {"id": "x-1"}])
    assert step.counts[("id", "pattern", policy)] == 1
    if policy == "reject":
        assert len(recs) == 1 and rejects[0].reason == "pattern_mismatch"
    elif policy == "fix":
        assert recs[1]["id"] is None
    else:
        assert recs[1] == {"id": "x-1", "quality_flags": ["id:pattern"]}


@pytest.mark.parametrize("policy", ["reject", "fix", "flag"])
def test_null(policy):
    step, out, recs, rejects, decode_rejects = run({"x": {"type": "float", "default": 0.0, "policy": {"null": policy}}},
                                                   [{"x": 1.0}, {"x": None}])
    if policy == "reject":  # the decoder's own type check, as before
        assert [r.reason for r in decode_rejects] == ["wrong_type"] and len(recs) == 1
        return
    assert step.counts[("x", "null", policy)] == 1
    if policy == "reject":
        pass
    elif policy == "fix":
        assert recs[1]["x"] == 0.0
    else:
        assert recs[1] == {"x": None, "quality_flags": ["x:null"]}


def test_allow_null_is_not_a_violation():
    step, _, recs, rejects, _ = run({"x": "float?"}, [{"x": None}, {"x": 2}])
    assert len(recs) == 2 and not rejects and not step.counts


@pytest.mark.parametrize("policy", ["reject", "fix", "flag"])
def test_missing(policy):
    step, _, recs, rejects, decode_rejects = run({"x": {"type": "int", "default": 7, "policy": {"missing": policy}},
                                                  "y": "int"}, [{"x": 1, "y": 1}, {"y": 2}])
    if policy == "reject":  # the decoder's own check, as before
        assert [r.reason for r in decode_rejects] == ["missing_field"] and len(recs) == 1
    else:
        assert step.counts[("x", "missing", policy)] == 1
        assert recs[1] == ({"y": 2, "x": 7} if policy == "fix" else {"y": 2, "quality_flags": ["x:missing"]})


@pytest.mark.parametrize("policy", ["reject", "fix", "flag"])
def test_type_with_coercion(policy):
    step, out, recs, rejects, _ = run({"n": {"type": "int", "coerce": True, "policy": {"type": policy}}},
                                      [{"n": 3}, {"n": " 4 "}, {"n": "many"}, {"n": [1]}, {"n": True}])
    assert [r["n"] for r in recs[:2]] == [3, 4]  # a numeric string is a number
    assert step.counts[("n", "type", policy)] == 3
    if policy == "reject":
        assert [r.reason for r in rejects] == ["wrong_type"] * 3
        assert rejects[0].message == "n: 'many' is not int"
    elif policy == "fix":
        assert [r["n"] for r in recs[2:]] == [None, None, None]
    else:
        assert recs[3] == {"n": [1], "quality_flags": ["n:type"]}  # value kept as it arrived


def test_first_reject_reason_wins_and_every_violation_counts():
    step, _, recs, rejects, _ = run({"a": {"type": "float", "max": 1}, "b": {"type": "str", "enum": ["x"]}},
                                    [{"a": 5, "b": "y"}, {"a": 0, "b": "x"}])
    assert len(recs) == 1 and [r.reason for r in rejects] == ["out_of_range"]
    assert step.counts == {("a", "range", "reject"): 1, ("b", "enum", "reject"): 1}


def test_fixed_record_rejected_later_reaches_dlq_as_it_arrived():
    schema = Schema.from_dict({"x": {"type": "float", "min": 0, "policy": {"range": "fix"}}})
    original = b'{"x": -5, "note": "keep me"}'

    def explode(batch):
        return batch.reject(np.ones(len(batch), bool), "model_error", "boom", "model")

    p = Pipeline("t", schema=schema, steps=[ValidateStep()]).then(explode)
    out, rejects = p.test([original])
    assert out == [] and rejects[0].value == original


def test_fields_outside_the_schema_survive_a_rewrite():
    _, _, recs, _, _ = run({"x": {"type": "float", "min": 0, "policy": {"range": "fix"}}},
                           [{"x": -1, "extra": {"nested": [1, 2]}, "s": "é"}])
    assert recs == [{"x": 0.0, "extra": {"nested": [1, 2]}, "s": "é"}]


def test_validate_uses_the_pipeline_schema_when_given_none():
    p = Pipeline("t", schema=Schema.from_dict({"x": {"type": "float", "max": 1}}), steps=[ValidateStep()])
    out, rejects = p.test([b'{"x": 0.5}', b'{"x": 2}'])
    assert len(out) == 1 and rejects[0].reason == "out_of_range" and rejects[0].step == "validate"


def test_validate_without_any_schema_says_so():
    p = Pipeline("t", steps=[ValidateStep()])
    _, rejects = p.test([b'{"x": 1}'])
    assert rejects[0].reason == "step_error" and "needs a schema" in rejects[0].message


def test_flags_from_separate_steps_end_up_in_one_list():
    from tidal.quality.integrity import IntegrityStep
    from tidal.quality.outliers import OutlierStep

    schema = Schema.from_dict({"id": "str", "p": {"type": "str", "enum": ["a"], "policy": {"enum": "flag"}},
                               "x": {"type": "float", "min": 0, "policy": {"range": "fix"}}})
    steps = [ValidateStep(), OutlierStep({"x": {"min_count": 5}}), IntegrityStep(id="id", duplicates="flag")]
    p = Pipeline("t", schema=schema, steps=steps)
    p.test([orjson.dumps({"id": f"e{i}", "p": "a", "x": 1.0 + i % 3}) for i in range(50)])
    out, _ = p.test([b'{"id": "e1", "p": "b", "x": 500}', b'{"id": "e99", "p": "b", "x": -1}'])
    assert [v.count(b'"quality_flags"') for v in out] == [1, 1]
    assert orjson.loads(out[0])["quality_flags"] == ["p:enum", "x:outlier", "id:duplicate"]
    assert orjson.loads(out[1])["x"] == 0.0 and orjson.loads(out[1])["quality_flags"] == ["p:enum"]
