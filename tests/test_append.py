"""Partitioned outputs on an embedded local Ray: stock readers read each table as one dataset,
and a rerun with more inputs appends partitions without touching the existing ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import schemas
from tests.conftest import ROOT, mini_overrides

pytestmark = pytest.mark.slow


def _files(out: Path) -> dict[str, tuple[bytes, int]]:
    """path -> (bytes, mtime) of every file outside _work/."""
    return {p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and p.relative_to(out).parts[0] != "_work"}


def _run(demo: dict, out: Path, inputs, extra: list[str] = (), log=lambda *_: None) -> dict:
    """The demo job on ``inputs`` (paths under the demo root, or inputs.paths as one string) as
    tests/conftest.py mini_settings runs it, two videos a partition."""
    from pipeline.plan import run_job
    from pipeline.spec import load_spec

    overrides = mini_overrides(demo, out, inputs, every_stage=True) + ["output.videos_per_partition=2", "output.samples_per_shard=2",
                                                     *extra]
    return run_job(load_spec(ROOT / "jobs" / "demo.yaml", overrides), log=log)


def test_stock_readers_read_every_table_as_one_dataset(demo_run):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as pads
    import webdataset as wds

    out, manifest, _ = demo_run
    for name, schema in schemas.TABLES.items():
        rows = manifest["tables"][name]["rows"]
        table = pads.dataset(str(out / name), format="parquet").to_table()
        assert table.num_rows == rows and table.schema.remove_metadata().equals(schema.remove_metadata()), name
        assert len(pd.read_parquet(out / name)) == rows
        got = duckdb.sql(f"select count(*) from read_parquet('{out / name}/*.parquet')").fetchall()[0][0]
        assert got == rows, name
    urls = [str(out / s["path"]) for s in manifest["shards"]]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    kept = duckdb.sql(f"select clip_id from read_parquet('{out}/clips/*.parquet') where status = 'kept'").fetchall()
    assert sorted(keys) == sorted(k for (k,) in kept) and len(keys) == len(set(keys)) == manifest["counts"]["samples"]


# inputs in sorted order: a partition of two bad files, then one of a video with kept clips;
# the second run adds a bad file and a video whose clips are all dropped, a third partition
FIRST = ["bad/empty.mp4", "bad/notes_renamed.mp4", "videos/synthetic_cuts.mp4"]
SECOND = [*FIRST, "bad/random_bytes.mp4", "videos/dark_static.mp4"]


def test_more_inputs_append_partitions_and_leave_the_old_ones_alone(demo, ray_local, tmp_path):
    first, second = FIRST, SECOND
    out = tmp_path / "grow"
    one = _run(demo, out, first)
    assert [p["videos"] for p in one["partitions"]] == [2, 1] and one["shards"]
    before = _files(out)
    two = _run(demo, out, second)
    assert [p["partition"] for p in two["partitions"]] == [0, 1, 2]
    assert two["partitions"][:2] == one["partitions"]
    after = _files(out)
    old = [p for t in one["tables"].values() for p in t["parts"]] + one["shards"] + one["long_shards"]
    for f in old:  # every existing part and shard: the same bytes, never rewritten
        assert after[f["path"]] == before[f["path"]], f["path"]
    listed = {p["path"] for t in two["tables"].values() for p in t["parts"]} | \
        {s["path"] for s in two["shards"] + two["long_shards"]}
    assert {f["path"] for f in old} < listed
    assert {k for k in after if k.split("/")[0] in (*schemas.TABLES, "shards", "long_shards")} == listed
    assert two["counts"]["videos_in"] == len(second)
    videos_table = pq.read_table(out / "videos").to_pylist()
    assert len(videos_table) == two["counts"]["videos_in"] == len({v["video_id"] for v in videos_table})

    # the same sequence of runs gives the same bytes (per-video results copied over, so only the
    # planning and the partition writers run again)
    again = tmp_path / "again"
    (again / "_work").mkdir(parents=True)
    for stage in ("analyze", "clip", "caption", "hierarchy"):
        shutil.copytree(out / "_work" / stage, again / "_work" / stage)
    assert _run(demo, again, first)["partitions"] == one["partitions"]
    assert _run(demo, again, second)["tables"] == two["tables"]
    same = {k: v[0].replace(str(again).encode(), str(out).encode()) for k, v in _files(again).items()}
    assert same == {k: v[0] for k, v in after.items()}
    for p in two["partitions"]:
        mine, theirs = (json.loads((o / p["record"]).read_text()) for o in (again, out))
        assert mine["units"] == theirs["units"] and mine["content"] == theirs["content"]


# A dataset-level stage for the test: drop the single longest kept clip of the whole dataset.
def longest_map(spec, fps, partition: dict) -> dict:
    from pipeline.storage import open_store
    from pipeline.units import read_unit

    store = open_store(spec.output.uri, spec.storage)
    clips = []
    for unit in partition["units"]:
        _, rows, _ = read_unit(store, fps, unit["unit_id"], spec)
        clips += [(c["duration_s"], c["clip_id"]) for c in rows if c["status"] == "kept"]
    return {"partition": partition["partition"], "clips": clips}


def longest_reduce(spec, fps, partials: list[dict]) -> dict:
    _, clip, p = max((d, c, part["partition"]) for part in partials for d, c in part["clips"])
    return {p: {clip: "dataset_longest"}}


@pytest.mark.extended
def test_dataset_level_stage_runs_over_every_partition_before_the_writers(demo_run, demo, tmp_path, monkeypatch):
    import pipeline.plan
    from pipeline.graph import DatasetStage

    done, _, _ = demo_run
    out = tmp_path / "dataset"
    (out / "_work").mkdir(parents=True)
    from pipeline.graph import STAGES

    for stage in STAGES:  # the same per-video results: only the new part runs
        if (done / "_work" / stage).exists():
            shutil.copytree(done / "_work" / stage, out / "_work" / stage)
    stage = DatasetStage("longest", map="tests.test_append:longest_map", reduce="tests.test_append:longest_reduce")
    monkeypatch.setattr(pipeline.plan, "DATASET_STAGES", (stage,))
    paths = str(demo["root"] / "videos" / "*.mp4")
    manifest = _run(demo, out, paths)
    assert len(manifest["partitions"]) == 3
    clips = pq.read_table(out / "clips").to_pylist()
    longest = max((c for c in pq.read_table(done / "clips").to_pylist() if c["status"] == "kept"),
                  key=lambda c: (c["duration_s"], c["clip_id"]))  # ties (clips of max_clip_s) go by id, as the stage does
    dropped = [c for c in clips if c["reason"] == "dataset_longest"]
    assert [c["clip_id"] for c in dropped] == [longest["clip_id"]] and dropped[0]["shard"] is None
    assert manifest["counts"]["clips_kept"] == sum(c["status"] == "kept" for c in clips)
    assert json.loads((out / "stats.json").read_text())["clip_reasons"]["dataset_longest"] == 1
    lines = []
    again = _run(demo, out, paths, log=lines.append)
    assert again == manifest and "nothing to do" in lines[-1]
    # gc keeps the drops the manifest's partitions use and removes those of earlier runs
    from pipeline.output import collect_garbage
    from pipeline.spec import load_spec
    from pipeline.storage import open_store

    used = {key for p in manifest["partitions"] for key in p.get("drops", [])}
    assert len(used) == 1 and (out / next(iter(used))).exists()
    stale = out / "_work" / "dataset" / "longest" / "part-000000-0123456789abcdef.json"
    stale.write_text("{}")
    files, _ = collect_garbage(open_store(str(out), load_spec(ROOT / "jobs" / "demo.yaml").storage), log=lines.append)
    assert files == 1 and not stale.exists() and all((out / key).exists() for key in used)
