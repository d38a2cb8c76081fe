"""CLIP measurement: open_clip image embeddings of sampled frames, similarity to keep/reject prompts.

Reads: frames, status. Adds: embedding (mean of normalized frame embeddings, normalized),
clip_keep_sim, clip_reject_sim, clip_model, and with models.clip.aesthetic_head the LAION
aesthetic score of the clip's least aesthetic frame (aesthetic, aesthetic_model; stages.aesthetic),
for every clip its cut keeps (whatever its scores:
thresholds decide later, in stages.decide, from what is recorded here). Rows the cut rejected
pass through untouched.
Resources: resources.clip (actor pool; GPU when given).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import schemas
from stages.base import ModelStage, decode_jpegs, subsample


def mean_embedding(frame_embeddings: np.ndarray) -> np.ndarray:
    """Normalize each frame embedding, average, normalize again."""
    e = frame_embeddings / np.linalg.norm(frame_embeddings, axis=1, keepdims=True).clip(1e-12)
    m = e.mean(axis=0)
    return m / max(float(np.linalg.norm(m)), 1e-12)


class ClipEmbedStage(ModelStage):
    """Ray actor stage: embeds the frames of the clips the cut keeps and measures their prompt similarities."""

    def setup(self) -> None:
        import torch

        from stages.models import load_open_clip

        self._model, self._preprocess, tokenizer = load_open_clip(
            self.model_cfg.name, self.model_cfg.pretrained, self.model_cfg.config)
        self._device = next(self._model.parameters()).device
        prompts = list(self.settings.keep_prompts) + list(self.settings.reject_prompts)
        with torch.inference_mode():
            text = self._model.encode_text(tokenizer(prompts).to(self._device)).float()
        text = torch.nn.functional.normalize(text, dim=-1).cpu().numpy()
        n_keep = len(self.settings.keep_prompts)
        self._keep, self._reject = text[:n_keep], text[n_keep:]
        self._model_id = f"open_clip:{self.model_cfg.name}:{self.model_cfg.pretrained}"
        self._aesthetic = None
        if getattr(self.model_cfg, "aesthetic_head", None):  # scored where the embeddings already are
            from stages.aesthetic import AestheticHead

            self._aesthetic = AestheticHead(self.model_cfg.aesthetic_head, device=str(self._device))

    def _embed(self, frames: list[bytes]) -> np.ndarray:
        import torch

        images = decode_jpegs(subsample(frames, self.settings.frames))
        pixels = torch.stack([self._preprocess(im) for im in images]).to(self._device)
        with torch.inference_mode():
            return self._model.encode_image(pixels).float().cpu().numpy()

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            if row["status"] != "kept":
                continue
            feats = self._embed(row["frames"])
            emb = mean_embedding(feats)
            if self._aesthetic is not None:  # LAION style: each frame scored, the least aesthetic counts
                row.update(aesthetic=self._aesthetic(feats), aesthetic_model=self._aesthetic.model_id)
            keep_sim = float((self._keep @ emb).max())
            reject_sim = float((self._reject @ emb).max()) if len(self._reject) else -1.0
            row.update(embedding=emb.astype(np.float32).tolist(), clip_keep_sim=keep_sim,
                       clip_reject_sim=reject_sim, clip_model=self._model_id)
        return schemas.work_table(rows)
