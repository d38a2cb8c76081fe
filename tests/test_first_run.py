"""A new user's first run: checks before any work (one line each), files others can read, loud
empty results, quiet output, and sample JSON that reads as written."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import MINI_INPUTS, ROOT, demo_overrides, mini_overrides

JOB = str(ROOT / "jobs" / "demo.yaml")


def _cli(*args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=timeout)


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed check prints (and that nothing else is on stderr)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---- outputs others can read


def test_output_files_get_the_umask_mode(demo_run):
    """Every file of an output (shards, Parquet parts, JSON, the report) gets the mode the umask
    gives, as any file the user writes; the workers inherit the umask of the process that
    started Ray (this test process)."""
    out, _, _ = demo_run
    umask = os.umask(0o022)
    os.umask(umask)
    want = 0o666 & ~umask
    files = [p for p in out.rglob("*") if p.is_file() and p.parts[-3:-1] != ("_work", "logs")]
    kinds = {p.suffix for p in files}
    assert {".tar", ".parquet", ".json", ".html", ".yaml"} <= kinds
    wrong = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != want}
    assert not wrong


def test_committed_files_get_the_umask_mode_whatever_their_staging_mode(tmp_path):
    import tempfile

    from pipeline.sinks import write_tar
    from pipeline.storage import LocalStore

    old = os.umask(0o022)
    try:
        store = LocalStore(tmp_path / "out")
        write_tar(store, "shards/shard-000000.tar", [{"__key__": "a", "txt": b"x"}])
        fd, staged = tempfile.mkstemp(dir=tmp_path)  # 0600, as mkstemp makes them
        os.close(fd)
        store.write_file("x/y.bin", staged)
        store.write("z.json", b"{}")
        for key in ("shards/shard-000000.tar", "x/y.bin", "z.json"):
            assert stat.S_IMODE(store.path(key).stat().st_mode) == 0o644, key
        os.umask(0o077)
        store.write_file("private.bin", Path(tempfile.mkstemp(dir=tmp_path)[1]))
        assert stat.S_IMODE(store.path("private.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)


# ---- preflight: one line naming what and where, before any decode


def test_default_models_unreachable_fail_validate_and_run_before_any_work(demo, tmp_path):
    """A spec without models: gets open_clip's ViT-B-32 laion2b_s34b_b79k and Qwen2.5-VL-3B;
    with neither in the local cache nor a hub, both commands say so in one line, and ``run``
    stops before Ray starts or the output is created."""
    out = tmp_path / "out"
    sets = _sets([f"inputs.paths=[{demo['root']}/videos/bikes.mp4]", f"output.uri={out}",
                  "models.clip.name=ViT-B-32", "models.clip.pretrained=laion2b_s34b_b79k", "models.clip.config=null",
                  "models.clip.aesthetic_head=null", f"models.vlm.name_or_path={demo['vlm']['name_or_path']}"])
    cache = tmp_path / "hub"
    want = ("error: models.clip.pretrained: 'laion2b_s34b_b79k' (laion/CLIP-ViT-B-32-laion2B-s34B-b79K) for "
            f"ViT-B-32 is not in the local cache ({cache}) and the hub (https://huggingface.co) cannot be "
            "reached (HF_HUB_OFFLINE is set); give a local path, or run where the hub is reachable once to fill "
            "the cache")
    for verb in ("validate", "run"):
        result = _cli(verb, JOB, *sets, env={"HF_HUB_CACHE": str(cache)})
        assert result.returncode == 2 and _error_line(result) == want, result.stderr
    assert not out.exists()
    vlm = _cli("validate", JOB, *sets, "--set", f"models.clip.config={demo['clip']['config']}",
               "--set", f"models.clip.pretrained={demo['clip']['pretrained']}",
               "--set", "models.vlm.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct", env={"HF_HUB_CACHE": str(cache)})
    assert vlm.returncode == 2 and _error_line(vlm) == (
        f"error: models.vlm.name_or_path: 'Qwen/Qwen2.5-VL-3B-Instruct' is not in the local cache ({cache}) and "
        "the hub (https://huggingface.co) cannot be reached (HF_HUB_OFFLINE is set); give a local path, or run "
        "where the hub is reachable once to fill the cache")
    unknown = _cli("validate", JOB, *sets, "--set", "models.clip.pretrained=laion9b")
    assert unknown.returncode == 2
    assert _error_line(unknown).startswith("error: models.clip.pretrained: open_clip has no weights 'laion9b' for "
                                           "'ViT-B-32' (it has: openai, ")


def _cached(cache: Path, repo: str, filename: str) -> None:
    """A file in the Hugging Face cache layout, as a download leaves it."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0" * 40)
    (base / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (base / "snapshots" / ("0" * 40) / filename).write_bytes(b"weights")


def test_models_in_the_local_cache_resolve_offline(demo, tmp_path):
    cache = tmp_path / "hub"
    _cached(cache, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
    _cached(cache, "Qwen/Qwen2.5-VL-3B-Instruct", "model.safetensors.index.json")
    result = _cli("validate", JOB, *_sets([f"inputs.paths=[{demo['root']}/videos/bikes.mp4]",
                                           f"output.uri={tmp_path / 'out'}", "models.clip.name=ViT-B-32",
                                           "models.clip.pretrained=laion2b_s34b_b79k", "models.clip.config=null",
                                           "models.clip.aesthetic_head=null",
                                           "models.vlm.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct"]),
                  env={"HF_HUB_CACHE": str(cache)})
    assert result.returncode == 0 and result.stdout.startswith(f"{JOB}: valid"), result.stderr


def test_an_output_under_a_file_fails_in_one_line(demo, tmp_path):
    (tmp_path / "iamafile").write_text("x")
    sets = _sets(demo_overrides(demo, tmp_path / "iamafile" / "sub"))
    for verb in ("validate", "run"):
        result = _cli(verb, JOB, *sets)
        assert result.returncode == 2, result.stderr
        assert _error_line(result) == (f"error: output.uri: cannot create {tmp_path}/iamafile/sub: "
                                       f"{tmp_path}/iamafile is a file, not a directory")
    relative = _cli("validate", JOB, *_sets(demo_overrides(demo, Path("iamafile/sub"))), cwd=tmp_path)
    assert _error_line(relative) == (f"error: output.uri: cannot create {tmp_path}/iamafile/sub (relative to "
                                     f"{tmp_path}): {tmp_path}/iamafile is a file, not a directory")


def _can_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs `unshare -rm` (user and mount namespaces) to mount read-only")
def test_an_output_on_a_read_only_file_system_fails_in_one_line(demo, tmp_path):
    """A read-only tmpfs mounted in a private mount namespace (nothing outside sees it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    sets = " ".join(f"--set '{o}'" for o in demo_overrides(demo, ro / "out"))
    script = (f"mount -t tmpfs -o ro tmpfs {ro} && {sys.executable} -m pipeline validate {JOB} {sets}; "
              f"echo rc=$? >&2; {sys.executable} -m pipeline run {JOB} {sets}; echo rc=$? >&2")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    line = f"error: output.uri: cannot write to {ro}/out: {ro} is on a read-only file system"
    assert result.stderr.strip().splitlines() == [line, "rc=2", line, "rc=2"], result.stderr


def test_an_aesthetic_head_of_another_width_fails_in_one_line(demo, tmp_path):
    import torch

    from stages.aesthetic import KEYS

    widths = (768, 1024, 128, 64, 16, 1)  # the published ViT-L/14 head's layout, random weights
    layers = iter(zip(widths[:-1], widths[1:]))
    state = {}
    for key in KEYS[::2]:
        n_in, n_out = next(layers)
        state[key], state[key.replace("weight", "bias")] = torch.zeros(n_out, n_in), torch.zeros(n_out)
    head = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, head)
    result = _cli("validate", JOB, *_sets(demo_overrides(demo, tmp_path / "out")),
                  "--set", f"models.clip.aesthetic_head={head}")
    assert result.returncode == 2 and _error_line(result).startswith(
        f"error: models.clip.aesthetic_head: aesthetic head {head.name} takes 768-wide embeddings but the CLIP model "
        "gives 64-wide ones"), result.stderr
    needs = _cli("validate", JOB, "--set", "scores.min_aesthetic=3.5", "--set", "models.clip.aesthetic_head=null")
    assert needs.returncode == 2 and "scores.min_aesthetic needs models.clip.aesthetic_head" in needs.stderr


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\ninputs:\n  paths: [a, b\noutput: {uri: out}\n")
    result = _cli("validate", str(job))
    assert result.returncode == 2 and _error_line(result) == (
        f"error: job spec {job}:4:7: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow "
        "sequence that starts on line 3)")
    bad_set = _cli("validate", JOB, "--set", "inputs.paths=[a")
    assert _error_line(bad_set) == ("error: --set inputs.paths: '[a' is not valid YAML: expected ',' or ']', "
                                    "but got '<stream end>'")


def test_relative_inputs_say_what_they_were_resolved_against(tmp_path):
    result = _cli("validate", JOB, cwd=tmp_path)
    assert result.returncode == 2 and _error_line(result) == (
        f"error: inputs.paths[0]: nothing matches 'data/demo/videos/*.mp4' (relative to {tmp_path})")


# ---- loud empty results, quiet runs


@pytest.fixture(scope="module")
def kept_nothing(demo, tmp_path_factory):
    """``vidcurate run`` on the small corpus (a video and a bad file) with every clip too still
    for scores.min_motion: (output, its --set arguments, the finished command)."""
    out = tmp_path_factory.mktemp("kept_nothing") / "out"
    sets = _sets(mini_overrides(demo, out) + ["scores.min_motion=1000"])
    return out, sets, _cli("run", JOB, *sets)


def test_a_run_that_keeps_nothing_exits_3_naming_the_filter_and_prints_no_chatter(kept_nothing):
    """The whole CLI on real files: every clip too still for scores.min_motion. Exit 3 with one
    line naming the filter and its threshold; a WARNING for the filter that dropped more than
    half; nothing from Ray or the libraries on the terminal (it is in _work/logs/run.log). A
    rerun finds the output complete and says the same, without starting Ray."""
    out, sets, first = kept_nothing
    assert first.returncode == 3, first.stdout + first.stderr
    stats = json.loads((out / "stats.json").read_text())
    clips = stats["counts"]["clips"]
    assert clips > 0 and stats["clip_reasons"] == {"low_motion": clips}
    want = f"low_motion dropped {clips} of {clips} clips (scores.min_motion: 1000.0)"
    assert _error_line(first) == f"error: no clip kept: {want}"
    assert f"WARNING: {want}" in first.stdout.splitlines()
    log = out / "_work" / "logs" / "run.log"
    assert f"goes to {log}" in first.stdout
    for chatter in ("INFO", "core_worker", "torchvision", "Loading weights", "(MapWorker"):
        assert chatter not in first.stdout, chatter
    assert "Started a local Ray instance" in log.read_text()
    assert all(line.startswith(("vidcurate", "[", "WARNING", "  ")) or not line.strip()
               for line in first.stdout.splitlines()), first.stdout
    again = _cli("run", JOB, *sets)
    assert again.returncode == 3 and _error_line(again) == f"error: no clip kept: {want}"
    assert "nothing to do" in again.stdout and "goes to" not in again.stdout


def test_job_with_nothing_kept_still_writes_every_table(kept_nothing):
    """The same output: a videos row per input, the clips with their reason, and the captions
    and chapters tables written, empty; no shard."""
    import pyarrow.parquet as pq

    out, _, first = kept_nothing
    assert first.returncode == 3, first.stdout + first.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["clips_kept"] == 0 and manifest["shards"] == []
    videos = pq.read_table(out / "videos").to_pylist()
    assert len(videos) == len(MINI_INPUTS) == manifest["counts"]["videos_in"]
    clips = pq.read_table(out / "clips").to_pylist()
    assert clips and all(c["reason"] == "low_motion" for c in clips)
    for name in ("captions", "chapters"):
        assert pq.read_table(out / name).num_rows == 0


def test_empty_and_lopsided_results_name_the_setting():
    from pipeline.summary import empty_result, lopsided

    spec = {"clip_filter": {"max_reject_margin": 0.0}, "scores": {"min_motion": None}, "shots": {"min_clip_s": 1.0}}
    stats = {"counts": {"videos_in": 3, "videos_ok": 2, "clips": 20, "clips_kept": 0},
             "clip_reasons": {"clip_reject_prompt": 19, "too_short": 1}, "video_reasons": {"dropped_not_a_video": 1}}
    assert empty_result(stats, spec) == ("no clip kept: clip_reject_prompt dropped 19 of 20 clips "
                                         "(clip_filter.max_reject_margin: 0.0)")
    assert lopsided(stats, spec) == ["clip_reject_prompt dropped 19 of 20 clips (clip_filter.max_reject_margin: 0.0)"]
    half = {**stats, "counts": {**stats["counts"], "clips_kept": 10}, "clip_reasons": {"transition": 10}}
    assert empty_result(half, spec) is None and lopsided(half, spec) == []  # exactly half is not more than half
    none_ok = {"counts": {"videos_in": 3, "videos_ok": 0, "clips": 0, "clips_kept": 0}, "clip_reasons": {},
               "video_reasons": {"dropped_not_a_video": 2, "dropped_truncated": 1}}
    assert empty_result(none_ok, spec) == ("no clip kept: none of the 3 input videos was accepted (2 not_a_video, "
                                           "1 truncated; the videos table has each one's reason and message)")


def test_every_default_shows_in_the_schema():
    """Defaults made by factories are invisible in a JSON Schema; every field states its default."""
    from pipeline.spec import JobSpec, json_schema

    schema = json_schema()
    clip_filter = schema["$defs"]["ClipFilter"]["properties"]
    assert clip_filter["keep_prompts"]["default"] == ["a video frame"]
    assert clip_filter["reject_prompts"]["default"] == ["a blank screen", "a title card with text"]
    assert clip_filter["max_reject_margin"]["default"] == 0.0

    def walk(model):
        for name, field in model.model_fields.items():
            assert field.default_factory is None, f"{model.__name__}.{name}"
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub)
    walk(JobSpec)


# ---- sample JSON


def test_sample_json_times_are_rounded_to_microseconds(demo_run):
    from pipeline.sinks import rounded_times

    assert rounded_times({"duration_s": 1.5999999999999996, "scores": {"motion": 0.12345678901},
                          "dense_captions": [{"start_s": 0.30000000000000004}]}) == {
        "duration_s": 1.6, "scores": {"motion": 0.12345678901}, "dense_captions": [{"start_s": 0.3}]}
    out, manifest, _ = demo_run
    times = 0
    for shard in manifest["shards"] + manifest["long_shards"]:
        with tarfile.open(out / shard["path"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    stack = [json.loads(tar.extractfile(member).read())]
                    while stack:
                        node = stack.pop()
                        items = node.items() if isinstance(node, dict) else enumerate(node)
                        for k, v in items:
                            if isinstance(v, (dict, list)):
                                stack.append(v)
                            elif isinstance(k, str) and k.endswith("_s") and isinstance(v, float):
                                times += 1
                                assert round(v, 6) == v, (member.name, k, v)
    assert times > 50
