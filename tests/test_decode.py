"""Decode sources of the analysis pass: GOP chunks decoded in parallel feed the analysis exactly
what one decoder does; open GOPs fall back; errors and early exits are handled."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import av
import numpy as np
import pytest

from pipeline.spec import parse_spec
from stages.analyze import _decode_pass, decode_pass
from stages.decode import ChunkedSource, ChunkMismatch, SequentialSource
from tests.media import encode


def _encode(path, options: dict, n: int = 150):
    """Moving texture with two hard cuts and a fade, B-frames, a keyframe every 12 frames."""
    rng = np.random.default_rng(1)
    canvases = [rng.integers(0, 255, (200, 600, 3), dtype=np.uint8) for _ in range(3)]

    def picture(i):
        img = canvases[i // 50][40:148, 3 * (i % 50):3 * (i % 50) + 192]
        return (img * (abs(127 - i) / 8.0)).clip(0, 255).astype(np.uint8) if 120 <= i < 135 else img

    return str(encode(path, n, (192, 108), picture=picture, stream_options={"g": "12", "bf": "3", **options}))


def _spec(path):
    return parse_spec({"inputs": {"paths": [path]}, "output": {"uri": "unused"}})


def _same(a, b):
    (meta_a, an_a), (meta_b, an_b) = a, b
    assert meta_a == meta_b
    assert list(an_a["times"]) == list(an_b["times"])
    assert an_a["cuts"] == an_b["cuts"] and an_a["boundaries"] == an_b["boundaries"]
    assert an_a["keyframes"] == an_b["keyframes"]
    assert an_a["signals"].keys() == an_b["signals"].keys()
    for name in an_a["signals"]:
        np.testing.assert_array_equal(an_a["signals"][name], an_b["signals"][name], err_msg=name)
    assert list(an_a["thumbs"].index) == list(an_b["thumbs"].index)
    assert [an_a["thumbs"].get(k) for k in range(len(an_a["thumbs"]))] == \
        [an_b["thumbs"].get(k) for k in range(len(an_b["thumbs"]))]


@pytest.mark.parametrize("workers", [2, 3])
def test_chunked_decode_feeds_the_analysis_what_one_decoder_does(tmp_path, workers):
    path = _encode(tmp_path / "closed.mp4", {"x264-params": "scenecut=0"})
    sequential = _decode_pass(path, _spec(path), 1)
    chunked = _decode_pass(path, _spec(path), workers)  # raises ChunkMismatch if it could not chunk
    _same(chunked, sequential)
    assert chunked[0]["num_frames"] == 150 and len(chunked[1]["keyframes"]) == 13
    assert chunked[1]["cuts"]  # the comparison covers real boundaries, not an empty list


def test_open_gops_are_detected_and_decoded_again_by_one_decoder(tmp_path):
    path = _encode(tmp_path / "open.mp4", {"x264-params": "open-gop=1:scenecut=0"})
    with pytest.raises(ChunkMismatch, match="packets decoded to"):
        _decode_pass(path, _spec(path), 2)
    spec = parse_spec({"inputs": {"paths": [path]}, "output": {"uri": "unused"},
                       "analysis": {"decode_workers": 2}})
    _same(decode_pass(path, spec), _decode_pass(path, spec, 1))


class _Packets:
    """A demuxer of fake packets, every ``key``-th a keyframe; raises after ``fail_after``."""

    def __init__(self, n, key=4, fail_after=None):
        self.n, self.key, self.fail_after = n, key, fail_after

    def demux(self, stream):
        for i in range(self.n):
            if i == self.fail_after:
                raise av.error.InvalidDataError(1094995529, "demux boom")
            yield SimpleNamespace(size=1, is_keyframe=i % self.key == 0, pts=i)
        yield SimpleNamespace(size=0, is_keyframe=False, pts=None)


class _Decoder:
    """One frame per packet, shown in packet order; raises on packet ``fail_on``; drops ``drop``."""

    def __init__(self, fail_on=None, drop=None):
        self.fail_on, self.drop = fail_on, drop

    def decode(self, packet):
        if packet is None:
            return []
        if packet.pts == self.fail_on:
            raise av.error.InvalidDataError(1094995529, "decode boom")
        return [] if packet.pts == self.drop else [SimpleNamespace(pts=packet.pts)]

    def flush_buffers(self):
        pass


def _prepare():
    return lambda frame, index: (index, frame.pts)


def _collect(source):
    got = []
    try:
        for item in source:
            got.append(item)
    finally:
        source.close()
    return got


def test_chunks_come_back_in_order():
    got = _collect(ChunkedSource(_Packets(50), None, [_Decoder(), _Decoder(), _Decoder()], _prepare,
                                 min_chunk=3, batch=2))
    assert got == [(i, i) for i in range(50)]


@pytest.mark.parametrize("demux_fail, decode_fail", [(None, 21), (21, None)])
def test_errors_reach_the_consumer_where_they_happened(demux_fail, decode_fail):
    source = ChunkedSource(_Packets(50, fail_after=demux_fail), None, [_Decoder(fail_on=decode_fail), _Decoder(fail_on=decode_fail)],
                           _prepare, min_chunk=4, batch=3)
    got = []
    with pytest.raises(av.error.InvalidDataError, match="boom"):
        for item in source:
            got.append(item)
    source.close()
    assert got == [(i, i) for i in range(21)]  # every frame before packet 21


def test_a_chunk_that_loses_a_frame_is_a_mismatch():
    source = ChunkedSource(_Packets(40), None, [_Decoder(drop=9), _Decoder(drop=9)], _prepare, min_chunk=4)
    with pytest.raises(ChunkMismatch, match="chunk 2: 4 packets decoded to 3 frames"):
        _collect(source)


def test_sources_stop_when_the_consumer_leaves(tmp_path):
    path = _encode(tmp_path / "v.mp4", {}, n=60)
    before = set(threading.enumerate())
    with av.open(path) as c, av.open(path) as m, av.open(path) as d1, av.open(path) as d2:
        for source in (SequentialSource(c, c.streams.video[0], _prepare, depth=2),
                       ChunkedSource(m, m.streams.video[0], [d1.streams.video[0].codec_context,
                                                             d2.streams.video[0].codec_context],
                                     _prepare, min_chunk=12, depth=4, batch=2)):
            for k, _ in enumerate(source):
                if k == 2:
                    break
            source.close()
    assert set(threading.enumerate()) == before


def test_sequential_source_raises_in_the_consumer():
    class Broken:
        def decode(self, stream):
            yield SimpleNamespace(pts=0)
            raise av.error.InvalidDataError(1094995529, "boom")

    source = SequentialSource(Broken(), None, _prepare)
    got = []
    with pytest.raises(av.error.InvalidDataError):
        for item in source:
            got.append(item)
    source.close()
    assert got == [(0, 0)]


def test_decoder_settings_leave_the_fingerprints_alone():
    def fingerprints(**analysis):
        return parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}, "analysis": analysis}).fingerprints()

    assert fingerprints(decode_workers=1) == fingerprints(decode_workers=3, decoder_threads=2) == fingerprints()
    assert fingerprints(flow_width=96) != fingerprints()
