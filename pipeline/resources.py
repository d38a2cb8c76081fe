"""The one place where declared stage resources become Ray Data arguments."""

from __future__ import annotations

import math


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def gpus_per_worker(res, gpus_in_cluster: float) -> float:
    """GPUs one actor or task asks for: ``num_gpus: auto`` is one when the cluster has any."""
    if res.num_gpus == "auto":
        return 1.0 if gpus_in_cluster > 0 else 0.0
    return float(res.num_gpus)


def pool_size(res, *, alone: bool, cpus: float, gpus: float, reserved_cpus: float = 0.0) -> int:
    """Actors of a model stage's pool. A number is taken as it is. ``auto``: one in a streaming
    chain (the other stages need the rest); in a pass of the stage alone, as many as the
    cluster holds: one per ``num_gpus`` GPUs when the stage asks for GPUs, else one per
    ``num_cpus`` of the CPUs left after ``reserved_cpus`` (one task of its feeder)."""
    if res.concurrency != "auto":
        return res.concurrency
    if not alone:
        return 1
    per_gpu = gpus_per_worker(res, gpus)
    if per_gpu > 0:
        return max(1, math.floor(gpus / per_gpu + 1e-9))
    if res.num_cpus <= 0:
        return 1
    return max(1, math.floor((cpus - reserved_cpus) / res.num_cpus + 1e-9))


def task_limit(res) -> int | None:
    """Tasks of a CPU stage at once: a number, or None (``auto``: as many as the CPUs allow)."""
    return None if res.concurrency == "auto" else res.concurrency


def calls_per_actor(res, gpus_per_actor: float) -> int:
    """Calls one actor of a stage works on at once (``calls_per_actor``; auto: 2 where each actor
    gets a GPU, so one call's CPU work overlaps the other's generation; on CPUs 2 where the
    actor has 2 or more, and the actor measures whether to overlap them (pipeline.overlap), else 1)."""
    if res.calls_per_actor != "auto":
        return res.calls_per_actor
    return 2 if gpus_per_actor > 0 or res.num_cpus >= 2 else 1


def ray_args(res, *, actor: bool, gpus_in_cluster: float = 0.0, size: int | None = None) -> dict:
    """map_batches keyword arguments for a stage's resources (spec.resources.<stage>).

    Model stages run as actor pools (the model loads once per actor) of ``size`` actors
    (pool_size; default: the declared number, one for ``auto``). An ``auto`` pool starts
    ``size`` actors but needs only one to go on (a node lost at the start of a pass does not
    hold it up). CPU stages run as tasks.
    """
    import ray.data

    gpus = gpus_per_worker(res, gpus_in_cluster)
    n_calls = calls_per_actor(res, gpus) if actor else 1
    # several calls at once: the class runs them on threads (it serialises its model calls itself)
    calls = {"max_concurrent_calls_per_actor": n_calls, "enable_true_multi_threading": True} if n_calls > 1 else {}
    if actor and res.concurrency == "auto":  # starts them all, goes on with those that start
        n = size or 1
        compute = ray.data.ActorPoolStrategy(min_size=1, max_size=n, initial_size=n, **calls)
    elif actor:
        compute = ray.data.ActorPoolStrategy(size=size or res.concurrency, **calls)
    else:
        compute = ray.data.TaskPoolStrategy(size=task_limit(res))
    args = {"batch_size": res.batch_size, "compute": compute, "num_cpus": res.num_cpus, "batch_format": "pyarrow"}
    if gpus:
        args["num_gpus"] = gpus
    return args
