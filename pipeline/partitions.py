"""Partitions: inputs fall into deterministic groups of at most ``output.videos_per_partition``
videos; each is written by one worker task (pipeline.writer) and committed by one record.

Planning reads one record per partition (``_work/partitions/part-NNNNNN.json``), never the
per-video files. A committed partition keeps its members for good: rerunning with more inputs
appends new partitions and leaves every existing part and shard untouched. Inputs that belong
to no partition are taken in sorted order into partitions numbered from the lowest number no
record holds, so the same sequence of runs always gives the same partitions, and a run killed
after committing some partitions (in whatever order its writers finished) gets, on resume,
the numbers the undisturbed run would have given the rest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor

from pipeline.writer import RECORDS


def read_records(store, listing: dict[str, int]) -> dict[int, dict]:
    """The partition records the output holds ({partition: record}); an unreadable one counts as
    absent (its partition is written again)."""
    keys = sorted(k for k in listing if k.startswith(RECORDS + "/") and k.endswith(".json"))

    def read(key: str):
        try:
            return json.loads(store.read(key))
        except (OSError, ValueError):
            return None

    with ThreadPoolExecutor(8) as pool:
        records = [r for r in pool.map(read, keys) if r is not None]
    return {r["partition"]: r for r in sorted(records, key=lambda r: r["partition"])}


def assign(inputs: list[dict], records: dict[int, dict], per: int) -> list[dict]:
    """[{partition, units}] in partition order: inputs named by a record stay in its partition
    (the lowest, should two records name one input); the others, in input order, fill new
    partitions of ``per``, numbered from the lowest number no record holds. Partitions left
    without inputs drop out (their numbers stay taken while their records exist).

    Not simply after the highest record: writers commit partitions in the order their videos
    finish, so a killed run can leave records 0 and 2 without 1; its resume must give the
    inputs of 1 the number 1 again, or every later partition's files get other names than an
    undisturbed run's. In sorted order those inputs are exactly the uncommitted partitions'
    members, chunk for chunk (only the last partition can be short)."""
    home: dict[str, int] = {}
    for p in sorted(records):
        for unit in records[p]["units"]:
            home.setdefault(unit, p)
    members: dict[int, list[dict]] = {}
    new = []
    for row in inputs:
        p = home.get(row["unit_id"])
        if p is None:
            new.append(row)
        else:
            members.setdefault(p, []).append(row)
    free = (n for n in itertools.count() if n not in records)
    for i in range(0, len(new), per):
        members[next(free)] = new[i:i + per]
    return [{"partition": p, "units": members[p]} for p in sorted(members)]


def content_key(fps: dict[str, str], units: list[dict], drops: list[str] = ()) -> str:
    """What a partition's files are made from: every stage's fingerprint, the output settings',
    its inputs (with what came with them in a manifest) and the dataset-level stages' drops
    (files named by a hash of their content)."""
    doc = [fps, [[u["unit_id"], u["uri"], u.get("description"), u.get("subtitles")] for u in units]]
    if drops:
        doc.append(list(drops))
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def files_of(record: dict) -> list[dict]:
    return [*record["tables"].values(), *record["shards"], *record["long_shards"]]


def is_current(record: dict | None, content: str, listing: dict[str, int]) -> bool:
    """The record commits exactly this content, and every file it names is there at its size."""
    return record is not None and record.get("content") == content and \
        all(listing.get(f["path"]) == f["bytes"] for f in files_of(record))


class Writers:
    """Starts each pending partition's writer task (at most ``resources.write.concurrency`` at
    once) as soon as its last unit is done, while the other units are still in the stages."""

    def __init__(self, spec, fps: dict[str, str], partitions: list[dict], log, early: bool = True):
        import ray

        from pipeline.resources import task_limit
        from pipeline.writer import write_partition

        self.spec, self.fps, self.log, self.early = spec, fps, log, early
        self.partitions = {p["partition"]: p for p in partitions}
        self.left = {p["partition"]: len(p["units"]) for p in partitions}
        self.ready: list[int] = []
        self.running: dict = {}  # object ref -> partition
        self.records: dict[int, dict] = {}
        self.seconds = 0.0  # summed worker seconds of the writer tasks
        res = spec.resources.write
        self.task = ray.remote(write_partition).options(num_cpus=res.num_cpus, max_retries=3)
        self.concurrency = task_limit(res) or max(1, int(ray.cluster_resources().get("CPU", 1) // max(res.num_cpus, 1e-3)))
        self.spec_ref = ray.put(spec)

    def unit_done(self, row: dict) -> None:
        p = row["partition"]
        self.left[p] -= 1
        if self.left[p] == 0 and self.early:
            self.ready.append(p)
        self._pump(block=False)

    def _pump(self, block: bool) -> None:
        import ray

        while True:
            if self.running:
                done, _ = ray.wait(list(self.running), num_returns=1, timeout=None if block else 0)
                for ref in done:
                    record = ray.get(ref)
                    self.seconds += record.pop("seconds")
                    self.records[self.running.pop(ref)] = record
                    for item in record["left_out"][:10]:
                        self.log(f"[write] {'chapter sample' if item['long'] else 'clip'} {item['key']}"
                                 f"{' of ' + item['uri'] if item['uri'] else ''} left out: {item['error']}")
            while self.ready and len(self.running) < self.concurrency:
                p = self.ready.pop(0)
                self.running[self.task.remote(self.spec_ref, self.fps, self.partitions[p])] = p
            if not block or not self.running:
                return

    def finish(self) -> list[dict]:
        """Start what has not started, wait for every writer; the records in partition order."""
        self.ready += [p for p in sorted(self.partitions) if p not in self.ready and p not in self.records
                       and p not in self.running.values()]
        self._pump(block=True)
        return [self.records[p] for p in sorted(self.partitions)]


def run_dataset_stages(spec, fps: dict[str, str], plan: list[dict], stages, log) -> dict[int, list[str]]:
    """Each dataset-level stage as Ray tasks: its map over every partition, then its reduce, which
    commits each partition's drops to its own file. Returns {partition: [drop files]}; the
    driver holds file names, never the clips."""
    import ray

    spec_ref = ray.put(spec)
    files: dict[int, list[str]] = {}
    for stage in stages:
        mapper = ray.remote(_map).options(num_cpus=1)
        partials = [mapper.remote(stage, spec_ref, fps, {"partition": p["partition"], "units": p["units"]})
                    for p in plan]
        written = ray.get(ray.remote(_reduce).options(num_cpus=1).remote(stage, spec_ref, fps, *partials))
        for p, (key, n) in sorted(written.items()):
            files.setdefault(p, []).append(key)
        log(f"[{stage.name}] {sum(n for _, n in written.values())} clips dropped across {len(plan)} partition(s)")
    return files


def _map(stage, spec, fps, partition):
    return stage.function("map")(spec, fps, partition)


def _reduce(stage, spec, fps, *partials) -> dict[int, tuple[str, int]]:
    """Run the stage's reduce and commit each partition's drops ({clip_id: reason}) under a name
    that hashes them; returns {partition: (key, number of drops)}."""
    from pipeline.sinks import json_bytes
    from pipeline.storage import open_store

    store = open_store(spec.output.uri, spec.storage)
    out = {}
    for p, drops in stage.function("reduce")(spec, fps, list(partials)).items():
        data = json_bytes(dict(sorted(drops.items())))
        key = f"_work/dataset/{stage.name}/part-{int(p):06d}-{hashlib.sha256(data).hexdigest()[:16]}.json"
        store.write(key, data)
        out[int(p)] = (key, len(drops))
    return out
