"""The Table 4 study: ablation rows as config overrides, the nine-row multirun, and the report."""

import json
import subprocess
import sys

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from conftest import CONF, ROOT, compose_config
from embed_lm.table4.report import ROWS, sweep_group, table4

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


def run(*args, timeout=900):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sweep_runs_all_nine_rows_then_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = ["-m", "embed_lm.train", "-m", "ablation=glob(*)", "experiment=table4_cpu", f"hydra.sweep.dir={sweep}",
            "trainer.max_steps=2", "data.max_length=32", "eval.tasks=[DebianSummaryRetrieval]", "logger=csv",
            "hydra.launcher.n_jobs=1"]  # rows one after another in this process: no worker start-ups
    run(*tiny)
    table = table4(sweep, use_wandb=False)
    assert [r["row"] for r in table] == [r[0] for r in ROWS]
    assert all(r["status"] == "finished" for r in table), [(r["row"], r["status"]) for r in table]
    assert all(r["ours"][4] is not None for r in table)  # Retr. column: every row has a score
    assert table[0]["delta"][-1] == 0.0
    assert sweep_group(sweep) == "table4_cpu"  # the report's W&B run joins the rows' group
    md = (sweep / "table4.md").read_text()
    assert "python -m embed_lm.report table4" in md and "paper" in md
    assert (sweep / "table4.csv").read_text().count("\n") == 11 and (sweep / "table4_deltas.png").stat().st_size
    # re-running skips every finished row (same resolved config): nothing is trained again
    again = run(*tiny)
    assert again.stderr.count("already holds a finished run") + again.stdout.count("already holds a finished") == 10


def fake_row(sweep, name, row, status, avg=None, backbone=None):
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    if backbone is not None:
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"backbone": backbone}))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"ablation": row}}}}))
    if status == "finished":
        (d / "done.json").write_text("{}")
        (d / "eval" / "local").mkdir(parents=True)
        cats = {c: avg for c in ["Class.", "Clust.", "PairClass.", "Rerank", "Retr."]} | {"STS": None, "Summ.": None}
        (d / "eval" / "local" / "scores.json").write_text(json.dumps({"suite": "local", "categories": cats,
                                                                      "avg": avg}))
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


def test_cpu_profile_rows_models_findings_and_the_released_row(tmp_path):
    minilm, tiny = {"name": "minilm", "size": "full"}, {"size": "tiny"}
    fake_row(tmp_path, "ablation=default", "default", "finished", 50.0, minilm)
    fake_row(tmp_path, "ablation=mean_pool", "mean_pool", "finished", 49.0, minilm)  # paper: -0.4, same sign
    fake_row(tmp_path, "ablation=lora_r8", "lora_r8", "finished", 49.0, minilm)  # paper: +0.3, opposite sign
    fake_row(tmp_path, "ablation=tiny_default", "tiny_default", "finished", 10.0, tiny | {"name": "mistral"})
    fake_row(tmp_path, "ablation=llama2", "llama2", "finished", 12.0, tiny | {"name": "llama2"})
    released = tmp_path / "released"
    fake_row(released, "x", "x", "finished", 60.0)
    table = {r["row"]: r for r in table4(tmp_path, use_wandb=False, released=released / "x" / "eval" / "local")}
    assert table["default"]["model"] == "minilm" and table["llama2"]["model"] == "llama2 (random init)"
    assert table["llama2"]["reference"] == "tiny_default" and table["llama2"]["delta"][-1] == pytest.approx(2.0)
    assert table["mean_pool"]["finding"] == "agrees" and table["lora_r8"]["finding"] == "disagrees"
    assert table["llama2"]["finding"] == "disagrees"  # paper: -1.6
    assert table["released"]["ours"][-1] == 60.0 and table["released"]["delta"][-1] == pytest.approx(10.0)
    md = (tmp_path / "table4.md").read_text()
    assert "released model, measured here" in md and "1 of 3 judged rows agree" in md and "--released" in md
