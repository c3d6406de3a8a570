"""An offline evaluation suite of real text, as mteb custom tasks (own `load_data`), so mteb's code scores them.

Source: the bundled sample (data/sample/, Debian package descriptions; see its README). Every task uses only the
held-out test split, plus the dev split's documents as the classifier's training set:

    DebianSummaryRetrieval          Retrieval           500 summaries -> 2,500 descriptions        nDCG@10
    DebianSummaryReranking          Reranking           each summary's description among 19 others
                                                        from the same archive section               MAP@1000
    DebianSectionClassification     Classification      description -> archive section (8 largest)  accuracy
    DebianSectionClustering         Clustering          descriptions clustered by section           V-measure
    DebianSummaryPairClassification PairClassification  (summary, description) match vs. same-section
                                                        mismatch                                     max AP

STS and Summarization have no honest local source (no human similarity scores here), so the local suite reports
them as not available rather than inventing scores.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata

from embed_lm.data.records import SkipCounter, read_jsonl
from embed_lm.eval.per_query import KeepsPerQueryScores

SUMMARY_TASK = "Given a one-line summary of a Debian software package, retrieve the package's full description"
N_SECTIONS = 8
N_RERANK_CANDIDATES = 20


def task_metadata(name: str, task_type: str, main_score: str, prompt: str | dict, description: str,
                  path: str = "embed_lm/local") -> TaskMetadata:
    return TaskMetadata(name=name, description=description, reference=None,
                        dataset={"path": path, "revision": "local"}, type=task_type, category="t2t",
                        modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"], main_score=main_score,
                        date=None, domains=None, task_subtypes=None, license=None, annotations_creators=None,
                        dialect=None, sample_creation="found", bibtex_citation=None, prompt=prompt)


def retrieval_split(queries: dict[str, str], corpus: dict[str, str], qrels: dict[str, dict[str, int]],
                    top_ranked: dict[str, list[str]] | None = None) -> dict:
    """One split in mteb's retrieval format, from id -> text maps (the BEIR-folder task uses it too)."""
    return {"queries": Dataset.from_list([{"id": k, "text": v} for k, v in queries.items()]),
            "corpus": Dataset.from_list([{"id": k, "text": v} for k, v in corpus.items()]),
            "relevant_docs": qrels, "top_ranked": top_ranked}


def read_rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path, SkipCounter(skip_invalid=False))]


class SampleData:
    """The sample's test split (+ dev documents), with each document's package and archive section."""

    def __init__(self, sample_dir: str | Path) -> None:
        root = Path(sample_dir)
        self.corpus = read_rows(root / "test" / "corpus.jsonl")
        self.queries = read_rows(root / "test" / "queries.jsonl")
        self.dev_corpus = read_rows(root / "dev" / "corpus.jsonl")
        self.doc_of_package = {d["package"]: d for d in self.corpus}
        counts = Counter(d["section"] for d in self.corpus)
        self.sections = sorted(s for s, _ in counts.most_common(N_SECTIONS))

    def query_texts(self) -> dict[str, str]:
        return {q["_id"]: q["text"] for q in self.queries}

    def qrels(self) -> dict[str, dict[str, int]]:
        """Each summary's one relevant document: its own package's description."""
        return {q["_id"]: {self.doc_of_package[q["package"]]["_id"]: 1} for q in self.queries}

    def same_section_others(self, doc: dict, n: int, rng: random.Random) -> list[dict]:
        pool = [d for d in self.corpus if d["section"] == doc["section"] and d["_id"] != doc["_id"]]
        if len(pool) < n:
            pool += rng.sample([d for d in self.corpus if d["section"] != doc["section"]], n - len(pool))
        return rng.sample(pool, n)


class _LocalTask:
    """Mixin: the sample folder is given at construction; data loads once."""

    def __init__(self, sample_dir: str | Path, seed: int = 42) -> None:
        super().__init__(seed=seed)
        self.sample_dir = Path(sample_dir)

    def sample(self) -> SampleData:
        return SampleData(self.sample_dir)


class DebianSummaryRetrieval(_LocalTask, KeepsPerQueryScores, AbsTaskRetrieval):
    metadata = task_metadata("DebianSummaryRetrieval", "Retrieval", "ndcg_at_10", {"query": SUMMARY_TASK},
                             "Retrieve a Debian package's long description from its one-line summary.")

    def load_data(self, **kwargs) -> None:
        s = self.sample()
        self.dataset = {"default": {"test": retrieval_split(s.query_texts(), {d["_id"]: d["text"] for d in s.corpus},
                                                            s.qrels())}}
        self.data_loaded = True


class DebianSummaryReranking(_LocalTask, KeepsPerQueryScores, AbsTaskRetrieval):
    metadata = task_metadata("DebianSummaryReranking", "Reranking", "map_at_1000", {"query": SUMMARY_TASK},
                             "Rerank a summary's description among descriptions from the same archive section.")

    def load_data(self, **kwargs) -> None:
        s, rng = self.sample(), random.Random(self.seed)
        top_ranked, used = {}, {}
        for q in s.queries:
            positive = s.doc_of_package[q["package"]]
            candidates = [positive] + s.same_section_others(positive, N_RERANK_CANDIDATES - 1, rng)
            rng.shuffle(candidates)
            top_ranked[q["_id"]] = [d["_id"] for d in candidates]
            used.update({d["_id"]: d["text"] for d in candidates})
        self.dataset = {"default": {"test": retrieval_split(s.query_texts(), dict(sorted(used.items())), s.qrels(),
                                                            top_ranked)}}
        self.data_loaded = True


class DebianSectionClassification(_LocalTask, AbsTaskClassification):
    metadata = task_metadata("DebianSectionClassification", "Classification", "accuracy",
                             "Classify the given Debian package description into its archive section",
                             "Predict a package's Debian archive section from its description (8 sections).")

    def load_data(self, **kwargs) -> None:
        s = self.sample()
        label = {name: i for i, name in enumerate(s.sections)}

        def split(rows: list[dict]) -> Dataset:
            rows = [r for r in rows if r["section"] in label]
            return Dataset.from_dict({"text": [r["text"] for r in rows], "label": [label[r["section"]] for r in rows]})

        self.dataset = DatasetDict({"train": split(s.dev_corpus), "test": split(s.corpus)})
        self.data_loaded = True


class DebianSectionClustering(_LocalTask, AbsTaskClustering):
    metadata = task_metadata("DebianSectionClustering", "Clustering", "v_measure",
                             "Identify the Debian archive section of packages based on their descriptions",
                             "Cluster package descriptions; the gold clusters are the 8 largest archive sections.")

    def load_data(self, **kwargs) -> None:
        s = self.sample()
        rows = [d for d in s.corpus if d["section"] in s.sections]
        self.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentences": [d["text"] for d in rows], "labels": [s.sections.index(d["section"]) for d in rows]})})
        self.data_loaded = True


class DebianSummaryPairClassification(_LocalTask, AbsTaskPairClassification):
    metadata = task_metadata("DebianSummaryPairClassification", "PairClassification", "max_ap",
                             "Retrieve the Debian package description that matches the given summary",
                             "Does this description belong to this summary? Negatives share the archive section.")

    def load_data(self, **kwargs) -> None:
        s, rng = self.sample(), random.Random(self.seed)
        s1, s2, labels = [], [], []
        for q in s.queries:
            positive = s.doc_of_package[q["package"]]
            (negative,) = s.same_section_others(positive, 1, rng)
            s1 += [q["text"], q["text"]]
            s2 += [positive["text"], negative["text"]]
            labels += [1, 0]
        self.dataset = DatasetDict({"test": Dataset.from_dict({"sentence1": s1, "sentence2": s2, "labels": labels})})
        self.data_loaded = True


LOCAL_TASKS = [DebianSummaryRetrieval, DebianSummaryReranking, DebianSectionClassification, DebianSectionClustering,
               DebianSummaryPairClassification]
