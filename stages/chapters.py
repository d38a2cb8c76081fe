"""Chapters and the caption hierarchy: clips -> chapters -> one video caption.

Consecutive kept clips of a video are grouped into chapters where the cosine similarity of
adjacent clip embeddings stays above spec.chapters.similarity_threshold and their captions
still share content (TF-IDF cosine of caption words, setting and subjects at least
spec.chapters.text_threshold): a change of place or topic the captions name starts a chapter
even where the pictures look alike. Each chapter gets a
title and a summary generated (text only) from its clip captions; the video gets one caption
generated from the chapter summaries. All rows carry absolute start/end seconds.

Chapters given with the video (container chapter marks, or timestamps in the manifest's
description, stages/marks.py) are used when present, snapped to shot starts, with their titles;
otherwise chapters are automatic, kept within chapters.min_chapter_s / max_chapter_s.

Reads (one row per video): video_id, duration_s, clips_json, marks_json. Adds: chapters_json,
captions_json. Resources: resources.hierarchy (actor pool sharing the VLM: the same model and
``models.vlm.backend`` as the clip captions).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from stages.base import ModelStage, clean_text, stable_id

def chapter_marks(video: dict, description: str | None, settings) -> tuple[str, list[dict] | None]:
    """(source, chapters [{"start_s", "end_s", "title"}] or None for automatic) of one video:
    the container's chapter marks, else its description's timestamps, snapped to shot starts."""
    from stages.marks import parse_description, snap_marks

    found = {"metadata": list(video.get("chapter_marks") or []), "description": parse_description(description)}
    order = ["metadata", "description"] if settings.source == "auto" else [settings.source]
    starts = sorted({b["start_s"] if b["type"] == "cut" else b["end_s"] for b in video.get("boundaries") or []})
    for source in order:
        marks = found.get(source)
        if marks and len(marks) >= 1:
            chapters = snap_marks(marks, starts, settings.snap_s, video["duration_s"])
            if chapters:
                return source, chapters
    return "automatic", None


def group_by_marks(clips: list[dict], marks: list[dict]) -> list[tuple[dict, list[int]]]:
    """Clips (in time order) assigned to the given chapter whose span holds their midpoint;
    chapters without kept clips are left out."""
    groups = []
    for mark in marks:
        members = [i for i, c in enumerate(clips) if mark["start_s"] <= (c["start_s"] + c["end_s"]) / 2 < mark["end_s"]]
        if members:
            groups.append((mark, members))
    return groups


def bound_durations(groups: list[list[int]], clips: list[dict], sims: list[float],
                    min_s: float, max_s: float | None) -> list[list[int]]:
    """Automatic chapters kept within [min_s, max_s]: a too-short chapter merges into the
    neighbour it is more similar to; a too-long one splits at its least similar adjacent clips."""
    def span(g):
        return clips[g[-1]]["end_s"] - clips[g[0]]["start_s"]

    groups = [list(g) for g in groups]
    while min_s > 0 and len(groups) > 1:
        short = [k for k, g in enumerate(groups) if span(g) < min_s]
        if not short:
            break
        k = min(short, key=lambda k: span(groups[k]))
        left = sims[groups[k][0] - 1] if k > 0 else -2.0          # similarity across each edge
        right = sims[groups[k][-1]] if k + 1 < len(groups) else -2.0
        j = k - 1 if left >= right else k + 1
        lo, hi = min(k, j), max(k, j)
        groups[lo:hi + 1] = [groups[lo] + groups[hi]]
    if max_s:
        out = []
        todo = list(groups)
        while todo:
            g = todo.pop(0)
            if span(g) <= max_s or len(g) < 2:
                out.append(g)
                continue
            cut = min(range(len(g) - 1), key=lambda i: sims[g[i]]) + 1
            todo[:0] = [g[:cut], g[cut:]]
        groups = out
    return groups


_STOP = frozenset("""a an the and or but of in on at to from with by for as is are was were be been being it its
this that these those there here he she they them his her their we you i our your who whom which what while into
onto over under up down out off than then so very just also not no some any each other another more most one two
three while during through across around near behind front left right video clip scene shows shown showing image
frame frames camera shot""".split())


def _words(text: str) -> list[str]:
    import re

    return [w for w in re.findall(r"[a-z][a-z0-9']+", (text or "").lower()) if w not in _STOP and len(w) > 2]


def text_similarity(texts: list[str]) -> list[float | None]:
    """TF-IDF cosine of caption i and caption i+1 over one video's captions (words every caption
    uses weigh nothing); None where either caption has no content words."""
    import math
    from collections import Counter

    bags = [Counter(_words(t)) for t in texts]
    df = Counter(w for bag in bags for w in bag)
    n = len(bags)
    vectors = [{w: c * math.log((1 + n) / (1 + df[w])) for w, c in bag.items()} for bag in bags]
    sims: list[float | None] = []
    for a, b in zip(vectors, vectors[1:]):
        na, nb = math.sqrt(sum(v * v for v in a.values())), math.sqrt(sum(v * v for v in b.values()))
        sims.append(sum(v * b.get(w, 0.0) for w, v in a.items()) / (na * nb) if na and nb else None)
    return sims


def change_similarity(clips: list[dict], threshold: float, text_threshold: float | None) -> list[float]:
    """Adjacent-clip similarity for chapter change points: the embeddings' cosine, pushed just
    below ``threshold`` where the captions share (almost) no content (text cosine below
    ``text_threshold``; null: pictures only)."""
    sims = adjacent_similarity([c["embedding"] for c in clips])
    if text_threshold is None:
        return sims
    texts = [" ".join([c.get("caption_text") or "", c.get("setting") or "", *(c.get("subjects") or [])]) for c in clips]
    for i, t in enumerate(text_similarity(texts)):
        if t is not None and t < text_threshold:
            sims[i] = min(sims[i], threshold - 1e-3 - (text_threshold - t))
    return sims


def adjacent_similarity(embeddings: list) -> list[float]:
    """Cosine similarity of clip i and clip i+1 (1.0 where an embedding is missing)."""
    sims = []
    for a, b in zip(embeddings, embeddings[1:]):
        sims.append(float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)) if a and b else 1.0)
    return sims


HIERARCHY_OUT = pa.schema([("video_id", pa.string()), ("chapters_json", pa.string()),
                           ("captions_json", pa.string()), ("entities_json", pa.string())])


def group_chapters(embeddings: list, threshold: float, min_clips: int = 1, sims: list[float] | None = None
                   ) -> list[list[int]]:
    """Indices of consecutive clips grouped where adjacent similarity >= threshold (``sims``, else
    the embeddings' adjacent cosine). A chapter shorter than ``min_clips`` merges into its predecessor.
    """
    if not embeddings:
        return []
    groups = [[0]]
    for i, sim in enumerate(sims if sims is not None else adjacent_similarity(embeddings), start=1):
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

        # the clip captions' backend: a node never holds the model twice, once per engine
        self._runner = VlmRunner(self.model_cfg.name_or_path, self.model_cfg.dtype, self.model_cfg.backend,
                                 max_images=0)  # text-only prompts
        self._chapter = load_prompt(self.settings.chapter_prompt)
        self._title = load_prompt("chapter_title_v1")
        self._video = load_prompt(self.settings.video_prompt)
        self._entities = load_prompt(self.settings.entity_prompt)
        self._generation = json.dumps({"backend": self.model_cfg.backend,
                                       "max_new_tokens": self.settings.max_new_tokens, "temperature": 0.0})

    def _gen(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        out = self._runner.generate(prompts, max_new_tokens=self.settings.max_new_tokens)
        return [clean_text(t) for t in out]

    def _chapters(self, video_id: str, clips: list[dict], source: str, marks: list[dict] | None) -> list[dict]:
        """Chapter rows of one video, each with the prompts for its summary and (when no title
        was given with the video) its title."""
        if marks:
            planned = group_by_marks(clips, marks)
        else:
            sims = change_similarity(clips, self.settings.similarity_threshold, self.settings.text_threshold)
            groups = group_chapters([c["embedding"] for c in clips], self.settings.similarity_threshold,
                                    self.settings.min_clips, sims)
            groups = bound_durations(groups, clips, sims, self.settings.min_chapter_s, self.settings.max_chapter_s)
            planned = [({"title": None}, g) for g in groups]
        model, (cv, ct), (_, tt) = self._runner.model_id, self._chapter, self._title
        chapters = []
        for index, (mark, group) in enumerate(planned):
            members = [clips[i] for i in group]
            chapter_id = stable_id("chapter", video_id, index, members[0]["clip_id"])
            lines = "\n".join(f"[{c['start_s']:.1f}s-{c['end_s']:.1f}s] {c['caption_text']}" for c in members)
            chapters.append({"chapter_id": chapter_id, "video_id": video_id, "index": index,
                             "start_s": members[0]["start_s"], "end_s": members[-1]["end_s"],
                             "source": source, "clip_ids": [c["clip_id"] for c in members],
                             "caption_id": caption_id(chapter_id, "chapter", model, cv),
                             "title": mark.get("title"),
                             "_summary_prompt": ct.format(captions=lines),
                             "_title_prompt": None if mark.get("title") else tt.format(captions=lines)})
        return chapters

    def process(self, batch: pa.Table) -> pa.Table:
        videos = batch.to_pylist()
        clips_of = [json.loads(v["clips_json"]) for v in videos]
        entities = self._name_entities(clips_of)
        per_video = []
        for v, clips in zip(videos, clips_of):
            plan = json.loads(v["marks_json"]) if v.get("marks_json") else {"source": "automatic", "marks": None}
            per_video.append(self._chapters(v["video_id"], clips, plan["source"], plan["marks"]))
        all_chapters = [c for chapters in per_video for c in chapters]
        summaries = self._gen([c.pop("_summary_prompt") for c in all_chapters])
        need_title = [c for c in all_chapters if c["_title_prompt"] is not None]
        titles = self._gen([c["_title_prompt"] for c in need_title])
        for chapter, title in zip(need_title, titles):
            chapter["title"] = title.splitlines()[0] if title else ""
        for chapter, summary in zip(all_chapters, summaries):
            chapter.pop("_title_prompt")
            chapter["summary"] = summary
        video_prompts = [self._video[1].format(summaries="\n".join(
            f"{i + 1}. {c['summary']}" for i, c in enumerate(chapters))) for chapters in per_video]
        video_texts = self._gen(video_prompts)
        out, model = [], self._runner.model_id
        for v, chapters, text, ents in zip(videos, per_video, video_texts, entities):
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
                        "captions_json": json.dumps(captions), "entities_json": json.dumps(ents)})
        return pa.Table.from_pylist(out, schema=HIERARCHY_OUT)

    def _name_entities(self, clips_of: list[list[dict]]) -> list[dict]:
        """One text-only call per video with two or more captioned clips; the clips' caption
        texts are renamed in place (so chapter summaries see the shared names)."""
        from stages.entities import entity_prompt, parse_entities, renamer

        results = [{"status": "skipped", "entities": []} for _ in clips_of]
        todo = [i for i, clips in enumerate(clips_of)
                if self.settings.entities and sum(bool(c.get("caption_text")) for c in clips) >= 2]
        replies = self._gen([entity_prompt(self._entities[1], clips_of[i]) for i in todo])
        for i, reply in zip(todo, replies):
            found = parse_entities(reply)
            if found is None:
                results[i] = {"status": "failed", "entities": []}
                continue
            rename = renamer(found)
            for c in clips_of[i]:
                c["caption_text"], _ = rename(c.get("caption_text"))
            results[i] = {"status": "ok", "entities": found, "prompt_version": self._entities[0]}
        return results
