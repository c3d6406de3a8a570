"""Run an mteb suite on an Embedder and write its scores: the evaluation that `python -m embed_lm.evaluate` and
the evaluation after training (`python -m embed_lm.train ... eval=local`) share.

    report = evaluate_embedder(embedder, "embed_lm/<run>", build_tasks("local"), Path("<run>/eval/local"), "local")

Every rank of a process group calls it: each encodes 1/W of every task's texts (embed_lm/eval/mteb_encoder.py) and
rank 0 alone writes the mteb cache, scores.{json,csv} and per_query.json
(each retrieval query's main score, for paired comparisons: embed_lm/eval/per_query.py). An interrupted evaluation resumes: finished tasks are
read back from <out>/mteb_cache (overwrite=True recomputes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import mteb

from embed_lm.eval.mteb_encoder import MtebEncoder
from embed_lm.eval.scores import TaskScore, format_table, summarize, write_scores
from embed_lm.inference.embedder import Embedder
from embed_lm.model.distributed import world

log = logging.getLogger(__name__)


class ReadOnlyResultCache(mteb.ResultCache):
    """Ranks > 0: see the tasks rank 0 finished (so every rank skips the same ones), write nothing."""

    def save_to_cache(self, *args, **kwargs) -> None:
        return None


def evaluate_embedder(embedder: Embedder, name: str, tasks: list, out: Path, suite: str, batch_size: int = 32,
                      max_tokens: int | None = None, overwrite: bool = False, raise_error: bool = True,
                      command: str = "") -> dict:
    """Scores of `tasks` (x100), their category means and Avg (mean over tasks); rank 0 writes them to `out`
    (scores.json, scores.csv, with the command and the exact instruction used per task) and prints the table."""
    model = MtebEncoder(embedder, name=f"embed_lm/{name}", batch_size=batch_size, max_tokens=max_tokens)
    rank, size = world()
    cache = (mteb.ResultCache if rank == 0 else ReadOnlyResultCache)(cache_path=str(out / "mteb_cache"))
    log.info("evaluating %s on %d %s task(s); results in %s", name, len(tasks), suite, out)
    results = mteb.evaluate(model, tasks, cache=cache, overwrite_strategy="always" if overwrite else "only-missing",
                            raise_error=raise_error, show_progress_bar=rank == 0)
    log.info("rank %d of %d encoded %d texts itself", rank, size, model.encoded)
    by_name = {tr.task_name: tr for tr in results.task_results}
    scores = [TaskScore(t.metadata.name, t.metadata.type, t.metadata.main_score,
                        100 * float(by_name[t.metadata.name].get_score())) for t in tasks if t.metadata.name in by_name]
    missing = [t.metadata.name for t in tasks if t.metadata.name not in by_name]
    if rank > 0:
        return summarize(scores) | {"suite": suite, "missing_tasks": missing,
                                    "tasks": [asdict(t) | {"category": t.category} for t in scores]}
    per_query = {t.metadata.name: t.per_query for t in tasks if getattr(t, "per_query", None)}
    if per_query:  # retrieval tasks evaluated now (those read back from the cache keep their earlier entry)
        path = out / "per_query.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps((json.loads(path.read_text()) if path.is_file() else {}) | per_query))
    report = write_scores(out, scores, {"suite": suite, "model": name, "command": command, "missing_tasks": missing,
                                        "instructions": {f"{k[0]}/{k[1]}": v for k, v in model.prefixes_used.items()}})
    if missing:
        log.warning("%d task(s) failed and are missing from the means: %s", len(missing), ", ".join(missing))
    print(f"\n{suite} scores for {name} (x100; Avg = mean over tasks), written to {out}/scores.csv:\n"
          f"{format_table(report)}\n")
    return report
