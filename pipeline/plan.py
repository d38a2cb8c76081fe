"""Build and run the plan: spec -> Ray Data stages -> tables, shards, manifest.

The driver discovers inputs, wires stages into Ray Data, and assembles the small metadata
tables; it never decodes a video or loads a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import schemas
from pipeline.assemble import absolute_events, chapter_samples, clip_sample, run_stats, window_caption
from pipeline.checks import check_caption_times
from pipeline.discover import discover
from pipeline.lock import KEY as LOCK_KEY
from pipeline.lock import OutputLock
from pipeline.output import clean, finished, output_dir, prepare_output, record_timings, run_key
from pipeline.report import report_for
from pipeline.resources import ray_args
from pipeline.sinks import COMMITS, ShardWriterStage, json_bytes, parquet_bytes, put_if_changed, shard_name
from pipeline.preflight import check_inputs
from pipeline.spec import JobSpec, resolved_yaml
from pipeline.storage import open_store
from pipeline.units import read_units, run_units, todo_stages
from stages.chapters import caption_id
from stages.entities import renamer
from stages.structured import COLUMNS as STRUCTURED_COLUMNS

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


def _write_shards(samples: list[dict], folder: str, spec: JobSpec, fp: str, store, listing: dict, session
                  ) -> list[dict]:
    """Samples ({key, uri, clip, json, txt}), in order, into WebDataset shards ``folder/shard-N.tar``.

    Shard n holds samples [n * per, (n + 1) * per): the same samples always land in the same
    shard. A shard whose commit record names the same content (a hash of its samples and the
    output settings' fingerprint ``fp``) and whose tar is there is reused; the others are written
    by Ray tasks that cut each sample's bytes under the guard. Returns the commit records in shard order."""
    import ray

    per = spec.output.samples_per_shard
    reused, todo = [], []
    for n in range(0, len(samples), per):
        chunk = samples[n:n + per]
        name = shard_name(n // per)
        content = hashlib.sha256(json.dumps([fp, chunk], sort_keys=True).encode()).hexdigest()[:32]
        record_key = f"{COMMITS}/{folder}/{name}.json"
        record = json.loads(store.read(record_key)) if record_key in listing else None
        if record and record["content"] == content and listing.get(f"{folder}/{name}") == record["bytes"]:
            reused.append(record)
        else:
            todo.append({"shard": name, "folder": folder, "content": content, "samples_json": json.dumps(chunk)})
    written = []
    if todo:
        session.ensure()
        written = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            ShardWriterStage(output_uri=store.uri(), storage=spec.storage, timeout_s=spec.probe.timeout_s,
                             memory_mb=spec.probe.max_memory_mb),
            **ray_args(spec.resources.write, actor=False)).take_all()
    return sorted(reused + written, key=lambda s: s["shard"])


class _RaySession:
    """Ray, started (or joined) only when there is work for it; a finished job's rerun never starts it."""

    def __init__(self, spec: JobSpec):
        self.spec, self.started, self.ready = spec, False, False

    def ensure(self) -> None:
        if self.ready:
            return
        import ray

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


def run_job(spec: JobSpec, log=print) -> dict:
    """Run the whole job, resuming from whatever the output already holds; returns the manifest."""
    check_inputs(spec)
    inputs = discover(spec.inputs, spec.storage)
    store = open_store(output_dir(spec), spec.storage)
    listing = prepare_output(spec, store, inputs, log)
    key = run_key(spec, inputs)
    done = None if spec.output.overwrite else finished(store, listing, key)
    if done is not None:
        log(f"vidcurate: {store.uri()} already holds this job's complete output; nothing to do")
        return done
    with OutputLock(store, log):  # one run per output: a second driver stops here, before any change
        if spec.output.overwrite and listing:
            log(f"vidcurate: output.overwrite: deleting the previous output in {store.uri()} ({len(listing)} files)")
            for k in sorted(listing):
                if k != LOCK_KEY:
                    store.delete(k)
            listing = {}
        if "manifest.json" in listing:  # the output is about to change: uncommitted until the new manifest
            store.delete("manifest.json")
            del listing["manifest.json"]
        orphans = store.clean_orphans()
        if orphans:
            log(f"vidcurate: removed {orphans} partial file(s) left by an interrupted run")
        session = _RaySession(spec)
        try:
            return _run(spec, inputs, store, listing, key, session, log)
        finally:
            session.close()


def _run(spec: JobSpec, inputs: list[dict], store, listing: dict, key: str, session: _RaySession, log) -> dict:

    fps = spec.fingerprints()
    seconds = {}
    log(f"vidcurate: {len(inputs)} input video(s) -> {store.uri()}")
    committed = set(listing)
    units = [{**r, "todo": todo_stages(r["unit_id"], fps, committed)} for r in inputs]
    pending = [u for u in units if u["todo"]]
    reused = Counter(s for u in units for s in ("analyze", "clip", "caption", "hierarchy") if s not in u["todo"])
    if reused:
        log("[resume] committed results reused: " + ", ".join(f"{s} {reused[s]}" for s in
                                                              ("analyze", "clip", "caption", "hierarchy") if reused[s]))
    stage_stats = {}
    t = time.perf_counter()
    if pending:
        session.ensure()
        stage_stats = run_units(spec, pending, fps, log)
    seconds["units"] = time.perf_counter() - t

    t = time.perf_counter()
    results = read_units(store, fps, inputs)
    videos = [dict(v) for v, _, _ in results]
    clips = sorted((c for _, cs, _ in results for c in cs), key=lambda r: (r["uri"], r["start_frame"]))
    seconds["read"] = time.perf_counter() - t
    bad = Counter(v["reason"] for v in videos if v["status"] != "ok")
    log(f"[videos] {len(videos)}: {len(videos) - sum(bad.values())} ok"
        + "".join(f", {n} {r}" for r, n in sorted(bad.items()))
        + f"; {sum(v['num_clips'] or 0 for v in videos)} clips")
    dropped = Counter(c["reason"] for c in clips if c["status"] != "kept")
    log(f"[clips] {len(clips)}: {sum(c['status'] == 'kept' for c in clips)} kept, "
        f"{sum(c.get('caption_text') is not None for c in clips)} captioned"
        + ("; dropped: " + ", ".join(f"{n} {r}" for r, n in dropped.most_common()) if dropped else ""))

    for c in clips:
        if c.get("caption_text") is not None:
            c["caption_id"] = caption_id(c["clip_id"], "clip", c["caption_model"], c["caption_prompt_version"])
    kept = [c for c in clips if c["status"] == "kept"]
    chapters, captions, entities = [], [], {}
    for video, _, hierarchy in results:
        chapters.extend(hierarchy["chapters"])
        captions.extend(hierarchy["captions"])
        if hierarchy["entities"] is not None:
            entities[video["video_id"]] = hierarchy["entities"]
    log(f"[chapters] {len(chapters)} chapters and {sum(c['level'] == 'video' for c in captions)} video captions")

    chapter_of = {cid: ch for ch in chapters for cid in ch["clip_ids"]}
    video_caption = {c["video_id"]: c["caption_id"] for c in captions if c["level"] == "video"}
    for v in videos:
        v["caption_id"] = video_caption.get(v["video_id"])
    for c in kept:
        ch = chapter_of.get(c["clip_id"])
        c["chapter_id"] = ch["chapter_id"] if ch else None
        if c.get("caption_id"):
            fields = json.loads(c["caption_fields"]) if c.get("caption_fields") else {}
            captions.append({"caption_id": c["caption_id"], "video_id": c["video_id"], "clip_id": c["clip_id"],
                             "chapter_id": c["chapter_id"], "level": "clip",
                             "parent_id": ch["caption_id"] if ch else None, "start_s": c["start_s"],
                             "end_s": c["end_s"], "text": c["caption_text"], "model": c["caption_model"],
                             "prompt_version": c["caption_prompt_version"],
                             "generation": c["caption_generation"], "parse_status": c.get("caption_parse_status"),
                             **{k: fields.get(k) for k in STRUCTURED_COLUMNS},
                             "events": absolute_events(fields.get("events"), c["start_s"])})
            for w in c.get("windows") or []:
                captions.append(window_caption(c, w))
    renamers = {vid: renamer(e["entities"]) for vid, e in entities.items() if e["status"] == "ok"}
    for cap in captions:
        cap["duration_s"] = cap["end_s"] - cap["start_s"]
        if cap["level"] in ("clip", "window") and cap["video_id"] in renamers:
            cap["text"], cap["entities"] = renamers[cap["video_id"]](cap["text"])
    for c in kept:  # the shards carry the renamed texts too
        if c["video_id"] in renamers and c.get("caption_text") is not None:
            c["caption_text"], _ = renamers[c["video_id"]](c["caption_text"])
            for w in c.get("windows") or []:
                w["caption_text"], _ = renamers[c["video_id"]](w["caption_text"])

    t = time.perf_counter()
    per = spec.output.samples_per_shard
    for n, c in enumerate(kept):
        c["shard"], c["key"] = shard_name(n // per), c["clip_id"]
    samples = [{"key": c["key"], "uri": c["uri"],
                "clip": {k: c[k] for k in ("start_s", "end_s", "start_frame", "end_frame",
                                           "keyframe_aligned", "pts_timing")},
                "json": clip_sample(c, chapter_of.get(c["clip_id"]), video_caption.get(c["video_id"])),
                "txt": c.get("caption_text") or ""} for c in kept]
    shards = _write_shards(samples, "shards", spec, fps["output"], store, listing, session)
    seconds["write_shards"] = time.perf_counter() - t
    failed = {k: v for s in shards for k, v in json.loads(s.pop("failed_json")).items()}
    methods = {k: v for s in shards for k, v in json.loads(s.pop("methods_json")).items()}
    for c in kept:
        c["extract_method"] = methods.get(c["clip_id"])
    for c in kept:
        if c["clip_id"] in failed:
            c.update(status="rejected", reason="extract_error", shard=None, key=None)
            log(f"[write] clip {c['clip_id']} of {c['uri']} left out: {failed[c['clip_id']]}")
    log(f"[write] {len(shards)} shards, {sum(s['samples'] for s in shards)} samples ({seconds['write_shards']:.1f}s)")
    long_shards = []
    if spec.output.long_samples == "chapter":
        t = time.perf_counter()
        long_shards = _write_shards(chapter_samples(chapters, kept, captions, video_caption), "long_shards", spec,
                                    fps["output"], store, listing, session)
        seconds["write_long_shards"] = time.perf_counter() - t
        for s in long_shards:
            for key, err in json.loads(s.pop("failed_json")).items():
                log(f"[write] chapter sample {key} left out: {err}")
            s.pop("methods_json")
        log(f"[write] {len(long_shards)} long-video shards, {sum(s['samples'] for s in long_shards)} chapter samples "
            f"({seconds['write_long_shards']:.1f}s)")

    t = time.perf_counter()
    level_order = {"video": 0, "chapter": 1, "clip": 2, "window": 3}
    tables = {
        "videos": videos,
        "clips": clips,
        "captions": sorted(captions, key=lambda c: (c["video_id"], level_order[c["level"]], c["start_s"])),
        "chapters": sorted(chapters, key=lambda c: (c["video_id"], c["index"])),
    }
    files = {}  # key -> bytes of the small files, each written only when it changed
    table_info = {}
    for name, rows in tables.items():
        data = parquet_bytes(schemas.table(name, rows))
        path = f"{name}/part-000000.parquet"
        files[path] = data
        table_info[name] = {"path": path, "rows": len(rows), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()}

    stats = run_stats(videos, clips, captions, shards)
    stats["caption_checks"] = check_caption_times(captions, kept, videos, chapters)
    stats["entity_naming"] = dict(sorted(Counter(e["status"] for e in entities.values()).items()))
    if stats["caption_checks"]["violations"]:
        log(f"[check] {stats['caption_checks']['violations']} caption time violations, e.g. "
            + "; ".join(stats["caption_checks"]["examples"][:3]))
    files["stats.json"] = json_bytes(stats)
    files["spec.yaml"] = resolved_yaml(spec).encode()

    def listed(s: dict, folder: str) -> dict:
        return {"shard": s["shard"], "path": f"{folder}/{s['shard']}", "sha256": s["sha256"],
                "samples": s["samples"], "bytes": s["bytes"]}

    manifest = {
        "name": spec.name,
        "schema_version": schemas.SCHEMA_VERSION,
        "run_key": key,
        "fingerprints": fps,
        "spec": spec.model_dump(mode="json"),
        "versions": _versions(),
        "tiny_random_models": tiny_models_in_use(spec),
        "counts": stats["counts"],
        "tables": table_info,
        "shards": [listed(s, "shards") for s in shards],
        "long_shards": [listed(s, "long_shards") for s in long_shards],
        "report": "report.html",
    }
    changed = sum(put_if_changed(store, path, data, listing) for path, data in sorted(files.items()))
    report = report_for(store, manifest, {r["video_id"]: r["unit_id"] for r in inputs})  # reads the new tables
    changed += put_if_changed(store, "report.html", report, listing)
    clean(store, manifest, log)
    store.write("manifest.json", json_bytes(manifest))  # written last: the manifest is the commit
    seconds["write_tables"] = time.perf_counter() - t
    record_timings(store, seconds, stage_stats, changed)
    return manifest


