"""Reading vidcurate shards in a trainer: WebDataset samples -> decoded frames + dense captions.

    from pipeline.loader import clip_dataset
    ds = clip_dataset("out/demo/shards/shard-{000000..000002}.tar", fps=2, size=224)
    for s in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=4):
        s["frames"]    # uint8 tensor [T, 3, H, W]: frames sampled at ``fps`` from the clip's mp4
        s["times"]     # float tensor [T]: their times in seconds from the clip start
        s["caption"]   # the clip caption (str)
        s["dense"]     # [(start_s, end_s, text)]: window captions, times from the clip start
        s["meta"]      # the sample's json (scores, chapter, structured caption fields, ids)

In a process that has itself decoded video with PyAV (or runs Ray) before the DataLoader starts,
pass ``multiprocessing_context="spawn"``: a worker forked from such a process can block forever
inside FFmpeg (seen in this project's tests).

Those samples differ in shape (frame count, width) and hold lists and dicts, so they go one at a
time (``batch_size=None``). Fixed-size samples, for batches with the DataLoader's default collate:
``size=(H, W)`` and ``num_frames=T`` together.

    ds = clip_dataset(urls, fps=4, size=(224, 224), num_frames=16, fit="crop")
    for b in torch.utils.data.DataLoader(ds, batch_size=8, num_workers=4):
        b["frames"]      # uint8 [8, 16, 3, 224, 224]; frames past a clip's end are zeros
        b["frame_mask"]  # bool [8, 16]: True where the frame is real
        b["length"]      # int64 [8]: real frames of each sample (the first ``length`` of T)
        b["times"]       # float [8, 16]: seconds from the clip start, 0 where the mask is False
        b["caption"], b["key"]  # lists of 8 str
        b["dense_json"]  # 8 JSON str, each [[start_s, end_s, text], ...]: ``dense`` above
        b["meta_json"]   # 8 JSON str, each the sample's json as stored: ``meta`` above

``fit``: "crop" scales a frame to cover H x W (aspect kept) and cuts the centre out; "pad"
scales it to fit inside and centres it on zeros. Frames are taken at ``fps`` (None: every
frame), then ``sampling`` keeps T of them: "uniform" spreads them evenly over the clip (the
middle frame of each of T equal runs), "first" keeps the first T (and stops decoding there).
A clip with fewer than T frames is padded with zero frames at its end.

The dataset is a ``webdataset.WebDataset`` pipeline (an ``IterableDataset``): shard lists,
``s3://`` URLs through ``pipe:aws s3 cp ...``, shuffling and splitting across DataLoader
workers work as they do in WebDataset. ``manifest_urls(OUTPUT)`` lists an output's committed
shards from its manifest.
"""

from __future__ import annotations

import functools
import io
import json
import numbers

import numpy as np

FITS = ("crop", "pad")
SAMPLINGS = ("uniform", "first")


def manifest_urls(output: str, long: bool = False) -> list[str]:
    """Paths of the committed shards of a local output (``long``: the chapter-level shards)."""
    from pathlib import Path

    manifest = json.loads((Path(output) / "manifest.json").read_text())
    return [str(Path(output) / s["path"]) for s in manifest["long_shards" if long else "shards"]]


def fit_box(src_h: int, src_w: int, dst_h: int, dst_w: int, fit: str) -> tuple[int, int, int, int]:
    """(height, width, top, left): the size a src_h x src_w frame is resized to, aspect kept, and
    where its top-left corner lands on a dst_h x dst_w frame. "crop": it covers the frame and its
    centre is kept (top, left <= 0); "pad": it fits inside and is centred (top, left >= 0)."""
    if fit == "crop":
        scale = max(dst_h / src_h, dst_w / src_w)
        h, w = max(dst_h, round(src_h * scale)), max(dst_w, round(src_w * scale))
    else:
        scale = min(dst_h / src_h, dst_w / src_w)
        h, w = max(1, min(dst_h, round(src_h * scale))), max(1, min(dst_w, round(src_w * scale)))
    return h, w, (dst_h - h) // 2, (dst_w - w) // 2


def place(img: np.ndarray, dst_h: int, dst_w: int, top: int, left: int) -> np.ndarray:
    """A dst_h x dst_w frame of zeros with ``img`` [h, w, C] put at (top, left); negative
    offsets cut off the part of ``img`` above or left of the frame, what overhangs is dropped."""
    out = np.zeros((dst_h, dst_w) + img.shape[2:], img.dtype)
    sy, sx, dy, dx = max(0, -top), max(0, -left), max(0, top), max(0, left)
    h, w = min(img.shape[0] - sy, dst_h - dy), min(img.shape[1] - sx, dst_w - dx)
    if h > 0 and w > 0:
        out[dy:dy + h, dx:dx + w] = img[sy:sy + h, sx:sx + w]
    return out


def even_indices(n: int, k: int) -> list[int]:
    """k of n indices spread evenly: the middle of each of k equal runs (all n when n <= k)."""
    if n <= k:
        return list(range(n))
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]


def fixed_length(frames: np.ndarray, times: np.ndarray, num_frames: int, sampling: str = "uniform"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames [num_frames, ...], times [num_frames], mask bool [num_frames]) from frames [n, ...]:
    ``sampling`` picks num_frames of them ("uniform": ``even_indices``; "first": the first ones)
    and zeros pad the end where n < num_frames; the mask is True on real frames."""
    n = len(frames)
    keep = even_indices(n, num_frames) if sampling == "uniform" else list(range(min(n, num_frames)))
    out = np.zeros((num_frames,) + frames.shape[1:], frames.dtype)
    out_times, mask = np.zeros(num_frames, np.float32), np.zeros(num_frames, bool)
    out[:len(keep)], out_times[:len(keep)], mask[:len(keep)] = frames[keep], times[keep], True
    return out, out_times, mask


def check_options(fps=2.0, size=224, max_frames=None, num_frames=None, fit="crop", sampling="uniform") -> None:
    """Raise ValueError, naming the argument, for settings the loader cannot follow."""
    def count(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0):
        raise ValueError(f"fps must be a number > 0 or None (every frame), got {fps!r}")
    fixed = isinstance(size, (tuple, list))
    if fixed and not (len(size) == 2 and all(count(v) for v in size)):
        raise ValueError(f"size must be (height, width), two ints >= 1, got {size!r}")
    if not fixed and size is not None and not count(size):
        raise ValueError(f"size must be an int >= 1 (short side), (height, width) or None, got {size!r}")
    for name, v in (("max_frames", max_frames), ("num_frames", num_frames)):
        if v is not None and not count(v):
            raise ValueError(f"{name} must be an int >= 1 or None, got {v!r}")
    if fixed != (num_frames is not None):
        raise ValueError("fixed-size samples take size=(height, width) and num_frames together; "
                         f"got size={size!r}, num_frames={num_frames!r}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def decode_frames(mp4: bytes, fps: float | None = 2.0, size: int | tuple[int, int] | None = 224,
                  max_frames: int | None = None, fit: str = "crop") -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [T, H, W, 3] RGB, times float32 [T] in seconds from the first frame) of an
    mp4. ``fps``: frames taken at this rate (None: every frame); ``size``: short side after an
    aspect-preserving resize, or (H, W) reached as ``fit`` says (see ``fit_box``); None: as stored."""
    import av

    frames, times = [], []
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0, next_t = None, 0.0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else len(times) / float(stream.average_rate or 25)
            t0 = t if t0 is None else t0
            rel = t - t0
            if fps is not None and rel + 1e-6 < next_t:
                continue
            w, h = frame.width, frame.height
            if isinstance(size, (tuple, list)):
                h, w, top, left = fit_box(h, w, size[0], size[1], fit)
                img = place(frame.to_ndarray(format="rgb24", width=w, height=h), size[0], size[1], top, left)
            else:
                if size is not None:
                    scale = size / min(w, h)
                    w, h = max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)
                img = frame.to_ndarray(format="rgb24", width=w, height=h)
            frames.append(img)
            times.append(rel)
            if fps is not None:
                next_t = len(times) / fps
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError("the sample's mp4 holds no frames")
    return np.stack(frames), np.asarray(times, dtype=np.float32)


def to_training_sample(sample: dict, fps: float | None = 2.0, size: int | tuple[int, int] | None = 224,
                       max_frames: int | None = None, as_torch: bool = True, *, num_frames: int | None = None,
                       fit: str = "crop", sampling: str = "uniform") -> dict:
    """One raw WebDataset sample ({"__key__", "mp4", "json", "txt"}) -> a training sample (its
    fields: the module doc; fixed-size ones with ``size=(H, W)`` and ``num_frames``)."""
    check_options(fps, size, max_frames, num_frames, fit, sampling)
    meta = json.loads(sample["json"])
    if num_frames is not None and sampling == "first":  # the rest would be decoded to be dropped
        max_frames = min(max_frames or num_frames, num_frames)
    frames, times = decode_frames(sample["mp4"], fps, size, max_frames, fit)
    dense = [(d["start_s"], d["end_s"], d["text"]) for d in meta.get("dense_captions") or []]
    if not dense and meta.get("captions"):  # chapter samples: every clip and window caption inside
        dense = [(c["start_s"], c["end_s"], c["text"]) for c in meta["captions"]]
    out = {"key": sample["__key__"], "caption": sample.get("txt", b"").decode("utf-8")}
    if num_frames is None:
        out.update(dense=dense, meta=meta)
    else:  # the default collate batches tensors, numbers and str, not ragged lists or dicts with None
        frames, times, mask = fixed_length(frames, times, num_frames, sampling)
        out.update(frame_mask=mask, length=int(mask.sum()), dense_json=json.dumps(dense),
                   meta_json=sample["json"].decode("utf-8"))
    if as_torch:
        import torch

        out["frames"] = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        out["times"] = torch.from_numpy(times)
        if num_frames is not None:
            out["frame_mask"] = torch.from_numpy(out["frame_mask"])
    else:
        out["frames"], out["times"] = frames, times
    return out


def clip_dataset(urls, fps: float | None = 2.0, size: int | tuple[int, int] | None = 224,
                 max_frames: int | None = None, shuffle: int = 0, as_torch: bool = True, *,
                 num_frames: int | None = None, fit: str = "crop", sampling: str = "uniform"):
    """A WebDataset pipeline of training samples from vidcurate shards (see the module doc).
    ``size``: an int short side, or (H, W) with ``num_frames`` for fixed-size samples that batch
    with the DataLoader's default collate; ``fit`` and ``sampling`` apply to those."""
    import webdataset as wds

    check_options(fps, size, max_frames, num_frames, fit, sampling)
    ds = wds.WebDataset(urls, shardshuffle=shuffle or False, empty_check=False)
    if shuffle:
        ds = ds.shuffle(shuffle)
    return ds.map(functools.partial(to_training_sample, fps=fps, size=size, max_frames=max_frames,
                                    as_torch=as_torch, num_frames=num_frames, fit=fit, sampling=sampling))
