"""Build the two public sets of data=full that are released as TSV files needing a join into the BEIR folders
data=full reads (`<data_dir>/<set>/`: corpus.jsonl, queries.jsonl, qrels/train.tsv).

    python -m embed_lm.data.build t2ranking                               # downloads THUIR/T2Ranking's 3 files
    python -m embed_lm.data.build t2ranking --from /data/T2Ranking        # the files downloaded already
    python -m embed_lm.data.build msmarco_document --from /data/msmarco-doc   # the official MS-MARCO document files
    python -m embed_lm.data.build t2ranking --out /data/t2ranking         # default <EMBED_LM_DATA or ./data>/<set>

t2ranking: data/collection.tsv (pid, passage), data/queries.train.tsv (qid, query), data/qrels.retrieval.train.tsv
(qid, pid) of the hub repository THUIR/T2Ranking (fetched with huggingface_hub: plain files, no loading script).
msmarco_document (https://microsoft.github.io/msmarco/, not on the hub with texts): msmarco-docs.tsv (docid, url,
title, body), msmarco-doctrain-queries.tsv (qid, query), msmarco-doctrain-qrels.tsv (TREC: qid 0 docid 1), each
plain or .gz. A header row is skipped. Only the documents the train qrels name are kept, read in one streaming pass
(the corpus is never held in memory); everything is written into a temporary folder renamed at the end, so a failed
build leaves nothing behind. Bad lines stop with file:line (embed_lm/data/records.py rules).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from embed_lm.data.records import DataFormatError, SkipCounter, read_lines
from embed_lm.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetFiles:
    corpus: str
    queries: str
    qrels: str
    corpus_columns: tuple[str, ...]  # names of the corpus columns; "id", "title" and "text" are kept
    repo: str | None = None  # hub dataset repository holding the three files, if any
    where: str = ""  # where to get them otherwise


SETS = {
    "t2ranking": SetFiles("data/collection.tsv", "data/queries.train.tsv", "data/qrels.retrieval.train.tsv",
                          ("id", "text"), repo="THUIR/T2Ranking"),
    "msmarco_document": SetFiles("msmarco-docs.tsv", "msmarco-doctrain-queries.tsv", "msmarco-doctrain-qrels.tsv",
                                 ("id", "url", "title", "text"),
                                 where="https://microsoft.github.io/msmarco/ (Document ranking: docs, train queries "
                                       "and train qrels)"),
}


class BuildError(UserError):
    """The set's files are missing or the output folder is taken."""


def locate(spec: SetFiles, name: str, source: Path | None) -> dict[str, Path]:
    """The three files: under `source` (as named, by base name, or with .gz), else downloaded from the hub repo."""
    files = {"corpus": spec.corpus, "queries": spec.queries, "qrels": spec.qrels}
    if source is None:
        if spec.repo is None:
            raise BuildError(f"{name}: not on the hub; download {', '.join(Path(f).name for f in files.values())} "
                             f"from {spec.where}, then: python -m embed_lm.data.build {name} --from <that folder>")
        from huggingface_hub import hf_hub_download

        try:
            return {k: Path(hf_hub_download(spec.repo, f, repo_type="dataset")) for k, f in files.items()}
        except Exception as e:  # noqa: BLE001 - offline, unreachable, renamed: all mean "fetch them yourself"
            raise BuildError(f"{name}: cannot download from the hub repository {spec.repo} ({type(e).__name__}); "
                             f"download {', '.join(files.values())} there and run: python -m embed_lm.data.build "
                             f"{name} --from <folder>") from None
    found, missing = {}, []
    for key, rel in files.items():
        candidates = [source / rel, source / Path(rel).name]
        hit = next((c for p in candidates for c in (p, p.with_name(p.name + ".gz")) if c.is_file()), None)
        found[key] = hit
        if hit is None:
            missing.append(Path(rel).name)
    if missing:
        raise BuildError(f"{name}: --from {source} lacks {', '.join(missing)} (plain or .gz)"
                         + (f"; they come from {spec.where}" if spec.where else f"; they are in {spec.repo}"))
    return found


def _header(lineno: int, first_cell: str) -> bool:
    return lineno == 1 and not first_cell.strip().isdigit() and first_cell.strip().lower() in (
        "qid", "pid", "id", "query_id", "docid", "query-id")


def read_qrels(path: Path) -> list[tuple[str, str]]:
    """(qid, docid) of every relevant judgement: `qid docid`, `qid docid rel` or TREC `qid 0 docid rel`."""
    pairs = []
    for lineno, line in read_lines(path, SkipCounter(False)):
        cells = line.split()
        if _header(lineno, cells[0]):
            continue
        if len(cells) not in (2, 3, 4):
            raise DataFormatError(path, lineno, None, f"expected 2-4 columns (qid, [0,] docid, [rel]), found "
                                  f"{len(cells)}")
        qid, doc = cells[0], cells[2] if len(cells) == 4 else cells[1]
        rel = cells[-1] if len(cells) > 2 else "1"
        if not rel.lstrip("-").isdigit():
            raise DataFormatError(path, lineno, "rel", f"must be an integer, got {rel!r}")
        if int(rel) > 0:
            pairs.append((qid, doc))
    return pairs


def read_rows(path: Path, columns: tuple[str, ...], keep: set[str]):
    """Yield {column: cell} for the rows whose id is in `keep`; the last column (a text) may hold tabs."""
    for lineno, line in read_lines(path, SkipCounter(False)):
        cells = line.split("\t", len(columns) - 1)
        if _header(lineno, cells[0]) or cells[0] not in keep:
            continue
        if len(cells) != len(columns):
            raise DataFormatError(path, lineno, None, f"expected {len(columns)} tab-separated columns "
                                  f"({', '.join(columns)}), found {len(cells)}")
        row = dict(zip(columns, cells))
        if not row["text"].strip():
            raise DataFormatError(path, lineno, "text", "is empty")
        yield row


def build(name: str, out: Path, source: Path | None = None) -> dict[str, int]:
    """Write the BEIR folder `out` for set `name`; returns the counts written."""
    spec = SETS[name]
    if (out / "corpus.jsonl").exists():
        raise BuildError(f"{name}: {out} holds a built set already; delete it or pass --out <another folder>")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BuildError(f"{name}: --out {out} exists and is not an empty folder; delete it or pass another")
    files = locate(spec, name, source)
    qrels = read_qrels(files["qrels"])
    if not qrels:
        raise BuildError(f"{files['qrels']}: no relevant (query, document) pair in this file")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "qrels").mkdir(parents=True)
    try:
        counts = {"queries": 0, "documents": 0}
        with (tmp / "queries.jsonl").open("w", encoding="utf-8") as f:
            for row in read_rows(files["queries"], ("id", "text"), {q for q, _ in qrels}):
                f.write(json.dumps({"_id": row["id"], "text": row["text"]}, ensure_ascii=False) + "\n")
                counts["queries"] += 1
        with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as f:
            for row in read_rows(files["corpus"], spec.corpus_columns, {d for _, d in qrels}):
                f.write(json.dumps({"_id": row["id"], "title": row.get("title", ""), "text": row["text"]},
                                   ensure_ascii=False) + "\n")
                counts["documents"] += 1
        with (tmp / "qrels" / "train.tsv").open("w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels))
        counts["qrels"] = len(qrels)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m embed_lm.data.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("set", choices=sorted(SETS))
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="folder with the set's files (default: download from the hub where the set is there)")
    parser.add_argument("--out", type=Path, default=None, help="BEIR folder to write (default <data_dir>/<set>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or Path(os.environ.get("EMBED_LM_DATA", "data")) / args.set
    counts = exit_on_user_error(build, args.set, out.expanduser(), args.source)
    print(f"{args.set}: {counts['qrels']} train pairs, {counts['queries']} queries, {counts['documents']} documents "
          f"-> {out} (data=full reads it as data.sources.{args.set}.local)")


if __name__ == "__main__":
    main(sys.argv[1:])
