"""report.html: written by every run, self-contained, rendered by a real headless Chromium.

The layout pieces (ticks, label rows, caption shortening, "N of M shown") are tested as pure
functions; a hand-made output (a 7-minute video with 14 chapters among 22 accepted videos, in
two partitions) is reported by the real ``report_for`` and measured in Chromium over its
DevTools protocol; two tests check the report of a whole demo run.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parent.parent


def need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("VIDCURATE_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (VIDCURATE_REQUIRE_BROWSER) but not installed")
        pytest.skip("no chromium on this machine (`apt-get install chromium`; CI installs it)")
    return CHROMIUM


@pytest.mark.slow
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
    assert f'<h3>kept: <span class="shown">{min(kept, 8)} of {kept} shown</span></h3>' in page
    assert page.count("data:image/jpeg;base64,") >= min(kept, 8)
    assert "min_motion 0.02" in page  # the demo's threshold drawn on its histogram
    # every declared score has its histogram (schemas.scores; the demo runs every score stage),
    # with the job's threshold drawn, and every reason its contact sheet
    from schemas.scores import SCORES

    assert [s.title for s in SCORES if s.title not in page] == []
    assert "max_text_area 0.05" in page
    reasons = json.loads((out / "stats.json").read_text())["clip_reasons"]
    assert "text_overlay" in reasons
    assert [r for r in reasons if f"<h3>{r}: " not in page] == []
    before = (out / "report.html").read_bytes()
    rebuild(str(out))
    assert (out / "report.html").read_bytes() == before  # no timestamps: the same bytes


@pytest.mark.slow
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    need_chromium()
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


# ---- pure layout pieces ----------------------------------------------------------------------

@pytest.mark.parametrize("duration, step, labels", [
    (3.2, 0.5, ["0 s", "0.5 s", "1 s", "1.5 s", "2 s", "2.5 s", "3 s"]),
    (12.3, 2, ["0 s", "2 s", "4 s", "6 s", "8 s", "10 s", "12 s"]),
    (45.0, 5, None),
    (95.0, 10, ["0:00", "0:10", "0:20", "0:30", "0:40", "0:50", "1:00", "1:10", "1:20", "1:30"]),
    (140.0, 15, None),
    (420.0, 60, ["0:00", "1:00", "2:00", "3:00", "4:00", "5:00", "6:00", "7:00"]),
    (1000.0, 120, None),
    (2900.0, 300, None),
    (4000.0, 600, ["0:00:00", "0:10:00", "0:20:00", "0:30:00", "0:40:00", "0:50:00", "1:00:00"]),
])
def test_time_axis_ticks_fall_on_round_intervals(duration, step, labels):
    from pipeline.report import ticks, tick_step, time_label

    assert tick_step(duration) == step
    marks = ticks(duration)
    assert marks[0] == 0 and marks[-1] <= duration < marks[-1] + step
    assert 3 <= len(marks) <= 11
    assert all(abs(b - a - step) < 1e-9 for a, b in zip(marks, marks[1:]))
    if labels:
        assert [time_label(t, duration) for t in marks] == labels


def _overlaps(a: tuple[float, float], b: tuple[float, float], gap: float = 0.0) -> bool:
    return a[0] < b[1] + gap and b[0] < a[1] + gap


@pytest.mark.parametrize("seed", range(40))
def test_label_lanes_never_overlap(seed):
    from pipeline.report import label_lanes

    rng = random.Random(seed)
    n = rng.choice([3, 14, 30, 80])
    starts = sorted(rng.uniform(0, 1000) for _ in range(n))
    widths = [rng.uniform(20, 260) for _ in range(n)]
    placed = label_lanes(starts, widths, right=1000, lanes=4, gap=6, least=24)
    assert len(placed) == n
    rows: dict[int, list[tuple[float, float]]] = {}
    for start, natural, p in zip(starts, widths, placed):
        if p is None:
            continue
        row, x, width = p
        assert 0 <= row < 4
        assert min(24, natural) <= width <= natural + 1e-9 and 0 <= x <= start + 1e-9 and x + width <= 1000 + 1e-9
        rows.setdefault(row, []).append((x, x + width))
    for spans in rows.values():
        for i, a in enumerate(spans):
            for b in spans[i + 1:]:
                assert not _overlaps(a, b, gap=6 - 1e-6), (a, b)
    if n <= 4:  # a row each at worst: every label shows
        assert all(placed)


def test_label_lanes_stack_crowded_labels_and_keep_free_ones_whole():
    from pipeline.report import label_lanes

    # 14 chapters 70 px apart with 150 px titles: three rows, every title whole
    placed = label_lanes([i * 70.0 for i in range(14)], [150.0] * 14, right=1000)
    assert all(p and p[2] == 150.0 for p in placed[:-1])
    assert {p[0] for p in placed[:-1]} == {0, 1, 2}
    assert placed[-1][1] + placed[-1][2] <= 1000 and placed[-1][1] < 13 * 70  # the last moved left of the edge
    # a sparse set stays on one row
    assert [p[0] for p in label_lanes([0, 300, 600], [100, 100, 100], right=1000)] == [0, 0, 0]
    # more labels than rows hold: earlier ones are shortened to make room, none overlap, few are lost
    placed = label_lanes([i * 10.0 for i in range(60)], [200.0] * 60, right=1000, lanes=4)
    assert sum(p is None for p in placed) < 60 and any(p and p[2] < 200 for p in placed)


def test_text_fitting_and_caption_shortening():
    from pipeline.report import CAPTION_CHARS, fit_text, shorten, shown_text, text_width

    assert text_width("WWW") > text_width("ABC") > text_width("abc") > text_width("ilj") > 0
    assert text_width("abc", size=22) == 2 * text_width("abc")
    title = "The long walk along the harbour wall at dusk"
    assert fit_text(title, 1000) == title
    cut = fit_text(title, 80)
    assert cut.endswith("\u2026") and title.startswith(cut[:-1]) and text_width(cut) <= 80
    assert fit_text(title, 3) == ""

    caption = ("A man in a red coat walks along the harbour wall at dusk while gulls circle over the moored "
               "fishing boats and the lights come on")
    short = shorten(caption)
    assert len(short) <= CAPTION_CHARS and short.endswith("\u2026") and caption.startswith(short[:-1])
    assert caption[len(short) - 1] == " "  # cut between words
    assert shorten("  a short\n caption ") == "a short caption"
    assert len(shorten("x" * 300)) == CAPTION_CHARS  # no space to cut at: cut mid-word
    assert shorten("") == ""
    assert shown_text(8, 28) == "8 of 28 shown" and shown_text(3, 3) == "3 of 3 shown"


# ---- a hand-made output: real tables, real summaries, the real report ----------------------

CHAPTER_CLIPS = [2, 1, 1, 6, 3, 1, 1, 8, 4, 2, 1, 10, 6, 10]  # 14 chapters over 56 clips of 7.5 s
CHAPTER_TITLES = ["Arrival", "Gulls", "A wave", "The long walk along the harbour wall at dusk", "Nets",
                  "Rope", "Knots", "Fishing boats coming home with the evening catch", "Market stalls",
                  "Café – évening", "Bell", "Lighthouse beam sweeping across the water", "Night falls",
                  "Closing shot of the empty quay"]


def _statuses(rng: random.Random, **n: int) -> list[tuple[str, str | None]]:
    out = [("kept", None) if r == "kept" else ("rejected", r) for r, k in n.items() for _ in range(k)]
    rng.shuffle(out)
    return out


def _jpeg(seed: int) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (168, 94), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(150), rng.randrange(80)
        draw.ellipse((x, y, x + 30, y + 20), fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return buf.getvalue()


MODEL = {"model": "tiny-vlm", "prompt_version": "v1", "generation": "greedy"}


def _video(vid: str, uri: str, duration: float, statuses, chapters=None, windows=0):
    """One accepted video's rows: clips of equal length with the given statuses, a caption of
    every kept clip (some far over the thumbnail's length), chapters over runs of clips."""
    clip_s = duration / len(statuses)
    video = {"video_id": vid, "uri": uri, "status": "ok", "width": 1280, "height": 720, "fps": 25.0,
             "duration_s": duration, "num_frames": int(duration * 25),
             "boundaries": [{"type": "dissolve" if i % 5 == 0 else "cut", "start_frame": int(i * clip_s * 25) - 2,
                             "end_frame": int(i * clip_s * 25), "start_s": i * clip_s - 0.08, "end_s": i * clip_s}
                            for i in range(1, len(statuses))]}
    clips, captions = [], []
    for i, (status, reason) in enumerate(statuses):
        start, end = i * clip_s, (i + 1) * clip_s
        cid = f"{vid}-c{i:03d}"
        clips.append({"clip_id": cid, "video_id": vid, "uri": uri, "index": i, "start_frame": int(start * 25),
                      "end_frame": int(end * 25), "start_s": start, "end_s": end, "duration_s": end - start,
                      "motion": 0.005 if reason == "low_motion" else 0.5, "sharpness": 40.0 + i,
                      "brightness": 90.0, "status": status, "reason": reason,
                      "caption_id": f"{cid}-cap" if status == "kept" else None})
        if status == "kept":
            text = (f"Clip {i} of {uri.rsplit('/', 1)[-1]}: a man in a red coat walks along the harbour wall while "
                    "gulls circle over the moored fishing boats" + " and the lights come on" * (i % 3))
            captions.append({"caption_id": f"{cid}-cap", "video_id": vid, "clip_id": cid, "level": "clip",
                             "start_s": start, "end_s": end, "duration_s": end - start, "text": text, **MODEL})
    for w in range(windows):
        captions.append({"caption_id": f"{vid}-w{w}", "video_id": vid, "clip_id": clips[0]["clip_id"],
                         "level": "window", "start_s": w * 2.0, "end_s": w * 2.0 + 2, "duration_s": 2.0,
                         "text": f"window {w}: boats rock on the swell", **MODEL})
    rows = []
    first = 0
    for n, (count, title) in enumerate(zip(chapters or [], CHAPTER_TITLES)):
        members = clips[first:first + count]
        rows.append({"chapter_id": f"{vid}-ch{n}", "video_id": vid, "index": n, "start_s": members[0]["start_s"],
                     "end_s": members[-1]["end_s"], "duration_s": members[-1]["end_s"] - members[0]["start_s"],
                     "title": title, "summary": f"{title}: what happens over {count} clips.", "source": "vlm",
                     "clip_ids": [c["clip_id"] for c in members]})
        first += count
    captions.append({"caption_id": f"{vid}-video", "video_id": vid, "level": "video", "start_s": 0.0,
                     "end_s": duration, "duration_s": duration, "text": f"A day at the harbour ({uri}).",
                     **MODEL})
    return video, clips, captions, rows


def _rejected(vid: str, n: int) -> dict:
    path = "/mnt/ingest/" + "/".join(f"camera_{n}_batch_2025_{k:02d}_unsorted_raw_footage" for k in range(8))
    message = f"could not open {path}/clip_{n}.mov: Invalid data found when processing input"
    return {"video_id": vid, "uri": f"{path}/clip_{n}.mov", "status": "rejected", "reason": "undecodable",
            "message": message}


def _partitions():
    rng = random.Random(7)
    harbour = _video("vA", "/data/harbour.mp4", 420.0,
                     _statuses(rng, kept=14, low_motion=30, blurry=8, too_short=4), CHAPTER_CLIPS, windows=12)
    short = _video("vB", "/data/short.mp4", 12.3, _statuses(rng, kept=2, low_motion=1), [1, 2])
    minute = _video("vC", "/data/minute.mp4", 95.0, _statuses(rng, kept=2, blurry=1), [2, 1])
    extra = [_video(f"vD{k:02d}", f"/data/extra_{k:02d}.mp4", 6.0 + k,
                    [("kept", None) if k < 10 else ("rejected", "low_motion"),
                     ("rejected", "too_short" if k < 3 else "blurry" if k == 3 else "low_motion")], [2])
             for k in range(19)]
    parts = []
    for videos in ([harbour, short, minute], extra):
        parts.append({"videos": [v[0] for v in videos], "clips": [c for v in videos for c in v[1]],
                      "captions": [c for v in videos for c in v[2]], "chapters": [c for v in videos for c in v[3]]})
    parts[1]["videos"] += [_rejected(f"vR{n}", n) for n in range(3)]
    return parts


def make_output(root: Path, parts: list[dict]):
    """Write ``parts`` (per partition: rows of the four tables) as a committed output's tables,
    analysis results with JPEG frames, and a manifest; returns (store, manifest, merged summary)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import schemas
    from pipeline.graph import work_key
    from pipeline.spec import load_spec
    from pipeline.storage import LocalStore
    from pipeline.summary import merge, partition_summary
    from pipeline.units import encode_unit

    store, fingerprint = LocalStore(root), "f" * 16
    tables = {name: {"path": name, "parts": []} for name in schemas.TABLES}
    summaries = []
    for p, rows in enumerate(parts):
        for name, schema in schemas.TABLES.items():
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows[name], schema=schema), buf)
            path = f"{name}/part-{p:06d}.parquet"
            store.write(path, buf.getvalue())
            tables[name]["parts"].append({"path": path})
        units = {v["video_id"]: f"unit-{v['video_id']}" for v in rows["videos"]}
        for v in rows["videos"]:
            clips = [c for c in rows["clips"] if c["video_id"] == v["video_id"]]
            if clips:
                frames = pa.table({"clip_id": [c["clip_id"] for c in clips],
                                   "frames": [[_jpeg(zlib.crc32(c["clip_id"].encode()))] for c in clips]})
                store.write(work_key("analyze", fingerprint, units[v["video_id"]]), encode_unit(v, frames))
        summaries.append(partition_summary(p, units, rows, [], {"captions_checked": 0, "violations": 0,
                                                                "examples": []}, {}))
    summary = merge(summaries)
    manifest = {"name": "harbour", "spec": load_spec(ROOT / "jobs" / "demo.yaml").model_dump(mode="json"),
                "fingerprints": {"analyze": fingerprint}, "tiny_random_models": False,
                "counts": summary["stats"]["counts"], "partitions": [{"partition": p} for p in range(len(parts))],
                "tables": tables}
    return store, manifest, summary


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    from pipeline.report import report_for

    parts = _partitions()
    store, manifest, summary = make_output(tmp_path_factory.mktemp("hand") / "out", parts)
    page = report_for(store, manifest, summary)
    (store.root / "report.html").write_bytes(page)
    return store, manifest, summary, parts, page.decode()


def test_report_says_how_much_each_sample_shows(hand_made):
    store, manifest, summary, _, page = hand_made
    counts = summary["stats"]["counts"]
    assert (counts["clips"], counts["clips_kept"], counts["videos_ok"], counts["videos_in"]) == (100, 28, 22, 25)
    assert summary["stats"]["clip_reasons"] == {"blurry": 10, "low_motion": 55, "too_short": 7}
    for group, text in [("kept", "8 of 28"), ("low_motion", "8 of 55"), ("blurry", "8 of 10"), ("too_short", "7 of 7")]:
        assert f'<h3>{group}: <span class="shown">{text} shown</span></h3>' in page, group
    assert 'Accepted videos: <span class="shown">20 of 22 shown</span>' in page
    assert page.count('<svg class="timeline"') == 20
    assert '<h2>Rejected inputs</h2><p><span class="shown">3 of 3 shown</span>' in page
    from pipeline.report import report_for

    assert report_for(store, manifest, summary).decode() == page  # deterministic bytes
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:|//)""", page)


def test_contact_sheet_shows_each_clips_caption_shortened(hand_made):
    import html

    from pipeline.report import shorten

    _, _, summary, parts, page = hand_made
    text = {c["clip_id"]: c["text"] for rows in parts for c in rows["captions"] if c["level"] == "clip"}
    kept = summary["sample"]["groups"]["kept"]
    assert len(kept) == 8 and any(len(text[c["clip_id"]]) > 80 for c in kept)
    for c in kept:
        full = text[c["clip_id"]]
        assert f'<figure title="{html.escape(full, quote=True)}">' in page
        assert f'<span class="cap">{html.escape(shorten(full))}</span>' in page
    dropped = summary["sample"]["groups"]["low_motion"]
    assert all(c["clip_id"] not in text for c in dropped)  # dropped clips have no caption to show


def test_report_calls_out_lopsided_filters_near_the_top(hand_made):
    page = hand_made[-1]
    note = page.index("<b>Lopsided filters</b>")
    assert note < page.index("<h2>Funnel</h2>")
    assert "<li>low_motion dropped 55 of 100 clips (scores.min_motion: 0.02)</li>" in page
    assert "blurry dropped" not in page  # 10 of 100 is no lopsided filter
    assert 'class="alert"' not in page  # clips were kept


def test_report_of_a_run_that_kept_nothing_says_so_loudly(tmp_path):
    from pipeline.report import report_for

    rng = random.Random(3)
    video = _video("vZ", "/data/dark.mp4", 30.0, _statuses(rng, low_motion=9, blurry=3), [6, 6])
    rows = {"videos": [video[0]], "clips": video[1], "captions": video[2], "chapters": video[3]}
    page = report_for(*make_output(tmp_path / "out", [rows])).decode()
    alert = re.search(r'<p class="alert" role="alert">([^<]*)</p>', page)
    assert alert and page.index(alert.group(0)) < page.index("<h2>Funnel</h2>")
    assert alert.group(1) == "no clip kept: low_motion dropped 9 of 12 clips (scores.min_motion: 0.02)"
    assert '<h3>kept: <span class="shown">0 of 0 shown</span></h3>' in page


def test_report_keeps_long_messages_whole(hand_made):
    import html

    page = hand_made[-1]
    messages = [v["message"] for v in hand_made[3][1]["videos"] if v["status"] != "ok"]
    assert all(len(m) > 200 for m in messages)
    cells = [re.sub("<wbr>", "", c) for c in re.findall("<td class=long>(.*?)</td>", page)]
    for m in messages:  # the summary keeps 200 characters; the report cuts nothing more
        assert html.escape(m[:200], quote=True) in cells
    assert "/<wbr>mnt/<wbr>ingest/<wbr>camera_0" in page  # paths may break between folders


def test_chapter_labels_and_ticks_in_the_markup(hand_made):
    page = hand_made[-1]
    harbour = page[page.index("<h3>harbour.mp4"):]
    svg = harbour[:harbour.index("</svg>")]
    labels = re.findall(r'<g class="chapter-label">.*?<text[^>]*>([^<]*)</text>', svg)
    assert len(labels) == 14
    assert labels[0] == "1 Arrival" and labels[3].startswith("4 The long walk")
    assert re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', svg) == [f"{m}:00" for m in range(8)]


# ---- Chromium over its DevTools protocol -----------------------------------------------------

LAUNCH = """import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
os.dup2(ends[0], 3)
os.dup2(ends[1], 4)
os.execv(sys.argv[3], sys.argv[3:])"""


class DevTools:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (commands in on its fd 3,
    replies and events out on fd 4, each a JSON text ended by NUL): the browser alone, no driver."""

    def __init__(self, binary: str, profile: Path, log: Path):
        cmd_read, self._cmd = os.pipe()
        self._out, out_write = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        with open(log, "wb") as err:  # a small launcher puts the pipe's ends on fds 3 and 4
            self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(cmd_read), str(out_write), *args],
                                         pass_fds=(cmd_read, out_write), stdout=err, stderr=err)
        os.close(cmd_read)
        os.close(out_write)
        self._buf, self._id, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._out], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed its pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, timeout: float = 120, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait(self, method: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(self._message(deadline))

    def close(self):
        try:
            self.call("Browser.close", timeout=20)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd)
        os.close(self._out)


MEASURE = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const svgOf = name => [...document.querySelectorAll('h3')].find(h => h.textContent.startsWith(name))
                          .nextElementSibling;
  const timeline = svg => ({
    svg: box(svg),
    bars: [...svg.querySelectorAll('rect[opacity]')].map(box),
    labels: [...svg.querySelectorAll('g.chapter-label')].map(g => ({box: box(g), text: g.textContent})),
    ticks: [...svg.querySelectorAll('text.tick, text.end')].map(t => ({box: box(t), text: t.textContent})),
  });
  return {
    harbour: timeline(svgOf('harbour.mp4')), minute: timeline(svgOf('minute.mp4')),
    short: timeline(svgOf('short.mp4')),
    text: document.body.innerText, body: box(document.body),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    cells: [...document.querySelectorAll('td')].map(box),
    cellText: [...document.querySelectorAll('td')].map(c => c.textContent),
    lines: [...document.querySelectorAll('td')].map(c => {
      const r = document.createRange(); r.selectNodeContents(c);
      return [c.className, new Set([...r.getClientRects()].map(b => Math.round(b.top))).size]; }),
    figures: [...document.querySelectorAll('.sheet figure')].map(f => ({
      title: f.getAttribute('title'), box: box(f),
      cap: f.querySelector('.cap') ? box(f.querySelector('.cap')) : null})),
    images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
    note: box(document.querySelector('.lopsided')), funnel: box([...document.querySelectorAll('h2')][0]),
  };
})()"""


def _apart(boxes: list[list[float]]) -> bool:
    """No two boxes (left, top, right, bottom) share any area."""
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5:
                return False
    return True


def test_report_layout_in_headless_chromium(hand_made, tmp_path):
    binary = need_chromium()
    store = hand_made[0]
    browser = DevTools(binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session)
        browser.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=1000, deviceScaleFactor=1,
                     mobile=False)
        browser.call("Page.navigate", session, url=(store.root / "report.html").as_uri())
        browser.wait("Page.loadEventFired")
        got = browser.call("Runtime.evaluate", session, expression=MEASURE, returnByValue=True)["result"]["value"]
        size = browser.call("Page.getLayoutMetrics", session)["cssContentSize"]
        shot = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": 1280, "height": size["height"], "scale": 1})
        (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
        svg = got["harbour"]["svg"]
        strip = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": svg[1] - 40, "width": 1280, "height": svg[3] - svg[1] + 60,
                                   "scale": 1})
        (tmp_path / "timeline.png").write_bytes(base64.b64decode(strip["data"]))
    finally:
        browser.close()

    # self-contained and clean: no request but the page itself, nothing logged
    urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert all(u.startswith(("file://", "data:")) for u in urls), urls
    logged = [e["params"] for e in browser.events
              if e.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded")]
    assert not logged, logged

    harbour = got["harbour"]
    labels = [lab["box"] for lab in harbour["labels"]]
    assert len(labels) == 14 and all(lab["text"].strip() for lab in harbour["labels"])
    assert _apart(labels), "chapter labels overlap"
    from pipeline.report import text_width

    for lab in harbour["labels"]:  # the layout's width estimate holds for the face the browser drew
        assert lab["box"][2] - lab["box"][0] <= 11 + text_width(lab["text"]) + 0.5, lab
    assert _apart(labels + harbour["bars"]), "a chapter label covers a chapter bar"
    left, _, right, bottom = harbour["svg"]
    assert all(left <= b[0] and b[2] <= right and b[3] <= bottom for b in labels), "a label is cut off"
    assert len({round(b[1]) for b in labels}) > 1  # crowded titles were stacked into rows
    for name, ticks in [("harbour", [f"{m}:00" for m in range(8)]), ("minute", None), ("short", None)]:
        drawn = got[name]["ticks"]
        assert len(drawn) >= 4 and _apart([t["box"] for t in drawn]), name
        if ticks:
            assert [t["text"] for t in drawn] == ticks
    assert [t["text"] for t in got["minute"]["ticks"]][:3] == ["0:00", "0:10", "0:20"]
    assert [t["text"] for t in got["short"]["ticks"]][:3] == ["0 s", "2 s", "4 s"]

    text = got["text"]
    for line in ("kept: 8 of 28 shown", "low_motion: 8 of 55 shown", "too_short: 7 of 7 shown",
                 "Accepted videos: 20 of 22 shown", "3 of 3 shown"):
        assert line in text, line
    assert got["note"][3] <= got["funnel"][1]  # the lopsided note sits above the funnel
    # long paths wrap inside the page: nothing runs past the body, no sideways scrolling
    assert got["scrollWidth"] <= got["innerWidth"]
    assert all(c[2] <= got["body"][2] + 1 for c in got["cells"])
    messages = [v["message"][:200] for v in hand_made[3][1]["videos"] if v["status"] != "ok"]
    assert [t for t in got["cellText"] if t.startswith("could not open")] == messages
    lines = {kind: {n for k, n in got["lines"] if k == kind} for kind in ("long", "")}
    assert min(lines["long"]) >= 3 and lines[""] == {1}  # paths wrap; "rejected" stays whole
    captioned = [f for f in got["figures"] if f["title"]]
    assert len(captioned) == 8
    assert all(f["cap"][2] <= f["box"][2] + 1 for f in captioned)  # captions wrap within their thumbnail
    assert got["images"] and all(got["images"])  # every JPEG decoded
