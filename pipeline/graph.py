"""The stage graph, declared once.

Each row is one per-video stage: its name, the stage it runs after, the spec settings that
shape its measurements (hashed into its fingerprint; thresholds never are: they only decide,
in stages.decide, and their own "decide" fingerprint covers them), the prompts it reads, the
columns it adds (``adds``), the stages whose columns it reads (``reads``), the resources it
runs with (``spec.resources.<name>``), whether it runs as Ray tasks or as an actor pool, and
the class that does the work (``module:Class``, imported where it runs). Everything else is
derived from this table: the order of the stages, the fingerprints (a DAG: a stage's covers
the stages it reads and no other, so a score only the decision uses moves no caption), the
keys of committed work, each stage's view of a unit (pipeline.units.unit_view: the first
stage's rows with each later stage's own columns laid over them), both run modes (one
streaming chain or stage by stage) and what ``vidcurate gc`` may delete.

Adding a per-video stage means one stage module, one row here and one spec section (and, for a
score, its row in schemas.scores). A stage with an ``enabled`` setting runs only when that is
on; ``chain(spec)`` is the graph a job runs.

Dataset-level stages (they need every video's results first, e.g. near-duplicate removal
across the dataset) are rows of ``DATASET_STAGES``: they run as Ray tasks over the partitions
after the per-video stages and before the partition writers (pipeline.plan), and tell the
writers which clips to drop.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Stage:
    """One per-video stage. ``feeder``: a CPU task stage run right before this one that makes
    its inputs (nothing committed; a lost row is made again). ``unit_batch``: the spec setting
    holding how many videos one call receives (default one)."""

    name: str
    after: str | None
    settings: tuple[str, ...]
    kind: str  # "task" or "actor"
    runner: str  # "module:Class"; constructed with (spec=, fps=, stage=)
    prompts: tuple[str, ...] = ()  # prompt files it reads (their texts are hashed): a spec attribute
    # naming one ("caption.prompt_name") or a fixed name without a dot
    result: str = "parquet"  # how the committed result is stored: parquet (clip rows) or json
    feeder: "Stage | None" = None
    unit_batch: str | None = None
    enabled: str | None = None  # a spec setting that switches the stage on (None: always on)
    # What its result holds of its own: clip columns, fields of each window, fields of the
    # videos row. The first stage (analyze) owns everything no later stage declares. A reader
    # takes each column from the last stage before it that owns it (pipeline.units.unit_view).
    adds: tuple[str, ...] = ()
    window_adds: tuple[str, ...] = ()
    video_adds: tuple[str, ...] = ()
    # The stages whose columns shape its result (its fingerprint covers theirs, and only theirs).
    # Which clips it works on may also follow the decision (the thresholds over every score),
    # but a per-clip result does not depend on which others were kept, so that is no input.
    reads: tuple[str, ...] = ()

    @property
    def resources(self) -> str:
        return self.name

    def runner_class(self):
        module, _, name = self.runner.partition(":")
        return getattr(importlib.import_module(module), name)


_CAPTION = ("caption_text", "caption_fields", "caption_parse_status", "caption_model", "caption_prompt_version",
            "caption_generation")

GRAPH: tuple[Stage, ...] = (
    Stage("analyze", None, ("probe", "analysis", "shots", "caption.window_s", "caption.subtitles",
                            "models.transnetv2"), "task", "pipeline.units:AnalyzeUnits"),
    Stage("clip", "analyze", ("models.clip", "clip_filter.keep_prompts", "clip_filter.reject_prompts",
                              "clip_filter.frames"), "actor", "pipeline.units:ClipUnits",
          adds=("embedding", "clip_keep_sim", "clip_reject_sim", "clip_model", "aesthetic", "aesthetic_model"),
          reads=("analyze",)),
    Stage("text", "clip", ("text",), "task", "pipeline.units:TextUnits", enabled="text.enabled",
          adds=("text_area", "text_model"), reads=("analyze",)),
    Stage("speech", "text", ("speech", "resources.speech.batch_size"), "actor", "pipeline.units:SpeechUnits",
          enabled="speech.enabled", adds=("speech",), window_adds=("speech",), video_adds=("subtitles",),
          reads=("analyze",)),
    Stage("caption", "speech", ("models.vlm", "caption"), "actor", "pipeline.units:CaptionUnits",
          prompts=("caption.prompt_name",), unit_batch="caption.videos_per_batch",
          feeder=Stage("prepare", "speech", (), "task", "pipeline.units:PrepareUnits"),
          adds=_CAPTION, window_adds=("caption_text", "caption_fields", "caption_parse_status"),
          reads=("analyze", "speech")),
    Stage("caption_fit", "caption", ("models.clip", "caption_fit"), "actor", "pipeline.units:CaptionFitUnits",
          enabled="caption_fit.enabled", adds=("caption_clip_sim", "caption_fit_model"), reads=("clip", "caption")),
    Stage("hierarchy", "caption_fit", ("chapters",), "actor", "pipeline.units:HierarchyUnits",
          prompts=("chapters.chapter_prompt", "chapters.video_prompt", "chapters.entity_prompt", "chapter_title_v1"),
          result="json", reads=("analyze", "clip", "speech", "caption")),
)

# What shapes the written parts and shards beyond the per-video results.
OUTPUT_SETTINGS = ("output.samples_per_shard", "output.long_samples", "output.smart_cut")


@dataclass(frozen=True)
class DatasetStage:
    """A stage over every partition's per-video results at once, as map and reduce Ray tasks:
    ``map`` (``module:function``) gets (spec, fps, partition) for each partition, ``reduce``
    gets (spec, fps, [map results in partition order]) and returns the clips to drop,
    ``{partition: {clip_id: reason}}``. The partition writers reject those clips with that
    reason. ``enabled``: a spec setting that switches it on (None: always on)."""

    name: str
    map: str
    reduce: str
    enabled: str | None = None

    def function(self, which: str):
        module, _, name = getattr(self, which).partition(":")
        return getattr(importlib.import_module(module), name)


# None is built in yet; near-duplicate removal across the dataset is planned for this slot.
DATASET_STAGES: tuple[DatasetStage, ...] = ()

STAGES: tuple[str, ...] = tuple(s.name for s in GRAPH)
BY_NAME: dict[str, Stage] = {s.name: s for s in GRAPH}
FINAL = GRAPH[-1].name


def _check(graph: tuple[Stage, ...]) -> None:
    """The rows run in table order (each follows the row above it); a stage reads only stages
    above it; every score's columns belong to the stage schemas.scores names."""
    from schemas.scores import SCORES

    for prev, stage in zip((None,) + tuple(s.name for s in graph), graph):
        if stage.after != prev:
            raise ValueError(f"stage graph: {stage.name} follows {stage.after!r}, expected {prev!r}")
        if stage.kind not in ("task", "actor"):
            raise ValueError(f"stage graph: {stage.name}: kind must be task or actor")
    order = [s.name for s in graph]
    for stage in graph:
        for read in stage.reads:
            if read not in order or order.index(read) >= order.index(stage.name):
                raise ValueError(f"stage graph: {stage.name} reads {read!r}, which does not run before it")
    owner = {c: s.name for s in graph for c in s.adds}
    for score in SCORES:
        for column in filter(None, (score.name if score.type is not None else None, score.provenance)):
            if score.stage != graph[0].name and owner.get(column) != score.stage:
                raise ValueError(f"stage graph: {column} is measured by {score.stage} (schemas.scores), "
                                 f"but {owner.get(column)!r} adds it")


_check(GRAPH)


def chain(spec) -> tuple[Stage, ...]:
    """The stages ``spec`` runs, in graph order, each following the one before it: a stage
    whose ``enabled`` setting is off drops out (it measures nothing, and nothing of it is
    committed), and the next one reads the result of the stage before it."""
    out, prev = [], None
    for s in GRAPH:
        if s.enabled is not None and not setting(spec, s.enabled):
            continue
        feeder = replace(s.feeder, after=prev) if s.feeder is not None else None
        out.append(replace(s, after=prev, feeder=feeder))
        prev = s.name
    return tuple(out)


def before(spec, name: str) -> tuple[Stage, ...]:
    """The stages ``spec`` runs before stage ``name`` (or a feeder of that name), in order:
    what a unit view for it is made of (pipeline.units.unit_view)."""
    out = []
    for s in chain(spec):
        if s.name == name or (s.feeder is not None and s.feeder.name == name):
            return tuple(out)
        out.append(s)
    raise ValueError(f"stage {name} does not run with this spec")


def follows(spec, name: str) -> str | None:
    """The stage whose committed result stage ``name`` (or a feeder of that name) reads when
    ``spec`` runs."""
    for s in chain(spec):
        if s.name == name:
            return s.after
        if s.feeder is not None and s.feeder.name == name:
            return s.feeder.after
    raise ValueError(f"stage {name} does not run with this spec")


def work_key(stage: str, fingerprint: str, unit: str, variant: str | None = None) -> str:
    """Where a unit's committed result of ``stage`` lives (the file is the commit); ``variant``:
    what else it was made from (the hierarchy: which of the unit's clips the thresholds keep)."""
    return f"_work/{stage}/{fingerprint}/{unit}{'-' + variant if variant else ''}.{BY_NAME[stage].result}"


def settings_view(spec, keys: tuple[str, ...], extra: tuple[str, ...] = ("storage",)):
    """Only the spec settings ``keys`` (dotted) as nested attributes, plus ``extra`` (how to reach
    inputs, which never shapes a result): what a stage receives, so that reading anything its
    fingerprint does not hash fails at once."""
    from types import SimpleNamespace

    root: dict = {}
    for dotted in (*keys, *extra):
        *path, last = dotted.split(".")
        node = root
        for part in path:
            node = node.setdefault(part, {})
        node[last] = setting(spec, dotted)

    def build(node: dict):
        return SimpleNamespace(**{k: build(v) if isinstance(v, dict) else v for k, v in node.items()})

    return build(root)


def setting(doc, dotted: str):
    """``doc.a.b`` (attributes) or ``doc["a"]["b"]`` (mappings) for ``"a.b"``."""
    for part in dotted.split("."):
        doc = doc[part] if isinstance(doc, dict) else getattr(doc, part)
    return doc
