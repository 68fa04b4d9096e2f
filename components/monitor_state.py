"""What the scheduled monitor remembers per domain, so it alerts once per incident and its reports stay bounded.

Before: every tick re-checked the unchanged newest traffic file, so one file gave a drift event, an alert, a 3.7 MB
report folder and an MLflow run per tick (about 24 identical alerts and 89 MB a day per drifted domain at the hourly
default). Now:

- a batch (by content hash) already monitored against the same champion version is skipped;
- an incident opens at the first drifted batch and alerts once; it alerts again only when the set of drifted signals
  changes or after ``monitoring.alert_quiet_hours``; a batch without drift closes it;
- only the newest ``monitoring.keep_reports_per_domain`` report folders stay under ``reports/drift/<domain>/``
  (each was logged to MLflow with its monitor run, so what is pruned here stays there).

State: ``reports/drift/<domain>/state.json``, written atomically. No Prefect here: flows.monitor calls these.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
MAX_REMEMBERED = 1000   # monitored-batch records kept (oldest dropped): the state file stays small


def state_path(root: Path, domain: str) -> Path:
    return Path(root) / "reports" / "drift" / domain / STATE_FILE


def load_state(root: Path, domain: str) -> dict[str, Any]:
    """The domain's state, or a fresh one (a missing or unreadable file only costs one repeated check)."""
    try:
        state = json.loads(state_path(root, domain).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    return {"monitored": state.get("monitored", {}), "incident": state.get("incident")}


def save_state(root: Path, domain: str, state: dict[str, Any]) -> None:
    from components.model_io import atomic_write_text

    monitored = state["monitored"]
    if len(monitored) > MAX_REMEMBERED:
        state["monitored"] = dict(sorted(monitored.items(), key=lambda kv: kv[1]["at"])[-MAX_REMEMBERED:])
    atomic_write_text(state_path(root, domain), json.dumps(state, indent=2, sort_keys=True))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def batch_key(sha256: str, champion_version: int | None) -> str:
    return f"{sha256}@v{champion_version if champion_version is not None else 'none'}"


def previous_check(state: dict[str, Any], sha256: str, champion_version: int | None) -> dict[str, Any] | None:
    """The earlier monitoring of this exact batch against this champion, if any."""
    return state["monitored"].get(batch_key(sha256, champion_version))


def remember_check(state: dict[str, Any], sha256: str, champion_version: int | None, result: dict[str, Any],
                   now: datetime) -> None:
    state["monitored"][batch_key(sha256, champion_version)] = {
        "at": _stamp(now), "source": result.get("source"), "drift_detected": bool(result.get("drift_detected")),
        "drifted_signals": list(result.get("drifted_signals", [])), "report": str(result.get("html_path"))}


def alert_decision(state: dict[str, Any], drift: bool, signals: list[str], now: datetime,
                   quiet_hours: float) -> tuple[bool, str]:
    """(alert?, why) for one monitored batch; updates the incident in `state`."""
    incident = state.get("incident")
    if not drift:
        state["incident"] = None
        return False, "no drift" + (": incident closed" if incident else "")
    signals = sorted(signals)
    if incident is None:
        state["incident"] = {"opened_at": _stamp(now), "last_alert_at": _stamp(now), "signals": signals,
                             "alerts": 1, "batches": 1}
        return True, "drift: new incident"
    incident["batches"] += 1
    quiet_until = _parse(incident["last_alert_at"]) + timedelta(hours=quiet_hours)
    if signals != incident["signals"]:
        why = f"drift: incident changed (signals {', '.join(incident['signals'])} -> {', '.join(signals)})"
    elif now >= quiet_until:
        why = f"drift: incident still open after monitoring.alert_quiet_hours={quiet_hours:g}"
    else:
        return False, (f"drift: same incident as alerted at {incident['last_alert_at']} (signals "
                       f"{', '.join(signals)}); next reminder after {_stamp(quiet_until)}")
    incident.update(signals=signals, last_alert_at=_stamp(now), alerts=incident["alerts"] + 1)
    return True, why


def prune_reports(root: Path, domain: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` monitor report folders of the domain (names are UTC timestamps)."""
    folder = Path(root) / "reports" / "drift" / domain
    runs = sorted((p for p in folder.iterdir() if p.is_dir() and (p / "summary.json").is_file()),
                  key=lambda p: p.name) if folder.is_dir() else []
    pruned = runs[:-keep] if len(runs) > keep else []
    for path in pruned:
        shutil.rmtree(path)
    return pruned


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
