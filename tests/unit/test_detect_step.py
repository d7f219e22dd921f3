"""The series step beside the rest of tidal: BOCPD as a concept-drift detector on a model's
error stream, and a change point that triggers RetrainStep."""

from __future__ import annotations

import numpy as np

from tidal.drift.concept import ConceptDriftMonitor
from tidal.stream.batch import Batch


def test_bocpd_on_an_error_stream_finds_the_change_and_where_it_began():
    rng = np.random.default_rng(2)
    errors = np.concatenate([rng.random(4000) < 0.1, rng.random(2000) < 0.4]).astype(float)
    monitor = ConceptDriftMonitor("bocpd")
    found = monitor.update(errors)
    assert found, "no detection"
    first = found[0]
    assert 4000 <= first.row < 4400  # soon after the change, not before it
    assert first.width is not None and abs((first.row - first.width) - 4000) < 150  # where it began


def test_a_change_point_triggers_retraining():
    from tidal.learn.retrain import RetrainStep

    class Champion:  # RetrainStep only needs the registry at training time
        pass

    step = RetrainStep(Champion(), "m", ["a"], kind="logistic", min_rows=10_000, on=("change",))
    rows = [{"a": float(i), "label": i % 2} for i in range(100)]
    b = Batch.from_rows(rows).with_column("change", np.arange(100) == 60)
    step.process(b)
    assert step.pending is not None  # waiting for min_rows labelled rows since the change


def test_bocpd_on_a_stationary_error_stream_stays_quiet():
    rng = np.random.default_rng(5)
    monitor = ConceptDriftMonitor("bocpd")
    assert len(monitor.update((rng.random(50_000) < 0.1).astype(float))) <= 1
