"""report.html: written by every run, self-contained, rendered by a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_is_written_self_contained_and_rebuildable(demo_run):
    from pipeline.report import rebuild

    out, manifest, _ = demo_run
    page = (out / "report.html").read_text()
    assert manifest["report"] == "report.html"
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "no network resources"
    assert "<script" not in page
    for title in ("Funnel", "Scores", "Contact sheet", "Videos", "Rejected inputs", "clip length (s)"):
        assert f">{title}<" in page or f"<b>{title}</b>" in page, title
    kept = manifest["counts"]["clips_kept"]
    assert f"<h3>kept ({kept})</h3>" in page
    assert page.count("data:image/jpeg;base64,") >= min(kept, 8)
    assert "min_motion 0.02" in page  # the demo's threshold drawn on its histogram
    before = (out / "report.html").read_bytes()
    rebuild(str(out))
    assert (out / "report.html").read_bytes() == before  # no timestamps: the same bytes


def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("VIDCURATE_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (VIDCURATE_REQUIRE_BROWSER) but not installed")
        pytest.skip("no chromium on this machine (`apt-get install chromium`; CI installs it)")
    from PIL import Image

    out, _, _ = demo_run
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,2400",
           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", (out / "report.html").as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    small = image.resize((320, 600))
    pixels = list(small.getdata())
    ink = sum(1 for p in pixels if sum(p) < 700) / len(pixels)
    assert ink > 0.05, f"the page looks blank ({ink:.1%} of it drawn)"
    greens = sum(1 for r, g, b in pixels if g > r + 40 and g > b + 20)  # the kept bars and histograms
    reds = sum(1 for r, g, b in pixels if r > g + 60 and r > b + 60)    # the dropped ones
    assert greens > 200 and reds > 20, (greens, reds)
    assert len(set(small.getdata())) > 500  # thumbnails rendered, not only flat colours
