"""`tidal demo maintenance`: a regime change is detected, a retrained model is promoted and served, and
accuracy recovers to within 5 points of its pre-change level, with no person acting."""

from __future__ import annotations

import pytest

from tidal.demos.maintenance import run_demo

pytestmark = pytest.mark.integration


def test_accuracy_recovers_after_the_regime_change(settings):
    s = run_demo(settings, events=20_000, seed=7, quiet=True)
    assert s["predictions"] == s["events"] - s["history_events"]
    assert s["accuracy_before_change"] > 0.9
    assert s["accuracy_after_change"] < s["accuracy_before_change"] - 0.15  # the change hurts...
    assert s["recovered"] and s["accuracy_final"] >= s["accuracy_before_change"] - 0.05  # ...and is recovered from
    assert 0 <= s["concept_drift_delay_events"] < 1000 and 0 <= s["data_drift_delay_events"] < 1500
    assert s["false_alarms_before_change"] == 0
    # the fleet's pressure series (BOCPD, no labels) sees the new regime first, and not before it
    assert 0 <= s["series_change_delay_events"] < 200 and s["series_false_changes_before_change"] == 0
    assert abs(s["series_changes"][0]["start_event"] - s["change_at"]) <= 5
    assert s["promoted_versions"] and set(s["versions_served_from_event"]) >= {"1", str(s["promoted_versions"][0])}
    assert s["versions_served_from_event"][str(s["promoted_versions"][0])] > s["change_at"]
    assert not s["person_acted"]


def test_via_mqtt_the_readings_and_alerts_travel_through_mosquitto(settings):
    from tidal.connect.mosquitto import MOSQUITTO_MISSING, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip(MOSQUITTO_MISSING)
    s = run_demo(settings, events=4000, seed=7, quiet=True, via_mqtt=True)
    assert s["predictions"] == s["events"] - s["history_events"]  # the same summary...
    assert s["accuracy_before_change"] > 0.9 and s["alarms"]
    mqtt = s["mqtt"]  # ...with every reading through MQTT once, and every failure alert back out
    assert mqtt["published"] == mqtt["bridged"] == s["events"]
    assert mqtt["alerts_published"] == mqtt["alerts_expected"] > 0
