"""<out>/summary.json: what is on disk (kept, discarded by reason, duplicates, tokens, cost) plus the run history.

Tokens are the `usage` the server reported for every request recorded in <out> (kept or not), summed over all
runs into that folder; requests that failed after their retries, or were in flight when a run was killed, report
no usage and are not counted. cost_usd = prompt tokens x prices_per_1m.input / 1e6 + completion tokens x
prices_per_1m.output / 1e6, or null when both prices are 0 (unknown). `runs` lists each run's own traffic (requests
sent, failed after retries, retries taken (a failed request counts all its max_retries), errors by reason, the
last error, tokens, wall time, status); a killed run leaves no entry. A kind's discard_rate = discarded / answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from embed_lm.synth.store import SUMMARY, OutputStore


def cost_usd(prompt_tokens: int, completion_tokens: int, prices_per_1m: tuple[float, float]) -> float | None:
    p_in, p_out = prices_per_1m
    if not (p_in or p_out):
        return None
    return round((prompt_tokens * p_in + completion_tokens * p_out) / 1e6, 6)


def previous_runs(out: str | Path) -> list[dict]:
    try:
        return list(json.loads((Path(out) / SUMMARY).read_text()).get("runs", []))
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return []


def summarize(store: OutputStore, plan: dict, run: dict, planned_ids: list[str],
              prices_per_1m: tuple[float, float], describe: dict | None, config: dict | None,
              tasks: dict[str, list[str]] | None = None, dedup: dict[str, dict] | None = None) -> dict:
    """`tasks`: the task definitions step 2 uses per kind; `dedup`: Plan.task_lists' near-duplicate counts."""
    kinds = {}
    for kind in plan["kinds"]:
        discarded = dict(store.discards.get(kind, {}))
        dups = discarded.pop("duplicate", 0)
        answers = store.examples[kind] + sum(discarded.values()) + dups
        kinds[kind] = {"examples": store.examples[kind], "discarded": sum(discarded.values()),
                       "discard_reasons": discarded, "duplicates": dups,
                       "discard_rate": round(sum(discarded.values()) / answers, 4) if answers else None,
                       "task_definitions": len((tasks or {}).get(kind) or store.tasks(kind, plan["n_tasks"])),
                       "step1_discard_reasons": dict(store.discards.get(f"{kind}/tasks", {}))}
        if dedup and kind in dedup:
            d = dedup[kind]
            kinds[kind]["task_candidates"] = d["candidates"]
            kinds[kind]["task_near_duplicates"] = d["near_duplicates"]
            kinds[kind]["task_near_duplicate_rate"] = round(d["near_duplicates"] / d["candidates"], 4) \
                if d["candidates"] else None
    prompt, completion = store.tokens["prompt"], store.tokens["completion"]
    run = {**run, "cost_usd": cost_usd(run["prompt_tokens"], run["completion_tokens"], prices_per_1m)}
    missing = [i for i in planned_ids if i not in store.done]
    return {
        "complete": not missing,
        "requests": {"planned": len(planned_ids), "done": len(planned_ids) - len(missing), "left": len(missing)},
        "kinds": kinds,
        "totals": {k: sum(v[k] for v in kinds.values()) for k in ("examples", "discarded", "duplicates")},
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "prices_per_1m": {"input": prices_per_1m[0], "output": prices_per_1m[1]},
        "cost_usd": cost_usd(prompt, completion, prices_per_1m),
        "generator": describe or {},
        "plan": plan,
        "runs": previous_runs(store.out) + [run],
        "config": config or {},
    }


def write_summary(out: str | Path, summary: dict) -> Path:
    path = Path(out) / SUMMARY
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    os.replace(tmp, path)  # atomic: a kill never leaves half a summary
    return path


def format_summary(summary: dict) -> str:
    rows = [f"{'kind':<12}{'examples':>10}{'discarded':>11}{'duplicates':>12}{'tasks':>7}  discard reasons"]
    for kind, s in summary["kinds"].items():
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["discard_reasons"].items(), key=lambda x: -x[1]))
        near = f" ({s['task_near_duplicates']} near-dup. removed)" if s.get("task_near_duplicates") else ""
        rows.append(f"{kind:<12}{s['examples']:>10}{s['discarded']:>11}{s['duplicates']:>12}"
                    f"{s['task_definitions']:>7}  {reasons or '-'}{near}")
    step1 = {k: sum(s["step1_discard_reasons"].values()) for k, s in summary["kinds"].items()}
    if any(step1.values()):
        rows.append(f"step 1 answers discarded: {', '.join(f'{k} {n}' for k, n in step1.items() if n)}")
    t, r, last = summary["tokens"], summary["requests"], summary["runs"][-1]
    cost = "unknown (set prices_per_1m)" if summary["cost_usd"] is None else f"${summary['cost_usd']:.4f}"
    rows += [f"requests: {r['done']}/{r['planned']} done" + ("" if summary["complete"] else
                                                              f", {r['left']} left: rerun the same command"),
             f"this run: {last['sent']} sent, {last.get('failed', 0)} failed after retries "
             f"({dict(last['errors']) or 'no errors'}), {last['retries']} retries, {last['wall_s']} s"
             + (f"; last error: {last['last_error']}" if last.get("last_error") else ""),
             f"tokens: {t['prompt']:,} prompt + {t['completion']:,} completion; cost {cost}"]
    return "\n".join(rows)
