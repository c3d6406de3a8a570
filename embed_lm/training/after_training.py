"""What runs after training: the `eval` group's suite on the run just written, on every rank of the training's
process group (each rank encodes 1/W of every task's texts on its own device), and the before/after table, whose
`base` column is the untouched base model as its authors use it (backbone.authors_usage: all-MiniLM-L6-v2 with
mean pooling and no instruction; a decoder in the recipe's own format), the reference every gain is stated against.

    python -m embed_lm.train ... eval=local          # scores go to <run>/eval/local/ and to the run's loggers
    python -m embed_lm.train experiment=demo         # test_before_training: base / before / after / gain vs base
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf

from embed_lm.errors import ConfigError

from embed_lm.eval.runner import evaluate_embedder
from embed_lm.eval.suites import build_tasks
from embed_lm.inference.runs import load_run
from embed_lm.model.distributed import resolve_device
from embed_lm.model.registry import build_part

USAGE_GROUPS = ("pooling", "instruction_style")


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


def authors_usage_specs(usage: dict[str, str], conf_dir: Path, where: str = "backbone.authors_usage") -> dict:
    """{group: the option's config (plain data)} for the authors' usage, e.g. {pooling: mean, instruction_style:
    none} -> the contents of conf/pooling/mean.yaml and conf/instruction_style/none.yaml."""
    specs = {}
    for group in USAGE_GROUPS:
        option = (usage or {}).get(group)
        path = conf_dir / group / f"{option}.yaml"
        if option is None or not path.is_file():
            known = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
            raise ConfigError(f"{where}.{group}={option!r}: no {path}; use one of {', '.join(known)}")
        specs[group] = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return specs


def test_as_authors_use_it(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
                           specs: dict) -> dict[str, float]:
    """The test splits scored with the authors' pooling and instruction style (`specs` from authors_usage_specs),
    before training: LoRA's B matrices start at zero, so the model still computes the untouched base model."""
    pooling = build_part("pooling", specs["pooling"], "backbone.authors_usage.pooling")
    style = build_part("instruction_style", specs["instruction_style"], "backbone.authors_usage.instruction_style")
    kept = module.encoder.pooling, datamodule.style
    module.encoder.pooling, datamodule.style = pooling, style
    try:
        return trainer.test(module, datamodule=datamodule, verbose=False)[0]
    finally:
        module.encoder.pooling, datamodule.style = kept


def format_metrics(before: dict[str, float] | None, after: dict[str, float],
                   base: dict[str, float] | None = None) -> str:
    """The held-out metrics as a table, one row per metric: `base` (the base model as its authors use it) and
    `before` (the base model in this run's format) when the run tested before training, `after`, and the gain of
    `after` over `base`, the figure a claimed improvement means."""
    names = sorted(after)
    width = max([16] + [len(n) + 2 for n in names])
    cols = [("base", base), ("before", before), ("after", after)]
    cols = [(label, values) for label, values in cols if values is not None]
    head = f"{'metric':<{width}}" + "".join(f"{label:>10}" for label, _ in cols)
    rows = [head + ("" if base is None else f"{'vs base':>10}")]
    for name in names:
        cells = "".join(f"{values.get(name, float('nan')):>10.4f}" for _, values in cols)
        gain = "" if base is None else f"{after[name] - base.get(name, float('nan')):>+10.4f}"
        rows.append(f"{name:<{width}}{cells}{gain}")
    if base is not None:
        rows.append("base: the untouched base model as its authors use it (backbone.authors_usage); before: the same "
                    "model in this run's format")
    return "\n".join(rows)
