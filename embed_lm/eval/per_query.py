"""Per-query scores of retrieval tasks, kept so that two models can be compared query by query (the Table 4
report's paired bootstrap: embed_lm/table4/stats.py). mteb scores every query with pytrec_eval and averages; the
mixin below keeps each query's score of the task's main metric before it is averaged.

    class MyRetrieval(KeepsPerQueryScores, AbsTaskRetrieval): ...     # after evaluation: task.per_query
    <eval dir>/per_query.json: {task: {query id: main score (0-1)}}   (written by eval/runner.py)
"""

from __future__ import annotations


def pytrec_key(main_score: str) -> str:
    """mteb's main-score name -> pytrec_eval's per-query key: ndcg_at_10 -> ndcg_cut_10, map_at_1000 -> map_cut_1000."""
    return main_score.replace("_at_", "_cut_")


class KeepsPerQueryScores:
    """Mixin for an mteb AbsTaskRetrieval: after evaluate(), `per_query` maps each query id to its main score."""

    per_query: dict[str, float] | None = None

    def task_specific_scores(self, scores: dict[str, dict[str, float]], qrels, results, hf_split: str,
                             hf_subset: str) -> dict[str, float]:
        key = pytrec_key(self.metadata.main_score)
        self.per_query = {qid: float(s[key]) for qid, s in scores.items() if key in s}
        return super().task_specific_scores(scores, qrels, results, hf_split=hf_split, hf_subset=hf_subset)
