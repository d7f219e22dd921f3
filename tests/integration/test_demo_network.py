"""``tidal demo network`` end to end on the test broker: every flow accounted for, quality counts
per rule, and the detector above the floor (precision and recall ≥ 0.7 on the injected attacks)."""

from __future__ import annotations

import pytest

from tidal.demos.network import run_demo

pytestmark = pytest.mark.integration


def test_network_demo(settings):
    s = run_demo(settings, events=40_000, seed=11, quiet=True)
    assert s["accounted"], s
    assert s["duplicates_in_output"] == 0
    assert s["dropped_by_reason"] == {"integrity/duplicate": s["injected_duplicates"]}
    assert set(s["dlq_by_reason"]) <= {"invalid_json", "missing_field", "out_of_range"} and s["dlq"] > 0
    assert s["quality"]["integrity/seq/gap/flag"] > 0 and s["quality"]["validate/packets/type/fix"] > 0
    assert s["precision"] >= 0.7 and s["recall"] >= 0.7, (s["precision"], s["recall"])
    assert all(r >= 0.5 for r in s["recall_by_attack"].values()), s["recall_by_attack"]
    assert s["report"] and s["report"]["html"].endswith(".html")
