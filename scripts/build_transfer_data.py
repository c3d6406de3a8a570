"""Build the demo's transfer split (data/transfer/pydoc/): a real text domain that training never sees.

Python standard-library docstrings, written by the CPython developers and shipped with every Python install:
each documented module, class or function gives one retrieval pair, its docstring's first line (the summary) is the
**query** and the rest of the docstring (the body) is the **document**. Read from source with `ast` (nothing is
imported or executed), so the result depends only on the interpreter's version.

    python scripts/build_transfer_data.py --out data/transfer/pydoc          # BEIR layout, test split

Deterministic for a given Python version and --seed. Layout (see data/transfer/pydoc/README.md): corpus.jsonl,
queries.jsonl, qrels/test.tsv; corpus and query lines carry `module` and `qualname`.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__pycache__",
             "ensurepip", "venv", "tkinter", "config-3.11-x86_64-linux-gnu"}


def docstrings(path: Path, module: str) -> list[dict[str, str]]:
    """(module, qualname, summary, body) for every docstring in one source file whose first line is a summary."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []

    def visit(node: ast.AST, qual: str) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            first, _, rest = inspect.cleandoc(doc).partition("\n")
            out.append({"module": module, "qualname": qual, "summary": first.strip(), "body": rest.strip()})
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{qual}.{child.name}" if qual else child.name)

    visit(tree, "")
    return out


def usable(d: dict[str, str]) -> bool:
    words = len(d["summary"].split())
    return (4 <= words <= 20 and d["summary"].endswith(".") and 120 <= len(d["body"]) <= 900
            and not re.search(r"deprecated|^(see|same as)\b", d["summary"] + " " + d["body"][:80], re.I))


def pid(d: dict[str, str]) -> str:
    return "d" + hashlib.sha1(f"{d['module']}:{d['qualname']}".encode()).hexdigest()[:10]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/transfer/pydoc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, nargs=2, default=(300, 1200), metavar=("QUERIES", "DOCS"))
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found, seen_summary, seen_body = [], set(), set()
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIP_DIRS & set(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for d in docstrings(path, module):
            key_s, key_b = d["summary"].lower(), d["body"][:200].lower()
            if usable(d) and key_s not in seen_summary and key_b not in seen_body:  # no shared query or document
                seen_summary.add(key_s)
                seen_body.add(key_b)
                found.append(d)
    random.Random(args.seed).shuffle(found)
    n_q, n_docs = args.n
    queries, corpus = found[:n_q], found[:n_docs]
    out = Path(args.out)
    write_jsonl(out / "corpus.jsonl", [{"_id": pid(d), "title": "", "text": d["body"], "module": d["module"],
                                        "qualname": d["qualname"]} for d in sorted(corpus, key=pid)])
    write_jsonl(out / "queries.jsonl", [{"_id": "q" + pid(d)[1:], "text": d["summary"], "module": d["module"],
                                         "qualname": d["qualname"]} for d in queries])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                            + "".join(f"q{pid(d)[1:]}\t{pid(d)}\t1\n" for d in queries))
    print(f"Python {sys.version.split()[0]} stdlib at {stdlib}: {len(found)} usable docstrings; wrote "
          f"{len(queries)} queries, {len(corpus)} documents to {out}")


if __name__ == "__main__":
    main()
