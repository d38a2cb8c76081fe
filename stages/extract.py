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


def _first_frame_time(container, stream) -> float:
    for frame in container.decode(stream):
        return float(frame.time) if frame.time is not None else 0.0
    return 0.0


def copy_clip(path: str, start_s: float, end_s: float, frames: int) -> bytes | None:
    """The clip's packets copied into a new MP4 without decoding, or None when that cannot be
    exact: the clip must start on a keyframe, every copied packet must lie inside the clip (a
    closed GOP), the count must match ``frames``, and the video must need no rotation."""
    import av

    with av.open(path, options={"protocol_whitelist": "file"}) as src:
        stream = src.streams.video[0]
        first = next(src.decode(stream), None)
        if first is None or first.time is None or quarter_turns(first.rotation):
            return None
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        half = 0.5 / float(rate)
        lo, hi = first.time + start_s - half, first.time + end_s - half
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
                    if t >= hi or t > lo + 2 * half:  # no keyframe at the clip's first frame
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


def extract_clip(path: str, start_s: float, end_s: float, frames: int | None = None,
                 copy: bool = False) -> tuple[bytes, str]:
    """(MP4 bytes, "copy" or "encode"): packets copied when ``copy`` (the clip starts and ends
    on keyframes) and the copy is exact, else the clip's own frames re-encoded."""
    import av

    if copy and frames:
        try:
            data = copy_clip(path, start_s, end_s, frames)
        except (av.error.FFmpegError, ValueError):
            data = None
        if data is not None:
            return data, "copy"
    return encode_clip(path, start_s, end_s), "encode"


def encode_clip(path: str, start_s: float, end_s: float, *, crf: int = 20, preset: str = "veryfast") -> bytes:
    import av

    src = av.open(path, options={"protocol_whitelist": "file"})
    try:
        stream = src.streams.video[0]
        t0 = _first_frame_time(src, stream)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        half = 0.5 / float(rate)
        lo, hi = t0 + start_s - half, t0 + end_s - half
        try:
            src.seek(int(max(0.0, lo) / stream.time_base), stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:  # not seekable (raw elementary streams): decode from the start
            src.close()
            src = av.open(path, options={"protocol_whitelist": "file"})
            stream = src.streams.video[0]
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as dst:
            out = dst.add_stream("libx264", rate=rate)
            out.width = stream.codec_context.width // 2 * 2
            out.height = stream.codec_context.height // 2 * 2
            turns = None
            out.pix_fmt = "yuv420p"
            # No B-frames: with them libx264 gave different bytes for the same frames across runs.
            out.options = {"crf": str(crf), "preset": preset, "bf": "0"}
            out.codec_context.flags |= av.codec.context.Flags.bitexact
            n = 0
            for i, frame in enumerate(src.decode(stream)):
                # frames without PTS (raw streams) are timed by their index, as in the analysis pass
                t = float(frame.time) if frame.time is not None else t0 + i / float(rate)
                if t < lo:
                    continue
                if t >= hi:
                    break
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
        if n == 0:
            raise ValueError(f"no frames in [{start_s:.3f}, {end_s:.3f}) of {path}")
        return buf.getvalue()
    finally:
        src.close()
