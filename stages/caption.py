"""Caption: one caption per kept clip from a transformers VLM in an actor pool.

Reads: frames, status. Adds: caption_text, caption_model, caption_prompt_version,
caption_generation. Rows already rejected pass through. The kept rows of a batch are
captioned in one batched ``generate``. Resources: resources.caption (actor pool; one GPU
per actor when the cluster has GPUs).
"""

from __future__ import annotations

import json

import pyarrow as pa

import schemas
from stages.base import ModelStage, clean_text, decode_jpegs, subsample


class CaptionStage(ModelStage):
    """Ray actor stage wrapping stages.models.VlmRunner."""

    def setup(self) -> None:
        from stages.models import VlmRunner, load_prompt

        self._runner = VlmRunner(self.model_cfg.name_or_path, self.model_cfg.dtype)
        self._prompt_version, self._prompt = load_prompt(self.settings.prompt)
        self._generation = json.dumps({"max_new_tokens": self.settings.max_new_tokens,
                                       "temperature": self.settings.temperature,
                                       "frames": self.settings.frames}, sort_keys=True)

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [r for r in rows if r["status"] == "kept"]
        if todo:
            images = [decode_jpegs(subsample(r["frames"], self.settings.frames)) for r in todo]
            texts = self._runner.generate([self._prompt] * len(todo), images,
                                          max_new_tokens=self.settings.max_new_tokens,
                                          temperature=self.settings.temperature)
            for row, text in zip(todo, texts):
                row.update(caption_text=clean_text(text), caption_model=self._runner.model_id,
                           caption_prompt_version=self._prompt_version,
                           caption_generation=self._generation)
        return schemas.work_table(rows)
