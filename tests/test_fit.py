"""Caption-clip fit (stages.fit): the CLIP cosine of a clip caption against the clip's image
embedding, the caption_mismatch decision on it, and the caption a clip dropped for it keeps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

import schemas


@pytest.fixture(scope="module")
def fit_stage(demo):
    from stages.fit import CaptionFitStage

    clip = SimpleNamespace(name="vidcurate-tiny-clip", pretrained=demo["clip"]["pretrained"],
                           config=demo["clip"]["config"])
    stage = CaptionFitStage(model=clip, settings=SimpleNamespace(enabled=True))
    stage.ensure_ready()
    return stage


def _row(clip_id: str, caption: str | None, embedding) -> dict:
    return {"clip_id": clip_id, "video_id": "v", "uri": "/v.mp4", "status": "kept", "reason": None,
            "start_s": 0.0, "end_s": 2.0, "start_frame": 0, "end_frame": 48, "caption_text": caption,
            "caption_model": "m" if caption else None,
            "embedding": None if embedding is None else [float(x) for x in embedding]}


def test_the_fit_is_the_cosine_of_the_caption_and_the_clip(fit_stage):
    """A clip whose image embedding is the caption's own text embedding (scaled: the stage
    normalises it) scores 1; another caption scores less; rows without a caption or without an
    embedding pass through unscored."""
    dog, car = fit_stage.text_embeddings(["a dog runs on a beach", "a red car on a highway"])
    assert np.allclose(np.linalg.norm(dog), 1.0, atol=1e-5)
    rows = [_row("a", "a dog runs on a beach", 3.0 * dog), _row("b", "a red car on a highway", dog),
            _row("c", None, dog), _row("d", "a dog runs on a beach", None)]
    out = fit_stage(schemas.work_table(rows)).to_pylist()
    assert out[0]["caption_clip_sim"] == pytest.approx(1.0, abs=1e-5)
    assert out[1]["caption_clip_sim"] == pytest.approx(float(car @ dog), abs=1e-5) and out[1]["caption_clip_sim"] < 0.999
    assert out[0]["caption_fit_model"] == f"open_clip:vidcurate-tiny-clip:{fit_stage.model_cfg.pretrained}"
    assert [r["caption_clip_sim"] for r in out[2:]] == [None, None]
    assert [r["caption_fit_model"] for r in out[2:]] == [None, None]


def test_caption_mismatch_is_decided_only_on_clips_whose_caption_was_scored():
    from pipeline.spec import parse_spec
    from stages.decide import reason

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"}, "caption_fit": {"enabled": True},
                       "scores": {"min_caption_clip_sim": 0.2, "min_motion": None}, "clip_filter": {"max_reject_margin": None}})
    base = {"status": "kept", "reason": None}
    assert reason({**base, "caption_clip_sim": 0.1, "caption_fit_model": "m"}, spec) == "caption_mismatch"
    assert reason({**base, "caption_clip_sim": 0.3, "caption_fit_model": "m"}, spec) is None
    assert reason(base, spec) is None  # not captioned yet (the caption stage decides before the fit)


def test_a_fit_threshold_needs_the_stage_that_measures_it():
    from pipeline.spec import SpecError, parse_spec

    with pytest.raises(SpecError, match=r"scores.min_caption_clip_sim needs caption_fit.enabled: true"):
        parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"}, "scores": {"min_caption_clip_sim": 0.2}})
    # moving the threshold moves only the decision; switching the stage on moves only what is
    # written (nothing reads caption_clip_sim but the decision)
    on = {"inputs": {"paths": ["x"]}, "output": {"uri": "u"}, "caption_fit": {"enabled": True}}
    a = parse_spec(on).fingerprints()
    b = parse_spec({**on, "scores": {"min_caption_clip_sim": 0.2}}).fingerprints()
    assert {k for k in a if a[k] != b[k]} == {"decide"}
    off = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "u"}}).fingerprints()
    assert "caption_fit" not in off and {k for k in off if off[k] != a[k]} == {"output"}


def test_a_clip_dropped_for_its_caption_keeps_it_marked_dropped():
    """In the partition's rows: the clip is rejected with its caption in its clips row, and its
    clip and window captions are in the captions rows with ``dropped``, outside any chapter."""
    from pipeline.assemble import join_results, link_hierarchy

    def clip(cid, status, reason, start):
        return {"clip_id": cid, "video_id": "v", "uri": "/v.mp4", "status": status, "reason": reason,
                "start_s": start, "end_s": start + 4.0, "start_frame": int(start * 24), "end_frame": int(start * 24) + 96,
                "caption_text": f"caption {cid}", "caption_fields": None, "caption_model": "m",
                "caption_prompt_version": "p", "caption_generation": "g", "caption_parse_status": "text",
                "windows": [{"start_s": start, "end_s": start + 2.0, "start_frame": 0, "end_frame": 48,
                             "caption_text": f"window of {cid}", "caption_fields": None}]}

    chapter = {"chapter_id": "ch", "video_id": "v", "clip_ids": ["a"], "caption_id": "chcap"}
    rows = join_results([({"video_id": "v", "status": "ok"},
                          [clip("a", "kept", None, 0.0), clip("b", "rejected", "caption_mismatch", 4.0)],
                          {"chapters": [chapter], "captions": [], "entities": None})])
    link_hierarchy(rows)
    by_clip = {}
    for cap in rows["captions"]:
        by_clip.setdefault(cap["clip_id"], []).append(cap)
    assert [(c["level"], c["dropped"], c["chapter_id"]) for c in by_clip["b"]] == [
        ("clip", "caption_mismatch", None), ("window", "caption_mismatch", None)]
    assert [(c["level"], c.get("dropped"), c["chapter_id"]) for c in by_clip["a"]] == [
        ("clip", None, "ch"), ("window", None, "ch")]
    assert [c["clip_id"] for c in rows["kept"]] == ["a"]
    table = pa.Table.from_pylist(rows["captions"], schema=schemas.CAPTIONS)
    assert table.column("dropped").to_pylist() == [None, None, "caption_mismatch", "caption_mismatch"]
