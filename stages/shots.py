"""Shots: PySceneDetect detectors fed from the single analysis pass, and clip assembly.

The detector sees the downscaled BGR frames the analysis pass already has, so shot detection
costs no extra decode. Clip assembly is pure: cuts -> shots -> clips with min/max length,
edge trimming and windows for over-long shots. Reads: frames. Adds: start_frame, end_frame,
status, reason. Resources: runs inside the analyze task (CPU).
"""

from __future__ import annotations

import inspect
import math
from array import array


class ShotDetector:
    """Wraps one PySceneDetect detector; feed frames in order, then call ``finish``.

    The content detector (the default) scores frames with whole-image OpenCV operations instead
    of PySceneDetect's per-channel NumPy code: the same score to the last bit (HSV conversion,
    mean absolute difference per channel, equal weights) in about a third of the time, and the
    cut decisions still come from PySceneDetect's own ``FlashFilter``. A test checks the cuts
    and scores against ``scenedetect.detectors.ContentDetector`` on real footage.
    """

    def __init__(self, *, detector: str = "content", threshold: float | None = None,
                 min_scene_len: int = 15, fps: float = 25.0):
        from scenedetect.detector import FlashFilter
        from scenedetect.detectors import AdaptiveDetector, ContentDetector, ThresholdDetector

        kwargs = {"min_scene_len": min_scene_len}
        self._det = None
        if detector == "content":
            default = inspect.signature(ContentDetector.__init__).parameters["threshold"].default
            self.threshold = float(threshold or default)
            self._filter = FlashFilter(mode=FlashFilter.Mode.MERGE, length=min_scene_len)
            self._prev_hsv = None
        elif detector == "adaptive":
            self._det = AdaptiveDetector(**kwargs, **({"adaptive_threshold": threshold} if threshold else {}))
        elif detector == "threshold":
            self._det = ThresholdDetector(**kwargs, **({"threshold": threshold} if threshold else {}))
        else:
            raise ValueError(f"shots.detector: unknown detector {detector!r}")
        self.fps = float(fps or 25.0)
        self.cuts: set[int] = set()
        self.scores = array("d")  # content detector only: the per-frame score (0 for frame 0)
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
        import cv2

        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        prev, self._prev_hsv = self._prev_hsv, hsv
        if prev is None:
            score = 0.0
        else:
            n = float(hsv.shape[0] * hsv.shape[1])
            dh, ds, dv, _ = cv2.sumElems(cv2.absdiff(hsv, prev))  # exact integer sums
            score = (0 + dh / n * 1.0 + ds / n * 1.0 + dv / n * 1.0) / 3.0  # PySceneDetect's order
        self.scores.append(score)
        return score

    def finish(self) -> list[int]:
        if self._det is not None:
            for tc in self._det.post_process(self._timecode(self._last)):
                self.cuts.add(int(tc.frame_num))
        return sorted(c for c in self.cuts if 0 < c <= self._last)


def shots_from_cuts(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Cut frames (first frame of a new shot) -> [start, end) shots covering all frames."""
    edges = [0] + sorted(c for c in set(cuts) if 0 < c < num_frames) + [num_frames]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def assemble_clips(shots: list[tuple[int, int]], fps: float, *, min_clip_s: float,
                   max_clip_s: float, trim_s: float = 0.0) -> list[dict]:
    """Shots -> clips. Short shots stay as rejected rows; long shots become equal windows."""
    clips = []
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
    return clips
