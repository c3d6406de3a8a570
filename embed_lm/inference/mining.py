"""Hard-negative mining as the paper does it (FACTS.md section 1): sets without hard negatives get negatives mined
from a smaller embedder's top-100, sampled from a rank window and kept clear of the positive's own score. Built to
mine MS-MARCO's 8.8M passages on one GPU without holding the passages as Python strings.

    data = read_input(MsMarcoSource(...), cache_dir)            # the training reader's memory-mapped Arrow tables
    mined = mine(data, EmbedderModel(embedder, task), MiningWindow(30, 100), work_dir)
    write_output(mined, "triples.mined.ids.tsv")                # qid, positive pid, negative pid (or .jsonl)

Reading: the collection, queries and pairs are MsMarcoSource's Arrow tables (embed_lm/data/msmarco.py: the training
reader's rules and file:line errors, cached under data.cache_dir and memory-mapped). A text becomes a Python string
only inside the block being embedded or written.
Embedding: block by block into Arrow IPC files (one record batch of FixedSizeList rows per block), memory-mapped
back, zero-copy per block; only the queries of the pairs are embedded.
Search: exact inner product (embeddings are L2-normalised: cosine), corpus block by query block on the device, with a
running top-K per query (faiss IndexFlatIP instead with use_faiss). Host memory besides the embedding files:
(Q, K) scores and rows, (N, negatives) picks and 8 bytes a passage (a 64-bit hash of its text, so a copy of a
positive under another id never becomes its negative).
Selection (the rules of sentence-transformers' util.mine_hard_negatives, which keeps every text in Python lists): a
query's pool is its top range_max + P hits (P: its number of positives); the positives, copies of their texts and
every hit scoring above cos(q, positive) - margin are removed; ranks range_min..range_max of the rest are the
window, from which num_negatives are sampled (or the top ones).

Names: Q queries (of the pairs), C passages, N pairs, D embedding size, K pool size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from embed_lm.errors import ConfigError, UserError

log = logging.getLogger(__name__)
BLOCK = 8192  # texts embedded, or rows written, per block


@dataclass(frozen=True)
class MiningWindow:
    """Which of a query's top hits may become negatives: after the positives and every hit scoring within the margin
    of the positive (cos > pos - absolute_margin, or > pos - |pos| * relative_margin) are removed, ranks
    range_min..range_max of the rest; `num_negatives` of them, sampled at random (or the top ones)."""
    range_min: int = 30
    range_max: int = 100
    num_negatives: int = 1
    absolute_margin: float | None = None
    relative_margin: float | None = 0.05
    sampling_strategy: str = "random"

    def check(self, option: str = "window") -> None:
        """One line naming the option when a value is out of range (before anything is read or embedded)."""
        def bad(name: str, value, allowed: str) -> ConfigError:
            return ConfigError(f"{option}.{name}={value}: must be {allowed}")

        if not isinstance(self.range_min, int) or self.range_min < 0:
            raise bad("range_min", self.range_min, "an integer >= 0")
        if not isinstance(self.range_max, int) or self.range_max <= self.range_min:
            raise bad("range_max", self.range_max, f"an integer > range_min ({self.range_min})")
        if not isinstance(self.num_negatives, int) or self.num_negatives < 1:
            raise bad("num_negatives", self.num_negatives, "an integer >= 1")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise bad("relative_margin", self.relative_margin, "in [0, 1) (a fraction of cos(query, positive)), "
                      "or null")
        if self.absolute_margin is not None and not 0 <= self.absolute_margin <= 2:
            raise bad("absolute_margin", self.absolute_margin, "in [0, 2] (a cosine difference), or null")
        if self.relative_margin is not None and self.absolute_margin is not None:
            raise ConfigError(f"{option}.relative_margin and {option}.absolute_margin are both set: set one, null the "
                              "other")
        if self.sampling_strategy not in ("random", "top"):
            raise bad("sampling_strategy", self.sampling_strategy, "random or top")

    def bound(self, positive: np.ndarray) -> np.ndarray:
        """(N,) highest score a negative may have, per pair."""
        if self.absolute_margin is not None:
            return positive - self.absolute_margin
        if self.relative_margin is not None:
            return positive - np.abs(positive) * self.relative_margin
        return np.full_like(positive, np.inf)


def check_output(output: Path, ids_input: bool, option: str = "output") -> None:
    """The output is a .tsv (id triples; ids input only) or .jsonl file, not a folder, in a folder we can write."""
    if output.is_dir():
        raise ConfigError(f"{option}={output} is a folder: name a file in it, e.g. {option}={output / 'mined'}"
                          f".jsonl")
    if output.suffix not in (".tsv", ".jsonl"):
        raise ConfigError(f"{option}={output}: end it in .tsv (MS-MARCO id triples) or .jsonl (our JSONL)")
    if output.suffix == ".tsv" and not ids_input:
        raise ConfigError(f"{option}={output}: id triples need ids input (input.collection/queries/qrels); write "
                          ".jsonl for JSONL input")
    folder = output.parent
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file")
        probe = folder / f".embed_lm_write_probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"{option}={output}: cannot write in {folder} ({e.strerror or e}); pick a writable "
                        f"folder: {option}=/path/mined{output.suffix}") from None


@dataclass
class MiningInput:
    """Pairs over memory-mapped text columns: rows (N, 2) = (query row, positive passage row)."""
    queries: pa.ChunkedArray  # texts
    passages: pa.ChunkedArray  # texts
    rows: np.ndarray  # (N, 2) int64, distinct pairs in input order
    query_ids: pa.ChunkedArray | None = None  # ids input only
    passage_ids: pa.ChunkedArray | None = None


def read_input(source, cache_dir: str | Path) -> MiningInput:
    """The pairs of an MsMarcoSource (ids or JSONL) from its Arrow tables, built once by the training reader."""
    from embed_lm.data.tables import ensure_built

    table = source.open(ensure_built(source, cache_dir))
    if table.passages is not None:  # ids layout: collection and queries tables, examples of row numbers
        rows = np.stack([table.column("query").to_numpy(), table.column("positive").to_numpy()], 1)  # (N, 2)
        queries, passages = table.queries.data.column("text"), table.passages.data.column("text")
        query_ids, passage_ids = table.queries.data.column("id"), table.passages.data.column("id")
    else:  # JSONL (text layout): the distinct query and positive texts are the queries and the corpus
        q, p = table.column("query"), table.column("positive")
        queries, passages = pa.chunked_array([pc.unique(q)]), pa.chunked_array([pc.unique(p)])
        rows = np.stack([pc.index_in(q, value_set=queries.chunk(0)).to_numpy(),
                         pc.index_in(p, value_set=passages.chunk(0)).to_numpy()], 1).astype(np.int64)
        query_ids = passage_ids = None
    _, first = np.unique(rows, axis=0, return_index=True)
    return MiningInput(queries, passages, rows[np.sort(first)], query_ids, passage_ids)


def text_hash(texts: list[str]) -> np.ndarray:
    """(n,) int64: 64-bit hash of each text; equal texts, equal hashes."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little", signed=True)
                     for t in texts], dtype=np.int64)


class Embeddings:
    """(n, D) rows written block by block to an Arrow IPC file and memory-mapped back: block(i) is a zero-copy view."""

    def __init__(self, path: Path) -> None:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        self.blocks = []
        for i in range(reader.num_record_batches):
            column = reader.get_batch(i).column(0)
            self.blocks.append(column.values.to_numpy(zero_copy_only=True).reshape(len(column), -1))  # (b, D)
        self.starts = np.cumsum([0] + [len(b) for b in self.blocks])  # (blocks + 1,)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32 copies of the given rows."""
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), self.blocks[0].shape[1]), np.float32)
        for b in np.unique(which):
            mask = which == b
            out[mask] = self.blocks[b][rows[mask] - self.starts[b]]
        return out


def embed(texts: pa.ChunkedArray, rows: np.ndarray | None, encode: Callable[[list[str]], np.ndarray], path: Path,
          dtype: str = "float16", hashes: list | None = None) -> Embeddings:
    """Embed texts[rows] (every text when rows is None), BLOCK texts at a time, L2-normalised, into `path`."""
    n = len(texts) if rows is None else len(rows)
    writer = None
    for start in range(0, n, BLOCK):
        block = (texts.slice(start, BLOCK) if rows is None else texts.take(pa.array(rows[start:start + BLOCK])))
        strings = block.to_pylist()  # only this block's texts become Python strings
        if hashes is not None:
            hashes.append(text_hash(strings))
        emb = np.asarray(encode(strings), dtype=np.float32)  # (b, D)
        emb /= np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
        column = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(dtype).ravel()), emb.shape[1])
        if writer is None:
            writer = pa.ipc.new_file(str(path), pa.schema([("embedding", column.type)]))
        writer.write_batch(pa.record_batch([column], names=["embedding"]))
    writer.close()
    return Embeddings(path)


def search(queries: Embeddings, corpus: Embeddings, k: int, device: str = "cpu", query_block: int = 256,
           corpus_block: int = 65536, use_faiss: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(Q, K) scores and (Q, K) passage rows of each query's top-K by inner product, best first (-1: no hit).
    The query embeddings and the running top-K sit on the device; the corpus passes through it once, in blocks."""
    k = min(k, len(corpus))
    if use_faiss:
        return _search_faiss(queries, corpus, k, query_block)
    q_all = torch.from_numpy(queries.take(np.arange(len(queries)))).to(device)  # (Q, D)
    scores = torch.full((len(queries), k), -torch.inf, device=device)  # (Q, K)
    hits = torch.full((len(queries), k), -1, dtype=torch.long, device=device)  # (Q, K)
    for start in range(0, len(corpus), corpus_block):
        c = torch.from_numpy(corpus.take(np.arange(start, min(start + corpus_block, len(corpus))))).to(device)
        for s in range(0, len(queries), query_block):  # c: (Cb, D)
            top = (q_all[s:s + query_block] @ c.T).topk(min(k, len(c)), dim=1)  # (qb, k')
            merged_s = torch.cat([scores[s:s + query_block], top.values], 1)  # (qb, K + k')
            merged_i = torch.cat([hits[s:s + query_block], top.indices + start], 1)  # (qb, K + k')
            best = merged_s.topk(k, dim=1)  # (qb, K)
            scores[s:s + query_block], hits[s:s + query_block] = best.values, merged_i.gather(1, best.indices)
    return scores.cpu().numpy(), hits.cpu().numpy()


def _search_faiss(queries: Embeddings, corpus: Embeddings, k: int, query_block: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError:
        raise UserError("use_faiss=true needs faiss: pip install faiss-cpu (or faiss-gpu); or use_faiss=false "
                        "(exact search in blocks with torch)") from None
    index = faiss.IndexFlatIP(corpus.blocks[0].shape[1])
    for block in corpus.blocks:
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    scores, hits = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), query_block * 64):
        rows = np.arange(s, min(s + query_block * 64, len(queries)))
        scores[rows], hits[rows] = index.search(queries.take(rows), k)
    return scores, hits


@dataclass
class Mined:
    data: MiningInput
    negatives: np.ndarray  # (N, num_negatives) passage rows, -1 where the window held too few
    positive_scores: np.ndarray  # (N,) cos(query, positive)
    negative_scores: np.ndarray  # (N, num_negatives) cos(query, negative), NaN where none
    random_fill_scores: np.ndarray  # (N,) cos(query, another pair's positive): what training fills in otherwise


def pair_scores(q_emb: Embeddings, p_emb: Embeddings, q_local: np.ndarray, p_rows: np.ndarray) -> np.ndarray:
    """(N,) cos(query, passage) per pair, BLOCK pairs at a time."""
    out = np.empty(len(q_local), np.float32)
    for s in range(0, len(q_local), BLOCK):
        out[s:s + BLOCK] = (q_emb.take(q_local[s:s + BLOCK]) * p_emb.take(p_rows[s:s + BLOCK])).sum(1)
    return out


def mine(data: MiningInput, model, window: MiningWindow, work_dir: Path, seed: int = 0, device: str = "cpu",
         dtype: str = "float16", query_block: int = 256, corpus_block: int = 65536, use_faiss: bool = False) -> Mined:
    """Embed, search, and pick each pair's negatives from its window; `model` has encode_query/encode_document
    (a SentenceTransformer, or EmbedderModel over one of our embedders)."""
    used_q, q_local = np.unique(data.rows[:, 0], return_inverse=True)  # (Q,), (N,)
    hashes: list[np.ndarray] = []
    log.info("mining: embedding %d queries and %d passages", len(used_q), len(data.passages))
    q_emb = embed(data.queries, used_q, model.encode_query, work_dir / "queries.arrow", dtype)
    p_emb = embed(data.passages, None, model.encode_document, work_dir / "passages.arrow", dtype, hashes)
    text_hashes = np.concatenate(hashes)  # (C,)
    order = np.argsort(q_local, kind="stable")  # pairs grouped by query
    bounds = np.searchsorted(q_local[order], np.arange(len(used_q) + 1))  # (Q + 1,)
    most = int(np.diff(bounds).max())
    log.info("mining: searching the top %d of %d passages for %d queries", window.range_max + most,
             len(data.passages), len(used_q))
    scores, hits = search(q_emb, p_emb, window.range_max + most, device, query_block, corpus_block,
                         use_faiss)  # (Q, K)
    positive = pair_scores(q_emb, p_emb, q_local, data.rows[:, 1])  # (N,)
    limit = window.bound(positive)  # (N,)
    rng = np.random.default_rng(seed)
    picks = np.full((len(data.rows), window.num_negatives), -1, np.int64)  # (N, num_negatives)
    picked_scores = np.full(picks.shape, np.nan, np.float32)
    for qi in range(len(used_q)):
        pairs = order[bounds[qi]:bounds[qi + 1]]
        own = data.rows[pairs, 1]  # this query's positives
        row_hits, row_scores = hits[qi], scores[qi]
        ok = (row_hits >= 0) & ~np.isin(row_hits, own)
        ok[ok] &= ~np.isin(text_hashes[row_hits[ok]], text_hashes[own])
        for n in pairs:
            keep = np.flatnonzero(ok & (row_scores <= limit[n]))[window.range_min:window.range_max]
            take = min(window.num_negatives, len(keep))
            chosen = keep[:take] if window.sampling_strategy == "top" else rng.choice(keep, take, replace=False)
            picks[n, :take], picked_scores[n, :take] = row_hits[chosen], row_scores[chosen]
    found = int((picks >= 0).sum())
    if found < picks.size:
        log.warning("mining: %d of %d negatives not found in the window (ranks %d-%d after the margin); those pairs "
                    "keep fewer", picks.size - found, picks.size, window.range_min, window.range_max)
    n = len(data.rows)
    other = (np.arange(n) + 1 + np.random.default_rng(seed + 1).integers(0, max(n - 1, 1), n)) % n if n > 1 else (
        np.zeros(0, np.int64))
    fill = pair_scores(q_emb, p_emb, q_local[:len(other)], data.rows[other, 1]) if n > 1 else np.zeros(0)
    return Mined(data, picks, positive, picked_scores, fill)


def write_output(mined: Mined, path: Path) -> int:
    """Write .tsv id triples (qid, positive pid, negative pid) or .jsonl (query, positive, negatives: pairs without
    one stay, training fills them) through a temporary file renamed at the end; returns the lines written. No
    triple found for a .tsv: refused, nothing written (a 0-byte file would read as an empty training set)."""
    data, picks = mined.data, mined.negatives
    if path.suffix == ".tsv" and not (picks >= 0).any():
        raise UserError(f"no negative was found in any pair's window: {path} is not written. Widen the window "
                        "(window.range_min lower, window.range_max higher), lower the margin, or write .jsonl "
                        "(pairs kept, training fills the negatives)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for s in range(0, len(data.rows), BLOCK):
                rows, negs = data.rows[s:s + BLOCK], picks[s:s + BLOCK]  # (b, 2), (b, num_negatives)
                if path.suffix == ".tsv":
                    qids = data.query_ids.take(pa.array(rows[:, 0])).to_pylist()
                    pids = data.passage_ids.take(pa.array(rows[:, 1])).to_pylist()
                    nids = data.passage_ids.take(pa.array(np.where(negs >= 0, negs, 0).ravel())).to_pylist()
                    width = negs.shape[1]
                    for i, (q, p) in enumerate(zip(qids, pids)):
                        for j in np.flatnonzero(negs[i] >= 0):
                            f.write(f"{q}\t{p}\t{nids[i * width + j]}\n")
                            lines += 1
                    continue
                queries = data.queries.take(pa.array(rows[:, 0])).to_pylist()
                positives = data.passages.take(pa.array(rows[:, 1])).to_pylist()
                for i, (q, p) in enumerate(zip(queries, positives)):
                    mined_rows = negs[i][negs[i] >= 0]
                    row = {"query": q, "positive": p}
                    if len(mined_rows):
                        row["negatives"] = data.passages.take(pa.array(mined_rows)).to_pylist()
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    lines += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return lines


class EmbedderModel:
    """encode_query / encode_document (the SentenceTransformer calls mining makes) over one of our Embedders:
    queries carry the instruction for `task`, documents none. Returns (b, D) float32 arrays."""

    def __init__(self, embedder, task: str, kind: str = "short-long", batch_size: int = 64) -> None:
        self.embedder, self.task, self.kind, self.batch_size = embedder, task, kind, batch_size

    def encode_query(self, texts: list[str], **_: object) -> np.ndarray:
        emb = self.embedder.encode_queries(texts, self.task, self.kind, batch_size=self.batch_size)  # (b, D)
        return emb.float().numpy()

    def encode_document(self, texts: list[str], **_: object) -> np.ndarray:
        return self.embedder.encode_documents(texts, batch_size=self.batch_size).float().numpy()  # (b, D)
