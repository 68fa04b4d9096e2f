"""Texts and labels that end up in HTML are shown as text: no script element, no injected attribute.

The report index (reports/index.html) and the Data Docs page of a rejected batch (components.data_docs, built
from GE's validation results, linked from the summary) are built from values a user controls: a domain label in a monitor summary,
drift reasons, signal names, a file name, a label and texts in a batch. Each page is parsed with `html.parser`;
when Debian's `chromium` is installed, the index is also loaded headless and the live DOM is checked
(`--dump-dom` prints the DOM after scripts ran: an executed injection would have changed it).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from components.config import PROJECT_ROOT, load_params
from components.report_index import write_index

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '" onerror="alert(2)'
IMAGE = "<img src=x onerror=alert(3)>"


class Page(HTMLParser):
    """Every element with its attributes, the text inside script elements, and all visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        (self.script_text if self._in_script else self.text).append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def assert_no_injection(page: Page, where: str) -> None:
    injected_scripts = [text for text in page.script_text if "alert(" in text]
    handlers = [(tag, name, value) for tag, attrs in page.elements for name, value in attrs.items()
                if name.lower().startswith("on") and "alert(" in (value or "")]   # GE's own buttons use onclick
    images = [attrs for tag, attrs in page.elements if tag == "img" and attrs.get("src") == "x"]
    assert not injected_scripts, f"{where}: a user value became a script: {injected_scripts}"
    assert not handlers, f"{where}: a user value became an event-handler attribute: {handlers}"
    assert not images, f"{where}: a user value became an element: {images}"


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    """A monitor summary and a pipeline drift summary whose user-controlled fields are HTML payloads."""
    run = tmp_path / "reports" / "drift" / "reviews" / "20261129T120000Z"
    run.mkdir(parents=True)
    (run / "report.html").write_text("<p>evidently</p>")
    (run / "summary.json").write_text(json.dumps({
        "domain": SCRIPT, "created_at": "2026-11-29T12:00:00Z", "source": f"traffic{ATTRIBUTE}.csv",
        "drift_detected": True, "drifted_signals": [IMAGE, "length"], "reasons": [f"label {SCRIPT} drifted{ATTRIBUTE}"],
        "html": "report.html"}))
    pipeline = tmp_path / "reports" / "drift" / f'x{ATTRIBUTE}.json'          # a file name is user data too
    pipeline.write_text(json.dumps({"dataset_drift": False, "drifted_columns": [IMAGE], "reasons": [SCRIPT]}))
    return tmp_path


def test_report_index_shows_html_payloads_as_text(reports: Path) -> None:
    page = parse(write_index(reports))
    assert_no_injection(page, "reports/index.html")
    visible = "".join(page.text)
    for payload in (SCRIPT, IMAGE, f"traffic{ATTRIBUTE}.csv"[len("traffic"):]):
        assert payload in visible or payload.strip('"') in visible, payload
    assert visible.count(SCRIPT) >= 2                    # the domain cell and the reasons
    scripts = [attrs for tag, attrs in page.elements if tag == "script"]
    assert scripts == []                                 # the index has no script at all


def test_data_docs_of_a_rejected_batch_show_html_payloads_as_text(tmp_path: Path) -> None:
    """The Data Docs page lists the unexpected label and the texts of a rejected batch: escaped, checked here."""
    from components.data_docs import write_data_docs
    from components.validation import batch_spec, validate_frame

    params = load_params(PROJECT_ROOT / "params.yaml")
    domain = sorted(params.domains)[0]
    known = ["positive", "negative"]
    frame = pd.DataFrame({"text": [f"text {n} {SCRIPT} {ATTRIBUTE}" for n in range(6)],
                          "label": [SCRIPT, IMAGE, "positive", "negative", "positive", "negative"]})
    outcome = validate_frame(frame, batch_spec(params, domain, known))
    assert not outcome.success
    index = write_data_docs(tmp_path / "docs", SCRIPT, {"batch": outcome})
    page = parse(index)
    assert_no_injection(page, "index.html")
    shown = "".join(page.text)
    assert "alert(1)" in shown and IMAGE in shown     # the unexpected labels are listed, as text
    assert [tag for tag, _ in page.elements if tag == "script"] == []


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_index_in_headless_chromium_runs_no_injected_script(reports: Path, tmp_path: Path) -> None:
    """The live DOM after loading: no script element, no img from a payload, and the payload text is there.

    An `alert()` in headless mode does not block; the probe is the DOM: an executed `<img onerror>` or a parsed
    `<script>` would appear as an element in `--dump-dom`, and the index page itself has no script at all."""
    index = write_index(reports)
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", index.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Page()
    dom.feed(done.stdout)
    assert [tag for tag, _ in dom.elements if tag == "script"] == []
    assert_no_injection(dom, "chromium DOM")
    assert SCRIPT in "".join(dom.text)


def test_monitor_artifact_markdown_escapes_a_user_file_name() -> None:
    """The Prefect UI renders artifact markdown as HTML: a file name with a tag must arrive as an entity."""
    from flows.monitor import monitor_markdown

    text = monitor_markdown({"reviews": {"source": f"{SCRIPT}.csv", "drift_detected": True,
                                         "reasons": [f"labels {IMAGE}"], "html_path": "reports/x.html"}})
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.csv" in text
