"""Writers: deterministic WebDataset shards and Parquet tables, each committed by rename.

Shards: ``shard-{n:06d}.tar`` with members sorted by key, then extension; fixed mtime, uid,
gid and mode, so the same samples always give the same bytes. Sample keys are clip ids
(hex, no dots), checked here so a member name can never escape or split a key.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

KEY = re.compile(r"^[0-9a-z_-]+$")
EXT_ORDER = {"json": 0, "mp4": 1, "txt": 2}


def shard_name(n: int) -> str:
    return f"shard-{n:06d}.tar"


def _atomic_write(path: Path, data_writer) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        data_writer(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> dict:
    """Write samples ({"__key__": key, ext: bytes, ...}) to ``path``; return name, sha256, counts."""
    members = []
    for sample in samples:
        key = sample["__key__"]
        if not KEY.match(key):
            raise ValueError(f"unsafe sample key {key!r}")
        for ext, data in sample.items():
            if ext != "__key__":
                members.append((key, EXT_ORDER.get(ext, 9), ext, data))
    members.sort(key=lambda m: (m[0], m[1], m[2]))

    def writer(f):
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, _, ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))

    _atomic_write(path, writer)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"shard": path.name, "sha256": digest, "samples": len(samples), "bytes": path.stat().st_size}


def write_parquet(path: Path, table: pa.Table) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))
    return {"path": str(path), "rows": table.num_rows, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def write_json(path: Path, doc) -> None:
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


class ShardWriterStage:
    """Ray stage: extracts clip bytes and writes one shard per input row.

    Reads: shard, out_dir, samples_json (key, uri, start_s, end_s, json, txt per sample).
    Adds: sha256, samples, bytes, failed_json (key -> error of clips that could not be
    extracted; they are left out of the shard). Resources: resources.write (CPU tasks).
    """

    def __init__(self, *, timeout_s: float = 1800, memory_mb: float | None = None):
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    def __call__(self, batch: pa.Table) -> pa.Table:
        from stages.extract import extract_clip
        from stages.guard import GuardFailure, run_guarded

        out = []
        for row in batch.to_pylist():
            samples, failed, methods = [], {}, {}
            for s in json.loads(row["samples_json"]):
                try:  # guarded like the analysis: one clip must not take the shard (or the job) down
                    mp4, methods[s["key"]] = run_guarded(
                        extract_clip, (s["uri"], s["clip"]),
                        timeout_s=self.timeout_s, memory_mb=self.memory_mb)
                except GuardFailure as err:
                    failed[s["key"]] = f"{err.reason}: {err.message.splitlines()[0]}"
                    continue
                samples.append({"__key__": s["key"], "mp4": mp4,
                                "json": json.dumps(s["json"], sort_keys=True).encode(), "txt": s["txt"].encode()})
            info = write_tar(Path(row["out_dir"]) / row["shard"], samples)
            out.append({"shard": row["shard"], "sha256": info["sha256"], "samples": info["samples"],
                        "bytes": info["bytes"], "failed_json": json.dumps(failed, sort_keys=True),
                        "methods_json": json.dumps(methods, sort_keys=True)})
        return pa.Table.from_pylist(out, schema=SHARD_RESULT)


SHARD_RESULT = pa.schema([("shard", pa.string()), ("sha256", pa.string()), ("samples", pa.int64()),
                          ("bytes", pa.int64()), ("failed_json", pa.string()), ("methods_json", pa.string())])
