"""trainer=fsdp_cpu (FSDP over 2 CPU processes, gloo, bf16-mixed as on GPUs) with a bf16 tiny Mistral base + fp32
LoRA, run with the defaults (evaluation after training on), once with test_before_training and once with in-fit
validation: one FSDP step equals one process on the concatenated batch; a killed run resumes from its checkpoint;
checkpoints hold exactly the LoRA tensors; buffers stay fp32; the saved adapter is the trained LoRA weights; the test
metrics equal one process's evaluation of the adapter; embed_lm.inference.runs loads the run and its checkpoint."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import ROOT
from embed_lm.inference.runs import load_run
from embed_lm.training.losses.infonce import InfoNCELoss
from scale_helpers import batch, bf16_base, examples, fsdp_worker, lora_grads, lora_names, tiny_encoder
from strategy_helpers import one_process_metrics, small_split

WORLD, PER_RANK, MAX_STEPS, CRASH_AT = 2, 3, 3, 2
TASK = "Given a one-line summary of a Debian software package, retrieve the package's full description"
TOLERANCE = 0.02  # bf16 compute: FSDP casts weights per unit, one process autocasts; a rank may swap
RUN = ["backbone=tiny_mistral", "backbone.dtype=bfloat16", "data=sample", "debug=smoke", "trainer=fsdp_cpu",
       f"trainer.max_steps={MAX_STEPS}", "logger=csv", "data.batch_size=4", "data.max_length=32",
       "gradient_checkpointing=true", "callbacks.model_checkpoint.every_n_train_steps=1"]


def train_cli(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "embed_lm.train", *RUN, f"hydra.run.dir={out}", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run killed at step 2 (on_exception.ckpt), then a second run resumed from that checkpoint to step 3."""
    tmp = tmp_path_factory.mktemp("fsdp")
    split = small_split(tmp / "split")
    killed = train_cli(tmp / "killed", "+callbacks.crash._target_=crash_callback.CrashAt",
                       f"+callbacks.crash.step={CRASH_AT}", "test_before_training=true", f"data.test.path={split}",
                       "data.dev=null",
                       "+callbacks.probe._target_=dtype_probe.DtypeProbe", f"+callbacks.probe.path={tmp / 'dtypes.json'}")
    assert killed.returncode != 0 and "simulated crash" in killed.stderr, killed.stderr[-3000:]
    assert (tmp / "killed" / "csv" / "metrics.csv").read_text().count("test/ndcg@10") == 1  # tested before training
    resumed = train_cli(tmp / "resumed", f"ckpt_path={tmp / 'killed' / 'checkpoints' / 'on_exception.ckpt'}",
                        f"data.test.path={split}", f"data.dev.path={split}", "data.dev.split=test",
                        "trainer.val_check_interval=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_killed_fsdp_run_resumes_from_its_checkpoint(runs):
    crashed = torch.load(runs / "killed" / "checkpoints" / "on_exception.ckpt", weights_only=False)
    assert crashed["global_step"] == CRASH_AT
    final = torch.load(runs / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == MAX_STEPS
    with open(runs / "resumed" / "csv" / "metrics.csv") as f:
        steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
    assert steps and min(steps) >= CRASH_AT, steps  # continued from the saved step, not from 0
    for ckpt in (crashed, final):
        assert set(ckpt["state_dict"]) == lora_names()
        assert len(ckpt["optimizer_states"][0]["state"]) == len(lora_names())  # AdamW state for every LoRA tensor


@pytest.mark.slow
def test_fsdp_adapter_is_the_trained_lora_weights_and_the_run_loads(runs):
    run = runs / "resumed"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    adapter = load_file(run / "embedder" / "adapter" / "adapter_model.safetensors")
    expected = {k.removeprefix("encoder.backbone.").replace(".default.", "."): v for k, v in state.items()}
    assert adapter.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(adapter[k], v, rtol=0, atol=0, msg=k)
    assert max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k) > 0  # trained, not the init

    texts = ["what is a flat parameter", "FSDP shards each decoder layer"]
    from_adapter, _ = load_run(run)
    from_ckpt, _ = load_run(run / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(from_adapter.encode(texts), from_ckpt.encode(texts))


@pytest.mark.slow
def test_fsdp_keeps_buffers_fp32_and_its_test_metrics_equal_one_process(runs):
    dtypes = json.loads((runs / "dtypes.json").read_text())  # after the first bf16-mixed forward, on rank 0
    assert any("inv_freq" in name for name in dtypes) and set(dtypes.values()) == {"torch.float32"}, dtypes
    run = runs / "resumed"
    assert (run / "done.json").is_file()
    with open(run / "csv" / "metrics.csv") as f:
        assert any(row.get("val/ndcg@10") for row in csv.DictReader(f))  # validated during fit
    after = json.loads((run / "test_metrics.json").read_text())["after"]
    one = one_process_metrics(run, runs / "split", TASK, dtype=torch.bfloat16)
    assert {k: after[k] for k in one} == pytest.approx(one, abs=TOLERANCE)


@pytest.mark.slow
def test_one_fsdp_step_equals_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(fsdp_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path), PER_RANK), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "fsdp.pt", weights_only=False)
    assert got["flat_dtypes"] == ["torch.bfloat16", "torch.float32"]  # a bf16 base, fp32 LoRA, each flat alone

    n = WORLD * PER_RANK
    data = batch(examples(n))
    encoder = bf16_base(tiny_encoder(), keep_bf16=False)  # the same bf16 values, computed in fp32 as FSDP does
    q, d = encoder(data["queries"]), encoder(data["documents"])
    loss = InfoNCELoss(0.02)(q, d[:n], d[n:])
    loss.backward()
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, grad in lora_grads(encoder).items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
