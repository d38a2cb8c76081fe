"""Analyze: one decode pass per video computing everything later stages need.

Per frame, from small frames shrunk straight from the decoder's planes (never a full-size RGB
array; stages.frames): shot-detector input, quality (sharpness, brightness, contrast, black,
frozen, letterbox) and optical-flow motion at a smaller size (stages.signals). Every
``fps / sample_fps`` frames a small JPEG is kept; after the pass each clip gets
``frames_per_clip`` of them for CLIP and the VLM. Decoding, shrinking and JPEG encoding run on
their own threads ahead of the analysis; with several decode workers, separate GOP chunks of the
video decode at once (stages.decode).

Reads: uri, video_id, size_bytes. Adds: the videos columns plus ``clips`` (a list of
in-flight clip rows, schemas.CLIP_WORK). Run per video by pipeline.units.AnalyzeUnits
(Ray tasks, resources.analyze), which commits the result.
"""

from __future__ import annotations

import math
import time
from array import array

import numpy as np

from stages.base import Rejected, clip_id
from stages.frames import Shrinker, ThumbStore, quarter_turns
from stages.guard import GuardFailure, run_guarded
from stages.probe import open_video
from stages.signals import FrameSignals, clip_summary, prepare_frame
from stages.shots import assemble_clips, boundary_detector, shot_starts, shots_from_boundaries

MIN_COVERAGE = 0.9  # decoded span / container duration below this -> truncated
# Shorter videos (or of unknown duration) get one decoder: they hold a GOP or two, and each
# chunk decoder opens the file again and starts its own thread.
CHUNKED_MIN_S = 30.0


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def scaled_size(width: int, height: int, target_width: int, min_height: int = 16) -> tuple[int, int]:
    """Even (w, h) of a downscale to ``target_width``, never below ``min_height`` rows (so very wide
    videos keep enough rows for flow and sharpness), never upscaled."""
    s = min(1.0, target_width / width)
    if height * s < min_height:
        s = min(1.0, min_height / height)
    return _even(width * s), _even(height * s)


def decode_workers(analysis) -> int:
    """Decoders for one video's GOP chunks (spec.analysis.decode_workers; 0: the CPUs this process
    may use, at most 4)."""
    import os

    if analysis.decode_workers:
        return analysis.decode_workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def decode_pass(path: str, spec) -> tuple[dict, dict]:
    """Decode ``path`` once. Returns (video metadata, per-frame signals and thumbnails).

    With more than one decode worker the GOP chunks of the video are decoded in parallel
    (stages.decode.ChunkedSource). A stream whose chunks do not decode on their own (open GOPs,
    packets that are not frames), or that makes a decoder fail, is decoded again by one decoder
    from the start, so what the analysis sees never depends on the number of workers.
    """
    from stages.decode import ChunkMismatch

    workers = decode_workers(spec.analysis)
    if workers > 1:
        try:
            return _decode_pass(path, spec, workers, auto=not spec.analysis.decode_workers)
        except ChunkMismatch:
            pass
    return _decode_pass(path, spec, 1)


def _decoder_options(stream, spec, threads: int | None) -> None:
    stream.thread_type = "AUTO"
    if threads:
        stream.thread_count = threads
    if spec.analysis.skip_loop_filter:  # deblocking is invisible at analysis sizes; ~20% of H.264 decode
        stream.codec_context.options = {"skip_loop_filter": "all"}


def frame_source(path: str, container, stream, spec, workers: int, make_prepare, extra: list):
    """The frames of ``stream`` as the pass decodes them, each through ``make_prepare``'s
    function: with ``workers`` > 1, GOP chunks on that many single-threaded decoders (their
    containers appended to ``extra``, for the caller to close), else one decoder with FFmpeg's
    frame threads (stages.decode)."""
    from stages.decode import ChunkedSource, SequentialSource

    if workers > 1:
        decoders = []
        for _ in range(workers):
            extra.append(open_video(path, spec.probe, spec.storage)[0])
            s = extra[-1].streams.video[0]
            _decoder_options(s, spec, 1)
            decoders.append(s.codec_context)
        return ChunkedSource(container, stream, decoders, make_prepare)
    _decoder_options(stream, spec, spec.analysis.decoder_threads)
    return SequentialSource(container, stream, make_prepare)


def _decode_pass(path: str, spec, workers: int, auto: bool = False) -> tuple[dict, dict]:
    """The pass with ``workers`` chunk decoders (``auto``: one for videos under CHUNKED_MIN_S)."""
    import av
    import cv2

    from stages.decode import ChunkMismatch

    container, stream, meta = open_video(path, spec.probe, spec.storage)
    if auto and (meta["duration_s"] or 0.0) < CHUNKED_MIN_S:
        workers = 1
    extra = []  # the chunk decoders' own containers
    # The decoders already use every core; OpenCV's own pool on top of them only adds
    # contention (measured: ~15% more CPU for the same work).
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        fps = meta["fps"] or 25.0
        stride = max(1, int(round(fps / spec.analysis.sample_fps)))
        # everything that can fail is set up before the decoding threads start
        detector = boundary_detector(spec.shots, fps, spec.models.transnetv2)
        prepare = _preparer(meta["width"], meta["height"], stride, spec, detector)
        times, thumbs, keyframes = array("d"), ThumbStore(), set()
        frames = frame_source(path, container, stream, spec, workers, prepare, extra)
        missing_pts, decode_error, turns, recorder = 0, None, None, None
        try:
            for i, (index, t, key, rec_turns, luma, bgr, jpeg, signals, detected) in enumerate(frames):
                if index != i or (turns is not None and rec_turns != turns):
                    raise ChunkMismatch(f"frame {index} arrived as frame {i}")
                if t is None:
                    missing_pts += 1
                times.append(t if t is not None else i / fps)
                if times[-1] - times[0] > spec.probe.max_duration_s or i >= spec.probe.max_frames:
                    raise Rejected("too_long", f"still decoding past probe.max_duration_s="
                                   f"{spec.probe.max_duration_s} or probe.max_frames={spec.probe.max_frames}")
                if recorder is None:  # the first frame's rotation decides what is upright
                    turns, recorder = rec_turns, _recorder(rec_turns, meta, spec)
                if key:
                    keyframes.add(i)
                recorder.add(i, luma, signals)
                v = recorder.values
                detector.feed(i, bgr, v["contrast"][-1], v["residual"][-1] / (v["diff"][-1] + 1.0), detected)
                if jpeg is not None:
                    thumbs.add(i, jpeg)
        except MemoryError:  # FFmpeg's ENOMEM too: the guard reports memory_limit
            raise
        except av.error.FFmpegError as err:
            if workers > 1:  # how a decoder fails differs with threading: errors are one decoder's to judge
                thumbs.close()
                raise ChunkMismatch(f"decoder error: {err}") from None
            if not times:
                raise Rejected("corrupt_stream", str(err)) from None
            decode_error = str(err)
            meta["message"] = f"decode stopped early: {err}"
        except BaseException:
            thumbs.close()
            raise
        finally:
            frames.close()
        times, span = _checked_times(times, meta, fps, missing_pts, decode_error)
        meta["num_frames"] = len(times)
        meta["duration_s"] = span  # what was decoded: every clip and caption time lies inside it
        meta["start_time_s"] = times[0] if times else None  # container time of the first frame: times' origin
        boundaries = detector.finish()
        last = len(times) - 1
        meta["boundaries"] = [{"type": b["type"], "start_frame": b["start"], "end_frame": b["end"],
                               "start_s": times[min(b["start"], last)] - times[0],
                               "end_s": times[min(b["end"], last)] - times[0]} for b in boundaries]
        cuts = shot_starts(boundaries)
        return meta, {"times": times, "signals": recorder.arrays(cuts), "cuts": cuts, "thumbs": thumbs,
                      "boundaries": boundaries, "keyframes": keyframes,
                      "subtitle_streams": len(container.streams.subtitles)}
    finally:
        for c in extra:
            c.close()
        container.close()
        cv2.setNumThreads(cv_threads)


def _checked_times(times, meta: dict, fps: float, missing_pts: int, decode_error: str | None):
    """The decoded frames' times, checked: rejects a stream that decoded to nothing, to frames
    without times and no rate, or to too little of its duration; falls back to the frame rate
    where timestamps are missing or not increasing (noted in ``meta``)."""
    if not times:
        raise Rejected("no_frames", "the video stream decoded to no frames")
    if missing_pts and not meta["fps"]:
        raise Rejected("missing_timestamps", f"{missing_pts} of {len(times)} frames have no timestamp "
                       "and the stream declares no frame rate")
    meta["timing"] = "rate" if missing_pts else "pts"
    if missing_pts:
        meta["message"] = (meta.get("message", "") + f" {missing_pts} frames without timestamps; "
                           "times from the frame rate").strip()
    if any(b <= a for a, b in zip(times, times[1:])):  # PTS not increasing: fall back to the rate
        times = [times[0] + i / fps for i in range(len(times))]
        meta["timing"] = "rate"
        meta["message"] = (meta.get("message", "") + " timestamps not increasing; times from frame rate").strip()
    span = frame_time(times, len(times), fps)
    if meta["duration_s"] and span < MIN_COVERAGE * meta["duration_s"]:
        raise Rejected("corrupt_stream" if decode_error else "truncated",
                       f"decoded {span:.2f}s of {meta['duration_s']:.2f}s {meta.get('message', '')}".strip())
    return times, span


def frame_time(times, frame: int, fps: float) -> float:
    """Seconds from the first frame to ``frame``; the end of the last frame for frame == len(times)."""
    return (times[frame] - times[0]) if frame < len(times) else (times[-1] - times[0] + 1.0 / fps)


def _sizes(width: int, height: int, spec) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(analysis, flow, thumbnail) sizes for an upright ``width`` x ``height`` video."""
    aw, ah = scaled_size(width, height, spec.analysis.width)
    fw, fh = scaled_size(width, height, spec.analysis.flow_width)
    ts, short = spec.analysis.frame_size, min(width, height)
    return (aw, ah), (fw, fh), (_even(width * ts / short), _even(height * ts / short))


def _preparer(width: int, height: int, stride: int, spec, detector):
    """A factory of per-thread ``prepare(frame, index)`` functions for the decode sources:
    (index, time, key frame, quarter turns, full-range luma, bgr, JPEG or None, the signals'
    ``prepare_frame``, the detector's ``prepare`` or None) from one decoded frame, shrunk to the
    analysis size; every ``stride``-th frame also as a JPEG thumbnail. Runs on the decoding
    threads, so shrinking, JPEG encoding and the per-frame work that needs no other frame
    (quality, bars, the flow-size frame, the detector's HSV and thumbnail) run beside the
    analysis, which keeps what compares frames."""
    import cv2

    quality = [cv2.IMWRITE_JPEG_QUALITY, spec.analysis.jpeg_quality]
    flow_stride, detect = spec.analysis.flow_stride, detector.prepare

    def make():
        state = []

        def prepare(frame, index: int) -> tuple:
            if not state:  # sizes from this thread's first frame: its rotation decides what is upright
                turns = quarter_turns(frame.rotation)
                w, h = (height, width) if turns % 2 else (width, height)
                (aw, ah), flow, (tw, th) = _sizes(w, h, spec)
                state.extend([turns, Shrinker(aw, ah, turns=turns), Shrinker(tw, th, smooth=True, turns=turns), flow])
            turns, shrink, shrink_thumb, flow = state
            luma, bgr = shrink(frame, fresh=True)
            jpeg = cv2.imencode(".jpg", shrink_thumb(frame)[1], quality)[1].tobytes() if index % stride == 0 else None
            return (index, None if frame.time is None else float(frame.time), frame.key_frame, turns, luma, bgr, jpeg,
                    prepare_frame(index, luma, flow, flow_stride), detect(bgr) if detect else None)

        return prepare

    return make


def _recorder(turns: int, meta: dict, spec) -> FrameSignals:
    """The signal recorder for an upright video; reports the rotation and upright size in ``meta``."""
    meta["rotation"] = turns * 90
    if turns % 2:  # report and analyse the upright (display) size
        meta["width"], meta["height"] = meta["height"], meta["width"]
    _, flow, _ = _sizes(meta["width"], meta["height"], spec)
    return FrameSignals(flow, spec.analysis.flow_stride)


def build_clips(video: dict, meta: dict, analysis: dict, spec, cues=()) -> list[dict]:
    """Clip rows (schemas.CLIP_WORK) from the boundaries and per-frame signals of one video;
    ``cues``: subtitle cues (stages.subtitles), cut to each clip as its ``speech``."""
    from stages.subtitles import speech_between

    times, n, fps = analysis["times"], meta["num_frames"], meta["fps"] or 25.0
    shots, transitions = shots_from_boundaries(analysis["boundaries"], n)
    signals = analysis["signals"]
    # the pipeline passes the fingerprint it computed once (computing it loads every stage's prompts)
    fingerprint = video.get("fingerprint") or spec.fingerprints()["analyze"]
    rows = []
    # long takes: uncut shots of at least long_take_min_s, one clip each unless past max_clip_s
    min_clip_s = spec.shots.long_take_min_s if spec.shots.long_take else spec.shots.min_clip_s
    for index, c in enumerate(assemble_clips(shots, fps, min_clip_s=min_clip_s, max_clip_s=spec.shots.max_clip_s,
                                             trim_s=spec.shots.trim_s, transitions=transitions)):
        a, b = c["start_frame"], c["end_frame"]
        start_s, end_s = frame_time(times, a, fps), frame_time(times, b, fps)
        scores = clip_summary(signals, a, b)
        reason = c["reason"]  # the cut's own; score thresholds decide later (stages.decide)
        rows.append({
            "clip_id": clip_id(video["video_id"], a, b, fingerprint), "video_id": video["video_id"],
            "uri": video["uri"], "index": index, "start_frame": a, "end_frame": b,
            "start_s": start_s, "end_s": end_s, "duration_s": end_s - start_s,
            **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in scores.items()},
            "status": "rejected" if reason else "kept", "reason": reason,
            # dropped clips keep one frame, for the report's contact sheet
            "frames": analysis["thumbs"].pick(a, b, 1 if reason else spec.analysis.frames_per_clip),
            "keyframe_aligned": a in analysis["keyframes"] and (b == n or b in analysis["keyframes"]),
            "speech": speech_between(cues, times[0] + start_s, times[0] + end_s) if cues else None,
            "windows": None if reason else _windows(a, b, times, fps, analysis["thumbs"], spec, cues),
            "pts_timing": meta["timing"] == "pts",
        })
    return rows


def _windows(a: int, b: int, times, fps: float, thumbs, spec, cues) -> list[dict] | None:
    """Equal windows of at most caption.window_s over clip frames [a, b), each with its own
    frames and speech; None when the clip is not longer than one window."""
    from stages.subtitles import speech_between

    limit = spec.caption.window_s

    def at(frame: int) -> float:
        return frame_time(times, frame, fps)

    if not limit or at(b) - at(a) <= limit:
        return None
    pieces = math.ceil((at(b) - at(a)) / limit)
    edges = [a + round(k * (b - a) / pieces) for k in range(pieces + 1)]
    return [{"start_frame": s, "end_frame": e, "start_s": at(s), "end_s": at(e),
             "frames": thumbs.pick(s, e, spec.analysis.frames_per_clip),
             "speech": speech_between(cues, times[0] + at(s), times[0] + at(e)) if cues else None}
            for s, e in zip(edges, edges[1:])]


def analysis_job(video: dict, spec) -> dict:
    """The decoder's part of one video; runs in the guarded child process. Never raises Rejected."""
    try:
        meta, analysis = decode_pass(video["uri"], spec)
        cues = []
        if spec.caption.subtitles:
            from stages.subtitles import load_cues

            try:
                cues, source = load_cues(video, spec.storage, streams=analysis["subtitle_streams"] > 0)
                meta["subtitles"] = source
            except Exception as err:  # unreadable subtitles cost the speech hints, not the video
                meta["message"] = (meta.get("message", "") + f" subtitles not read: {err}").strip()
        try:
            clips = build_clips(video, meta, analysis, spec, cues)
        finally:
            analysis["thumbs"].close()
        return {"status": "ok", "meta": meta, "clips": clips,
                "suspect": "decode stopped early" in meta.get("message", ""), "message": meta.get("message")}
    except Rejected as rej:
        return {"status": "rejected", "reason": rej.reason, "message": rej.message}


def analyze_video(video: dict, spec) -> dict:
    """One input -> one analyzed row (a videos row plus its clips); never raises for bad files.

    With spec.probe.guard (the default) the decode runs in a child process under a wall-clock
    watchdog and a memory limit: a hang, a memory blow-up or a decoder crash becomes a reason.
    """
    t0 = time.perf_counter()
    row = dict(video, clips=[], subtitles=None)
    try:
        if spec.probe.guard:
            result = run_guarded(analysis_job, (video, spec), timeout_s=spec.probe.timeout_s,
                                 memory_mb=spec.probe.max_memory_mb)
        else:
            result = analysis_job(video, spec)
        if result["status"] == "ok":
            row.update(result["meta"], status="ok", clips=result["clips"])
            row["num_clips"] = len(row["clips"])
            row["num_clips_kept"] = sum(c["status"] == "kept" for c in row["clips"])
            if not row["clips"]:
                row.update(status="rejected", reason="no_clips")
        else:
            row.update(status="rejected", reason=result["reason"], message=result["message"])
    except GuardFailure as fail:
        if fail.reason == "exception":  # a bug or an unforeseen failure in our code: recorded, not raised
            row.update(status="error", reason="decode_error", message=fail.message)
        else:
            row.update(status="rejected", reason=fail.reason, message=fail.message)
    except Exception as err:
        row.update(status="error", reason="decode_error", message=f"{type(err).__name__}: {err}")
    row["analysis_s"] = time.perf_counter() - t0
    return row
