"""Plot passkey accuracy against context length, one line per variant (the paper's Figure 5).

    python -m embed_lm.passkey.plot outputs/passkey/mistral-per_query      # -> <dir>/passkey.png + passkey.csv
    python -m embed_lm.passkey.plot <dir> --out fig5.png

Reads every results.csv under the folder (one per variant, as a run or a multirun writes them), keeps the latest
row per (variant, length), and draws top-1 accuracy (%) on a log2 length axis (256 ... 32k).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from embed_lm.errors import MissingFileError, exit_on_user_error
from embed_lm.inference.cli import KeyValueParser
from embed_lm.passkey.results import FIELDS, read_rows


def length_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def variant_label(row: dict) -> str:
    window = "full attention" if row["sliding_window"] is None else f"window {length_label(row['sliding_window'])}"
    exponent = math.log10(row["rope_base"])
    base = f"1e{round(exponent)}" if abs(exponent - round(exponent)) < 1e-9 else f"{row['rope_base']:g}"
    return f"{window}, RoPE base {base}"


def plot_rows(rows: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({r["variant"] for r in rows}, key=lambda v: next(
        (r["sliding_window"] or math.inf, r["rope_base"]) for r in rows if r["variant"] == v))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, variant in enumerate(variants):  # markers and dashes differ, so coinciding lines stay visible
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["length"])
        ax.plot([r["length"] for r in mine], [100 * r["accuracy"] for r in mine], marker="osD^vP"[i % 6],
                linestyle=("-", "--", "-.", ":")[i % 4], markersize=7 - i % 4, label=variant_label(mine[0]))
    lengths = sorted({r["length"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [length_label(n) for n in lengths])
    ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "personalized passkey retrieval")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_dir(root: Path, out: Path | None = None) -> Path | None:
    """Combined plot (and CSV) of every variant under root; None if there are no results yet."""
    root = Path(root)
    rows = read_rows(root)
    if not rows:
        return None
    out = out or root / "passkey.png"
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if r.get(k) is None else r[k] for k in FIELDS} for r in rows)
    models = sorted({r["model"] for r in rows})
    return plot_rows(rows, out, title=f"personalized passkey retrieval: {', '.join(models)}")


def main(argv: list[str] | None = None) -> None:
    parser = KeyValueParser(prog="python -m embed_lm.passkey.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a passkey study folder (or one results.csv)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default <dir>/passkey.png)")
    args = parser.parse_args(argv)
    root = args.dir.parent if args.dir.is_file() else args.dir
    path = plot_dir(args.dir, args.out or root / "passkey.png")
    if path is None:
        raise MissingFileError(f"no results.csv under {args.dir}; run python -m embed_lm.passkey first")
    print(f"wrote {path} and {path.with_suffix('.csv')}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a UserError: one line, exit 2
