"""Which alerts `tidal status` and the dashboard call active: firing ones, and one-shot ones for their ttl."""

from tidal.models.deployed import ONE_SHOT_TTL_S
from tidal.monitor.status import _expired
from tidal.stream.context import alert_event


def test_a_one_shot_alert_expires_after_its_ttl_and_a_rule_alert_does_not():
    now = 1_000_000.0
    rollback = alert_event("model_rollback", "model_rollback:p:m", "firing", "canary failed", pipeline="p",
                           time_s=now - ONE_SHOT_TTL_S - 1, ttl_s=ONE_SHOT_TTL_S)
    fresh = dict(rollback, time=now - 10)
    rule = alert_event("threshold", "dlq_burst", "firing", "dlq rate 7 > 5", pipeline="p", time_s=now - 86_400)
    assert _expired(rollback, now) and not _expired(fresh, now)
    assert not _expired(rule, now)  # firing until its rule resolves it
    assert not _expired(dict(rule, ttl_s="garbage"), now)  # a bad record is not an error
