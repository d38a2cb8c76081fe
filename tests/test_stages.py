"""Stages on tiny real inputs: real decoder, real PySceneDetect, real model classes (tiny, random)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import av
import pytest

from pipeline.spec import parse_spec
from stages.analyze import analyze_video, explode_clips, AnalyzeStage
from stages.extract import extract_clip

SPEC = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "unused"},
                   "shots": {"min_clip_s": 1.0, "max_clip_s": 4.0}})


def _row(path):
    return {"uri": str(path), "video_id": "v0", "size_bytes": 0}


def test_analysis_finds_known_cuts(demo):
    row = analyze_video(_row(demo["root"] / "videos" / "synthetic_cuts.mp4"), SPEC)
    assert row["status"] == "ok" and row["num_frames"] == 160
    starts = [c["start_frame"] for c in row["clips"]]
    assert len(starts) == 4
    for found, expected in zip(starts[1:], demo["synthetic_cuts"]):
        assert abs(found - expected) <= 1
    assert all(c["status"] == "kept" and len(c["frames"]) == SPEC.analysis.frames_per_clip for c in row["clips"])
    assert row["clips"][0]["start_s"] == 0.0 and row["clips"][-1]["end_s"] == pytest.approx(6.4)


def test_analysis_scores_reject_dark_static(demo):
    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"},
                       "scores": {"min_brightness": 20}})
    row = analyze_video(_row(demo["root"] / "videos" / "dark_static.mp4"), spec)
    assert [c["reason"] for c in row["clips"]] == ["too_dark"]
    assert row["clips"][0]["brightness"] < 20 and row["clips"][0]["frames"] is None


def test_bad_files_become_rejected_rows(demo, tmp_path):
    for name, reason in demo["bad"].items():
        row = analyze_video(_row(demo["root"] / "bad" / name), SPEC)
        assert (row["status"], row["reason"]) == ("rejected", reason), name
    missing = analyze_video(_row(tmp_path / "nope.mp4"), SPEC)
    assert missing["reason"] == "not_found"
    # audio only: a real container without a video stream
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        for p in frame.planes:
            p.update(bytes(p.buffer_size))
        frame.sample_rate = 16000
        for pkt in s.encode(frame):
            out.mux(pkt)
        out.mux(s.encode(None))
    assert analyze_video(_row(path), SPEC)["reason"] == "no_video_stream"


def test_truncated_file_is_rejected(demo, tmp_path):
    data = (demo["root"] / "videos" / "bikes.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # moov atom at the end -> unreadable
    row = analyze_video(_row(cut), SPEC)
    assert row["status"] == "rejected" and row["reason"] in ("not_a_video", "truncated", "no_frames")


def test_stage_tables_follow_schemas(demo):
    import pyarrow as pa

    import schemas

    batch = pa.Table.from_pylist([_row(demo["root"] / "videos" / "bikes.mp4"), _row(demo["root"] / "bad" / "empty.mp4")])
    analyzed = AnalyzeStage(spec=SPEC)(batch)
    assert analyzed.num_rows == 2
    clips = explode_clips(analyzed)
    assert clips.schema.equals(schemas.CLIP_WORK)
    assert clips.num_rows == analyzed.column("num_clips").to_pylist()[0]


def test_extract_clip_frame_exact_and_deterministic(demo):
    path = str(demo["root"] / "videos" / "synthetic_cuts.mp4")
    data = extract_clip(path, 1.6, 3.2)
    assert data == extract_clip(path, 1.6, 3.2)
    with av.open(io.BytesIO(data)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 40


def test_model_stages_on_tiny_models(demo):
    """Real open_clip and transformers classes, random tiny weights, through the stage classes."""
    from stages.caption import CaptionStage
    from stages.embed import ClipEmbedStage

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"},
                       "models": {"clip": demo["clip"], "vlm": demo["vlm"]},
                       "clip_filter": {"max_reject_margin": None}, "caption": {"max_new_tokens": 8}})
    import pyarrow as pa

    analyzed = AnalyzeStage(spec=SPEC)(pa.Table.from_pylist([_row(demo["root"] / "videos" / "synthetic_cuts.mp4")]))
    clips = ClipEmbedStage(model=spec.models.clip, settings=spec.clip_filter)(explode_clips(analyzed))
    rows = clips.to_pylist()
    assert all(len(r["embedding"]) == 64 and -1 <= r["clip_keep_sim"] <= 1 for r in rows)
    assert all(r["clip_model"].startswith("open_clip:vidcurate-tiny-clip") for r in rows)
    captioned = CaptionStage(model=spec.models.vlm, settings=spec.caption)(clips).to_pylist()
    assert all(isinstance(r["caption_text"], str) and r["caption_prompt_version"] == "clip_v1" for r in captioned)
    assert json.loads(captioned[0]["caption_generation"])["max_new_tokens"] == 8


def test_torchvision_guard_in_fresh_process():
    code = ("from stages.torchvision_cpu_guard import ensure_torchvision; import torch; "
            "applied = ensure_torchvision(); import torchvision, open_clip; "
            "print('cuda' if torch.cuda.is_available() else 'cpu', applied)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    device, _, applied = out.strip().partition(" ")
    if device == "cuda":
        assert applied == "[]"  # GPU machines are untouched


def test_shots_cli(demo):
    out = subprocess.run([sys.executable, "-m", "pipeline", "shots", str(demo["root"] / "videos" / "synthetic_cuts.mp4")],
                         capture_output=True, text=True, check=True).stdout
    shots = json.loads(out)["shots"]
    assert [s["start_frame"] for s in shots][1:] == pytest.approx(demo["synthetic_cuts"], abs=1)
    assert all(s["end_frame"] == n["start_frame"] for s, n in zip(shots, shots[1:]))
    assert shots[-1]["end_frame"] == 160 and shots[0]["start_s"] == 0.0


def test_console_script_validate(demo):
    from tests.conftest import ROOT, demo_overrides

    exe = str(Path(sys.executable).parent / "vidcurate")
    sets = [a for o in demo_overrides(demo, demo["root"] / "out") for a in ("--set", o)]
    ok = subprocess.run([exe, "validate", str(ROOT / "jobs" / "demo.yaml"), *sets], capture_output=True, text=True)
    assert ok.returncode == 0 and "valid" in ok.stdout, ok.stderr
    bad = subprocess.run([exe, "validate", str(ROOT / "jobs" / "demo.yaml"), *sets, "--set", "caption.batch_sise=3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "caption.batch_sise: unknown key" in bad.stderr
