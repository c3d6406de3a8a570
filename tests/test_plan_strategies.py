"""The planner's per-strategy figures against what 2 gloo processes really hold and send: DDP and torch FSDP
FULL_SHARD on tiny Mistral + LoRA (fp32), one training step with cross-device negatives and gradient checkpointing
(tests/strategy_helpers.py measures). ZeRO-2/3 are a model only (sharding.py says so)."""

import pytest
import torch
import torch.multiprocessing as mp

from embed_lm.model.backbone import TinyBackbone
from embed_lm.plan.estimate import Shape, plan_step
from embed_lm.plan.shapes import KNOWN
from embed_lm.plan.sharding import comm_bytes, state_bytes
from strategy_helpers import strategy_worker

WORLD, PER_RANK, R = 2, 3, 8  # tiny_encoder(): LoRA r8


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan_gloo")
    mp.spawn(strategy_worker, args=(WORLD, str(tmp / "init"), str(tmp), PER_RANK), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def shape():
    t = TinyBackbone("tiny_mistral", "mistral")
    c = t.config_kwargs
    return Shape(c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                 c["num_key_value_heads"], len(t.load().tokenizer))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_state_per_rank_matches_the_planner(measured, shape, strategy):
    frozen, trainable = shape.params(), shape.lora_params(R)
    predicted = state_bytes(strategy, frozen, trainable, WORLD, frozen_bytes=4)
    for rank in measured:
        got = rank[strategy]
        assert got["frozen_param_bytes"] + got["lora_param_bytes"] == pytest.approx(predicted.params, rel=1e-3)
        assert got["lora_param_bytes"] == pytest.approx(4 * trainable / (WORLD if strategy == "fsdp" else 1),
                                                        rel=1e-3)
        assert got["grad_bytes"] == pytest.approx(predicted.grads, rel=1e-3)
        assert got["optim_bytes"] == pytest.approx(predicted.optim, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_communication_per_step_matches_the_planner(measured, shape, strategy):
    got = measured[0][strategy]
    predicted = comm_bytes(strategy, shape.params(), shape.lora_params(R), WORLD, 4, passes=2, checkpointing=True,
                           root_frozen=shape.root_params(), gathered_embeddings=got["documents"],
                           embedding_dim=got["dim"])
    assert got["comm"].get("all_reduce", 0) == predicted["all_reduce"]
    assert got["comm"].get("reduce_scatter", 0) == predicted["reduce_scatter"]
    assert got["comm"].get("all_gather", 0) == pytest.approx(predicted["all_gather"], rel=0.01)


@pytest.mark.slow
def test_fsdp_is_not_ddp(measured, shape):
    """Control: the strategies differ measurably, so the comparisons above can fail."""
    ddp = state_bytes("ddp", shape.params(), shape.lora_params(R), WORLD, 4)
    fsdp = measured[0]["fsdp"]
    assert fsdp["frozen_param_bytes"] + fsdp["lora_param_bytes"] < 0.6 * ddp.params
    assert fsdp["comm"]["all_gather"] > 100 * measured[0]["ddp"]["comm"]["all_gather"]


def test_planner_at_7b_scale_shards_and_reads_the_mean_length():
    shape = KNOWN["mistralai/Mistral-7B-v0.1"]
    ddp = plan_step(shape, 16, 64, 1, 512, 8, None, True, strategy="ddp")
    fsdp = plan_step(shape, 16, 64, 1, 512, 8, None, True, strategy="fsdp")
    zero2 = plan_step(shape, 16, 64, 1, 512, 8, None, True, strategy="zero2")
    assert fsdp.params_gb == pytest.approx(ddp.params_gb / 8) and zero2.params_gb == ddp.params_gb
    assert zero2.grads_gb == pytest.approx(ddp.grads_gb / 8) and ddp.comm["all_gather"] == 0
    assert fsdp.comm["all_gather"] > 20 * 2 ** 30 > ddp.comm["all_reduce"]  # 3 gathers of ~14 GB per step
    half = plan_step(shape, 16, 64, 1, 512, 8, None, True, strategy="ddp", mean_seq_len=256)
    assert half.activations_gb == ddp.activations_gb and half.step_flops < 0.55 * ddp.step_flops
