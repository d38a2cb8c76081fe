"""Decide: a clip's fate from what was measured and the spec's thresholds. Pure and cheap.

The stages measure: analysis records every clip's scores, the CLIP stage its prompt
similarities, and they reject only what the cut itself rules out (``too_short``,
``transition``). Thresholds (``scores.*``, ``clip_filter.max_reject_margin`` and
``min_keep_sim``) shape nothing but this step, so moving one re-decides from committed scores:
no decode, no model call for a clip that was measured already. Committed per-video results
always hold the measured rows; a decision is applied to copies wherever a stage needs it (which
clips to caption, which clips a video's hierarchy spans) and when a partition is written.
"""

from __future__ import annotations

from stages.aesthetic import aesthetic_reason
from stages.scores import score_reason

NAN = float("nan")
SCORED = ("motion", "sharpness", "brightness", "contrast", "black_fraction", "frozen_fraction", "letterbox",
          "dynamic_degree")

# The thresholds that decide (spec keys): hashed into the "decide" fingerprint, never into a
# stage's, so no committed measurement depends on them.
THRESHOLDS = ("scores", "clip_filter.max_reject_margin", "clip_filter.min_keep_sim")


def clip_reason(keep_sim: float, reject_sim: float, *, max_reject_margin, min_keep_sim) -> str | None:
    """The CLIP filter's reason for a clip's similarities, or None when it passes."""
    if max_reject_margin is not None and reject_sim - keep_sim > max_reject_margin:
        return "clip_reject_prompt"
    if min_keep_sim is not None and keep_sim < min_keep_sim:
        return "clip_low_keep_sim"
    return None


def reason(clip: dict, scores, clip_filter) -> str | None:
    """Why ``clip`` is dropped (None: kept). Its cut's own reason first (the measured row's
    ``reason``, e.g. too_short), then the first failed score threshold, then the CLIP filter
    (clips the CLIP stage has not measured yet are not judged on it)."""
    if clip["status"] != "kept":
        return clip["reason"]
    # a score the analysis could not measure is stored as null and judged as NaN, as measured
    why = score_reason({k: NAN if clip.get(k) is None else clip[k] for k in SCORED}, scores)
    if why is None and clip.get("clip_keep_sim") is not None:
        why = clip_reason(clip["clip_keep_sim"], clip["clip_reject_sim"],
                          max_reject_margin=clip_filter.max_reject_margin, min_keep_sim=clip_filter.min_keep_sim)
    if why is None and clip.get("aesthetic_model") and getattr(scores, "min_aesthetic", None) is not None:
        why = aesthetic_reason(NAN if clip.get("aesthetic") is None else clip["aesthetic"], scores.min_aesthetic)
    return why


def decided(clips: list[dict], spec) -> list[dict]:
    """Copies of measured clip rows with ``status`` and ``reason`` as the spec's thresholds decide."""
    out = []
    for c in clips:
        why = reason(c, spec.scores, spec.clip_filter)
        out.append({**c, "status": "rejected" if why else "kept", "reason": why})
    return out


def kept_ids(clips: list[dict], spec) -> list[str]:
    """The ids of the clips the thresholds keep, in row order."""
    return [c["clip_id"] for c in clips if reason(c, spec.scores, spec.clip_filter) is None]
