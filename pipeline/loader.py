"""Reading vidcurate shards in a trainer: WebDataset samples -> decoded frames + dense captions.

    from pipeline.loader import clip_dataset
    ds = clip_dataset("out/demo/shards/shard-{000000..000002}.tar", fps=2, size=224)
    for s in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=4):
        s["frames"]    # uint8 tensor [T, 3, H, W]: frames sampled at ``fps`` from the clip's mp4
        s["times"]     # float tensor [T]: their times in seconds from the clip start
        s["caption"]   # the clip caption (str)
        s["dense"]     # [(start_s, end_s, text)]: window captions, times from the clip start
        s["meta"]      # the sample's json (scores, chapter, structured caption fields, ids)

The dataset is a ``webdataset.WebDataset`` pipeline (an ``IterableDataset``): shard lists,
``s3://`` URLs through ``pipe:aws s3 cp ...``, shuffling and splitting across DataLoader
workers work as they do in WebDataset. ``manifest_urls(OUTPUT)`` lists an output's committed
shards from its manifest.
"""

from __future__ import annotations

import io
import json

import numpy as np


def manifest_urls(output: str, long: bool = False) -> list[str]:
    """Paths of the committed shards of a local output (``long``: the chapter-level shards)."""
    from pathlib import Path

    manifest = json.loads((Path(output) / "manifest.json").read_text())
    return [str(Path(output) / s["path"]) for s in manifest["long_shards" if long else "shards"]]


def decode_frames(mp4: bytes, fps: float | None = 2.0, size: int | None = 224,
                  max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [T, H, W, 3] RGB, times float32 [T] in seconds from the first frame) of an
    mp4. ``fps``: frames taken at this rate (None: every frame); ``size``: short side after an
    aspect-preserving resize (None: as stored)."""
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
            if size is not None:
                scale = size / min(w, h)
                w, h = max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)
            frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
            times.append(rel)
            if fps is not None:
                next_t = len(times) / fps
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError("the sample's mp4 holds no frames")
    return np.stack(frames), np.asarray(times, dtype=np.float32)


def to_training_sample(sample: dict, fps: float | None = 2.0, size: int | None = 224,
                       max_frames: int | None = None, as_torch: bool = True) -> dict:
    """One raw WebDataset sample ({"__key__", "mp4", "json", "txt"}) -> a training sample."""
    meta = json.loads(sample["json"])
    frames, times = decode_frames(sample["mp4"], fps, size, max_frames)
    dense = [(d["start_s"], d["end_s"], d["text"]) for d in meta.get("dense_captions") or []]
    if not dense and meta.get("captions"):  # chapter samples: every clip and window caption inside
        dense = [(c["start_s"], c["end_s"], c["text"]) for c in meta["captions"]]
    out = {"key": sample["__key__"], "caption": sample.get("txt", b"").decode("utf-8"), "dense": dense,
           "meta": meta}
    if as_torch:
        import torch

        out["frames"] = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        out["times"] = torch.from_numpy(times)
    else:
        out["frames"], out["times"] = frames, times
    return out


def clip_dataset(urls, fps: float | None = 2.0, size: int | None = 224, max_frames: int | None = None,
                 shuffle: int = 0, as_torch: bool = True):
    """A WebDataset pipeline of training samples from vidcurate shards (see the module doc)."""
    import webdataset as wds

    ds = wds.WebDataset(urls, shardshuffle=shuffle or False, empty_check=False)
    if shuffle:
        ds = ds.shuffle(shuffle)
    return ds.map(lambda s: to_training_sample(s, fps, size, max_frames, as_torch))
