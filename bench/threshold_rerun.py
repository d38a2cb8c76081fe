"""What moving a threshold costs: the demo job run once, then again on the same output with a
stricter score threshold and with a looser CLIP margin. Prints each run's worker seconds by
stage (from the output's ``_work/last_run.json``) and the reruns' against the first run's.

    python bench/threshold_rerun.py [--root DIR] [--stricter scores.min_motion=0.3]
                                    [--looser clip_filter.max_reject_margin=1.0]

Each run is a whole ``vidcurate run`` process with its own local Ray (tiny offline models). A
rerun reuses the committed analysis, CLIP measurements and captions; only what the new
decision needs runs (captions of newly kept clips, the hierarchy of videos whose kept clips
changed) and the partitions are written again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(job: Path, sets: list[str]) -> float:
    args = [a for s in sets for a in ("--set", s)]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode not in (0, 3):
        sys.exit(f"run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def work(out: Path) -> dict[str, float]:
    """Worker seconds by stage of the output's last run (passes and counts left out)."""
    stages = json.loads((out / "_work" / "last_run.json").read_text())["stages"]
    return {k: round(v["worker_seconds"], 2) for k, v in stages.items() if "worker_seconds" in v}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="demo inputs and tiny models (default: made in a temp dir)")
    p.add_argument("--stricter", default="scores.min_motion=0.3")
    p.add_argument("--looser", default="clip_filter.max_reject_margin=1.0")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vidcurate-rerun-"))
    root = Path(a.root) if a.root else tmp / "demo"
    if not a.root:
        from pipeline.demo import prepare_demo

        prepare_demo(root, log=lambda *_: None)
    out = tmp / "out"
    base = [f"inputs.paths=[{root}/videos/*.mp4, {root}/bad/*]", f"output.uri={out}",
            f"models.clip.pretrained={root}/models/tiny-clip/random_weights.pt",
            f"models.clip.config={root}/models/tiny-clip/vidcurate-tiny-clip.json",
            f"models.clip.aesthetic_head={root}/models/tiny-aesthetic/tiny-aesthetic-64-linear.pth",
            f"models.vlm.name_or_path={root}/models/tiny-vlm"]
    job = ROOT / "jobs" / "demo.yaml"
    rows = []
    for name, extra in (("first", []), ("stricter", [a.stricter]), ("looser", [a.looser])):
        wall = run(job, base + extra)
        rows.append((name, extra, wall, work(out)))
    first = sum(rows[0][3].values())
    print(f"{'run':9s} {'wall s':>7s} {'worker s':>9s}  by stage")
    for name, extra, wall, stages in rows:
        print(f"{name:9s} {wall:7.1f} {sum(stages.values()):9.1f}  {stages}  {' '.join(extra)}")
    result = {"first_worker_s": round(first, 1)}
    for name, _, wall, stages in rows[1:]:
        result[f"{name}_worker_s"] = round(sum(stages.values()), 1)
        result[f"{name}_vs_first"] = round(sum(stages.values()) / first, 3)
        result[f"{name}_wall_vs_first"] = round(wall / rows[0][2], 3)
        result[f"{name}_models"] = "+".join(s for s in ("analyze", "clip", "caption") if s in stages) or "none"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
