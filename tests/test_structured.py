"""Structured caption parsing on realistic well- and badly-formed model outputs."""

from __future__ import annotations

import pytest

from stages.structured import FIELDS, hint_lines, parse_caption

GOOD = ('{"summary": "A man rides a red bicycle down a forest trail.", "subjects": ["man", "red bicycle"], '
        '"actions": ["riding downhill"], "setting": "forest trail in daylight", "camera_motion": "tracking", '
        '"shot_type": "medium", "style": "natural light, handheld documentary"}')


@pytest.mark.parametrize("text", [GOOD, "```json\n" + GOOD + "\n```"])  # a code fence changes nothing
def test_clean_json_is_ok(text):
    fields, status = parse_caption(text)
    assert status == "ok" and set(fields) == set(FIELDS)
    assert fields["subjects"] == ["man", "red bicycle"] and fields["camera_motion"] == "tracking"


@pytest.mark.parametrize("text", [
    "Sure! Here is the JSON you asked for:\n" + GOOD + "\nLet me know if you need more.",  # prose around it
    GOOD.replace('"', "'"),                                             # Python-style quotes
    GOOD[:-1] + ",}",                                                   # trailing comma
    GOOD.replace('"summary"', '"Description"').replace('"shot_type"', '"Shot type"'),  # renamed keys
    "[" + GOOD + "]",                                                   # wrapped in a list
])
def test_repairable_outputs(text):
    fields, status = parse_caption(text)
    assert status == "repaired", text
    assert fields["summary"] == "A man rides a red bicycle down a forest trail."
    assert fields["shot_type"] == "medium"


def test_truncated_at_the_token_limit_keeps_what_is_complete():
    cut = GOOD[:GOOD.index('"camera_motion"') + 25]  # stops inside the camera motion value
    fields, status = parse_caption(cut)
    assert status == "repaired"
    assert fields["actions"] == ["riding downhill"] and fields["style"] is None
    fields, status = parse_caption(GOOD[:GOOD.index('"setting"') + 10])  # stops after a key
    assert status == "repaired" and fields["setting"] is None


def test_labels_are_normalised_and_lists_coerced():
    fields, status = parse_caption('{"summary": "Waves.", "subjects": "ocean waves; rocks", '
                                   '"camera_motion": "Slow PANNING left", "shot_type": "Extreme close up shot", '
                                   '"actions": [{"name": "waves crash"}], "mood": "calm"}')
    assert status == "repaired"  # the unknown key was dropped
    assert fields["subjects"] == ["ocean waves", "rocks"] and fields["actions"] == ["waves crash"]
    assert fields["camera_motion"] == "pan" and fields["shot_type"] == "extreme close-up"
    assert parse_caption('{"summary": "x", "shot_type": "dutch angle"}')[0]["shot_type"] == "other"


@pytest.mark.parametrize("text", [
    "", "The video shows a man riding a bicycle.", '{"subjects": ["man"]}', '{"summary": ""}',
    "{{{{", "ÿþ\x00garbage tokens 🤖 <|im_end|>", '{"summary": [}',
])
def test_unusable_outputs_fail(text):
    assert parse_caption(text) == (None, "failed")


def test_hints_carry_measurements_and_speech():
    hints = hint_lines({"camera_motion": "pan", "motion": 4.2}, subtitles="Hold on tight!")
    assert "pan" in hints and "strong" in hints and "Hold on tight!" in hints
    assert hint_lines({}) == ""


def test_entity_names_are_parsed_and_applied():
    from stages.entities import entity_prompt, parse_entities, renamer

    reply = ('Here you go: ```json\n{"entities": [{"name": "the cyclist in red", "mentions": ["a man in red", '
             '"the rider", "The cyclist in red", "a"]}, {"name": "the dog", "mentions": "a small dog"}, '
             '{"mentions": ["no name"]}]}\n```')
    found = parse_entities(reply)
    assert found == [{"name": "the cyclist in red", "mentions": ["a man in red", "the rider"]},
                     {"name": "the dog", "mentions": ["a small dog"]}]
    rename = renamer(found)
    assert rename("A man in red rides past a small dog; the rider waves.") == (
        "the cyclist in red rides past the dog; the cyclist in red waves.", ["the cyclist in red", "the dog"])
    assert rename("The riderless bike.") == ("The riderless bike.", [])  # whole phrases only
    assert parse_entities("I cannot tell.") is None and parse_entities('{"entities": "none"}') is None
    prompt = entity_prompt("Clips:\n{captions}", [{"caption_text": "A man rides.", "subjects": ["man", "bike"]},
                                                  {"caption_text": "A dog runs."}])
    assert prompt == "Clips:\n1. A man rides. (subjects: man, bike)\n2. A dog runs."


def test_event_times_are_parsed_clamped_and_ordered():
    from stages.structured import align_events

    fields, status = parse_caption('{"summary": "A race.", "events": [{"t": 0.5, "text": "start"}, '
                                   '{"time": "0:02", "event": "a crash"}, "[1.5s] the crowd cheers", '
                                   '{"t": 12, "text": "finish line"}, {"t": "soon", "text": "unreadable"}, '
                                   '{"t": -1, "text": "before the clip"}]}')
    assert status == "ok"
    assert fields["events"] == [{"t": 0.5, "text": "start"}, {"t": 2.0, "text": "a crash"},
                                {"t": 1.5, "text": "the crowd cheers"}, {"t": 12.0, "text": "finish line"},
                                {"t": -1.0, "text": "before the clip"}]
    assert [e["t"] for e in align_events(fields["events"], 4.0)] == [0.5, 2.0, 2.0, 4.0, 4.0]
    assert parse_caption('{"summary": "x"}')[0]["events"] == []


def test_prompt_rendering_fills_hints_and_duration():
    from stages.caption import render_prompt
    from stages.models import load_prompt

    template = load_prompt("clip_json_v2")[1]
    text = render_prompt(template, "Measured camera motion: pan.", 3.25)
    assert "Measured camera motion: pan." in text and "lasts 3.2 seconds" in text and "{hints}" not in text
    assert '{"t": seconds from the start of the clip' in text  # JSON braces left alone
    assert "{hints}" not in render_prompt(template, "", 1.0)
