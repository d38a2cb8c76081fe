"""Stage fingerprints: per stage, a hash of everything that shapes its per-video results.

Committed work (pipeline.units) is reused when its stage's fingerprint matches; each stage's
fingerprint includes the previous stage's, the schema version and the vidcurate version.
"""

from __future__ import annotations

import hashlib
import json

# The settings that shape each stage's results (each stage also inherits the previous stage's).
STAGE_SETTINGS = {
    "analyze": ("probe", "analysis", "shots", "scores", "caption.window_s", "caption.subtitles", "models.transnetv2"),
    "clip": ("models.clip", "clip_filter"),
    "caption": ("models.vlm", "caption"),
    "hierarchy": ("chapters",),
    "output": ("output.samples_per_shard", "output.long_samples"),
}

# Settings that change how fast a stage runs, never what it computes (tests/test_guard.py checks
# the decoders'): left out of the fingerprints, so changing them reuses committed work.
SPEED_ONLY = ("analysis.decode_workers", "analysis.decoder_threads")


def fingerprints(spec) -> dict[str, str]:
    """{stage: 16 hex digits} for a pipeline.spec.JobSpec; prompt texts are hashed, not their names."""
    import schemas
    from pipeline import __version__
    from stages.models import load_prompt

    doc = spec.model_dump(mode="json")
    prompts = {"caption": [spec.caption.prompt_name],
               "hierarchy": [spec.chapters.chapter_prompt, spec.chapters.video_prompt, spec.chapters.entity_prompt,
                             "chapter_title_v1"]}
    out, prev = {}, f"{schemas.SCHEMA_VERSION}:{__version__}"
    for stage, keys in STAGE_SETTINGS.items():
        picked = {k: _setting(doc, k) for k in keys}
        for k in SPEED_ONLY:
            section, _, name = k.rpartition(".")
            if section in picked:
                picked[section] = {n: v for n, v in picked[section].items() if n != name}
        picked["prompts"] = [load_prompt(p) for p in prompts.get(stage, [])]
        blob = json.dumps([prev, stage, picked], sort_keys=True).encode()
        out[stage] = prev = hashlib.sha256(blob).hexdigest()[:16]
    return out


def _setting(doc: dict, dotted: str):
    """``doc["a"]["b"]`` for ``"a.b"``."""
    for part in dotted.split("."):
        doc = doc[part]
    return doc
