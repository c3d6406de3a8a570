"""Parsing of model answers: valid, fenced, wrapped in prose, truncated, invalid, missing or empty fields."""

import json

import pytest

from embed_lm.synth.parsing import Discard, extract_json, parse_example, parse_tasks

SL = {"user_query": "cheap flights", "positive_document": "A guide to fares.", "hard_negative_document": "Trains."}


@pytest.mark.parametrize("text", [
    json.dumps(SL),
    "```json\n" + json.dumps(SL, indent=2) + "\n```",
    "Here is the example:\n```JSON\n" + json.dumps(SL) + "\n```\nLet me know if you need more!",
    "Sure. " + json.dumps(SL) + " I hope this {helps}.",     # prose before, trailing text after
    json.dumps([SL]),                                         # the one object wrapped in a list
    json.dumps({**SL, "user_query": "  cheap flights \n", "explanation": "extra keys are dropped"}),
    "```\n" + json.dumps(SL) + "```",
])
def test_valid_answers_parse_to_exactly_the_kinds_fields(text):
    assert parse_example(text, "short-long") == SL


@pytest.mark.parametrize("text,finish,reason", [
    ("", None, "empty_response"),
    ("   \n", None, "empty_response"),
    ("I cannot help with that.", None, "invalid_json"),
    ('{"user_query": "cheap flights", "positive_document": "A gui', None, "invalid_json"),
    ('{"user_query": "cheap flights", "positive_document": "A gui', "length", "truncated_output"),
    ("```json\n{'user_query': 'single quotes'}\n```", None, "invalid_json"),
    ('"just a string"', None, "not_an_object"),
    (json.dumps([SL, SL]), None, "not_an_object"),
    (json.dumps({k: v for k, v in SL.items() if k != "hard_negative_document"}), None,
     "missing_field:hard_negative_document"),
    (json.dumps({**SL, "positive_document": ["a", "list"]}), None, "not_text:positive_document"),
    (json.dumps({**SL, "user_query": "  "}), None, "empty_field:user_query"),
])
def test_invalid_answers_are_discarded_with_a_reason(text, finish, reason):
    with pytest.raises(Discard) as e:
        parse_example(text, "short-long", finish)
    assert e.value.reason == reason


@pytest.mark.parametrize("kind,obj", [
    ("long-short", {"input_text": "x", "label": "y", "misleading_label": "z"}),
    ("short-short", {"input": "x", "positive_document": "y"}),
    ("long-long", {"input": "x", "positive_document": "y"}),
    ("sts", {"S1": "x", "S2": "y", "S3": "z"}),
    ("bitext", {"S1": "x", "S2": "y", "S3": "z"}),
])
def test_every_kind_checks_its_own_fields(kind, obj):
    assert parse_example(json.dumps(obj), kind) == obj
    first = next(iter(obj))
    with pytest.raises(Discard, match=f"missing_field:{first}"):
        parse_example(json.dumps({k: v for k, v in obj.items() if k != first}), kind)


def test_short_short_drops_an_unasked_negative():
    obj = {"input": "x", "positive_document": "y", "hard_negative_document": "z"}
    assert parse_example(json.dumps(obj), "short-short") == {"input": "x", "positive_document": "y"}


@pytest.mark.parametrize("text,tasks", [
    ('["Retrieve a.", "Classify b."]', ["Retrieve a.", "Classify b."]),
    ('```json\n[\n  "Retrieve a.",\n  " ",\n  3,\n  "Classify b."\n]\n```\nThese cover...',
     ["Retrieve a.", "Classify b."]),
    ('{"tasks": ["Retrieve a."]}', ["Retrieve a."]),
    ('Here are the tasks: ["Retrieve a."] (one task)', ["Retrieve a."]),
])
def test_task_lists(text, tasks):
    assert parse_tasks(text) == tasks


@pytest.mark.parametrize("text,reason", [
    ('{"a": 1}', "not_a_list"), ('{"a": [], "b": []}', "not_a_list"), ("[1, 2, 3]", "no_tasks"),
    ("[]", "no_tasks"), ("tasks: one, two", "invalid_json"),
])
def test_bad_task_lists(text, reason):
    with pytest.raises(Discard) as e:
        parse_tasks(text)
    assert e.value.reason == reason


def test_garbage_with_many_brackets_is_rejected_quickly():
    with pytest.raises(Discard, match="invalid_json"):
        extract_json("{[" * 50_000)
