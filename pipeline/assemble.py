"""Assembly of a partition's outputs from the committed per-video results: the rows of every
table, caption rows of every level, entity names, shard samples (clips and chapters) and the
counts of stats.json. Pure functions over plain rows, in the order the partition writer
(pipeline.writer) applies them."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from schemas.scores import thresholds
from stages.base import CUT_REASONS, Stats
from stages.chapters import caption_id
from stages.entities import renamer
from stages.structured import COLUMNS as STRUCTURED_COLUMNS


LEVEL_ORDER = {"video": 0, "chapter": 1, "clip": 2, "window": 3}


def join_results(results: list[tuple[dict, list[dict], dict]]) -> dict:
    """The per-video results (videos row, clip rows, hierarchy result) of a partition -> its rows:
    videos, clips (in (uri, start_frame) order, with their clip caption ids), kept clips,
    chapters, chapter and video captions, and each video's entity names."""
    videos = [dict(v) for v, _, _ in results]
    clips = sorted((dict(c) for _, cs, _ in results for c in cs), key=lambda r: (r["uri"], r["start_frame"]))
    for c in clips:
        if c.get("caption_text") is not None:
            c["caption_id"] = caption_id(c["clip_id"], "clip", c["caption_model"], c["caption_prompt_version"])
    chapters, captions, entities = [], [], {}
    for video, _, hierarchy in results:
        chapters.extend(hierarchy["chapters"])
        captions.extend(hierarchy["captions"])
        if hierarchy["entities"] is not None:
            entities[video["video_id"]] = hierarchy["entities"]
    return {"videos": videos, "clips": clips, "kept": [c for c in clips if c["status"] == "kept"],
            "chapters": chapters, "captions": captions, "entities": entities}


def apply_drops(rows: dict, drops: dict[str, str]) -> None:
    """Clips a dataset-level stage dropped ({clip_id: reason}) are rejected with that reason."""
    for c in rows["clips"]:
        if c["status"] == "kept" and c["clip_id"] in drops:
            c.update(status="rejected", reason=drops[c["clip_id"]])
    rows["kept"] = [c for c in rows["clips"] if c["status"] == "kept"]


def link_hierarchy(rows: dict) -> None:
    """Each kept clip gets its chapter id, each video its video caption id, and the clip and
    window caption rows join the chapter and video captions (children point at parents)."""
    chapter_of = {cid: ch for ch in rows["chapters"] for cid in ch["clip_ids"]}
    video_caption = {c["video_id"]: c["caption_id"] for c in rows["captions"] if c["level"] == "video"}
    for v in rows["videos"]:
        v["caption_id"] = video_caption.get(v["video_id"])
    for c in rows["kept"]:
        ch = chapter_of.get(c["clip_id"])
        c["chapter_id"] = ch["chapter_id"] if ch else None
        if c.get("caption_id"):
            rows["captions"].append(clip_caption(c, ch))
            rows["captions"].extend(window_caption(c, w) for w in c.get("windows") or [])
    for c in rows["clips"]:  # dropped for its caption (caption_mismatch): the caption stays, marked
        if c["status"] != "kept" and c.get("caption_id"):
            rows["captions"].append({**clip_caption({**c, "chapter_id": None}, None), "dropped": c["reason"]})
            rows["captions"].extend({**window_caption(c, w), "dropped": c["reason"]}
                                    for w in c.get("windows") or [])
    rows["chapter_of"], rows["video_caption"] = chapter_of, video_caption


def clip_caption(clip: dict, chapter: dict | None) -> dict:
    """The caption row of a kept clip (level ``clip``, child of its chapter's caption)."""
    fields = json.loads(clip["caption_fields"]) if clip.get("caption_fields") else {}
    return {"caption_id": clip["caption_id"], "video_id": clip["video_id"], "clip_id": clip["clip_id"],
            "chapter_id": clip["chapter_id"], "level": "clip",
            "parent_id": chapter["caption_id"] if chapter else None, "start_s": clip["start_s"],
            "end_s": clip["end_s"], "text": clip["caption_text"], "model": clip["caption_model"],
            "prompt_version": clip["caption_prompt_version"], "generation": clip["caption_generation"],
            "parse_status": clip.get("caption_parse_status"), **{k: fields.get(k) for k in STRUCTURED_COLUMNS},
            "events": absolute_events(fields.get("events"), clip["start_s"])}


def apply_entity_names(rows: dict) -> None:
    """Recurring people and objects get one name across a video's clip and window captions, in
    the caption rows and in the kept clips (the shards carry the renamed texts too)."""
    renamers = {vid: renamer(e["entities"]) for vid, e in rows["entities"].items() if e["status"] == "ok"}
    for cap in rows["captions"]:
        cap["duration_s"] = cap["end_s"] - cap["start_s"]
        if cap["level"] in ("clip", "window") and cap["video_id"] in renamers:
            cap["text"], cap["entities"] = renamers[cap["video_id"]](cap["text"])
    for c in rows["kept"]:
        if c["video_id"] in renamers and c.get("caption_text") is not None:
            c["caption_text"], _ = renamers[c["video_id"]](c["caption_text"])
            for w in c.get("windows") or []:
                w["caption_text"], _ = renamers[c["video_id"]](w["caption_text"])


def shard_samples(rows: dict, per: int, shard_name) -> list[dict]:
    """The kept clips, in order, as shard samples; clip n goes to shard ``shard_name(n // per)``
    (recorded in the clip's row with its sample key)."""
    samples = []
    for n, c in enumerate(rows["kept"]):
        c["shard"], c["key"] = shard_name(n // per), c["clip_id"]
        samples.append({"key": c["key"], "uri": c["uri"],
                        "clip": {k: c[k] for k in ("start_s", "end_s", "start_frame", "end_frame",
                                                   "keyframe_aligned", "pts_timing")},
                        "json": clip_sample(c, rows["chapter_of"].get(c["clip_id"]),
                                            rows["video_caption"].get(c["video_id"])),
                        "txt": c.get("caption_text") or ""})
    return samples


def apply_extraction(rows: dict, methods: dict[str, str], failed: dict[str, str]) -> None:
    """How each sample's bytes were made (copy or encode); clips whose bytes could not be cut are
    rejected with ``extract_error`` and leave their shard."""
    for c in rows["kept"]:
        c["extract_method"] = methods.get(c["clip_id"])
        if c["clip_id"] in failed:
            c.update(status="rejected", reason="extract_error", shard=None, key=None)


def sorted_tables(rows: dict) -> dict[str, list[dict]]:
    """The four tables' rows in their written order."""
    return {"videos": rows["videos"], "clips": rows["clips"],
            "captions": sorted(rows["captions"], key=lambda c: (c["video_id"], LEVEL_ORDER[c["level"]], c["start_s"])),
            "chapters": sorted(rows["chapters"], key=lambda c: (c["video_id"], c["index"]))}


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


# How chapter samples get their bytes (hashed into the output fingerprint): a chapter of one
# clip spans exactly that clip, so its sample takes the clip sample's bytes (``from_clip``)
# instead of a second cut from the source.
CHAPTER_BYTES = "one-clip chapters reuse the clip sample's bytes"


def chapter_samples(chapters: list[dict], kept: list[dict], captions: list[dict], video_caption: dict) -> list[dict]:
    """Long-video samples (LVD-2M style): one per chapter, its whole span as one mp4, with every
    clip and window caption inside it (times relative to the chapter start). A chapter of one
    clip names it in ``from_clip``: its span is that clip's, and so are its bytes."""
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
                        "txt": ch["summary"] or "",
                        **({"from_clip": first["clip_id"]} if len(members) == 1 else {})})
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
    # the funnel's groups: the cut's rules, then the thresholds by spec section (schemas.scores),
    # then those on scores measured after captioning (the caption's own fit)
    shot_drops = set(CUT_REASONS)
    late = {t.reason for s, t in thresholds() if s.stage == "caption_fit"}
    score_drops = {t.reason for _, t in thresholds() if t.section == "scores"} - late
    clip_drops = {t.reason for _, t in thresholds() if t.section == "clip_filter"} - late
    after_shots = len(clips) - sum(n for r, n in reasons.items() if r in shot_drops)
    after_scores = after_shots - sum(n for r, n in reasons.items() if r in score_drops)
    after_clip = after_scores - sum(n for r, n in reasons.items() if r in clip_drops)
    after_fit = after_clip - sum(n for r, n in reasons.items() if r in late)
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
        "clips_after_caption_fit": after_fit,
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
