"""Shots: the shot-boundary detectors fed from the single analysis pass, and clip assembly.

``boundary_detector`` picks the detector named by spec.shots.detector: vidcurate's own
(stages.boundaries), TransNetV2 (stages.transnet), both merged, or one of PySceneDetect's.
All see the small BGR frames the analysis pass already has, so shot detection costs no extra
decode. Clip assembly is pure: boundaries -> shots and transitions -> clips with min/max length,
edge trimming and windows for over-long shots. Reads: frames. Adds: start_frame, end_frame,
status, reason. Resources: runs inside the analyze task (CPU).
"""

from __future__ import annotations

import math
from array import array

from stages.boundaries import BoundaryDetector, ContentScore


class ShotDetector:
    """Wraps one PySceneDetect detector; feed frames in order, then call ``finish``.

    The content detector (the default) scores frames with whole-image OpenCV operations instead
    of PySceneDetect's per-channel NumPy code: the same score to the last bit (HSV conversion,
    mean absolute difference per channel, equal weights) in about a third of the time, and the
    cut decisions still come from PySceneDetect's own ``FlashFilter``. A test checks the cuts
    and scores against ``scenedetect.detectors.ContentDetector`` on real footage.
    """

    def __init__(self, *, detector: str = "content", threshold: float | None = None,
                 min_scene_len: int = 15, fps: float = 25.0, keep_scores: bool = False):
        from scenedetect.detector import FlashFilter
        from scenedetect.detectors import AdaptiveDetector, ThresholdDetector

        kwargs = {"min_scene_len": min_scene_len}
        self._det = None
        if detector == "content":
            self.threshold = float(threshold or ContentScore.default_threshold())
            self._filter = FlashFilter(mode=FlashFilter.Mode.MERGE, length=min_scene_len)
            self._score = ContentScore()
        elif detector == "adaptive":
            self._det = AdaptiveDetector(**kwargs, **({"adaptive_threshold": threshold} if threshold else {}))
        elif detector == "threshold":
            self._det = ThresholdDetector(**kwargs, **({"threshold": threshold} if threshold else {}))
        else:
            raise ValueError(f"shots.detector: unknown detector {detector!r}")
        self.fps = float(fps or 25.0)
        self.cuts: set[int] = set()
        self.keep_scores = keep_scores
        self.scores = array("d")  # with keep_scores, content detector: the per-frame score (0 for frame 0)
        self._last = 0

    def _timecode(self, index: int):
        from scenedetect import FrameTimecode

        return FrameTimecode(index, self.fps)

    def feed(self, index: int, bgr) -> None:
        self._last = index
        if self._det is not None:
            found = self._det.process_frame(self._timecode(index), bgr)
        else:
            found = self._filter.filter(self._timecode(index), self._content_score(bgr) >= self.threshold)
        for tc in found:
            self.cuts.add(int(tc.frame_num))

    def _content_score(self, bgr) -> float:
        score = self._score(bgr)
        if self.keep_scores:
            self.scores.append(score)
        return score

    def finish(self) -> list[int]:
        if self._det is not None:
            for tc in self._det.post_process(self._timecode(self._last)):
                self.cuts.add(int(tc.frame_num))
        return sorted(c for c in self.cuts if 0 < c <= self._last)


class _PySceneDetect:
    prepare = None  # nothing made ahead of ``feed``

    def __init__(self, shots, fps):
        self.det = ShotDetector(detector=shots.detector, threshold=shots.threshold,
                                min_scene_len=shots.min_scene_len, fps=fps)

    def feed(self, index, bgr, contrast, warp_residual, prepared=None) -> None:
        self.det.feed(index, bgr)

    def finish(self) -> list[dict]:
        return [{"type": "cut", "start": c, "end": c} for c in self.det.finish()]


class _Vidcurate:
    prepare = staticmethod(BoundaryDetector.prepare)

    def __init__(self, shots, fps):
        self.det = BoundaryDetector(shots)

    def feed(self, index, bgr, contrast, warp_residual, prepared=None) -> None:
        self.det.feed(index, bgr, contrast, warp_residual, prepared)

    def finish(self) -> list[dict]:
        return self.det.finish()


class _TransNet:
    """TransNetV2 on 48x27 frames made from the pass's small frames (no second decode)."""

    prepare = None

    def __init__(self, shots, weights):
        from stages import transnet

        self.threshold = shots.transnet_threshold
        self.stream = transnet.TransNetStream(transnet.load(weights))

    def feed(self, index, bgr, contrast, warp_residual, prepared=None) -> None:
        import cv2

        small = cv2.resize(bgr, (48, 27), interpolation=cv2.INTER_AREA)
        self.stream.feed(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))

    def finish(self) -> list[dict]:
        from stages import transnet

        single, _ = self.stream.finish()
        return transnet.boundaries(single, self.threshold)


class _Both:
    """vidcurate's boundaries, plus TransNetV2's where vidcurate has none within 2 frames."""

    def __init__(self, *detectors):
        self.detectors = detectors
        self._first = detectors[0].prepare  # what the first detector makes ahead, if anything

    def prepare(self, bgr):
        return self._first(bgr) if self._first else None

    def feed(self, index, bgr, contrast, warp_residual, prepared=None) -> None:
        for k, d in enumerate(self.detectors):
            d.feed(index, bgr, contrast, warp_residual, prepared if k == 0 else None)

    def finish(self) -> list[dict]:
        first, *rest = (d.finish() for d in self.detectors)
        out = list(first)
        for extra in rest:
            out += [b for b in extra
                    if not any(o["start"] - 2 <= b["end"] and b["start"] <= o["end"] + 2 for o in out)]
        return sorted(out, key=lambda b: b["start"])


def boundary_detector(shots, fps: float, transnet_weights: str | None = None):
    """The shot-boundary detector named by spec.shots.detector, fed from the analysis pass."""
    if shots.detector in ("content", "adaptive", "threshold"):
        return _PySceneDetect(shots, fps)
    if shots.detector == "vidcurate":
        return _Vidcurate(shots, fps)
    if shots.detector == "transnetv2":
        return _TransNet(shots, transnet_weights)
    if shots.detector == "vidcurate+transnetv2":
        return _Both(_Vidcurate(shots, fps), _TransNet(shots, transnet_weights))
    raise ValueError(f"shots.detector: unknown detector {shots.detector!r}")


def shot_starts(boundaries: list[dict]) -> list[int]:
    """First frame of each shot after a boundary (the frame after a transition)."""
    return sorted({b["end"] + (0 if b["type"] == "cut" else 1) for b in boundaries})


def shots_from_cuts(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Cut frames (first frame of a new shot) -> [start, end) shots covering all frames."""
    cuts = sorted(c for c in set(cuts) if 0 < c < num_frames)
    return shots_from_boundaries([{"type": "cut", "start": c, "end": c} for c in cuts], num_frames)[0]


def shots_from_boundaries(boundaries: list[dict], num_frames: int) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """Boundaries -> ([start, end) shots, [start, end, type) transitions). Transition frames
    belong to no shot, so no clip contains a dissolve, a fade or a wipe."""
    shots, transitions, pos = [], [], 0
    for b in sorted(boundaries, key=lambda b: b["start"]):
        a = min(max(b["start"], 0), num_frames)
        nxt = a if b["type"] == "cut" else min(b["end"] + 1, num_frames)
        if b["type"] != "cut" and nxt > max(a, pos):
            transitions.append((max(a, pos), nxt, b["type"]))
        if a > pos:
            shots.append((pos, a))
        pos = max(pos, nxt)
    if pos < num_frames:
        shots.append((pos, num_frames))
    return shots, transitions


def assemble_clips(shots: list[tuple[int, int]], fps: float, *, min_clip_s: float,
                   max_clip_s: float, trim_s: float = 0.0, transitions=()) -> list[dict]:
    """Shots -> clips. Short shots stay as rejected rows; long shots become equal windows;
    transitions ([start, end, type)) become rejected rows with reason ``transition``."""
    clips = [{"start_frame": a, "end_frame": b, "status": "rejected", "reason": "transition"}
             for a, b, _ in transitions]
    trim = int(round(trim_s * fps))
    max_len = max(1, int(math.floor(max_clip_s * fps)))
    min_len = max(1, math.ceil(min_clip_s * fps))

    def add(a: int, b: int, ok: bool) -> None:
        clips.append({"start_frame": a, "end_frame": b, "status": "kept" if ok else "rejected",
                      "reason": None if ok else "too_short"})

    for start, end in shots:
        s, e = start + trim, end - trim
        length = e - s
        if length < min_len:
            add(start, end, False)
            continue
        pieces = math.ceil(length / max_len)
        if length // pieces >= min_len:  # equal windows, each within [min, max]
            bounds = [s + round(i * length / pieces) for i in range(pieces + 1)]
            for a, b in zip(bounds, bounds[1:]):
                add(a, b, True)
            continue
        # No equal split fits (min close to max): windows of max length, remainder kept if long enough.
        a = s
        while a < e:
            b = min(a + max_len, e)
            add(a, b, b - a >= min_len)
            a = b
    return sorted(clips, key=lambda c: c["start_frame"])
