"""Build the bundled sample data (data/sample/) from Debian's package descriptions.

Real text that no one in this project wrote: each Debian package has a one-line summary (the query) and a long
description (the document). The archive section (games, libs, python, ...) rides along as metadata.

    apt-get update -o Acquire::Languages=en          # fetches Translation-en next to the Packages index
    pip install bm25s                                 # lexical hard-negative mining (build time only)
    python scripts/build_sample_data.py --out data/sample
    python scripts/build_sample_data.py --out data/sample --only-instructions   # phrasings only, no apt index

Deterministic for a given apt index and --seed. Layout written (see data/sample/README.md):
    train/synthetic/short_long.jsonl   the paper's synthetic short-long format (user_query, positive_document,
                                       hard_negative_document, task: one of 6 phrasings)
    train/synthetic/long_short.jsonl   the reverse task (input_text = description, label = summary,
                                       misleading_label; task: one of 4 phrasings)
    train/msmarco/{collection,queries.train,qrels.train,triples.train.ids}.tsv   MS-MARCO passage ranking (ids)
    dev/, test/                        BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import random
import re
import subprocess
from pathlib import Path

TASK = "Given a one-line summary of a Debian software package, retrieve the package's full description"
# Many phrasings of more than one task, so the sample teaches the task rather than one instruction string (issue 12).
# The held-out split is also scored with REWORDED_TASK, which training never sees.
SUMMARY_TO_DESCRIPTION = (
    TASK,
    "Retrieve the full description of the Debian package summarised by the given one-line synopsis",
    "Given a short synopsis of a software package, find the package's long description",
    "Find the detailed description of the software package whose short summary is given",
    "Given a package's one-line summary from the Debian archive, retrieve the text that describes it in detail",
    "Match a Debian package synopsis to the package's complete description",
)
DESCRIPTION_TO_SUMMARY = (
    "Given the full description of a Debian software package, retrieve its one-line summary",
    "Given a detailed software package description, find the short synopsis that names it",
    "Retrieve the one-line synopsis that a Debian maintainer wrote for the described package",
    "Given a long description of a software package, retrieve the short summary line it belongs to",
)
REWORDED_TASK = "Find the complete write-up of the Debian program that this brief tagline describes"
APT_LISTS = "/var/lib/apt/lists"


def read_stanzas(path: str) -> list[dict[str, str]]:
    """Parse a (compressed) Debian control-file index into stanzas; continuation lines keep their leading space."""
    text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True,
                          text=True).stdout
    stanzas = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def long_description(raw: str) -> str:
    """Debian's long-description markup to plain text: ' .' lines are paragraph breaks, lines are re-joined."""
    paragraphs, current = [], []
    for line in raw.split("\n")[1:]:
        line = line[1:] if line.startswith(" ") else line
        if line.strip() == ".":
            paragraphs.append(current)
            current = []
        elif line.startswith(" "):  # verbatim (list item / code): keep its own line
            current.append("\n" + line.strip())
        else:
            current.append(line.strip())
    paragraphs.append(current)
    text = "\n".join(" ".join(p).replace(" \n", "\n").strip() for p in paragraphs if p)
    return re.sub(r"[ \t]+", " ", text).strip()


def load_packages() -> list[dict[str, str]]:
    sections = {}
    for path in sorted(glob.glob(f"{APT_LISTS}/*_main_binary-amd64_Packages*")):
        for st in read_stanzas(path):
            sections.setdefault(st.get("Package", ""), st.get("Section", "unknown").split("/")[-1])
    packages, seen_short, seen_first_para = [], set(), set()
    translations = sorted(glob.glob(f"{APT_LISTS}/*_main_i18n_Translation-en*"))
    if not translations:
        raise SystemExit(f"no Translation-en index under {APT_LISTS}: run `apt-get update -o Acquire::Languages=en`")
    for path in translations:
        for st in read_stanzas(path):
            desc = st.get("Description-en")
            if not desc or "Package" not in st:
                continue
            short = desc.split("\n", 1)[0].strip()
            doc = long_description(desc)
            first_para = doc.split("\n", 1)[0].lower()
            words = len(short.split())
            if not (3 <= words <= 14 and 150 <= len(doc) <= 900):
                continue
            if re.search(r"transitional|dummy package|metapackage", short + " " + doc, re.I):
                continue
            if short.lower() in seen_short or first_para in seen_first_para:  # one package per family
                continue
            seen_short.add(short.lower())
            seen_first_para.add(first_para)
            packages.append({"package": st["Package"], "section": sections.get(st["Package"], "unknown"),
                             "query": short, "document": doc})
    return packages


def pid(pkg: dict[str, str]) -> str:
    return "d" + hashlib.sha1(pkg["package"].encode()).hexdigest()[:10]


def mine_hard_negatives(queries: list[str], pool: list[str], positives: list[int]) -> list[int]:
    """Index into `pool` of the top BM25 document that is not the query's own positive."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(pool, stopwords="en", show_progress=False), show_progress=False)
    hits, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=5,
                                 show_progress=False)
    return [next(int(h) for h in row if int(h) != pos) for row, pos in zip(hits, positives)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_tsv(path: Path, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write("\t".join(str(c).replace("\t", " ").replace("\n", " ") for c in row) + "\n")


def write_beir(root: Path, split: str, queries: list[dict], distractors: list[dict]) -> None:
    corpus = sorted(queries + distractors, key=pid)
    write_jsonl(root / "corpus.jsonl", [{"_id": pid(p), "title": "", "text": p["document"], "package": p["package"],
                                         "section": p["section"]} for p in corpus])
    write_jsonl(root / "queries.jsonl", [{"_id": "q" + pid(p)[1:], "text": p["query"], "package": p["package"],
                                          "section": p["section"]} for p in queries])
    write_tsv(root / "qrels" / f"{split}.tsv",
              [("query-id", "corpus-id", "score")] + [("q" + pid(p)[1:], pid(p), 1) for p in queries])


def pick(options: tuple[str, ...], key: str) -> str:
    return options[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(options)]


def add_instructions(out: Path, n_long_short: int, seed: int) -> None:
    """Give the synthetic short-long rows one of several task phrasings and write long_short.jsonl: the reverse
    task (description -> summary, misleading label = the hard negative's summary) in several phrasings.
    Works on a sample already on disk (--only-instructions), so no apt index is needed."""
    path = out / "train" / "synthetic" / "short_long.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        row["task"] = pick(SUMMARY_TO_DESCRIPTION, row["package"])
    write_jsonl(path, rows)
    summary_of = {r["positive_document"]: r["user_query"] for r in rows}
    rng = random.Random(seed)
    reverse = []
    for row in rows[:n_long_short]:
        misleading = summary_of.get(row["hard_negative_document"]) or rng.choice(rows)["user_query"]
        if misleading == row["user_query"]:
            continue
        reverse.append({"task": pick(DESCRIPTION_TO_SUMMARY, row["package"]), "input_text": row["positive_document"],
                        "label": row["user_query"], "misleading_label": misleading, "package": row["package"],
                        "section": row["section"]})
    write_jsonl(out / "train" / "synthetic" / "long_short.jsonl", reverse)
    print(f"instructions: {len(SUMMARY_TO_DESCRIPTION)} phrasings on {len(rows)} short-long rows, "
          f"{len(DESCRIPTION_TO_SUMMARY)} on {len(reverse)} long-short rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-synthetic", type=int, default=4000)
    parser.add_argument("--n-msmarco", type=int, default=2000)
    parser.add_argument("--n-dev", type=int, nargs=2, default=(200, 1000), metavar=("QUERIES", "DOCS"))
    parser.add_argument("--n-test", type=int, nargs=2, default=(500, 2500), metavar=("QUERIES", "DOCS"))
    parser.add_argument("--n-long-short", type=int, default=1000, help="reverse-task rows (description -> summary)")
    parser.add_argument("--only-instructions", action="store_true",
                        help="only (re)apply the task phrasings and long_short.jsonl to the sample at --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.only_instructions:
        add_instructions(out, args.n_long_short, args.seed)
        return

    packages = sorted(load_packages(), key=lambda p: p["package"])
    random.Random(args.seed).shuffle(packages)
    (tq, td), (dq, dd) = args.n_test, args.n_dev
    cut = iter([tq, td - tq, dq, dd - dq, args.n_synthetic, args.n_msmarco])
    parts, start = [], 0
    for n in cut:
        parts.append(packages[start:start + n])
        start += n
    test_q, test_d, dev_q, dev_d, synth, marco = parts
    train_pool = synth + marco + packages[start:start + 4000]  # extra distractors for negative mining
    print(f"{len(packages)} usable packages; test {len(test_q)}/{tq + len(test_d)}, dev {len(dev_q)}/"
          f"{dq + len(dev_d)}, train synthetic {len(synth)}, msmarco {len(marco)}")

    write_beir(out / "test", "test", test_q, test_d)
    write_beir(out / "dev", "dev", dev_q, dev_d)

    train = synth + marco
    negatives = mine_hard_negatives([p["query"] for p in train], [p["document"] for p in train_pool],
                                    list(range(len(train))))
    write_jsonl(out / "train" / "synthetic" / "short_long.jsonl", [
        {"task": TASK, "user_query": p["query"], "positive_document": p["document"],
         "hard_negative_document": train_pool[n]["document"], "package": p["package"], "section": p["section"]}
        for p, n in zip(synth, negatives[:len(synth)])])

    marco_negs = [train_pool[n] for n in negatives[len(synth):]]
    collection = {pid(p): p["document"] for p in marco + marco_negs}
    root = out / "train" / "msmarco"
    write_tsv(root / "collection.tsv", sorted(collection.items()))
    write_tsv(root / "queries.train.tsv", [("q" + pid(p)[1:], p["query"]) for p in marco])
    write_tsv(root / "qrels.train.tsv", [("q" + pid(p)[1:], 0, pid(p), 1) for p in marco])
    write_tsv(root / "triples.train.ids.tsv", [("q" + pid(p)[1:], pid(p), pid(n)) for p, n in zip(marco, marco_negs)])
    add_instructions(out, args.n_long_short, args.seed)


if __name__ == "__main__":
    main()
