"""Headless Chromium with the network off: the live DOM after scripts ran, a screenshot, and what it requested.

Used by tests/test_reports_browser.py (marked `browser`, skipped when Debian's `chromium` is absent) and runnable
by hand to take the screenshots of docs/screenshots/:

    python tests/browser.py reports docs/screenshots after

Network off: every request goes through a proxy on the discard port (127.0.0.1:9, nothing listens) and every host
name resolves to nothing, so a page that needs a CDN visibly breaks. `--log-net-log` records each URL the page
asked for, which the tests check: only file:// (and Chromium's own about:/data: URLs) may appear.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

OFFLINE_FLAGS = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                 "--proxy-bypass-list=<-loopback>",
                 # Chromium's own calls home (time sync, accounts, spell-check dictionaries) stay out of the net log
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheck", "--no-pings")
URL = re.compile(r'"url":"([^"]+)"')


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Rendered:
    dom: str                 # the DOM after scripts ran (--dump-dom)
    screenshot: Path
    requested: list[str]     # every URL in Chromium's net log


def render(page: Path, screenshot: Path, profile: Path, width: int = 1280, height: int = 1000) -> Rendered:
    """Load `page` twice (DOM dump, then screenshot) with the network off; 10 s of virtual time lets scripts run."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", *OFFLINE_FLAGS, "--virtual-time-budget=10000",
            f"--window-size={width},{height}"]
    net_log = profile.parent / f"{screenshot.stem}-netlog.json"
    dom = subprocess.run([*base, f"--log-net-log={net_log}", "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=180)
    if dom.returncode != 0:
        raise RuntimeError(f"chromium failed on {page}: {dom.stderr[-2000:]}")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = subprocess.run([*base, f"--screenshot={screenshot.resolve()}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    if shot.returncode != 0 or not screenshot.is_file():
        raise RuntimeError(f"chromium screenshot failed on {page}: {shot.stderr[-2000:]}")
    requested = sorted(set(URL.findall(net_log.read_text(encoding="utf-8", errors="replace")))) \
        if net_log.is_file() else []
    return Rendered(dom.stdout, screenshot, requested)


# Chromium's own calls home (time sync, account list, new-tab page) that its flags do not silence; no report page
# asks for these hosts, and they are blocked like everything else
CHROMIUM_OWN = re.compile(r"^https?://([a-z0-9-]+\.)*(google\.com|gvt1\.com)/")


def external(requested: list[str]) -> list[str]:
    """URLs the page asked for that would have left the machine."""
    return [url for url in requested if not url.startswith(("file:", "data:", "about:", "chrome:", "blob:"))
            and not CHROMIUM_OWN.match(url)]


def pixels_near(png: Path, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels of the screenshot have this colour: evidence that the page's CSS was applied."""
    import matplotlib.image

    image = (matplotlib.image.imread(str(png))[..., :3] * 255).astype(int)
    return int((abs(image - rgb).max(axis=-1) <= tolerance).sum())


def main(argv: list[str]) -> int:
    """`python tests/browser.py REPORTS_DIR OUT_DIR LABEL`: screenshots of a domain's Data Docs, drift report and
    the reports index (the first domain found), named <LABEL>_<page>.png."""
    reports, out, label = Path(argv[0]), Path(argv[1]), argv[2]
    docs = sorted(reports.glob("data_docs/*/index.html"))
    drift = sorted(reports.glob("drift/*.html"))
    pages = {"data_docs": docs[0] if docs else None, "drift": drift[0] if drift else None,
             "index": reports / "index.html"}
    profile = Path("/tmp") / f"metaadapt-chromium-{label}"
    for name, page in pages.items():
        if page is None or not page.is_file():
            print(f"{name}: no page under {reports}")
            continue
        rendered = render(page, out / f"{label}_{name}.png", profile / name)
        print(json.dumps({"page": str(page), "screenshot": str(rendered.screenshot),
                          "external_requests": external(rendered.requested)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
