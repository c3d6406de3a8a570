"""Reader for MS-MARCO passage ranking in its public formats (any one of):

1. ids:   collection.tsv (pid, passage) + queries.tsv (qid, query) + either triples of ids (qid, pos_pid, neg_pid;
          as qidpidtriples.train.full.2.tsv) or qrels.tsv (qid, 0, pid, rel; positives only).
2. text triples: triples.tsv of (query, positive passage, negative passage) as triples.train.small.tsv.
3. jsonl: one object a line with `query`, `positive` (or `positives` / `pos`, a string or a list) and optionally
          `negative` (or `negatives` / `neg`).

Only passages that some training pair uses are kept in memory while the collection is streamed.
"""

from __future__ import annotations

from pathlib import Path

from embed_lm.data.records import (DataFormatError, SkipCounter, TrainExample, expand_paths, read_jsonl, read_tsv,
                                   text_field)

MSMARCO_TASK = "Given a web search query, retrieve relevant passages that answer the query"
POSITIVE_KEYS = ("positive", "positives", "pos")
NEGATIVE_KEYS = ("negative", "negatives", "neg")


def _texts(obj: dict, keys: tuple[str, ...], path: Path, lineno: int, required: bool) -> tuple[str, ...]:
    key = next((k for k in keys if k in obj), None)
    if key is None:
        if required:
            raise DataFormatError(path, lineno, keys[0], f"missing (one of {', '.join(keys)})")
        return ()
    value = obj[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataFormatError(path, lineno, key, "must be a non-empty string or list of non-empty strings")
    return tuple(values)


class MsMarcoSource:
    """`data.sources.msmarco`: set collection+queries+(triples|qrels), or triples alone (text), or jsonl."""

    def __init__(self, name: str, collection: str | None = None, queries: str | None = None,
                 qrels: str | None = None, triples: str | None = None, jsonl: str | list[str] | None = None,
                 task: str = MSMARCO_TASK, ratio: float | None = None, skip_invalid: bool = False,
                 max_examples: int | None = None) -> None:
        self.name, self.task, self.ratio, self.skip_invalid = name, task, ratio, skip_invalid
        self.collection, self.queries, self.qrels, self.triples, self.jsonl = collection, queries, qrels, triples, jsonl
        self.max_examples = max_examples
        if jsonl is None and triples is None and not (collection and queries and qrels):
            raise ValueError(f"data.sources.{name}: set `jsonl`, or `triples` (text), or `collection`, `queries` "
                             "and `triples`/`qrels` (ids)")

    def _files(self) -> dict[str, Path]:
        opt = f"data.sources.{self.name}"
        names = {"collection": self.collection, "queries": self.queries, "qrels": self.qrels,
                 "triples": self.triples}
        return {k: expand_paths(v, f"{opt}.{k}")[0] for k, v in names.items() if v}

    def check(self) -> None:
        if self.jsonl is not None:
            expand_paths(self.jsonl, f"data.sources.{self.name}.jsonl")
        else:
            self._files()

    def load(self) -> list[TrainExample]:
        skips = SkipCounter(self.skip_invalid)
        if self.jsonl is not None:
            examples = self._load_jsonl(skips)
        elif not self.collection:
            examples = self._load_text_triples(skips)
        else:
            examples = self._load_ids(skips)
        skips.report(self.name)
        return examples[: self.max_examples] if self.max_examples else examples

    def _load_jsonl(self, skips: SkipCounter) -> list[TrainExample]:
        out = []
        for path in expand_paths(self.jsonl, f"data.sources.{self.name}.jsonl"):
            for lineno, obj in read_jsonl(path, skips):
                try:
                    query = text_field(obj, "query", path, lineno)
                    positives = _texts(obj, POSITIVE_KEYS, path, lineno, required=True)
                    negatives = _texts(obj, NEGATIVE_KEYS, path, lineno, required=False)
                except DataFormatError as e:
                    skips.handle(e)
                    continue
                out.append(TrainExample(query, positives[0], negatives, self.task, "short-long"))
        return out

    def _load_text_triples(self, skips: SkipCounter) -> list[TrainExample]:
        path = self._files()["triples"]
        return [TrainExample(q, p, (n,), self.task, "short-long") for _, (q, p, n, *_) in read_tsv(path, 3, skips)]

    def _load_ids(self, skips: SkipCounter) -> list[TrainExample]:
        files = self._files()
        pairs: list[tuple[str, str, str | None, Path, int]] = []  # (qid, pos pid, neg pid, file, line)
        if "triples" in files:
            for lineno, (qid, pos, neg, *_) in read_tsv(files["triples"], 3, skips):
                pairs.append((qid, pos, neg, files["triples"], lineno))
        else:
            for lineno, (qid, _, pid, rel, *_) in read_tsv(files["qrels"], 4, skips):
                if rel.strip() not in ("", "0"):
                    pairs.append((qid, pid, None, files["qrels"], lineno))
        if self.max_examples:
            pairs = pairs[: self.max_examples]
        wanted_q = {p[0] for p in pairs}
        wanted_d = {p[1] for p in pairs} | {p[2] for p in pairs if p[2]}
        queries = {qid: text for _, (qid, text, *_) in read_tsv(files["queries"], 2, skips) if qid in wanted_q}
        passages = {pid: text for _, (pid, text, *_) in read_tsv(files["collection"], 2, skips) if pid in wanted_d}
        out = []
        for qid, pos, neg, path, lineno in pairs:
            missing = [(what, key) for what, key, table in (("query id", qid, queries), ("passage id", pos, passages),
                                                             ("passage id", neg, passages)) if key and key not in table]
            if missing:
                what, key = missing[0]
                skips.handle(DataFormatError(path, lineno, what, f"{key!r} not found in "
                                             f"{files['queries'] if what == 'query id' else files['collection']}"))
                continue
            out.append(TrainExample(queries[qid], passages[pos], (passages[neg],) if neg else (), self.task,
                                    "short-long"))
        return out
