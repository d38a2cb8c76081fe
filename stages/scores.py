"""Scores: motion and quality per frame from the analysis pass, aggregated and filtered per clip.

Reads: per-frame signals of the analysis pass. Adds: motion, sharpness, brightness, contrast;
sets status/reason of clips that fail a threshold from spec.scores. Pure functions, CPU.
"""

from __future__ import annotations

import numpy as np

_flow: dict = {}


def frame_quality(gray: np.ndarray) -> tuple[float, float, float]:
    """(sharpness, brightness, contrast) of one 8-bit luma frame.

    Sharpness is the variance of the Laplacian (Pech-Pacheco et al., 2000), measured at the
    analysis width so values are comparable across source resolutions.
    """
    import cv2

    _, lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
    mean, std = cv2.meanStdDev(gray)
    return float(lap_std[0, 0]) ** 2, float(mean[0, 0]), float(std[0, 0])


def flow_magnitude(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean optical-flow magnitude in pixels per frame at the flow resolution.

    DIS optical flow (Kroeger et al., ECCV 2016) at its ultrafast preset: about 0.06 ms per
    128x72 pair here, some 20x cheaper than Farneback, with the same mean magnitude on
    translations. One instance per process (it keeps buffers between calls).
    """
    import cv2

    if "dis" not in _flow:
        _flow["dis"] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    fx, fy = cv2.split(_flow["dis"].calc(prev, cur, None))
    return float(cv2.mean(cv2.magnitude(fx, fy))[0])


def clip_scores(signals: dict[str, np.ndarray], start: int, end: int) -> dict[str, float]:
    """Mean of each per-frame signal over frames [start, end); NaNs (no value) are ignored."""
    out = {}
    for name, values in signals.items():
        window = values[start:end]
        window = window[~np.isnan(window)]
        out[name] = float(window.mean()) if window.size else float("nan")
    return out


def score_reason(scores: dict[str, float], limits) -> str | None:
    """First failed threshold of spec.scores, or None when the clip passes."""
    m, s, b, c = scores["motion"], scores["sharpness"], scores["brightness"], scores["contrast"]
    if limits.min_motion is not None and not m >= limits.min_motion:
        return "low_motion"
    if limits.max_motion is not None and m > limits.max_motion:
        return "high_motion"
    if limits.min_sharpness is not None and not s >= limits.min_sharpness:
        return "blurry"
    if limits.min_brightness is not None and b < limits.min_brightness:
        return "too_dark"
    if limits.max_brightness is not None and b > limits.max_brightness:
        return "too_bright"
    if limits.min_contrast is not None and c < limits.min_contrast:
        return "low_contrast"
    return None
