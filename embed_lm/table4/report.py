"""Table 4 (the paper's hyperparameter study) from a sweep folder; `python -m embed_lm.report table4 <sweep>` runs it.

Reads every row folder's .hydra/hydra.yaml (which ablation row it is), .hydra/config.yaml (its seed: seeds are a
multirun axis, `seed=1,2,3`), done.json (finished?), eval/<suite>/scores.json and per_query.json, and writes next to
them: table4.md and table4.csv (the paper's row order and columns; per cell our mean and sd over seeds; each row's
model; Δ vs the default row (a random-init llama2 row: vs tiny_default) with a 95% interval over seeds and one
from a paired bootstrap over queries (embed_lm/table4/stats.py); the paper's numbers labelled as the paper's; the
finding: agrees / disagrees with the paper only where the intervals exclude 0, else no significant difference),
table4_deltas.png (with the intervals), and a W&B run (group table4) whose table links every row's W&B run. The
base model as its authors use it (<sweep>/base, or --base) and the released model (--released) are extra rows.
Rows whose run failed or is missing are listed as such.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf

from embed_lm.errors import MissingFileError
from embed_lm.eval.scores import COLUMNS
from embed_lm.table4.stats import Interval, mean_sd, paired_bootstrap, seed_interval, verdict

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


PAPER_DEFAULT = {"pooling": "last_token", "lora_rank": "r16", "instruction_style": "natural",
                 "data": "synthetic_msmarco"}  # the paper's default row, per config group
FACTOR = {"llama2": ("backbone", "llama2"), "msmarco_only": ("data", "msmarco_only"), "mean_pool": ("pooling", "mean"),
          "weighted_mean_pool": ("pooling", "weighted_mean"), "lora_r8": ("lora_rank", "r8"),
          "lora_r32": ("lora_rank", "r32"), "no_instruction": ("instruction_style", "none"),
          "task_prefix": ("instruction_style", "task_prefix")}  # row -> (the group it changes, its option)


def find_rows(sweep: Path) -> dict[str, dict[int, dict]]:
    """ablation row -> seed -> {dir, status, scores, per_query, choices, model, wandb}; newest folder wins."""
    found: dict[str, dict[int, dict]] = {}
    # any depth: an override holding a path (eval.path=/data/x) puts "/" in the job's folder name
    for hydra_yaml in sorted(sweep.glob("**/.hydra/hydra.yaml"), key=lambda p: p.stat().st_mtime):
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
        per_query = scores[-1].parent / "per_query.json" if scores else None
        wandb_runs = sorted(run_dir.glob("wandb/*run-*"))
        model, seed = row_model(run_dir)
        found.setdefault(row, {})[seed] = {
            "dir": run_dir, "status": status, "model": model, "choices": choices,
            "wandb": wandb_runs[-1].name.rsplit("-", 1)[-1] if wandb_runs else None,
            "scores": json.loads(scores[-1].read_text()) if status == "finished" else None,
            "per_query": json.loads(per_query.read_text()) if status == "finished" and per_query.is_file() else None}
    return found


def row_model(run_dir: Path) -> tuple[str, int]:
    """(the row's backbone as trained: its option name, marked when it is a random-init tiny model; its seed)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return "n/a", 0
    cfg = OmegaConf.load(path)  # .hydra/config.yaml is unresolved: resolve just the fields read here
    name, size = (OmegaConf.select(cfg, f"backbone.{k}", default=None) for k in ("name", "size"))
    model = "n/a" if name is None else f"{name} (random init)" if size == "tiny" else str(name)
    return model, int(OmegaConf.select(cfg, "seed", default=0))


def row_values(scores: dict | None) -> list[float | None]:
    if scores is None:
        return [None] * len(FIELDS)
    return [scores["categories"].get(c) for c in COLUMNS] + [scores["avg"]]


def fmt(x: float | None, signed: bool = False) -> str:
    return "n/a" if x is None else (f"{x:+.1f}" if signed else f"{x:.1f}")


def cell_stats(runs: dict[int, dict]) -> tuple[list, list]:
    """Per field: mean and sample sd over the finished seeds (None where no seed has the field)."""
    values = [row_values(r["scores"]) for r in runs.values() if r["scores"] is not None]
    means, sds = [], []
    for k in range(len(FIELDS)):
        col = [v[k] for v in values if v[k] is not None]
        m, sd = mean_sd(col) if col else (None, None)
        means.append(m)
        sds.append(sd)
    return means, sds


def query_scores(runs: dict[int, dict]) -> dict[tuple[str, str], float]:
    """(task, query id) -> score x100, the mean over the seeds that saved per-query scores."""
    sums: dict[tuple[str, str], list[float]] = {}
    for r in runs.values():
        for task, scores in (r["per_query"] or {}).items():
            for qid, v in scores.items():
                sums.setdefault((task, qid), []).append(100 * v)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def compare(runs: dict[int, dict], ref: dict[int, dict]) -> dict:
    """Δ (row - reference) per field (means over seeds), and the two intervals of Δ Avg / Δ per query."""
    ours, ref_means = cell_stats(runs)[0], cell_stats(ref)[0]
    delta = [None if a is None or b is None else a - b for a, b in zip(ours, ref_means)]
    seeds = sorted(s for s in runs if runs[s]["scores"] and s in ref and ref[s]["scores"])
    seed_ci = seed_interval([row_values(runs[s]["scores"])[-1] - row_values(ref[s]["scores"])[-1] for s in seeds])
    x, y = query_scores(runs), query_scores(ref)
    common = sorted(set(x) & set(y))
    boot = paired_bootstrap(np.array([x[k] for k in common]), np.array([y[k] for k in common])) \
        if len(common) >= 2 else None
    return {"delta": delta, "seed_ci": seed_ci, "query_ci": boot}


def not_comparable(row: str, default_runs: dict[int, dict]) -> str | None:
    """Why a row's finding cannot be set against the paper's: the profile's default differs from the paper's
    default in the very group the row changes (e.g. the CPU profile pools MiniLM by mean, its authors' pooling)."""
    if row not in FACTOR or not default_runs or FACTOR[row][0] == "backbone":
        return None
    group = FACTOR[row][0]
    ours = next(iter(default_runs.values()))["choices"].get(group)
    if ours is not None and ours != PAPER_DEFAULT[group]:
        return f"n/a: the default row here uses {group}={ours}, the paper's {PAPER_DEFAULT[group]}"
    return None


def status_of(runs: dict[int, dict]) -> str:
    done = [s for s, r in runs.items() if r["status"] == "finished"]
    others = [(f"seed {s} " if len(runs) > 1 else "") + r["status"] for s, r in sorted(runs.items())
              if r["status"] != "finished"]
    return "; ".join([f"finished ({len(done)} seed{'s' * (len(done) != 1)})"] * bool(done) + others)


def build_table(sweep: Path, released: Path | None = None, base: Path | None = None) -> list[dict]:
    """The paper's rows (+ tiny_default), each with its model, mean and sd over seeds per cell, Δ vs its reference
    row with its intervals (over seeds; paired bootstrap over queries), and whether that agrees with the paper;
    `base`: an evaluation folder of the base model as its authors use it, `released`: of the released model."""
    found = find_rows(sweep)
    default_runs = found.get("default", {})
    table = []
    for row, label, paper in ROWS:
        runs = found.get(row, {})
        model = next((r["model"] for r in runs.values()), "n/a")
        ref = REFERENCE.get(row) if model.endswith("(random init)") else None  # like with like
        ours, sds = cell_stats(runs)
        cmp = compare(runs, found.get(ref or "default", {}))
        paper_delta = [None if p is None else p - d for p, d in zip(paper, ROWS[0][2])]
        status = status_of(runs) if runs else "missing"
        reason = not_comparable(row, default_runs)
        if not runs and reason and FACTOR[row][1] == next(iter(default_runs.values()))["choices"].get(FACTOR[row][0]):
            status = "= the default row in this profile"
        finding = "n/a" if row in ("default", "tiny_default") else reason or verdict(
            [cmp["seed_ci"], cmp["query_ci"]], paper_delta[-1])
        table.append({"row": row, "label": label, "status": status, "ours": ours, "sd": sds, "paper": paper,
                      "paper_delta": paper_delta, "dirs": [r["dir"] for r in runs.values()],
                      "wandb": [r["wandb"] for r in runs.values() if r["wandb"]], "model": model,
                      "suite": next((r["scores"]["suite"] for r in runs.values() if r["scores"]), None),
                      "reference": ref or "default", "finding": finding, "n_seeds": len(runs), **cmp})
    for path, key, label in ((base, "base", "base model as its authors use it (untrained)"),
                             (released, "released", "released model, measured here")):
        if path is not None:
            table.append(extra_row(path, key, label, default_runs))
    return table


def extra_row(path: Path, key: str, label: str, default_runs: dict[int, dict]) -> dict:
    """A row from one evaluation folder (scores.json, per_query.json), compared with the default row."""
    if not (path / "scores.json").is_file():
        raise MissingFileError(f"--{key} {path}: no scores.json there; run python -m embed_lm.evaluate run=null "
                                f"backbone=<the backbone> eval=<the sweep's suite> output_dir={path}")
    scores = json.loads((path / "scores.json").read_text())
    per_query = path / "per_query.json"
    runs = {0: {"scores": scores, "per_query": json.loads(per_query.read_text()) if per_query.is_file() else None}}
    cmp = compare(runs, default_runs)
    # the default's seeds against one untrained evaluation: the interval is over the default row's seeds
    values = [row_values(r["scores"])[-1] for r in default_runs.values() if r["scores"]]
    cmp["seed_ci"] = seed_interval([row_values(scores)[-1] - v for v in values]) if values else None
    return {"row": key, "label": label, "status": "finished", "ours": row_values(scores), "sd": [None] * len(FIELDS),
            "paper": [None] * len(FIELDS), "paper_delta": [None] * len(FIELDS), "dirs": [path], "wandb": [],
            "suite": scores.get("suite"), "model": scores.get("model", "n/a"), "reference": "default",
            "finding": "n/a", "n_seeds": 1, **cmp}


def sweep_command(sweep: Path) -> str:
    """The multirun command that produced the sweep, from its multirun.yaml."""
    path = sweep / "multirun.yaml"
    if not path.is_file():
        return "(no multirun.yaml: rows were run separately)"
    overrides = yaml.safe_load(path.read_text())["hydra"]["overrides"]
    task = " ".join(f"'{o}'" if "(" in o else o for o in overrides.get("task", []))
    return f"python -m embed_lm.train -m {task} hydra.sweep.dir={sweep}"


def ci(i: Interval | None) -> str:
    return "n/a" if i is None else str(i)


def write_markdown(table: list[dict], path: Path, command: str, runs: str) -> None:
    head = ("| row | model | status | " + " | ".join(FIELDS)
            + " | Δ Avg (vs) | 95% CI over seeds | Δ per query, 95% CI (bootstrap) | paper Δ Avg | finding |")
    seeds = max((r["n_seeds"] for r in table), default=0)
    lines = ["# Table 4 (ours) vs the paper's Table 4", "", f"Runs: `{runs}`", "", f"Report: `{command}`", "",
             f"Ours: suite `{next((r['suite'] for r in table if r['suite']), 'n/a')}`, scores x100, category = mean "
             f"over its tasks, Avg = mean over all tasks; each cell is the mean ± sd over a row's seeds (up to "
             f"{seeds}). Δ: row minus its reference row. Intervals (95%): over seeds, Student's t on the per-seed "
             "paired Δ Avg; over queries, a paired bootstrap of the retrieval tasks' per-query main scores (mean over "
             "seeds). A row agrees or disagrees with the paper only when every interval excludes 0; otherwise no "
             "significant difference. Paper: the E5-mistral paper's Table 4 (MTEB, 56 datasets), for reference.", "",
             head, "|" + "---|" * (len(FIELDS) + 8)]
    for r in table:
        cells = [fmt(m) + ("" if sd is None else f" ± {sd:.1f}") for m, sd in zip(r["ours"], r["sd"])]
        lines.append(f"| {r['label']} | {r['model']} | {r['status']} | " + " | ".join(cells)
                     + f" | {fmt(r['delta'][-1], True)} ({r['reference']}) | {ci(r['seed_ci'])} | "
                     f"{ci(r['query_ci'])} | {fmt(r['paper_delta'][-1], True)} | {r['finding']} |")
    judged = [r for r in table if r["finding"] in ("agrees", "disagrees", "no significant difference")]
    by = {k: [r["label"] for r in judged if r["finding"] == k] for k in ("agrees", "disagrees",
                                                                         "no significant difference")}
    lines += ["", f"Findings (computed from the intervals above): of {len(judged)} judged rows, "
              f"{len(by['agrees'])} agree with the paper ({'; '.join(by['agrees']) or 'none'}), "
              f"{len(by['disagrees'])} disagree ({'; '.join(by['disagrees']) or 'none'}), "
              f"{len(by['no significant difference'])} show no significant difference "
              f"({'; '.join(by['no significant difference']) or 'none'})."]
    lines += ["", "Paper's Table 4 (for reference):", "", "| row | " + " | ".join(FIELDS) + " |",
              "|" + "---|" * (len(FIELDS) + 1)]
    lines += [f"| {r['label']} | " + " | ".join(fmt(x) for x in r["paper"]) + " |" for r in table
              if r["paper"][-1] is not None]
    path.write_text("\n".join(lines) + "\n")


def write_csv(table: list[dict], path: Path) -> None:
    def bounds(i: Interval | None) -> list[str]:
        return ["", ""] if i is None else [f"{i.low:+.2f}", f"{i.high:+.2f}"]

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label", "model", "reference", "finding", "status", "seeds"]
                   + [f"ours {c}" for c in FIELDS] + [f"sd {c}" for c in FIELDS] + [f"delta {c}" for c in FIELDS]
                   + ["delta Avg CI low (seeds)", "delta Avg CI high (seeds)", "delta per query",
                      "delta per query CI low", "delta per query CI high"]
                   + [f"paper {c}" for c in FIELDS] + [f"paper delta {c}" for c in FIELDS] + ["run_dirs", "wandb"])
        for r in table:
            q = r["query_ci"]
            w.writerow([r["row"], r["label"], r["model"], r["reference"], r["finding"], r["status"], r["n_seeds"]]
                       + [fmt(x) for x in r["ours"]] + [fmt(x) for x in r["sd"]] + [fmt(x, True) for x in r["delta"]]
                       + bounds(r["seed_ci"]) + ["" if q is None else f"{q.mean:+.2f}"] + bounds(q)
                       + [fmt(x) for x in r["paper"]] + [fmt(x, True) for x in r["paper_delta"]]
                       + [" ".join(str(d) for d in r["dirs"]), " ".join(r["wandb"])])


def plot_deltas(table: list[dict], path: Path) -> None:
    """Δ Avg per row with its 95% interval over seeds (black bar), Δ per query with its bootstrap interval, and the
    paper's Δ Avg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[1:]
    ys = range(len(rows))
    fig, ax = plt.subplots(figsize=(9, 5))
    for y, r in zip(ys, rows):
        d, s, q = r["delta"][-1], r["seed_ci"], r["query_ci"]
        if d is None:
            ax.text(0, y, f"  {r['status']}", va="center", fontsize=8, color="tab:red")
            continue
        ax.barh(y + 0.25, d, height=0.25, color="tab:blue", label="ours: Δ Avg, 95% CI over seeds" if y == 0 else None)
        if s is not None:
            ax.errorbar(d, y + 0.25, xerr=[[d - s.low], [s.high - d]], fmt="none", ecolor="black", capsize=3)
        if q is not None:
            ax.errorbar(q.mean, y, xerr=[[q.mean - q.low], [q.high - q.mean]], fmt="o", color="tab:orange",
                        capsize=3, markersize=4, label="ours: Δ per query, 95% bootstrap CI" if y == 0 else None)
    ax.barh([y - 0.25 for y in ys], [r["paper_delta"][-1] or 0.0 for r in rows], height=0.25, color="tab:gray",
            label="paper's Table 4 (Δ Avg)")
    ax.set_yticks(list(ys), [r["label"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("Δ score vs the reference row (points)")
    ax.set_title("Table 4 ablations: change in score, with 95% intervals")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8, frameon=False)
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
    columns = (["row", "status", "wandb_runs", "finding"] + FIELDS + [f"Δ {c}" for c in FIELDS]
               + ["Δ Avg CI (seeds)", "Δ per query CI"] + [f"paper {c}" for c in FIELDS])
    data = [[r["label"], r["status"], " ".join(r["wandb"]), r["finding"]] + r["ours"] + r["delta"]
            + [ci(r["seed_ci"]), ci(r["query_ci"])] + r["paper"] for r in table]
    run.log({"table4": wandb.Table(columns=columns, data=data), "table4_deltas": wandb.Image(str(png))})
    run.finish()


def table4(sweep: Path, use_wandb: bool = True, released: Path | None = None, base: Path | None = None) -> list[dict]:
    """Write table4.md/.csv/_deltas.png (and a W&B run) from the sweep; `base` defaults to <sweep>/base when that
    holds an evaluation of the base model as its authors use it (make sweep-table4 writes it)."""
    if not sweep.is_dir():
        raise MissingFileError(f"no sweep folder at {sweep}; run `make sweep-table4` first (or pass its folder)")
    if base is None and (sweep / "base" / "scores.json").is_file():
        base = sweep / "base"
    table = build_table(sweep, released, base)
    command = (f"python -m embed_lm.report table4 {sweep}" + (f" --released {released}" if released else "")
               + (f" --base {base}" if base else ""))
    write_markdown(table, sweep / "table4.md", command, sweep_command(sweep))
    write_csv(table, sweep / "table4.csv")
    plot_deltas(table, sweep / "table4_deltas.png")
    if use_wandb:
        log_wandb(table, sweep, sweep / "table4_deltas.png")
    print((sweep / "table4.md").read_text())
    return table
