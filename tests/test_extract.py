"""extract_clips (all clips of one video from one opened container) against extract_clip (each
clip on its own), on real footage and PyAV-encoded files, with the real decoder and encoder."""

from __future__ import annotations

import io

import av
import pytest

from pipeline.demo import footage_dir
from stages import extract
from stages.extract import extract_clip, extract_clips
from tests.media import encode

BIKES = str(footage_dir() / "bikes.mp4")  # 250 frames at 25 fps, B-frames, keyframes at these frames:
BIKES_KEYFRAMES = [0, 30, 76, 137, 187, 242]
# Widths here are multiples of 128 px: at other widths libx264's macroblock-tree rate control
# reads uninitialised memory (the bytes of a re-encode then depend on the process's heap), which
# would make byte comparisons between two calls flaky for reasons outside this module.


def clip(a: int, b: int, *, aligned: bool = False, pts: bool = True, fps: int = 25) -> dict:
    return {"start_s": a / fps, "end_s": b / fps, "start_frame": a, "end_frame": b,
            "keyframe_aligned": aligned, "pts_timing": pts}


def one_by_one(path: str, clips: list[dict]) -> list[tuple]:
    """What extract_clips must return, from extract_clip called clip by clip."""
    out = []
    for c in clips:
        try:
            out.append(("ok", *extract_clip(path, c)))
        except Exception as err:
            out.append(("error", f"exception: {type(err).__name__}: {err}".splitlines()[0], None))
    return out


def frame_count(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture
def opens(monkeypatch):
    """Counts the containers opened and the first frames decoded."""
    counts = {"open": 0, "first": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(extract, "open_container", counted("open", extract.open_container))
    monkeypatch.setattr(extract, "_first_frame", counted("first", extract._first_frame))
    return counts


def test_clips_of_real_footage_are_byte_identical_to_one_by_one(opens):
    k = BIKES_KEYFRAMES
    clips = [clip(k[3], k[4], aligned=True),  # copies, out of order (the container seeks back)
             clip(k[1], k[2], aligned=True),
             clip(40, 60),                     # re-encodes, overlapping each other and the copies
             clip(k[5], 250, aligned=True),    # the last shot, up to the end
             clip(50, 90),
             clip(0, k[1], aligned=True),
             clip(35, 60, aligned=True),       # flagged aligned but no keyframe at 35: re-encoded
             clip(k[1], k[2], aligned=True),   # the same clip again
             clip(200, 240)]
    got = extract_clips(BIKES, clips)
    assert opens == {"open": 1, "first": 1}  # one container, one first frame, for nine clips
    assert [m for _, _, m in got] == ["copy", "copy", "encode", "copy", "encode", "copy", "encode", "copy", "encode"]
    assert got == one_by_one(BIKES, clips)
    assert got[1] == got[7]
    for (status, data, _), c in zip(got, clips):
        assert status == "ok" and frame_count(data) == c["end_frame"] - c["start_frame"]


def test_a_failing_clip_leaves_the_others():
    clips = [clip(76, 137, aligned=True),
             {**clip(240, 250), "end_s": 11.0, "end_frame": 275},  # ends 25 frames after the video
             {**clip(30, 76, aligned=True), "end_frame": 77},      # the analysis counted 47 frames
             clip(100, 120)]
    got = extract_clips(BIKES, clips)
    assert [(s, m) for s, _, m in got] == [("ok", "copy"), ("error", None), ("error", None), ("ok", "encode")]
    assert got[1][1] == "exception: ValueError: 10 frames in [9.600, 11.000) of " + BIKES + ", expected 35"
    assert got[2][1].startswith("exception: ValueError: 46 frames in [1.200, 3.040)")
    assert got[2][1].endswith("expected 47")
    assert got == one_by_one(BIKES, clips)


def test_unreadable_source_gives_one_error_per_clip(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    got = extract_clips(str(bad), [clip(0, 10), clip(0, 10, aligned=True)])
    assert [(s, m) for s, _, m in got] == [("error", None)] * 2
    assert all(msg.startswith("exception: InvalidDataError") for _, msg, _ in got)
    assert extract_clips(str(bad), []) == []


def test_matroska_container_is_reused(tmp_path, opens):
    path = str(encode(tmp_path / "gop20.mkv", 100, size=(256, 144),
                      stream_options={"g": "20", "keyint_min": "20", "sc_threshold": "0"}))
    clips = [clip(60, 80, aligned=True), clip(20, 40, aligned=True), clip(45, 70), clip(5, 38)]
    got = extract_clips(path, clips)
    assert opens["open"] == 1
    assert [m for _, _, m in got] == ["copy", "copy", "encode", "encode"]
    assert got == one_by_one(path, clips)


def test_rotated_video_is_reencoded_upright_like_one_by_one(tmp_path):
    path = str(encode(tmp_path / "rot90.mp4", 60, size=(144, 256), rotation=90,
                      stream_options={"g": "20", "keyint_min": "20", "sc_threshold": "0"}))
    clips = [clip(20, 40, aligned=True), clip(5, 30)]  # on keyframes, but a copy would not be upright
    got = extract_clips(path, clips)
    assert [m for _, _, m in got] == ["encode", "encode"]
    assert got == one_by_one(path, clips)
    with av.open(io.BytesIO(got[0][1])) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (256, 144)


def test_clips_cut_by_frame_index_and_raw_streams_fall_back_to_one_by_one(tmp_path, opens):
    mp4 = str(encode(tmp_path / "v.mp4", 80, size=(256, 144)))
    clips = [clip(10, 30, pts=False), clip(40, 60), clip(50, 70, pts=False)]  # by index: decoded from the start
    got = extract_clips(mp4, clips)
    assert opens["open"] == 1 + 2 + 2  # the reused container, and two per clip cut by index
    assert got == one_by_one(mp4, clips) and [s for s, _, _ in got] == ["ok"] * 3
    # a by-index clip has the same frames as the same clip cut by time
    assert got[2][1] == extract_clip(mp4, clip(50, 70))[0]

    raw = str(encode(tmp_path / "raw.h264", 80, size=(256, 144), fmt="h264"))  # no index, no PTS
    clips = [clip(40, 60), clip(0, 80, aligned=True), clip(10, 30)]
    got = extract_clips(raw, clips)
    assert [(s, m) for s, _, m in got] == [("ok", "encode")] * 3
    assert got == one_by_one(raw, clips)


def test_guarded_call_per_video_returns_the_same_bytes():
    from stages.guard import run_guarded

    clips = [clip(137, 187, aligned=True), clip(150, 170)]
    got = run_guarded(extract_clips, (BIKES, clips, None), timeout_s=120, memory_mb=None)
    assert got == extract_clips(BIKES, clips)


def decoded(data: bytes) -> list[tuple[float, bytes]]:
    with av.open(io.BytesIO(data)) as c:
        return [(f.time, f.to_ndarray().tobytes()) for f in c.decode(video=0)]


def test_smart_cut_reencodes_only_the_head_and_copies_the_rest_exactly():
    source = [pixels for _, pixels in decoded(open(BIKES, "rb").read())]
    clips = [clip(40, 187),                      # head 40..75 re-encoded, 76..186 copied (two GOPs)
             clip(30, 76, aligned=True),         # a plain copy still
             clip(40, 70),                       # no keyframe inside: re-encoded
             clip(40, 100),                      # does not end on a keyframe: re-encoded
             clip(200, 250)]                     # head 200..241, the last GOP copied to the end
    got = extract_clips(BIKES, clips, smart_cut=True)
    assert [m for _, _, m in got] == ["smart", "copy", "encode", "encode", "smart"]
    assert got == [("ok", *extract_clip(BIKES, c, smart_cut=True)) for c in clips]
    assert got[1:4] == extract_clips(BIKES, clips[1:4])  # the other methods' bytes do not change
    for (_, data, _), c, k in ((got[0], clips[0], 76), (got[4], clips[4], 242)):
        frames = decoded(data)
        a, b = c["start_frame"], c["end_frame"]
        assert [round(t, 4) for t, _ in frames] == [round(i / 25, 4) for i in range(b - a)]
        assert [p for _, p in frames[k - a:]] == source[k:b]  # the copied frames are the source's
        assert [p for _, p in frames[:k - a]] != source[a:k]  # the head is re-encoded (lossy)
    with av.open(io.BytesIO(got[0][1])) as c:  # every keyframe carries its parameter sets:
        s = c.streams.video[0]                 # decoding may start at any, after either part
        for t, index in ((3.88, 137), (0.0, None), (2.0, 90)):
            c.seek(int(t / s.time_base), stream=s, backward=True)
            frame = next(f for f in c.decode(s) if f.time >= t - 1e-4)
            assert round(frame.time, 4) == t
            assert index is None or frame.to_ndarray().tobytes() == source[index]


def test_smart_cut_is_refused_where_a_copy_cannot_be_upright(tmp_path):
    path = str(encode(tmp_path / "rot90.mp4", 60, size=(144, 256), rotation=90,
                      stream_options={"g": "20", "keyint_min": "20", "sc_threshold": "0"}))
    clips = [clip(10, 40), clip(5, 60)]
    got = extract_clips(path, clips, smart_cut=True)
    assert [m for _, _, m in got] == ["encode", "encode"]
    assert got == extract_clips(path, clips)


def test_smart_cut_head_is_tagged_with_the_sources_colours(tmp_path):
    tags = "colorprim=bt709:transfer=bt709:colormatrix=bt709"
    path = str(encode(tmp_path / "bt709.mp4", 60, size=(256, 144),
                      stream_options={"g": "20", "keyint_min": "20", "sc_threshold": "0", "x264-params": tags}))
    data, method = extract_clip(path, clip(10, 40), smart_cut=True)
    assert method == "smart"
    with av.open(io.BytesIO(data)) as c:
        colours = [(f.colorspace, f.color_primaries, f.color_trc) for f in c.decode(video=0)]
    assert len(colours) == 30 and set(colours) == {(1, 1, 1)}  # BT.709 (1) in the head and the copied tail
