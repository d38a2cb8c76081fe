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

import numpy as np


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
        import cv2

        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        prev, self._prev_hsv = self._prev_hsv, hsv
        if prev is None:
            score = 0.0
        else:
            n = float(hsv.shape[0] * hsv.shape[1])
            dh, ds, dv, _ = cv2.sumElems(cv2.absdiff(hsv, prev))  # exact integer sums
            score = (0 + dh / n * 1.0 + ds / n * 1.0 + dv / n * 1.0) / 3.0  # PySceneDetect's order
        if self.keep_scores:
            self.scores.append(score)
        return score

    def finish(self) -> list[int]:
        if self._det is not None:
            for tc in self._det.post_process(self._timecode(self._last)):
                self.cuts.add(int(tc.frame_num))
        return sorted(c for c in self.cuts if 0 < c <= self._last)


def _shift_correlation(a: np.ndarray, b: np.ndarray, max_dx: int = 4, max_dy: int = 2) -> float:
    """Best correlation of two small luma images over shifts of up to a few cells: high when one
    is the other moved (fast camera motion), low across a cut."""
    h, w = a.shape
    best = -1.0
    for dy in range(-max_dy, max_dy + 1):
        for dx in range(-max_dx, max_dx + 1):
            x = a[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
            y = b[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
            x = (x - x.mean()) / (x.std() + 1.0)
            y = (y - y.mean()) / (y.std() + 1.0)
            best = max(best, float((x * y).mean()))
    return best


def thumb_embedding(thumb: np.ndarray) -> np.ndarray:
    """A small appearance embedding of a BGR thumbnail: its HSV colour histogram (8x4x4) and its
    zero-mean 16x9 luma layout, each L2-normalised; the dot product of two is in [-1, 1]."""
    import cv2

    hsv = cv2.cvtColor(thumb, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    luma = cv2.resize(cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY), (16, 9), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    luma -= luma.mean()
    parts = [hist / (np.linalg.norm(hist) + 1e-6), luma / (np.linalg.norm(luma) + 1e-6)]
    return np.concatenate(parts) / np.sqrt(2.0)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255) of two thumbnails."""
    import cv2

    return cv2.norm(a, b, cv2.NORM_L1) / a.size


class BoundaryDetector:
    """vidcurate's shot-boundary detector: hard cuts and gradual transitions, fed frame by frame
    from the analysis pass (the small BGR frame and its contrast); memory is a ring of 32x18
    thumbnails plus a byte or two per frame.

    Hard cuts: PySceneDetect's content score (HSV change) at or above ``cut_threshold`` (its 27),
    unless the frame is the same picture under another exposure (luma correlation with the
    previous frame >= ``exposure_corr``), the previous picture moved (the pass's optical flow
    explains all but ``motion_residual`` of the change, or correlation >= ``motion_corr`` at some
    shift of up to 4x2 thumbnail cells), or a flash (within 3 frames the picture comes back, or it
    is a frame seen 2-4 frames ago; ratio <= ``flash_return``).

    Gradual transitions: for windows of 2h+1 frames (h = 4, 8, 14), the ends differ by at least
    ``gradual_change`` (mean absolute difference of the thumbnails, 0-255), no single frame step
    inside carries more than ``gradual_spread`` of that change, and the frames at 1/4, 1/2 and
    3/4 of the window lie on the per-cell segments between the ends (relative residual <=
    ``gradual_linearity``): true for dissolves (every cell blends) and wipes (each cell switches),
    false for most camera motion. Window centres that pass, and flat frames (contrast <
    ``flat_contrast``: the dark or white middle of a fade), form regions; a region of at least
    ``gradual_min_frames`` whose surroundings differ by ``gradual_region_change`` is a
    transition, unless the pass's optical flow explains all but ``gradual_motion_residual`` of
    its change (a moving object is locally a wipe). It is typed fade when it holds flat frames,
    dissolve when most changing cells are caught half-way at its middle, wipe otherwise. A
    region holding a hard cut is that cut, unless it is a fade.

    Stitching (``stitch_similarity``, off by default): a hard cut whose frames either side have
    similar appearance embeddings (``thumb_embedding``) is dropped, as Panda-70M merges
    over-split shots.

    The defaults were tuned on the tuning half of bench/cut_accuracy.py's splice set and checked
    on the held-out half (bench/RESULTS.md).
    """

    SCALES = (4, 8, 14)
    MERGE_GAP = 3
    RING = 128  # thumbnails kept (~0.9 MB): transitions up to ~90 frames get exact ranges

    def __init__(self, params=None):
        from collections import deque

        p = params
        self.cut_threshold = getattr(p, "threshold", None) or 27.0  # PySceneDetect ContentDetector default
        self.exposure_corr = getattr(p, "exposure_corr", 0.85)
        self.motion_corr = getattr(p, "motion_corr", 0.8)
        self.motion_residual = getattr(p, "motion_residual", 0.5)
        self.gradual_motion_residual = getattr(p, "gradual_motion_residual", 0.4)
        self.flash_return = getattr(p, "flash_return", 0.35)
        self.gradual_change = getattr(p, "gradual_change", 40.0)
        self.gradual_spread = getattr(p, "gradual_spread", 0.35)
        self.gradual_linearity = getattr(p, "gradual_linearity", 0.15)
        self.gradual_min_frames = getattr(p, "gradual_min_frames", 5)
        self.gradual_region_change = getattr(p, "gradual_region_change", 35.0)
        self.flat_contrast = getattr(p, "flat_contrast", 12.0)
        self.stitch = getattr(p, "stitch_similarity", None)
        self.stitched: list[int] = []    # cuts dropped by stitching
        self.lag = max(self.SCALES)
        self._ring = deque(maxlen=self.RING)
        self._contrast = array("f")
        self._residual = array("f")
        self._content = ShotDetector(detector="content", fps=25.0)
        self._step = array("f")          # thumbnail change from the previous frame
        self._cand = bytearray()         # window centre passed the gradual test
        self._flat = bytearray()
        self._pending: list[tuple[int, np.ndarray, float]] = []  # cuts awaiting the flash test
        self.cuts: list[int] = []
        self.boundaries: list[dict] = []
        self._region = None              # [start, last candidate, thumbnail before, flat?]
        self._done = 0                   # frames whose region membership is final
        self.n = 0

    def _thumb(self, back: int) -> np.ndarray:
        return self._ring[len(self._ring) - 1 - back]

    def feed(self, index: int, bgr: np.ndarray, contrast: float, warp_residual: float = float("nan")) -> None:
        """``warp_residual``: the frame's change left after motion compensation by the pass's
        optical flow, relative to the plain change (NaN when the flow was not computed)."""
        import cv2

        score = self._content._content_score(bgr)
        d = cv2.resize(bgr, (32, 18), interpolation=cv2.INTER_AREA)  # uint8; float only where needed
        self._ring.append(d)
        self.n = index + 1
        k = len(self._ring)
        self._step.append(_distance(d, self._thumb(1)) if k > 1 else 0.0)
        self._cand.append(0)
        self._flat.append(contrast < self.flat_contrast)
        self._contrast.append(contrast)
        self._residual.append(warp_residual)
        if k > 1 and score >= self.cut_threshold and not warp_residual < self.motion_residual:
            self._check_cut(index)
        self._check_pending(index)
        for h in self.SCALES:
            if k > 2 * h:
                self._gradual_window(index - h, h)
        while self._done <= index - self.lag:
            self._advance(self._done)
            self._done += 1

    def _check_cut(self, t: int) -> None:
        cur, prev = self._thumb(0).astype(np.float32), self._thumb(1).astype(np.float32)
        g0, g1 = cur.mean(axis=2), prev.mean(axis=2)
        z0, z1 = (g0 - g0.mean()) / (g0.std() + 1.0), (g1 - g1.mean()) / (g1.std() + 1.0)
        if float((z0 * z1).mean()) >= self.exposure_corr:
            return
        if _shift_correlation(g1, g0) >= self.motion_corr:
            return
        cur, prev = self._thumb(0), self._thumb(1)
        jump = _distance(cur, prev) + 1.0
        seen = [self._thumb(j) for j in range(2, min(5, len(self._ring)))]
        if seen and min(_distance(cur, x) for x in seen) / jump <= self.flash_return:
            return  # back to a picture from just before: the end of a flash
        self._pending.append((t, prev, jump))

    def _check_pending(self, index: int) -> None:
        keep = []
        for t, before, jump in self._pending:
            if index > t and _distance(self._thumb(0), before) / jump <= self.flash_return:
                continue  # the picture came back: a flash
            if index >= t + 3:
                if self.stitch is not None and float(thumb_embedding(before) @ thumb_embedding(self._thumb(1))) >= self.stitch:
                    self.stitched.append(t)  # the same scene either side: an over-split shot
                    continue
                self.cuts.append(t)
            else:
                keep.append((t, before, jump))
        self._pending = keep

    def _gradual_window(self, m: int, h: int) -> None:
        change = _distance(self._thumb(2 * h), self._thumb(0))
        if change < self.gradual_change:
            return
        steps = self._step[m - h + 1:m + h + 1]
        if max(steps) > self.gradual_spread * change:
            return
        a, b = self._thumb(2 * h).astype(np.float32), self._thumb(0).astype(np.float32)
        ab = b - a
        norm = (ab * ab).sum(axis=2) + 1e-3
        residual = 0.0
        for back in (h + h // 2, h, h - h // 2):
            fm = self._thumb(back).astype(np.float32) - a
            p = np.clip((fm * ab).sum(axis=2) / norm, 0.0, 1.0)
            residual += float(np.abs(fm - p[..., None] * ab).mean())
        if residual / 3 / (change + 1.0) > self.gradual_linearity:
            return
        self._cand[m] = 1

    def _advance(self, m: int) -> None:
        """Region bookkeeping for frame m, now final (all windows centred on it are done)."""
        hit = self._cand[m] or self._flat[m]
        r = self._region
        if hit:
            if r is None:
                before = self._thumb(min(len(self._ring) - 1, self.n - 1 - max(0, m - 2)))
                self._region = [m, m, before.copy(), bool(self._flat[m])]
                r = self._region
            r[1] = m
            r[3] = r[3] or bool(self._flat[m])
        elif r is not None and m - r[1] > self.MERGE_GAP:
            self._close(self._thumb(self.n - 1 - min(self.n - 1, r[1] + 2)))

    def _close(self, after: np.ndarray) -> None:
        a, b, before, flat = self._region
        self._region = None
        inside = [c for c in self.cuts if a - 2 <= c <= b + 2] + [t for t, _, _ in self._pending if a - 2 <= t <= b + 2]
        if b - a + 1 < self.gradual_min_frames or _distance(before, after) < self.gradual_region_change:
            return
        if inside and not flat:
            return
        residual = np.asarray(self._residual[a:b + 1])
        residual = residual[~np.isnan(residual)]
        if not flat and residual.size and float(np.median(residual)) < self.gradual_motion_residual:
            return  # the optical flow explains the change: something moved (an object is a local wipe)
        self.cuts = [c for c in self.cuts if c not in inside]
        if flat:
            kind, (start, end) = "fade", self._fade_range(a, b)
        else:
            start, end, blended = self._blend_range(a, b)
            kind = "dissolve" if blended >= 0.5 else "wipe"
        self.boundaries.append({"type": kind, "start": min(a, start), "end": max(b, end)})

    def _frame(self, t: int):
        back = self.n - 1 - t
        return self._ring[len(self._ring) - 1 - back] if 0 <= back < len(self._ring) else None

    def _blend_range(self, a: int, b: int) -> tuple[int, int, float]:
        """(start, end, blended): the frames that mix the two shots, where the mean per-cell
        progress from the frame ``lag`` before the region to the frame ``lag`` after it is
        strictly between 0.1 and 0.9, plus a margin for blends too faint to measure; and, around
        the middle of the transition, the share of changing cells caught half-way (a dissolve
        blends every cell at once, a wipe switches them one after another)."""
        lo, hi = max(0, a - self.lag), min(self.n - 1, b + self.lag)
        before, after = self._frame(lo), self._frame(hi)
        if before is None or after is None:
            return a, b, 1.0
        before, after = before.astype(np.float32), after.astype(np.float32)
        ab = after - before
        moving = np.abs(ab).mean(axis=2) > 0.5 * float(np.abs(ab).mean())
        if moving.sum() < 4:
            return a, b, 1.0
        norm = (ab * ab).sum(axis=2) + 1e-3
        mixed, halfway = [], []
        for t in range(lo, hi + 1):
            cells = np.clip(((self._frame(t) - before) * ab).sum(axis=2) / norm, 0.0, 1.0)[moving]
            p = float(cells.mean())
            if 0.1 < p < 0.9:
                mixed.append(t)
            if 0.3 < p < 0.7:
                halfway.append(float(((cells > 0.2) & (cells < 0.8)).mean()))
        if not mixed:
            return a, b, 1.0
        margin = 1 + int(np.ceil(0.125 * (mixed[-1] - mixed[0] + 1)))
        blended = float(np.mean(halfway)) if halfway else 1.0
        return max(lo, mixed[0] - margin), min(hi, mixed[-1] + margin), blended

    def _fade_range(self, a: int, b: int) -> tuple[int, int]:
        """From the flattest frame, outwards while contrast keeps rising (the fade's ramps)."""
        c = self._contrast
        k = min(range(a, b + 1), key=lambda t: c[t])
        start = k
        while start > 0 and c[start - 1] > c[start] + 0.2:
            start -= 1
        end = k
        while end + 1 < self.n and c[end + 1] > c[end] + 0.2:
            end += 1
        return start, end

    def finish(self) -> list[dict]:
        for t, _, _ in self._pending:  # too close to the end for the flash test: keep
            self.cuts.append(t)
        self._pending = []
        while self._done < self.n:
            self._advance(self._done)
            self._done += 1
        if self._region is not None:
            self._close(self._thumb(0))
        out = self.boundaries + [{"type": "cut", "start": c, "end": c} for c in self.cuts]
        return sorted(out, key=lambda b: b["start"])


class _PySceneDetect:
    def __init__(self, shots, fps):
        self.det = ShotDetector(detector=shots.detector, threshold=shots.threshold,
                                min_scene_len=shots.min_scene_len, fps=fps)

    def feed(self, index, bgr, frame, contrast, warp_residual) -> None:
        self.det.feed(index, bgr)

    def finish(self, signals) -> list[dict]:
        return [{"type": "cut", "start": c, "end": c} for c in self.det.finish()]


class _Vidcurate:
    def __init__(self, shots, fps):
        self.det = BoundaryDetector(shots)

    def feed(self, index, bgr, frame, contrast, warp_residual) -> None:
        self.det.feed(index, bgr, contrast, warp_residual)

    def finish(self, signals) -> list[dict]:
        return self.det.finish()


class _TransNet:
    """TransNetV2 on 48x27 frames made from the pass's small frames (no second decode)."""

    def __init__(self, shots, weights):
        from stages import transnet

        self.threshold = shots.transnet_threshold
        self.stream = transnet.TransNetStream(transnet.load(weights))

    def feed(self, index, bgr, frame, contrast, warp_residual) -> None:
        import cv2

        small = cv2.resize(bgr, (48, 27), interpolation=cv2.INTER_AREA)
        self.stream.feed(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))

    def finish(self, signals) -> list[dict]:
        from stages import transnet

        single, _ = self.stream.finish()
        return transnet.boundaries(single, self.threshold)


class _Both:
    """vidcurate's boundaries, plus TransNetV2's where vidcurate has none within 2 frames."""

    def __init__(self, *detectors):
        self.detectors = detectors

    def feed(self, *args) -> None:
        for d in self.detectors:
            d.feed(*args)

    def finish(self, signals) -> list[dict]:
        first, *rest = (d.finish(signals) for d in self.detectors)
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
    edges = [0] + sorted(c for c in set(cuts) if 0 < c < num_frames) + [num_frames]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


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
