"""The Table 4 study: ablation rows as config overrides, the multirun (rows x seeds), the report and its statistics."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from scipy import stats

from conftest import CONF, ROOT, compose_config
from test_transfer_splits import tiny_beir
from embed_lm.table4.report import ROWS, sweep_group, table4
from embed_lm.table4.stats import Interval, paired_bootstrap, seed_interval, verdict

FACTOR = {"default": None, "llama2": "backbone", "msmarco_only": "data", "mean_pool": "pooling",
          "weighted_mean_pool": "pooling", "lora_r8": "lora_rank", "lora_r32": "lora_rank",
          "no_instruction": "instruction_style", "task_prefix": "instruction_style", "tiny_default": "backbone"}


def resolved_row(row):
    cfg = compose_config("train", [f"ablation={row}", "paths.output_dir=/tmp/x"])
    choices = dict(HydraConfig.get().runtime.choices)
    body = OmegaConf.to_container(cfg, resolve=True)
    body.pop("run_name")
    body["logger"]["wandb"].pop("name")  # the W&B run name is the run name
    return choices, body


def test_the_rows_are_the_papers_nine_and_the_cpu_reference():
    assert sorted(p.stem for p in (CONF / "ablation").glob("*.yaml")) == sorted(FACTOR)
    assert [r[0] for r in ROWS] == list(FACTOR)


@pytest.mark.parametrize("row", [r for r in FACTOR if r not in ("default", "tiny_default")])
def test_each_row_changes_exactly_its_factor(row):
    base_choices, base = resolved_row("default")
    choices, body = resolved_row(row)
    changed_groups = {g for g in choices if g != "ablation" and choices[g] != base_choices[g]}
    assert changed_groups == {FACTOR[row]}
    changed_keys = {k for k in body if body[k] != base.get(k)}
    assert changed_keys == {FACTOR[row]}


def test_cpu_profile_default_pools_minilm_as_its_authors_do():
    cfg = compose_config("train", ["experiment=table4_cpu", "ablation=default", "paths.output_dir=/tmp/x"])
    assert cfg.backbone.name == "minilm" and cfg.pooling.name == cfg.backbone.authors_usage.pooling == "mean"
    make = (ROOT / "Makefile").read_text()
    assert "ROWS_cpu := glob(*,exclude=mean_pool)" in make and "SEEDS_cpu := 1,2,3" in make


def run(*args, timeout=900):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_sweep_two_rows_two_seeds_then_the_report(tmp_path):
    """The real multirun with seeds as an axis (2 tiny rows x 2 seeds, debug size), then the report's statistics."""
    sweep = tmp_path / "sweep"
    split = tiny_beir(tmp_path / "tiny", n_queries=40, n_docs=200)  # a small retrieval task: seconds per job
    tiny = ["-m", "embed_lm.train", "-m", "ablation=tiny_default,llama2", "seed=1,2", "experiment=table4_cpu",
            f"hydra.sweep.dir={sweep}", "trainer.max_steps=2", "data.max_length=32", "eval=beir", "eval.tasks=null",
            f"eval.path={split}", "eval.instruction='Retrieve the description this summary belongs to'",
            "logger=csv", "hydra.launcher.n_jobs=1"]  # jobs one after another in this process: no worker start-ups
    run(*tiny)
    table = {r["row"]: r for r in table4(sweep, use_wandb=False)}
    assert [r for r in table] == [r[0] for r in ROWS]
    for row in ("tiny_default", "llama2"):
        assert table[row]["status"] == "finished (2 seeds)" and table[row]["ours"][4] is not None
        assert all((d / "eval" / "beir" / "per_query.json").is_file() for d in table[row]["dirs"])
        assert table[row]["sd"][4] is not None  # the spread over the two seeds
    llama = table["llama2"]
    assert llama["reference"] == "tiny_default" and llama["seed_ci"].n == 2 and llama["query_ci"].n == 40
    assert llama["query_ci"].low <= llama["query_ci"].mean <= llama["query_ci"].high
    assert llama["finding"] in ("agrees", "disagrees", "no significant difference")
    assert sweep_group(sweep) == "table4_cpu"  # the report's W&B run joins the rows' group
    md = (sweep / "table4.md").read_text()
    assert "python -m embed_lm.report table4" in md and "95% CI over seeds" in md and "seed=1,2" in md
    assert (sweep / "table4.csv").read_text().count("\n") == 11 and (sweep / "table4_deltas.png").stat().st_size
    # re-running skips every finished job (same resolved config): nothing is trained again
    again = run(*tiny)
    assert again.stderr.count("already holds a finished run") + again.stdout.count("already holds a finished") == 4


def fake_row(sweep, name, row, status, avg=None, backbone=None, seed=0, per_query=None, choices=None):
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed} | ({"backbone": backbone} if backbone
                                                                                else {})))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"ablation": row}
                                                                                   | (choices or {})}}}))
    if status == "finished":
        (d / "done.json").write_text("{}")
        (d / "eval" / "local").mkdir(parents=True)
        cats = {c: avg for c in ["Class.", "Clust.", "PairClass.", "Rerank", "Retr."]} | {"STS": None, "Summ.": None}
        (d / "eval" / "local" / "scores.json").write_text(json.dumps({"suite": "local", "categories": cats,
                                                                      "avg": avg}))
        if per_query is not None:
            (d / "eval" / "local" / "per_query.json").write_text(json.dumps({"Retrieval": per_query}))
    elif status == "failed":
        (d / "failed.txt").write_text("RuntimeError: out of memory\n")


def test_report_lists_failed_and_missing_rows_in_the_papers_order(tmp_path):
    fake_row(tmp_path, "ablation=default", "default", "finished", 50.0)
    fake_row(tmp_path, "ablation=mean_pool", "mean_pool", "finished", 52.5)
    fake_row(tmp_path, "ablation=llama2", "llama2", "failed")
    table = {r["row"]: r for r in table4(tmp_path, use_wandb=False)}
    assert table["mean_pool"]["delta"][-1] == pytest.approx(2.5)
    assert table["llama2"]["status"].startswith("failed: RuntimeError")
    assert table["lora_r8"]["status"] == "missing"
    md = (tmp_path / "table4.md").read_text()
    assert md.index("LLaMA-2") < md.index("mean pool") < md.index("r=8")
    assert "failed: RuntimeError" in md and "missing" in md


def queries(level, n=60, seed=0, step=0.0):
    """Synthetic per-query scores (0-1): a fixed spread of difficulties around `level`, shifted by `step`."""
    rng = np.random.default_rng(seed)
    return {f"q{i}": float(np.clip(level + step + 0.2 * np.sin(i) + 0.01 * rng.standard_normal(), 0, 1))
            for i in range(n)}


def test_report_statistics_on_synthetic_seeds_and_queries(tmp_path):
    minilm, tiny, mean = {"name": "minilm", "size": "full"}, {"size": "tiny"}, {"pooling": "mean"}
    rows = {"default": [50.0, 50.5, 49.5], "lora_r8": [47.0, 47.6, 46.8], "lora_r32": [50.2, 50.1, 49.8],
            "msmarco_only": [48.0, 48.6, 47.4]}
    steps = {"default": 0.0, "lora_r8": -0.03, "lora_r32": 0.0, "msmarco_only": -0.02}
    for row, avgs in rows.items():
        for seed, avg in enumerate(avgs, start=1):
            fake_row(tmp_path, f"ablation={row},seed={seed}", row, "finished", avg, minilm, seed,
                     queries(0.6, seed=seed, step=steps[row]), choices=mean)
    fake_row(tmp_path, "ablation=tiny_default", "tiny_default", "finished", 10.0, tiny | {"name": "mistral"})
    fake_row(tmp_path, "ablation=llama2", "llama2", "finished", 12.0, tiny | {"name": "llama2"})
    base, released = tmp_path / "base", tmp_path / "released"
    fake_row(base, "x", "x", "finished", 45.0, per_query=queries(0.6, step=-0.05))
    fake_row(released, "x", "x", "finished", 60.0)
    (tmp_path / "base_eval").symlink_to(base / "x" / "eval" / "local")
    table = {r["row"]: r for r in table4(tmp_path, use_wandb=False, released=released / "x" / "eval" / "local",
                                         base=tmp_path / "base_eval")}
    d = table["default"]
    assert d["status"] == "finished (3 seeds)" and d["ours"][-1] == pytest.approx(50.0)
    assert d["sd"][-1] == pytest.approx(0.5)  # sample sd of 50, 50.5, 49.5
    r8 = table["lora_r8"]
    reference = stats.ttest_rel(rows["lora_r8"], rows["default"]).confidence_interval(0.95)
    assert (r8["seed_ci"].low, r8["seed_ci"].high) == pytest.approx((reference.low, reference.high))
    assert r8["query_ci"].mean == pytest.approx(-3.0, abs=0.05) and r8["query_ci"].high < 0
    assert r8["finding"] == "disagrees"  # paper: +0.3; ours: below 0 on both intervals
    assert table["msmarco_only"]["finding"] == "agrees"  # paper: -1.8
    assert table["lora_r32"]["finding"] == "no significant difference"  # seed interval straddles 0
    assert table["mean_pool"]["status"] == "= the default row in this profile"
    assert table["mean_pool"]["finding"].startswith("n/a: the default row here uses pooling=mean")
    assert table["llama2"]["reference"] == "tiny_default" and table["llama2"]["delta"][-1] == pytest.approx(2.0)
    assert table["llama2"]["finding"] == "n/a"  # one seed, no per-query scores: no interval, no verdict
    assert table["base"]["ours"][-1] == 45.0 and table["base"]["delta"][-1] == pytest.approx(-5.0)
    assert table["base"]["query_ci"].high < 0  # the untrained base is below the trained default, query by query
    assert table["released"]["ours"][-1] == 60.0 and table["released"]["delta"][-1] == pytest.approx(10.0)
    md = (tmp_path / "table4.md").read_text()
    assert "base model as its authors use it" in md and "released model, measured here" in md
    assert "1 agree with the paper" in md and "1 disagree" in md and "1 show no significant difference" in md
    assert "--released" in md and "--base" in md and "50.0 ± 0.5" in md


def test_seed_interval_is_students_t():
    i = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / np.sqrt(3)  # t(0.975, df=2) * sd 1 / sqrt(3), from a t table
    assert (i.mean, i.low, i.high, i.n) == pytest.approx((2.0, 2.0 - half, 2.0 + half, 3))
    assert seed_interval([1.0]) is None


def test_paired_bootstrap_matches_the_normal_approximation_and_pairs():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.3, 4000)  # queries of very different difficulty...
    y = x - 0.02 + rng.normal(0, 0.05, 4000)  # ...each moved by +0.02 with a little noise
    i = paired_bootstrap(x, y, n_resamples=4000)
    half = 1.959964 * np.std(x - y, ddof=1) / np.sqrt(x.size)  # the normal approximation of the mean's interval
    assert i.mean == pytest.approx(0.02, abs=0.005)
    assert i.low == pytest.approx(i.mean - half, abs=0.2 * half) and i.high == pytest.approx(i.mean + half, abs=0.2 * half)
    assert i.excludes_zero()  # paired: the spread of difficulty cancels; unpaired it would swamp +0.02
    assert paired_bootstrap(x, x + 1.0).low == pytest.approx(-1.0)  # constant shift: a point interval
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap(x, y[:10])


def test_verdict_needs_every_interval_to_exclude_zero():
    pos, neg, wide = Interval(1, 0.5, 1.5, 3, "seeds"), Interval(-1, -1.5, -0.5, 3, "seeds"), \
        Interval(0.2, -0.3, 0.7, 3, "seeds")
    assert verdict([pos, pos], 0.3) == "agrees" and verdict([neg], 0.3) == "disagrees"
    assert verdict([pos, wide], 0.3) == verdict([pos, neg], 0.3) == "no significant difference"
    assert verdict([None, None], 0.3) == "n/a" and verdict([pos], None) == "n/a"
