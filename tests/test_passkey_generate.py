"""The passkey task generator (embed_lm/passkey/generate.py) and its cache, on the tiny tokenizer."""

from __future__ import annotations

import json
import re

import pytest

from embed_lm.model.collator import TextCollator
from embed_lm.passkey import cache
from embed_lm.passkey.generate import NEEDLE, FitError, _names, count_tokens, generate_task


@pytest.fixture(scope="module")
def tok(tiny_mistral):
    return tiny_mistral.tokenizer


@pytest.fixture(scope="module")
def task(tok):
    return generate_task(tok, 512, n_queries=4, n_candidates=25, seed=3)


def test_every_document_holds_one_needle_with_its_own_name_and_key(task):
    for doc in task.docs:
        text = doc.text
        assert text.count("pass key is") == 1 and text.count("is the pass key for") == 1
        assert NEEDLE.format(name=doc.name, key=doc.key) in text
        assert text.count(doc.name) == 2 and len(re.findall(r"\d+", text)) == 2  # the filler holds no digits


def test_queries_ask_for_the_positive_documents_person(task):
    assert len(task.queries) == 4 and len(task.docs) == 4 * 25  # per_query: each query its own candidates
    for q in task.queries:
        pos = task.docs[q.positive]
        assert q.text == f"what is the pass key for {pos.name}?" and (q.name, q.key) == (pos.name, pos.key)
        assert q.positive in q.candidates and len(q.candidates) == 25
    assert len({q.candidates for q in task.queries}) == 4
    assert len({q.candidates.index(q.positive) for q in task.queries}) > 1  # positives at random indices


def test_names_are_unique_within_each_candidate_set_and_come_from_faker(task, tok):
    for q in task.queries:
        names = [task.docs[i].name for i in q.candidates]
        assert len(set(names)) == len(names)
    first, last = _names()
    assert len(first) > 500 and len(last) > 500
    shared = generate_task(tok, 128, n_queries=30, n_candidates=60, scheme="shared", seed=1)
    assert len(shared.docs) == 60 and len({d.name for d in shared.docs}) == 60
    assert all(q.candidates == tuple(range(60)) for q in shared.queries)
    assert len({q.positive for q in shared.queries}) == 30  # distinct people asked about
    with pytest.raises(ValueError, match="n_queries"):
        generate_task(tok, 128, n_queries=61, n_candidates=60, scheme="shared")


@pytest.mark.parametrize("length", [64, 256, 1024, 2048])
def test_documents_hit_the_target_token_count(tok, length):
    tolerance = 0  # the default; the fit is exact for this tokenizer
    task = generate_task(tok, length, n_queries=2, n_candidates=10, seed=length, tolerance=tolerance)
    counted = count_tokens(tok, [d.text for d in task.docs], append_eos=True)
    assert counted == [d.n_tokens for d in task.docs]
    assert all(length - tolerance <= n <= length for n in counted)


def test_the_count_is_the_row_the_collator_builds(tok, task):
    """length = BOS + text tokens + the appended EOS: exactly the real tokens the model sees."""
    docs = task.docs[:3]
    batch = TextCollator(tok, 4096, append_eos=True)([""] * 3, [d.text for d in docs])
    assert batch.attention_mask.sum(1).tolist() == [d.n_tokens for d in docs] == [512] * 3
    assert (batch.input_ids[:, 0] == tok.bos_token_id).all() and (batch.input_ids[:, -1] == tok.eos_token_id).all()


def test_needle_positions_spread_over_the_document(tok):
    task = generate_task(tok, 1024, n_queries=2, n_candidates=50, seed=7)
    rel = [d.needle_token / d.n_tokens for d in task.docs]
    assert min(rel) < 0.1 and max(rel) > 0.85
    assert all(sum(q / 4 <= r < (q + 1) / 4 for r in rel) >= 10 for q in range(4))  # every quarter used
    for doc in task.docs[:5]:  # needle_token is the index of the needle's first token
        offsets, at = tok(doc.text, return_offsets_mapping=True)["offset_mapping"], doc.text.index(doc.name)
        assert offsets[doc.needle_token][0] <= at < offsets[doc.needle_token][1]  # (its span may hold the space)
        assert offsets[doc.needle_token - 1][1] <= at


def test_a_seed_reproduces_the_task(tok):
    a, b = (generate_task(tok, 256, n_queries=3, n_candidates=8, seed=11) for _ in range(2))
    assert a == b
    c = generate_task(tok, 256, n_queries=3, n_candidates=8, seed=12)
    assert [d.name for d in c.docs] != [d.name for d in a.docs]


@pytest.mark.parametrize("digits", [4, 6])
def test_key_digits(tok, digits):
    task = generate_task(tok, 128, n_queries=2, n_candidates=10, key_digits=digits)
    assert all(len(d.key) == digits and d.key.isdigit() and d.key[0] != "0" for d in task.docs)


def test_too_short_a_length_is_refused(tok):
    with pytest.raises(FitError, match="shorter than the needle"):
        generate_task(tok, 16, n_queries=1, n_candidates=2)


def test_tasks_are_cached_as_jsonl_and_reused(tok, tmp_path, monkeypatch):
    kw = dict(length=128, n_queries=2, n_candidates=5, scheme="per_query", key_digits=5, seed=0)
    task, key = cache.load_or_generate(tmp_path, tok, **kw)
    path = tmp_path / f"{key}.jsonl"
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["task"]["key"] == key and len(lines) == 1 + 10 + 2
    monkeypatch.setattr(cache, "generate_task", lambda *a, **k: pytest.fail("regenerated a cached task"))
    again, key2 = cache.load_or_generate(tmp_path, tok, **kw)
    assert (again, key2) == (task, key)
    assert cache.task_key(tok, **{**kw, "seed": 1}) != key
    tok("x " * 50, truncation=True, max_length=8)  # a call that sets truncation state leaves the key as it was
    assert cache.task_key(tok, **kw) == key
