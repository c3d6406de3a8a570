"""What runs after training: the `eval` group's suite on the run just written, on every rank of the training's
process group (each rank encodes 1/W of every task's texts on its own device), and the before/after table.

    python -m embed_lm.train ... eval=local          # scores go to <run>/eval/local/ and to the run's loggers
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from embed_lm.eval.runner import evaluate_embedder
from embed_lm.eval.suites import build_tasks
from embed_lm.inference.runs import load_run
from embed_lm.model.distributed import resolve_device


def evaluate_after_training(run_dir: Path, suite_options: dict, evaluation: dict, loggers: list, device: str,
                            rank: int = 0, command: str = "") -> dict | None:
    """Run the suite (`suite_options`: the eval group, e.g. {"suite": "local", "tasks": None, ...}) with the
    `evaluation` settings (device, batch_size, max_tokens, max_length, overwrite, raise_error) on the run in
    run_dir; rank 0 logs the scores to the run's own loggers and returns the report (None on other ranks)."""
    suite = suite_options["suite"]
    tasks = build_tasks(**suite_options)
    device = resolve_device(device if evaluation["device"] == "auto" else evaluation["device"])  # the rank's own
    embedder, _ = load_run(run_dir, device=device, max_length=evaluation["max_length"])
    report = evaluate_embedder(embedder, Path(run_dir).resolve().name, tasks, Path(run_dir) / "eval" / suite, suite,
                               batch_size=evaluation["batch_size"], max_tokens=evaluation["max_tokens"],
                               overwrite=evaluation["overwrite"], raise_error=evaluation["raise_error"],
                               command=command)
    if rank > 0:
        return None
    scores = {f"eval/{suite}/{c}": v for c, v in report["categories"].items() if v is not None}
    scores |= {f"eval/{suite}/avg": report["avg"]} | {f"eval/{suite}/{t['task']}": t["score"] for t in report["tasks"]}
    for lg in loggers:
        lg.log_metrics(scores)
        if isinstance(lg, WandbLogger):
            lg.log_table(f"eval/{suite}/tasks", columns=["task", "category", "main_score", "score"],
                         data=[[t["task"], t["category"], t["main_score"], t["score"]] for t in report["tasks"]])
        lg.save()
    return report


def format_metrics(before: dict[str, float] | None, after: dict[str, float]) -> str:
    """The held-out metrics as a table: one row per metric, a `before` column when the run tested before training."""
    names = sorted(after)
    width = max([16] + [len(n) + 2 for n in names])
    rows = [f"{'metric':<{width}}" + ("" if before is None else f"{'before':>10}") + f"{'after':>10}"]
    for name in names:
        b = "" if before is None else f"{before.get(name, float('nan')):>10.4f}"
        rows.append(f"{name:<{width}}{b}{after[name]:>10.4f}")
    return "\n".join(rows)
