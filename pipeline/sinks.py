"""Byte formats of the outputs: deterministic WebDataset tars, Parquet and JSON.

Shards have members sorted by key, then extension, with fixed mtime, uid, gid and mode, so
the same samples always give the same bytes. Sample keys are clip ids (hex, no dots), checked
here so a member name can never escape or split a key. Each file is written atomically (staged,
then renamed, or uploaded in one PUT or a completed multipart upload); the partition writer
(pipeline.writer) commits a partition's files with one record.
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


TIME_DIGITS = 6  # seconds in sample JSON: microseconds, so 1.6 reads 1.6, not 1.5999999999999996


def rounded_times(doc):
    """``doc`` with every float under a key ending in ``_s`` (a time in seconds) rounded to
    microseconds; scores and other numbers untouched."""
    if isinstance(doc, dict):
        return {k: round(v, TIME_DIGITS) if k.endswith("_s") and isinstance(v, float) else rounded_times(v)
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [rounded_times(v) for v in doc]
    return doc


def sample_json(doc: dict) -> bytes:
    """A shard sample's ``.json`` member: keys sorted, times rounded to microseconds."""
    return json.dumps(rounded_times(doc), sort_keys=True).encode()


def put_if_changed(store, key: str, data: bytes, existing: dict[str, int]) -> bool:
    """Write ``data`` at ``key`` unless the store already holds exactly these bytes (``existing``:
    key -> size from one listing); True when written. A rerun of a finished job changes no file."""
    if existing.get(key) == len(data) and store.read(key) == data:
        return False
    store.write(key, data)
    return True
