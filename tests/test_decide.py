"""Measure once, decide cheaply: thresholds decide from recorded scores, and moving one re-runs
no decode, no CLIP call and no caption a clip already has."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, demo_overrides, mini_settings

SCORES = SimpleNamespace(min_motion=None, max_motion=None, min_sharpness=20.0, min_brightness=None,
                         max_brightness=None, min_contrast=None, max_black_fraction=None, max_frozen_fraction=None,
                         max_letterbox=None, min_dynamic_degree=None, min_aesthetic=4.0)
CLIP_FILTER = SimpleNamespace(max_reject_margin=0.0, min_keep_sim=None)
MEASURED = {"motion": 1.0, "sharpness": 50.0, "brightness": 100.0, "contrast": 30.0, "black_fraction": 0.0,
            "frozen_fraction": 0.0, "letterbox": 0.0, "dynamic_degree": 0.5}


def _clip(cid: str, status="kept", reason=None, **kw) -> dict:
    return {"clip_id": cid, "status": status, "reason": reason, **MEASURED, **kw}


def test_the_cut_decides_first_then_scores_then_clip():
    from stages.decide import reason as decide

    settings = SimpleNamespace(scores=SCORES, clip_filter=CLIP_FILTER)

    def reason(clip, *_):
        return decide(clip, settings)

    assert reason(_clip("a", "rejected", "too_short", sharpness=1.0), SCORES, CLIP_FILTER) == "too_short"
    assert reason(_clip("a", sharpness=1.0, clip_keep_sim=0.1, clip_reject_sim=0.9), SCORES, CLIP_FILTER) == "blurry"
    assert reason(_clip("a", clip_keep_sim=0.1, clip_reject_sim=0.9), SCORES, CLIP_FILTER) == "clip_reject_prompt"
    assert reason(_clip("a", clip_keep_sim=0.9, clip_reject_sim=0.1), SCORES, CLIP_FILTER) is None
    assert reason(_clip("a"), SCORES, CLIP_FILTER) is None  # not measured by CLIP yet: not judged on it
    assert reason(_clip("a", sharpness=None), SCORES, CLIP_FILTER) == "blurry"  # unmeasurable fails, as NaN does
    ugly = _clip("a", clip_keep_sim=0.9, clip_reject_sim=0.1, aesthetic=3.0, aesthetic_model="head")
    assert reason(ugly, SCORES, CLIP_FILTER) == "low_aesthetic"
    assert reason({**ugly, "aesthetic": 4.5}, SCORES, CLIP_FILTER) is None
    assert reason({**ugly, "aesthetic_model": None, "aesthetic": None}, SCORES, CLIP_FILTER) is None  # no head: not judged


def test_the_clip_stage_scores_aesthetics_with_the_head_on_its_own_embeddings(demo_run):
    """The demo job runs the tiny aesthetic head beside its tiny CLIP: every clip the cut keeps
    gets the score of its least aesthetic frame and the head's provenance."""
    out, _, _ = demo_run
    clips = pq.read_table(out / "clips").to_pylist()
    measured = [c for c in clips if c["reason"] not in ("too_short", "transition")]
    assert measured and all(c["aesthetic"] is not None and c["aesthetic_model"].startswith("tiny-aesthetic-64")
                            for c in measured)
    assert len({round(c["aesthetic"], 4) for c in measured}) > 1


def test_captions_are_reused_per_clip_and_only_missing_kept_ones_are_asked_for():
    from pipeline.units import caption_work, restore_status, to_caption, with_captions

    spec = SimpleNamespace(scores=SCORES, clip_filter=CLIP_FILTER)
    measured = [_clip("a", windows=[{"start_s": 0.0, "frames": [b"j"], "caption_text": None}]),
                _clip("b"), _clip("c", sharpness=1.0), _clip("d", "rejected", "too_short")]
    committed = [{**measured[0], "caption_model": "m", "caption_text": "old a", "frames": None,
                  "windows": [{"start_s": 0.0, "frames": None, "caption_text": "old window"}]},
                 {**measured[2], "caption_model": "m", "caption_text": "c under a looser threshold"}]
    rows = with_captions(measured, committed)
    assert [r.get("caption_text") for r in rows] == ["old a", None, "c under a looser threshold", None]
    assert rows[0]["windows"] == [{"start_s": 0.0, "frames": [b"j"], "caption_text": "old window"}]
    todo = to_caption(rows, spec)
    assert todo == {"b"}  # a has a caption, c is blurry now, d was cut short
    work = caption_work(rows, todo)
    assert [w["status"] for w in work] == ["rejected", "kept", "rejected", "rejected"]
    restored = restore_status(work, measured)
    assert [(r["status"], r["reason"]) for r in restored] == [(m["status"], m["reason"]) for m in measured]


def _stage_work(out) -> dict:
    return json.loads((out / "_work" / "last_run.json").read_text())["stages"]


def _tables(out) -> dict:
    return {name: pq.read_table(out / name).to_pylist() for name in ("videos", "clips", "captions", "chapters")}


def test_a_threshold_rerun_decodes_nothing_and_calls_no_model_for_measured_clips(demo_run, demo, ray_local, tmp_path):
    """On the demo job's finished output: a stricter motion threshold re-runs no analysis, no
    CLIP and no caption call, only the hierarchy of the videos whose kept clips changed; a looser
    CLIP margin then captions only the clips it newly keeps. The output is then byte for byte
    that of a fresh run with the final thresholds. The reruns and the fresh run go one actor
    per stage in one streaming chain (tests/conftest.py mini_settings): how a run is laid out
    on the cluster shapes no result, and each starts every model once."""
    from pipeline.plan import run_job
    from pipeline.spec import load_spec

    first_out, first, _ = demo_run
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    job = ROOT / "jobs" / "demo.yaml"
    kept_before = {c["clip_id"] for c in _tables(out)["clips"] if c["status"] == "kept"}

    stricter = run_job(load_spec(job, [*demo_overrides(demo, out), *mini_settings(), "scores.min_motion=0.3"]),
                       log=lambda *_: None)
    work = _stage_work(out)
    assert not {"analyze", "clip", "text", "prepare", "caption", "caption_fit"} & set(work), work
    clips = _tables(out)["clips"]
    kept = {c["clip_id"] for c in clips if c["status"] == "kept"}
    assert kept < kept_before and stricter["counts"]["clips"] == first["counts"]["clips"]
    assert {c["clip_id"] for c in clips} == {c["clip_id"] for c in _tables(first_out)["clips"]}  # the same ids
    changed_videos = {c["video_id"] for c in clips if c["clip_id"] in kept_before - kept}
    assert 0 < work["hierarchy"]["videos"] <= len(changed_videos)
    captioned = {c["clip_id"] for c in _tables(out)["captions"] if c["level"] == "clip"}
    assert captioned == kept  # a clip the thresholds drop carries no caption, made earlier or not

    # a looser CLIP margin, and the text detector asked for less persistence: the text stage
    # measures again, and no caption is made again for it (the captioner reads no text column)
    final = ["clip_filter.max_reject_margin=1.0", "text.min_persist=1"]
    looser = load_spec(job, [*demo_overrides(demo, out), *mini_settings(), *final])
    run_job(looser, log=lambda *_: None)
    work = _stage_work(out)
    assert not {"analyze", "clip"} & set(work) and work["text"]["videos"] == first["counts"]["videos_in"], work
    clips = _tables(out)["clips"]
    now_kept = {c["clip_id"] for c in clips if c["status"] == "kept"}
    new = now_kept - kept_before
    assert new and {c["clip_id"] for c in _tables(out)["captions"] if c["level"] == "clip"} == now_kept
    assert work["caption"]["videos"] == len({c["video_id"] for c in clips if c["clip_id"] in new})
    # the caption results grew in place: their fit is scored again, for those videos only
    assert work["caption_fit"]["videos"] == work["caption"]["videos"]
    assert all(c["caption_clip_sim"] is not None for c in clips if c["clip_id"] in now_kept)

    fresh = tmp_path / "fresh"
    again = run_job(looser, log=lambda *_: None)
    theirs = run_job(load_spec(job, [*demo_overrides(demo, fresh), *mini_settings(), *final]), log=lambda *_: None)
    assert {n: [p["sha256"] for p in t["parts"]] for n, t in again["tables"].items()} == \
        {n: [p["sha256"] for p in t["parts"]] for n, t in theirs["tables"].items()}
    assert [s["sha256"] for s in again["shards"] + again["long_shards"]] == \
        [s["sha256"] for s in theirs["shards"] + theirs["long_shards"]]


@pytest.mark.parametrize("key", ["scores.min_sharpness=25", "clip_filter.min_keep_sim=0.5",
                                 "clip_filter.max_reject_margin=0.3"])
def test_thresholds_move_only_the_decision(key):
    from pipeline.spec import parse_spec

    base = {"inputs": {"paths": ["x"]}, "output": {"uri": "u"}}
    from pipeline.spec import apply_overrides

    a = parse_spec(base).fingerprints()
    b = parse_spec(apply_overrides(json.loads(json.dumps(base)), [key])).fingerprints()
    assert {k for k in a if a[k] != b[k]} == {"decide"}


def test_the_strict_job_turns_every_declared_filter_on(demo):
    """jobs/strict.yaml sets every threshold schemas.scores declares, with the stages that
    measure them on, and its models resolve (the demo's tiny ones, built offline)."""
    from pipeline.preflight import check_models
    from pipeline.spec import load_spec
    from schemas.scores import thresholds
    from stages.decide import limit_of

    root = demo["root"]
    spec = load_spec(ROOT / "jobs" / "strict.yaml", [
        f"models.clip.pretrained={demo['clip']['pretrained']}", f"models.clip.config={demo['clip']['config']}",
        f"models.clip.aesthetic_head={demo['aesthetic']}", f"models.vlm.name_or_path={demo['vlm']['name_or_path']}",
        f"speech.model={demo['whisper']}", f"inputs.paths=[{root}/videos/*.mp4]"])
    unset = [t.key for _, t in thresholds() if limit_of(t, spec) is None]
    assert not unset, f"jobs/strict.yaml leaves these filters off: {unset}"
    assert spec.text.enabled and spec.speech.enabled and spec.caption_fit.enabled and spec.models.clip.aesthetic_head
    check_models(spec)
