"""Prompt rendering: each kind asks for exactly the reader's fields, placeholders come from the paper's sets, and
rendering is a pure function of (seed, request id)."""

import re
from collections import Counter

import pytest

from embed_lm.data.synthetic import FIELDS
from embed_lm.model.instructions import ASYMMETRIC_KINDS, TASK_KINDS
from embed_lm.synth import prompts
from embed_lm.synth.pipeline import Plan
from embed_lm.synth.prompts import brainstorm_request, example_request, sample_placeholders

TASK = "Given a recipe name, retrieve cooking instructions for it."


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_example_prompt_asks_for_the_readers_fields_and_fills_every_placeholder(kind):
    r = example_request(kind, 3, TASK, seed=0)
    assert re.findall(r'^- "(\w+)":', r.prompt, re.M) == [f for f in FIELDS[kind] if f is not None]
    assert "{" not in r.prompt and "}" not in r.prompt  # nothing left unformatted
    assert r.id == f"{kind}/example/3" and r.index == 3 and r.step == "example"
    assert r.messages == [{"role": "user", "content": r.prompt}]
    if kind in ASYMMETRIC_KINDS:
        assert TASK in r.prompt and r.task == TASK
    else:
        assert r.task == prompts.SYMMETRIC_TASKS[kind] and TASK not in r.prompt
    for value in r.placeholders.values():
        assert value in r.prompt


def test_short_long_placeholders_are_the_papers():
    seen = Counter()
    for i in range(300):
        p = example_request("short-long", i, TASK, seed=1).placeholders
        assert set(p) == {"query_type", "query_length", "clarity", "num_words", "difficulty", "language"}
        assert p["query_type"] in prompts.QUERY_TYPES and p["query_length"] in prompts.QUERY_LENGTHS
        assert p["clarity"] in prompts.CLARITIES and p["difficulty"] in prompts.DIFFICULTIES
        assert int(p["num_words"]) in prompts.NUM_WORDS and p["language"] in prompts.LANGUAGES
        seen.update(f"{k}={v}" for k, v in p.items() if k != "language")
    n_values = sum(map(len, [prompts.QUERY_TYPES, prompts.QUERY_LENGTHS, prompts.CLARITIES, prompts.NUM_WORDS,
                             prompts.DIFFICULTIES]))
    assert len(seen) == n_values  # every value gets drawn


def test_rendering_is_deterministic_under_the_seed():
    a = [example_request(k, i, TASK, seed=7) for k in TASK_KINDS for i in range(20)]
    b = [example_request(k, i, TASK, seed=7) for k in TASK_KINDS for i in range(20)]
    c = [example_request(k, i, TASK, seed=8) for k in TASK_KINDS for i in range(20)]
    assert [r.prompt for r in a] == [r.prompt for r in b]
    assert sum(x.prompt != y.prompt for x, y in zip(a, c, strict=True)) > 60  # another seed re-draws the placeholders
    assert len({r.prompt for r in a if r.kind == "short-long"}) == 20  # requests differ from one another


def test_languages_lean_on_high_resource_ones_and_bitext_pairs_differ():
    rng = prompts.request_rng(0, "x")
    counts = Counter(prompts.sample_language(rng) for _ in range(5000))
    assert 0.38 < counts["English"] / 5000 < 0.52
    assert counts["French"] > 2 * counts["Welsh"] and len(counts) > 40
    for i in range(200):
        p = sample_placeholders("bitext", prompts.request_rng(3, f"bitext/example/{i}"))
        assert p["src_lang"] != p["tgt_lang"]
    assert example_request("sts", 0, None, 0, language="Japanese").placeholders["language"] == "Japanese"


@pytest.mark.parametrize("kind", ASYMMETRIC_KINDS)
def test_brainstorm_prompt_asks_for_a_json_list_of_n_tasks(kind):
    r = brainstorm_request(kind, 2, 13)
    assert r.id == f"{kind}/tasks/2" and r.step == "tasks" and r.task is None
    assert "Brainstorm 13 " in r.prompt and "JSON list of 13 strings" in r.prompt and "{" not in r.prompt


def test_plan_splits_task_requests_and_cycles_examples_through_tasks():
    plan = Plan(n_tasks=45, tasks_per_request=20, n_examples=5)
    step1 = plan.step1()
    assert len(step1) == 3 * 4 and [r.placeholders["n"] for r in step1 if r.kind == "long-long"] == ["20", "20", "5"]
    tasks = {k: [f"{k} task {j}" for j in range(2)] for k in ASYMMETRIC_KINDS}
    step2 = list(plan.step2(tasks))
    assert len(step2) == 5 * 6 and [r.kind for r in step2[:6]] == list(TASK_KINDS)  # interleaved across kinds
    assert [r.task for r in step2 if r.kind == "short-long"] == ["short-long task 0", "short-long task 1"] * 2 + [
        "short-long task 0"]
    assert len(plan.step2_keys({**tasks, "long-short": []})) == 5 * 5  # a kind without tasks is left out
    assert [r.id for r in plan.step2(tasks, skip={"sts/example/0"})][:6] == [
        "short-long/example/0", "long-short/example/0", "short-short/example/0", "long-long/example/0",
        "bitext/example/0", "short-long/example/1"]
    with pytest.raises(ValueError, match="unknown task kind"):
        Plan(kinds=("short-long", "qa"))


def test_brainstorm_prompts_name_varied_domain_seeds_from_the_package_list():
    requests = [brainstorm_request("short-long", j, 20, seed=0) for j in range(200)]
    seeds = set(prompts.topic_seeds())
    assert len(seeds) >= 200 and all(not s.startswith("#") for s in seeds)
    named = [r.placeholders["topics"].split(", ") for r in requests]
    assert all(len(t) == prompts.TOPICS_PER_BRAINSTORM and set(t) <= seeds for t in named)
    assert all(", ".join(t) in r.prompt for t, r in zip(named, requests, strict=True))
    assert len({r.prompt for r in requests}) == 200 and len({x for t in named for x in t}) > 0.8 * len(seeds)
    assert brainstorm_request("short-long", 3, 20, seed=0).prompt == requests[3].prompt  # same seed, same prompt
