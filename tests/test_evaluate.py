"""Evaluation through mteb: the offline local suite, BEIR folders, resume, errors, and metric parity."""

import csv
import json

import mteb
import pytest
import torch
import torch.nn.functional as F

from conftest import SAMPLE, compose_config
from embed_lm.eval.instructions import task_instruction
from embed_lm.eval.mteb_encoder import MtebEncoder
from embed_lm.eval.scores import COLUMNS
from embed_lm.eval.suites import DatasetUnavailableError, UnknownTaskError
from embed_lm.evaluate import evaluate
from embed_lm.eval.retrieval_metrics import retrieval_metrics
from embed_lm.inference.runs import RunNotFoundError

FAST = ["max_length=48", "batch_size=128", "wandb.enabled=false"]


def run_eval(run, tmp_path, *overrides):
    return evaluate(compose_config("evaluate", [f"run={run}", f"output_dir={tmp_path / 'eval'}", *FAST,
                                                *overrides]))


def test_local_suite_covers_five_categories_and_writes_json_csv(tiny_run, tmp_path):
    report = run_eval(tiny_run, tmp_path, "eval=local")
    assert report["n_tasks"] == 5 and not report["missing_tasks"]
    cats = report["categories"]
    assert all(cats[c] is not None for c in ("Class.", "Clust.", "PairClass.", "Rerank", "Retr."))
    assert cats["STS"] is None and cats["Summ."] is None  # no honest local source: not invented
    assert report["avg"] == pytest.approx(sum(t["score"] for t in report["tasks"]) / 5)
    saved = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert saved["tasks"] == report["tasks"] and "python -m embed_lm.evaluate" in saved["command"]
    rows = list(csv.DictReader((tmp_path / "eval" / "scores.csv").open()))
    assert [r["row"] for r in rows][-8:] == [f"[{c}]" for c in COLUMNS] + ["[Avg]"]
    # the run's instruction style: queries instructed, documents not; symmetric tasks instruct every input
    instr = saved["instructions"]
    assert instr["DebianSummaryRetrieval/query"].startswith("Instruct: Given a one-line summary")
    assert instr["DebianSummaryRetrieval/document"] == ""
    assert instr["DebianSectionClassification/None"].startswith("Instruct: Classify")


def test_resume_reads_finished_tasks_back_without_encoding(tiny_run, tmp_path, monkeypatch):
    first = run_eval(tiny_run, tmp_path, "eval=local", "eval.tasks=[DebianSummaryPairClassification]")

    def boom(*args, **kwargs):
        raise AssertionError("a finished task was encoded again")

    monkeypatch.setattr(MtebEncoder, "encode", boom)
    again = run_eval(tiny_run, tmp_path, "eval=local", "eval.tasks=[DebianSummaryPairClassification]")
    assert again["tasks"][0]["score"] == pytest.approx(first["tasks"][0]["score"], abs=1e-4)  # cache rounds


def test_beir_folder_is_a_retrieval_task(tiny_run, tmp_path):
    report = run_eval(tiny_run, tmp_path, "eval=beir", f"eval.path={SAMPLE / 'dev'}", "eval.split=dev",
                      "eval.instruction='Given a summary, retrieve the description'", "eval.name=DebianDev")
    (task,) = report["tasks"]
    assert (task["task"], task["category"]) == ("DebianDev", "Retr.") and 0 <= task["score"] <= 100


def test_unknown_task_lists_close_matches(tiny_run, tmp_path):
    with pytest.raises(UnknownTaskError, match="did you mean.*DebianSummaryRetrieval"):
        run_eval(tiny_run, tmp_path, "eval=local", "eval.tasks=[DebianSummaryRetreival]")


def test_mteb_en_offline_fails_fast_naming_the_dataset(tiny_run, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(DatasetUnavailableError, match="mteb/scifact.*SciFact"):
        run_eval(tiny_run, tmp_path, "eval=mteb_en", "eval.tasks=[SciFact]")


def test_a_folder_that_is_not_a_run_says_what_was_expected(tmp_path):
    with pytest.raises(RunNotFoundError, match="embedder/config.yaml"):
        run_eval(tmp_path, tmp_path, "eval=local")


def test_every_paper_task_has_an_instruction():
    tasks = mteb.get_benchmark("MTEB(eng, v1)").tasks
    assert len(tasks) == 56
    for t in tasks:
        assert task_instruction(t.metadata.name, t.metadata.type, t.metadata.prompt).strip()
    assert task_instruction("STS12", "STS", None) == "Retrieve semantically similar text."


def test_our_retrieval_metrics_match_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    g = torch.Generator().manual_seed(3)
    q, c = F.normalize(torch.randn(40, 12, generator=g), dim=-1), F.normalize(torch.randn(500, 12, generator=g), dim=-1)
    relevant = [{int(d): 1 for d in torch.randint(0, 500, (1 + i % 4,), generator=g)} for i in range(40)]
    ours = retrieval_metrics(q, c, relevant, recall_k=100)
    scores = q @ c.T
    run = {f"q{i}": {f"d{j}": float(scores[i, j]) for j in range(500)} for i in range(40)}
    qrels = {f"q{i}": {f"d{d}": r for d, r in rel.items()} for i, rel in enumerate(relevant)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank", "recall.100"}).evaluate(run)
    mean = lambda key: sum(v[key] for v in per_query.values()) / len(per_query)  # noqa: E731
    assert ours["ndcg@10"] == pytest.approx(mean("ndcg_cut_10"), abs=1e-6)
    assert ours["recall@100"] == pytest.approx(mean("recall_100"), abs=1e-6)
    # MRR@10 is recip_rank cut at 10
    trec_mrr10 = sum(v["recip_rank"] if v["recip_rank"] >= 0.1 else 0.0 for v in per_query.values()) / 40
    assert ours["mrr@10"] == pytest.approx(trec_mrr10, abs=1e-6)
