"""Versioned pyarrow schemas of every output table (and the in-flight clip row).

Tables are written with exactly these schemas; nothing is inferred from data.
Bump SCHEMA_VERSION on any change a reader could notice.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.scores import score_fields

SCHEMA_VERSION = "6"

VIDEO_STATUS = ("ok", "rejected", "error")
CLIP_STATUS = ("kept", "rejected")
CAPTION_LEVELS = ("window", "clip", "chapter", "video")
CHAPTER_SOURCES = ("metadata", "description", "automatic")
PARSE_STATUS = ("ok", "repaired", "failed")
BOUNDARY_TYPES = ("cut", "dissolve", "fade", "wipe", "gradual")


def _list(t: pa.DataType) -> pa.DataType:
    """A list type whose item field is named as Parquet names it, so tables round-trip exactly."""
    return pa.list_(pa.field("element", t))


def _versioned(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"vidcurate.table": name, "vidcurate.schema_version": SCHEMA_VERSION})


VIDEOS = _versioned("videos", [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("message", pa.string()),
    pa.field("container", pa.string()),
    pa.field("codec", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("fps", pa.float64()),
    pa.field("rotation", pa.int32()),
    pa.field("subtitles", pa.string()),  # where speech came from: manifest, sidecar, embedded, asr, or null
    pa.field("duration_s", pa.float64()),
    # container time of the first decoded frame: every start_s and end_s counts from it
    pa.field("start_time_s", pa.float64()),
    pa.field("num_frames", pa.int64()),
    # Shot boundaries: a cut at start_frame == end_frame (the first frame of the new shot); a
    # gradual transition spans [start_frame, end_frame], frames no clip contains.
    pa.field("boundaries", _list(pa.struct([pa.field("type", pa.string()), pa.field("start_frame", pa.int64()),
                                            pa.field("end_frame", pa.int64()), pa.field("start_s", pa.float64()),
                                            pa.field("end_s", pa.float64())]))),
    # chapter marks the container carries (MP4/MKV chapters), before snapping to shots
    pa.field("chapter_marks", _list(pa.struct([pa.field("start_s", pa.float64()), pa.field("title", pa.string())]))),
    pa.field("num_clips", pa.int32()),
    pa.field("num_clips_kept", pa.int32()),
    pa.field("caption_id", pa.string()),
])

CLIPS = _versioned("clips", [
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("index", pa.int32(), nullable=False),
    pa.field("start_frame", pa.int64(), nullable=False),
    pa.field("end_frame", pa.int64(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    # every declared score and its provenance (schemas.scores): analysis, CLIP, aesthetics, text
    *score_fields(),
    pa.field("clip_reject_sim", pa.float32()),
    pa.field("embedding", _list(pa.float32())),
    pa.field("clip_model", pa.string()),
    pa.field("camera_motion", pa.string()),
    pa.field("speech", pa.string()),  # subtitle text during the clip (manifest, sidecar or embedded)
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("chapter_id", pa.string()),
    pa.field("caption_id", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("key", pa.string()),
    pa.field("extract_method", pa.string()),
])

CAPTIONS = _versioned("captions", [
    pa.field("caption_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("clip_id", pa.string()),
    pa.field("chapter_id", pa.string()),
    pa.field("level", pa.string(), nullable=False),
    pa.field("parent_id", pa.string()),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    # structured clip captions (caption.format json); null elsewhere. camera_motion here is what
    # the model says; clips.camera_motion is what the optical flow measured.
    pa.field("subjects", _list(pa.string())),
    pa.field("actions", _list(pa.string())),
    pa.field("setting", pa.string()),
    pa.field("camera_motion", pa.string()),
    pa.field("shot_type", pa.string()),
    pa.field("style", pa.string()),
    pa.field("parse_status", pa.string()),
    pa.field("entities", _list(pa.string())),  # shared entity names in this clip/window caption
    # events the model placed in time, absolute seconds, clamped into the caption's span, non-decreasing
    pa.field("events", _list(pa.struct([pa.field("start_s", pa.float64()), pa.field("text", pa.string())]))),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("generation", pa.string(), nullable=False),
    # the reason its clip was dropped when the caption itself dropped it (caption_mismatch: the
    # caption is kept, for inspection and re-captioning); null for every caption of kept clips
    pa.field("dropped", pa.string()),
])

CHAPTERS = _versioned("chapters", [
    pa.field("chapter_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("index", pa.int32(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("summary", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("clip_ids", _list(pa.string()), nullable=False),
    pa.field("caption_id", pa.string()),
])

TABLES = {"videos": VIDEOS, "clips": CLIPS, "captions": CAPTIONS, "chapters": CHAPTERS}

# In-flight clip rows between Ray stages: the clips columns plus the sampled frames (small
# JPEGs) and the clip caption produced by the caption stage.
CLIP_WORK = pa.schema(list(CLIPS) + [
    pa.field("frames", _list(pa.binary())),
    pa.field("keyframe_aligned", pa.bool_()),
    pa.field("pts_timing", pa.bool_()),
    # windows of a clip longer than caption.window_s: the temporally dense caption layer
    pa.field("windows", _list(pa.struct([
        pa.field("start_frame", pa.int64()), pa.field("end_frame", pa.int64()),
        pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64()),
        pa.field("frames", _list(pa.binary())), pa.field("speech", pa.string()),
        pa.field("caption_text", pa.string()), pa.field("caption_fields", pa.string()),
        pa.field("caption_parse_status", pa.string())]))),
    pa.field("caption_text", pa.string()),
    pa.field("caption_fields", pa.string()),
    pa.field("caption_parse_status", pa.string()),
    pa.field("caption_model", pa.string()),
    pa.field("caption_prompt_version", pa.string()),
    pa.field("caption_generation", pa.string()),
])


def table(name: str, rows: list[dict]) -> pa.Table:
    """Build an output table from row dicts with its declared schema (missing keys -> null)."""
    schema = TABLES[name]
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def work_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in CLIP_WORK} for r in rows], schema=CLIP_WORK)
