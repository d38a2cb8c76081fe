"""Caption-clip fit: how well a clip's caption describes the clip, by CLIP.

Reads: ``caption_text`` and ``embedding`` (the clip's mean image embedding, normalised, from the
CLIP stage). Adds: ``caption_clip_sim``, the cosine between the CLIP text embedding of the clip
caption and that image embedding, and ``caption_fit_model`` (the CLIP model's id), on every clip
that has a caption; other rows pass through untouched. The threshold
(``scores.min_caption_clip_sim``, reason ``caption_mismatch``) is applied by stages.decide: a
clip dropped for its caption keeps the caption in its row, marked as dropped.

The text goes through the model's own tokenizer, which truncates at its context (77 tokens for
the OpenAI and LAION CLIP models: about the first 50-60 words of a caption); a structured
caption is scored on its text (``caption_text``, the summary and what follows it).

Scores are on the scale of the CLIP model, not comparable across models: image-text cosines of
matching pairs are about 0.25-0.35 on ViT-B/32 and ViT-L/14 (NeMo Curator's caption-fit filter
works on the same embedding similarity). Resources: resources.caption_fit (actor pool; GPU when
given).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import schemas
from stages.base import ModelStage


def clip_model_id(cfg) -> str:
    """The id the CLIP stage records for this model (clips.clip_model)."""
    return f"open_clip:{cfg.name}:{cfg.pretrained}"


class CaptionFitStage(ModelStage):
    """Ray actor stage: CLIP text embeddings of clip captions against the clips' image embeddings."""

    def setup(self) -> None:
        from stages.models import load_open_clip

        self._model, _, self._tokenizer = load_open_clip(self.model_cfg.name, self.model_cfg.pretrained,
                                                         self.model_cfg.config)
        self._device = next(self._model.parameters()).device
        self._model_id = clip_model_id(self.model_cfg)

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """Normalised CLIP text embeddings, one row per text."""
        import torch

        with torch.inference_mode():
            e = self._model.encode_text(self._tokenizer(texts).to(self._device)).float()
        return torch.nn.functional.normalize(e, dim=-1).cpu().numpy()

    def process(self, batch: pa.Table) -> pa.Table:
        """Each caption goes through the text encoder on its own: a batch's shape can move the
        last bits of a float, and a clip's score must not depend on which captions it was
        scored with (a threshold rerun scores the captions it adds beside older ones)."""
        rows = batch.to_pylist()
        for r in rows:
            if r.get("caption_text") and r.get("embedding") is not None:
                t = self.text_embeddings([r["caption_text"]])[0]
                image = np.asarray(r["embedding"], dtype=np.float32)
                image = image / max(float(np.linalg.norm(image)), 1e-12)
                r.update(caption_clip_sim=float(t @ image), caption_fit_model=self._model_id)
        return schemas.work_table(rows)
