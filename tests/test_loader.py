"""The trainer side: pipeline.loader over the demo's shards, and `vidcurate inspect`."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


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


def test_inspect_prints_counts_tables_and_samples(demo_run):
    out, manifest, _ = demo_run
    result = subprocess.run([sys.executable, "-m", "pipeline", "inspect", str(out), "--samples", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"videos  {manifest['counts']['videos_in']} in" in text
    assert "schema v3" in text and text.count("  sample  ") == 2
    for name in ("videos", "clips", "captions", "chapters"):
        assert f"table   {name}" in text
    missing = subprocess.run([sys.executable, "-m", "pipeline", "inspect", str(out / "nope")],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no committed output" in missing.stderr
