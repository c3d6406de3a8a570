"""Any local dataset in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) as an mteb Retrieval task,
with the instruction given on the command line:

    python -m embed_lm.evaluate run=<run> eval=beir eval.path=/data/scifact eval.instruction="Given a claim, ..."
"""

from __future__ import annotations

from pathlib import Path

from mteb.abstasks.retrieval import AbsTaskRetrieval

from embed_lm.data.beir import BeirSplit
from embed_lm.eval.local_tasks import retrieval_split, task_metadata
from embed_lm.eval.per_query import KeepsPerQueryScores


def beir_task(path: str | Path, split: str, instruction: str, name: str | None = None) -> AbsTaskRetrieval:
    spec = BeirSplit(str(path), split, instruction)
    spec.check()  # names the missing file now, not deep inside mteb
    task_name = name or Path(path).expanduser().resolve().name

    class BeirFolderRetrieval(KeepsPerQueryScores, AbsTaskRetrieval):
        metadata = task_metadata(task_name, "Retrieval", "ndcg_at_10", {"query": instruction},
                                 f"BEIR-layout folder {path} (split {split})", path=f"local:{path}")

        def load_data(self, **kwargs) -> None:
            data = spec.load()
            self.dataset = {"default": {"test": retrieval_split(data.queries, data.corpus, data.qrels)}}
            self.data_loaded = True

    return BeirFolderRetrieval()
