"""Discover inputs: paths, globs and manifest files -> sorted, de-duplicated input rows."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from pipeline.spec import SpecError
from stages.base import video_id


EXTRA_COLUMNS = ("description", "subtitles")


def _manifest_rows(path: str) -> list[dict]:
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
    elif suffix in (".csv", ".tsv"):
        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix in (".jsonl", ".json"):
        table = pjson.read_json(path)
    else:
        raise SpecError(f"inputs.manifest: unsupported manifest type {suffix!r} (parquet, csv, tsv, jsonl)")
    if "uri" not in table.column_names:
        raise SpecError(f"inputs.manifest: {path} has no 'uri' column (columns: {table.column_names})")
    base = Path(path).parent
    rows = []
    for r in table.select([c for c in ("uri",) + EXTRA_COLUMNS if c in table.column_names]).to_pylist():
        if not r["uri"]:
            continue
        r["uri"] = r["uri"] if os.path.isabs(r["uri"]) else str(base / r["uri"])
        if r.get("subtitles") and not os.path.isabs(r["subtitles"]):
            r["subtitles"] = str(base / r["subtitles"])
        rows.append(r)
    return rows


def discover(inputs) -> list[dict]:
    """Input rows {uri, video_id, size_bytes} (plus description / subtitles from a manifest); a
    missing file still yields a row (it is rejected later)."""
    uris: list[str] = []
    extra: dict[str, dict] = {}
    for pattern in inputs.paths:
        for match in sorted(glob.glob(pattern)) or [pattern]:
            if os.path.isdir(match):  # a directory: every file below it
                uris.extend(str(p) for p in sorted(Path(match).rglob("*")) if p.is_file())
            else:
                uris.append(match)
    if inputs.manifest:
        for r in _manifest_rows(inputs.manifest):
            uris.append(r["uri"])
            extra[os.path.abspath(r["uri"])] = {k: r[k] for k in EXTRA_COLUMNS if r.get(k)}
    rows, seen = [], set()
    for uri in uris:
        uri = os.path.abspath(uri)
        if uri in seen:
            continue
        seen.add(uri)
        size = os.path.getsize(uri) if os.path.isfile(uri) else -1
        rows.append({"uri": uri, "video_id": video_id(uri, size), "size_bytes": size, **extra.get(uri, {})})
    return sorted(rows, key=lambda r: r["uri"])
