"""The HTML reports as a reviewer sees them: headless Chromium, network off, DOM after scripts ran, a screenshot.

Marked `browser`; skipped with the install command when Debian's `chromium` is absent. Each page is built from real
results (GE validation of a real suite, an Evidently drift report with our header), loaded with every request
routed to a dead proxy, and checked three ways: nothing was requested outside file:// (Chromium's net log), the
live DOM holds what the reader needs (verdicts, badges, Evidently's own rendered widgets), and the screenshot shows
the page's colours (its CSS was applied, not a bare unstyled page). Screenshots are kept under the test's tmp dir.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser import chromium, external, pixels_near, render

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed: apt-get install -y "
                                                            "chromium (Debian); the browser checks are skipped")]
RED, GREEN, AMBER = (207, 34, 46), (26, 127, 55), (191, 135, 0)


def _frame(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"a plain review number {i} about the fit" for i in range(n)],
                         "label": ["pos", "neg"] * (n // 2)})


def test_data_docs_open_complete_offline_with_a_badge_per_expectation(tmp_path: Path) -> None:
    from components.data_docs import write_data_docs
    from components.validation import SuiteSpec, text_keys, validate_frame

    frame = _frame()
    doubled = pd.concat([frame, frame], ignore_index=True)
    evaluation = [frame["text"][0]] + [f"held-out text {i}" for i in range(300)]   # one leak, 300 hashes banned
    adapt = validate_frame(doubled, SuiteSpec("shop", "adapt", ("pos", "neg"), 1, 100, max_duplicate_fraction=0.1,
                                              duplicates_warn_only=True, banned_text_keys=text_keys(evaluation)))
    ok = validate_frame(frame, SuiteSpec("shop", "eval", ("pos", "neg"), 1, 100))
    page = write_data_docs(tmp_path / "docs", "shop", {"adapt": adapt, "eval": ok},
                           {"adapt": {"rows": 24, "truncated": 2, "max_tokens": 64}})

    shown = render(page, tmp_path / "data_docs.png", tmp_path / "profile")
    assert external(shown.requested) == []
    assert "✘ FAIL" in shown.dom and "⚠ WARNING" in shown.dom and "✔ PASS" in shown.dom
    assert "1 of 2 suites failed" in shown.dom and "leakage" in shown.dom
    assert "301 hashes of the evaluation split's texts (not listed)" in shown.dom
    assert "2 of 24 (read to 64 tokens)" in shown.dom
    assert pixels_near(shown.screenshot, RED) > 500 and pixels_near(shown.screenshot, GREEN) > 500
    assert pixels_near(shown.screenshot, AMBER) > 100


def test_drift_report_header_and_evidently_render_offline(tmp_path: Path) -> None:
    from components.drift import drift_report
    from components.report_header import ReportContext, insert_header, render_header

    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"text": [" ".join(["word"] * int(rng.integers(3, 15))) for _ in range(120)]})
    current = pd.DataFrame({"text": [" ".join(["ERROR#"] * int(rng.integers(20, 40))) for _ in range(60)]})
    html = tmp_path / "report.html"
    summary = drift_report(reference, current, reference_embeddings=rng.normal(size=(120, 16)),
                           current_embeddings=rng.normal(size=(60, 16)) + 1.5, html_path=html, max_embedding_dims=8)
    context = ReportContext("shop", "champion v3", "traffic.csv (60 rows)", "adaptation pool (120 rows)",
                            "2026-12-01T18:00:00Z", "../../../index.html")
    insert_header(html, render_header(context, summary.to_dict(), summary.dataset_drift, summary.reasons or []))

    shown = render(html, tmp_path / "drift.png", tmp_path / "profile")
    assert external(shown.requested) == []
    assert "Drift report · shop" in shown.dom and "champion v3" in shown.dom and "traffic.csv (60 rows)" in shown.dom
    assert "DRIFT — the batch differs" in shown.dom and "Check the source first" in shown.dom
    assert f"{summary.embedding_components_drifted} of 8 components drifted" in shown.dom
    assert "Dataset Drift" in shown.dom            # Evidently's widgets: its inlined scripts ran without a network
    assert pixels_near(shown.screenshot, RED) > 300   # the header's red verdict and frame are drawn
