"""The curation report: one self-contained HTML page (inline SVG, embedded JPEGs, no scripts,
no network) written as ``report.html`` with every run and rebuilt by ``vidcurate report OUTPUT``.

It shows what a threshold decision needs: the funnel from videos to shard samples, why videos
and clips were dropped, each score's histogram (kept and dropped stacked) with the spec's
thresholds drawn, the clip-length distribution, a contact sheet of kept and dropped clips per
reason (with each clip's caption), and a timeline per video (clips by status, transitions,
chapters, dense captions) on a time axis with round ticks. Where it pictures a sample it says how
much of the whole it shows ("8 of 28 shown"); filters that drop most clips, and a run that kept
none, are called out at the top. The page holds no timestamps, so a rerun writes the same bytes.

The layout arithmetic (ticks, label widths and rows, caption shortening) is pure functions here,
tested without a browser; a headless Chromium checks the drawn result.
"""

from __future__ import annotations

import base64
import html
import io
import json
import unicodedata
from collections import Counter, defaultdict

import pyarrow.parquet as pq

from pipeline.summary import BINS, SCALES, bin_edge, empty_result, lopsided, position
from schemas.scores import SCORES

KEPT, DROPPED = "#2f7d4f", "#c8553d"
PALETTE = ["#c8553d", "#e09f3e", "#8e6c8a", "#3d5a80", "#7a9e7e", "#b56576", "#6d597a", "#457b9d", "#a98467",
           "#588157", "#bc6c25", "#5e548e", "#9c6644", "#2a9d8f", "#e76f51"]
CAPTION_CHARS = 80  # a thumbnail's caption is cut to this (the whole text shows on hover)
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3,p,td.long,figcaption,li{overflow-wrap:anywhere}td{white-space:nowrap}td.long{white-space:normal}
.grid{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px}
.sheet{display:flex;flex-wrap:wrap;gap:6px}.sheet figure{margin:0;width:168px;font-size:11px;color:#555}
.sheet img{width:168px;border-radius:3px;display:block}.note{background:#fff4e0;padding:8px;border-radius:6px}
.cap{display:block;color:#222}.shown{font-weight:normal;color:#666}
.alert{background:#fde2dd;color:#7a1606;border:2px solid #c8553d;border-radius:6px;padding:10px 14px;
font-size:18px;font-weight:bold}
table{border-collapse:collapse;max-width:100%}td,th{padding:2px 10px;text-align:left;vertical-align:top}
td.n{text-align:right}svg text{font:11px system-ui,sans-serif}
"""
# Tick intervals a time axis may use (seconds): round to a reader at every scale.
STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
# Advance widths in em of a wide sans-serif (DejaVu Sans, the widest of the usual system-ui
# fallbacks), rounded up: estimates that a narrower face only makes roomier.
_NARROW, _SEMI, _WIDE = set("iljI.,:;'|!"), set("frt()[]{}/\\\"-"), set("mwMW@%")


def text_width(text: str, size: float = 11) -> float:
    """The drawn width of ``text`` in px at font ``size``, estimated on the wide side."""
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.32
        elif ch == " ":
            em += 0.34
        elif ch in _SEMI:
            em += 0.46
        elif ch in _WIDE:
            em += 1.02
        elif ch.isascii() and (ch.islower() or ch.isdigit()):
            em += 0.66
        elif ch.isascii() and ch.isupper():
            em += 0.8
        else:
            em += 1.05 if unicodedata.east_asian_width(ch) in "WF" else 0.82
    return em * size


def fit_text(text: str, width: float, size: float = 11) -> str:
    """``text``, or its longest start with an ellipsis, whose estimated width fits ``width``
    ("" when not even one character does)."""
    if text_width(text, size) <= width:
        return text
    for k in range(len(text) - 1, 0, -1):
        cut = text[:k].rstrip() + "\u2026"
        if text_width(cut, size) <= width:
            return cut
    return ""


def shorten(text: str, limit: int = CAPTION_CHARS) -> str:
    """``text`` on one line and at most ``limit`` characters: cut at a word boundary (or mid-word
    when the last space is far back) and ended with an ellipsis."""
    flat = " ".join((text or "").split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "\u2026"


def shown_text(n: int, total: int) -> str:
    """How much of a whole a sample pictures: "8 of 28 shown"."""
    return f"{n} of {total} shown"


def tick_step(duration: float, most: int = 10) -> float:
    """The smallest round interval (STEPS) that puts at most ``most`` intervals on ``duration``."""
    for step in STEPS:
        if duration / step <= most:
            return step
    return STEPS[-1]


def ticks(duration: float, most: int = 10) -> list[float]:
    """Tick times from 0 to ``duration`` on the round interval of ``tick_step``."""
    step = tick_step(duration, most)
    return [round(i * step, 6) for i in range(int(duration / step + 1e-9) + 1)]


def time_label(t: float, duration: float) -> str:
    """A tick's label: seconds ("2 s", "0.5 s") on axes under a minute, else m:ss (h:mm:ss past an hour)."""
    if duration < 60:
        return f"{t:g} s" if t == int(t) else f"{t:.1f} s"
    s = int(round(t))
    if duration >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def label_lanes(starts: list[float], widths: list[float], right: float, lanes: int = 4, gap: float = 6,
                least: float = 24) -> list[tuple[int, float, float] | None]:
    """Lay out labels that belong at x = ``starts`` (px, ascending) with natural ``widths`` in at
    most ``lanes`` rows, no two in a row closer than ``gap`` and none past ``right``. Each label
    takes the first row free at its start (one that would cross ``right`` moves left); when no
    row is free, the row whose last label keeps the most room is shortened to make space, down
    to ``least`` at most; a label that finds no such room is left out. Returns (row, x, width)
    per label, or None for one left out."""
    placed: list[list | None] = [None] * len(starts)
    last: list[int | None] = [None] * lanes
    for i, (start, natural) in enumerate(zip(starts, widths)):
        x = max(0.0, min(start, right - natural))
        width = min(natural, right - x)
        if width < min(least, natural):
            continue
        free = [r for r in range(lanes) if last[r] is None or placed[last[r]][1] + placed[last[r]][2] + gap <= x]
        if free:
            row = free[0]
        else:
            row = max(range(lanes), key=lambda r: (x - gap - placed[last[r]][1], -r))
            room = x - gap - placed[last[row]][1]
            if room < least:
                continue
            placed[last[row]][2] = room
        placed[i] = [row, x, width]
        last[row] = i
    return [tuple(p) if p else None for p in placed]


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _long(text) -> str:
    """Escaped text that may wrap after any "/" first (a path breaks between its folders), and
    anywhere where it must (the CSS of ``td.long``)."""
    return _e(text).replace("/", "/<wbr>")


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


def _axis(duration: float, x, y: float, width: int) -> list[str]:
    """A time axis at height ``y``: round ticks with labels, and the end's length where there is room."""
    out = [f'<g class="axis"><line x1="{x(0):.1f}" y1="{y}" x2="{x(duration):.1f}" y2="{y}" stroke="#999"/>']
    marks = ticks(duration)
    for t in marks:
        at = x(t)
        anchor = "start" if t == 0 else "end" if at > width - 20 else "middle"
        out.append(f'<line x1="{at:.1f}" y1="{y}" x2="{at:.1f}" y2="{y + 4}" stroke="#999"/>'
                   f'<text class="tick" x="{at:.1f}" y="{y + 15}" text-anchor="{anchor}">'
                   f'{time_label(t, duration)}</text>')
    end = f"{duration:.1f} s" if duration < 60 else time_label(duration, duration)
    if x(duration) - x(marks[-1]) > text_width(end) + text_width(time_label(marks[-1], duration)) / 2 + 12:
        out.append(f'<line x1="{x(duration):.1f}" y1="{y}" x2="{x(duration):.1f}" y2="{y + 4}" stroke="#999"/>'
                   f'<text class="end" x="{x(duration):.1f}" y="{y + 15}" text-anchor="end">{end}</text>')
    out.append("</g>")
    return out


def _timeline(video: dict, clips: list[dict], chapters: list[dict], windows: list[dict], colour: dict) -> str:
    """One video's strip: clips by status over transitions, chapters with their labels laid out
    in rows that never overlap (numbered like the chapter bars), dense window captions, and a
    time axis with round ticks."""
    duration = video.get("duration_s") or max([c["end_s"] for c in clips] + [1.0])
    width, left = 1000, 4
    scale = (width - 2 * left) / duration

    def x(t: float) -> float:
        return left + t * scale

    body = []
    for b in video.get("boundaries") or []:
        if b["type"] != "cut":
            w = max(1.0, (b["end_s"] - b["start_s"]) * scale)
            body.append(f'<rect x="{x(b["start_s"]):.1f}" y="2" width="{w:.1f}" height="26" fill="#bbb"><title>'
                        f'{_e(b["type"])} {b["start_s"]:.2f}-{b["end_s"]:.2f}s</title></rect>')
    for c in clips:
        fill = KEPT if c["status"] == "kept" else colour.get(c["reason"], DROPPED)
        body.append(f'<rect x="{x(c["start_s"]):.1f}" y="4" width="{max(1.0, c["duration_s"] * scale - 1):.1f}" '
                    f'height="22" fill="{fill}"><title>{_e(c["status"])} {_e(c["reason"] or "")} '
                    f'{c["start_s"]:.2f}-{c["end_s"]:.2f}s</title></rect>')
    y = 34
    chapters = sorted(chapters, key=lambda ch: (ch["start_s"], ch["index"]))
    if chapters:
        names = [f'{n} {" ".join(ch["title"].split())}' for n, ch in enumerate(chapters, 1)]
        lanes = label_lanes([x(ch["start_s"]) for ch in chapters], [11 + text_width(t) for t in names], width,
                            least=40)
        rows = 1 + max([p[0] for p in lanes if p] + [0])
        for n, (ch, name, place) in enumerate(zip(chapters, names, lanes), 1):
            fill, w = PALETTE[(n + 2) % len(PALETTE)], max(1.0, ch["duration_s"] * scale - 1)
            tip = f'<title>{_e(name)} ({ch["start_s"]:.1f}-{ch["end_s"]:.1f}s): {_e(ch["summary"])}</title>'
            body.append(f'<rect x="{x(ch["start_s"]):.1f}" y="{y}" width="{w:.1f}" height="16" fill="{fill}" '
                        f'opacity="0.75">{tip}</rect>')
            if w >= text_width(str(n)) + 4:
                body.append(f'<text x="{x(ch["start_s"]) + 2:.1f}" y="{y + 12}" fill="#fff">{n}</text>')
            if place:
                row, at, room = place
                top = y + 20 + 15 * row
                body.append(f'<g class="chapter-label"><rect x="{at:.1f}" y="{top + 3}" width="8" height="8" '
                            f'fill="{fill}"/><text x="{at + 11:.1f}" y="{top + 11}">{_e(fit_text(name, room - 11))}'
                            f'</text>{tip}</g>')
        y += 20 + 15 * rows + 4
    if windows:
        for win in windows:
            w = max(1.0, win["duration_s"] * scale - 1)
            body.append(f'<rect x="{x(win["start_s"]):.1f}" y="{y}" width="{w:.1f}" height="12" fill="#3d5a80"><title>'
                        f'{win["start_s"]:.1f}-{win["end_s"]:.1f}s {_e(win["text"])}</title></rect>')
        y += 18
    body += _axis(duration, x, y + 2, width)
    return "".join([f'<svg class="timeline" width="{width}" height="{y + 22}" role="img">', *body, "</svg>"])


def _figure(clip: dict, jpeg: bytes | None, caption: str | None) -> str:
    """A contact-sheet cell: thumbnail, file and span, the caption shortened (all of it on hover)."""
    where = f"{_e(clip['uri'].rsplit('/', 1)[-1])} {clip['start_s']:.1f}-{clip['end_s']:.1f}s"
    if not caption:
        return f"<figure>{_thumb(jpeg)}<figcaption>{where}</figcaption></figure>"
    return (f'<figure title="{_e(" ".join(caption.split()))}">{_thumb(jpeg)}<figcaption>{where}'
            f'<span class="cap">{_e(shorten(caption))}</span></figcaption></figure>')


def _warnings(stats: dict, spec: dict) -> str:
    """Near the top: a run that kept no clip (loudly), and filters that dropped most clips."""
    out = []
    empty = empty_result(stats, spec)
    if empty:
        out.append(f'<p class="alert" role="alert">{_e(empty)}</p>')
    lines = lopsided(stats, spec)
    if lines:
        out.append('<div class="note lopsided"><b>Lopsided filters</b>: each of these dropped more than half of '
                   "the clips; check its setting.<ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines)
                   + "</ul></div>")
    return "".join(out)


def build_report(summary: dict, manifest: dict, detail: dict[str, list[dict]], thumbs: dict[str, bytes],
                 captions: dict[str, str] | None = None) -> str:
    """The report's HTML from the merged partition summaries (counts, reasons, histograms and
    the sampled clips, videos and rejected inputs), the manifest, the table rows of the sampled
    videos (``detail``), clip thumbnails and the pictured clips' captions (clip_id -> text).
    Its cost does not grow with the output."""
    spec, stats, sample = manifest["spec"], summary["stats"], summary["sample"]
    counts, captions = stats["counts"], captions or {}
    reasons = Counter(stats["clip_reasons"])
    colour = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(sorted(reasons))}
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vidcurate report: {_e(manifest['name'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>vidcurate curation report: {_e(manifest['name'])}</h1>"]
    if manifest.get("tiny_random_models"):
        parts.append('<p class="note">Made with tiny random-weight models: CLIP similarities and captions are '
                     "meaningless here; shots, scores and the pipeline around them are real.</p>")
    parts.append(_warnings(stats, spec))
    funnel = [("videos in", counts["videos_in"]), ("videos accepted", counts["videos_ok"]),
              ("clips found", counts["clips"]), ("after shot rules", counts["clips_after_shots"]),
              ("after score filters", counts["clips_after_scores"]),
              ("after CLIP filter", counts["clips_after_clip_filter"]),
              *([("after caption fit", counts["clips_after_caption_fit"])]
                if counts.get("clips_after_caption_fit", counts["clips_after_clip_filter"])
                != counts["clips_after_clip_filter"] else []),
              ("kept", counts["clips_kept"]),
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
    for score in SCORES:  # every declared score (schemas.scores), a line at each threshold the job set
        if score.name not in hists:  # an output written before the score existed
            continue
        lines = []
        for t in score.thresholds:
            section, name = t.key.split(".", 1)
            value = (spec.get(section) or {}).get(name)
            if value is not None:
                lines.append((value, f"{name} {value:g}"))
        parts.append(_histogram(hists[score.name], score.name, score.title, lines))
    shots = spec["shots"]
    parts.append(_histogram(hists["duration_s"], "duration_s", "clip length (s)",
                            [(shots["min_clip_s"], f"min {shots['min_clip_s']:g}"),
                             (shots["max_clip_s"], f"max {shots['max_clip_s']:g}")]))
    parts.append("</div>")

    parts.append("<h2>Contact sheet</h2><p>The first clips of each group, in partition order; hover a clip "
                 "for its whole caption.</p>")
    sizes = {"kept": counts["clips_kept"], **reasons}
    for name in ["kept"] + [r for r, _ in reasons.most_common()]:
        members = sample["groups"].get(name, [])
        parts.append(f'<h3>{_e(name)}: <span class="shown">{shown_text(len(members), sizes.get(name, 0))}</span>'
                     "</h3><div class=sheet>")
        parts += [_figure(c, thumbs.get(c["clip_id"]), captions.get(c["clip_id"])) for c in members]
        parts.append("</div>")

    shown = [v for v in detail["videos"] if v["status"] == "ok"]
    parts.append(f'<h2>Videos</h2><p>Accepted videos: <span class="shown">{shown_text(len(shown), counts["videos_ok"])}'
                 "</span>. Clips (green kept, other colours by reason; grey: transitions), numbered chapters with "
                 "their titles, and dense window captions; hover for details.</p>")
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
    for v in shown:
        video_caption = (caption_of[v["video_id"]] or [""])[0]
        parts.append(f"<h3>{_e(v['uri'].rsplit('/', 1)[-1])} ({v['duration_s']:.1f} s, {v['width']}x{v['height']})</h3>"
                     + _timeline(v, by_video[v["video_id"]], chapters_of[v["video_id"]], windows_of[v["video_id"]],
                                 colour)
                     + (f"<p>{_e(video_caption)}</p>" if video_caption else ""))
    rejected = sample["rejected"]
    if rejected:
        total = counts["videos_in"] - counts["videos_ok"]
        parts.append(f'<h2>Rejected inputs</h2><p><span class="shown">{shown_text(len(rejected), total)}</span> '
                     "(the videos table has every one, with its whole message).</p>"
                     "<table><tr><th>input</th><th>status</th><th>reason</th><th>message</th></tr>")
        for v in rejected:
            parts.append(f"<tr><td class=long>{_long(v['uri'])}</td><td>{_e(v['status'])}</td>"
                         f"<td>{_e(v['reason'])}</td><td class=long>{_long(v['message'])}</td></tr>")
        parts.append("</table>")
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


def clip_captions(store, manifest: dict, refs: list[dict]) -> dict[str, str]:
    """The clip-level caption of each pictured clip (``refs``: clip_id, partition): three
    columns of their partitions' captions parts only."""
    wanted: dict[int, set[str]] = defaultdict(set)
    for r in refs:
        wanted[r["partition"]].add(r["clip_id"])
    index = {p["partition"]: i for i, p in enumerate(manifest["partitions"])}
    parts = manifest["tables"]["captions"]["parts"]
    out = {}
    for p in sorted(wanted):
        table = pq.read_table(io.BytesIO(store.read(parts[index[p]]["path"])), columns=["clip_id", "level", "text"])
        for cid, level, text in zip(*(table.column(c).to_pylist() for c in ("clip_id", "level", "text"))):
            if level == "clip" and cid in wanted[p]:
                out[cid] = text
    return out


def report_for(store, manifest: dict, summary: dict) -> bytes:
    """report.html's bytes for an output whose merged partition summary is ``summary``."""
    sample = summary["sample"]
    detail = sampled_rows(store, manifest, sample["videos"])
    refs = [r for g in sample["groups"].values() for r in g]
    thumbs = thumbnails(store, manifest["fingerprints"]["analyze"], refs)
    return build_report(summary, manifest, detail, thumbs, clip_captions(store, manifest, refs)).encode()


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
