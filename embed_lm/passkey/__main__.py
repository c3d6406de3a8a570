"""Personalized passkey retrieval (paper section 5.2, Figure 5): top-1 accuracy per context length (conf/passkey.yaml).

    python -m embed_lm.passkey run=outputs/train/runs/<run>             # a trained run; Mistral's own window/base
    python -m embed_lm.passkey backbone=mistral backbone.model_name_or_path=/models/Mistral-7B-v0.1   # base model
    python -m embed_lm.passkey -m run=<run> \
        passkey_variant=window4k_base1e4,window32k_base1e4,window32k_base1e5,window32k_base1e6   # Figure 5
    python -m embed_lm.passkey backbone=tiny_mistral lengths=[256,512] n_queries=5 n_candidates=10 wandb.enabled=false
    python -m embed_lm.passkey.plot outputs/passkey/<name>              # redraw the combined plot

For each length: the task is loaded from paths.cache_dir or generated and saved there (jsonl); the documents are
encoded as one bucket under a token budget; one row goes to <study_dir>/<variant>/results.csv at once, so a killed
run restarted with the same command resumes at the next unfinished (variant, length). After each length the
combined plot of every variant in the study folder (<study_dir>/passkey.png + passkey.csv) is redrawn; at the end,
the variant's own (<study_dir>/<variant>/passkey.png). W&B (offline unless a key is set): passkey/accuracy against
passkey/length, a results table and the plot.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from embed_lm.config import resolvers as conf_resolvers
from embed_lm.inference.embedder import Embedder
from embed_lm.errors import exit_on_user_error
from embed_lm.passkey.cache import load_or_generate, task_key
from embed_lm.passkey.evaluate import evaluate_task
from embed_lm.passkey.plot import plot_dir
from embed_lm.passkey.results import append_row, is_done, read_csv
from embed_lm.passkey.variants import apply_variant, base_model, variant_of
from embed_lm.inference.runs import load_base, load_run

log = logging.getLogger("embed_lm.passkey")
_LOADED: dict[str, Embedder] = {}  # one model per process: a multirun's jobs re-apply their variant to it


def model_name(run: str | None, backbone: str) -> str:
    """The study's model name: the run folder (plus the checkpoint's name for a .ckpt), or the backbone option."""
    if run in (None, "", "None", "null"):
        return str(backbone)
    path = Path(str(run))
    if path.suffix == ".ckpt":
        return f"{path.parent.parent.name}-{path.stem}"
    return path.name if path.name != "embedder" else path.parent.name


def register_resolvers() -> None:
    conf_resolvers.register()
    if not OmegaConf.has_resolver("passkey_model"):
        OmegaConf.register_new_resolver("passkey_model", model_name)


def load_embedder(cfg: DictConfig, device: str) -> Embedder:
    """The run's (or base model's) embedder, its collator long enough for the longest length; cached per process."""
    max_length = max(cfg.lengths)
    parts = {k: cfg.get(k) for k in ("backbone", "pooling", "instruction_style")} if cfg.run is None else {}
    key = OmegaConf.to_yaml({"run": cfg.run, "device": device, "max_length": max_length, **parts})
    if key not in _LOADED:
        _LOADED.clear()  # free the previous model before loading another
        if cfg.run is not None:
            embedder, _ = load_run(cfg.run, device=device, max_length=max_length)
        else:
            embedder = load_base(OmegaConf.create(parts), device=device, max_length=max_length)
        base_model(embedder.encoder.backbone).config.use_cache = False  # no KV cache: 4 GB per 32k row on 7B
        _LOADED[key] = embedder
    return _LOADED[key]


def _wandb(cfg: DictConfig, out: Path):
    if not cfg.wandb.enabled:
        return None
    import wandb

    run = wandb.init(project=cfg.wandb.project, name=f"passkey/{cfg.name}/{cfg.variant.name}", group=cfg.name,
                     job_type="passkey", dir=str(out), mode="offline" if cfg.wandb.offline else "online",
                     config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")
    run.define_metric("passkey/length")
    run.define_metric("passkey/accuracy", step_metric="passkey/length")
    return run


def run_passkey(cfg: DictConfig) -> list[dict]:
    """Evaluate every unfinished length of cfg's variant; returns the rows evaluated now (finished ones skipped)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    embedder = load_embedder(cfg, device)
    model, variant = embedder.encoder.backbone, cfg.variant
    apply_variant(model, variant.rope_base, variant.sliding_window)
    settings = dict(n_queries=cfg.n_queries, n_candidates=cfg.n_candidates, scheme=cfg.scheme,
                    key_digits=cfg.key_digits, seed=cfg.seed, append_eos=embedder.collator.append_eos,
                    tolerance=cfg.tolerance)
    max_pos = getattr(base_model(model).config, "max_position_embeddings", None)
    results, done_rows, new_rows = out / "results.csv", read_csv(out / "results.csv"), []
    study = Path(cfg.paths.study_dir)
    wandb_run = _wandb(cfg, out)
    try:
        for length in cfg.lengths:
            key = task_key(embedder.tokenizer, length, **settings)
            if is_done(done_rows, variant.name, key, cfg.instruction):
                row = next(r for r in done_rows if r["variant"] == variant.name and r["task"] == key)
                log.info("%s L=%d: done before (accuracy %.3f), skipped", variant.name, length, row["accuracy"])
            else:
                if max_pos and length > max_pos:
                    log.warning("length %d exceeds the model's max_position_embeddings %d", length, max_pos)
                with tqdm(desc=f"generate L={length}", unit="doc", leave=False) as bar:
                    task, key = load_or_generate(cfg.paths.cache_dir, embedder.tokenizer, length,
                                                 progress=bar.update, **settings)
                with tqdm(total=len(task.docs), desc=f"{variant.name} L={length}", unit="doc") as bar:
                    metrics = evaluate_task(embedder, task, cfg.instruction, cfg.max_tokens, progress=bar)
                row = dict(model=cfg.name, variant=variant.name, **variant_of(model), length=length,
                           n_candidates=cfg.n_candidates, scheme=cfg.scheme, key_digits=cfg.key_digits,
                           seed=cfg.seed, instruction=cfg.instruction, task=key, **metrics)
                append_row(results, row)
                new_rows.append(row)
                log.info("%s L=%d: top-1 accuracy %.3f (%d/%d), %.1f docs/s", variant.name, length,
                         row["accuracy"], row["n_correct"], row["n_queries"], row["docs_per_s"])
                plot_dir(study)  # live: every variant so far
            if wandb_run is not None:
                wandb_run.log({"passkey/length": length, "passkey/accuracy": row["accuracy"]})
        png, combined = out / "passkey.png", study / "passkey.png"
        if new_rows or not png.is_file():
            png = plot_dir(out)
        if not combined.is_file():
            combined = plot_dir(study)
        if wandb_run is not None and png is not None:
            import wandb

            rows = read_csv(results)
            table = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
            wandb_run.log({"passkey/plot": wandb.Image(str(png)), "passkey/results": table})
        print(f"\npasskey {cfg.name} {variant.name}: {results}\n  plot {png}\n  all variants {combined}")
    finally:
        if wandb_run is not None:
            wandb_run.finish()
    return new_rows


@hydra.main(version_base="1.3", config_path="../../conf", config_name="passkey")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = exit_on_user_error(run_passkey, cfg)  # a UserError: one line, exit 2
    return sum(r["accuracy"] for r in rows) / len(rows) if rows else None


register_resolvers()

if __name__ == "__main__":
    main()
