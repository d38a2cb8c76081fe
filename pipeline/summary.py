"""Per-partition statistics that merge exactly: counts, drop reasons, caption checks, score
histograms on fixed bins, and a bounded, deterministic sample of what the report pictures.

Each partition writer summarises its own rows; the driver merges the summaries (in partition
order) into stats.json and the report, never reading the tables themselves. Histogram bins
are fixed per score (not fitted to the data), so merging is adding counts.
"""

from __future__ import annotations

import copy
import json
import math

from pipeline.assemble import run_stats
from schemas.scores import BY_NAME as SCORE_BY_NAME
from schemas.scores import SCORES

BINS = 512
# score -> (low, high, log scale): the range of its fixed bins (declared in schemas.scores); values
# outside fall in the end bins
SCALES = {**{s.name: s.scale for s in SCORES}, "duration_s": (0.01, 3600.0, True)}
PER_GROUP = 8  # contact-sheet clips per group (kept, or a drop reason)
VIDEOS = 20  # videos drawn as timelines
REJECTED = 50  # rejected inputs listed by name


def position(column: str, x: float) -> float:
    """Where ``x`` falls on the column's bins, in bins from the low end (fractional)."""
    lo, hi, log = SCALES[column]
    if log:
        lo, hi, x = math.log10(lo), math.log10(hi), math.log10(max(x, lo))
    return (x - lo) / (hi - lo) * BINS


def bin_of(column: str, x: float) -> int:
    return min(BINS - 1, max(0, int(position(column, x))))


def bin_edge(column: str, i: int) -> float:
    """The value at the lower edge of bin ``i`` (``BINS``: the upper end)."""
    lo, hi, log = SCALES[column]
    if log:
        return 10 ** (math.log10(lo) + (math.log10(hi) - math.log10(lo)) * i / BINS)
    return lo + (hi - lo) * i / BINS


def histograms(clips: list[dict]) -> dict:
    """{column: {"kept": {bin: n}, "dropped": {bin: n}}} over the finite values (sparse)."""
    out = {}
    for column in SCALES:
        h = {"kept": {}, "dropped": {}}
        score = SCORE_BY_NAME.get(column)
        for c in clips:
            if score is not None and not score.measured(c):
                continue
            x = score.value(c) if score is not None else c.get(column)
            if isinstance(x, (int, float)) and math.isfinite(x):
                side = h["kept" if c["status"] == "kept" else "dropped"]
                b = str(bin_of(column, x))
                side[b] = side.get(b, 0) + 1
        out[column] = h
    return out


def _ref(c: dict) -> dict:
    return {k: c[k] for k in ("clip_id", "video_id", "uri", "start_s", "end_s")}


def partition_summary(partition: int, units: dict[str, str], tables: dict[str, list[dict]], shards: list[dict],
                      checks: dict, entities: dict) -> dict:
    """What the driver needs of one partition: merged counts and a bounded sample.
    ``units``: video_id -> unit_id of the partition's videos."""
    videos, clips = tables["videos"], tables["clips"]
    stats = run_stats(videos, clips, tables["captions"], shards)
    stats["caption_checks"] = checks
    stats["entity_naming"] = {}
    for e in entities.values():
        stats["entity_naming"][e["status"]] = stats["entity_naming"].get(e["status"], 0) + 1
    groups: dict[str, list[dict]] = {}
    for c in clips:
        group = groups.setdefault("kept" if c["status"] == "kept" else c["reason"], [])
        if len(group) < PER_GROUP:
            group.append({**_ref(c), "unit_id": units[c["video_id"]], "partition": partition})
    accepted = [v for v in videos if v["status"] == "ok"][:VIDEOS]
    rejected = [v for v in videos if v["status"] != "ok"]
    sample = {
        "groups": groups,
        "videos": [{"video_id": v["video_id"], "unit_id": units[v["video_id"]], "partition": partition}
                   for v in accepted],
        "rejected": [{"uri": v["uri"], "status": v["status"], "reason": v["reason"],
                      "message": (v.get("message") or "")[:200]} for v in rejected[:REJECTED]],
    }
    return {"stats": stats, "histograms": histograms(clips), "sample": sample}


def _add(a, b):
    """Counts add; mappings merge key by key; lists concatenate; other values keep the first."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _add(out[k], v) if k in out else v
        return out
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    return a


def merge(summaries: list[dict]) -> dict:
    """The summaries of every partition (in partition order) as one; samples cut to their bounds."""
    out: dict = {}
    for s in summaries:
        out = _add(out, s) if out else copy.deepcopy(s)
    if not out:
        out = {"stats": run_stats([], [], [], []), "histograms": histograms([]),
               "sample": {"groups": {}, "videos": [], "rejected": []}}
        out["stats"].update(caption_checks={"captions_checked": 0, "violations": 0, "examples": []}, entity_naming={})
    out["stats"]["caption_checks"]["examples"] = out["stats"]["caption_checks"]["examples"][:10]
    sample = out["sample"]
    sample["groups"] = {g: refs[:PER_GROUP] for g, refs in sample["groups"].items()}
    sample["videos"] = sample["videos"][:VIDEOS]
    sample["rejected"] = sample["rejected"][:REJECTED]
    for name in ("entity_naming", "clip_reasons"):
        out["stats"][name] = dict(sorted(out["stats"][name].items()))
    return out


LOPSIDED = 0.5  # a filter that drops more than this share of the clips is called out


def _setting(spec: dict, dotted: str | None):
    node = spec
    for key in (dotted or "").split(".") if dotted else ():
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _reason_line(reason: str, n: int, clips: int, spec: dict) -> str:
    from stages.base import CLIP_REASON_SETTINGS

    key = CLIP_REASON_SETTINGS.get(reason)
    why = f" ({key}: {json.dumps(_setting(spec, key))})" if key else ""
    return f"{reason} dropped {n} of {clips} clips{why}"


def lopsided(stats: dict, spec: dict) -> list[str]:
    """One line per filter that dropped more than half of the clips, naming its setting and value."""
    clips = stats["counts"]["clips"]
    return [_reason_line(r, n, clips, spec) for r, n in sorted(stats["clip_reasons"].items(), key=lambda x: (-x[1], x[0]))
            if clips and n > LOPSIDED * clips]


def empty_result(stats: dict, spec: dict) -> str | None:
    """Why a run kept no clip, in one line (None when it kept some): the filter that dropped the
    most, with its setting; or the inputs' reasons when no video was accepted."""
    c = stats["counts"]
    if c["clips_kept"]:
        return None
    if not c["videos_in"]:
        return "no clip kept: no input video"
    if not c["videos_ok"]:
        drops = sorted(((k[len("dropped_"):], v) for k, v in stats["video_reasons"].items()
                        if k.startswith("dropped_")), key=lambda x: (-x[1], x[0]))
        return (f"no clip kept: none of the {c['videos_in']} input videos was accepted ("
                + ", ".join(f"{n} {r}" for r, n in drops) + "; the videos table has each one's reason and message)")
    if not c["clips"]:
        return f"no clip kept: the {c['videos_ok']} accepted videos gave no clips (shots.min_clip_s: " \
               f"{json.dumps(_setting(spec, 'shots.min_clip_s'))})"
    reason, n = sorted(stats["clip_reasons"].items(), key=lambda x: (-x[1], x[0]))[0]
    return "no clip kept: " + _reason_line(reason, n, c["clips"], spec)
