"""Running the per-video stages of the graph (pipeline.graph) on Ray Data.

Either one streaming chain of every stage (model actors caption while other videos still
decode), or one streaming execution per stage (a pass), each over the pending units. Units
travel in blocks of a bounded number of videos; the driver consumes the rows of the last
stage one block at a time, so its memory does not grow with the number of videos or clips,
and hands each finished unit to ``on_done`` (the plan starts a partition's writer as soon as
its last unit is done).

A chain streams only when the cluster could still hold every actor pool plus one task of
each task stage after losing its largest node: actor pools restarted on the surviving nodes
must never hold every CPU that the decoding tasks wait for (that deadlocks: Ray Data then
waits forever for CPUs that never come). While a pass runs, a watchdog compares the cluster's
resources with what the pass needs; when they stay short for ``ray.resource_wait_s`` (lost
nodes that no autoscaler replaces), the run stops with an error saying what is missing.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

from pipeline.graph import Stage, chain, setting
from pipeline.resources import cluster_gpus, gpus_per_worker, pool_size, ray_args


def fed(spec, stage: Stage, gpus: float) -> bool:
    """Whether ``stage``'s feeder runs as CPU tasks ahead of its actors (``ray.feeder_tasks``; null:
    when the actors get GPUs). Otherwise the actors make their own inputs: on CPUs the feeder's
    tasks would share the model's cores and keep one from the pool, for a hand-over that costs a
    serialisation."""
    if stage.feeder is None:
        return False
    if spec.ray.feeder_tasks is not None:
        return spec.ray.feeder_tasks
    return gpus_per_worker(getattr(spec.resources, stage.resources), gpus) > 0


def _steps(spec, stages: list[Stage], gpus: float) -> list[Stage]:
    """The stages with the feeders that run as tasks, in execution order."""
    return [s for stage in stages for s in ((stage.feeder,) if fed(spec, stage, gpus) else ()) + (stage,)]


def add_stage(ds, stage: Stage, spec, fps: dict, gpus: float, size: int | None = None):
    """``ds`` followed by one stage, with the resources declared for it in the spec (``size``:
    the actor pool's size, from pool_sizes). A model stage with a feeder is told whether the
    feeder's tasks run ahead of it (``fed``)."""
    res = getattr(spec.resources, stage.resources)
    args = ray_args(res, actor=stage.kind == "actor", gpus_in_cluster=gpus, size=size)
    args["batch_size"] = setting(spec, stage.unit_batch) if stage.unit_batch else 1  # model batches form inside
    cls = stage.runner_class()
    if stage.kind == "actor":
        kwargs = {"spec": spec, "fps": fps, "stage": stage} | ({"fed": fed(spec, stage, gpus)} if stage.feeder else {})
        return ds.map_batches(cls, fn_constructor_kwargs=kwargs, **args)
    return ds.map_batches(cls(spec=spec, fps=fps, stage=stage), **args)


def usable_cpus(cpus: list[float]) -> float:
    """The cluster's CPUs less its largest node's when it has several: what is left after
    losing any one node."""
    return sum(cpus) - (max(cpus) if len(cpus) > 1 else 0.0)


def pool_sizes(spec, stages: list[Stage], cpus: list[float], gpus: float) -> dict[str, int]:
    """The actor pool size of each model stage of a chain (pipeline.resources.pool_size). A
    stage alone in its pass fills the cluster, less one task of its feeder where that runs
    (``fed``); with a feeder, only from the CPUs that survive the loss of a node, so that
    restarted actors can never take the CPU the feeder's tasks wait for."""
    alone = len(stages) == 1
    sizes = {}
    for stage in stages:
        if stage.kind != "actor":
            continue
        res = getattr(spec.resources, stage.resources)
        feeder = getattr(spec.resources, stage.feeder.resources) if fed(spec, stage, gpus) else None
        room = usable_cpus(cpus) if feeder else sum(cpus)
        sizes[stage.name] = pool_size(res, alone=alone, cpus=room, gpus=gpus,
                                      reserved_cpus=feeder.num_cpus if feeder else 0.0)
    return sizes


def needs(spec, stages: list[Stage], gpus: float, *, least: bool = False) -> dict[str, float]:
    """Resources a chain of ``stages`` holds at once: every actor of every pool, plus one task of
    each task stage; with ``least``, what it needs to make any progress at all (one actor of
    each pool and one task of each task stage)."""
    cpu = gpu = 0.0
    for stage in _steps(spec, stages, gpus):
        res = getattr(spec.resources, stage.resources)
        n = res.concurrency if stage.kind == "actor" and not least and res.concurrency != "auto" else 1
        cpu += n * res.num_cpus
        gpu += n * gpus_per_worker(res, gpus)
    return {"CPU": cpu, "GPU": gpu}


def node_cpus() -> list[float]:
    """CPUs of each alive node of the cluster."""
    import ray

    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def stream_all(spec, cpus: list[float] | None = None, gpus: float = 0.0) -> bool:
    """Whether all stages stream in one chain: ``ray.stream``, or (null) when the cluster's CPUs,
    less its largest node's when it has several, cover every actor pool plus one task of each
    task stage."""
    if spec.ray.stream is not None:
        return spec.ray.stream
    cpus = node_cpus() if cpus is None else cpus
    return usable_cpus(cpus) >= needs(spec, list(chain(spec)), gpus)["CPU"]


def videos_per_block(spec, units: int, cpus: float) -> int:
    """Videos per Ray Data block: ``ray.videos_per_block``, or enough blocks for four per CPU,
    at most 16 videos each."""
    if spec.ray.videos_per_block:
        return spec.ray.videos_per_block
    return max(1, min(16, units // max(1, int(4 * cpus))))


class ResourceWatch:
    """While a pass runs: when the cluster's resources stay below ``need`` for ``wait_s``
    seconds, say so and interrupt the driver's main thread (which turns it into an error)."""

    def __init__(self, need: dict[str, float], wait_s: float, log, period_s: float = 2.0, resources=None):
        self.need, self.wait_s, self.log, self.period_s = need, wait_s, log, period_s
        self.resources = resources or self._cluster
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vidcurate-resource-watch", daemon=True)

    @staticmethod
    def _cluster() -> dict[str, float]:
        import ray

        return ray.cluster_resources()

    def shortfall(self) -> str | None:
        have = self.resources()
        short = [f"{k} {v:g} (the cluster has {float(have.get(k, 0)):g})" for k, v in self.need.items()
                 if v > 0 and float(have.get(k, 0)) < v]
        return ", ".join(short) or None

    def _watch(self) -> None:
        since = None
        while not self._stop.wait(self.period_s):
            try:
                short = self.shortfall()
            except Exception:  # the cluster is unreachable: Ray itself reports that
                continue
            if short is None:
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= self.wait_s:
                self.reason = (f"the cluster lost the resources this pass needs and did not get them back in "
                               f"{self.wait_s:g}s (ray.resource_wait_s): it needs {short}. Add nodes, or lower "
                               "resources.<stage>.concurrency, and rerun: committed work is reused")
                self.log(f"vidcurate: error: {self.reason}")
                os.kill(os.getpid(), signal.SIGINT)  # wakes the main thread wherever it blocks
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def finished_blocks(ds):
    """The pass's output blocks (pyarrow tables of unit rows) as each reaches the driver. No
    prefetching: with Ray Data's default of one batch ahead, the iterator holds every block until
    the next one is done, so each unit would reach ``on_done`` (and its partition's writer would
    start) one block's work late. The blocks are a few small rows each; the executor still
    streams ahead of the driver in the background."""
    return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


class Tally:
    """Per-stage work merged across workers: videos, worker seconds, frames, reused results."""

    def __init__(self):
        self.stages: dict[str, dict] = {}
        self.reused: dict[str, int] = {}
        self.passes: dict[str, float] = {}

    def add(self, row: dict) -> None:
        for stage, sec in json.loads(row["seconds_json"] or "{}").items():
            entry = self.stages.setdefault(stage, {"videos": 0, "worker_seconds": 0.0})
            entry["videos"] += 1
            entry["worker_seconds"] += sec
        if row["num_frames"]:
            entry = self.stages.setdefault("analyze", {"videos": 0, "worker_seconds": 0.0})
            entry["num_frames"] = entry.get("num_frames", 0) + row["num_frames"]
        for stage in row["reused"] or []:
            self.reused[stage] = self.reused.get(stage, 0) + 1

    def as_dict(self) -> dict:
        return {**self.stages, "passes": self.passes}


def run_units(spec, units: list[dict], fps: dict, log, on_done=None, progress_s: float | None = None) -> dict:
    """Run every stage for ``units`` (rows of pipeline.units.UNIT; Ray connected), calling
    ``on_done(row)`` for each unit once its last stage is committed, and logging each pass's
    progress every ``progress_s`` seconds (None: never). Returns the per-stage work merged
    across workers ({stage: {videos, worker_seconds, num_frames}, "passes": {...}})."""
    import ray

    gpus = cluster_gpus()
    cpus = node_cpus()
    per_block = videos_per_block(spec, len(units), sum(cpus))
    stages_run = chain(spec)
    passes = [("all stages", list(stages_run))] if stream_all(spec, cpus, gpus) else [(s.name, [s]) for s in stages_run]
    tally = Tally()
    for n, (name, stages) in enumerate(passes):
        last = n == len(passes) - 1
        before = {k: dict(v) for k, v in tally.stages.items()}
        t = time.perf_counter()
        ds = ray.data.from_items(units, override_num_blocks=max(1, math.ceil(len(units) / per_block)))
        gpus = cluster_gpus()  # the cluster as it is now: pools, feeders and GPU asks of this pass agree
        sizes = pool_sizes(spec, stages, node_cpus(), gpus)
        for stage in _steps(spec, stages, gpus):
            ds = add_stage(ds, stage, spec, fps, gpus, sizes.get(stage.name))
        ds = ds.drop_columns(["prepared"])
        done, shown = 0, time.perf_counter()
        watch = ResourceWatch(needs(spec, stages, gpus, least=True), spec.ray.resource_wait_s, log)
        try:
            with watch:
                for batch in finished_blocks(ds):
                    for row in batch.to_pylist():
                        tally.add(row)
                        done += 1
                        if last and on_done is not None:
                            on_done(row)
                    if progress_s is not None and time.perf_counter() - shown >= progress_s:
                        shown = time.perf_counter()
                        log(f"[{name}] {done}/{len(units)} videos done, {shown - t:.0f}s")
        except KeyboardInterrupt:
            if watch.reason:
                raise RuntimeError(watch.reason) from None
            raise
        wall = time.perf_counter() - t
        tally.passes[name] = round(wall, 3)
        frames = tally.stages.get("analyze", {}).get("num_frames", 0) - before.get("analyze", {}).get("num_frames", 0)
        rate = f", {frames / wall:,.0f} frames/s" if frames else ""
        busy = ", ".join(f"{s} {v['worker_seconds'] - before.get(s, {}).get('worker_seconds', 0.0):.1f}s"
                         for s, v in tally.stages.items()
                         if v["worker_seconds"] > before.get(s, {}).get("worker_seconds", 0.0))
        pools = "".join(f"; {s} actors: {n}" for s, n in sizes.items())
        log(f"[{name}] {done} videos in {wall:.1f}s ({done / wall:.2f} videos/s{rate}; worker time: {busy or 'none'}"
            f"{pools})")
    if tally.reused:
        log("[resume] committed results reused: " + ", ".join(f"{s.name} {tally.reused[s.name]}" for s in stages_run
                                                               if tally.reused.get(s.name)))
    return tally.as_dict()
