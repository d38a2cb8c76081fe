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
                  ("todo", pa.list_(pa.string())), ("frames", pa.int64()), ("seconds_json", pa.string())])
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


def _timed(row: dict, stage: str, started: float) -> None:
    """Record a stage's seconds for this unit in the row (merged across workers by the driver)."""
    seconds = json.loads(row.get("seconds_json") or "{}")
    seconds[stage] = time.perf_counter() - started
    row["seconds_json"] = json.dumps(seconds)


def todo_stages(unit: str, fps: dict[str, str], committed: set[str]) -> list[str]:
    """The stages a unit still needs: from the first one whose result is not committed on."""
    for i, stage in enumerate(STAGES):
        if work_key(stage, fps[stage], unit) not in committed:
            return list(STAGES[i:])
    return []


class AnalyzeUnits:
    """Ray task stage: the analysis pass of each unit that needs it, committed per video."""

    def __init__(self, *, spec, fps: dict[str, str]):
        self.spec, self.fps = spec, fps

    def __call__(self, batch: pa.Table) -> pa.Table:
        from stages.analyze import analyze_video

        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        for row in rows:
            if "analyze" not in row["todo"]:
                continue
            fault_point("analyze")
            started = time.perf_counter()
            analyzed = analyze_video({k: row[k] for k in ("uri", "video_id", "size_bytes", "subtitles")}, self.spec)
            analyzed.pop("analysis_s")
            row["frames"] = analyzed.get("num_frames") or 0
            clips = schemas.work_table(analyzed.pop("clips") or [])
            video = {f.name: analyzed.get(f.name) for f in schemas.VIDEOS}
            store.write(work_key("analyze", self.fps["analyze"], row["unit_id"]), encode_unit(video, clips))
            _timed(row, "analyze", started)
        return pa.Table.from_pylist(rows, schema=UNIT)


class ModelUnits:
    """Ray actor stage: a clip-level model stage (CLIP filter or captioner) over each unit's clips,
    in model batches of ``batch_size`` rows taken in clip order (so a unit's results never depend
    on which other videos shared an actor), committed per video."""

    def __init__(self, *, name: str, previous: str, stage_cls, model, settings, batch_size: int, spec,
                 fps: dict[str, str]):
        self.name, self.previous, self.batch_size = name, previous, batch_size
        self.spec, self.fps = spec, fps
        self.stage = stage_cls(model=model, settings=settings)  # loads its model on first use

    def __call__(self, batch: pa.Table) -> pa.Table:
        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        for row in rows:
            if self.name not in row["todo"]:
                continue
            fault_point(self.name)
            started = time.perf_counter()
            video, clips = decode_unit(store.read(work_key(self.previous, self.fps[self.previous], row["unit_id"])))
            parts = []
            for start in range(0, clips.num_rows, self.batch_size):
                part = clips.slice(start, self.batch_size)
                kept = "kept" in part.column("status").to_pylist()
                parts.append(self.stage(part) if kept else schemas.work_table(part.to_pylist()))
            out = pa.concat_tables(parts) if parts else schemas.work_table([])
            if self.name == "caption":  # frames are not needed past captioning
                out = out.set_column(out.schema.get_field_index("frames"), "frames",
                                     pa.nulls(out.num_rows, out.schema.field("frames").type))
            store.write(work_key(self.name, self.fps[self.name], row["unit_id"]), encode_unit(video, out))
            _timed(row, self.name, started)
        return pa.Table.from_pylist(rows, schema=UNIT)


class HierarchyUnits:
    """Ray actor stage: chapters, chapter and video captions and entity names of each unit."""

    def __init__(self, *, spec, fps: dict[str, str]):
        from stages.chapters import HierarchyStage

        self.spec, self.fps = spec, fps
        self.stage = HierarchyStage(model=spec.models.vlm, settings=spec.chapters)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from stages.chapters import chapter_marks

        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        for row in rows:
            if "hierarchy" not in row["todo"]:
                continue
            fault_point("hierarchy")
            started = time.perf_counter()
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
                out = self.stage(hierarchy_in).to_pylist()[0]
                result = {"chapters": json.loads(out["chapters_json"]), "captions": json.loads(out["captions_json"]),
                          "entities": json.loads(out["entities_json"])}
            store.write(work_key("hierarchy", self.fps["hierarchy"], row["unit_id"]), json_bytes(result))
            _timed(row, "hierarchy", started)
        return pa.Table.from_pylist(rows, schema=UNIT)


def read_unit(store, fps: dict[str, str], unit: str) -> tuple[dict, list[dict], dict]:
    """(videos row, clip rows, hierarchy result) of one finished unit."""
    video, clips = decode_unit(store.read(work_key("caption", fps["caption"], unit)))
    hierarchy = json.loads(store.read(work_key("hierarchy", fps["hierarchy"], unit)))
    return video, clips.drop_columns(["frames"]).to_pylist(), hierarchy
