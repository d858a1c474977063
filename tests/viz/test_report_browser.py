"""report.html in a real browser: headless Chromium opens it from disk and every picture loads.

test_report.py checks that each <img src> names a file; only a browser shows that the file is
found through the URL as written (quoting, relative paths) and decodes as an image. Method, with
no Python dependency beyond the standard library: a copy of the report beside it gets a probe
script that, once the page has loaded, writes the sources of the images that did not load into
the DOM; Chromium's --dump-dom prints that DOM and the test reads the verdict from it."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from pyneuro.viz.report import write_report
from test_report import classifier_run, generative_run, tiny_png  # the fake run folders (tests/viz)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (install Debian's chromium package)")

# Installed first thing in <head>, so it also hears about resources that fail while the page is
# still being parsed; the verdict is written on window load, when every image has settled.
PROBE = """<script>
(function () {
  var failed = [];
  window.addEventListener("error", function (event) {
    var target = event.target || {};
    failed.push(target.src || target.href || String(event.message));
  }, true);
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var verdict = document.createElement("pre");
    verdict.id = "report-probe";
    verdict.textContent = JSON.stringify({
      images: images.map(function (img) { return img.getAttribute("src"); }),
      broken: images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); })
                    .map(function (img) { return img.getAttribute("src"); }),
      failed: failed,
      title: document.title
    });
    document.body.appendChild(verdict);
  });
})();
</script>"""
VERDICT = re.compile(r'<pre id="report-probe">(.*?)</pre>', re.DOTALL)


def open_in_chromium(report: Path, tmp_path: Path) -> dict:
    """Load ``report`` (through a probed copy beside it, so relative paths hold) in headless
    Chromium and return the probe's verdict: images, broken, failed, title."""
    probed = report.with_name(f"{report.stem}.probe.html")
    page = report.read_text(encoding="utf-8")
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--allow-file-access-from-files", "--virtual-time-budget=5000",
               "--dump-dom", probed.as_uri()]
    env = {**os.environ, "HOME": str(tmp_path)}  # nothing written into the real home folder
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    finally:
        probed.unlink()
    found = VERDICT.search(done.stdout)
    assert found, (f"Chromium gave no verdict (exit {done.returncode}); stderr tail:\n"
                   + "\n".join(done.stderr.splitlines()[-15:]))
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.parametrize("make_run", [classifier_run, generative_run])
def test_every_picture_loads(tmp_path, make_run):
    run = make_run(tmp_path / "run")
    tiny_png(run / "a picture with spaces & more.png")
    verdict = open_in_chromium(write_report(run), tmp_path)
    pictures = sorted(p.name for p in run.glob("*.png"))
    assert sorted(map(unquote, verdict["images"])) == pictures
    assert verdict["broken"] == [] and verdict["failed"] == []
    assert verdict["title"] in ("gru (preset pixels)", "vae")


def test_a_broken_picture_is_caught(tmp_path):
    """The probe itself: a missing file and a file that is no image are both reported."""
    run = classifier_run(tmp_path / "run")
    report = write_report(run)
    (run / "predictions.png").unlink()
    (run / "confusion.png").write_bytes(b"not a PNG")
    verdict = open_in_chromium(report, tmp_path)
    assert sorted(verdict["broken"]) == ["confusion.png", "predictions.png"]
    assert len(verdict["failed"]) == 2

