"""Extract: the bytes of one clip as a standalone MP4, by seeking (no full decode).

When the clip starts and ends on keyframes (encoders put keyframes at scene cuts, so shot
boundaries often are) its packets are copied as they are: no quality loss, almost no CPU.
Otherwise the clip's frames [start_s, end_s) (seconds from the first frame) are re-encoded
upright (display rotation applied) with libx264 using bit-exact flags and no B-frames, so the
same input gives the same bytes. Audio is not copied. Runs inside the shard writer tasks
(CPU), under the guard.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

from stages.frames import quarter_turns, rotate


EPS = 1e-4  # clip times are exact frame times from the analysis pass; this only absorbs rounding


def _first_frame(container, stream):
    """The first decoded frame (its time is the clip times' origin), or None."""
    return next(container.decode(stream), None)


def open_container(path: str, storage):
    """A PyAV container over a local file or an S3 object (read with ranged GETs)."""
    import av

    from pipeline.storage import is_s3, open_input

    return av.open(open_input(path, storage), options={} if is_s3(path) else {"protocol_whitelist": "file"})


def copy_clip(path: str, start_s: float, end_s: float, frames: int, storage=None) -> bytes | None:
    """The clip's packets copied into a new MP4 without decoding, or None when that cannot be
    exact: the clip must start on a keyframe, every copied packet must lie inside the clip (a
    closed GOP), the count must match ``frames``, and the video must need no rotation."""
    import av

    with open_container(path, storage) as src:
        stream = src.streams.video[0]
        first = _first_frame(src, stream)
        if first is None or first.time is None or quarter_turns(first.rotation):
            return None
        start = first.time + start_s
        lo, hi = start - EPS, first.time + end_s - EPS
        tb = stream.time_base
        try:
            src.seek(int(max(0.0, lo) / tb), stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            return None
        buf = io.BytesIO()
        count, base = 0, None
        with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as dst:
            out = dst.add_stream_from_template(stream)
            for packet in src.demux(stream):
                if packet.pts is None or packet.dts is None:
                    continue
                t = float(packet.pts * tb)
                if base is None:
                    if not packet.is_keyframe or t < lo:
                        continue
                    if abs(t - start) > EPS:  # no keyframe at the clip's first frame
                        return None
                    base = packet.pts
                elif packet.is_keyframe and t >= hi:
                    break
                if not lo <= t < hi:  # a packet shown outside the clip: open GOP, must re-encode
                    return None
                packet.pts, packet.dts = packet.pts - base, packet.dts - base
                packet.stream = out
                dst.mux(packet)
                count += 1
        return buf.getvalue() if count == frames else None


def extract_clip(path: str, clip: dict, storage=None) -> tuple[bytes, str]:
    """(MP4 bytes, "copy" or "encode") of ``clip`` (start_s, end_s, start_frame, end_frame,
    keyframe_aligned, pts_timing): packets copied when the clip starts and ends on keyframes
    and the copy is exact, else the clip's own frames re-encoded. Videos whose analysis timed
    frames by the frame rate (missing or disordered PTS) are cut by frame index instead."""
    import av

    frames = clip["end_frame"] - clip["start_frame"]
    if clip.get("keyframe_aligned") and clip.get("pts_timing", True):
        try:
            data = copy_clip(path, clip["start_s"], clip["end_s"], frames, storage)
        except (av.error.FFmpegError, ValueError):
            data = None
        if data is not None:
            return data, "copy"
    by_index = None if clip.get("pts_timing", True) else (clip["start_frame"], clip["end_frame"])
    return encode_clip(path, clip["start_s"], clip["end_s"], frame_range=by_index, expect=frames,
                       storage=storage), "encode"


def encode_clip(path: str, start_s: float, end_s: float, *, frame_range: tuple[int, int] | None = None,
                expect: int | None = None, crf: int = 20, preset: str = "veryfast", storage=None) -> bytes:
    """The frames [start_s, end_s) (exact frame times from the analysis pass) re-encoded; with
    ``frame_range`` the frames of those indices, decoding from the start. ``expect``: the frame
    count the clip must have, checked."""
    import av

    src = open_container(path, storage)
    try:
        stream = src.streams.video[0]
        first = _first_frame(src, stream)
        t0 = float(first.time) if first is not None and first.time is not None else 0.0
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        lo, hi = t0 + start_s - EPS, t0 + end_s - EPS
        try:
            src.seek(int(max(0.0, lo) / stream.time_base), stream=stream, backward=True, any_frame=False)
            reopen = frame_range is not None  # cut by frame index: count frames from the start
        except av.error.FFmpegError:  # not seekable (raw elementary streams): decode from the start
            reopen = True
        if reopen:
            src.close()
            src = open_container(path, storage)
            stream = src.streams.video[0]
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as dst:
            out = dst.add_stream("libx264", rate=rate)
            out.width = stream.codec_context.width // 2 * 2
            out.height = stream.codec_context.height // 2 * 2
            turns = None
            out.pix_fmt = "yuv420p"
            # No B-frames: with them libx264 gave different bytes for the same frames across runs.
            # One thread: libx264's output depends on its thread count, which would otherwise
            # follow the machine's core count and make shard bytes differ between node types.
            out.options = {"crf": str(crf), "preset": preset, "bf": "0", "threads": "1"}
            out.codec_context.flags |= av.codec.context.Flags.bitexact
            n = 0
            for i, frame in enumerate(src.decode(stream)):
                if frame_range is not None:
                    inside, past = frame_range[0] <= i < frame_range[1], i >= frame_range[1]
                else:  # frames without PTS (raw streams) are timed by index, as in the analysis pass
                    t = float(frame.time) if frame.time is not None else t0 + i / float(rate)
                    inside, past = lo <= t < hi, t >= hi
                if past:
                    break
                if not inside:
                    continue
                if turns is None:  # clips are stored upright: the display rotation is applied
                    turns = quarter_turns(frame.rotation)
                    if turns % 2:
                        out.width, out.height = out.height, out.width
                if turns:
                    rgb = rotate(frame.to_ndarray(format="rgb24"), turns)
                    img = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                    img = img.reformat(width=out.width, height=out.height, format="yuv420p")
                else:
                    img = frame.reformat(width=out.width, height=out.height, format="yuv420p")
                img.pts, img.time_base = n, Fraction(1) / rate
                img.pict_type = av.video.frame.PictureType.NONE  # let the encoder choose, not the source
                dst.mux(out.encode(img))
                n += 1
            dst.mux(out.encode(None))
        if n == 0 or (expect is not None and n != expect):
            raise ValueError(f"{n} frames in [{start_s:.3f}, {end_s:.3f}) of {path}, expected {expect}")
        return buf.getvalue()
    finally:
        src.close()
