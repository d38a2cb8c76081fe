"""The output as a whole: where it is, what may be in it, when a run already finished it,
and what is deleted or recorded when a run ends (the per-partition and per-unit commits are
in pipeline.writer and pipeline.units)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.sinks import json_bytes
from pipeline.spec import JobSpec, SpecError
from pipeline.storage import is_s3


def output_dir(spec: JobSpec) -> str:
    """The output's location as users wrote it (an absolute local path or an s3:// URI)."""
    uri = spec.output.uri
    if is_s3(uri):
        return uri.rstrip("/")
    return str(Path(uri[len("file://"):] if uri.startswith("file://") else uri).absolute())


OUTPUT_NAMES = {"manifest.json", "spec.yaml", "stats.json", "report.html", "videos", "clips", "captions", "chapters",
                "shards", "long_shards", "_work"}
TABLES = ("videos", "clips", "captions", "chapters")


def prepare_output(spec: JobSpec, store, inputs: list[dict], log=print) -> dict[str, int]:
    """Check the output before any work and list what it holds of its own files (key -> size;
    see ``list_output``).

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
        files, folders = store.top()
        names = set(files) | folders
    except Exception as err:
        raise SpecError(f"output.uri: cannot list {root}: {err}") from None
    foreign = sorted(set(names) - OUTPUT_NAMES)
    if foreign:
        raise SpecError(f"output.uri: {root} holds files vidcurate did not write ({', '.join(foreign[:3])}); "
                        "refusing to write there")
    return list_output(store)


# What planning lists besides the top-level files: the tables, the shards and the partition
# records, never the per-video work.
FOLDERS = (*TABLES, "shards", "long_shards", "_work/partitions")


def list_output(store) -> dict[str, int]:
    """key -> size of the output's top-level files, table parts, shards, partition records and
    lease: a bounded number of objects per partition."""
    listing, _ = store.top()
    for folder in FOLDERS:
        listing.update(store.list(folder + "/"))
    if store.exists("_work/lock.json"):
        listing["_work/lock.json"] = 0
    return listing


def remove_orphans(store) -> int:
    """Partial files an interrupted run left where the output's files are (a per-video result is
    committed by rename, and its rare leftovers go with ``vidcurate gc``); on S3, unfinished
    multipart uploads."""
    if is_s3(store.uri()):
        return store.clean_orphans()
    files, _ = store.top()
    orphans = [k for k in files if k.endswith(".tmp")]
    for k in orphans:
        store.delete(k)
    return len(orphans) + sum(store.clean_orphans(folder + "/") for folder in FOLDERS)


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
    if manifest.get("run_key") != key or "partitions" not in manifest:
        return None
    files = [*(p for t in manifest["tables"].values() for p in t["parts"]), *manifest["shards"],
             *manifest["long_shards"]]
    if all(listing.get(f["path"]) == f["bytes"] for f in files) and \
            {"stats.json", "spec.yaml", "report.html"} <= set(listing):
        return manifest
    return None


def delete_keys(store, keys: list[str], check=None, batch: int = 100) -> None:
    """Delete ``keys``, calling ``check()`` (the output lease's) before each ``batch`` of them."""
    for n, k in enumerate(keys):
        if check is not None and n % batch == 0:
            check()
        store.delete(k)


def clean(store, manifest: dict, listing: dict[str, int], log, check=None) -> None:
    """Delete table parts and shards the new manifest does not list (of earlier plans or
    interrupted runs), ``check()`` before each batch. Partition records and committed per-video
    work stay for reuse."""
    keep = {s["path"] for s in manifest["shards"] + manifest["long_shards"]}
    keep |= {p["path"] for t in manifest["tables"].values() for p in t["parts"]}
    stale = [k for k in listing if k.split("/")[0] in ("shards", "long_shards", *TABLES) and k not in keep]
    delete_keys(store, stale, check)
    if stale:
        log(f"[write] removed {len(stale)} file(s) no longer part of the output")


def record_timings(store, seconds: dict, stages: dict, changed: int) -> None:
    """Wall times and per-stage worker seconds (merged across workers) go to _work/last_run.json,
    not to stats.json, so that reruns give the same bytes."""
    doc = {"wall_seconds": {k: round(v, 3) for k, v in seconds.items()},
           "stages": {k: ({**v, "worker_seconds": round(v["worker_seconds"], 3)} if "worker_seconds" in v else v)
                      for k, v in stages.items()},
           "files_changed": changed}
    store.write("_work/last_run.json", json_bytes(doc))


def collect_garbage(store, *, dry_run: bool = False, log=print) -> tuple[int, int]:
    """Delete committed work a finished output no longer uses: stage results under
    ``_work/<stage>/<fingerprint>/`` whose fingerprint is not the manifest's (left by runs with
    other settings; kept by ``run`` so that switching back reuses them), records of partitions
    the manifest does not list, dataset-level stages' drop files no listed partition uses, and temporary files of interrupted writes. Holds the output's lock while it works.
    Returns (files, bytes) removed (or that would be, with ``dry_run``)."""
    from pipeline.graph import STAGES
    from pipeline.lock import OutputLock
    from pipeline.writer import RECORDS

    try:
        manifest = json.loads(store.read("manifest.json"))
    except Exception as err:
        raise SpecError(f"{store.uri()}: no committed output (manifest.json unreadable: {err}); gc only runs on a "
                        "finished output, whose manifest says which work is current") from None
    fps = manifest.get("fingerprints") or {}
    current = {p["record"] for p in manifest.get("partitions", [])}
    drops = {key for p in manifest.get("partitions", []) for key in p.get("drops", [])}
    settings = getattr(store, "settings", None)  # an S3 store's; a local one takes file locks
    with OutputLock(store, log, conditional_writes=getattr(settings, "conditional_writes", "require")) as lease:
        doomed = []
        for key, size in store.list("_work/"):
            parts = key.split("/")
            stale_stage = len(parts) >= 4 and parts[1] in STAGES and parts[2] != fps.get(parts[1])
            stale_record = key.startswith(RECORDS + "/") and key not in current
            stale_drops = key.startswith("_work/dataset/") and key not in drops  # dataset-level stages' drops
            if stale_stage or stale_record or stale_drops or key.endswith(".tmp"):
                doomed.append((key, size))
        if not dry_run:
            delete_keys(store, [key for key, _ in doomed], lease.check)
        if not dry_run and not is_s3(store.uri()):  # folders are real on disk: drop the emptied ones
            import os

            for folder, _, _ in sorted(os.walk(store.path("_work")), reverse=True):
                if not os.listdir(folder):
                    os.rmdir(folder)
    groups = sorted({"/".join(k.split("/")[:3]) for k, _ in doomed})
    total = sum(size for _, size in doomed)
    verb = "would remove" if dry_run else "removed"
    log(f"vidcurate gc: {verb} {len(doomed)} files ({total / 1e6:.1f} MB)"
        + (": " + ", ".join(groups) if groups else "; nothing superseded"))
    return len(doomed), total
