"""Build and run the plan: spec -> Ray Data stages -> tables, shards, manifest.

The driver discovers inputs, wires stages into Ray Data, and assembles the small metadata
tables; it never decodes a video or loads a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import schemas
from pipeline.checks import check_caption_times
from pipeline.discover import discover
from pipeline.lock import KEY as LOCK_KEY
from pipeline.lock import OutputLock
from pipeline.report import report_for
from pipeline.resources import cluster_gpus, ray_args
from pipeline.sinks import COMMITS, ShardWriterStage, json_bytes, parquet_bytes, put_if_changed, shard_name
from pipeline.storage import is_s3, open_store
from pipeline.spec import JobSpec, SpecError, check_inputs, resolved_yaml
from stages.base import Stats
from stages.caption import CaptionStage
from stages.chapters import caption_id
from stages.embed import ClipEmbedStage
from stages.entities import renamer
from stages.structured import COLUMNS as STRUCTURED_COLUMNS

PACKAGES = ("vidcurate", "ray", "pyarrow", "av", "scenedetect", "open_clip_torch", "transformers",
            "torch", "webdataset", "numpy", "opencv-python-headless")


def output_dir(spec: JobSpec) -> str:
    """The output's location as users wrote it (an absolute local path or an s3:// URI)."""
    uri = spec.output.uri
    if is_s3(uri):
        return uri.rstrip("/")
    return str(Path(uri[len("file://"):] if uri.startswith("file://") else uri).absolute())


OUTPUT_NAMES = {"manifest.json", "spec.yaml", "stats.json", "report.html", "videos", "clips", "captions", "chapters", "shards",
                "long_shards", "_work"}
TABLES = ("videos", "clips", "captions", "chapters")


def prepare_output(spec: JobSpec, store, inputs: list[dict], log=print) -> dict[str, int]:
    """Check the output before any work and list what it holds (key -> size).

    It must be empty or a previous vidcurate output, whose committed work is reused (or deleted
    by run_job, under the output's lock, when output.overwrite). Anything else in it (or inputs
    inside it) is refused; nothing but vidcurate's own files is ever deleted."""
    root = store.uri()
    inside = [r["uri"] for r in inputs if r["uri"].startswith(root.rstrip("/") + "/")]
    if inside:
        raise SpecError(f"output.uri: {root} contains inputs (e.g. {inside[0]}); choose another directory")
    if not is_s3(root) and Path(root).exists() and not Path(root).is_dir():
        raise SpecError(f"output.uri: {root} exists and is not a directory")
    try:
        listing = dict(store.list())
    except Exception as err:
        raise SpecError(f"output.uri: cannot list {root}: {err}") from None
    foreign = sorted({k.split("/")[0] for k in listing} - OUTPUT_NAMES)
    if foreign:
        raise SpecError(f"output.uri: {root} holds files vidcurate did not write ({', '.join(foreign[:3])}); "
                        "refusing to write there")
    return listing


def run_key(spec: JobSpec, inputs: list[dict]) -> str:
    """What a finished output was made from: the whole spec (but where the output goes) and the
    inputs' identities."""
    settings = spec.model_dump(mode="json")
    settings["output"] = {k: v for k, v in settings["output"].items() if k not in ("uri", "overwrite")}
    doc = [settings, spec.fingerprints(), [(r["uri"], r["unit_id"]) for r in inputs]]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def finished(store, listing: dict[str, int], key: str) -> dict | None:
    """The manifest when the output already holds this exact run, complete; else None."""
    if "manifest.json" not in listing:
        return None
    try:
        manifest = json.loads(store.read("manifest.json"))
    except (ValueError, OSError):
        return None
    if manifest.get("run_key") != key:
        return None
    files = [*manifest["tables"].values(), *manifest["shards"], *manifest["long_shards"]]
    if all(listing.get(f["path"]) == f["bytes"] for f in files) and \
            {"stats.json", "spec.yaml", "report.html"} <= set(listing):
        return manifest
    return None


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


def _window_caption(clip: dict, window: dict) -> dict:
    """The caption row of one window of a long clip (level ``window``, child of the clip caption)."""
    fields = json.loads(window["caption_fields"]) if window.get("caption_fields") else {}
    owner = f"{clip['clip_id']}:{window['start_frame']}-{window['end_frame']}"
    return {"caption_id": caption_id(owner, "window", clip["caption_model"], clip["caption_prompt_version"]),
            "video_id": clip["video_id"], "clip_id": clip["clip_id"], "chapter_id": clip.get("chapter_id"),
            "level": "window", "parent_id": clip["caption_id"], "start_s": window["start_s"],
            "end_s": window["end_s"], "text": window["caption_text"] or "", "model": clip["caption_model"],
            "prompt_version": clip["caption_prompt_version"], "generation": clip["caption_generation"],
            "parse_status": window.get("caption_parse_status"), **{k: fields.get(k) for k in STRUCTURED_COLUMNS},
            "events": _absolute(fields.get("events"), window["start_s"])}


def _absolute(events: list[dict] | None, start_s: float) -> list[dict]:
    """Clip- or window-relative event times (already clamped and ordered) -> absolute seconds."""
    return [{"start_s": start_s + e["t"], "text": e["text"]} for e in events or []]


def _write_shards(samples: list[dict], folder: str, spec: JobSpec, store, listing: dict, session) -> list[dict]:
    """Samples ({key, uri, clip, json, txt}), in order, into WebDataset shards ``folder/shard-N.tar``.

    Shard n holds samples [n * per, (n + 1) * per): the same samples always land in the same
    shard. A shard whose commit record names the same content (a hash of its samples and the
    output settings) and whose tar is there is reused; the others are written by Ray tasks that
    cut each sample's bytes under the guard. Returns the commit records in shard order."""
    import hashlib

    import ray

    per, fp = spec.output.samples_per_shard, spec.fingerprints()["output"]
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


def _chapter_samples(chapters: list[dict], kept: list[dict], captions: list[dict], video_caption: dict) -> list[dict]:
    """Long-video samples (LVD-2M style): one per chapter, its whole span as one mp4, with every
    clip and window caption inside it (times relative to the chapter start)."""
    clip_of = {c["clip_id"]: c for c in kept}
    by_clip = defaultdict(list)
    for cap in captions:
        if cap["level"] in ("clip", "window"):
            by_clip[cap["clip_id"]].append(cap)
    samples = []
    for ch in sorted(chapters, key=lambda c: (c["video_id"], c["index"])):
        members = [clip_of[i] for i in ch["clip_ids"] if i in clip_of]
        if not members:
            continue
        first, last = members[0], members[-1]
        inner = sorted((cap for m in members for cap in by_clip[m["clip_id"]]),
                       key=lambda c: (c["start_s"], c["level"] != "clip"))
        samples.append({"key": ch["chapter_id"], "uri": first["uri"],
                        "clip": {"start_s": first["start_s"], "end_s": last["end_s"], "start_frame": first["start_frame"],
                                 "end_frame": last["end_frame"], "keyframe_aligned": False,
                                 "pts_timing": first["pts_timing"]},
                        "json": {"chapter_id": ch["chapter_id"], "video_id": ch["video_id"], "uri": first["uri"],
                                 "start_s": ch["start_s"], "end_s": ch["end_s"], "duration_s": ch["end_s"] - ch["start_s"],
                                 "title": ch["title"], "summary": ch["summary"], "source": ch["source"],
                                 "clip_ids": [m["clip_id"] for m in members],
                                 "captions": [{"level": cap["level"], "clip_id": cap["clip_id"],
                                               "start_s": cap["start_s"] - ch["start_s"],
                                               "end_s": cap["end_s"] - ch["start_s"], "text": cap["text"]}
                                              for cap in inner],
                                 "video_caption_id": video_caption.get(ch["video_id"])},
                        "txt": ch["summary"] or ""})
    return samples


def _sample(clip: dict, chapter: dict | None, video_caption: str | None) -> dict:
    caption = None
    if clip.get("caption_id"):
        caption = {"caption_id": clip["caption_id"], "text": clip["caption_text"],
                   "fields": json.loads(clip["caption_fields"]) if clip.get("caption_fields") else None,
                   "parse_status": clip.get("caption_parse_status"),
                   "model": clip["caption_model"], "prompt_version": clip["caption_prompt_version"],
                   "start_s": 0.0, "end_s": clip["duration_s"]}
    return {
        "clip_id": clip["clip_id"], "video_id": clip["video_id"], "uri": clip["uri"],
        "start_s": clip["start_s"], "end_s": clip["end_s"], "duration_s": clip["duration_s"],
        "scores": {k: clip[k] for k in ("motion", "sharpness", "brightness", "contrast", "black_fraction",
                                         "frozen_fraction", "letterbox", "dynamic_degree", "camera_motion",
                                         "clip_keep_sim", "clip_reject_sim")},
        "caption": caption,
        # the dense layer: captions of the clip's windows, times relative to the clip start
        "dense_captions": [{"start_s": w["start_s"] - clip["start_s"], "end_s": w["end_s"] - clip["start_s"],
                            "text": w["caption_text"],
                            "fields": json.loads(w["caption_fields"]) if w.get("caption_fields") else None}
                           for w in clip.get("windows") or []],
        "chapter": None if chapter is None else {k: chapter[k] for k in ("chapter_id", "index", "title",
                                                                          "start_s", "end_s")},
        "video_caption_id": video_caption,
    }


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


def _run_units(spec: JobSpec, units: list[dict], fps: dict, session: _RaySession, log) -> dict[str, dict]:
    """Run the stages each unit still needs on Ray Data, logging a line per pass; returns per-stage
    work merged across workers: {stage: {videos, worker_seconds, frames}, "passes": {pass: wall s}}."""
    import ray

    from pipeline.units import UNIT, AnalyzeUnits, HierarchyUnits, ModelUnits

    session.ensure()
    gpus = cluster_gpus()
    res = spec.resources

    def unit_args(stage_res, actor: bool) -> dict:  # one video per call; the model batch size is used inside
        args = ray_args(stage_res, actor=actor, gpus_in_cluster=gpus)
        args["batch_size"] = 1
        return args

    def rows_needing(stage: str) -> list[dict]:
        return [{f.name: u.get(f.name) for f in UNIT} for u in units if stage in u["todo"]]

    def dataset(rows: list[dict]):
        return ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))

    # Either one streaming chain of all four stages (when the cluster's CPUs hold every actor
    # pool and still an analysis task: stream_all), or three passes, each streaming its units:
    # CPU decoding, then the two clip-level model stages, then the per-video text stage. In
    # passes, actor pools never hold the CPUs another stage's tasks wait for (on a 2-CPU node,
    # four concurrent stages deadlock).
    stages: dict[str, dict] = {}

    def run_pass(name: str, ds) -> None:
        t = time.perf_counter()
        rows = ds.take_all()
        wall = time.perf_counter() - t
        for r in rows:
            for stage, sec in json.loads(r["seconds_json"] or "{}").items():
                entry = stages.setdefault(stage, {"videos": 0, "worker_seconds": 0.0})
                entry["videos"] += 1
                entry["worker_seconds"] += sec
        frames = sum(r["frames"] or 0 for r in rows)
        if frames:
            stages["analyze"]["frames"] = frames
        rate = f", {frames / wall:,.0f} frames/s" if frames else ""
        busy = ", ".join(f"{s} {stages[s]['worker_seconds']:.1f}s" for s in json.loads(rows[0]["seconds_json"] or "{}")) \
            if rows else ""
        log(f"[{name}] {len(rows)} videos in {wall:.1f}s ({len(rows) / wall:.2f} videos/s{rate}; worker time: {busy})")
        stages.setdefault("passes", {})[name] = round(wall, 3)

    def model_stages(ds, rows: list[dict]):
        for name, previous, cls, model, settings, stage_res in (
                ("clip", "analyze", ClipEmbedStage, spec.models.clip, spec.clip_filter, res.clip),
                ("caption", "clip", CaptionStage, spec.models.vlm, spec.caption, res.caption)):
            if any(name in r["todo"] for r in rows):
                ds = ds.map_batches(ModelUnits, fn_constructor_kwargs={
                    "name": name, "previous": previous, "stage_cls": cls, "model": model, "settings": settings,
                    "batch_size": stage_res.batch_size, "spec": spec, "fps": fps}, **unit_args(stage_res, actor=True))
        return ds

    def analyze(ds):
        return ds.map_batches(AnalyzeUnits(spec=spec, fps=fps), **unit_args(res.analyze, actor=False))

    def hierarchy(ds):
        return ds.map_batches(HierarchyUnits, fn_constructor_kwargs={"spec": spec, "fps": fps},
                              **unit_args(res.hierarchy, actor=True))

    if stream_all(spec):  # one streaming chain: the GPUs caption while other videos still decode
        rows = rows_needing("hierarchy")  # every pending unit
        ds = dataset(rows)
        if any("analyze" in r["todo"] for r in rows):
            ds = analyze(ds)
        run_pass("all stages", hierarchy(model_stages(ds, rows)))
        return stages
    if rows := rows_needing("analyze"):
        run_pass("analyze", analyze(dataset(rows)))
    if rows := rows_needing("caption"):  # every unit needing the CLIP filter needs captions too
        run_pass("clip filter + caption", model_stages(dataset(rows), rows))
    if rows := rows_needing("hierarchy"):
        run_pass("hierarchy", hierarchy(dataset(rows)))
    return stages


def stream_all(spec: JobSpec) -> bool:
    """Whether all stages can stream at once: ray.stream, or (null) when the cluster's CPUs cover
    every actor pool plus one analysis task."""
    if spec.ray.stream is not None:
        return spec.ray.stream
    import ray

    res = spec.resources
    actors = sum(r.concurrency * r.num_cpus for r in (res.clip, res.caption, res.hierarchy))
    return float(ray.cluster_resources().get("CPU", 0)) >= actors + res.analyze.num_cpus


def _read_units(store, fps: dict, inputs: list[dict]) -> list[tuple[dict, list[dict], dict]]:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.units import read_unit

    with ThreadPoolExecutor(8) as pool:  # S3 round trips overlap; local reads barely notice
        return list(pool.map(lambda r: read_unit(store, fps, r["unit_id"]), inputs))


def _run(spec: JobSpec, inputs: list[dict], store, listing: dict, key: str, session: _RaySession, log) -> dict:
    from pipeline.units import todo_stages

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
        stage_stats = _run_units(spec, pending, fps, session, log)
    seconds["units"] = time.perf_counter() - t

    t = time.perf_counter()
    results = _read_units(store, fps, inputs)
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
                             "events": _absolute(fields.get("events"), c["start_s"])})
            for w in c.get("windows") or []:
                captions.append(_window_caption(c, w))
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
                "json": _sample(c, chapter_of.get(c["clip_id"]), video_caption.get(c["video_id"])),
                "txt": c.get("caption_text") or ""} for c in kept]
    shards = _write_shards(samples, "shards", spec, store, listing, session)
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
        long_shards = _write_shards(_chapter_samples(chapters, kept, captions, video_caption), "long_shards", spec,
                                    store, listing, session)
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

    stats = _stats(videos, clips, captions, shards)
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
    report = report_for(store, manifest, [r["unit_id"] for r in inputs])  # reads the tables just written
    changed += put_if_changed(store, "report.html", report, listing)
    _clean(store, manifest, log)
    store.write("manifest.json", json_bytes(manifest))  # written last: the manifest is the commit
    seconds["write_tables"] = time.perf_counter() - t
    _record_timings(store, seconds, stage_stats, changed)
    return manifest


def _clean(store, manifest: dict, log) -> None:
    """Delete what the new manifest does not list: shards (and their commit records) of earlier
    plans or interrupted runs, and temporary files. Committed per-video work stays for reuse."""
    keep = {s["path"] for s in manifest["shards"] + manifest["long_shards"]}
    keep |= {f"{COMMITS}/{p}.json" for p in keep}
    keep |= {t["path"] for t in manifest["tables"].values()}
    stale = [k for k, _ in store.list() if k.split("/")[0] in ("shards", "long_shards", *TABLES)
             or k.startswith(COMMITS + "/")]
    stale = [k for k in stale if k not in keep]
    for k in stale:
        store.delete(k)
    if stale:
        log(f"[write] removed {len(stale)} file(s) no longer part of the output")


def _record_timings(store, seconds: dict, stages: dict, changed: int) -> None:
    """Wall times and per-stage worker seconds (merged across workers) go to _work/last_run.json,
    not to stats.json, so that reruns give the same bytes."""
    doc = {"wall_seconds": {k: round(v, 3) for k, v in seconds.items()},
           "stages": {k: ({**v, "worker_seconds": round(v["worker_seconds"], 3)} if "worker_seconds" in v else v)
                      for k, v in stages.items()},
           "files_changed": changed}
    store.write("_work/last_run.json", json_bytes(doc))


def _stats(videos, clips, captions, shards) -> dict:
    analyze = Stats("analyze", total=len(videos), kept=sum(v["status"] == "ok" for v in videos))
    for v in videos:
        if v["status"] != "ok":
            analyze.drop(v["reason"])
    reasons = Counter(c["reason"] for c in clips if c["status"] == "rejected")
    shot_drops = {"too_short", "transition"}
    score_drops = {"low_motion", "high_motion", "blurry", "too_dark", "too_bright", "low_contrast",
                   "black_frames", "frozen", "letterboxed", "low_dynamic_degree"}
    after_shots = len(clips) - sum(n for r, n in reasons.items() if r in shot_drops)
    after_scores = after_shots - sum(n for r, n in reasons.items() if r in score_drops)
    after_clip = after_scores - sum(n for r, n in reasons.items() if r.startswith("clip_"))
    kept = sum(c["status"] == "kept" for c in clips)
    levels = Counter(c["level"] for c in captions)
    counts = {
        "videos_in": len(videos),
        "videos_ok": analyze.kept,
        "videos_rejected": sum(v["status"] == "rejected" for v in videos),
        "videos_error": sum(v["status"] == "error" for v in videos),
        "clips": len(clips),
        "clips_after_shots": after_shots,
        "clips_after_scores": after_scores,
        "clips_after_clip_filter": after_clip,
        "clips_kept": kept,
        "captions": dict(sorted(levels.items())),
        "clip_caption_parse": dict(sorted(Counter(c["parse_status"] for c in captions
                                                  if c["level"] == "clip" and c.get("parse_status")).items())),
        "chapters": levels.get("chapter", 0),
        "shards": len(shards),
        "samples": sum(s["samples"] for s in shards),
    }
    video_reasons = analyze.as_dict()
    video_reasons.pop("seconds")
    return {"counts": counts, "video_reasons": video_reasons, "clip_reasons": dict(sorted(reasons.items()))}
