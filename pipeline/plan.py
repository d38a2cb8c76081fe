"""Build and run the plan: spec -> Ray Data stages -> tables, shards, manifest.

The driver discovers inputs, wires stages into Ray Data, and assembles the small metadata
tables; it never decodes a video or loads a model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import schemas
from pipeline.checks import check_caption_times
from pipeline.discover import discover
from pipeline.resources import cluster_gpus, ray_args
from pipeline.sinks import ShardWriterStage, shard_name, write_json, write_parquet
from pipeline.spec import JobSpec, SpecError, check_inputs, resolved_yaml
from stages.analyze import AnalyzeStage, explode_clips
from stages.base import Stats
from stages.caption import CaptionStage
from stages.chapters import HierarchyStage, caption_id, chapter_marks
from stages.embed import ClipEmbedStage
from stages.entities import renamer
from stages.structured import COLUMNS as STRUCTURED_COLUMNS

PACKAGES = ("vidcurate", "ray", "pyarrow", "av", "scenedetect", "open_clip_torch", "transformers",
            "torch", "webdataset", "numpy", "opencv-python-headless")


def output_dir(spec: JobSpec) -> Path:
    uri = spec.output.uri
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).absolute()


OUTPUT_NAMES = {"manifest.json", "spec.yaml", "stats.json", "videos", "clips", "captions", "chapters", "shards",
                "long_shards"}


def prepare_output(spec: JobSpec, inputs: list[dict]) -> Path:
    """Check the output directory before any work: empty, or a previous vidcurate output that
    is replaced when output.overwrite. Never deletes anything else, and never an input."""
    out = output_dir(spec)
    inside = [r["uri"] for r in inputs if Path(r["uri"]).is_relative_to(out)]
    if inside:
        raise SpecError(f"output.uri: {out} contains inputs (e.g. {inside[0]}); choose another directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not spec.output.overwrite:
            raise SpecError(f"output.uri: {out} exists and is not empty; set output.overwrite: true to replace it")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES) if out.is_dir() else [out.name]
        if foreign:
            raise SpecError(f"output.uri: {out} holds files vidcurate did not write ({', '.join(foreign[:3])}); "
                            "refusing to replace it")
        shutil.rmtree(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    return out


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


def _write_shards(samples: list[dict], out_dir: Path, spec: JobSpec) -> list[dict]:
    """Samples ({key, uri, clip, json, txt}) into WebDataset shards under ``out_dir``, written by
    Ray tasks that cut each sample's bytes under the guard; returns the shard results."""
    import ray

    per = spec.output.samples_per_shard
    rows = [{"shard": shard_name(n // per), "out_dir": str(out_dir), "samples_json": json.dumps(samples[n:n + per])}
            for n in range(0, len(samples), per)]
    if not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    return sorted(ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardWriterStage(timeout_s=spec.probe.timeout_s, memory_mb=spec.probe.max_memory_mb),
        **ray_args(spec.resources.write, actor=False)).take_all(), key=lambda s: s["shard"])


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


def run_job(spec: JobSpec, log=print) -> dict:
    """Run the whole job; returns the manifest."""
    import ray

    check_inputs(spec)
    inputs = discover(spec.inputs)
    out = prepare_output(spec, inputs)
    started = connect_ray(spec)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = spec.ray.progress
        return _run(spec, inputs, out, log)
    finally:
        if started:
            ray.shutdown()


def _run(spec: JobSpec, inputs: list[dict], out: Path, log) -> dict:
    import ray

    gpus = cluster_gpus()
    res = spec.resources
    seconds = {}
    log(f"vidcurate: {len(inputs)} input video(s) -> {out}")

    t = time.perf_counter()
    analyzed = ray.data.from_items([{"uri": r["uri"], "video_id": r["video_id"], "size_bytes": r["size_bytes"],
                                     "subtitles": r.get("subtitles")} for r in inputs],
                                   override_num_blocks=max(1, len(inputs))).map_batches(
        AnalyzeStage(spec=spec), **ray_args(res.analyze, actor=False)).materialize()
    videos = sorted(analyzed.drop_columns(["clips"]).take_all(), key=lambda r: r["uri"])
    seconds["analyze"] = time.perf_counter() - t
    bad = Counter(v["reason"] for v in videos if v["status"] != "ok")
    log(f"[analyze] {len(videos)} videos: {len(videos) - sum(bad.values())} ok"
        + "".join(f", {n} {r}" for r, n in sorted(bad.items()))
        + f"; {sum(v['num_clips'] or 0 for v in videos)} clips ({seconds['analyze']:.1f}s)")

    t = time.perf_counter()
    clips_ds = analyzed.map_batches(explode_clips, batch_format="pyarrow")
    clips_ds = clips_ds.map_batches(ClipEmbedStage, fn_constructor_kwargs={
        "model": spec.models.clip, "settings": spec.clip_filter}, **ray_args(res.clip, actor=True, gpus_in_cluster=gpus))
    clips_ds = clips_ds.map_batches(CaptionStage, fn_constructor_kwargs={
        "model": spec.models.vlm, "settings": spec.caption}, **ray_args(res.caption, actor=True, gpus_in_cluster=gpus))
    clips = sorted(clips_ds.drop_columns(["frames"]).take_all(), key=lambda r: (r["uri"], r["start_frame"]))
    seconds["clip_and_caption"] = time.perf_counter() - t
    log(f"[clip filter + caption] {sum(c['status'] == 'kept' for c in clips)} of {len(clips)} clips kept, "
        f"{sum(c.get('caption_text') is not None for c in clips)} captioned ({seconds['clip_and_caption']:.1f}s)")

    for c in clips:
        if c.get("caption_text") is not None:
            c["caption_id"] = caption_id(c["clip_id"], "clip", c["caption_model"], c["caption_prompt_version"])
    kept = [c for c in clips if c["status"] == "kept"]

    t = time.perf_counter()
    by_video = defaultdict(list)
    for c in kept:
        fields = json.loads(c["caption_fields"]) if c.get("caption_fields") else {}
        by_video[c["video_id"]].append({**{k: c[k] for k in ("clip_id", "start_s", "end_s", "embedding", "caption_text")},
                                        "subjects": fields.get("subjects") or []})
    video_of = {v["video_id"]: v for v in videos}
    description = {r["video_id"]: r.get("description") for r in inputs}
    hierarchy_in = []
    for vid, cs in sorted(by_video.items()):
        source, marks = chapter_marks(video_of[vid], description.get(vid), spec.chapters)
        hierarchy_in.append({"video_id": vid, "duration_s": video_of[vid]["duration_s"], "clips_json": json.dumps(cs),
                             "marks_json": json.dumps({"source": source, "marks": marks})})
    chapters, captions, entities = [], [], {}
    if hierarchy_in:
        for row in ray.data.from_items(hierarchy_in).map_batches(HierarchyStage, fn_constructor_kwargs={
                "model": spec.models.vlm, "settings": spec.chapters},
                **ray_args(res.hierarchy, actor=True, gpus_in_cluster=gpus)).take_all():
            chapters.extend(json.loads(row["chapters_json"]))
            entities[row["video_id"]] = json.loads(row["entities_json"])
            captions.extend(json.loads(row["captions_json"]))
    seconds["hierarchy"] = time.perf_counter() - t
    log(f"[chapters] {len(chapters)} chapters and {len(hierarchy_in)} video captions ({seconds['hierarchy']:.1f}s)")

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
    shards = _write_shards(samples, out / "shards", spec)
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
        long_shards = _write_shards(_chapter_samples(chapters, kept, captions, video_caption), out / "long_shards", spec)
        seconds["write_long_shards"] = time.perf_counter() - t
        for s in long_shards:
            for key, err in json.loads(s.pop("failed_json")).items():
                log(f"[write] chapter sample {key} left out: {err}")
            s.pop("methods_json")
        log(f"[write] {len(long_shards)} long-video shards, {sum(s['samples'] for s in long_shards)} chapter samples "
            f"({seconds['write_long_shards']:.1f}s)")

    level_order = {"video": 0, "chapter": 1, "clip": 2, "window": 3}
    tables = {
        "videos": videos,
        "clips": clips,
        "captions": sorted(captions, key=lambda c: (c["video_id"], level_order[c["level"]], c["start_s"])),
        "chapters": sorted(chapters, key=lambda c: (c["video_id"], c["index"])),
    }
    table_info = {name: write_parquet(out / name / "part-000000.parquet", schemas.table(name, rows))
                  for name, rows in tables.items()}
    for info in table_info.values():
        info["path"] = os.path.relpath(info["path"], out)

    stats = _stats(videos, clips, captions, shards, seconds)
    stats["caption_checks"] = check_caption_times(captions, kept, videos, chapters)
    stats["entity_naming"] = dict(sorted(Counter(e["status"] for e in entities.values()).items()))
    if stats["caption_checks"]["violations"]:
        log(f"[check] {stats['caption_checks']['violations']} caption time violations, e.g. "
            + "; ".join(stats["caption_checks"]["examples"][:3]))
    write_json(out / "stats.json", stats)
    (out / "spec.yaml").write_text(resolved_yaml(spec))
    manifest = {
        "name": spec.name,
        "schema_version": schemas.SCHEMA_VERSION,
        "spec": spec.model_dump(mode="json"),
        "versions": _versions(),
        "tiny_random_models": tiny_models_in_use(spec),
        "counts": stats["counts"],
        "tables": table_info,
        "shards": [{**s, "path": f"shards/{s['shard']}"} for s in shards],
        "long_shards": [{**s, "path": f"long_shards/{s['shard']}"} for s in long_shards],
    }
    write_json(out / "manifest.json", manifest)  # written last: the manifest is the commit
    return manifest


def _stats(videos, clips, captions, shards, seconds) -> dict:
    analyze = Stats("analyze", total=len(videos), kept=sum(v["status"] == "ok" for v in videos),
                    seconds=sum(v["analysis_s"] or 0 for v in videos))
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
    return {"counts": counts, "video_reasons": analyze.as_dict(),
            "clip_reasons": dict(sorted(reasons.items())),
            "wall_seconds": {k: round(v, 3) for k, v in seconds.items()}}
