"""reports/index.html: every drift report (pipeline and monitor runs), newest first, so a reviewer sees where to look.

Sources: the pipeline's ``reports/drift/<domain>.json`` (+ ``.html``) and each monitor run's
``reports/drift/<domain>/<time>/summary.json`` (+ ``report.html``). Texts, labels and file names come from users,
so every value rendered is passed through ``html.escape``; links are relative, so the folder can be moved or served.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

INDEX = "index.html"
MAX_SIGNALS = 4


@dataclass
class IndexEntry:
    domain: str
    created_at: str
    kind: str            # "pipeline" or "monitor: <source>"
    drift: bool | None
    signals: list[str]
    reasons: list[str]
    link: str | None     # relative to reports/


def collect_entries(reports: Path) -> list[IndexEntry]:
    """All drift reports under reports/drift, newest first (unreadable summaries are listed, not skipped)."""
    drift_dir = Path(reports) / "drift"
    entries = [_pipeline_entry(path, reports) for path in sorted(drift_dir.glob("*.json"))]
    entries += [_monitor_entry(path, reports) for path in sorted(drift_dir.glob("*/*/summary.json"))]
    return sorted(entries, key=lambda e: e.created_at, reverse=True)


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _relative(path: Path, reports: Path) -> str | None:
    return quote(path.relative_to(reports).as_posix()) if path.is_file() else None


def _pipeline_entry(path: Path, reports: Path) -> IndexEntry:
    data = _load(path) or {}
    created = data.get("created_at") or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    signals = list(data.get("drifted_columns", [])) + (["embeddings"] if data.get("embedding_drift") else [])
    signals += ["label_shift"] if (data.get("prior") or {}).get("fired") else []
    return IndexEntry(path.stem, created, "pipeline (held-out split)", data.get("drift_detected",
                                                                                data.get("dataset_drift")), signals,
                      list(data.get("reasons") or []), _relative(path.with_suffix(".html"), reports))


def _monitor_entry(path: Path, reports: Path) -> IndexEntry:
    data = _load(path)
    if data is None:
        return IndexEntry(path.parent.parent.name, path.parent.name, "monitor", None, [],
                          ["summary.json unreadable"], None)
    return IndexEntry(data.get("domain", path.parent.parent.name), data.get("created_at", path.parent.name),
                      f"monitor: {data.get('source', 'batch')}", data.get("drift_detected"),
                      list(data.get("drifted_signals", [])), list(data.get("reasons", [])),
                      _relative(path.parent / data.get("html", "report.html"), reports))


def render_index(entries: list[IndexEntry]) -> str:
    """A self-contained HTML table; drifted rows are highlighted."""
    esc = html.escape
    rows = []
    for e in entries:
        status = "unknown" if e.drift is None else ("DRIFT" if e.drift else "ok")
        signals = ", ".join(e.signals[:MAX_SIGNALS]) + (" …" if len(e.signals) > MAX_SIGNALS else "")
        link = f'<a href="{esc(e.link)}">report</a>' if e.link else "(no HTML)"
        rows.append(f'<tr class="{esc(status.lower())}"><td>{esc(e.domain)}</td><td>{esc(e.created_at)}</td>'
                    f"<td>{esc(e.kind)}</td><td>{esc(status)}</td><td>{esc(signals) or '—'}</td>"
                    f"<td>{esc('; '.join(e.reasons)) or '—'}</td><td>{link}</td></tr>")
    body = "\n".join(rows) or '<tr><td colspan="7">no drift reports yet</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MetaAdapt drift reports</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:left;vertical-align:top}}tr.drift td{{background:#fde2e1}}tr.ok td{{background:#e6f4ea}}
</style></head><body>
<h1>MetaAdapt drift reports</h1>
<p>Newest first. DRIFT rows: open the report and start with the signals listed. See also
<a href="summary.md">summary.md</a>.</p>
<table><thead><tr><th>domain</th><th>time (UTC)</th><th>run</th><th>drift</th><th>top drifted signals</th>
<th>why</th><th>link</th></tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""


def write_index(root: Path) -> Path:
    """Rewrite reports/index.html from what is on disk (atomic replace: a reader never sees half a page)."""
    reports = Path(root) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / INDEX
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_index(collect_entries(reports)), encoding="utf-8")
    tmp.replace(path)
    return path
