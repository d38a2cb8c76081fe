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
already rejected pass through. The kept rows of a batch are captioned in one batched ``generate``.
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


class CaptionStage(ModelStage):
    """Ray actor stage wrapping stages.models.VlmRunner."""

    def setup(self) -> None:
        from stages.models import VlmRunner, load_prompt

        self._runner = VlmRunner(self.model_cfg.name_or_path, self.model_cfg.dtype)
        self._prompt_version, self._prompt = load_prompt(self.settings.prompt_name)
        self._generation = json.dumps({"max_new_tokens": self.settings.max_new_tokens,
                                       "temperature": self.settings.temperature,
                                       "frames": self.settings.frames, "format": self.settings.format,
                                       "hints": self.settings.hints, "retries": self.settings.retries},
                                      sort_keys=True)

    def _generate(self, prompts: list[str], images: list) -> list[str]:
        return self._runner.generate(prompts, images, max_new_tokens=self.settings.max_new_tokens,
                                     temperature=self.settings.temperature)

    def _caption(self, items: list[dict], hints: list[dict]) -> None:
        """Caption ``items`` (clips or windows: frames, speech) in one batch, retrying replies
        whose JSON does not parse; sets caption_text, caption_fields, caption_parse_status."""
        from stages.structured import align_events, hint_lines, parse_caption

        images = [decode_jpegs(subsample(it["frames"], self.settings.frames)) for it in items]
        prompts = [render_prompt(self._prompt, hint_lines(h if self.settings.hints else {}, it.get("speech")),
                                 it["end_s"] - it["start_s"]) for it, h in zip(items, hints)]
        texts = self._generate(prompts, images)
        parsed = [None] * len(items)
        if self.settings.format == "json":
            parsed = [parse_caption(t) for t in texts]
            for _ in range(self.settings.retries):
                again = [i for i, (_, status) in enumerate(parsed) if status == "failed"]
                if not again:
                    break
                retry = self._generate([prompts[i] + STRICT for i in again], [images[i] for i in again])
                for i, text in zip(again, retry):
                    fields, status = parse_caption(text)
                    if fields is not None:
                        texts[i], parsed[i] = text, (fields, "repaired" if status == "ok" else status)
        for it, text, result in zip(items, texts, parsed):
            fields, status = result if result else (None, None)
            if fields:  # times the model wrote: clamped into the clip, non-decreasing, clip-relative
                fields["events"] = align_events(fields["events"], it["end_s"] - it["start_s"])
            it.update(caption_text=fields["summary"] if fields else clean_text(text),
                      caption_fields=json.dumps(fields, sort_keys=True) if fields else None,
                      caption_parse_status=status)

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [r for r in rows if r["status"] == "kept"]
        if todo:
            self._caption(todo, todo)
            windows = [(w, r) for r in todo for w in (r.get("windows") or [])]
            if windows:  # the dense layer: every window of the batch's long clips in one batch
                self._caption([w for w, _ in windows], [r for _, r in windows])
                for w, _ in windows:
                    w["frames"] = None  # not needed past this stage
            for row in todo:
                row.update(caption_model=self._runner.model_id, caption_prompt_version=self._prompt_version,
                           caption_generation=self._generation)
        return schemas.work_table(rows)
