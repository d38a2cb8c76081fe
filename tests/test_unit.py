"""Pure functions: no Ray, no models, no files (except tiny temp files for writers)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from pipeline.sinks import write_tar
from pipeline.spec import SpecError, apply_overrides, parse_spec
from stages.base import Stats, clean_text, clip_id, subsample, video_id
from stages.chapters import group_chapters
from stages.decide import reason
from stages.embed import mean_embedding
from stages.shots import assemble_clips, shots_from_cuts

BASE = {"inputs": {"paths": ["a.mp4"]}, "output": {"uri": "out"}}


def test_shots_cover_all_frames_end_exclusive():
    assert shots_from_cuts([40, 80, 0, 80, 200], 120) == [(0, 40), (40, 80), (80, 120)]
    assert shots_from_cuts([], 10) == [(0, 10)]


def test_assemble_clips_windows_short_and_trim():
    clips = assemble_clips([(0, 10), (10, 260)], 25.0, min_clip_s=1.0, max_clip_s=4.0)
    assert clips[0] == {"start_frame": 0, "end_frame": 10, "status": "rejected", "reason": "too_short"}
    windows = [(c["start_frame"], c["end_frame"]) for c in clips[1:]]
    assert windows == [(10, 93), (93, 177), (177, 260)]  # 250 frames > 100 -> 3 equal windows
    assert all(b - a <= 100 for a, b in windows)
    trimmed = assemble_clips([(0, 100)], 25.0, min_clip_s=1.0, max_clip_s=10.0, trim_s=0.2)
    assert (trimmed[0]["start_frame"], trimmed[0]["end_frame"]) == (5, 95)


def test_the_first_failed_threshold_in_declared_order_decides():
    spec = parse_spec({**BASE, "scores": {"min_motion": 0.5, "min_brightness": 20, "min_sharpness": 10}})
    good = {"status": "kept", "reason": None, "motion": 1.0, "sharpness": 50.0, "brightness": 100.0,
            "contrast": 40.0, "black_fraction": 0.0, "frozen_fraction": 0.0, "letterbox": 0.0, "dynamic_degree": 0.5}
    assert reason(good, spec) is None
    assert reason({**good, "motion": 0.1}, spec) == "low_motion"
    assert reason({**good, "motion": float("nan")}, spec) == "low_motion"  # a min_ of motion: NaN fails
    assert reason({**good, "brightness": 5.0}, spec) == "too_dark"
    assert reason({**good, "brightness": float("nan")}, spec) is None  # brightness: NaN passes
    assert reason({**good, "sharpness": 1.0, "brightness": 5.0}, spec) == "blurry"


def test_clip_summary_ignores_nan():
    from stages.signals import NAMES, clip_summary

    signals = {name: np.array([np.nan, 1.0, 3.0, 10.0]) for name in NAMES}
    s = clip_summary(signals, 0, 3)
    assert s["motion"] == pytest.approx(2.0) and s["black_fraction"] == pytest.approx(2.0)


def test_bar_fraction_and_camera_motion():
    from stages.signals import bar_fraction, camera_motion

    frame = np.full((90, 160), 120, np.uint8)
    frame[:15], frame[-15:] = 0, 0
    assert bar_fraction(frame) == pytest.approx(30 / 90)
    frame[:, :20], frame[:, -20:] = 0, 0
    assert bar_fraction(frame) == pytest.approx(1 - (60 * 120) / (90 * 160))
    assert bar_fraction(np.zeros((90, 160), np.uint8)) == 0.0  # black, not letterboxed
    n = np.ones(20)
    assert camera_motion(2 * n, 0 * n, 0 * n, 2 * n) == "pan"
    assert camera_motion(0 * n, -2 * n, 0 * n, 2 * n) == "tilt"
    assert camera_motion(0 * n, 0 * n, 0.5 * n, 0.6 * n) == "zoom"
    assert camera_motion(0 * n, 0 * n, 0 * n, 0.01 * n) == "static"
    signs = np.where(np.arange(20) % 2, 3.0, -3.0)
    assert camera_motion(signs, -signs, 0 * n, 3 * n) == "shaky"


def test_clip_filter_rules_and_mean_embedding():
    def clip(keep, rej, margin, least):
        spec = parse_spec({**BASE, "clip_filter": {"max_reject_margin": margin, "min_keep_sim": least}})
        return reason({"status": "kept", "reason": None, "clip_keep_sim": keep, "clip_reject_sim": rej,
                       "clip_model": "m"}, spec)

    assert clip(0.3, 0.1, 0.0, None) is None
    assert clip(0.1, 0.3, 0.0, None) == "clip_reject_prompt"
    assert clip(0.1, 0.0, None, 0.2) == "clip_low_keep_sim"
    e = mean_embedding(np.array([[3.0, 0.0], [0.0, 5.0]]))
    assert np.allclose(e, [2 ** -0.5, 2 ** -0.5])


def test_group_chapters():
    a, b = [1.0, 0.0], [0.0, 1.0]
    assert group_chapters([a, a, b, b, a], threshold=0.5) == [[0, 1], [2, 3], [4]]
    assert group_chapters([a, a, b, b, a], threshold=0.5, min_clips=2) == [[0, 1], [2, 3, 4]]
    assert group_chapters([], 0.5) == []


def test_chapter_change_points_from_caption_text():
    """Pictures alike, captions naming another place and activity: a chapter starts there."""
    from stages.chapters import change_similarity, text_similarity

    emb = [1.0, 0.0, 0.1]
    kitchen = ["A chef chops onions on a wooden board in a kitchen", "The chef stirs onions in a pan in the kitchen",
               "The chef tastes the sauce from the pan in the kitchen"]
    beach = ["A surfer paddles out through waves at the beach", "The surfer rides a large wave toward the beach"]
    clips = [{"embedding": emb, "caption_text": t, "setting": None, "subjects": []} for t in kitchen + beach]
    text = text_similarity([c["caption_text"] for c in clips])
    assert text[2] < 0.05 < min(text[0], text[1], text[3])
    sims = change_similarity(clips, 0.85, 0.05)
    assert group_chapters([c["embedding"] for c in clips], 0.85, sims=sims) == [[0, 1, 2], [3, 4]]
    assert group_chapters([c["embedding"] for c in clips], 0.85,
                          sims=change_similarity(clips, 0.85, None)) == [[0, 1, 2, 3, 4]]
    assert text_similarity(["", "a chef"]) == [None]


def test_ids_deterministic_and_safe():
    v = video_id("/x/a.mp4", 10)
    assert v == video_id("/x/a.mp4", 10) != video_id("/x/a.mp4", 11)
    c = clip_id(v, 0, 40)
    assert c != clip_id(v, 0, 41) and "." not in c and len(c) == 16


def test_subsample_and_clean_text():
    assert subsample(list(range(10)), 3) == [1, 5, 8]
    assert subsample([1, 2], 5) == [1, 2]
    assert clean_text(" a\x10b\nc ") == "ab\nc"


def test_stats_merge():
    a, b = Stats("s", 2, 1, 1.0, {"x": 1}), Stats("s", 3, 3, 2.0, {"x": 1, "y": 2})
    assert (a + b).as_dict() == {"stage": "s", "total": 5, "kept": 4, "seconds": 3.0, "dropped_x": 2, "dropped_y": 2}


def test_spec_errors_name_the_key():
    with pytest.raises(SpecError, match=r"caption\.batch_sise: unknown key"):
        parse_spec({**BASE, "caption": {"batch_sise": 3}})
    with pytest.raises(SpecError, match=r"resources\.clip\.batch_size"):
        parse_spec({**BASE, "resources": {"clip": {"batch_size": 0}}})
    with pytest.raises(SpecError, match=r"shots\.detector"):
        parse_spec({**BASE, "shots": {"detector": "magic"}})
    for bad in ("gs://bucket/x", "s3:///no-bucket"):
        with pytest.raises(SpecError, match=r"output\.uri"):
            parse_spec({"inputs": {"paths": ["a"]}, "output": {"uri": bad}})
    assert parse_spec({"inputs": {"paths": ["a"]}, "output": {"uri": "s3://bucket/x"}}).output.uri == "s3://bucket/x"
    with pytest.raises(SpecError, match=r"output: Field required"):
        parse_spec({"inputs": {"paths": ["a"]}})


def test_overrides_parse_yaml_values():
    doc = apply_overrides({"output": {"uri": "x"}}, ["shots.max_clip_s=8", "inputs.paths=[a, b]", "ray.progress=false"])
    spec = parse_spec(doc)
    assert spec.shots.max_clip_s == 8.0 and spec.inputs.paths == ["a", "b"] and spec.ray.progress is False
    with pytest.raises(SpecError, match="key=value"):
        apply_overrides({}, ["novalue"])


def test_tar_deterministic_sorted_and_key_checked(tmp_path):
    from pipeline.storage import LocalStore

    store = LocalStore(tmp_path)
    samples = [{"__key__": "b2", "txt": b"two", "json": b"{}"}, {"__key__": "a1", "txt": b"one", "json": b"{}"}]
    first = write_tar(store, "x.tar", samples)
    second = write_tar(store, "y.tar", list(reversed(samples)))
    assert first["sha256"] == second["sha256"] and first["bytes"] == (tmp_path / "x.tar").stat().st_size
    with tarfile.open(tmp_path / "x.tar") as tar:
        assert tar.getnames() == ["a1.json", "a1.txt", "b2.json", "b2.txt"]
        assert {m.mtime for m in tar.getmembers()} == {0}
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, "", "")}
    for bad in ("../evil", "a.b", "x/y", "", "/abs", "..", "A\\b", "k\x00"):
        with pytest.raises(ValueError, match="unsafe sample key"):
            write_tar(store, "z.tar", [{"__key__": bad, "txt": b""}])
    with pytest.raises(ValueError, match="unsafe extension"):
        write_tar(store, "z.tar", [{"__key__": "ok", "../x": b""}])
    assert not (tmp_path / "z.tar").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["x.tar", "y.tar"]


def test_sample_keys_are_safe_whatever_the_file_names(tmp_path):
    """Keys come from hashes of the video id, frame range and settings, never from file names."""
    from pipeline.sinks import KEY

    names = ["../../etc/passwd.mp4", "a.b.c.mp4", "/abs/x.mp4", "sp ace.mp4", "..", "ünï.mp4", "x/../../y.mp4"]
    for name in names:
        key = clip_id(video_id(name, 10), 0, 25, "fp")
        assert KEY.match(key) and "." not in key and "/" not in key
    assert clip_id("v", 0, 25, "fp1") != clip_id("v", 0, 25, "fp2")


def test_ray_args_gpu_auto():
    from pipeline.resources import ray_args

    res = parse_spec(BASE).resources.caption
    assert "num_gpus" not in ray_args(res, actor=True, gpus_in_cluster=0)
    args = ray_args(res, actor=True, gpus_in_cluster=2)
    assert args["num_gpus"] == 1.0 and args["batch_size"] == res.batch_size


def test_job_spec_json_schema_file_is_current():
    import json
    from pathlib import Path

    from pipeline.spec import json_schema

    path = Path(__file__).resolve().parent.parent / "schemas" / "jobspec.schema.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(json_schema())), \
        "regenerate with: python -m pipeline schema > schemas/jobspec.schema.json"


def test_every_job_in_jobs_validates():
    from pathlib import Path

    from pipeline.spec import load_spec

    jobs = sorted((Path(__file__).resolve().parent.parent / "jobs").glob("*.yaml"))
    assert jobs
    for job in jobs:
        load_spec(job)


def test_missing_local_model_fails_before_ray(tmp_path):
    from pipeline.preflight import check_inputs

    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    ok = {"inputs": {"paths": [str(video)]}, "output": {"uri": str(tmp_path / "o")}}
    check_inputs(parse_spec(ok))  # hub ids are not checked locally
    with pytest.raises(SpecError, match=r"models\.vlm\.name_or_path: no such file"):
        check_inputs(parse_spec({**ok, "models": {"vlm": {"name_or_path": str(tmp_path / "missing")}}}))
    with pytest.raises(SpecError, match=r"caption\.prompt: prompt file not found"):
        check_inputs(parse_spec({**ok, "caption": {"prompt": "no_such_prompt_v9"}}))
    with pytest.raises(SpecError, match=r"inputs\.paths\[0\]: nothing matches"):
        check_inputs(parse_spec({**ok, "inputs": {"paths": [str(tmp_path / "*.mkv")]}}))


def test_discover_paths_globs_and_manifests(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.discover import discover

    for name in ("b.mp4", "a.mp4"):
        (tmp_path / name).write_bytes(b"123")
    (tmp_path / "m.csv").write_text("uri,title\na.mp4,first\nmissing.mp4,gone\n")
    (tmp_path / "m.jsonl").write_text('{"uri": "b.mp4"}\n')
    pq.write_table(pa.table({"uri": [str(tmp_path / "a.mp4")]}), tmp_path / "m.parquet")
    spec = parse_spec({"inputs": {"paths": [str(tmp_path / "*.mp4")], "manifest": str(tmp_path / "m.csv")},
                       "output": {"uri": "o"}})
    rows = discover(spec.inputs)
    assert [r["uri"].rsplit("/", 1)[1] for r in rows] == ["a.mp4", "b.mp4", "missing.mp4"]  # de-duplicated, sorted
    assert rows[2]["size_bytes"] == -1 and len({r["video_id"] for r in rows}) == 3
    for manifest, expected in (("m.jsonl", "b.mp4"), ("m.parquet", "a.mp4")):
        spec = parse_spec({"inputs": {"manifest": str(tmp_path / manifest)}, "output": {"uri": "o"}})
        assert [r["uri"].rsplit("/", 1)[1] for r in discover(spec.inputs)] == [expected]
    (tmp_path / "bad.csv").write_text("path\nx.mp4\n")
    spec = parse_spec({"inputs": {"manifest": str(tmp_path / "bad.csv")}, "output": {"uri": "o"}})
    with pytest.raises(SpecError, match="inputs.manifest: .* no .uri. column"):
        discover(spec.inputs)


def test_windows_respect_min_and_max_length():
    for length in range(25, 400, 7):
        for lo, hi in ((1.0, 4.0), (3.0, 4.0), (2.0, 2.0)):
            clips = assemble_clips([(0, length)], 25.0, min_clip_s=lo, max_clip_s=hi)
            assert clips[0]["start_frame"] == 0 and clips[-1]["end_frame"] == length
            assert all(a["end_frame"] == b["start_frame"] for a, b in zip(clips, clips[1:]))
            for c in clips:
                n = c["end_frame"] - c["start_frame"]
                assert n <= hi * 25
                assert (n >= lo * 25) == (c["status"] == "kept")


def test_scaled_size_keeps_rows_for_wide_videos():
    from stages.analyze import scaled_size

    assert scaled_size(1280, 720, 256) == (256, 144)
    assert scaled_size(200, 100, 256) == (200, 100)  # never upscaled
    w, h = scaled_size(8192, 32, 128)
    assert h >= 16 and w % 2 == 0 and h % 2 == 0


def test_scores_and_prompt_specs_are_checked():
    with pytest.raises(SpecError, match=r"scores: max_brightness must be >= min_brightness"):
        parse_spec({**BASE, "scores": {"min_brightness": 50, "max_brightness": 10}})
    with pytest.raises(SpecError, match=r"clip_filter\.keep_prompts"):
        parse_spec({**BASE, "clip_filter": {"keep_prompts": []}})


def test_caption_time_checks_find_each_kind_of_violation():
    from pipeline.checks import check_caption_times

    videos = [{"video_id": "v", "duration_s": 10.0}]
    clips = [{"clip_id": "a", "start_s": 0.0, "end_s": 4.0}, {"clip_id": "b", "start_s": 4.0, "end_s": 8.0}]
    chapters = [{"video_id": "v", "index": 0, "start_s": 0.0, "end_s": 8.0}]

    def cap(cid, level, start, end, parent=None, clip=None):
        return {"caption_id": cid, "video_id": "v", "level": level, "start_s": start, "end_s": end,
                "parent_id": parent, "clip_id": clip}

    good = [cap("V", "video", 0, 10), cap("C", "chapter", 0, 8, "V"), cap("a", "clip", 0, 4, "C", "a"),
            cap("b", "clip", 4, 8, "C", "b")]
    assert check_caption_times(good, clips, videos, chapters)["violations"] == 0
    bad = [cap("V", "video", 0, 10), cap("C", "chapter", 0, 5, "V"), cap("a", "clip", 0, 4, "C", "a"),
           cap("b", "clip", 3.5, 8, "C", "b"), cap("x", "clip", 9, 12, "missing", "x")]
    report = check_caption_times(bad, clips, videos, chapters + [{"video_id": "v", "index": 1, "start_s": 7.0,
                                                                   "end_s": 9.0}])
    text = " | ".join(report["examples"])
    bad[2]["events"] = [{"start_s": 3.0, "text": "late"}, {"start_s": 1.0, "text": "early"}]
    report = check_caption_times(bad, clips, videos, chapters + [{"video_id": "v", "index": 1, "start_s": 7.0,
                                                                   "end_s": 9.0}])
    text = " | ".join(report["examples"])
    for expected in ("not inside its chapter", "times differ from its clip", "overlap", "outside the video",
                     "parent missing", "chapters 0 and 1 overlap", "not in order"):
        assert expected in text, expected


def test_description_chapters_follow_vidchapters_rules():
    from stages.marks import parse_description

    text = "Our trip!\n00:00 Intro\n1:30 - The market\n(12:05) Tasting\nFinale 1:02:03\nthanks for watching"
    assert parse_description(text) == [{"start_s": 0, "title": "Intro"}, {"start_s": 90, "title": "The market"},
                                       {"start_s": 725, "title": "Tasting"}, {"start_s": 3723, "title": "Finale"}]
    assert parse_description("0:10 late start\n1:00 next") == []      # must start at 0:00
    assert parse_description("0:00 only one") == []                    # at least two
    assert parse_description("0:00 a\n2:00 b\n1:00 c") == []          # increasing
    assert parse_description(None) == []


def test_marks_snap_to_shot_starts_and_clips_group_by_midpoint():
    from stages.chapters import bound_durations, group_by_marks
    from stages.marks import snap_marks

    marks = snap_marks([{"start_s": 0.0, "title": "A"}, {"start_s": 9.0, "title": "B"}, {"start_s": 9.5, "title": "C"}],
                       [4.0, 10.2, 20.0], snap_s=2.0, duration_s=30.0)
    assert marks == [{"start_s": 0.0, "end_s": 10.2, "title": "A"}, {"start_s": 10.2, "end_s": 30.0, "title": "B"}]
    clips = [{"start_s": a, "end_s": b} for a, b in ((0, 4), (4, 10.2), (10.2, 20), (20, 30))]
    assert [(m["title"], g) for m, g in group_by_marks(clips, marks)] == [("A", [0, 1]), ("B", [2, 3])]
    sims = [0.9, 0.2, 0.95]
    assert bound_durations([[0], [1], [2, 3]], clips, sims, min_s=5.0, max_s=None) == [[0, 1], [2, 3]]
    assert bound_durations([[0, 1, 2, 3]], clips, sims, min_s=0, max_s=15.0) == [[0, 1], [2], [3]]


def test_output_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path):
    import json
    import os
    import socket
    import time

    from pipeline.lock import KEY, STALE_S, OutputLock, stale_reason
    from pipeline.storage import LocalStore

    store = LocalStore(tmp_path)
    host = socket.gethostname()
    live = {"host": host, "pid": os.getppid(), "token": "other", "renewed": time.time()}
    store.write(KEY, json.dumps(live).encode())
    with pytest.raises(SpecError, match=r"output\.uri: another vidcurate run \(pid \d+"):
        OutputLock(store, log=lambda *_: None).acquire()
    assert json.loads(store.read(KEY))["token"] == "other"  # untouched
    assert stale_reason({**live, "host": "elsewhere", "renewed": time.time() - STALE_S - 1}) is not None
    assert stale_reason({**live, "host": "elsewhere"}) is None
    dead = subprocess_pid_that_exited()
    store.write(KEY, json.dumps({**live, "pid": dead}).encode())
    lines = []
    with OutputLock(store, log=lines.append) as lock:
        held = json.loads(store.read(KEY))
        assert held["token"] == lock.lease["token"] and held["pid"] == os.getpid()
        assert "taking over" in lines[0] and f"pid {dead}" in lines[0]
    assert not store.exists(KEY)  # released


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run_calls(plan, clock, seconds: dict, calls: int, prepare_s: float = 0.05) -> list[str]:
    """Calls one after another, each taking ``seconds[way]`` from one generation's end to the
    next in the way it started in; returns the ways."""
    ways = []
    for _ in range(calls):
        way = plan.mode
        clock.now += seconds[way]
        plan.generated(way, 8, prepare_s, seconds[way] - prepare_s)
        ways.append(way)
    return ways


@pytest.mark.parametrize("faster", ["serial", "overlap"])
def test_call_plan_measures_both_ways_in_turn_and_keeps_the_faster(faster):
    from pipeline.overlap import OVERLAP, SERIAL, CallPlan

    clock = _Clock()
    plan = CallPlan(2, intervals=2, rounds=2, clock=clock)
    seconds = {SERIAL: 0.2, OVERLAP: 0.25} if faster == SERIAL else {SERIAL: 0.25, OVERLAP: 0.2}
    ways = _run_calls(plan, clock, seconds, 30)
    # the first generation (the model's load) and the first of each way after a change are not measured
    assert ways[:12] == [SERIAL] * 3 + [OVERLAP] * 3 + [SERIAL] * 3 + [OVERLAP] * 3
    assert plan.decided and plan.mode == faster and set(ways[12:]) == {faster}
    assert plan.rate(SERIAL) == pytest.approx(8 / seconds[SERIAL])
    assert plan.rate(OVERLAP) == pytest.approx(8 / seconds[OVERLAP])
    assert plan.summary()["mode"] == faster
    assert (plan.threads(SERIAL), plan.threads(OVERLAP)) == (2, 1)


def test_call_plan_leaves_out_generations_that_changed_ways():
    """A generation whose call started in the other way (or before the plan's change) is not
    measured: here those intervals are very long, and the rates stay those of clean ones."""
    from pipeline.overlap import OVERLAP, SERIAL, CallPlan

    clock = _Clock()
    plan = CallPlan(4, intervals=2, rounds=1, clock=clock)
    for way, gap in ((SERIAL, 9.0), (SERIAL, 0.2), (SERIAL, 0.2), (OVERLAP, 9.0), (SERIAL, 9.0), (OVERLAP, 9.0),
                     (OVERLAP, 0.1), (OVERLAP, 0.1)):
        clock.now += gap
        plan.generated(way, 8, 0.05, 0.1)
    assert plan.rate(SERIAL) == pytest.approx(40) and plan.rate(OVERLAP) == pytest.approx(80)
    assert plan.decided and plan.mode == OVERLAP


def test_call_plan_keeps_serial_at_once_where_preparing_is_negligible():
    """A model whose generation dwarfs the preparing (a real-sized one on CPUs) would only lose a
    CPU by overlapping: serial is kept after the first measured interval, overlap never tried."""
    from pipeline.overlap import OVERLAP, SERIAL, CallPlan

    clock = _Clock()
    plan = CallPlan(8, clock=clock)
    ways = _run_calls(plan, clock, {SERIAL: 30.0, OVERLAP: 1.0}, 6, prepare_s=0.01)
    assert ways == [SERIAL] * 6 and plan.decided and plan.mode == SERIAL and plan.rate(OVERLAP) is None


def test_call_plan_fixed_never_changes():
    from pipeline.overlap import OVERLAP, SERIAL, CallPlan

    clock = _Clock()
    plan = CallPlan(2, fixed=OVERLAP, clock=clock)
    assert _run_calls(plan, clock, {SERIAL: 0.1, OVERLAP: 5.0}, 20) == [OVERLAP] * 20
    assert plan.rate(SERIAL) is None and plan.rate(OVERLAP) is None
    with pytest.raises(ValueError):
        CallPlan(2, fixed="both")
