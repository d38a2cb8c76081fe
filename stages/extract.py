"""Extract: the bytes of one clip as a standalone H.264 MP4, by seeking (no full decode).

The clip's frames [start_s, end_s) (seconds from the first frame) are re-encoded upright
(display rotation applied) with libx264 using bit-exact flags and no B-frames, so the same
input gives the same bytes. Audio is not copied. Runs inside the shard writer tasks (CPU),
under the guard.
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


def extract_clip(path: str, start_s: float, end_s: float, *, crf: int = 20, preset: str = "veryfast") -> bytes:
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
