"""Discover inputs: local paths, globs, directories, s3:// prefixes and manifest files -> sorted,
de-duplicated input rows."""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
from pathlib import Path

from pipeline.spec import SpecError
from pipeline.storage import is_s3, read_input_bytes, s3_client, split_s3
from stages.base import stable_id, video_id

EXTRA_COLUMNS = ("description", "subtitles")
SIDECARS = (".srt", ".vtt")  # subtitle files beside videos: read with their video, not inputs themselves
_GLOB = set("*?[")


def _manifest_rows(path: str, storage) -> list[dict]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    suffix = Path(path).suffix.lower()
    try:
        data = pa.BufferReader(read_input_bytes(path, storage))
    except Exception as err:
        raise SpecError(f"inputs.manifest: cannot read {path}: {err}") from None
    if suffix == ".parquet":
        table = pq.read_table(data)
    elif suffix in (".csv", ".tsv"):
        table = pcsv.read_csv(data, parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix in (".jsonl", ".json"):
        table = pjson.read_json(data)
    else:
        raise SpecError(f"inputs.manifest: unsupported manifest type {suffix!r} (parquet, csv, tsv, jsonl)")
    if "uri" not in table.column_names:
        raise SpecError(f"inputs.manifest: {path} has no 'uri' column (columns: {table.column_names})")
    rows = []
    for r in table.select([c for c in ("uri",) + EXTRA_COLUMNS if c in table.column_names]).to_pylist():
        if not r["uri"]:
            continue
        r["uri"] = _relative_to(path, r["uri"])
        if r.get("subtitles"):
            r["subtitles"] = _relative_to(path, r["subtitles"])
        rows.append(r)
    return rows


def _relative_to(manifest: str, uri: str) -> str:
    """A manifest's relative entries are relative to the manifest's folder (or S3 prefix)."""
    if is_s3(uri) or os.path.isabs(uri):
        return uri
    if is_s3(manifest):
        return posixpath.join(posixpath.dirname(manifest), uri)
    return os.path.abspath(os.path.join(os.path.dirname(manifest), uri))


def _s3_objects(index: int, pattern: str, storage) -> list[tuple[str, int, str]]:
    """(uri, size, etag) of the objects a pattern names: one key, every key under a prefix, or the
    keys matching a glob (listed from the prefix before its first wildcard)."""
    bucket, key = split_s3(pattern)
    wild = next((i for i, ch in enumerate(key) if ch in _GLOB), None)
    prefix = key if wild is None else key[:wild]
    client = s3_client(storage)
    found = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if k.endswith("/"):
                    continue
                if wild is None:
                    if k != key and (not k.startswith(key.rstrip("/") + "/") or k.lower().endswith(SIDECARS)):
                        continue
                elif not fnmatch.fnmatchcase(k, key):
                    continue
                found.append((f"s3://{bucket}/{k}", int(obj["Size"]), obj.get("ETag", "").strip('"')))
    except Exception as err:
        raise SpecError(f"inputs.paths[{index}]: cannot list {pattern}: {err}") from None
    if not found:
        raise SpecError(f"inputs.paths[{index}]: nothing matches {pattern!r}")
    return sorted(found)


def unit_id(row: dict) -> str:
    """The name of one input's committed work: the video plus what came with it in a manifest."""
    return stable_id("unit", row["video_id"], row.get("subtitles") or "", row.get("description") or "")


def discover(inputs, storage=None) -> list[dict]:
    """Input rows {uri, video_id, size_bytes, unit_id} (plus description / subtitles from a
    manifest); a missing file still yields a row (it is rejected later). S3 objects are
    identified by their URI, size and ETag; local files by their absolute path and size."""
    found: dict[str, tuple[int, str]] = {}
    order: list[str] = []

    def add(uri: str, size: int, tag: str) -> None:
        if uri not in found:
            found[uri] = (size, tag)
            order.append(uri)

    for i, pattern in enumerate(inputs.paths):
        if is_s3(pattern):
            for uri, size, etag in _s3_objects(i, pattern, storage):
                add(uri, size, f"{size}:{etag}")
            continue
        for match in sorted(glob.glob(pattern)) or [pattern]:
            paths = sorted(p for p in Path(match).rglob("*") if p.is_file() and p.suffix.lower() not in SIDECARS) \
                if os.path.isdir(match) else [match]
            for p in paths:
                uri = os.path.abspath(p)
                size = os.path.getsize(uri) if os.path.isfile(uri) else -1
                add(uri, size, str(size))
    extra: dict[str, dict] = {}
    if inputs.manifest:
        for r in _manifest_rows(inputs.manifest, storage):
            uri = r["uri"]
            if is_s3(uri):
                from pipeline.storage import input_size

                size = input_size(uri, storage)
                add(uri, -1 if size is None else size, f"{size}")
            else:
                size = os.path.getsize(uri) if os.path.isfile(uri) else -1
                add(uri, size, str(size))
            extra[uri] = {k: r[k] for k in EXTRA_COLUMNS if r.get(k)}
    rows = []
    for uri in order:
        size, tag = found[uri]
        row = {"uri": uri, "video_id": video_id(uri, tag), "size_bytes": size, **extra.get(uri, {})}
        row["unit_id"] = unit_id(row)
        rows.append(row)
    return sorted(rows, key=lambda r: r["uri"])

