"""Retrieval evaluation splits in the BEIR layout: corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
qrels/<split>.tsv (query-id, corpus-id, score; header row). The bundled sample's dev/ and test/ use it, and so
can any user dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embed_lm.errors import MissingFileError
from embed_lm.data.records import DataFormatError, SkipCounter, read_jsonl, read_tsv, text_field
from embed_lm.model.instructions import check_task_kind


@dataclass
class RetrievalSplit:
    name: str
    queries: dict[str, str]  # query id -> text
    corpus: dict[str, str]  # doc id -> text ("title text" when a title exists)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    task: str
    task_kind: str = "short-long"


class BeirSplit:
    """`data.dev` / `data.test`: path to a BEIR-layout folder, the qrels split name and the task definition."""

    def __init__(self, path: str, split: str, task: str, task_kind: str = "short-long",
                 max_queries: int | None = None) -> None:
        self.path, self.split, self.task = Path(path).expanduser(), split, task
        self.task_kind = check_task_kind(task_kind)
        self.max_queries = max_queries

    def files(self) -> dict[str, Path]:
        return {"corpus": self.path / "corpus.jsonl", "queries": self.path / "queries.jsonl",
                "qrels": self.path / "qrels" / f"{self.split}.tsv"}

    def check(self) -> None:
        """The three files exist and every qrels score is an integer (a cheap scan; before any model loads)."""
        missing = [str(p) for p in self.files().values() if not p.is_file()]
        if missing:
            raise MissingFileError(f"BEIR split '{self.split}' at {self.path}: missing {', '.join(missing)}")
        path = self.files()["qrels"]
        for lineno, (_, _, score, *_) in read_tsv(path, 3, SkipCounter(False), header_startswith="query-id"):
            _relevance(score, path, lineno)

    def load(self) -> RetrievalSplit:
        self.check()
        files, strict = self.files(), SkipCounter(skip_invalid=False)
        corpus = {}
        for lineno, obj in read_jsonl(files["corpus"], strict):
            doc_id = str(obj.get("_id", "")) or _missing(files["corpus"], lineno, "_id")
            title, text = obj.get("title") or "", text_field(obj, "text", files["corpus"], lineno)
            corpus[doc_id] = f"{title} {text}" if title else text
        queries = {str(o.get("_id", "")) or _missing(files["queries"], n, "_id"): text_field(o, "text", files["queries"], n)
                   for n, o in read_jsonl(files["queries"], strict)}
        qrels: dict[str, dict[str, int]] = {}
        for lineno, (qid, did, score, *_) in read_tsv(files["qrels"], 3, strict, header_startswith="query-id"):
            if qid not in queries or did not in corpus:
                raise DataFormatError(files["qrels"], lineno, "query-id" if qid not in queries else "corpus-id",
                                      f"{qid if qid not in queries else did!r} not in queries.jsonl/corpus.jsonl")
            if (relevance := _relevance(score, files["qrels"], lineno)) > 0:
                qrels.setdefault(qid, {})[did] = relevance
        qids = [q for q in queries if q in qrels][: self.max_queries]
        return RetrievalSplit(f"{self.path.name}/{self.split}", {q: queries[q] for q in qids}, corpus,
                              {q: qrels[q] for q in qids}, self.task, self.task_kind)


def _relevance(score: str, path: Path, lineno: int) -> int:
    try:
        return int(score)
    except ValueError:
        raise DataFormatError(path, lineno, "score", f"{score.strip()!r} is not an integer relevance "
                              "(0 = not relevant, 1, 2, ... = graded)") from None


def _missing(path: Path, lineno: int, field: str) -> str:
    raise DataFormatError(path, lineno, field, "missing")
