"""Speech: timed text transcribed from a video's audio, for videos that carry no subtitles.

Whisper (Radford et al., 2022) through transformers (``WhisperForConditionalGeneration`` and
``WhisperProcessor``, by hub id or local directory; fp16 on GPU, fp32 on CPU), as video2dataset
and Data-Juicer transcribe speech. The audio track is decoded by PyAV, resampled to 16 kHz mono
float32 and cut into windows of ``chunk_s`` seconds (30 s: Whisper's input window) that are
made one at a time, so a two-hour film never sits in memory at once; ``batch_size`` windows go
through one ``generate`` call. Each window is transcribed with timestamps; the tokenizer's
offsets become cues shifted to the window's start, clamped into it and non-overlapping, in the
format of stages/subtitles.py (``(start_s, end_s, text)``, container time), so clips and
windows take their speech with ``speech_between`` exactly as they do from subtitles. A video
without an audio track has no cues.

Windows are cut at fixed times (not at Whisper's own segment ends) so that the windows of one
video are independent and batch together; a word across a window boundary may be lost or split.

Reads: the video (a local path, an S3 object through stages.inputs, or an open file).
Adds: cues; provenance in ``model_id`` and ``generation``.
Resources: resources.speech (actor pool; one GPU per actor when the cluster has GPUs).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from stages.base import clean_text

RATE = 16_000  # Whisper's sampling rate
WINDOW_S = 30.0  # Whisper's input window (30 s of log-mel frames)
MAX_NEW_TOKENS = 440  # Whisper's decoder holds 448 positions, a few taken by the prompt tokens
GAP_S = 0.5  # a jump in the audio's timestamps larger than this starts a new window there
_SPECIAL = re.compile(r"<\|[^|>]*\|>")

log = logging.getLogger(__name__)

Cue = tuple[float, float, str]


def chunk_spans(duration_s: float, chunk_s: float = WINDOW_S) -> list[tuple[float, float]]:
    """The windows [start, end) that ``audio_chunks`` makes of ``duration_s`` of contiguous audio."""
    n = int(round(chunk_s * RATE))
    total = int(round(duration_s * RATE))
    return [(k / RATE, min(k + n, total) / RATE) for k in range(0, total, n)]


def audio_chunks(source, chunk_s: float = WINDOW_S) -> Iterator[tuple[float, np.ndarray]]:
    """(start_s, samples) windows of the first audio track: 16 kHz mono float32, ``chunk_s``
    long (the last one shorter), ``start_s`` in container time. ``source``: a path or an open
    file (what stages.inputs.open_input returns). No audio track: nothing. Packets that do not
    decode are skipped (and counted in the log); a timestamp gap over ``GAP_S`` ends the window."""
    import av

    n = int(round(chunk_s * RATE))
    local = isinstance(source, (str, Path))
    with av.open(str(source) if local else source, options={"protocol_whitelist": "file"} if local else {}) as c:
        if not c.streams.audio:
            return
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        parts: list[np.ndarray] = []
        held, start, skipped = 0, None, 0
        for frame in _decoded(c, stream):
            if frame is None:
                skipped += 1
                continue
            if start is not None and frame.time is not None and frame.time > start + held / RATE + GAP_S:
                if held:
                    yield start, np.concatenate(parts)
                parts, held, start = [], 0, None
            for out in resampler.resample(frame):
                if start is None:
                    start = float(out.time if out.time is not None else frame.time or 0.0)
                parts.append(out.to_ndarray().reshape(-1))
                held += out.samples
                while held >= n:
                    joined = np.concatenate(parts)
                    yield start, joined[:n]
                    parts, held, start = [joined[n:]], held - n, start + n / RATE
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
            held += out.samples
        if held and start is not None:
            yield start, np.concatenate(parts)
        if skipped:
            log.warning("%s: %d audio packets did not decode and were skipped", source, skipped)


def _decoded(container, stream):
    """The stream's decoded frames, and None for each packet that does not decode."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            frames = [None]
        yield from frames


def clean_segment(text: str) -> str:
    """A segment's text without special tokens (``<|en|>``), control characters or runs of spaces."""
    return " ".join(clean_text(_SPECIAL.sub(" ", text)).split())


def offsets_to_cues(offsets: list[dict], start_s: float, end_s: float) -> list[Cue]:
    """Cues of one window from the tokenizer's offsets (``{"text", "timestamp": (a, b)}``, seconds
    from the window's start): shifted by ``start_s``; a segment starting at or past ``end_s`` (the
    model running on past the window's audio) is dropped, the others are clamped into the window;
    each starts at the earliest where the one before ends; empty texts are dropped. Times in ms."""
    cues: list[Cue] = []
    floor = start_s
    for off in offsets:
        text = clean_segment(off.get("text") or "")
        a, b = off.get("timestamp") or (None, None)
        a = start_s + (a or 0.0)
        b = end_s if b is None else start_s + b
        if not text or a >= end_s:
            continue
        a = max(a, floor)
        b = max(a, min(b, end_s))
        cues.append((round(a, 3), round(b, 3), text))
        floor = b
    return cues


def chunk_cues(tokenizer, ids, start_s: float, end_s: float, time_precision: float = 0.02) -> list[Cue]:
    """Cues of one window from its generated token ids: the tokenizer's timestamp offsets; without
    them (no timestamp pair), the window's whole text as one cue."""
    decoded = tokenizer.decode(ids, skip_special_tokens=True, output_offsets=True, time_precision=time_precision)
    if decoded["offsets"]:
        return offsets_to_cues(decoded["offsets"], start_s, end_s)
    text = clean_segment(decoded["text"])
    return [(round(start_s, 3), round(end_s, 3), text)] if text else []


class SpeechStage:
    """Whisper transcription of one video at a time (``transcribe``). Settings are checked here
    (cheap, picklable); the model loads on the first call, inside the worker."""

    def __init__(self, *, name_or_path: str, language: str | None = None, chunk_s: float = WINDOW_S,
                 max_new_tokens: int = 224, batch_size: int = 8):
        # 224 new tokens a window: openai/whisper's default sample_len (half the decoder's context)
        if not isinstance(name_or_path, str) or not name_or_path.strip():
            raise ValueError("speech.model: a hub id or a local directory is needed")
        if language is not None and (not isinstance(language, str) or not language.strip()):
            raise ValueError(f"speech.language: a language code or name, or null to detect it; got {language!r}")
        if isinstance(chunk_s, bool) or not isinstance(chunk_s, (int, float)) or not 1.0 <= chunk_s <= WINDOW_S:
            raise ValueError(f"speech.chunk_s: between 1 and {WINDOW_S:g} seconds (Whisper's window); got {chunk_s!r}")
        for key, value, top in (("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS), ("batch_size", batch_size, None)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (top and value > top):
                raise ValueError(f"speech.{key}: an integer from 1{f' to {top}' if top else ''}; got {value!r}")
        self.model_id = name_or_path
        self.language = language.strip().lower() if language else None
        self.chunk_s = float(chunk_s)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.generation = json.dumps({"language": self.language, "chunk_s": self.chunk_s,
                                      "max_new_tokens": max_new_tokens, "task": "transcribe"}, sort_keys=True)
        self.tiny_random = (Path(name_or_path) / "VIDCURATE_TINY_RANDOM_WEIGHTS").exists()
        self._model = None

    def setup(self) -> None:
        import torch

        from stages.models import device
        from stages.torchvision_cpu_guard import ensure_torchvision

        ensure_torchvision()
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        dev = device()
        self._dtype = torch.float16 if dev == "cuda" else torch.float32
        self._processor = WhisperProcessor.from_pretrained(self.model_id)
        model = WhisperForConditionalGeneration.from_pretrained(self.model_id, dtype=self._dtype)
        self._multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
        if self.language and not self._multilingual:
            raise ValueError(f"speech.language: {self.model_id} is an English-only model; leave language unset")
        if self.language:  # a code ("de"), a name ("german") or a token ("<|de|>"), as generate takes them
            from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

            known = model.generation_config.lang_to_id
            if f"<|{TO_LANGUAGE_CODE.get(self.language, self.language).strip('<|>')}|>" not in known:
                raise ValueError(f"speech.language: {self.language!r} is not one of {self.model_id}'s languages "
                                 f"({', '.join(sorted(t.strip('<|>') for t in known))})")
        # seconds a timestamp token counts: the window over the encoder's positions (30 s / 1500)
        self._precision = self._processor.feature_extractor.chunk_length / model.config.max_source_positions
        self._model = model.to(dev).eval()

    def transcribe(self, source, storage=None) -> list[Cue]:
        """Cues of one video: ``source`` a URI (local or ``s3://``, read through ``storage``) or an
        open file. Memory holds ``batch_size`` windows of audio at most."""
        from stages.inputs import open_input

        if self._model is None:
            self.setup()
        if isinstance(source, (str, Path)):
            source = open_input(str(source), storage)
        cues: list[Cue] = []
        batch: list[tuple[float, np.ndarray]] = []
        for chunk in audio_chunks(source, self.chunk_s):
            batch.append(chunk)
            if len(batch) == self.batch_size:
                cues += self._transcribe_batch(batch)
                batch = []
        if batch:
            cues += self._transcribe_batch(batch)
        return cues

    def _transcribe_batch(self, batch: list[tuple[float, np.ndarray]]) -> list[Cue]:
        import torch

        features = self._processor.feature_extractor([s for _, s in batch], sampling_rate=RATE,
                                                     return_tensors="pt").input_features
        prompt = {"task": "transcribe", "language": self.language} if self._multilingual else {}
        with torch.inference_mode():
            ids = self._model.generate(features.to(self._model.device, self._dtype), return_timestamps=True,
                                       max_new_tokens=self.max_new_tokens, **prompt)
        tokenizer = self._processor.tokenizer
        return [cue for (start, samples), seq in zip(batch, ids.cpu().tolist())
                for cue in chunk_cues(tokenizer, seq, start, start + len(samples) / RATE, self._precision)]


# The tiny model: Whisper's real architecture, tokenizer and generation settings at toy sizes,
# with random weights, so the loading and decoding code above runs offline on a CPU. Its text
# is meaningless by design. (Belongs beside the other tiny models in pipeline/tiny_models.py.)
_TINY_CORPUS = ("the people talk about the film and the music while the camera moves through the city "
                "hello welcome back today we ride down the trail and look at the sky water road forest")


def build_tiny_whisper(directory: str | Path) -> dict:
    """Save a Whisper with random weights (d_model 64, 2 + 2 layers, 2 heads) and its processor
    to ``directory``: a byte-level BPE vocabulary trained on a few words, Whisper's special tokens
    (<|endoftext|>, <|startoftranscript|>, one per language, <|translate|>, <|transcribe|>,
    <|startoflm|>, <|startofprev|>, <|nocaptions|>, <|notimestamps|>) and its 1,501 timestamp
    tokens <|0.00|> .. <|30.00|> right after them, as the real tokenizers lay them out."""
    import torch

    from stages.torchvision_cpu_guard import ensure_torchvision

    ensure_torchvision()
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
        WhisperProcessor, WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe_model = json.loads(bpe.to_str())["model"]
    tokenizer = WhisperTokenizer(vocab=bpe_model["vocab"], merges=[tuple(m) for m in bpe_model["merges"]])
    languages = [f"<|{code}|>" for code in LANGUAGES]  # <|endoftext|> is already there: unk/bos/eos
    specials = ["<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([AddedToken("<|%.2f|>" % (i * 0.02), normalized=False, special=False) for i in range(1501)])
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    eot = tokenizer.eos_token_id
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=ids["<|startoftranscript|>"])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(  # the fields Whisper's generate reads, as the hub's models have them
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=448, no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=True, lang_to_id={t: ids[t] for t in languages},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        max_initial_timestamp_index=50, suppress_tokens=[],
        begin_suppress_tokens=[tokenizer.convert_tokens_to_ids("\u0120"), eot])  # a leading space, end of text
    model.save_pretrained(directory)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(
        directory)
    (directory / "VIDCURATE_TINY_RANDOM_WEIGHTS").write_text(
        "Tiny Whisper with random weights, built offline for tests and the demo.\n")
    return {"name_or_path": str(directory)}
