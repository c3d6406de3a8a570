"""Exact resume on 2 processes (DDP over gloo, tiny Mistral, LoRA dropout on): a run interrupted inside step 3 (its
dropout masks drawn on both ranks) and resumed from on_exception.ckpt gives the same per-step losses and the same
adapter as an uninterrupted run, since every rank's RNG state is saved and restored. Resumed on one process, the
same checkpoint is refused as a config change unless resume.allow_changes names trainer; then it runs and logs what
cannot be exact."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from test_resume import losses  # per-step losses from a run's csv/metrics.csv

RUN = ["backbone=tiny_mistral", "data=sample", "debug=smoke", "trainer=ddp_cpu", "trainer.max_steps=4",
       "test_after_training=false", "logger=csv", "data.dev=null", "data.batch_size=4", "data.max_length=32",
       "lora.dropout=0.1", "callbacks.model_checkpoint.every_n_train_steps=1",
       "+callbacks.diverge._target_=crash_callback.DivergeRanks"]  # the ranks' random streams differ


def train_cli(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "embed_lm.train", *RUN, f"hydra.run.dir={out}", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume_ddp")
    straight = train_cli(tmp / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = train_cli(tmp / "run", "+callbacks.crash._target_=crash_callback.CrashAt", "+callbacks.crash.step=3",
                       "+callbacks.crash.hook=on_before_backward")
    assert killed.returncode != 0 and "simulated crash" in killed.stderr, killed.stderr[-3000:]
    ckpt = tmp / "run" / "checkpoints" / "on_exception.ckpt"  # a finished resume in that folder removes it
    (tmp / "on_exception.ckpt").write_bytes(ckpt.read_bytes())
    return tmp


@pytest.mark.slow
def test_ddp_run_interrupted_mid_step_resumes_exactly(runs):
    ckpt = runs / "run" / "checkpoints" / "on_exception.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 2 and saved["embed_lm_resume"]["world_size"] == 2
    rng = saved["embed_lm_resume"]["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # each rank's own stream

    resumed = train_cli(runs / "run", f"ckpt_path={ckpt}")  # the same folder: one metrics history
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = losses(runs / "straight"), losses(runs / "run")
    assert [s for s, _ in got] == [0, 1, 2, 3]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6)
    a = load_file(runs / "straight" / "embedder" / "adapter" / "adapter_model.safetensors")
    b = load_file(runs / "run" / "embedder" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
def test_resume_on_another_world_size_works_and_says_what_is_not_exact(runs):
    ckpt = runs / "on_exception.ckpt"  # the 2-process run's, saved mid-step 3
    refused = train_cli(runs / "one", "trainer=cpu", f"ckpt_path={ckpt}")  # a changed config: named, or refused
    assert refused.returncode == 2 and "trainer.devices: 2 -> 1" in refused.stderr, refused.stderr[-3000:]
    one = train_cli(runs / "one", "trainer=cpu", f"ckpt_path={ckpt}", "resume.allow_changes=[trainer]")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "written by 2 processes, resumed on 1" in one.stdout + one.stderr  # the log goes to stdout (Hydra)
    assert torch.load(runs / "one" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
