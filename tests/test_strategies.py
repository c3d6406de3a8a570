"""Which strategy / loss / precision combinations start, and the 2-process DDP training path on CPU."""

import json
import os
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from conftest import ROOT, compose_train
from strategy_helpers import small_split
from embed_lm.training.strategies import IncompatibleSetupError, check_setup


def loss(name):
    return instantiate(compose_train([f"loss={name}"]).loss)


@pytest.mark.parametrize("trainer", ["ddp", "ddp_cpu", "fsdp", "fsdp_cpu", "deepspeed_zero2", "deepspeed_zero3",
                                     "deepspeed_zero2_cpu", "deepspeed_zero3_cpu", "default", "cpu"])
def test_plain_loss_starts_with_every_strategy_config(trainer, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", sys.modules.get("deepspeed") or object())  # installed or not
    cfg = compose_train([f"trainer={trainer}"])
    check_setup(loss("infonce"), cfg.trainer.get("strategy", "auto"), "32-true", 1)
    assert instantiate(cfg.loss).gather_setting == "auto"  # cross-device negatives whenever world size > 1


@pytest.mark.parametrize("trainer", ["deepspeed_zero2_cpu", "deepspeed_zero3_cpu"])
def test_cached_loss_is_refused_with_the_cpu_zero_presets_too(trainer, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", sys.modules.get("deepspeed") or object())
    with pytest.raises(IncompatibleSetupError, match="ZeRO"):
        check_setup(loss("cached_infonce"), compose_train([f"trainer={trainer}"]).trainer.strategy, "32-true", 1)


@pytest.mark.parametrize("trainer,reason", [("fsdp", "reduce-scatters"), ("deepspeed_zero3", "known to break"),
                                            ("deepspeed_zero2", "ZeRO-2")])
def test_cached_loss_is_refused_where_it_cannot_work(trainer, reason, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", object())  # pretend it is installed: the reason is GradCache
    cfg = compose_train([f"trainer={trainer}"])
    with pytest.raises(IncompatibleSetupError, match=reason):
        check_setup(loss("cached_infonce"), cfg.trainer.strategy, "bf16-mixed", 1)


def test_cached_loss_refuses_fp16_and_accumulation():
    with pytest.raises(IncompatibleSetupError, match="loss scaling"):
        check_setup(loss("cached_infonce"), "ddp", "16-mixed", 1)
    with pytest.raises(IncompatibleSetupError, match="accumulation"):
        check_setup(loss("cached_infonce"), "ddp", "bf16-mixed", 4)
    check_setup(loss("cached_infonce"), "ddp", "bf16-mixed", 1)


def test_missing_deepspeed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import fails
    with pytest.raises(IncompatibleSetupError, match="pip install deepspeed"):
        check_setup(loss("infonce"), "deepspeed_stage_2", "bf16-mixed", 1)


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["infonce", "cached_infonce"])
def test_ddp_with_two_cpu_processes_trains(loss_name, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "embed_lm.train", "backbone=tiny_mistral", "data=sample", "debug=smoke",
           "trainer=ddp_cpu", f"loss={loss_name}", "trainer.max_steps=3", "logger=csv",
           f"data.test.path={small_split(tmp_path / 'split')}", f"hydra.run.dir={out}", "data.dev=null"]
    if loss_name == "cached_infonce":
        cmd.append("loss.mini_batch_size=3")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "distributed_backend=gloo" in proc.stderr
    # cross-device negatives are on by default (auto: world size > 1), said once on rank 0 with the global pool:
    # debug=smoke's batch of 8 queries per rank, each with 1 positive + 1 hard negative document
    logged = proc.stdout + proc.stderr
    assert logged.count("cross-device negatives: on (loss.gather_across_devices=auto, world size 2): global pool "
                        "16 queries x 32 documents (8 x 16 per rank)") == 1, logged[-3000:]
    record = json.loads((out / "done.json").read_text())
    assert "test/ndcg@10" in record["metrics"]  # the evaluation after training ran on both ranks
    assert (out / "embedder" / "adapter" / "adapter_model.safetensors").is_file()
