"""Per-video units of work, each stage's result committed to the output's ``_work/`` folder.

Every input video is one unit. Its stages run in order (analyze -> clip -> caption ->
hierarchy), and each writes its result atomically to

    _work/<stage>/<fingerprint>/<unit_id>.parquet   (analyze, clip, caption: clip rows + the videos row)
    _work/hierarchy/<fingerprint>/<unit_id>.json    (chapters, video and chapter captions, entities)

where the fingerprint hashes the settings that shaped the result (JobSpec.fingerprints).
The file is the commit: a rerun skips a unit's stages whose results exist, and a changed late
setting (the caption prompt) recomputes only the stages from there on. Ray may run a stage
twice (a task retried after a worker died, a replayed actor call); both runs write the same
bytes to the same name, so the effect happens once.

Only small rows travel through Ray (uri, ids, which stages to run); the frames and clip rows
go through the output store, so a unit's data is never lost with a worker.
"""

from __future__ import annotations

import abc
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.sinks import json_bytes, parquet_bytes
from pipeline.storage import open_store

STAGES = ("analyze", "clip", "caption", "hierarchy")
UNIT = pa.schema([("unit_id", pa.string()), ("uri", pa.string()), ("video_id", pa.string()),
                  ("size_bytes", pa.int64()), ("subtitles", pa.string()), ("description", pa.string()),
                  ("todo", pa.list_(pa.string())), ("num_frames", pa.int64()), ("seconds_json", pa.string()),
                  ("prepared", pa.large_binary())])
_META = b"vidcurate.video"


def work_key(stage: str, fingerprint: str, unit: str) -> str:
    return f"_work/{stage}/{fingerprint}/{unit}.{'json' if stage == 'hierarchy' else 'parquet'}"


def fault_point(stage: str) -> None:
    """Crash-recovery testing: with VIDCURATE_FAULT="<stage>:<marker file>[,<stage>:<marker>...]",
    the first process to reach ``stage`` creates its marker and exits abruptly, as a worker
    killed by the OOM killer or a lost node would. Unset (always, outside tests): nothing."""
    for item in filter(None, os.environ.get("VIDCURATE_FAULT", "").split(",")):
        name, _, marker = item.partition(":")
        if name != stage or not marker:
            continue
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            continue
        os._exit(70)


def encode_unit(video: dict, clips: pa.Table) -> bytes:
    meta = {_META: json.dumps(video, sort_keys=True).encode()}
    return parquet_bytes(clips.replace_schema_metadata(meta))


def decode_unit(data: bytes) -> tuple[dict, pa.Table]:
    table = pq.read_table(pa.BufferReader(data))
    video = json.loads(table.schema.metadata[_META])
    return video, table.replace_schema_metadata(None)


def _timed(row: dict, stage: str, started: float, seconds_taken: float | None = None) -> None:
    """Record a stage's seconds for this unit in the row (merged across workers by the driver)."""
    seconds = json.loads(row.get("seconds_json") or "{}")
    seconds[stage] = time.perf_counter() - started if seconds_taken is None else seconds_taken
    row["seconds_json"] = json.dumps(seconds)


def todo_stages(unit: str, fps: dict[str, str], committed: set[str]) -> list[str]:
    """The stages a unit still needs: from the first one whose result is not committed on."""
    for i, stage in enumerate(STAGES):
        if work_key(stage, fps[stage], unit) not in committed:
            return list(STAGES[i:])
    return []


class _UnitStage(abc.ABC):
    """One stage over a batch of unit rows: for each unit that still needs ``stage``, compute its
    result (``work``: bytes) and commit it; the rows pass on with the stage's seconds recorded."""

    stage = ""

    def __init__(self, *, spec, fps: dict[str, str]):
        self.spec, self.fps = spec, fps

    @abc.abstractmethod
    def work(self, store, row: dict) -> bytes:
        """The committed result of this stage for one unit."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        for row in rows:
            if self.stage not in row["todo"]:
                continue
            fault_point(self.stage)
            started = time.perf_counter()
            store.write(work_key(self.stage, self.fps[self.stage], row["unit_id"]), self.work(store, row))
            _timed(row, self.stage, started)
        return pa.Table.from_pylist(rows, schema=UNIT)


class PrepareUnits:
    """Ray task stage ahead of the caption actors: reads each unit's clip-stage result and makes
    the captioner's inputs (prompts, decoded frames, processor arrays) on CPU workers; they travel
    to the actor in the row (``prepared``), so the GPU only generates. Nothing is committed: a
    lost prepared row is made again."""

    stage = "prepare"

    def __init__(self, *, spec, fps: dict[str, str]):
        from stages.caption import CaptionStage

        self.spec, self.fps = spec, fps
        self.caption = CaptionStage(model=spec.models.vlm, settings=spec.caption)  # its processor loads in the task

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pickle

        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        for row in rows:
            if "caption" not in row["todo"]:
                continue
            fault_point(self.stage)
            started = time.perf_counter()
            data = store.read(work_key("clip", self.fps["clip"], row["unit_id"]))
            _, clips = decode_unit(data)
            row["prepared"] = pickle.dumps({"unit": data, "inputs": self.caption.prepare(clips.to_pylist())},
                                           protocol=5)
            _timed(row, self.stage, started)
        return pa.Table.from_pylist(rows, schema=UNIT)


class AnalyzeUnits(_UnitStage):
    """Ray task stage: the analysis pass of each unit that needs it, committed per video."""

    stage = "analyze"

    def work(self, store, row: dict) -> bytes:
        from stages.analyze import analyze_video

        video = {k: row[k] for k in ("uri", "video_id", "size_bytes", "subtitles")}
        analyzed = analyze_video({**video, "fingerprint": self.fps["analyze"]}, self.spec)
        analyzed.pop("analysis_s")
        row["num_frames"] = analyzed.get("num_frames") or 0
        clips = schemas.work_table(analyzed.pop("clips") or [])
        return encode_unit({f.name: analyzed.get(f.name) for f in schemas.VIDEOS}, clips)


class ModelUnits(_UnitStage):
    """Ray actor stage: a clip-level model stage (the CLIP filter) over each unit's clips,
    in model batches of ``batch_size`` rows taken in clip order (so a unit's results never depend
    on which other videos shared an actor), committed per video."""

    def __init__(self, *, name: str, previous: str, stage_cls, model, settings, batch_size: int, spec,
                 fps: dict[str, str]):
        super().__init__(spec=spec, fps=fps)
        self.stage, self.previous, self.batch_size = name, previous, batch_size
        self.model_stage = stage_cls(model=model, settings=settings)  # loads its model on first use

    def work(self, store, row: dict) -> bytes:
        video, clips = decode_unit(store.read(work_key(self.previous, self.fps[self.previous], row["unit_id"])))
        parts = []
        for start in range(0, clips.num_rows, self.batch_size):
            part = clips.slice(start, self.batch_size)
            kept = "kept" in part.column("status").to_pylist()
            parts.append(self.model_stage(part) if kept else schemas.work_table(part.to_pylist()))
        return encode_unit(video, pa.concat_tables(parts) if parts else schemas.work_table([]))


class CaptionUnits:
    """Ray actor stage after ``PrepareUnits``: captions the units of each call from the inputs
    made there, their clips and windows pooled into model batches of
    ``resources.caption.batch_size`` (a call holds ``caption.videos_per_batch`` units);
    committed per video."""

    stage = "caption"

    def __init__(self, *, spec, fps: dict[str, str]):
        from stages.caption import CaptionStage

        self.spec, self.fps = spec, fps
        self.model_stage = CaptionStage(model=spec.models.vlm, settings=spec.caption,
                                        batch_size=spec.resources.caption.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pickle

        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        todo = [r for r in rows if "caption" in r["todo"]]
        if todo:
            fault_point(self.stage)
            started = time.perf_counter()
            self.model_stage.ensure_ready()
            units = []
            for row in todo:
                ready = pickle.loads(row["prepared"])
                video, clips = decode_unit(ready["unit"])
                units.append((video, clips.to_pylist(), ready["inputs"]))
            self.model_stage.caption([(clips, inputs) for _, clips, inputs in units])
            share = (time.perf_counter() - started) / len(todo)  # the batch's time, split evenly
            for row, (video, clips, _) in zip(todo, units):
                for c in clips:
                    c["frames"] = None  # not needed past captioning
                store.write(work_key("caption", self.fps["caption"], row["unit_id"]),
                            encode_unit(video, schemas.work_table(clips)))
                _timed(row, self.stage, started, share)
        for row in rows:
            row["prepared"] = None
        return pa.Table.from_pylist(rows, schema=UNIT)


class HierarchyUnits(_UnitStage):
    """Ray actor stage: chapters, chapter and video captions and entity names of each unit."""

    stage = "hierarchy"

    def __init__(self, *, spec, fps: dict[str, str]):
        from stages.chapters import HierarchyStage

        super().__init__(spec=spec, fps=fps)
        self.model_stage = HierarchyStage(model=spec.models.vlm, settings=spec.chapters)

    def work(self, store, row: dict) -> bytes:
        from stages.chapters import chapter_marks

        video, clips = decode_unit(store.read(work_key("caption", self.fps["caption"], row["unit_id"])))
        result = {"chapters": [], "captions": [], "entities": None}
        kept = [c for c in clips.drop_columns(["frames"]).to_pylist() if c["status"] == "kept"]
        if kept:
            cs = []
            for c in kept:
                fields = json.loads(c["caption_fields"]) if c.get("caption_fields") else {}
                cs.append({**{k: c[k] for k in ("clip_id", "start_s", "end_s", "embedding", "caption_text")},
                           "subjects": fields.get("subjects") or [], "setting": fields.get("setting")})
            source, marks = chapter_marks(video, row.get("description"), self.spec.chapters)
            hierarchy_in = pa.Table.from_pylist([{
                "video_id": video["video_id"], "duration_s": video["duration_s"], "clips_json": json.dumps(cs),
                "marks_json": json.dumps({"source": source, "marks": marks})}])
            out = self.model_stage(hierarchy_in).to_pylist()[0]
            result = {"chapters": json.loads(out["chapters_json"]), "captions": json.loads(out["captions_json"]),
                      "entities": json.loads(out["entities_json"])}
        return json_bytes(result)


def read_unit(store, fps: dict[str, str], unit: str) -> tuple[dict, list[dict], dict]:
    """(videos row, clip rows, hierarchy result) of one finished unit."""
    video, clips = decode_unit(store.read(work_key("caption", fps["caption"], unit)))
    hierarchy = json.loads(store.read(work_key("hierarchy", fps["hierarchy"], unit)))
    return video, clips.drop_columns(["frames"]).to_pylist(), hierarchy


def run_units(spec, units: list[dict], fps: dict, log) -> dict[str, dict]:
    """Run the stages each unit still needs on Ray Data (already connected), logging a line per
    pass; returns per-stage work merged across workers: {stage: {videos, worker_seconds,
    num_frames}, "passes": {pass: wall s}}."""
    import ray

    from pipeline.resources import cluster_gpus, ray_args
    from stages.embed import ClipEmbedStage

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
    # CPU decoding, the CLIP filter, captioning (CPU tasks preparing inputs for the caption
    # actors), then the per-video text stage. In passes, actor pools never hold the CPUs another
    # stage's tasks wait for (on a 2-CPU node, four concurrent stages deadlock).
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
        frames = sum(r["num_frames"] or 0 for r in rows)
        if frames:
            stages["analyze"]["num_frames"] = frames
        rate = f", {frames / wall:,.0f} frames/s" if frames else ""
        busy = ", ".join(f"{s} {stages[s]['worker_seconds']:.1f}s" for s in json.loads(rows[0]["seconds_json"] or "{}")) \
            if rows else ""
        log(f"[{name}] {len(rows)} videos in {wall:.1f}s ({len(rows) / wall:.2f} videos/s{rate}; worker time: {busy})")
        stages.setdefault("passes", {})[name] = round(wall, 3)

    def clip_filter(ds):
        return ds.map_batches(ModelUnits, fn_constructor_kwargs={
            "name": "clip", "previous": "analyze", "stage_cls": ClipEmbedStage, "model": spec.models.clip,
            "settings": spec.clip_filter, "batch_size": res.clip.batch_size, "spec": spec, "fps": fps},
            **unit_args(res.clip, actor=True))

    def caption(ds):  # CPU tasks make the model inputs; the actors only generate
        ds = ds.map_batches(PrepareUnits(spec=spec, fps=fps), **unit_args(res.prepare, actor=False))
        args = unit_args(res.caption, actor=True)
        args["batch_size"] = spec.caption.videos_per_batch
        return ds.map_batches(CaptionUnits, fn_constructor_kwargs={"spec": spec, "fps": fps}, **args)

    def model_stages(ds, rows: list[dict]):
        if any("clip" in r["todo"] for r in rows):
            ds = clip_filter(ds)
        return caption(ds) if any("caption" in r["todo"] for r in rows) else ds

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
    if rows := rows_needing("clip"):
        run_pass("clip filter", clip_filter(dataset(rows)))
    if rows := rows_needing("caption"):
        run_pass("caption", caption(dataset(rows)))
    if rows := rows_needing("hierarchy"):
        run_pass("hierarchy", hierarchy(dataset(rows)))
    return stages


def stream_all(spec) -> bool:
    """Whether all stages can stream at once: ray.stream, or (null) when the cluster's CPUs cover
    every actor pool plus one analysis task and one prepare task."""
    if spec.ray.stream is not None:
        return spec.ray.stream
    import ray

    res = spec.resources
    actors = sum(r.concurrency * r.num_cpus for r in (res.clip, res.caption, res.hierarchy))
    return float(ray.cluster_resources().get("CPU", 0)) >= actors + res.analyze.num_cpus + res.prepare.num_cpus


def read_units(store, fps: dict, inputs: list[dict]) -> list[tuple[dict, list[dict], dict]]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # S3 round trips overlap; local reads barely notice
        return list(pool.map(lambda r: read_unit(store, fps, r["unit_id"]), inputs))
