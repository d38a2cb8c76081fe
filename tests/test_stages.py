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
from stages.analyze import analyze_video
from stages.extract import encode_clip, extract_clip
from tests.media import encode, patterns

SPEC = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "unused"},
                   "shots": {"min_clip_s": 1.0, "max_clip_s": 4.0}})


def _row(path):
    return {"uri": str(path), "video_id": "v0", "size_bytes": 0}


def _clips(path, spec):
    """The in-flight clip table of one analysed video (what the analyze unit commits)."""
    import schemas

    return schemas.work_table(analyze_video(_row(path), spec)["clips"])


def test_analysis_finds_known_cuts(demo):
    row = analyze_video(_row(demo["root"] / "videos" / "synthetic_cuts.mp4"), SPEC)
    assert row["status"] == "ok" and row["num_frames"] == 160
    starts = [c["start_frame"] for c in row["clips"]]
    assert len(starts) == 4
    for found, expected in zip(starts[1:], demo["synthetic_cuts"]):
        assert abs(found - expected) <= 1
    assert all(c["status"] == "kept" and len(c["frames"]) == SPEC.analysis.frames_per_clip for c in row["clips"])
    assert row["clips"][0]["start_s"] == 0.0 and row["clips"][-1]["end_s"] == pytest.approx(6.4)


def test_analysis_measures_and_the_decision_rejects_dark_static(demo):
    """The analysis records scores and keeps every frame a later decision may need; the
    threshold rejects in stages.decide, and moving it needs no second analysis."""
    from stages.decide import decided

    dark = SPEC.model_copy(update={"scores": SPEC.scores.model_copy(update={"min_brightness": 20})})
    row = analyze_video(_row(demo["root"] / "videos" / "dark_static.mp4"), SPEC)
    (clip,) = row["clips"]
    assert clip["status"] == "kept" and clip["reason"] is None and clip["brightness"] < 20
    assert len(clip["frames"]) == SPEC.analysis.frames_per_clip
    assert [(c["status"], c["reason"]) for c in decided(row["clips"], dark)] == [("rejected", "too_dark")]
    assert [(c["status"], c["reason"]) for c in decided(row["clips"], SPEC)] == [("kept", None)]
    assert analyze_video(_row(demo["root"] / "videos" / "dark_static.mp4"), dark)["clips"][0]["clip_id"] == \
        clip["clip_id"]  # the threshold is no part of the clip's id


def test_bad_files_become_rejected_rows(demo, tmp_path):
    for name, reason in demo["bad"].items():
        row = analyze_video(_row(demo["root"] / "bad" / name), SPEC)
        assert (row["status"], row["reason"]) == ("rejected", reason), name
    missing = analyze_video(_row(tmp_path / "nope.mp4"), SPEC)
    assert missing["reason"] == "not_found"
    # audio only: a real container without a video stream
    path = encode(tmp_path / "audio.m4a", 0, audio=1)
    assert analyze_video(_row(path), SPEC)["reason"] == "no_video_stream"


def _synthetic(path, frames=100, fmt=None, options=None):
    """A new test pattern every 2 s (the last nearly black); ``fmt``/``options``: the container's."""
    return encode(path, frames, picture=patterns(every=50, kinds=(0, 1, 2, 3)), fmt=fmt, options=options)


def test_truncated_file_is_rejected(tmp_path):
    # index at the start (faststart), then the file is cut: the decoder stops early without error
    full = _synthetic(tmp_path / "full.mp4", 200, options={"movflags": "faststart"})
    data = full.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    row = analyze_video(_row(cut), SPEC)
    assert (row["status"], row["reason"]) == ("rejected", "truncated"), row
    # index at the end, cut: the container cannot be opened at all, and its boxes say why
    tail_index = _synthetic(tmp_path / "tail.mp4", 200).read_bytes()
    (tmp_path / "cut2.mp4").write_bytes(tail_index[: len(tail_index) // 2])
    row = analyze_video(_row(tmp_path / "cut2.mp4"), SPEC)
    assert row["reason"] == "truncated", row
    assert row["message"].startswith("the file ends inside its 'mdat' box") and "its index ('moov') is missing" in row["message"]
    # cut inside a front index: the demuxer finds no video stream; the index box is cut off
    moov = data.find(b"moov") - 4
    for name, end in (("cut3.mp4", moov + 300), ("cut4.mp4", moov + 3)):
        (tmp_path / name).write_bytes(data[:end])
        row = analyze_video(_row(tmp_path / name), SPEC)
        assert (row["status"], row["reason"]) == ("rejected", "truncated"), row
        assert "the file ends inside" in row["message"], row
    # not an ISO file, or a whole one with its index cut away: the walk says nothing
    from stages.probe import box_truncation

    (tmp_path / "text.mp4").write_text("not a video\n" * 100)
    assert box_truncation(str(tmp_path / "text.mp4")) is None
    assert box_truncation(str(full)) is None and box_truncation(str(tmp_path / "tail.mp4")) is None
    assert analyze_video(_row(tmp_path / "text.mp4"), SPEC)["reason"] == "not_a_video"


def test_raw_elementary_stream_is_analyzed_and_extracted(tmp_path):
    raw = _synthetic(tmp_path / "raw.h264", 100, fmt="h264")
    assert raw.read_bytes()[:4] == b"\x00\x00\x00\x01"  # an Annex B start code: no container around it
    row = analyze_video(_row(raw), SPEC)
    assert row["status"] == "ok" and row["num_frames"] == 100
    kept = [c for c in row["clips"] if c["status"] == "kept"]
    assert kept
    with av.open(io.BytesIO(encode_clip(str(raw), kept[-1]["start_s"], kept[-1]["end_s"]))) as c:
        assert sum(1 for _ in c.decode(video=0)) == kept[-1]["end_frame"] - kept[-1]["start_frame"]


def test_shard_writer_leaves_out_clips_it_cannot_extract(demo, tmp_path):
    import hashlib

    import webdataset as wds

    from pipeline.spec import load_spec
    from pipeline.storage import LocalStore
    from pipeline.writer import write_shards

    clip = {"start_s": 1.2, "end_s": 3.04, "start_frame": 30, "end_frame": 76, "keyframe_aligned": False,
            "pts_timing": True}
    good = {"key": "aa11", "uri": str(demo["root"] / "videos" / "bikes.mp4"), "clip": clip,
            "json": {"clip_id": "aa11"}, "txt": "a caption"}
    bad = {**good, "key": "bb22", "uri": str(demo["root"] / "bad" / "random_bytes.mp4"), "json": {"clip_id": "bb22"}}
    later = {**good, "key": "cc33", "json": {"clip_id": "cc33"}}
    spec = load_spec(Path(__file__).resolve().parent.parent / "jobs" / "demo.yaml", [f"output.uri={tmp_path}"])
    shards, methods, failed = write_shards(LocalStore(tmp_path), "shards", [good, bad, later], 2, "part-000007", spec)
    assert [s["shard"] for s in shards] == ["part-000007-000000.tar", "part-000007-000001.tar"]
    assert [s["samples"] for s in shards] == [1, 1] and list(failed) == ["bb22"]
    assert methods == {"aa11": "encode", "cc33": "encode"}
    first = tmp_path / "shards" / "part-000007-000000.tar"
    assert [s["__key__"] for s in wds.WebDataset(str(first), shardshuffle=False)] == ["aa11"]
    assert shards[0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert shards[0]["path"] == "shards/part-000007-000000.tar" and shards[0]["bytes"] == first.stat().st_size


def test_stage_tables_follow_schemas(demo):
    import schemas

    rows = [analyze_video(_row(demo["root"] / name), SPEC) for name in ("videos/bikes.mp4", "bad/empty.mp4")]
    videos = schemas.table("videos", [{f.name: r.get(f.name) for f in schemas.VIDEOS} for r in rows])
    assert videos.num_rows == 2 and videos.column("status").to_pylist() == ["ok", "rejected"]
    clips = schemas.work_table(rows[0]["clips"])
    assert clips.schema.equals(schemas.CLIP_WORK)
    assert clips.num_rows == rows[0]["num_clips"] > 0 and rows[1]["clips"] == []


def test_extract_clip_frame_exact_and_deterministic(demo):
    path = str(demo["root"] / "videos" / "synthetic_cuts.mp4")
    data = encode_clip(path, 1.6, 3.2)
    assert data == encode_clip(path, 1.6, 3.2)
    with av.open(io.BytesIO(data)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 40


def test_model_stages_on_tiny_models(demo):
    """Real open_clip and transformers classes, random tiny weights, through the stage classes."""
    from stages.caption import CaptionStage
    from stages.embed import ClipEmbedStage

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"},
                       "models": {"clip": demo["clip"], "vlm": demo["vlm"]},
                       "clip_filter": {"max_reject_margin": None}, "caption": {"max_new_tokens": 8}})

    clips = ClipEmbedStage(model=spec.models.clip, settings=spec.clip_filter)(
        _clips(demo["root"] / "videos" / "synthetic_cuts.mp4", SPEC))
    rows = clips.to_pylist()
    assert all(len(r["embedding"]) == 64 and -1 <= r["clip_keep_sim"] <= 1 for r in rows)
    assert all(r["clip_model"].startswith("open_clip:vidcurate-tiny-clip") for r in rows)
    captioned = CaptionStage(model=spec.models.vlm, settings=spec.caption)(clips).to_pylist()
    assert all(isinstance(r["caption_text"], str) and r["caption_prompt_version"] == "clip_json_v2" for r in captioned)
    assert json.loads(captioned[0]["caption_generation"])["max_new_tokens"] == 8
    # random weights write no JSON: each caption is kept as text and marked failed after the retry
    assert {r["caption_parse_status"] for r in captioned if r["status"] == "kept"} == {"failed"}


def test_caption_stage_retries_unparsable_replies_and_offers_hints(demo):
    """The stage's logic around the model, with a scripted model standing in for the VLM."""

    from stages.caption import CaptionStage

    replies = [["I see a bright disc.", '```json\n{"summary": "A disc moves right.", "camera_motion": "static"}\n```'],
               ['{"summary": "A disc moves right.", "shot_type": "wide"}']]

    class Scripted:
        model_id = "scripted"

        def __init__(self):
            self.prompts = []

        def generate_prepared(self, items, **kw):
            prompts = [it["prompt"] for it in items]
            self.prompts.append(prompts)
            return replies[len(self.prompts) - 1][:len(prompts)] if len(self.prompts) > 1 else replies[0][:len(prompts)]

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"}, "scores": {"min_motion": 0}})
    rows = _clips(demo["root"] / "videos" / "synthetic_cuts.mp4", spec).slice(0, 2)
    stage = CaptionStage(model=spec.models.vlm, settings=spec.caption)
    stage._runner, stage._ready = Scripted(), True

    class ScriptedInputs:  # the processor half: the prompt passes through
        def prepare(self, prompt, images):
            assert len(images) == spec.caption.frames
            return {"prompt": prompt}

    stage._inputs = ScriptedInputs()
    stage._prompt_version, stage._prompt = "clip_json_v1", "Describe.\n{hints}\nAnswer in JSON."
    stage._generation = "{}"
    out = stage.process(rows).to_pylist()
    first, second = stage._runner.prompts
    assert "Measured camera motion" in first[0] and len(second) == 1 and "JSON object only" in second[0]
    assert out[0]["caption_parse_status"] == "repaired" and out[0]["caption_text"] == "A disc moves right."
    assert json.loads(out[0]["caption_fields"])["shot_type"] == "wide"
    assert out[1]["caption_parse_status"] == "ok" and json.loads(out[1]["caption_fields"])["camera_motion"] == "static"


def test_torchvision_guard_in_fresh_process():
    code = ("from stages.torchvision_cpu_guard import ensure_torchvision; import torch; "
            "applied = ensure_torchvision(); import torchvision, open_clip; "
            "print('cuda' if torch.cuda.is_available() else 'cpu', applied)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    device, _, applied = out.strip().partition(" ")  # reaching print means torchvision imported
    assert device in ("cpu", "cuda")
    if device == "cuda":
        assert applied == "[]"  # GPU machines are untouched


def test_torchvision_guard_leaves_other_errors_alone(monkeypatch):
    import builtins

    from stages import torchvision_cpu_guard as guard

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("something else went wrong")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(RuntimeError, match="something else"):
        guard.ensure_torchvision()


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


def test_clips_on_keyframes_are_copied_not_reencoded(demo):
    bikes = str(demo["root"] / "videos" / "bikes.mp4")  # real footage with keyframes at its cuts
    clip = {"start_s": 1.2, "end_s": 3.04, "start_frame": 30, "end_frame": 76, "keyframe_aligned": True,
            "pts_timing": True}
    data, method = extract_clip(bikes, clip)
    assert method == "copy" and data == extract_clip(bikes, clip)[0]
    with av.open(io.BytesIO(data)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 46
    # not on a keyframe (the synthetic file has one at 0 and 4.8 s only): re-encoded instead
    synthetic = str(demo["root"] / "videos" / "synthetic_cuts.mp4")
    data, method = extract_clip(synthetic, {**clip, "start_s": 1.6, "end_s": 3.2, "start_frame": 40, "end_frame": 80})
    assert method == "encode"
    with pytest.raises(ValueError, match="expected 41"):  # the frame count is checked
        encode_clip(synthetic, 1.6, 3.2, expect=41)
    by_index = encode_clip(synthetic, 0.0, 0.0, frame_range=(40, 80), expect=40)  # cut by frame index
    assert by_index == data
    with av.open(io.BytesIO(data)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 40


def test_inputs_prepared_apart_merge_into_the_processors_batch(demo):
    """The CPU prepare stage makes each prompt's inputs on its own; merged, they are the batch
    the processor makes, and generation from them matches the runner's own path."""
    import numpy as np
    from PIL import Image

    from stages.models import VlmRunner, merge_inputs

    runner = VlmRunner(demo["vlm"]["name_or_path"])
    rng = np.random.default_rng(0)
    frames = [[Image.fromarray(rng.integers(0, 255, (56 + 28 * i, 84, 3), dtype=np.uint8)) for _ in range(i + 1)]
              for i in range(3)]
    prompts = ["Describe.", "What moves in this long shot, and where does it go?", "Say one word."]
    items = [runner.inputs.prepare(p, f) for p, f in zip(prompts, frames)] + [runner.inputs.prepare("No image.")]
    merged = merge_inputs(items, runner.inputs.pad_id)

    from stages.models import chat_text

    texts = [chat_text(runner.processor, p, len(f)) for p, f in zip(prompts, frames)]
    texts.append(chat_text(runner.processor, "No image.", 0))
    batch = runner.processor(text=texts, images=frames + [[]], return_tensors="np", padding=True)
    assert set(merged) == set(batch)
    for key in batch:
        if key == "pixel_values":  # float16 in transit
            np.testing.assert_allclose(merged[key], batch[key], rtol=2e-3, atol=2e-3)
        else:
            np.testing.assert_array_equal(merged[key], batch[key])
    assert merged["input_ids"][0, 0] == runner.inputs.pad_id  # left padding
    one_by_one = [runner.generate_prepared([it], max_new_tokens=4)[0] for it in items]
    assert runner.generate_prepared(items, max_new_tokens=4) == one_by_one


def test_caption_pools_clips_of_several_videos_into_model_batches(demo):
    """caption.videos_per_batch > 1: the items of every unit in a call share model batches of
    resources.caption.batch_size, and each unit's rows get their own captions back."""
    from stages.caption import CaptionStage, caption_items

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"}, "scores": {"min_motion": 0},
                       "caption": {"format": "text", "window_s": None}})
    rows = _clips(demo["root"] / "videos" / "synthetic_cuts.mp4", spec).to_pylist()
    units = [[dict(r) for r in rows] for _ in range(3)]
    per_unit = len(caption_items(units[0]))
    assert per_unit >= 2

    class Scripted:
        model_id = "scripted"
        batches = []

        def generate_prepared(self, items, **kw):
            self.batches.append(len(items))
            return [it["prompt"] for it in items]  # echo: each reply names its item

    class Inputs:
        def prepare(self, prompt, images):
            return {"prompt": f"{prompt}|{len(images)}"}

    stage = CaptionStage(model=spec.models.vlm, settings=spec.caption, batch_size=4)
    stage._runner, stage._inputs, stage._ready = Scripted(), Inputs(), True
    stage._prompt_version, stage._prompt, stage._generation = "p", "clip of {duration} s", "{}"
    prepared = [stage.prepare(u) for u in units[:2]]
    stage.caption([(units[0], prepared[0]), (units[1], prepared[1]), (units[2], None)])
    total = 3 * per_unit
    assert stage._runner.batches == [4] * (total // 4) + ([total % 4] if total % 4 else [])
    for unit in units:
        for row in unit:
            if row["status"] == "kept":
                assert row["caption_text"] == f"clip of {row['end_s'] - row['start_s']:.1f} s|{spec.caption.frames}"


def test_vllm_backend_refuses_clearly_without_vllm(monkeypatch):
    """Without vLLM the error names the extra to install; tests/test_vllm.py runs it on CPU."""
    import builtins

    from stages import models

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(RuntimeError, match=r"backend: vllm needs vLLM .*pip install 'vidcurate\[vllm\]'"):
        models._vllm_engine("some/model", "auto", 4)
    assert parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"},
                       "models": {"vlm": {"backend": "vllm"}}}).models.vlm.backend == "vllm"
    with pytest.raises(Exception, match="backend"):
        parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"}, "models": {"vlm": {"backend": "tgi"}}})
