"""Checks run on every job's outputs before they are written: caption times and hierarchy.

Every caption has absolute [start_s, end_s] inside its video, and its events inside it in order;
a child lies inside its parent;
clip captions match their clips and do not overlap; windows tile their clip; chapters do not
overlap. Violations are counted in stats.json (``caption_checks``) with a few examples, and
logged; they never stop the job (the outputs are still written, with the report beside them).
"""

from __future__ import annotations

from collections import defaultdict

EPS = 1e-6


def check_caption_times(captions: list[dict], clips: list[dict], videos: list[dict], chapters: list[dict]) -> dict:
    problems: list[str] = []
    duration = {v["video_id"]: v.get("duration_s") or 0.0 for v in videos}
    by_id = {c["caption_id"]: c for c in captions}
    for c in captions:
        tag = f"{c['level']} caption {c['caption_id']}"
        if not c["start_s"] <= c["end_s"]:
            problems.append(f"{tag}: start {c['start_s']} after end {c['end_s']}")
        if c["start_s"] < -EPS or c["end_s"] > duration.get(c["video_id"], 0.0) + EPS:
            problems.append(f"{tag}: [{c['start_s']}, {c['end_s']}] outside the video "
                            f"[0, {duration.get(c['video_id'])}]")
        times = [e["start_s"] for e in c.get("events") or []]
        if any(t < c["start_s"] - EPS or t > c["end_s"] + EPS for t in times) or times != sorted(times):
            problems.append(f"{tag}: event times outside [{c['start_s']}, {c['end_s']}] or not in order")
        parent = by_id.get(c.get("parent_id")) if c.get("parent_id") else None
        if c.get("parent_id") and parent is None:
            problems.append(f"{tag}: parent {c['parent_id']} missing")
        elif parent is not None and (c["start_s"] < parent["start_s"] - EPS or c["end_s"] > parent["end_s"] + EPS):
            problems.append(f"{tag}: [{c['start_s']}, {c['end_s']}] not inside its {parent['level']} "
                            f"[{parent['start_s']}, {parent['end_s']}]")
    clip_of = {c["clip_id"]: c for c in clips}
    per_video = defaultdict(list)
    for c in captions:
        if c["level"] == "clip":
            per_video[c["video_id"]].append(c)
            clip = clip_of.get(c.get("clip_id"))
            if clip is None or abs(clip["start_s"] - c["start_s"]) > EPS or abs(clip["end_s"] - c["end_s"]) > EPS:
                problems.append(f"clip caption {c['caption_id']}: times differ from its clip")
    for video_id, caps in per_video.items():
        caps.sort(key=lambda c: c["start_s"])
        for a, b in zip(caps, caps[1:]):
            if b["start_s"] < a["end_s"] - EPS:
                problems.append(f"video {video_id}: clip captions {a['caption_id']} and {b['caption_id']} overlap")
    windows_of = defaultdict(list)
    for c in captions:
        if c["level"] == "window":
            windows_of[c["parent_id"]].append(c)
    for parent_id, ws in windows_of.items():  # windows tile their clip
        ws.sort(key=lambda c: c["start_s"])
        parent = by_id.get(parent_id)
        gaps = any(abs(b["start_s"] - a["end_s"]) > EPS for a, b in zip(ws, ws[1:]))
        if parent is None or gaps or abs(ws[0]["start_s"] - parent["start_s"]) > EPS \
                or abs(ws[-1]["end_s"] - parent["end_s"]) > EPS:
            problems.append(f"clip caption {parent_id}: its windows do not tile it")
    chapters_of = defaultdict(list)
    for ch in chapters:
        chapters_of[ch["video_id"]].append(ch)
    for video_id, chs in chapters_of.items():
        chs.sort(key=lambda c: c["start_s"])
        for a, b in zip(chs, chs[1:]):
            if b["start_s"] < a["end_s"] - EPS:
                problems.append(f"video {video_id}: chapters {a['index']} and {b['index']} overlap")
    return {"captions_checked": len(captions), "violations": len(problems), "examples": problems[:10]}
