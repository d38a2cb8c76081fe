"""Consistent entity names across the clips of a video (the "reduce" step of MR. Video).

One text-only call per video shows the model every clip caption with its subjects and asks
which people, animals or objects recur, under one short name each, with the phrases used for
them. The phrases are then replaced by the shared name in the clip and window captions, so
"a man in red", "the cyclist" and "the rider" become one name across the whole video. A reply
that cannot be parsed leaves the captions as they were (status ``failed``).
"""

from __future__ import annotations

import re

from stages.structured import _candidate, _loads


def entity_prompt(template: str, clips: list[dict]) -> str:
    lines = []
    for i, c in enumerate(clips, start=1):
        subjects = ", ".join(c.get("subjects") or [])
        lines.append(f"{i}. {c['caption_text']}" + (f" (subjects: {subjects})" if subjects else ""))
    return template.replace("{captions}", "\n".join(lines))


def parse_entities(text: str) -> list[dict] | None:
    """[{"name", "mentions"}] from the model's reply, or None when it is unusable."""
    blob, _ = _candidate(re.sub(r"```(?:json|JSON)?", "", text or ""))
    value, _ = _loads(blob) if blob else (None, False)
    if isinstance(value, dict):
        value = value.get("entities", value.get("Entities"))
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            continue
        name = " ".join(item["name"].split())
        mentions = item.get("mentions") or []
        mentions = [" ".join(str(m).split()) for m in (mentions if isinstance(mentions, list) else [mentions])]
        mentions = [m for m in mentions if len(m) >= 3 and m.lower() != name.lower()]
        out.append({"name": name, "mentions": sorted(set(mentions), key=lambda m: (-len(m), m))})
    return out


def renamer(entities: list[dict]):
    """A function text -> (text with every mention replaced by its entity's name, names present)."""
    table = {}
    for e in entities:
        for m in e["mentions"]:
            table.setdefault(m.lower(), e["name"])
    names = [e["name"] for e in entities]
    pattern = (re.compile(r"\b(" + "|".join(re.escape(m) for m in sorted(table, key=len, reverse=True)) + r")\b",
                          re.IGNORECASE) if table else None)

    def rename(text: str | None) -> tuple[str | None, list[str]]:
        if not text:
            return text, []
        new = pattern.sub(lambda m: table[m.group(0).lower()], text) if pattern else text
        return new, [n for n in names if n.lower() in new.lower()]

    return rename
