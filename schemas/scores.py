"""Every per-clip score, declared once: its column, the stage that measures it, its scale and
the thresholds that decide on it.

What is derived from this table (nothing else names the scores one by one):
- the score columns of the clips table (``schemas.CLIPS``) and their provenance columns;
- the clip reasons and the spec key behind each (``stages.base.CLIP_REASONS``,
  ``CLIP_REASON_SETTINGS``), and so the docs' reason table;
- the decision (``stages.decide``): scores in table order, each threshold in its order, the
  first failed one is the clip's reason;
- the funnel groups of the run summary (``group``: the spec section of the threshold);
- the report's histograms, with a line at each set threshold.

Adding a score: one ``Score`` row here, the stage module that measures it, its spec keys.
The table lives in ``schemas`` (the lowest layer) so that stages, which build clip rows with
these columns, read it without reaching up into ``pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa


@dataclass(frozen=True)
class Threshold:
    """A spec key (``section.min_x`` or ``section.max_x``) that drops a clip with ``reason``.
    ``min_``: dropped below it; ``max_``: dropped above it. ``missing_fails``: a score that
    could not be measured (NaN or null on a clip the stage measured) fails it."""

    key: str
    reason: str
    missing_fails: bool = False

    @property
    def bound(self) -> str:
        name = self.key.rsplit(".", 1)[-1]
        if name.startswith("min_"):
            return "min"
        if name.startswith("max_"):
            return "max"
        raise ValueError(f"threshold {self.key}: its name must start with min_ or max_")

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    def fails(self, value: float, limit: float) -> bool:
        if value != value:  # NaN
            return self.missing_fails
        return value < limit if self.bound == "min" else value > limit


@dataclass(frozen=True)
class Score:
    """One per-clip score. ``type``: its column's Arrow type, None for a score derived from
    other columns by ``derive`` (it has no column of its own). ``stage``: the stage measuring
    it. ``measured_by``: a column set on each clip the stage measured (its model id); clips
    without it are not judged on this score (the stage is off, or has not run yet). None: every
    clip the cut keeps is measured (the analysis). ``provenance``: a column to add beside the
    score (the model that made it). ``scale``: (low, high, log) of the report's histogram."""

    name: str
    type: Optional[pa.DataType]
    stage: str
    title: str
    scale: tuple[float, float, bool]
    thresholds: tuple[Threshold, ...] = ()
    measured_by: Optional[str] = None
    provenance: Optional[str] = None
    derive: Optional[Callable[[dict], Optional[float]]] = None

    def value(self, clip: dict) -> float:
        """The clip's score as a float (NaN when it is null)."""
        x = self.derive(clip) if self.derive is not None else clip.get(self.name)
        return float("nan") if x is None else float(x)

    def measured(self, clip: dict) -> bool:
        return self.measured_by is None or clip.get(self.measured_by) is not None


def _reject_margin(clip: dict) -> Optional[float]:
    keep, reject = clip.get("clip_keep_sim"), clip.get("clip_reject_sim")
    return None if keep is None or reject is None else reject - keep


def _min(key: str, reason: str, missing_fails: bool = False) -> Threshold:
    return Threshold(key, reason, missing_fails)


_max = _min

SCORES: tuple[Score, ...] = (
    # the analysis (stages.scores, stages.signals): measured for every clip the cut keeps
    Score("motion", pa.float32(), "analyze", "motion (px/frame at flow width)", (1e-3, 100.0, True),
          (_min("scores.min_motion", "low_motion", True), _max("scores.max_motion", "high_motion"))),
    Score("sharpness", pa.float32(), "analyze", "sharpness (Laplacian variance)", (1.0, 1e5, True),
          (_min("scores.min_sharpness", "blurry", True),)),
    Score("brightness", pa.float32(), "analyze", "brightness (0-255)", (0.0, 255.0, False),
          (_min("scores.min_brightness", "too_dark"), _max("scores.max_brightness", "too_bright"))),
    Score("contrast", pa.float32(), "analyze", "contrast (luma std)", (0.0, 128.0, False),
          (_min("scores.min_contrast", "low_contrast"),)),
    Score("black_fraction", pa.float32(), "analyze", "black frames (fraction)", (0.0, 1.0, False),
          (_max("scores.max_black_fraction", "black_frames"),)),
    Score("frozen_fraction", pa.float32(), "analyze", "frozen frames (fraction)", (0.0, 1.0, False),
          (_max("scores.max_frozen_fraction", "frozen"),)),
    Score("letterbox", pa.float32(), "analyze", "letterbox bars (fraction)", (0.0, 1.0, False),
          (_max("scores.max_letterbox", "letterboxed"),)),
    Score("dynamic_degree", pa.float32(), "analyze", "dynamic degree", (0.0, 1.0, False),
          (_min("scores.min_dynamic_degree", "low_dynamic_degree", True),)),
    # the CLIP stage (stages.embed): prompt similarities of the clip's mean image embedding
    Score("clip_reject_margin", None, "clip", "CLIP reject-minus-keep similarity", (-1.0, 1.0, False),
          (_max("clip_filter.max_reject_margin", "clip_reject_prompt"),), measured_by="clip_keep_sim",
          derive=_reject_margin),
    Score("clip_keep_sim", pa.float32(), "clip", "CLIP keep-prompt similarity", (-1.0, 1.0, False),
          (_min("clip_filter.min_keep_sim", "clip_low_keep_sim"),), measured_by="clip_keep_sim"),
    # the LAION aesthetic head beside the CLIP model (stages.aesthetic): the least aesthetic frame
    Score("aesthetic", pa.float32(), "clip", "aesthetic (LAION predictor, least aesthetic frame)",
          (0.0, 10.0, False), (_min("scores.min_aesthetic", "low_aesthetic", True),),
          measured_by="aesthetic_model", provenance="aesthetic_model"),
    # on-screen text that persists over the sampled frames (stages.ocr, PP-OCRv4 detection)
    Score("text_area", pa.float32(), "text", "on-screen text (share of the frame)", (0.0, 1.0, False),
          (_max("scores.max_text_area", "text_overlay"),), measured_by="text_model", provenance="text_model"),
    # the clip caption against the clip's image embedding, by CLIP (stages.fit, after captioning)
    Score("caption_clip_sim", pa.float32(), "caption_fit", "caption-clip fit (CLIP text-image cosine)",
          (-1.0, 1.0, False), (_min("scores.min_caption_clip_sim", "caption_mismatch"),),
          measured_by="caption_fit_model", provenance="caption_fit_model"),
)

BY_NAME: dict[str, Score] = {s.name: s for s in SCORES}


def thresholds() -> list[tuple[Score, Threshold]]:
    """Every (score, threshold) in decision order."""
    return [(s, t) for s in SCORES for t in s.thresholds]


def score_fields() -> list[pa.Field]:
    """The clips table's score and provenance columns, in table order."""
    fields = []
    for s in SCORES:
        if s.type is not None:
            fields.append(pa.field(s.name, s.type))
        if s.provenance:
            fields.append(pa.field(s.provenance, pa.string()))
    return fields


def _check() -> None:
    reasons = [t.reason for _, t in thresholds()]
    keys = [t.key for _, t in thresholds()]
    if len(set(reasons)) != len(reasons) or len(set(keys)) != len(keys):
        raise ValueError("schemas.scores: a reason or a threshold key is declared twice")
    for s, t in thresholds():
        t.bound  # noqa: B018 (raises on a key that is neither min_ nor max_)
        if (s.type is None) == (s.derive is None):
            raise ValueError(f"schemas.scores: {s.name} needs a column type or a derive function, not both")


_check()
