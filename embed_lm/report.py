"""Reports built from finished runs: Table 4 (the paper's hyperparameter study) from a sweep folder
(embed_lm/table4/report.py), and the training curves of several runs on the same axes (embed_lm/training/curves.py):

    python -m embed_lm.report table4 sweeps/table4/cpu          # after: make sweep-table4 PROFILE=cpu
    python -m embed_lm.report runs outputs/train/runs/<a> outputs/train/runs/<b> --out runs.png
    python -m embed_lm.report table4 <sweep> --released outputs/eval/e5_mistral_instruct/local   # + the released model
    python -m embed_lm.report table4 <sweep> --base <eval dir of the untrained base, as its authors use it>
"""

from __future__ import annotations

import argparse
from pathlib import Path

from embed_lm.errors import exit_on_user_error
from embed_lm.inference.cli import KeyValueParser
from embed_lm.table4.report import table4


def runs(run_dirs: list[Path], out: Path) -> dict:
    """Loss, learning rate and val nDCG@10 of every run (its csv/metrics.csv) on shared axes; returns what was drawn."""
    from embed_lm.training.curves import plot_runs, read_curves

    names = [d.name for d in run_dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in run_dirs]
    drawn = plot_runs({label: read_curves(d) for label, d in zip(labels, run_dirs)}, out)
    print(f"wrote {out}: {len(run_dirs)} runs ({', '.join(labels)})")
    return drawn


def main(argv: list[str] | None = None) -> None:
    parser = KeyValueParser(prog="python -m embed_lm.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="report", required=True)
    t4 = sub.add_parser("table4", help="Table 4 from a sweep folder")
    t4.add_argument("sweep", type=Path)
    t4.add_argument("--no-wandb", action="store_true")
    t4.add_argument("--released", type=Path, help="an evaluation folder (scores.json) of the released model, "
                    "e.g. from python -m embed_lm.evaluate run=null backbone=e5_mistral_instruct: an extra row")
    t4.add_argument("--base", type=Path, help="an evaluation folder of the base model as its authors use it (default: "
                    "<sweep>/base when present; make sweep-table4 writes it): an extra row, with Δ vs the default")
    rs = sub.add_parser("runs", help="training curves of several runs on the same axes")
    rs.add_argument("run_dirs", type=Path, nargs="+", help="run folders (or their csv/metrics.csv)")
    rs.add_argument("--out", type=Path, default=Path("runs.png"), help="the PNG to write (default: runs.png)")
    args = parser.parse_args(argv)
    if args.report == "runs":
        exit_on_user_error(runs, args.run_dirs, args.out)  # a UserError: one line, exit 2
    else:
        exit_on_user_error(table4, args.sweep, use_wandb=not args.no_wandb, released=args.released, base=args.base)


if __name__ == "__main__":
    main()
