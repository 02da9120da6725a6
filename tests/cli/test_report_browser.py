"""The audit report in a real browser (headless Chromium): every picture loads, nothing overflows the page sideways, each
item's thumbnails sit in one row, and a 40-frame clip still shows its top 20 frames.

The report has no scripts of its own: the test loads a copy of index.html
with a few lines of JavaScript added that measure the page and write the
result into the title, which `--dump-dom` prints. Skipped where no Chromium
is installed (`.ci/run` installs it from the system's packages where it may).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.helpers.stores import invoke, run
from tests.helpers.videos import write_video

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)

MEASURE = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const strips = [...document.querySelectorAll(".strip")].map(s => new Set([...s.querySelectorAll("img")].map(i => i.offsetTop)).size);
  document.title = JSON.stringify({
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    images: images.length, broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    rows_per_strip: strips,
  });
});
</script>
"""


@pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine (.ci/run installs the system's chromium package where it can)")
def test_a_wide_short_video_report_loads_whole_in_a_browser(ray_address, runner, cli, tiny_model, tmp_path):
    video = write_video(tmp_path / "wide.mp4", 40, height=64, width=320, gop=8)  # wide frames, 1.6 s
    store, report = tmp_path / "wide.zarr", tmp_path / "report"
    assert run(runner, cli, "--input", video, "--out", store, "--model", tiny_model, "--samples", 2, "--address", ray_address).exit_code == 0
    r = invoke(runner, cli, "audit", store, "--report", report, "--quiet")  # the defaults: --top 20, --min-gap as the kind sets it
    assert r.exit_code == 0, r.output
    page = report / "check.html"
    page.write_text((report / "index.html").read_text().replace("</body>", MEASURE + "</body>"))
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<title>(\{.*?\})</title>", dom)
    assert found, dom[:2000]
    got = json.loads(found.group(1).replace("&quot;", '"'))
    assert got["page"] <= got["window"], got  # no horizontal scroll
    assert got["images"] > 20 and got["broken"] == [], got
    assert len(got["rows_per_strip"]) == 20 and set(got["rows_per_strip"]) == {1}, got  # 20 frames, each one row of thumbnails
    shot = tmp_path / "page.png"
    subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a page was drawn (look at it: tmp_path/page.png)
