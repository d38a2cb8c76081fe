"""Tiny models with random weights, built offline, for the demo and the tests.

They have the real architectures (open_clip ViT, Qwen2-VL) at toy sizes, so the
real loading and inference code runs end to end on a CPU without a model hub.
Their outputs (similarities, captions) are meaningless: the demo says so.
Real weights are a job-spec change (models.clip / models.vlm).
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_NAME = "vidcurate-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Words the tiny tokenizer is trained on; any text still tokenizes (byte-level BPE).
_CORPUS = (
    "a video clip of people walking outside in a city street at night with cars and lights "
    "the camera pans left right zooms in and out tilts up down static shot close up wide shot "
    "describe this clip in one sentence summary subjects actions setting style chapter title "
    "animation cartoon rabbit forest bike riding road sky water indoor outdoor person face "
    "json caption video scene motion colour color bright dark text logo watermark blurry"
)
_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_clip(directory: str | Path) -> dict:
    """Write a tiny open_clip model config and a random-weight checkpoint; return model settings."""
    import torch

    from stages.models import register_open_clip_config
    from stages.torchvision_cpu_guard import ensure_torchvision

    ensure_torchvision()
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    register_open_clip_config(str(config_path))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    ckpt = directory / "random_weights.pt"
    torch.save(model.state_dict(), ckpt)
    return {"name": TINY_CLIP_NAME, "pretrained": str(ckpt), "config": str(config_path)}


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok


# Qwen2-VL-2B-Instruct's sizes (its config.json), for benchmarks that need the real compute cost.
QWEN2_VL_2B = {
    "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "mrope_section": [16, 24, 24]},
    "vision": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4},
}


def build_tiny_vlm(directory: str | Path, sizes: str = "tiny") -> dict:
    """Save a Qwen2-VL with random weights and its processor to a local directory: ``tiny``
    (tests, the demo) or ``qwen2-vl-2b`` (Qwen2-VL-2B's layer sizes, for benchmarks; the small
    offline tokenizer only uses the first ids of its 151,936-entry vocabulary). The tiny text
    model's attention heads are 32 wide (2 query heads, 1 key/value head), the narrowest vLLM's
    CPU attention runs, so both ``models.vlm.backend`` values run it."""
    import torch

    from stages.torchvision_cpu_guard import ensure_torchvision

    ensure_torchvision()
    from transformers import (
        PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=_SPECIALS[1:],
    )
    tokenizer.padding_side = "left"
    ids = {t: raw.token_to_id(t) for t in _SPECIALS}
    big = sizes == "qwen2-vl-2b"
    pixels = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280} if big else {"min_pixels": 28 * 28 * 4,
                                                                                  "max_pixels": 28 * 28 * 16}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer, chat_template=_CHAT_TEMPLATE,
    )
    text = dict(QWEN2_VL_2B["text"]) if big else {
        "vocab_size": raw.get_vocab_size(), "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "mrope_section": [4, 6, 6]}
    vision = dict(QWEN2_VL_2B["vision"]) if big else {"depth": 2, "embed_dim": 32, "hidden_size": 64,
                                                       "num_heads": 2, "mlp_ratio": 2}
    mrope = text.pop("mrope_section")
    config = Qwen2VLConfig(
        text_config={
            **text, "max_position_embeddings": 32768 if big else 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0 if big else 10000.0,
                                "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={**vision, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / "VIDCURATE_TINY_RANDOM_WEIGHTS").write_text(
        "Tiny Qwen2-VL with random weights, built offline for tests and the demo.\n"
    )
    return {"name_or_path": str(directory)}
