"""vidcurate's shot-boundary detector: hard cuts, dissolves, fades and wipes.

Fed frame by frame from the analysis pass (stages.analyze) with the small BGR frame, its
contrast and the optical-flow residual the pass already computed; no second decode. Memory is
a ring of 32x18 thumbnails plus a few bytes per frame. stages.shots wires it in as the
``vidcurate`` detector.
"""

from __future__ import annotations

from array import array

import numpy as np


class ContentScore:
    """PySceneDetect's ContentDetector frame score (mean absolute HSV change from the previous
    frame, equal weights), computed with whole-image OpenCV operations: the same number to the
    last bit in about a third of the time (tests/test_signals.py checks it on real footage)."""

    def __init__(self):
        self._prev = None

    @staticmethod
    def default_threshold() -> float:
        import inspect

        from scenedetect.detectors import ContentDetector

        return float(inspect.signature(ContentDetector.__init__).parameters["threshold"].default)

    def __call__(self, bgr: np.ndarray, hsv: np.ndarray | None = None) -> float:
        """``hsv``: the frame already converted (``cv2.COLOR_BGR2HSV``), e.g. on a decoding thread."""
        import cv2

        if hsv is None:
            hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        prev, self._prev = self._prev, hsv
        if prev is None:
            return 0.0
        n = float(hsv.shape[0] * hsv.shape[1])
        dh, ds, dv, _ = cv2.sumElems(cv2.absdiff(hsv, prev))  # exact integer sums
        return (0 + dh / n * 1.0 + ds / n * 1.0 + dv / n * 1.0) / 3.0  # PySceneDetect's order


def _shift_correlation(a: np.ndarray, b: np.ndarray, max_dx: int = 4, max_dy: int = 2) -> float:
    """Best correlation of two small luma images over shifts of up to a few cells: high when one
    is the other moved (fast camera motion), low across a cut.

    For each shift (dx, dy), ``a``'s pixel (y, x) pairs with ``b``'s (y - dy, x - dx) where both
    exist; each side is standardised over that overlap (its mean removed, divided by its standard
    deviation + 1) and the products averaged. All shifts at once: with ``b`` (and a mask of ones)
    padded by the largest shift, each overlap sum is one sliding-window dot product."""
    from numpy.lib.stride_tricks import sliding_window_view

    h, w = a.shape
    a = a.astype(np.float64)
    pad = ((max_dy, max_dy), (max_dx, max_dx))
    b_pad = np.pad(b.astype(np.float64), pad)
    one_pad = np.pad(np.ones_like(a), pad)

    def sums(padded: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # result[u, v] = sum over (y, x) of weights[y, x] * padded[u + y, v + x]: shift dy = max_dy - u
        return np.einsum("uvyx,yx->uv", sliding_window_view(padded, (h, w)), weights)

    ones = np.ones_like(a)
    n = sums(one_pad, ones)
    sa, saa = sums(one_pad, a) / n, sums(one_pad, a * a) / n
    sb, sbb = sums(b_pad, ones) / n, sums(b_pad * b_pad, ones) / n
    sab = sums(b_pad, a) / n
    sd_a = np.sqrt(np.maximum(saa - sa * sa, 0.0))
    sd_b = np.sqrt(np.maximum(sbb - sb * sb, 0.0))
    return float(((sab - sa * sb) / ((sd_a + 1.0) * (sd_b + 1.0))).max())


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
    its change (a moving object is locally a wipe). Frames whose contrast dips below ``DIP`` of
    the highest within ``DIP_SPAN`` frames on both sides (the dim bottom of a fade with short
    ramps and no held frames, which never gets flat) join regions too, and make them fades
    unless the optical flow explains the region. A region is typed fade when it holds flat (or
    such dip) frames, dissolve when most changing cells are caught half-way at its middle, wipe
    otherwise. A region holding a hard cut is that cut, unless it is a fade; a fade takes every
    cut within its range +-1 frame (hue and layout of dim ramp frames jump from frame to frame:
    a burst of cuts around the darkest frames is the fade), and a flat region too short or too
    small a change to be a transition keeps only the first of its cuts. A dissolve's or wipe's
    range stops at a hard cut next to it.

    Cuts on frames at most ``BURST`` apart are one boundary: the first is kept.

    Stitching (``stitch_similarity``, off by default): a hard cut whose frames either side have
    similar appearance embeddings (``thumb_embedding``) is dropped, as Panda-70M merges
    over-split shots.

    The defaults were tuned on the tuning half of bench/cut_accuracy.py's splice set and checked
    on the held-out half (bench/RESULTS.md).
    """

    SCALES = (4, 8, 14)
    MERGE_GAP = 3
    BURST = 2  # a cut this few frames after the previous one is the same boundary
    DIP, DIP_SPAN = 0.35, 8  # contrast dips below this share of both sides' within the span: a fade's bottom
    RING = 128  # thumbnails kept (~0.9 MB): transitions up to ~90 frames get exact ranges

    def __init__(self, params):
        """``params``: spec.shots (the thresholds and their defaults live in pipeline/spec.py)."""
        from collections import deque

        p = params
        self.cut_threshold = p.threshold or ContentScore.default_threshold()
        self.exposure_corr, self.motion_corr, self.motion_residual = p.exposure_corr, p.motion_corr, p.motion_residual
        self.flash_return, self.flat_contrast, self.stitch = p.flash_return, p.flat_contrast, p.stitch_similarity
        self.gradual_change, self.gradual_spread = p.gradual_change, p.gradual_spread
        self.gradual_linearity, self.gradual_min_frames = p.gradual_linearity, p.gradual_min_frames
        self.gradual_region_change, self.gradual_motion_residual = p.gradual_region_change, p.gradual_motion_residual
        self.stitched: list[int] = []    # cuts dropped by stitching
        self.lag = max(self.SCALES)
        self._ring = deque(maxlen=self.RING)
        self._contrast = array("f")
        self._residual = array("f")
        self._content = ContentScore()
        self._step = array("f")          # thumbnail change from the previous frame
        self._cand = bytearray()         # window centre passed the gradual test
        self._flat = bytearray()
        self._pending: list[tuple[int, np.ndarray, float]] = []  # cuts awaiting the flash test
        self._fades: list[tuple[int, int]] = []  # the last fades' ranges (+-1): cuts there are theirs
        self.cuts: list[int] = []
        self.boundaries: list[dict] = []
        self._region = None              # [start, last candidate, thumbnail before, flat?, dip?]
        self._done = 0                   # frames whose region membership is final
        self.n = 0

    def _thumb(self, back: int) -> np.ndarray:
        return self._ring[len(self._ring) - 1 - back]

    @staticmethod
    def prepare(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What ``feed`` derives from each frame on its own: (HSV frame, 32x18 thumbnail). Pure, so
        the analysis pass runs it on its decoding threads, beside the detector."""
        import cv2

        return (cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV),
                cv2.resize(bgr, (32, 18), interpolation=cv2.INTER_AREA))  # uint8; float only where needed

    def feed(self, index: int, bgr: np.ndarray, contrast: float, warp_residual: float = float("nan"),
             prepared: tuple | None = None) -> None:
        """``warp_residual``: the frame's change left after motion compensation by the pass's
        optical flow, relative to the plain change (NaN when the flow was not computed);
        ``prepared``: ``prepare(bgr)``, where it was already made."""
        hsv, d = prepared or self.prepare(bgr)
        score = self._content(bgr, hsv)
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
        cur, prev = self._thumb(0), self._thumb(1)
        g0, g1 = cur.mean(axis=2, dtype=np.float32), prev.mean(axis=2, dtype=np.float32)
        z0, z1 = (g0 - g0.mean()) / (g0.std() + 1.0), (g1 - g1.mean()) / (g1.std() + 1.0)
        if float((z0 * z1).mean()) >= self.exposure_corr:
            return
        if _shift_correlation(g1, g0) >= self.motion_corr:
            return
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
                if self.cuts and t - self.cuts[-1] <= self.BURST:
                    continue  # cuts on (nearly) consecutive frames: one boundary, not a 1-frame shot
                if any(lo <= t <= hi for lo, hi in self._fades):
                    continue  # inside a fade already found
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
        flat = bool(self._flat[m])
        dip = not flat and self._dip(m)
        hit = self._cand[m] or flat or dip
        r = self._region
        if hit:
            if r is None:
                before = self._thumb(min(len(self._ring) - 1, self.n - 1 - max(0, m - 2)))
                self._region = [m, m, before.copy(), flat, dip]
                r = self._region
            r[1] = m
            r[3], r[4] = r[3] or flat, r[4] or dip
        elif r is not None and m - r[1] > self.MERGE_GAP:
            self._close(self._thumb(self.n - 1 - min(self.n - 1, r[1] + 2)))

    def _dip(self, m: int) -> bool:
        """Frame m is the dim bottom of a fade that never gets flat (short ramps, no held
        frames): its contrast is below DIP of the highest within DIP_SPAN frames on either side."""
        c = self._contrast
        if m < 1 or m + 1 >= len(c):
            return False
        limit = c[m] / self.DIP
        return max(c[max(0, m - self.DIP_SPAN):m]) > limit and max(c[m + 1:m + 1 + self.DIP_SPAN]) > limit

    def _close(self, after: np.ndarray) -> None:
        a, b, before, flat, dip = self._region
        self._region = None
        inside = [c for c in self.cuts if a - 2 <= c <= b + 2] + [t for t, _, _ in self._pending if a - 2 <= t <= b + 2]
        if b - a + 1 < self.gradual_min_frames or _distance(before, after) < self.gradual_region_change:
            if flat and len(inside) > 1:  # cuts into and out of the same flat frames: one boundary
                self.cuts = [c for c in self.cuts if c not in inside[1:]]
                self._pending = [p for p in self._pending if p[0] not in inside[1:]]
            return
        residual = np.asarray(self._residual[a:b + 1])
        residual = residual[~np.isnan(residual)]
        moved = bool(residual.size) and float(np.median(residual)) < self.gradual_motion_residual
        flat = flat or (dip and not moved)  # a contrast dip the optical flow explains is a pan
        if inside and not flat:
            return
        if not flat and moved:
            return  # the optical flow explains the change: something moved (an object is a local wipe)
        self.cuts = [c for c in self.cuts if c not in inside]
        if flat:
            kind, (start, end) = "fade", self._fade_range(a, b)
            start, end = min(a, start), max(b, end)
            # the dim frames of a fade's ramps change hue and layout from frame to frame: cuts
            # found there (a burst around the darkest frames) are the fade
            self.cuts = [c for c in self.cuts if not start - 1 <= c <= end + 1]
            self._fades = self._fades[-3:] + [(start - 1, end + 1)]
        else:
            start, end, blended = self._blend_range(a, b)
            kind = "dissolve" if blended >= 0.5 else "wipe"
            start, end = min(a, start), max(b, end)
        self.boundaries.append({"type": kind, "start": start, "end": end})

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
        # not across a hard cut next to it: the other side of a cut is another shot
        lo = max([lo] + [c for c in self.cuts if lo < c <= a])
        hi = min([hi] + [c - 1 for c in self.cuts + [t for t, _, _ in self._pending] if b < c <= hi])
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
            if not (self.cuts and t - self.cuts[-1] <= self.BURST):
                self.cuts.append(t)
        self._pending = []
        while self._done < self.n:
            self._advance(self._done)
            self._done += 1
        if self._region is not None:
            self._close(self._thumb(0))
        out = self.boundaries + [{"type": "cut", "start": c, "end": c} for c in self.cuts]
        return sorted(out, key=lambda b: b["start"])
