"""The one place where declared stage resources become Ray Data arguments."""

from __future__ import annotations


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def ray_args(res, *, actor: bool, gpus_in_cluster: float = 0.0) -> dict:
    """map_batches keyword arguments for a stage's resources (spec.resources.<stage>).

    Model stages run as actor pools (the model loads once per actor); CPU stages as tasks.
    ``num_gpus: auto`` asks one GPU per actor when the cluster has any.
    """
    import ray.data

    gpus = (1.0 if gpus_in_cluster > 0 else 0.0) if res.num_gpus == "auto" else float(res.num_gpus)
    strategy = ray.data.ActorPoolStrategy if actor else ray.data.TaskPoolStrategy
    args = {"batch_size": res.batch_size, "compute": strategy(size=res.concurrency),
            "num_cpus": res.num_cpus, "batch_format": "pyarrow"}
    if gpus:
        args["num_gpus"] = gpus
    return args
