"""Subtitles: parsing, sources (manifest, sidecar, embedded stream) and per-clip speech."""

from __future__ import annotations

import numpy as np

from pipeline.spec import parse_spec
from stages.analyze import analysis_job
from stages.subtitles import parse_subtitles, sidecar, speech_between
from tests.media import encode, patterns

SRT = """1
00:00:00,500 --> 00:00:01,800
Hello <i>there</i>!

2
00:00:02,000 --> 00:00:03,500
Ride down
the trail.

3
00:00:05,000 --> 00:00:06,000
Ride down the trail.
"""

VTT = """WEBVTT

intro
00:00.500 --> 00:01.800 align:start
Hello &amp; welcome

01:02:03.250 --> 01:02:04.000
<v Narrator>Late line</v>
"""


def test_parse_srt_and_vtt():
    assert parse_subtitles(SRT) == [(0.5, 1.8, "Hello there!"), (2.0, 3.5, "Ride down the trail."),
                                    (5.0, 6.0, "Ride down the trail.")]
    assert parse_subtitles(VTT) == [(0.5, 1.8, "Hello & welcome"), (3723.25, 3724.0, "Late line")]
    cues = parse_subtitles(SRT)
    assert speech_between(cues, 1.0, 2.5) == "Hello there! Ride down the trail."
    assert speech_between(cues, 2.5, 6.0) == "Ride down the trail."  # a repeated line once
    assert speech_between(cues, 3.6, 4.9) is None


def _video(path, n=100):
    """A cut at 2 s (frame 50) between two test patterns."""
    return encode(path, n, picture=patterns(every=50))


SPEC = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}, "probe": {"guard": False},
                   "shots": {"min_clip_s": 0.5}})


def test_sidecar_subtitles_become_clip_speech(tmp_path):
    path = _video(tmp_path / "talk.mp4")
    (tmp_path / "talk.en.srt").write_text(SRT)
    assert sidecar(str(path)) == tmp_path / "talk.en.srt"
    result = analysis_job({"uri": str(path), "video_id": "v", "size_bytes": 1}, SPEC)
    assert result["meta"]["subtitles"] == "sidecar"
    speech = [(c["start_frame"], c["speech"]) for c in result["clips"]]
    assert speech == [(0, "Hello there!"), (50, "Ride down the trail.")]  # the cut is at 2.0 s


def test_sidecars_are_found_in_a_folder_listed_once_per_change(tmp_path):
    videos = [tmp_path / f"v{i}.mp4" for i in range(3)]
    for v in videos:
        v.write_bytes(b"")
    (tmp_path / "v1.srt").write_text(SRT)
    (tmp_path / "v2.de.vtt").write_text(SRT)
    assert [sidecar(str(v)) for v in videos] == [None, tmp_path / "v1.srt", tmp_path / "v2.de.vtt"]
    import os

    (tmp_path / "v0.en.srt").write_text(SRT)  # a file added later is seen (the folder changed)
    os.utime(tmp_path, ns=(0, os.stat(tmp_path).st_mtime_ns + 1))
    assert sidecar(str(videos[0])) == tmp_path / "v0.en.srt"


def test_sidecar_names_match_whole_stems_with_dots(tmp_path):
    for name in ("v1.mp4", "v10.srt", "take.2.mp4", "take.2.fr.srt", "take.20.srt", "x.mp4", "x.vtt", "x.en.srt"):
        (tmp_path / name).write_text(SRT if name.endswith((".srt", ".vtt")) else "")
    assert sidecar(str(tmp_path / "v1.mp4")) is None  # v10.srt is another video's
    assert sidecar(str(tmp_path / "take.2.mp4")) == tmp_path / "take.2.fr.srt"
    assert sidecar(str(tmp_path / "x.mp4")) == tmp_path / "x.vtt"  # the exact name before a language suffix


def test_embedded_subtitle_stream(tmp_path):
    srt = tmp_path / "s.srt"
    srt.write_text(SRT)
    muxed = encode(tmp_path / "muxed.mkv", 100, subtitles=srt,
                   picture=lambda i: np.full((90, 160, 3), 60 if i < 50 else 200, np.uint8))
    spec = SPEC.model_copy(update={"scores": SPEC.scores})
    result = analysis_job({"uri": str(muxed), "video_id": "v", "size_bytes": 1}, spec)
    assert result["meta"]["subtitles"] == "embedded"
    assert "Hello there!" in result["clips"][0]["speech"]


def test_manifest_subtitles_win_and_bad_files_cost_only_the_speech(tmp_path):
    path = _video(tmp_path / "a.mp4")
    (tmp_path / "a.srt").write_text(SRT)
    other = tmp_path / "other.vtt"
    other.write_text(VTT)
    result = analysis_job({"uri": str(path), "video_id": "v", "size_bytes": 1, "subtitles": str(other)}, SPEC)
    assert result["meta"]["subtitles"] == "manifest" and result["clips"][0]["speech"] == "Hello & welcome"
    missing = analysis_job({"uri": str(path), "video_id": "v", "size_bytes": 1, "subtitles": str(tmp_path / "no.srt")},
                           SPEC)
    assert missing["status"] == "ok" and "subtitles not read" in missing["message"]
    assert all(c["speech"] is None for c in missing["clips"])
