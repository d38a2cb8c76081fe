"""Chapters and the caption hierarchy: clips -> chapters -> one video caption.

Consecutive kept clips of a video are grouped into chapters where the cosine similarity of
adjacent clip embeddings stays above spec.chapters.similarity_threshold. Each chapter gets a
title and a summary generated (text only) from its clip captions; the video gets one caption
generated from the chapter summaries. All rows carry absolute start/end seconds.

Reads (one row per video): video_id, duration_s, clips_json. Adds: chapters_json,
captions_json. Resources: resources.hierarchy (actor pool sharing the VLM).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from stages.base import ModelStage, clean_text, stable_id

HIERARCHY_OUT = pa.schema([("video_id", pa.string()), ("chapters_json", pa.string()),
                           ("captions_json", pa.string())])


def group_chapters(embeddings: list, threshold: float, min_clips: int = 1) -> list[list[int]]:
    """Indices of consecutive clips grouped where adjacent cosine >= threshold.

    A chapter shorter than ``min_clips`` is merged into its predecessor.
    """
    if not embeddings:
        return []
    groups = [[0]]
    for i in range(1, len(embeddings)):
        a, b = embeddings[i - 1], embeddings[i]
        sim = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)) if a and b else 1.0
        if sim < threshold and len(groups[-1]) >= min_clips:
            groups.append([i])
        else:
            groups[-1].append(i)
    if len(groups) > 1 and len(groups[-1]) < min_clips:
        groups[-2].extend(groups.pop())
    return groups


def caption_id(owner_id: str, level: str, model: str, prompt_version: str) -> str:
    return stable_id("caption", owner_id, level, model, prompt_version)


class HierarchyStage(ModelStage):
    """Ray actor stage: chapters, chapter titles and summaries, and the video caption."""

    def setup(self) -> None:
        from stages.models import VlmRunner, load_prompt

        self._runner = VlmRunner(self.model_cfg.name_or_path, self.model_cfg.dtype)
        self._chapter = load_prompt(self.settings.chapter_prompt)
        self._title = load_prompt("chapter_title_v1")
        self._video = load_prompt(self.settings.video_prompt)
        self._generation = json.dumps({"max_new_tokens": self.settings.max_new_tokens, "temperature": 0.0})

    def _gen(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        out = self._runner.generate(prompts, max_new_tokens=self.settings.max_new_tokens)
        return [clean_text(t) for t in out]

    def _chapters(self, video_id: str, clips: list[dict]) -> list[dict]:
        """Chapter rows of one video, each with the prompts for its summary and title."""
        groups = group_chapters([c["embedding"] for c in clips], self.settings.similarity_threshold,
                                self.settings.min_clips)
        model, (cv, ct), (_, tt) = self._runner.model_id, self._chapter, self._title
        chapters = []
        for index, group in enumerate(groups):
            members = [clips[i] for i in group]
            chapter_id = stable_id("chapter", video_id, index, members[0]["clip_id"])
            lines = "\n".join(f"[{c['start_s']:.1f}s-{c['end_s']:.1f}s] {c['caption_text']}" for c in members)
            chapters.append({"chapter_id": chapter_id, "video_id": video_id, "index": index,
                             "start_s": members[0]["start_s"], "end_s": members[-1]["end_s"],
                             "source": "automatic", "clip_ids": [c["clip_id"] for c in members],
                             "caption_id": caption_id(chapter_id, "chapter", model, cv),
                             "_summary_prompt": ct.format(captions=lines),
                             "_title_prompt": tt.format(captions=lines)})
        return chapters

    def process(self, batch: pa.Table) -> pa.Table:
        videos = batch.to_pylist()
        per_video = [self._chapters(v["video_id"], json.loads(v["clips_json"])) for v in videos]
        all_chapters = [c for chapters in per_video for c in chapters]
        summaries = self._gen([c.pop("_summary_prompt") for c in all_chapters])
        titles = self._gen([c.pop("_title_prompt") for c in all_chapters])
        for chapter, summary, title in zip(all_chapters, summaries, titles):
            chapter.update(summary=summary, title=title.splitlines()[0] if title else "")
        video_prompts = [self._video[1].format(summaries="\n".join(
            f"{i + 1}. {c['summary']}" for i, c in enumerate(chapters))) for chapters in per_video]
        video_texts = self._gen(video_prompts)
        out, model = [], self._runner.model_id
        for v, chapters, text in zip(videos, per_video, video_texts):
            video_cap = caption_id(v["video_id"], "video", model, self._video[0])
            captions = [{"caption_id": video_cap, "video_id": v["video_id"], "level": "video",
                         "parent_id": None, "start_s": 0.0, "end_s": v["duration_s"], "text": text,
                         "model": model, "prompt_version": self._video[0], "generation": self._generation}]
            for c in chapters:
                c["duration_s"] = c["end_s"] - c["start_s"]
                captions.append({"caption_id": c["caption_id"], "video_id": v["video_id"],
                                 "chapter_id": c["chapter_id"], "level": "chapter", "parent_id": video_cap,
                                 "start_s": c["start_s"], "end_s": c["end_s"], "text": c["summary"],
                                 "model": model, "prompt_version": self._chapter[0],
                                 "generation": self._generation})
            out.append({"video_id": v["video_id"], "chapters_json": json.dumps(chapters),
                        "captions_json": json.dumps(captions)})
        return pa.Table.from_pylist(out, schema=HIERARCHY_OUT)
