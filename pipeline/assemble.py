"""Assembly of a run's outputs from the committed per-video results: caption rows of every
level, shard samples (clips and chapters) and the counts of stats.json. Pure functions."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from stages.base import Stats
from stages.chapters import caption_id
from stages.structured import COLUMNS as STRUCTURED_COLUMNS


def window_caption(clip: dict, window: dict) -> dict:
    """The caption row of one window of a long clip (level ``window``, child of the clip caption)."""
    fields = json.loads(window["caption_fields"]) if window.get("caption_fields") else {}
    owner = f"{clip['clip_id']}:{window['start_frame']}-{window['end_frame']}"
    return {"caption_id": caption_id(owner, "window", clip["caption_model"], clip["caption_prompt_version"]),
            "video_id": clip["video_id"], "clip_id": clip["clip_id"], "chapter_id": clip.get("chapter_id"),
            "level": "window", "parent_id": clip["caption_id"], "start_s": window["start_s"],
            "end_s": window["end_s"], "text": window["caption_text"] or "", "model": clip["caption_model"],
            "prompt_version": clip["caption_prompt_version"], "generation": clip["caption_generation"],
            "parse_status": window.get("caption_parse_status"), **{k: fields.get(k) for k in STRUCTURED_COLUMNS},
            "events": absolute_events(fields.get("events"), window["start_s"])}


def absolute_events(events: list[dict] | None, start_s: float) -> list[dict]:
    """Clip- or window-relative event times (already clamped and ordered) -> absolute seconds."""
    return [{"start_s": start_s + e["t"], "text": e["text"]} for e in events or []]


def chapter_samples(chapters: list[dict], kept: list[dict], captions: list[dict], video_caption: dict) -> list[dict]:
    """Long-video samples (LVD-2M style): one per chapter, its whole span as one mp4, with every
    clip and window caption inside it (times relative to the chapter start)."""
    clip_of = {c["clip_id"]: c for c in kept}
    by_clip = defaultdict(list)
    for cap in captions:
        if cap["level"] in ("clip", "window"):
            by_clip[cap["clip_id"]].append(cap)
    samples = []
    for ch in sorted(chapters, key=lambda c: (c["video_id"], c["index"])):
        members = [clip_of[i] for i in ch["clip_ids"] if i in clip_of]
        if not members:
            continue
        first, last = members[0], members[-1]
        inner = sorted((cap for m in members for cap in by_clip[m["clip_id"]]),
                       key=lambda c: (c["start_s"], c["level"] != "clip"))
        samples.append({"key": ch["chapter_id"], "uri": first["uri"],
                        "clip": {"start_s": first["start_s"], "end_s": last["end_s"], "start_frame": first["start_frame"],
                                 "end_frame": last["end_frame"], "keyframe_aligned": False,
                                 "pts_timing": first["pts_timing"]},
                        "json": {"chapter_id": ch["chapter_id"], "video_id": ch["video_id"], "uri": first["uri"],
                                 "start_s": ch["start_s"], "end_s": ch["end_s"], "duration_s": ch["end_s"] - ch["start_s"],
                                 "title": ch["title"], "summary": ch["summary"], "source": ch["source"],
                                 "clip_ids": [m["clip_id"] for m in members],
                                 "captions": [{"level": cap["level"], "clip_id": cap["clip_id"],
                                               "start_s": cap["start_s"] - ch["start_s"],
                                               "end_s": cap["end_s"] - ch["start_s"], "text": cap["text"]}
                                              for cap in inner],
                                 "video_caption_id": video_caption.get(ch["video_id"])},
                        "txt": ch["summary"] or ""})
    return samples


def clip_sample(clip: dict, chapter: dict | None, video_caption: str | None) -> dict:
    caption = None
    if clip.get("caption_id"):
        caption = {"caption_id": clip["caption_id"], "text": clip["caption_text"],
                   "fields": json.loads(clip["caption_fields"]) if clip.get("caption_fields") else None,
                   "parse_status": clip.get("caption_parse_status"),
                   "model": clip["caption_model"], "prompt_version": clip["caption_prompt_version"],
                   "start_s": 0.0, "end_s": clip["duration_s"]}
    return {
        "clip_id": clip["clip_id"], "video_id": clip["video_id"], "uri": clip["uri"],
        "start_s": clip["start_s"], "end_s": clip["end_s"], "duration_s": clip["duration_s"],
        "scores": {k: clip[k] for k in ("motion", "sharpness", "brightness", "contrast", "black_fraction",
                                         "frozen_fraction", "letterbox", "dynamic_degree", "camera_motion",
                                         "clip_keep_sim", "clip_reject_sim")},
        "caption": caption,
        # the dense layer: captions of the clip's windows, times relative to the clip start
        "dense_captions": [{"start_s": w["start_s"] - clip["start_s"], "end_s": w["end_s"] - clip["start_s"],
                            "text": w["caption_text"],
                            "fields": json.loads(w["caption_fields"]) if w.get("caption_fields") else None}
                           for w in clip.get("windows") or []],
        "chapter": None if chapter is None else {k: chapter[k] for k in ("chapter_id", "index", "title",
                                                                          "start_s", "end_s")},
        "video_caption_id": video_caption,
    }


def run_stats(videos, clips, captions, shards) -> dict:
    analyze = Stats("analyze", total=len(videos), kept=sum(v["status"] == "ok" for v in videos))
    for v in videos:
        if v["status"] != "ok":
            analyze.drop(v["reason"])
    reasons = Counter(c["reason"] for c in clips if c["status"] == "rejected")
    shot_drops = {"too_short", "transition"}
    score_drops = {"low_motion", "high_motion", "blurry", "too_dark", "too_bright", "low_contrast",
                   "black_frames", "frozen", "letterboxed", "low_dynamic_degree"}
    after_shots = len(clips) - sum(n for r, n in reasons.items() if r in shot_drops)
    after_scores = after_shots - sum(n for r, n in reasons.items() if r in score_drops)
    after_clip = after_scores - sum(n for r, n in reasons.items() if r.startswith("clip_"))
    kept = sum(c["status"] == "kept" for c in clips)
    levels = Counter(c["level"] for c in captions)
    counts = {
        "videos_in": len(videos),
        "videos_ok": analyze.kept,
        "videos_rejected": sum(v["status"] == "rejected" for v in videos),
        "videos_error": sum(v["status"] == "error" for v in videos),
        "clips": len(clips),
        "clips_after_shots": after_shots,
        "clips_after_scores": after_scores,
        "clips_after_clip_filter": after_clip,
        "clips_kept": kept,
        "captions": dict(sorted(levels.items())),
        "clip_caption_parse": dict(sorted(Counter(c["parse_status"] for c in captions
                                                  if c["level"] == "clip" and c.get("parse_status")).items())),
        "chapters": levels.get("chapter", 0),
        "shards": len(shards),
        "samples": sum(s["samples"] for s in shards),
    }
    video_reasons = analyze.as_dict()
    video_reasons.pop("seconds")
    return {"counts": counts, "video_reasons": video_reasons, "clip_reasons": dict(sorted(reasons.items()))}
