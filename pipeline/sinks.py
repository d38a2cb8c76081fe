"""Writers: deterministic WebDataset shards, Parquet tables and JSON, committed atomically.

Shards: ``shard-{n:06d}.tar`` with members sorted by key, then extension; fixed mtime, uid,
gid and mode, so the same samples always give the same bytes. Sample keys are clip ids
(hex, no dots), checked here so a member name can never escape or split a key.

A shard is committed in two steps: the tar (staged, then renamed or uploaded in one PUT or a
completed multipart upload), then its commit record under ``_work/commits/`` naming the
shard's content key and sha256. A shard without a record is an orphan: never listed in the
manifest, rewritten or deleted by the next run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

KEY = re.compile(r"^[0-9a-z_-]+$")
EXT_ORDER = {"json": 0, "mp4": 1, "txt": 2}
COMMITS = "_work/commits"


def shard_name(n: int) -> str:
    return f"shard-{n:06d}.tar"


def tar_bytes_to(f, samples: list[dict[str, bytes]]) -> None:
    """Write samples ({"__key__": key, ext: bytes, ...}) as a deterministic tar to file ``f``."""
    members = []
    for sample in samples:
        key = sample["__key__"]
        if not KEY.match(key):
            raise ValueError(f"unsafe sample key {key!r}")
        for ext, data in sample.items():
            if ext != "__key__":
                if not KEY.match(ext):
                    raise ValueError(f"unsafe extension {ext!r} for sample {key}")
                members.append((key, EXT_ORDER.get(ext, 9), ext, data))
    members.sort(key=lambda m: (m[0], m[1], m[2]))
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, _, ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def write_tar(store, key: str, samples: list[dict[str, bytes]]) -> dict:
    """Write and commit a shard at ``key`` of ``store``; return its sha256, sample count and size."""
    fd, tmp = tempfile.mkstemp(prefix="vidcurate-shard-", suffix=".tar.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            tar_bytes_to(f, samples)
        digest, size = _sha256_file(tmp), os.path.getsize(tmp)
        store.write_file(key, tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"sha256": digest, "samples": len(samples), "bytes": size}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def json_bytes(doc) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def put_if_changed(store, key: str, data: bytes, existing: dict[str, int]) -> bool:
    """Write ``data`` at ``key`` unless the store already holds exactly these bytes (``existing``:
    key -> size from one listing); True when written. A rerun of a finished job changes no file."""
    if existing.get(key) == len(data) and store.read(key) == data:
        return False
    store.write(key, data)
    return True


class ShardWriterStage:
    """Ray stage: extracts clip bytes and writes one shard per input row, then its commit record.

    Reads: shard, folder, content (the plan's key of the shard's samples), samples_json (key,
    uri, clip, json, txt per sample). Adds: sha256, samples, bytes, failed_json (key -> error of
    clips that could not be extracted; they are left out of the shard), methods_json.
    Resources: resources.write (CPU tasks).
    """

    def __init__(self, *, output_uri: str, storage, timeout_s: float = 1800, memory_mb: float | None = None):
        self.output_uri, self.storage = output_uri, storage
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline.storage import open_store
        from pipeline.units import fault_point
        from stages.extract import extract_clip
        from stages.guard import GuardFailure, run_guarded

        store = open_store(self.output_uri, self.storage)
        out = []
        for row in batch.to_pylist():
            fault_point("write")
            samples, failed, methods = [], {}, {}
            for s in json.loads(row["samples_json"]):
                try:  # guarded like the analysis: one clip must not take the shard (or the job) down
                    mp4, methods[s["key"]] = run_guarded(
                        extract_clip, (s["uri"], s["clip"], self.storage),
                        timeout_s=self.timeout_s, memory_mb=self.memory_mb)
                except GuardFailure as err:
                    failed[s["key"]] = f"{err.reason}: {err.message.splitlines()[0]}"
                    continue
                samples.append({"__key__": s["key"], "mp4": mp4,
                                "json": json.dumps(s["json"], sort_keys=True).encode(), "txt": s["txt"].encode()})
            info = write_tar(store, f"{row['folder']}/{row['shard']}", samples)
            record = {"shard": row["shard"], "content": row["content"], **info,
                      "failed_json": json.dumps(failed, sort_keys=True),
                      "methods_json": json.dumps(methods, sort_keys=True)}
            store.write(f"{COMMITS}/{row['folder']}/{row['shard']}.json", json_bytes(record))  # the commit
            out.append(record)
        return pa.Table.from_pylist(out, schema=SHARD_RESULT)


SHARD_RESULT = pa.schema([("shard", pa.string()), ("content", pa.string()), ("sha256", pa.string()),
                          ("samples", pa.int64()), ("bytes", pa.int64()), ("failed_json", pa.string()),
                          ("methods_json", pa.string())])
