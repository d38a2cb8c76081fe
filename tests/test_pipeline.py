"""End to end on an embedded local Ray: the demo job, its tables, shards and manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

import schemas
from stages.base import CLIP_REASONS
from tests.conftest import ROOT, demo_overrides, mini_settings

EPS = 1e-6


def _tables(out: Path) -> dict:
    return {name: pq.read_table(out / name) for name in schemas.TABLES}


def test_every_input_has_a_videos_row(demo_run, demo):
    out, manifest, _ = demo_run
    videos = {Path(r["uri"]).name: r for r in pq.read_table(out / "videos").to_pylist()}
    inputs = [Path(p).name for p in demo["videos"]] + list(demo["bad"])
    assert sorted(videos) == sorted(inputs)
    for name, reason in demo["bad"].items():
        assert (videos[name]["status"], videos[name]["reason"]) == ("rejected", reason)
    assert all(videos[Path(p).name]["status"] == "ok" for p in demo["videos"])
    assert manifest["counts"]["videos_in"] == len(inputs)


def test_parquet_files_match_declared_schemas(demo_run):
    out, manifest, _ = demo_run
    for name, schema in schemas.TABLES.items():
        table = pq.read_table(out / name)
        assert table.schema.equals(schema, check_metadata=True), name
        assert manifest["tables"][name]["rows"] == table.num_rows


def test_rejections_carry_reasons(demo_run):
    out, _, _ = demo_run
    clips = pq.read_table(out / "clips").to_pylist()
    assert {c["status"] for c in clips} == {"kept", "rejected"}
    for c in clips:
        assert (c["reason"] is None) == (c["status"] == "kept")
    reasons = {c["reason"] for c in clips if c["reason"]}
    assert "low_motion" in reasons  # dark_static.mp4
    assert "text_overlay" in reasons  # bikes.mp4's title, found by the real text detector
    assert reasons <= set(CLIP_REASONS)
    measured = [c for c in clips if c["reason"] not in ("too_short", "transition")]
    assert all(c["text_model"].startswith("rapidocr-onnxruntime ") and 0 <= c["text_area"] <= 1 for c in measured)
    assert all(c["text_model"] is None and c["text_area"] is None for c in clips if c not in measured)


def test_shards_agree_with_tables(demo_run):
    out, manifest, _ = demo_run
    t = {k: v.to_pylist() for k, v in _tables(out).items()}
    clips = {c["clip_id"]: c for c in t["clips"]}
    captions = {c["caption_id"]: c for c in t["captions"]}
    chapters = {c["chapter_id"]: c for c in t["chapters"]}
    seen = []
    for shard in manifest["shards"]:
        path = out / shard["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        n = 0
        for sample in wds.WebDataset(str(path), shardshuffle=False):
            n += 1
            meta = json.loads(sample["json"])
            clip = clips[sample["__key__"]]
            assert meta["clip_id"] == clip["clip_id"] and clip["status"] == "kept"
            assert clip["shard"] == shard["shard"] and clip["key"] == sample["__key__"]
            assert meta["start_s"] == clip["start_s"] and meta["end_s"] == clip["end_s"]
            cap = captions[meta["caption"]["caption_id"]]
            assert cap["clip_id"] == clip["clip_id"] and cap["text"] == meta["caption"]["text"]
            assert sample["txt"].decode() == cap["text"]
            assert meta["chapter"]["chapter_id"] == clip["chapter_id"]
            assert clip["clip_id"] in chapters[clip["chapter_id"]]["clip_ids"]
            assert captions[meta["video_caption_id"]]["level"] == "video"
            assert sample["mp4"][4:8] == b"ftyp"
            seen.append(sample["__key__"])
        assert n == shard["samples"]
    assert sorted(seen) == sorted(c["clip_id"] for c in t["clips"] if c["status"] == "kept")
    methods = {c["extract_method"] for c in t["clips"] if c["status"] == "kept"}
    assert methods == {"copy", "encode"}  # bikes.mp4 has keyframes at its cuts; others do not


def test_long_clips_get_window_captions_that_tile_them(demo_run):
    out, _, _ = demo_run
    t = {k: v.to_pylist() for k, v in _tables(out).items()}
    clip_caps = {c["caption_id"]: c for c in t["captions"] if c["level"] == "clip"}
    windows = [c for c in t["captions"] if c["level"] == "window"]
    long_clips = [c for c in t["clips"] if c["status"] == "kept" and c["duration_s"] > 2.0]
    assert long_clips and len({w["parent_id"] for w in windows}) == len(long_clips)
    for clip in long_clips:
        ws = sorted((w for w in windows if w["parent_id"] == clip["caption_id"]), key=lambda w: w["start_s"])
        assert ws[0]["start_s"] == clip["start_s"] and ws[-1]["end_s"] == clip["end_s"]
        assert all(a["end_s"] == b["start_s"] for a, b in zip(ws, ws[1:]))
        assert all(w["end_s"] - w["start_s"] <= 2.0 + 1e-6 and w["clip_id"] == clip["clip_id"] for w in ws)
        assert clip_caps[clip["caption_id"]]["clip_id"] == clip["clip_id"]
    samples = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        import tarfile

        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    samples[meta["clip_id"]] = meta
    for clip in long_clips:
        dense = samples[clip["clip_id"]]["dense_captions"]
        assert dense[0]["start_s"] == 0.0 and dense[-1]["end_s"] == pytest.approx(clip["duration_s"])


def test_chapter_long_video_samples(demo_run):
    import tarfile

    out, manifest, _ = demo_run
    chapters = {c["chapter_id"]: c for c in _tables(out)["chapters"].to_pylist()}
    assert sorted(p.name for p in (out / "long_shards").iterdir()) == [s["shard"] for s in manifest["long_shards"]]
    seen = {}
    for shard in manifest["long_shards"]:
        with tarfile.open(out / shard["path"]) as tar:
            names = tar.getnames()
            for name in names:
                if name.endswith(".json"):
                    meta = json.loads(tar.extractfile(name).read())
                    mp4 = tar.extractfile(name[:-5] + ".mp4").read()
                    seen[meta["chapter_id"]] = (meta, mp4)
    assert set(seen) == set(chapters)
    for chapter_id, (meta, mp4) in seen.items():
        ch = chapters[chapter_id]
        assert (meta["start_s"], meta["end_s"], meta["title"]) == (ch["start_s"], ch["end_s"], ch["title"])
        assert {c["clip_id"] for c in meta["captions"] if c["level"] == "clip"} == set(ch["clip_ids"])
        assert all(-EPS <= c["start_s"] < c["end_s"] <= meta["duration_s"] + EPS for c in meta["captions"])
        import av

        with av.open(io.BytesIO(mp4)) as c:  # the whole chapter span, frame for frame
            stream = c.streams.video[0]
            n = sum(1 for _ in c.decode(stream))
        first, last = (next(x for x in _tables(out)["clips"].to_pylist() if x["clip_id"] == cid)
                       for cid in (ch["clip_ids"][0], ch["clip_ids"][-1]))
        assert n == last["end_frame"] - first["start_frame"]
    clip_mp4 = {}
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["path"]) as tar:
            clip_mp4 |= {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".mp4")}
    single = [cid for cid, ch in chapters.items() if len(ch["clip_ids"]) == 1]
    assert single and all(seen[cid][1] == clip_mp4[chapters[cid]["clip_ids"][0]] for cid in single), \
        "a chapter of one clip takes that clip's bytes, not a second cut"


def test_container_chapter_marks_become_snapped_chapters(demo_run):
    out, _, _ = demo_run
    t = {k: v.to_pylist() for k, v in _tables(out).items()}
    video = next(v for v in t["videos"] if v["uri"].endswith("synthetic_cuts.mp4"))
    assert [m["title"] for m in video["chapter_marks"]] == ["Disc and checkerboard", "Stripes and disc"]
    chapters = [c for c in t["chapters"] if c["video_id"] == video["video_id"]]
    assert [(c["source"], c["title"]) for c in chapters] == [("metadata", "Disc and checkerboard"),
                                                            ("metadata", "Stripes and disc")]
    assert chapters[1]["start_s"] == pytest.approx(3.2)  # the mark at 3.0 s snapped to the cut at frame 80
    automatic = [c for c in t["chapters"] if c["video_id"] != video["video_id"]]
    assert automatic and all(c["source"] == "automatic" for c in automatic)


def test_chapter_sources_fall_back_in_order():
    from pipeline.spec import parse_spec
    from stages.chapters import chapter_marks

    settings = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}}).chapters
    video = {"duration_s": 60.0, "chapter_marks": [], "boundaries": [{"type": "cut", "start_s": 29.5, "end_s": 29.5}]}
    source, marks = chapter_marks(video, "0:00 Start\n0:30 Second half", settings)
    assert source == "description" and [m["start_s"] for m in marks] == [0.0, 29.5]
    assert chapter_marks(video, "no timestamps here", settings) == ("automatic", None)
    forced = settings.model_copy(update={"source": "automatic"})
    assert chapter_marks(video, "0:00 Start\n0:30 Second half", forced) == ("automatic", None)


def test_caption_and_chapter_times_lie_inside_the_video(demo_run):
    out, _, _ = demo_run
    t = {k: v.to_pylist() for k, v in _tables(out).items()}
    duration = {v["video_id"]: v["duration_s"] for v in t["videos"]}
    captions = {c["caption_id"]: c for c in t["captions"]}
    assert {c["level"] for c in t["captions"]} == {"window", "clip", "chapter", "video"}
    for row in t["captions"] + t["chapters"] + t["clips"]:
        assert -EPS <= row["start_s"] < row["end_s"] <= duration[row["video_id"]] + EPS
        assert row["duration_s"] == pytest.approx(row["end_s"] - row["start_s"])
    for cap in t["captions"]:  # a child lies inside its parent
        if cap["parent_id"]:
            parent = captions[cap["parent_id"]]
            assert parent["start_s"] - EPS <= cap["start_s"] and cap["end_s"] <= parent["end_s"] + EPS
            assert {"window": "clip", "clip": "chapter", "chapter": "video"}[cap["level"]] == parent["level"]
        else:
            assert cap["level"] == "video"
    for ch in t["chapters"]:
        members = [c for c in t["clips"] if c["clip_id"] in ch["clip_ids"]]
        assert ch["start_s"] == min(c["start_s"] for c in members) and ch["end_s"] == max(c["end_s"] for c in members)


def test_outputs_beside_manifest(demo_run):
    out, manifest, spec = demo_run
    import yaml

    saved = yaml.safe_load((out / "spec.yaml").read_text())
    assert saved == manifest["spec"] and saved["output"]["samples_per_shard"] == 4
    assert saved["inputs"]["paths"] == spec.inputs.paths
    assert manifest["tiny_random_models"] is True
    assert {"ray", "pyarrow", "av", "transformers", "open_clip_torch"} <= set(manifest["versions"])
    assert sorted(p.name for p in (out / "shards").iterdir()) == [s["shard"] for s in manifest["shards"]]
    assert [s["shard"] for s in manifest["shards"]] == [f"part-000000-{i:06d}.tar" for i in range(len(manifest["shards"]))]
    assert [p["partition"] for p in manifest["partitions"]] == [0]  # the demo's inputs fit one partition
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"] == manifest["counts"]
    assert stats["caption_checks"]["violations"] == 0 and stats["caption_checks"]["captions_checked"] > 0
    # random weights give no usable entity list: the captions stay as they were
    assert set(stats["entity_naming"]) <= {"failed", "skipped"} and stats["entity_naming"].get("failed")
    clip_captions = sum(1 for c in _tables(out)["captions"].to_pylist() if c["level"] == "clip")
    assert sum(stats["counts"]["clip_caption_parse"].values()) == clip_captions


@pytest.mark.parametrize("feeder_tasks,calls", [pytest.param(False, 2, marks=pytest.mark.extended), (True, 2),
                                                pytest.param(False, "auto", marks=pytest.mark.extended)],
                         ids=["inputs-made-in-actor", "inputs-from-prepare-tasks", "cpu-actor-choosing-its-way"])
def test_caption_actor_taking_two_calls_at_once_commits_the_same_captions(demo_run, tmp_path, feeder_tasks, calls):
    """resources.caption.calls_per_actor: 2 (the default where the actors get GPUs): the actor
    takes one call's inputs (made in the actor, or by prepare tasks ahead of it as on GPU nodes)
    while another call generates, on threads, the model one call at a time. The captions it
    commits are the demo run's (one call at a time), byte for byte, and the calls did overlap.
    ``auto`` on CPUs, with 2 CPUs an actor: it runs its calls one at a time, the model on both
    CPUs, and overlapped, the model on one, in turn (pipeline.overlap; here one generation a
    turn, so a few videos see both), with the same captions."""
    import shutil

    import pyarrow as pa
    import ray

    from pipeline.graph import before, chain, work_key
    from pipeline.overlap import OVERLAP, SERIAL, CallPlan
    from pipeline.resources import ray_args
    from pipeline.runner import add_stage, finished_blocks
    from pipeline.spec import parse_spec
    from pipeline.units import UNIT, CaptionUnits

    out, _, spec = demo_run
    doc = spec.model_dump(mode="json")
    doc["output"]["uri"] = str(tmp_path / "out")
    doc["resources"]["caption"]["calls_per_actor"] = calls
    if calls == "auto":
        doc["resources"]["caption"]["num_cpus"] = 2
    doc["ray"]["feeder_tasks"] = feeder_tasks
    two = parse_spec(doc)
    fps = two.fingerprints()
    assert fps == spec.fingerprints()  # how calls are taken shapes no result
    caption = next(s for s in chain(two) if s.name == "caption")  # as this job runs it
    for stage in before(two, "caption"):  # what the caption stage reads
        shutil.copytree(out / "_work" / stage.name / fps[stage.name],
                        tmp_path / "out" / "_work" / stage.name / fps[stage.name])
    units = sorted(p.stem for p in (out / "_work" / "analyze" / fps["analyze"]).glob("*.parquet"))
    assert len(units) >= 3

    class Timed(CaptionUnits):
        def __init__(self, **kw):
            super().__init__(**kw)
            if self.plan and not self.plan.decided:  # both ways within a few videos
                self.plan = CallPlan(self.plan.cpus, intervals=1, rounds=2)

        def __call__(self, batch):
            started, prepared = time.time(), batch.column("prepared")[0].is_valid
            way = self.plan and self.plan.mode
            rows = super().__call__(batch).to_pylist()
            rows[0]["seconds_json"] = json.dumps({"span": [started, time.time()], "prepared": prepared, "way": way})
            return pa.Table.from_pylist(rows, schema=UNIT)

    args = ray_args(two.resources.caption, actor=True) | {"batch_size": 1}
    assert args["compute"].max_concurrent_calls_per_actor == 2
    ds = ray.data.from_items([{f.name: None for f in UNIT} | {"unit_id": u} for u in units],
                             override_num_blocks=len(units))
    if feeder_tasks:  # as pipeline.runner chains them: PrepareUnits tasks, then the actor
        ds = add_stage(ds, caption.feeder, two, fps, gpus=0)
    ds = ds.map_batches(Timed, fn_constructor_kwargs={"spec": two, "fps": fps, "stage": caption,
                                                      "fed": feeder_tasks}, **args)
    made = [json.loads(r) for block in finished_blocks(ds) for r in block.column("seconds_json").to_pylist()]
    assert [c["prepared"] for c in made] == [feeder_tasks] * len(units)  # where the inputs were made
    spans = sorted(c["span"] for c in made)
    assert len(spans) == len(units)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two calls ran at once"
    ways = {c["way"] for c in made}
    assert ways == ({SERIAL, OVERLAP} if calls == "auto" else {None}), ways  # 2: one CPU, no way to choose
    for u in units:
        key = work_key("caption", fps["caption"], u)
        assert (tmp_path / "out" / key).read_bytes() == (out / key).read_bytes(), u


def test_rerun_gives_identical_bytes(demo_run, demo, tmp_path):
    """A rerun of the finished job changes nothing, not even a file's mtime (a run that starts
    over: test_a_run_that_starts_over_gives_identical_bytes, extended)."""
    from pipeline.plan import run_job
    from pipeline.spec import load_spec

    out, manifest, _ = demo_run
    before = _snapshot(out)
    lines = []
    unchanged = run_job(load_spec(ROOT / "jobs" / "demo.yaml", demo_overrides(demo, out)), log=lines.append)
    assert unchanged == manifest and "nothing to do" in lines[-1]
    assert _snapshot(out) == before  # a rerun of a finished job changes no file (not even its mtime)


@pytest.mark.extended
def test_a_run_that_starts_over_gives_identical_bytes(demo_run, demo, tmp_path):
    """output.overwrite on a copy of the demo output: everything is deleted and made again,
    laid out on the cluster otherwise (one actor per stage in one streaming chain), and the
    bytes are the demo run's."""
    import shutil

    from pipeline.plan import run_job
    from pipeline.spec import load_spec

    out, manifest, _ = demo_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    lines = []
    again = run_job(load_spec(ROOT / "jobs" / "demo.yaml", [*demo_overrides(demo, copy), *mini_settings(),
                                                            "output.overwrite=true"]), log=lines.append)
    assert any("output.overwrite: deleting the previous output" in line for line in lines), lines
    assert not any(line.startswith("[resume]") for line in lines), lines  # nothing of the copy was reused
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert [s["sha256"] for s in again["long_shards"]] == [s["sha256"] for s in manifest["long_shards"]]
    assert again["tables"] == manifest["tables"]  # every part's sha256


def _snapshot(out: Path) -> dict:
    """path -> (bytes, mtime) of every file of an output outside _work/."""
    return {p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and p.relative_to(out).parts[0] != "_work"}


def test_existing_output_is_not_overwritten_without_consent(demo, tmp_path):
    from pipeline.plan import run_job
    from pipeline.spec import SpecError, load_spec

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for overwrite in ("false", "true"):
        spec = load_spec(ROOT / "jobs" / "demo.yaml", demo_overrides(demo, out) + [f"output.overwrite={overwrite}"])
        with pytest.raises(SpecError, match="output.uri: .* holds files vidcurate did not write"):
            run_job(spec, log=lambda *_: None)
    with pytest.raises(SpecError, match="output.uri: .* holds files vidcurate did not write"):
        run_job(load_spec(ROOT / "jobs" / "demo.yaml", demo_overrides(demo, out)), log=lambda *_: None)
    assert (out / "keep.txt").read_text() == "user data"
    busy = tmp_path / "busy"  # another run's live lease: refused before anything changes
    (busy / "_work").mkdir(parents=True)
    lease = json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "token": "t", "renewed": time.time()})
    (busy / "_work" / "lock.json").write_text(lease)
    with pytest.raises(SpecError, match="output.uri: another vidcurate run"):
        run_job(load_spec(ROOT / "jobs" / "demo.yaml", demo_overrides(demo, busy) + ["output.overwrite=true"]),
                log=lambda *_: None)
    assert (busy / "_work" / "lock.json").read_text() == lease
    around_inputs = load_spec(ROOT / "jobs" / "demo.yaml", demo_overrides(demo, demo["root"]))
    with pytest.raises(SpecError, match="output.uri: .* contains inputs"):
        run_job(around_inputs, log=lambda *_: None)
    assert all(Path(p).exists() for p in demo["videos"])
