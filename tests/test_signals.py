"""Camera motion, dynamic degree, black, frozen and letterboxed frames on encoded test videos."""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from pipeline.spec import parse_spec
from stages.analyze import analysis_job

W, H = 320, 180
_JITTER = np.random.default_rng(5).integers(-8, 9, (100, 2))


def _zoom(b, i):
    s = 1 - 0.008 * i
    h, w = int(H * s) // 2, int(W * s) // 2
    return cv2.resize(b[300 - h:300 + h, 450 - w:450 + w], (W, H))


SCENES = {  # name -> (frame i of the scene from a textured canvas, expected values)
    "static": (lambda b, i: b[100:100 + H, 100:100 + W], {"camera_motion": "static", "frozen_fraction": 1.0}),
    "pan": (lambda b, i: b[100:100 + H, 100 + 4 * i:100 + 4 * i + W], {"camera_motion": "pan", "dynamic_degree": 1.0}),
    "tilt": (lambda b, i: b[50 + 4 * i:50 + 4 * i + H, 100:100 + W], {"camera_motion": "tilt"}),
    "zoom": (_zoom, {"camera_motion": "zoom"}),
    "shaky": (lambda b, i: b[200 + _JITTER[i, 0]:200 + _JITTER[i, 0] + H, 300 + _JITTER[i, 1]:300 + _JITTER[i, 1] + W],
              {"camera_motion": "shaky"}),
    "letterbox": (lambda b, i: np.concatenate([np.zeros((30, W, 3), np.uint8), b[100:40 + H, 100 + 4 * i:100 + 4 * i + W],
                                               np.zeros((30, W, 3), np.uint8)]), {"letterbox": 60 / 180}),
    "black": (lambda b, i: np.zeros((H, W, 3), np.uint8), {"black_fraction": 1.0, "camera_motion": "static"}),
}


def _encode(path, scene, n=50):
    rng = np.random.default_rng(0)
    canvas = cv2.normalize(cv2.GaussianBlur(rng.integers(0, 255, (600, 900, 3), dtype=np.uint8), (0, 0), 3),
                           None, 0, 255, cv2.NORM_MINMAX)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene(canvas, i)), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    return path


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scene_signals(name, tmp_path):
    scene, expected = SCENES[name]
    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}, "probe": {"guard": False}})
    result = analysis_job({"uri": str(_encode(tmp_path / f"{name}.mp4", scene)), "video_id": "v", "size_bytes": 1}, spec)
    clip = result["clips"][0]
    for key, value in expected.items():
        assert clip[key] == (pytest.approx(value, abs=0.02) if isinstance(value, float) else value), (key, clip)
