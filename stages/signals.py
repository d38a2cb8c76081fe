"""Per-frame signals of the analysis pass, and their per-clip summaries.

Fed one small full-range luma frame at a time (from stages.frames), it records quality
(sharpness, brightness, contrast), black and frozen frames, letterbox/pillarbox bars, and
optical flow statistics (mean magnitude, 95th-percentile magnitude, mean direction and
divergence) for motion, dynamic degree and the camera-motion class.
"""

from __future__ import annotations

from array import array

import numpy as np

from stages.scores import flow_field, frame_quality

BLACK_LUMA = 20.0      # mean full-range luma below this, with little contrast, is a black frame
BLACK_CONTRAST = 8.0
FROZEN_DIFF = 0.6      # mean absolute luma change below this (0..255) is a repeated frame
BAR_LUMA = 24.0        # a border row/column this dark and flat is part of a bar
BAR_FLAT = 6.0
LETTERBOX_EVERY = 10
DYNAMIC_P95 = 1.0      # px/frame at flow width 128 ~ VBench/LVD-2M dynamic-degree threshold scale
FLOW = ("motion", "motion_p95", "flow_dx", "flow_dy", "flow_div")
# diff: mean absolute luma change from the previous frame (flow size, 0..255); residual: the same
# after warping the previous frame by the flow. Motion leaves little residual; cuts, dissolves,
# fades and wipes do not (the shot-boundary detector reads both).
NAMES = ("sharpness", "brightness", "contrast", "black", "frozen", "letterbox") + FLOW + ("diff", "residual")


def bar_fraction(luma: np.ndarray) -> float:
    """Fraction of the frame covered by dark, flat bars at its edges (letterbox + pillarbox)."""
    import cv2

    rows = cv2.reduce(luma, 1, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    cols = cv2.reduce(luma, 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    row_max = cv2.reduce(luma, 1, cv2.REDUCE_MAX).ravel().astype(np.float32)
    col_max = cv2.reduce(luma, 0, cv2.REDUCE_MAX).ravel().astype(np.float32)

    def run(means, maxes) -> int:  # leading lines that are dark and flat
        bright = np.flatnonzero((means >= BAR_LUMA) | (maxes - means > BAR_FLAT * 4))
        return int(bright[0]) if bright.size else len(means)

    h, w = luma.shape
    top, bottom = run(rows, row_max), run(rows[::-1], row_max[::-1])
    left, right = run(cols, col_max), run(cols[::-1], col_max[::-1])
    if top + bottom >= h or left + right >= w:  # a uniformly dark frame is black, not letterboxed
        return 0.0
    return 1.0 - (h - top - bottom) * (w - left - right) / float(h * w)


def prepare_frame(index: int, luma: np.ndarray, flow_size: tuple[int, int], flow_stride: int = 1) -> tuple:
    """What FrameSignals records of frame ``index`` from it alone: ((sharpness, brightness,
    contrast), letterbox fraction or NaN, the flow-size luma or None). Pure, so the analysis pass
    runs it on its decoding threads, beside the recorder."""
    import cv2

    # bars change with the shot, not the frame: every LETTERBOX_EVERY-th frame is enough
    bars = bar_fraction(luma) if index % LETTERBOX_EVERY == 0 else np.nan
    small = (cv2.resize(luma, flow_size, interpolation=cv2.INTER_LINEAR)
             if index % flow_stride == 0 else None)
    return frame_quality(luma), bars, small


class FrameSignals:
    """Accumulates the per-frame signals of one video."""

    def __init__(self, flow_size: tuple[int, int], flow_stride: int = 1):
        self.flow_size, self.flow_stride = flow_size, flow_stride
        self.values = {name: array("f") for name in NAMES}  # 4 bytes a value, not a Python float
        self._prev_luma = None
        self._prev_small = None
        fw, fh = flow_size
        y, x = np.mgrid[0:fh, 0:fw].astype(np.float32)
        self._gx, self._gy = (x - (fw - 1) / 2) / (fw / 2), (y - (fh - 1) / 2) / (fw / 2)
        self._px, self._py = x, y

    def add(self, index: int, luma: np.ndarray, prepared: tuple | None = None) -> None:
        """Record frame ``index``; ``prepared``: ``prepare_frame`` of it, where it was already made."""
        import cv2

        v = self.values
        (s, b, c), bars, small = prepared or prepare_frame(index, luma, self.flow_size, self.flow_stride)
        v["sharpness"].append(s), v["brightness"].append(b), v["contrast"].append(c)
        v["black"].append(float(b < BLACK_LUMA and c < BLACK_CONTRAST))
        frozen = np.nan
        if self._prev_luma is not None:
            frozen = float(cv2.norm(luma, self._prev_luma, cv2.NORM_L1) / luma.size < FROZEN_DIFF)
        v["frozen"].append(frozen)
        self._prev_luma = luma  # the pass hands over a fresh array per frame
        v["letterbox"].append(bars)
        stats = (np.nan,) * 7
        if small is not None:
            if self._prev_small is not None:
                stats = self._flow_stats(self._prev_small, small)
            self._prev_small = small
        for name, value in zip(FLOW + ("diff", "residual"), stats):
            v[name].append(value)

    def _flow_stats(self, prev: np.ndarray, cur: np.ndarray) -> tuple:
        import cv2

        fx, fy = flow_field(prev, cur)
        k = self.flow_stride
        # not cv2.magnitude: its result can differ in the last bit with the arrays' alignment in
        # memory, which would make reruns differ; NumPy rounds every element the same way
        mag = np.sqrt(fx * fx + fy * fy)
        sample = mag[::2, ::2].ravel()  # a quarter of the vectors: same percentile, 4x less sorting
        p95 = float(np.partition(sample, int(sample.size * 0.95))[int(sample.size * 0.95)])
        div = float(cv2.mean(fx * self._gx + fy * self._gy)[0])
        fw, fh = self.flow_size
        # the flow maps prev's pixels into cur: cur sampled at x + flow(x) should give prev back
        warped = cv2.remap(cur, self._px + fx, self._py + fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        n = float(fw * fh)
        return (float(cv2.mean(mag)[0]) / k, p95 / k, float(cv2.mean(fx)[0]) / k,
                float(cv2.mean(fy)[0]) / k, div / k,
                cv2.norm(cur, prev, cv2.NORM_L1) / n, cv2.norm(prev, warped, cv2.NORM_L1) / n)

    def arrays(self, cuts: list[int]) -> dict[str, np.ndarray]:
        """The signals as arrays; frame-to-frame values at shot starts are NaN (they measure the cut)."""
        out = {name: np.asarray(vals, dtype=np.float64) for name, vals in self.values.items()}
        n = len(out["motion"])
        starts = [c for c in cuts if 0 < c < n]
        out["frozen"][starts] = np.nan
        for c in starts:  # the first flow sample at or after a cut still spans it
            for name in FLOW:
                out[name][c:min(n, c + self.flow_stride)] = np.nan
        return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def camera_motion(dx: np.ndarray, dy: np.ndarray, div: np.ndarray, mag: np.ndarray) -> str:
    """static / pan / tilt / zoom / shaky / mixed from per-frame global flow statistics.

    Consistent translation is pan (x) or tilt (y); consistent divergence is zoom; motion whose
    global direction keeps reversing is shaky. Magnitudes are px/frame at the flow width.
    """
    ok = ~(np.isnan(dx) | np.isnan(dy) | np.isnan(div) | np.isnan(mag))
    if ok.sum() < 2:
        return "static"
    dx, dy, div, mag = dx[ok], dy[ok], div[ok], mag[ok]
    if np.median(mag) < 0.15:
        return "static"
    mx, my, mz = abs(dx.mean()), abs(dy.mean()), abs(div.mean())
    jitter = np.hypot(np.diff(dx), np.diff(dy)).mean() if dx.size > 2 else 0.0
    steady = max(mx, my, mz * 2)
    if jitter > 1.5 * max(steady, 0.05) and jitter > 0.3:
        return "shaky"
    if steady < 0.25 * np.median(mag):  # motion inside the frame, no global camera move
        return "static"
    if mz * 2 >= max(mx, my):
        return "zoom"
    return "pan" if mx >= my else "tilt"


def clip_summary(signals: dict[str, np.ndarray], start: int, end: int) -> dict:
    """Per-clip scores over frames [start, end)."""
    w = {name: values[start:end] for name, values in signals.items()}
    p95 = w["motion_p95"][~np.isnan(w["motion_p95"])]
    letterbox = w["letterbox"][~np.isnan(w["letterbox"])]
    return {
        "motion": _nanmean(w["motion"]),
        "sharpness": _nanmean(w["sharpness"]),
        "brightness": _nanmean(w["brightness"]),
        "contrast": _nanmean(w["contrast"]),
        "black_fraction": _nanmean(w["black"]),
        "frozen_fraction": _nanmean(w["frozen"]),
        "letterbox": float(np.median(letterbox)) if letterbox.size else float("nan"),
        "dynamic_degree": float((p95 > DYNAMIC_P95).mean()) if p95.size else float("nan"),
        "camera_motion": camera_motion(w["flow_dx"], w["flow_dy"], w["flow_div"], w["motion"]),
    }
