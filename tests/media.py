"""Test media made with PyAV: one encoder for every test that needs a video (or audio) file."""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

from pipeline.demo import _pattern

Picture = Callable[[int], np.ndarray]  # frame index -> RGB uint8 array, height x width x 3


def patterns(size=(160, 90), every: int = 25, kinds=(0, 1, 2)) -> Picture:
    """pipeline.demo's moving patterns: frame i shows kind ``kinds[(i // every) % len(kinds)]``,
    so there is a hard cut every ``every`` frames."""
    w, h = size
    return lambda i: _pattern(kinds[(i // every) % len(kinds)], i, h, w)


def encode(path, frames: int = 50, size=(160, 90), *, picture: Picture | None = None, codec="libx264",
           pix_fmt="yuv420p", fmt=None, options=None, stream_options=None, rate=25, pts=None, time_base=None,
           flags=None, rotation=None, audio: int = 0, subtitles=None) -> Path:
    """Encode ``frames`` pictures of ``size`` (width, height) into ``path``; returns ``path``.

    picture: frame index -> RGB picture of ``size``; ``patterns(size)`` when not given.
    codec, pix_fmt, rate (frames per second), flags (codec context flags: interlacing).
    fmt: the container when the file name does not say (``"h264"``: a raw stream, no index).
    options: the muxer's (``movflags``); stream_options: the encoder's (``g``: GOP length,
    ``bf``: B-frames, ``sc_threshold``, ``x264-params``, ``crf``, ``preset``).
    pts: timestamps in ``time_base``, one per frame (variable frame rate); else frame i is at i / rate.
    rotation: a display rotation in degrees, as metadata; the pictures are stored as drawn.
    audio: that many 1024-sample frames of silent 16 kHz mono AAC after the video;
    ``frames=0`` writes no video stream.
    subtitles: a subtitle file (SRT, VTT) whose cues are muxed in as a subtitle stream.
    """
    w, h = size
    picture = picture or patterns(size)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(av.open(str(subtitles))) if subtitles is not None else None
        out = stack.enter_context(av.open(str(path), "w", format=fmt, options=options or {}))
        if frames:
            video = out.add_stream(codec, rate=rate)
            video.width, video.height, video.pix_fmt = w, h, pix_fmt
            if time_base is not None:
                video.time_base = video.codec_context.time_base = time_base
            video.options = dict(stream_options or {})
            if flags is not None:
                video.codec_context.flags |= flags
            if rotation:
                video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000) if audio else None
        text = out.add_stream_from_template(source.streams.subtitles[0]) if source is not None else None
        for i in range(frames):
            img = picture(i)
            assert img.shape == (h, w, 3), f"frame {i} is {img.shape}, the stream is {w}x{h}"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = (pts[i], time_base) if pts is not None else (i, 1 / Fraction(rate))
            out.mux(video.encode(frame))
        if frames:
            out.mux(video.encode(None))
        for _ in range(audio):
            silence = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            silence.sample_rate = 16000
            out.mux(sound.encode(silence))
        if audio:
            out.mux(sound.encode(None))
        if source is not None:
            for packet in source.demux(source.streams.subtitles[0]):
                if packet.size:
                    packet.stream = text
                    out.mux(packet)
    return Path(path)
