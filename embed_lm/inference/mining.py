"""Hard-negative mining as the paper does it (FACTS.md section 1): sets without hard negatives get negatives mined
from a smaller embedder's top-100, sampled from a rank window and kept clear of the positive's own score.

Retrieval, the rank window, the margin and the sampling are sentence-transformers' `util.mine_hard_negatives`
(exact cosine top-k, or faiss with use_faiss=True); this module reads and writes our formats and lets any of the
project's embedders (a base model, a trained run) stand in for a SentenceTransformer.

    pairs = read_msmarco_ids(collection, queries, qrels)              # or read_jsonl_pairs(paths)
    mined = mine(pairs, EmbedderModel(embedder, task), MiningWindow(30, 100, num_negatives=1, relative_margin=0.05))
    write_msmarco_triples(mined, path)                                # qid, positive pid, negative pid

Names: Q queries, C corpus documents (deduplicated texts), D embedding size.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from embed_lm.errors import ConfigError
from embed_lm.data.records import DataFormatError, SkipCounter, expand_paths, read_jsonl, read_tsv, text_field
from embed_lm.inference.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    """Training pairs to mine for: (query id, positive id) rows over id -> text tables (ids are synthetic for
    JSONL input). `corpus` holds every passage negatives may come from (at least the positives)."""
    queries: dict[str, str]
    corpus: dict[str, str]
    rows: list[tuple[str, str]]  # (qid, positive pid)
    negatives: dict[str, list[str]] = field(default_factory=dict)  # qid -> negative pids already given


@dataclass(frozen=True)
class MiningWindow:
    """Which of a query's top `range_max` hits may become negatives: after the positives and every hit scoring
    within the margin of the positive (cos > pos - absolute_margin, or > pos - |pos| * relative_margin) are removed,
    ranks range_min..range_max of the rest; `num_negatives` of them, sampled at random (or the top ones)."""
    range_min: int = 30
    range_max: int = 100
    num_negatives: int = 1
    absolute_margin: float | None = None
    relative_margin: float | None = 0.05
    sampling_strategy: str = "random"


@dataclass
class Mined:
    pairs: Pairs
    triples: list[tuple[str, str, str]]  # (qid, positive pid, negative pid)
    positive_scores: list[float]  # cos(query, positive), one per triple
    negative_scores: list[float]  # cos(query, negative), one per triple
    random_fill_scores: list[float]  # cos(query, another query's positive): what training fills in without mining


class EmbedderModel:
    """The part of the SentenceTransformer interface that `util.mine_hard_negatives` calls, over an Embedder:
    queries carry the run's instruction for `task`, documents none. Keeps the last embeddings per text."""

    def __init__(self, embedder: Embedder, task: str, kind: str = "short-long", batch_size: int = 64) -> None:
        self.embedder, self.task, self.kind, self.batch_size = embedder, task, kind, batch_size
        self.device = torch.device("cpu")
        self.cache: dict[str, Tensor] = {}

    def _keep(self, texts: list[str], emb: Tensor) -> np.ndarray:
        self.cache.update(zip(texts, emb))
        return emb.numpy()

    def encode_query(self, texts: list[str], **_: object) -> np.ndarray:
        return self._keep(texts, self.embedder.encode_queries(texts, self.task, self.kind,
                                                              batch_size=self.batch_size))  # (Q, D)

    def encode_document(self, texts: list[str], **_: object) -> np.ndarray:
        return self._keep(texts, self.embedder.encode_documents(texts, batch_size=self.batch_size))  # (C, D)

    def similarity(self, a, b) -> Tensor:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return a @ b.T  # (Q, C) cosine: both L2-normalised

    def similarity_pairwise(self, a, b) -> Tensor:
        return (torch.as_tensor(a) * torch.as_tensor(b)).sum(-1)  # (Q,)

    def get_embedding_dimension(self) -> int:
        return next(iter(self.cache.values())).shape[-1]


def read_msmarco_ids(collection: str, queries: str, qrels: str | None = None, triples: str | None = None,
                     option: str = "mine.input") -> Pairs:
    """MS-MARCO ids: positives from qrels (qid, 0, pid, rel>0) or from id triples (qid, pos, neg)."""
    if not (qrels or triples):
        raise ConfigError(f"{option}: set `qrels` or `triples` next to `collection` and `queries`")
    skips = SkipCounter(skip_invalid=False)
    rows: list[tuple[str, str]] = []
    given: dict[str, list[str]] = {}
    if triples:
        for _, (qid, pos, neg, *_) in read_tsv(expand_paths(triples, f"{option}.triples")[0], 3, skips):
            rows.append((qid, pos))
            given.setdefault(qid, []).append(neg)
    else:
        for _, (qid, _, pid, rel, *_) in read_tsv(expand_paths(qrels, f"{option}.qrels")[0], 4, skips):
            if rel.strip() not in ("", "0"):
                rows.append((qid, pid))
    rows = list(dict.fromkeys(rows))
    q_path, c_path = expand_paths(queries, f"{option}.queries")[0], expand_paths(collection, f"{option}.collection")[0]
    query_text = {qid: text for _, (qid, text, *_) in read_tsv(q_path, 2, skips)}
    corpus = {pid: text for _, (pid, text, *_) in read_tsv(c_path, 2, skips)}
    for qid, pid in rows:
        if qid not in query_text:
            raise DataFormatError(q_path, None, "query id", f"{qid!r} (a training pair's query) not found")
        if pid not in corpus:
            raise DataFormatError(c_path, None, "passage id", f"{pid!r} (a training pair's positive) not found")
    wanted = {q for q, _ in rows}
    return Pairs({q: t for q, t in query_text.items() if q in wanted}, corpus, rows, given)


def _texts(obj: dict, keys: tuple[str, ...], path: Path, lineno: int, required: bool) -> list[str]:
    key = next((k for k in keys if k in obj), None)
    if key is None:
        if required:
            raise DataFormatError(path, lineno, keys[0], f"missing (one of {', '.join(keys)})")
        return []
    values = [obj[key]] if isinstance(obj[key], str) else obj[key]
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataFormatError(path, lineno, key, "must be a non-empty string or a list of them")
    return values


def read_jsonl_pairs(paths: str | list[str], option: str = "mine.input.jsonl") -> Pairs:
    """Our JSONL (`query`, `positive`/`positives`/`pos`, optional `negative(s)`): each distinct text gets an id."""
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    ids: dict[str, str] = {}
    rows, given = [], {}
    skips = SkipCounter(skip_invalid=False)

    def doc_id(text: str) -> str:
        if text not in ids:
            ids[text] = f"d{len(ids)}"
            corpus[ids[text]] = text
        return ids[text]

    for path in expand_paths(paths, option):
        for lineno, obj in read_jsonl(path, skips):
            query = text_field(obj, "query", path, lineno)
            qid = f"q{len(queries)}"
            queries[qid] = query
            for positive in _texts(obj, ("positive", "positives", "pos"), path, lineno, required=True):
                rows.append((qid, doc_id(positive)))
            given[qid] = [doc_id(n) for n in _texts(obj, ("negative", "negatives", "neg"), path, lineno, False)]
    return Pairs(queries, corpus, rows, given)


def mine(pairs: Pairs, model, window: MiningWindow, seed: int = 0, use_faiss: bool = False) -> Mined:
    """Mine `window.num_negatives` negatives per (query, positive) with sentence-transformers' miner; `model` is a
    SentenceTransformer or an EmbedderModel. Rows whose window holds too few candidates get fewer (logged)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    random.seed(seed)  # the miner samples its window with `random`
    torch.manual_seed(seed)
    anchors = [pairs.queries[q] for q, _ in pairs.rows]
    positives = [pairs.corpus[p] for _, p in pairs.rows]
    out = mine_hard_negatives(
        Dataset.from_dict({"anchor": anchors, "positive": positives}), model, corpus=list(pairs.corpus.values()),
        range_min=window.range_min, range_max=window.range_max, num_negatives=window.num_negatives,
        absolute_margin=window.absolute_margin, relative_margin=window.relative_margin,
        sampling_strategy=window.sampling_strategy, output_format="triplet", output_scores=True,
        use_faiss=use_faiss, verbose=False)
    qid_of = {}
    for qid, _ in pairs.rows:
        qid_of.setdefault(pairs.queries[qid], qid)
    pid_of = {}
    for pid, text in pairs.corpus.items():
        pid_of.setdefault(text, pid)
    triples, pos_scores, neg_scores = [], [], []
    for row in out:
        triples.append((qid_of[row["anchor"]], pid_of[row["positive"]], pid_of[row["negative"]]))
        pos_scores.append(row["scores"][0])
        neg_scores.append(row["scores"][1])
    short = len(pairs.rows) * window.num_negatives - len(triples)
    if short:
        log.warning("mining: %d of %d negatives not found in the window (ranks %d-%d after the margin); rows keep "
                    "fewer", short, len(pairs.rows) * window.num_negatives, window.range_min, window.range_max)
    return Mined(pairs, triples, pos_scores, neg_scores, random_fill_scores(pairs, model, seed))


def random_fill_scores(pairs: Pairs, model, seed: int) -> list[float]:
    """cos(query, a random other row's positive) per row: the negatives training uses when none are given
    (datamodule.fix_negative_count). Reuses the miner's embeddings when `model` kept them."""
    rng = random.Random(seed)
    n = len(pairs.rows)
    others = [pairs.rows[(i + 1 + rng.randrange(n - 1)) % n][1] for i in range(n)] if n > 1 else []
    cache = getattr(model, "cache", {})
    query_texts = [pairs.queries[q] for q, _ in pairs.rows[: len(others)]]
    doc_texts = [pairs.corpus[p] for p in others]
    if all(t in cache for t in query_texts + doc_texts):
        q = torch.stack([cache[t] for t in query_texts])  # (n, D)
        d = torch.stack([cache[t] for t in doc_texts])  # (n, D)
    else:
        q = torch.as_tensor(model.encode_query(query_texts, normalize_embeddings=True))
        d = torch.as_tensor(model.encode_document(doc_texts, normalize_embeddings=True))
    return (q * d).sum(-1).tolist()


def write_msmarco_triples(mined: Mined, path: str | Path) -> None:
    """qid, positive pid, negative pid: MsMarcoSource's `triples` (with the input's collection and queries)."""
    without = len({*mined.pairs.rows} - {(q, p) for q, p, _ in mined.triples})
    if without:
        log.warning("%d pairs got no negative in the window and are not in %s (write .jsonl to keep them; training "
                    "then fills their negatives)", without, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{q}\t{p}\t{n}\n" for q, p, n in mined.triples))


def write_jsonl(mined: Mined, path: str | Path) -> None:
    """One line per (query, positive): `query`, `positive`, `negatives` (MsMarcoSource's `jsonl`)."""
    grouped: dict[tuple[str, str], list[str]] = {(q, p): [] for q, p in mined.pairs.rows}
    for q, p, n in mined.triples:
        grouped.setdefault((q, p), []).append(n)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    corpus, queries = mined.pairs.corpus, mined.pairs.queries
    with path.open("w") as f:
        for (q, p), negs in grouped.items():
            row = {"query": queries[q], "positive": corpus[p]} | ({"negatives": [corpus[n] for n in negs]} if negs else {})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")  # no negatives found: training fills them
