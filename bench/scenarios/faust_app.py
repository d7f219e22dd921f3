"""A Faust (faust-streaming) agent scoring each event with the same model (its own process).

    python bench/scenarios/faust_app.py BOOTSTRAP INPUT OUTPUT MODEL.joblib SECONDS STATS.json

The agent iterates the input stream, calls ``LGBMClassifier.predict_proba`` on one row per
event and sends the record plus ``score`` to OUTPUT (Faust's producer stamps the send time).
It stops itself SECONDS after its first event and writes its own counts to STATS.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(bootstrap: str, source: str, sink: str, model_path: str, seconds: float, stats_path: str) -> None:
    t_start = time.time()
    import faust
    import joblib

    from benchlib.events import CATEGORICAL, row_features
    from tidal.models.artifact import category_codes

    model = joblib.load(model_path)
    codes = category_codes(CATEGORICAL)
    stats = {"events": 0, "first_event_at": None, "last_event_at": None, "started_at": t_start}
    app = faust.App(f"faust-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="memory://",
                    topic_partitions=4, topic_allow_declare=False, web_enabled=False,
                    consumer_auto_offset_reset="earliest", datadir=tempfile.mkdtemp(prefix="faust-"),
                    broker_session_timeout=10, broker_heartbeat_interval=1)
    src = app.topic(source, value_serializer="json", key_serializer="raw")
    dst = app.topic(sink, value_serializer="json", key_serializer="raw")

    def finish() -> None:
        Path(stats_path).write_text(json.dumps(stats))
        os.kill(os.getpid(), signal.SIGTERM)

    @app.agent(src)
    async def score(stream):
        stopping = False
        async for key, record in stream.items():
            now = time.time()
            if stats["first_event_at"] is None:
                stats["first_event_at"] = now
            elif now - stats["first_event_at"] > seconds and not stopping:
                stopping = True
                finish()
            record["score"] = float(model.predict_proba([row_features(record, codes)])[0][1])
            await dst.send(key=key, value=record)
            stats["events"] += 1
            stats["last_event_at"] = now

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], a[3], float(a[4]), a[5])
