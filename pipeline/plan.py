"""Build and run the plan: spec -> partitions -> Ray Data stages -> partition writers -> manifest.

The driver discovers inputs, groups them into partitions, wires the stages of the graph into
Ray Data and starts one writer task per partition as its videos finish; it never decodes a
video, loads a model or holds the tables. What it writes itself is small: the manifest (every
part and shard with its sha256), stats.json merged from the partitions' summaries, the
resolved spec and the report.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import schemas
from pipeline.console import LOG_DIR
from pipeline.discover import discover
from pipeline.graph import DATASET_STAGES
from pipeline.lock import KEYS as LOCK_KEYS
from pipeline.lock import OutputLock
from pipeline.output import (clean, delete_keys, finished, output_dir, prepare_output, record_timings,
                             remove_orphans, run_key)
from pipeline.graph import setting
from pipeline.partitions import Writers, assign, content_key, is_current, read_records, run_dataset_stages
from pipeline.preflight import check_inputs, check_models, check_output
from pipeline.report import report_for
from pipeline.runner import run_units
from pipeline.sinks import json_bytes, put_if_changed
from pipeline.spec import JobSpec, resolved_yaml
from pipeline.storage import open_store
from pipeline.summary import merge
from pipeline.units import UNIT

PACKAGES = ("vidcurate", "ray", "pyarrow", "av", "scenedetect", "open_clip_torch", "transformers",
            "torch", "webdataset", "numpy", "opencv-python-headless")


def connect_ray(spec: JobSpec) -> bool:
    """Join RAY_ADDRESS / ray.address when given, else start an embedded local Ray. True if started here."""
    import ray

    if ray.is_initialized():
        return False
    address = spec.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=spec.ray.num_cpus, include_dashboard=False)
    return True


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def tiny_models_in_use(spec: JobSpec) -> bool:
    return (Path(spec.models.vlm.name_or_path) / "VIDCURATE_TINY_RANDOM_WEIGHTS").exists() or \
        "tiny" in (spec.models.clip.config or "")


class _RaySession:
    """Ray, started (or joined) only when there is work for it; a finished job's rerun never starts it."""

    def __init__(self, spec: JobSpec, before_ray=None):
        self.spec, self.started, self.ready, self.before_ray = spec, False, False, before_ray

    def ensure(self) -> None:
        if self.ready:
            return
        import ray

        if self.before_ray is not None:
            self.before_ray()
        self.started = connect_ray(self.spec)
        progress = self.spec.ray.progress
        if progress is None:
            import sys

            progress = sys.stderr.isatty() and not os.environ.get("CI")
        ray.data.DataContext.get_current().enable_progress_bars = bool(progress)
        self.ready = True

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()


def run_job(spec: JobSpec, log=print, *, before_ray=None, progress_s: float | None = None) -> dict:
    """Run the whole job, resuming from whatever the output already holds; returns the manifest.
    ``before_ray()`` is called once, just before Ray starts (a rerun of a finished job never
    starts it); ``progress_s``: log each pass's progress this often (None: never)."""
    check_inputs(spec)
    inputs = discover(spec.inputs, spec.storage)
    store = open_store(output_dir(spec), spec.storage)
    listing = prepare_output(spec, store, inputs, log)  # the output's own files, not the per-video work
    key = run_key(spec, inputs)
    done = None if spec.output.overwrite else finished(store, listing, key)
    if done is not None:
        log(f"vidcurate: {store.uri()} already holds this job's complete output; nothing to do")
        return done
    check_output(spec)  # work is coming: the output must take it, and every model must resolve
    check_models(spec)
    # one run per output: a second driver stops here, before any change; one that loses the lease
    # stops at its next lease.check() (before writers start, deletions and the manifest)
    with OutputLock(store, log, conditional_writes=spec.storage.conditional_writes) as lease:
        if spec.output.overwrite:
            doomed = [k for k, _ in store.list() if k not in LOCK_KEYS and not k.startswith(LOG_DIR + "/")]
            if doomed:
                log(f"vidcurate: output.overwrite: deleting the previous output in {store.uri()} ({len(doomed)} files)")
            delete_keys(store, doomed, lease.check)
            listing = {}
        lease.check()
        if "manifest.json" in listing:  # the output is about to change: uncommitted until the new manifest
            store.delete("manifest.json")
            del listing["manifest.json"]
        orphans = remove_orphans(store)
        if orphans:
            log(f"vidcurate: removed {orphans} partial file(s) left by an interrupted run")
        session = _RaySession(spec, before_ray)
        try:
            return _run(spec, inputs, store, listing, key, session, log, progress_s, lease=lease)
        finally:
            session.close()


def _unit_row(row: dict, partition: int) -> dict:
    return {**{f.name: row.get(f.name) for f in UNIT}, "partition": partition, "reused": []}


def _run(spec: JobSpec, inputs: list[dict], store, listing: dict, key: str, session: _RaySession, log,
         progress_s: float | None = None, *, lease: OutputLock) -> dict:
    import time

    fps = spec.fingerprints()
    seconds = {}
    records = read_records(store, listing)
    plan = assign(inputs, records, spec.output.videos_per_partition)
    for part in plan:
        part["content"] = content_key(fps, part["units"])
    pending = [p for p in plan if not is_current(records.get(p["partition"]), p["content"], listing)]
    dataset_stages = [d for d in DATASET_STAGES if d.enabled is None or setting(spec, d.enabled)]
    if dataset_stages:  # then a partition's files also depend on what those stages drop
        pending = [p for p in plan if records.get(p["partition"], {}).get("base") != p["content"]]
    log(f"vidcurate: {len(inputs)} input video(s) in {len(plan)} partition(s)"
        + (f", {len(plan) - len(pending)} already written" if len(pending) < len(plan) else "") + f" -> {store.uri()}")
    stage_stats, written = {}, {}
    t = time.perf_counter()
    if pending or dataset_stages:
        session.ensure()
    if pending:  # the per-video stages; without dataset stages, each partition is written as soon as it is done
        writers = Writers(spec, fps, pending, log, early=not dataset_stages)
        units = [_unit_row(u, p["partition"]) for p in pending for u in p["units"]]
        def unit_done(row: dict) -> None:  # may start its partition's writer
            lease.check(max_age_s=5.0)
            writers.unit_done(row)

        stage_stats = run_units(spec, units, fps, log, on_done=unit_done, progress_s=progress_s)
        seconds["stages"] = time.perf_counter() - t
        if not dataset_stages:
            lease.check()
            written = {r["partition"]: r for r in writers.finish()}
            seconds["writes_after_stages"] = time.perf_counter() - t - seconds["stages"]
            stage_stats["write"] = {"partitions": len(written), "worker_seconds": writers.seconds}
    if dataset_stages:  # they need every video's results: they run before any partition is written
        drops = run_dataset_stages(spec, fps, plan, dataset_stages, log)
        for part in plan:
            part["base"], part["drops"] = part["content"], drops.get(part["partition"], [])
            part["content"] = content_key(fps, part["units"], part["drops"])
        rewrite = [p for p in plan if not is_current(records.get(p["partition"]), p["content"], listing)]
        if rewrite:
            lease.check()
            writers = Writers(spec, fps, rewrite, log, early=False)
            written = {r["partition"]: r for r in writers.finish()}
            stage_stats["write"] = {"partitions": len(written), "worker_seconds": writers.seconds}
    seconds["stages_and_writes"] = time.perf_counter() - t
    parts = [written.get(p["partition"]) or records[p["partition"]] for p in plan]
    t = time.perf_counter()
    summary = merge([r["summary"] for r in parts])
    stats = summary["stats"]
    c = stats["counts"]
    log(f"[videos] {c['videos_in']}: {c['videos_ok']} ok"
        + "".join(f", {n} {r}" for r, n in sorted(_video_drops(stats).items())) + f"; {c['clips']} clips")
    log(f"[clips] {c['clips']}: {c['clips_kept']} kept, {c['captions'].get('clip', 0)} captioned"
        + ("; dropped: " + ", ".join(f"{n} {r}" for r, n in Counter(stats["clip_reasons"]).most_common())
           if stats["clip_reasons"] else ""))
    log(f"[chapters] {c['chapters']} chapters and {c['captions'].get('video', 0)} video captions")
    shards = [s for r in parts for s in r["shards"]]
    long_shards = [s for r in parts for s in r["long_shards"]]
    log(f"[write] {len(parts)} partition(s), {len(written)} written: {len(shards)} shards, "
        f"{sum(s['samples'] for s in shards)} samples" + (f"; {len(long_shards)} long-video shards, "
                                                          f"{sum(s['samples'] for s in long_shards)} chapter samples"
                                                          if long_shards else ""))
    checks = stats["caption_checks"]
    if checks["violations"]:
        log(f"[check] {checks['violations']} caption time violations, e.g. " + "; ".join(checks["examples"][:3]))
    manifest = build_manifest(spec, key, fps, parts, stats)
    files = {"stats.json": json_bytes({k: stats[k] for k in sorted(stats)}), "spec.yaml": resolved_yaml(spec).encode()}
    lease.check()
    changed = sum(put_if_changed(store, path, data, listing) for path, data in sorted(files.items()))
    changed += put_if_changed(store, "report.html", report_for(store, manifest, summary), listing)
    clean(store, manifest, listing, log, check=lease.check)
    lease.check()
    store.write("manifest.json", json_bytes(manifest))  # written last: the manifest is the commit
    seconds["write_manifest"] = time.perf_counter() - t
    record_timings(store, seconds, stage_stats, changed + sum(len(r["shards"]) + len(r["long_shards"]) + 4
                                                              for r in written.values()))
    return manifest


def _video_drops(stats: dict) -> dict[str, int]:
    return {k[len("dropped_"):]: v for k, v in stats["video_reasons"].items() if k.startswith("dropped_")}


def build_manifest(spec: JobSpec, key: str, fps: dict, parts: list[dict], stats: dict) -> dict:
    """The commit of a whole output: every partition's parts and shards with their sha256."""
    def listed(s: dict) -> dict:
        return {k: s[k] for k in ("shard", "path", "sha256", "samples", "bytes")}

    tables = {}
    for name in schemas.TABLES:
        files = [r["tables"][name] for r in parts]
        tables[name] = {"path": name, "rows": sum(f["rows"] for f in files), "bytes": sum(f["bytes"] for f in files),
                        "parts": files}
    return {
        "name": spec.name,
        "schema_version": schemas.SCHEMA_VERSION,
        "run_key": key,
        "fingerprints": fps,
        "spec": spec.model_dump(mode="json"),
        "versions": _versions(),
        "tiny_random_models": tiny_models_in_use(spec),
        "counts": stats["counts"],
        "partitions": [{"partition": r["partition"], "videos": len(r["units"]), "content": r["content"],
                        "record": f"_work/partitions/part-{r['partition']:06d}.json",
                        **({"drops": r["drops"]} if r.get("drops") else {})} for r in parts],
        "tables": tables,
        "shards": [listed(s) for r in parts for s in r["shards"]],
        "long_shards": [listed(s) for r in parts for s in r["long_shards"]],
        "report": "report.html",
    }
