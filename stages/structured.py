"""Structured clip captions: the JSON asked of the VLM, parsed tolerantly and validated.

Fields follow the structured captions of Vript, SkyReels-V2 and Koala-36M: a summary, the
subjects and their actions, the setting, camera motion, shot type and visual style. Models
wrap JSON in code fences, add prose around it, use single quotes, leave trailing commas, stop
mid-object at the token limit, or rename keys; ``parse_caption`` repairs what it safely can and
says so (``repaired``), and reports ``failed`` when no usable object is there.
"""

from __future__ import annotations

import ast
import json
import re

FIELDS = ("summary", "subjects", "actions", "setting", "camera_motion", "shot_type", "style", "events")
LIST_FIELDS = ("subjects", "actions")
# fields stored as their own columns in the captions table (summary is the text; events get times)
COLUMNS = ("subjects", "actions", "setting", "camera_motion", "shot_type", "style")
SHOT_TYPES = ("extreme close-up", "close-up", "medium close-up", "medium", "medium wide", "wide",
              "extreme wide", "aerial", "other")
CAMERA_MOTIONS = ("static", "pan", "tilt", "zoom", "dolly", "tracking", "handheld", "shaky", "mixed", "other")
_SYNONYMS = {
    "description": "summary", "caption": "summary", "overview": "summary",
    "subject": "subjects", "objects": "subjects", "characters": "subjects", "entities": "subjects",
    "action": "actions", "activities": "actions",
    "scene": "setting", "location": "setting", "environment": "setting", "background": "setting",
    "camera": "camera_motion", "camera_movement": "camera_motion", "camera motion": "camera_motion",
    "shot": "shot_type", "shot type": "shot_type", "framing": "shot_type",
    "visual_style": "style", "aesthetics": "style", "look": "style",
    "timeline": "events", "timestamps": "events", "event": "events",
}
_TIME_TEXT = re.compile(r"^\s*[\[(]?\s*(?:(\d+):)?(\d+(?:\.\d+)?)\s*(?:s|sec|seconds)?\s*[\])]?\s*[-:\u2013]?\s*(.*)$")
STATUSES = ("ok", "repaired", "failed")


def _candidate(text: str) -> tuple[str | None, bool]:
    """The first {...} object in ``text`` (string-aware), closing it if the text stops inside.
    Returns (object text, whether it had to be closed)."""
    start = text.find("{")
    if start < 0:
        return None, False
    in_str, escape, quote = False, False, ""
    stack = []
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                in_str = False
            continue
        if ch in "\"'":
            in_str, quote = True, ch
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack:
                stack.pop()
            if not stack:
                return text[start:i + 1], False
    # cut off mid-object (max_new_tokens): close the open string, drop a dangling key or comma,
    # close the brackets still open
    tail = text[start:].rstrip()
    if in_str:
        tail += quote
    tail = re.sub(r'(,\s*)?"[^"]*"\s*:\s*$', "", tail).rstrip().rstrip(",")
    return tail + "".join(reversed(stack)), True


def _loads(blob: str) -> tuple[object | None, bool]:
    """(value, repaired) from JSON, or JSON with trailing commas / smart quotes, or a Python
    literal (single quotes)."""
    try:
        return json.loads(blob), False
    except ValueError:
        pass
    fixed = blob.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)
    try:
        return json.loads(fixed), True
    except ValueError:
        pass
    try:
        py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", fixed)))
        return ast.literal_eval(py), True
    except Exception:  # literal_eval raises ValueError, SyntaxError, TypeError, MemoryError, RecursionError
        return None, False


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value if v not in (None, ""))
    text = " ".join(str(value).split())
    return text or None


def _items(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in re.split(r"[;\n]|,\s(?=[A-Za-z])", value)]
    if isinstance(value, dict):
        value = [f"{k}: {v}" for k, v in value.items()]
    out = []
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, dict):  # {"name": ..., "description": ...}
            v = v.get("name") or v.get("subject") or v.get("action") or json.dumps(v, sort_keys=True)
        t = _text(v)
        if t and t not in out:
            out.append(t)
    return out


def _seconds(value) -> float | None:
    """Seconds from 2.5, "2.5", "2.5s", "0:03" or "1:02.5"; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = re.match(r"^\s*(?:(\d+):)?(\d+(?:\.\d+)?)\s*(?:s|sec|seconds)?\s*$", str(value))
    return (int(m.group(1) or 0) * 60 + float(m.group(2))) if m else None


def _events(value) -> list[dict]:
    """[{"t", "text"}] in the model's order from a list of objects ({"t"|"time"|"start"|"timestamp",
    "text"|"event"|"description"}) or of strings such as "0:03 a man waves" / "[2.5s] ..."."""
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            t = next((_seconds(item[k]) for k in ("t", "time", "start", "timestamp", "start_s") if k in item), None)
            text = _text(next((item[k] for k in ("text", "event", "description", "action") if k in item), None))
        else:
            m = _TIME_TEXT.match(str(item))
            t, text = (_seconds(m.group(2)) + int(m.group(1) or 0) * 60, _text(m.group(3))) if m else (None, None)
        if t is not None and text:
            out.append({"t": t, "text": text})
    return out


def align_events(events: list[dict], duration_s: float) -> list[dict]:
    """Event times a model wrote (seconds from the clip start) clamped into [0, duration] and
    made non-decreasing in the model's order."""
    out, last = [], 0.0
    for e in events:
        t = max(last, min(max(float(e["t"]), 0.0), duration_s))
        out.append({"t": round(t, 3), "text": e["text"]})
        last = t
    return out


def _closest(value: str | None, allowed: tuple[str, ...]) -> str | None:
    """Map free text to the closest allowed label ("close up shot" -> "close-up"); else 'other'."""
    if value is None:
        return None
    v = value.lower().replace("_", " ").replace("-", " ")
    for label in sorted(allowed, key=len, reverse=True):  # longest first: "extreme close-up" before "close-up"
        if label.replace("-", " ") in v:
            return label
    words = {"closeup": "close-up", "still": "static", "fixed": "static", "stationary": "static",
             "panning": "pan", "tilting": "tilt", "zooming": "zoom", "hand held": "handheld",
             "drone": "aerial", "long shot": "wide", "full shot": "wide", "establishing": "extreme wide"}
    for word, label in words.items():
        if word in v and label in allowed:
            return label
    return "other"


def parse_caption(text: str) -> tuple[dict | None, str]:
    """(fields, status): fields has every name in FIELDS (lists for subjects and actions, None
    where the model gave nothing); status is ok, repaired or failed (fields None)."""
    if not text:
        return None, "failed"
    body = re.sub(r"```(?:json|JSON)?", "", text)
    blob, closed = _candidate(body)
    if blob is None:
        return None, "failed"
    value, repaired = _loads(blob)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value, repaired = value[0], True
    if not isinstance(value, dict):
        return None, "failed"
    raw = {}
    for key, v in value.items():
        k = str(key).strip().lower()
        named = _SYNONYMS.get(k, _SYNONYMS.get(k.replace("_", " "), k)).replace(" ", "_")
        repaired = repaired or named != k
        k = named
        if k in FIELDS and k not in raw:
            raw[k] = v
        elif k not in FIELDS:
            repaired = True  # unknown keys are dropped
    fields = {k: (_items(raw.get(k)) if k in LIST_FIELDS else _text(raw.get(k))) for k in FIELDS if k != "events"}
    fields["events"] = _events(raw.get("events"))
    fields["camera_motion"] = _closest(fields["camera_motion"], CAMERA_MOTIONS)
    fields["shot_type"] = _closest(fields["shot_type"], SHOT_TYPES)
    if not fields["summary"]:
        return None, "failed"
    return fields, "repaired" if (repaired or closed or body.strip() != blob.strip()) else "ok"


def hint_lines(clip: dict, subtitles: str | None = None) -> str:
    """Measured facts offered to the prompt: camera motion and motion from the analysis pass,
    and the speech of the clip when subtitles exist."""
    lines = []
    if clip.get("camera_motion"):
        lines.append(f"Measured camera motion: {clip['camera_motion']}.")
    if clip.get("motion") is not None:
        lines.append(f"Measured mean motion: {clip['motion']:.2f} px/frame at 128 px width "
                     f"({'little' if clip['motion'] < 0.5 else 'moderate' if clip['motion'] < 3 else 'strong'}).")
    if subtitles:
        lines.append(f"Speech in this clip: \"{subtitles}\"")
    return "\n".join(lines)
