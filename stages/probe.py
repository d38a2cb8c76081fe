"""Probe: container and stream metadata without decoding, with bounds from the job spec.

Reads: uri. Adds: container, codec, width, height, fps, duration_s. Raises Rejected with a
reason from stages.base.VIDEO_REASONS for files that cannot or must not be analysed.
Runs inside the analyze task (CPU).
"""

from __future__ import annotations


from stages.base import Rejected


def open_video(path: str, limits, storage=None) -> tuple:
    """Open ``path`` (a local path or an s3:// URI read with ranged GETs; ``storage``: spec.storage)
    with PyAV and check it against ``limits`` (spec.probe).

    Returns (container, stream, meta). The caller closes the container.
    """
    import av

    from stages.inputs import input_size, is_s3, open_input

    size = input_size(path, storage)
    if size is None:
        raise Rejected("not_found", path)
    if size < 0:  # FIFOs, devices, directories: nothing a decoder should wait on
        raise Rejected("not_a_file", f"{path} is not a regular file")
    if size == 0:
        raise Rejected("empty_file", "0 bytes")
    if size > limits.max_file_mb * 1e6:
        raise Rejected("file_too_large", f"{size} bytes > probe.max_file_mb={limits.max_file_mb}")
    options = {"format_whitelist": ",".join(limits.formats)}
    if not is_s3(path):  # S3 objects arrive as bytes through our reader: no protocol is opened at all
        options["protocol_whitelist"] = "file"
    try:
        container = av.open(open_input(path, storage, size), options=options)
    except MemoryError:  # FFmpeg's ENOMEM too: the guard reports memory_limit
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        cut = box_truncation(path, storage, size)
        raise Rejected("truncated", f"{cut} ({err})") if cut else Rejected(sniff_reason(path, storage), str(err)) from None
    try:
        meta = stream_metadata(container, limits)
    except Rejected as rej:
        container.close()
        cut = box_truncation(path, storage, size) if rej.reason in _MAYBE_CUT else None
        if cut:  # what the demuxer saw of a file cut short: say that it is cut short
            raise Rejected("truncated", f"{cut} ({rej.reason}: {rej.message})") from None
        raise
    except Exception:
        container.close()
        raise
    return container, container.streams.video[0], meta


# Reasons the metadata check gives a file whose index or first frames are cut off.
_MAYBE_CUT = ("no_video_stream", "unsupported_codec", "resolution_out_of_bounds")
# ISO base media files (MP4, MOV, 3GP, M4V...): the box types that can open one.
_ISO_FIRST = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


def box_truncation(path: str, storage=None, size: int | None = None, max_boxes: int = 4096) -> str | None:
    """For an ISO base media file (MP4/MOV) whose top-level boxes run past the end of the file,
    why it is truncated (which box is cut off, how many bytes it declares and holds, and whether
    the index box ``moov`` was ever reached); None for other files and for whole ones. Reads
    only the top-level box headers (a few bytes each, ranged reads on S3)."""
    from stages.inputs import input_size

    try:
        size = size if size is not None else input_size(path, storage)
        with _input_file(path, storage, size) as f:
            offset, seen = 0, []
            while offset < size and len(seen) < max_boxes:
                f.seek(offset)
                head = f.read(16)
                if len(head) < 8:
                    return None if not seen else (f"the file ends inside the header of a box after "
                                                  f"{b'/'.join(seen).decode('latin-1')}")
                length, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if not seen and kind not in _ISO_FIRST:
                    return None  # not an ISO base media file
                if not all(32 <= c < 127 for c in kind):
                    return None  # not a box header: damaged, not cut off
                if length == 1:
                    if len(head) < 16:
                        return f"the file ends inside the header of its '{kind.decode()}' box"
                    length = int.from_bytes(head[8:16], "big")
                elif length == 0:  # the last box runs to the end of the file
                    return None
                if length < 8:
                    return None
                seen.append(kind)
                if offset + length > size:
                    index = "" if b"moov" in seen else "; its index ('moov') is missing"
                    return (f"the file ends inside its '{kind.decode()}' box, which declares {length} bytes "
                            f"and holds {size - offset}{index}")
                offset += length
    except Exception:  # unreadable here: the other checks decide
        return None
    return None


def stream_metadata(container, limits) -> dict:
    if not container.streams.video:
        raise Rejected("no_video_stream", f"streams: {[s.type for s in container.streams]}")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.name:
        raise _no_decoder(container, stream)
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


def _no_decoder(container, stream) -> Rejected:
    """Why the video stream has no decoder. A file cut off before its first frame's data names no
    codec where the codec is given in each frame (FLV, right after a frame's tag header): that
    file is truncated; a stream whose packets carry data the decoders do not know is unsupported."""
    if _ends_before_data(container, stream):
        return Rejected("truncated", "the file ends before the data of the video stream's first frame, "
                        "so its codec is unknown")
    return Rejected("unsupported_codec", "no decoder for the video stream")


def _ends_before_data(container, stream, max_packets: int = 64) -> bool:
    """Whether demuxing reaches the end of the file before a packet of ``stream`` holding data;
    looks at ``max_packets`` packets at most (a stream with other packets first is not cut off)."""
    import av

    try:
        for seen, packet in enumerate(container.demux()):
            if (packet.stream.index == stream.index and packet.size) or seen >= max_packets:
                return False
    except av.error.FFmpegError:  # damaged, not cut off
        return False
    return True


# Text indirections FFmpeg could follow to other files (playlists, concat lists, manifests).
_INDIRECTIONS = (b"#EXTM3U", b"ffconcat", b"[playlist]", b"<?xml", b"<MPD", b"<smil", b"#EXT")


def _input_file(path: str, storage=None, size: int | None = None):
    """The input opened for reading bytes: a local file, or a seekable reader over an S3 object."""
    from stages.inputs import open_input

    source = open_input(path, storage, size)
    return open(source, "rb") if isinstance(source, str) else source


def sniff_reason(path: str, storage=None) -> str:
    """Why a file did not open: a playlist or other indirection is unsupported_format."""
    try:
        with _input_file(path, storage) as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except Exception:
        return "not_a_video"
    return "unsupported_format" if head.startswith(_INDIRECTIONS) else "not_a_video"


def probe_file(path: str, limits, storage=None) -> dict:
    """Metadata of one input, or {"status": "rejected", "reason", "message"}; meant to run guarded."""
    try:
        container, _, meta = open_video(path, limits, storage)
        container.close()
        return {"status": "ok", **meta}
    except Rejected as rej:
        return {"status": "rejected", "reason": rej.reason, "message": rej.message}
