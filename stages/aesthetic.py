"""Aesthetic score: a LAION aesthetic predictor head on each frame's CLIP image embedding.

Reads: the per-frame CLIP image embeddings the CLIP stage computes. Adds: ``aesthetic``
(float64, about 1-10), the least aesthetic frame's score (``reduce_min``, the reduction
Cosmos-Curate and NeMo Curator use by default). Resources: those of the CLIP stage (the head
runs beside the CLIP model, on its device).

The head is the "improved aesthetic predictor" (christophschuhmann/improved-aesthetic-predictor,
``simple_inference.py``): ``layers = nn.Sequential(Linear(d, 1024), Dropout, Linear(1024, 128),
Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1))`` over the L2-normalised
image embedding, so its weights are ``layers.{0,2,4,6,7}.{weight,bias}``. Its published
``sac+logos+ava1-l14-linearMSE.pth`` (OpenAI CLIP ViT-L/14, d=768; open_clip ``ViT-L-14`` /
``openai``) drops in. The head is only right on the embeddings it was trained on: the widths
are checked (``check_head``), the embedding space cannot be.

Files read (``read_head``; weights only, never arbitrary pickles):
- a bare state dict saved with ``torch.save`` (how the predictor's repository publishes it);
- a Lightning checkpoint, its state dict under ``state_dict`` (the predictor's MLP is a
  LightningModule, so the keys are the same);
- a ``.safetensors`` file with the same keys (NeMo Curator's copy of the head is one).
The layer widths come from the weights, so any head of the five-linear layout loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

# The score, its column and its reason are declared in schemas.scores ("aesthetic", low_aesthetic).
# The cutoff Cosmos-Curate's and NeMo Curator's video tutorials pass (--aesthetic-threshold 3.5);
# both leave the filter off by default, as scores.min_aesthetic does.
USUAL_MIN_AESTHETIC = 3.5

LINEARS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")  # Dropouts sit at 1, 3, 5
KEYS = tuple(f"{layer}.{part}" for layer in LINEARS for part in ("weight", "bias"))
TINY_HIDDEN = (32, 16, 8, 4)  # the tiny head's hidden widths (the real one: 1024, 128, 64, 16)


def read_head(path: str | Path) -> dict:
    """The head's state dict (name -> CPU tensor) from any accepted file, checked: exactly
    ``KEYS``, widths chaining from the embedding to one output. ValueError otherwise."""
    import torch

    path = Path(path)
    if "relu" in path.name.lower():  # the predictor's *-reluMSE heads: same keys, ReLUs between layers
        raise ValueError(f"aesthetic head {path.name}: a ReLU head; only the linear heads (e.g. "
                         "sac+logos+ava1-l14-linearMSE.pth) are run")
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic head not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a weights file, or a pickle holding more than weights
        raise ValueError(f"aesthetic head {path}: not a weights-only torch or safetensors file "
                         f"({type(e).__name__}); save the head's state_dict") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"aesthetic head {path.name}: not a state dict of tensors")
    head_widths(state, path.name)
    return {k: state[k].float() for k in KEYS}


def head_widths(state: dict, name: str = "head") -> list[int]:
    """[input, hidden..., 1] of a state dict in the predictor's layout; ValueError naming what differs."""
    missing, unexpected = sorted(set(KEYS) - set(state)), sorted(set(state) - set(KEYS))
    if missing or unexpected:
        raise ValueError(f"aesthetic head {name}: not the improved-aesthetic-predictor layout "
                         f"(layers.{{0,2,4,6,7}}.weight/bias): missing {missing[:4]}, unexpected {unexpected[:4]}")
    widths = [int(state["layers.0.weight"].shape[-1])]
    for layer in LINEARS:
        w, b = state[f"{layer}.weight"].shape, state[f"{layer}.bias"].shape
        if len(w) != 2 or w[1] != widths[-1] or tuple(b) != (w[0],):
            raise ValueError(f"aesthetic head {name}: {layer} has weight {tuple(w)} and bias {tuple(b)}, "
                             f"expected weight (n, {widths[-1]}) and bias (n,)")
        widths.append(int(w[0]))
    if widths[-1] != 1:
        raise ValueError(f"aesthetic head {name}: gives {widths[-1]} outputs, expected 1")
    return widths


def check_head(path: str | Path, clip_embed_dim: int) -> int:
    """The head's input width, checked against the CLIP model's embedding width before any work."""
    width = head_widths(read_head(path), Path(path).name)[0]
    if width != clip_embed_dim:
        raise ValueError(f"aesthetic head {Path(path).name} takes {width}-wide embeddings but the CLIP model "
                         f"gives {clip_embed_dim}-wide ones; LAION publishes heads for ViT-B/32 (512) and "
                         "ViT-L/14 (768): use the one made for models.clip")
    return width


def build_head(state: dict):
    """The predictor's MLP (eval mode, CPU) holding ``state``: Linears with Dropouts between the
    first four, as published. It has no activations: the whole head is one affine map."""
    import torch

    widths = head_widths(state)
    layers = []
    for i, p in enumerate((0.2, 0.2, 0.1, None, None)):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if p is not None:
            layers.append(torch.nn.Dropout(p))
    module = torch.nn.Module()
    module.layers = torch.nn.Sequential(*layers)
    module.load_state_dict(state)
    return module.eval()


def aesthetic_scores(frame_embeddings: np.ndarray, head) -> np.ndarray:
    """One score per frame: each row L2-normalised (as the head was trained), then the head.
    ``head``: the module from ``build_head``; runs where its weights are."""
    import torch

    x = np.asarray(frame_embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"frame embeddings must be (frames, width), got shape {x.shape}")
    device = next(head.parameters()).device
    with torch.inference_mode():
        t = torch.nn.functional.normalize(torch.from_numpy(x).to(device), dim=-1, eps=1e-12)
        return head.layers(t)[:, 0].double().cpu().numpy()


def reduce_min(scores: np.ndarray) -> float:
    """A clip is as aesthetic as its worst frame (one ugly frame is enough to drop it)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no frame scores to reduce")
    return float(scores.min())


class AestheticHead:
    """An aesthetic head by path: cheap and picklable until the first call, which loads it on
    ``device`` (the CLIP model's; by default ``stages.models.device()``)."""

    def __init__(self, path: str | Path, *, device: str | None = None):
        self.path = Path(path)
        self.device = device
        self._head = None
        self._model_id = None

    @property
    def model_id(self) -> str:
        """Provenance: file name and the first 16 hex digits of its sha256."""
        if self._model_id is None:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
            self._model_id = f"{self.path.name}:sha256-{digest[:16]}"
        return self._model_id

    def scores(self, frame_embeddings: np.ndarray) -> np.ndarray:
        if self._head is None:
            from stages.models import device

            self._head = build_head(read_head(self.path)).to(self.device or device())
        return aesthetic_scores(frame_embeddings, self._head)

    def __call__(self, frame_embeddings: np.ndarray) -> float:
        return reduce_min(self.scores(frame_embeddings))


def build_tiny_aesthetic_head(directory: str | Path, embed_dim: int = 64) -> str:
    """A random-weight head for the tiny CLIP (pipeline.tiny_models), in the published layout with
    small hidden widths; the same bytes on every run. Its scores are meaningless (centred on 5)."""
    import io

    import torch

    rng = np.random.default_rng(0)
    widths = (embed_dim, *TINY_HIDDEN, 1)
    state = {}
    for layer, n_in, n_out in zip(LINEARS, widths[:-1], widths[1:]):
        state[f"{layer}.weight"] = torch.from_numpy(rng.normal(0, n_in ** -0.5, (n_out, n_in)).astype(np.float32))
        state[f"{layer}.bias"] = torch.zeros(n_out)
    state["layers.7.bias"] += 5.0
    buf = io.BytesIO()  # saved to memory first: the archive's inner folder is then not named after the file
    torch.save(state, buf)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"tiny-aesthetic-{embed_dim}-linear.pth"
    path.write_bytes(buf.getvalue())
    return str(path)
