"""Passkey results: one CSV row per (variant, length), appended as soon as the length is done (the resume point).

    append_row(run_dir / "results.csv", row)
    rows = read_rows(study_dir)        # every results.csv under study_dir, latest row per (variant, length)

A run that is restarted skips each (variant, length) whose row, with the same task key and instruction, is already
in its results.csv, and goes on at the next unfinished one.
"""

from __future__ import annotations

import csv
from pathlib import Path

FIELDS = ["model", "variant", "rope_base", "sliding_window", "length", "accuracy", "n_correct", "n_queries",
          "n_candidates", "scheme", "key_digits", "seed", "mean_tokens", "docs_per_s", "seconds", "instruction",
          "task"]
NUMERIC = {"rope_base": float, "sliding_window": int, "length": int, "accuracy": float, "n_correct": int,
           "n_queries": int, "n_candidates": int, "key_digits": int, "seed": int, "mean_tokens": float,
           "docs_per_s": float, "seconds": float}


def append_row(path: Path, row: dict) -> None:
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise KeyError(f"passkey result row lacks {missing}")
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: "" if row[k] is None else row[k] for k in FIELDS})


def _parse(row: dict) -> dict:
    return {k: (NUMERIC[k](v) if v not in ("", None) else None) if k in NUMERIC else v for k, v in row.items()}


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [_parse(r) for r in csv.DictReader(f)]


def read_rows(root: Path) -> list[dict]:
    """Rows of every results.csv under root (or of root itself, a CSV); the latest per (variant, length), sorted."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("results.csv"))
    latest: dict[tuple, dict] = {}
    for path in files:
        for row in read_csv(path):
            latest[(row["variant"], row["length"])] = row
    return sorted(latest.values(), key=lambda r: (r["variant"], r["length"]))


def is_done(rows: list[dict], variant: str, task: str, instruction: str) -> bool:
    return any(r["variant"] == variant and r["task"] == task and r["instruction"] == instruction for r in rows)
