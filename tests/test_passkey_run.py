"""The passkey study end to end (embed_lm/passkey/__main__.py): accuracy on hand-made cases, the real config
composed in-process, CSV + PNG + W&B outputs, resuming, the combined plot of several variants, run= a trained run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from embed_lm.model.backbone import TinyBackbone, add_lora
from embed_lm.passkey import __main__ as passkey
from embed_lm.passkey.evaluate import evaluate_task, top1_hits
from embed_lm.passkey.generate import Document, Query, Task
from embed_lm.passkey.results import read_csv, read_rows

CONF = Path(__file__).resolve().parents[1] / "conf"
PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["backbone=tiny_mistral", "lengths=[64,128]", "n_queries=3", "n_candidates=4", "wandb.enabled=false"]


def compose_passkey(overrides: list[str], log_dir: Path, output_dir: Path | None = None):
    """conf/passkey.yaml as `python -m embed_lm.passkey <overrides>` composes it, runtime output dir included."""
    passkey.register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="passkey", overrides=[*overrides, f"paths.log_dir={log_dir}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or Path(cfg.hydra.run.dir))
        del cfg["hydra"]
    return cfg


def test_top1_hits_on_a_hand_made_case():
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])  # (N=4, D=2)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # (Q=3, D)
    candidates = torch.tensor([[0, 1, 2], [0, 3, 2], [3, 1, 0]])  # (Q, C=3)
    positive = torch.tensor([0, 3, 1])
    # q0 ranks doc 0 first (hit); q1 ranks doc 2 (0.8) over doc 3 (0.6) (miss); q2 ranks doc 1 first (hit)
    assert top1_hits(queries, docs, candidates, positive).tolist() == [True, False, True]
    tied = top1_hits(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[1, 0]]),
                     torch.tensor([1]))
    assert tied.tolist() == [True]  # a tie goes to the first candidate listed


class NameEmbedder:
    """A stub that embeds a text as the one-hot of the first known name in it (a perfect passkey retriever)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.collator = type("C", (), {"max_length": 10_000})()

    def _emb(self, texts) -> torch.Tensor:
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(next(i for i, n in enumerate(self.names)
                                                                          if n in t)), len(self.names)).float()
                            for t in texts])  # (N, len(names))

    def encode_documents(self, texts, max_tokens=None, progress=None):
        return self._emb([texts[i] for i in range(len(texts))])

    def encode_queries(self, texts, task):
        return self._emb(texts)


def test_evaluate_task_scores_a_perfect_retriever_1_and_counts_misses():
    names = ["Ann Lee", "Bo Diaz", "Cy Park", "Di Wolfe"]
    docs = [Document(n, "12345", 0, 100, 40, 1) for n in names]
    queries = [Query("Ann Lee", "12345", 0, (0, 1)), Query("Di Wolfe", "12345", 3, (2, 3)),
               Query("Cy Park", "12345", 3, (2, 3))]  # the third query's positive is wrong on purpose
    metrics = evaluate_task(NameEmbedder(names), Task(40, "per_query", 0, 5, docs, queries), "task", 1024)
    assert (metrics["n_correct"], metrics["n_queries"]) == (2, 3) and metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["mean_tokens"] == 40


def test_variant_groups_compose_into_the_applied_settings(tmp_path):
    cfg = compose_passkey([*SMALL, "passkey_variant=window32k_base1e5"], tmp_path)
    assert (cfg.variant.name, cfg.variant.rope_base, cfg.variant.sliding_window) == ("window32k_base1e5", 1e5, 32768)
    cfg = compose_passkey([*SMALL, "passkey_sliding_window=none", "passkey_rope_base=base1e6"], tmp_path)
    assert (cfg.variant.name, cfg.variant.rope_base, cfg.variant.sliding_window) == ("none_base1e6", 1e6, None)
    assert cfg.paths.output_dir == str(tmp_path / "passkey" / "tiny_mistral-per_query" / "none_base1e6")


def test_tiny_end_to_end_run_writes_csv_png_and_wandb_then_resumes(tmp_path):
    cfg = compose_passkey([*SMALL, "wandb.enabled=true"], tmp_path)
    out = Path(cfg.paths.output_dir)
    rows = passkey.run_passkey(cfg)
    assert [r["length"] for r in rows] == [64, 128]
    written = read_csv(out / "results.csv")
    assert [(r["variant"], r["length"], r["n_queries"], r["mean_tokens"]) for r in written] == [
        ("window4k_base1e4", 64, 3, 64.0), ("window4k_base1e4", 128, 3, 128.0)]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["rope_base"] == 1e4 and r["sliding_window"] == 4096
               for r in written)
    assert (out / "passkey.png").read_bytes()[:8] == PNG
    assert (out.parent / "passkey.png").read_bytes()[:8] == PNG  # the study's combined plot
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(list((tmp_path / "passkey" / "tasks").glob("*.jsonl"))) == 2

    # restarted: both lengths are done; with one more length, only that one runs
    assert passkey.run_passkey(compose_passkey(SMALL, tmp_path)) == []
    more = passkey.run_passkey(compose_passkey([*SMALL, "lengths=[64,128,256]"], tmp_path))
    assert [r["length"] for r in more] == [256]
    assert [r["length"] for r in read_csv(out / "results.csv")] == [64, 128, 256]


def test_variants_share_tasks_and_one_combined_plot(tmp_path):
    for variant in ("window4k_base1e4", "window32k_base1e5"):
        passkey.run_passkey(compose_passkey([*SMALL, "lengths=[64]", f"passkey_variant={variant}"], tmp_path))
    study = tmp_path / "passkey" / "tiny_mistral-per_query"
    rows = read_rows(study)
    assert [(r["variant"], r["rope_base"]) for r in rows] == [("window32k_base1e5", 1e5), ("window4k_base1e4", 1e4)]
    assert len({r["task"] for r in rows}) == 1  # the same documents for both variants
    assert (study / "passkey.png").read_bytes()[:8] == PNG and len(read_csv(study / "passkey.csv")) == 2


def test_run_accepts_a_training_run_folder(tmp_path, compose_cfg):
    """run=<folder written by embed_lm.train>: load_run rebuilds backbone + adapter; the study is named after it."""
    train_cfg = compose_cfg(["backbone=tiny_mistral", "data=sample"], tmp_path / "train")
    backbone = TinyBackbone("tiny_mistral", "mistral").load()
    model = add_lora(backbone.model, 4, 8, 0.0, backbone.lora_target_modules)
    run = tmp_path / "runs" / "my_run"
    model.save_pretrained(run / "embedder" / "adapter")
    backbone.tokenizer.save_pretrained(run / "embedder" / "tokenizer")
    (run / "embedder" / "config.yaml").write_text(OmegaConf.to_yaml(train_cfg, resolve=True))
    cfg = compose_passkey([*SMALL, "lengths=[64]", f"run={run}"], tmp_path)
    assert cfg.name == "my_run-per_query"
    rows = passkey.run_passkey(cfg)
    assert [r["model"] for r in rows] == ["my_run-per_query"]


def test_shared_scheme_at_2k_tokens_on_cpu(tmp_path):
    """The later work's scheme (one candidate set per length), at the longest length the suite runs on CPU."""
    cfg = compose_passkey([*SMALL, "lengths=[2048]", "scheme=shared", "n_queries=3", "max_tokens=4096"], tmp_path)
    assert cfg.name == "tiny_mistral-shared"
    (row,) = passkey.run_passkey(cfg)
    assert (row["scheme"], row["length"], row["mean_tokens"], row["n_queries"]) == ("shared", 2048, 2048.0, 3)
