"""What a job spec names on this machine: local inputs, model files and prompts checked before
any work starts (each failure names its key), and local paths made absolute for workers."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Optional

from pipeline.spec import JobSpec, SpecError


def _looks_local(value: str) -> bool:
    """A path rather than a hub id ("org/name") or an open_clip pretrained tag."""
    return (value.startswith(("/", "./", "../", "~")) or value.count("/") >= 2
            or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".json")))


def check_inputs(spec: JobSpec) -> None:
    """Fail early (before Ray) when inputs or local model files named by the spec do not exist."""
    if spec.inputs.manifest and "://" not in spec.inputs.manifest and not Path(spec.inputs.manifest).is_file():
        raise SpecError(f"inputs.manifest: no such file: {spec.inputs.manifest}")
    for i, pattern in enumerate(spec.inputs.paths):  # s3:// inputs are checked when they are listed
        if "://" not in pattern and not glob.glob(pattern) and not Path(pattern).exists():
            raise SpecError(f"inputs.paths[{i}]: nothing matches {pattern!r}")
    local = {"models.clip.pretrained": spec.models.clip.pretrained, "models.clip.config": spec.models.clip.config,
             "models.vlm.name_or_path": spec.models.vlm.name_or_path, "models.transnetv2": spec.models.transnetv2}
    for key, value in local.items():
        if value and _looks_local(value) and not Path(value).expanduser().exists():
            raise SpecError(f"{key}: no such file or directory: {value}")
    if "transnetv2" in spec.shots.detector and not spec.models.transnetv2:
        from stages import transnet

        try:  # the model must be there before any video is decoded (one download, cached)
            transnet.fetch()
        except Exception as err:
            raise SpecError(f"shots.detector: {spec.shots.detector} needs the TransNetV2 weights and fetching them "
                            f"failed ({err}); set models.transnetv2 to a folder from "
                            "`python -m pipeline fetch-models transnetv2`") from None
    from stages.models import load_prompt

    prompts = {"caption.prompt": spec.caption.prompt_name, "chapters.entity_prompt": spec.chapters.entity_prompt,
               "chapters.chapter_prompt": spec.chapters.chapter_prompt,
               "chapters.video_prompt": spec.chapters.video_prompt}
    for key, value in prompts.items():
        try:
            load_prompt(value)
        except FileNotFoundError as err:
            raise SpecError(f"{key}: {err}") from None


def _abs_if_local(value: Optional[str]) -> Optional[str]:
    if value and "://" not in value and not value.startswith("hf-hub:") and Path(value).exists():
        return str(Path(value).absolute())
    return value


def with_absolute_paths(spec: JobSpec) -> JobSpec:
    """Make local model paths absolute, so workers started elsewhere find the same files."""
    clip = spec.models.clip.model_copy(update={"pretrained": _abs_if_local(spec.models.clip.pretrained),
                                               "config": _abs_if_local(spec.models.clip.config)})
    vlm = spec.models.vlm.model_copy(update={"name_or_path": _abs_if_local(spec.models.vlm.name_or_path)})
    caption = spec.caption.model_copy(update={"prompt": _abs_if_local(spec.caption.prompt)})
    chapters = spec.chapters.model_copy(update={"entity_prompt": _abs_if_local(spec.chapters.entity_prompt),
                                                "chapter_prompt": _abs_if_local(spec.chapters.chapter_prompt),
                                                "video_prompt": _abs_if_local(spec.chapters.video_prompt)})
    return spec.model_copy(update={"models": spec.models.model_copy(update={
        "clip": clip, "vlm": vlm, "transnetv2": _abs_if_local(spec.models.transnetv2)}),
                                   "caption": caption, "chapters": chapters})
