"""MTEB-style score tables: per-task main scores, category means and the overall mean, written as JSON + CSV.

Conventions (MTEB, and the paper's Table 4): a task's score is its main score x 100 (nDCG@10 for retrieval,
MAP for reranking, accuracy, V-measure, AP, Spearman); a category's score is the mean over its tasks; "Avg" is the
mean over all tasks (datasets), not over categories. A category with no task is reported as not available (None).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

CATEGORIES = {  # mteb task type -> the paper's column
    "Classification": "Class.", "Clustering": "Clust.", "PairClassification": "PairClass.", "Reranking": "Rerank",
    "Retrieval": "Retr.", "STS": "STS", "Summarization": "Summ.",
}
COLUMNS = list(CATEGORIES.values())


@dataclass
class TaskScore:
    task: str
    task_type: str
    main_score: str
    score: float  # x 100

    @property
    def category(self) -> str:
        return CATEGORIES.get(self.task_type, self.task_type)


def summarize(tasks: list[TaskScore]) -> dict:
    by_category: dict[str, list[float]] = {c: [] for c in COLUMNS}
    for t in tasks:
        by_category.setdefault(t.category, []).append(t.score)
    categories = {c: (sum(v) / len(v) if v else None) for c, v in by_category.items()}
    counts = {c: len(v) for c, v in by_category.items()}
    avg = sum(t.score for t in tasks) / len(tasks) if tasks else None
    return {"categories": categories, "counts": counts, "avg": avg, "n_tasks": len(tasks)}


def write_scores(out_dir: Path, tasks: list[TaskScore], meta: dict) -> dict:
    """Write scores.json and scores.csv (one row per task, then one per category, then Avg)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(tasks)
    report = {**meta, **summary, "tasks": [asdict(t) | {"category": t.category} for t in tasks]}
    (out_dir / "scores.json").write_text(json.dumps(report, indent=2))
    with (out_dir / "scores.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "category", "main_score", "score", "n_tasks"])
        for t in tasks:
            w.writerow([t.task, t.category, t.main_score, f"{t.score:.2f}", 1])
        for c in summary["categories"]:
            value = summary["categories"][c]
            w.writerow([f"[{c}]", c, "mean", "n/a" if value is None else f"{value:.2f}", summary["counts"][c]])
        w.writerow(["[Avg]", "all", "mean over tasks", "n/a" if summary["avg"] is None else f"{summary['avg']:.2f}",
                    summary["n_tasks"]])
    return report


def format_table(report: dict) -> str:
    head = " | ".join(f"{c} ({report['counts'].get(c, 0)})" for c in COLUMNS) + f" | Avg ({report['n_tasks']})"
    cells = ["n/a" if report["categories"].get(c) is None else f"{report['categories'][c]:.1f}" for c in COLUMNS]
    avg = "n/a" if report["avg"] is None else f"{report['avg']:.1f}"
    return f"| {head} |\n|{'---|' * (len(COLUMNS) + 1)}\n| {' | '.join(cells)} | {avg} |"
