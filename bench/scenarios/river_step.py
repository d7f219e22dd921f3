"""Online learning inside a tidal pipeline: a plain :class:`tidal.stream.Step` wrapping a River model.

Each micro-batch is scored and then learned from, row by row, test-then-train (River's
prequential protocol: ``predict_proba_one`` then ``learn_one``), on events that carry their
``label``. River's ``learn_many`` needs pandas, which tidal does not install, so the step
uses ``learn_one``; batching still saves everything around the model (Kafka, decoding,
encoding, commits).

In a pipeline file: ``- python: scenarios.river_step:RiverLearnStep`` (with ``bench/`` on
``PYTHONPATH``, as the suite sets it).
"""

from __future__ import annotations

import numpy as np

from benchlib.events import CATEGORICAL, FEATURES, NUMERIC
from tidal.stream.batch import Batch
from tidal.stream.step import Step


def make_river_model():
    """Standard-scaled numeric fields + one-hot categorical fields → logistic regression."""
    from river import compose, linear_model, preprocessing

    numeric = compose.Select(*NUMERIC) | preprocessing.StandardScaler()
    categorical = compose.Select(*CATEGORICAL) | preprocessing.OneHotEncoder()
    return (numeric + categorical) | linear_model.LogisticRegression()


class RiverLearnStep(Step):
    """Score each row with the current model, then learn from its label (adds ``score``)."""

    name = "river_learn"

    def __init__(self, label: str = "label") -> None:
        self.label = label
        self.model = make_river_model()
        self.learned = 0

    def process(self, batch: Batch) -> Batch:
        columns = [batch.column(f).tolist() for f in FEATURES]
        labels = (batch.column(self.label) > 0).tolist()
        scores = np.empty(len(batch))
        predict, learn = self.model.predict_proba_one, self.model.learn_one
        for i, (row, y) in enumerate(zip(zip(*columns), labels)):
            x = dict(zip(FEATURES, row))
            scores[i] = predict(x).get(True, 0.0)
            learn(x, y)
        self.learned += len(labels)
        return batch.with_column("score", scores)


def river_loop(records: list[dict], labels: list[bool]) -> int:
    """River's own loop, no Kafka: the same test-then-train over (x, y) pairs; returns rows learned."""
    model = make_river_model()
    predict, learn = model.predict_proba_one, model.learn_one
    for x, y in zip(records, labels):
        predict(x)
        learn(x, y)
    return len(labels)
