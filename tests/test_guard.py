"""The guarded decoder: watchdog, memory budget, crashes, and the corpus of hostile files."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.spec import apply_overrides, parse_spec
from stages.analyze import analyze_video
from stages.guard import GuardFailure, run_guarded
from tests import guard_targets as t
from tests.conftest import ROOT, demo_overrides, mini_settings
from tests.corpus import CORPUS_SPEC, build_corpus, decode_check_files, encode


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


def _spec(*overrides):
    return parse_spec(apply_overrides({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}}, list(overrides)))


def test_guard_returns_results_and_contains_failures():
    assert run_guarded(t.double, (21,), timeout_s=30, memory_mb=None) == 42
    cases = [(t.hang, "timeout"), (t.segfault, "decoder_crash"), (t.hog, "memory_limit"), (t.boom, "exception")]
    for fn, reason in cases:
        start = time.monotonic()
        with pytest.raises(GuardFailure) as info:
            run_guarded(fn, (), timeout_s=3, memory_mb=300)
        assert info.value.reason == reason, info.value.message
        assert time.monotonic() - start < 20  # nothing runs past its watchdog (generous bound)
    assert run_guarded(t.double, (1,), timeout_s=30, memory_mb=None) == 2  # still serving after failures


def test_watchdog_and_memory_budget_on_real_decodes(tmp_path):
    video = encode(tmp_path / "uhd.mp4", 10, size=(3840, 2160), stream_options={"preset": "ultrafast"})
    row = {"uri": str(video), "video_id": "v", "size_bytes": 1}
    timed_out = analyze_video(row, _spec("probe.timeout_s=0.05"))
    assert (timed_out["status"], timed_out["reason"]) == ("rejected", "timeout")
    starved = analyze_video(row, _spec("probe.max_memory_mb=40"))
    # FFmpeg reports some allocation failures inside its threads as invalid data
    assert starved["status"] == "rejected" and starved["reason"] in ("memory_limit", "corrupt_stream"), starved
    assert analyze_video(row, _spec())["status"] == "ok"


def test_corpus_kinds_get_their_reasons(corpus):
    root, expected = corpus
    assert len(expected) >= 20
    spec = _spec(*CORPUS_SPEC)
    for name, (status, reason) in sorted(expected.items()):
        row = analyze_video({"uri": str(root / name), "video_id": "v", "size_bytes": 1}, spec)
        assert (row["status"], row.get("reason")) == (status, reason), (name, row.get("message"))


def test_corpus_results_do_not_depend_on_decode_workers(corpus):
    """Chunked decoding (several decoders) falls back to one decoder wherever the two could differ:
    every file, good or bad, ends in the same row either way."""
    root, expected = corpus
    one, two = _spec(*CORPUS_SPEC, "analysis.decode_workers=1"), _spec(*CORPUS_SPEC, "analysis.decode_workers=2")
    for name in sorted(expected):
        video = {"uri": str(root / name), "video_id": "v", "size_bytes": 1}
        a, b = analyze_video(video, one), analyze_video(video, two)
        a.pop("analysis_s"), b.pop("analysis_s")
        assert a == b, name


def _probe(paths, *flags) -> tuple[int, list[dict]]:
    """``vidcurate probe`` run as a command, with the corpus settings and the demo spec."""
    sets = [a for o in CORPUS_SPEC for a in ("--set", o)]
    out = subprocess.run([sys.executable, "-m", "pipeline", "probe", *map(str, paths), *sets, *flags,
                          "--job", str(ROOT / "jobs" / "demo.yaml")], capture_output=True, text=True, timeout=300)
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines()]


def test_probe_cli_prints_one_json_line_per_input(corpus):
    root, expected = corpus
    names = sorted(expected)
    code, lines = _probe([root / n for n in names])
    assert [line["uri"] for line in lines] == [str(root / n) for n in names]
    assert code == 1  # some inputs were rejected
    for line, name in zip(lines, names):
        status, reason = expected[name]
        if status == "ok":  # decodable; may still end without kept clips, as in the pipeline
            assert line["status"] == "ok" or line["reason"] == "no_clips", (name, line)
        else:
            assert (line["status"], line["reason"]) == (status, reason), (name, line)
        assert line["decode"]["checked"] is True
    by_name = {n: line for n, line in zip(names, lines)}
    assert by_name["ten_bit.mp4"]["width"] == 160 and by_name["vfr.mkv"]["status"] == "ok"


@pytest.fixture(scope="module")
def decode_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode_check")
    return root, decode_check_files(root)


def _pipeline_decisions(root, out) -> dict[str, tuple[str, str | None]]:
    """name -> (status, reason) the pipeline's analyze stage commits for each file in ``root``."""
    import pyarrow as pa

    from pipeline.discover import discover
    from pipeline.graph import BY_NAME, work_key
    from pipeline.plan import _unit_row
    from pipeline.spec import load_spec
    from pipeline.storage import open_store
    from pipeline.units import UNIT, AnalyzeUnits, decode_unit

    spec = load_spec(ROOT / "jobs" / "demo.yaml", [*CORPUS_SPEC, f"inputs.paths=[{root}/*]", f"output.uri={out}"])
    fps, units = spec.fingerprints(), [_unit_row(r, 0) for r in discover(spec.inputs)]
    AnalyzeUnits(spec=spec, fps=fps, stage=BY_NAME["analyze"])(pa.Table.from_pylist(units, schema=UNIT))
    store = open_store(str(out), spec.storage)
    videos = [decode_unit(store.read(work_key("analyze", fps["analyze"], u["unit_id"])))[0] for u in units]
    return {v["uri"].rsplit("/", 1)[1]: (v["status"], v["reason"]) for v in videos}


def test_probe_tells_what_the_pipeline_decides(decode_files, tmp_path):
    """Files whose metadata looks fine (cut off at 50%, corrupted packets, cut right after the first
    frame's header) and a good one: probe gives each the pipeline's status and reason."""
    root, expected = decode_files
    names = sorted(expected)
    code, lines = _probe([root / n for n in names])
    assert code == 1 and [line["uri"] for line in lines] == [str(root / n) for n in names]
    pipeline = _pipeline_decisions(root, tmp_path / "out")
    for name, line in zip(names, lines):
        assert (line["status"], line["reason"]) == pipeline[name] == expected[name], (name, line)
        assert line["decode"]["checked"] is True
    good, truncated = lines[names.index("good.mp4")], lines[names.index("truncated_index_front.mp4")]
    assert good["decode"]["frames"] == 50 and good["decode"]["decoded_s"] == pytest.approx(2.0)
    assert truncated["duration_s"] == pytest.approx(8.0) and "decoded 2." in truncated["message"]


def test_probe_metadata_only_keeps_the_quick_look(decode_files):
    """--metadata-only decodes nothing: it says so, and passes the cut-off and corrupted streams
    the decode check rejects; a file cut before its first frame's data is truncated either way."""
    root, expected = decode_files
    names = sorted(expected)
    _, lines = _probe([root / n for n in names], "--metadata-only")
    by_name = {line["uri"].rsplit("/", 1)[1]: line for line in lines}
    assert [line["decode"] for line in lines] == [{"checked": False}] * len(names)
    for name in ("truncated_index_front.mp4", "corrupted_packets.mp4", "good.mp4"):
        assert by_name[name]["status"] == "ok" and by_name[name]["width"] == 160, name
    assert (by_name["cut_after_frame_header.flv"]["status"], by_name["cut_after_frame_header.flv"]["reason"]) == \
        ("rejected", "truncated")


def test_corpus_through_the_pipeline(corpus, demo, ray_local, tmp_path):
    from pipeline.plan import run_job
    from pipeline.spec import load_spec

    root, expected = corpus
    out = tmp_path / "out"
    overrides = demo_overrides(demo, out) + [f"inputs.paths=[{root}/*]"] + CORPUS_SPEC + mini_settings()
    manifest = run_job(load_spec(ROOT / "jobs" / "demo.yaml", overrides), log=lambda *_: None)
    videos = {r["uri"].rsplit("/", 1)[1]: r for r in pq.read_table(out / "videos").to_pylist()}
    assert sorted(videos) == sorted(expected)
    for name, (status, reason) in expected.items():
        if status == "ok":  # decodable; may still end without kept clips
            assert videos[name]["status"] == "ok" or videos[name]["reason"] == "no_clips", name
        else:
            assert (videos[name]["status"], videos[name]["reason"]) == (status, reason), name
    assert manifest["counts"]["videos_in"] == len(expected)


def test_guard_passes_non_dict_results_through():
    assert run_guarded(t.double, (b"ab",), timeout_s=30, memory_mb=500) == b"abab"
