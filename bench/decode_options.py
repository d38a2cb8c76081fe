"""Decoder options against plain decoding: what skipping frames or FFmpeg's threads buy.

For each file, in one process, interleaved rounds (this machine's speed drifts within minutes),
PyAV decoding every frame with the loop filter skipped (as the analysis pass decodes) in three
ways:

- threads: FFmpeg's frame threads (``thread_type = AUTO``), every frame;
- one_thread: one decoding thread, every frame;
- nonref: frame threads, with ``skip_frame = NONREF`` (frames no other frame references are
  dropped by the decoder: what a pass that skips frames could save on decoding).

Prints, per file, the frames each way decodes and the median wall and CPU milliseconds of each,
and the ratios against ``threads``:

    python bench/decode_options.py bench/inputs/footage_360p_1min.mp4 bench/inputs/footage_720p_1min.mp4
    python bench/decode_options.py --rounds 9 bench/inputs/scale/videos_v1/scale_0000[0-2].mp4

(the inputs are those bench/analysis_throughput.py and bench/scale.py build).
"""

from __future__ import annotations

import argparse
import statistics
import time

WAYS = ("threads", "one_thread", "nonref")


def decode(path: str, way: str) -> tuple[float, float, int]:
    """(wall s, CPU s, frames) of decoding ``path`` one ``way``."""
    import av

    wall, cpu = time.perf_counter(), time.process_time()
    with av.open(path) as container:
        stream = container.streams.video[0]
        if way == "one_thread":
            stream.thread_count = 1
        else:
            stream.thread_type = "AUTO"
        stream.codec_context.options = {"skip_loop_filter": "all"}
        if way == "nonref":
            stream.codec_context.skip_frame = "NONREF"
        frames = sum(1 for _ in container.decode(stream))
    return time.perf_counter() - wall, time.process_time() - cpu, frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    for path in args.files:
        runs = {w: [] for w in WAYS}
        for r in range(args.rounds):
            for k in range(len(WAYS)):  # rotated: no way always runs first
                way = WAYS[(k + r) % len(WAYS)]
                runs[way].append(decode(path, way))
        med = {w: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), v[0][2])
               for w, v in runs.items()}
        base = med["threads"]
        cells = [f"{w} {f} frames {1000 * s:7.1f} ms wall {1000 * c:7.1f} ms cpu ({s / base[0]:.2f}x wall, "
                 f"{c / base[1]:.2f}x cpu)" for w, (s, c, f) in med.items()]
        print(f"{path.rsplit('/', 1)[-1]:26s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
