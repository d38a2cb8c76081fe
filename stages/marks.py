"""Chapter marks given with a video: container chapters, or timestamps in a description.

Container chapters (MP4/MKV chapter atoms) come from PyAV's ``container.chapters()``. Video
descriptions list chapters as lines such as ``00:00 Intro`` / ``1:02:03 - Finale`` /
``(12:30) Tasting``; following VidChapters-7M (Yang et al., 2023), a description counts only
when its timestamps start at 0:00, there are at least two of them, and they increase.
Marks become chapters after snapping to the nearest shot start (``snap_marks``).
"""

from __future__ import annotations

import re

_STAMP = r"(?:(\d{1,2}):)?(\d{1,2}):(\d{2})"
_LINE_START = re.compile(r"^\s*[\[(]?\s*" + _STAMP + r"\s*[\])]?\s*(?:[-\u2013\u2014:|.]\s*)?(.*?)\s*$")
_LINE_END = re.compile(r"^\s*(.*?)\s*(?:[-\u2013\u2014:|]\s*)?[\[(]?" + _STAMP + r"[\])]?\s*$")


def _seconds(h, m, s) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s)


def parse_description(text: str | None) -> list[dict]:
    """[{"start_s", "title"}] from a description's timestamp lines, or [] when it has none
    that pass VidChapters-7M's rules."""
    if not text:
        return []
    marks = []
    for line in text.splitlines():
        m = _LINE_START.match(line)
        if m and m.group(4) is not None:
            marks.append({"start_s": _seconds(*m.group(1, 2, 3)), "title": m.group(4).strip() or None})
            continue
        m = _LINE_END.match(line)
        if m and m.group(1):
            marks.append({"start_s": _seconds(*m.group(2, 3, 4)), "title": m.group(1).strip()})
    if len(marks) < 2 or marks[0]["start_s"] != 0:
        return []
    if any(b["start_s"] <= a["start_s"] for a, b in zip(marks, marks[1:])):
        return []
    return marks


def container_marks(container) -> list[dict]:
    """[{"start_s", "title"}] from the container's chapter metadata (may be empty)."""
    marks = []
    try:
        chapters = container.chapters()
    except Exception:  # a demuxer without chapter support
        return []
    for ch in chapters:
        start = float(ch["start"] * ch["time_base"]) if ch.get("time_base") else float(ch["start"])
        title = (ch.get("metadata") or {}).get("title")
        marks.append({"start_s": max(0.0, start), "title": title.strip() if title else None})
    return sorted(marks, key=lambda m: m["start_s"])


def snap_marks(marks: list[dict], shot_starts: list[float], snap_s: float, duration_s: float) -> list[dict]:
    """Marks moved to the nearest shot start within ``snap_s`` seconds, as chapters
    [{"start_s", "end_s", "title"}] covering [0, duration]; marks that collapse onto the same
    start are merged (the first title is kept)."""
    out = []
    for m in marks:
        t = m["start_s"]
        if t >= duration_s:
            continue
        near = min(shot_starts, key=lambda s: abs(s - t), default=None)
        if near is not None and abs(near - t) <= snap_s:
            t = near
        if out and t <= out[-1]["start_s"]:
            continue
        out.append({"start_s": 0.0 if not out else t, "title": m.get("title")})
    for a, b in zip(out, out[1:]):
        a["end_s"] = b["start_s"]
    if out:
        out[-1]["end_s"] = duration_s
    return out
