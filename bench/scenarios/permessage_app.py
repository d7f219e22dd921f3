"""The per-message loop as most tutorials write it (own process).

    python bench/scenarios/permessage_app.py BOOTSTRAP INPUT OUTPUT MODEL.joblib SECONDS [sklearn|booster] STATS.json

``poll()`` one message, ``json.loads`` it, build the feature row, call the fitted
``LGBMClassifier.predict_proba`` on that one row (``sklearn``, the default: as tutorials
write it), or the underlying ``Booster.predict`` on a one-row numpy array (``booster``: the
per-message loop with its model call made as cheap as LightGBM allows), ``json.dumps`` the
record plus ``score`` and ``produce`` it. Client settings are librdkafka's defaults
(auto-commit on) except the group timeouts every consumer in the suite uses. Stops SECONDS
after its first event.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(bootstrap: str, source: str, sink: str, model_path: str, seconds: float, how: str, stats_path: str) -> None:
    t_start = time.time()
    import joblib
    from confluent_kafka import Consumer, Producer

    from benchlib.events import CATEGORICAL, row_features
    from benchlib.kafka import GROUP_TIMEOUTS
    from tidal.config import KafkaSettings
    from tidal.models.artifact import category_codes

    model = joblib.load(model_path)
    if how == "booster":
        import numpy as np

        booster = model.booster_

        def predict_one(features: list[float]) -> float:
            return float(booster.predict(np.array([features]))[0])
    else:
        def predict_one(features: list[float]) -> float:
            return float(model.predict_proba([features])[0][1])
    codes = category_codes(CATEGORICAL)
    settings = KafkaSettings.resolve(bootstrap)  # plus TIDAL_KAFKA_* / TIDAL_KAFKA_CONFIG (SASL, TLS)
    consumer = Consumer(settings.client_config({"group.id": f"permessage-{uuid.uuid4().hex[:8]}",
                                                "auto.offset.reset": "earliest", **GROUP_TIMEOUTS}))
    producer = Producer(settings.client_config())
    consumer.subscribe([source])
    seen, first, last = 0, None, None
    while True:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            continue
        now = time.time()
        if first is None:
            first = now
        elif now - first > seconds:
            break
        record = json.loads(msg.value())
        features = row_features(record, codes)
        record["score"] = predict_one(features)
        producer.produce(sink, json.dumps(record).encode(), key=msg.key())
        producer.poll(0)
        seen += 1
        last = now
    producer.flush(30)
    consumer.close()
    Path(stats_path).write_text(json.dumps({"events": seen, "started_at": t_start, "first_event_at": first,
                                            "last_event_at": last}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) == 6:
        a.insert(5, "sklearn")
    main(a[0], a[1], a[2], a[3], float(a[4]), a[5], a[6])
