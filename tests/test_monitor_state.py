"""One alert per drift incident, skipped repeats, bounded report storage (components.monitor_state)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from components.monitor_state import (alert_decision, load_state, previous_check, prune_reports, remember_check,
                                      save_state)

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
EMBEDDINGS = ["embeddings", "text_length"]


def test_hourly_ticks_on_one_incident_alert_once_then_after_the_quiet_period():
    state = {"monitored": {}, "incident": None}
    decisions = [alert_decision(state, True, EMBEDDINGS, T0 + timedelta(hours=h), 24)[0] for h in range(30)]
    assert decisions.count(True) == 2 and decisions[0] and decisions[24]      # first tick, and 24 h later
    assert state["incident"]["batches"] == 30 and state["incident"]["alerts"] == 2


def test_a_changed_incident_alerts_and_a_clean_batch_closes_it():
    state = {"monitored": {}, "incident": None}
    assert alert_decision(state, True, EMBEDDINGS, T0, 24) == (True, "drift: new incident")
    alert, why = alert_decision(state, True, ["label_shift"], T0 + timedelta(hours=1), 24)
    assert alert and "incident changed" in why
    assert alert_decision(state, False, [], T0 + timedelta(hours=2), 24) == (False, "no drift: incident closed")
    assert state["incident"] is None and alert_decision(state, True, EMBEDDINGS, T0 + timedelta(hours=3), 24)[0]


def test_a_batch_is_remembered_per_champion_version(tmp_path):
    state = load_state(tmp_path, "d")
    remember_check(state, "ab" * 32, 3, {"source": "t.csv", "drift_detected": True, "html_path": "r.html"}, T0)
    save_state(tmp_path, "d", state)
    again = load_state(tmp_path, "d")
    assert previous_check(again, "ab" * 32, 3)["report"] == "r.html"
    assert previous_check(again, "ab" * 32, 4) is None                      # a new champion looks again


def test_prune_keeps_the_newest_report_folders_only(tmp_path):
    folder = tmp_path / "reports" / "drift" / "d"
    names = [f"2026120{day}T000000Z" for day in range(1, 6)]
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "summary.json").write_text(json.dumps({}))
    pruned = prune_reports(tmp_path, "d", keep=2)
    assert [p.name for p in pruned] == names[:3]
    assert sorted(p.name for p in folder.iterdir()) == names[3:]
