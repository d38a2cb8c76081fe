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

Only small rows travel through Ray (uri, ids, the partition, which results were reused); the
frames and clip rows go through the output store, so a unit's data is never lost with a worker.
The stages and their order come from pipeline.graph; pipeline.runner runs them.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.sinks import json_bytes, parquet_bytes
from pipeline.graph import BY_NAME, before, chain, settings_view, work_key
from pipeline.overlap import SERIAL
from pipeline.storage import open_store

UNIT = pa.schema([("unit_id", pa.string()), ("uri", pa.string()), ("video_id", pa.string()),
                  ("size_bytes", pa.int64()), ("subtitles", pa.string()), ("description", pa.string()),
                  ("partition", pa.int64()), ("reused", pa.list_(pa.string())), ("num_frames", pa.int64()),
                  ("seconds_json", pa.string()), ("prepared", pa.large_binary())])
_META = b"vidcurate.video"


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


def decode_unit(data: bytes, columns: list[str] | None = None) -> tuple[dict, pa.Table]:
    table = pq.read_table(pa.BufferReader(data), columns=columns)
    video = json.loads(table.schema.metadata[_META])
    return video, table.replace_schema_metadata(None)


def unit_view(store, fps: dict[str, str], unit: str, stages, light: bool = False) -> tuple[dict, pa.Table]:
    """A unit's videos row and clip rows as ``stages`` (pipeline.graph rows in chain order, the
    first stage first) committed them: the first stage's rows, with each later stage's own
    columns (``Stage.adds``, ``window_adds``, ``video_adds``) laid over them. A stage's result
    may also hold other columns, as they were when it ran; those are never read from it (its
    fingerprint does not cover the stages that own them). ``light``: without the frames and the
    windows (what a decision reads)."""
    first, *rest = [s for s in stages if s.result == "parquet"]
    heavy = ("frames", "windows") if light else ()
    video, table = decode_unit(store.read(work_key(first.name, fps[first.name], unit)),
                               [f.name for f in schemas.CLIP_WORK if f.name not in heavy] if light else None)
    ids = table.column("clip_id").to_pylist()
    for s in rest:
        if not (s.adds or s.window_adds or s.video_adds):
            continue
        window_adds = s.window_adds if "windows" in table.column_names else ()
        columns = ["clip_id", *s.adds, *(["windows"] if window_adds else [])]
        theirs_video, theirs = decode_unit(store.read(work_key(s.name, fps[s.name], unit)), columns)
        if theirs.column("clip_id").to_pylist() != ids:
            raise ValueError(f"unit {unit}: the {s.name} result holds other clips than the {first.name} result")
        for name in s.adds:
            table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), theirs.column(name))
        if window_adds:
            windows = table.column("windows").to_pylist()
            for mine, their in zip(windows, theirs.column("windows").to_pylist()):
                for w, tw in zip(mine or (), their or ()):
                    w.update({k: tw.get(k) for k in window_adds})
            field = table.schema.field("windows")
            table = table.set_column(table.schema.get_field_index("windows"), field,
                                     pa.array(windows, type=field.type))
        video = {**video, **{k: theirs_video.get(k) for k in s.video_adds}}
    return video, table


def _timed(row: dict, stage: str, started: float, seconds_taken: float | None = None) -> None:
    """Record a stage's seconds for this unit in the row (merged across workers by the driver)."""
    seconds = json.loads(row.get("seconds_json") or "{}")
    seconds[stage] = time.perf_counter() - started if seconds_taken is None else seconds_taken
    row["seconds_json"] = json.dumps(seconds)

CAPTION_COLUMNS = ("caption_text", "caption_fields", "caption_parse_status", "caption_model",
                   "caption_prompt_version", "caption_generation")


def with_captions(measured: list[dict], committed: list[dict] | None) -> list[dict]:
    """The measured clip rows (the clip stage's result) with the captions a committed caption
    result already holds (clip and window captions of every clip it captioned)."""
    done = {c["clip_id"]: c for c in committed or () if c.get("caption_model")}
    out = []
    for c in measured:
        d = done.get(c["clip_id"])
        if d is None:
            out.append(dict(c))
            continue
        windows = c.get("windows")
        if windows and d.get("windows"):
            windows = [{**w, **{k: v for k, v in dw.items() if k.startswith("caption_")}}
                       for w, dw in zip(windows, d["windows"])]
        out.append({**c, **{k: d.get(k) for k in CAPTION_COLUMNS}, "windows": windows})
    return out


def to_caption(rows: list[dict], spec) -> set[str]:
    """The clips the thresholds keep that have no caption yet."""
    from stages.decide import kept_ids

    have = {c["clip_id"] for c in rows if c.get("caption_model")}
    return {i for i in kept_ids(rows, spec) if i not in have}


def caption_work(rows: list[dict], todo: set[str]) -> list[dict]:
    """Copies marked so that the caption stage captions exactly ``todo`` (status ``kept`` there,
    ``rejected`` elsewhere); restore_status puts the measured status back before committing."""
    return [{**r, "status": "kept" if r["clip_id"] in todo else "rejected"} for r in rows]


def restore_status(work: list[dict], measured: list[dict]) -> list[dict]:
    for w, m in zip(work, measured):
        w.update(status=m["status"], reason=m["reason"])
    return work


class _UnitStage(abc.ABC):
    """One stage (a row of pipeline.graph.GRAPH) over a batch of unit rows: for each unit whose
    result of this stage is not committed yet, compute it (``work``: bytes) and commit it; a
    committed one is reused (noted in the row's ``reused``). The rows pass on with the stage's
    seconds recorded. Whether a result is committed is checked here, in the worker, so planning
    never lists per-video files."""

    def __init__(self, *, spec, fps: dict[str, str], stage):
        self.spec, self.fps, self.stage = spec, fps, stage

    def key(self, row: dict, stage: str | None = None) -> str:
        name = stage or self.stage.name
        return work_key(name, self.fps[name], row["unit_id"])

    def previous(self, store, row: dict) -> tuple[dict, pa.Table]:
        """The unit as the stages before this one committed it (unit_view)."""
        return unit_view(store, self.fps, row["unit_id"], before(self.spec, self.stage.name))

    @abc.abstractmethod
    def work(self, store, row: dict) -> bytes:
        """The committed result of this stage for one unit."""

    def result_key(self, store, row: dict) -> str:
        """Where this stage commits the unit's result (a stage whose result also depends on the
        decision, the hierarchy, reads what it needs to name it)."""
        return self.key(row)

    def committed(self, store, key: str, row: dict) -> bool:
        """Whether the unit's result at ``key`` is committed and still whole."""
        return store.exists(key)

    def __call__(self, batch: pa.Table) -> pa.Table:
        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        for row in rows:
            key = self.result_key(store, row)
            if self.committed(store, key, row):
                row["reused"] = [*(row["reused"] or []), self.stage.name]
                continue
            fault_point(self.stage.name)
            started = time.perf_counter()
            store.write(key, self.work(store, row))
            _timed(row, self.stage.name, started)
        return pa.Table.from_pylist(rows, schema=UNIT)


def analyze_input(row: dict, spec, fingerprint: str) -> dict:
    """The analyze stage's row for one input (a unit row or a pipeline.discover row): its
    ``status`` and ``reason`` are what the pipeline decides for the video. The analysis receives
    only the input's uri, ids and subtitles, and only the settings its fingerprint hashes (and
    where inputs live). ``vidcurate probe`` asks this too, so the two cannot disagree."""
    from stages.analyze import analyze_video

    video = {k: row.get(k) for k in ("uri", "video_id", "size_bytes", "subtitles")}
    return analyze_video({**video, "fingerprint": fingerprint}, settings_view(spec, BY_NAME["analyze"].settings))


class AnalyzeUnits(_UnitStage):
    """Ray task stage: the analysis pass of each unit that needs it (analyze_input), committed per video."""

    def work(self, store, row: dict) -> bytes:
        analyzed = analyze_input(row, self.spec, self.fps["analyze"])
        analyzed.pop("analysis_s")
        row["num_frames"] = analyzed.get("num_frames") or 0
        clips = schemas.work_table(analyzed.pop("clips") or [])
        return encode_unit({f.name: analyzed.get(f.name) for f in schemas.VIDEOS}, clips)


class ClipUnits(_UnitStage):
    """Ray actor stage: the CLIP filter over each unit's clips, in model batches of
    ``resources.clip.batch_size`` rows taken in clip order (so a unit's results never depend on
    which other videos shared an actor), committed per video."""

    def __init__(self, *, spec, fps: dict[str, str], stage):
        from stages.embed import ClipEmbedStage

        super().__init__(spec=spec, fps=fps, stage=stage)
        self.batch_size = spec.resources.clip.batch_size
        self.model_stage = ClipEmbedStage(model=spec.models.clip, settings=spec.clip_filter)  # loads on first use

    def work(self, store, row: dict) -> bytes:
        video, clips = self.previous(store, row)
        parts = []
        for start in range(0, clips.num_rows, self.batch_size):
            part = clips.slice(start, self.batch_size)
            kept = "kept" in part.column("status").to_pylist()
            parts.append(self.model_stage(part) if kept else schemas.work_table(part.to_pylist()))
        return encode_unit(video, pa.concat_tables(parts) if parts else schemas.work_table([]))


_TEXT = {}  # per worker process: the text detector for each settings (it loads once)


class TextUnits(_UnitStage):
    """Ray task stage: on-screen text (stages.ocr) of each unit's clips that the cut keeps,
    measured on the frames analysis sampled, committed per video. It decides nothing: the
    ``text_overlay`` threshold is applied by stages.decide."""

    def work(self, store, row: dict) -> bytes:
        from stages.ocr import TextAreaStage

        t = self.spec.text
        threads = max(1, int(self.spec.resources.text.num_cpus))
        settings = (t.frames, t.min_persist, t.min_cover, t.det_side, t.box_thresh, threads)
        if settings not in _TEXT:
            _TEXT[settings] = TextAreaStage(frames=t.frames, min_persist=t.min_persist, min_cover=t.min_cover,
                                            det_side=t.det_side, box_thresh=t.box_thresh, threads=threads)
        video, clips = self.previous(store, row)
        return encode_unit(video, _TEXT[settings].process(clips))


class SpeechUnits(_UnitStage):
    """Ray actor stage: speech (stages.asr, Whisper) of each unit whose video carries no
    subtitles, cut to its clips and windows as subtitles are (stages.subtitles.speech_between,
    from the first frame's container time), committed per video; ``videos.subtitles`` becomes
    ``asr`` where the audio gave any text. The model loads on the first video that needs it."""

    def __init__(self, *, spec, fps: dict[str, str], stage):
        from stages.asr import SpeechStage

        super().__init__(spec=spec, fps=fps, stage=stage)
        s = spec.speech
        self.model_stage = SpeechStage(name_or_path=s.model, language=s.language, chunk_s=s.chunk_s,
                                       max_new_tokens=s.max_new_tokens, batch_size=spec.resources.speech.batch_size)

    def work(self, store, row: dict) -> bytes:
        from stages.subtitles import speech_between

        video, clips = self.previous(store, row)
        if video.get("status") != "ok" or video.get("subtitles") or clips.num_rows == 0:
            return encode_unit(video, clips)
        cues = self.model_stage.transcribe(video["uri"], self.spec.storage)
        if not cues:
            return encode_unit(video, clips)
        t0 = video.get("start_time_s") or 0.0
        rows = clips.to_pylist()
        for c in rows:
            c["speech"] = speech_between(cues, t0 + c["start_s"], t0 + c["end_s"])
            for w in c.get("windows") or []:
                w["speech"] = speech_between(cues, t0 + w["start_s"], t0 + w["end_s"])
        return encode_unit({**video, "subtitles": "asr"}, schemas.work_table(rows))


def committed_captions(store, key: str) -> list[dict] | None:
    """The clip rows of a unit's committed caption result (None: there is none yet)."""
    if not store.exists(key):
        return None
    return decode_unit(store.read(key))[1].to_pylist()


def caption_pending(store, fps: dict[str, str], unit: str, spec, key: str) -> tuple[bool, list[dict] | None]:
    """(whether the unit has clips to caption, its committed caption rows or None): the clips the
    thresholds keep, decided on the unit as the stages before captioning committed it, that
    the committed caption result (at ``key``) does not hold."""
    committed = committed_captions(store, key)
    if committed is None:
        return True, None
    _, clips = unit_view(store, fps, unit, before(spec, "caption"), light=True)
    return bool(to_caption(with_captions(clips.to_pylist(), committed), spec)), committed


def caption_inputs(store, fps: dict[str, str], unit: str, spec, committed: list[dict] | None):
    """(videos row, measured clip rows, rows to caption): the unit as the stages before
    captioning committed it, with the committed captions, marked so that exactly the clips the
    thresholds keep that have no caption yet are captioned."""
    video, clips = unit_view(store, fps, unit, before(spec, "caption"))
    measured = clips.to_pylist()
    rows = with_captions(measured, committed)
    return video, measured, caption_work(rows, to_caption(rows, spec))


class PrepareUnits(_UnitStage):
    """Ray task stage feeding the caption actors: reads each unit's clip-stage result and makes
    the captioner's inputs (prompts, decoded frames, processor arrays) on CPU workers for the
    clips the thresholds keep that have no caption yet; they travel to the actor in the row
    (``prepared``), so the GPU only generates. Nothing is committed: a lost prepared row is made
    again. A unit whose committed captions cover every kept clip passes on as reused."""

    def __init__(self, *, spec, fps: dict[str, str], stage):
        from stages.caption import CaptionStage

        super().__init__(spec=spec, fps=fps, stage=stage)
        self.caption = CaptionStage(model=spec.models.vlm, settings=spec.caption)  # its processor loads in the task

    def work(self, store, row: dict, committed: list[dict] | None = None) -> bytes:
        import pickle

        video, measured, work = caption_inputs(store, self.fps, row["unit_id"], self.spec, committed)
        return pickle.dumps({"video": video, "measured": measured, "rows": work,
                             "inputs": self.caption.prepare(work)}, protocol=5)

    def __call__(self, batch: pa.Table) -> pa.Table:
        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        for row in rows:
            pending, committed = caption_pending(store, self.fps, row["unit_id"], self.spec, self.key(row, "caption"))
            if not pending:
                row["reused"] = [*(row["reused"] or []), "caption"]
                continue
            fault_point("prepare")
            started = time.perf_counter()
            row["prepared"] = self.work(store, row, committed)
            _timed(row, "prepare", started)
        return pa.Table.from_pylist(rows, schema=UNIT)


class CaptionUnits(_UnitStage):
    """Ray actor stage: captions the units of each call, their clips and windows pooled into
    model batches of ``resources.caption.batch_size`` (a call holds ``caption.videos_per_batch``
    units); committed per video. ``fed``: the inputs were made by ``PrepareUnits`` tasks and
    travel in the rows; otherwise (pipeline.runner.fed) the actor reads each unit's clip-stage
    result and makes them itself."""

    def __init__(self, *, spec, fps: dict[str, str], stage, fed: bool = True):
        import threading

        from stages.caption import CaptionStage

        super().__init__(spec=spec, fps=fps, stage=stage)
        self.fed = fed
        self.model_stage = CaptionStage(model=spec.models.vlm, settings=spec.caption,
                                        batch_size=spec.resources.caption.batch_size)
        # Ray Data may run ``resources.caption.calls_per_actor`` calls at once on threads: each
        # reads and prepares its units on its own, the model runs one call at a time (and in the
        # ``serial`` way of pipeline.overlap, the whole call does)
        self._model_lock, self._inputs_lock, self._call_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._committed: dict[str, list[dict] | None] = {}  # unit -> committed caption rows, between two calls
        self.plan = self.call_plan(spec.resources.caption)

    @staticmethod
    def call_plan(res):
        """How this actor runs its calls on CPUs when it takes several at once (pipeline.overlap):
        measured with ``calls_per_actor: auto``, always overlapping with a number; None on GPUs
        (the model's threads are not the CPUs') and with one call at a time."""
        from pipeline.overlap import OVERLAP, CallPlan
        from pipeline.resources import calls_per_actor
        from stages.models import assigned

        gpus, cpus = assigned("GPU"), int(assigned("CPU"))
        if gpus or cpus < 2 or calls_per_actor(res, gpus) < 2:
            return None
        return CallPlan(cpus, fixed=None if res.calls_per_actor == "auto" else OVERLAP)

    def work(self, store, row: dict) -> bytes:
        raise TypeError("captions are made for a whole call at once (CaptionUnits.__call__)")

    def _pending(self, store, row: dict) -> bool:
        """Whether the unit is to be captioned here; a committed one is noted in ``reused``
        (with a feeder, PrepareUnits did that and sent no inputs)."""
        if self.fed:
            return row["prepared"] is not None
        pending, committed = caption_pending(store, self.fps, row["unit_id"], self.spec, self.key(row))
        if not pending:
            row["reused"] = [*(row["reused"] or []), "caption"]
            return False
        self._committed[row["unit_id"]] = committed
        return True

    def _inputs(self, store, row: dict) -> tuple[dict, list[dict], list[dict], list[dict]]:
        """(videos row, measured clip rows, rows to caption, model inputs) of a pending unit:
        from the row (fed), else made here from the unit's clip-stage result and the captions
        already committed (timed as ``prepare``). The rows to caption mark as kept exactly the
        clips the thresholds keep that have no caption yet."""
        import pickle

        if self.fed:
            ready = pickle.loads(row["prepared"])
            return ready["video"], ready["measured"], ready["rows"], ready["inputs"]
        fault_point("prepare")
        started = time.perf_counter()
        video, measured, work = caption_inputs(store, self.fps, row["unit_id"], self.spec,
                                               self._committed.pop(row["unit_id"], None))
        with self._inputs_lock:  # the processor loads once, whichever call comes first
            self.model_stage.setup_inputs()
        inputs = self.model_stage.prepare(work)
        _timed(row, "prepare", started)
        return video, measured, work, inputs

    def __call__(self, batch: pa.Table) -> pa.Table:
        store = open_store(self.spec.output.uri, self.spec.storage)
        rows = batch.to_pylist()
        todo = [row for row in rows if self._pending(store, row)]
        if todo:
            fault_point("caption")
            mode = self.plan.mode if self.plan else None  # the call's way, fixed at its start
            with self._call_lock if mode == SERIAL else contextlib.nullcontext():
                preparing = time.perf_counter()
                units = [self._inputs(store, row) for row in todo]  # while another call may be generating
                preparing = time.perf_counter() - preparing
                with self._model_lock:
                    started = time.perf_counter()
                    self.model_stage.ensure_ready()  # the model's load counts as captioning time
                    if self.plan:
                        self.model_stage.use_cpu_threads(self.plan.threads(mode))
                    self.model_stage.caption([(work, inputs) for _, _, work, inputs in units])
                    taken = time.perf_counter() - started
                    if self.plan:
                        self.plan.generated(mode, sum(len(inputs) for *_, inputs in units), preparing, taken)
                        self.model_stage.free_cpu_threads()  # the next call may generate from another thread
                    share = taken / len(todo)  # the batch's time, split evenly
            for row, (video, measured, work, _) in zip(todo, units):
                for c in restore_status(work, measured):
                    c["frames"] = None  # not needed past captioning (a later caption reads the clip stage's)
                    for w in c.get("windows") or []:
                        w["frames"] = None
                store.write(self.key(row), encode_unit(video, schemas.work_table(work)))
                _timed(row, "caption", started, share)
        for row in rows:
            row["prepared"] = None
        return pa.Table.from_pylist(rows, schema=UNIT)


class CaptionFitUnits(_UnitStage):
    """Ray actor stage: caption-clip fit (stages.fit) of each unit's captioned clips, committed
    per video. It decides nothing: ``caption_mismatch`` is applied by stages.decide. A
    threshold rerun that keeps more clips adds their captions to the committed caption result
    in place, so a committed fit result counts only while it scores every caption there;
    otherwise the unit's captions are scored again (one text-encoder pass each, no image)."""

    def __init__(self, *, spec, fps: dict[str, str], stage):
        from stages.fit import CaptionFitStage

        super().__init__(spec=spec, fps=fps, stage=stage)
        self.model_stage = CaptionFitStage(model=spec.models.clip, settings=spec.caption_fit)  # loads on first use
        self._read: dict[str, tuple[dict, pa.Table]] = {}

    @staticmethod
    def _captioned(clips: pa.Table, column: str = "caption_model") -> set[str]:
        return {i for i, m in zip(clips.column("clip_id").to_pylist(), clips.column(column).to_pylist()) if m}

    def committed(self, store, key: str, row: dict) -> bool:
        video, clips = self._read[row["unit_id"]] = self.previous(store, row)
        if not store.exists(key):
            return False
        scored = decode_unit(store.read(key), ["clip_id", "caption_fit_model"])[1]
        if self._captioned(clips) <= self._captioned(scored, "caption_fit_model"):
            del self._read[row["unit_id"]]
            return True
        return False

    def work(self, store, row: dict) -> bytes:
        video, clips = self._read.pop(row["unit_id"])
        return encode_unit(video, self.model_stage(clips))


def kept_variant(kept: list[str]) -> str | None:
    """The hierarchy result's name part for a kept set (None when nothing is kept)."""
    import hashlib

    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16] if kept else None


class HierarchyUnits(_UnitStage):
    """Ray actor stage: chapters, chapter and video captions and entity names of each unit, over
    the clips the thresholds keep. Committed per video and kept set: moving a threshold reruns
    the hierarchy only of the videos whose kept clips change."""

    def __init__(self, *, spec, fps: dict[str, str], stage):
        from stages.chapters import HierarchyStage

        super().__init__(spec=spec, fps=fps, stage=stage)
        self.model_stage = HierarchyStage(model=spec.models.vlm, settings=spec.chapters)
        self._read: dict[str, tuple[dict, list[dict]]] = {}

    def result_key(self, store, row: dict) -> str:
        from stages.decide import decided

        video, clips = self.previous(store, row)
        rows = decided(clips.drop_columns(["frames"]).to_pylist(), self.spec)
        self._read[row["unit_id"]] = (video, rows)
        variant = kept_variant([c["clip_id"] for c in rows if c["status"] == "kept"])
        return work_key("hierarchy", self.fps["hierarchy"], row["unit_id"], variant)

    def work(self, store, row: dict) -> bytes:
        from stages.chapters import chapter_marks

        video, clips = self._read.pop(row["unit_id"])
        result = {"chapters": [], "captions": [], "entities": None}
        kept = [c for c in clips if c["status"] == "kept"]
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


def read_unit(store, fps: dict[str, str], unit: str, spec) -> tuple[dict, list[dict], dict]:
    """(videos row, clip rows, hierarchy result) of one finished unit: the committed results of
    the graph's last two stages, with each clip's fate as the spec's thresholds decide. A clip
    they drop carries no caption (one made under other thresholds stays committed, for reuse),
    so the rows are the same whatever thresholds ran before."""
    from stages.decide import decided

    last = chain(spec)[-1]
    video, clips = unit_view(store, fps, unit, before(spec, last.name))
    rows = decided(clips.drop_columns(["frames"]).to_pylist(), spec)
    kept = [c["clip_id"] for c in rows if c["status"] == "kept"]
    # what was made from a clip's caption (its fit) goes with the caption
    derived = [col for s in chain(spec) if "caption" in s.reads for col in s.adds]
    for c in rows:
        if c["status"] != "kept" and c["reason"] != "caption_mismatch":  # dropped for its caption: it stays
            c.update({k: None for k in (*CAPTION_COLUMNS, *derived)})
            c["windows"] = [{**w, **{k: None for k in w if k.startswith("caption_")}}
                            for w in c.get("windows") or []] or None
    if video.get("status") == "ok":
        video = {**video, "num_clips_kept": len(kept)}
    hierarchy = json.loads(store.read(work_key(last.name, fps[last.name], unit, kept_variant(kept))))
    return video, rows, hierarchy
