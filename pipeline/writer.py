"""The partition writer: one Ray task per partition writes the partition's rows of every table
as one Parquet part and its samples as WebDataset shards, then its commit record.

    videos/part-000003.parquet   clips/...   captions/...   chapters/...
    shards/part-000003-000000.tar ...        long_shards/part-000003-000000.tar ...
    _work/partitions/part-000003.json        the commit: content key, files with sha256, summary

The record is written last; a part or shard without a current record is rewritten by the
next run (same names, same bytes). A retried task (its worker died) writes the same bytes to
the same names, so the effect happens once. Clip bytes are cut under the guard, one child
process per source video and shard (each video's container is opened once for all its clips).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import schemas
from pipeline.assemble import (apply_drops, apply_entity_names, apply_extraction, chapter_samples, join_results,
                               link_hierarchy, shard_samples, sorted_tables)
from pipeline.checks import check_caption_times
from pipeline.sinks import json_bytes, parquet_bytes, sample_json, write_tar
from pipeline.storage import open_store
from pipeline.summary import partition_summary
from pipeline.units import fault_point, read_unit

RECORDS = "_work/partitions"
TABLES = ("videos", "clips", "captions", "chapters")


def part_name(partition: int) -> str:
    return f"part-{partition:06d}"


def record_key(partition: int) -> str:
    return f"{RECORDS}/{part_name(partition)}.json"


def cut_samples(samples: list[dict], spec) -> tuple[dict[str, tuple[bytes, str]], dict[str, str]]:
    """The MP4 bytes of ``samples`` (key, uri, clip), one guarded child per source video; when a
    whole video's child fails (a timeout, a crash), its clips are cut one child each, so only
    the clip that fails is lost. Returns ({key: (bytes, method)}, {key: error})."""
    from stages.extract import extract_clip, extract_clips
    from stages.guard import GuardFailure, run_guarded

    limits = {"timeout_s": spec.probe.timeout_s, "memory_mb": spec.probe.max_memory_mb}
    smart = spec.output.smart_cut
    by_uri: dict[str, list[dict]] = {}
    for s in samples:
        by_uri.setdefault(s["uri"], []).append(s)
    done, failed = {}, {}
    for uri, group in by_uri.items():
        try:
            results = run_guarded(partial(extract_clips, smart_cut=smart), (uri, [s["clip"] for s in group],
                                                                             spec.storage), **limits)
        except GuardFailure:
            results = []
            for s in group:
                try:
                    data, method = run_guarded(partial(extract_clip, smart_cut=smart), (uri, s["clip"], spec.storage),
                                               **limits)
                    results.append(("ok", data, method))
                except GuardFailure as err:
                    results.append(("error", f"{err.reason}: {err.message.splitlines()[0]}", None))
        for s, (status, value, method) in zip(group, results):
            if status == "ok":
                done[s["key"]] = (value, method)
            else:
                failed[s["key"]] = value.splitlines()[0] if value else "extraction failed"
    return done, failed


class SpilledBytes:
    """Sample bytes kept for a second use within one writer task, in a temporary folder (not in
    memory: a partition's clips can weigh gigabytes). ``add`` keeps only the keys asked for."""

    def __init__(self, wanted: set[str]):
        import tempfile

        self.wanted, self.methods = wanted, {}
        self._dir = tempfile.TemporaryDirectory(prefix="vidcurate-samples-")

    def _path(self, key: str) -> str:
        return f"{self._dir.name}/{hashlib.sha256(key.encode()).hexdigest()}"

    def add(self, key: str, data: bytes, method: str) -> None:
        if key in self.wanted:
            with open(self._path(key), "wb") as f:
                f.write(data)
            self.methods[key] = method

    def get(self, key: str) -> tuple[bytes, str] | None:
        if key not in self.methods:
            return None
        with open(self._path(key), "rb") as f:
            return f.read(), self.methods[key]

    def close(self) -> None:
        self._dir.cleanup()


def _cut_or_reuse(chunk: list[dict], spec, reuse: SpilledBytes | None) -> tuple[dict, dict]:
    """The bytes of a chunk of samples: a sample naming a clip whose bytes were kept (``from_clip``)
    takes them; the others are cut from their source."""
    found = {}
    for s in chunk:
        got = reuse.get(s["from_clip"]) if reuse is not None and s.get("from_clip") else None
        if got is not None:
            found[s["key"]] = got
    cut, lost = cut_samples([s for s in chunk if s["key"] not in found], spec)
    return {**found, **cut}, lost


def write_shards(store, folder: str, samples: list[dict], per: int, prefix: str, spec, *,
                 keep: SpilledBytes | None = None, reuse: SpilledBytes | None = None
                 ) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """Samples, in order, into shards ``folder/<prefix>-NNNNNN.tar`` of ``per`` samples each;
    the bytes of the keys ``keep`` wants are kept there, those ``reuse`` holds are not cut again.
    Returns (shard entries for the manifest, {key: method}, {key: error of clips left out})."""
    shards, methods, failed = [], {}, {}
    for n in range(0, len(samples), per):
        chunk = samples[n:n + per]
        cut, lost = _cut_or_reuse(chunk, spec, reuse)
        failed.update(lost)
        if keep is not None:
            for key, (data, method) in cut.items():
                keep.add(key, data, method)
        members = []
        for s in chunk:
            if s["key"] in cut:
                data, methods[s["key"]] = cut[s["key"]]
                members.append({"__key__": s["key"], "mp4": data,
                                "json": sample_json(s["json"]), "txt": s["txt"].encode()})
        name = f"{prefix}-{n // per:06d}.tar"
        info = write_tar(store, f"{folder}/{name}", members)
        shards.append({"shard": name, "path": f"{folder}/{name}", **info})
    return shards, methods, failed


def write_partition(spec, fps: dict[str, str], partition: dict) -> dict:
    """Write one partition ({partition, content, units, drops}) and commit it; returns its record
    (plus the task's ``seconds``)."""
    import time

    started = time.perf_counter()
    fault_point("write")
    store = open_store(spec.output.uri, spec.storage)
    p, units = partition["partition"], partition["units"]
    name = part_name(p)
    with ThreadPoolExecutor(8) as pool:  # S3 round trips overlap; local reads barely notice
        results = list(pool.map(lambda u: read_unit(store, fps, u["unit_id"], spec), units))
    rows = join_results(results)
    for key in partition.get("drops") or []:  # clips dropped by dataset-level stages
        apply_drops(rows, json.loads(store.read(key)))
    link_hierarchy(rows)
    apply_entity_names(rows)
    per = spec.output.samples_per_shard
    samples = shard_samples(rows, per, lambda n: f"{name}-{n:06d}.tar")
    long = []
    if spec.output.long_samples == "chapter":
        long = chapter_samples(rows["chapters"], rows["kept"], rows["captions"], rows["video_caption"])
    spilled = SpilledBytes({s["from_clip"] for s in long if s.get("from_clip")})
    try:
        shards, methods, failed = write_shards(store, "shards", samples, per, name, spec, keep=spilled)
        apply_extraction(rows, methods, failed)
        long_shards, _, long_failed = write_shards(store, "long_shards", long, per, name, spec, reuse=spilled)
    finally:
        spilled.close()
    tables = sorted_tables(rows)
    checks = check_caption_times(tables["captions"], rows["kept"], rows["videos"], rows["chapters"])
    parts = {}
    for table in TABLES:
        data = parquet_bytes(schemas.table(table, tables[table]))
        path = f"{table}/{name}.parquet"
        store.write(path, data)
        parts[table] = {"path": path, "rows": len(tables[table]), "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()}
    uri_of = {c["clip_id"]: c["uri"] for c in rows["clips"]}
    record = {
        "partition": p, "content": partition["content"], "base": partition.get("base", partition["content"]),
        "units": [u["unit_id"] for u in units], "drops": partition.get("drops") or [],
        "tables": parts, "shards": shards, "long_shards": long_shards,
        "left_out": [{"key": k, "uri": uri_of.get(k), "error": e, "long": False} for k, e in sorted(failed.items())]
        + [{"key": k, "uri": None, "error": e, "long": True} for k, e in sorted(long_failed.items())],
        "summary": partition_summary(p, {u["video_id"]: u["unit_id"] for u in units}, tables, shards, checks,
                                     rows["entities"]),
    }
    store.write(record_key(p), json_bytes(record))  # the commit
    return {**record, "seconds": time.perf_counter() - started}  # timings stay out of the record's bytes
