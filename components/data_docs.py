"""The domain's data-validation page: one offline HTML file built from Great Expectations' own validation results.

Why not GE's Data Docs site: GE 1.x loads its CSS and JavaScript from CDNs, so on a machine without internet its
index renders unstyled with no suites and no results; its sub-pages show no pass/fail icons, and the leakage
expectation prints hundreds of hashes. This page reads the same ``ExpectationSuiteValidationResult`` JSON and shows,
per suite and expectation, a pass / fail / warning badge, what was required, what was observed and the failure in
words; long value lists are summarised. Inline CSS, no script, no external asset: it opens complete anywhere. Every
user value (texts, labels, file names) is HTML-escaped.
"""
from __future__ import annotations

import html
import shutil
import time
from pathlib import Path
from typing import Any

from components.validation import TEXT_KEY, WARNING, ValidationOutcome

_LISTED = 8          # values of a long list shown before "… and N more"
_VALUE_CHARS = 80    # characters of one shown value
_STATUS = {"pass": ("PASS", "✔"), "fail": ("FAIL", "✘"), "warn": ("WARNING", "⚠")}
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:1em 2em}header a{color:#9fd0ff}
main{padding:1em 2em;max-width:75em}
h1{margin:.2em 0;font-size:1.6em}h2{margin-top:1.6em;font-size:1.25em}
table{border-collapse:collapse;background:#fff;width:100%;margin:.5em 0}
th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:left;vertical-align:top;font-size:.92em}
th{background:#eaeef2}
.badge{display:inline-block;min-width:6.5em;padding:.15em .5em;border-radius:1em;font-weight:600;color:#fff;
text-align:center;white-space:nowrap}
.pass .badge,.badge.pass{background:#1a7f37}.fail .badge,.badge.fail{background:#cf222e}
.warn .badge,.badge.warn{background:#bf8700}
.verdict{font-size:1.15em;margin:.6em 0}.muted{color:#57606a}code{font-size:.9em}
ul.problems li{margin:.2em 0}
"""


def write_data_docs(site_dir: Path, domain: str, outcomes: dict[str, ValidationOutcome],
                    window: dict[str, dict[str, int]] | None = None, index_href: str = "../../index.html") -> Path:
    """Write <site_dir>/index.html (the folder is replaced, so no page of an earlier run lingers); return its path."""
    site_dir = Path(site_dir).resolve()
    if site_dir.exists():
        shutil.rmtree(site_dir)
    site_dir.mkdir(parents=True)
    page = site_dir / "index.html"
    page.write_text(render_page(domain, outcomes, window or {}, index_href), encoding="utf-8")
    return page


def render_page(domain: str, outcomes: dict[str, ValidationOutcome], window: dict[str, dict[str, int]],
                index_href: str) -> str:
    """The whole page: verdict, one summary row per suite, then each suite's expectations."""
    failed = [name for name, o in outcomes.items() if not o.success]
    warned = sum(len(o.warnings) for o in outcomes.values())
    status = "fail" if failed else ("warn" if warned else "pass")
    verdict = (f"{len(failed)} of {len(outcomes)} suites failed: the domain stops before training "
               f"({', '.join(failed)})" if failed else f"all {len(outcomes)} suites passed"
               + (f", with {warned} warning(s) to read" if warned else ""))
    e = html.escape
    body = [f'<header><h1>Data validation · {e(domain)}</h1><div class="muted">Great Expectations suites of the '
            f'prepared tables · generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} · '
            f'<a href="{e(index_href)}">all reports</a></div></header><main>',
            f'<p class="verdict {status}"><span class="badge">{_STATUS[status][1]} {_STATUS[status][0]}</span> '
            f'{e(verdict)}</p>', _summary_table(outcomes, window)]
    body += [_suite_section(name, outcome, window.get(name)) for name, outcome in outcomes.items()]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Data validation · {e(domain)}'
            f"</title><style>{_STYLE}</style></head><body>{''.join(body)}</main></body></html>\n")


def _summary_table(outcomes: dict[str, ValidationOutcome], window: dict[str, dict[str, int]]) -> str:
    rows = []
    for name, o in outcomes.items():
        status = "pass" if o.success and not o.warnings else ("warn" if o.success else "fail")
        stats = o.statistics
        counts = window.get(name)
        over = (f"{counts['truncated']} of {counts['rows']} (read to {counts['max_tokens']} tokens)"
                if counts else "n/a")
        rows.append(f'<tr class="{status}"><td><span class="badge">{_STATUS[status][1]} {_STATUS[status][0]}</span>'
                    f'</td><td><a href="#{_anchor(name)}">{html.escape(name)}</a></td>'
                    f"<td>{stats.get('successful_expectations', 0)} of {stats.get('evaluated_expectations', 0)}</td>"
                    f"<td>{len(o.failures)}</td><td>{len(o.warnings)}</td><td>{_rows(o)}</td><td>{over}</td></tr>")
    return ("<table><thead><tr><th>verdict</th><th>suite</th><th>expectations met</th><th>failures</th>"
            "<th>warnings</th><th>rows</th><th>texts longer than the encoder reads (truncated, accepted)</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def _rows(outcome: ValidationOutcome) -> str:
    for result in outcome.result_json.get("results", []):
        if result["expectation_config"]["type"] == "expect_table_row_count_to_be_between":
            return str(result.get("result", {}).get("observed_value", "?"))
    return "?"


def _suite_section(name: str, outcome: ValidationOutcome, counts: dict[str, int] | None) -> str:
    e = html.escape
    problems = [f'<li class="fail"><span class="badge">✘ FAIL</span> {e(line)}</li>' for line in outcome.failures]
    problems += [f'<li class="warn"><span class="badge">⚠ WARNING</span> {e(line)}</li>' for line in outcome.warnings]
    rows = "".join(_expectation_row(r) for r in outcome.result_json.get("results", []))
    note = (f'<p class="muted">{counts["truncated"]} of {counts["rows"]} texts are longer than the encoder\'s '
            f'{counts["max_tokens"]}-token window: accepted, and the model reads their beginning.</p>'
            if counts and counts["truncated"] else "")
    return (f'<h2 id="{_anchor(name)}">{e(outcome.name)}</h2>'
            + (f'<ul class="problems">{"".join(problems)}</ul>' if problems else "") + note
            + "<table><thead><tr><th>status</th><th>expectation</th><th>required</th><th>observed</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _expectation_row(result: dict[str, Any]) -> str:
    config = result["expectation_config"]
    status = "pass" if result.get("success") else ("warn" if config.get("severity") == WARNING else "fail")
    kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}
    column = kwargs.pop("column", None)
    title = config["type"].removeprefix("expect_").replace("_", " ")
    where = f" <code>{html.escape(str(column))}</code>" if column else ""
    notes = f'<div class="muted">{html.escape(str(config["notes"]))}</div>' if config.get("notes") else ""
    return (f'<tr class="{status}"><td><span class="badge">{_STATUS[status][1]} {_STATUS[status][0]}</span></td>'
            f"<td>{html.escape(title)}{where}{notes}</td><td>{_required(kwargs, column)}</td>"
            f"<td>{_observed(result.get('result') or {}, column)}</td></tr>")


def _required(kwargs: dict[str, Any], column: Any) -> str:
    parts = []
    for key, value in kwargs.items():
        if key == "value_set" and column == TEXT_KEY:
            shown = f"{len(value)} hashes of the evaluation split's texts (not listed)"
        else:
            shown = summarise(value)
        parts.append(f"{html.escape(key)} = {shown}")
    return "<br>".join(parts) or "—"


def _observed(result: dict[str, Any], column: Any) -> str:
    """The observed value, or the unexpected-row count with a few examples (never evaluation-text hashes)."""
    if "observed_value" in result:
        return summarise(result["observed_value"])
    if "unexpected_count" not in result:
        return "—"
    text = html.escape(f"{result['unexpected_count']} of {result.get('element_count', '?')} rows unexpected")
    examples = result.get("partial_unexpected_list") or []
    if result.get("unexpected_count"):
        text += f" ({float(result.get('unexpected_percent') or 0):.1f}%)"
        text += (f"; e.g. {summarise(examples[:3])}" if column != TEXT_KEY
                 else "; the rows are named in the failure line above")
    return text


def summarise(value: Any) -> str:
    """A value for a table cell, escaped: a long list as its first items and a count, long strings cut."""
    if isinstance(value, (list, tuple, set)):
        items = list(value)
        shown = ", ".join(_short(v) for v in items[:_LISTED])
        more = f" … and {len(items) - _LISTED} more ({len(items)} in all)" if len(items) > _LISTED else ""
        return f"[{shown}]{html.escape(more)}"
    return _short(value)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if not isinstance(value, (int, float)) else str(value)
    if isinstance(value, float):
        text = f"{value:.4g}"
    if len(text) > _VALUE_CHARS:
        text = text[:_VALUE_CHARS] + f"… [{len(text)} chars]"
    return html.escape(text)


def _anchor(name: str) -> str:
    return "suite-" + "".join(c if c.isalnum() else "-" for c in name)
