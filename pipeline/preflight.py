"""What a job spec names on this machine, checked before any work starts, each failure one line
naming its key: local inputs, model files and prompts (``check_inputs``), that every model
resolves (``check_models``: a local path, weights in the local cache, or a reachable hub), and
that the output can be created and written (``check_output``). Relative paths are resolved
against the current directory, and the messages say so. Local paths are then made absolute for
workers (``with_absolute_paths``)."""

from __future__ import annotations

import importlib.util

import glob
import os
from pathlib import Path
from typing import Optional

from pipeline.spec import JobSpec, SpecError

HUB_TIMEOUT_S = 10.0


def _against(path: str) -> str:
    """`` (relative to CWD)`` for a relative local path: where it was looked for."""
    return "" if os.path.isabs(os.path.expanduser(path)) else f" (relative to {Path.cwd()})"


def _looks_local(value: str) -> bool:
    """A path rather than a hub id ("org/name") or an open_clip pretrained tag."""
    return (value.startswith(("/", "./", "../", "~")) or value.count("/") >= 2
            or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".json")))


def check_inputs(spec: JobSpec) -> None:
    """Fail early (before Ray) when inputs or local model files named by the spec do not exist."""
    if spec.inputs.manifest and "://" not in spec.inputs.manifest and not Path(spec.inputs.manifest).is_file():
        raise SpecError(f"inputs.manifest: no such file: {spec.inputs.manifest}{_against(spec.inputs.manifest)}")
    for i, pattern in enumerate(spec.inputs.paths):  # s3:// inputs are checked when they are listed
        if "://" not in pattern and not glob.glob(os.path.expanduser(pattern)) and not Path(pattern).exists():
            raise SpecError(f"inputs.paths[{i}]: nothing matches {pattern!r}{_against(pattern)}")
    local = {"models.clip.pretrained": spec.models.clip.pretrained, "models.clip.config": spec.models.clip.config,
             "models.clip.aesthetic_head": spec.models.clip.aesthetic_head,
             "models.vlm.name_or_path": spec.models.vlm.name_or_path, "models.transnetv2": spec.models.transnetv2}
    for key, value in local.items():
        if value and _looks_local(value) and not Path(value).expanduser().exists():
            raise SpecError(f"{key}: no such file or directory: {value}{_against(value)}")
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
            raise SpecError(f"{key}: {err}{_against(value) if '/' in value else ''}") from None


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (None: it answers)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=HUB_TIMEOUT_S)
    except urllib.error.HTTPError:
        return None  # it answered
    except Exception as err:
        return str(getattr(err, "reason", err)).splitlines()[0]
    return None


def _cached(repo: str, names: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _hub_or_cache(key: str, what: str, repo: str, names: tuple[str, ...]) -> None:
    """``repo`` holds one of ``names`` in the local Hugging Face cache, or the hub answers."""
    if _cached(repo, names):
        return
    why = _hub_unreachable()
    if why is not None:
        from huggingface_hub import constants

        raise SpecError(f"{key}: {what} is not in the local cache ({constants.HF_HUB_CACHE}) and the hub "
                        f"({constants.ENDPOINT}) cannot be reached ({why}); give a local path, or run where the "
                        "hub is reachable once to fill the cache")


def _clip_weights(name: str, tag: str) -> tuple[str, tuple[str, ...]] | None:
    """(hub repo, file names) open_clip fetches for ``name`` + ``tag``; None where it downloads
    from a plain URL. Raises SpecError for a tag open_clip does not know for that model."""
    from stages.models import ensure_torchvision

    ensure_torchvision()
    import open_clip

    if name.startswith("hf-hub:"):
        return name[len("hf-hub:"):], ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)[:8]) or "none"
        raise SpecError(f"models.clip.pretrained: open_clip has no weights {tag!r} for {name!r} (it has: {known}); "
                        "give one of those tags, an hf-hub: id or a local checkpoint path")
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    if not filename:
        return repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    stem = filename.rsplit(".", 1)[0]
    return repo, (filename, stem + ".safetensors")


def _check_aesthetic_head(clip) -> None:
    """The aesthetic head takes the CLIP model's embedding width (read from both configs)."""
    from stages.aesthetic import check_head
    from stages.models import ensure_torchvision, register_open_clip_config

    ensure_torchvision()
    import open_clip

    name = register_open_clip_config(clip.config) if clip.config else clip.name
    config = open_clip.get_model_config(name) if not name.startswith("hf-hub:") else None
    if config is None:
        return  # a hub model's width is known once it is fetched; the CLIP stage checks it then
    try:
        check_head(clip.aesthetic_head, config["embed_dim"])
    except (ValueError, FileNotFoundError) as err:
        raise SpecError(f"models.clip.aesthetic_head: {err}") from None


def check_models(spec: JobSpec) -> None:
    """Every model the job loads resolves before any video is decoded: a local path that exists
    (check_inputs), or weights in the local Hugging Face cache, or a hub that answers. Names
    open_clip does not know fail here too."""
    clip, vlm = spec.models.clip, spec.models.vlm
    if not clip.config and not clip.name.startswith("hf-hub:"):
        from stages.models import ensure_torchvision

        ensure_torchvision()
        import open_clip

        if clip.name not in open_clip.list_models():
            raise SpecError(f"models.clip.name: open_clip has no model {clip.name!r}; give one of "
                            "open_clip.list_models() with models.clip.pretrained, or models.clip.config for your own")
    if clip.pretrained and not _looks_local(clip.pretrained) and not clip.config:
        weights = _clip_weights(clip.name, clip.pretrained)
        if weights is None:
            why = _hub_unreachable()
            if why is not None:
                raise SpecError(f"models.clip.pretrained: {clip.pretrained!r} for {clip.name} downloads from a URL, "
                                f"and the network cannot be reached ({why}); give a local checkpoint path")
        else:
            _hub_or_cache("models.clip.pretrained", f"{clip.pretrained!r} ({weights[0]}) for {clip.name}", *weights)
    elif clip.name.startswith("hf-hub:"):
        _hub_or_cache("models.clip.name", clip.name, *_clip_weights(clip.name, ""))
    if clip.aesthetic_head:
        _check_aesthetic_head(clip)
    if not _looks_local(vlm.name_or_path) and not Path(vlm.name_or_path).exists():
        _hub_or_cache("models.vlm.name_or_path", repr(vlm.name_or_path), vlm.name_or_path,
                      ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    if spec.speech.enabled and not _looks_local(spec.speech.model) and not Path(spec.speech.model).exists():
        _hub_or_cache("speech.model", repr(spec.speech.model), spec.speech.model,
                      ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    if spec.text.enabled and importlib.util.find_spec("rapidocr_onnxruntime") is None:
        raise SpecError("text.enabled: the text detector needs the rapidocr-onnxruntime package (its wheel ships "
                        "the PP-OCRv4 weights): pip install 'vidcurate[text]' on every node")


def output_problem(spec: JobSpec) -> str | None:
    """Why the output cannot be created or written (None: it can). Local: the nearest existing
    folder on its path must be a writable directory; S3: the bucket must answer."""
    from pipeline.output import output_dir

    uri = spec.output.uri
    if uri.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        from pipeline.storage import s3_client, split_s3

        bucket, _ = split_s3(uri)
        try:
            s3_client(spec.storage).head_bucket(Bucket=bucket)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            return f"bucket {bucket!r} cannot be used (S3 answered {code})"
        except BotoCoreError as err:
            return f"bucket {bucket!r} cannot be reached ({err})"
        return None
    target = Path(output_dir(spec))
    where = _against(uri[len("file://"):] if uri.startswith("file://") else uri)
    node = target
    while not os.path.lexists(node) and node != node.parent:
        node = node.parent
    if not node.is_dir():
        return (f"{target} exists and is a file, not a directory{where}" if node == target else
                f"cannot create {target}{where}: {node} is a file, not a directory")
    if not os.access(node, os.W_OK | os.X_OK):
        readonly = bool(os.statvfs(node).f_flag & os.ST_RDONLY)
        return (f"cannot write to {target}{where}: {node} is on a read-only file system" if readonly else
                f"cannot write to {target}{where}: no permission to write in {node}")
    return None


def check_output(spec: JobSpec) -> None:
    """The output can be created and written, or SpecError naming what stands in the way."""
    problem = output_problem(spec)
    if problem:
        raise SpecError(f"output.uri: {problem}")


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
