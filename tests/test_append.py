"""Partitioned outputs on an embedded local Ray: stock readers read each table as one dataset,
and a rerun with more inputs appends partitions without touching the existing ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import schemas
from tests.conftest import ROOT, demo_overrides

pytestmark = pytest.mark.slow


def _files(out: Path) -> dict[str, tuple[bytes, int]]:
    """path -> (bytes, mtime) of every file outside _work/."""
    return {p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and p.relative_to(out).parts[0] != "_work"}


def _run(demo: dict, out: Path, paths: list[str], extra: list[str] = ()) -> dict:
    from pipeline.plan import run_job
    from pipeline.spec import load_spec

    overrides = demo_overrides(demo, out) + [f"inputs.paths=[{', '.join(paths)}]", "output.videos_per_partition=2",
                                             "output.samples_per_shard=2", *extra]
    return run_job(load_spec(ROOT / "jobs" / "demo.yaml", overrides), log=lambda *_: None)


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


def test_more_inputs_append_partitions_and_leave_the_old_ones_alone(demo, ray_local, tmp_path):
    videos = sorted(demo["videos"])
    first, second = videos[:3], videos + [str(demo["root"] / "bad" / "*")]
    out = tmp_path / "grow"
    one = _run(demo, out, first)
    assert [p["videos"] for p in one["partitions"]] == [2, 1]
    before = _files(out)
    two = _run(demo, out, second)
    assert [p["partition"] for p in two["partitions"]] == [0, 1, 2, 3, 4]
    assert two["partitions"][:2] == one["partitions"]
    after = _files(out)
    old = [p for t in one["tables"].values() for p in t["parts"]] + one["shards"] + one["long_shards"]
    for f in old:  # every existing part and shard: the same bytes, never rewritten
        assert after[f["path"]] == before[f["path"]], f["path"]
    listed = {p["path"] for t in two["tables"].values() for p in t["parts"]} | \
        {s["path"] for s in two["shards"] + two["long_shards"]}
    assert {f["path"] for f in old} < listed
    assert {k for k in after if k.split("/")[0] in (*schemas.TABLES, "shards", "long_shards")} == listed
    assert two["counts"]["videos_in"] == len(videos) + len(demo["bad"])
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
