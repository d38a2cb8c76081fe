"""The trainer side: pipeline.loader (its geometry and frame selection, fixed-size samples through
a real DataLoader over shards made here, the demo's shards) and `vidcurate inspect`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.loader import check_options, even_indices, fit_box, fixed_length, place
from tests.conftest import ROOT


# DataLoader workers started by spawn, and a timeout: a worker forked from this process (which
# runs Ray and has decoded with PyAV in other tests) can block forever inside FFmpeg; a real
# trainer's process is in the same place once it has decoded video itself (pipeline.loader).
WORKERS = {"multiprocessing_context": "spawn", "timeout": 300}


@pytest.mark.slow
def test_loader_gives_frames_times_and_dense_captions(demo_run):
    import torch

    from pipeline.loader import clip_dataset, manifest_urls

    out, manifest, _ = demo_run
    clips = {c["clip_id"]: c for c in pq.read_table(out / "clips").to_pylist()}
    captions = pq.read_table(out / "captions").to_pylist()
    samples = list(torch.utils.data.DataLoader(clip_dataset(manifest_urls(out), fps=2, size=64), batch_size=None))
    assert len(samples) == manifest["counts"]["samples"]
    with_windows = 0
    for s in samples:
        clip = clips[s["key"]]
        t, _, h, w = s["frames"].shape
        assert s["frames"].dtype == torch.uint8 and min(h, w) == 64
        times = s["times"].tolist()
        assert times[0] == 0.0 and times == sorted(times) and times[-1] < clip["duration_s"]
        # 2 frames a second over the clip, give or take the frame at its end
        assert abs(t - clip["duration_s"] * 2) <= 1.5
        assert s["caption"] == next(c["text"] for c in captions if c["level"] == "clip" and c["clip_id"] == s["key"])
        windows = sorted((c["start_s"] - clip["start_s"], c["end_s"] - clip["start_s"], c["text"])
                         for c in captions if c["level"] == "window" and c["clip_id"] == s["key"])
        assert [d[2] for d in s["dense"]] == [w[2] for w in windows]
        assert all(abs(a - b[0]) < 1e-6 for a, b in zip([d[0] for d in s["dense"]], windows))
        with_windows += bool(s["dense"])
        assert s["meta"]["clip_id"] == s["key"]
    assert with_windows > 0
    chapters = list(clip_dataset(manifest_urls(out, long=True), fps=1, size=32, as_torch=False))
    assert len(chapters) == sum(s["samples"] for s in manifest["long_shards"]) > 0
    assert all(c["frames"].ndim == 4 and c["dense"] for c in chapters)


@pytest.mark.slow
def test_loader_batches_the_demo_shards_with_the_default_collate(demo_run):
    import torch

    from pipeline.loader import clip_dataset, manifest_urls

    out, manifest, _ = demo_run
    for long, fit in ((False, "pad"), (True, "crop")):
        plain = {s["key"]: s for s in clip_dataset(manifest_urls(out, long), fps=2, size=64, as_torch=False)}
        ds = clip_dataset(manifest_urls(out, long), fps=2, size=(64, 96), num_frames=6, fit=fit)
        batches = list(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, **WORKERS))
        keys = [k for b in batches for k in b["key"]]
        assert sorted(keys) == sorted(plain) and len(keys) == len(set(keys)) > 0
        for b in batches:
            assert b["frames"].shape == (len(b["key"]), 6, 3, 64, 96) and b["frames"].dtype == torch.uint8
            for i, key in enumerate(b["key"]):
                real = min(len(plain[key]["frames"]), 6)
                assert b["length"][i] == real and b["frame_mask"][i].tolist() == [True] * real + [False] * (6 - real)
                assert b["frames"][i, :real].flatten(1).float().mean(1).min() > 0 and not b["frames"][i, real:].any()
                assert json.loads(b["meta_json"][i]) == plain[key]["meta"]
                assert [tuple(d) for d in json.loads(b["dense_json"][i])] == plain[key]["dense"]
                assert b["caption"][i] == plain[key]["caption"]


@pytest.mark.slow
def test_inspect_prints_counts_tables_and_samples(demo_run):
    out, manifest, _ = demo_run
    result = subprocess.run([sys.executable, "-m", "pipeline", "inspect", str(out), "--samples", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"videos  {manifest['counts']['videos_in']} in" in text
    from schemas import SCHEMA_VERSION

    assert f"schema v{SCHEMA_VERSION}" in text and text.count("  sample  ") == 2
    for name in ("videos", "clips", "captions", "chapters"):
        assert f"table   {name}" in text
    missing = subprocess.run([sys.executable, "-m", "pipeline", "inspect", str(out / "nope")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no committed output" in missing.stderr


# -- fixed-size samples: the pure geometry and frame selection ----------------------------------

def test_fit_box_crops_to_cover_and_pads_to_fit():
    # (src h, w) -> (dst h, w): (resized h, w, top, left)
    assert fit_box(96, 128, 48, 64, "crop") == fit_box(96, 128, 48, 64, "pad") == (48, 64, 0, 0)
    assert fit_box(96, 192, 48, 64, "crop") == (48, 96, 0, -16)  # wide: the sides cut off
    assert fit_box(96, 192, 48, 64, "pad") == (32, 64, 8, 0)  # wide: bands above and below
    assert fit_box(144, 96, 48, 64, "crop") == (96, 64, -24, 0)  # tall: top and bottom cut off
    assert fit_box(144, 96, 48, 64, "pad") == (48, 32, 0, 16)  # tall: bands left and right
    assert fit_box(90, 160, 64, 64, "crop") == (64, 114, 0, -25)  # odd overhang: one more on the right
    assert fit_box(90, 160, 64, 64, "pad") == (36, 64, 14, 0)
    assert fit_box(10, 20, 40, 40, "crop") == (40, 80, 0, -20)  # small sources are scaled up
    assert fit_box(2, 1000, 8, 8, "pad") == (1, 8, 3, 0)  # never under one pixel


def test_fit_box_keeps_the_aspect_and_centres():
    rng = np.random.default_rng(0)
    for src_h, src_w, dst_h, dst_w in rng.integers(8, 400, (300, 4)).tolist():
        for fit in ("crop", "pad"):
            h, w, top, left = fit_box(src_h, src_w, dst_h, dst_w, fit)
            if fit == "crop":  # covers the frame, touching it on one side
                assert h >= dst_h and w >= dst_w and (h == dst_h or w == dst_w)
                assert top <= 0 and left <= 0
            else:  # inside the frame, touching it on one side
                assert h <= dst_h and w <= dst_w and (h == dst_h or w == dst_w)
                assert top >= 0 and left >= 0
            assert abs(w / h - src_w / src_h) <= (src_w / src_h) * (1 / h + 1 / w) + 1e-9  # rounding only
            assert abs(2 * top + h - dst_h) <= 1 and abs(2 * left + w - dst_w) <= 1  # centred


def test_place_cuts_out_or_pads_around():
    img = np.arange(4 * 6 * 2, dtype=np.int32).reshape(4, 6, 2) + 1
    np.testing.assert_array_equal(place(img, 4, 4, 0, -1), img[:, 1:5])
    np.testing.assert_array_equal(place(img, 2, 6, -1, 0), img[1:3])
    padded = place(img, 6, 10, 1, 2)
    assert padded.shape == (6, 10, 2) and padded.dtype == img.dtype
    np.testing.assert_array_equal(padded[1:5, 2:8], img)
    assert padded.sum() == img.sum()  # zeros everywhere else
    np.testing.assert_array_equal(place(img, 4, 6, 0, 0), img)


def test_even_indices_spread_over_the_clip():
    assert even_indices(10, 5) == [1, 3, 5, 7, 9]
    assert even_indices(12, 8) == [0, 2, 3, 5, 6, 8, 9, 11]
    assert even_indices(100, 4) == [12, 37, 62, 87]
    assert even_indices(8, 8) == list(range(8)) and even_indices(3, 8) == [0, 1, 2]
    assert even_indices(1, 1) == [0] and even_indices(0, 4) == []
    for n in range(1, 60):
        for k in range(1, 20):
            got = even_indices(n, k)
            assert len(got) == min(n, k) and got == sorted(set(got)) and 0 <= got[0] and got[-1] < n
            if n > k:  # no longer run left out at either end than between two picks
                assert got[0] <= n // k and n - 1 - got[-1] <= n // k
            if n > k > 1:  # gaps differ by at most one frame
                gaps = np.diff(got)
                assert gaps.max() - gaps.min() <= 1


def test_fixed_length_samples_pads_and_masks():
    frames = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(2, axis=1) + 1
    times = np.arange(5, dtype=np.float32) / 2
    out, t, mask = fixed_length(frames, times, 8)
    assert out.shape == (8, 2, 1, 1) and out.dtype == np.uint8 and t.dtype == np.float32 and mask.dtype == bool
    assert mask.tolist() == [True] * 5 + [False] * 3
    np.testing.assert_array_equal(out[:5], frames)
    assert not out[5:].any() and t.tolist() == [0, 0.5, 1, 1.5, 2, 0, 0, 0]
    out, t, mask = fixed_length(frames, times, 2)
    assert mask.all() and out[:, 0, 0, 0].tolist() == [2, 4] and t.tolist() == [0.5, 1.5]
    out, t, mask = fixed_length(frames, times, 3, "first")
    assert mask.all() and out[:, 0, 0, 0].tolist() == [1, 2, 3] and t.tolist() == [0, 0.5, 1]


@pytest.mark.parametrize("kwargs, words", [
    ({"num_frames": 8}, "size=(height, width) and num_frames together"),
    ({"size": (64, 64)}, "size=(height, width) and num_frames together"),
    ({"size": (64, 0), "num_frames": 8}, "size must be (height, width)"),
    ({"size": (64, 64, 3), "num_frames": 8}, "size must be (height, width)"),
    ({"size": (64.0, 64), "num_frames": 8}, "size must be (height, width)"),
    ({"size": 0}, "size must be an int >= 1"),
    ({"size": True}, "size must be an int >= 1"),
    ({"size": (64, 64), "num_frames": 0}, "num_frames must be an int >= 1"),
    ({"size": (64, 64), "num_frames": 2.5}, "num_frames must be an int >= 1"),
    ({"max_frames": 0}, "max_frames must be an int >= 1"),
    ({"fps": 0}, "fps must be a number > 0"),
    ({"fps": "2"}, "fps must be a number > 0"),
    ({"size": (64, 64), "num_frames": 8, "fit": "stretch"}, "fit must be one of"),
    ({"size": (64, 64), "num_frames": 8, "sampling": "random"}, "sampling must be one of"),
])
def test_bad_options_are_refused_before_any_shard_is_read(kwargs, words):
    from pipeline.loader import clip_dataset

    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        clip_dataset("no-such-shard-{000000..000001}.tar", **kwargs)
    check_options(size=(64, 64), num_frames=8, fit="pad", sampling="first", fps=None, max_frames=3)  # fine
    check_options(size=None)


# -- fixed-size samples through a real DataLoader over shards made here -------------------------

SIZE, T, FPS = (48, 64), 8, 5
# source (w, h) -> per fit: (resized h, w, top, left) on the 48 x 64 frame, worked out by hand
GEOMETRY = {(128, 96): {"crop": (48, 64, 0, 0), "pad": (48, 64, 0, 0)},
            (192, 96): {"crop": (48, 96, 0, -16), "pad": (32, 64, 8, 0)},
            (96, 144): {"crop": (96, 64, -24, 0), "pad": (48, 32, 0, 16)},
            (96, 96): {"crop": (64, 64, -8, 0), "pad": (48, 48, 0, 8)}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """11 samples in 3 shards: four frame sizes, 13 to 90 frames at 25 fps (3 to 18 frames at
    5 fps: some padded to T, some sampled down), dense captions of 0 to 3 windows, chapter-style
    ``captions``, None in the json. Returns (shard paths, {key: (raw sample, (w, h))})."""
    from pipeline.sinks import tar_bytes_to
    from tests.corpus import encode

    root = tmp_path_factory.mktemp("loader_shards")
    sizes, counts = list(GEOMETRY), [13, 40, 90, 57, 21, 75, 33, 64, 18, 46, 88]
    samples = {}
    for n, frames in enumerate(counts):
        key, wh = f"clip-{n:02d}", sizes[n % len(sizes)]
        mp4 = encode(root / f"{key}.mp4", frames=frames, size=wh, stream_options={"crf": "18"}).read_bytes()
        windows = [{"start_s": w * 0.5, "end_s": w * 0.5 + 0.5, "text": f"window {w} of {key}", "fields": None}
                   for w in range(n % 4)]
        meta = {"clip_id": key, "duration_s": frames / 25, "scores": {"motion": None, "sharpness": n / 10},
                "caption": None, "chapter": None, "dense_captions": windows}
        if n == 5:  # a chapter sample: its captions inside, no windows
            meta.update(dense_captions=[], captions=[{"start_s": 0.0, "end_s": 1.0, "text": "a chapter's clip"}])
        raw = {"__key__": key, "mp4": mp4, "json": json.dumps(meta, sort_keys=True).encode(),
               "txt": f"caption of {key}".encode()}
        samples[key] = (raw, wh)
    urls = []
    for s, part in enumerate((list(samples)[:4], list(samples)[4:8], list(samples)[8:])):
        urls.append(str(root / f"shard-{s:06d}.tar"))
        with open(urls[-1], "wb") as f:
            tar_bytes_to(f, [samples[k][0] for k in part])
    return urls, samples


def _check_batch(batch, samples, fit, sampling):
    """Every field of one default-collated batch against the same samples read without the option."""
    import torch

    from pipeline.loader import to_training_sample

    b = len(batch["key"])
    assert batch["frames"].shape == (b, T, 3, *SIZE) and batch["frames"].dtype == torch.uint8
    assert batch["times"].shape == (b, T) and batch["times"].dtype == torch.float32
    assert batch["frame_mask"].shape == (b, T) and batch["frame_mask"].dtype == torch.bool
    assert batch["length"].dtype == torch.int64 and batch["length"].tolist() == batch["frame_mask"].sum(1).tolist()
    for i, key in enumerate(batch["key"]):
        raw, wh = samples[key]
        h, w, top, left = GEOMETRY[wh][fit]
        # the same clip without the option, its short side the one the fit resizes to
        ref = to_training_sample(raw, fps=FPS, size=min(h, w), as_torch=False)
        assert ref["frames"].shape[1:3] == (h, w)
        n = len(ref["frames"])
        real = min(n, T)
        assert batch["length"][i] == real and batch["frame_mask"][i].tolist() == [True] * real + [False] * (T - real)
        pick = even_indices(n, T) if sampling == "uniform" else list(range(real))
        if sampling == "uniform" and n > T:
            assert pick[-1] >= T  # spread over the clip, not its first T frames
        got = batch["frames"][i].permute(0, 2, 3, 1).numpy()
        want = ref["frames"][pick]
        if fit == "crop":
            np.testing.assert_array_equal(got[:real], want[:, -top:-top + SIZE[0], -left:-left + SIZE[1]])
        else:
            np.testing.assert_array_equal(got[:real, top:top + h, left:left + w], want)
            border = np.ones(SIZE, bool)
            border[top:top + h, left:left + w] = False
            assert not got[:, border].any() and (border.any() or wh == (128, 96))
            assert got[:real, top:top + h, left:left + w].mean() > 10  # the picture, not zeros
        assert not got[real:].any()
        assert batch["times"][i, :real].tolist() == ref["times"][pick].tolist()
        assert not batch["times"][i, real:].any()
        assert batch["caption"][i] == ref["caption"] == f"caption of {key}"
        assert json.loads(batch["meta_json"][i]) == ref["meta"]
        assert [tuple(d) for d in json.loads(batch["dense_json"][i])] == ref["dense"]


@pytest.mark.parametrize("fit, sampling", [("crop", "uniform"), ("pad", "uniform"), ("crop", "first")])
def test_default_collate_batches_fixed_size_samples(shards, fit, sampling):
    import torch

    from pipeline.loader import clip_dataset

    urls, samples = shards
    ds = clip_dataset(urls, fps=FPS, size=SIZE, num_frames=T, fit=fit, sampling=sampling)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=8))
    assert [len(b["key"]) for b in batches] == [8, 3]
    assert [k for b in batches for k in b["key"]] == list(samples)  # one worker: shard order
    lengths = [n for b in batches for n in b["length"].tolist()]
    assert min(lengths) < T and lengths.count(T) >= 5  # some clips padded, some sampled down
    for batch in batches:
        _check_batch(batch, samples, fit, sampling)


def test_fixed_size_samples_batch_across_two_workers(shards):
    import torch

    from pipeline.loader import clip_dataset

    urls, samples = shards
    ds = clip_dataset(urls, fps=FPS, size=SIZE, num_frames=T, fit="pad", shuffle=4)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, **WORKERS))
    assert sorted(k for b in batches for k in b["key"]) == sorted(samples)  # each sample once
    for batch in batches:
        _check_batch(batch, samples, "pad", "uniform")


def test_fixed_size_numpy_samples_and_the_unchanged_default(shards):
    import torch

    from pipeline.loader import clip_dataset, to_training_sample

    urls, samples = shards
    raw, _ = samples["clip-00"]
    s = to_training_sample(raw, fps=FPS, size=SIZE, as_torch=False, num_frames=T)
    assert s["frames"].shape == (T, *SIZE, 3) and s["frame_mask"].dtype == np.bool_ and s["length"] == 3
    assert set(s) == {"key", "caption", "frames", "times", "frame_mask", "length", "dense_json", "meta_json"}
    # without the option: the fields and shapes as before, which the default collate cannot batch
    default = list(clip_dataset(urls, fps=FPS, size=48))
    # webdataset's map adds __key__
    assert set(default[0]) == {"__key__", "key", "caption", "frames", "times", "dense", "meta"}
    assert {tuple(d["frames"].shape[2:]) for d in default} == {(48, 64), (48, 96), (72, 48), (48, 48)}
    assert all(isinstance(d["meta"], dict) and isinstance(d["dense"], list) for d in default)
    with pytest.raises(RuntimeError):
        next(iter(torch.utils.data.DataLoader(clip_dataset(urls, fps=FPS, size=48), batch_size=8)))
