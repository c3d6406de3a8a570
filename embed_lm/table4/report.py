"""Table 4 (the paper's hyperparameter study) from a sweep folder; `python -m embed_lm.report table4 <sweep>` runs it.

Reads every row folder's .hydra/hydra.yaml (which ablation row it is), done.json (finished?) and
eval/<suite>/scores.json, and writes next to them: table4.md and table4.csv (the paper's row order and columns,
our numbers, each row's model, delta vs the default row (a random-init llama2 row: vs tiny_default), the
paper's numbers labelled as the paper's, whether each delta has the paper's sign), table4_deltas.png, and a W&B
run (group table4) whose table links every row's W&B run. Rows whose run failed or is missing are listed as such.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from embed_lm.errors import MissingFileError
from embed_lm.eval.scores import COLUMNS

ROWS = [  # (ablation row, the paper's label, the paper's Table 4 numbers: 7 categories + Avg)
    ("default", "E5-mistral-7b (default)", [78.3, 49.9, 87.1, 59.5, 52.2, 81.2, 32.7, 64.5]),
    ("llama2", "w/ LLaMA-2 7b init.", [76.2, 48.1, 85.1, 58.9, 49.6, 81.2, 30.8, 62.9]),
    ("msmarco_only", "w/ msmarco data only", [71.6, 47.1, 86.1, 58.8, 54.4, 79.5, 31.7, 62.7]),
    ("mean_pool", "pooling: w/ mean pool", [77.0, 48.9, 86.1, 59.2, 52.4, 81.4, 30.8, 64.1]),
    ("weighted_mean_pool", "pooling: w/ weighted mean", [77.0, 49.0, 86.1, 59.2, 52.0, 81.4, 30.2, 64.0]),
    ("lora_r8", "LoRA rank: w/ r=8", [78.4, 50.3, 87.1, 59.3, 53.0, 81.0, 31.7, 64.8]),
    ("lora_r32", "LoRA rank: w/ r=32", [78.4, 50.3, 87.4, 59.5, 52.2, 81.2, 30.6, 64.6]),
    ("no_instruction", "instruction: w/o instruction", [72.3, 47.1, 82.6, 56.3, 48.2, 76.7, 30.7, 60.3]),
    ("task_prefix", "instruction: w/ task type prefix", [71.1, 46.5, 79.7, 54.0, 52.7, 73.8, 30.0, 60.3]),
    ("tiny_default", "tiny Mistral reference (CPU profile)", [None] * 8),
]
FIELDS = COLUMNS + ["Avg"]
REFERENCE = {"llama2": "tiny_default"}  # a random-init row's delta is taken against this row (n/a until it ran)


def find_rows(sweep: Path) -> dict[str, dict]:
    """ablation row -> {dir, status, scores (or None), wandb id}; the newest folder wins if a row ran twice."""
    found: dict[str, dict] = {}
    for hydra_yaml in sorted(sweep.glob("*/.hydra/hydra.yaml"), key=lambda p: p.stat().st_mtime):
        run_dir = hydra_yaml.parent.parent
        choices = yaml.safe_load(hydra_yaml.read_text())["hydra"]["runtime"]["choices"]
        row = choices.get("ablation")
        if row is None:
            continue
        scores = sorted(run_dir.glob("eval/*/scores.json"))
        if (run_dir / "done.json").is_file() and scores:
            status = "finished"
        elif (run_dir / "failed.txt").is_file():
            status = "failed: " + (run_dir / "failed.txt").read_text().strip()[:80]
        else:
            status = "unfinished"
        wandb_runs = sorted(run_dir.glob("wandb/*run-*"))
        found[row] = {"dir": run_dir, "status": status, "model": row_model(run_dir), "wandb": wandb_runs[-1].name.rsplit("-", 1)[-1]
                      if wandb_runs else None,
                      "scores": json.loads(scores[-1].read_text()) if status == "finished" else None}
    return found


def row_model(run_dir: Path) -> str:
    """The row's backbone as trained: its option name, marked when it is a random-init tiny model."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return "n/a"
    cfg = OmegaConf.load(path)  # .hydra/config.yaml is unresolved: resolve just the two fields read here
    name, size = (OmegaConf.select(cfg, f"backbone.{k}", default=None) for k in ("name", "size"))
    return f"{name} (random init)" if size == "tiny" else str(name)


def finding(delta: float | None, paper_delta: float | None) -> str:
    """Does our Δ Avg have the sign of the paper's? (single seed: a sign check, not a significance test)"""
    if delta is None or paper_delta is None:
        return "n/a"
    return "agrees" if (delta > 0) == (paper_delta > 0) and delta != 0 else "disagrees"


def row_values(scores: dict | None) -> list[float | None]:
    if scores is None:
        return [None] * len(FIELDS)
    return [scores["categories"].get(c) for c in COLUMNS] + [scores["avg"]]


def fmt(x: float | None, signed: bool = False) -> str:
    return "n/a" if x is None else (f"{x:+.1f}" if signed else f"{x:.1f}")


def build_table(sweep: Path, released: Path | None = None) -> list[dict]:
    """The paper's rows (+ tiny_default), each with its model, Δ vs its reference row and whether the sign of Δ Avg
    agrees with the paper's; `released`: an evaluation folder (scores.json) of the released model, as a last row."""
    found = find_rows(sweep)
    table = []
    for row, label, paper in ROWS:
        info = found.get(row, {"status": "missing", "dir": None, "scores": None, "wandb": None, "model": "n/a"})
        ref = REFERENCE.get(row) if info["model"].endswith("(random init)") else None  # like with like
        base = row_values(found.get(ref or "default", {}).get("scores"))
        ours = row_values(info["scores"])
        delta = [None if a is None or b is None else a - b for a, b in zip(ours, base)]
        paper_delta = [None if p is None else p - d for p, d in zip(paper, ROWS[0][2])]
        table.append({"row": row, "label": label, "status": info["status"], "ours": ours, "delta": delta,
                      "paper": paper, "paper_delta": paper_delta, "dir": info["dir"], "wandb": info["wandb"],
                      "suite": (info["scores"] or {}).get("suite"), "model": info["model"],
                      "reference": ref or "default",
                      "finding": "n/a" if row in ("default", "tiny_default") else finding(delta[-1], paper_delta[-1])})
    if released is not None:
        path = released / "scores.json"
        if not path.is_file():
            raise MissingFileError(f"--released {released}: no scores.json there; run python -m embed_lm.evaluate "
                                    "run=null backbone=e5_mistral_instruct eval=<the sweep's suite> output_dir=<dir>")
        scores = json.loads(path.read_text())
        ours, base = row_values(scores), row_values(found.get("default", {}).get("scores"))
        table.append({"row": "released", "label": "released model, measured here", "status": "finished",
                      "ours": ours, "delta": [None if a is None or b is None else a - b for a, b in zip(ours, base)],
                      "paper": [None] * len(FIELDS), "paper_delta": [None] * len(FIELDS), "dir": released,
                      "wandb": None, "suite": scores.get("suite"), "model": scores.get("model", "n/a"),
                      "reference": "default", "finding": "n/a"})
    return table


def sweep_command(sweep: Path) -> str:
    """The multirun command that produced the sweep, from its multirun.yaml."""
    path = sweep / "multirun.yaml"
    if not path.is_file():
        return "(no multirun.yaml: rows were run separately)"
    overrides = yaml.safe_load(path.read_text())["hydra"]["overrides"]
    task = " ".join(f"'{o}'" if "(" in o else o for o in overrides.get("task", []))
    return f"python -m embed_lm.train -m {task} hydra.sweep.dir={sweep}"


def write_markdown(table: list[dict], path: Path, command: str, runs: str) -> None:
    head = ("| row | model | status | " + " | ".join(FIELDS)
            + " | Δ Avg (vs) | paper Avg | paper Δ Avg | sign of Δ vs paper |")
    lines = ["# Table 4 (ours) vs the paper's Table 4", "", f"Runs: `{runs}`", "", f"Report: `{command}`", "",
             f"Ours: suite `{next((r['suite'] for r in table if r['suite']), 'n/a')}`, scores x100, category = mean "
             "over its tasks, Avg = mean over all tasks. Paper: the E5-mistral paper's Table 4 (MTEB, 56 datasets), "
             "shown for reference; our numbers come from the runs in this folder.", "",
             head, "|" + "---|" * (len(FIELDS) + 7)]
    for r in table:
        lines.append(f"| {r['label']} | {r['model']} | {r['status']} | " + " | ".join(fmt(x) for x in r["ours"])
                     + f" | {fmt(r['delta'][-1], True)} ({r['reference']}) | {fmt(r['paper'][-1])} | "
                     f"{fmt(r['paper_delta'][-1], True)} | {r['finding']} |")
    judged = [r for r in table if r["finding"] in ("agrees", "disagrees")]
    agree = [r["label"] for r in judged if r["finding"] == "agrees"]
    lines += ["", f"Findings (computed: the sign of each row's Δ Avg vs the sign of the paper's; one seed, so a "
              f"sign check only): {len(agree)} of {len(judged)} judged rows agree with the paper"
              + (f" ({'; '.join(agree)})" if agree else "") + "; disagree: "
              + ("; ".join(r["label"] for r in judged if r["finding"] == "disagrees") or "none") + "."]
    lines += ["", "Paper's Table 4 (for reference):", "", "| row | " + " | ".join(FIELDS) + " |",
              "|" + "---|" * (len(FIELDS) + 1)]
    lines += [f"| {r['label']} | " + " | ".join(fmt(x) for x in r["paper"]) + " |" for r in table
              if r["paper"][-1] is not None]
    path.write_text("\n".join(lines) + "\n")


def write_csv(table: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label", "model", "reference", "finding", "status"] + [f"ours {c}" for c in FIELDS] + [f"delta {c}" for c in FIELDS]
                   + [f"paper {c}" for c in FIELDS] + [f"paper delta {c}" for c in FIELDS] + ["run_dir", "wandb"])
        for r in table:
            w.writerow([r["row"], r["label"], r["model"], r["reference"], r["finding"], r["status"]] + [fmt(x) for x in r["ours"]]
                       + [fmt(x, True) for x in r["delta"]] + [fmt(x) for x in r["paper"]]
                       + [fmt(x, True) for x in r["paper_delta"]] + [r["dir"] or "", r["wandb"] or ""])


def plot_deltas(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[1:]
    ys = range(len(rows))
    ours = [r["delta"][-1] if r["delta"][-1] is not None else 0.0 for r in rows]
    paper = [r["paper_delta"][-1] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh([y + 0.2 for y in ys], ours, height=0.4, label="ours (Δ Avg vs default)", color="tab:blue")
    ax.barh([y - 0.2 for y in ys], paper, height=0.4, label="paper's Table 4 (Δ Avg)", color="tab:gray")
    for y, r in zip(ys, rows):
        if r["delta"][-1] is None:
            ax.text(0, y + 0.2, f"  {r['status']}", va="center", fontsize=8, color="tab:red")
    ax.set_yticks(list(ys), [r["label"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("Δ average score vs the default row (points)")
    ax.set_title("Table 4 ablations: change in average score")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_group(sweep: Path) -> str:
    """The W&B group the sweep's training runs used (their experiment option, see conf/logger/wandb.yaml)."""
    path = sweep / "multirun.yaml"
    if path.is_file():
        for override in yaml.safe_load(path.read_text())["hydra"]["overrides"].get("task", []):
            if override.startswith("experiment="):
                return override.split("=", 1)[1]
    return "table4"


def log_wandb(table: list[dict], sweep: Path, png: Path) -> None:
    import wandb

    from embed_lm.config.resolvers import wandb_offline

    run = wandb.init(project="embed_lm", group=sweep_group(sweep), name=f"table4-report-{sweep.name}",
                     job_type="report", dir=str(sweep), mode="offline" if wandb_offline() else "online",
                     reinit="finish_previous")
    columns = ["row", "status", "wandb_run"] + FIELDS + [f"Δ {c}" for c in FIELDS] + [f"paper {c}" for c in FIELDS]
    data = [[r["label"], r["status"], r["wandb"] or ""] + r["ours"] + r["delta"] + r["paper"] for r in table]
    run.log({"table4": wandb.Table(columns=columns, data=data), "table4_deltas": wandb.Image(str(png))})
    run.finish()


def table4(sweep: Path, use_wandb: bool = True, released: Path | None = None) -> list[dict]:
    if not sweep.is_dir():
        raise MissingFileError(f"no sweep folder at {sweep}; run `make sweep-table4` first (or pass its folder)")
    table = build_table(sweep, released)
    command = f"python -m embed_lm.report table4 {sweep}" + (f" --released {released}" if released else "")
    write_markdown(table, sweep / "table4.md", command, sweep_command(sweep))
    write_csv(table, sweep / "table4.csv")
    plot_deltas(table, sweep / "table4_deltas.png")
    if use_wandb:
        log_wandb(table, sweep, sweep / "table4_deltas.png")
    print((sweep / "table4.md").read_text())
    return table
