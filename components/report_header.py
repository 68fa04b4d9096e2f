"""The header of our own at the top of every drift report: what was compared, the verdict in words, each signal
with its statistic and threshold, what it means and what to do, and a link back to the reports index.

Evidently's page is a stock report (no domain, no model version, no advice); this header is inserted right after
its ``<body>`` tag as plain HTML with inline styles (no script, no external asset), so the file stays one offline
page. Every value that can come from a user (domain, batch file name, labels, reasons) is HTML-escaped.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.drift import DESCRIPTORS, LABEL, PREDICTION


@dataclass
class ReportContext:
    """What a drift report was about: the header's first lines."""

    domain: str
    model: str                  # "champion v5" / "candidate of this run (not yet registered)"
    batch: str                  # "traffic-2026-12-01.csv (412 rows)" / "300 rows of the held-out split"
    reference: str              # "adaptation pool (2000 rows)"
    created_at: str
    index_href: str             # relative link to reports/index.html
    kind: str = "monitor"       # "monitor" (a batch of traffic) or "pipeline" (held-out split vs pool)
    quality: dict[str, Any] | None = None
    prior: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)


@dataclass
class Signal:
    name: str
    test: str
    statistic: str
    threshold: str
    fired: bool | None          # None: not tested


_ADVICE = {
    "descriptors": ("The texts changed form (length, word count or share of non-letters): usually a new source, "
                    "channel or scraper, or broken encoding.",
                    "Check the source first. If the change is genuine, label K examples per label of the new texts "
                    "and re-adapt."),
    "embeddings": ("What the texts talk about moved (their meaning, as the encoder sees it).",
                   "Label K examples per label of the new traffic and hand them over (`metaadapt ingest --domain "
                   "{domain} FILE` or drop the CSV in `data/incoming/{domain}/`): the domain re-adapts by itself."),
    "label": ("The mix of true labels differs from the reference.",
              "Re-adapt so the class prior follows (`adapt.prior: traffic`, then `metaadapt adapt {domain}`)."),
    "prediction": ("The model predicts a different mix of labels than on the reference.",
                   "If label shift fired too, the class mix moved: re-adapt with `adapt.prior: traffic`. Otherwise "
                   "read it with the embedding signal: the model may be misreading new texts."),
    "quality": ("The champion is less accurate on this labelled batch than when it was registered.",
                "Ingest this batch as labelled data (`metaadapt ingest --domain {domain} FILE`): it re-adapts."),
    "label_shift": ("The class prior estimated on the batch moved from the one the model applies.",
                    "Re-adapt with `adapt.prior: traffic` (`metaadapt adapt {domain}`); check the source if the "
                    "move is implausible."),
}


def drift_signals(summary: dict[str, Any], quality: dict[str, Any] | None,
                  prior: dict[str, Any] | None) -> list[Signal]:
    """One row per signal tested, with its statistic and threshold, from the drift summary (DriftSummary.to_dict)."""
    p_values, alpha = summary.get("column_p_values") or {}, summary.get("column_alpha")
    drifted = set(summary.get("drifted_columns") or [])
    signals = [Signal(column, "K-S", _p(p_values.get(column)), f"p < {alpha:g}" if alpha else "",
                      column in drifted if column in p_values else None) for column in DESCRIPTORS]
    for column, what in ((LABEL, "label mix"), (PREDICTION, "predicted-label mix")):
        if column in p_values:
            signals.append(Signal(what, "chi-square", _p(p_values[column]), f"p < {alpha:g}", column in drifted))
    tested = summary.get("embedding_components_tested")
    if tested:
        family = summary.get("embedding_alpha") or 0.0
        signals.append(Signal("embeddings", f"K-S per PCA component ({tested} tested)",
                              f"{summary['embedding_components_drifted']} of {tested} components drifted "
                              f"(smallest p {_p(summary.get('embedding_min_p_value'))})",
                              f"any component p < {family:g}/{tested}", bool(summary.get("embedding_drift"))))
    if quality:
        drop = quality.get("drop")
        signals.append(Signal("quality", "champion accuracy on the labelled batch",
                              f"{quality['accuracy']:.3f} (drop {'n/a' if drop is None else format(drop, '.3f')})",
                              f"drop > {quality['max_drop']:g}", bool(quality.get("degraded"))))
    if prior:
        shift = prior.get("shift")
        signals.append(Signal("label shift", "EM class prior vs the model's (total variation)",
                              "not estimated" if shift is None else f"{shift:.3f}", f"> {prior['threshold']:g}",
                              None if shift is None else bool(prior.get("fired"))))
    return signals


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _advice_keys(summary: dict[str, Any], quality: dict[str, Any] | None, prior: dict[str, Any] | None) -> list[str]:
    drifted = set(summary.get("drifted_columns") or [])
    keys = []
    if drifted & set(DESCRIPTORS) and (summary.get("drifted_share") or 0) > 0:
        keys.append("descriptors")
    keys += [key for key, fired in (("embeddings", summary.get("embedding_drift")), ("label", LABEL in drifted),
                                    ("prediction", PREDICTION in drifted),
                                    ("quality", bool(quality and quality.get("degraded"))),
                                    ("label_shift", bool(prior and prior.get("fired")))) if fired]
    return keys


def render_header(context: ReportContext, summary: dict[str, Any], drift: bool, reasons: list[str]) -> str:
    """The header section (HTML string)."""
    e = html.escape
    verdict = ("DRIFT — the batch differs from the reference beyond the thresholds in params.yaml (drift:)"
               if drift else "No drift — every signal is within the thresholds in params.yaml (drift:)")
    if context.kind == "pipeline":
        verdict += " · this is the pipeline's check of the held-out split against the adaptation pool"
    rows = "".join(
        f'<tr style="background:{"#fde2e1" if s.fired else "#e6f4ea" if s.fired is False else "#f6f8fa"}">'
        f"<td>{e(s.name)}</td><td>{e(s.test)}</td><td>{e(s.statistic)}</td><td>{e(s.threshold)}</td>"
        f"<td><b>{'fired' if s.fired else 'ok' if s.fired is False else 'not tested'}</b></td></tr>"
        for s in drift_signals(summary, context.quality, context.prior))
    advice = "".join(f"<li><b>{e(meaning)}</b> {_inline_code(todo.format(domain=context.domain))}</li>"
                     for meaning, todo in (_ADVICE[k] for k in _advice_keys(summary, context.quality, context.prior)))
    if not advice:
        advice = ("<li>Nothing to do. If you expected drift here, compare the statistics with the thresholds "
                  "(params.yaml <code>drift:</code>).</li>")
    skipped = "".join(f"<li>{e(line)}</li>" for line in context.skipped)
    return (f'<section id="metaadapt-header" style="font-family:system-ui,sans-serif;margin:1.5em 2em;'
            f'padding:1em 1.5em;border:2px solid {"#cf222e" if drift else "#1a7f37"};border-radius:8px;'
            f'background:#fff;color:#1f2328;max-width:75em">'
            f'<div style="float:right"><a href="{e(context.index_href)}">← all reports</a></div>'
            f"<h1 style=\"margin:0 0 .3em;font-size:1.5em\">Drift report · {e(context.domain)}</h1>"
            f"<div>model: <b>{e(context.model)}</b> · batch: <b>{e(context.batch)}</b> · reference: "
            f"{e(context.reference)} · {e(context.created_at)}</div>"
            f'<p id="metaadapt-verdict" style="font-size:1.2em;font-weight:600;color:'
            f'{"#cf222e" if drift else "#1a7f37"}">{e(verdict)}</p>'
            + (f"<ul>{''.join(f'<li>{e(r)}</li>' for r in reasons)}</ul>" if reasons else "")
            + '<table style="border-collapse:collapse;width:100%" border="1" cellpadding="5"><thead><tr>'
              "<th>signal</th><th>test</th><th>statistic</th><th>fires when</th><th>result</th></tr></thead>"
            f"<tbody>{rows}</tbody></table><h2 style=\"font-size:1.1em\">What it means, what to do</h2>"
            f"<ul>{advice}</ul>" + (f"<p>Not checked:</p><ul>{skipped}</ul>" if skipped else "")
            + '<p style="color:#57606a">Below: Evidently\'s report of the text descriptors and the label / '
              "prediction columns. The embedding components are tested here, above, and not repeated there.</p>"
              "</section>\n")


def _inline_code(text: str) -> str:
    """Escape, then show `backticked` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def insert_header(html_path: Path, header: str) -> None:
    """Put the header right after the page's <body ...> tag (at the top when it has none)."""
    page = Path(html_path).read_text(encoding="utf-8")
    start = page.lower().find("<body")
    cut = page.find(">", start) + 1 if start >= 0 else 0
    Path(html_path).write_text(page[:cut] + header + page[cut:], encoding="utf-8")
