"""Probe: container and stream metadata without decoding, with bounds from the job spec.

Reads: uri. Adds: container, codec, width, height, fps, duration_s. Raises Rejected with a
reason from stages.base.VIDEO_REASONS for files that cannot or must not be analysed.
Runs inside the analyze task (CPU).
"""

from __future__ import annotations

import os

from stages.base import Rejected


def open_video(path: str, limits) -> tuple:
    """Open ``path`` with PyAV and check it against ``limits`` (spec.probe).

    Returns (container, stream, meta). The caller closes the container.
    """
    import av

    if not os.path.exists(path):
        raise Rejected("not_found", path)
    if not os.path.isfile(path):  # FIFOs, devices, directories: nothing a decoder should wait on
        raise Rejected("not_a_file", f"{path} is not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise Rejected("empty_file", "0 bytes")
    if size > limits.max_file_mb * 1e6:
        raise Rejected("file_too_large", f"{size} bytes > probe.max_file_mb={limits.max_file_mb}")
    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(limits.formats)}
    try:
        container = av.open(path, options=options)
    except MemoryError:  # FFmpeg's ENOMEM too: the guard reports memory_limit
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise Rejected(sniff_reason(path), str(err)) from None
    try:
        meta = stream_metadata(container, limits)
    except Exception:
        container.close()
        raise
    return container, container.streams.video[0], meta


def stream_metadata(container, limits) -> dict:
    if not container.streams.video:
        raise Rejected("no_video_stream", f"streams: {[s.type for s in container.streams]}")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.name:
        raise Rejected("unsupported_codec", "no decoder for the video stream")
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise Rejected("resolution_out_of_bounds", f"{width}x{height} outside "
                       f"[probe.min_side={limits.min_side}, probe.max_side={limits.max_side}]")
    if width * height > limits.max_pixels:
        raise Rejected("resolution_out_of_bounds", f"{width}x{height} > probe.max_pixels={limits.max_pixels}")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        # The container's duration covers every stream (audio may run longer): only trusted
        # for the video when the video is the only stream.
        duration = container.duration / 1e6
    if duration is not None and duration > limits.max_duration_s:
        raise Rejected("too_long", f"{duration:.1f}s > probe.max_duration_s={limits.max_duration_s}")
    from stages.marks import container_marks

    return {
        "chapter_marks": container_marks(container),
        "container": container.format.name,
        "codec": ctx.name,
        "width": width,
        "height": height,
        "fps": fps,
        "duration_s": duration,
    }



# Text indirections FFmpeg could follow to other files (playlists, concat lists, manifests).
_INDIRECTIONS = (b"#EXTM3U", b"ffconcat", b"[playlist]", b"<?xml", b"<MPD", b"<smil", b"#EXT")


def sniff_reason(path: str) -> str:
    """Why a file did not open: a playlist or other indirection is unsupported_format."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return "not_a_video"
    return "unsupported_format" if head.startswith(_INDIRECTIONS) else "not_a_video"


def probe_file(path: str, limits) -> dict:
    """Metadata of one input, or {"status": "rejected", "reason", "message"}; meant to run guarded."""
    try:
        container, _, meta = open_video(path, limits)
        container.close()
        return {"status": "ok", **meta}
    except Rejected as rej:
        return {"status": "rejected", "reason": rej.reason, "message": rej.message}
