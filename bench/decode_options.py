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

With ``--lag``, also whether a pass could skip non-reference frames only away from boundaries:
to choose whether to decode a non-reference frame, it would need the reference frames on both
sides of it before the frame's packet goes to the decoder. Packet by packet, one decoding
thread, ``skip_frame = NONREF``: for each skipped frame, how many packets after its own the
next reference frame (in display order) came out of the decoder, and the share of skipped
frames for which it came out before (decidable).
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


def lag(path: str) -> dict:
    """Non-reference frames of ``path``, how many could be chosen with both neighbours decoded,
    and the median packets between a skipped frame's packet and its next reference frame's output."""
    import av

    def frames(skip: bool) -> tuple[list, dict]:
        with av.open(path) as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            ctx.thread_count = 1
            if skip:
                ctx.skip_frame = "NONREF"
            fed, out = [], {}
            for k, packet in enumerate(container.demux(stream)):
                if packet.pts is not None:
                    fed.append((packet.pts, k))
                for frame in ctx.decode(packet):
                    out[frame.pts] = k
            return fed, out

    fed, _ = frames(False)
    _, kept = frames(True)
    packet_of = dict(fed)
    refs = sorted(kept)
    skipped = sorted(p for p in packet_of if p not in kept)
    gaps, decidable = [], 0
    for p in skipped:
        later = next((q for q in refs if q > p), None)
        if later is None:
            continue
        gaps.append(kept[later] - packet_of[p])
        decidable += kept[later] < packet_of[p]
    return {"frames": len(packet_of), "nonref": len(skipped), "decidable": decidable,
            "median_lag": statistics.median(gaps) if gaps else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--lag", action="store_true", help="also when reference frames leave the decoder")
    args = p.parse_args()
    for path in args.files:
        if args.lag:
            r = lag(path)
            print(f"{path.rsplit('/', 1)[-1]:26s} lag: {r['nonref']} of {r['frames']} frames non-reference; "
                  f"decidable with both neighbours decoded: {r['decidable']}; the next reference frame leaves the "
                  f"decoder a median {r['median_lag']:g} packets after the skipped frame's own", flush=True)
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
