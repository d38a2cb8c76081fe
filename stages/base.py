"""Shared pieces of every stage: ids, stats, JPEG helpers, rejection reasons."""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field

from schemas.scores import thresholds

# Reasons a video ends without clips (videos.reason). Documented in the README.
VIDEO_REASONS = (
    "not_found", "not_a_file", "empty_file", "file_too_large", "not_a_video", "unsupported_format",
    "no_video_stream", "unsupported_codec", "resolution_out_of_bounds", "too_long", "no_frames",
    "truncated", "corrupt_stream", "missing_timestamps", "timeout", "memory_limit", "decoder_crash",
    "decode_error", "no_clips",
)
# Reasons a clip is dropped (clips.reason): the cut's own, every declared threshold's
# (schemas.scores), and the writer's.
CUT_REASONS = ("too_short", "transition")
CLIP_REASONS = (*CUT_REASONS, *(t.reason for _, t in thresholds()), "extract_error")
# The spec key whose threshold drops a clip with each reason (None: no single threshold decides it).
CLIP_REASON_SETTINGS = {"too_short": "shots.min_clip_s", "transition": None,
                        **{t.reason: t.key for _, t in thresholds()}, "extract_error": None}


class Rejected(Exception):
    """A video that cannot be used: carries one of VIDEO_REASONS and the decoder's message."""

    def __init__(self, reason: str, message: str = ""):
        assert reason in VIDEO_REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def stable_id(*parts) -> str:
    """16 hex chars from the parts; the same parts always give the same id (no dots)."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:16]


def video_id(uri: str, size_or_etag) -> str:
    return stable_id("video", uri, size_or_etag)


def clip_id(vid: str, start_frame: int, end_frame: int, fingerprint: str = "") -> str:
    """The clip's id and sample key: its video, frame range and the fingerprint of the settings
    that cut it (spec.fingerprints()["analyze"])."""
    return stable_id("clip", vid, start_frame, end_frame, fingerprint)


@dataclass
class Stats:
    """Per-stage counters that merge with ``+`` across workers."""

    stage: str
    total: int = 0
    kept: int = 0
    seconds: float = 0.0
    dropped: dict = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def __add__(self, other: "Stats") -> "Stats":
        assert self.stage == other.stage
        merged = dict(self.dropped)
        for k, v in other.dropped.items():
            merged[k] = merged.get(k, 0) + v
        return Stats(self.stage, self.total + other.total, self.kept + other.kept,
                     self.seconds + other.seconds, merged)

    def as_dict(self) -> dict:
        out = {"stage": self.stage, "total": self.total, "kept": self.kept, "seconds": round(self.seconds, 3)}
        out.update({f"dropped_{k}": v for k, v in sorted(self.dropped.items())})
        return out


def decode_jpegs(blobs) -> list:
    """JPEG bytes -> list of RGB PIL images."""
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]


def subsample(items: list, k: int) -> list:
    """k items evenly spread over the list (all of them when there are fewer)."""
    if len(items) <= k:
        return list(items)
    step = len(items) / k
    return [items[int(i * step + step / 2)] for i in range(k)]


def clean_text(text: str) -> str:
    """Drop control characters a model may emit; keep newlines and tabs."""
    return "".join(ch for ch in text if ch.isprintable() or ch in "\n\t").strip()


class ModelStage(abc.ABC):
    """Base of the actor stages: cheap, picklable settings in ``__init__``; the model loads in
    ``setup()`` on the first batch, inside the Ray actor, never on the driver."""

    def __init__(self, *, model, settings):
        self.model_cfg = model
        self.settings = settings
        self._ready = False

    @abc.abstractmethod
    def setup(self) -> None:
        """Load the model (inside the actor)."""

    @abc.abstractmethod
    def process(self, batch):
        """One batch (a pyarrow table) in, the same rows with the stage's columns out."""

    def ensure_ready(self) -> None:
        """Load the model once, on first use."""
        if not self._ready:
            self.setup()
            self._ready = True

    def __call__(self, batch):
        self.ensure_ready()
        return self.process(batch)
