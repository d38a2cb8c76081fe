"""Caption: one caption per kept clip from a transformers VLM in an actor pool.

With ``caption.format: json`` (the default) the model is asked for a structured caption
(stages/structured.py): summary, subjects, actions, setting, camera motion, shot type and
style. Replies are parsed tolerantly; a clip whose reply cannot be parsed is asked again
(``caption.retries``) with a stricter instruction, and if it still fails its caption keeps the
model's text and is marked ``failed``. The measured camera motion and motion of the clip are
offered to the prompt (``{hints}``) when ``caption.hints`` is on.

Clips longer than ``caption.window_s`` also have each of their windows captioned the same
way (the temporally dense layer; windows are made in the analysis pass with their own frames).

Reads: frames, windows, status, camera_motion, motion, speech (subtitles during the clip).
Adds: caption_text, caption_fields (JSON), caption_parse_status (also per window, whose frames
are dropped once captioned), caption_model, caption_prompt_version, caption_generation. Rows
already rejected pass through. Clips and windows are captioned in batched ``generate`` calls of
``resources.caption.batch_size`` items; their inputs are made ahead by CPU tasks (pipeline/units.py).
Resources: resources.caption (actor pool; one GPU per actor when the cluster has GPUs).
"""

from __future__ import annotations

import json

import pyarrow as pa

import schemas
from stages.base import ModelStage, clean_text, decode_jpegs, subsample

STRICT = "\n\nReply with the JSON object only: start with { and end with }."


def render_prompt(template: str, hints: str, duration_s: float | None = None) -> str:
    """The prompt with ``{hints}`` filled (and its line dropped when there are none) and
    ``{duration}`` set to the clip's length. Other braces (JSON examples) are left alone."""
    if duration_s is not None:
        template = template.replace("{duration}", f"{duration_s:.1f}")
    if hints:
        return template.replace("{hints}", hints)
    return "\n".join(line for line in template.splitlines() if line.strip() != "{hints}").replace("{hints}", "")


def caption_items(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(item, the clip row giving its hints) to caption: each kept clip, then each window of the
    kept long clips (the dense layer), in row order."""
    kept = [r for r in rows if r["status"] == "kept"]
    return [(r, r) for r in kept] + [(w, r) for r in kept for w in (r.get("windows") or [])]


class CaptionStage(ModelStage):
    """Ray actor stage wrapping stages.models.VlmRunner.

    Split in two halves so the CPU work can run ahead of the GPU actors: ``prepare`` (prompt,
    frames, processor; needs only ``setup_inputs``) and ``caption`` (generation, parsing and
    retries, over any number of row groups pooled into model batches of ``batch_size``).
    ``process`` does both, for a batch of clip rows.
    """

    def __init__(self, *, model, settings, batch_size: int | None = None):
        super().__init__(model=model, settings=settings)
        self.batch_size = batch_size
        self._inputs = None

    def setup_inputs(self) -> None:
        """The CPU half only: prompt file and processor (no weights)."""
        from stages.models import cached_inputs, load_prompt

        if self._inputs is None:
            self._inputs = cached_inputs(self.model_cfg.name_or_path, self.model_cfg.backend)
            self._prompt_version, self._prompt = load_prompt(self.settings.prompt_name)

    def setup(self) -> None:
        from stages.models import VlmRunner

        self.setup_inputs()
        self._runner = VlmRunner(self.model_cfg.name_or_path, self.model_cfg.dtype, self.model_cfg.backend,
                                 max_images=self.settings.frames)
        self._inputs = self._runner.inputs
        self._generation = json.dumps({"backend": self.model_cfg.backend,
                                       "max_new_tokens": self.settings.max_new_tokens,
                                       "temperature": self.settings.temperature,
                                       "frames": self.settings.frames, "format": self.settings.format,
                                       "hints": self.settings.hints, "retries": self.settings.retries},
                                      sort_keys=True)

    def use_cpu_threads(self, threads: int) -> None:
        """The model's CPU threads for generation from the calling thread on (after setup)."""
        self._runner.use_cpu_threads(threads)

    def free_cpu_threads(self) -> None:
        """Let go of the calling thread's OpenMP workers (stages.models.free_openmp_team)."""
        self._runner.free_cpu_threads()

    def _prompt_for(self, item: dict, hint_row: dict) -> str:
        from stages.structured import hint_lines

        return render_prompt(self._prompt, hint_lines(hint_row if self.settings.hints else {}, item.get("speech")),
                             item["end_s"] - item["start_s"])

    def _images(self, item: dict) -> list:
        return decode_jpegs(subsample(item["frames"], self.settings.frames))

    def prepare(self, rows: list[dict]) -> list[dict]:
        """Model inputs of every item ``caption_items(rows)`` gives, in that order (CPU work)."""
        self.setup_inputs()
        return [self._inputs.prepare(self._prompt_for(it, h), self._images(it)) for it, h in caption_items(rows)]

    def _generate(self, prepared: list[dict]) -> list[str]:
        texts = []
        size = self.batch_size or len(prepared) or 1
        for start in range(0, len(prepared), size):
            texts += self._runner.generate_prepared(prepared[start:start + size],
                                                    max_new_tokens=self.settings.max_new_tokens,
                                                    temperature=self.settings.temperature)
        return texts

    def caption(self, groups: list[tuple[list[dict], list[dict] | None]]) -> None:
        """Caption the rows of every (rows, prepared or None) group in place. The groups' items
        are pooled into model batches of ``batch_size`` in order (clips and videos share a batch);
        replies whose JSON does not parse are asked again with a stricter instruction."""
        from stages.structured import align_events, parse_caption

        items, prepared = [], []
        for rows, ready in groups:
            group = caption_items(rows)
            items += group
            prepared += ready if ready is not None else self.prepare(rows)
        if not items:
            return
        texts = self._generate(prepared)
        parsed = [None] * len(items)
        if self.settings.format == "json":
            parsed = [parse_caption(t) for t in texts]
            for _ in range(self.settings.retries):
                again = [i for i, (_, status) in enumerate(parsed) if status == "failed"]
                if not again:
                    break
                retry = self._generate([self._inputs.prepare(self._prompt_for(*items[i]) + STRICT,
                                                             self._images(items[i][0])) for i in again])
                for i, text in zip(again, retry):
                    fields, status = parse_caption(text)
                    if fields is not None:
                        texts[i], parsed[i] = text, (fields, "repaired" if status == "ok" else status)
        for (it, _), text, result in zip(items, texts, parsed):
            fields, status = result if result else (None, None)
            if fields:  # times the model wrote: clamped into the clip, non-decreasing, clip-relative
                fields["events"] = align_events(fields["events"], it["end_s"] - it["start_s"])
            it.update(caption_text=fields["summary"] if fields else clean_text(text),
                      caption_fields=json.dumps(fields, sort_keys=True) if fields else None,
                      caption_parse_status=status)
        for rows, _ in groups:
            for row in rows:
                if row["status"] != "kept":
                    continue
                for w in row.get("windows") or []:
                    w["frames"] = None  # not needed past this stage
                row.update(caption_model=self._runner.model_id, caption_prompt_version=self._prompt_version,
                           caption_generation=self._generation)

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        self.caption([(rows, None)])
        return schemas.work_table(rows)
