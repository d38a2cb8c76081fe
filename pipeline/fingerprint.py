"""Stage fingerprints: per stage, a hash of everything that shapes its per-video results.

Committed work (pipeline.units) is reused when its stage's fingerprint matches. A stage's
fingerprint covers its settings and prompts, the fingerprints of the stages whose columns it
reads (``Stage.reads``; those the spec runs), the schema version and the vidcurate version; so
a stage that nothing reads (a score only the decision uses) moves no other fingerprint. The
stages, their settings, prompts and reads come from the stage graph (pipeline.graph).
"""

from __future__ import annotations

import hashlib
import json

from pipeline.graph import OUTPUT_SETTINGS, chain, setting

# Settings that change how fast a stage runs, never what it computes (tests/test_guard.py checks
# the decoders'): left out of the fingerprints, so changing them reuses committed work.
SPEED_ONLY = ("analysis.decode_workers", "analysis.decoder_threads")


def fingerprints(spec) -> dict[str, str]:
    """{stage: 16 hex digits} for a pipeline.spec.JobSpec, plus "output" (what shapes the written
    parts and shards) and "decide" (the thresholds); prompt texts are hashed, not their names."""
    import schemas
    from pipeline import __version__
    from pipeline.assemble import CHAPTER_BYTES
    from stages.extract import ENCODER
    from stages.models import load_prompt

    doc = spec.model_dump(mode="json")
    stages = chain(spec)
    # the written parts and shards hold every stage's columns: "output" reads them all
    rows = [(s.name, s.settings, s.prompts, s.reads) for s in stages] + \
        [("output", OUTPUT_SETTINGS, (), tuple(s.name for s in stages))]
    out, base = {}, f"{schemas.SCHEMA_VERSION}:{__version__}"
    for stage, keys, prompts, reads in rows:
        picked = {k: setting(doc, k) for k in keys}
        for k in SPEED_ONLY:
            section, _, name = k.rpartition(".")
            if section in picked:
                picked[section] = {n: v for n, v in picked[section].items() if n != name}
        picked["prompts"] = [load_prompt(setting(spec, p) if "." in p else p) for p in prompts]
        if stage == "output":
            picked["encoder"], picked["chapter_bytes"] = ENCODER, CHAPTER_BYTES
        inputs = [out[r] for r in reads if r in out]  # a stage switched off is no input
        blob = json.dumps([base, inputs, stage, picked], sort_keys=True).encode()
        out[stage] = hashlib.sha256(blob).hexdigest()[:16]
    # the thresholds: they shape which clips are kept (the written partitions), no measurement
    from stages.decide import THRESHOLDS

    blob = json.dumps(["decide", {k: setting(doc, k) for k in THRESHOLDS}], sort_keys=True).encode()
    out["decide"] = hashlib.sha256(blob).hexdigest()[:16]
    return out
