"""Scores: motion and quality per frame from the analysis pass, aggregated and filtered per clip.

Pure functions for the per-frame math (quality, optical flow) and the per-clip filter: the first
threshold of spec.scores a clip fails is its reason. Per-frame recording and per-clip summaries
live in stages.signals. CPU.
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


def flow_field(prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) optical flow from ``prev`` to ``cur`` in pixels.

    DIS optical flow (Kroeger et al., ECCV 2016) at its ultrafast preset: about 0.06 ms per
    128x72 pair here, some 20x cheaper than Farneback, with the same mean magnitude on
    translations. One instance per process (it keeps buffers between calls).
    """
    import cv2

    if "dis" not in _flow:
        _flow["dis"] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    fx, fy = cv2.split(_flow["dis"].calc(prev, cur, None))
    return fx, fy


def flow_magnitude(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean optical-flow magnitude in pixels per frame at the flow resolution."""
    import cv2

    return float(cv2.mean(cv2.magnitude(*flow_field(prev, cur)))[0])
