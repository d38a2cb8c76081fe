"""A corpus of bad and unusual inputs, made with PyAV and byte surgery, with the status and
reason each must end with. Used by the guard tests and the end-to-end corpus test."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.demo import _pattern
from tests.media import encode


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _corrupt(src: Path, dst: Path) -> Path:
    """Overwrite most of the media data with noise, keeping the container's index intact."""
    data = bytearray(src.read_bytes())
    start, end = data.find(b"mdat") + 8, data.find(b"moov")
    assert 0 < start < end, "expects an mp4 with the index after the media data"
    rng = np.random.default_rng(1)
    for offset in range(start + 2000, end - 800, 1500):
        data[offset:offset + 700] = rng.bytes(700)
    dst.write_bytes(bytes(data))
    return dst


def _cut_after_first_frame_header(src: Path, dst: Path) -> Path:
    """Keep an FLV file up to the end of its first video tag's header: the frame's data, where FLV
    names the codec, is cut off."""
    data = src.read_bytes()
    assert data[:3] == b"FLV", "expects an FLV file"
    offset = int.from_bytes(data[5:9], "big") + 4  # the file header, then the first tag's back-pointer
    while data[offset] != 9:  # 9: a video tag; skip the others (script data: onMetaData)
        offset += 11 + int.from_bytes(data[offset + 1:offset + 4], "big") + 4
    dst.write_bytes(data[:offset + 11])
    return dst


def decode_check_files(root: Path) -> dict[str, tuple[str, str | None]]:
    """The corpus files whose status a look at the metadata alone got wrong (cut off at 50%,
    corrupted packets mid-file, cut right after the first frame's header) and a good one: write
    them into ``root``; return file name -> (expected status, expected reason)."""
    root.mkdir(parents=True, exist_ok=True)
    expect = {"truncated_index_front.mp4": ("rejected", "truncated"),
              "corrupted_packets.mp4": ("rejected", "corrupt_stream"),
              "cut_after_frame_header.flv": ("rejected", "truncated"), "good.mp4": ("ok", None)}
    front = encode(root / "_front.mp4", 200, options={"movflags": "faststart"})
    _cut(front, root / "truncated_index_front.mp4", 0.5)
    _corrupt(encode(root / "_clean.mp4", 200), root / "corrupted_packets.mp4")
    _cut_after_first_frame_header(encode(root / "_flv.flv", 50, codec="flv"), root / "cut_after_frame_header.flv")
    encode(root / "good.mp4", 50)
    for made in ("_front.mp4", "_clean.mp4", "_flv.flv"):
        (root / made).unlink()
    return expect


def build_corpus(root: Path) -> dict[str, tuple[str, str | None]]:
    """Write the corpus into ``root``; return file name -> (expected status, expected reason)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, tuple[str, str | None]] = {}

    def add(name: str, status: str, reason: str | None = None) -> Path:
        expect[name] = (status, reason)
        return root / name

    add("empty.mp4", "rejected", "empty_file").write_bytes(b"")
    add("random_bytes.mp4", "rejected", "not_a_video").write_bytes(np.random.default_rng(0).bytes(40_000))
    add("text_renamed.mp4", "rejected", "not_a_video").write_text("not a video\n" * 100)
    Image.fromarray(_pattern(0, 0, 90, 160)).save(root / "png.png")
    os.replace(root / "png.png", add("image_renamed.mp4", "rejected", "not_a_video"))
    Image.fromarray(_pattern(1, 0, 90, 160)).save(root / "gif.gif")
    os.replace(root / "gif.gif", add("gif_renamed.mp4", "rejected", "not_a_video"))
    encode(add("audio_only.m4a", "rejected", "no_video_stream"), 0, audio=20)
    expect.update(decode_check_files(root))
    tail = encode(root / "_tail.mp4", 200)
    _cut(tail, add("truncated_index_end.mp4", "rejected", "truncated"), 0.5)
    tail.unlink()
    front = encode(root / "_front_index.mp4", 50, options={"movflags": "faststart"}).read_bytes()
    add("truncated_inside_index.mp4", "rejected", "truncated").write_bytes(front[:front.find(b"moov") + 300])
    (root / "_front_index.mp4").unlink()
    encode(add("raw_stream.h264", "ok"), 60, fmt="h264")
    encode(add("tiny_16x16.mp4", "rejected", "resolution_out_of_bounds"), 10, size=(16, 16))
    encode(add("wide_8448x64.mp4", "rejected", "resolution_out_of_bounds"), 2, size=(8448, 64))
    encode(add("bomb_6144x6144.mp4", "rejected", "resolution_out_of_bounds"), 1, size=(6144, 6144),
           stream_options={"preset": "ultrafast"})
    encode(add("ten_bit.mp4", "ok"), 60, pix_fmt="yuv420p10le")
    interlaced = av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
    encode(add("interlaced.mpg", "ok"), 60, codec="mpeg2video", flags=interlaced)
    vfr = [int(i * 40 + (i % 3) * 15) for i in range(75)]
    encode(add("vfr.mkv", "ok"), 75, pts=vfr, time_base=Fraction(1, 1000))
    encode(add("odd_175x143.mkv", "ok"), 40, size=(175, 143), codec="mpeg4")
    encode(add("rotated_90.mp4", "ok"), 40, size=(90, 160), rotation=90)
    encode(add("mpegts.ts", "ok"), 60, fmt="mpegts")
    encode(add("long_12s.mp4", "rejected", "too_long"), 300)
    (root / "playlist.m3u8").write_text(f"#EXTM3U\n#EXTINF:2,\n{root / 'mpegts.ts'}\n#EXT-X-ENDLIST\n")
    expect["playlist.m3u8"] = ("rejected", "unsupported_format")
    (root / "concat.txt").write_text(f"ffconcat version 1.0\nfile '{root / 'mpegts.ts'}'\n")
    expect["concat.txt"] = ("rejected", "unsupported_format")
    os.mkfifo(add("never_opens.mp4", "rejected", "not_a_file"))  # a FIFO: open() would wait forever
    os.symlink("/dev/zero", add("endless_device.mp4", "rejected", "not_a_file"))
    return expect


# Spec overrides the corpus expectations assume.
CORPUS_SPEC = ["probe.max_duration_s=8", "probe.timeout_s=60", "shots.min_clip_s=0.5"]
