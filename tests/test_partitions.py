"""The scale-out pieces on plain rows, without Ray: the stage graph, partition planning, the
assembly steps of a partition writer, merged summaries, and the run-mode and resource rules."""

from __future__ import annotations

import json

import pytest
from dataclasses import replace

from pipeline import assemble, graph, partitions, summary
from pipeline.runner import ResourceWatch, fed, needs, pool_sizes, stream_all, videos_per_block
from pipeline.spec import parse_spec

SPEC = parse_spec({"inputs": {"paths": ["x.mp4"]}, "output": {"uri": "/tmp/vidcurate-test-out"}})


def _inputs(n: int, start: int = 0) -> list[dict]:
    return [{"uri": f"/v/{i:04d}.mp4", "unit_id": f"u{i:04d}", "video_id": f"v{i:04d}"} for i in range(start, start + n)]


# --- the stage graph --------------------------------------------------------------------------

def test_graph_is_one_chain_and_derives_keys_and_fingerprints():
    assert graph.STAGES == ("analyze", "clip", "text", "speech", "caption", "caption_fit", "hierarchy")
    assert [s.after for s in graph.GRAPH] == [None, "analyze", "clip", "text", "speech", "caption", "caption_fit"]
    # a stage switched off drops out of the chain the job runs; the next reads the one before
    assert [(s.name, s.after) for s in graph.chain(SPEC)] == [
        ("analyze", None), ("clip", "analyze"), ("caption", "clip"), ("hierarchy", "caption")]
    assert graph.chain(SPEC)[2].feeder.after == "clip"
    texts = parse_spec({**SPEC.model_dump(mode="json"), "text": {"enabled": True}})
    assert [(s.name, s.after) for s in graph.chain(texts)][2:4] == [("text", "clip"), ("caption", "text")]
    assert graph.chain(texts)[3].feeder.after == "text"
    on = texts.fingerprints()
    assert list(on) == [s for s in graph.STAGES if s not in ("speech", "caption_fit")] + ["output", "decide"]
    both = parse_spec({**texts.model_dump(mode="json"), "speech": {"enabled": True}})
    assert [(s.name, s.after) for s in graph.chain(both)][2:5] == [("text", "clip"), ("speech", "text"),
                                                                 ("caption", "speech")]
    every = parse_spec({**both.model_dump(mode="json"), "caption_fit": {"enabled": True}})
    assert [(s.name, s.after) for s in graph.chain(every)][-2:] == [("caption_fit", "caption"),
                                                                   ("hierarchy", "caption_fit")]
    assert list(every.fingerprints()) == [*graph.STAGES, "output", "decide"]
    # a score stage that nothing reads moves no other stage's fingerprint, only what is written
    plain = SPEC.fingerprints()
    assert {s for s in plain if plain[s] != on[s]} == {"output"}
    fitted = parse_spec({**SPEC.model_dump(mode="json"), "caption_fit": {"enabled": True}}).fingerprints()
    assert {s for s in plain if plain[s] != fitted[s]} == {"output"}
    persist = parse_spec({**texts.model_dump(mode="json"), "text": {"enabled": True, "min_persist": 3}}).fingerprints()
    assert {s for s in on if on[s] != persist[s]} == {"text", "output"}
    # speech is read by the captioner and the hierarchy (the prompt offers it)
    assert {s for s in on if on[s] != both.fingerprints()[s]} == {"caption", "hierarchy", "output"}
    assert graph.work_key("hierarchy", "f", "u") == "_work/hierarchy/f/u.json"
    assert graph.work_key("clip", "f", "u") == "_work/clip/f/u.parquet"
    assert graph.work_key("hierarchy", "f", "u", "k") == "_work/hierarchy/f/u-k.json"
    fps = SPEC.fingerprints()
    assert list(fps) == [s for s in graph.STAGES if s not in ("text", "speech", "caption_fit")] + ["output", "decide"]
    # a stage's settings move its fingerprint and those of the stages reading it, never another
    other = parse_spec({**SPEC.model_dump(mode="json"), "caption": {"max_new_tokens": 7}}).fingerprints()
    assert [fps[s] == other[s] for s in fps] == [True, True, False, False, False, True]
    assert fps["caption"] != other["caption"] != fps["caption"]
    # thresholds move only the decision: no measurement, caption or hierarchy is made again
    doc = SPEC.model_dump(mode="json")
    for change in ({"scores": {"min_sharpness": 25.0}}, {"clip_filter": {"max_reject_margin": 0.3}},
                   {"clip_filter": {"min_keep_sim": 0.1}}):
        moved = parse_spec({**doc, **{k: {**doc[k], **v} for k, v in change.items()}}).fingerprints()
        assert [fps[s] == moved[s] for s in fps] == [True, True, True, True, True, False], change
    # new CLIP prompts: the captions stand (the captioner reads no CLIP column); the hierarchy
    # reads the embeddings, so it is made again
    prompts = parse_spec({**doc, "clip_filter": {**doc["clip_filter"], "keep_prompts": ["a dog"]}}).fingerprints()
    assert [fps[s] == prompts[s] for s in fps] == [True, False, True, False, False, True]
    with pytest.raises(ValueError, match="follows"):
        graph._check((graph.GRAPH[1], graph.GRAPH[0]))
    with pytest.raises(ValueError, match="does not run before it"):
        graph._check((graph.GRAPH[0], replace(graph.GRAPH[1], reads=("caption",))))
    with pytest.raises(ValueError, match="text_area is measured by text"):
        graph._check((*graph.GRAPH[:2], replace(graph.GRAPH[2], adds=()), *graph.GRAPH[3:]))
    for stage in graph.GRAPH:  # every runner named by the table exists
        assert callable(stage.runner_class())


# --- partition planning -----------------------------------------------------------------------

def test_new_inputs_fill_partitions_in_input_order():
    plan = partitions.assign(_inputs(5), {}, 2)
    assert [(p["partition"], [u["unit_id"] for u in p["units"]]) for p in plan] == [
        (0, ["u0000", "u0001"]), (1, ["u0002", "u0003"]), (2, ["u0004"])]


def test_recorded_partitions_keep_their_members_and_new_inputs_append():
    records = {0: {"units": ["u0000", "u0001"]}, 1: {"units": ["u0002"]}}
    # more inputs, one of them sorting before the recorded ones
    inputs = sorted(_inputs(3) + _inputs(3, start=10) + [{"uri": "/a.mp4", "unit_id": "a", "video_id": "a"}],
                    key=lambda r: r["uri"])
    plan = partitions.assign(inputs, records, 2)
    assert [(p["partition"], [u["unit_id"] for u in p["units"]]) for p in plan] == [
        (0, ["u0000", "u0001"]), (1, ["u0002"]), (2, ["a", "u0010"]), (3, ["u0011", "u0012"])]
    # an input gone from the job leaves its partition; an emptied partition drops out
    plan = partitions.assign([r for r in inputs if r["unit_id"] not in ("u0001", "u0002")], records, 2)
    assert [p["partition"] for p in plan] == [0, 2, 3] and [u["unit_id"] for u in plan[0]["units"]] == ["u0000"]


def test_resume_after_a_kill_gives_the_missing_partitions_their_numbers_back():
    """Writers commit in the order partitions finish: a killed run can leave records 0 and 2
    without 1. The resume's plan must be the undisturbed run's, or files get other names."""
    def records(plan: list[dict], kept=None) -> dict[int, dict]:
        return {p["partition"]: {"units": [u["unit_id"] for u in p["units"]]}
                for p in plan if kept is None or p["partition"] in kept}

    inputs = _inputs(7)
    undisturbed = partitions.assign(inputs, {}, 2)
    for kept in ([0, 2], [2], [1, 3], [3], [0, 1, 3]):
        assert partitions.assign(inputs, records(undisturbed, kept), 2) == undisturbed, kept
    # a later run with more inputs: new partitions after the highest taken number
    plan = partitions.assign(inputs + _inputs(2, start=7), records(undisturbed), 2)
    assert [(p["partition"], [u["unit_id"] for u in p["units"]]) for p in plan][-1] == (4, ["u0007", "u0008"])


def test_content_key_and_currency():
    fps = SPEC.fingerprints()
    units = _inputs(2)
    key = partitions.content_key(fps, units)
    assert key == partitions.content_key(dict(fps), [dict(u) for u in units])
    assert key != partitions.content_key({**fps, "output": "x"}, units)
    assert key != partitions.content_key(fps, units[:1])
    assert key != partitions.content_key(fps, [{**units[0], "description": "00:00 Intro"}, units[1]])
    record = {"content": key, "tables": {"videos": {"path": "videos/part-000000.parquet", "bytes": 10}},
              "shards": [{"path": "shards/part-000000-000000.tar", "bytes": 20}], "long_shards": []}
    listing = {"videos/part-000000.parquet": 10, "shards/part-000000-000000.tar": 20}
    assert partitions.is_current(record, key, listing)
    assert not partitions.is_current(record, "other", listing)
    assert not partitions.is_current(record, key, {**listing, "shards/part-000000-000000.tar": 19})
    assert not partitions.is_current(None, key, listing)


# --- the partition writer's assembly steps ----------------------------------------------------

def _clip(cid: str, vid: str, start: float, end: float, status: str = "kept", **extra) -> dict:
    row = {"clip_id": cid, "video_id": vid, "uri": f"/v/{vid}.mp4", "start_s": start, "end_s": end,
           "duration_s": end - start, "start_frame": int(start * 25), "end_frame": int(end * 25), "status": status,
           "reason": None if status == "kept" else "low_motion", "keyframe_aligned": False, "pts_timing": True,
           "caption_text": None, "windows": None}
    for k in ("motion", "sharpness", "brightness", "contrast", "black_fraction", "frozen_fraction", "letterbox",
              "dynamic_degree", "camera_motion", "clip_keep_sim", "clip_reject_sim"):
        row[k] = 0.5
    row.update(extra)
    return row


def _captioned(cid, vid, start, end, text, windows=None):
    return _clip(cid, vid, start, end, caption_text=text, caption_model="m", caption_prompt_version="p1",
                 caption_generation="g", caption_fields=json.dumps({"summary": text}), windows=windows)


def _partition_rows():
    video = {"video_id": "v1", "uri": "/v/v1.mp4", "status": "ok", "duration_s": 10.0}
    clips = [_captioned("c2", "v1", 5.0, 9.0, "Bob walks", windows=[
                 {"start_frame": 125, "end_frame": 175, "start_s": 5.0, "end_s": 7.0, "caption_text": "Bob steps",
                  "caption_fields": None},
                 {"start_frame": 175, "end_frame": 225, "start_s": 7.0, "end_s": 9.0, "caption_text": "Bob stops",
                  "caption_fields": None}]),
             _captioned("c1", "v1", 0.0, 4.0, "Bob sits"), _clip("c0", "v1", 4.0, 5.0, status="rejected")]
    hierarchy = {"chapters": [{"chapter_id": "ch1", "video_id": "v1", "index": 0, "start_s": 0.0, "end_s": 9.0,
                               "clip_ids": ["c1", "c2"], "caption_id": "cap-ch1", "title": "t", "summary": "s",
                               "source": "automatic", "duration_s": 9.0}],
                 "captions": [{"caption_id": "cap-v1", "video_id": "v1", "level": "video", "start_s": 0.0,
                               "end_s": 9.0, "text": "v", "parent_id": None},
                              {"caption_id": "cap-ch1", "video_id": "v1", "level": "chapter", "start_s": 0.0,
                               "end_s": 9.0, "text": "c", "parent_id": "cap-v1"}],
                 "entities": {"status": "ok", "entities": [{"name": "the man", "mentions": ["Bob"]}]}}
    return assemble.join_results([(video, clips, hierarchy)])


def test_join_and_link_build_every_caption_level():
    rows = _partition_rows()
    assert [c["clip_id"] for c in rows["clips"]] == ["c1", "c0", "c2"]  # in (uri, start_frame) order
    assert [c["clip_id"] for c in rows["kept"]] == ["c1", "c2"] and rows["clips"][0]["caption_id"]
    assemble.link_hierarchy(rows)
    assert rows["videos"][0]["caption_id"] == "cap-v1"
    assert {c["chapter_id"] for c in rows["kept"]} == {"ch1"}
    levels = [c["level"] for c in rows["captions"]]
    assert levels.count("clip") == 2 and levels.count("window") == 2
    clip_caps = {c["clip_id"]: c for c in rows["captions"] if c["level"] == "clip"}
    assert all(c["parent_id"] == "cap-ch1" for c in clip_caps.values())
    assert all(c["parent_id"] == clip_caps["c2"]["caption_id"] for c in rows["captions"] if c["level"] == "window")
    tables = assemble.sorted_tables(rows)
    assert [c["level"] for c in tables["captions"]] == ["video", "chapter", "clip", "clip", "window", "window"]


def test_entity_names_reach_captions_and_shard_texts():
    from stages.entities import renamer

    rows = _partition_rows()
    assemble.link_hierarchy(rows)
    expected, _ = renamer(rows["entities"]["v1"]["entities"])("Bob walks")
    assemble.apply_entity_names(rows)
    clip_caps = {c["clip_id"]: c for c in rows["captions"] if c["level"] == "clip"}
    assert clip_caps["c2"]["text"] == expected and next(c for c in rows["kept"] if c["clip_id"] == "c2")["caption_text"] \
        == expected
    assert all(c["duration_s"] == c["end_s"] - c["start_s"] for c in rows["captions"])


def test_shard_assignment_and_extraction_failures():
    rows = _partition_rows()
    assemble.link_hierarchy(rows)
    samples = assemble.shard_samples(rows, 1, lambda n: f"part-000004-{n:06d}.tar")
    assert [s["key"] for s in samples] == ["c1", "c2"]
    assert [c["shard"] for c in rows["kept"]] == ["part-000004-000000.tar", "part-000004-000001.tar"]
    assert samples[1]["json"]["chapter"]["chapter_id"] == "ch1" and len(samples[1]["json"]["dense_captions"]) == 2
    assemble.apply_extraction(rows, {"c1": "copy"}, {"c2": "exception: boom"})
    c1, c2 = rows["kept"]
    assert (c1["extract_method"], c1["status"]) == ("copy", "kept")
    assert (c2["status"], c2["reason"], c2["shard"], c2["key"]) == ("rejected", "extract_error", None, None)


# --- merged summaries -------------------------------------------------------------------------

def test_summaries_merge_exactly():
    videos = [{"video_id": f"v{i}", "uri": f"/v/{i}.mp4", "status": "ok" if i % 3 else "rejected",
               "reason": None if i % 3 else "not_a_video", "message": "x" * 500} for i in range(9)]
    clips = [_clip(f"c{i}", f"v{i % 9}", 0.0, 1.0 + i, status="kept" if i % 2 else "rejected", motion=0.01 * i)
             for i in range(30)]
    units = {v["video_id"]: "u" + v["video_id"] for v in videos}
    checks = {"captions_checked": 0, "violations": 0, "examples": []}

    def part(p, vs, cs):
        tables = {"videos": vs, "clips": cs, "captions": [], "chapters": []}
        return summary.partition_summary(p, units, tables, [], checks, {})

    whole = summary.merge([part(0, videos, clips)])
    split = summary.merge([part(0, videos[:4], [c for c in clips if c["video_id"] in ("v0", "v1", "v2", "v3")]),
                           part(1, videos[4:], [c for c in clips if c["video_id"] not in ("v0", "v1", "v2", "v3")])])
    assert split["stats"] == whole["stats"] and split["histograms"] == whole["histograms"]
    assert whole["stats"]["counts"]["videos_in"] == 9 and whole["stats"]["counts"]["clips_kept"] == 15
    motion = whole["histograms"]["motion"]
    assert sum(motion["kept"].values()) == 15 and sum(motion["dropped"].values()) == 15
    sample = split["sample"]
    assert len(sample["groups"]["kept"]) == summary.PER_GROUP
    assert all(len(r["message"]) <= 200 for r in sample["rejected"])
    assert summary.merge([])["stats"]["counts"]["videos_in"] == 0


def test_fixed_bins_cover_their_range():
    assert summary.bin_of("brightness", 0) == 0 and summary.bin_of("brightness", 255) == summary.BINS - 1
    assert summary.bin_of("brightness", 1e9) == summary.BINS - 1 and summary.bin_of("motion", -1) == 0
    assert summary.bin_edge("motion", 0) == pytest.approx(1e-3) and summary.bin_edge("motion", summary.BINS) == \
        pytest.approx(100.0)
    for column in summary.SCALES:
        edges = [summary.bin_edge(column, i) for i in range(summary.BINS + 1)]
        assert edges == sorted(edges)
        assert summary.bin_of(column, (edges[10] + edges[11]) / 2) == 10


# --- run modes and resources ------------------------------------------------------------------

def test_streaming_needs_room_for_every_pool_after_losing_the_largest_node():
    need = needs(SPEC, list(graph.chain(SPEC)), 0.0)["CPU"]  # 3 actor pools + analyze tasks (no GPUs: no prepare tasks)
    assert need == 4
    assert stream_all(SPEC, [4.0]) and not stream_all(SPEC, [3.0])
    assert not stream_all(SPEC, [1.0, 2.0, 2.0])  # 5 CPUs, but 3 once a worker node is gone
    assert stream_all(SPEC, [1.0, 2.0, 2.0, 2.0])
    assert not stream_all(SPEC, [4.0], gpus=1.0)  # with GPUs the caption actor's prepare tasks need a CPU too
    forced = parse_spec({**SPEC.model_dump(mode="json"), "ray": {"stream": True}})
    assert stream_all(forced, [1.0])
    assert needs(SPEC, [graph.GRAPH[1]], 2.0) == {"CPU": 1.0, "GPU": 1.0}  # num_gpus: auto on a GPU cluster
    wide = parse_spec({**SPEC.model_dump(mode="json"), "resources": {"caption": {"concurrency": 4, "num_gpus": 1}}})
    assert needs(wide, [graph.BY_NAME["caption"]], 4.0) == {"CPU": 5.0, "GPU": 4.0}  # prepare task + 4 actors
    assert needs(wide, [graph.BY_NAME["caption"]], 4.0, least=True) == {"CPU": 2.0, "GPU": 1.0}
    texts = parse_spec({**SPEC.model_dump(mode="json"), "text": {"enabled": True}})
    assert needs(texts, list(graph.chain(texts)), 0.0)["CPU"] == 5  # and one text task


def test_feeder_tasks_run_where_the_actors_have_gpus_unless_the_spec_says():
    caption = graph.BY_NAME["caption"]
    assert not fed(SPEC, caption, 0.0) and fed(SPEC, caption, 2.0)
    assert not fed(SPEC, graph.BY_NAME["clip"], 2.0)  # no feeder
    on = parse_spec({**SPEC.model_dump(mode="json"), "ray": {"feeder_tasks": True}})
    off = parse_spec({**SPEC.model_dump(mode="json"), "ray": {"feeder_tasks": False}})
    assert fed(on, caption, 0.0) and not fed(off, caption, 2.0)
    cpu_only = parse_spec({**SPEC.model_dump(mode="json"), "resources": {"caption": {"num_gpus": 0}}})
    assert not fed(cpu_only, caption, 8.0)  # actors that ask for no GPU make their own inputs
    assert needs(on, [caption], 0.0) == {"CPU": 2.0, "GPU": 0.0}
    assert needs(SPEC, [caption], 0.0) == {"CPU": 1.0, "GPU": 0.0}


def test_caption_actors_take_two_calls_at_once_where_they_have_gpus_unless_the_spec_says():
    from pipeline.resources import ray_args

    def calls(spec, stage, gpus):
        return ray_args(getattr(spec.resources, stage), actor=True, gpus_in_cluster=gpus)["compute"] \
            .max_concurrent_calls_per_actor or 1

    assert SPEC.resources.caption.calls_per_actor == "auto"
    assert calls(SPEC, "caption", 0.0) == 1 and calls(SPEC, "caption", 2.0) == 2
    # on CPUs, two where an actor has two CPUs or more (it measures whether to overlap them)
    two_cpus = parse_spec({**SPEC.model_dump(mode="json"), "resources": {"caption": {"num_cpus": 2}}})
    assert calls(two_cpus, "caption", 0.0) == 2 and calls(two_cpus, "caption", 2.0) == 2
    assert calls(SPEC, "clip", 2.0) == 1 and calls(SPEC, "hierarchy", 2.0) == 1
    fixed = parse_spec({**SPEC.model_dump(mode="json"), "resources": {"caption": {"calls_per_actor": 3}}})
    assert calls(fixed, "caption", 0.0) == 3 and fixed.resources.caption.batch_size == 4  # other keys kept
    assert ray_args(fixed.resources.caption, actor=True)["compute"]._enable_true_multi_threading
    with pytest.raises(ValueError, match=r"resources.clip.calls_per_actor: only the caption stage"):
        parse_spec({**SPEC.model_dump(mode="json"), "resources": {"clip": {"calls_per_actor": 2}}})
    with pytest.raises(ValueError, match=r"resources.caption.calls_per_actor"):
        parse_spec({**SPEC.model_dump(mode="json"), "resources": {"caption": {"calls_per_actor": 0}}})


def test_cpu_actors_taking_two_calls_measure_whether_to_overlap_them_unless_the_spec_says(monkeypatch):
    """On CPUs, an actor with 2 or more CPUs takes two calls at once; left to choose (auto) it
    measures which way to run them (pipeline.overlap), with a number it always overlaps them,
    the model on one CPU less. On a GPU, or with one call at a time, there is no plan."""
    from pipeline.overlap import OVERLAP, SERIAL
    from pipeline.units import CaptionUnits
    from stages import models

    def spec(**caption):
        return parse_spec({**SPEC.model_dump(mode="json"), "resources": {"caption": caption}})

    two, auto2, auto1 = spec(calls_per_actor=2), spec(num_cpus=2), spec(num_cpus=1)
    for res, gpus, cpus, want in ((two, 0, 4, (OVERLAP, True, 3)), (two, 0, 2, (OVERLAP, True, 1)), (two, 0, 1, None),
                                  (two, 1, 4, None), (auto2, 0, 4, (SERIAL, False, 3)), (auto2, 0, 2, (SERIAL, False, 1)),
                                  (auto2, 1, 2, None), (auto1, 0, 1, None)):
        monkeypatch.setattr(models, "assigned", lambda r: {"GPU": gpus, "CPU": cpus}[r])
        plan = CaptionUnits.call_plan(res.resources.caption)
        got = plan and (plan.mode, plan.decided, plan.threads(OVERLAP))
        assert got == want, (res.resources.caption, gpus, cpus)
        if plan:
            assert plan.threads(SERIAL) == cpus


def test_auto_pools_fill_the_cluster_in_a_pass_and_never_take_the_feeders_cpu():
    clip, caption, hierarchy = (graph.BY_NAME[n] for n in ("clip", "caption", "hierarchy"))
    assert SPEC.resources.caption.concurrency == "auto"  # the default of every model stage
    assert pool_sizes(SPEC, [clip], [2.0], 0.0) == {"clip": 2}
    assert pool_sizes(SPEC, [caption], [2.0], 0.0) == {"caption": 2}  # on CPUs the actors make their inputs
    fed_spec = parse_spec({**SPEC.model_dump(mode="json"), "ray": {"feeder_tasks": True}})
    assert pool_sizes(fed_spec, [caption], [2.0], 0.0) == {"caption": 1}  # one CPU stays with a prepare task
    # with a feeder, from what survives losing the largest node: 5 CPUs, 3 after a loss, 2 actors
    assert pool_sizes(fed_spec, [caption], [1.0, 2.0, 2.0], 0.0) == {"caption": 2}
    assert pool_sizes(SPEC, [caption], [1.0, 2.0, 2.0], 0.0) == {"caption": 5}
    assert pool_sizes(SPEC, [hierarchy], [1.0, 2.0, 2.0], 0.0) == {"hierarchy": 5}
    assert pool_sizes(SPEC, [caption], [16.0], 4.0) == {"caption": 4}  # one per GPU (num_gpus: auto)
    assert pool_sizes(SPEC, list(graph.chain(SPEC)), [64.0], 0.0) == {"clip": 1, "caption": 1, "hierarchy": 1}  # a chain
    fixed = parse_spec({**SPEC.model_dump(mode="json"), "resources": {"clip": {"concurrency": 3}}})
    assert pool_sizes(fixed, [clip], [16.0], 0.0) == {"clip": 3}
    halves = parse_spec({**SPEC.model_dump(mode="json"), "resources": {"hierarchy": {"num_gpus": 0.5}}})
    assert pool_sizes(halves, [hierarchy], [8.0], 2.0) == {"hierarchy": 4}
    with pytest.raises(ValueError, match="concurrency"):
        parse_spec({**SPEC.model_dump(mode="json"), "resources": {"clip": {"concurrency": 0}}})


def test_blocks_hold_a_bounded_number_of_videos():
    assert videos_per_block(SPEC, 8, 2) == 1
    assert videos_per_block(SPEC, 1000, 2) == 16 and videos_per_block(SPEC, 100, 2) == 12
    fixed = parse_spec({**SPEC.model_dump(mode="json"), "ray": {"videos_per_block": 3}})
    assert videos_per_block(fixed, 1000, 2) == 3


def test_resource_watch_stops_a_pass_that_cannot_run(monkeypatch):
    import os
    import signal

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    have = {"CPU": 3.0}
    lines = []
    with ResourceWatch({"CPU": 5.0, "GPU": 0.0}, wait_s=0.2, log=lines.append, period_s=0.05,
                       resources=lambda: have) as watch:
        import time

        deadline = time.time() + 5
        while not sent and time.time() < deadline:
            time.sleep(0.05)
    assert sent == [(os.getpid(), signal.SIGINT)]
    assert "it needs CPU 5 (the cluster has 3)" in watch.reason and "ray.resource_wait_s" in lines[0]
    sent.clear()
    with ResourceWatch({"CPU": 2.0}, wait_s=0.1, log=lines.append, period_s=0.02, resources=lambda: have) as watch:
        time.sleep(0.3)
    assert not sent and watch.reason is None


def test_a_stage_reads_only_what_its_fingerprint_hashes():
    view = graph.settings_view(SPEC, graph.BY_NAME["analyze"].settings)
    assert view.shots == SPEC.shots and view.caption.window_s == SPEC.caption.window_s
    assert view.models.transnetv2 == SPEC.models.transnetv2 and view.storage == SPEC.storage
    with pytest.raises(AttributeError):
        view.caption.max_new_tokens  # a caption setting the analysis must not depend on
    with pytest.raises(AttributeError):
        view.clip_filter
    import pickle

    assert pickle.loads(pickle.dumps(view)).probe == SPEC.probe  # it travels to the guarded child


def test_stages_never_import_the_pipeline():
    import ast
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "pipeline" or n.startswith("pipeline.") for n in names), f"{path.name} imports {names}"
