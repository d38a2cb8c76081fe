"""S3 faults: what a share of failing requests costs, and that nothing is lost.

A moto S3 server (in this process, over HTTP on a loopback port) sits behind a proxy that fails
a share of the requests (tests/s3proxy.py): HTTP 500 InternalError, 503 SlowDown, a connection
dropped before the request is forwarded, one dropped after it took effect (the answer lost),
and a GET body cut off halfway. Two parts:

1. storage: one fixed workload through ``pipeline.storage.S3Store`` at each fault rate: 200
   small PUTs and GETs, and an 11 MiB object in three 5 MiB parts (multipart upload) read back
   whole and in 64 ranged reads. Per rate: requests the proxy saw, faults injected (by kind),
   retries (requests beyond those of the fault-free pass: botocore's retries and the re-reads of
   cut bodies; the workload is one thread, so the same seed gives the same faults every round),
   the median wall seconds over ``--rounds`` rounds (the rates' order rotated each round) and
   the extra over the fault-free pass, and whether every byte read back is what was written.
2. job: the demo job (``--videos`` of the demo inputs) with inputs and output on S3 behind the
   proxy, through the command line: fault-free runs and runs at ``--job-rate``, alternating,
   ``--job-rounds`` of each; each run's output objects (all but ``_work/``, with the partition
   records) compared byte for byte with the first fault-free run's. Extra requests and seconds
   are against the fault-free runs' medians (a run's request count varies by a few: the lease's
   reads follow the clock). Then an outage: the store answers 503 to every request from half of the fault-free run's
   requests on, with ``storage.max_attempts=2``; the run's exit status, its last error line and
   its seconds, and a rerun on the store that is back (its output compared with the fault-free
   run's; the inputs are on local disk for this pair).

    python bench/s3_faults.py                        # both parts
    python bench/s3_faults.py --skip-job             # storage only (about a minute)
    python bench/s3_faults.py --rates 0.05 0.1 0.2 --rounds 3 --job-rate 0.1 --job-rounds 2 --videos 2

Demo inputs and tiny models are made once into bench/inputs/s3_faults/ (prepare-demo).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pipeline.graph import STAGES  # noqa: E402
from tests.s3proxy import KINDS, FaultProxy, MotoServer  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAVIDCURATEBENCH", "AWS_SECRET_ACCESS_KEY": "vidcurate-bench",
               "AWS_DEFAULT_REGION": "us-east-1"}
VIDEOS = ("synthetic_cuts.mp4", "bikes.mp4", "carphone_pristine.mp4")


def storage_pass(endpoint: str, proxy: FaultProxy, rate: float, seed: int) -> tuple[float, bool]:
    from pipeline.spec import Storage
    from pipeline.storage import S3Reader, S3Store

    proxy.reset(rate=rate, seed=seed)
    store = S3Store(f"s3://bench/storage-{rate}", Storage(endpoint_url=proxy.endpoint, multipart_threshold_mb=5,
                                                          part_size_mb=5))
    rng = __import__("random").Random(seed)
    small = {f"small/{n:04d}": rng.randbytes(rng.randrange(100, 20_000)) for n in range(200)}
    big = rng.randbytes(11 * 2**20)
    t = time.perf_counter()
    for key, data in small.items():
        store.write(key, data)
    same = all(store.read(key) == data for key, data in small.items())
    store.write("big.bin", big)
    same &= store.read("big.bin") == big
    reader = S3Reader(store.client, "bench", f"storage-{rate}/big.bin", len(big), block=64 << 10)
    for n in range(64):
        start = rng.randrange(0, len(big) - 100_000)
        reader.seek(start)
        same &= reader.read(100_000) == big[start:start + 100_000]
    return time.perf_counter() - t, same


def faults_text(proxy: FaultProxy) -> str:
    return ", ".join(f"{k} {proxy.faults[k]}" for k in KINDS if proxy.faults[k])


def run_storage(moto: MotoServer, rates: list[float], seed: int, rounds: int) -> None:
    """Every rate once a round, the order rotated from round to round (a busy machine slows all
    alike); the same seed every time, so each rate meets the same faults in every round."""
    proxy = FaultProxy(moto.endpoint)
    rates = [0.0] + [r for r in rates if r > 0]
    walls = {r: [] for r in rates}
    seen = {}
    try:
        for n in range(rounds):
            for rate in rates[n % len(rates):] + rates[:n % len(rates)]:
                wall, same = storage_pass(moto.endpoint, proxy, rate, seed)
                walls[rate].append(wall)
                ok = same and seen.get(rate, (0, 0, "", True))[3]
                seen[rate] = (proxy.requests, sum(proxy.faults.values()), faults_text(proxy), ok)
    finally:
        proxy.stop()
    base_requests, base_wall = seen[0.0][0], statistics.median(walls[0.0])
    print(f"\nstorage: 200 small PUT+GET, one 11 MiB multipart upload read whole and in 64 ranged reads; "
          f"median wall of {rounds} round(s)")
    print(f"{'rate':>5} {'requests':>9} {'faults':>7} {'retries':>8} {'wall s':>7} {'extra s':>8}  same  faults by kind")
    for rate in rates:
        requests, faults, kinds, same = seen[rate]
        wall = statistics.median(walls[rate])
        print(f"{rate:>5.2f} {requests:>9} {faults:>7} {requests - base_requests:>8} {wall:>7.2f} "
              f"{wall - base_wall:>8.2f}  {'yes' if same else 'NO'}   {kinds}")
    print("  walls: " + "; ".join(f"{r:.2f}: " + " ".join(f"{w:.1f}" for w in walls[r]) for r in rates))


def _job(demo: Path, out: str, endpoint: str, inputs: list[str], extra: list[str] = ()) -> list[str]:
    sets = ["inputs.paths=[" + ", ".join(inputs) + "]", f"output.uri={out}", f"storage.endpoint_url={endpoint}",
            f"models.clip.pretrained={demo}/models/tiny-clip/random_weights.pt",
            f"models.clip.config={demo}/models/tiny-clip/vidcurate-tiny-clip.json",
            f"models.clip.aesthetic_head={demo}/models/tiny-aesthetic/tiny-aesthetic-64-linear.pth",
            f"models.vlm.name_or_path={demo}/models/tiny-vlm", "output.samples_per_shard=2", "ray.progress=false",
            *extra]
    return [sys.executable, "-m", "pipeline", "run", str(HERE.parent / "jobs" / "demo.yaml"), "--quiet"] + \
        [a for s in sets for a in ("--set", s)]


def _run(cmd: list[str]) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE.parent, env={**env, **CREDENTIALS}, capture_output=True, text=True,
                          start_new_session=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t


def _objects(client, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            key = o["Key"][len(prefix) + 1:]
            if not key.startswith("_work/") or key.startswith("_work/partitions/"):
                out[key] = client.get_object(Bucket="bench", Key=o["Key"])["Body"].read()
    return out


def _clear(client, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            client.delete_object(Bucket="bench", Key=o["Key"])


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "Error" in line or line.startswith("error:")]
    return lines[-1][:200] if lines else "(no error line)"


def run_job(moto: MotoServer, client, demo: Path, videos: int, rate: float, seed: int, rounds: int) -> None:
    names = VIDEOS[:videos]
    for name in names:
        client.upload_file(str(demo / "videos" / name), "bench", f"in/{name}")
    proxy = FaultProxy(moto.endpoint)
    try:
        s3_inputs = [f"s3://bench/in/{name}" for name in names]
        cmd = _job(demo, "s3://bench/job", proxy.endpoint, s3_inputs)
        rows, clean = [], None
        for n in range(rounds):  # clean and faulty runs alternate, the first of a round alternating too
            for r in ((0.0, rate) if n % 2 == 0 else (rate, 0.0)):
                proxy.reset(rate=r, seed=seed)
                rc, text, wall = _run(cmd)
                got = _objects(client, "job") if rc == 0 else None
                if r == 0.0 and clean is None:
                    assert rc == 0, text[-3000:]
                    clean = got
                rows.append((r, rc, proxy.requests, sum(proxy.faults.values()), wall, faults_text(proxy), got))
                _clear(client, "job")
        base = [row for row in rows if row[0] == 0.0]
        base_requests, base_wall = statistics.median(r[2] for r in base), statistics.median(r[4] for r in base)
        print(f"\njob: the demo job over {videos} video(s), inputs and output on S3 behind the proxy, "
              f"{rounds} round(s); extra requests and seconds against the fault-free runs' medians "
              f"({base_requests:.0f} requests, {base_wall:.1f} s)")
        print(f"{'rate':>5} {'rc':>3} {'requests':>9} {'faults':>7} {'extra req':>9} {'wall s':>7} {'extra s':>8}  "
              "identical  faults by kind")
        for r, rc, requests, faults, wall, kinds, got in rows:
            print(f"{r:>5.2f} {rc:>3} {requests:>9} {faults:>7} {requests - base_requests:>9.0f} {wall:>7.1f} "
                  f"{wall - base_wall:>8.1f}  {'yes' if got == clean else 'NO':<9}  {kinds}")

        local_inputs = [str(demo / "videos" / name) for name in names]
        local = _job(demo, "s3://bench/job", proxy.endpoint, local_inputs)
        proxy.reset(rate=0.0)
        rc, text, clean_s = _run(local)
        assert rc == 0, text[-3000:]
        clean, clean_requests = _objects(client, "job"), proxy.requests
        _clear(client, "job")
        proxy.reset()
        proxy.outage(after=clean_requests // 2)
        rc, text, fail_s = _run(_job(demo, "s3://bench/job", proxy.endpoint, local_inputs,
                                     ["storage.max_attempts=2"]))
        proxy.outage(False)
        partial = _objects(client, "job")
        work = [k for k, _ in _listing(client, "job") if k.startswith("_work/") and k.split("/")[1] in STAGES]
        kept = all(clean.get(k) == v for k, v in partial.items() if k != "spec.yaml")
        print(f"\noutage from request {clean_requests // 2} of {clean_requests} (inputs on disk), "
              "storage.max_attempts=2:")
        print(f"  failed run: exit {rc} after {fail_s:.1f} s ({clean_s:.1f} s clean); manifest "
              f"{'written' if 'manifest.json' in partial else 'not written'}; {len(work)} per-video results "
              f"committed; {len(partial)} output files, {'all' if kept else 'NOT all'} equal to the clean run's")
        print(f"  its last error line: {_last_error(text)}")
        rc, text, rerun_s = _run(local)
        reused = next((line.strip() for line in text.splitlines() if "[resume]" in line), "[resume] nothing reused")
        print(f"  rerun: exit {rc} in {rerun_s:.1f} s; output identical to the clean run: "
              f"{'yes' if rc == 0 and _objects(client, 'job') == clean else 'NO'}; {reused}")
    finally:
        proxy.stop()


def _listing(client, prefix: str) -> list[tuple[str, int]]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
        out += [(o["Key"][len(prefix) + 1:], o["Size"]) for o in page.get("Contents", [])]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--job-rate", type=float, default=0.1)
    p.add_argument("--videos", type=int, default=2, choices=range(1, len(VIDEOS) + 1))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3, help="storage passes per rate (medians)")
    p.add_argument("--job-rounds", type=int, default=1, help="fault-free and faulty job runs, alternating")
    p.add_argument("--skip-job", action="store_true")
    args = p.parse_args()
    os.environ.update(CREDENTIALS)
    import boto3

    moto = MotoServer(threaded=True)
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    try:
        run_storage(moto, args.rates, args.seed, args.rounds)
        if not args.skip_job:
            demo = HERE / "inputs" / "s3_faults" / "demo"
            if not (demo / "models" / "tiny-aesthetic").exists():
                from pipeline.demo import prepare_demo

                prepare_demo(demo, log=lambda *_: None)
            run_job(moto, client, demo, args.videos, args.job_rate, args.seed, args.job_rounds)
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
