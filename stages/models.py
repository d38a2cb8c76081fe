"""Model loading for the model stages, inside Ray workers only (never on the driver).

open_clip: by name + pretrained tag, hf-hub id or local checkpoint path, with an optional
model-config JSON for custom architectures. VLM: any transformers image-text-to-text model
(Qwen2-VL / Qwen2.5-VL / Qwen3-VL family) by hub id or local directory. bf16 on GPU, fp32
on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.torchvision_cpu_guard import ensure_torchvision


def device() -> str:
    """'cuda' when a GPU is visible, else 'cpu' with torch using the CPUs Ray gave this worker."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    try:  # Ray sets one thread per worker by default; use the CPUs the stage declared
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1) if ray.is_initialized() else 0
        if cpus >= 1:
            torch.set_num_threads(int(cpus))
    except Exception:  # outside Ray (tests, CLI): keep torch's default
        pass
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


class VlmRunner:
    """A transformers VLM loaded once per actor; batched generation with or without images."""

    def __init__(self, name_or_path: str, dtype: str = "auto"):
        ensure_torchvision()
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_id = name_or_path
        dev = device()
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if dev == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.processor = AutoProcessor.from_pretrained(name_or_path)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=torch_dtype).to(dev).eval()
        self.tiny_random = (Path(name_or_path) / "VIDCURATE_TINY_RANDOM_WEIGHTS").exists()

    def generate(self, prompts: list[str], images: list[list] | None = None, *,
                 max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        """One completion per prompt; ``images[i]`` are the PIL frames shown with prompt i."""
        import torch

        texts = []
        for i, prompt in enumerate(prompts):
            content = [{"type": "image"} for _ in (images[i] if images else [])]
            content.append({"type": "text", "text": prompt})
            texts.append(self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False))
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if images and any(images):
            kwargs["images"] = images
        inputs = self.processor(**kwargs).to(self.model.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)


PROMPT_DIR = Path(__file__).parent / "prompts"


def load_prompt(name_or_path: str) -> tuple[str, str]:
    """(version, text) of a prompt file: a name under stages/prompts/ or a path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPT_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    return path.stem, path.read_text().strip()
