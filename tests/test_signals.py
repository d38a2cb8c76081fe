"""Camera motion, dynamic degree, black, frozen and letterboxed frames on encoded test videos."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from pipeline.spec import parse_spec
from stages.analyze import analysis_job
from tests.media import encode

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
    return encode(path, n, (W, H), picture=lambda i: scene(canvas, i))


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scene_signals(name, tmp_path):
    scene, expected = SCENES[name]
    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}, "probe": {"guard": False}})
    result = analysis_job({"uri": str(_encode(tmp_path / f"{name}.mp4", scene)), "video_id": "v", "size_bytes": 1}, spec)
    clip = result["clips"][0]
    for key, value in expected.items():
        assert clip[key] == (pytest.approx(value, abs=0.02) if isinstance(value, float) else value), (key, clip)


@pytest.mark.parametrize("angle", [0, 90, -90, 180])
def test_rotation_metadata_is_applied(angle, tmp_path):
    """Stored sideways with a display rotation: analysis frames and extracted clips come out upright."""
    import io

    from stages.extract import encode_clip

    upright = np.full((90, 160, 3), 100, np.uint8)
    upright[:30, :30] = 255  # a bright square at the top left of the upright picture
    turns = int(round(angle / 90)) % 4
    stored = np.ascontiguousarray(np.rot90(upright, -turns))  # what a camera held sideways writes
    path = encode(tmp_path / f"rot{turns}.mp4", 30, (stored.shape[1], stored.shape[0]), picture=lambda i: stored,
                  rotation=angle)
    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}, "probe": {"guard": False},
                       "shots": {"min_clip_s": 0.5}})
    result = analysis_job({"uri": str(path), "video_id": "v", "size_bytes": 1}, spec)
    meta = result["meta"]
    assert (meta["rotation"], meta["width"], meta["height"]) == (turns * 90, 160, 90)
    thumb = cv2.imdecode(np.frombuffer(result["clips"][0]["frames"][0], np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape[1] > thumb.shape[0] and thumb[:10, :10].mean() > 200 and thumb[-10:, -10:].mean() < 150
    with av.open(io.BytesIO(encode_clip(str(path), 0.0, 1.2))) as clip:
        first = next(clip.decode(video=0)).to_ndarray(format="rgb24")
    assert first.shape[:2] == (90, 160) and first[:10, :10].mean() > 200


def test_content_detector_matches_pyscenedetect():
    """The fast content score equals PySceneDetect's ContentDetector bit for bit, with the same cuts."""
    from scenedetect import FrameTimecode
    from scenedetect.detectors import ContentDetector

    from pipeline.demo import footage_dir
    from stages.frames import Shrinker
    from stages.shots import ShotDetector

    reference, fast, shrink = ContentDetector(min_scene_len=5), ShotDetector(min_scene_len=5, fps=25, keep_scores=True), Shrinker(256, 144)
    ref_cuts, ref_scores, sources = [], [], []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        with av.open(str(footage_dir() / name)) as c:
            sources.append(list(c.decode(video=0)))
    # real footage with two hard cuts between the sources
    for i, frame in enumerate(sources[0] + sources[1] + sources[0][:40]):
        bgr = shrink(frame)[1]
        ref_cuts += [tc.frame_num for tc in reference.process_frame(FrameTimecode(i, 25.0), bgr)]
        ref_scores.append(reference._frame_score)
        fast.feed(i, bgr)
    assert list(fast.scores) == ref_scores
    assert fast.finish() == sorted(ref_cuts)
    assert {len(sources[0]), len(sources[0]) + len(sources[1])} <= set(ref_cuts)


def test_shift_correlation_is_the_per_shift_formula():
    """The all-shifts-at-once correlation gives, for every pair, the best over shifts of the
    plain per-overlap standardised correlation (mean removed, divided by std + 1)."""
    from stages.boundaries import _shift_correlation

    def reference(a, b, max_dx=4, max_dy=2):
        h, w = a.shape
        best = -1.0
        for dy in range(-max_dy, max_dy + 1):
            for dx in range(-max_dx, max_dx + 1):
                x = a[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)].astype(np.float64)
                y = b[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)].astype(np.float64)
                x, y = (x - x.mean()) / (x.std() + 1.0), (y - y.mean()) / (y.std() + 1.0)
                best = max(best, float((x * y).mean()))
        return best

    rng = np.random.default_rng(3)
    for k in range(60):
        a = rng.uniform(0, 255, (18, 32)).astype(np.float32)
        b = [np.roll(a, (int(rng.integers(-2, 3)), int(rng.integers(-4, 5))), (0, 1)) + rng.normal(0, 4, a.shape),
             np.full_like(a, 7.0), rng.uniform(0, 255, a.shape)][k % 3].astype(np.float32)
        assert _shift_correlation(a, b) == pytest.approx(reference(a, b), abs=1e-6)
    moved = np.roll(a, (1, 3), (0, 1))
    assert _shift_correlation(a, moved) > 0.9 > _shift_correlation(a, rng.uniform(0, 255, a.shape).astype(np.float32))


def test_prepared_frames_record_what_unprepared_ones_do():
    """The per-frame work the pass does on its decoding threads (FrameSignals' prepare_frame, the
    detector's prepare) gives the recorder and the detector exactly what they compute themselves."""
    from pipeline.demo import footage_dir
    from stages.boundaries import BoundaryDetector
    from stages.frames import Shrinker
    from stages.signals import FrameSignals, prepare_frame

    shots = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}}).shots
    shrink = Shrinker(256, 144)
    plain, ahead = FrameSignals((128, 72)), FrameSignals((128, 72))
    det_plain, det_ahead = BoundaryDetector(shots), BoundaryDetector(shots)
    frames = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):  # a hard cut between real footage
        with av.open(str(footage_dir() / name)) as c:
            frames += [shrink(f, fresh=True) for f, _ in zip(c.decode(video=0), range(60))]
    for i, (luma, bgr) in enumerate(frames):
        plain.add(i, luma)
        ahead.add(i, luma, prepare_frame(i, luma, (128, 72)))
        v = plain.values
        residual = v["residual"][-1] / (v["diff"][-1] + 1.0)
        det_plain.feed(i, bgr, v["contrast"][-1], residual)
        det_ahead.feed(i, bgr, v["contrast"][-1], residual, BoundaryDetector.prepare(bgr))
    for name in plain.values:
        assert np.array_equal(np.asarray(plain.values[name]), np.asarray(ahead.values[name]), equal_nan=True), name
    found = det_plain.finish()
    assert found == det_ahead.finish() and any(b["start"] == 60 for b in found)
