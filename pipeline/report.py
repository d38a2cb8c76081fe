"""The curation report: one self-contained HTML page (inline SVG, embedded JPEGs, no scripts,
no network) written as ``report.html`` with every run and rebuilt by ``vidcurate report OUTPUT``.

It shows what a threshold decision needs: the funnel from videos to shard samples, why videos
and clips were dropped, each score's histogram (kept and dropped stacked) with the spec's
thresholds drawn, the clip-length distribution, a contact sheet of kept and dropped clips per
reason, and a timeline per video (clips by status, transitions, chapters, dense captions).
The page holds no timestamps, so a rerun writes the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict

import pyarrow.parquet as pq

from pipeline.summary import BINS, SCALES, bin_edge, position

KEPT, DROPPED = "#2f7d4f", "#c8553d"
PALETTE = ["#c8553d", "#e09f3e", "#8e6c8a", "#3d5a80", "#7a9e7e", "#b56576", "#6d597a", "#457b9d", "#a98467",
           "#588157", "#bc6c25", "#5e548e", "#9c6644", "#2a9d8f", "#e76f51"]
# score column -> (title, spec section, lower threshold key, upper threshold key)
SCORES = {
    "motion": ("motion (px/frame at flow width)", "scores", "min_motion", "max_motion"),
    "sharpness": ("sharpness (Laplacian variance)", "scores", "min_sharpness", None),
    "brightness": ("brightness (0-255)", "scores", "min_brightness", "max_brightness"),
    "contrast": ("contrast (luma std)", "scores", "min_contrast", None),
    "black_fraction": ("black frames (fraction)", "scores", None, "max_black_fraction"),
    "frozen_fraction": ("frozen frames (fraction)", "scores", None, "max_frozen_fraction"),
    "letterbox": ("letterbox bars (fraction)", "scores", None, "max_letterbox"),
    "dynamic_degree": ("dynamic degree", "scores", "min_dynamic_degree", None),
    "clip_keep_sim": ("CLIP keep-prompt similarity", "clip_filter", "min_keep_sim", None),
}
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px}
.sheet{display:flex;flex-wrap:wrap;gap:6px}.sheet figure{margin:0;width:168px;font-size:11px;color:#555}
.sheet img{width:168px;border-radius:3px;display:block}.note{background:#fff4e0;padding:8px;border-radius:6px}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left}td.n{text-align:right}
svg text{font:11px system-ui,sans-serif}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _bars(items: list[tuple[str, float, str]], width: int = 560, unit: str = "") -> str:
    """Horizontal bars: (label, value, colour)."""
    if not items:
        return "<p>none</p>"
    top = max(v for _, v, _ in items) or 1
    row, label_w = 22, 190
    h = row * len(items) + 6
    out = [f'<svg width="{width}" height="{h}" role="img">']
    for i, (label, value, colour) in enumerate(items):
        y = 4 + i * row
        w = (width - label_w - 70) * value / top
        out.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_e(label)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{colour}"/>'
                   f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{value:g}{unit}</text>')
    out.append("</svg>")
    return "".join(out)


def _histogram(hist: dict, column: str, title: str, lines: list[tuple[float, str]], bins: int = 24,
               width: int = 340, height: int = 170) -> str:
    """Stacked histogram (kept below, dropped above) with vertical threshold lines, from the
    merged fixed bins of pipeline.summary (neighbouring bins joined into at most ``bins`` bars)."""
    kept = {int(k): v for k, v in hist["kept"].items()}
    dropped = {int(k): v for k, v in hist["dropped"].items()}
    used = set(kept) | set(dropped)
    if not used:
        return f'<div class="card"><b>{_e(title)}</b><p>no values</p></div>'
    marks = [min(BINS - 1, max(0, int(position(column, v)))) for v, _ in lines]
    i0, i1 = min(used | set(marks)), max(used | set(marks)) + 1
    step = -(-(i1 - i0) // bins)
    n = -(-(i1 - i0) // step)
    ck, cd = [0] * n, [0] * n
    for i, v in kept.items():
        ck[(i - i0) // step] += v
    for i, v in dropped.items():
        cd[(i - i0) // step] += v
    lo, hi = bin_edge(column, i0), bin_edge(column, i0 + n * step)
    top = max(a + b for a, b in zip(ck, cd)) or 1
    pl, pb, pw, ph = 34, 28, width - 44, height - 48
    out = [f'<div class="card"><b>{_e(title)}</b><br><svg width="{width}" height="{height}" role="img">',
           f'<line x1="{pl}" y1="{10 + ph}" x2="{pl + pw}" y2="{10 + ph}" stroke="#999"/>']
    bw = pw / n
    for i, (k, d) in enumerate(zip(ck, cd)):
        x = pl + i * bw
        hk, hd = ph * k / top, ph * d / top
        if k:
            out.append(f'<rect x="{x:.1f}" y="{10 + ph - hk:.1f}" width="{max(bw - 1, 0.5):.1f}" height="{hk:.1f}" '
                       f'fill="{KEPT}"/>')
        if d:
            out.append(f'<rect x="{x:.1f}" y="{10 + ph - hk - hd:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                       f'height="{hd:.1f}" fill="{DROPPED}"/>')
    for value, label in lines:
        x = pl + pw * min(1.0, max(0.0, (position(column, value) - i0) / (n * step)))
        right = x > pl + 0.7 * pw  # labels near the right edge go left of their line
        out.append(f'<line x1="{x:.1f}" y1="6" x2="{x:.1f}" y2="{10 + ph}" stroke="#222" stroke-dasharray="4 3"/>'
                   f'<text x="{x - 3 if right else x + 3:.1f}" y="16" text-anchor="{"end" if right else "start"}">'
                   f'{_e(label)}</text>')
    scale = " (log scale)" if SCALES[column][2] else ""
    out.append(f'<text x="{pl}" y="{height - pb + 16}">{lo:.3g}</text>'
               f'<text x="{pl + pw}" y="{height - pb + 16}" text-anchor="end">{hi:.3g}{scale}</text>'
               f'<text x="4" y="16">{top}</text></svg></div>')
    return "".join(out)


def _thumb(jpeg: bytes | None) -> str:
    if not jpeg:
        return '<div style="width:168px;height:94px;background:#eee"></div>'
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">'


def _timeline(video: dict, clips: list[dict], chapters: list[dict], windows: list[dict], colour: dict) -> str:
    duration = video.get("duration_s") or max([c["end_s"] for c in clips] + [1.0])
    width, left = 1000, 4
    scale = (width - 2 * left) / duration

    def x(t: float) -> float:
        return left + t * scale

    out = [f'<svg width="{width}" height="96" role="img">']
    for b in video.get("boundaries") or []:
        if b["type"] != "cut":
            out.append(f'<rect x="{x(b["start_s"]):.1f}" y="2" width="{max(1.0, (b["end_s"] - b["start_s"]) * scale):.1f}"'
                       f' height="26" fill="#bbb"><title>{_e(b["type"])} {b["start_s"]:.2f}-{b["end_s"]:.2f}s</title></rect>')
    for c in clips:
        fill = KEPT if c["status"] == "kept" else colour.get(c["reason"], DROPPED)
        out.append(f'<rect x="{x(c["start_s"]):.1f}" y="4" width="{max(1.0, c["duration_s"] * scale - 1):.1f}" '
                   f'height="22" fill="{fill}"><title>{_e(c["status"])} {_e(c["reason"] or "")} '
                   f'{c["start_s"]:.2f}-{c["end_s"]:.2f}s</title></rect>')
    for i, ch in enumerate(chapters):
        out.append(f'<rect x="{x(ch["start_s"]):.1f}" y="34" width="{max(1.0, ch["duration_s"] * scale - 1):.1f}" '
                   f'height="22" fill="{PALETTE[(i + 3) % len(PALETTE)]}" opacity="0.7"><title>{_e(ch["title"])}: '
                   f'{_e(ch["summary"][:300])}</title></rect>'
                   f'<text x="{x(ch["start_s"]) + 3:.1f}" y="49">{_e(ch["title"][:30])}</text>')
    for w in windows:
        out.append(f'<rect x="{x(w["start_s"]):.1f}" y="62" width="{max(1.0, w["duration_s"] * scale - 1):.1f}" '
                   f'height="12" fill="#3d5a80"><title>{w["start_s"]:.1f}-{w["end_s"]:.1f}s {_e(w["text"][:300])}</title></rect>')
    out.append(f'<text x="{left}" y="92">0 s</text><text x="{width - left}" y="92" text-anchor="end">'
               f'{duration:.1f} s</text></svg>')
    return "".join(out)


def build_report(summary: dict, manifest: dict, detail: dict[str, list[dict]], thumbs: dict[str, bytes]) -> str:
    """The report's HTML from the merged partition summaries (counts, reasons, histograms and
    the sampled clips, videos and rejected inputs), the manifest, the table rows of the sampled
    videos (``detail``) and clip thumbnails. Its cost does not grow with the output."""
    spec, counts, stats, sample = manifest["spec"], manifest["counts"], summary["stats"], summary["sample"]
    reasons = Counter(stats["clip_reasons"])
    colour = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(sorted(reasons))}
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vidcurate report: {_e(manifest['name'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>vidcurate curation report: {_e(manifest['name'])}</h1>"]
    if manifest.get("tiny_random_models"):
        parts.append('<p class="note">Made with tiny random-weight models: CLIP similarities and captions are '
                     "meaningless here; shots, scores and the pipeline around them are real.</p>")
    funnel = [("videos in", counts["videos_in"]), ("videos accepted", counts["videos_ok"]),
              ("clips found", counts["clips"]), ("after shot rules", counts["clips_after_shots"]),
              ("after score filters", counts["clips_after_scores"]),
              ("after CLIP filter", counts["clips_after_clip_filter"]), ("kept", counts["clips_kept"]),
              ("captioned", counts["captions"].get("clip", 0)), ("samples in shards", counts["samples"])]
    parts += ["<h2>Funnel</h2>", _bars([(k, v, KEPT) for k, v in funnel])]
    video_reasons = Counter({k[len("dropped_"):]: v for k, v in stats["video_reasons"].items()
                             if k.startswith("dropped_")})
    parts += ['<h2>Why inputs and clips were dropped</h2><div class="grid"><div class="card"><b>videos</b><br>',
              _bars([(r, n, DROPPED) for r, n in video_reasons.most_common()], width=460),
              '</div><div class="card"><b>clips</b><br>',
              _bars([(r, n, colour[r]) for r, n in reasons.most_common()], width=460), "</div></div>"]

    parts.append('<h2>Scores</h2><p>Kept clips in green, dropped in red; dashed lines are the job\'s thresholds.</p>'
                 '<div class="grid">')
    hists = summary["histograms"]
    for column, (title, section, low, high) in SCORES.items():
        lines = [(spec[section][k], f"{k} {spec[section][k]:g}") for k in (low, high)
                 if k and spec[section].get(k) is not None]
        parts.append(_histogram(hists[column], column, title, lines))
    shots = spec["shots"]
    parts.append(_histogram(hists["duration_s"], "duration_s", "clip length (s)",
                            [(shots["min_clip_s"], f"min {shots['min_clip_s']:g}"),
                             (shots["max_clip_s"], f"max {shots['max_clip_s']:g}")]))
    parts.append("</div>")

    parts.append("<h2>Contact sheet</h2>")
    sizes = {"kept": counts["clips_kept"], **reasons}
    for name in ["kept"] + [r for r, _ in reasons.most_common()]:
        members = sample["groups"].get(name, [])
        parts.append(f"<h3>{_e(name)} ({sizes.get(name, 0)})</h3><div class=sheet>")
        for c in members:
            parts.append(f"<figure>{_thumb(thumbs.get(c['clip_id']))}<figcaption>"
                         f"{_e(c['uri'].rsplit('/', 1)[-1])} {c['start_s']:.1f}-{c['end_s']:.1f}s</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Videos</h2><p>Clips (green kept, other colours by reason; grey: transitions), chapters, "
                 "and dense window captions; hover for details.</p>")
    by_video, chapters_of, windows_of, caption_of = (defaultdict(list) for _ in range(4))
    for c in detail["clips"]:
        by_video[c["video_id"]].append(c)
    for ch in detail["chapters"]:
        chapters_of[ch["video_id"]].append(ch)
    for cap in detail["captions"]:
        if cap["level"] == "window":
            windows_of[cap["video_id"]].append(cap)
        elif cap["level"] == "video":
            caption_of[cap["video_id"]].append(cap["text"])
    shown = [v for v in detail["videos"] if v["status"] == "ok"]
    for v in shown:
        video_caption = (caption_of[v["video_id"]] or [""])[0]
        parts.append(f"<h3>{_e(v['uri'].rsplit('/', 1)[-1])} ({v['duration_s']:.1f} s, {v['width']}x{v['height']})</h3>"
                     + _timeline(v, by_video[v["video_id"]], chapters_of[v["video_id"]], windows_of[v["video_id"]],
                                 colour)
                     + (f"<p>{_e(video_caption[:500])}</p>" if video_caption else ""))
    if counts["videos_ok"] > len(shown):
        parts.append(f"<p>{counts['videos_ok'] - len(shown)} more accepted videos not drawn.</p>")
    rejected = sample["rejected"]
    if rejected:
        parts.append("<h2>Rejected inputs</h2><table><tr><th>input</th><th>status</th><th>reason</th><th>message</th></tr>")
        for v in rejected:
            parts.append(f"<tr><td>{_e(v['uri'])}</td><td>{_e(v['status'])}</td><td>{_e(v['reason'])}</td>"
                         f"<td>{_e(v['message'])}</td></tr>")
        parts.append("</table>")
        more = counts["videos_in"] - counts["videos_ok"] - len(rejected)
        if more > 0:
            parts.append(f"<p>{more} more rejected inputs not listed (the videos table has every one).</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def thumbnails(store, fingerprint: str, refs: list[dict]) -> dict[str, bytes]:
    """The first sampled frame of each pictured clip (``refs``: clip_id, unit_id), from the
    committed analysis results of their units only."""
    from pipeline.graph import work_key
    from pipeline.units import decode_unit

    wanted: dict[str, set[str]] = defaultdict(set)
    for r in refs:
        wanted[r["unit_id"]].add(r["clip_id"])
    out = {}
    for unit in sorted(wanted):
        try:
            _, table = decode_unit(store.read(work_key("analyze", fingerprint, unit)))
        except Exception:  # reports are best effort about images, never about numbers
            continue
        for cid, frames in zip(table.column("clip_id").to_pylist(), table.column("frames").to_pylist()):
            if cid in wanted[unit] and frames:
                out[cid] = frames[0]
    return out


def sampled_rows(store, manifest: dict, videos: list[dict]) -> dict[str, list[dict]]:
    """The table rows of the sampled videos, read from their partitions' parts only."""
    wanted = {v["video_id"] for v in videos}
    parts = {v["partition"] for v in videos}
    index = {p["partition"]: i for i, p in enumerate(manifest["partitions"])}
    out = {name: [] for name in manifest["tables"]}
    for p in sorted(parts):
        for name, t in manifest["tables"].items():
            rows = pq.read_table(io.BytesIO(store.read(t["parts"][index[p]]["path"]))).to_pylist()
            out[name] += [r for r in rows if r["video_id"] in wanted]
    return out


def report_for(store, manifest: dict, summary: dict) -> bytes:
    """report.html's bytes for an output whose merged partition summary is ``summary``."""
    sample = summary["sample"]
    detail = sampled_rows(store, manifest, sample["videos"])
    thumbs = thumbnails(store, manifest["fingerprints"]["analyze"], [r for g in sample["groups"].values() for r in g])
    return build_report(summary, manifest, detail, thumbs).encode()


def rebuild(output: str, storage=None) -> str:
    """``vidcurate report OUTPUT``: rebuild report.html of a committed output from its partition
    records; returns its location."""
    from pipeline.spec import Storage
    from pipeline.storage import open_store
    from pipeline.summary import merge

    store = open_store(output, storage or Storage())
    manifest = json.loads(store.read("manifest.json"))
    records = [json.loads(store.read(p["record"])) for p in manifest["partitions"]]
    store.write("report.html", report_for(store, manifest, merge([r["summary"] for r in records])))
    return store.uri("report.html")
