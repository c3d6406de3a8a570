"""Data report of a synthesis folder, in the spirit of the paper's Figure 2 statistics.

    python -m embed_lm.synth.report data/synth/                  # writes data/synth/report/
    python -m embed_lm.synth.report data/synth/ --out /tmp/rep

Writes report.json, report.md, samples.md and PNGs (matplotlib, Agg backend): kinds.png (examples per task kind),
languages.png (examples per language, top 25), lengths_<kind>.png (query / positive / negative lengths in words),
tokens.png (completion tokens per kept answer, by kind, as the server counted them), task_map.png (report_tasks.py:
task definitions embedded, clustered and projected to 2-D). report.md also has examples per kind and language, the
discard reasons with their rates, and the task section (distinct, near duplicates, clusters); samples.md shows 20
random examples per kind (seeded: --seed), field by field.
Rates per kind: discard rate = discarded / answers, duplicate rate = duplicates / answers that parsed, where
answers = kept + discarded + duplicates. Words are whitespace-separated, so Chinese/Japanese/Thai text counts few.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from embed_lm.errors import MissingFileError, exit_on_user_error
from embed_lm.inference.cli import KeyValueParser
from embed_lm.data.synthetic import FIELDS
from embed_lm.model.instructions import TASK_KINDS
from embed_lm.synth.report_tasks import task_markdown, task_section
from embed_lm.synth.store import OutputStore, kind_file

ROLES = ("query", "positive", "negative")
N_SAMPLES = 20


def words(text: str) -> int:
    return len(text.split())


def collect(folder: Path, seed: int = 0) -> dict:
    """Counts, word lengths, completion tokens and samples per kind and language from the example files; discards
    from the store's scan."""
    store = OutputStore(folder, read_only=True)
    langs: dict[str, Counter] = defaultdict(Counter)
    lengths: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    tasks: dict[str, set] = defaultdict(set)
    tokens: dict[str, list[int]] = defaultdict(list)
    records: dict[str, list[dict]] = defaultdict(list)
    for kind in TASK_KINDS:
        path = folder / kind_file(kind)
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a killed run's partial last line (the store counted it as repaired)
            langs[kind][rec.get("language", "unknown")] += 1
            tasks[kind].add(rec.get("task"))
            tokens[kind].append((rec.get("meta") or {}).get("completion_tokens", 0))
            records[kind].append(rec)
            for role, name in zip(ROLES, FIELDS[kind], strict=True):
                if name is not None and isinstance(rec.get(name), str):
                    lengths[kind][role].append(words(rec[name]))
    kinds = {}
    for kind in TASK_KINDS:
        discards = dict(store.discards.get(kind, {}))
        dups = discards.pop("duplicate", 0)
        kept, discarded = store.examples[kind], sum(discards.values())
        answers = kept + discarded + dups
        if not answers:
            continue
        kinds[kind] = {
            "examples": kept, "unique_tasks": len(tasks[kind]), "discarded": discarded, "duplicates": dups,
            "discard_rate": round(discarded / answers, 4),
            "duplicate_rate": round(dups / (kept + dups), 4) if kept + dups else 0.0,
            "discard_reasons": discards, "languages": dict(langs[kind].most_common()),
            "words": {role: summary_stats(v) for role, v in lengths[kind].items()},
            "completion_tokens": summary_stats(tokens[kind]),
        }
    all_langs = sum(langs.values(), Counter())
    total = sum(k["examples"] for k in kinds.values())
    return {"folder": str(folder), "examples": total, "kinds": kinds, "languages": dict(all_langs.most_common()),
            "tokens": dict(store.tokens), "partial_lines": store.repaired,
            "_lengths": {k: dict(v) for k, v in lengths.items()}, "_tokens": dict(tokens), "_store": store,
            "_samples": {k: random.Random(f"{seed}/{k}").sample(v, min(N_SAMPLES, len(v))) for k, v in records.items()}}


def summary_stats(values: list[int]) -> dict:
    s = sorted(values)
    if not s:
        return {}
    return {"n": len(s), "mean": round(sum(s) / len(s), 1), "median": s[len(s) // 2], "min": s[0], "max": s[-1]}


def plot(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def bar(name: str, counts: dict[str, int], title: str) -> None:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(counts) + 2), 3.5))
        ax.bar(list(counts), list(counts.values()), color="tab:blue")
        ax.set_title(title)
        ax.set_ylabel("examples")
        ax.tick_params(axis="x", rotation=60)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    bar("kinds.png", {k: v["examples"] for k, v in report["kinds"].items()}, "examples per task kind")
    bar("languages.png", dict(list(report["languages"].items())[:25]), "examples per language (top 25)")
    for kind, by_role in report["_lengths"].items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for role, values in by_role.items():
            ax.hist(values, bins=30, alpha=0.5, label=f"{role} (n={len(values)})")
        ax.set_title(f"{kind}: length in words")
        ax.set_xlabel("words")
        ax.set_ylabel("examples")
        ax.legend()
        fig.tight_layout()
        name = f"lengths_{kind_file(kind).removesuffix('.jsonl')}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)
    if any(report["_tokens"].values()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for kind, values in report["_tokens"].items():
            ax.hist(values, bins=30, alpha=0.5, label=f"{kind} (n={len(values)})")
        ax.set_title("completion tokens per kept answer")
        ax.set_xlabel("tokens")
        ax.set_ylabel("examples")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "tokens.png", dpi=100)
        plt.close(fig)
        written.append("tokens.png")
    return written


def markdown(report: dict, images: list[str]) -> str:
    lines = [f"# Synthetic data report: {report['folder']}", "", f"{report['examples']} examples.", "",
             "| kind | examples | unique tasks | discard rate | duplicate rate | query words (median) | "
             "positive words (median) | top discard reasons |", "|---|---|---|---|---|---|---|---|"]
    for kind, k in report["kinds"].items():
        reasons = ", ".join(f"{r} {n}" for r, n in Counter(k["discard_reasons"]).most_common(3)) or "-"
        q, p = k["words"].get("query", {}), k["words"].get("positive", {})
        lines.append(f"| {kind} | {k['examples']} | {k['unique_tasks']} | {k['discard_rate']:.1%} | "
                     f"{k['duplicate_rate']:.1%} | {q.get('median', '-')} | {p.get('median', '-')} | {reasons} |")
    lines += ["", "| language | examples | share |", "|---|---|---|"]
    for lang, n in list(report["languages"].items())[:25]:
        lines.append(f"| {lang} | {n} | {n / max(1, report['examples']):.1%} |")
    top = list(report["languages"])[:8]
    lines += ["", "Examples per kind and language (top 8 languages, then the rest):", "",
              "| kind | " + " | ".join(top) + " | other |", "|---" * (len(top) + 2) + "|"]
    for kind, k in report["kinds"].items():
        counts = [k["languages"].get(lang, 0) for lang in top]
        lines.append(f"| {kind} | " + " | ".join(map(str, counts)) + f" | {k['examples'] - sum(counts)} |")
    lines += ["", "Discard reasons (share of the kind's answers):", "", "| kind | reason | answers | share |",
              "|---|---|---|---|"]
    if not any(k["discarded"] + k["duplicates"] for k in report["kinds"].values()):
        lines.append("| all | none | 0 | 0.0% |")
    for kind, k in report["kinds"].items():
        answers = k["examples"] + k["discarded"] + k["duplicates"]
        for reason, n in Counter({**k["discard_reasons"], "duplicate": k["duplicates"]}).most_common():
            if n:
                lines.append(f"| {kind} | {reason} | {n} | {n / answers:.1%} |")
    lines += ["", "| kind | completion tokens (median) | mean | max |", "|---|---|---|---|"]
    for kind, k in report["kinds"].items():
        t = k.get("completion_tokens") or {}
        lines.append(f"| {kind} | {t.get('median', '-')} | {t.get('mean', '-')} | {t.get('max', '-')} |")
    if report.get("tasks"):
        lines += [""] + task_markdown(report["tasks"])
    lines += ["", "Samples: [samples.md](samples.md)", ""] + [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def samples_markdown(samples: dict[str, list[dict]]) -> str:
    """Up to 20 random examples per kind, each field on its own lines (blockquoted), for reading."""
    lines = ["# Random examples per kind", ""]
    for kind, recs in samples.items():
        lines += [f"## {kind} ({len(recs)} random examples)", ""]
        for i, rec in enumerate(recs, start=1):
            lines.append(f"### {kind} #{i} ({rec.get('language', '?')}, {rec['request_id']})")
            if kind not in ("sts", "bitext"):
                lines.append(f"*task:* {rec.get('task', '')}")
            for name in (f for f in FIELDS[kind] if f is not None):
                text = str(rec.get(name, "")).replace("\n", "\n> ")
                lines += ["", f"**{name}**", "", f"> {text}"]
            lines.append("")
    return "\n".join(lines) + "\n"


def write_report(folder: str | Path, out: str | Path | None = None, seed: int = 0, task_map: bool = True,
                 max_map_tasks: int = 5000) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"no synthesis folder at {folder} (the out=... of python -m embed_lm.synth)")
    out = Path(out) if out else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = collect(folder, seed)
    images = plot(report, out)
    if task_map:
        report["tasks"], more = task_section(folder, report["_store"], out, max_tasks=max_map_tasks, seed=seed)
        images += more
    (out / "samples.md").write_text(samples_markdown(report.pop("_samples")), encoding="utf-8")
    for key in ("_lengths", "_tokens", "_store"):
        report.pop(key)
    report["images"] = images
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / "report.md").write_text(markdown(report, images), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = KeyValueParser(prog="python -m embed_lm.synth.report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="the out=... folder of python -m embed_lm.synth")
    parser.add_argument("--out", default=None, help="where to write the report (default: <folder>/report)")
    parser.add_argument("--seed", type=int, default=0, help="which random examples samples.md shows")
    parser.add_argument("--no-task-map", action="store_true", help="skip embedding the task definitions")
    parser.add_argument("--max-map-tasks", type=int, default=5000, help="task definitions embedded for the map")
    args = parser.parse_args(argv)
    report = exit_on_user_error(write_report, args.folder, args.out, args.seed, not args.no_task_map,
                                args.max_map_tasks)  # a UserError: one line, exit 2
    out = Path(args.out) if args.out else Path(args.folder) / "report"
    print(markdown(report, []).rstrip())
    print(f"\nwrote {out}/report.md, samples.md, report.json, {', '.join(report['images'])}")


if __name__ == "__main__":
    main()
