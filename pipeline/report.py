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
import math
from collections import Counter, defaultdict

import pyarrow.parquet as pq

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


def _histogram(kept: list[float], dropped: list[float], title: str, lines: list[tuple[float, str]],
               bins: int = 24, width: int = 340, height: int = 170) -> str:
    """Stacked histogram (kept below, dropped above) with vertical threshold lines."""
    values = kept + dropped
    if not values:
        return f'<div class="card"><b>{_e(title)}</b><p>no values</p></div>'
    lo, hi = min(values + [v for v, _ in lines]), max(values + [v for v, _ in lines])
    if hi <= lo:
        hi = lo + 1.0
    step = (hi - lo) / bins

    def counts(xs):
        c = [0] * bins
        for x in xs:
            c[min(bins - 1, int((x - lo) / step))] += 1
        return c

    ck, cd = counts(kept), counts(dropped)
    top = max(a + b for a, b in zip(ck, cd)) or 1
    pl, pb, pw, ph = 34, 28, width - 44, height - 48
    out = [f'<div class="card"><b>{_e(title)}</b><br><svg width="{width}" height="{height}" role="img">',
           f'<line x1="{pl}" y1="{10 + ph}" x2="{pl + pw}" y2="{10 + ph}" stroke="#999"/>']
    bw = pw / bins
    for i, (k, d) in enumerate(zip(ck, cd)):
        x = pl + i * bw
        hk, hd = ph * k / top, ph * d / top
        if k:
            out.append(f'<rect x="{x:.1f}" y="{10 + ph - hk:.1f}" width="{bw - 1:.1f}" height="{hk:.1f}" fill="{KEPT}"/>')
        if d:
            out.append(f'<rect x="{x:.1f}" y="{10 + ph - hk - hd:.1f}" width="{bw - 1:.1f}" height="{hd:.1f}" '
                       f'fill="{DROPPED}"/>')
    for value, label in lines:
        x = pl + pw * (value - lo) / (hi - lo)
        right = x > pl + 0.7 * pw  # labels near the right edge go left of their line
        out.append(f'<line x1="{x:.1f}" y1="6" x2="{x:.1f}" y2="{10 + ph}" stroke="#222" stroke-dasharray="4 3"/>'
                   f'<text x="{x - 3 if right else x + 3:.1f}" y="16" text-anchor="{"end" if right else "start"}">'
                   f'{_e(label)}</text>')
    out.append(f'<text x="{pl}" y="{height - pb + 16}">{lo:.3g}</text>'
               f'<text x="{pl + pw}" y="{height - pb + 16}" text-anchor="end">{hi:.3g}</text>'
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


def build_report(tables: dict[str, list[dict]], manifest: dict, thumbs: dict[str, bytes], per_reason: int = 8,
                 max_videos: int = 20) -> str:
    """The report's HTML from the output's tables (rows), its manifest and clip thumbnails."""
    videos, clips, captions, chapters = (tables[k] for k in ("videos", "clips", "captions", "chapters"))
    spec, counts = manifest["spec"], manifest["counts"]
    reasons = Counter(c["reason"] for c in clips if c["status"] != "kept")
    colour = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(sorted(reasons))}
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vidcurate report: {_e(manifest['name'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>vidcurate curation report: {_e(manifest['name'])}</h1>"]
    if manifest.get("tiny_random_models"):
        parts.append('<p class="note">Made with tiny random-weight models: CLIP similarities and captions are '
                     "meaningless here; shots, scores and the pipeline around them are real.</p>")
    captioned = sum(1 for c in captions if c["level"] == "clip")
    funnel = [("videos in", counts["videos_in"]), ("videos accepted", counts["videos_ok"]),
              ("clips found", counts["clips"]), ("after shot rules", counts["clips_after_shots"]),
              ("after score filters", counts["clips_after_scores"]),
              ("after CLIP filter", counts["clips_after_clip_filter"]), ("kept", counts["clips_kept"]),
              ("captioned", captioned), ("samples in shards", counts["samples"])]
    parts += ["<h2>Funnel</h2>", _bars([(k, v, KEPT) for k, v in funnel])]
    video_reasons = Counter(v["reason"] for v in videos if v["status"] != "ok")
    parts += ['<h2>Why inputs and clips were dropped</h2><div class="grid"><div class="card"><b>videos</b><br>',
              _bars([(r, n, DROPPED) for r, n in video_reasons.most_common()], width=460),
              '</div><div class="card"><b>clips</b><br>',
              _bars([(r, n, colour[r]) for r, n in reasons.most_common()], width=460), "</div></div>"]

    parts.append('<h2>Scores</h2><p>Kept clips in green, dropped in red; dashed lines are the job\'s thresholds.</p>'
                 '<div class="grid">')
    for column, (title, section, low, high) in SCORES.items():
        kept = [c[column] for c in clips if c["status"] == "kept" and _finite(c.get(column))]
        dropped = [c[column] for c in clips if c["status"] != "kept" and _finite(c.get(column))]
        lines = [(spec[section][k], f"{k} {spec[section][k]:g}") for k in (low, high)
                 if k and spec[section].get(k) is not None]
        parts.append(_histogram(kept, dropped, title, lines))
    lengths_k = [c["duration_s"] for c in clips if c["status"] == "kept"]
    lengths_d = [c["duration_s"] for c in clips if c["status"] != "kept"]
    shots = spec["shots"]
    parts.append(_histogram(lengths_k, lengths_d, "clip length (s)",
                            [(shots["min_clip_s"], f"min {shots['min_clip_s']:g}"),
                             (shots["max_clip_s"], f"max {shots['max_clip_s']:g}")]))
    parts.append("</div>")

    parts.append("<h2>Contact sheet</h2>")
    groups = [("kept", [c for c in clips if c["status"] == "kept"])] + \
        [(r, [c for c in clips if c["reason"] == r]) for r, _ in reasons.most_common()]
    for name, members in groups:
        parts.append(f"<h3>{_e(name)} ({len(members)})</h3><div class=sheet>")
        for c in members[:per_reason]:
            parts.append(f"<figure>{_thumb(thumbs.get(c['clip_id']))}<figcaption>"
                         f"{_e(c['uri'].rsplit('/', 1)[-1])} {c['start_s']:.1f}-{c['end_s']:.1f}s</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Videos</h2><p>Clips (green kept, other colours by reason; grey: transitions), chapters, "
                 "and dense window captions; hover for details.</p>")
    by_video = defaultdict(list)
    for c in clips:
        by_video[c["video_id"]].append(c)
    chapters_of, windows_of = defaultdict(list), defaultdict(list)
    for ch in chapters:
        chapters_of[ch["video_id"]].append(ch)
    for cap in captions:
        if cap["level"] == "window":
            windows_of[cap["video_id"]].append(cap)
    accepted = [v for v in videos if v["status"] == "ok"]
    shown = accepted[:max_videos]
    for v in shown:
        video_caption = next((c["text"] for c in captions if c["level"] == "video" and c["video_id"] == v["video_id"]), "")
        parts.append(f"<h3>{_e(v['uri'].rsplit('/', 1)[-1])} ({v['duration_s']:.1f} s, {v['width']}x{v['height']})</h3>"
                     + _timeline(v, by_video[v["video_id"]], chapters_of[v["video_id"]], windows_of[v["video_id"]],
                                 colour)
                     + (f"<p>{_e(video_caption[:500])}</p>" if video_caption else ""))
    if len(accepted) > len(shown):
        parts.append(f"<p>{len(accepted) - len(shown)} more accepted videos not drawn.</p>")
    rejected = [v for v in videos if v["status"] != "ok"]
    if rejected:
        parts.append("<h2>Rejected inputs</h2><table><tr><th>input</th><th>status</th><th>reason</th><th>message</th></tr>")
        for v in rejected:
            parts.append(f"<tr><td>{_e(v['uri'])}</td><td>{_e(v['status'])}</td><td>{_e(v['reason'])}</td>"
                         f"<td>{_e((v.get('message') or '')[:200])}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def thumbnails(store, fingerprint: str, units: list[str], clip_ids: set[str]) -> dict[str, bytes]:
    """The first sampled frame of each wanted clip, from the committed analysis results of
    ``units`` (read in order until every wanted clip is found)."""
    from pipeline.units import decode_unit, work_key

    out = {}
    for unit in units:
        if len(out) == len(clip_ids):
            break
        try:
            _, table = decode_unit(store.read(work_key("analyze", fingerprint, unit)))
        except Exception:  # reports are best effort about images, never about numbers
            continue
        for cid, frames in zip(table.column("clip_id").to_pylist(), table.column("frames").to_pylist()):
            if cid in clip_ids and frames:
                out[cid] = frames[0]
    return out


def report_for(store, manifest: dict, units: dict[str, str] | list[str]) -> bytes:
    """report.html's bytes for a committed output in ``store``. ``units``: video_id -> unit_id
    (only the videos of the pictured clips are read), or every unit to look through."""
    tables = {name: pq.read_table(io.BytesIO(store.read(t["path"]))).to_pylist() for name, t in manifest["tables"].items()}
    wanted, videos = set(), set()
    per_group = defaultdict(int)
    for c in tables["clips"]:
        group = c["reason"] or "kept"
        if per_group[group] < 8:
            per_group[group] += 1
            wanted.add(c["clip_id"])
            videos.add(c["video_id"])
    if isinstance(units, dict):
        units = sorted({units[v] for v in videos if v in units})
    thumbs = thumbnails(store, manifest["fingerprints"]["analyze"], units, wanted)
    return build_report(tables, manifest, thumbs).encode()


def rebuild(output: str, storage=None) -> str:
    """``vidcurate report OUTPUT``: rebuild report.html of a committed output; returns its location."""
    from pipeline.spec import Storage
    from pipeline.storage import open_store

    store = open_store(output, storage or Storage())
    manifest = json.loads(store.read("manifest.json"))
    units = sorted({k.rsplit("/", 1)[-1].split(".")[0] for k, _ in store.list(
        f"_work/analyze/{manifest['fingerprints']['analyze']}")})
    store.write("report.html", report_for(store, manifest, units))
    return store.uri("report.html")
