"""Extract: the bytes of one clip as a standalone MP4, by seeking (no full decode).

When the clip starts and ends on keyframes (encoders put keyframes at scene cuts, so shot
boundaries often are) its packets are copied as they are: no quality loss, almost no CPU.
Otherwise the clip's frames [start_s, end_s) (seconds from the first frame) are re-encoded
upright (display rotation applied) with libx264 using bit-exact flags and no B-frames, so the
same input gives the same bytes. Audio is not copied. Runs inside the shard writer tasks
(CPU), under the guard.

``extract_clips`` cuts all clips of one video in one call (one guarded child per video, not per
clip): it opens the source once, decodes its first frame once and seeks the same container from
clip to clip. Each clip's bytes are those ``extract_clip`` gives for it alone: after a seek the
demuxer and the (flushed) decoder start from the same keyframe as on a freshly opened file.

With ``smart_cut`` (off by default) an H.264 clip that does not start on a keyframe has only its
head, up to the first IDR frame inside it, re-encoded; from there its packets are copied, each
copied keyframe carrying the source's parameter sets in-band (sample entry ``avc3``), so the tail
keeps the source's exact frames at the cost of a fraction of the encoding.
"""

from __future__ import annotations

import io
from fractions import Fraction
from functools import partial
from itertools import chain

import numpy as np

from stages.frames import quarter_turns, rotate


# What shapes the bytes of re-encoded clips (hashed into the output fingerprint): change it with
# any encoder setting, so that an output never mixes parts encoded two ways.
ENCODER = "libx264 crf20 veryfast bf0 threads1 mbtree0 yuv420p bitexact"
EPS = 1e-4  # clip times are exact frame times from the analysis pass; this only absorbs rounding
# Demuxers whose seek goes by the file's own index, so where it lands does not depend on what
# was read before: a reused container seeks exactly like a fresh one. Others are cut per clip.
INDEXED = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
START = b"\x00\x00\x00\x01"  # an Annex B start code


def _first_frame(container, stream):
    """The first decoded frame (its time is the clip times' origin), or None."""
    return next(container.decode(stream), None)


def open_container(path: str, storage):
    """A PyAV container over a local file or an S3 object (read with ranged GETs)."""
    import av

    from stages.inputs import is_s3, open_input

    return av.open(open_input(path, storage), options={} if is_s3(path) else {"protocol_whitelist": "file"})


class _Source:
    """An opened source video: container, video stream, and (unless ``first`` is False) the time
    of its first decoded frame (None without PTS) and that frame's display rotation."""

    def __init__(self, path: str, storage, *, first: bool = True):
        self.container = open_container(path, storage)
        try:
            self.stream = self.container.streams.video[0]
            frame = _first_frame(self.container, self.stream) if first else None
        except BaseException:
            self.container.close()
            raise
        self.time = frame.time if frame is not None else None
        self.turns = quarter_turns(frame.rotation) if frame is not None else 0

    @property
    def origin(self) -> float:
        """Where clip times count from: the first frame's time, 0 without PTS."""
        return float(self.time) if self.time is not None else 0.0

    def seek(self, t: float) -> bool:
        """Seek to the keyframe at or before ``t`` (seconds); False when the container cannot."""
        import av

        try:
            self.container.seek(int(max(0.0, t) / self.stream.time_base), stream=self.stream, backward=True,
                                any_frame=False)
        except av.error.FFmpegError:
            return False
        return True

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def copy_clip(path: str, start_s: float, end_s: float, frames: int, storage=None) -> bytes | None:
    """The clip's packets copied into a new MP4 without decoding, or None when that cannot be
    exact: the clip must start on a keyframe, every copied packet must lie inside the clip (a
    closed GOP), the count must match ``frames``, and the video must need no rotation."""
    return _on_fresh(path, storage, _copy, start_s, end_s, frames)


def _on_fresh(path: str, storage, fn, *args):
    """``fn(source, *args)`` on a freshly opened source, closed after."""
    with _Source(path, storage) as src:
        return fn(src, *args)


def _copy(src: _Source, start_s: float, end_s: float, frames: int) -> bytes | None:
    """copy_clip on an opened source (seeks it)."""
    import av

    if src.time is None or src.turns:
        return None
    start = src.time + start_s
    lo, hi = start - EPS, src.time + end_s - EPS
    stream, tb = src.stream, src.stream.time_base
    if not src.seek(lo):
        return None
    buf = io.BytesIO()
    count, base = 0, None
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as dst:
        out = dst.add_stream_from_template(stream)
        for packet in src.container.demux(stream):
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


def _smart(src: _Source, start_s: float, end_s: float, frames: int, crf: int = 20,
           preset: str = "veryfast") -> bytes | None:
    """The clip with its head re-encoded (as encode_clip does, on the source's timestamps) up
    to K, the first keyframe after its start, and its packets from K on copied; or None where
    that is not exact: an H.264 yuv420p source without rotation, K an IDR frame inside the clip,
    no frame of the head shown after K, and the copied part as copy_clip requires it (closed
    GOPs, ending on a keyframe or the end of the video). The result is decoded to check it."""
    import av

    stream, ctx = src.stream, src.stream.codec_context
    extra = bytes(ctx.extradata or b"")
    if (src.time is None or src.turns or ctx.name != "h264" or ctx.pix_fmt != "yuv420p" or ctx.width % 2
            or ctx.height % 2 or extra[:1] != b"\x01"):
        return None
    size, params = _avcc(extra)
    start = src.time + start_s
    lo, hi = start - EPS, src.time + end_s - EPS
    tb = stream.time_base
    if not src.seek(lo):
        return None
    packets = []  # compressed, from the keyframe before the clip to its end
    for packet in src.container.demux(stream):
        if packet.pts is not None:  # not the demuxer's flush packets at the end
            if packet.is_keyframe and float(packet.pts * tb) >= hi:
                break
            packets.append(packet)
    k = next((i for i, p in enumerate(packets) if p.is_keyframe and float(p.pts * tb) > start + EPS), None)
    if k is None or 5 not in _annexb(bytes(packets[k]), size)[1]:  # no IDR frame to copy from
        return None
    key, tail = packets[k], packets[k:]
    if len(tail) >= frames or any(p.dts is None or not key.pts <= p.pts < hi / tb for p in tail):
        return None  # an open GOP, the clip not ending on a keyframe, or no DTS to copy
    flush = av.Packet()
    flush.time_base = tb
    base, delay, n = None, key.pts - key.dts, 0  # the copied packets' dts run ``delay`` behind their pts

    def mux(packet, data: bytes, sets: bytes, pts: int, dts: int) -> None:
        """Every keyframe, re-encoded or copied, carries its own parameter sets, so decoding
        may start at any of them whichever part was decoded before."""
        new = av.Packet((sets if packet.is_keyframe else b"") + data)
        new.pts, new.dts, new.time_base, new.is_keyframe, new.stream = pts, dts, tb, packet.is_keyframe, out
        dst.mux(new)

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as dst:
        out = _x264(dst, stream, stream.average_rate or stream.guessed_rate or Fraction(25), crf, preset)
        out.time_base = out.codec_context.time_base = tb
        out.codec_context.codec_tag = "avc3"  # parameter sets in-band: those of the copied part differ
        for name in ("color_range", "colorspace", "color_primaries", "color_trc", "sample_aspect_ratio"):
            if getattr(ctx, name) is not None:  # shown like the copied part
                setattr(out.codec_context, name, getattr(ctx, name))
        for frame in chain((f for p in packets[:k] + [flush] for f in stream.decode(p)), [None]):  # None: drain
            if frame is not None:
                if frame.time is None or frame.time >= float(key.pts * tb):
                    return None  # a head frame shown after K
                if frame.time < lo:
                    continue
                base = frame.pts if base is None else base
                frame.pts, frame.time_base, n = frame.pts - base, tb, n + 1
                frame.pict_type = av.video.frame.PictureType.NONE
            for packet in out.encode(frame):  # libx264's packets are Annex B already
                mux(packet, bytes(packet), bytes(out.codec_context.extradata), packet.pts, packet.pts - delay)
        if base is None or n + len(tail) != frames:
            return None
        for packet in tail:
            mux(packet, _annexb(bytes(packet), size)[0], params, packet.pts - base, packet.dts - base)
    data = buf.getvalue()
    try:
        with av.open(io.BytesIO(data)) as check:
            times = [f.time for f in check.decode(video=0)]
    except av.error.FFmpegError:
        return None
    return data if len(times) == frames and None not in times and times == sorted(set(times)) else None


def _avcc(extra: bytes) -> tuple[int, bytes]:
    """(NAL length size, SPS and PPS as Annex B) of an avcC record."""
    try:
        size, sets, i = (extra[4] & 3) + 1, [], 5
        for mask in (0x1F, 0xFF):  # the SPS count, then the PPS count
            count, i = extra[i] & mask, i + 1
            for _ in range(count):
                n = int.from_bytes(extra[i:i + 2], "big")
                sets, i = sets + [START, extra[i + 2:i + 2 + n]], i + 2 + n
    except IndexError:
        i = len(extra) + 1
    if i > len(extra):
        raise ValueError("malformed avcC record")
    return size, b"".join(sets)


def _annexb(data: bytes, size: int) -> tuple[bytes, set[int]]:
    """Length-prefixed NAL units as Annex B (what the MP4 muxer takes next to libx264's
    packets), and their NAL unit types."""
    out, types, i = [], set(), 0
    while i < len(data):
        n = int.from_bytes(data[i:i + size], "big")
        if n == 0 or i + size + n > len(data):
            raise ValueError("malformed NAL unit lengths")
        out += [START, data[i + size:i + size + n]]
        types.add(data[i + size] & 0x1F)
        i += size + n
    return b"".join(out), types


def _cut(clip: dict, copy, encode, smart=None) -> tuple[bytes, str]:
    """extract_clip's choice between ``copy`` (copy_clip's arguments after the path), ``smart``
    (the same, or None: no smart cut) and ``encode`` (encode_clip's), shared by extract_clip and
    extract_clips."""
    import av

    frames = clip["end_frame"] - clip["start_frame"]
    timed = clip.get("pts_timing", True)
    for method, cut in (("copy", copy if clip.get("keyframe_aligned") else None), ("smart", smart)):
        if cut is not None and timed:
            try:
                data = cut(clip["start_s"], clip["end_s"], frames)
            except (av.error.FFmpegError, ValueError):
                data = None
            if data is not None:
                return data, method
    by_index = None if timed else (clip["start_frame"], clip["end_frame"])
    return encode(clip["start_s"], clip["end_s"], frame_range=by_index, expect=frames), "encode"


def extract_clip(path: str, clip: dict, storage=None, *, smart_cut: bool = False) -> tuple[bytes, str]:
    """(MP4 bytes, "copy", "smart" or "encode") of ``clip`` (start_s, end_s, start_frame,
    end_frame, keyframe_aligned, pts_timing): packets copied when the clip starts and ends on
    keyframes and the copy is exact, else (with ``smart_cut``, where exact) a smart cut, else the
    clip's own frames re-encoded. Videos whose analysis timed frames by the frame rate (missing
    or disordered PTS) are cut by frame index instead."""
    smart = partial(_on_fresh, path, storage, _smart) if smart_cut else None
    return _cut(clip, partial(copy_clip, path, storage=storage), partial(encode_clip, path, storage=storage), smart)


class _Reused:
    """extract_clips' source, opened on first use and reused by seeking. After any error it is
    closed (a container in an unknown state is never read again) and the next use opens a new
    one. Where reuse could differ from a fresh open (a demuxer outside INDEXED, no PTS, a seek
    that failed) ``reusable`` turns False and the clips go through extract_clip."""

    def __init__(self, path: str, storage):
        self.path, self.storage, self.src, self.reusable = path, storage, None, True

    def usable(self, clip: dict) -> bool:
        """Whether ``clip`` is cut from the reused container (clips cut by frame index are not:
        they decode from the start); opens it on first use."""
        if self.reusable and clip.get("pts_timing", True) and self.src is None:
            self.src = _Source(self.path, self.storage)
            if self.src.container.format.name not in INDEXED or self.src.time is None:
                self.reusable = False
                self.close()
        return self.reusable and clip.get("pts_timing", True)

    def _run(self, fn):
        if self.src is None:  # closed after an error earlier in this clip
            self.src = _Source(self.path, self.storage)
        try:
            return fn(self.src)
        except BaseException:
            self.close()
            raise

    def on(self, fn):
        """``fn(source, *args)`` as a function of ``*args``, on the reused source."""
        return lambda *args: self._run(lambda src: fn(src, *args))

    def encode(self, start_s: float, end_s: float, *, frame_range=None, expect: int | None = None) -> bytes:
        assert frame_range is None  # see usable

        def run(src):
            if not src.seek(src.origin + start_s - EPS):
                return None
            return _encode(src, src.origin, start_s, end_s, expect=expect, label=self.path)

        data = self._run(run)
        if data is None:  # the seek failed: this clip and the rest are cut on their own
            self.reusable = False
            self.close()
            data = encode_clip(self.path, start_s, end_s, expect=expect, storage=self.storage)
        return data

    def close(self) -> None:
        if self.src is not None:
            self.src, src = None, self.src
            src.close()


def extract_clips(path: str, clips: list[dict], storage=None, *,
                  smart_cut: bool = False) -> list[tuple[str, bytes | str, str | None]]:
    """All ``clips`` of the video at ``path`` (each as extract_clip takes it), in one call that
    opens the source once: per clip, in order, ("ok", MP4 bytes, method), byte for byte what
    extract_clip (with the same ``smart_cut``) gives, or ("error", reason, None) when that clip
    failed, the reason worded as the shard writer records guard failures ("exception:
    ValueError: ...", "memory_limit: ..."); one clip's failure does not touch the others. Meant
    to run as one guarded call per video."""
    out = []
    reused = _Reused(path, storage)
    try:
        for clip in clips:
            try:
                if reused.usable(clip):
                    smart = reused.on(_smart) if smart_cut else None
                    data, method = _cut(clip, reused.on(_copy), reused.encode, smart)
                else:
                    data, method = extract_clip(path, clip, storage, smart_cut=smart_cut)
                out.append(("ok", data, method))
            except Exception as err:
                reason = "memory_limit" if isinstance(err, MemoryError) else "exception"
                out.append(("error", f"{reason}: {type(err).__name__}: {err}".splitlines()[0], None))
    finally:
        reused.close()
    return out


def encode_clip(path: str, start_s: float, end_s: float, *, frame_range: tuple[int, int] | None = None,
                expect: int | None = None, crf: int = 20, preset: str = "veryfast", storage=None) -> bytes:
    """The frames [start_s, end_s) (exact frame times from the analysis pass) re-encoded; with
    ``frame_range`` the frames of those indices, decoding from the start. ``expect``: the frame
    count the clip must have, checked."""
    args = {"frame_range": frame_range, "expect": expect, "crf": crf, "preset": preset, "label": path}
    with _Source(path, storage) as src:
        t0 = src.origin
        if frame_range is None and src.seek(t0 + start_s - EPS):
            return _encode(src, t0, start_s, end_s, **args)
    # cut by frame index (frames counted from the start), or not seekable (raw elementary
    # streams): decode a fresh container from the start
    with _Source(path, storage, first=False) as src:
        return _encode(src, t0, start_s, end_s, **args)


def _x264(dst, stream, rate, crf: int, preset: str):
    """A libx264 stream in ``dst`` for the frames of ``stream``, set up for reproducible bytes."""
    import av

    out = dst.add_stream("libx264", rate=rate)
    out.width = stream.codec_context.width // 2 * 2
    out.height = stream.codec_context.height // 2 * 2
    out.pix_fmt = "yuv420p"
    # No B-frames: with them libx264 gave different bytes for the same frames across runs.
    # One thread: libx264's output depends on its thread count, which would otherwise
    # follow the machine's core count and make shard bytes differ between node types.
    # No macroblock-tree rate control: at widths whose macroblock count is not a multiple of 8
    # (176-432, 480, 720, 848, 960 px among those tried) it reads uninitialised memory, and the
    # bytes then depend on what the process allocated before.
    out.options = {"crf": str(crf), "preset": preset, "bf": "0", "threads": "1", "x264-params": "mbtree=0"}
    out.codec_context.flags |= av.codec.context.Flags.bitexact
    return out


def _encode(src: _Source, t0: float, start_s: float, end_s: float, *, frame_range: tuple[int, int] | None = None,
            expect: int | None = None, crf: int = 20, preset: str = "veryfast", label: str = "") -> bytes:
    """encode_clip from ``src`` as it stands (seeked, or at its start); ``t0``: the clip times' origin."""
    import av

    stream = src.stream
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    lo, hi = t0 + start_s - EPS, t0 + end_s - EPS
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as dst:
        out = _x264(dst, stream, rate, crf, preset)
        turns = None
        n = 0
        for i, frame in enumerate(src.container.decode(stream)):
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
        raise ValueError(f"{n} frames in [{start_s:.3f}, {end_s:.3f}) of {label}, expected {expect}")
    return buf.getvalue()
