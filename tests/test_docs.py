"""The documentation keeps up with the code: every job-spec key, rejection reason and command is
documented, the generated key reference in docs/spec.md is current, and every relative link
in README.md and docs/ points at a file (and a heading) that exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _docs_text() -> str:
    return "\n".join(_text(p) for p in sorted(DOCS.glob("*.md")))


def _without_code(text: str) -> str:
    """Markdown without fenced code blocks (links and headings inside them do not count)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def spec_keys(schema: dict) -> list[str]:
    """Every key of the job spec's JSON Schema as a dotted path, nested sections included
    (``shots.motion_residual``, ``resources.caption.calls_per_actor``)."""
    defs = schema.get("$defs", {})

    def resolve(node: dict) -> dict:
        ref = node.get("$ref")
        return defs[ref.rsplit("/", 1)[-1]] if ref else node

    keys: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for name, prop in resolve(node).get("properties", {}).items():
            path = prefix + name
            keys.append(path)
            walk(resolve(prop), path + ".")

    walk(schema, "")
    return keys


def test_spec_keys_walk_nested_sections():
    from pipeline.spec import json_schema

    keys = spec_keys(json_schema())
    for key in ("inputs.paths", "output.smart_cut", "shots.motion_residual", "shots.gradual_motion_residual",
                "clip_filter.keep_prompts", "models.clip.pretrained", "resources.caption.calls_per_actor",
                "ray.feeder_tasks", "storage.endpoint_url"):
        assert key in keys
    assert len(keys) == len(set(keys)) > 100


def test_every_spec_key_is_documented():
    from pipeline.spec import json_schema

    text = _docs_text()
    missing = [k for k in spec_keys(json_schema()) if f"`{k}`" not in text]
    assert not missing, f"job-spec keys not documented in docs/ (as `key`): {missing}"


def _spec_reference():
    spec = importlib.util.spec_from_file_location("spec_reference", DOCS / "spec_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spec_reference_is_current():
    ref = _spec_reference()
    text = _text(DOCS / "spec.md")
    assert ref.updated(text, ref.render()) == text, \
        "docs/spec.md's key reference is not current: run .venv/bin/python docs/spec_reference.py"


def test_spec_reference_shows_every_default():
    from pipeline.spec import JobSpec

    text = _text(DOCS / "spec.md")
    assert '| `clip_filter.keep_prompts` | `["a video frame"]` |' in text
    assert '| `clip_filter.reject_prompts` | `["a blank screen", "a title card with text"]` |' in text
    assert "| `clip_filter.max_reject_margin` | `0.0` |" in text
    assert "| `resources.caption.calls_per_actor` | `auto` |" in text
    assert f"| `shots.motion_residual` | `{JobSpec.model_fields['shots'].default.motion_residual}` |" in text


def _reason_rows(text: str) -> dict[str, str]:
    """reason -> its table row, for rows that start with the reason in backticks."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", text, re.M)}


def test_every_rejection_reason_is_documented_with_its_setting():
    from stages.base import CLIP_REASON_SETTINGS, CLIP_REASONS, VIDEO_REASONS

    text = _text(DOCS / "reasons.md")
    rows = _reason_rows(text)
    missing = [r for r in (*VIDEO_REASONS, *CLIP_REASONS) if r not in rows]
    assert not missing, f"reasons without a row in docs/reasons.md: {missing}"
    for reason, key in CLIP_REASON_SETTINGS.items():
        if key:
            assert f"`{key}`" in rows[reason], f"docs/reasons.md: the {reason} row does not name {key}"


def test_every_command_and_option_is_documented():
    import argparse

    from pipeline.cli import build_parser

    text = _text(DOCS / "cli.md")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"`{name}" in text, f"docs/cli.md does not document the command {name}"
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in text, f"docs/cli.md does not document {name} {option}"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _without_code(_text(path)), re.M)}


def _links(path: Path) -> list[str]:
    text = _without_code(_text(path))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page):
    assert _text(page).strip(), f"{page} is empty"
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"

