"""Speech transcription: window arithmetic, offsets -> cues, audio decoding of real files, and a
tiny random-weight Whisper end to end (its text is meaningless by design; its times are real)."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stages.asr import (
    RATE, SpeechStage, audio_chunks, build_tiny_whisper, chunk_cues, chunk_spans, offsets_to_cues,
)
from stages.subtitles import speech_between
from tests.media import encode, patterns


def test_chunk_spans():
    assert chunk_spans(65.0) == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert chunk_spans(60.0) == [(0.0, 30.0), (30.0, 60.0)]
    assert chunk_spans(5.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    assert chunk_spans(0.0) == []


def test_offsets_become_cues_shifted_clamped_and_monotonic():
    offsets = [
        {"text": " Hello there.", "timestamp": (0.0, 2.5)},
        {"text": "<|en|>", "timestamp": (2.5, 3.0)},  # a special token alone: no text
        {"text": "  ", "timestamp": (3.0, 4.0)},  # empty: dropped
        {"text": " Overlap\x17 starts early", "timestamp": (2.0, 6.0)},  # pushed to where the last ended
        {"text": " runs past the end", "timestamp": (8.0, 12.0)},  # clamped into the window
        {"text": " beyond the audio", "timestamp": (10.0, 11.0)},  # starts past the window: dropped
        {"text": " open end", "timestamp": (9.0, None)},
    ]
    cues = offsets_to_cues(offsets, 60.0, 70.0)
    assert cues == [(60.0, 62.5, "Hello there."), (62.5, 66.0, "Overlap starts early"),
                    (68.0, 70.0, "runs past the end"), (70.0, 70.0, "open end")]
    assert offsets_to_cues([], 0.0, 30.0) == []
    assert speech_between(cues, 61.0, 63.0) == "Hello there. Overlap starts early"


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper"))["name_or_path"]


@pytest.fixture(scope="module")
def tokenizer(tiny_whisper):
    from transformers import WhisperProcessor

    return WhisperProcessor.from_pretrained(tiny_whisper).tokenizer


def _ids(tok, *parts):
    """Token ids of text parts and timestamps (floats) in order."""
    ids = []
    for part in parts:
        ids += tok.convert_tokens_to_ids(["<|%.2f|>" % part]) if isinstance(part, float) else tok.encode(
            part, add_special_tokens=False)
    return ids


def test_tiny_tokenizer_has_whisper_layout(tokenizer):
    stamps = tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|0.02|>", "<|30.00|>"])
    assert stamps[0] == tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1 == tokenizer.all_special_ids[-1] + 1
    assert stamps[1:] == [stamps[0] + 1, stamps[0] + 1500]
    assert tokenizer.decode(_ids(tokenizer, " hello world"), skip_special_tokens=True) == " hello world"


def test_token_offsets_become_cues(tokenizer):
    """The tokenizer's timestamp offsets of hand-made generations, shifted to the window."""
    ids = _ids(tokenizer, 0.0, " hello", 1.0, 1.0, " the world", 2.5) + [tokenizer.eos_token_id]
    assert chunk_cues(tokenizer, ids, 30.0, 60.0) == [(30.0, 31.0, "hello"), (31.0, 32.5, "the world")]
    # a window past its audio: segments start at or after the end are dropped, others clamped
    ids = _ids(tokenizer, 0.0, " hello", 1.0, 1.0, " late", 5.0, 5.0, " later", 6.0)
    assert chunk_cues(tokenizer, ids, 4.0, 6.0) == [(4.0, 5.0, "hello"), (5.0, 6.0, "late")]
    # no timestamp pair (random weights may do this): the whole window is one cue
    assert chunk_cues(tokenizer, _ids(tokenizer, 0.0, " hello world"), 30.0, 42.5) == [(30.0, 42.5, "hello world")]
    assert chunk_cues(tokenizer, [tokenizer.eos_token_id], 0.0, 30.0) == []


def _talking_video(path, seconds=5, rate=44100, pieces=None):
    """Pictures plus stereo AAC at ``rate``: a 440 Hz tone during the even seconds, silence during
    the odd ones; ``pieces`` [(start_s, length_s)] writes only those stretches of the tone."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=5)
        video.width, video.height, video.pix_fmt = 160, 90, "yuv420p"
        sound = out.add_stream("aac", rate=rate)
        sound.layout = "stereo"
        picture = patterns()
        for i in range(seconds * 5):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for start, length in pieces or [(0.0, float(seconds))]:
            t = start + np.arange(int(length * rate)) / rate
            tone = (0.5 * np.sin(2 * np.pi * 440 * t) * (np.floor(t) % 2 == 0) if pieces is None
                    else 0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, len(tone), 1024):
                part = np.ascontiguousarray(tone[k:k + 1024])
                frame = av.AudioFrame.from_ndarray(np.stack([part, part]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = rate, int(start * rate) + k, Fraction(1, rate)
                out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return path


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    return _talking_video(tmp_path_factory.mktemp("talk") / "talk.mp4")


def test_audio_chunks_of_a_real_file(talking):
    chunks = list(audio_chunks(str(talking), chunk_s=2.0))
    assert [s for s, _ in chunks] == [0.0, 2.0, 4.0]
    assert [len(x) for _, x in chunks[:2]] == [2 * RATE, 2 * RATE]
    assert abs(len(chunks[2][1]) - RATE) < 0.05 * RATE  # the encoder pads the last AAC frame
    assert all(x.dtype == np.float32 and x.ndim == 1 for _, x in chunks)
    audio = np.concatenate([x for _, x in chunks])
    for second in range(5):  # tone in even seconds, silence in odd ones (edges left out)
        block = audio[int((second + 0.1) * RATE):int((second + 0.9) * RATE)]
        rms = float(np.sqrt(np.mean(block ** 2)))
        assert (rms > 0.1) if second % 2 == 0 else (rms < 0.01), (second, rms)
        if second % 2 == 0:  # 440 Hz at 16 kHz: the samples are at the rate they claim
            peak = np.argmax(np.abs(np.fft.rfft(block))) * RATE / len(block)
            assert abs(peak - 440) < 5, peak
    with open(talking, "rb") as f:  # an open file (what stages.inputs gives for S3) reads the same
        same = list(audio_chunks(f, chunk_s=2.0))
    assert [s for s, _ in same] == [0.0, 2.0, 4.0]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(chunks, same))


def test_audio_chunks_bounds_and_gaps(tmp_path):
    silent = encode(tmp_path / "silent.mp4", 10, audio=40)  # 40 x 1024 samples of 16 kHz silence
    chunks = list(audio_chunks(silent, chunk_s=1.0))
    assert [s for s, _ in chunks] == [0.0, 1.0, 2.0]
    assert [len(x) for _, x in chunks][:2] == [RATE, RATE] and not np.any(chunks[0][1])
    assert list(audio_chunks(encode(tmp_path / "mute.mp4", 10), chunk_s=1.0)) == []
    gap = _talking_video(tmp_path / "gap.mp4", pieces=[(0.0, 1.0), (4.0, 1.5)])
    starts = [(round(s, 2), round(len(x) / RATE, 2)) for s, x in audio_chunks(gap, chunk_s=2.0)]
    assert len(starts) == 2 and starts[0][0] == 0.0 and abs(starts[1][0] - 4.0) < 0.05, starts


def test_settings_are_checked():
    for bad in ({"chunk_s": 0}, {"chunk_s": 31}, {"chunk_s": True}, {"max_new_tokens": 0},
                {"max_new_tokens": 1000}, {"batch_size": 0}, {"batch_size": 2.0}, {"language": ""}):
        with pytest.raises(ValueError, match="speech"):
            SpeechStage(name_or_path="m", **bad)
    with pytest.raises(ValueError, match="speech.model"):
        SpeechStage(name_or_path="")
    with pytest.raises(TypeError):
        SpeechStage("m")  # keyword-only
    stage = SpeechStage(name_or_path="m", language=" EN ")
    assert stage.language == "en" and stage._model is None  # nothing loads before the first call
    assert json.loads(stage.generation)["chunk_s"] == 30.0


@pytest.fixture
def one_thread():
    """The tiny model on one thread: a tiny matrix gains nothing from more on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_whisper_end_to_end(tiny_whisper, talking, tmp_path, one_thread):
    with pytest.raises(ValueError, match="not one of"):
        SpeechStage(name_or_path=tiny_whisper, language="klingon").setup()
    stage = SpeechStage(name_or_path=tiny_whisper, language="English", chunk_s=2.0, max_new_tokens=24, batch_size=2)
    assert stage.tiny_random and stage.model_id == tiny_whisper
    cues = stage.transcribe(str(talking))  # 3 windows: one batch of 2, then 1
    spans = chunk_spans(5.0, 2.0)
    assert cues, "the tiny model always writes something"
    for a, b, text in cues:
        assert isinstance(a, float) and isinstance(b, float) and text == text.strip() and text
        assert any(s <= a <= b <= e + 0.05 for s, e in spans), (a, b)  # inside one window
    assert [a for a, _, _ in cues] == sorted(a for a, _, _ in cues)
    assert all(b <= a2 for (_, b, _), (a2, _, _) in zip(cues, cues[1:]))
    assert speech_between(cues, 0.0, 5.1)
    assert speech_between(cues, 100.0, 110.0) is None
    with open(talking, "rb") as f:
        assert stage.transcribe(f) == cues  # greedy decoding: the same cues from an open file
    assert stage.transcribe(encode(tmp_path / "mute.mp4", 10)) == []


def test_english_only_model(tiny_whisper, talking, tmp_path, one_thread):
    """A model whose generation config says English-only takes no language or task prompt."""
    english = shutil.copytree(tiny_whisper, tmp_path / "tiny.en")
    config = json.loads((english / "generation_config.json").read_text())
    (english / "generation_config.json").write_text(json.dumps({**config, "is_multilingual": False}))
    with pytest.raises(ValueError, match="English-only"):
        SpeechStage(name_or_path=str(english), language="de").setup()
    cues = SpeechStage(name_or_path=str(english), chunk_s=5.0, max_new_tokens=8).transcribe(str(talking))
    assert all(0.0 <= a <= b <= 5.05 for a, b, _ in cues)


@pytest.mark.slow
def test_speech_stage_gives_clips_the_audio_text_where_no_subtitles_are(demo, ray_local, tiny_whisper, talking,
                                                                         tmp_path, one_thread):
    """speech.enabled: a video without subtitles is transcribed in the speech actor stage, its
    cues cut to its clips as subtitles are (from the first frame's container time), and
    videos.subtitles says asr; a video without audio has no speech; the caption stage after it
    is the one that reads these clips."""
    import pyarrow.parquet as pq

    from pipeline.graph import chain
    from pipeline.plan import run_job
    from pipeline.spec import load_spec
    from tests.conftest import ROOT, demo_overrides

    mute = encode(tmp_path / "mute.mp4", 40)
    out = tmp_path / "out"
    spec = load_spec(ROOT / "jobs" / "demo.yaml", [
        *demo_overrides(demo, out), f"inputs.paths=[{talking}, {mute}]", "text.enabled=false",
        "scores.max_text_area=null", "caption_fit.enabled=false", "scores.min_motion=null", "speech.enabled=true",
        f"speech.model={tiny_whisper}", "speech.chunk_s=2.0", "speech.max_new_tokens=24",
        "resources.speech.concurrency=1", "resources.speech.batch_size=2"])
    assert [s.name for s in chain(spec)] == ["analyze", "clip", "speech", "caption", "hierarchy"]
    run_job(spec, log=lambda *_: None)
    videos = {Path(v["uri"]).name: v for v in pq.read_table(out / "videos").to_pylist()}
    assert videos["talk.mp4"]["subtitles"] == "asr" and videos["mute.mp4"]["subtitles"] is None
    t0 = videos["talk.mp4"]["start_time_s"]
    assert t0 is not None and 0 <= t0 < 0.5
    cues = SpeechStage(name_or_path=tiny_whisper, chunk_s=2.0, max_new_tokens=24, batch_size=2).transcribe(str(talking))
    clips = pq.read_table(out / "clips").to_pylist()
    talk = [c for c in clips if c["uri"].endswith("talk.mp4") and c["reason"] not in ("too_short", "transition")]
    assert talk and any(c["speech"] for c in talk)
    for c in talk:
        assert c["speech"] == speech_between(cues, t0 + c["start_s"], t0 + c["end_s"])
    assert all(c["speech"] is None for c in clips if c["uri"].endswith("mute.mp4"))
