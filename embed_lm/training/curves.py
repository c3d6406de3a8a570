"""Training curves without W&B: train loss, learning rate and validation nDCG@10 against the step, from a run's
csv/metrics.csv (Lightning's CSVLogger).

    python -m embed_lm.report runs outputs/train/runs/<a> outputs/train/runs/<b>   # several runs, same axes
    write_run_curves(run_dir)        # what training does at the end (rank 0): <run>/csv/curves.png

Each panel draws one line per run; a run without a metric (no validation, no LR monitor) leaves that panel empty
for it. The plotting functions return what they drew (panel -> run label -> (steps, values)), read back from the
figure's lines, so tests check the plotted data rather than pixels.
"""

from __future__ import annotations

import csv
from pathlib import Path

from embed_lm.errors import MissingFileError

METRICS_CSV = Path("csv") / "metrics.csv"
CURVES_PNG = "curves.png"
PANELS = {"train loss": "train/loss", "learning rate": "lr-", "validation nDCG@10": "val/ndcg@10"}  # prefix for lr

Curves = dict[str, tuple[list[int], list[float]]]  # panel -> (steps, values)


def metrics_csv(run: str | Path) -> Path:
    """<run>/csv/metrics.csv for a run folder, or the csv file itself."""
    path = Path(run)
    found = path if path.suffix == ".csv" else path / METRICS_CSV
    if not found.is_file():
        raise MissingFileError(f"no metrics file at {found}: pass a run folder written by python -m embed_lm.train "
                                "with the csv logger (logger=csv or logger=wandb), or its metrics.csv")
    return found


def read_curves(path: str | Path) -> Curves:
    """Every panel's (step, value) points, in file order; rows without the metric are skipped."""
    out: Curves = {panel: ([], []) for panel in PANELS}
    with metrics_csv(path).open(newline="") as f:
        for row in csv.DictReader(f):
            for panel, key in PANELS.items():
                column = key if not key.endswith("-") else next((c for c in row if c.startswith(key) and row[c]),
                                                                None)
                if column and row.get(column) not in (None, "") and row.get("step") not in (None, ""):
                    out[panel][0].append(int(float(row["step"])))
                    out[panel][1].append(float(row[column]))
    return out


def plot_runs(runs: dict[str, Curves], out: Path, title: str = "") -> dict[str, dict[str, tuple[list, list]]]:
    """Draw every run's curves on shared axes (one panel per metric) into `out` (PNG); returns the drawn data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    drawn: dict[str, dict[str, tuple[list, list]]] = {}
    for ax, panel in zip(axes, PANELS):
        for label, curves in runs.items():
            steps, values = curves[panel]
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=label)
        ax.set_title(panel)
        ax.set_xlabel("step")
        drawn[panel] = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
        if not drawn[panel]:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    handles, labels = axes[0].get_legend_handles_labels()
    if len(runs) > 1 and handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 if len(runs) > 1 else 0, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def write_run_curves(run_dir: str | Path) -> Path | None:
    """<run>/csv/curves.png next to metrics.csv; None (nothing written) when the run logged no csv."""
    try:
        path = metrics_csv(run_dir)
    except FileNotFoundError:
        return None
    out = path.parent / CURVES_PNG
    plot_runs({Path(run_dir).name: read_curves(path)}, out, title=Path(run_dir).name)
    return out
