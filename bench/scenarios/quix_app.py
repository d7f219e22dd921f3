"""A Quix Streams application scoring each event with the same model (run as its own process).

    python bench/scenarios/quix_app.py BOOTSTRAP INPUT OUTPUT MODEL.joblib SECONDS STATS.json

Reads JSON events, calls ``LGBMClassifier.predict_proba`` on one row per event (the way a
Quix Streams app calls a model), adds ``score`` and produces to OUTPUT. The output
timestamp is set to the processing time (Quix otherwise keeps the input's timestamp), so
the suite can measure the steady-state rate from the output topic as for every system.
Stops itself SECONDS after its first event; writes its own counts to STATS.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(bootstrap: str, source: str, sink: str, model_path: str, seconds: float, stats_path: str) -> None:
    t_start = time.time()
    import joblib
    from quixstreams import Application

    from benchlib.events import CATEGORICAL, row_features
    from tidal.config import KafkaSettings
    from tidal.models.artifact import category_codes

    model = joblib.load(model_path)
    codes = category_codes(CATEGORICAL)
    extra = dict(KafkaSettings.resolve(bootstrap).extra)  # TIDAL_KAFKA_* / TIDAL_KAFKA_CONFIG (SASL, TLS)
    app = Application(broker_address=bootstrap, consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", loglevel="WARNING", use_changelog_topics=False,
                      state_dir=tempfile.mkdtemp(prefix="quix-state-"), auto_create_topics=False,
                      consumer_extra_config={**extra, "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000},
                      producer_extra_config=extra)
    inp = app.topic(source, value_deserializer="json", key_deserializer="str")
    out = app.topic(sink, value_serializer="json", key_serializer="str")
    stats = {"events": 0, "first_event_at": None, "last_event_at": None, "started_at": t_start}

    def score(record: dict) -> dict:
        now = time.time()
        if stats["first_event_at"] is None:
            stats["first_event_at"] = now
        elif now - stats["first_event_at"] > seconds:
            app.stop()
        record["score"] = float(model.predict_proba([row_features(record, codes)])[0][1])
        stats["events"] += 1
        stats["last_event_at"] = now
        return record

    sdf = app.dataframe(inp)
    sdf = sdf.apply(score)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000))
    sdf.to_topic(out)
    app.run()
    Path(stats_path).write_text(json.dumps(stats))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], a[3], float(a[4]), a[5])
