"""Two processes per job (trainer=ddp_cpu, gloo) inside a two-row multirun, one run shared by three checks:
- each row runs once, as its own process group (no nested sweep from Lightning re-running the `-m` command line);
- the sharded test split (each rank encodes half, rows gathered, scored once) equals one process's plain encoding;
- the evaluation after training runs on both ranks (each encodes about half) and equals a one-process evaluation."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, compose_config
from embed_lm.data.beir import BeirSplit
from embed_lm.eval.retrieval_metrics import retrieval_metrics
from embed_lm.inference.runs import load_run

ROWS = ["default", "mean_pool"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_sweep")
    cmd = [sys.executable, "-m", "embed_lm.train", "-m", f"ablation={','.join(ROWS)}", "experiment=table4_cpu",
           "data=sample", "trainer=ddp_cpu", "backbone=tiny_mistral", "hydra.launcher.n_jobs=1",
           f"hydra.sweep.dir={tmp / 'sweep'}", f"paths.log_dir={tmp / 'logs'}",
           "trainer.max_steps=2", "data.batch_size=8", "data.max_length=32", "logger=csv",
           "test_after_training=true", "eval.tasks=[DebianSummaryRetrieval]"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, out.stdout + out.stderr


def row_dir(tmp, row):
    (d,) = [p for p in (tmp / "sweep").iterdir() if p.name.startswith(f"ablation={row},")]
    return d


@pytest.mark.slow
def test_each_row_runs_once_as_its_own_process_group(sweep):
    tmp, log = sweep
    assert sorted(p.name.split(",")[0] for p in (tmp / "sweep").iterdir() if p.is_dir()) == [f"ablation={r}"
                                                                                            for r in ROWS]
    assert all((row_dir(tmp, r) / "done.json").is_file() for r in ROWS)
    assert not (tmp / "logs").exists()  # a nested sweep would have written outputs/train/multiruns there
    assert log.count("running it as its own process group") == len(ROWS)
    for rank in (0, 1):  # each row evaluated once, by both ranks
        assert len(re.findall(rf"rank {rank} of 2 encoded (\d+) texts", log)) == len(ROWS)


def encode_and_score(run, dtype):
    """The trained default row's test split, encoded by one process (Embedder, as `encode` does) and scored;
    dtype: the autocast dtype (the training's test stage runs under trainer=ddp_cpu's bf16-mixed)."""
    embedder, _ = load_run(run, device="cpu", merge=False)
    embedder.dtype = dtype
    spec = compose_config("train", ["data=sample", "experiment=table4_cpu", "backbone=tiny_mistral"]).data.test
    data = BeirSplit(spec.path, spec.split, spec.task).load()
    q = embedder.encode_queries(list(data.queries.values()), task=data.task)  # (Q, D)
    c = embedder.encode_documents(list(data.corpus.values()))  # (C, D)
    doc_index = {d: i for i, d in enumerate(data.corpus)}
    return retrieval_metrics(q, c, [{doc_index[d]: r for d, r in data.qrels[x].items()} for x in data.queries])


@pytest.fixture(scope="module")
def one_process(sweep):
    """fp32, as the evaluation after training loads the run on a CPU."""
    return encode_and_score(row_dir(sweep[0], "default"), None)


@pytest.mark.slow
def test_sharded_test_split_equals_one_process(sweep):
    import torch

    sharded = json.loads((row_dir(sweep[0], "default") / "test_metrics.json").read_text())["after"]
    one = encode_and_score(row_dir(sweep[0], "default"), torch.bfloat16)  # bf16 autocast as the test stage
    assert {f"test/{k}": v for k, v in one.items()} == pytest.approx(sharded, abs=5e-3)  # batches differ in padding


@pytest.mark.slow
def test_evaluation_after_training_is_split_over_the_ranks_and_equals_one_process(sweep, one_process):
    tmp, log = sweep
    counts = [int(n) for n in re.findall(r"rank \d of 2 encoded (\d+) texts", log)]
    assert min(counts) > 0.4 * (500 + 2500)  # each rank encoded about half of the task's 3,000 texts
    # DebianSummaryRetrieval is the test split above, same instruction, nDCG@10 x 100 scored by mteb
    sharded = json.loads((row_dir(tmp, "default") / "eval" / "local" / "scores.json").read_text())
    assert sharded["avg"] == pytest.approx(100 * one_process["ndcg@10"], abs=1e-3)
