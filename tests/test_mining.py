"""Hard-negative mining (embed_lm.mine): the mined negatives are exactly drawn from the rank window a brute-force
search gives, after removing the positive and everything within the margin of the positive's score; the entry point
writes MS-MARCO id triples and JSONL that the training readers load."""

from __future__ import annotations

import hashlib
import json

import torch

from conftest import compose_config
from embed_lm.inference.mining import EmbedderModel, MiningWindow, Pairs, mine, read_msmarco_ids
from embed_lm.data.msmarco import MsMarcoSource


class HashEmbedder:
    """Deterministic random unit vectors per (prefix, text): a stand-in Embedder with the same two methods."""

    def _vec(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(hashlib.sha1(text.encode()).hexdigest()[:8], 16))
        v = torch.randn(16, generator=g)
        return v / v.norm()

    def encode_queries(self, texts, task, kind="short-long", **_):
        return torch.stack([self._vec("q:" + t) for t in texts])

    def encode_documents(self, texts, **_):
        return torch.stack([self._vec("d:" + t) for t in texts])


def toy_pairs(n_queries: int = 12, n_docs: int = 120) -> Pairs:
    corpus = {f"d{i}": f"document {i}" for i in range(n_docs)}
    queries = {f"q{i}": f"query {i}" for i in range(n_queries)}
    return Pairs(queries, corpus, [(f"q{i}", f"d{i}") for i in range(n_queries)])


def test_mined_negatives_come_from_the_brute_force_window():
    pairs, window = toy_pairs(), MiningWindow(range_min=4, range_max=30, num_negatives=3, relative_margin=0.1)
    emb = HashEmbedder()
    mined = mine(pairs, EmbedderModel(emb, "task"), window, seed=0)
    ids = list(pairs.corpus)
    docs = emb.encode_documents([pairs.corpus[i] for i in ids])  # (C, D)
    per_query: dict[str, list[str]] = {}
    for q, p, n in mined.triples:
        per_query.setdefault(q, []).append(n)
        assert p == f"d{q[1:]}"
    for qid, pos in pairs.rows:
        scores = docs @ emb.encode_queries([pairs.queries[qid]], "task")[0]  # (C,)
        pos_score = float(scores[ids.index(pos)])
        top = [ids[i] for i in torch.argsort(scores, descending=True)[: window.range_max + 1].tolist()]
        survivors = [d for d in top if d != pos and float(scores[ids.index(d)]) <= pos_score - abs(pos_score) * 0.1]
        allowed = survivors[window.range_min: window.range_max]
        got = per_query.get(qid, [])
        assert len(got) == min(window.num_negatives, len(allowed)) and len(set(got)) == len(got)
        assert set(got) <= set(allowed), (qid, got, allowed)
    assert sum(mined.negative_scores) / len(mined.negative_scores) > sum(mined.random_fill_scores) / len(
        mined.random_fill_scores)


def _write_ids(root, n=8):
    root.mkdir(parents=True, exist_ok=True)
    (root / "collection.tsv").write_text("".join(f"p{i}\tpassage number {i} about topic {i % 3}\n" for i in range(40)))
    (root / "queries.tsv").write_text("".join(f"q{i}\twhat about topic {i % 3} number {i}\n" for i in range(n)))
    (root / "qrels.tsv").write_text("".join(f"q{i}\t0\tp{i}\t1\n" for i in range(n)))


def test_entry_point_writes_triples_and_jsonl_the_readers_load(tmp_path):
    from embed_lm.mine import run

    _write_ids(tmp_path / "ids")
    base = ["backbone=tiny_mistral", "pooling=last_token", "data.max_length=32", "window.range_min=2",
            "window.range_max=10", "window.relative_margin=null", "device=cpu",
            f"input.collection={tmp_path}/ids/collection.tsv", f"input.queries={tmp_path}/ids/queries.tsv",
            f"input.qrels={tmp_path}/ids/qrels.tsv", f"paths.log_dir={tmp_path}/out"]
    summary = run(compose_config("mine", base + [f"output={tmp_path}/triples.tsv"]))
    rows = [line.split("\t") for line in (tmp_path / "triples.tsv").read_text().splitlines()]
    assert summary["negatives"] == len(rows) == 8
    assert all(q[1:] == p[1:] and n != p for q, p, n in rows)
    examples = MsMarcoSource("m", collection=f"{tmp_path}/ids/collection.tsv", queries=f"{tmp_path}/ids/queries.tsv",
                             triples=str(tmp_path / "triples.tsv")).load()
    assert len(examples) == 8 and all(len(e.negatives) == 1 and e.negatives[0] != e.positive for e in examples)

    pairs = read_msmarco_ids(f"{tmp_path}/ids/collection.tsv", f"{tmp_path}/ids/queries.tsv", f"{tmp_path}/ids/qrels.tsv")
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"query": pairs.queries[q], "positive": pairs.corpus[p]}) + "\n" for q, p in pairs.rows))
    jsonl_in = [o for o in base if not o.startswith("input.")] + [
        "input.collection=null", "input.queries=null", "input.qrels=null", f"input.jsonl={tmp_path}/pairs.jsonl",
        f"output={tmp_path}/mined.jsonl"]
    run(compose_config("mine", jsonl_in))
    examples = MsMarcoSource("j", jsonl=str(tmp_path / "mined.jsonl")).load()
    assert len(examples) == 8 and all(e.negatives and e.positive not in e.negatives for e in examples)
