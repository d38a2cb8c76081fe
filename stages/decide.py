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

from schemas.scores import SCORES, Threshold

# The thresholds that decide (spec keys): hashed into the "decide" fingerprint, never into a
# stage's, so no committed measurement depends on them. Every key schemas.scores declares lies
# under one of these.
THRESHOLDS = ("scores", "clip_filter.max_reject_margin", "clip_filter.min_keep_sim")


def limit_of(threshold: Threshold, settings) -> float | None:
    """The threshold's value in ``settings`` (the spec, or a view of its sections), None: off."""
    node = settings
    for part in threshold.key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node is None:
            return None
    return node


def reason(clip: dict, settings) -> str | None:
    """Why ``clip`` is dropped (None: kept): its cut's own reason first (the measured row's
    ``reason``, e.g. too_short), then the first failed threshold in schemas.scores' order. A
    score is judged only on clips its stage measured (a clip the CLIP stage has not reached yet
    is not judged on CLIP's scores)."""
    if clip["status"] != "kept":
        return clip["reason"]
    for score in SCORES:
        if not score.measured(clip):
            continue
        value = None
        for threshold in score.thresholds:
            limit = limit_of(threshold, settings)
            if limit is None:
                continue
            value = score.value(clip) if value is None else value
            if threshold.fails(value, limit):
                return threshold.reason
    return None


def decided(clips: list[dict], spec) -> list[dict]:
    """Copies of measured clip rows with ``status`` and ``reason`` as the spec's thresholds decide."""
    out = []
    for c in clips:
        why = reason(c, spec)
        out.append({**c, "status": "rejected" if why else "kept", "reason": why})
    return out


def kept_ids(clips: list[dict], spec) -> list[str]:
    """The ids of the clips the thresholds keep, in row order."""
    return [c["clip_id"] for c in clips if reason(c, spec) is None]
