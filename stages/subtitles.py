"""Subtitles: speech text cut to each clip and offered to the captioning prompt.

Sources, first found wins: a path in the manifest's ``subtitles`` column; a sidecar file next
to the video (``video.srt``, ``video.vtt``, ``video.<lang>.srt`` ...); a text subtitle stream
inside the container (SubRip, WebVTT, mov_text, ASS), read by demuxing that stream alone.
HowToCaption (Shvetsova et al., 2023) shows that speech helps video captions.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})"
_CUE = re.compile(_TIME + r"\s*-->\s*" + _TIME)
_TAGS = re.compile(r"<[^>]+>|\{\\[^}]*\}")
MAX_BYTES = 5_000_000


def _t(h, m, s, ms) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000.0


def _clean(text: str) -> str:
    text = html.unescape(_TAGS.sub("", text)).replace("\\N", " ")
    return " ".join(text.split())


def parse_subtitles(text: str) -> list[tuple[float, float, str]]:
    """Cues (start_s, end_s, text) of an SRT or WebVTT document, in time order."""
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = block.strip().split("\n")
        for i, line in enumerate(lines):
            m = _CUE.search(line)
            if m:
                body = _clean(" ".join(lines[i + 1:]))
                if body:
                    cues.append((_t(*m.group(1, 2, 3, 4)), _t(*m.group(5, 6, 7, 8)), body))
                break
    return sorted(cues)


def sidecar(video_path: str, storage=None) -> Path | str | None:
    """A subtitle file next to the video with the same stem (any language suffix; on S3 only the
    exact ``.srt`` / ``.vtt`` names are tried)."""
    from stages.inputs import input_size, is_s3

    if is_s3(video_path):
        stem = video_path.rsplit(".", 1)[0] if "." in video_path.rsplit("/", 1)[-1] else video_path
        for ext in (".srt", ".vtt"):
            if input_size(stem + ext, storage) is not None:
                return stem + ext
        return None
    p = Path(video_path)
    by_stem = _subtitles_in(str(p.parent))
    named = by_stem.get(p.stem, ())
    for ext in (".srt", ".vtt"):
        if p.stem + ext in named and p.with_suffix(ext).is_file():
            return p.with_suffix(ext)
    for ext in (".srt", ".vtt"):
        matches = sorted(n for n in named if n.endswith(ext) and n != p.stem + ext and (p.parent / n).is_file())
        if matches:
            return p.parent / matches[0]
    return None


_listings: dict[str, tuple[int, dict[str, tuple[str, ...]]]] = {}


def _subtitles_in(folder: str) -> dict[str, tuple[str, ...]]:
    """The subtitle files of a folder by every stem they may belong to ("a.b.en.srt" under "a",
    "a.b" and "a.b.en"), listed once per change of the folder (its mtime): a folder of a million
    videos is neither listed nor scanned again for each of them."""
    import os

    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return {}
    cached = _listings.get(folder)
    if cached is None or cached[0] != mtime:
        try:
            names = os.listdir(folder)
        except OSError:
            return {}
        index: dict[str, list[str]] = {}
        for name in names:
            if name.endswith((".srt", ".vtt")):
                parts = name.split(".")
                for k in range(1, len(parts)):
                    index.setdefault(".".join(parts[:k]), []).append(name)
        cached = (mtime, {stem: tuple(found) for stem, found in index.items()})
        if len(_listings) > 64:
            _listings.clear()
        _listings[folder] = cached
    return cached[1]


def read_file(path: str | Path, storage=None) -> list[tuple[float, float, str]]:
    from stages.inputs import input_size, read_input_bytes

    if (input_size(str(path), storage) or 0) > MAX_BYTES:
        raise ValueError(f"{path}: subtitle file over {MAX_BYTES} bytes")
    return parse_subtitles(read_input_bytes(str(path), storage).decode("utf-8", errors="replace"))


def embedded(path: str, storage=None) -> list[tuple[float, float, str]]:
    """Cues of the first text subtitle stream in the container, or []."""
    import av

    from stages.extract import open_container

    with open_container(path, storage) as container:
        streams = [s for s in container.streams.subtitles]
        if not streams:
            return []
        stream = streams[0]
        cues = []
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            start = float(packet.pts * stream.time_base)
            end = start + float((packet.duration or 0) * stream.time_base)
            try:
                subs = packet.decode()
            except av.error.FFmpegError:
                continue
            texts = []
            for sub in subs:  # text subtitles decode to ASS events; .dialogue is the spoken text
                value = getattr(sub, "dialogue", None) or getattr(sub, "text", None)
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if value:
                    texts.append(value)
            body = _clean(" ".join(texts))
            if body:
                cues.append((start, end, body))
        return sorted(cues)


def load_cues(video: dict, storage=None, *, streams: bool = True) -> tuple[list[tuple[float, float, str]], str | None]:
    """(cues, source) for one input row: manifest path, sidecar, or embedded stream (looked for
    only when the container has subtitle ``streams``)."""
    if video.get("subtitles"):
        return read_file(video["subtitles"], storage), "manifest"
    found = sidecar(video["uri"], storage)
    if found is not None:
        return read_file(found, storage), "sidecar"
    if not streams:
        return [], None
    cues = embedded(video["uri"], storage)
    return cues, ("embedded" if cues else None)


def speech_between(cues: list[tuple[float, float, str]], start_s: float, end_s: float) -> str | None:
    """The text of the cues overlapping [start_s, end_s), repeated lines dropped."""
    out: list[str] = []
    for a, b, text in cues:
        if a < end_s and b > start_s and (not out or out[-1] != text):
            out.append(text)
    return " ".join(out) or None
